//! `iot-worker enrichment`: `{prefix}.{type}.raw` -> `{prefix}.{type}.enriched` and
//! `{prefix}.enriched`.
//!
//! Two delivery modes over the same enrichment ([`prepare`]):
//! - [`at_least_once`] (default): records are enriched as they arrive and their produces run
//!   concurrently; a partition's offset is committed only up to the first record whose produces
//!   are not all acknowledged, so a crash loses nothing and repeats at most what was in flight.
//! - [`exactly_once`] (`IOT_ENRICHMENT_EXACTLY_ONCE=true`): batches of records are produced and
//!   their offsets committed in one Kafka transaction; `read_committed` consumers see each record
//!   once, even across a crash.
//!
//! The registry file is re-read on change; with `IOT_DEVICE_TYPE=all` a newly registered device
//! type is subscribed to without a restart.
//!
//! No record freezes a partition, in either mode: an output Kafka refuses for good (larger than
//! the topic's `max.message.bytes`, invalid, not authorised) is produced again alone, since the
//! broker refuses whole batches and the record may only have shared one; refused again, the
//! record goes to the dead-letter topic (reason `rejected_by_kafka`, the broker's error in
//! `detail`) and its offset is committed. A dead letter that cannot be written either keeps its
//! record unfinished (never lost), retried with backoff, and the worker unready ([`Health`]). A
//! fatal producer error ends the process (not ready, non-zero exit): Kubernetes restarts it and
//! what was not committed is consumed again.
//!
//! Work in flight is bounded by a count of records and by bytes ([`crate::memory`]:
//! `IOT_MAX_IN_FLIGHT_BYTES`, default a quarter of the container's memory limit).

pub mod at_least_once;
pub mod exactly_once;
mod health;
mod transaction;

pub use health::{
    BLOCKED_BACKOFF_FIRST, BLOCKED_BACKOFF_MAX, EnrichmentMetrics, Health, next_backoff,
};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use iot_model::naming::{self, device_type_of_raw_topic};
use iot_process::admin::Readiness;
use jiff::Timestamp;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::cli::{self, KafkaArgs, RegistryArgs, ShutdownArgs};
use crate::clock;
use crate::enrich::{self, Enriched, Outcome, RecordInfo};
use crate::kafka::{self, OutRecord, headers};
use crate::memory::{self, ByteBudget};
use crate::metrics::PipelineMetrics;
use crate::registry_file;
use crate::route::{Reason, Rejection};
use crate::runtime::{self, Lifecycle};

/// `IOT_DEVICE_TYPE` value for every registered device type.
pub const ALL_TYPES: &str = "all";

/// Flags of `iot-worker enrichment`.
#[derive(Args, Clone, Debug)]
pub struct EnrichmentArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// Device type to enrich (the operator's Deployment sets one), or `all` for local runs.
    #[arg(long, env = "IOT_DEVICE_TYPE", default_value = ALL_TYPES)]
    pub device_type: String,
    /// Kafka consumer group. Default: `{prefix}.{device_type}.enrichment` (the operator's name).
    #[arg(long, env = "IOT_CONSUMER_GROUP")]
    pub group: Option<String>,
    /// Static group membership (`group.instance.id`), stable per replica: a restarted replica
    /// takes its partitions back at once instead of after the session timeout. Unset: dynamic.
    #[arg(long, env = "IOT_CONSUMER_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Consumer session timeout in milliseconds: how long a vanished replica keeps its
    /// partitions.
    #[arg(long, env = "IOT_CONSUMER_SESSION_TIMEOUT_MS", default_value_t = 10000)]
    pub session_timeout_ms: u64,
    /// Records consumed and not yet acknowledged on every output topic, at most (at-least-once).
    #[arg(long, env = "IOT_ENRICHMENT_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Bytes in flight, at most (raw payloads plus produced outputs of the records being
    /// processed; a record larger than the budget is processed alone). Default: a quarter of
    /// the container's memory limit (cgroup), 64 MiB without one; above the limit is refused.
    #[arg(long, env = "IOT_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: Option<u64>,
    /// How often finished offsets are committed, in milliseconds (at-least-once).
    #[arg(long, env = "IOT_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// Exactly-once: produce and commit offsets in Kafka transactions.
    #[arg(long, env = "IOT_ENRICHMENT_EXACTLY_ONCE")]
    pub exactly_once: bool,
    /// Exactly-once: transactional id, stable per replica. Default: `{group}-$HOSTNAME`.
    #[arg(long, env = "IOT_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// Exactly-once: most records per transaction.
    #[arg(long, env = "IOT_TRANSACTION_MAX_RECORDS", default_value_t = 500)]
    pub transaction_max_records: usize,
    /// Exactly-once: longest a transaction collects records, in milliseconds.
    #[arg(long, env = "IOT_TRANSACTION_MAX_MS", default_value_t = 100)]
    pub transaction_max_ms: u64,
    /// Also write every enriched record to `{prefix}.enriched`, the seed's all-types topic, which
    /// the dashboard's Overview tab reads. `false` halves the enrichment's writes.
    #[arg(long, env = "IOT_ENRICHMENT_ALL_TYPES_TOPIC", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub all_types_topic: bool,
    /// Admin endpoint (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "IOT_ADMIN_ADDR", default_value = "0.0.0.0:9102")]
    pub admin_addr: SocketAddr,
}

