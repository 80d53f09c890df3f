//! The operator's Kafka edges against the test environment's real Kafka (and API server):
//!
//! - keyed produce, consumption in a consumer group with manual commits, and the lag the
//!   operator's one long-lived [`KafkaLagReader`] reads, checked against what was produced and
//!   consumed (a reading right after a commit sees it);
//! - the shared topics exist as soon as the operator runs, before any DeviceType;
//! - the lag of an autoscaled DeviceType is read and drives its replicas, with `LagReadable`;
//! - a lag that cannot be read holds the replicas, with `LagReadable=False` and an Event, until it
//!   can be read again (a reconcile against the real API server with a failing [`LagReader`]).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use iot_operator::controller::{Context, Metrics, OperatorConfig, device_type};
use iot_operator::crd::{
    Application, DeviceType, TopicNames, all_enriched_topic, deadletter_topic,
};
use iot_operator::kafka::lag::{KafkaLagReader, LagReader};
use iot_operator::kafka::topics::KafkaTopicAdmin;
use iot_testkit::{TestNamespace, create_topic, delete_topics, kafka_bootstrap, unique_name};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::reflector;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn produce_consume_commit_and_lag() {
    let bootstrap = kafka_bootstrap();
    let topic = unique_name("smoke-lag");
    let group = unique_name("smoke-group");
    create_topic(&bootstrap, &topic, 3).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let devices = [
        "breaker-001",
        "breaker-002",
        "meter-001",
        "sensor-001",
        "sensor-002",
    ];
    let total = 100;
    let mut partition_of_key: HashMap<&str, i32> = HashMap::new();
    for i in 0..total {
        let key = devices[i % devices.len()];
        let payload = format!("{{\"seq\":{i}}}");
        let partition = producer
            .send(FutureRecord::to(&topic).key(key).payload(&payload), TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
            .partition;
        // Keyed messages of one device always land in the same partition (per-device order).
        let first = *partition_of_key.entry(key).or_insert(partition);
        assert_eq!(first, partition, "key {key} moved partitions");
    }

    // One reader for the whole test, as the operator keeps one for its whole life. Its blocking
    // calls run off the async threads, as the operator runs them.
    let reader = Arc::new(KafkaLagReader::new(&bootstrap, &group, TIMEOUT).unwrap());
    let read = |reader: Arc<KafkaLagReader>, group: String, topic: String| async move {
        tokio::task::spawn_blocking(move || reader.group_lag(&group, &[&topic]).unwrap())
            .await
            .unwrap()
    };

    // Before the group has consumed anything, everything is lag.
    let lag = read(reader.clone(), group.clone(), topic.clone()).await;
    assert_eq!(lag.partitions.len(), 3);
    assert_eq!(lag.total(), total as i64);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let consume = 60;
    let mut consumed_per_partition: HashMap<i32, i64> = HashMap::new();
    let mut positions = TopicPartitionList::new();
    for _ in 0..consume {
        let msg = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("no message within the timeout")
            .unwrap();
        *consumed_per_partition.entry(msg.partition()).or_default() += 1;
        positions
            .add_partition_offset(
                &topic,
                msg.partition(),
                rdkafka::Offset::Offset(msg.offset() + 1),
            )
            .unwrap();
    }
    consumer.commit(&positions, CommitMode::Sync).unwrap();

    // Read right after the commit: the reader waits until it has seen it.
    let lag = read(reader.clone(), group.clone(), topic.clone()).await;
    assert_eq!(lag.total(), (total - consume) as i64);
    for p in &lag.partitions {
        let consumed = consumed_per_partition
            .get(&p.partition)
            .copied()
            .unwrap_or(0);
        assert_eq!(p.low_watermark, 0);
        assert_eq!(
            p.lag,
            p.high_watermark - consumed,
            "partition {}",
            p.partition
        );
    }
    assert_eq!(
        lag.partitions.iter().map(|p| p.high_watermark).sum::<i64>(),
        total as i64
    );
    // Through the seam the reconciles use.
    assert_eq!(
        reader.lag(&group, &topic).await.unwrap(),
        (total - consume) as i64
    );
    // A group the reader does not keep (another prefix) has committed nothing as far as it knows:
    // everything is lag; an unknown topic is an error, not a lag of 0.
    let other = unique_name("other-group");
    assert_eq!(reader.lag(&other, &topic).await.unwrap(), total as i64);
    assert!(
        reader
            .lag(&group, &unique_name("no-such-topic"))
            .await
            .is_err()
    );
    delete_topics(&bootstrap, &[topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_topics_exist_as_soon_as_the_operator_runs() {
    let h = Harness::start("lag-shared", |_| {}).await;
    assert!(
        h.dts()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no DeviceType: nothing but the start can create them"
    );
    let prefix = &h.config.topic_prefix;
    let shared = [all_enriched_topic(prefix), deadletter_topic(prefix)];
    for topic in &shared {
        let t = h
            .wait_topic(topic, "created at start", |t| t.is_some())
            .await
            .unwrap();
        assert_eq!(t.partitions, h.config.shared_topic_partitions, "{topic}");
    }
    let bootstrap = h.config.kafka_bootstrap.clone();
    h.stop().await;
    delete_topics(&bootstrap, &shared).await;
}

const AUTOSCALED_YAML: &str = r#"
apiVersion: iotcloud.dev/v1alpha1
kind: DeviceType
metadata: { name: meter }
spec:
  deviceType: smart_meter
  displayName: Smart Meter
  topics: { partitions: 4 }
  enrichment: { minReplicas: 1, maxReplicas: 4, lagPerReplica: 10 }
"#;

fn replicas_of(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_of_an_autoscaled_type_is_read_and_drives_its_replicas() {
    let h = Harness::start("lag-drives", |_| {}).await;
    h.create_dt(&device_type(AUTOSCALED_YAML)).await;
    h.wait_dt("meter", "Ready and LagReadable", |d| {
        dt_ready(d) && dt_condition(d, "LagReadable") == Some(("True".into(), "LagRead".into()))
    })
    .await;

    let names = TopicNames::for_device_type(&h.config.topic_prefix, "smart_meter");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.config.kafka_bootstrap)
        .create()
        .unwrap();
    for i in 0..25 {
        producer
            .send(
                FutureRecord::to(&names.raw)
                    .key(&format!("meter-{i:03}"))
                    .payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // ceil(25 / 10) = 3 replicas.
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), &h.ns.name);
    wait_for(&deployments, "meter-enrichment", "3 replicas", |d| {
        replicas_of(d) == Some(3)
    })
    .await;
    let dt = h
        .wait_dt("meter", "lag 25 in status", |d| {
            d.status.as_ref().and_then(|s| s.lag) == Some(25)
        })
        .await;
    assert_eq!(dt.status.unwrap().replicas.unwrap().desired, 3);

    // The enrichment group commits everything (without joining the group): lag 0.
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &h.config.kafka_bootstrap)
        .set("group.id", h.config.enrichment_group("smart_meter"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut ends = TopicPartitionList::new();
    for p in 0..4 {
        let (_, high) = group
            .fetch_watermarks(&names.raw, p, Duration::from_secs(10))
            .unwrap();
        ends.add_partition_offset(&names.raw, p, Offset::Offset(high))
            .unwrap();
    }
    group.commit(&ends, CommitMode::Sync).unwrap();
    h.wait_dt("meter", "lag 0 in status", |d| {
        d.status.as_ref().and_then(|s| s.lag) == Some(0)
    })
    .await;
    assert!(
        h.metrics.lag_reads.with_label_values(&["ok"]).get() >= 2,
        "read through the operator's reader"
    );
    assert_eq!(h.metrics.lag_reads.with_label_values(&["error"]).get(), 0);
    let (bootstrap, prefix) = (
        h.config.kafka_bootstrap.clone(),
        h.config.topic_prefix.clone(),
    );
    h.stop().await;
    delete_topics(
        &bootstrap,
        &[
            names.raw,
            names.enriched,
            all_enriched_topic(&prefix),
            deadletter_topic(&prefix),
        ],
    )
    .await;
}

/// A lag reader whose answer the test sets.
struct SetLag(Mutex<Result<i64, KafkaError>>);

impl SetLag {
    fn set(&self, answer: Result<i64, KafkaError>) {
        *self.0.lock().unwrap() = answer;
    }
}

impl LagReader for SetLag {
    fn lag<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>> {
        let answer = self.0.lock().unwrap().clone();
        Box::pin(async move { answer })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lag_holds_the_replicas_and_says_so_until_it_is_readable_again() {
    let client = iot_testkit::kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "lag-unreadable").await;
    let bootstrap = kafka_bootstrap();
    let mut config = OperatorConfig::new(ns.name.clone(), bootstrap.clone());
    config.topic_prefix = ns.name.replace('-', "_");
    config.worker_image = "iot-worker:test".into();
    let lag = Arc::new(SetLag(Mutex::new(Ok(45))));
    let (dt_store, _) = reflector::store::<DeviceType>();
    let (app_store, _) = reflector::store::<Application>();
    let ctx = Arc::new(Context::with_kafka(
        client.clone(),
        config.clone(),
        Metrics::new(),
        (dt_store, app_store),
        Arc::new(KafkaTopicAdmin::new(&bootstrap, Duration::from_secs(10)).unwrap()),
        lag.clone(),
    ));
    let dts: Api<DeviceType> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    dts.create(&Default::default(), &device_type(AUTOSCALED_YAML))
        .await
        .unwrap();
    let reconcile = || async {
        let dt = dts.get("meter").await.unwrap();
        device_type::reconcile(Arc::new(dt), ctx.clone())
            .await
            .unwrap();
        let dt = dts.get("meter").await.unwrap();
        let replicas = replicas_of(&deployments.get("meter-enrichment").await.unwrap());
        (dt, replicas)
    };

    // The first reconcile creates the topics: nothing to lag behind yet, 1 replica.
    let (dt, replicas) = reconcile().await;
    assert_eq!(replicas, Some(1));
    assert_eq!(dt.status.as_ref().unwrap().lag, Some(0));
    // Lag 45: ceil(45 / 10) = 5, capped at maxReplicas 4. A busy broker may still be making
    // the new topics known (the reconcile then waits for them), as the controller would requeue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (dt, replicas) = loop {
        let (dt, replicas) = reconcile().await;
        if replicas == Some(4) || std::time::Instant::now() > deadline {
            break (dt, replicas);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(replicas, Some(4), "{:?}", dt.status);
    assert_eq!(
        dt_condition(&dt, "LagReadable"),
        Some(("True".into(), "LagRead".into()))
    );
    assert_eq!(dt.status.as_ref().unwrap().lag, Some(45));

    // Kafka cannot say: the replicas stay (an unreadable lag used to count as 0: 1 replica).
    lag.set(Err(KafkaError::OffsetFetch(
        RDKafkaErrorCode::OperationTimedOut,
    )));
    let (dt, replicas) = reconcile().await;
    assert_eq!(replicas, Some(4));
    let status = dt.status.as_ref().unwrap();
    let cond = status
        .conditions
        .iter()
        .find(|c| c.type_ == "LagReadable")
        .unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "LagUnreadable")
    );
    assert!(
        cond.message
            .contains("Offset fetch error: OperationTimedOut")
            && cond.message.contains("holding 4 enrichment replicas"),
        "{}",
        cond.message
    );
    assert_eq!(status.lag, None, "no stale lag in the status");
    assert_eq!(dt_condition(&dt, "Ready").unwrap().0, "False");
    // A second unreadable pass changes nothing.
    let (_, replicas) = reconcile().await;
    assert_eq!(replicas, Some(4));

    // Readable again: the condition clears; the replicas go down only after the cool-down.
    lag.set(Ok(0));
    let (dt, replicas) = reconcile().await;
    assert_eq!(replicas, Some(4));
    assert_eq!(
        dt_condition(&dt, "LagReadable"),
        Some(("True".into(), "LagRead".into()))
    );
    assert_eq!(dt.status.as_ref().unwrap().lag, Some(0));

    // One Warning when it became unreadable, one Normal when it was readable again.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let mut reasons: Vec<(String, String)> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("meter"))
        .filter_map(|e| Some((e.reason?, e.type_?)))
        .filter(|(reason, _)| reason.starts_with("Lag"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("LagReadable".to_string(), "Normal".to_string()),
            ("LagUnreadable".to_string(), "Warning".to_string())
        ]
    );

    let names = TopicNames::for_device_type(&config.topic_prefix, "smart_meter");
    drop(ctx);
    ns.delete().await;
    delete_topics(
        &bootstrap,
        &[
            names.raw,
            names.enriched,
            all_enriched_topic(&config.topic_prefix),
            deadletter_topic(&config.topic_prefix),
        ],
    )
    .await;
}
