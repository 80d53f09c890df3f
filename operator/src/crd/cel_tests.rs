//! The CRDs' CEL rules (`x-kubernetes-validations`) evaluated client-side with kube's CEL
//! validator (`kube::core::cel`, the `kube/cel` feature, enabled for tests only), against the
//! schema exactly as it is generated into `crds/`. A rule that does not compile fails here too,
//! because the valid objects would not pass.

use kube::CustomResourceExt;
use kube::core::cel::{ValidationErrors, Validator, validate_cel, validate_cel_update};
use serde_json::{Value, json};

use super::*;

/// The messages of the failed rules, empty when the object is valid.
fn failures(result: Result<(), ValidationErrors>) -> Vec<String> {
    match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Validates a raw object (as `kubectl apply` would send it, schema defaults applied first).
fn validate_json<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    let crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_ref().unwrap();
    let schema = serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap();
    failures(Validator::new().validate(&schema, object, old))
}

fn device_type(spec: Value) -> Value {
    json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": {"name": "smart-breaker"},
        "spec": spec,
    })
}

fn breaker() -> DeviceType {
    let spec = serde_json::from_value(json!({
        "deviceType": "smart_breaker",
        "displayName": "Smart Circuit Breaker",
        "measurements": {
            "voltage": {"unit": "V", "min": 110, "max": 130, "phases": ["phase_a", "phase_b"]},
            "power": {"unit": "W", "components": {
                "active": {"min": 0, "max": 12000},
                "factor": {"min": 0.7, "max": 1.0}
            }},
            "status": {"dataType": "integer", "validValues": [0, 1]}
        },
        "topics": {"partitions": 3, "retention": "30d", "config": {"cleanup.policy": "delete"}},
        "enrichment": {"minReplicas": 1, "maxReplicas": 3, "lagPerReplica": 500}
    }))
    .unwrap();
    DeviceType::new("smart-breaker", spec)
}

fn app() -> Application {
    let spec = serde_json::from_value(json!({
        "displayName": "Smart Grid Monitor",
        "developer": "IoT Solutions Inc.",
        "platform": "web",
        "deviceTypes": ["smart_breaker"],
        "contactEmail": "grid@example.com"
    }))
    .unwrap();
    Application::new("smart-grid-monitor", spec)
}

#[test]
fn valid_objects_pass_every_rule() {
    assert_eq!(failures(validate_cel(&breaker())), Vec::<String>::new());
    assert_eq!(failures(validate_cel(&app())), Vec::<String>::new());
    // Only the required fields: the schema defaults (partitions 3, no scaling) are valid too.
    let minimal = device_type(json!({"deviceType": "smart_meter", "displayName": "Meter"}));
    assert_eq!(
        validate_json::<DeviceType>(&minimal, None),
        Vec::<String>::new()
    );
}

#[test]
fn device_type_id_is_immutable() {
    let old = breaker();
    let mut renamed = old.clone();
    renamed.spec.device_type = "smart_breaker_v2".into();
    let errors = failures(validate_cel_update(&renamed, &old));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("deviceType is immutable"), "{errors:?}");

    let mut retitled = old.clone();
    retitled.spec.display_name = "Breaker".into();
    assert_eq!(
        failures(validate_cel_update(&retitled, &old)),
        Vec::<String>::new()
    );
}

#[test]
fn partitions_only_grow() {
    let old = breaker();
    let mut grown = old.clone();
    grown.spec.topics.partitions = 6;
    assert_eq!(
        failures(validate_cel_update(&grown, &old)),
        Vec::<String>::new()
    );

    let mut shrunk = old.clone();
    shrunk.spec.topics.partitions = 2;
    shrunk.spec.enrichment = EnrichmentSpec::default();
    let errors = failures(validate_cel_update(&shrunk, &old));
    assert!(
        errors.len() == 1 && errors[0].contains("partitions can only grow"),
        "{errors:?}"
    );
}

#[test]
fn enrichment_is_fixed_or_autoscaled_not_both() {
    let mut dt = breaker();
    dt.spec.enrichment = EnrichmentSpec {
        replicas: Some(2),
        max_replicas: Some(3),
        ..Default::default()
    };
    let errors = failures(validate_cel(&dt));
    assert!(
        errors.len() == 1 && errors[0].contains("not both"),
        "{errors:?}"
    );
}

#[test]
fn enrichment_min_replicas_not_above_max_replicas() {
    let mut dt = breaker();
    dt.spec.enrichment = EnrichmentSpec {
        min_replicas: Some(3),
        max_replicas: Some(2),
        ..Default::default()
    };
    let errors = failures(validate_cel(&dt));
    assert!(
        errors.len() == 1 && errors[0].contains("minReplicas must not be greater than maxReplicas"),
        "{errors:?}"
    );
}

