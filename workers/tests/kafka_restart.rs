//! Loss test across a Kafka outage: the load simulator numbers every message per device; Kafka
//! is stopped (`deploy/testenv/down.sh kafka`), kept down for `IOT_KAFKA_OUTAGE_SECONDS` (20 by
//! default) under `IOT_KAFKA_OUTAGE_RATE` msg/s (500) and started again, mid-stream. Meanwhile
//! the backlog waits in the broker's session for the bridge. Every sequence number must reach the
//! enriched topic; the bridge, the enrichment and the dashboard never restart, the bridge's MQTT
//! connection never drops (it keeps polling it while Kafka is away), the dashboard's Overview
//! counts every record once Kafka is back, and their peak memory stays under the chart's 256 MiB
//! limit. Duplicates are counted and printed. Its own test binary, so that no
//! other test of this crate runs while the broker is down.
//!
//! The long form of the acceptance (3 minutes at 1,000 msg/s):
//! `IOT_KAFKA_OUTAGE_SECONDS=180 IOT_KAFKA_OUTAGE_RATE=1000 cargo test-integration -p iot-workers
//! --test kafka_restart -- --nocapture`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::loss::{SeqCounter, expected, summary};
use common::{Installation, http_get, peak_rss};

fn testenv(script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/testenv")
        .join(script);
    let status = Command::new(&path).arg("kafka").status().unwrap();
    assert!(status.success(), "{} kafka failed", path.display());
}

/// Starts Kafka again if the test fails while it is down.
struct RestartGuard(bool);

/// On a failure after the restart, prints what the broker said: whether the new broker is running
/// and the end of its log (the test environment is gone by the time anyone reads the CI output).
struct BrokerReport;

impl Drop for BrokerReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/testenv/.run");
        let pid = std::fs::read_to_string(run.join("pids/kafka.pid")).unwrap_or_default();
        let alive = !pid.trim().is_empty()
            && std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
        let log = std::fs::read_to_string(run.join("logs/kafka.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "Kafka after the restart: pid {:?}, running {alive}; last lines of its log:",
            pid.trim()
        );
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
    }
}

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
    let (mut dashboard, dashboard_port) = inst.dashboard();
    let overview_total = move || {
        http_get(dashboard_port, "/api/overview")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["stages"]["enriched"]["total"].as_u64())
    };
    bridge.wait_ready(Duration::from_secs(60)).await;
    enrichment.wait_ready(Duration::from_secs(60)).await;
    let serving = Instant::now();
    while overview_total().is_none() {
        assert!(
            serving.elapsed() < Duration::from_secs(60),
            "the dashboard does not serve its Overview"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Counts as records arrive: 200,000 records of the long form are too many to keep and scan.
    let counter = SeqCounter::start(&inst.bootstrap, &[inst.all_enriched_topic()]);

    let setting = |name: &str, default: u64| {
        std::env::var(name).ok().map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{name}={v}"))
        })
    };
    let outage = Duration::from_secs(setting("IOT_KAFKA_OUTAGE_SECONDS", 20));
    let rate = setting("IOT_KAFKA_OUTAGE_RATE", 500);
    // The load runs 10 s before the outage, through it, and 10 s after.
    const DEVICES: u64 = 10;
    let per_device = rate * (outage.as_secs() + 20) / DEVICES;
    let published = per_device * DEVICES;
    let mut simulator = inst.load(DEVICES, rate, per_device);
    let flowing = Instant::now();
    while (counter.distinct() as u64) < rate * 5 {
        assert!(
            flowing.elapsed() < Duration::from_secs(60),
            "the stream is not flowing: {} enriched in 60 s",
            counter.distinct()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(simulator.is_running(), "the outage must come mid-stream");
    let mut guard = RestartGuard(true);
    tokio::task::spawn_blocking(|| testenv("down.sh"))
        .await
        .unwrap();
    let at_outage = counter.distinct();
    tokio::time::sleep(outage).await;
    tokio::task::spawn_blocking(|| testenv("up.sh"))
        .await
        .unwrap();
    guard.0 = false;
    let _report = BrokerReport;

    assert!(
        simulator
            .wait_exit(Duration::from_secs(120))
            .await
            .success()
    );
    let summary = summary(&simulator.stdout_text());
    assert_eq!(summary["published"], published, "{summary}");
    let expected = expected(&summary);
    let started = Instant::now();
    let (missing, duplicates) = loop {
        let (missing, duplicates) = counter.missing_and_duplicates(&expected);
        if missing.is_empty() || started.elapsed() > Duration::from_secs(240) + outage {
            break (missing, duplicates);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The dashboard reads the all-types topic by assignment: after the outage it counts every
    // record written (duplicates included).
    let seen_by_dashboard = loop {
        let total = overview_total().unwrap_or(0);
        if total >= published || started.elapsed() > Duration::from_secs(300) + outage {
            break total;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let peaks = [
        peak_rss(bridge.pid()),
        peak_rss(enrichment.pid()),
        peak_rss(dashboard.pid()),
    ];
    eprintln!(
        "Kafka down {} s at {rate} msg/s after {at_outage} enriched: {} published, {} missing, \
         {duplicates} duplicates, complete {:.1} s after the load ended; peak RSS bridge {:.1} MiB, \
         enrichment {:.1} MiB, dashboard {:.1} MiB; the dashboard counted {seen_by_dashboard}",
        outage.as_secs(),
        summary["published"],
        missing.len(),
        started.elapsed().as_secs_f64(),
        peaks[0] as f64 / 1048576.0,
        peaks[1] as f64 / 1048576.0,
        peaks[2] as f64 / 1048576.0
    );
    assert_eq!(
        missing.len(),
        0,
        "sequence numbers missing, first: {:?}",
        missing.first()
    );
    let log = bridge.log_tail(100_000);
    let stranded = [&log, &enrichment.log_tail(100_000)].map(|log| {
        log.matches("Kafka answers a new client but not one")
            .count()
    });
    eprintln!(
        "stranded-client warnings: bridge {}, enrichment {}",
        stranded[0], stranded[1]
    );
    assert!(
        bridge.is_running() && enrichment.is_running() && dashboard.is_running(),
        "the workers rode out the outage"
    );
    assert!(
        seen_by_dashboard >= published,
        "the dashboard counted {seen_by_dashboard} of {published} records after the outage"
    );
    assert!(
        !log.contains("MQTT connection lost"),
        "the bridge's MQTT connection dropped during the Kafka outage"
    );
    for (who, peak) in ["bridge", "enrichment", "dashboard"].iter().zip(peaks) {
        assert!(
            peak > 0 && peak < 256 * 1024 * 1024,
            "{who}'s peak RSS was {peak} bytes; the chart's limit is 256 MiB"
        );
    }
}
