//! No loss and no standstill at the edges, on the real Kafka: a record Kafka refuses for good
//! (its enriched copy larger than the enriched topics' `max.message.bytes`) is dead-lettered and
//! its partition moves on, in both delivery modes; a dead letter Kafka refuses too keeps its
//! record (not ready) until it can be written; the in-flight byte budget holds; a fenced
//! producer is a fatal error that ends the enrichment.
//!
//! The enrichment runs as an `iot-worker` process; raw records are produced straight to the raw
//! topic (as the bridge would), so that only the enrichment is under test.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Installation, RawProducer, Record, Worker, group_lag, set_topic_config};
use iot_model::naming;
use iot_workers::catalog::Catalog;
use iot_workers::cli::KafkaArgs;
use iot_workers::kafka::{self, DeliveryError, OutRecord};
use iot_workers::metrics::PipelineMetrics;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const READY: Duration = Duration::from_secs(60);
const ARRIVAL: Duration = Duration::from_secs(90);
const DEVICE_TYPE: &str = "smart_meter";
/// `max.message.bytes` of the enriched topics in these tests.
const ENRICHED_LIMIT: usize = 2000;
const NORMAL: u64 = 100;

const AT_LEAST_ONCE: &[(&str, &str)] = &[];
const EXACTLY_ONCE: &[(&str, &str)] = &[("IOT_ENRICHMENT_EXACTLY_ONCE", "true")];

fn normal_payload(seq: u64) -> Vec<u8> {
    json!({
        "device_id": format!("meter-{}", seq % 7),
        "device_type": DEVICE_TYPE,
        "timestamp": jiff::Timestamp::now().to_string(),
        "event_type": "telemetry",
        "seq": seq,
        "measurements": {
            "energy": {"value": 12.5, "unit": "kWh"},
            "demand": {"value": 3.2, "unit": "kW"},
            "power_factor": {"value": 0.93}
        }
    })
    .to_string()
    .into_bytes()
}

/// Hex digits that do not compress (the broker limits batches after compression).
fn noise(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand_u32() % 16, 16).unwrap())
        .collect()
}

fn fastrand_u32() -> u32 {
    // A tiny xorshift, so that the test needs no extra dependency.
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u32> = const { Cell::new(0x9E37_79B9) });
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.set(x);
        x
    })
}

/// A meter message of about `len` bytes, `seq` as given.
fn big_payload(device_id: &str, seq: u64, len: usize) -> Vec<u8> {
    json!({
        "device_id": device_id,
        "device_type": DEVICE_TYPE,
        "timestamp": jiff::Timestamp::now().to_string(),
        "event_type": "telemetry",
        "seq": seq,
        "firmware_dump": noise(len),
        "measurements": {"energy": {"value": 1.0, "unit": "kWh"}}
    })
    .to_string()
    .into_bytes()
}

/// The enriched size of a raw payload, by the enrichment's own code.
fn enriched_len(inst: &Installation, payload: &[u8]) -> usize {
    let catalog = Catalog::from_registry(&inst.sample_registry(), &inst.prefix);
    let message = OwnedMessage::new(
        Some(payload.to_vec()),
        None,
        inst.raw_topic(DEVICE_TYPE),
        rdkafka::Timestamp::NotAvailable,
        0,
        0,
        None,
    );
    let p = iot_workers::enrichment::prepare(
        &message,
        &catalog,
        &inst.prefix,
        true,
        iot_workers::clock::now(),
    );
    assert!(p.result.is_ok(), "the test payload enriches");
    p.records[0].payload.len()
}

fn seqs(records: &[Record], topic: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.topic == topic)
        .filter_map(|r| r.json()["seq"].as_u64())
        .collect()
}

fn group(inst: &Installation) -> String {
    naming::enrichment_group(&inst.prefix, DEVICE_TYPE)
}

/// Waits until `done` holds, polling every 100 ms; panics with `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ready(worker: &Worker) -> bool {
    matches!(worker.get("/readyz"), Some((200, _)))
}

