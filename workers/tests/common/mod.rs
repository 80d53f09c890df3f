//! Helpers of the worker integration tests: an isolated installation per test (unique topic
//! prefix, MQTT topic root and registry file) on the test environment's real Kafka and Mosquitto,
//! the `iot-worker` binary as child processes, and a Kafka collector to wait on.
#![allow(dead_code)]

pub mod fixtures;
pub mod loss;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fixtures::sample_registry;
use iot_model::registry::Registry;
use iot_testkit::{
    MqttIdentity, create_topic, kafka_bootstrap, mqtt_options, mqtt_url, unique_name,
};
use iot_workers::kafka::{Reachability, ReachabilityProbe, STRANDED_LIMIT};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use serde_json::Value;
use tokio::sync::Notify;

/// Partitions of every topic a test creates (as the sample DeviceTypes ask).
pub const PARTITIONS: i32 = 3;
pub const DEVICE_TYPES: [&str; 3] = ["environmental_sensor", "smart_breaker", "smart_meter"];

/// One isolated installation on the shared brokers.
pub struct Installation {
    pub bootstrap: String,
    pub mqtt_url: String,
    /// Kafka topic prefix, e.g. `t-1234-...`.
    pub prefix: String,
    /// MQTT topic root.
    pub root: String,
    pub dir: PathBuf,
    pub registry_file: PathBuf,
}

impl Installation {
    /// Creates the topics the operator would create for the sample DeviceTypes and writes the
    /// registry the operator would write.
    pub async fn new(name: &str) -> Self {
        let bootstrap = kafka_bootstrap();
        let mqtt_url = mqtt_url().await;
        // Topic prefixes allow [a-zA-Z0-9_-] only.
        let prefix = unique_name(name).replace('.', "-");
        let root = format!("itest/{prefix}");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let registry_file = dir.join("registry.json");
        let installation = Self {
            bootstrap,
            mqtt_url,
            prefix,
            root,
            dir,
            registry_file,
        };
        for topic in installation.all_topics() {
            create_topic(&installation.bootstrap, &topic, PARTITIONS).await;
        }
        installation.write_registry(&installation.sample_registry());
        installation
    }

