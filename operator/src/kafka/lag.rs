//! Consumer-group lag: how many messages a group has still to process, per partition and in total.
//! It drives the autoscaling of the enrichment Deployments and the `lag` status column.
//!
//! The arithmetic ([`partition_lag`]) and the reading of `__consumer_offsets` records
//! ([`parse_offset_commit`], [`offsets_partition_for`]) are pure functions; [`KafkaLagReader`]
//! reads lag for the operator's whole life through clients it creates once. Reconciles read lag
//! through the [`LagReader`] seam.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

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

/// The internal topic in which the group coordinators keep the committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The lag reader's own `group.id`; the group never has members or offsets.
pub const LAG_READER_GROUP: &str = "iot-operator.lag-reader";

/// The longest the tail waits in one poll: also how soon it notices that it is to stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How often the tail looks again for `__consumer_offsets` while it does not exist (no group has
/// committed anything yet) or the broker cannot be reached.
const OFFSETS_TOPIC_RETRY: Duration = Duration::from_secs(1);

/// How long a reading waits before it asks again when a partition has no leader.
const LEADER_RETRY: Duration = Duration::from_millis(200);

/// Whether `e` says a partition has no leader right now (an election is under way).
fn leader_moving(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable)
    )
}

/// The partition of `__consumer_offsets` that holds the commits of `group`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions`, Java's string hash over UTF-16 code units.
pub fn offsets_partition_for(group: &str, partitions: i32) -> i32 {
    let hash = group.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Utils.abs: Math.abs, with Integer.MIN_VALUE (whose absolute value overflows) as 0. Not the
    // sign-bit mask that the producer's key partitioner uses: the two differ for every negative
    // hash, half of all group names.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions.max(1)
}

/// One offset commit as a group coordinator writes it to `__consumer_offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The committed offset; `None` when the commit was deleted (expired, or the group deleted).
    pub offset: Option<i64>,
}

/// Reads an offset commit from a record of `__consumer_offsets`; `None` for the other record types
/// (group metadata, the newer coordinators' records) and for anything malformed.
///
/// The key is an int16 record type (0 and 1 are offset commits), the group and the topic as
/// strings with an int16 length, and the partition as int32. The value is an int16 version and
/// then the offset as int64, the first field in every version (0 to 4); a record without a value
/// deletes the commit.
pub fn parse_offset_commit<'a>(key: &'a [u8], value: Option<&[u8]>) -> Option<OffsetCommit<'a>> {
    let mut key = BigEndian(key);
    if !matches!(key.i16()?, 0 | 1) {
        return None;
    }
    let group = key.str()?;
    let topic = key.str()?;
    let partition = key.i32()?;
    let offset = match value {
        None | Some([]) => None,
        Some(value) => {
            let mut value = BigEndian(value);
            value.i16()?;
            Some(value.i64()?)
        }
    };
    Some(OffsetCommit {
        group,
        topic,
        partition,
        offset,
    })
}

/// A cursor over Kafka's big-endian encoding.
struct BigEndian<'a>(&'a [u8]);

impl<'a> BigEndian<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.i16()?).ok()?;
        let (bytes, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        std::str::from_utf8(bytes).ok()
    }
}

/// Reads a consumer group's total lag on one topic: the seam between the DeviceType reconcile
/// and the broker.
pub trait LagReader: Send + Sync {
    fn lag<'a>(&'a self, group: &'a str, topic: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>>;
}

