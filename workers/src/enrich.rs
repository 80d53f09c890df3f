//! Enrichment, sans-IO: one raw record in, one enriched message (or a dead-letter decision) out.
//!
//! The enriched message keeps every field of the raw one (`device_id`, `timestamp`, `event_type`,
//! `measurements` / `trends` / `status`, a load test's `seq`, ...) and adds the seed's four blocks,
//! without the seed's defects: RFC 3339 UTC times, no application secrets, and the four blocks are
//! replaced rather than nested when a message passes through twice (no unbounded growth).

use iot_operator::crd::ValidationMode;
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, TypeContext};
use crate::clock;
use crate::quality::{self, Completeness};
use crate::route::{self, Reason, Rejection};

/// `enrichment_info.enrichment_service`.
pub const SERVICE_NAME: &str = "iot-enrichment-service";
/// `enrichment_info.enrichment_version`.
pub const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How far a device clock may run ahead before its timestamp counts as invalid.
pub const MAX_CLOCK_AHEAD_SECONDS: i64 = 300;

/// What the enrichment knows about a record besides its payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordInfo<'a> {
    /// The device type whose raw topic the record came from (`None`: do not check).
    pub topic_device_type: Option<&'a str>,
    /// When the bridge received it (header `received_at`).
    pub bridge_received_at: Option<&'a str>,
}

/// A message ready for the enriched topics.
#[derive(Clone, Debug)]
pub struct Enriched {
    /// The enriched JSON.
    pub payload: Vec<u8>,
    pub device_id: String,
    pub device_type: String,
    /// The device's own timestamp, when valid (for the latency histogram).
    pub device_timestamp: Option<Timestamp>,
    /// Values outside their declaration (flagged, not dead-lettered).
    pub violations: usize,
}

/// The enrichment's decision for one record.
#[derive(Clone, Debug)]
pub enum Outcome {
    Enriched(Enriched),
    DeadLetter(Rejection),
}

/// Enriches one raw record.
pub fn enrich(payload: &[u8], info: RecordInfo<'_>, catalog: &Catalog, now: Timestamp) -> Outcome {
    match try_enrich(payload, info, catalog, now) {
        Ok(e) => Outcome::Enriched(e),
        Err(r) => Outcome::DeadLetter(r),
    }
}

fn try_enrich(
    payload: &[u8],
    info: RecordInfo<'_>,
    catalog: &Catalog,
    now: Timestamp,
) -> Result<Enriched, Rejection> {
    let mut object = route::parse_object(payload)?;
    let device_id = route::device_id(&object)?.to_string();
    let with_id = |mut r: Rejection| {
        r.device_id = Some(device_id.clone());
        r
    };
    let device_type = route::device_type(&object).map_err(with_id)?.to_string();
    if let Some(expected) = info.topic_device_type
        && expected != device_type
    {
        return Err(with_id(Rejection::new(
            Reason::DeviceTypeMismatch,
            format!("device_type {device_type:?} in the raw topic of {expected:?}"),
        )));
    }
    let context = catalog.get(&device_type).ok_or_else(|| {
        with_id(Rejection::new(
            Reason::UnregisteredDeviceType,
            format!("device_type {device_type:?} is not registered"),
        ))
    })?;

    let device_timestamp = object
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(clock::parse)
        .filter(|ts| ts.as_second() <= now.as_second() + MAX_CLOCK_AHEAD_SECONDS);
    let (data_quality, violations) =
        data_quality(&object, context, device_timestamp.is_some()).map_err(with_id)?;

    object.insert("device_metadata".into(), context.device_metadata.clone());
    object.insert(
        "application_registry".into(),
        context.application_registry.clone(),
    );
    let mut enrichment_info = json!({
        "enriched_at": clock::rfc3339(now),
        "enrichment_service": SERVICE_NAME,
        "enrichment_version": SERVICE_VERSION,
        "device_type_detected": device_type,
        "app_registry_integration": true,
    });
    if let Some(received) = info.bridge_received_at {
        enrichment_info["bridge_received_at"] = Value::from(received);
    }
    object.insert("enrichment_info".into(), enrichment_info);
    object.insert("data_quality".into(), data_quality);

    Ok(Enriched {
        payload: serde_json::to_vec(&object).expect("a JSON map serializes"),
        device_id,
        device_type,
        device_timestamp,
        violations,
    })
}