impl EnrichmentArgs {
    pub fn group(&self) -> String {
        self.group.clone().unwrap_or_else(|| {
            naming::enrichment_group(&self.kafka.topic_prefix, &self.device_type)
        })
    }
}

/// The raw topics to consume: the chosen device type's, or every registered type's.
pub fn raw_topics(catalog: &Catalog, device_type: &str, prefix: &str) -> BTreeSet<String> {
    if device_type == ALL_TYPES {
        catalog
            .device_type_ids()
            .iter()
            .filter_map(|id| catalog.get(id).map(|c| c.topics.raw.clone()))
            .collect()
    } else {
        // Even before the type is registered: its records are then dead-lettered, not left behind.
        BTreeSet::from([format!("{prefix}.{device_type}.raw")])
    }
}

/// What both modes share once the process is set up.
pub struct Setup {
    pub args: EnrichmentArgs,
    pub group: String,
    pub metrics: PipelineMetrics,
    pub readiness: Readiness,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub life: Lifecycle,
    /// Set when the process is done (ends background tasks).
    pub done: CancellationToken,
    /// The in-flight byte budget.
    pub budget: ByteBudget,
    /// Blocked records and fatal errors (part of readiness).
    pub health: Health,
}

/// Runs the enrichment until `life.stop`, then finishes what is in flight (until `life.abort`).
pub async fn run(args: EnrichmentArgs, life: Lifecycle) -> anyhow::Result<()> {
    cli::check_topic_prefix(&args.kafka.topic_prefix)?;
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    anyhow::ensure!(
        args.transaction_max_records > 0,
        "--transaction-max-records must be at least 1"
    );
    let limit = memory::memory_limit();
    let budget = memory::choose_budget(args.max_in_flight_bytes, limit)
        .context("--max-in-flight-bytes / IOT_MAX_IN_FLIGHT_BYTES")?;
    let metrics = PipelineMetrics::new("enrichment");
    let extra = EnrichmentMetrics::new(&metrics.registry);
    extra
        .in_flight_bytes_limit
        .set(i64::try_from(budget).unwrap_or(i64::MAX));
    tracing::info!(
        budget,
        memory_limit = ?limit,
        "in-flight byte budget (raw payloads plus produced outputs)"
    );
    let budget = ByteBudget::observed_by(
        budget,
        extra.in_flight_bytes.clone(),
        extra.in_flight_bytes_peak.clone(),
    );
    let readiness = Readiness::default();
    let health = Health::new(readiness.clone(), extra);
    let started = runtime::start(
        args.admin_addr,
        readiness.clone(),
        Default::default(),
        metrics.registry.clone(),
    )
    .await?;
    let done = started.done.clone();
    let catalog = registry_file::watch(
        args.registry.registry_file.clone(),
        args.kafka.topic_prefix.clone(),
        Duration::from_millis(args.registry.registry_poll_ms),
        metrics.clone(),
        done.clone(),
    )?;
    let setup = Setup {
        group: args.group(),
        args,
        metrics,
        readiness,
        catalog,
        life,
        done,
        budget,
        health,
    };
    let result = if setup.args.exactly_once {
        exactly_once::run(setup).await
    } else {
        at_least_once::run(setup).await
    };
    drop(started);
    result
}

