//! The enrichment context the workers read: every DeviceType and the active Applications of each,
//! as compact JSON, gzip-compressed, in the ConfigMap `iot-registry` (`binaryData` key
//! [`CONFIG_MAP_BINARY_KEY`]), mounted as a file and reloaded on change, so that workers never
//! call the Kubernetes API.
//!
//! [`build_registry`] is a pure function of the objects and [`encode`] a pure function of the
//! registry; the same input always gives the same bytes (maps and lists are sorted, the gzip
//! header carries no time stamp), so the operator can apply the ConfigMap only when it changed.
//!
//! A ConfigMap holds at most 1 MiB. Compression makes that about 20 times as many device types as
//! pretty-printed JSON did, and the CRDs' size limits ([`crate::crd::limits`]) bound what one
//! object adds; [`check_size`] is what the operator asks before writing, so that a registry that
//! does not fit is reported instead of failing to write for ever.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use kube::{Resource, ResourceExt};

use iot_model::registry as model;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{
    Application, DataType, DeviceType, Measurement, MeasurementComponent, Platform, TopicNames,
    ValidationMode, validate,
};

pub use iot_model::naming::is_valid_topic_prefix;
pub use iot_model::registry::{
    CONFIG_MAP_KEY, CONFIG_MAP_NAME, DEFAULT_NAMESPACE, FORMAT_VERSION, Registry,
    RegistryApplication, RegistryDeviceType, SharedTopics, Skipped,
};

/// Key of the registry in the ConfigMap's `binaryData`: compact JSON, gzip-compressed. The
/// workers' volumes project it to the file they read, [`CONFIG_MAP_KEY`] (`registry.json`, at
/// `iot_model::registry::mounted_file()`); they recognise gzip by its magic bytes, so a plain
/// JSON file (`iot-operator registry -f ...`) works as well.
pub const CONFIG_MAP_BINARY_KEY: &str = "registry.json.gz";

/// Most compressed bytes the operator writes. The API server refuses a ConfigMap whose `data` and
/// `binaryData` exceed 1 MiB (1,048,576 bytes); the rest is margin for the object's metadata in
/// etcd (annotations, managed fields), whose limit is 1.5 MiB for the whole object.
pub const MAX_COMPRESSED_BYTES: usize = 900 * 1024;

/// Most bytes of registry JSON (uncompressed) the operator writes. The workers refuse to
/// decompress more (`iot_workers::registry_file::MAX_JSON_BYTES`, a test keeps the two equal):
/// a worker holds the whole registry in memory, and the cap protects it from a gzip bomb.
pub const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;

/// A registry serialised for the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Length of the compact JSON.
    pub json_bytes: usize,
    /// The compact JSON, gzip-compressed: what the ConfigMap holds.
    pub gzip: Vec<u8>,
}

/// Serialises `registry` as compact JSON and compresses it with gzip (the default level: level 9
/// is twice as slow for under 1 % fewer bytes here). Deterministic: the header has no time stamp
/// or file name.
pub fn encode(registry: &Registry) -> Encoded {
    let json = serde_json::to_vec(registry).expect("the registry serialises");
    let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 8), Compression::default());
    gz.write_all(&json).expect("writing to memory");
    Encoded {
        json_bytes: json.len(),
        gzip: gz.finish().expect("writing to memory"),
    }
}

/// Why the bytes of a ConfigMap are not a registry.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not gzip data, or corrupt: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("more than {MAX_JSON_BYTES} bytes of JSON")]
    TooLarge,
    #[error(transparent)]
    Registry(#[from] iot_model::registry::RegistryError),
}

/// Reads what [`encode`] wrote.
pub fn decode(gzip: &[u8]) -> Result<Registry, DecodeError> {
    let mut json = Vec::new();
    GzDecoder::new(gzip)
        .take(MAX_JSON_BYTES as u64 + 1)
        .read_to_end(&mut json)?;
    if json.len() > MAX_JSON_BYTES {
        return Err(DecodeError::TooLarge);
    }
    Ok(Registry::from_json(&json)?)
}

/// A registry too large for the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the registry would be {gzip_bytes} bytes gzip-compressed ({json_bytes} bytes of JSON), \
     more than a ConfigMap holds (at most {MAX_COMPRESSED_BYTES} compressed, {MAX_JSON_BYTES} \
     of JSON)"
)]
pub struct TooLarge {
    pub gzip_bytes: usize,
    pub json_bytes: usize,
}

