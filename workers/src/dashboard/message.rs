//! Consumed records as the dashboard keeps and shows them (sans-IO): the fields it reads from an
//! enriched message, the bounded entries of the "recent messages" lists, and the numeric values of
//! declared measurements.
//!
//! Everything here comes from devices and is untrusted: strings are cut to a bounded length and
//! large payloads are kept as a preview only. The browser renders all of it as text.

use serde::Serialize;
use serde_json::{Map, Value};

use super::layout::FieldSpec;

/// Largest payload kept as JSON in a recent-messages entry; larger ones keep a text preview.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Bytes of a preview.
pub const PREVIEW_BYTES: usize = 2048;
/// Longest identifier (device id, type, event type, reason) kept.
pub const MAX_ID_LEN: usize = 128;

/// One consumed Kafka record, as the consumer hands it over.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// Dead letters: headers `reason`, `stage`, `detail`, `source`.
    pub reason: Option<String>,
    pub stage: Option<String>,
    pub detail: Option<String>,
    pub source: Option<String>,
}

/// What the dashboard reads from an enriched message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub device_id: Option<String>,
    pub device_type: Option<String>,
    pub event_type: Option<String>,
    pub timestamp: Option<String>,
    /// `status.online` of a status message (the last will says `false`).
    pub online: Option<bool>,
    /// `status.reason`, e.g. `connection_lost`.
    pub status_reason: Option<String>,
    /// `data_quality.within_ranges`.
    pub within_ranges: Option<bool>,
    /// The whole message, when it is a JSON object.
    pub json: Option<Map<String, Value>>,
}

impl Parsed {
    pub fn measurements(&self) -> Option<&Map<String, Value>> {
        self.json.as_ref()?.get("measurements")?.as_object()
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn string_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(|s| cut(s, MAX_ID_LEN).to_string())
}

/// Reads an enriched (or raw) message; anything that is not a JSON object gives empty fields.
pub fn parse(payload: &[u8]) -> Parsed {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(payload) else {
        return Parsed::default();
    };
    let status = object.get("status").and_then(Value::as_object);
    let event_type = string_field(&object, "event_type");
    let is_status = event_type.as_deref() == Some("status");
    Parsed {
        device_id: string_field(&object, "device_id"),
        device_type: string_field(&object, "device_type"),
        timestamp: string_field(&object, "timestamp"),
        online: status
            .filter(|_| is_status)
            .and_then(|s| s.get("online"))
            .and_then(Value::as_bool),
        status_reason: status
            .filter(|_| is_status)
            .and_then(|s| string_field(s, "reason")),
        within_ranges: object
            .get("data_quality")
            .and_then(|d| d.get("within_ranges"))
            .and_then(Value::as_bool),
        event_type,
        json: Some(object),
    }
}

/// The numeric value of `field` in a message's `measurements`: a bare number or `{"value": n}`
/// for a single-valued measurement, `{"phase_a": n}` / `{"active": n}` for a phase or component.
pub fn field_value(measurements: &Map<String, Value>, field: &FieldSpec) -> Option<f64> {
    let m = measurements.get(&field.measurement)?;
    let v = match &field.part {
        Some(part) => m.get(part)?,
        None => match m {
            Value::Object(o) => o.get("value")?,
            other => other,
        },
    };
    v.as_f64().filter(|f| f.is_finite())
}

/// A message in a "recent messages" list.
#[derive(Clone, Debug, Serialize)]
pub struct MessageEntry {
    /// Increases by one per entry of the list's owner (clients skip what they have).
    pub seq: u64,
    /// When the dashboard received it (Unix milliseconds).
    pub received_at: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The device's own timestamp, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_ranges: Option<bool>,
    pub size: usize,
    /// The message as JSON, when it is JSON and at most [`MAX_PAYLOAD_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Otherwise its first [`PREVIEW_BYTES`] as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    pub truncated: bool,
}

/// Fills the payload fields of an entry: JSON when small enough, else a text preview.
fn payload_fields(
    payload: &[u8],
    json: Option<&Map<String, Value>>,
) -> (Option<Value>, Option<String>, bool) {
    match json {
        Some(object) if payload.len() <= MAX_PAYLOAD_BYTES => {
            (Some(Value::Object(object.clone())), None, false)
        }
        _ => {
            let text = String::from_utf8_lossy(payload);
            let kept = cut(&text, PREVIEW_BYTES);
            (None, Some(kept.to_string()), kept.len() < text.len())
        }
    }
}

impl MessageEntry {
    pub fn new(seq: u64, received_at: i64, record: &Record, parsed: &Parsed) -> Self {
        let (payload, payload_text, truncated) =
            payload_fields(&record.payload, parsed.json.as_ref());
        Self {
            seq,
            received_at,
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            device_id: parsed.device_id.clone(),
            device_type: parsed.device_type.clone(),
            event_type: parsed.event_type.clone(),
            timestamp: parsed.timestamp.clone(),
            within_ranges: parsed.within_ranges,
            size: record.payload.len(),
            payload,
            payload_text,
            truncated,
        }
    }
}

/// A dead letter in the Overview's list.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterEntry {
    pub seq: u64,
    pub received_at: i64,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The record key: the device id when one was found, else the MQTT topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_text: Option<String>,
    pub truncated: bool,
}

