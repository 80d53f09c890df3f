//! The dashboard's Kafka consumer: it reads the topics of the current layout from their end,
//! without joining a consumer group, so it never takes messages away from the applications (each
//! of which reads with its own group) and never commits offsets.
//!
//! Partitions are assigned by hand at the high watermark measured at assignment time, so that
//! "ready" means "everything produced from now on will be seen". A topic that is wanted but does
//! not exist yet is read, once it appears, from the time it was first found missing (Kafka's
//! offsets for that time), so that the messages produced between its creation and the next check
//! are seen too. The assignment follows the registry (new device types and applications) and the
//! topics' partitions, checked every few seconds; the same check reports whether Kafka answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use iot_process::admin::Readiness;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, KafkaStatus};
use super::message::Record;
use crate::clock;
use crate::kafka::{self, headers};

/// How often topics and partitions are checked (and Kafka's reachability with them).
pub const REFRESH: Duration = Duration::from_secs(5);
/// Timeout of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer group id of this process alone (never joined: offsets are assigned by hand), so
/// that two dashboards, or a dashboard and an application, never share one.
pub fn unique_group(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!(
        "{prefix}-dashboard-{host}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = crate::kafka::client_config(bootstrap);
    config
        .set("group.id", group)
        .set("client.id", "iot-dashboard")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100");
    config
}

/// The partitions to read: every partition of each wanted topic that exists.
pub fn desired_partitions(
    wanted: &BTreeSet<String>,
    existing: &BTreeMap<String, i32>,
) -> BTreeSet<(String, i32)> {
    wanted
        .iter()
        .filter_map(|t| existing.get(t).map(|n| (t, *n)))
        .flat_map(|(t, n)| (0..n).map(move |p| (t.clone(), p)))
        .collect()
}

/// One pass of [`sync`]: what is assigned afterwards and which wanted topics are missing.
struct Synced {
    assigned: BTreeSet<(String, i32)>,
    topics: Vec<String>,
    missing: Vec<String>,
}

/// Reads metadata and moves the assignment to the wanted topics (blocking calls). New partitions
/// of a topic in `missing_since` start at that time (milliseconds), the others at their end.
fn sync_blocking(
    consumer: &StreamConsumer,
    wanted: &BTreeSet<String>,
    assigned: &BTreeSet<(String, i32)>,
    missing_since: &BTreeMap<String, i64>,
) -> anyhow::Result<Synced> {
    let metadata = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .context("fetching topic metadata")?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && wanted.contains(t.name()))
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    let desired = desired_partitions(wanted, &existing);
    let mut add = TopicPartitionList::new();
    let mut since = TopicPartitionList::new();
    for (topic, partition) in desired.difference(assigned) {
        if let Some(ms) = missing_since.get(topic) {
            since
                .add_partition_offset(topic, *partition, Offset::Offset(*ms))
                .context("building the time lookup")?;
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
            .with_context(|| format!("reading the end offset of {topic}/{partition}"))?;
        add.add_partition_offset(topic, *partition, Offset::Offset(high))
            .context("building the assignment")?;
    }
    if since.count() > 0 {
        // The first offset at or after the time; `End` when nothing was produced since.
        let found = consumer
            .offsets_for_times(since, REQUEST_TIMEOUT)
            .context("reading the offsets of new topics by time")?;
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::End,
            };
            add.add_partition_offset(e.topic(), e.partition(), offset)
                .context("building the assignment")?;
        }
    }
    let mut remove = TopicPartitionList::new();
    for (topic, partition) in assigned.difference(&desired) {
        remove.add_partition(topic, *partition);
    }
    if remove.count() > 0 {
        consumer
            .incremental_unassign(&remove)
            .context("unassigning partitions")?;
    }
    if add.count() > 0 {
        consumer
            .incremental_assign(&add)
            .context("assigning partitions")?;
        tracing::info!(
            partitions = add.count(),
            "reading new partitions from their end"
        );
    }
    Ok(Synced {
        assigned: desired,
        topics: existing.keys().cloned().collect(),
        missing: wanted
            .iter()
            .filter(|t| !existing.contains_key(*t))
            .cloned()
            .collect(),
    })
}

