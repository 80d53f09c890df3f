//! Bridge routing, sans-IO: where one MQTT message goes.
//!
//! A device publishes on `{root}/{device_id}/{raw|trends|status}`. A well-formed message (a JSON
//! object with a `device_id` and a registered `device_type`) goes to `{prefix}.{device_type}.raw`
//! with the device id as key; anything else goes to `{prefix}.deadletter` with a [`Reason`].

use std::fmt;

use jiff::Timestamp;

use crate::catalog::Catalog;
use crate::clock;
use crate::payload::RawObject;

/// Default largest payload carried (bytes); larger ones are dead-lettered as `oversize`.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Bytes of an oversize payload kept in its dead-letter record (the rest is cut off, so that a
/// huge payload cannot exceed the broker's message size and block the bridge).
pub const OVERSIZE_KEEP_BYTES: usize = 1024;
/// Longest device id accepted (a topic level and a Kafka key, not an essay).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// The MQTT topic levels the bridge subscribes to, the message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Telemetry (`measurements`).
    Raw,
    /// Aggregates over a window (`trends`).
    Trends,
    /// Device status, online/offline (`status`).
    Status,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Raw, Kind::Trends, Kind::Status];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Trends => "trends",
            Kind::Status => "status",
        }
    }

    pub fn parse(level: &str) -> Option<Self> {
        match level {
            "raw" => Some(Kind::Raw),
            "trends" => Some(Kind::Trends),
            "status" => Some(Kind::Status),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message went to the dead-letter topic (header `reason`, metric label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// MQTT topic not of the form `{root}/{device_id}/{raw|trends|status}`.
    UnexpectedTopic,
    /// Payload larger than the configured limit.
    Oversize,
    /// Payload is not UTF-8.
    NotUtf8,
    /// Payload is not JSON.
    NotJson,
    /// Payload is JSON but not an object.
    NotObject,
    /// No non-empty string `device_id` (of at most [`MAX_DEVICE_ID_LEN`] bytes).
    NoDeviceId,
    /// No string `device_type`.
    NoDeviceType,
    /// `device_type` is not in the registry.
    UnregisteredDeviceType,
    /// The topic the producer wanted does not exist on the broker (the operator creates topics).
    TopicMissing,
    /// A raw record whose `device_type` is not the device type of its topic (enrichment).
    DeviceTypeMismatch,
    /// Measurements outside the declared ranges, with validation mode `DeadLetter` (enrichment).
    OutOfRange,
    /// Kafka refused the record for good (e.g. larger than the broker accepts).
    ProduceFailed,
    /// The payload's `device_id` is not the device level of its MQTT topic: a device publishing
    /// as another (bridge; off for fleets that publish through a gateway).
    DeviceIdMismatch,
    /// Kafka refused a record's output for good, even produced alone (larger than the output
    /// topic's `max.message.bytes`, invalid, not authorised); header `detail` has the broker's
    /// error (enrichment).
    RejectedByKafka,
}

impl Reason {
    /// Every reason, so metrics can export each at 0 before the first dead letter (a counter that
    /// appears at 1 hides its first increase from `rate()` and `increase()`).
    pub const ALL: [Reason; 14] = [
        Reason::UnexpectedTopic,
        Reason::Oversize,
        Reason::NotUtf8,
        Reason::NotJson,
        Reason::NotObject,
        Reason::NoDeviceId,
        Reason::NoDeviceType,
        Reason::UnregisteredDeviceType,
        Reason::TopicMissing,
        Reason::DeviceTypeMismatch,
        Reason::OutOfRange,
        Reason::ProduceFailed,
        Reason::DeviceIdMismatch,
        Reason::RejectedByKafka,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnexpectedTopic => "unexpected_topic",
            Reason::Oversize => "oversize",
            Reason::NotUtf8 => "not_utf8",
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::NoDeviceId => "no_device_id",
            Reason::NoDeviceType => "no_device_type",
            Reason::UnregisteredDeviceType => "unregistered_device_type",
            Reason::TopicMissing => "topic_missing",
            Reason::DeviceTypeMismatch => "device_type_mismatch",
            Reason::OutOfRange => "out_of_range",
            Reason::ProduceFailed => "produce_failed",
            Reason::DeviceIdMismatch => "device_id_mismatch",
            Reason::RejectedByKafka => "rejected_by_kafka",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot be carried to a raw topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    /// Human-readable explanation (dead-letter header `detail`).
    pub detail: String,
    /// Device id if one was found (the dead-letter record's key).
    pub device_id: Option<String>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            device_id: None,
        }
    }
}

/// Where a well-formed message goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Kafka topic, `{prefix}.{device_type}.raw`.
    pub topic: String,
    /// Kafka key, the device id.
    pub key: String,
    pub device_type: String,
    pub kind: Kind,
    /// The payload's `timestamp`, when it is RFC 3339 (for the latency histogram).
    pub device_timestamp: Option<Timestamp>,
}

