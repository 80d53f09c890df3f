//! Pipeline benchmark (a command, not a test): `cargo bench -p iot-workers --bench pipeline`
//! with the test environment up (`deploy/testenv/up.sh`, `source deploy/testenv/.run/env`).
//!
//! It finds the ceiling by itself. The release `iot-worker` binaries run as processes: the load
//! simulator publishes numbered telemetry for `IOT_BENCH_SECONDS`, bridge and enrichment carry it,
//! and a consumer of `{prefix}.enriched` counts distinct sequence numbers and measures the latency
//! from the device timestamp to its arrival. In the same run it measures
//! - the MQTT pass-through: the simulator as fast as it can go into a subscriber that only counts
//!   (what the publisher and Mosquitto manage on this machine);
//! - the Kafka pass-through: a plain consume-produce loop without enrichment;
//! - the pipeline at rising offered rates (x1.5 from `IOT_BENCH_START_RATE`) until it falls
//!   behind (loses, or ends more than 2 s behind the publisher, or the publisher cannot reach the
//!   rate), then two bisection steps: the highest rate it keeps up with is the ceiling;
//! - the pipeline at half the ceiling (latency), and at 3 x the ceiling (overload: it must drain
//!   with nothing missing).
//!
//! For each run: CPU seconds and RSS (idle, peak) of bridge and enrichment, messages per
//! CPU-second, latency p50/p99.
//!
//! `IOT_BENCH_SECONDS` (default 15), `IOT_BENCH_DEVICES` (default 50), `IOT_BENCH_START_RATE`
//! (default 2000); `IOT_BENCH_RATES=a,b,...` runs only those rates (no sweep);
//! `IOT_BENCH_ALL_TYPES_TOPIC=false` turns off the enrichment's all-types copy.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Installation;
use iot_testkit::{MqttIdentity, mqtt_options, unique_name};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;

#[derive(Default)]
struct Seen {
    distinct: HashSet<(String, u64)>,
    records: u64,
    latencies_ms: Vec<f64>,
    /// Latencies of messages created more than `WARM_UP` after the first one.
    warm_latencies_ms: Vec<f64>,
    first_device_ts: Option<jiff::Timestamp>,
    last_arrival: Option<Instant>,
}

impl Seen {
    fn record(&mut self, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let (Some(id), Some(seq)) = (v["device_id"].as_str(), v["seq"].as_u64()) else {
            return;
        };
        self.records += 1;
        self.distinct.insert((id.to_string(), seq));
        if let Some(ts) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            let ms = jiff::Timestamp::now().duration_since(ts).as_secs_f64() * 1000.0;
            self.latencies_ms.push(ms.max(0.0));
            let first = *self.first_device_ts.get_or_insert(ts);
            if ts.duration_since(first).as_secs_f64() > WARM_UP_SECONDS {
                self.warm_latencies_ms.push(ms.max(0.0));
            }
        }
        self.last_arrival = Some(Instant::now());
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }
}

/// Seconds at the start of a run (connections, first metadata lookups of fresh topics) whose
/// messages are left out of the steady-state latency.
const WARM_UP_SECONDS: f64 = 2.0;

fn percentile(latencies: &[f64], p: f64) -> f64 {
    let mut v = latencies.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks, 100 per second).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), and its cores.
fn machine_busy_seconds() -> (f64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    ((ticks.iter().sum::<f64>() - idle) / 100.0, cores.max(1))
}

/// CPU seconds of a test-environment service (`kafka`, `mosquitto`), from its pid file.
fn service_cpu_seconds(service: &str) -> f64 {
    std::env::var("IOT_TESTENV_RUN_DIR")
        .ok()
        .and_then(|dir| std::fs::read_to_string(format!("{dir}/pids/{service}.pid")).ok())
        .and_then(|pid| pid.trim().parse().ok())
        .map_or(f64::NAN, cpu_seconds)
}

/// CPU seconds of everything else in a run: the machine, Kafka, Mosquitto.
#[derive(Clone, Copy, Debug)]
struct OthersCpu {
    machine: f64,
    kafka: f64,
    mosquitto: f64,
}