/// `reason` header of a dead letter, `unknown` when missing.
pub fn deadletter_reason(record: &Record) -> String {
    record
        .reason
        .as_deref()
        .map_or_else(|| "unknown".to_string(), |r| cut(r, MAX_ID_LEN).to_string())
}

impl DeadLetterEntry {
    pub fn new(seq: u64, received_at: i64, record: &Record) -> Self {
        let json = match serde_json::from_slice::<Value>(&record.payload) {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        };
        let (payload, payload_text, truncated) = payload_fields(&record.payload, json.as_ref());
        let short = |s: &Option<String>, max| s.as_deref().map(|s| cut(s, max).to_string());
        Self {
            seq,
            received_at,
            partition: record.partition,
            offset: record.offset,
            reason: deadletter_reason(record),
            stage: short(&record.stage, MAX_ID_LEN),
            detail: short(&record.detail, 1024),
            source: short(&record.source, 512),
            key: short(&record.key, 512),
            size: record.payload.len(),
            payload,
            payload_text,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(key: &str) -> FieldSpec {
        let (measurement, part) = match key.split_once('.') {
            Some((m, p)) => (m.to_string(), Some(p.to_string())),
            None => (key.to_string(), None),
        };
        FieldSpec {
            key: key.into(),
            measurement,
            part,
            unit: None,
            min: None,
            max: None,
        }
    }

    #[test]
    fn reads_status_and_quality() {
        let p = parse(br#"{"device_id":"b-1","device_type":"smart_breaker","event_type":"status","status":{"online":false,"reason":"connection_lost"}}"#);
        assert_eq!(p.device_id.as_deref(), Some("b-1"));
        assert_eq!(p.online, Some(false));
        assert_eq!(p.status_reason.as_deref(), Some("connection_lost"));
        // `status` in telemetry is the breaker's state, not the device's connection.
        let t = parse(br#"{"device_id":"b-1","event_type":"telemetry","status":{"online":true},"data_quality":{"within_ranges":false}}"#);
        assert_eq!(t.online, None);
        assert_eq!(t.within_ranges, Some(false));
        assert_eq!(parse(b"not json"), Parsed::default());
        assert_eq!(parse(b"[1]"), Parsed::default());
        let long = format!(r#"{{"device_id":"{}"}}"#, "é".repeat(200));
        assert_eq!(parse(long.as_bytes()).device_id.unwrap().len(), 128);
    }

    #[test]
    fn field_values_of_every_shape() {
        let m = json!({
            "voltage": {"phase_a": 117.2, "unit": "V"},
            "frequency": {"value": 59.9},
            "temperature": 31.5,
            "power": {"active": "5775"},
            "protection": {"arc_fault_detected": true}
        });
        let m = m.as_object().unwrap();
        assert_eq!(field_value(m, &spec("voltage.phase_a")), Some(117.2));
        assert_eq!(field_value(m, &spec("voltage.phase_b")), None);
        assert_eq!(field_value(m, &spec("frequency")), Some(59.9));
        assert_eq!(field_value(m, &spec("temperature")), Some(31.5));
        assert_eq!(
            field_value(m, &spec("power.active")),
            None,
            "strings are not numbers"
        );
        assert_eq!(field_value(m, &spec("protection.arc_fault_detected")), None);
        assert_eq!(field_value(m, &spec("humidity")), None);
    }

    #[test]
    fn large_or_non_json_payloads_keep_a_preview() {
        let record = Record {
            topic: "t".into(),
            payload: b"<script>alert(1)</script>".to_vec(),
            reason: Some("not_json".into()),
            ..Record::default()
        };
        let e = DeadLetterEntry::new(1, 0, &record);
        assert_eq!(e.reason, "not_json");
        assert_eq!(e.payload, None);
        assert_eq!(e.payload_text.as_deref(), Some("<script>alert(1)</script>"));
        assert!(!e.truncated);

        let big = format!(
            r#"{{"device_id":"d","pad":"{}"}}"#,
            "x".repeat(MAX_PAYLOAD_BYTES)
        );
        let record = Record {
            payload: big.into_bytes(),
            ..Record::default()
        };
        let parsed = parse(&record.payload);
        let e = MessageEntry::new(2, 0, &record, &parsed);
        assert_eq!(e.device_id.as_deref(), Some("d"));
        assert!(e.payload.is_none());
        assert_eq!(e.payload_text.unwrap().len(), PREVIEW_BYTES);
        assert!(e.truncated);
        assert_eq!(deadletter_reason(&Record::default()), "unknown");
    }
}
