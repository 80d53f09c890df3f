//! The operator's settings (flags and environment variables of `iot-operator run`).

use std::time::Duration;

/// Settings that shape what the operator creates.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Namespace watched and managed.
    pub namespace: String,
    /// Kafka bootstrap servers, for the operator itself and passed to the enrichment workers.
    pub kafka_bootstrap: String,
    /// Prefix of every topic name (`iot` gives `iot.smart_breaker.raw`).
    pub topic_prefix: String,
    /// Image of the `iot-worker` container run by the enrichment Deployments.
    pub worker_image: String,
    /// Name of the registry ConfigMap.
    pub registry_config_map: String,
    /// Partitions of the shared topics (`{prefix}.enriched`, `{prefix}.deadletter`).
    pub shared_topic_partitions: i32,
    /// Replication factor of the shared topics.
    pub shared_topic_replication_factor: i32,
    /// Kafka admin timeout.
    pub kafka_timeout: Duration,
    /// Re-check interval of a settled resource (drift safety net).
    pub resync: Duration,
    /// Re-check interval of an autoscaled DeviceType (how often lag is read).
    pub autoscale_interval: Duration,
    /// How long a lower replica count must be wanted before scaling down.
    pub scale_down_cooldown: Duration,
    /// How long a deleted DeviceType with `deletionPolicy: Delete` waits for an unreachable broker
    /// before its finalizer is removed anyway (its topics are then left behind, with an Event).
    pub topic_cleanup_timeout: Duration,
}

impl OperatorConfig {
    /// Defaults that work on a laptop, for tests and `iot-operator run` without flags.
    pub fn new(namespace: impl Into<String>, kafka_bootstrap: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            kafka_bootstrap: kafka_bootstrap.into(),
            topic_prefix: "iot".into(),
            worker_image: DEFAULT_WORKER_IMAGE.into(),
            registry_config_map: crate::registry::CONFIG_MAP_NAME.into(),
            shared_topic_partitions: 3,
            shared_topic_replication_factor: 1,
            kafka_timeout: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            autoscale_interval: Duration::from_secs(15),
            scale_down_cooldown: Duration::from_secs(120),
            topic_cleanup_timeout: Duration::from_secs(300),
        }
    }

    /// Consumer group of the enrichment workers of device type `id`; the operator reads its lag.
    pub fn enrichment_group(&self, id: &str) -> String {
        iot_model::naming::enrichment_group(&self.topic_prefix, id)
    }
}

/// The worker image when none is configured.
pub const DEFAULT_WORKER_IMAGE: &str = "ghcr.io/iot-cloud/iot-worker:latest";