/// [`LagReader`] through librdkafka clients created once and kept as long as the operator, shared
/// by every reconcile (it is `Sync`; its blocking calls run in `spawn_blocking`).
///
/// **Two clients, not one**: a broker answers the requests of one connection in order, and a
/// consumer that tails a topic always has a fetch waiting on its connection (for up to
/// `fetch.wait.max.ms`, 500 ms). Through one client, every metadata and `ListOffsets` request
/// queued behind that fetch: a reading took 1.5 s (three requests) instead of a few milliseconds.
/// So one client only asks (metadata, offsets) and never fetches, and the other only tails.
///
/// **Watermarks**: two `offsets_for_times` calls per reading, one for the earliest and one for
/// the latest offsets of all partitions (librdkafka sends one `ListOffsets` request per partition
/// leader for each), instead of two requests per partition.
///
/// **Committed offsets**: librdkafka reads committed offsets only for a consumer's own
/// `group.id`, and rust-rdkafka 0.39 does not offer the admin API's `ListConsumerGroupOffsets`
/// (its FFI would need `unsafe`, which the workspace forbids); one client per group would hold
/// connections and threads per DeviceType. So the second client tails `__consumer_offsets` (what
/// Burrow and KMinion do) on a thread of its own, keeping in memory the commits of the groups
/// whose names start with `group_prefix`. A reading is as fresh as an `OffsetFetch`: the end
/// offset of the group's partition of `__consumer_offsets` is read in the same request as the
/// latest watermarks, and the reading waits (up to the timeout) until the tail got there. When
/// Kafka has ACLs, the operator needs `Describe` and `Read` on that topic.
pub struct KafkaLagReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaLagReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLagReader")
            .field("group_prefix", &self.shared.group_prefix)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// Metadata and offsets requests; never fetches.
    requests: BaseConsumer,
    /// Tails `__consumer_offsets`.
    tail: BaseConsumer<TailContext>,
    group_prefix: String,
    timeout: Duration,
    state: Mutex<TailState>,
    /// Signalled whenever the tail moved (or failed).
    progressed: Condvar,
    stop: AtomicBool,
}

/// What the tail of `__consumer_offsets` has read so far.
#[derive(Default)]
struct TailState {
    /// Partitions of `__consumer_offsets`, once it exists and is assigned.
    offsets_partitions: Option<i32>,
    /// Per partition of `__consumer_offsets`: the next offset the tail reads.
    positions: HashMap<i32, i64>,
    /// Per partition: how often the tail reached its end, and whether it is there now.
    ends: HashMap<i32, (u64, bool)>,
    /// The commits of the groups kept: group -> (topic, partition) -> committed offset.
    committed: HashMap<String, HashMap<(String, i32), i64>>,
    /// The tail's last error, until it reads again.
    error: Option<KafkaError>,
}

impl TailState {
    fn apply(&mut self, commit: &OffsetCommit<'_>) {
        let key = (commit.topic.to_string(), commit.partition);
        match commit.offset {
            Some(offset) => {
                self.committed
                    .entry(commit.group.to_string())
                    .or_default()
                    .insert(key, offset);
            }
            None => {
                if let Some(group) = self.committed.get_mut(commit.group) {
                    group.remove(&key);
                    if group.is_empty() {
                        self.committed.remove(commit.group);
                    }
                }
            }
        }
    }
}

