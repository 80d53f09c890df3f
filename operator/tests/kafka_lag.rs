//! Smoke test against the test environment's real Kafka: topic creation with partitions, keyed
//! produce, consumption in a consumer group with manual commits, and the operator's consumer-lag
//! computation checked against what was produced and consumed.

use std::collections::HashMap;
use std::time::Duration;

use iot_operator::kafka::lag::consumer_group_lag;
use iot_testkit::{create_topic, kafka_bootstrap, unique_name};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, TopicPartitionList};

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

    // Before the group has consumed anything, everything is lag.
    let lag = consumer_group_lag(&bootstrap, &group, &[&topic], TIMEOUT).unwrap();
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

    let lag = consumer_group_lag(&bootstrap, &group, &[&topic], TIMEOUT).unwrap();
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
}