/// The `data_quality` block and the number of flagged violations; a rejection when the
/// validation mode dead-letters violations.
fn data_quality(
    object: &Map<String, Value>,
    context: &TypeContext,
    timestamp_valid: bool,
) -> Result<(Value, usize), Rejection> {
    let mut dq = Map::new();
    dq.insert("timestamp_valid".into(), timestamp_valid.into());
    let measurements = object.get("measurements").and_then(Value::as_object);
    let mut violations = Vec::new();
    match measurements {
        Some(m) => {
            let Completeness { present, declared } =
                quality::completeness(m, &context.measurements);
            let complete = Completeness { present, declared }.is_complete();
            dq.insert("measurements_complete".into(), complete.into());
            dq.insert("measurements_present".into(), present.into());
            dq.insert("measurements_declared".into(), declared.into());
            if context.validation != ValidationMode::Off {
                violations = quality::check_ranges(m, &context.measurements);
            }
        }
        // Trends and status messages carry no measurements: completeness does not apply.
        None => {
            dq.insert("measurements_complete".into(), Value::Null);
        }
    }
    let mode = match context.validation {
        ValidationMode::Off => "Off",
        ValidationMode::Flag => "Flag",
        ValidationMode::DeadLetter => "DeadLetter",
    };
    dq.insert("validation".into(), mode.into());
    if context.validation == ValidationMode::DeadLetter && !violations.is_empty() {
        return Err(Rejection::new(
            Reason::OutOfRange,
            serde_json::to_string(&violations).expect("violations serialize"),
        ));
    }
    if context.validation != ValidationMode::Off {
        dq.insert("within_ranges".into(), violations.is_empty().into());
        dq.insert(
            "out_of_range".into(),
            serde_json::to_value(&violations).expect("violations serialize"),
        );
    }
    dq.insert("enrichment_success".into(), true.into());
    Ok((Value::Object(dq), violations.len()))
}

#[cfg(test)]
mod tests {
    use iot_operator::registry::Registry;

    use super::*;
    use crate::catalog::fixtures::{SEED_RAW, sample_registry};

    fn now() -> Timestamp {
        "2025-08-20T18:00:55Z".parse().unwrap()
    }

    fn catalog_with(edit: impl FnOnce(&mut Registry)) -> Catalog {
        let mut registry = sample_registry("iot");
        edit(&mut registry);
        Catalog::from_registry(&registry, "iot")
    }

    fn enriched(payload: &[u8], catalog: &Catalog) -> (Enriched, Value) {
        match enrich(payload, RecordInfo::default(), catalog, now()) {
            Outcome::Enriched(e) => {
                let v = serde_json::from_slice(&e.payload).unwrap();
                (e, v)
            }
            Outcome::DeadLetter(r) => panic!("dead-lettered: {r:?}"),
        }
    }

    fn rejected(payload: &[u8], info: RecordInfo<'_>, catalog: &Catalog) -> Rejection {
        match enrich(payload, info, catalog, now()) {
            Outcome::DeadLetter(r) => r,
            Outcome::Enriched(e) => panic!("enriched: {}", String::from_utf8_lossy(&e.payload)),
        }
    }