/// Whether `encoded` may be written into the ConfigMap.
pub fn check_size(encoded: &Encoded) -> Result<(), TooLarge> {
    if encoded.gzip.len() > MAX_COMPRESSED_BYTES || encoded.json_bytes > MAX_JSON_BYTES {
        return Err(TooLarge {
            gzip_bytes: encoded.gzip.len(),
            json_bytes: encoded.json_bytes,
        });
    }
    Ok(())
}

fn object_id<K: ResourceExt>(object: &K) -> String {
    let namespace = object
        .namespace()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    format!("{namespace}/{}", object.name_any())
}

fn is_deleting<K: ResourceExt>(object: &K) -> bool {
    object.meta().deletion_timestamp.is_some()
}

/// Builds the enrichment context from every DeviceType and Application.
///
/// - Objects being deleted are left out.
/// - A device-type id belongs to the oldest DeviceType that claims it (then the first by
///   `namespace/name`); later claimants are listed in `skipped`, as are invalid specs.
/// - Applications are matched to device types by id across namespaces (topic names are global to
///   the installation); only active ones are listed.
pub fn build_registry(
    device_types: &[DeviceType],
    apps: &[Application],
    topic_prefix: &str,
) -> Registry {
    let mut skipped = Vec::new();
    let mut candidates: Vec<&DeviceType> =
        device_types.iter().filter(|d| !is_deleting(*d)).collect();
    candidates.sort_by_key(|d| {
        let created = d.meta().creation_timestamp.clone();
        (created.is_none(), created, object_id(*d))
    });

    let mut entries: BTreeMap<String, RegistryDeviceType> = BTreeMap::new();
    for dt in candidates {
        let source = object_id(dt);
        let errors = validate::device_type(&dt.spec);
        if !errors.is_empty() {
            skipped.push(Skipped {
                kind: "DeviceType".into(),
                object: source,
                reason: validate::describe(&errors),
            });
            continue;
        }
        let spec = &dt.spec;
        if let Some(owner) = entries.get(&spec.device_type) {
            skipped.push(Skipped {
                kind: "DeviceType".into(),
                object: source,
                reason: format!(
                    "deviceType {:?} is already defined by {}",
                    spec.device_type, owner.source
                ),
            });
            continue;
        }
        let entry = RegistryDeviceType {
            id: spec.device_type.clone(),
            source,
            display_name: spec.display_name.clone(),
            description: spec.description.clone(),
            category: spec.category.clone(),
            capabilities: spec.capabilities.clone(),
            data_format: spec.data_format.clone(),
            update_frequency: spec.update_frequency.clone(),
            retention_policy: spec.retention_policy.clone(),
            measurements: spec
                .measurements
                .iter()
                .map(|(name, m)| (name.clone(), measurement(m)))
                .collect(),
            validation: validation(spec.validation),
            topics: TopicNames::for_device_type(topic_prefix, &spec.device_type),
            applications: Vec::new(),
        };
        entries.insert(spec.device_type.clone(), entry);
    }

    for app in apps.iter().filter(|a| a.spec.active && !is_deleting(*a)) {
        let id = object_id(app);
        let errors = validate::application(&app.spec);
        if !errors.is_empty() {
            skipped.push(Skipped {
                kind: "Application".into(),
                object: id,
                reason: validate::describe(&errors),
            });
            continue;
        }
        let spec = &app.spec;
        let listing = RegistryApplication {
            id,
            display_name: spec.display_name.clone(),
            developer: spec.developer.clone(),
            platform: platform(spec.platform),
            category: spec.category.clone(),
            version: spec.version.clone(),
            status: "active".into(),
        };
        for device_type in &spec.device_types {
            if let Some(entry) = entries.get_mut(device_type) {
                entry.applications.push(listing.clone());
            }
        }
    }
    for entry in entries.values_mut() {
        entry.applications.sort_by(|a, b| a.id.cmp(&b.id));
    }
    skipped.sort_by(|a, b| (&a.kind, &a.object).cmp(&(&b.kind, &b.object)));

    Registry {
        version: FORMAT_VERSION,
        topic_prefix: topic_prefix.to_string(),
        topics: SharedTopics::new(topic_prefix),
        device_types: entries,
        skipped,
    }
}

// The custom resources' types, converted into the registry document's own: the document changes
// only here, never as a side effect of a CRD change.

fn measurement(m: &Measurement) -> model::Measurement {
    model::Measurement {
        unit: m.unit.clone(),
        min: m.min,
        max: m.max,
        data_type: m.data_type.map(data_type),
        phases: m.phases.clone(),
        components: m
            .components
            .iter()
            .map(|(name, c)| (name.clone(), component(c)))
            .collect(),
        valid_values: valid_values(&m.valid_values),
    }
}

