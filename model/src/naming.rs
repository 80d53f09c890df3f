//! Names of Kafka topics and consumer groups, in one place.
//!
//! Topic names keep the seed's scheme (`iot.smart_breaker.enriched`) with a configurable prefix,
//! so that two installations can share one broker.

use serde::{Deserialize, Serialize};

/// Longest topic prefix accepted.
pub const MAX_PREFIX_LEN: usize = 100;

/// The per-device-type topics.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TopicNames {
    /// Topic the bridge writes raw device messages to, e.g. `iot.smart_breaker.raw`.
    pub raw: String,
    /// Topic the enrichment writes enriched messages to, e.g. `iot.smart_breaker.enriched`.
    pub enriched: String,
}

impl TopicNames {
    /// The topics of device type `id` under `prefix`.
    pub fn for_device_type(prefix: &str, id: &str) -> Self {
        Self {
            raw: format!("{prefix}.{id}.raw"),
            enriched: format!("{prefix}.{id}.enriched"),
        }
    }
}

/// The topic with the enriched messages of all device types, e.g. `iot.enriched`.
pub fn all_enriched_topic(prefix: &str) -> String {
    format!("{prefix}.enriched")
}

/// The dead-letter topic, e.g. `iot.deadletter`.
pub fn deadletter_topic(prefix: &str) -> String {
    format!("{prefix}.deadletter")
}

/// Consumer group of the enrichment workers of device type `id` (or `all`) under `prefix`.
pub fn enrichment_group(prefix: &str, id: &str) -> String {
    format!("{prefix}.{id}.enrichment")
}

/// The device type whose raw topic `topic` is, under `prefix`
/// (`iot.smart_breaker.raw` -> `smart_breaker`).
pub fn device_type_of_raw_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix('.')?
        .strip_suffix(".raw")
        .filter(|id| !id.is_empty())
}

/// Whether `prefix` can start a Kafka topic name: 1-100 characters of `[a-zA-Z0-9_-]`
/// (no dots: they separate the prefix from the device-type id).
pub fn is_valid_topic_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_seed_scheme() {
        let topics = TopicNames::for_device_type("iot", "smart_breaker");
        assert_eq!(topics.raw, "iot.smart_breaker.raw");
        assert_eq!(topics.enriched, "iot.smart_breaker.enriched");
        assert_eq!(all_enriched_topic("iot"), "iot.enriched");
        assert_eq!(deadletter_topic("staging"), "staging.deadletter");
        assert_eq!(
            enrichment_group("iot", "smart_meter"),
            "iot.smart_meter.enrichment"
        );
    }

    #[test]
    fn raw_topics_name_their_device_type() {
        let raw = TopicNames::for_device_type("t1", "smart_meter").raw;
        assert_eq!(device_type_of_raw_topic("t1", &raw), Some("smart_meter"));
        assert_eq!(device_type_of_raw_topic("t2", &raw), None);
        assert_eq!(
            device_type_of_raw_topic("t1", "t1.smart_meter.enriched"),
            None
        );
        assert_eq!(device_type_of_raw_topic("t1", "t1..raw"), None);
        assert_eq!(device_type_of_raw_topic("t", "t1.x.raw"), None);
    }

    #[test]
    fn prefixes() {
        for good in ["iot", "staging-2", "a_b", &"x".repeat(MAX_PREFIX_LEN)] {
            assert!(is_valid_topic_prefix(good), "{good}");
        }
        for bad in ["", "a.b", "a b", "é", &"x".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(!is_valid_topic_prefix(bad), "{bad}");
        }
    }
}