/// An installation whose meter enriched topics (its own and the all-types one) take at most
/// [`ENRICHED_LIMIT`] bytes per batch.
async fn limited_installation(name: &str) -> Installation {
    let inst = Installation::new(name).await;
    for topic in [inst.enriched_topic(DEVICE_TYPE), inst.all_enriched_topic()] {
        set_topic_config(
            &inst.bootstrap,
            &topic,
            &[("max.message.bytes", &ENRICHED_LIMIT.to_string())],
        )
        .await;
    }
    inst
}

/// 100 normal messages with one ~3 KB message in their midst: the big one is dead-lettered with
/// reason `rejected_by_kafka`, the 100 arrive enriched, the group's lag returns to 0, and the
/// enrichment keeps running.
async fn a_refused_record_is_dead_lettered_and_its_partition_moves_on(
    name: &str,
    mode: &[(&'static str, &str)],
) {
    let inst = limited_installation(name).await;
    let big = big_payload("meter-big", 999_999, 3000);
    let normal_len = enriched_len(&inst, &normal_payload(0));
    let big_len = enriched_len(&inst, &big);
    assert!(
        normal_len + 200 < ENRICHED_LIMIT && big_len > ENRICHED_LIMIT + 1000,
        "test set-up: a normal enriched record ({normal_len} bytes) fits {ENRICHED_LIMIT}, the big \
         one ({big_len} bytes) does not"
    );
    let mut enrichment = inst.enrichment_with(DEVICE_TYPE, mode);
    enrichment.wait_ready(READY).await;
    let enriched = inst.enriched_topic(DEVICE_TYPE);
    let all = inst.all_enriched_topic();
    let deadletter = inst.deadletter_topic();
    let collector = inst.collect(&[enriched.clone(), all.clone(), deadletter.clone()]);

    let producer = RawProducer::new(&inst.bootstrap);
    let raw = inst.raw_topic(DEVICE_TYPE);
    for seq in 0..NORMAL / 2 {
        let id = format!("meter-{}", seq % 7);
        producer.send(&raw, &id, &normal_payload(seq)).await;
    }
    let sent_big = Instant::now();
    let (big_partition, big_offset) = producer.send(&raw, "meter-big", &big).await;
    for seq in NORMAL / 2..NORMAL {
        let id = format!("meter-{}", seq % 7);
        producer.send(&raw, &id, &normal_payload(seq)).await;
    }

    let dead = collector
        .wait_until("the big record on the dead-letter topic", ARRIVAL, |r| {
            r.iter().any(|r| r.topic == deadletter)
        })
        .await;
    let dead_lettered_after = sent_big.elapsed();
    let dead: Vec<&Record> = dead.iter().filter(|r| r.topic == deadletter).collect();
    collector
        .wait_until("100 enriched records on both topics", ARRIVAL, |r| {
            seqs(r, &enriched).len() >= NORMAL as usize && seqs(r, &all).len() >= NORMAL as usize
        })
        .await;
    let lag_zero_after = wait_for(
        "the enrichment group's lag on the raw topic back to 0",
        Duration::from_secs(60),
        || group_lag(&inst.bootstrap, &group(&inst), &raw) == 0,
    )
    .await;
    // Whatever was still to come has come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = collector.records();
    eprintln!(
        "{name}: dead-lettered {dead_lettered_after:?} after it was produced; lag 0 {lag_zero_after:?} \
         after 100 enriched arrived; normal enriched {normal_len} bytes, big {big_len} bytes; \
         outputs retried alone: {}",
        enrichment.metric("iot_enrichment_outputs_retried_alone_total")
    );

    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let d = dead[0];
    assert_eq!(d.headers["reason"], "rejected_by_kafka");
    assert_eq!(d.headers["stage"], "enrichment");
    assert_eq!(
        d.headers["source"],
        format!("{raw}/{big_partition}@{big_offset}")
    );
    assert!(
        d.headers["detail"].contains("too large") || d.headers["detail"].contains("TooLarge"),
        "the broker's error in the detail: {}",
        d.headers["detail"]
    );
    assert_eq!(d.headers["kind"], "raw");
    assert_eq!(d.key.as_deref(), Some("meter-big"));
    assert_eq!(d.payload, big, "the raw payload, whole");
    assert!(
        dead.len() == 1 && collector.on(&deadletter).len() == 1,
        "nothing else dead-lettered"
    );

    let want: BTreeSet<u64> = (0..NORMAL).collect();
    for topic in [&enriched, &all] {
        let got = seqs(&records, topic);
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<u64>>(),
            want,
            "every normal record on {topic}"
        );
        assert_eq!(got.len(), NORMAL as usize, "each once on {topic}");
    }

    assert!(enrichment.is_running(), "the enrichment never restarted");
    assert!(ready(&enrichment), "and is ready");
    assert_eq!(
        enrichment
            .metric(r#"iot_enrichment_messages_deadlettered_total{reason="rejected_by_kafka"}"#),
        1.0
    );
    assert_eq!(
        enrichment.metric_sum("iot_enrichment_messages_produced_total"),
        NORMAL as f64
    );
    assert_eq!(enrichment.metric("iot_enrichment_blocked_records"), 0.0);
    assert!(
        enrichment
            .terminate(Duration::from_secs(30))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_dead_lettered_and_its_partition_moves_on_at_least_once() {
    a_refused_record_is_dead_lettered_and_its_partition_moves_on("poison-alo", AT_LEAST_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_dead_lettered_and_its_partition_moves_on_exactly_once() {
    a_refused_record_is_dead_lettered_and_its_partition_moves_on("poison-eos", EXACTLY_ONCE).await;
}

/// The dead-letter topic refuses the big record's dead letter too: the record is kept (lag stays
/// above 0, nothing lost), the worker is not ready and reports the block, and it retries with
/// backoff, not in a loop; once the topic takes it, the record is dead-lettered and all is well.
async fn a_dead_letter_kafka_refuses_keeps_its_record_until_it_can_be_written(
    name: &str,
    mode: &[(&'static str, &str)],
) {
    let inst = limited_installation(name).await;
    let deadletter = inst.deadletter_topic();
    set_topic_config(
        &inst.bootstrap,
        &deadletter,
        &[("max.message.bytes", "1000")],
    )
    .await;
    let mut enrichment = inst.enrichment_with(DEVICE_TYPE, mode);
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.enriched_topic(DEVICE_TYPE), deadletter.clone()]);
    let producer = RawProducer::new(&inst.bootstrap);
    let raw = inst.raw_topic(DEVICE_TYPE);
    let big = big_payload("meter-big", 999_999, 3000);
    for seq in 0..10 {
        producer
            .send(&raw, &format!("meter-{}", seq % 7), &normal_payload(seq))
            .await;
    }
    producer.send(&raw, "meter-big", &big).await;
    for seq in 10..20 {
        producer
            .send(&raw, &format!("meter-{}", seq % 7), &normal_payload(seq))
            .await;
    }

    let blocked_after = wait_for(
        "the enrichment to report the blocked record and not be ready",
        Duration::from_secs(60),
        || enrichment.metric("iot_enrichment_blocked_records") == 1.0 && !ready(&enrichment),
    )
    .await;
    let failures_at_block = enrichment.metric("iot_enrichment_deadletter_failures_total");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let failures = enrichment.metric("iot_enrichment_deadletter_failures_total");
    eprintln!(
        "{name}: blocked {blocked_after:?} after the start; dead-letter failures {failures_at_block} \
         then {failures} 6 s later"
    );
    assert!(
        failures - failures_at_block <= 4.0,
        "retried with backoff (1 s, 2 s, 4 s, ...), not in a loop: {failures_at_block} -> {failures}"
    );
    assert!(!ready(&enrichment), "not ready while blocked");
    assert!(collector.on(&deadletter).is_empty(), "no dead letter yet");
    assert!(
        group_lag(&inst.bootstrap, &group(&inst), &raw) >= 1,
        "the blocked record is not committed"
    );
    assert!(enrichment.is_running());

    // The operator (or a human) fixes the dead-letter topic.
    set_topic_config(
        &inst.bootstrap,
        &deadletter,
        &[("max.message.bytes", "1048588")],
    )
    .await;
    collector
        .wait_until("the dead letter once the topic takes it", ARRIVAL, |r| {
            r.iter().any(|r| r.topic == deadletter)
        })
        .await;
    wait_for("ready again, lag 0", Duration::from_secs(60), || {
        ready(&enrichment)
            && enrichment.metric("iot_enrichment_blocked_records") == 0.0
            && group_lag(&inst.bootstrap, &group(&inst), &raw) == 0
    })
    .await;
    let dead = collector.on(&deadletter);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["reason"], "rejected_by_kafka");
    assert_eq!(dead[0].payload, big);
    let got: BTreeSet<u64> = seqs(&collector.records(), &inst.enriched_topic(DEVICE_TYPE))
        .into_iter()
        .collect();
    assert_eq!(got, (0..20).collect::<BTreeSet<u64>>());
    assert!(enrichment.is_running(), "never restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_kafka_refuses_keeps_its_record_until_it_can_be_written_at_least_once() {
    a_dead_letter_kafka_refuses_keeps_its_record_until_it_can_be_written(
        "blocked-alo",
        AT_LEAST_ONCE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_kafka_refuses_keeps_its_record_until_it_can_be_written_exactly_once() {
    a_dead_letter_kafka_refuses_keeps_its_record_until_it_can_be_written(
        "blocked-eos",
        EXACTLY_ONCE,
    )
    .await;
}

/// Records of 256 KiB with a budget of 2 MiB: the bytes in flight (raw plus outputs) never
/// exceed the budget plus one record, and every record arrives.
async fn in_flight_bytes_stay_within_the_budget(name: &str, mode: &[(&'static str, &str)]) {
    const BUDGET: u64 = 2 * 1024 * 1024;
    const RECORDS: u64 = 24;
    let inst = Installation::new(name).await;
    let raw = inst.raw_topic(DEVICE_TYPE);
    let producer = RawProducer::new(&inst.bootstrap);
    // Everything waits in the raw topic before the enrichment starts, so that only the budget
    // holds it back.
    let payloads: Vec<Vec<u8>> = (0..RECORDS)
        .map(|seq| big_payload(&format!("meter-{}", seq % 7), seq, 256 * 1024))
        .collect();
    for (seq, p) in payloads.iter().enumerate() {
        producer.send(&raw, &format!("meter-{}", seq % 7), p).await;
    }
    // Raw plus its enriched copy (the all-types copy is off here).
    let record_cost = payloads
        .iter()
        .map(|p| (p.len() + enriched_len(&inst, p)) as f64)
        .fold(0.0, f64::max);
    let env: Vec<(&'static str, &str)> = mode
        .iter()
        .copied()
        .chain([
            ("IOT_MAX_IN_FLIGHT_BYTES", "2097152"),
            ("IOT_ENRICHMENT_ALL_TYPES_TOPIC", "false"),
        ])
        .collect();
    let mut enrichment = inst.enrichment_with(DEVICE_TYPE, &env);
    let enriched = inst.enriched_topic(DEVICE_TYPE);
    let collector = inst.collect(std::slice::from_ref(&enriched));
    enrichment.wait_ready(READY).await;
    // Sample the gauge while the records go through.
    let mut sampled: f64 = 0.0;
    let deadline = Instant::now() + ARRIVAL;
    while seqs(&collector.records(), &enriched).len() < RECORDS as usize {
        assert!(
            Instant::now() < deadline,
            "all {RECORDS} records within {ARRIVAL:?}"
        );
        sampled = sampled.max(enrichment.metric("iot_enrichment_in_flight_bytes"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let peak = enrichment.metric("iot_enrichment_in_flight_bytes_peak");
    eprintln!(
        "{name}: budget {BUDGET}, one record {record_cost} bytes in flight, peak {peak}, \
         highest sample {sampled}"
    );
    assert_eq!(
        enrichment.metric("iot_enrichment_in_flight_bytes_limit"),
        BUDGET as f64
    );
    assert!(
        peak >= record_cost,
        "the gauge counts raw payloads and outputs: peak {peak} < one record {record_cost}"
    );
    assert!(
        peak <= BUDGET as f64 + record_cost && sampled <= peak,
        "in flight at most the budget plus one record: peak {peak}, budget {BUDGET}, record \
         {record_cost}, sampled {sampled}"
    );
    let got: BTreeSet<u64> = seqs(&collector.records(), &enriched).into_iter().collect();
    assert_eq!(got, (0..RECORDS).collect::<BTreeSet<u64>>());
    wait_for(
        "nothing in flight at the end",
        Duration::from_secs(10),
        || enrichment.metric("iot_enrichment_in_flight_bytes") == 0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bytes_stay_within_the_budget_at_least_once() {
    in_flight_bytes_stay_within_the_budget("budget-alo", AT_LEAST_ONCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bytes_stay_within_the_budget_exactly_once() {
    in_flight_bytes_stay_within_the_budget("budget-eos", EXACTLY_ONCE).await;
}

/// A budget above the container's memory limit is refused at start. Without a limit (as here)
/// any budget is taken; the refusal itself is unit-tested in `memory.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_too_small_is_refused_at_start() {
    let inst = Installation::new("budget-refused").await;
    let mut enrichment = inst.enrichment_with(DEVICE_TYPE, &[("IOT_MAX_IN_FLIGHT_BYTES", "1000")]);
    let status = enrichment.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = std::fs::read_to_string(&enrichment.stderr).unwrap();
    assert!(
        log.contains("IOT_MAX_IN_FLIGHT_BYTES") && log.contains("too small"),
        "a clear error: {log}"
    );
}

fn producer_args(inst: &Installation) -> KafkaArgs {
    KafkaArgs {
        kafka_bootstrap: inst.bootstrap.clone(),
        topic_prefix: inst.prefix.clone(),
        linger_ms: 0,
    }
}

/// A producer fenced by a newer one with its transactional id has a fatal error: `deliver` says
/// so at once instead of retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_a_fatal_delivery_error() {
    let inst = Installation::new("fenced").await;
    let txn_id = format!("{}-txn", inst.prefix);
    let transactional = |client: &str| -> FutureProducer {
        kafka::producer_config(&producer_args(&inst), client)
            .set("transactional.id", &txn_id)
            .create()
            .unwrap()
    };
    let old = transactional("old");
    tokio::task::block_in_place(|| old.init_transactions(Duration::from_secs(30))).unwrap();
    old.begin_transaction().unwrap();
    let record = OutRecord {
        topic: inst.deadletter_topic(),
        key: "k".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        headers: vec![],
    };
    let metrics = PipelineMetrics::new("test");
    let abort = CancellationToken::new();
    let first = kafka::enqueue(&old, &record).await;
    kafka::deliver(&old, &record, first, &metrics, &abort)
        .await
        .expect("delivered before the fence");

    let new = transactional("new");
    tokio::task::block_in_place(|| new.init_transactions(Duration::from_secs(30))).unwrap();
    let first = kafka::enqueue(&old, &record).await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        kafka::deliver(&old, &record, first, &metrics, &abort),
    )
    .await
    .expect("a fenced producer's delivery ends without retrying for ever");
    assert!(
        matches!(&outcome, Err(DeliveryError::Fatal(_))),
        "fatal: {outcome:?}"
    );
    assert!(old.client().fatal_error().is_some());
    eprintln!("fenced: {outcome:?}");
}

/// An exactly-once enrichment fenced by another instance with its transactional id ends with a
/// non-zero exit and a clear error (Kubernetes restarts it), without committing anything more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_enrichment_exits_non_zero_with_a_clear_error() {
    let inst = Installation::new("fenced-eos").await;
    let txn_id = format!("{}-enrichment-txn", inst.prefix);
    let mut enrichment = inst.enrichment_with(
        DEVICE_TYPE,
        &[
            ("IOT_ENRICHMENT_EXACTLY_ONCE", "true"),
            ("IOT_TRANSACTIONAL_ID", &txn_id),
        ],
    );
    enrichment.wait_ready(READY).await;
    let producer = RawProducer::new(&inst.bootstrap);
    let raw = inst.raw_topic(DEVICE_TYPE);
    let collector = inst.collect(&[inst.enriched_topic(DEVICE_TYPE)]);
    producer.send(&raw, "meter-1", &normal_payload(1)).await;
    collector
        .wait_until("the first record enriched", ARRIVAL, |r| !r.is_empty())
        .await;

    let newer: FutureProducer = kafka::producer_config(&producer_args(&inst), "usurper")
        .set("transactional.id", &txn_id)
        .create()
        .unwrap();
    tokio::task::block_in_place(|| newer.init_transactions(Duration::from_secs(30))).unwrap();
    producer.send(&raw, "meter-1", &normal_payload(2)).await;
    let status = enrichment.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "non-zero exit: {status}");
    let log = std::fs::read_to_string(&enrichment.stderr).unwrap();
    assert!(log.contains("fatal"), "a clear error: {log}");
    let values: Vec<Value> = collector.records().iter().map(Record::json).collect();
    assert_eq!(
        values.len(),
        1,
        "the fenced instance committed nothing more"
    );
}

/// The bridge's side: the meter raw topic takes at most [`ENRICHED_LIMIT`] bytes per batch; 100
/// normal MQTT messages with one ~3 KB message among them: the big one is dead-lettered by the
/// bridge with reason `rejected_by_kafka`, the 100 reach the raw topic, and the bridge keeps
/// running, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_raw_topic_refuses_is_dead_lettered_by_the_bridge() {
    let inst = Installation::new("poisonbridge").await;
    set_topic_config(
        &inst.bootstrap,
        &inst.raw_topic(DEVICE_TYPE),
        &[("max.message.bytes", &ENRICHED_LIMIT.to_string())],
    )
    .await;
    let mut bridge = inst.bridge("poison-0");
    bridge.wait_ready(READY).await;
    let collector = inst.collect(&[inst.raw_topic(DEVICE_TYPE), inst.deadletter_topic()]);
    for seq in 1..=NORMAL {
        if seq == NORMAL / 2 {
            let big = big_payload("meter-big", 1_000_000, 3000);
            inst.publish(&inst.mqtt_topic("meter-big", "raw"), &big)
                .await;
        }
        let id = format!("meter-{}", seq % 7);
        inst.publish(&inst.mqtt_topic(&id, "raw"), &normal_payload(seq))
            .await;
    }
    let took = wait_for("100 raw records and one dead letter", ARRIVAL, || {
        let r = collector.records();
        seqs(&r, &inst.raw_topic(DEVICE_TYPE)).len() as u64 >= NORMAL
            && seqs(&r, &inst.deadletter_topic()).contains(&1_000_000)
    })
    .await;
    let records = collector.records();
    let dead: Vec<&Record> = records
        .iter()
        .filter(|r| r.topic == inst.deadletter_topic())
        .collect();
    assert_eq!(dead.len(), 1, "one dead letter");
    assert_eq!(dead[0].headers["reason"], "rejected_by_kafka");
    assert_eq!(dead[0].headers["stage"], "bridge");
    let raw: BTreeSet<u64> = seqs(&records, &inst.raw_topic(DEVICE_TYPE))
        .into_iter()
        .collect();
    assert_eq!(raw, (1..=NORMAL).collect::<BTreeSet<u64>>());
    assert!(
        bridge.is_running() && ready(&bridge),
        "the bridge carries on, ready"
    );
    assert_eq!(
        bridge.metric(r#"iot_bridge_messages_deadlettered_total{reason="rejected_by_kafka"}"#),
        1.0
    );
    eprintln!("bridge: the refused message dead-lettered, 100 carried, in {took:?}");
}