    #[test]
    fn the_seed_example_gets_the_seed_fields() {
        let catalog = catalog_with(|_| {});
        let info = RecordInfo {
            topic_device_type: Some("smart_breaker"),
            bridge_received_at: Some("2025-08-20T18:00:54.200000Z"),
        };
        let Outcome::Enriched(e) = enrich(SEED_RAW.as_bytes(), info, &catalog, now()) else {
            panic!("dead-lettered")
        };
        let v: Value = serde_json::from_slice(&e.payload).unwrap();
        let raw: Value = serde_json::from_str(SEED_RAW).unwrap();
        for key in [
            "device_id",
            "device_type",
            "timestamp",
            "event_type",
            "measurements",
        ] {
            assert_eq!(v[key], raw[key], "{key} is kept");
        }
        assert_eq!(
            v["device_metadata"],
            json!({
                "device_type": "smart_breaker",
                "device_type_name": "Smart Circuit Breaker",
                "device_type_description": "Intelligent circuit breaker with monitoring and protection capabilities",
                "device_category": "electrical_protection",
                "capabilities": ["voltage_monitoring", "current_monitoring", "power_monitoring",
                    "frequency_monitoring", "temperature_monitoring", "status_monitoring",
                    "protection_monitoring", "operational_monitoring"],
                "data_format": "json",
                "update_frequency": "5_seconds",
                "retention_policy": "30_days"
            })
        );
        assert_eq!(
            v["application_registry"],
            json!({
                "device_type": "smart_breaker",
                "registered_applications_count": 1,
                "applications": [{
                    "id": "default/smart-grid-monitor",
                    "name": "Smart Grid Monitor",
                    "developer": "IoT Solutions Inc.",
                    "platform": "web",
                    "category": "monitoring",
                    "version": "1.0.0",
                    "status": "active"
                }]
            })
        );
        assert_eq!(
            v["enrichment_info"],
            json!({
                "enriched_at": "2025-08-20T18:00:55.000000Z",
                "enrichment_service": "iot-enrichment-service",
                "enrichment_version": SERVICE_VERSION,
                "device_type_detected": "smart_breaker",
                "app_registry_integration": true,
                "bridge_received_at": "2025-08-20T18:00:54.200000Z"
            })
        );
        assert_eq!(
            v["data_quality"],
            json!({
                "timestamp_valid": true,
                "measurements_complete": true,
                "measurements_present": 8,
                "measurements_declared": 8,
                "validation": "Flag",
                "within_ranges": true,
                "out_of_range": [],
                "enrichment_success": true
            })
        );
        assert_eq!(e.device_id, "breaker-001");
        assert_eq!(
            e.device_timestamp,
            clock::parse("2025-08-20T18:00:54.117782Z")
        );
        assert_eq!(e.violations, 0);
    }

    #[test]
    fn validation_modes() {
        let mut raw: Value = serde_json::from_str(SEED_RAW).unwrap();
        raw["measurements"]["temperature"]["value"] = json!(95.5);
        let bytes = serde_json::to_vec(&raw).unwrap();

        let (e, v) = enriched(&bytes, &catalog_with(|_| {}));
        assert_eq!(e.violations, 1);
        assert_eq!(v["data_quality"]["within_ranges"], false);
        assert_eq!(
            v["data_quality"]["out_of_range"],
            json!([{"field": "temperature", "value": 95.5, "min": 20.0, "max": 80.0}])
        );

        let off = catalog_with(|r| {
            r.device_types.get_mut("smart_breaker").unwrap().validation = ValidationMode::Off
        });
        let (e, v) = enriched(&bytes, &off);
        assert_eq!(e.violations, 0);
        assert_eq!(v["data_quality"]["validation"], "Off");
        assert!(v["data_quality"].get("out_of_range").is_none());

        let dead = catalog_with(|r| {
            r.device_types.get_mut("smart_breaker").unwrap().validation = ValidationMode::DeadLetter
        });
        let r = rejected(&bytes, RecordInfo::default(), &dead);
        assert_eq!(r.reason, Reason::OutOfRange);
        assert_eq!(r.device_id.as_deref(), Some("breaker-001"));
        assert!(
            r.detail.contains("\"field\":\"temperature\""),
            "{}",
            r.detail
        );
        // In range: enriched as usual in DeadLetter mode.
        let (_, v) = enriched(SEED_RAW.as_bytes(), &dead);
        assert_eq!(v["data_quality"]["within_ranges"], true);
    }

