//! Kafka plumbing shared by the bridge and the enrichment: the producer configuration of the
//! delivery guarantees, records with headers, and delivery with retries; what a failed delivery
//! means ([`DeliveryError`], [`classify`]) and the retry of a refused record alone
//! ([`deliver_alone`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::cli::KafkaArgs;
use crate::metrics::PipelineMetrics;
use crate::route::{self, Rejection};

/// How every client of this process reaches the cluster.
pub fn connection_config(kafka: &KafkaArgs) -> ClientConfig {
    client_config(&kafka.kafka_bootstrap)
}

/// How long a client goes without cluster metadata before it bootstraps again from
/// `bootstrap.servers` (librdkafka's default is 5 minutes). A client that has lost every broker
/// it knew (see [`Reachability::Stranded`]) thereby finds the cluster again by itself, well
/// before [`STRANDED_LIMIT`] ends its process.
pub const REBOOTSTRAP_AFTER: Duration = Duration::from_secs(10);

/// The settings every Kafka client of the workers starts from: the bootstrap servers and
/// re-bootstrapping after [`REBOOTSTRAP_AFTER`] without metadata.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("metadata.recovery.strategy", "rebootstrap")
        .set(
            "metadata.recovery.rebootstrap.trigger.ms",
            REBOOTSTRAP_AFTER.as_millis().to_string(),
        );
    config
}

/// Producer settings that make a Kafka acknowledgement mean "stored": acks from all in-sync
/// replicas, idempotence (no duplicates or reordering from the producer's own retries).
pub fn producer_config(kafka: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = connection_config(kafka);
    config
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
    /// A permanent error (e.g. the message is too large for the broker). The same record will
    /// fail again; other records of its batch may have failed with it (the broker refuses a whole
    /// batch that exceeds a topic's `max.message.bytes`), see [`deliver_alone`].
    #[error("delivery failed: {0}")]
    Permanent(KafkaError),
    /// The producer raised a fatal error (idempotence or transaction state lost, fenced): every
    /// later delivery fails too. The process must end and be restarted (its uncommitted input is
    /// consumed again); never retried.
    #[error("fatal Kafka producer error: {0}")]
    Fatal(String),
}

/// What a failed produce of a record to `topic` means: `None` when it is transient (a broker
/// restart, a timeout) and worth retrying. A fatal producer error wins over the error at hand.
pub fn classify(
    producer: &FutureProducer,
    topic: &str,
    error: &KafkaError,
) -> Option<DeliveryError> {
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Some(DeliveryError::Fatal(format!("{code:?}: {reason}")));
    }
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
        return Some(DeliveryError::Fatal(error.to_string()));
    }
    if is_topic_missing(error) {
        return Some(DeliveryError::TopicMissing(topic.to_string()));
    }
    if is_permanent(error) {
        return Some(DeliveryError::Permanent(error.clone()));
    }
    None
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
/// capped backoff until success or `abort`; a missing topic, a permanent refusal and a fatal
/// producer error are returned at once (see [`DeliveryError`] for what each asks of the caller).
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
        if let Some(e) = classify(producer, &record.topic, &error) {
            return Err(e);
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

/// Settings of a producer that sends every record in a batch of its own
/// (`batch.num.messages=1`, no linger): a record [`deliver_alone`] retries after a permanent
/// refusal then fails only for what it is, not for the batch it happened to share.
pub fn isolating_producer_config(kafka: &KafkaArgs, client_id: &str) -> ClientConfig {
    let mut config = producer_config(kafka, client_id);
    config.set("batch.num.messages", "1").set("linger.ms", "0");
    config
}

/// Produces `record` on `producer` (one made with [`isolating_producer_config`]) and waits for
/// it as [`deliver`] does. The second opinion on a record that failed with
/// [`DeliveryError::Permanent`]: it succeeds when only its batch was too large, and fails again
/// when the record itself is refused.
pub async fn deliver_alone(
    producer: &FutureProducer,
    record: &OutRecord,
    metrics: &PipelineMetrics,
    abort: &CancellationToken,
) -> Result<Delivery, DeliveryError> {
    let first = enqueue(producer, record).await;
    deliver(producer, record, first, metrics, abort).await
}

/// What a look at the cluster through one of this process's clients found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// The client reads the cluster's metadata.
    Reachable,
    /// Neither the client nor a new one reaches a broker: Kafka is down or cut off.
    Unreachable,
    /// A new client reaches a broker and this one does not. Seen in CI after a Kafka restart: a
    /// running process's client never reached the broker again while new clients did. A
    /// candidate cause, not reproduced here: librdkafka 2.12 drops every broker it knows when a
    /// broker answers Metadata with topics but no brokers (as a starting broker can) and only
    /// bootstraps again on a request it can no longer send. Only a new client cures it.
    Stranded,
}

impl Reachability {
    /// The state of a process with two clients: the worse of the two.
    pub fn and(self, other: Self) -> Self {
        use Reachability::*;
        match (self, other) {
            (Stranded, _) | (_, Stranded) => Stranded,
            (Unreachable, _) | (_, Unreachable) => Unreachable,
            (Reachable, Reachable) => Reachable,
        }
    }
}

/// Tells a stranded client from a broker that is down, with a short-lived client of its own.
pub struct ReachabilityProbe {
    /// The connection settings of the probing client.
    config: ClientConfig,
}

