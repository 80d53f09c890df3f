//! The registry (`registry.json`, written by the operator into ConfigMap `iot-registry`, read by
//! [`crate::registry_file`], which decompresses it) compiled
//! for the data path: one lookup per message gives the raw and enriched topics of a device type and
//! the ready-made `device_metadata` and `application_registry` blocks of its enriched messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iot_model::naming::{TopicNames, all_enriched_topic, deadletter_topic};
use iot_model::registry::{
    Measurement, Registry, RegistryDeviceType, RegistryError, ValidationMode,
};
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};

/// Everything the data path needs to know about one registered device type.
#[derive(Debug)]
pub struct TypeContext {
    /// Device-type id, e.g. `smart_breaker`.
    pub id: String,
    /// `{prefix}.{id}.raw` and `{prefix}.{id}.enriched`.
    pub topics: TopicNames,
    /// The seed's `device_metadata` block, serialised once.
    pub device_metadata: Box<RawValue>,
    /// The seed's `application_registry` block (active applications, no secrets), serialised once.
    pub application_registry: Box<RawValue>,
    /// Declared measurements with their ranges.
    pub measurements: BTreeMap<String, Measurement>,
    /// What to do with out-of-range measurements.
    pub validation: ValidationMode,
}

/// The registry as the workers use it.
#[derive(Debug)]
pub struct Catalog {
    /// Topic prefix the worker was configured with.
    pub prefix: String,
    /// `{prefix}.enriched`.
    pub all_enriched_topic: String,
    /// `{prefix}.deadletter`.
    pub deadletter_topic: String,
    /// `topicPrefix` of the registry document, when it differs from `prefix` (a misconfiguration
    /// worth a warning: the operator created topics under that prefix).
    pub registry_prefix_mismatch: Option<String>,
    types: HashMap<String, Arc<TypeContext>>,
}

impl Catalog {
    /// Parses and compiles a `registry.json` document. Topic names are derived from `prefix`, the
    /// worker's own `IOT_TOPIC_PREFIX`.
    pub fn from_json(bytes: &[u8], prefix: &str) -> Result<Self, RegistryError> {
        Ok(Self::from_registry(&Registry::from_json(bytes)?, prefix))
    }

    /// Compiles a registry.
    pub fn from_registry(registry: &Registry, prefix: &str) -> Self {
        let types = registry
            .device_types
            .values()
            .map(|dt| (dt.id.clone(), Arc::new(type_context(dt, prefix))))
            .collect();
        Self {
            prefix: prefix.to_string(),
            all_enriched_topic: all_enriched_topic(prefix),
            deadletter_topic: deadletter_topic(prefix),
            registry_prefix_mismatch: (registry.topic_prefix != prefix)
                .then(|| registry.topic_prefix.clone()),
            types,
        }
    }

    /// A catalog without device types: every message is dead-lettered as unregistered.
    pub fn empty(prefix: &str) -> Self {
        Self::from_registry(&Registry::empty(prefix), prefix)
    }

    /// The registered device type `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<TypeContext>> {
        self.types.get(id)
    }

    /// Ids of every registered device type, sorted.
    pub fn device_type_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.types.keys().cloned().collect();
        ids.sort();
        ids
    }
}

fn type_context(dt: &RegistryDeviceType, prefix: &str) -> TypeContext {
    let device_metadata = json!({
        "device_type": dt.id,
        "device_type_name": dt.display_name,
        "device_type_description": dt.description,
        "device_category": dt.category,
        "capabilities": dt.capabilities,
        "data_format": dt.data_format,
        "update_frequency": dt.update_frequency,
        "retention_policy": dt.retention_policy,
    });
    let applications: Vec<Value> = dt
        .applications
        .iter()
        .map(|app| {
            json!({
                "id": app.id,
                "name": app.display_name,
                "developer": app.developer,
                "platform": app.platform,
                "category": app.category,
                "version": app.version,
                "status": app.status,
            })
        })
        .collect();
    let application_registry = json!({
        "device_type": dt.id,
        "registered_applications_count": applications.len(),
        "applications": applications,
    });
    TypeContext {
        id: dt.id.clone(),
        topics: TopicNames::for_device_type(prefix, &dt.id),
        device_metadata: to_raw_value(&device_metadata).expect("a JSON value serializes"),
        application_registry: to_raw_value(&application_registry).expect("a JSON value serializes"),
        measurements: dt.measurements.clone(),
        validation: dt.validation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_registry;

    #[test]
    fn compiles_the_sample_registry() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
        assert_eq!(
            catalog.device_type_ids(),
            ["environmental_sensor", "smart_breaker", "smart_meter"]
        );
        assert_eq!(catalog.deadletter_topic, "iot.deadletter");
        assert_eq!(catalog.all_enriched_topic, "iot.enriched");
        assert!(catalog.registry_prefix_mismatch.is_none());
        let breaker = catalog.get("smart_breaker").unwrap();
        assert_eq!(breaker.topics.raw, "iot.smart_breaker.raw");
        assert_eq!(breaker.topics.enriched, "iot.smart_breaker.enriched");
        let metadata: Value = serde_json::from_str(breaker.device_metadata.get()).unwrap();
        assert_eq!(metadata["device_type_name"], "Smart Circuit Breaker");
        assert_eq!(metadata["device_category"], "electrical_protection");
        assert_eq!(metadata["update_frequency"], "5_seconds");
        let apps: Value = serde_json::from_str(breaker.application_registry.get()).unwrap();
        assert_eq!(apps["registered_applications_count"], 1);
        assert_eq!(apps["applications"][0]["name"], "Smart Grid Monitor");
        assert_eq!(apps["applications"][0]["developer"], "IoT Solutions Inc.");
        assert_eq!(apps["applications"][0]["platform"], "web");
        assert_eq!(apps["applications"][0]["status"], "active");
        // No contact e-mail or any other secret-like field leaks into messages.
        assert!(!apps.to_string().contains('@'));
        assert_eq!(breaker.measurements.len(), 8);
    }

    #[test]
    fn topics_follow_the_worker_prefix_and_a_mismatch_is_reported() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "staging");
        assert_eq!(
            catalog.get("smart_meter").unwrap().topics.raw,
            "staging.smart_meter.raw"
        );
        assert_eq!(catalog.registry_prefix_mismatch.as_deref(), Some("iot"));
    }

    #[test]
    fn refuses_unknown_versions_and_bad_json() {
        let mut registry = serde_json::to_value(sample_registry("iot")).unwrap();
        registry["version"] = json!(99);
        let bytes = serde_json::to_vec(&registry).unwrap();
        assert!(matches!(
            Catalog::from_json(&bytes, "iot"),
            Err(RegistryError::Version { found: 99 })
        ));
        assert!(matches!(
            Catalog::from_json(b"{", "iot"),
            Err(RegistryError::Parse(_))
        ));
        let empty = Catalog::empty("iot");
        assert!(empty.get("smart_breaker").is_none());
    }
}
