//! Pipeline benchmark (a command, not a test): `cargo bench -p iot-workers --bench pipeline`
//! with the test environment up (`deploy/testenv/up.sh`, `source deploy/testenv/.run/env`).
//!
//! For each target rate, the release `iot-worker` binaries run as processes: the load simulator
//! publishes numbered telemetry for `IOT_BENCH_SECONDS`, bridge and enrichment carry it, and a
//! consumer of `{prefix}.enriched` counts distinct sequence numbers and measures the latency from
//! the device timestamp to its arrival. The same load is also measured against a plain MQTT
//! subscriber that only counts (the broker's pass-through limit on this machine), and as a plain
//! Kafka consume-produce loop without enrichment (the Kafka side's limit). Memory is the
//! RSS of the bridge and the enrichment, idle and at their peak.
//!
//! `IOT_BENCH_RATES` (default `1000,2000,4000`), `IOT_BENCH_SECONDS` (default 10),
//! `IOT_BENCH_DEVICES` (default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Installation;
use iot_testkit::{mqtt_options, unique_name};
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
        }
        self.last_arrival = Some(Instant::now());
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn count_enriched(bootstrap: &str, topic: &str) -> Arc<Mutex<Seen>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("bench-counter"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..common::PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
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
    let per_device = (rate * seconds as f64 / devices as f64).round() as u64;
    [
        "--load",
        "--load-device-type",
        "mixed",
        "--load-devices",
        &devices.to_string(),
        "--load-rate",
        &rate.to_string(),
        "--load-messages-per-device",
        &per_device.to_string(),
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

async fn pipeline(rate: f64, seconds: u64, devices: usize) {
    let inst = Installation::new("bench").await;
    let mut bridge = inst.bridge("bench-bridge-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(Duration::from_secs(60)).await;
    enrichment.wait_ready(Duration::from_secs(60)).await;
    let idle = (rss_mib(bridge.pid()).0, rss_mib(enrichment.pid()).0);
    let seen = count_enriched(&inst.bootstrap, &inst.all_enriched_topic());
    let args = load_args(rate, seconds, devices);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut sim = inst.simulator("load", &args);
    sim.wait_exit(Duration::from_secs(seconds * 4 + 120)).await;
    let summary = common::loss::summary(&sim.stdout_text());
    let published = summary["published"].as_u64().unwrap();
    settle(&seen, published).await;
    let peak = (rss_mib(bridge.pid()).1, rss_mib(enrichment.pid()).1);
    let s = seen.lock().unwrap();
    let elapsed = s
        .last_arrival
        .map_or(f64::NAN, |t| (t - start).as_secs_f64());
    println!(
        "pipeline  target {rate:>6.0}/s  published {published:>6} at {:>7.0}/s  enriched {:>6} distinct ({} missing, {} duplicates)  end-to-end {:>7.0}/s  latency p50 {:>7.1} ms p99 {:>7.1} ms  RSS bridge {:.1}->{:.1} MiB, enrichment {:.1}->{:.1} MiB",
        summary["rate"].as_f64().unwrap_or(f64::NAN),
        s.distinct.len(),
        published.saturating_sub(s.distinct.len() as u64),
        s.records.saturating_sub(s.distinct.len() as u64),
        s.distinct.len() as f64 / elapsed,
        s.percentile(0.5),
        s.percentile(0.99),
        idle.0,
        peak.0,
        idle.1,
        peak.1,
    );
}

/// The same load into a subscriber that only counts: what Mosquitto and the simulator manage.
async fn mqtt_pass_through(rate: f64, seconds: u64, devices: usize) {
    let inst = Installation::new("bench-mqtt").await;
    let (client, mut eventloop) =
        AsyncClient::new(mqtt_options(&inst.mqtt_url, &unique_name("bench-sub")), 100);
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
    let args = load_args(rate, seconds, devices);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut sim = inst.simulator("load", &args);
    sim.wait_exit(Duration::from_secs(seconds * 4 + 120)).await;
    let summary = common::loss::summary(&sim.stdout_text());
    let published = summary["published"].as_u64().unwrap();
    settle(&seen, published).await;
    counter.abort();
    let s = seen.lock().unwrap();
    let elapsed = s
        .last_arrival
        .map_or(f64::NAN, |t| (t - start).as_secs_f64());
    println!(
        "mqtt-only target {rate:>6.0}/s  published {published:>6} at {:>7.0}/s  received {:>6} distinct ({} missing)  end-to-end {:>7.0}/s  latency p50 {:>7.1} ms p99 {:>7.1} ms",
        summary["rate"].as_f64().unwrap_or(f64::NAN),
        s.distinct.len(),
        published.saturating_sub(s.distinct.len() as u64),
        s.distinct.len() as f64 / elapsed,
        s.percentile(0.5),
        s.percentile(0.99),
    );
}

/// The broker's consume-produce limit without enrichment: the same number of messages, already in
/// a raw topic, read and written to another topic (acks=all, idempotent, 1000 in flight) by a plain
/// loop. What the enrichment could reach at best on this machine and broker.
async fn kafka_pass_through(rate: f64, seconds: u64) {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let inst = Installation::new("bench-kafka").await;
    let total = (rate * seconds as f64) as usize;
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
    let payload = iot_workers::catalog::fixtures::SEED_RAW.as_bytes().to_vec();
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
    println!(
        "kafka-only {total:>6} messages of {} bytes consumed and produced (acks=all) in {elapsed:.2} s: {:>7.0}/s",
        payload.len(),
        total as f64 / elapsed
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let rates: Vec<f64> = std::env::var("IOT_BENCH_RATES")
        .unwrap_or_else(|_| "1000,2000,4000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds: u64 = env_or("IOT_BENCH_SECONDS", 10);
    let devices: usize = env_or("IOT_BENCH_DEVICES", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for rate in rates {
            mqtt_pass_through(rate, seconds, devices).await;
            kafka_pass_through(rate, seconds).await;
            pipeline(rate, seconds, devices).await;
        }
    });
}