/// Watches that Kafka answers the producer and the consumer (see [`kafka::watch_reachability`]):
/// the returned flag is part of readiness, and a stranded client is a fatal error.
pub fn watch_reachability<C: ConsumerContext + 'static>(
    setup: &Setup,
    producer: &FutureProducer,
    consumer: &Arc<StreamConsumer<C>>,
) -> Arc<std::sync::atomic::AtomicBool> {
    let reachable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = kafka::ReachabilityProbe::new(kafka::connection_config(&setup.args.kafka));
    // Weak: the consumer leaves its group when the delivery loop drops it, not when the watch
    // ends.
    let (producer, consumer) = (producer.clone(), Arc::downgrade(consumer));
    let health = setup.health.clone();
    kafka::watch_reachability(
        move || {
            let consumer = consumer
                .upgrade()
                .map_or(kafka::Reachability::Reachable, |c| probe.check(c.client()));
            probe.check(producer.client()).and(consumer)
        },
        {
            let reachable = reachable.clone();
            move |ok| reachable.store(ok, std::sync::atomic::Ordering::Relaxed)
        },
        move |error| health.fatal(error),
        setup.done.clone(),
    );
    reachable
}

/// The consumer of both modes: manual offsets, `read_committed` (raw topics may one day be
/// written transactionally; it costs nothing otherwise).
pub fn consumer_config(setup: &Setup) -> ClientConfig {
    let prefetch = memory::consumer_prefetch_bytes(setup.budget.limit());
    let mut config = kafka::connection_config(&setup.args.kafka);
    config
        .set("group.id", &setup.group)
        .set("client.id", format!("{}-consumer", setup.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "10000")
        // Prefetch bounded to about half a second of work and to a quarter of the byte budget
        // (librdkafka's default is 64 MiB plus 50 MiB fetches): the enrichment is CPU-bound, a
        // deeper queue only costs memory under overload.
        .set("queued.max.messages.kbytes", (prefetch / 1024).to_string())
        .set("queued.min.messages", "2000")
        .set("fetch.max.bytes", prefetch.to_string())
        .set(
            "session.timeout.ms",
            setup.args.session_timeout_ms.to_string(),
        );
    if let Some(id) = &setup.args.instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// The producer of both modes (`kafka::producer_config`), its queue in line with the byte budget;
/// `alone`: every record in a batch of its own (`kafka::isolating_producer_config`).
pub fn producer_config(setup: &Setup, alone: bool) -> ClientConfig {
    let kafka = &setup.args.kafka;
    let mut config = if alone {
        kafka::isolating_producer_config(kafka, &format!("{}-producer-alone", setup.group))
    } else {
        kafka::producer_config(kafka, &format!("{}-producer", setup.group))
    };
    config.set(
        "queue.buffering.max.kbytes",
        memory::producer_queue_kbytes(setup.budget.limit()).to_string(),
    );
    config
}

/// Subscribes to `topics` (none: unsubscribes).
pub fn subscribe<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topics: &BTreeSet<String>,
) -> anyhow::Result<()> {
    if topics.is_empty() {
        tracing::warn!("no device type registered: nothing to consume yet");
        consumer.unsubscribe();
        return Ok(());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .with_context(|| format!("subscribing to {names:?}"))
}

/// Follows the registry: with `all`, a newly registered type's raw topic is subscribed to.
pub fn follow_registry<C: ConsumerContext>(
    setup: &mut Setup,
    consumer: &StreamConsumer<C>,
    topics: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let wanted = raw_topics(
        &setup.catalog.borrow_and_update(),
        &setup.args.device_type,
        &setup.args.kafka.topic_prefix,
    );
    if wanted != *topics {
        *topics = wanted;
        subscribe(consumer, topics)?;
        tracing::info!(?topics, "subscription follows the registry");
    }
    Ok(())
}

/// `((topic, partition), next offset)` pairs as a partition list.
pub fn partition_list(offsets: &[((String, i32), i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), next) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*next))
            .expect("valid offset");
    }
    list
}

/// One consumed record, enriched and ready to produce.
pub struct Prepared {
    /// Enriched copies for its type's enriched topic and (unless turned off) the all-types
    /// topic, or one dead letter.
    pub records: Vec<OutRecord>,
    /// The enrichment, or why the record was dead-lettered.
    pub result: Result<Enriched, Reason>,
    /// Header `kind` of the raw record.
    pub kind: String,
}

/// The headers of a raw record that its enriched copies and dead letters carry on.
fn carried_headers(message: &OwnedMessage) -> Vec<(&'static str, String)> {
    let hdrs = message.headers();
    [headers::MQTT_TOPIC, headers::KIND, headers::RECEIVED_AT]
        .into_iter()
        .filter_map(|k| kafka::header(hdrs, k).map(|v| (k, v.to_string())))
        .collect()
}