fn component(c: &MeasurementComponent) -> model::MeasurementComponent {
    model::MeasurementComponent {
        unit: c.unit.clone(),
        min: c.min,
        max: c.max,
        data_type: c.data_type.map(data_type),
        valid_values: valid_values(&c.valid_values),
    }
}

fn valid_values(values: &[IntOrString]) -> Vec<model::ValidValue> {
    values
        .iter()
        .map(|v| match v {
            IntOrString::Int(i) => model::ValidValue::Int(*i),
            IntOrString::String(s) => model::ValidValue::String(s.clone()),
        })
        .collect()
}

fn data_type(t: DataType) -> model::DataType {
    match t {
        DataType::Float => model::DataType::Float,
        DataType::Integer => model::DataType::Integer,
        DataType::Boolean => model::DataType::Boolean,
        DataType::String => model::DataType::String,
    }
}

fn validation(v: ValidationMode) -> model::ValidationMode {
    match v {
        ValidationMode::Off => model::ValidationMode::Off,
        ValidationMode::Flag => model::ValidationMode::Flag,
        ValidationMode::DeadLetter => model::ValidationMode::DeadLetter,
    }
}

fn platform(p: Platform) -> model::Platform {
    match p {
        Platform::Web => model::Platform::Web,
        Platform::Mobile => model::Platform::Mobile,
        Platform::Desktop => model::Platform::Desktop,
        Platform::Api => model::Platform::Api,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    fn device_type(namespace: &str, name: &str, id: &str) -> DeviceType {
        let spec = serde_json::from_value(json!({
            "deviceType": id,
            "displayName": format!("{id} display"),
            "category": "test",
            "capabilities": ["b_monitoring", "a_monitoring"],
            "measurements": {"temperature": {"unit": "°C", "min": -40.0, "max": 85.0}},
            "updateFrequency": "30_seconds",
            "manufacturers": [{"name": "EnvSense", "models": ["ES-100"]}],
            "locations": ["roof"]
        }))
        .unwrap();
        let mut dt = DeviceType::new(name, spec);
        dt.metadata.namespace = Some(namespace.into());
        dt
    }

    fn app(namespace: &str, name: &str, device_types: &[&str], active: bool) -> Application {
        let spec = serde_json::from_value(json!({
            "displayName": format!("{name} display"),
            "developer": "Dev",
            "platform": "api",
            "deviceTypes": device_types,
            "contactEmail": "dev@example.com",
            "active": active
        }))
        .unwrap();
        let mut app = Application::new(name, spec);
        app.metadata.namespace = Some(namespace.into());
        app
    }

    fn created(mut dt: DeviceType, rfc3339: &str) -> DeviceType {
        dt.metadata.creation_timestamp = Some(Time(rfc3339.parse().unwrap()));
        dt
    }

    fn app_ids(registry: &Registry, id: &str) -> Vec<String> {
        registry.device_types[id]
            .applications
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }

    #[test]
    fn the_json_shape() {
        let registry = build_registry(
            &[device_type("iot", "sensor", "environmental_sensor")],
            &[app("iot", "tracker", &["environmental_sensor"], true)],
            "iot",
        );
        let expected = json!({
            "version": 1,
            "topicPrefix": "iot",
            "topics": {"enriched": "iot.enriched", "deadletter": "iot.deadletter"},
            "deviceTypes": {
                "environmental_sensor": {
                    "id": "environmental_sensor",
                    "source": "iot/sensor",
                    "displayName": "environmental_sensor display",
                    "category": "test",
                    "capabilities": ["b_monitoring", "a_monitoring"],
                    "updateFrequency": "30_seconds",
                    "measurements": {"temperature": {"unit": "°C", "min": -40.0, "max": 85.0}},
                    "validation": "Flag",
                    "topics": {
                        "raw": "iot.environmental_sensor.raw",
                        "enriched": "iot.environmental_sensor.enriched"
                    },
                    "applications": [{
                        "id": "iot/tracker",
                        "displayName": "tracker display",
                        "developer": "Dev",
                        "platform": "api",
                        "version": "1.0.0",
                        "status": "active"
                    }]
                }
            }
        });
        assert_eq!(serde_json::to_value(&registry).unwrap(), expected);
        let back: Registry = serde_json::from_value(expected).unwrap();
        assert_eq!(back, registry);
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let dts = vec![
            device_type("b", "meter", "smart_meter"),
            device_type("a", "breaker", "smart_breaker"),
        ];
        let apps = vec![
            app("z", "last", &["smart_meter", "smart_breaker"], true),
            app("a", "first", &["smart_breaker"], true),
            app("m", "middle", &["smart_breaker"], true),
        ];
        let forward = build_registry(&dts, &apps, "iot");
        let mut dts_reversed = dts.clone();
        dts_reversed.reverse();
        let mut apps_reversed = apps.clone();
        apps_reversed.reverse();
        let backward = build_registry(&dts_reversed, &apps_reversed, "iot");
        assert_eq!(
            serde_json::to_string(&forward).unwrap(),
            serde_json::to_string(&backward).unwrap()
        );
        assert_eq!(
            app_ids(&forward, "smart_breaker"),
            ["a/first", "m/middle", "z/last"]
        );
        assert_eq!(app_ids(&forward, "smart_meter"), ["z/last"]);
    }

    #[test]
    fn only_active_applications_of_known_device_types() {
        let registry = build_registry(
            &[device_type("iot", "breaker", "smart_breaker")],
            &[
                app("iot", "on", &["smart_breaker"], true),
                app("iot", "off", &["smart_breaker"], false),
                app("iot", "elsewhere", &["unknown_type"], true),
                app(
                    "other",
                    "cross-namespace",
                    &["smart_breaker", "unknown_type"],
                    true,
                ),
            ],
            "iot",
        );
        assert_eq!(
            app_ids(&registry, "smart_breaker"),
            ["iot/on", "other/cross-namespace"]
        );
        assert!(registry.skipped.is_empty());
    }

    #[test]
    fn the_oldest_device_type_owns_an_id() {
        let older = created(
            device_type("b", "breaker", "smart_breaker"),
            "2025-01-01T00:00:00Z",
        );
        let newer = created(
            device_type("a", "breaker", "smart_breaker"),
            "2025-06-01T00:00:00Z",
        );
        let registry = build_registry(&[newer, older], &[], "iot");
        assert_eq!(registry.device_types["smart_breaker"].source, "b/breaker");
        assert_eq!(
            registry.skipped,
            [Skipped {
                kind: "DeviceType".into(),
                object: "a/breaker".into(),
                reason: "deviceType \"smart_breaker\" is already defined by b/breaker".into(),
            }]
        );
        // Without timestamps (manifests), the first by namespace/name wins.
        let registry = build_registry(
            &[
                device_type("b", "breaker", "smart_breaker"),
                device_type("a", "breaker", "smart_breaker"),
            ],
            &[],
            "iot",
        );
        assert_eq!(registry.device_types["smart_breaker"].source, "a/breaker");
    }

    #[test]
    fn deleted_and_invalid_objects_are_left_out() {
        let mut deleting = device_type("iot", "going", "smart_meter");
        deleting.metadata.deletion_timestamp = Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
        let mut invalid = device_type("iot", "bad", "smart_breaker");
        invalid.spec.enrichment.replicas = Some(9);
        let mut bad_app = app("iot", "bad-app", &["smart_breaker"], true);
        bad_app.spec.contact_email = "nobody".into();
        let mut deleting_app = app("iot", "going-app", &["environmental_sensor"], true);
        deleting_app.metadata.deletion_timestamp =
            Some(Time("2025-01-01T00:00:00Z".parse().unwrap()));
        let registry = build_registry(
            &[
                deleting,
                invalid,
                device_type("iot", "sensor", "environmental_sensor"),
            ],
            &[bad_app, deleting_app],
            "iot",
        );
        let ids: Vec<&String> = registry.device_types.keys().collect();
        assert_eq!(ids, ["environmental_sensor"]);
        assert!(
            registry.device_types["environmental_sensor"]
                .applications
                .is_empty()
        );
        let skipped: Vec<(&str, &str)> = registry
            .skipped
            .iter()
            .map(|s| (s.kind.as_str(), s.object.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [("Application", "iot/bad-app"), ("DeviceType", "iot/bad")]
        );
        assert!(registry.skipped[1].reason.contains("enrichment.replicas"));
    }

    #[test]
    fn objects_without_namespace_are_in_the_default_namespace() {
        let mut dt = device_type("x", "breaker", "smart_breaker");
        dt.metadata.namespace = None;
        let registry = build_registry(&[dt], &[], "staging");
        let entry = &registry.device_types["smart_breaker"];
        assert_eq!(entry.source, "default/breaker");
        assert_eq!(entry.topics.raw, "staging.smart_breaker.raw");
        assert_eq!(registry.topics.deadletter, "staging.deadletter");
    }
}

#[cfg(test)]
#[path = "registry_size_tests.rs"]
mod size_tests;
