//! Chaos in pods: the chart installed on the test environment's real node by
//! `deploy/realnode/run.sh` (namespace `IOT_REALNODE_NAMESPACE`, topic prefix `realnode`) carries
//! a sequence-numbered load run while one of its pods is deleted with no grace period. The load
//! simulator runs on the host and publishes to the Mosquitto Service; a collector on the host
//! reads the enriched topic. The bridge (StatefulSet: the new pod has the old pod's MQTT session)
//! and the enrichment (committed offsets) lose nothing. Mosquitto saves its sessions to a volume
//! (every 2 s and at a graceful stop) but not its shared subscriptions, so a restarted broker
//! drops what devices publish before the bridge has subscribed again: a graceful restart loses at
//! most that window, a kill -9 of the broker process also what arrived since the last save. Both
//! are measured, printed, and held to their documented bounds.
//!
//! Run by `deploy/realnode/run.sh chaos`: `cargo test -p iot-workers --features
//! integration,realnode --test realnode -- --test-threads=1`.

mod common;

use std::time::Duration;

use common::Worker;
use common::loss::{SeqCounter, expected, summary};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};

const TOPIC_PREFIX: &str = "realnode";
const MQTT_ROOT: &str = "iot";
const DEVICES: u64 = 6;
/// 24 s at 300 msg/s: long enough that a consumer-group rebalance left by an earlier test
/// (session timeout 10 s) cannot end the run before the kill.
const PER_DEVICE: u64 = 1200;
const TOTAL: u64 = DEVICES * PER_DEVICE;
const SETTLE: Duration = Duration::from_secs(240);

struct Cluster {
    client: Client,
    namespace: String,
    mqtt_url: String,
    /// The simulator identity's password.
    password_file: std::path::PathBuf,
    bootstrap: String,
    dir: std::path::PathBuf,
}

