//! `DeviceType` (`kubectl get dt`): one kind of device the platform carries data for.
//!
//! It replaces the seed's `config/device-registry.json` entry (descriptive metadata and
//! measurement ranges) and adds what the operator needs to run it: the id used in payloads and
//! topic names, the Kafka topic settings, the enrichment scaling policy and the validation mode.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::*;
use super::measurement::{Manufacturer, Measurement};
use super::topics::{RETENTION_PATTERN, TopicNames};
use super::{ID_MAX_LENGTH, ID_PATTERN};

/// Enrichment replicas when neither `replicas` nor autoscaling is set.
pub const DEFAULT_REPLICAS: i32 = 1;
/// `minReplicas` when autoscaling without one.
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
/// `lagPerReplica` when autoscaling without one.
pub const DEFAULT_LAG_PER_REPLICA: i64 = 1000;

/// A consumer group cannot use more consumers than the topic has partitions (KEDA's rule), so
/// asking for more is refused rather than silently clamped.
const REPLICAS_WITHIN_PARTITIONS: &str = "!has(self.enrichment) || !has(self.topics) || \
    !has(self.topics.partitions) || \
    ((!has(self.enrichment.replicas) || self.enrichment.replicas <= self.topics.partitions) && \
    (!has(self.enrichment.maxReplicas) || self.enrichment.maxReplicas <= self.topics.partitions))";

/// Desired state of a DeviceType: the seed registry's description of the device type plus the
/// platform's settings for its topics, enrichment and validation.
// The printer columns repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "iotcloud.dev",
    version = "v1alpha1",
    kind = "DeviceType",
    plural = "devicetypes",
    shortname = "dt",
    category = "iotcloud",
    namespaced,
    status = "DeviceTypeStatus",
    derive = "PartialEq",
    selectable = ".spec.deviceType",
    doc = "A kind of IoT device: its registry metadata (measurements, ranges, manufacturers), its \
           Kafka topics and its enrichment Deployment. The operator creates the topics \
           {prefix}.{deviceType}.raw and {prefix}.{deviceType}.enriched and scales the enrichment.",
    printcolumn(
        name = "ID",
        type_ = "string",
        json_path = ".spec.deviceType",
        description = "Device-type id used in payloads and topic names"
    ),
    printcolumn(
        name = "Topic",
        type_ = "string",
        json_path = ".status.topics.enriched",
        description = "Topic with the enriched messages"
    ),
    printcolumn(
        name = "Partitions",
        type_ = "integer",
        json_path = ".status.partitions",
        description = "Partitions of the raw topic"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.replicas.desired",
        description = "Enrichment replicas wanted"
    ),
    printcolumn(
        name = "Ready Replicas",
        type_ = "integer",
        json_path = ".status.replicas.ready",
        description = "Enrichment replicas ready"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Raw messages the enrichment has still to process"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether topics and enrichment are in place"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(REPLICAS_WITHIN_PARTITIONS)
    .message("enrichment replicas and maxReplicas must not exceed topics.partitions: a consumer group cannot use more consumers than partitions")
    .field_path(".enrichment"))]