impl KafkaLagReader {
    /// Creates the clients and starts the tail of `__consumer_offsets`; `timeout` bounds each
    /// reading. Does not wait for the broker: a broker that is down makes readings fail until it
    /// is back.
    pub fn new(bootstrap: &str, group_prefix: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let requests: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "iot-operator-lag")
            // The end offsets of `__consumer_offsets` are its last stable offsets, as far as the
            // tail (read_committed too) can read.
            .set("isolation.level", "read_committed")
            .create()?;
        // Reads through assign(): it never joins its group and never commits (librdkafka
        // refuses assign() without a group.id).
        let tail: BaseConsumer<TailContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "iot-operator-lag-tail")
            .set("group.id", LAG_READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // Commits of aborted transactions (exactly-once enrichment) never count.
            .set("isolation.level", "read_committed")
            // Offset commits are small: a small prefetch keeps the operator's memory small.
            .set("queued.max.messages.kbytes", "1024")
            .create_with_context(TailContext)?;
        let shared = Arc::new(Shared {
            requests,
            tail,
            group_prefix: group_prefix.to_string(),
            timeout,
            state: Mutex::default(),
            progressed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        std::thread::Builder::new()
            .name("iot-lag-tail".into())
            .spawn({
                let shared = shared.clone();
                move || shared.tail()
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the lag reader: {e}")))?;
        Ok(Self { shared })
    }

    /// The lag of `group` on every partition of `topics`. Blocking: call it from
    /// `spawn_blocking` in async code.
    pub fn group_lag(&self, group: &str, topics: &[&str]) -> Result<GroupLag, KafkaError> {
        self.shared.group_lag(group, topics)
    }
}

impl Drop for KafkaLagReader {
    fn drop(&mut self) {
        // The tail thread holds the consumer; it stops within one poll interval.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl LagReader for KafkaLagReader {
    fn lag<'a>(&'a self, group: &'a str, topic: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>> {
        let (shared, group, topic) = (self.shared.clone(), group.to_string(), topic.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                shared.group_lag(&group, &[&topic]).map(|l| l.total())
            })
            .await
            .map_err(|_| KafkaError::Canceled)?
        })
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, TailState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One reading, tried again while the broker answers that a partition has no leader (it is
    /// being elected: a new topic, a broker restart): a transient state, not an unreadable lag.
    fn group_lag(&self, group: &str, topics: &[&str]) -> Result<GroupLag, KafkaError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.read_group_lag(group, topics) {
                Err(e) if leader_moving(&e) && Instant::now() + LEADER_RETRY < deadline => {
                    std::thread::sleep(LEADER_RETRY);
                }
                reading => return reading,
            }
        }
    }

    fn read_group_lag(&self, group: &str, topics: &[&str]) -> Result<GroupLag, KafkaError> {
        let mut latest = TopicPartitionList::new();
        for topic in topics {
            let metadata = self.requests.fetch_metadata(Some(topic), self.timeout)?;
            for t in metadata.topics() {
                if let Some(err) = t.error() {
                    return Err(KafkaError::MetadataFetch(err.into()));
                }
                for p in t.partitions() {
                    if let Some(err) = p.error() {
                        return Err(KafkaError::MetadataFetch(err.into()));
                    }
                    latest.add_partition_offset(t.name(), p.id(), Offset::End)?;
                }
            }
        }
        let mut earliest = latest.clone();
        earliest.set_all_offsets(Offset::Beginning)?;
        // Without `__consumer_offsets` no group of this cluster has committed anything yet
        // (Kafka creates it when the first group asks for its coordinator): nothing is committed.
        let offsets_partition = self
            .ensure_assigned()?
            .map(|partitions| offsets_partition_for(group, partitions));
        // The group's partition of __consumer_offsets goes into the same request as the latest
        // watermarks: how far the tail must have read for this reading to be fresh.
        let ends_before = offsets_partition.map_or(0, |p| self.ends_reached(p));
        if let Some(p) = offsets_partition {
            latest.add_partition_offset(OFFSETS_TOPIC, p, Offset::End)?;
        }
        let latest = self.requests.offsets_for_times(latest, self.timeout)?;
        let earliest = self.requests.offsets_for_times(earliest, self.timeout)?;
        let committed = match offsets_partition {
            None => HashMap::new(),
            Some(p) => {
                let target = offset_in(&latest, OFFSETS_TOPIC, p)?;
                self.committed_after(group, p, target, ends_before)?
            }
        };
        let mut partitions = Vec::with_capacity(earliest.count());
        for elem in earliest.elements() {
            let (topic, partition) = (elem.topic(), elem.partition());
            let low = offset_in(&earliest, topic, partition)?;
            let high = offset_in(&latest, topic, partition)?;
            let committed = committed.get(&(topic.to_string(), partition)).copied();
            partitions.push(PartitionLag {
                topic: topic.to_string(),
                partition,
                committed,
                low_watermark: low,
                high_watermark: high,
                lag: partition_lag(committed, low, high),
            });
        }
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(GroupLag { partitions })
    }

    fn ends_reached(&self, partition: i32) -> u64 {
        self.state().ends.get(&partition).map_or(0, |e| e.0)
    }

    /// The commits of `group` once the tail has read partition `partition` of
    /// `__consumer_offsets` up to `target`, or reached its end after the reading began
    /// (`ends_before`: how often it had reached it then; a partition can end in transaction
    /// markers, which no position points past).
    fn committed_after(
        &self,
        group: &str,
        partition: i32,
        target: i64,
        ends_before: u64,
    ) -> Result<HashMap<(String, i32), i64>, KafkaError> {
        let deadline = Instant::now() + self.timeout;
        let mut state = self.state();
        loop {
            let position = state.positions.get(&partition).copied().unwrap_or(0);
            let (ends, at_end) = state.ends.get(&partition).copied().unwrap_or_default();
            let now = Instant::now();
            let caught_up = position >= target || (at_end && ends > ends_before);
            if caught_up || (now >= deadline && at_end) {
                return Ok(state.committed.get(group).cloned().unwrap_or_default());
            }
            if now >= deadline {
                return Err(state
                    .error
                    .clone()
                    .unwrap_or(KafkaError::OffsetFetch(RDKafkaErrorCode::OperationTimedOut)));
            }
            state = self
                .progressed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Assigns every partition of `__consumer_offsets` from the beginning, once it exists;
    /// its partition count, or `None` while it does not exist.
    fn ensure_assigned(&self) -> Result<Option<i32>, KafkaError> {
        if let Some(n) = self.state().offsets_partitions {
            return Ok(Some(n));
        }
        let metadata = self
            .requests
            .fetch_metadata(Some(OFFSETS_TOPIC), self.timeout)?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == OFFSETS_TOPIC) else {
            return Ok(None);
        };
        if let Some(e) = topic.error() {
            let code = RDKafkaErrorCode::from(e);
            return match code {
                RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
                _ => Err(KafkaError::MetadataFetch(code)),
            };
        }
        let n = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
        if n == 0 {
            return Ok(None);
        }
        let mut state = self.state();
        if let Some(n) = state.offsets_partitions {
            return Ok(Some(n));
        }
        let mut assignment = TopicPartitionList::new();
        for p in 0..n {
            assignment.add_partition_offset(OFFSETS_TOPIC, p, Offset::Beginning)?;
        }
        self.tail.assign(&assignment)?;
        state.offsets_partitions = Some(n);
        tracing::info!(partitions = n, "lag reader: reading {OFFSETS_TOPIC}");
        Ok(Some(n))
    }

    /// The tail: reads `__consumer_offsets` until the reader is dropped.
    fn tail(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.ensure_assigned() {
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.pause(OFFSETS_TOPIC_RETRY);
                    continue;
                }
                Err(e) => {
                    self.failed(e);
                    self.pause(OFFSETS_TOPIC_RETRY);
                    continue;
                }
            }
            // The asking client never fetches; its queue holds only logs and errors.
            let _ = self.requests.poll(Duration::ZERO);
            let event = self.tail.poll(POLL_INTERVAL);
            let mut state = self.state();
            match event {
                Some(Ok(msg)) => {
                    if let Some(commit) = msg
                        .key()
                        .and_then(|key| parse_offset_commit(key, msg.payload()))
                        .filter(|c| c.group.starts_with(&self.group_prefix))
                    {
                        state.apply(&commit);
                    }
                    state.positions.insert(msg.partition(), msg.offset() + 1);
                    state.ends.entry(msg.partition()).or_default().1 = false;
                    state.error = None;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.refresh_positions(&mut state);
                    let end = state.ends.entry(p).or_default();
                    *end = (end.0 + 1, true);
                    state.error = None;
                }
                None => self.refresh_positions(&mut state),
                Some(Err(e)) => {
                    drop(state);
                    self.failed(e);
                    continue;
                }
            }
            drop(state);
            self.progressed.notify_all();
        }
    }

    /// Positions past records the tail did not see (compacted away, transaction markers).
    fn refresh_positions(&self, state: &mut TailState) {
        if let Ok(positions) = self.tail.position() {
            for elem in positions.elements() {
                if let Offset::Offset(o) = elem.offset() {
                    let position = state.positions.entry(elem.partition()).or_insert(0);
                    *position = (*position).max(o);
                }
            }
        }
    }

    fn failed(&self, e: KafkaError) {
        let mut state = self.state();
        if state.error.is_none() {
            tracing::warn!(error = %e, "lag reader: reading {OFFSETS_TOPIC} failed; retrying");
        }
        state.error = Some(e);
        drop(state);
        self.progressed.notify_all();
    }

    fn pause(&self, how_long: Duration) {
        let until = Instant::now() + how_long;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// The tail's client context: reaching the end of a partition is the tail's normal state, not an
/// error to log (librdkafka reports it as one); other errors reach [`Shared::failed`] too.
struct TailContext;

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(error = %error, reason, "lag reader tail: librdkafka error");
        }
    }
}