#[test]
fn enrichment_autoscaling_needs_max_replicas() {
    let mut dt = breaker();
    dt.spec.enrichment = EnrichmentSpec {
        lag_per_replica: Some(100),
        ..Default::default()
    };
    let errors = failures(validate_cel(&dt));
    assert!(
        errors.len() == 1 && errors[0].contains("autoscaling needs maxReplicas"),
        "{errors:?}"
    );
}

#[test]
fn enrichment_replicas_never_above_partitions() {
    for enrichment in [json!({"replicas": 4}), json!({"maxReplicas": 4})] {
        // partitions defaults to 3 when `topics` is omitted.
        let object = device_type(json!({
            "deviceType": "smart_meter", "displayName": "Meter", "enrichment": enrichment
        }));
        let errors = validate_json::<DeviceType>(&object, None);
        assert!(
            errors.len() == 1 && errors[0].contains("must not exceed topics.partitions"),
            "{enrichment}: {errors:?}"
        );
        let object = device_type(json!({
            "deviceType": "smart_meter", "displayName": "Meter", "enrichment": enrichment,
            "topics": {"partitions": 4}
        }));
        assert_eq!(
            validate_json::<DeviceType>(&object, None),
            Vec::<String>::new()
        );
    }
}

#[test]
fn measurement_ranges_must_be_ordered() {
    // Integers as YAML writes them, and a component.
    let object = device_type(json!({
        "deviceType": "smart_meter", "displayName": "Meter",
        "measurements": {
            "energy": {"unit": "kWh", "min": 10, "max": 1},
            "power": {"components": {"factor": {"min": 1.0, "max": 0.8}}}
        }
    }));
    let errors = validate_json::<DeviceType>(&object, None);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("min must not be greater than max"))
    );

    let equal = device_type(json!({
        "deviceType": "smart_meter", "displayName": "Meter",
        "measurements": {"energy": {"min": 0, "max": 0.0}}
    }));
    assert_eq!(
        validate_json::<DeviceType>(&equal, None),
        Vec::<String>::new()
    );
}

#[test]
fn retention_is_set_once() {
    let mut dt = breaker();
    dt.spec
        .topics
        .config
        .insert("retention.ms".into(), "1000".into());
    let errors = failures(validate_cel(&dt));
    assert!(
        errors.len() == 1 && errors[0].contains("not both"),
        "{errors:?}"
    );
    dt.spec.topics.retention = None;
    assert_eq!(failures(validate_cel(&dt)), Vec::<String>::new());
}

#[test]
fn a_bad_contact_email_is_refused() {
    for bad in [
        "grid",
        "grid@example",
        "@example.com",
        "grid team@example.com",
        "a@b@c.de",
    ] {
        let mut application = app();
        application.spec.contact_email = bad.into();
        let errors = failures(validate_cel(&application));
        assert!(
            errors.len() == 1 && errors[0].contains("must be an email address"),
            "{bad}: {errors:?}"
        );
    }
    for good in ["a@b.co", "first.last+iot@sub.example.org"] {
        let mut application = app();
        application.spec.contact_email = good.into();
        assert_eq!(
            failures(validate_cel(&application)),
            Vec::<String>::new(),
            "{good}"
        );
    }
}

/// The client-side CEL validator checks only `x-kubernetes-validations`; the plain schema
/// constraints that the API server checks are asserted on the generated schema instead.
#[test]
fn schema_constraints_are_in_the_generated_schema() {
    let dt = serde_json::to_value(DeviceType::crd()).unwrap();
    let spec = &dt["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let id = &spec["properties"]["deviceType"];
    assert_eq!(id["pattern"], ID_PATTERN);
    assert_eq!(id["maxLength"], 63);
    assert_eq!(
        spec["properties"]["topics"]["properties"]["partitions"]["minimum"],
        1.0
    );
    assert_eq!(
        spec["properties"]["topics"]["properties"]["partitions"]["default"],
        3
    );
    assert_eq!(
        spec["properties"]["topics"]["properties"]["replicationFactor"]["default"],
        1
    );
    assert_eq!(spec["properties"]["deletionPolicy"]["default"], "Retain");
    assert_eq!(
        spec["properties"]["deletionPolicy"]["enum"],
        json!(["Retain", "Delete"])
    );
    assert_eq!(spec["properties"]["validation"]["default"], "Flag");
    assert_eq!(
        spec["properties"]["validation"]["enum"],
        json!(["Off", "Flag", "DeadLetter"])
    );
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["deviceType", "displayName"]);

    let app = serde_json::to_value(Application::crd()).unwrap();
    let spec = &app["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = &spec["properties"];
    assert_eq!(props["contactEmail"]["format"], "email");
    assert_eq!(
        props["platform"]["enum"],
        json!(["web", "mobile", "desktop", "api"])
    );
    assert_eq!(props["deviceTypes"]["minItems"], 1);
    assert_eq!(props["deviceTypes"]["x-kubernetes-list-type"], "set");
    assert_eq!(props["deviceTypes"]["items"]["pattern"], ID_PATTERN);
    assert_eq!(props["displayName"]["maxLength"], 100);
    assert_eq!(props["category"]["maxLength"], 50);
    assert_eq!(props["version"]["default"], "1.0.0");
    assert_eq!(props["active"]["default"], true);
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        required,
        [
            "contactEmail",
            "developer",
            "deviceTypes",
            "displayName",
            "platform"
        ]
    );
    assert!(
        props.get("apiKey").is_none() && !app.to_string().to_lowercase().contains("api_key"),
        "applications carry no API key"
    );
}