    pub fn all_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = DEVICE_TYPES
            .iter()
            .flat_map(|t| [self.raw_topic(t), self.enriched_topic(t)])
            .collect();
        topics.push(self.all_enriched_topic());
        topics.push(self.deadletter_topic());
        topics
    }

    pub fn raw_topic(&self, device_type: &str) -> String {
        format!("{}.{device_type}.raw", self.prefix)
    }
    pub fn enriched_topic(&self, device_type: &str) -> String {
        format!("{}.{device_type}.enriched", self.prefix)
    }
    pub fn all_enriched_topic(&self) -> String {
        format!("{}.enriched", self.prefix)
    }
    pub fn deadletter_topic(&self) -> String {
        format!("{}.deadletter", self.prefix)
    }
    pub fn mqtt_topic(&self, device_id: &str, kind: &str) -> String {
        format!("{}/{device_id}/{kind}", self.root)
    }

    /// The registry the operator builds from `deploy/samples/` for this prefix.
    pub fn sample_registry(&self) -> Registry {
        sample_registry(&self.prefix)
    }

    /// Replaces the registry file atomically, as Kubernetes updates a mounted ConfigMap.
    pub fn write_registry(&self, registry: &Registry) {
        let tmp = self.dir.join(".registry.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(registry).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.registry_file).unwrap();
    }

    /// Environment of a worker of this installation.
    pub fn worker_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IOT_KAFKA_BOOTSTRAP", self.bootstrap.clone()),
            ("IOT_MQTT_URL", self.mqtt_url.clone()),
            ("IOT_TOPIC_PREFIX", self.prefix.clone()),
            ("IOT_MQTT_TOPIC_ROOT", self.root.clone()),
            (
                "IOT_REGISTRY_FILE",
                self.registry_file.display().to_string(),
            ),
            ("IOT_REGISTRY_POLL_MS", "200".into()),
            ("IOT_LOG_FORMAT", "text".into()),
            ("RUST_LOG", "info".into()),
        ]
    }

    /// A bridge with MQTT client id `{prefix}-{name}`: the same name gives the same persistent
    /// session within a test, and never one left over by an earlier run.
    pub fn bridge(&self, name: &str) -> Worker {
        self.bridge_with(name, &[])
    }

    /// A bridge as [`Self::bridge`] with extra environment.
    pub fn bridge_with(&self, name: &str, env: &[(&'static str, &str)]) -> Worker {
        Worker::start(
            "bridge",
            &["bridge"],
            self.worker_env()
                .into_iter()
                .chain([("IOT_BRIDGE_CLIENT_ID", format!("{}-{name}", self.prefix))])
                .chain(MqttIdentity::Bridge.worker_env())
                .chain(env.iter().map(|(k, v)| (*k, v.to_string())))
                .collect(),
            &self.dir,
        )
    }

    pub fn enrichment(&self, device_type: &str) -> Worker {
        self.enrichment_with(device_type, &[])
    }

    pub fn enrichment_with(&self, device_type: &str, env: &[(&'static str, &str)]) -> Worker {
        Worker::start(
            &format!("enrichment-{device_type}"),
            &["enrichment"],
            self.worker_env()
                .into_iter()
                .chain([
                    ("IOT_DEVICE_TYPE", device_type.to_string()),
                    ("IOT_COMMIT_INTERVAL_MS", "200".into()),
                ])
                .chain(env.iter().map(|(k, v)| (*k, v.to_string())))
                .collect(),
            &self.dir,
        )
    }

    /// A load run of `devices` devices of mixed types, `per_device` sequence-numbered messages
    /// each, `rate` messages per second in total.
    pub fn load(&self, devices: u64, rate: u64, per_device: u64) -> Worker {
        let (devices, rate, per_device) = (
            devices.to_string(),
            rate.to_string(),
            per_device.to_string(),
        );
        self.simulator(
            "load",
            &[
                "--load",
                "--load-devices",
                &devices,
                "--load-device-type",
                "mixed",
                "--load-rate",
                &rate,
                "--load-messages-per-device",
                &per_device,
            ],
        )
    }

    pub fn simulator(&self, name: &str, args: &[&str]) -> Worker {
        let mut all = vec!["simulator"];
        all.extend_from_slice(args);
        let env = self
            .worker_env()
            .into_iter()
            .chain(MqttIdentity::Simulator.worker_env())
            .collect();
        Worker::start(name, &all, env, &self.dir)
    }

    /// The dashboard of this installation, serving on the returned loopback port.
    pub fn dashboard(&self) -> (Worker, u16) {
        let port = free_port();
        let env = self
            .worker_env()
            .into_iter()
            .chain([("IOT_DASHBOARD_ADDR", format!("127.0.0.1:{port}"))])
            .collect();
        (
            Worker::start("dashboard", &["dashboard"], env, &self.dir),
            port,
        )
    }

    /// A collector reading `topics` from the beginning.
    pub fn collect(&self, topics: &[String]) -> Collector {
        Collector::start(&self.bootstrap, topics)
    }

    /// Publishes one QoS 1 message with a plain MQTT client and waits for the broker's PUBACK.
    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        publish(&self.mqtt_url, topic, payload).await;
    }
}

impl Installation {
    /// Deletes `topics` (errors ignored: a topic may be gone already).
    pub fn delete_topics(&self, topics: &[String]) {
        futures::executor::block_on(iot_testkit::delete_topics(&self.bootstrap, topics));
    }
}

impl Drop for Installation {
    /// Deletes the topics and files of a passed test; a failed test keeps them as evidence.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.delete_topics(&self.all_topics());
    }
}

/// Publishes one QoS 1 message and waits for the PUBACK.
pub async fn publish(url: &str, topic: &str, payload: &[u8]) {
    let mut options = mqtt_options(url, &unique_name("itest-pub"), MqttIdentity::Simulator);
    options.set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
        .await
        .unwrap();
    let acked = async {
        loop {
            match eventloop.poll().await.expect("MQTT publisher connection") {
                Event::Incoming(Packet::PubAck(_)) => break,
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("PUBACK within 10 s");
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await;
}

/// A free TCP port on 127.0.0.1 (for a worker's admin endpoint).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `iot-worker` child process; killed (SIGKILL) when dropped. Its output goes to files in the
/// installation's directory, and the end of its log is printed when a test fails.
pub struct Worker {
    pub name: String,
    child: Child,
    pub admin_port: u16,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Worker {
    pub fn start(name: &str, args: &[&str], env: Vec<(&'static str, String)>, dir: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_iot-worker"));
        // A worker's MQTT identity is only what `env` gives it, never the test environment's
        // ambient settings (its env file exports the broker's CA).
        for name in [
            "IOT_MQTT_CA_FILE",
            "IOT_MQTT_USERNAME",
            "IOT_MQTT_PASSWORD_FILE",
            "IOT_MQTT_CERT_FILE",
            "IOT_MQTT_KEY_FILE",
        ] {
            command.env_remove(name);
        }
        command.args(args).envs(env);
        Self::spawn(name, command, dir)
    }

    /// Another program of the workspace (e.g. the operator binary's commands), logged and
    /// stopped like a worker.
    pub fn start_program(name: &str, program: &Path, args: &[&str], dir: &Path) -> Self {
        let mut command = Command::new(program);
        command.args(args).env("RUST_LOG", "info");
        Self::spawn(name, command, dir)
    }

    fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let admin_port = free_port();
        let stdout = dir.join(format!("{name}.{admin_port}.out"));
        let stderr = dir.join(format!("{name}.{admin_port}.log"));
        let child = command
            .env("IOT_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.to_string(),
            child,
            admin_port,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` on the admin endpoint: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of a metric sample (`name{labels}`) on `/metrics`, 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("metrics endpoint answers");
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Sum of every sample of metric `name` over all its label values.
    pub fn metric_sum(&self, name: &str) -> f64 {
        metric_sum_at(self.admin_port, name).expect("metrics endpoint answers")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_exit(timeout).await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log tail ----\n{}",
                self.name,
                self.pid(),
                self.log_tail(30)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every sample of metric `name` on the `/metrics` of the admin endpoint at `port`; `None`
/// when it does not answer.
pub fn metric_sum_at(port: u16, name: &str) -> Option<f64> {
    metric_sum_on("127.0.0.1", port, name)
}

/// Sum of every sample of metric `name` on `host:port/metrics` (e.g. a pod's admin port).
pub fn metric_sum_on(host: &str, port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get_on(host, port, "/metrics")?;
    Some(
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_on("127.0.0.1", port, path)
}

fn http_get_on(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// One consumed Kafka record.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    /// The payload as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "record on {} is not JSON ({e}): {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// Reads topics from the beginning in the background; tests wait on what it has seen.
pub struct Collector {
    records: Arc<Mutex<Vec<Record>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// A consumer of every partition of `topics` from the beginning (assigned, no group join), for
/// tests and benchmarks that count what arrived.
pub fn reader_from_beginning(bootstrap: &str, topics: &[String], name: &str) -> StreamConsumer {
    reader_from(bootstrap, topics, name, &HashMap::new())
}

/// A reader of every partition of `topics` from `next` (the next offset per topic and partition),
/// from the beginning where `next` has none.
fn reader_from(
    bootstrap: &str,
    topics: &[String],
    name: &str,
    next: &HashMap<(String, i32), i64>,
) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name(name))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("test consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            let offset = next
                .get(&(topic.clone(), partition))
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            assignment
                .add_partition_offset(topic, partition, offset)
                .unwrap();
        }
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// How long the collector waits for a record before it checks that its reader still reaches
/// Kafka.
const COLLECTOR_IDLE_CHECK: Duration = Duration::from_secs(5);

impl Collector {
    /// Collects every record of `topics`. A reader stranded by librdkafka after a Kafka restart
    /// (see `iot_workers::kafka::Reachability::Stranded`) is replaced by a new one that goes on
    /// where it stopped: the test's own reader is not what a test checks.
    pub fn start(bootstrap: &str, topics: &[String]) -> Self {
        let (bootstrap, topics) = (bootstrap.to_string(), topics.to_vec());
        let records = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn({
            let records = records.clone();
            let notify = notify.clone();
            async move {
                let mut probe_config = ClientConfig::new();
                probe_config.set("bootstrap.servers", &bootstrap);
                let probe = Arc::new(ReachabilityProbe::new(probe_config));
                let mut next = HashMap::new();
                let mut consumer =
                    Arc::new(reader_from(&bootstrap, &topics, "itest-collector", &next));
                let mut stranded_since: Option<Instant> = None;
                loop {
                    let received = match tokio::time::timeout(COLLECTOR_IDLE_CHECK, consumer.recv())
                        .await
                    {
                        Ok(received) => received,
                        Err(_idle) => {
                            let (c, probe) = (consumer.clone(), probe.clone());
                            let found =
                                tokio::task::spawn_blocking(move || probe.check(c.client()))
                                    .await
                                    .unwrap();
                            if found != Reachability::Stranded {
                                stranded_since = None;
                                continue;
                            }
                            let since = *stranded_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= STRANDED_LIMIT {
                                eprintln!(
                                    "collector: its reader was stranded for {:?}; a new one goes on",
                                    since.elapsed()
                                );
                                consumer = Arc::new(reader_from(
                                    &bootstrap,
                                    &topics,
                                    "itest-collector",
                                    &next,
                                ));
                                stranded_since = None;
                            }
                            continue;
                        }
                    };
                    match received {
                        Ok(m) => {
                            let headers = m
                                .headers()
                                .map(|hs| {
                                    hs.iter()
                                        .map(|h| {
                                            (
                                                h.key.to_string(),
                                                String::from_utf8_lossy(
                                                    h.value.unwrap_or_default(),
                                                )
                                                .into_owned(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            let record = Record {
                                topic: m.topic().to_string(),
                                partition: m.partition(),
                                offset: m.offset(),
                                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                                payload: m.payload().unwrap_or_default().to_vec(),
                                headers,
                            };
                            next.insert(
                                (record.topic.clone(), record.partition),
                                record.offset + 1,
                            );
                            records.lock().unwrap().push(record);
                            notify.notify_waiters();
                        }
                        Err(e) => eprintln!("collector: {e}"),
                    }
                }
            }
        });
        Self {
            records,
            notify,
            task,
        }
    }

    /// Everything collected so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Records of one topic.
    pub fn on(&self, topic: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.topic == topic)
            .collect()
    }

    /// Waits until `done` holds for the records collected, or panics after `timeout` with
    /// `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let records = self.wait_until_or_timeout(timeout, &mut done).await;
        assert!(
            done(&records),
            "timed out after {timeout:?} waiting for {what}; collected {} records",
            records.len()
        );
        records
    }

    /// Waits until `done` holds for the records collected or `timeout` passes, and returns the
    /// records either way (for runs whose loss is measured rather than ruled out).
    pub async fn wait_until_or_timeout(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let records = self.records.lock().unwrap();
                if done(&records) {
                    return records.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.records.lock().unwrap().clone();
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets configuration entries of a topic (e.g. `max.message.bytes`), as an operator's
/// `spec.topics.config` would. Non-incremental: entries not given return to the broker's default.
pub async fn set_topic_config(bootstrap: &str, topic: &str, entries: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka admin client");
    let mut config = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in entries {
        config = config.set(k, v);
    }
    let results = admin
        .alter_configs(
            &[config],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| panic!("Kafka at {bootstrap}: configure topic {topic}: {e}"));
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("Kafka at {bootstrap}: configure {t:?}: {e}"));
    }
}

/// A producer of raw records as the bridge writes them (key = device id, headers `kind`,
/// `mqtt_topic`, `received_at`), for tests that feed the enrichment directly.
pub struct RawProducer {
    producer: rdkafka::producer::FutureProducer,
}

impl RawProducer {
    pub fn new(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("message.max.bytes", "4000000")
            .create()
            .expect("test producer");
        Self { producer }
    }

    /// Produces one raw record and waits for Kafka's acknowledgement: (partition, offset).
    pub async fn send(&self, topic: &str, device_id: &str, payload: &[u8]) -> (i32, i64) {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::FutureRecord;
        let received_at = jiff::Timestamp::now().to_string();
        let mqtt_topic = format!("itest/{device_id}/raw");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "kind",
                value: Some("raw"),
            })
            .insert(Header {
                key: "mqtt_topic",
                value: Some(mqtt_topic.as_str()),
            })
            .insert(Header {
                key: "received_at",
                value: Some(received_at.as_str()),
            });
        let record = FutureRecord::to(topic)
            .key(device_id)
            .payload(payload)
            .headers(headers);
        let delivery = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        (delivery.partition, delivery.offset)
    }
}

/// The lag of consumer group `group` on `topic`: the sum over its partitions of the high
/// watermark minus the committed offset (a partition without a commit counts from 0).
pub fn group_lag(bootstrap: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("lag consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"));
    (0..PARTITIONS)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
            let done = match committed
                .find_partition(topic, partition)
                .map(|p| p.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            high - done
        })
        .sum()
}

/// Peak resident set size of process `pid` so far (the kernel's `VmHWM`), in bytes; 0 when the
/// process is gone.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