/// How long one metadata request of a check may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

impl ReachabilityProbe {
    /// `config`: how to connect (bootstrap servers, security); the probe adds its own client id.
    pub fn new(mut config: ClientConfig) -> Self {
        config
            .set("client.id", "iot-reachability-probe")
            // Its failures are the answer, not news: the client under test logs them.
            .set("log_level", "2");
        Self { config }
    }

    /// Blocking (up to two metadata requests): call it from `spawn_blocking` in async code.
    pub fn check<C: ClientContext>(&self, client: &Client<C>) -> Reachability {
        if answers(client) {
            return Reachability::Reachable;
        }
        match self.config.create::<BaseConsumer>() {
            Ok(fresh) if answers(fresh.client()) => Reachability::Stranded,
            _ => Reachability::Unreachable,
        }
    }
}

/// Whether `client` reads the cluster's metadata, with at least one broker in it.
fn answers<C: ClientContext>(client: &Client<C>) -> bool {
    client
        .fetch_metadata(None, METADATA_TIMEOUT)
        .is_ok_and(|m| !m.brokers().is_empty())
}

/// How long a client may stay [`Reachability::Stranded`] before the process gives up on it:
/// past the longest reconnect back-off (`reconnect.backoff.max.ms`, 10 s), so a client that is
/// merely slow to reconnect after an outage is never taken for a stranded one.
pub const STRANDED_LIMIT: Duration = Duration::from_secs(30);

/// Runs `check` (the process's clients through a [`ReachabilityProbe`]) every few seconds, as
/// part of readiness: calls `changed` with whether Kafka is reachable after each check, until
/// `done`. When a client has been [`Reachability::Stranded`] for
/// [`STRANDED_LIMIT`], calls `stranded` with a description and stops: the caller ends the process
/// (not ready first), which a restart cures.
pub fn watch_reachability(
    check: impl Fn() -> Reachability + Send + Sync + 'static,
    changed: impl Fn(bool) + Send + 'static,
    stranded: impl FnOnce(String) + Send + 'static,
    done: CancellationToken,
) {
    let check = Arc::new(check);
    tokio::spawn(async move {
        let mut stranded_since: Option<Instant> = None;
        let mut reachable = false;
        loop {
            let check = check.clone();
            let found = tokio::task::spawn_blocking(move || check())
                .await
                .unwrap_or(Reachability::Unreachable);
            let ok = found == Reachability::Reachable;
            if ok != std::mem::replace(&mut reachable, ok) {
                tracing::info!(reachable = ok, "Kafka reachability changed");
            }
            changed(ok);
            if found == Reachability::Stranded {
                let since = *stranded_since.get_or_insert_with(|| {
                    tracing::warn!("Kafka answers a new client but not one of this process");
                    Instant::now()
                });
                if since.elapsed() >= STRANDED_LIMIT {
                    stranded(format!(
                        "a Kafka client of this process has reached no broker for {} s while new \
                         clients do (librdkafka lost its brokers)",
                        since.elapsed().as_secs()
                    ));
                    return;
                }
            } else {
                stranded_since = None;
            }
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
        let alone = isolating_producer_config(&kafka, "enrichment-alone");
        assert_eq!(alone.get("batch.num.messages"), Some("1"));
        assert_eq!(alone.get("acks"), Some("all"));
    }

    #[test]
    fn clients_bootstrap_again_before_a_stranded_client_ends_the_process() {
        assert!(REBOOTSTRAP_AFTER < STRANDED_LIMIT);
        let kafka = KafkaArgs {
            kafka_bootstrap: "127.0.0.1:1".into(),
            topic_prefix: "iot".into(),
            linger_ms: 2,
        };
        let c = producer_config(&kafka, "bridge-0");
        assert_eq!(c.get("metadata.recovery.strategy"), Some("rebootstrap"));
        assert_eq!(
            c.get("metadata.recovery.rebootstrap.trigger.ms"),
            Some("10000")
        );
        // librdkafka knows the settings (it refuses unknown names and values at creation).
        c.create::<rdkafka::producer::BaseProducer>()
            .expect("librdkafka accepts the connection settings");
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

    #[tokio::test]
    async fn failures_are_classified_fatal_missing_permanent_or_transient() {
        // No broker needed: the classification reads the producer's fatal state only.
        let kafka = KafkaArgs {
            kafka_bootstrap: "127.0.0.1:1".into(),
            topic_prefix: "iot".into(),
            linger_ms: 0,
        };
        let producer: FutureProducer = producer_config(&kafka, "classify").create().unwrap();
        let c = |code| classify(&producer, "t", &KafkaError::MessageProduction(code));
        assert!(matches!(
            c(RDKafkaErrorCode::MessageSizeTooLarge),
            Some(DeliveryError::Permanent(_))
        ));
        assert!(matches!(
            c(RDKafkaErrorCode::UnknownTopicOrPartition),
            Some(DeliveryError::TopicMissing(t)) if t == "t"
        ));
        assert!(matches!(
            c(RDKafkaErrorCode::Fatal),
            Some(DeliveryError::Fatal(_))
        ));
        assert!(c(RDKafkaErrorCode::MessageTimedOut).is_none());
        assert!(c(RDKafkaErrorCode::NotEnoughReplicas).is_none());
    }
}