/// The message kind of an MQTT topic `{root}/{device_id}/{kind}`.
pub fn kind_of_topic(mqtt_topic: &str) -> Option<Kind> {
    topic_levels(mqtt_topic).map(|(_, kind)| kind)
}

/// The device id and message kind of an MQTT topic `{root}/{device_id}/{kind}`.
fn topic_levels(mqtt_topic: &str) -> Option<(&str, Kind)> {
    let mut levels = mqtt_topic.rsplit('/');
    let kind = Kind::parse(levels.next()?)?;
    let device = levels.next()?;
    (!device.is_empty() && levels.next().is_some()).then_some((device, kind))
}

/// What the bridge checks of a message besides its form.
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    /// Largest payload carried; larger ones are dead-lettered as `oversize`.
    pub max_payload_bytes: usize,
    /// The payload's `device_id` must be the topic's device level (`device_id_mismatch`
    /// otherwise): with the broker's per-device topic ACLs, a device cannot publish as another.
    pub device_id_matches_topic: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            device_id_matches_topic: true,
        }
    }
}

/// Decides where one MQTT message goes. Checks run from cheapest to dearest; the first failure
/// is the reason.
pub fn route(
    mqtt_topic: &str,
    payload: &[u8],
    catalog: &Catalog,
    checks: Checks,
) -> Result<Route, Rejection> {
    let max_payload_bytes = checks.max_payload_bytes;
    let (topic_device, kind) = topic_levels(mqtt_topic).ok_or_else(|| {
        Rejection::new(
            Reason::UnexpectedTopic,
            format!(
                "MQTT topic {mqtt_topic:?} is not {{root}}/{{device_id}}/{{raw|trends|status}}"
            ),
        )
    })?;
    if payload.len() > max_payload_bytes {
        return Err(Rejection::new(
            Reason::Oversize,
            format!(
                "payload of {} bytes exceeds the limit of {max_payload_bytes} bytes",
                payload.len()
            ),
        ));
    }
    let object = RawObject::parse(payload)?;
    let device_id = object.device_id()?;
    if checks.device_id_matches_topic && device_id != topic_device {
        return Err(Rejection {
            reason: Reason::DeviceIdMismatch,
            detail: format!(
                "payload device_id {device_id:?} is not the device {topic_device:?} of MQTT topic {mqtt_topic:?}"
            ),
            device_id: Some(device_id.to_string()),
        });
    }
    let device_type = object.device_type().map_err(|mut r| {
        r.device_id = Some(device_id.to_string());
        r
    })?;
    let Some(context) = catalog.get(&device_type) else {
        return Err(Rejection {
            reason: Reason::UnregisteredDeviceType,
            detail: format!("device_type {device_type:?} is not registered"),
            device_id: Some(device_id.to_string()),
        });
    };
    Ok(Route {
        topic: context.topics.raw.clone(),
        key: device_id.to_string(),
        device_type: device_type.to_string(),
        kind,
        device_timestamp: object.str("timestamp").as_deref().and_then(clock::parse),
    })
}