fn to_record(m: &BorrowedMessage<'_>) -> Record {
    let hs = m.headers();
    let header = |k: &str| kafka::header(hs, k).map(str::to_string);
    Record {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().unwrap_or_default().to_vec(),
        reason: header(headers::REASON),
        stage: header(headers::STAGE),
        detail: header(headers::DETAIL),
        source: header(headers::SOURCE),
    }
}

pub fn now_ms() -> i64 {
    clock::now().as_millisecond()
}

/// Consumes until `stop`, feeding `hub`; `readiness` is set after the first successful assignment.
pub async fn run(
    bootstrap: String,
    group: String,
    hub: Arc<Hub>,
    readiness: Readiness,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        consumer_config(&bootstrap, &group)
            .create()
            .context("creating the Kafka consumer")?,
    );
    tracing::info!(%bootstrap, %group, "dashboard consumer started (no group membership, no commits)");
    let mut layout = hub.layout();
    let mut assigned: BTreeSet<(String, i32)> = BTreeSet::new();
    // Wanted topics that did not exist at a check, and since when (milliseconds).
    let mut missing_since: BTreeMap<String, i64> = BTreeMap::new();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error_log: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = refresh.tick() => {}
            changed = layout.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            message = consumer.recv() => {
                match message {
                    Ok(m) => hub.ingest(&to_record(&m), now_ms()),
                    Err(e) => {
                        if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                            tracing::warn!(error = %e, "Kafka consumer error");
                            last_error_log = Some(Instant::now());
                        }
                    }
                }
                continue;
            }
        }
        let wanted = layout.borrow_and_update().topics();
        // A topic found missing may have been created just before the check without showing in
        // its metadata yet: its start time is a second before the check began.
        let check_began = now_ms() - 1000;
        let (c, current, since) = (consumer.clone(), assigned.clone(), missing_since.clone());
        let result =
            tokio::task::spawn_blocking(move || sync_blocking(&c, &wanted, &current, &since))
                .await
                .context("assignment task")?;
        let checked_at = Some(now_ms());
        match result {
            Ok(synced) => {
                missing_since.retain(|t, _| synced.missing.contains(t));
                for t in &synced.missing {
                    missing_since.entry(t.clone()).or_insert(check_began);
                }
                if !synced.missing.is_empty() {
                    tracing::debug!(missing = ?synced.missing, "topics not there (yet)");
                }
                hub.set_kafka(KafkaStatus {
                    bootstrap: bootstrap.clone(),
                    connected: true,
                    error: None,
                    assigned_partitions: synced.assigned.len(),
                    topics: synced.topics,
                    missing_topics: synced.missing,
                    checked_at,
                });
                assigned = synced.assigned;
                readiness.set(true);
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "Kafka is not answering");
                hub.set_kafka(KafkaStatus {
                    bootstrap: bootstrap.clone(),
                    connected: false,
                    error: Some(format!("{e:#}")),
                    assigned_partitions: assigned.len(),
                    topics: Vec::new(),
                    missing_topics: Vec::new(),
                    checked_at,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_of_the_wanted_topics_that_exist() {
        let wanted: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        let existing: BTreeMap<String, i32> = [
            ("a".to_string(), 2),
            ("c".to_string(), 1),
            ("z".to_string(), 3),
        ]
        .into();
        let got: Vec<(String, i32)> = desired_partitions(&wanted, &existing).into_iter().collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), 0),
                ("a".to_string(), 1),
                ("c".to_string(), 0)
            ]
        );
    }

    #[test]
    fn group_ids_are_unique_per_process_and_call() {
        let a = unique_group("iot");
        assert!(a.starts_with("iot-dashboard-"));
        assert_ne!(a, unique_group("iot"));
    }
}
