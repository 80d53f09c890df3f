//! Loss tests: the load simulator numbers every message per device; a worker is killed with
//! SIGKILL mid-stream and restarted. Every sequence number must reach the enriched topic;
//! duplicates are counted and reported (at-least-once), and must be zero in exactly-once mode.

mod common;

use std::time::Duration;

use common::loss::{arrivals, complete, expected, missing_and_duplicates, summary};
use common::{Collector, Installation, Worker};

const READY: Duration = Duration::from_secs(60);
/// 6 devices of all three types, 500 messages each at 400 msg/s in total: about 7.5 s.
const LOAD: &[&str] = &[
    "--load",
    "--load-devices",
    "6",
    "--load-device-type",
    "mixed",
    "--load-rate",
    "400",
    "--load-messages-per-device",
    "500",
    "--seed",
    "1",
];
const TOTAL: u64 = 3000;

/// Waits for the load run to end and for every sequence number on the enriched topic; returns
/// (missing, duplicates).
async fn settle(
    simulator: &mut Worker,
    collector: &Collector,
    what: &str,
    at_kill: usize,
) -> (usize, u64) {
    assert!(
        simulator
            .wait_exit(Duration::from_secs(120))
            .await
            .success()
    );
    let summary = summary(&simulator.stdout_text());
    assert_eq!(summary["published"], TOTAL, "{summary}");
    assert_eq!(
        summary["acknowledged"], TOTAL,
        "the broker took every message: {summary}"
    );
    let expected = expected(&summary);
    let records = collector
        .wait_until(
            "every sequence number enriched",
            Duration::from_secs(180),
            |r| complete(&expected, r),
        )
        .await;
    let (missing, duplicates) = missing_and_duplicates(&expected, &arrivals(&records));
    eprintln!(
        "{what} after {at_kill} enriched: {TOTAL} published, {} enriched records, {} missing, {duplicates} duplicates",
        records.len(),
        missing.len()
    );
    assert_eq!(missing, Vec::<(String, u64)>::new());
    (missing.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_bridge_mid_stream_loses_no_sequence_number() {
    let inst = Installation::new("loss-bridge").await;
    let mut bridge = inst.bridge("bridge-loss-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.all_enriched_topic()]);
    let mut simulator = inst.simulator("load", LOAD);
    collector
        .wait_until("a sixth of the stream enriched", READY, |r| r.len() >= 500)
        .await;
    assert!(simulator.is_running(), "the kill must come mid-stream");
    bridge.kill9();
    let at_kill = collector.records().len();
    assert!((at_kill as u64) < TOTAL);

    // Same client id: the broker kept the session and queued what arrived meanwhile; what the
    // killed bridge had not acknowledged is delivered again.
    let mut bridge = inst.bridge("bridge-loss-0");
    bridge.wait_ready(READY).await;
    settle(&mut simulator, &collector, "bridge kill -9", at_kill).await;
    assert!(enrichment.is_running());
}

async fn kill9_of_the_enrichment(exactly_once: bool) -> u64 {
    let name = if exactly_once { "loss-eos" } else { "loss-alo" };
    let inst = Installation::new(name).await;
    // Static membership: the restarted process takes the partitions back at once.
    let env: &[(&str, &str)] = if exactly_once {
        &[
            ("IOT_ENRICHMENT_EXACTLY_ONCE", "true"),
            ("IOT_CONSUMER_INSTANCE_ID", "enrichment-0"),
        ]
    } else {
        &[("IOT_CONSUMER_INSTANCE_ID", "enrichment-0")]
    };
    let mut bridge = inst.bridge(&format!("bridge-{name}-0"));
    let mut enrichment = inst.enrichment_with("all", env);
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.all_enriched_topic()]);
    let mut simulator = inst.simulator("load", LOAD);
    collector
        .wait_until("a sixth of the stream enriched", READY, |r| r.len() >= 500)
        .await;
    assert!(simulator.is_running(), "the kill must come mid-stream");
    enrichment.kill9();
    let at_kill = collector.records().len();
    assert!((at_kill as u64) < TOTAL);

    // Same consumer group (and transactional id): it resumes from the committed offsets.
    let mut enrichment = inst.enrichment_with("all", env);
    enrichment.wait_ready(READY).await;
    let what = if exactly_once {
        "enrichment kill -9 (exactly-once)"
    } else {
        "enrichment kill -9 (at-least-once)"
    };
    let (_, duplicates) = settle(&mut simulator, &collector, what, at_kill).await;
    assert!(bridge.is_running());
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_enrichment_mid_stream_loses_no_sequence_number() {
    kill9_of_the_enrichment(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_enrichment_killed_mid_stream_writes_every_sequence_number_once() {
    let duplicates = kill9_of_the_enrichment(true).await;
    assert_eq!(duplicates, 0, "read_committed sees each record once");
}

/// SIGTERM mid-stream, then a restart: a graceful stop finishes and acknowledges (bridge) or
/// commits (enrichment) everything in flight, so nothing is lost and nothing is repeated.
async fn sigterm_mid_stream(stop_bridge: bool) {
    let name = if stop_bridge {
        "term-bridge"
    } else {
        "term-enrich"
    };
    let inst = Installation::new(name).await;
    let env: &[(&str, &str)] = &[("IOT_CONSUMER_INSTANCE_ID", "enrichment-0")];
    let bridge_id = format!("bridge-{name}-0");
    let mut bridge = inst.bridge(&bridge_id);
    let mut enrichment = inst.enrichment_with("all", env);
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.all_enriched_topic()]);
    let mut simulator = inst.simulator("load", LOAD);
    collector
        .wait_until("a sixth of the stream enriched", READY, |r| r.len() >= 500)
        .await;
    assert!(simulator.is_running(), "the stop must come mid-stream");
    let victim = if stop_bridge {
        &mut bridge
    } else {
        &mut enrichment
    };
    assert!(victim.terminate(Duration::from_secs(30)).await.success());
    let at_stop = collector.records().len();
    assert!((at_stop as u64) < TOTAL);
    let mut restarted = if stop_bridge {
        inst.bridge(&bridge_id)
    } else {
        inst.enrichment_with("all", env)
    };
    restarted.wait_ready(READY).await;
    let what = if stop_bridge {
        "bridge SIGTERM"
    } else {
        "enrichment SIGTERM"
    };
    let (_, duplicates) = settle(&mut simulator, &collector, what, at_stop).await;
    assert_eq!(duplicates, 0, "a graceful stop repeats nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_bridge_stop_mid_stream_neither_loses_nor_repeats() {
    sigterm_mid_stream(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_enrichment_stop_mid_stream_neither_loses_nor_repeats() {
    sigterm_mid_stream(false).await;
}
