//! Benchmark (it prints numbers and fails only when the run did not work): the real
//! operator binary at N autoscaled DeviceTypes against the test environment's real API server and
//! Kafka. It reports, per phase, the operator's resident memory, its reconcile rate (from its own
//! `/metrics`), its CPU use and threads, the TCP connections it holds to Kafka (its sockets, from
//! `/proc/PID/fd`, matched against `/proc/PID/net/tcp{,6}` by remote port, sampled every second)
//! and the connections it opens to Kafka (its `connect()` calls to the Kafka port, traced with
//! `strace --seccomp-bpf -e trace=connect` when strace is installed: only those calls stop the
//! process).
//!
//! ```sh
//! source deploy/testenv/.run/env
//! cargo build --release -p iot-operator --bin iot-operator
//! cargo bench -p iot-operator --features integration --bench autoscale
//! ```
//!
//! Settings (environment): `IOT_BENCH_OPERATOR` (the binary; default `release/iot-operator` in
//! the target directory this benchmark was built in), `IOT_BENCH_DEVICE_TYPES` (200),
//! `IOT_BENCH_WINDOW_SECONDS` (steady-state window, 60), `IOT_BENCH_AUTOSCALE_INTERVAL` (the
//! operator's `--autoscale-interval-seconds`, 15).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iot_operator::crd::{CONDITION_READY, DeviceType, all_enriched_topic, deadletter_topic};
use iot_testkit::{TestNamespace, delete_topics, kafka_bootstrap, kube_client};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, CustomResourceExt, ResourceExt};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn operator_binary() -> PathBuf {
    if let Ok(path) = std::env::var("IOT_BENCH_OPERATOR") {
        return PathBuf::from(path);
    }
    // target/debug/deps/autoscale_bench-HASH -> target/release/iot-operator
    let exe = std::env::current_exe().expect("own path");
    let target = exe.ancestors().nth(3).expect("target directory");
    target.join("release/iot-operator")
}

fn device_type(i: usize) -> DeviceType {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": { "name": format!("bench-{i}") },
        "spec": {
            "deviceType": format!("bench_{i}"),
            "displayName": format!("Bench {i}"),
            "topics": { "partitions": 2, "retention": "1h" },
            "enrichment": { "minReplicas": 1, "maxReplicas": 2, "lagPerReplica": 1000 },
            "deletionPolicy": "Delete"
        }
    }))
    .expect("valid DeviceType")
}

fn is_ready(dt: &DeviceType) -> bool {
    dt.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == CONDITION_READY && c.status == "True")
    })
}

/// The operator started under `strace`, when there is one: its trace file.
fn strace_file() -> Option<PathBuf> {
    let available = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (available && std::env::var("IOT_BENCH_STRACE").as_deref() != Ok("0")).then(|| {
        std::env::temp_dir().join(format!("autoscale-bench-{}.strace", std::process::id()))
    })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `connect()` calls to `port` in the trace between `from` and `to` (Unix seconds).
fn connects(trace: Option<&PathBuf>, port: u16, from: f64, to: f64) -> Option<usize> {
    let text = std::fs::read_to_string(trace?).ok()?;
    let needle = format!("htons({port})");
    Some(
        text.lines()
            .filter(|l| l.contains("connect(") && l.contains(&needle))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .filter(|t| (from..to).contains(t))
            .count(),
    )
}

/// What one look at the operator process (and the machine) found.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// The machine's busy and total CPU time (`/proc/stat`), in clock ticks.
    machine_busy: u64,
    machine_total: u64,
    rss_kib: u64,
    threads: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    kafka_connections: usize,
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Established TCP connections of process `pid` whose remote port is `port`.
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().to_string();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_string)
        })
        .collect();
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01: ESTABLISHED.
            if remote_port == Some(port) && f[3] == "01" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

fn sample(pid: u32, kafka_port: u16) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at ")": utime and stime are the
    // 14th and 15th fields of the whole line, the 12th and 13th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let machine: Vec<u64> = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let total: u64 = machine.iter().take(8).sum();
    let idle = machine.get(3).copied().unwrap_or(0) + machine.get(4).copied().unwrap_or(0);
    Sample {
        machine_busy: total - idle,
        machine_total: total,
        rss_kib: status_field(&status, "VmRSS:"),
        threads: status_field(&status, "Threads:"),
        cpu_ticks: fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0),
        kafka_connections: connections_to(pid, kafka_port),
    }
}

