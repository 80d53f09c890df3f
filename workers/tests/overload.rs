//! Overload: the bridge and the enrichment are offered far more than they can carry, for tens of
//! seconds. They must keep carrying at their own pace the whole time (no stall, no restart), stay
//! live, and drain the backlog afterwards with every sequence number delivered. Duplicates are
//! counted and reported (at-least-once).

mod common;

use std::time::{Duration, Instant};

use common::loss::{SeqCounter, expected, summary};
use common::{Installation, Worker};

const READY: Duration = Duration::from_secs(60);

/// Headroom over a bridge's window: one network read of rumqttc decodes up to 10 packets.
const READ_BATCH: f64 = 10.0;

/// Samples `metric` on `worker` once a second until `done` or `timeout`; fails when it does not
/// grow for `stall` while work is outstanding, when the worker stops being live or reports a
/// stall, or when its in-flight gauge exceeds `max_in_flight`. Returns the samples (seconds
/// since start, value).
async fn watch_progress(
    worker: &mut Worker,
    metric: &str,
    stall: Duration,
    timeout: Duration,
    max_in_flight: f64,
    mut done: impl FnMut() -> bool,
) -> Vec<(f64, f64)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let (mut last_value, mut last_growth) = (-1.0, Instant::now());
    loop {
        if done() {
            return samples;
        }
        assert!(
            worker.is_running(),
            "{} exited:\n{}",
            worker.name,
            worker.log_tail(40)
        );
        let value = worker.metric_sum(metric);
        samples.push((start.elapsed().as_secs_f64(), value));
        if value > last_value {
            (last_value, last_growth) = (value, Instant::now());
        }
        assert!(
            last_growth.elapsed() < stall,
            "{metric} of {} has not grown for {stall:?} (at {value}); samples {samples:?}\n{}",
            worker.name,
            worker.log_tail(40)
        );
        let live = worker.get("/livez").map(|(code, _)| code);
        assert_eq!(
            live,
            Some(200),
            "{} not live:\n{}",
            worker.name,
            worker.log_tail(40)
        );
        assert_eq!(
            worker.metric_sum("iot_bridge_stalled"),
            0.0,
            "{} reports a stall",
            worker.name
        );
        let in_flight = worker.metric_sum("iot_bridge_in_flight_messages")
            + worker.metric_sum("iot_enrichment_in_flight_messages");
        assert!(
            in_flight <= max_in_flight,
            "{} holds {in_flight} messages in flight, more than {max_in_flight}",
            worker.name
        );
        assert!(
            start.elapsed() < timeout,
            "not done within {timeout:?}; {metric} samples {samples:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Regression test of the bridge's circular wait (acknowledgements waiting for the poll loop while
/// the poll loop waited for capacity only acknowledgements free): a window of 8 messages against
/// a burst of 12,000 that arrives much faster than 8 at a time can be carried. The bridge must
/// carry all of them, growing every few seconds, never report a stall, and never hold much more
/// than its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_with_a_tiny_window_carries_a_burst_without_stalling() {
    let inst = Installation::new("stall").await;
    let mut bridge = inst.bridge_with(
        "stall-0",
        &[
            ("IOT_BRIDGE_MAX_IN_FLIGHT", "8"),
            ("IOT_BRIDGE_STALL_SECONDS", "5"),
        ],
    );
    bridge.wait_ready(READY).await;
    let counter = SeqCounter::start(&inst.bootstrap, &[inst.raw_topic("smart_breaker")]);
    let mut simulator = inst.simulator(
        "burst",
        &[
            "--load",
            "--load-devices",
            "12",
            "--load-rate",
            "100000",
            "--load-messages-per-device",
            "1000",
            "--seed",
            "7",
        ],
    );
    let total = 12_000;
    let samples = watch_progress(
        &mut bridge,
        "iot_bridge_messages_produced_total",
        Duration::from_secs(10),
        Duration::from_secs(240),
        8.0 + READ_BATCH,
        || counter.distinct() >= total,
    )
    .await;
    assert!(simulator.wait_exit(READY).await.success());
    let summary = summary(&simulator.stdout_text());
    let (missing, duplicates) = counter.missing_and_duplicates(&expected(&summary));
    let carried_in = samples.last().map_or(0.0, |s| s.0);
    eprintln!(
        "burst of {total} through a window of 8: offered at {:.0} msg/s, carried in {carried_in:.0} s, {} missing, {duplicates} duplicates",
        summary["rate"].as_f64().unwrap_or_default(),
        missing.len()
    );
    assert_eq!(missing, Vec::<(String, u64)>::new());
    assert!(bridge.is_running());
}

/// Several times what the pipeline can carry, for about 20 s, through bridge and enrichment:
/// both keep carrying every second of it, then drain the backlog, with nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_carried_at_full_pace_then_drained_with_nothing_missing() {
    let inst = Installation::new("overload").await;
    let mut bridge = inst.bridge("overload-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let counter = SeqCounter::start(&inst.bootstrap, &[inst.all_enriched_topic()]);
    let offered_seconds = 20;
    let mut simulator = inst.simulator(
        "overload",
        &[
            "--load",
            "--load-devices",
            "30",
            "--load-device-type",
            "mixed",
            "--load-rate",
            "100000",
            "--duration-seconds",
            &offered_seconds.to_string(),
            "--seed",
            "3",
        ],
    );
    // While the load runs: the bridge's produced count grows every few seconds.
    let start = Instant::now();
    let during = watch_progress(
        &mut bridge,
        "iot_bridge_messages_produced_total",
        Duration::from_secs(5),
        Duration::from_secs(120),
        1000.0 + READ_BATCH,
        || !simulator.is_running(),
    )
    .await;
    let load_seconds = start.elapsed().as_secs_f64();
    let summary = summary(&simulator.stdout_text());
    let published = summary["published"].as_u64().unwrap();
    assert_eq!(
        summary["acknowledged"].as_u64(),
        Some(published),
        "{summary}"
    );
    let carried_during = during.last().map_or(0.0, |s| s.1);
    let enriched_during = counter.distinct();
    // Overload means the broker had to queue: much more was offered than the pipeline carried
    // end to end meanwhile.
    assert!(
        published as f64 >= 2.0 * enriched_during as f64,
        "not an overload: {published} published, {enriched_during} enriched meanwhile"
    );
    // Then the backlog drains, with the enrichment growing every few seconds.
    let expected = expected(&summary);
    let total = expected.values().sum::<u64>() as usize;
    watch_progress(
        &mut enrichment,
        "iot_enrichment_messages_produced_total",
        Duration::from_secs(10),
        Duration::from_secs(600),
        1000.0,
        || counter.distinct() >= total,
    )
    .await;
    let drained_at = start.elapsed().as_secs_f64();
    let (missing, duplicates) = counter.missing_and_duplicates(&expected);
    eprintln!(
        "overload: {published} published in {load_seconds:.1} s ({:.0} msg/s offered); {carried_during:.0} carried by the bridge meanwhile ({:.0} msg/s), {enriched_during} enriched; all enriched after {drained_at:.1} s ({:.0} msg/s end to end); {} missing, {duplicates} duplicates",
        published as f64 / load_seconds,
        carried_during / load_seconds,
        total as f64 / drained_at,
        missing.len()
    );
    assert_eq!(missing, Vec::<(String, u64)>::new());
    assert!(
        bridge.is_running() && enrichment.is_running(),
        "no restart needed"
    );
}

/// A message whose dead letter cannot be written is given up without a PUBACK, and keeps one of
/// the broker's Receive Maximum slots until the next connection. When such messages fill the
/// window the broker sends nothing more, with nothing pending in the bridge: the bridge must
/// report that as a stall (not ready, and not live while Kafka answers, so that it is restarted
/// and the broker redelivers them), not sit idle and healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_used_up_by_messages_that_cannot_be_carried_is_a_stall() {
    let inst = Installation::new("exhausted").await;
    let mut bridge = inst.bridge_with(
        "exhausted-0",
        &[
            ("IOT_BRIDGE_MAX_IN_FLIGHT", "3"),
            ("IOT_BRIDGE_STALL_SECONDS", "600"),
        ],
    );
    bridge.wait_ready(READY).await;
    // Without its dead-letter topic, a malformed message can neither be carried nor set aside.
    inst.delete_topics(&[inst.deadletter_topic()]);
    for i in 0..3 {
        inst.publish(
            &inst.mqtt_topic("bad-001", "raw"),
            format!("not json {i}").as_bytes(),
        )
        .await;
    }
    let start = Instant::now();
    loop {
        let stalled = bridge.metric_sum("iot_bridge_stalled");
        let live = bridge.get("/livez").map(|(code, _)| code);
        let ready = bridge.get("/readyz").map(|(code, _)| code);
        if stalled == 1.0 && live == Some(503) && ready == Some(503) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no stall reported after {:?}: stalled {stalled}, livez {live:?}, readyz {ready:?}\n{}",
            start.elapsed(),
            bridge.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "window of 3 used up by uncarriable messages: reported as a stall after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(bridge.is_running());
}
