//! Unit tests of the registry writer's pure parts: the ConfigMap it applies, what it watches, and
//! which objects a kept registry lacks.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;
use crate::registry::CONFIG_MAP_BINARY_KEY;
use crate::registry::{RegistryApplication, RegistryDeviceType};
use iot_model::registry::{Platform, ValidationMode};

fn status() -> WriteStatus {
    WriteStatus {
        written: true,
        reason: REASON_WRITTEN.into(),
        message: "3 device types".into(),
    }
}

fn cm(registry: &[u8]) -> ConfigMap {
    desired_config_map("iot-registry", "ns", Some(registry), &status(), None)
}

fn operator_deployment() -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "iot-cloud-operator".into(),
        uid: "4b7c1e0a-0000-4000-8000-000000000001".into(),
        controller: Some(false),
        block_owner_deletion: None,
    }
}

#[test]
fn the_registry_config_map_is_owned_by_the_operator_deployment_when_given() {
    let owner = operator_deployment();
    let body = serde_json::to_value(desired_config_map(
        "iot-registry",
        "ns",
        Some(b"x"),
        &status(),
        Some(&owner),
    ))
    .unwrap();
    assert_eq!(
        body["metadata"]["ownerReferences"],
        serde_json::json!([{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "iot-cloud-operator",
            "uid": "4b7c1e0a-0000-4000-8000-000000000001",
            "controller": false
        }])
    );
    // Without an owner the apply body names none, so a previous owner this field manager set
    // is released.
    let body = serde_json::to_value(cm(b"x")).unwrap();
    assert!(body["metadata"].get("ownerReferences").is_none(), "{body}");
}

#[test]
fn the_config_map_holds_the_compressed_registry_and_its_condition() {
    let registry = Registry::empty("iot");
    let encoded = registry::encode(&registry);
    let cm = cm(&encoded.gzip);
    let body = serde_json::to_value(&cm).unwrap();
    // binaryData only: the pretty JSON key of earlier versions is not named, so server-side apply
    // removes it from ConfigMaps this field manager wrote before.
    assert!(body.get("data").is_none(), "{body}");
    assert!(body["binaryData"][CONFIG_MAP_BINARY_KEY].is_string());
    assert_eq!(registry_in(&cm), Some(registry));
    assert_eq!(WriteStatus::of(&cm), Some(status()));
    assert_eq!(
        body["metadata"]["annotations"][ANNOTATION_WRITTEN], "True",
        "{body}"
    );

    // Nothing to keep: the annotations alone.
    let refused = WriteStatus::too_large(
        &registry::TooLarge {
            gzip_bytes: 2_000_000,
            json_bytes: 30_000_000,
        },
        "no registry",
    );
    let cm = desired_config_map("iot-registry", "ns", None, &refused, None);
    assert!(cm.binary_data.is_none());
    let read = WriteStatus::of(&cm).unwrap();
    assert!(!read.written);
    assert_eq!(read.reason, REASON_TOO_LARGE);
    assert!(
        read.message.contains("2000000 bytes gzip-compressed")
            && read.message.contains("keeps no registry"),
        "{}",
        read.message
    );
}

#[test]
fn the_watched_registry_tells_an_edit_or_deletion_from_our_own_write() {
    let mut live = LiveRegistry::default();
    // Nothing known before the first listing: no write is forced.
    assert!(!live.differs_from(Some(b"a")));
    live.observe(Ok(watcher::Event::Init));
    live.observe(Ok(watcher::Event::InitDone));
    assert!(live.differs_from(Some(b"a")), "absent after listing");
    live.wrote(Some(b"a"));
    assert!(!live.differs_from(Some(b"a")));
    live.observe(Ok(watcher::Event::Apply(cm(b"a"))));
    assert!(!live.differs_from(Some(b"a")), "our own write coming back");
    live.observe(Ok(watcher::Event::Apply(cm(b"{}"))));
    assert!(live.differs_from(Some(b"a")), "edited");
    live.observe(Ok(watcher::Event::Delete(cm(b"{}"))));
    assert!(live.differs_from(Some(b"a")), "deleted");
    live.observe(Ok(watcher::Event::Init));
    live.observe(Ok(watcher::Event::InitApply(cm(b"a"))));
    assert!(
        live.differs_from(Some(b"a")),
        "a relisting counts only when done"
    );
    live.observe(Ok(watcher::Event::InitDone));
    assert!(!live.differs_from(Some(b"a")));
    let mut no_key = cm(b"a");
    no_key.binary_data = None;
    no_key.data = Some([("registry.json".to_string(), "{}".to_string())].into());
    live.observe(Ok(watcher::Event::Apply(no_key)));
    assert!(
        live.differs_from(Some(b"a")),
        "the key removed (or only the plain JSON of an older operator)"
    );
    assert!(
        !live.differs_from(None),
        "nothing written yet: nothing to restore"
    );
}

#[test]
fn failed_writes_back_off_exponentially_to_half_a_minute() {
    let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 32, 32]);
}

fn entry(id: &str, apps: &[&str]) -> RegistryDeviceType {
    RegistryDeviceType {
        id: id.into(),
        source: format!("iot/{}", id.replace('_', "-")),
        display_name: id.into(),
        description: None,
        category: None,
        capabilities: Vec::new(),
        data_format: None,
        update_frequency: None,
        retention_policy: None,
        measurements: BTreeMap::new(),
        validation: ValidationMode::Flag,
        topics: crate::crd::TopicNames::for_device_type("iot", id),
        applications: apps
            .iter()
            .map(|a| RegistryApplication {
                id: format!("iot/{a}"),
                display_name: a.to_string(),
                developer: "Dev".into(),
                platform: Platform::Api,
                category: None,
                version: "1.0.0".into(),
                status: "active".into(),
            })
            .collect(),
    }
}

fn registry(entries: Vec<RegistryDeviceType>) -> Registry {
    let mut r = Registry::empty("iot");
    r.device_types = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
    r
}

#[test]
fn the_objects_a_kept_registry_lacks() {
    let kept = registry(vec![
        entry("smart_breaker", &["grid"]),
        entry("smart_meter", &[]),
    ]);
    let mut changed = entry("smart_meter", &["grid", "billing"]);
    changed.description = Some("new".into());
    let current = registry(vec![
        // Only its applications changed: the DeviceType itself is in the kept registry.
        entry("smart_breaker", &["grid", "audit"]),
        changed,
        entry("environmental_sensor", &[]),
    ]);
    let missing: Vec<(&str, String)> = missing_from(Some(&kept), &current).into_iter().collect();
    let expected: Vec<(&str, String)> = vec![
        ("Application", "audit".into()),
        ("Application", "billing".into()),
        // Listed under a device type whose kept entry does not list it.
        ("Application", "grid".into()),
        ("DeviceType", "environmental-sensor".into()),
        ("DeviceType", "smart-meter".into()),
    ];
    assert_eq!(missing, expected);
    assert!(missing_from(Some(&current), &current).is_empty());
    // Nothing kept (or unreadable): everything is missing.
    assert_eq!(missing_from(None, &kept).len(), 3);
}