/// The operator's `/metrics` text.
fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The sum of every series of `name` whose labels contain all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Min, mean and max of `values`.
fn spread(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, v.iter().sum::<f64>() / v.len() as f64, max)
}

fn report(
    phase: &str,
    samples: &[Sample],
    seconds: f64,
    metrics: (&str, &str),
    opened: Option<usize>,
) {
    let ticks = procfs_ticks_per_second();
    let cpu = samples.last().zip(samples.first()).map_or(0.0, |(l, f)| {
        (l.cpu_ticks - f.cpu_ticks) as f64 / ticks / seconds
    });
    let busy = samples.last().zip(samples.first()).map_or(0.0, |(l, f)| {
        (l.machine_busy - f.machine_busy) as f64 / (l.machine_total - f.machine_total).max(1) as f64
    });
    let (before, after) = metrics;
    let ok = |t| {
        metric(
            t,
            "iot_operator_reconciles_total",
            &["DeviceType", "\"ok\""],
        )
    };
    let all = |t| metric(t, "iot_operator_reconciles_total", &["DeviceType"]);
    let dur_sum = |t| {
        metric(
            t,
            "iot_operator_reconcile_duration_seconds_sum",
            &["DeviceType"],
        )
    };
    let dur_count = |t| {
        metric(
            t,
            "iot_operator_reconcile_duration_seconds_count",
            &["DeviceType"],
        )
    };
    let reconciles = all(after) - all(before);
    let mean_ms = (dur_sum(after) - dur_sum(before)) / (dur_count(after) - dur_count(before)) * 1e3;
    let (cmin, cmean, cmax) = spread(samples.iter().map(|s| s.kafka_connections as f64));
    let (_, rss_mean, rss_max) = spread(samples.iter().map(|s| s.rss_kib as f64 / 1024.0));
    let (_, _, threads_max) = spread(samples.iter().map(|s| s.threads as f64));
    println!(
        "{phase}: {seconds:.0} s, {} samples | reconciles {reconciles:.0} ({:.1}/s, ok {:.1}/s), \
         mean reconcile {mean_ms:.0} ms | RSS mean {rss_mean:.1} MiB, max {rss_max:.1} MiB | \
         Kafka connections held min {cmin:.0} mean {cmean:.1} max {cmax:.0}, opened {} | \
         threads max {threads_max:.0} | CPU {:.0} % of a core | machine busy {:.0} %",
        samples.len(),
        reconciles / seconds,
        (ok(after) - ok(before)) / seconds,
        opened.map_or("(no strace)".to_string(), |n| format!(
            "{n} ({:.1}/s)",
            n as f64 / seconds
        )),
        cpu * 100.0,
        busy * 100.0,
    );
}