/// What of a payload goes into its dead-letter record: all of it, except the head of an
/// oversize one.
pub fn deadletter_payload(payload: &[u8], reason: Reason) -> &[u8] {
    if reason == Reason::Oversize {
        &payload[..payload.len().min(OVERSIZE_KEEP_BYTES)]
    } else {
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_registry;

    const CHECKS: Checks = Checks {
        max_payload_bytes: 1000,
        device_id_matches_topic: true,
    };

    fn catalog() -> Catalog {
        Catalog::from_registry(&sample_registry("iot"), "iot")
    }

    fn reason(topic: &str, payload: &[u8]) -> Reason {
        route(topic, payload, &catalog(), CHECKS)
            .unwrap_err()
            .reason
    }

    #[test]
    fn routes_by_device_type_with_the_device_id_as_key() {
        let payload = br#"{"device_id":"meter-7","device_type":"smart_meter","timestamp":"2025-08-20T18:00:54.117782Z","measurements":{}}"#;
        let r = route("iot/meter-7/trends", payload, &catalog(), CHECKS).unwrap();
        assert_eq!(r.topic, "iot.smart_meter.raw");
        assert_eq!(r.key, "meter-7");
        assert_eq!(r.device_type, "smart_meter");
        assert_eq!(r.kind, Kind::Trends);
        assert_eq!(
            r.device_timestamp,
            clock::parse("2025-08-20T18:00:54.117782Z")
        );
        // A custom topic root with several levels works, a missing timestamp is not an error.
        let payload = br#"{"device_id":"b1","device_type":"smart_breaker"}"#;
        let r = route("site/a/b1/status", payload, &catalog(), CHECKS).unwrap();
        assert_eq!((r.kind, r.device_timestamp), (Kind::Status, None));
    }

    #[test]
    fn each_malformed_kind_has_its_reason() {
        let t = "iot/d/raw";
        assert_eq!(reason("iot/d/other", b"{}"), Reason::UnexpectedTopic);
        assert_eq!(reason("raw", b"{}"), Reason::UnexpectedTopic);
        assert_eq!(reason("iot//raw", b"{}"), Reason::UnexpectedTopic);
        assert_eq!(reason(t, &[b' '; 1001]), Reason::Oversize);
        assert_eq!(reason(t, b"{\"device_id\":\"\xff\"}"), Reason::NotUtf8);
        assert_eq!(reason(t, b"not json"), Reason::NotJson);
        assert_eq!(reason(t, b"{\"device_id\":"), Reason::NotJson);
        assert_eq!(reason(t, b"[1,2]"), Reason::NotObject);
        assert_eq!(reason(t, b"42"), Reason::NotObject);
        assert_eq!(reason(t, b"{}"), Reason::NoDeviceId);
        assert_eq!(reason(t, br#"{"device_id":7}"#), Reason::NoDeviceId);
        assert_eq!(reason(t, br#"{"device_id":""}"#), Reason::NoDeviceId);
        let long = format!(r#"{{"device_id":"{}"}}"#, "x".repeat(129));
        assert_eq!(reason(t, long.as_bytes()), Reason::NoDeviceId);
        assert_eq!(reason(t, br#"{"device_id":"d"}"#), Reason::NoDeviceType);
        assert_eq!(
            reason(t, br#"{"device_id":"d","device_type":null}"#),
            Reason::NoDeviceType
        );
        assert_eq!(
            reason(t, br#"{"device_id":"d","device_type":"toaster"}"#),
            Reason::UnregisteredDeviceType
        );
    }

    #[test]
    fn a_device_id_other_than_the_topics_is_refused_unless_turned_off() {
        let spoofed = br#"{"device_id":"meter-8","device_type":"smart_meter"}"#;
        let r = route("iot/meter-7/raw", spoofed, &catalog(), CHECKS).unwrap_err();
        assert_eq!(r.reason, Reason::DeviceIdMismatch);
        assert_eq!(r.reason.as_str(), "device_id_mismatch");
        assert_eq!(r.device_id.as_deref(), Some("meter-8"));
        assert!(r.detail.contains("\"meter-7\""), "{}", r.detail);
        // Checked before the device type: a spoofed message is refused for what it is.
        let unregistered = br#"{"device_id":"x","device_type":"toaster"}"#;
        assert_eq!(
            reason("iot/meter-7/raw", unregistered),
            Reason::DeviceIdMismatch
        );
        // A gateway publishes for its devices: the check can be turned off.
        let gateway = Checks {
            device_id_matches_topic: false,
            ..CHECKS
        };
        let r = route("iot/gateway-1/raw", spoofed, &catalog(), gateway).unwrap();
        assert_eq!(r.key, "meter-8");
    }

    #[test]
    fn rejections_keep_the_device_id_when_known() {
        let r = route(
            "iot/d/raw",
            br#"{"device_id":"d","device_type":"toaster"}"#,
            &catalog(),
            CHECKS,
        )
        .unwrap_err();
        assert_eq!(r.device_id.as_deref(), Some("d"));
        assert!(r.detail.contains("toaster"), "{}", r.detail);
        let r = route("iot/d/raw", b"[]", &catalog(), CHECKS).unwrap_err();
        assert_eq!(r.device_id, None);
        assert_eq!(r.detail, "payload is JSON an array, not an object");
    }

    #[test]
    fn an_empty_registry_registers_nothing() {
        let r = route(
            "iot/b/raw",
            br#"{"device_id":"b","device_type":"smart_breaker"}"#,
            &Catalog::empty("iot"),
            CHECKS,
        );
        assert_eq!(r.unwrap_err().reason, Reason::UnregisteredDeviceType);
    }

    #[test]
    fn oversize_dead_letters_keep_only_the_head() {
        let big = vec![b'x'; 5000];
        assert_eq!(
            deadletter_payload(&big, Reason::Oversize).len(),
            OVERSIZE_KEEP_BYTES
        );
        assert_eq!(deadletter_payload(&big, Reason::NotJson).len(), 5000);
    }

    #[test]
    fn kinds_and_reasons_have_stable_names() {
        assert_eq!(kind_of_topic("iot/x/raw"), Some(Kind::Raw));
        assert_eq!(kind_of_topic("iot/x/trends"), Some(Kind::Trends));
        assert_eq!(Kind::Status.to_string(), "status");
        assert_eq!(
            Reason::UnregisteredDeviceType.to_string(),
            "unregistered_device_type"
        );
        assert_eq!(Reason::NotUtf8.as_str(), "not_utf8");
        assert_eq!(Reason::RejectedByKafka.as_str(), "rejected_by_kafka");
    }
}
