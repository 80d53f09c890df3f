//! Creates (or, with `--delete`, deletes) the Kafka topics a registry file names, as the operator
//! would: each device type's raw and enriched topics and the shared enriched and dead-letter
//! topics, 3 partitions each. For runs of the workers and the dashboard without the operator, such
//! as the dashboard's browser end-to-end test (`deploy/e2e/run.sh`).
//!
//! ```sh
//! IOT_KAFKA_BOOTSTRAP=127.0.0.1:29092 cargo run -p iot-workers --example registry_topics -- registry.json
//! ```

use std::time::Duration;

use anyhow::Context;
use iot_operator::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

const PARTITIONS: i32 = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: registry_topics REGISTRY_FILE [--delete]")?;
    let delete = args.next().as_deref() == Some("--delete");
    let bootstrap = std::env::var("IOT_KAFKA_BOOTSTRAP")
        .context("IOT_KAFKA_BOOTSTRAP is not set (source deploy/testenv/.run/env)")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let registry: Registry =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))?;
    let mut topics = vec![registry.topics.enriched, registry.topics.deadletter];
    for dt in registry.device_types.values() {
        topics.push(dt.topics.raw.clone());
        topics.push(dt.topics.enriched.clone());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .context("Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = if delete {
        admin.delete_topics(&names, &options).await
    } else {
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
            .collect();
        admin.create_topics(&new, &options).await
    }
    .with_context(|| format!("Kafka at {bootstrap}"))?;
    for result in results {
        match result {
            Ok(topic) => println!("{} {topic}", if delete { "deleted" } else { "created" }),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => println!("exists  {topic}"),
            Err((topic, RDKafkaErrorCode::UnknownTopicOrPartition)) if delete => {
                println!("absent  {topic}")
            }
            Err((topic, e)) => anyhow::bail!("{topic}: {e}"),
        }
    }
    Ok(())
}
