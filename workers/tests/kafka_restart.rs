//! Loss test across a broker outage: the load simulator numbers every message per device; Kafka
//! is stopped and started again (`deploy/testenv/down.sh kafka` / `up.sh kafka`) mid-stream.
//! Every sequence number must reach the enriched topic. Its own test binary, so that no other
//! test of this crate runs while the broker is down.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Installation;
use common::loss::{arrivals, complete, expected, missing_and_duplicates, summary};

fn testenv(script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/testenv")
        .join(script);
    let status = Command::new(&path).arg("kafka").status().unwrap();
    assert!(status.success(), "{} kafka failed", path.display());
}

/// Starts Kafka again if the test fails while it is down.
struct RestartGuard(bool);

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if self.0 {
            testenv("up.sh");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_restart_mid_stream_loses_no_sequence_number() {
    let inst = Installation::new("kafkarestart").await;
    let mut bridge = inst.bridge("bridge-kr-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(Duration::from_secs(60)).await;
    enrichment.wait_ready(Duration::from_secs(60)).await;
    let collector = inst.collect(&[inst.all_enriched_topic()]);

    // 3 devices, 600 messages each at 150 msg/s in total: about 12 s, so the outage falls inside.
    let mut simulator = inst.simulator(
        "load",
        &[
            "--load",
            "--load-devices",
            "3",
            "--load-device-type",
            "mixed",
            "--load-rate",
            "150",
            "--load-messages-per-device",
            "600",
        ],
    );
    collector
        .wait_until("the stream flowing", Duration::from_secs(60), |r| {
            r.len() >= 200
        })
        .await;
    assert!(simulator.is_running(), "the outage must come mid-stream");
    let mut guard = RestartGuard(true);
    tokio::task::spawn_blocking(|| testenv("down.sh"))
        .await
        .unwrap();
    let at_outage = collector.records().len();
    tokio::task::spawn_blocking(|| testenv("up.sh"))
        .await
        .unwrap();
    guard.0 = false;

    assert!(
        simulator
            .wait_exit(Duration::from_secs(120))
            .await
            .success()
    );
    let summary = summary(&simulator.stdout_text());
    assert_eq!(summary["published"], 1800, "{summary}");
    let expected = expected(&summary);
    let records = collector
        .wait_until(
            "every sequence number enriched",
            Duration::from_secs(240),
            |r| complete(&expected, r),
        )
        .await;
    let (missing, duplicates) = missing_and_duplicates(&expected, &arrivals(&records));
    eprintln!(
        "Kafka restart after {at_outage} enriched: {} published, {} enriched records, {} missing, {duplicates} duplicates",
        summary["published"],
        records.len(),
        missing.len()
    );
    assert_eq!(missing, Vec::<(String, u64)>::new());
    assert!(
        bridge.is_running() && enrichment.is_running(),
        "both workers rode out the outage"
    );
}