    #[test]
    fn timestamps_that_are_missing_naive_or_far_ahead_are_invalid() {
        let catalog = catalog_with(|_| {});
        for ts in [
            json!(null),
            json!("2025-08-20T18:00:54"),
            json!(1_755_712_854),
            json!("2025-08-20T18:10:55Z"),
        ] {
            let mut raw: Value = serde_json::from_str(SEED_RAW).unwrap();
            raw["timestamp"] = ts.clone();
            let (e, v) = enriched(&serde_json::to_vec(&raw).unwrap(), &catalog);
            assert_eq!(v["data_quality"]["timestamp_valid"], false, "{ts}");
            assert_eq!(e.device_timestamp, None);
        }
    }

    #[test]
    fn trends_and_status_keep_their_bodies() {
        let catalog = catalog_with(|_| {});
        let trends = br#"{"device_id":"b","device_type":"smart_breaker","timestamp":"2025-08-20T18:00:54Z","event_type":"trends","trends":[{"c":"temperature","t":1755712854,"v":"30.00","avg":"31.00","min":"29.00","max":"33.00"}]}"#;
        let (_, v) = enriched(trends, &catalog);
        assert_eq!(v["trends"][0]["c"], "temperature");
        assert_eq!(v["data_quality"]["measurements_complete"], Value::Null);
        assert_eq!(v["data_quality"]["timestamp_valid"], true);
        let status = br#"{"device_id":"b","device_type":"smart_breaker","event_type":"status","status":{"online":false}}"#;
        let (_, v) = enriched(status, &catalog);
        assert_eq!(v["status"]["online"], false);
        assert_eq!(v["device_metadata"]["device_type"], "smart_breaker");
    }

    #[test]
    fn enriching_twice_replaces_instead_of_nesting() {
        let catalog = catalog_with(|_| {});
        let (once, _) = enriched(SEED_RAW.as_bytes(), &catalog);
        let (twice, v) = enriched(&once.payload, &catalog);
        assert_eq!(once.payload.len(), twice.payload.len());
        assert_eq!(
            v["application_registry"]["registered_applications_count"],
            1
        );
    }

    #[test]
    fn registry_changes_show_in_the_next_message() {
        let before = catalog_with(|_| {});
        let after = catalog_with(|r| {
            let entry = r.device_types.get_mut("smart_breaker").unwrap();
            let mut app = entry.applications[0].clone();
            app.id = "default/grid-analytics".into();
            app.display_name = "Grid Analytics".into();
            entry.applications.push(app);
        });
        let (_, v) = enriched(SEED_RAW.as_bytes(), &before);
        assert_eq!(
            v["application_registry"]["registered_applications_count"],
            1
        );
        let (_, v) = enriched(SEED_RAW.as_bytes(), &after);
        assert_eq!(
            v["application_registry"]["registered_applications_count"],
            2
        );
        assert_eq!(
            v["application_registry"]["applications"][1]["name"],
            "Grid Analytics"
        );
    }

    #[test]
    fn records_that_cannot_be_enriched() {
        let catalog = catalog_with(|_| {});
        let none = RecordInfo::default();
        assert_eq!(rejected(b"\xff", none, &catalog).reason, Reason::NotUtf8);
        assert_eq!(rejected(b"{", none, &catalog).reason, Reason::NotJson);
        assert_eq!(rejected(b"[]", none, &catalog).reason, Reason::NotObject);
        assert_eq!(rejected(b"{}", none, &catalog).reason, Reason::NoDeviceId);
        let meter = br#"{"device_id":"m","device_type":"smart_meter"}"#;
        let in_breaker_topic = RecordInfo {
            topic_device_type: Some("smart_breaker"),
            ..none
        };
        let r = rejected(meter, in_breaker_topic, &catalog);
        assert_eq!(r.reason, Reason::DeviceTypeMismatch);
        assert_eq!(r.device_id.as_deref(), Some("m"));
        let gone = catalog_with(|r| {
            r.device_types.remove("smart_meter");
        });
        assert_eq!(
            rejected(meter, none, &gone).reason,
            Reason::UnregisteredDeviceType
        );
    }
}
