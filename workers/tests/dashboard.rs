//! The dashboard against the real Kafka of the test environment, in-process on 127.0.0.1:0 with a
//! topic prefix of its own: enriched-shaped messages of all three device types flow, and
//! - a client of the Smart Grid Monitor stream never receives anything but smart-breaker data,
//!   not even a misrouted message in the breaker topic;
//! - the Overview's counts rise, dead letters are counted by reason, offline devices show;
//! - tabs follow the registry file; the process stops cleanly with streams open.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iot_testkit::{create_topic, kafka_bootstrap, unique_name};
#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::sample_registry;
use iot_workers::cli::{KafkaArgs, RegistryArgs};
use iot_workers::dashboard::{self, DashboardArgs};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const GRID: &str = "default/smart-grid-monitor";
const WAIT: Duration = Duration::from_secs(45);
const TYPES: [&str; 3] = ["smart_breaker", "smart_meter", "environmental_sensor"];

/// Topics and registry file of one test.
struct Installation {
    bootstrap: String,
    prefix: String,
    dir: PathBuf,
    registry_file: PathBuf,
}

impl Installation {
    async fn new() -> Self {
        let inst = Self::without_topics();
        inst.create_topics().await;
        inst
    }

    /// The registry file only: the topics come later ([`Installation::create_topics`]).
    fn without_topics() -> Self {
        let bootstrap = kafka_bootstrap();
        let prefix = unique_name("dash").replace('.', "-");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let registry_file = dir.join("registry.json");
        let inst = Self {
            bootstrap,
            prefix,
            dir,
            registry_file,
        };
        inst.write_registry(&serde_json::to_value(sample_registry(&inst.prefix)).unwrap());
        inst
    }

    async fn create_topics(&self) {
        for topic in self.topics() {
            create_topic(&self.bootstrap, &topic, 3).await;
        }
    }

    fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = TYPES
            .iter()
            .flat_map(|t| [self.topic(t, "raw"), self.topic(t, "enriched")])
            .collect();
        topics.push(format!("{}.enriched", self.prefix));
        topics.push(format!("{}.deadletter", self.prefix));
        topics
    }

    fn topic(&self, device_type: &str, stage: &str) -> String {
        format!("{}.{device_type}.{stage}", self.prefix)
    }

    /// Replaces the registry file atomically, as Kubernetes updates a mounted ConfigMap.
    fn write_registry(&self, registry: &Value) {
        let tmp = self.dir.join(".registry.tmp");
        std::fs::write(&tmp, serde_json::to_vec(registry).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.registry_file).unwrap();
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        futures::executor::block_on(iot_testkit::delete_topics(&self.bootstrap, &self.topics()));
    }
}

/// An enriched message as the enrichment writes it (the fields the dashboard reads).
fn enriched(device_type: &str, device_id: &str, seq: u32) -> Value {
    let measurements = match device_type {
        "smart_breaker" => json!({
            "voltage": {"phase_a": 118.5, "phase_b": 120.1, "phase_c": 121.7, "unit": "V"},
            "current": {"phase_a": 40.0, "phase_b": 42.5, "phase_c": 39.0, "unit": "A"},
            "power": {"active": 6000.0 + f64::from(seq), "factor": 0.93, "unit": "W"},
            "temperature": {"value": 35.5, "unit": "°C"}
        }),
        "smart_meter" => {
            json!({"energy": {"value": 1000.0 + f64::from(seq)}, "demand": {"value": 4.2}})
        }
        _ => json!({"temperature": {"value": 21.5}, "humidity": {"value": 40.0}}),
    };
    json!({
        "device_id": device_id,
        "device_type": device_type,
        "timestamp": "2025-08-20T18:00:54.117782Z",
        "event_type": "telemetry",
        "seq": seq,
        "measurements": measurements,
        "data_quality": {"within_ranges": true},
        "enrichment_info": {"enrichment_service": "iot-enrichment-service"}
    })
}

fn device_id(device_type: &str, n: u32) -> String {
    match device_type {
        "smart_breaker" => format!("grid-breaker-{n}"),
        "smart_meter" => format!("meter-unit-{n}"),
        _ => format!("sensor-unit-{n}"),
    }
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &Value,
    reason: Option<&str>,
) {
    let body = serde_json::to_vec(payload).unwrap();
    let mut record = FutureRecord::to(topic).key(key).payload(&body);
    if let Some(reason) = reason {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "reason",
            value: Some(reason),
        }));
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
}