#[serde(rename_all = "camelCase")]
pub struct DeviceTypeSpec {
    /// Device-type id used in payloads (`device_type`) and topic names, e.g. `smart_breaker`.
    /// Lower-case letters, digits and `_`, starting with a letter. Immutable: it names the topics.
    #[schemars(length(min = 1, max = ID_MAX_LENGTH), regex(pattern = ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("deviceType is immutable (it names the Kafka topics): create a new DeviceType instead"))]
    pub device_type: String,
    /// Human-readable name, e.g. `Smart Circuit Breaker` (1-100 characters).
    #[schemars(length(min = 1, max = DISPLAY_NAME_MAX_LENGTH))]
    pub display_name: String,
    /// What the device is and does (at most 1024 characters: it is copied into the registry
    /// every worker reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DESCRIPTION_MAX_LENGTH))]
    pub description: Option<String>,
    /// Category, e.g. `electrical_protection` (at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub category: Option<String>,
    /// Capabilities, e.g. `voltage_monitoring` (at most 32, each 1-64 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = CAPABILITIES_MAX_ITEMS),
        inner(length(min = 1, max = NAME_MAX_LENGTH))
    )]
    pub capabilities: Vec<String>,
    /// Measurements by payload key (e.g. `voltage`), with units and valid ranges. At most 64,
    /// with names of 1-64 characters and at most 64 components over all of them (bounds the
    /// cost of the CEL range rules and the size of the registry).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MEASUREMENTS_MAX_PROPERTIES))]
    #[x_kube(
        validation = Rule::new(KEYS_ARE_NAMES).message("measurement names must be 1-64 characters long"),
        validation = Rule::new(COMPONENTS_TOTAL).message(COMPONENTS_TOTAL_MESSAGE)
    )]
    pub measurements: BTreeMap<String, Measurement>,
    /// Manufacturers and their models (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MANUFACTURERS_MAX_ITEMS))]
    pub manufacturers: Vec<Manufacturer>,
    /// Where such devices are installed, e.g. `substation_primary` (at most 64, each 1-64
    /// characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = LOCATIONS_MAX_ITEMS),
        inner(length(min = 1, max = NAME_MAX_LENGTH))
    )]
    pub locations: Vec<String>,
    /// Payload encoding, e.g. `json` (at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub data_format: Option<String>,
    /// How often a device reports, as documented by the seed registry, e.g. `5_seconds` (at most
    /// 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub update_frequency: Option<String>,
    /// Retention promised to applications, as documented by the seed registry, e.g. `30_days`
    /// (at most 64 characters). Descriptive only: `topics.retention` is what the broker enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub retention_policy: Option<String>,
    /// Settings of the raw and enriched Kafka topics.
    #[serde(default)]
    pub topics: TopicsSpec,
    /// What happens to the topics when this DeviceType is deleted: `Retain` (default) keeps them
    /// and their data; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Replicas of the enrichment Deployment: a fixed count, or autoscaling on consumer lag.
    #[serde(default)]
    pub enrichment: EnrichmentSpec,
    /// What the enrichment does with measurements outside the declared ranges or valid values:
    /// `Off` (no check; quote it in YAML, `"Off"`, or it reads as `false`), `Flag` (default:
    /// forwarded, marked in `data_quality`) or `DeadLetter` (sent to the dead-letter topic with
    /// the reason).
    #[serde(default)]
    pub validation: ValidationMode,
}

fn default_partitions() -> i32 {
    3
}

fn default_replication_factor() -> i32 {
    1
}

/// Settings of the device type's Kafka topics (`{prefix}.{deviceType}.raw` and `.enriched`).
#[derive(KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.retention) || !has(self.config) || !('retention.ms' in self.config)")
    .message("set either retention or config[\"retention.ms\"], not both"))]
#[serde(rename_all = "camelCase")]
pub struct TopicsSpec {
    /// Partitions of each topic (default 3). It bounds the enrichment replicas and can only
    /// grow: Kafka cannot remove partitions.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1000))]
    #[x_kube(validation = Rule::new("self >= oldSelf")
        .message("partitions can only grow: Kafka cannot remove partitions from a topic"))]
    pub partitions: i32,
    /// Replication factor of each topic (default 1, for single-broker development clusters).
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// How long messages are kept (`retention.ms`): `-1` for ever, a number of milliseconds
    /// (`86400000`), or a number with a unit `ms`, `s`, `m`, `h`, `d` or `w` (`30d`, `12h`,
    /// `90m`). The broker's default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 24), regex(pattern = RETENTION_PATTERN))]
    pub retention: Option<String>,
    /// Further topic configuration passed to Kafka verbatim, e.g. `cleanup.policy: delete`,
    /// `max.message.bytes: "1048576"` (at most 64 entries, values of at most 1024 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = {"type": "string", "maxLength": TOPIC_CONFIG_VALUE_MAX_LENGTH}
    ))]
    pub config: BTreeMap<String, String>,
}

impl Default for TopicsSpec {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            retention: None,
            config: BTreeMap::new(),
        }
    }
}

/// What happens to the topics when the DeviceType is deleted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the topics and their data.
    #[default]
    Retain,
    /// Delete the topics.
    Delete,
}

/// What the enrichment does with measurements outside the declared ranges.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ValidationMode {
    /// No range check.
    Off,
    /// Forward the message and record the violations in its `data_quality`.
    #[default]
    Flag,
    /// Send the message to the dead-letter topic with the violations as the reason.
    DeadLetter,
}