impl ConsumerContext for TailContext {}

/// The offset found for `topic`/`partition` in an answered `offsets_for_times` list.
fn offset_in(list: &TopicPartitionList, topic: &str, partition: i32) -> Result<i64, KafkaError> {
    let elem = list
        .find_partition(topic, partition)
        .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
    elem.error()?;
    match elem.offset() {
        Offset::Offset(o) => Ok(o),
        _ => Err(KafkaError::OffsetFetch(RDKafkaErrorCode::OffsetOutOfRange)),
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

    #[test]
    fn a_group_maps_to_the_offsets_partition_kafka_chooses() {
        // Java: "iot.smart_breaker.enrichment".hashCode() == 2_129_363_259, which is 9 modulo 50.
        assert_eq!(offsets_partition_for("iot.smart_breaker.enrichment", 50), 9);
        assert_eq!(offsets_partition_for("", 50), 0);
        // A negative hash (-1,615,110,887): Kafka 4.1 wrote this group's commits to partition 7
        // of 10, its absolute value modulo 10 (masking the sign bit would give 1).
        assert_eq!(offsets_partition_for("smoke-group-22961-1d4693ef-1", 10), 7);
        // Utils.abs maps i32::MIN to 0 (no overflow): "polygenelubricants" is the classic string
        // whose Java hash is Integer.MIN_VALUE.
        assert_eq!(offsets_partition_for("polygenelubricants", 7), 0);
        for group in ["a", "iot.meter.enrichment", "grüße"] {
            let p = offsets_partition_for(group, 10);
            assert!((0..10).contains(&p), "{group}: {p}");
        }
    }

    fn commit_key(record_type: i16, group: &str, topic: &str, partition: i32) -> Vec<u8> {
        let mut key = record_type.to_be_bytes().to_vec();
        for s in [group, topic] {
            key.extend((s.len() as i16).to_be_bytes());
            key.extend(s.as_bytes());
        }
        key.extend(partition.to_be_bytes());
        key
    }

    fn commit_value(version: i16, offset: i64) -> Vec<u8> {
        let mut value = version.to_be_bytes().to_vec();
        value.extend(offset.to_be_bytes());
        // The rest (leader epoch, metadata, timestamps) is never read.
        value.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        value
    }

    #[test]
    fn offset_commits_are_read_from_every_key_and_value_version() {
        for record_type in [0, 1] {
            for version in 0..=4 {
                let key = commit_key(record_type, "iot.x.enrichment", "iot.x.raw", 2);
                assert_eq!(
                    parse_offset_commit(&key, Some(&commit_value(version, 42))),
                    Some(OffsetCommit {
                        group: "iot.x.enrichment",
                        topic: "iot.x.raw",
                        partition: 2,
                        offset: Some(42)
                    }),
                    "key type {record_type}, value version {version}"
                );
            }
        }
    }

    #[test]
    fn a_record_without_value_deletes_the_commit() {
        let key = commit_key(1, "g", "t", 0);
        assert_eq!(parse_offset_commit(&key, None).unwrap().offset, None);
        let mut state = TailState::default();
        state.apply(&parse_offset_commit(&key, Some(&commit_value(3, 7))).unwrap());
        assert_eq!(state.committed["g"][&("t".to_string(), 0)], 7);
        state.apply(&parse_offset_commit(&key, None).unwrap());
        assert!(state.committed.is_empty());
    }

    #[test]
    fn other_records_and_malformed_ones_are_skipped() {
        // Group metadata (type 2) and the newer coordinators' records (3 and up).
        for record_type in [2, 3, 11] {
            let key = commit_key(record_type, "g", "t", 0);
            assert_eq!(parse_offset_commit(&key, Some(&commit_value(0, 1))), None);
        }
        let key = commit_key(1, "g", "t", 0);
        assert_eq!(parse_offset_commit(&key[..key.len() - 1], None), None);
        assert_eq!(parse_offset_commit(&key, Some(&[0, 3, 0, 0])), None);
        assert_eq!(parse_offset_commit(&[], None), None);
        let mut bad_utf8 = commit_key(1, "g", "t", 0);
        bad_utf8[4] = 0xff;
        assert_eq!(parse_offset_commit(&bad_utf8, None), None);
    }
}