impl OthersCpu {
    fn now() -> Self {
        Self {
            machine: machine_busy_seconds().0,
            kafka: service_cpu_seconds("kafka"),
            mosquitto: service_cpu_seconds("mosquitto"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            machine: self.machine - before.machine,
            kafka: self.kafka - before.kafka,
            mosquitto: self.mosquitto - before.mosquitto,
        }
    }
}

/// (current, peak) resident set size of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn count_enriched(bootstrap: &str, topics: &[String]) -> Arc<Mutex<Seen>> {
    let consumer = common::reader_from_beginning(bootstrap, topics, "bench-counter");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            out.lock().unwrap().record(m.payload().unwrap_or_default());
        }
    });
    seen
}

fn load_args(rate: f64, seconds: u64, devices: usize) -> Vec<String> {
    [
        "--load",
        "--load-device-type",
        "mixed",
        "--load-devices",
        &devices.to_string(),
        "--load-rate",
        &rate.to_string(),
        "--duration-seconds",
        &seconds.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits until `seen` has `expected` distinct sequence numbers, or nothing new arrived for 15 s.
async fn settle(seen: &Mutex<Seen>, expected: u64) {
    let mut last = (0usize, Instant::now());
    loop {
        let n = seen.lock().unwrap().distinct.len();
        if n as u64 >= expected || last.1.elapsed() > Duration::from_secs(15) {
            return;
        }
        if n != last.0 {
            last = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One pipeline run at an offered rate.
#[derive(Clone, Debug)]
struct Run {
    target: f64,
    published: u64,
    publish_rate: f64,
    distinct: u64,
    duplicates: u64,
    /// Distinct messages per second from the first publish to the last arrival.
    end_to_end: f64,
    /// Seconds from the end of publishing to the last arrival.
    behind: f64,
    p50: f64,
    p99: f64,
    /// p50 and p99 of the messages after the warm-up.
    steady: (f64, f64),
    bridge_cpu: f64,
    enrichment_cpu: f64,
    /// The rest of the machine over the run (publishing until the last arrival).
    others: OthersCpu,
    /// Seconds from the first publish to the last arrival.
    seconds: f64,
    rss_idle: (f64, f64),
    rss_peak: (f64, f64),
    /// Highest in-flight gauge sampled during the run: (bridge, enrichment).
    in_flight_peak: (f64, f64),
}

impl Run {
    fn missing(&self) -> u64 {
        self.published.saturating_sub(self.distinct)
    }

    /// Kept up: nothing lost, the publisher reached the rate, and the last message arrived at
    /// most 2 s after the last publish.
    fn keeps_up(&self) -> bool {
        self.missing() == 0 && self.publish_rate >= 0.9 * self.target && self.behind <= 2.0
    }

    fn print(&self, label: &str) {
        println!(
            "pipeline {label:<9} offered {:>7.0}/s  published {:>7} at {:>7.0}/s  enriched {:>7} ({} missing, {} duplicates)  end-to-end {:>7.0}/s  behind {:>5.1} s  latency p50 {:>6.1} ms p99 {:>7.1} ms (after {WARM_UP_SECONDS} s: {:.1} / {:.1} ms)  CPU bridge {:>5.1} s ({:>6.0} msg/CPU-s) enrichment {:>5.1} s ({:>6.0} msg/CPU-s)  RSS bridge {:.1}->{:.1} MiB enrichment {:.1}->{:.1} MiB  in flight peak bridge {:.0} enrichment {:.0}  machine busy {:.0} % of {} cores (Kafka {:.1} s, Mosquitto {:.1} s)  {}",
            self.target,
            self.published,
            self.publish_rate,
            self.distinct,
            self.missing(),
            self.duplicates,
            self.end_to_end,
            self.behind,
            self.p50,
            self.p99,
            self.steady.0,
            self.steady.1,
            self.bridge_cpu,
            self.distinct as f64 / self.bridge_cpu,
            self.enrichment_cpu,
            self.distinct as f64 / self.enrichment_cpu,
            self.rss_idle.0,
            self.rss_peak.0,
            self.rss_idle.1,
            self.rss_peak.1,
            self.in_flight_peak.0,
            self.in_flight_peak.1,
            100.0 * self.others.machine / (self.seconds * machine_busy_seconds().1 as f64),
            machine_busy_seconds().1,
            self.others.kafka,
            self.others.mosquitto,
            if self.keeps_up() {
                "keeps up"
            } else {
                "FALLS BEHIND"
            },
        );
    }
}

async fn pipeline(rate: f64, seconds: u64, devices: usize) -> Run {
    let inst = Installation::new("bench").await;
    let mut bridge = inst.bridge("bench-bridge-0");
    // IOT_BENCH_ALL_TYPES_TOPIC=false: the enrichment writes only the per-type topics (and the
    // count is taken there), to measure what the all-types copy costs.
    let all_types = env_or("IOT_BENCH_ALL_TYPES_TOPIC", true);
    let mut enrichment = inst.enrichment_with(
        "all",
        &[(
            "IOT_ENRICHMENT_ALL_TYPES_TOPIC",
            if all_types { "true" } else { "false" },
        )],
    );
    bridge.wait_ready(Duration::from_secs(60)).await;
    enrichment.wait_ready(Duration::from_secs(60)).await;
    let rss_idle = (rss_mib(bridge.pid()).0, rss_mib(enrichment.pid()).0);
    let cpu_before = (cpu_seconds(bridge.pid()), cpu_seconds(enrichment.pid()));
    let others_before = OthersCpu::now();
    let counted = if all_types {
        vec![inst.all_enriched_topic()]
    } else {
        common::DEVICE_TYPES
            .iter()
            .map(|t| inst.enriched_topic(t))
            .collect()
    };
    let seen = count_enriched(&inst.bootstrap, &counted);
    let args = load_args(rate, seconds, devices);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = sample_in_flight(bridge.admin_port, enrichment.admin_port, sampling.clone());
    let mut sim = inst.simulator("load", &args);
    sim.wait_exit(Duration::from_secs(seconds * 4 + 120)).await;
    let published_at = Instant::now();
    let summary = common::loss::summary(&sim.stdout_text());
    let published = summary["published"].as_u64().unwrap();
    let publish_seconds = summary["elapsed_seconds"].as_f64().unwrap_or(f64::NAN);
    settle(&seen, published).await;
    let others = OthersCpu::now().since(others_before);
    sampling.store(false, Ordering::Relaxed);
    let in_flight_peak = sampler.join().unwrap();
    let rss_peak = (rss_mib(bridge.pid()).1, rss_mib(enrichment.pid()).1);
    let s = seen.lock().unwrap();
    let last = s.last_arrival.unwrap_or(published_at);
    let behind = if last > published_at {
        (last - published_at).as_secs_f64()
    } else {
        0.0
    };
    let distinct = s.distinct.len() as u64;
    Run {
        target: rate,
        published,
        publish_rate: summary["rate"].as_f64().unwrap_or(f64::NAN),
        distinct,
        duplicates: s.records.saturating_sub(distinct),
        end_to_end: distinct as f64 / (publish_seconds + behind),
        behind,
        p50: s.percentile(0.5),
        p99: s.percentile(0.99),
        steady: (
            percentile(&s.warm_latencies_ms, 0.5),
            percentile(&s.warm_latencies_ms, 0.99),
        ),
        bridge_cpu: cpu_seconds(bridge.pid()) - cpu_before.0,
        enrichment_cpu: cpu_seconds(enrichment.pid()) - cpu_before.1,
        others,
        seconds: publish_seconds + behind,
        rss_idle,
        rss_peak,
        in_flight_peak,
    }
}

/// Samples the in-flight gauges of bridge and enrichment every 100 ms while `on`; returns the
/// highest of each.
fn sample_in_flight(
    bridge: u16,
    enrichment: u16,
    on: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(f64, f64)> {
    std::thread::spawn(move || {
        let mut peak = (0.0_f64, 0.0_f64);
        while on.load(Ordering::Relaxed) {
            let sample = |port, name| common::metric_sum_at(port, name).unwrap_or(0.0);
            peak.0 = peak.0.max(sample(bridge, "iot_bridge_in_flight_messages"));
            peak.1 = peak
                .1
                .max(sample(enrichment, "iot_enrichment_in_flight_messages"));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    })
}

/// The simulator as fast as it goes into a subscriber that only counts: what the publisher and
/// Mosquitto manage on this machine. Returns the rate received.
async fn mqtt_pass_through(seconds: u64, devices: usize) -> f64 {
    let inst = Installation::new("bench-mqtt").await;
    let (client, mut eventloop) = AsyncClient::new(
        mqtt_options(
            &inst.mqtt_url,
            &unique_name("bench-sub"),
            MqttIdentity::Bridge,
        ),
        100,
    );
    client
        .subscribe(format!("{}/+/raw", inst.root), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let counter = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                out.lock().unwrap().record(&p.payload);
            }
        }
    });
    let args = load_args(1_000_000.0, seconds, devices);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sim = inst.simulator("load", &args);
    sim.wait_exit(Duration::from_secs(seconds * 4 + 120)).await;
    let summary = common::loss::summary(&sim.stdout_text());
    let published = summary["published"].as_u64().unwrap();
    let publish_seconds = summary["elapsed_seconds"].as_f64().unwrap_or(f64::NAN);
    let published_at = Instant::now();
    settle(&seen, published).await;
    counter.abort();
    let s = seen.lock().unwrap();
    let behind = s
        .last_arrival
        .filter(|t| *t > published_at)
        .map_or(0.0, |t| (t - published_at).as_secs_f64());
    let rate = s.distinct.len() as f64 / (publish_seconds + behind);
    println!(
        "mqtt-only  published {published:>7} at {:>7.0}/s  received {:>7} distinct ({} missing)  {rate:>7.0}/s  latency p50 {:>6.1} ms p99 {:>7.1} ms",
        summary["rate"].as_f64().unwrap_or(f64::NAN),
        s.distinct.len(),
        published.saturating_sub(s.distinct.len() as u64),
        s.percentile(0.5),
        s.percentile(0.99),
    );
    rate
}

/// The broker's consume-produce limit without enrichment: `total` messages, already in a raw
/// topic, read and written to another topic (acks=all, idempotent, 1000 in flight) by a plain
/// loop. What the enrichment could reach at best on this machine and broker.
async fn kafka_pass_through(total: usize) -> f64 {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let inst = Installation::new("bench-kafka").await;
    let raw = inst.raw_topic("smart_breaker");
    let out = inst.enriched_topic("smart_breaker");
    let producer = |idempotent: &str| -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &inst.bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", idempotent)
            .set("linger.ms", "5")
            .create()
            .unwrap()
    };
    // A payload of the size of a simulated breaker telemetry message.
    let payload = common::fixtures::SEED_RAW.as_bytes().to_vec();
    let fill = producer("true");
    let keys: Vec<String> = (0..20).map(|d| format!("breaker-{d:03}")).collect();
    let mut pending = FuturesUnordered::new();
    for i in 0..total {
        let record = FutureRecord::to(&raw)
            .key(&keys[i % keys.len()])
            .payload(&payload);
        pending.push(fill.send(record, Duration::from_secs(30)));
        if pending.len() >= 5000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap();
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &inst.bootstrap)
        .set("group.id", unique_name("bench-pass"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..common::PARTITIONS {
        tpl.add_partition_offset(&raw, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let forward = producer("true");
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..total {
        let m = consumer.recv().await.unwrap();
        let key = m.key().unwrap_or_default().to_vec();
        let value = m.payload().unwrap_or_default().to_vec();
        let forward = &forward;
        let out = &out;
        in_flight.push(async move {
            forward
                .send(
                    FutureRecord::to(out).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
        });
        if in_flight.len() >= 1000 {
            in_flight.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = in_flight.next().await {
        r.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = total as f64 / elapsed;
    println!(
        "kafka-only {total:>7} messages of {} bytes consumed and produced (acks=all) in {elapsed:.2} s: {rate:>7.0}/s",
        payload.len(),
    );
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let fixed: Option<Vec<f64>> = std::env::var("IOT_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    let seconds: u64 = env_or("IOT_BENCH_SECONDS", 15);
    let devices: usize = env_or("IOT_BENCH_DEVICES", 50);
    let start_rate: f64 = env_or("IOT_BENCH_START_RATE", 2000.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mqtt = mqtt_pass_through(seconds, devices).await;
        let kafka = kafka_pass_through((mqtt * seconds as f64) as usize).await;
        if let Some(rates) = fixed {
            for rate in rates {
                pipeline(rate, seconds, devices).await.print("fixed");
            }
            return;
        }
        // Sweep up until it falls behind, then bisect twice.
        let mut good: Option<Run> = None;
        let mut rate = start_rate;
        let mut bad = loop {
            let run = pipeline(rate, seconds, devices).await;
            run.print("sweep");
            if !run.keeps_up() {
                break Some(run);
            }
            good = Some(run);
            rate *= 1.5;
        };
        for _ in 0..2 {
            let (Some(g), Some(b)) = (&good, &bad) else { break };
            let run = pipeline(f64::midpoint(g.target, b.target), seconds, devices).await;
            run.print("bisect");
            if run.keeps_up() {
                good = Some(run);
            } else {
                bad = Some(run);
            }
        }
        let Some(ceiling) = good else {
            println!("the pipeline fell behind at the start rate {start_rate}/s; lower IOT_BENCH_START_RATE");
            return;
        };
        let half = pipeline(ceiling.target / 2.0, seconds, devices).await;
        half.print("half");
        let overload = pipeline(ceiling.target * 3.0, seconds, devices).await;
        overload.print("overload");
        println!();
        println!("ceiling: keeps up with {:.0} msg/s offered ({:.0}/s end to end); falls behind at {:.0}/s", ceiling.target, ceiling.end_to_end, bad.map_or(f64::NAN, |b| b.target));
        println!("MQTT pass-through {mqtt:.0}/s, Kafka pass-through {kafka:.0}/s; ceiling / MQTT pass-through = {:.2}", ceiling.end_to_end / mqtt);
        println!(
            "at the ceiling: bridge {:.0} msg/CPU-s, enrichment {:.0} msg/CPU-s; RSS idle bridge {:.1} MiB enrichment {:.1} MiB, peak {:.1} / {:.1} MiB",
            ceiling.distinct as f64 / ceiling.bridge_cpu,
            ceiling.distinct as f64 / ceiling.enrichment_cpu,
            ceiling.rss_idle.0,
            ceiling.rss_idle.1,
            ceiling.rss_peak.0,
            ceiling.rss_peak.1
        );
        let (_, cores) = machine_busy_seconds();
        let share = |cpu: f64| 100.0 * cpu / ceiling.others.machine;
        println!(
            "at the ceiling the machine is {:.0} % busy ({cores} cores); of its busy CPU: bridge {:.0} %, enrichment {:.0} %, Kafka {:.0} %, Mosquitto {:.0} %, the rest (load generator, benchmark consumer, kernel) {:.0} %",
            100.0 * ceiling.others.machine / (ceiling.seconds * cores as f64),
            share(ceiling.bridge_cpu),
            share(ceiling.enrichment_cpu),
            share(ceiling.others.kafka),
            share(ceiling.others.mosquitto),
            share(
                ceiling.others.machine
                    - ceiling.bridge_cpu
                    - ceiling.enrichment_cpu
                    - ceiling.others.kafka
                    - ceiling.others.mosquitto
            ),
        );
        println!("at half the ceiling ({:.0}/s): latency p50 {:.1} ms, p99 {:.1} ms; after the first {WARM_UP_SECONDS} s p50 {:.1} ms, p99 {:.1} ms", half.target, half.p50, half.p99, half.steady.0, half.steady.1);
        println!(
            "overload at {:.0}/s offered: {} published, {} missing, {} duplicates, drained {:.1} s after the publisher stopped; peak RSS bridge {:.1} MiB enrichment {:.1} MiB",
            overload.target, overload.published, overload.missing(), overload.duplicates, overload.behind, overload.rss_peak.0, overload.rss_peak.1
        );
    });
}
