//! Unit tests of the pure spec validation.

use super::*;
use crate::crd::{EnrichmentSpec, Measurement, MeasurementComponent, Platform, TopicsSpec};

fn device_type_spec() -> DeviceTypeSpec {
    serde_json::from_value(serde_json::json!({
        "deviceType": "smart_breaker",
        "displayName": "Smart Circuit Breaker",
        "measurements": {
            "voltage": {"unit": "V", "min": 110.0, "max": 130.0, "phases": ["phase_a"]}
        }
    }))
    .unwrap()
}

fn application_spec() -> ApplicationSpec {
    ApplicationSpec {
        display_name: "Smart Grid Monitor".into(),
        developer: "IoT Solutions Inc.".into(),
        description: None,
        platform: Platform::Web,
        category: Some("monitoring".into()),
        device_types: vec!["smart_breaker".into()],
        version: "1.0.0".into(),
        contact_email: "grid@example.com".into(),
        active: true,
    }
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn ids() {
    for good in ["smart_breaker", "a", "meter2", "x_1_y"] {
        assert!(is_valid_id(good), "{good}");
    }
    for bad in [
        "",
        "Smart",
        "2meter",
        "_x",
        "smart-breaker",
        "smart.breaker",
        "ü",
    ] {
        assert!(!is_valid_id(bad), "{bad}");
    }
    assert!(is_valid_id(&"a".repeat(63)));
    assert!(!is_valid_id(&"a".repeat(64)));
}

#[test]
fn emails() {
    for good in ["grid@example.com", "a.b+c@sub.example.org", "x@y.z"] {
        assert!(is_valid_email(good), "{good}");
    }
    for bad in [
        "",
        "grid",
        "grid@",
        "@example.com",
        "grid@example",
        "grid@example.",
        "grid@.com",
        "a@b@c.com",
        "grid team@example.com",
    ] {
        assert!(!is_valid_email(bad), "{bad}");
    }
}

#[test]
fn a_valid_device_type_has_no_errors() {
    assert_eq!(device_type(&device_type_spec()), []);
}

#[test]
fn device_type_id_and_display_name() {
    let mut spec = device_type_spec();
    spec.device_type = "Smart-Breaker".into();
    spec.display_name = String::new();
    let errors = device_type(&spec);
    assert_eq!(fields(&errors), ["deviceType", "displayName"]);
    assert!(errors[0].to_string().starts_with("spec.deviceType: "));
}

#[test]
fn measurement_ranges() {
    let mut spec = device_type_spec();
    spec.measurements.insert(
        "power".into(),
        Measurement {
            min: Some(5.0),
            max: Some(1.0),
            components: [(
                "factor".to_string(),
                MeasurementComponent {
                    min: Some(1.0),
                    max: Some(0.7),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        },
    );
    assert_eq!(
        fields(&device_type(&spec)),
        ["measurements.power", "measurements.power.components.factor"]
    );
}

#[test]
fn topics() {
    let mut spec = device_type_spec();
    spec.topics = TopicsSpec {
        partitions: 0,
        replication_factor: 0,
        retention: Some("30 days".into()),
        config: [("retention.ms".to_string(), "1000".to_string())].into(),
    };
    assert_eq!(
        fields(&device_type(&spec)),
        [
            "topics.partitions",
            "topics.replicationFactor",
            "topics.retention",
            "topics.config"
        ]
    );
}

#[test]
fn enrichment_fixed_or_autoscaling_not_both() {
    let mut spec = device_type_spec();
    spec.enrichment = EnrichmentSpec {
        replicas: Some(2),
        max_replicas: Some(3),
        ..Default::default()
    };
    assert_eq!(fields(&device_type(&spec)), ["enrichment"]);
}

#[test]
fn enrichment_autoscaling_needs_max_and_min_not_above_max() {
    let mut spec = device_type_spec();
    spec.enrichment = EnrichmentSpec {
        min_replicas: Some(2),
        ..Default::default()
    };
    assert_eq!(fields(&device_type(&spec)), ["enrichment.maxReplicas"]);

    spec.enrichment = EnrichmentSpec {
        min_replicas: Some(3),
        max_replicas: Some(2),
        ..Default::default()
    };
    assert_eq!(fields(&device_type(&spec)), ["enrichment.minReplicas"]);
}

#[test]
fn enrichment_never_above_partitions() {
    let mut spec = device_type_spec();
    spec.enrichment = EnrichmentSpec {
        max_replicas: Some(4),
        ..Default::default()
    };
    assert_eq!(fields(&device_type(&spec)), ["enrichment.maxReplicas"]);
    spec.topics.partitions = 4;
    assert_eq!(device_type(&spec), []);

    spec.enrichment = EnrichmentSpec {
        replicas: Some(5),
        ..Default::default()
    };
    assert_eq!(fields(&device_type(&spec)), ["enrichment.replicas"]);
    spec.enrichment.replicas = Some(-1);
    assert_eq!(fields(&device_type(&spec)), ["enrichment.replicas"]);
    spec.enrichment.replicas = Some(0);
    assert_eq!(device_type(&spec), []);
}

#[test]
fn device_type_updates() {
    let old = device_type_spec();
    let mut new = old.clone();
    new.display_name = "Renamed".into();
    new.topics.partitions = 6;
    assert_eq!(device_type_update(&old, &new), []);

    new.device_type = "smart_breaker_v2".into();
    assert_eq!(fields(&device_type_update(&old, &new)), ["deviceType"]);

    let mut shrunk = old.clone();
    shrunk.topics.partitions = 1;
    assert_eq!(
        fields(&device_type_update(&old, &shrunk)),
        ["topics.partitions"]
    );
}

#[test]
fn a_valid_application_has_no_errors() {
    assert_eq!(application(&application_spec()), []);
}

#[test]
fn application_fields() {
    let mut spec = application_spec();
    spec.display_name = "x".repeat(101);
    spec.developer = String::new();
    spec.category = Some("c".repeat(51));
    spec.version = String::new();
    spec.contact_email = "not-an-email".into();
    spec.device_types = vec![
        "smart_breaker".into(),
        "Smart".into(),
        "smart_breaker".into(),
    ];
    assert_eq!(
        fields(&application(&spec)),
        [
            "displayName",
            "developer",
            "category",
            "version",
            "contactEmail",
            "deviceTypes[1]",
            "deviceTypes[2]"
        ]
    );
    spec.device_types.clear();
    assert!(fields(&application(&spec)).contains(&"deviceTypes"));
}

#[test]
fn free_text_and_lists_have_size_limits() {
    let mut spec = device_type_spec();
    // Characters, not bytes, as the API server counts them.
    spec.description = Some("é".repeat(1024));
    assert_eq!(device_type(&spec), []);
    spec.description = Some("x".repeat(1_100_000));
    let voltage = spec.measurements.get_mut("voltage").unwrap();
    voltage.unit = Some("u".repeat(33));
    voltage.phases = (0..9).map(|i| format!("phase_{i}")).collect();
    spec.capabilities = vec![String::new()];
    let errors = device_type(&spec);
    assert_eq!(
        fields(&errors),
        [
            "description",
            "capabilities[0]",
            "measurements.voltage.unit",
            "measurements.voltage.phases"
        ],
        "{errors:?}"
    );
    assert_eq!(
        errors[0].to_string(),
        "spec.description: must be 0-1024 characters long, is 1100000"
    );

    let mut app = application_spec();
    app.description = Some("x".repeat(1025));
    assert_eq!(fields(&application(&app)), ["description"]);
}