/// The dead letter of a consumed record: its payload, source `topic/partition@offset` and key.
pub fn dead_letter(message: &OwnedMessage, catalog: &Catalog, rejection: &Rejection) -> OutRecord {
    let source = format!(
        "{}/{}@{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    let fallback_key = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or(&source)
        .to_string();
    let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    kafka::deadletter_record(
        &catalog.deadletter_topic,
        "enrichment",
        source,
        &fallback_key,
        &payload,
        rejection,
        carried_headers(message),
    )
}

/// The dead letter that replaces a record's enriched copies when an output topic does not exist.
pub fn dead_letter_topic_missing(message: &OwnedMessage, catalog: &Catalog) -> OutRecord {
    dead_letter(
        message,
        catalog,
        &Rejection::new(Reason::TopicMissing, "an output topic does not exist"),
    )
}

/// The dead letter that replaces a record's outputs when Kafka refused one for good, even alone.
pub fn dead_letter_rejected(
    message: &OwnedMessage,
    catalog: &Catalog,
    topic: &str,
    error: &kafka::DeliveryError,
) -> OutRecord {
    dead_letter(
        message,
        catalog,
        &Rejection::new(
            Reason::RejectedByKafka,
            format!("Kafka refused the enriched record for {topic}: {error}"),
        ),
    )
}

/// Bytes a record holds while in flight (its [`ByteBudget`] share): its raw payload plus the
/// payloads of its outputs (each is copied into the producer's queue). Keys and headers, a few
/// hundred bytes, are left out.
pub fn cost(message: &OwnedMessage, prepared: &Prepared) -> u64 {
    let raw = message.payload().map_or(0, <[u8]>::len);
    let out: usize = prepared.records.iter().map(|r| r.payload.len()).sum();
    (raw + out) as u64
}

/// Enriches one consumed record (no I/O); `all_types`: also copy it to the all-types topic.
pub fn prepare(
    message: &OwnedMessage,
    catalog: &Catalog,
    prefix: &str,
    all_types: bool,
    now: Timestamp,
) -> Prepared {
    let hdrs = message.headers();
    let kind = kafka::header(hdrs, headers::KIND)
        .unwrap_or("unknown")
        .to_string();
    let payload = message.payload().unwrap_or_default();
    let info = RecordInfo {
        topic_device_type: device_type_of_raw_topic(prefix, message.topic()),
        bridge_received_at: kafka::header(hdrs, headers::RECEIVED_AT),
    };
    let (records, result) = match enrich::enrich(payload, info, catalog, now) {
        Outcome::Enriched(mut e) => {
            let context = catalog
                .get(&e.device_type)
                .expect("enrich only succeeds for registered types");
            let mut hs = carried_headers(message);
            hs.push((headers::DEVICE_TYPE, e.device_type.clone()));
            hs.push((headers::ENRICHED_AT, clock::rfc3339(now)));
            // The copies share one buffer; the accounting needs only the other fields.
            let body = Bytes::from(std::mem::take(&mut e.payload));
            let all = all_types.then_some(&catalog.all_enriched_topic);
            let records = std::iter::once(&context.topics.enriched)
                .chain(all)
                .map(|t| OutRecord {
                    topic: t.clone(),
                    key: e.device_id.clone(),
                    payload: body.clone(),
                    headers: hs.clone(),
                })
                .collect();
            (records, Ok(e))
        }
        Outcome::DeadLetter(rejection) => (
            vec![dead_letter(message, catalog, &rejection)],
            Err(rejection.reason),
        ),
    };
    Prepared {
        records,
        result,
        kind,
    }
}

/// Counts a record whose outputs Kafka acknowledged (and committed, in exactly-once mode).
pub fn account(metrics: &PipelineMetrics, result: &Result<Enriched, Reason>, kind: &str) {
    match result {
        Ok(e) => {
            metrics
                .produced
                .with_label_values(&[e.device_type.as_str(), kind])
                .inc();
            if let Some(ts) = e.device_timestamp {
                metrics
                    .latency
                    .observe(clock::seconds_between(ts, clock::now()));
            }
        }
        Err(reason) => {
            metrics
                .deadlettered
                .with_label_values(&[reason.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp as KafkaTimestamp;
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;
    use crate::fixtures::sample_registry;

    #[test]
    fn topics_for_one_type_or_all() {
        let catalog = Catalog::from_registry(&sample_registry("t1"), "t1");
        assert_eq!(
            raw_topics(&catalog, "all", "t1"),
            BTreeSet::from([
                "t1.environmental_sensor.raw".to_string(),
                "t1.smart_breaker.raw".to_string(),
                "t1.smart_meter.raw".to_string()
            ])
        );
        assert_eq!(
            raw_topics(&catalog, "smart_meter", "t1"),
            BTreeSet::from(["t1.smart_meter.raw".to_string()])
        );
        assert_eq!(
            raw_topics(&Catalog::empty("t1"), "new_type", "t1"),
            BTreeSet::from(["t1.new_type.raw".to_string()])
        );
    }

    fn raw_record(topic: &str, payload: &str) -> OwnedMessage {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "kind",
                value: Some("raw"),
            })
            .insert(Header {
                key: "mqtt_topic",
                value: Some("iot/m-1/raw"),
            });
        OwnedMessage::new(
            Some(payload.as_bytes().to_vec()),
            Some(b"m-1".to_vec()),
            topic.to_string(),
            KafkaTimestamp::NotAvailable,
            2,
            41,
            Some(headers),
        )
    }

    #[test]
    fn a_record_goes_to_both_enriched_topics_with_its_headers() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
        let now = clock::parse("2025-08-20T18:00:55Z").unwrap();
        let m = raw_record(
            "iot.smart_meter.raw",
            r#"{"device_id":"m-1","device_type":"smart_meter","measurements":{}}"#,
        );
        let p = prepare(&m, &catalog, "iot", true, now);
        let topics: Vec<&str> = p.records.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["iot.smart_meter.enriched", "iot.enriched"]);
        assert_eq!(p.kind, "raw");
        let r = &p.records[0];
        assert_eq!(r.key, "m-1");
        let hs: std::collections::HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(hs["mqtt_topic"], "iot/m-1/raw");
        assert_eq!(hs["device_type"], "smart_meter");
        assert_eq!(hs["enriched_at"], "2025-08-20T18:00:55.000000Z");
        assert_eq!(
            dead_letter_topic_missing(&m, &catalog).topic,
            "iot.deadletter"
        );
    }

    #[test]
    fn a_refused_record_is_dead_lettered_with_the_brokers_error_and_its_cost_counted() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
        let m = raw_record(
            "iot.smart_meter.raw",
            r#"{"device_id":"m-1","device_type":"smart_meter","measurements":{}}"#,
        );
        let p = prepare(&m, &catalog, "iot", true, clock::now());
        let enriched: usize = p.records.iter().map(|r| r.payload.len()).sum();
        assert_eq!(cost(&m, &p), (m.payload().unwrap().len() + enriched) as u64);
        let error = kafka::DeliveryError::Permanent(rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        let d = dead_letter_rejected(&m, &catalog, "iot.smart_meter.enriched", &error);
        let hs: std::collections::HashMap<_, _> = d.headers.iter().cloned().collect();
        assert_eq!(d.topic, "iot.deadletter");
        assert_eq!(hs["reason"], "rejected_by_kafka");
        assert_eq!(hs["source"], "iot.smart_meter.raw/2@41");
        assert!(
            hs["detail"].contains("iot.smart_meter.enriched")
                && hs["detail"].contains("MessageSizeTooLarge"),
            "{}",
            hs["detail"]
        );
        assert_eq!(&d.payload[..], m.payload().unwrap(), "the raw payload");
    }

    #[test]
    fn without_the_all_types_topic_a_record_goes_to_its_type_topic_only() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
        let m = raw_record(
            "iot.smart_meter.raw",
            r#"{"device_id":"m-1","device_type":"smart_meter","measurements":{}}"#,
        );
        let p = prepare(&m, &catalog, "iot", false, clock::now());
        let topics: Vec<&str> = p.records.iter().map(|r| r.topic.as_str()).collect();
        assert_eq!(topics, ["iot.smart_meter.enriched"]);
        assert!(p.result.is_ok());
    }

    #[test]
    fn a_foreign_record_in_a_raw_topic_is_dead_lettered_with_its_source() {
        let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
        let m = raw_record(
            "iot.smart_breaker.raw",
            r#"{"device_id":"m-1","device_type":"smart_meter"}"#,
        );
        let p = prepare(&m, &catalog, "iot", true, clock::now());
        assert!(matches!(p.result, Err(Reason::DeviceTypeMismatch)));
        assert_eq!(p.records.len(), 1);
        let hs: std::collections::HashMap<_, _> = p.records[0].headers.iter().cloned().collect();
        assert_eq!(hs["reason"], "device_type_mismatch");
        assert_eq!(hs["stage"], "enrichment");
        assert_eq!(hs["source"], "iot.smart_breaker.raw/2@41");
        assert_eq!(p.records[0].key, "m-1");
    }
}