fn procfs_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf CLK_TCK` says for sure.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts the operator (under `strace` when `trace` is set); the child and the operator's pid
/// (`None`: strace did not start it).
fn start_operator(
    ns: &str,
    bootstrap: &str,
    prefix: &str,
    admin: u16,
    interval: u64,
    trace: Option<&PathBuf>,
) -> (Child, Option<u32>) {
    let bin = operator_binary();
    assert!(
        bin.exists(),
        "{} missing: `cargo build --release -p iot-operator --bin iot-operator` first, or set \
         IOT_BENCH_OPERATOR",
        bin.display()
    );
    let mut command = match trace {
        Some(file) => {
            let mut c = Command::new("strace");
            c.args([
                "-f",
                "--seccomp-bpf",
                "-qq",
                "-ttt",
                "-e",
                "trace=connect",
                "-o",
            ])
            .arg(file)
            .arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let child = command
        .args(["run", "--namespace", ns, "--kafka-bootstrap", bootstrap])
        .args(["--topic-prefix", prefix])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--autoscale-interval-seconds", &interval.to_string()])
        .args(["--leader-elect", "false"])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = match trace {
        None => Some(child.id()),
        Some(_) => traced_pid(child.id()),
    };
    (child, pid)
}

/// The pid of the process `strace_pid` started, once it has.
fn traced_pid(strace_pid: u32) -> Option<u32> {
    let children = format!("/proc/{strace_pid}/task/{strace_pid}/children");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let found = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Samples the operator every second for `seconds`, with its metrics before and after.
async fn observe(
    pid: u32,
    kafka_port: u16,
    admin: u16,
    seconds: u64,
) -> (Vec<Sample>, String, String) {
    let before = scrape(admin);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        samples.push(sample(pid, kafka_port));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.push(sample(pid, kafka_port));
    (samples, before, scrape(admin))
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(operator_at_scale_with_autoscaled_device_types());
}

async fn operator_at_scale_with_autoscaled_device_types() {
    let count: usize = env_or("IOT_BENCH_DEVICE_TYPES", 200);
    let window: u64 = env_or("IOT_BENCH_WINDOW_SECONDS", 60);
    let interval: u64 = env_or("IOT_BENCH_AUTOSCALE_INTERVAL", 15);
    let client = kube_client().await;
    let bootstrap = kafka_bootstrap();
    let kafka_port: u16 = bootstrap
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("bootstrap host:port");

    // The CRDs as this source tree defines them.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [DeviceType::crd(), iot_operator::crd::Application::crd()] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("iot-operator-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        await_condition(crds.clone(), &name, conditions::is_crd_established())
            .await
            .unwrap();
    }

    let ns = TestNamespace::create(&client, "bench-autoscale").await;
    let prefix = ns.name.replace('-', "_");
    let api: Api<DeviceType> = Api::namespaced(client.clone(), &ns.name);
    let admin = free_port();
    let trace = strace_file();
    let (mut operator, pid) = start_operator(
        &ns.name,
        &bootstrap,
        &prefix,
        admin,
        interval,
        trace.as_ref(),
    );
    let Some(pid) = pid else {
        let _ = operator.kill();
        let _ = operator.wait();
        panic!("strace started no operator");
    };
    println!(
        "operator {} (pid {pid}), {count} autoscaled DeviceTypes (2 partitions each), \
         autoscale interval {interval} s, namespace {}",
        operator_binary().display(),
        ns.name
    );

    // Idle, no DeviceType (after the start-up: the first seconds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = unix_now();
    let (idle, m0, m1) = observe(pid, kafka_port, admin, 10).await;
    let opened = connects(trace.as_ref(), kafka_port, t0, unix_now());
    report("idle, 0 DeviceTypes", &idle, 10.0, (&m0, &m1), opened);

    // N at once, until all are Ready, sampled throughout.
    let started = Instant::now();
    let t0 = unix_now();
    let before = scrape(admin);
    let mut samples = Vec::new();
    for i in 0..count {
        api.create(&PostParams::default(), &device_type(i))
            .await
            .unwrap();
        if i % 20 == 0 {
            samples.push(sample(pid, kafka_port));
        }
    }
    loop {
        samples.push(sample(pid, kafka_port));
        let ready = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|d| is_ready(d))
            .count();
        if ready == count {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready}/{count} Ready after 15 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let to_ready = started.elapsed().as_secs_f64();
    let opened = connects(trace.as_ref(), kafka_port, t0, unix_now());
    report(
        &format!("create {count} -> all Ready"),
        &samples,
        to_ready,
        (&before, &scrape(admin)),
        opened,
    );

    // Steady state: every DeviceType re-read every interval.
    let t0 = unix_now();
    let (steady, m0, m1) = observe(pid, kafka_port, admin, window).await;
    let opened = connects(trace.as_ref(), kafka_port, t0, unix_now());
    report(
        &format!("steady state, {count} Ready"),
        &steady,
        window as f64,
        (&m0, &m1),
        opened,
    );
    let lag_reads = (
        metric(&m1, "iot_operator_lag_reads_total", &["\"ok\""])
            - metric(&m0, "iot_operator_lag_reads_total", &["\"ok\""]),
        metric(&m1, "iot_operator_lag_reads_total", &["\"error\""])
            - metric(&m0, "iot_operator_lag_reads_total", &["\"error\""]),
    );
    println!(
        "steady state lag reads (operators that count them): ok {:.0}, error {:.0}",
        lag_reads.0, lag_reads.1
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    println!(
        "operator peak RSS (VmHWM) {:.1} MiB",
        status_field(&status, "VmHWM:") as f64 / 1024.0
    );

    // Clean up: the DeviceTypes (the operator deletes their topics), the operator, the shared
    // topics, the namespace.
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
    if let Some(file) = &trace {
        let _ = std::fs::remove_file(file);
    }
    delete_topics(
        &bootstrap,
        &[all_enriched_topic(&prefix), deadletter_topic(&prefix)],
    )
    .await;
    ns.delete().await;
}