/// Replicas of the enrichment Deployment. Either `replicas` (a fixed count), or autoscaling on
/// consumer lag with `maxReplicas` (and optionally `minReplicas`, `lagPerReplica`); neither means
/// one replica. Never more than `topics.partitions`.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!has(self.replicas) || (!has(self.minReplicas) && !has(self.maxReplicas) && !has(self.lagPerReplica))")
        .message("set either replicas (a fixed count) or minReplicas/maxReplicas/lagPerReplica (autoscaling), not both"),
    validation = Rule::new("has(self.maxReplicas) || (!has(self.minReplicas) && !has(self.lagPerReplica))")
        .message("autoscaling needs maxReplicas"),
    validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas")
        .message("minReplicas must not be greater than maxReplicas")
)]
#[serde(rename_all = "camelCase")]
pub struct EnrichmentSpec {
    /// Fixed number of replicas; `0` pauses the enrichment (raw messages wait in the raw topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Autoscaling: fewest replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Autoscaling: most replicas. Setting it turns autoscaling on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: Option<i32>,
    /// Autoscaling: consumer lag (messages) one replica is expected to absorb (default 1000);
    /// desired replicas = ceil(lag / lagPerReplica), between minReplicas and maxReplicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lag_per_replica: Option<i64>,
}

/// The scaling policy an [`EnrichmentSpec`] stands for, with defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// Always this many replicas.
    Fixed { replicas: i32 },
    /// Between `min` and `max` replicas, one per `lag_per_replica` messages of lag.
    Autoscale {
        min: i32,
        max: i32,
        lag_per_replica: i64,
    },
}

impl EnrichmentSpec {
    /// The scaling policy; autoscaling as soon as `maxReplicas` is set, as the CEL rules require.
    pub fn scaling(&self) -> Scaling {
        match (self.replicas, self.max_replicas) {
            (_, Some(max)) if self.replicas.is_none() => Scaling::Autoscale {
                min: self.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS).min(max),
                max,
                lag_per_replica: self.lag_per_replica.unwrap_or(DEFAULT_LAG_PER_REPLICA),
            },
            (Some(replicas), _) => Scaling::Fixed { replicas },
            _ => Scaling::Fixed {
                replicas: DEFAULT_REPLICAS,
            },
        }
    }
}

/// What the operator last observed and did, for `kubectl get dt` and `kubectl wait`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTypeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the specific conditions (topics, enrichment) behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The topics the operator manages for this device type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicNames>,
    /// Partitions the raw topic has on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replicas of the enrichment Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaCounts>,
    /// Messages in the raw topic the enrichment consumer group has not processed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Name of the enrichment Deployment in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrichment_deployment: Option<String>,
    /// Active Applications registered for this device type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<i32>,
}

/// Desired and ready replicas of the enrichment Deployment.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    /// Replicas the scaling policy asks for.
    pub desired: i32,
    /// Replicas that are ready.
    pub ready: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_defaults_to_one_fixed_replica() {
        assert_eq!(
            EnrichmentSpec::default().scaling(),
            Scaling::Fixed { replicas: 1 }
        );
        let fixed = EnrichmentSpec {
            replicas: Some(0),
            ..Default::default()
        };
        assert_eq!(fixed.scaling(), Scaling::Fixed { replicas: 0 });
    }

    #[test]
    fn scaling_autoscales_when_max_replicas_is_set() {
        let auto = EnrichmentSpec {
            max_replicas: Some(4),
            ..Default::default()
        };
        assert_eq!(
            auto.scaling(),
            Scaling::Autoscale {
                min: 1,
                max: 4,
                lag_per_replica: 1000
            }
        );
        let explicit = EnrichmentSpec {
            min_replicas: Some(2),
            max_replicas: Some(3),
            lag_per_replica: Some(50),
            ..Default::default()
        };
        assert_eq!(
            explicit.scaling(),
            Scaling::Autoscale {
                min: 2,
                max: 3,
                lag_per_replica: 50
            }
        );
    }

    #[test]
    fn spec_defaults_match_the_schema_defaults() {
        let spec: DeviceTypeSpec = serde_json::from_value(serde_json::json!({
            "deviceType": "smart_meter",
            "displayName": "Smart Energy Meter"
        }))
        .unwrap();
        assert_eq!(spec.topics, TopicsSpec::default());
        assert_eq!(spec.topics.partitions, 3);
        assert_eq!(spec.topics.replication_factor, 1);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(spec.validation, ValidationMode::Flag);
        assert_eq!(spec.enrichment.scaling(), Scaling::Fixed { replicas: 1 });
    }
}