/// Produces `n` telemetry messages of every type to its enriched topic and to `{prefix}.enriched`,
/// as the enrichment does.
async fn produce_round(inst: &Installation, producer: &FutureProducer, round: u32, n: u32) {
    for i in 0..n {
        for t in TYPES {
            let id = device_id(t, i % 3);
            let m = enriched(t, &id, round * 1000 + i);
            produce(producer, &inst.topic(t, "enriched"), &id, &m, None).await;
            produce(
                producer,
                &format!("{}.enriched", inst.prefix),
                &id,
                &m,
                None,
            )
            .await;
        }
    }
}

/// `GET path`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("dashboard accepts connections");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// One server-sent event.
#[derive(Clone, Debug)]
struct Event {
    name: String,
    data: String,
}

/// A live-stream client collecting every event it receives.
struct StreamClient {
    events: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamClient {
    async fn open(addr: SocketAddr, app: &str) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /api/stream?app={app} HTTP/1.0\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(s).lines();
            let (mut name, mut data) = (String::new(), String::new());
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                } else if line.is_empty() && !data.is_empty() {
                    sink.lock().unwrap().push(Event {
                        name: std::mem::take(&mut name),
                        data: std::mem::take(&mut data),
                    });
                }
            }
        });
        Self { events, task }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until the collected events satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "stream: {what} not within {WAIT:?}; got {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last `total` of every snapshot/update frame of an application stream.
fn app_total(events: &[Event]) -> u64 {
    events
        .iter()
        .rev()
        .filter(|e| e.name == "snapshot" || e.name == "update")
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .find_map(|v| v["messages"]["total"].as_u64())
        .unwrap_or(0)
}