impl Cluster {
    async fn connect() -> Self {
        let client = iot_testkit::kube_client().await;
        let namespace =
            std::env::var("IOT_REALNODE_NAMESPACE").unwrap_or_else(|_| "iot-realnode".into());
        // The host is outside the cluster's DNS and the broker's certificate names no ClusterIP,
        // so this load generator uses the development listener (deploy/realnode/values.yaml:
        // mosquitto.plaintext.enabled) with the simulator's identity from its Secret; the
        // chart's own bridge and simulator pods use TLS on the service listener.
        let svc = Api::<Service>::namespaced(client.clone(), &namespace)
            .get("iot-mosquitto-internal")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the chart is not installed in {namespace} on the real node (deploy/realnode/run.sh install samples): {e}"
                )
            });
        let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
        let dir = std::env::temp_dir().join(iot_testkit::unique_name("realnode-chaos"));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get("iot-simulator-mqtt")
            .await
            .unwrap_or_else(|e| panic!("the simulator's MQTT credentials in {namespace}: {e}"));
        let password = secret
            .data
            .and_then(|d| d.get("password").cloned())
            .expect("the simulator's Secret holds a password");
        let password_file = dir.join("simulator.password");
        std::fs::write(&password_file, password.0).unwrap();
        Self {
            client,
            namespace,
            mqtt_url: format!("mqtt://{ip}:1883"),
            password_file,
            bootstrap: iot_testkit::kafka_bootstrap(),
            dir,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Names of the Running pods matching `selector`.
    async fn running(&self, selector: &str) -> Vec<String> {
        self.pods()
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .filter_map(|p| p.metadata.name)
            .collect()
    }

    /// Disrupts pod `name` and waits until it, or its replacement matching `selector`, is Ready
    /// again; returns how long that took.
    async fn disrupt_and_wait_ready(
        &self,
        name: &str,
        selector: &str,
        how: Disruption,
    ) -> Duration {
        let started = std::time::Instant::now();
        let old = self.pods().get(name).await.unwrap();
        let old_uid = old.metadata.uid.clone();
        let restarts = |p: &Pod| -> i32 {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
        };
        let old_restarts = restarts(&old);
        match how {
            Disruption::DeleteNow | Disruption::DeleteGracefully => {
                let grace = matches!(how, Disruption::DeleteNow).then_some(0);
                self.pods()
                    .delete(
                        name,
                        &DeleteParams {
                            grace_period_seconds: grace,
                            ..DeleteParams::default()
                        },
                    )
                    .await
                    .unwrap();
            }
            Disruption::KillProcess(command_line) => {
                // The container's process as this machine sees it (the node is this machine).
                let out = std::process::Command::new("pgrep")
                    .args(["-f", command_line])
                    .output()
                    .unwrap();
                let pids = String::from_utf8_lossy(&out.stdout);
                let pids: Vec<&str> = pids.split_whitespace().collect();
                assert_eq!(pids.len(), 1, "one process runs {command_line:?}: {pids:?}");
                let status = std::process::Command::new("kill")
                    .args(["-9", pids[0]])
                    .status()
                    .unwrap();
                assert!(status.success(), "kill -9 {}", pids[0]);
            }
        }
        let in_place = matches!(how, Disruption::KillProcess(_));
        let deadline = started + Duration::from_secs(120);
        loop {
            let pods = self
                .pods()
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap();
            let ready = pods.items.iter().any(|p| {
                let renewed = if in_place {
                    p.metadata.uid == old_uid && restarts(p) > old_restarts
                } else {
                    p.metadata.uid != old_uid
                };
                renewed
                    && p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            if ready {
                return started.elapsed();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} ({selector}) not Ready again within 120 s after {how:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A load run of `TOTAL` sequence-numbered messages from the host, device ids unique to
    /// this run.
    fn load(&self, run: &str) -> Worker {
        let prefix = format!("{run}-");
        let devices = DEVICES.to_string();
        let per_device = PER_DEVICE.to_string();
        let rate = RATE.to_string();
        let args = [
            "simulator",
            "--load",
            "--load-devices",
            &devices,
            "--load-device-type",
            "mixed",
            "--load-rate",
            &rate,
            "--load-messages-per-device",
            &per_device,
            "--device-prefix",
            &prefix,
            "--seed",
            "1",
        ];
        let env = vec![
            ("IOT_MQTT_URL", self.mqtt_url.clone()),
            ("IOT_MQTT_USERNAME", "iot-simulator".to_string()),
            (
                "IOT_MQTT_PASSWORD_FILE",
                self.password_file.display().to_string(),
            ),
            ("IOT_MQTT_TOPIC_ROOT", MQTT_ROOT.to_string()),
            ("IOT_LOG_FORMAT", "text".to_string()),
            ("RUST_LOG", "info".to_string()),
        ];
        Worker::start(run, &args, env, &self.dir)
    }
}

/// How a chaos run disrupts its victim.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// Pod deleted with no grace period.
    DeleteNow,
    /// Pod deleted with its grace period (SIGTERM first).
    DeleteGracefully,
    /// kill -9 of the container process whose command line matches; the container restarts in
    /// the same pod (as after an OOM kill).
    KillProcess(&'static str),
}

/// Polls `done` every 200 ms for up to `timeout`; whether it became true.
async fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// Runs a load, disrupts the first Running pod matching `selector` once the run's first messages
/// are enriched, and returns (acknowledged by the broker, missing of those, duplicates).
async fn chaos(what: &str, selector: &str, how: Disruption) -> (u64, usize, u64) {
    let cluster = Cluster::connect().await;
    // Device ids unique to this run: the enriched topic is shared with every earlier run.
    let run = &iot_testkit::unique_name(&format!("chaos-{what}")).replace('.', "-");
    let victim = cluster
        .running(selector)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no Running pod matches {selector} in {}", cluster.namespace));
    let counter = SeqCounter::start(&cluster.bootstrap, &[format!("{TOPIC_PREFIX}.enriched")]);
    let mut simulator = cluster.load(run);
    assert!(
        eventually(Duration::from_secs(90), || {
            counter.distinct_with_prefix(run) as u64 >= TOTAL / 12
        })
        .await,
        "a twelfth of run {run} not enriched within 90 s ({} so far)",
        counter.distinct_with_prefix(run)
    );
    assert!(simulator.is_running(), "the kill must come mid-stream");
    let replaced_in = cluster.disrupt_and_wait_ready(&victim, selector, how).await;
    let status = simulator.wait_exit(SETTLE).await;
    let summary = summary(&simulator.stdout_text());
    assert!(status.success(), "the load run failed: {summary}");
    assert_eq!(summary["published"], TOTAL, "{summary}");
    let acknowledged = summary["acknowledged"].as_u64().unwrap();
    let expected = expected(&summary);
    // Wait for completeness, but not forever: a lossy victim never completes.
    eventually(Duration::from_secs(60), || {
        counter.missing_and_duplicates(&expected).0.is_empty()
    })
    .await;
    let (missing, duplicates) = counter.missing_and_duplicates(&expected);
    eprintln!(
        "realnode chaos {what}: pod {victim} {how:?}, Ready again after {:.1} s; \
         {TOTAL} published, {acknowledged} acknowledged, {} missing, {duplicates} duplicates",
        replaced_in.as_secs_f64(),
        missing.len()
    );
    (acknowledged, missing.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_bridge_pod_mid_stream_loses_nothing() {
    let (acknowledged, missing, _) = chaos(
        "bridge",
        "app.kubernetes.io/component=bridge",
        Disruption::DeleteNow,
    )
    .await;
    assert_eq!(acknowledged, TOTAL);
    assert_eq!(
        missing, 0,
        "the new bridge pod resumes the old one's MQTT session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_enrichment_pod_mid_stream_loses_nothing() {
    let (acknowledged, missing, _) = chaos(
        "enrichment",
        "app.kubernetes.io/name=iot-enrichment,iotcloud.dev/device-type=smart_breaker",
        Disruption::DeleteNow,
    )
    .await;
    assert_eq!(acknowledged, TOTAL);
    assert_eq!(missing, 0, "the new pod resumes from the committed offsets");
}

/// The load's rate, messages per second.
const RATE: u64 = 300;

/// A graceful broker restart (its pod deleted with its grace period: the broker saves its state
/// on SIGTERM; the new pod mounts the same volume) loses at most the window before the bridge
/// has subscribed again (Mosquitto does not save shared subscriptions): a quarter second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_mosquitto_pod_gracefully_loses_at_most_the_resubscription_window() {
    let (_, missing, _) = chaos(
        "mosquitto-graceful",
        "app.kubernetes.io/component=mosquitto",
        Disruption::DeleteGracefully,
    )
    .await;
    let bound = RATE / 4;
    assert!(
        missing as u64 <= bound,
        "{missing} missing after a graceful broker restart; the documented bound is {bound}"
    );
}

/// kill -9 of the broker process (its container restarts in place on the same volume): it also
/// loses what arrived after its last save (autosave every 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mosquitto_process_loses_at_most_what_arrived_since_its_last_save() {
    let (_, missing, _) = chaos(
        "mosquitto-kill",
        "app.kubernetes.io/component=mosquitto",
        Disruption::KillProcess("/usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf"),
    )
    .await;
    let bound = RATE * (2 + 1);
    assert!(
        missing as u64 <= bound,
        "{missing} missing after a kill -9 of the broker; the documented bound is {bound} \
         ({RATE} msg/s x (autosave 2 s + 1 s))"
    );
}

/// Lag autoscaling with real pods: the smart breaker's enrichment (1 to 3 replicas, one per 1000
/// messages of lag; the chart's real-node values set a 20 s cool-down and a 5 s interval) is cut
/// off from Kafka by an egress NetworkPolicy while a burst lands on its raw topic, so lag builds
/// up; the operator adds pods. With the policy gone, every pod consumes, the lag drains and the
/// Deployment goes back to one replica after the cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_autoscaling_adds_real_pods_that_consume_and_removes_them_after_the_cooldown() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::api::PostParams;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    const DEPLOYMENT: &str = "smart-breaker-enrichment";
    const PODS: &str =
        "app.kubernetes.io/name=iot-enrichment,iotcloud.dev/device-type=smart_breaker";
    const BURST: usize = 6000;
    let cluster = Cluster::connect().await;
    let deployments = Api::<Deployment>::namespaced(cluster.client.clone(), &cluster.namespace);
    let policies = Api::<NetworkPolicy>::namespaced(cluster.client.clone(), &cluster.namespace);
    let replicas = || async {
        let d = deployments.get(DEPLOYMENT).await.unwrap();
        d.spec.and_then(|s| s.replicas).unwrap_or(0)
    };
    // How long until the Deployment asks for `n` replicas (None: not within `timeout`).
    let replicas_become = |n: i32, timeout: Duration| async move {
        let since = std::time::Instant::now();
        while since.elapsed() < timeout {
            if replicas().await == n {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    };
    assert_eq!(replicas().await, 1, "the test starts from one replica");

    // Cut the enrichment off: no egress at all, then replace its pods so that no connection
    // made before the policy survives.
    let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "realnode-cut-off-smart-breaker-enrichment"},
        "spec": {
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "iot-enrichment",
                "iotcloud.dev/device-type": "smart_breaker"
            }},
            "policyTypes": ["Egress"],
            "egress": []
        }
    }))
    .unwrap();
    let _ = policies
        .delete(
            policy.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    for pod in cluster.running(PODS).await {
        cluster
            .pods()
            .delete(
                &pod,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await
            .unwrap();
    }

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cluster.bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let topic = format!("{TOPIC_PREFIX}.smart_breaker.raw");
    // Records for ten devices (so on every partition), numbered from `from`.
    let send = |from: usize, n: usize| {
        let sends = (from..from + n).map(|i| {
            let device = format!("autoscale-{:03}", i % 10);
            let payload = serde_json::json!({
                "device_id": device,
                "device_type": "smart_breaker",
                "seq": i,
            })
            .to_string();
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                producer
                    .send(
                        FutureRecord::<str, str>::to(&topic)
                            .key(&device)
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        async move {
            for r in futures::future::join_all(sends).await {
                r.expect("record produced");
            }
        }
    };
    send(0, BURST).await;
    let scaled_up_after = replicas_become(3, Duration::from_secs(90)).await;
    // Every new pod starts while cut off, so none has consumed yet; then the policy goes.
    let since = std::time::Instant::now();
    while cluster.running(PODS).await.len() < 3 && since.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = policies
        .delete(
            policy.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await;
    let up =
        scaled_up_after.expect("the operator scaled to 3 replicas on a lag of 6000 within 90 s");

    // Policy gone: all three pods run, consume, and the lag drains.
    let mut counts = Vec::new();
    // kube-router drops the policy's rules on its next sync; the pods' Kafka clients retry with
    // backoff, and pods restarted meanwhile come back with CrashLoop backoff.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut sent = BURST;
    while std::time::Instant::now() < deadline {
        // A steady trickle on every partition, so that a pod that got partitions after the
        // burst was drained has records to consume too.
        send(sent, 50).await;
        sent += 50;
        counts.clear();
        for pod in cluster.running(PODS).await {
            let p = cluster.pods().get(&pod).await.unwrap();
            let Some(ip) = p.status.and_then(|s| s.pod_ip) else {
                continue;
            };
            // Records the pod has consumed, from its admin port.
            let received =
                common::metric_sum_on(&ip, 9102, "iot_enrichment_messages_received_total");
            counts.push((pod, received.unwrap_or(0.0)));
        }
        if counts.iter().filter(|(_, n)| *n > 0.0).count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let consuming = counts.iter().filter(|(_, n)| *n > 0.0).count();
    assert!(
        consuming >= 2,
        "at least two enrichment pods consumed after the scale-up (records received per pod: {counts:?})"
    );
    let down = replicas_become(1, Duration::from_secs(180))
        .await
        .expect("back to one replica within 180 s of the lag draining");
    eprintln!(
        "realnode autoscaling: lag {BURST} -> 3 replicas after {:.1} s; {} pods consumed; \
         back to 1 replica {:.1} s later (cool-down 20 s)",
        up.as_secs_f64(),
        consuming,
        down.as_secs_f64()
    );
}
