//! The model the operator and the workers share, and nothing else: serde types, no Kubernetes or
//! Kafka client.
//!
//! - [`registry`]: the registry document the operator writes into ConfigMap `iot-registry` and the
//!   workers read (its own types, versioned by [`registry::FORMAT_VERSION`], so a change to the
//!   custom resources cannot silently change what the workers read).
//! - [`naming`]: every Kafka topic and consumer-group name, and the topic prefix rule.
#![forbid(unsafe_code)]

pub mod naming;
pub mod registry;