/// The limits the structural schema cannot express (map keys, a total over measurements) are CEL
/// rules.
#[test]
fn size_limits_that_need_cel() {
    use super::limits::*;
    let long = "x".repeat(NAME_MAX_LENGTH + 1);
    let mut dt = breaker();
    let voltage = dt.spec.measurements["voltage"].clone();
    dt.spec.measurements.insert(long.clone(), voltage);
    assert_eq!(
        failures(validate_cel(&dt)),
        ["spec.measurements: measurement names must be 1-64 characters long"]
    );

    let mut dt = breaker();
    let power = dt.spec.measurements.get_mut("power").unwrap();
    let factor = power.components["factor"].clone();
    power.components.insert(long.clone(), factor);
    dt.spec.manufacturers = vec![Manufacturer {
        name: "ElectroCorp".into(),
        ratings: [(long.clone(), "480V".into())].into(),
        ..Manufacturer::default()
    }];
    assert_eq!(
        failures(validate_cel(&dt)),
        [
            "spec.manufacturers[0].ratings: rating names must be 1-64 characters long",
            "spec.measurements.power.components: component names must be 1-64 characters long",
        ]
    );

    // 64 components in all pass (two measurements of 32); one more is refused, wherever it is.
    let mut dt = breaker();
    dt.spec.measurements.clear();
    for m in ["m0", "m1", "m2"] {
        let count = if m == "m2" {
            0
        } else {
            COMPONENTS_MAX_PROPERTIES
        };
        let measurement = Measurement {
            components: (0..count)
                .map(|c| (format!("c{c}"), MeasurementComponent::default()))
                .collect(),
            ..Measurement::default()
        };
        dt.spec.measurements.insert(m.into(), measurement);
    }
    assert_eq!(failures(validate_cel(&dt)), Vec::<String>::new());
    dt.spec
        .measurements
        .get_mut("m2")
        .unwrap()
        .components
        .insert("extra".into(), MeasurementComponent::default());
    assert_eq!(
        failures(validate_cel(&dt)),
        ["spec.measurements: at most 64 components over all measurements of a device type"]
    );
}

#[test]
fn the_largest_valid_device_type_passes_every_rule() {
    // ASCII: kube's client-side CEL counts `size()` of a string in bytes, the API server (rightly)
    // in characters. operator/tests/registry_scale.rs sends the API server multi-byte text.
    let spec = super::limits::largest_device_type_spec("largest", &mut |n| "x".repeat(n));
    let dt = DeviceType::new("largest", spec);
    assert_eq!(failures(validate_cel(&dt)), Vec::<String>::new());
}

#[test]
fn size_limits_are_in_the_generated_schema() {
    let dt = serde_json::to_value(DeviceType::crd()).unwrap();
    let props =
        &dt["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(props["description"]["maxLength"], 1024);
    assert_eq!(props["category"]["maxLength"], 64);
    assert_eq!(props["capabilities"]["maxItems"], 32);
    assert_eq!(props["capabilities"]["items"]["maxLength"], 64);
    assert_eq!(props["locations"]["maxItems"], 64);
    assert_eq!(props["manufacturers"]["maxItems"], 16);
    assert_eq!(props["measurements"]["maxProperties"], 64);
    let measurement = &props["measurements"]["additionalProperties"]["properties"];
    assert_eq!(measurement["unit"]["maxLength"], 32);
    assert_eq!(measurement["phases"]["maxItems"], 8);
    assert_eq!(measurement["validValues"]["maxItems"], 16);
    // An int-or-string item with a bound for its strings (no CEL: over unbounded strings its
    // estimated cost exceeds the API server's budget).
    let item = &measurement["validValues"]["items"];
    assert_eq!(item["x-kubernetes-int-or-string"], true);
    assert_eq!(item["maxLength"], 32);
    assert_eq!(measurement["components"]["maxProperties"], 32);
    assert_eq!(
        props["topics"]["properties"]["config"]["additionalProperties"]["maxLength"],
        1024
    );
    let app = serde_json::to_value(Application::crd()).unwrap();
    let props = &app["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(props["description"]["maxLength"], 1024);
}
