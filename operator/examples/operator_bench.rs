//! Operator benchmark against the real test environment (not a test; prints numbers).
//!
//! Runs the real `iot-operator run` binary as a child process in a fresh namespace, then
//! 1. applies one DeviceType at a time and measures `kubectl apply` -> `Ready` (several runs,
//!    median and p90), and
//! 2. applies N DeviceTypes at once and measures the time until all are Ready.
//!
//! It also reports the operator's resident memory (VmRSS now, VmHWM peak) from /proc.
//!
//! ```sh
//! source deploy/testenv/.run/env
//! cargo build --release -p iot-operator
//! cargo run --release -p iot-operator --example operator_bench -- [SINGLE_RUNS] [BULK_COUNT]
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iot_operator::crd::{CONDITION_READY, DeviceType};
use iot_testkit::{TestNamespace, kafka_bootstrap, kube_client};
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};

fn device_type(name: &str, id: &str) -> DeviceType {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": { "name": name },
        "spec": {
            "deviceType": id,
            "displayName": format!("Bench {id}"),
            "topics": { "partitions": 1, "retention": "1h" },
            "deletionPolicy": "Delete"
        }
    }))
    .expect("valid DeviceType")
}

fn is_ready(dt: Option<&DeviceType>) -> bool {
    dt.and_then(|d| d.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == CONDITION_READY && c.status == "True")
    })
}

fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn start_operator(ns: &str, bootstrap: &str, prefix: &str) -> Child {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join("iot-operator");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p iot-operator` first",
        bin.display()
    );
    Command::new(bin)
        .args(["run", "--namespace", ns, "--kafka-bootstrap", bootstrap])
        .args(["--topic-prefix", prefix, "--admin-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start iot-operator")
}

async fn wait_ready(api: &Api<DeviceType>, name: &str) {
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(api.clone(), name, is_ready),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} not Ready within 120 s"))
    .unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let single_runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(9);
    let bulk: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);

    let client: Client = kube_client().await;
    let bootstrap = kafka_bootstrap();
    let ns = TestNamespace::create(&client, "bench-operator").await;
    let prefix = ns.name.replace('-', "_");
    let api: Api<DeviceType> = Api::namespaced(client.clone(), &ns.name);
    let mut operator = start_operator(&ns.name, &bootstrap, &prefix);
    let pid = operator.id();

    // 1. apply -> Ready, one at a time.
    let mut single = Vec::new();
    for i in 0..single_runs {
        let name = format!("single-{i}");
        let started = Instant::now();
        api.create(
            &PostParams::default(),
            &device_type(&name, &format!("single_{i}")),
        )
        .await
        .unwrap();
        wait_ready(&api, &name).await;
        single.push(started.elapsed());
    }
    single.sort();
    let (rss_single, _) = memory_kib(pid);

    // 2. N at once, from scratch.
    let started = Instant::now();
    for i in 0..bulk {
        api.create(
            &PostParams::default(),
            &device_type(&format!("bulk-{i}"), &format!("bulk_{i}")),
        )
        .await
        .unwrap();
    }
    let created = started.elapsed();
    loop {
        let all = api.list(&ListParams::default().labels("")).await.unwrap();
        let ready = all
            .items
            .iter()
            .filter(|d| d.name_any().starts_with("bulk-") && is_ready(Some(d)))
            .count();
        if ready == bulk {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready}/{bulk} Ready after 15 min"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bulk_time = started.elapsed();
    let (rss, hwm) = memory_kib(pid);

    println!(
        "operator benchmark (namespace {}, Kafka {bootstrap})",
        ns.name
    );
    println!(
        "apply -> Ready, {} runs: median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
        single.len(),
        percentile(&single, 0.5).as_secs_f64() * 1e3,
        percentile(&single, 0.9).as_secs_f64() * 1e3,
        single[0].as_secs_f64() * 1e3,
        single[single.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "{bulk} DeviceTypes from scratch: all Ready in {:.1} s (creating them took {:.1} s); {:.1} DeviceTypes/s",
        bulk_time.as_secs_f64(),
        created.as_secs_f64(),
        bulk as f64 / bulk_time.as_secs_f64()
    );
    println!(
        "operator memory: RSS {:.1} MiB after the single runs, {:.1} MiB with {} DeviceTypes, peak {:.1} MiB",
        rss_single as f64 / 1024.0,
        rss as f64 / 1024.0,
        bulk + single_runs,
        hwm as f64 / 1024.0
    );

    // Clean up: delete the DeviceTypes (their topics go with them), then stop the operator.
    api.delete_collection(&Default::default(), &ListParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = operator.wait();
}