async fn wait_overview(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get_json(addr, "/api/overview").await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "overview: {what} not within {WAIT:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(inst: &Installation) -> (dashboard::Running, CancellationToken) {
    let stop = CancellationToken::new();
    let stop_tx = stop.clone();
    let args = DashboardArgs {
        kafka: KafkaArgs {
            kafka_bootstrap: inst.bootstrap.clone(),
            topic_prefix: inst.prefix.clone(),
            linger_ms: 5,
        },
        registry: RegistryArgs {
            registry_file: inst.registry_file.clone(),
            registry_poll_ms: 100,
        },
        addr: "127.0.0.1:0".parse().unwrap(),
    };
    let running = dashboard::start(args, stop)
        .await
        .expect("dashboard starts");
    let deadline = Instant::now() + WAIT;
    while get(running.addr, "/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "dashboard not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (running, stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smart_grid_stream_carries_only_smart_breaker_data_while_all_types_flow() {
    let inst = Installation::new().await;
    let (running, stop) = start(&inst).await;
    let addr = running.addr;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &inst.bootstrap)
        .create()
        .unwrap();

    // Tabs from the registry, and the topics each reads.
    let registry = get_json(addr, "/api/registry").await;
    let tabs: Vec<&str> = registry["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tabs,
        [
            "Energy Analytics",
            "Environmental Tracker",
            "Smart Grid Monitor"
        ]
    );
    let grid_spec = get_json(addr, "/api/applications").await;
    let grid_spec = grid_spec
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == GRID)
        .unwrap()
        .clone();
    assert_eq!(
        grid_spec["device_types"][0]["topic"],
        inst.topic("smart_breaker", "enriched")
    );

    let grid = StreamClient::open(addr, GRID).await;
    let overview = StreamClient::open(addr, "overview").await;
    grid.wait_for("a snapshot", |e| e.iter().any(|e| e.name == "snapshot"))
        .await;
    let before = get_json(addr, "/api/overview").await;
    assert_eq!(before["stages"]["enriched"]["total"], 0);

    // Round one: all three types flow.
    produce_round(&inst, &producer, 1, 10).await;
    let first = wait_overview(addr, "30 enriched messages", |v| {
        v["stages"]["enriched"]["total"] == 30
    })
    .await;
    // A meter message misrouted into the breaker topic (an upstream bug) must not reach the tab.
    let stray = enriched("smart_meter", "meter-unit-stray", 1);
    produce(
        &producer,
        &inst.topic("smart_breaker", "enriched"),
        "meter-unit-stray",
        &stray,
        None,
    )
    .await;
    // Round two: the counts rise.
    produce_round(&inst, &producer, 2, 10).await;
    let second = wait_overview(addr, "60 enriched messages", |v| {
        v["stages"]["enriched"]["total"] == 60
    })
    .await;
    assert!(
        second["stages"]["enriched"]["total"].as_u64()
            > first["stages"]["enriched"]["total"].as_u64()
    );
    for t in TYPES {
        assert_eq!(second["device_types"][t]["enriched"]["total"], 20, "{t}");
        assert_eq!(second["device_types"][t]["devices"]["online"], 3, "{t}");
    }
    let newest = &second["messages"][0];
    assert_eq!(newest["seq"], 60, "recent messages are newest first");

    let events = grid
        .wait_for("20 smart-breaker messages", |e| app_total(e) == 20)
        .await;
    let mut seen_types = BTreeSet::new();
    for e in &events {
        for other in [
            "meter-unit",
            "sensor-unit",
            "\"smart_meter\"",
            "\"environmental_sensor\"",
        ] {
            // The registry event lists every application's device types (the tabs); data frames
            // must name none but the breaker's.
            if e.name != "registry" {
                assert!(
                    !e.data.contains(other),
                    "{other} in a {} frame: {}",
                    e.name,
                    e.data
                );
            }
        }
        if e.name == "snapshot" || e.name == "update" {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            for m in v["latest"].as_array().unwrap() {
                assert_eq!(m["device_type"], "smart_breaker", "{m}");
                assert_eq!(m["topic"], inst.topic("smart_breaker", "enriched"));
                seen_types.insert(m["device_type"].as_str().unwrap().to_string());
            }
            let types: Vec<&String> = v["device_types"].as_object().unwrap().keys().collect();
            assert_eq!(types, ["smart_breaker"]);
        }
    }
    assert_eq!(seen_types, BTreeSet::from(["smart_breaker".to_string()]));
    let snapshot = get_json(addr, &format!("/api/apps/{GRID}/snapshot")).await;
    let voltage = &snapshot["device_types"]["smart_breaker"]["fields"]["voltage.phase_a"];
    assert_eq!(
        (voltage["min"].as_f64(), voltage["count"].as_u64()),
        (Some(118.5), Some(20))
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("iot_dashboard_isolation_drops_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iot_dashboard_devices{device_type=\"smart_meter\",state=\"online\"} 3")
    );

    // Dead letters by reason, and a device's last will.
    let deadletter = format!("{}.deadletter", inst.prefix);
    produce(
        &producer,
        &deadletter,
        "x",
        &json!("<not an object>"),
        Some("not_object"),
    )
    .await;
    let will = json!({"device_id": "meter-unit-0", "device_type": "smart_meter", "event_type": "status",
        "status": {"online": false, "reason": "connection_lost"}});
    produce(
        &producer,
        &format!("{}.enriched", inst.prefix),
        "meter-unit-0",
        &will,
        None,
    )
    .await;
    let v = wait_overview(addr, "a dead letter and an offline meter", |v| {
        v["deadletter_reasons"]["not_object"] == 1 && v["devices"]["offline"] == 1
    })
    .await;
    assert_eq!(v["deadletters"][0]["reason"], "not_object");
    overview
        .wait_for("an update with the dead letter", |e| {
            e.iter()
                .any(|e| e.name == "update" && e.data.contains("\"not_object\""))
        })
        .await;

    // The Smart Grid Monitor is deactivated: its clients are told, its tab and topic go.
    let mut registry = serde_json::to_value(sample_registry(&inst.prefix)).unwrap();
    registry["deviceTypes"]["smart_breaker"]["applications"] = json!([]);
    inst.write_registry(&registry);
    grid.wait_for("gone", |e| e.iter().any(|e| e.name == "gone"))
        .await;
    let (status, _) = get(addr, &format!("/api/apps/{GRID}/snapshot")).await;
    assert_eq!(status, 404);
    overview
        .wait_for("the new list of tabs", |e| {
            e.iter()
                .any(|e| e.name == "registry" && !e.data.contains(GRID))
        })
        .await;

    // Stops with a stream still open.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the dashboard stops within 15 s with open streams")
        .expect("clean stop");
    grid.task.abort();
    overview.task.abort();
}

/// Topics created after the dashboard is ready (the operator creates them when a DeviceType is
/// applied) are read from when they were found missing: messages produced right after their
/// creation, before the next check assigns them, are not skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_topics_created_after_start_are_not_skipped() {
    let inst = Installation::without_topics();
    let (running, stop) = start(&inst).await;
    let overview = get_json(running.addr, "/api/overview").await;
    assert_eq!(
        overview["kafka"]["missing_topics"].as_array().map(Vec::len),
        Some(8),
        "{overview:#}"
    );
    inst.create_topics().await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &inst.bootstrap)
        .create()
        .unwrap();
    produce_round(&inst, &producer, 1, 10).await;
    wait_overview(running.addr, "30 enriched messages from new topics", |v| {
        v["stages"]["enriched"]["total"] == 30
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
        .await
        .expect("the dashboard stops within 15 s")
        .expect("clean stop");
}
