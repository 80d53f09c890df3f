//! Kafka plumbing shared by the bridge and the enrichment: the producer configuration of the
//! delivery guarantees, records with headers, and delivery with retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::cli::KafkaArgs;
use crate::metrics::PipelineMetrics;
use crate::route::{self, Rejection};

/// Producer settings that make a Kafka acknowledgement mean "stored": acks from all in-sync
/// replicas, idempotence (no duplicates or reordering from the producer's own retries).
pub fn producer_config(kafka: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.kafka_bootstrap)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("compression.type", "lz4")
        // librdkafka retries within this time; after it the application retries (see
        // `deliver`), so a broker outage only delays messages.
        .set("message.timeout.ms", "30000");
    config
}

/// One record to produce.
#[derive(Clone, Debug)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub payload: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl OutRecord {
    fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                })
            },
        )
    }
}

/// The dead-letter record of a message that cannot be carried: the original payload (only its
/// head when oversize) with headers `reason`, `stage`, `source`, `detail`.
pub fn deadletter_record(
    deadletter_topic: &str,
    stage: &'static str,
    source: String,
    fallback_key: &str,
    payload: &Bytes,
    rejection: &Rejection,
    mut extra_headers: Vec<(&'static str, String)>,
) -> OutRecord {
    let kept = route::deadletter_payload(payload, rejection.reason).len();
    let mut headers = vec![
        (headers::REASON, rejection.reason.as_str().to_string()),
        (headers::STAGE, stage.to_string()),
        (headers::SOURCE, source),
        (headers::DETAIL, truncate(&rejection.detail, 1024)),
        (headers::ORIGINAL_SIZE, payload.len().to_string()),
    ];
    headers.append(&mut extra_headers);
    OutRecord {
        topic: deadletter_topic.to_string(),
        key: rejection
            .device_id
            .clone()
            .unwrap_or_else(|| fallback_key.to_string()),
        payload: payload.slice(..kept),
        headers,
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Why a record was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The topic does not exist (the operator creates topics; auto-creation is off).
    #[error("topic {0} does not exist")]
    TopicMissing(String),
    /// The worker is giving up (grace period over); the record will be redelivered.
    #[error("delivery abandoned at shutdown")]
    Aborted,
    /// A permanent error (e.g. the message is too large for the broker).
    #[error("delivery failed: {0}")]
    Permanent(KafkaError),
}

/// Hands a record to the producer. Waits while the producer's queue is full.
pub async fn enqueue(
    producer: &FutureProducer,
    record: &OutRecord,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let r = FutureRecord::to(&record.topic)
            .key(record.key.as_bytes())
            .payload(&record.payload[..])
            .headers(record.owned_headers());
        match producer.send_result(r) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn is_topic_missing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
    )
}

fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidMessage
        )
    )
}

/// Waits for Kafka to acknowledge `record`, whose first attempt is `first` (enqueued by the
/// caller, in arrival order). Transient failures (a broker restart, a timeout) are retried with
/// capped backoff until success or `abort`.
pub async fn deliver(
    producer: &FutureProducer,
    record: &OutRecord,
    first: Result<DeliveryFuture, KafkaError>,
    metrics: &PipelineMetrics,
    abort: &CancellationToken,
) -> Result<Delivery, DeliveryError> {
    let mut attempt = first;
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match attempt {
            Ok(future) => match future.await {
                Ok(Ok(delivery)) => return Ok(delivery),
                Ok(Err((e, _))) => e,
                Err(_canceled) => KafkaError::Canceled,
            },
            Err(e) => e,
        };
        if is_topic_missing(&error) {
            return Err(DeliveryError::TopicMissing(record.topic.clone()));
        }
        if is_permanent(&error) {
            return Err(DeliveryError::Permanent(error));
        }
        metrics.produce_retries.inc();
        tracing::warn!(topic = %record.topic, key = %record.key, %error, ?backoff, "produce failed, retrying");
        tokio::select! {
            () = abort.cancelled() => return Err(DeliveryError::Aborted),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt = enqueue(producer, record).await;
    }
}

/// Checks every few seconds that a Kafka broker answers (part of readiness): stores the result
/// in `reachable` and calls `changed` after each check, until `done`.
pub fn watch_reachability(
    producer: FutureProducer,
    reachable: Arc<AtomicBool>,
    changed: impl Fn(bool) + Send + 'static,
    done: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let p = producer.clone();
            let ok = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(None, Duration::from_secs(5))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if ok != reachable.swap(ok, Ordering::Relaxed) {
                tracing::info!(reachable = ok, "Kafka reachability changed");
            }
            changed(ok);
            let pause = if ok {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = done.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    });
}

/// The value of header `key`, as text.
pub fn header<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Header names on raw, enriched and dead-letter records.
pub mod headers {
    /// MQTT topic the message arrived on.
    pub const MQTT_TOPIC: &str = "mqtt_topic";
    /// `raw`, `trends` or `status`.
    pub const KIND: &str = "kind";
    /// When the bridge received the message (RFC 3339).
    pub const RECEIVED_AT: &str = "received_at";
    /// Device type (raw and enriched records).
    pub const DEVICE_TYPE: &str = "device_type";
    /// When the enrichment produced the message (RFC 3339).
    pub const ENRICHED_AT: &str = "enriched_at";
    /// Dead letters: why.
    pub const REASON: &str = "reason";
    /// Dead letters: `bridge` or `enrichment`.
    pub const STAGE: &str = "stage";
    /// Dead letters: where the message came from (MQTT topic, or `topic/partition@offset`).
    pub const SOURCE: &str = "source";
    /// Dead letters: a human-readable explanation.
    pub const DETAIL: &str = "detail";
    /// Dead letters: size of the original payload (it may have been cut).
    pub const ORIGINAL_SIZE: &str = "original_size";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_settings_give_the_delivery_guarantee() {
        let kafka = KafkaArgs {
            kafka_bootstrap: "k:9092".into(),
            topic_prefix: "iot".into(),
            linger_ms: 2,
        };
        let c = producer_config(&kafka, "bridge-0");
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("2"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn deadletter_records_carry_reason_stage_and_source() {
        let payload = Bytes::from(vec![b'x'; 5000]);
        let rejection = Rejection::new(route::Reason::Oversize, "é".repeat(600));
        let r = deadletter_record(
            "iot.deadletter",
            "bridge",
            "iot/d/raw".into(),
            "iot/d/raw",
            &payload,
            &rejection,
            vec![(headers::RECEIVED_AT, "now".into())],
        );
        assert_eq!(r.topic, "iot.deadletter");
        assert_eq!(r.key, "iot/d/raw");
        assert_eq!(r.payload.len(), route::OVERSIZE_KEEP_BYTES);
        let h: std::collections::HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["reason"], "oversize");
        assert_eq!(h["stage"], "bridge");
        assert_eq!(h["source"], "iot/d/raw");
        assert_eq!(h["original_size"], "5000");
        assert_eq!(h["received_at"], "now");
        assert!(h["detail"].len() <= 1027 && h["detail"].ends_with("..."));
    }

    #[test]
    fn topic_missing_is_recognised() {
        assert!(is_topic_missing(&KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopic
        )));
        assert!(!is_topic_missing(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(is_permanent(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
    }
}
