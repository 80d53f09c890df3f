//! The registry document: every registered device type with its metadata, measurements and the
//! active applications that read it, as the operator writes it (JSON, key [`CONFIG_MAP_KEY`] of
//! ConfigMap [`CONFIG_MAP_NAME`], mounted at [`MOUNT_DIR`]) and the workers read it.
//!
//! These are the document's own types, not the custom resources': a change to the CRDs changes
//! this document only through the operator's conversion, and a change here bumps
//! [`FORMAT_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::naming::{TopicNames, all_enriched_topic, deadletter_topic};

/// Name of the ConfigMap holding the registry.
pub const CONFIG_MAP_NAME: &str = "iot-registry";
/// Key of the registry JSON in the ConfigMap.
pub const CONFIG_MAP_KEY: &str = "registry.json";
/// Where the ConfigMap is mounted in worker pods.
pub const MOUNT_DIR: &str = "/etc/iot-cloud";
/// Version of the JSON layout; workers refuse a registry with a version they do not know.
pub const FORMAT_VERSION: u32 = 1;
/// Namespace assumed for objects that have none (manifests not yet applied).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The path of the registry file in worker pods.
pub fn mounted_file() -> String {
    format!("{MOUNT_DIR}/{CONFIG_MAP_KEY}")
}

/// Why a registry document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    #[error(
        "registry format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version { found: u32 },
}

/// The whole enrichment context.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Layout version, [`FORMAT_VERSION`].
    pub version: u32,
    /// Prefix of every topic name, e.g. `iot`.
    pub topic_prefix: String,
    /// Topics shared by all device types.
    pub topics: SharedTopics,
    /// Device types by id (`spec.deviceType`), sorted by id.
    pub device_types: BTreeMap<String, RegistryDeviceType>,
    /// Objects left out, and why (duplicate ids, invalid specs); empty when all is well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

impl Registry {
    /// A registry without device types under `prefix`.
    pub fn empty(prefix: &str) -> Self {
        Self {
            version: FORMAT_VERSION,
            topic_prefix: prefix.to_string(),
            topics: SharedTopics::new(prefix),
            device_types: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// Reads a registry document, refusing versions this build does not know.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RegistryError> {
        // The version first, so that a future layout is reported as such, not as a parse error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let Versioned { version } = serde_json::from_slice(bytes)?;
        if version != FORMAT_VERSION {
            return Err(RegistryError::Version { found: version });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Topics shared by all device types.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedTopics {
    /// Enriched messages of all device types, e.g. `iot.enriched`.
    pub enriched: String,
    /// Messages that could not be carried, e.g. `iot.deadletter`.
    pub deadletter: String,
}

impl SharedTopics {
    /// The shared topics under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            enriched: all_enriched_topic(prefix),
            deadletter: deadletter_topic(prefix),
        }
    }
}

/// What the enrichment adds about one device type (the seed's `device_metadata`) and who reads
/// it (the seed's `application_registry`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryDeviceType {
    /// Device-type id, e.g. `smart_breaker`.
    pub id: String,
    /// The DeviceType object, `namespace/name`.
    pub source: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_frequency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<String>,
    /// Measurements with units and ranges.
    #[serde(default)]
    pub measurements: BTreeMap<String, Measurement>,
    /// What to do with out-of-range measurements.
    pub validation: ValidationMode,
    /// The device type's raw and enriched topics.
    pub topics: TopicNames,
    /// Active applications registered for this device type, sorted by id.
    #[serde(default)]
    pub applications: Vec<RegistryApplication>,
}

/// An active application, as the enrichment lists it (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryApplication {
    /// Stable id, `namespace/name` of the Application object.
    pub id: String,
    pub display_name: String,
    pub developer: String,
    pub platform: Platform,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub version: String,
    /// Always `active`: inactive applications are left out (the seed's status field).
    pub status: String,
}

/// An object left out of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// `DeviceType` or `Application`.
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
    pub reason: String,
}

/// One measurement a device type reports, e.g. `voltage`: a single value, one value per phase
/// (`phases`), or named components (`components`). Its range and valid values apply to the single
/// value, to every phase, and to every component that declares none of its own.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, MeasurementComponent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_values: Vec<ValidValue>,
}

/// One named part of a compound measurement; unset fields fall back to the measurement's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementComponent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_values: Vec<ValidValue>,
}

/// An allowed value: an integer or a string.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ValidValue {
    Int(i32),
    String(String),
}

/// How the values of a measurement are encoded in the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Float,
    Integer,
    Boolean,
    String,
}

/// What the enrichment does with measurements outside the declared ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum ValidationMode {
    /// No range check.
    Off,
    /// Forward the message and record the violations in its `data_quality`.
    #[default]
    Flag,
    /// Send the message to the dead-letter topic with the violations as the reason.
    DeadLetter,
}

impl ValidationMode {
    /// The name used in documents and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "Off",
            Self::Flag => "Flag",
            Self::DeadLetter => "DeadLetter",
        }
    }
}

/// Where an application runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Web,
    Mobile,
    Desktop,
    Api,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn document(version: u32) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": version,
            "topicPrefix": "iot",
            "topics": {"enriched": "iot.enriched", "deadletter": "iot.deadletter"},
            "deviceTypes": {"smart_meter": {
                "id": "smart_meter",
                "source": "default/smart-meter",
                "displayName": "Smart Meter",
                "measurements": {
                    "power": {"unit": "W", "components": {"factor": {"min": 0.0, "max": 1.0}}},
                    "status": {"dataType": "integer", "validValues": [0, 1, "unknown"]}
                },
                "validation": "DeadLetter",
                "topics": {"raw": "iot.smart_meter.raw", "enriched": "iot.smart_meter.enriched"},
                "applications": [{"id": "default/app", "displayName": "App", "developer": "D",
                    "platform": "api", "version": "1.0.0", "status": "active"}]
            }}
        }))
        .unwrap()
    }

    #[test]
    fn reads_the_document_the_operator_writes() {
        let r = Registry::from_json(&document(FORMAT_VERSION)).unwrap();
        let meter = &r.device_types["smart_meter"];
        assert_eq!(meter.validation, ValidationMode::DeadLetter);
        assert_eq!(
            meter.topics,
            TopicNames::for_device_type("iot", "smart_meter")
        );
        assert_eq!(meter.applications[0].platform, Platform::Api);
        let status = &meter.measurements["status"];
        assert_eq!(status.data_type, Some(DataType::Integer));
        assert_eq!(
            status.valid_values,
            [
                ValidValue::Int(0),
                ValidValue::Int(1),
                ValidValue::String("unknown".into())
            ]
        );
        assert_eq!(
            meter.measurements["power"].components["factor"].max,
            Some(1.0)
        );
        assert_eq!(r.topics, SharedTopics::new("iot"));
        // What is read is what is written.
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(Registry::from_json(&again).unwrap(), r);
    }

    #[test]
    fn refuses_other_versions_and_bad_json() {
        assert!(matches!(
            Registry::from_json(&document(99)),
            Err(RegistryError::Version { found: 99 })
        ));
        assert!(matches!(
            Registry::from_json(b"{"),
            Err(RegistryError::Parse(_))
        ));
        assert_eq!(Registry::empty("x").topics.deadletter, "x.deadletter");
        assert_eq!(mounted_file(), "/etc/iot-cloud/registry.json");
    }
}
