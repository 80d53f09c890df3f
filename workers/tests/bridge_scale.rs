//! Bridge scale-down mid-stream: two bridge replicas share the group's subscriptions; replica 1
//! is stopped (SIGTERM, as Kubernetes does when a StatefulSet scales 2 -> 1) while a
//! sequence-numbered load runs. Mosquitto keeps handing a share of the group's messages to an
//! offline member's session, so a replica that just disconnected would strand that share; one
//! that releases it (unsubscribe, carry what its session still delivers, then disconnect) loses
//! nothing. The control run stops replica 1 without releasing and shows the stranding, which
//! is what makes the first test meaningful.

mod common;

use std::time::Duration;

use common::Installation;
use common::loss::settle;

const READY: Duration = Duration::from_secs(60);

/// Runs a 3 x 600 message load over bridges `-0` and `-1` (replica 1 with `release` as its
/// IOT_BRIDGE_RELEASE_ON_STOP), stops replica 1 once 200 messages are enriched, and returns
/// (missing, duplicates, replica 1's log).
async fn scale_down_mid_stream(name: &str, release: &str) -> (usize, u64, String) {
    let inst = Installation::new(name).await;
    let mut first = inst.bridge("scale-0");
    let mut second = inst.bridge_with("scale-1", &[("IOT_BRIDGE_RELEASE_ON_STOP", release)]);
    let mut enrichment = inst.enrichment("all");
    first.wait_ready(READY).await;
    second.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.all_enriched_topic()]);
    // 3 devices, 600 messages each at 150 msg/s in total: about 12 s.
    let mut simulator = inst.load(3, 150, 600);
    collector
        .wait_until("the stream flowing", Duration::from_secs(60), |r| {
            r.len() >= 200
        })
        .await;
    assert!(
        second.metric_sum("iot_bridge_messages_received_total") > 0.0,
        "replica 1 carried its share before the scale-down"
    );
    assert!(
        simulator.is_running(),
        "the scale-down must come mid-stream"
    );
    let status = second.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "replica 1 stopped cleanly: {status}");
    let log = second.log_tail(10_000);

    let settled = settle(&mut simulator, &collector, 1800, Duration::from_secs(60)).await;
    eprintln!(
        "bridge 2 -> 1 (release on stop: {release}): {} published, {} missing, {} duplicates",
        settled.summary["published"], settled.missing, settled.duplicates
    );
    assert!(first.is_running() && enrichment.is_running());
    (settled.missing, settled.duplicates, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_scale_down_mid_stream_loses_nothing() {
    let (missing, _, log) = scale_down_mid_stream("bscale", "auto").await;
    assert!(
        log.contains("share released"),
        "replica 1 released its share of the group on stop:\n{log}"
    );
    assert_eq!(
        missing, 0,
        "the remaining replica receives everything published after replica 1 left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_release_a_stopped_replica_strands_its_share() {
    let (missing, _, log) = scale_down_mid_stream("bstrand", "never").await;
    assert!(!log.contains("share released"), "{log}");
    assert!(
        missing > 0,
        "an offline member's session keeps receiving its share of the group (nothing missing \
         means the broker stopped doing so, and the release would no longer be needed)"
    );
}
