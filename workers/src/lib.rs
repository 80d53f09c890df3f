//! IoT Cloud data-path workers as a library, so that the `iot-worker` binary, the integration
//! tests and the benchmarks run the same code.
//!
//! Sans-IO core (plain functions, unit-tested): [`route`] (where a device message goes),
//! [`catalog`] (the registry compiled for lookups), [`enrich`] and [`quality`] (what the enrichment
//! adds and checks), [`offsets`] (which Kafka offsets may be committed), [`sim::devices`] and
//! [`sim::trends`] (what simulated devices say). I/O at the edges: [`bridge`], [`enrichment`],
//! [`sim`], [`dashboard`], with [`kafka`], [`mqtt_security`], [`registry_file`], [`metrics`] and
//! [`runtime`] shared
//! between them.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod dashboard;
pub mod enrich;
pub mod enrichment;
#[cfg(test)]
#[path = "../tests/common/fixtures.rs"]
mod fixtures;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod mqtt_security;
pub mod offsets;
pub mod payload;
pub mod quality;
pub mod registry_file;
pub mod route;
pub mod runtime;
pub mod sim;
