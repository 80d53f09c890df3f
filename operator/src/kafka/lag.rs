//! Consumer-group lag: how many messages a group has still to process, per partition and in total.
//! It drives the autoscaling of the enrichment Deployments and the `lag` status column.
//!
//! The arithmetic is a pure function ([`partition_lag`]); [`consumer_group_lag`] only fetches the
//! offsets it needs from the broker. Reconciles read lag through the [`LagReader`] seam.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The lag of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (the next message it will read), if it ever committed.
    pub committed: Option<i64>,
    pub low_watermark: i64,
    pub high_watermark: i64,
    pub lag: i64,
}

/// The lag of a consumer group over a set of topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupLag {
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

/// Messages not yet processed in one partition.
///
/// Without a committed offset the group has processed nothing that is still retained, so every
/// retained message counts (`high - low`); a committed offset below the low watermark (the
/// messages were deleted by retention before the group reached them) counts from the low
/// watermark for the same reason. Lag is never negative.
pub fn partition_lag(committed: Option<i64>, low_watermark: i64, high_watermark: i64) -> i64 {
    let position = committed.unwrap_or(low_watermark).max(low_watermark);
    (high_watermark - position).max(0)
}

/// Fetches the committed offsets of `group` and the watermarks of every partition of `topics`,
/// and computes the lag. Blocking: call it from `spawn_blocking` in async code.
pub fn consumer_group_lag(
    bootstrap: &str,
    group: &str,
    topics: &[&str],
    timeout: Duration,
) -> Result<GroupLag, KafkaError> {
    // A consumer that never subscribes does not join the group; it only reads its offsets.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(KafkaError::MetadataFetch(err.into()));
            }
            for p in t.partitions() {
                assignment.add_partition(t.name(), p.id());
            }
        }
    }
    // The group coordinator can be briefly unavailable (broker start, first use of the offsets
    // topic, coordinator move): retry within the caller's time budget.
    let deadline = Instant::now() + timeout;
    let committed = loop {
        match consumer.committed_offsets(assignment.clone(), timeout) {
            Ok(c) => break c,
            Err(e) if Instant::now() + RETRY_BACKOFF < deadline => {
                tracing::debug!(group, error = %e, "fetching committed offsets failed; retrying");
                std::thread::sleep(RETRY_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    };
    let mut partitions = Vec::with_capacity(assignment.count());
    for elem in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(elem.topic(), elem.partition(), timeout)?;
        let committed = match elem.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        partitions.push(PartitionLag {
            topic: elem.topic().to_string(),
            partition: elem.partition(),
            committed,
            low_watermark: low,
            high_watermark: high,
            lag: partition_lag(committed, low, high),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(GroupLag { partitions })
}

/// Reads a consumer group's total lag on one topic: the seam between the DeviceType reconcile
/// and the broker.
pub trait LagReader: Send + Sync {
    fn lag<'a>(&'a self, group: &'a str, topic: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>>;
}

/// [`LagReader`] through [`consumer_group_lag`].
#[derive(Clone, Debug)]
pub struct KafkaLagReader {
    pub bootstrap: String,
    pub timeout: Duration,
}

impl LagReader for KafkaLagReader {
    fn lag<'a>(&'a self, group: &'a str, topic: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>> {
        let (bootstrap, group, topic, timeout) = (
            self.bootstrap.clone(),
            group.to_string(),
            topic.to_string(),
            self.timeout,
        );
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                consumer_group_lag(&bootstrap, &group, &[&topic], timeout).map(|l| l.total())
            })
            .await
            .map_err(|_| KafkaError::Canceled)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_offset() {
        assert_eq!(partition_lag(Some(40), 0, 100), 60);
        assert_eq!(partition_lag(Some(100), 0, 100), 0);
    }

    #[test]
    fn never_committed_group_lags_by_everything_retained() {
        assert_eq!(partition_lag(None, 0, 100), 100);
        assert_eq!(partition_lag(None, 30, 100), 70);
    }

    #[test]
    fn commit_below_retention_counts_from_low_watermark() {
        assert_eq!(partition_lag(Some(5), 30, 100), 70);
    }

    #[test]
    fn lag_is_never_negative() {
        // A committed offset past the high watermark happens briefly when watermarks are read
        // before the commit they follow.
        assert_eq!(partition_lag(Some(120), 0, 100), 0);
    }

    #[test]
    fn total_sums_partitions() {
        let p = |partition, lag| PartitionLag {
            topic: "t".into(),
            partition,
            committed: None,
            low_watermark: 0,
            high_watermark: lag,
            lag,
        };
        let g = GroupLag {
            partitions: vec![p(0, 3), p(1, 0), p(2, 7)],
        };
        assert_eq!(g.total(), 10);
    }
}
