//! Enrichment, sans-IO: one raw record in, one enriched message (or a dead-letter decision) out.
//!
//! The enriched message keeps every field of the raw one (`device_id`, `timestamp`, `event_type`,
//! `measurements` / `trends` / `status`, a load test's `seq`, ...) and adds the seed's four blocks,
//! without the seed's defects: RFC 3339 UTC times, no application secrets, and the four blocks are
//! replaced rather than nested when a message passes through twice (no unbounded growth).

use iot_model::registry::ValidationMode;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::{Catalog, TypeContext};
use crate::clock;
use crate::payload::RawObject;
use crate::quality::{self, Violation};
use crate::route::{Reason, Rejection};

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

/// The keys the enrichment writes; a payload's own copies are replaced, not kept.
const ADDED_BLOCKS: [&str; 4] = [
    "device_metadata",
    "application_registry",
    "enrichment_info",
    "data_quality",
];

fn try_enrich(
    payload: &[u8],
    info: RecordInfo<'_>,
    catalog: &Catalog,
    now: Timestamp,
) -> Result<Enriched, Rejection> {
    let object = RawObject::parse(payload)?;
    let device_id = object.device_id()?.into_owned();
    let with_id = |mut r: Rejection| {
        r.device_id = Some(device_id.clone());
        r
    };
    let device_type = object.device_type().map_err(with_id)?.into_owned();
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
        .str("timestamp")
        .as_deref()
        .and_then(clock::parse)
        .filter(|ts| ts.as_second() <= now.as_second() + MAX_CLOCK_AHEAD_SECONDS);
    // Only the measurements are read as a tree (the checks need their values).
    let measurements = object
        .get("measurements")
        .filter(|v| v.get().starts_with('{'))
        .map(|v| serde_json::from_str::<Map<String, Value>>(v.get()))
        .transpose()
        .expect("a JSON object parses as a map");
    let quality = data_quality(measurements.as_ref(), context, device_timestamp.is_some())
        .map_err(with_id)?;
    let violations = quality.out_of_range.as_ref().map_or(0, Vec::len);

    let enriched_at = clock::rfc3339(now);
    let enrichment_info = EnrichmentInfo {
        enriched_at: &enriched_at,
        enrichment_service: SERVICE_NAME,
        enrichment_version: SERVICE_VERSION,
        device_type_detected: &device_type,
        app_registry_integration: true,
        bridge_received_at: info.bridge_received_at,
    };

    // The payload's own fields byte for byte, then the four blocks.
    let mut out = Vec::with_capacity(
        payload.len()
            + context.device_metadata.get().len()
            + context.application_registry.get().len()
            + 512,
    );
    out.push(b'{');
    for (key, value) in object.fields() {
        if !ADDED_BLOCKS.contains(&key) {
            write_field(&mut out, key, value);
        }
    }
    write_field(&mut out, "device_metadata", &context.device_metadata);
    write_field(
        &mut out,
        "application_registry",
        &context.application_registry,
    );
    write_field(&mut out, "enrichment_info", &enrichment_info);
    write_field(&mut out, "data_quality", &quality);
    out.push(b'}');

    Ok(Enriched {
        payload: out,
        device_id,
        device_type,
        device_timestamp,
        violations,
    })
}

/// Appends `"key":value` to an object being written (after `{`).
fn write_field<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, value: &T) {
    if out.len() > 1 {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
    out.push(b':');
    serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
}

/// `enrichment_info`.
#[derive(Serialize)]
struct EnrichmentInfo<'a> {
    enriched_at: &'a str,
    enrichment_service: &'static str,
    enrichment_version: &'static str,
    device_type_detected: &'a str,
    app_registry_integration: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge_received_at: Option<&'a str>,
}

/// `data_quality`.
#[derive(Debug, Serialize)]
struct DataQuality {
    timestamp_valid: bool,
    /// `null` for trends and status messages, which carry no measurements.
    measurements_complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements_present: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measurements_declared: Option<usize>,
    validation: &'static str,
    /// Absent when validation is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    within_ranges: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    out_of_range: Option<Vec<Violation>>,
    enrichment_success: bool,
}

/// The `data_quality` block; a rejection when the validation mode dead-letters violations.
fn data_quality(
    measurements: Option<&Map<String, Value>>,
    context: &TypeContext,
    timestamp_valid: bool,
) -> Result<DataQuality, Rejection> {
    let mut dq = DataQuality {
        timestamp_valid,
        measurements_complete: None,
        measurements_present: None,
        measurements_declared: None,
        validation: context.validation.as_str(),
        within_ranges: None,
        out_of_range: None,
        enrichment_success: true,
    };
    // Trends and status messages carry no measurements: completeness does not apply.
    let Some(m) = measurements else {
        return Ok(dq);
    };
    let completeness = quality::completeness(m, &context.measurements);
    dq.measurements_complete = Some(completeness.is_complete());
    dq.measurements_present = Some(completeness.present);
    dq.measurements_declared = Some(completeness.declared);
    if context.validation == ValidationMode::Off {
        return Ok(dq);
    }
    let violations = quality::check_ranges(m, &context.measurements);
    if context.validation == ValidationMode::DeadLetter && !violations.is_empty() {
        return Err(Rejection::new(
            Reason::OutOfRange,
            serde_json::to_string(&violations).expect("violations serialize"),
        ));
    }
    dq.within_ranges = Some(violations.is_empty());
    dq.out_of_range = Some(violations);
    Ok(dq)
}

#[cfg(test)]
mod tests {
    use iot_model::registry::Registry;

    use serde_json::json;

    use super::*;
    use crate::fixtures::{SEED_RAW, sample_registry};

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
