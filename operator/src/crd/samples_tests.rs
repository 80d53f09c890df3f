//! `deploy/samples/` parses into the Rust types, passes the CRDs' rules, and yields the registry
//! the seed had: three device types, each with its one application.

use std::path::Path;

use iot_model::registry as model;
use kube::ResourceExt;
use kube::core::cel::validate_cel;

use super::manifests::{self, Manifests};
use super::*;
use crate::registry::build_registry;

fn samples() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    manifests::load(&dir).unwrap()
}

#[test]
fn every_sample_parses_and_is_valid() {
    let samples = samples();
    let mut names: Vec<String> = samples.device_types.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        ["environmental-sensor", "smart-breaker", "smart-meter"]
    );
    let mut names: Vec<String> = samples.applications.iter().map(|a| a.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "energy-analytics",
            "environmental-tracker",
            "smart-grid-monitor"
        ]
    );

    for dt in &samples.device_types {
        assert_eq!(validate::device_type(&dt.spec), [], "{}", dt.name_any());
        if let Err(errors) = validate_cel(dt) {
            panic!("{}: {errors:?}", dt.name_any());
        }
    }
    for app in &samples.applications {
        assert_eq!(validate::application(&app.spec), [], "{}", app.name_any());
        if let Err(errors) = validate_cel(app) {
            panic!("{}: {errors:?}", app.name_any());
        }
    }
}

#[test]
fn the_smart_breaker_sample_has_the_seed_ranges() {
    let samples = samples();
    let breaker = &samples
        .device_types
        .iter()
        .find(|d| d.spec.device_type == "smart_breaker")
        .unwrap()
        .spec;
    assert_eq!(breaker.capabilities.len(), 8);
    let range = |name: &str| {
        let m = &breaker.measurements[name];
        (m.min, m.max)
    };
    assert_eq!(range("voltage"), (Some(110.0), Some(130.0)));
    assert_eq!(range("current"), (Some(0.0), Some(100.0)));
    assert_eq!(range("frequency"), (Some(59.0), Some(61.0)));
    assert_eq!(range("temperature"), (Some(20.0), Some(80.0)));
    assert_eq!(
        breaker.measurements["voltage"].phases,
        ["phase_a", "phase_b", "phase_c"]
    );
    let power = &breaker.measurements["power"].components;
    assert_eq!(
        (power["reactive"].min, power["reactive"].max),
        (Some(0.0), Some(8000.0))
    );
    assert_eq!(
        (power["factor"].min, power["factor"].max),
        (Some(0.7), Some(1.0))
    );
    let protection = &breaker.measurements["protection"].components;
    assert_eq!(protection["trip_count"].max, Some(999.0));
    assert_eq!(
        protection["arc_fault_detected"].data_type,
        Some(DataType::Boolean)
    );
    assert_eq!(
        breaker.measurements["operational"].components["operating_hours"].max,
        Some(87600.0)
    );
    let manufacturers: Vec<&str> = breaker
        .manufacturers
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(manufacturers, ["ElectroCorp", "PowerTech"]);
    assert_eq!(breaker.manufacturers[1].ratings["current"], "200A");
    assert_eq!(breaker.locations.len(), 5);
    assert_eq!(breaker.update_frequency.as_deref(), Some("5_seconds"));
    assert_eq!(breaker.retention_policy.as_deref(), Some("30_days"));
    assert_eq!(
        breaker.enrichment.scaling(),
        Scaling::Autoscale {
            min: 1,
            max: 3,
            lag_per_replica: 1000
        }
    );
}

#[test]
fn the_registry_of_the_samples_matches_the_seed() {
    let mut samples = samples();
    samples.default_namespace("iot");
    let registry = build_registry(&samples.device_types, &samples.applications, "iot");
    assert!(registry.skipped.is_empty(), "{:?}", registry.skipped);
    let ids: Vec<&str> = registry.device_types.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["environmental_sensor", "smart_breaker", "smart_meter"]
    );

    for (id, app, platform) in [
        (
            "smart_breaker",
            "iot/smart-grid-monitor",
            model::Platform::Web,
        ),
        (
            "smart_meter",
            "iot/energy-analytics",
            model::Platform::Mobile,
        ),
        (
            "environmental_sensor",
            "iot/environmental-tracker",
            model::Platform::Desktop,
        ),
    ] {
        let entry = &registry.device_types[id];
        assert_eq!(entry.topics.enriched, format!("iot.{id}.enriched"));
        assert_eq!(entry.topics.raw, format!("iot.{id}.raw"));
        assert_eq!(entry.applications.len(), 1, "{id}");
        assert_eq!(entry.applications[0].id, app);
        assert_eq!(entry.applications[0].platform, platform);
        assert_eq!(entry.applications[0].status, "active");
    }
    let breaker = &registry.device_types["smart_breaker"];
    assert_eq!(breaker.display_name, "Smart Circuit Breaker");
    assert_eq!(breaker.applications[0].display_name, "Smart Grid Monitor");
    assert_eq!(breaker.applications[0].developer, "IoT Solutions Inc.");
    let sensor = &registry.device_types["environmental_sensor"];
    assert_eq!(sensor.measurements["pressure"].min, Some(300.0));
    assert_eq!(sensor.measurements["temperature"].min, Some(-40.0));

    let json = serde_json::to_string(&registry).unwrap().to_lowercase();
    assert!(
        !json.contains("apikey") && !json.contains("api_key"),
        "no secrets"
    );
    assert!(
        !json.contains("contactemail"),
        "contact emails stay out of every message"
    );
}
