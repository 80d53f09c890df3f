//! Exactly-once enrichment: read-process-write in Kafka transactions. A batch of records is
//! enriched, its outputs produced and its consumer offsets sent, all in one transaction; a crash
//! or error aborts the transaction and the batch is consumed again, so `read_committed` readers of
//! the enriched topics see every record exactly once. Zombie instances are fenced by the
//! transactional id (stable per replica) and by the consumer group generation (KIP-447).
//!
//! A record Kafka refuses for good (an output larger than the topic's `max.message.bytes`, a
//! missing output topic, ...) fails its whole transaction. The batch is then committed in halves,
//! recursively, so that the records around it commit in transactions of their own and the record
//! is left alone; alone and refused again, its dead letter replaces its outputs in its
//! transaction, with its offset, and the partition moves on. A dead letter that cannot be written
//! either leaves the record unfinished: its partition is rewound and paused with capped backoff
//! (the others go on) and the worker reports not ready until it is written. The in-flight byte
//! budget bounds a batch: a record that does not fit waits for the next one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::task::block_in_place;
use tokio::time::Instant;

use super::transaction::{
    TRANSIENT_ATTEMPTS, TXN_CALL_TIMEOUT, TxnFailure, abort, retry_pause, transact,
};
use super::{
    BLOCKED_BACKOFF_FIRST, Prepared, Setup, account, consumer_config, cost, dead_letter_rejected,
    dead_letter_topic_missing, follow_registry, next_backoff, prepare, producer_config, raw_topics,
    subscribe, watch_reachability,
};
use crate::clock;
use crate::kafka::DeliveryError;
use crate::memory::BytePermit;
use crate::route::Reason;

struct TxnContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for TxnContext {}

impl ConsumerContext for TxnContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                tracing::info!(partitions = assigned.count(), "partitions assigned");
                self.assigned.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(revoked) => {
                tracing::info!(partitions = revoked.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type TxnConsumer = StreamConsumer<TxnContext>;

/// `{group}-$HOSTNAME` unless set: stable per replica, so a restarted replica fences its
/// predecessor's open transaction at once.
fn transactional_id(setup: &Setup) -> String {
    setup.args.transactional_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "enrichment".to_string());
        format!("{}-{host}", setup.group)
    })
}

pub(super) async fn run(mut setup: Setup) -> anyhow::Result<()> {
    let assigned = Arc::new(AtomicBool::new(false));
    // Watched by the reachability check.
    let consumer: Arc<TxnConsumer> = Arc::new(
        consumer_config(&setup)
            .create_with_context(TxnContext {
                assigned: assigned.clone(),
            })
            .context("creating the Kafka consumer")?,
    );
    let txn_id = transactional_id(&setup);
    let producer: FutureProducer = producer_config(&setup, false)
        .set("transactional.id", &txn_id)
        .set("transaction.timeout.ms", "60000")
        // One produce request in flight per broker: once the broker refuses a batch, the
        // transaction must abort and librdkafka sends nothing more. With several in flight, the
        // batches behind the refused one fail with out-of-order sequence numbers, which keeps the
        // abort waiting until they expire (`message.timeout.ms`, 30 s).
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .context("creating the transactional Kafka producer")?;
    block_in_place(|| producer.init_transactions(TXN_CALL_TIMEOUT))
        .with_context(|| format!("initialising transactions as {txn_id}"))?;
    let reachable = watch_reachability(&setup, &producer, &consumer);
    let prefix = setup.args.kafka.topic_prefix.clone();
    let mut topics = raw_topics(&setup.catalog.borrow(), &setup.args.device_type, &prefix);
    subscribe(&consumer, &topics)?;
    tracing::info!(group = %setup.group, %txn_id, ?topics, "enrichment starting (exactly-once)");

    let max_records = setup.args.transaction_max_records;
    let max_wait = Duration::from_millis(setup.args.transaction_max_ms);
    let stop = setup.life.stop.clone();
    // Wakes the loop while no record arrives, so that readiness follows the assignment.
    let mut idle = tokio::time::interval(Duration::from_millis(500));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A record consumed that did not fit the last batch's byte budget: the next batch's first.
    let mut carried: Option<Item> = None;
    let mut blocked: Option<Blocked> = None;
    loop {
        if let Some(b) = &mut blocked {
            b.follow(&consumer, &setup);
            if b.gone {
                blocked = None;
            }
        }
        let connected = assigned.load(Ordering::Relaxed) && reachable.load(Ordering::Relaxed);
        setup.readiness.set(setup.health.ready(connected));
        setup.metrics.connected.set(i64::from(connected));
        let first = match carried.take() {
            Some(item) => item,
            None => tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = idle.tick() => continue,
                Ok(()) = setup.catalog.changed() => {
                    follow_registry(&mut setup, &consumer, &mut topics)?;
                    continue;
                }
                received = consumer.recv() => match received {
                    Ok(m) => Item::new(&setup, m.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        setup.readiness.set(false);
                        continue;
                    }
                },
            },
        };
        // Collect a batch: up to `max_records`, for at most `max_wait`, within the byte budget
        // (nothing else holds any of it: the first record always fits, alone if need be).
        let mut held: Vec<BytePermit> = vec![setup.budget.acquire(first.bytes).await];
        let mut batch = vec![first];
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                received = consumer.recv() => match received {
                    Ok(m) => {
                        let item = Item::new(&setup, m.detach());
                        match setup.budget.try_acquire(item.bytes) {
                            Some(permit) => {
                                held.push(permit);
                                batch.push(item);
                            }
                            None => {
                                carried = Some(item);
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        break;
                    }
                },
            }
        }
        setup.metrics.in_flight.set(batch.len() as i64);
        let end = commit_batch(&setup, &consumer, &producer, &batch).await;
        setup.metrics.in_flight.set(0);
        drop(held);
        let committed = match &end {
            Ok(BatchEnd::Committed) => batch.len(),
            Ok(BatchEnd::Retry { from, .. }) => *from,
            Err(_) => 0,
        };
        if blocked
            .as_ref()
            .is_some_and(|b| b.passed_by(&batch[..committed]))
        {
            blocked = None;
            setup.health.unblock();
            tracing::info!("dead letter written after all; the partition moves on");
        }
        match end {
            Ok(BatchEnd::Committed) => {}
            Ok(BatchEnd::Retry { from, refused }) => {
                // Everything from `from` on is consumed again, the carried record too.
                let carried = carried.take();
                let again: Vec<&OwnedMessage> = batch[from..]
                    .iter()
                    .chain(carried.as_ref())
                    .map(|i| &i.message)
                    .collect();
                rewind(&consumer, &again);
                match refused {
                    Some(error) => {
                        let mut b = Blocked::after(
                            blocked.take(),
                            &batch[from].message,
                            error,
                            &setup,
                            &consumer,
                        );
                        b.pause(&consumer);
                        blocked = Some(b);
                    }
                    None => tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    },
                }
            }
            Err(e) => {
                setup.health.fatal(format!("{e:#}"));
                return Err(e);
            }
        }
    }
    // Nothing is in flight between transactions: a committed one is complete, an open one was
    // aborted.
    setup.readiness.set(false);
    tracing::info!("enrichment stopped");
    Ok(())
}

/// A consumed record, enriched, with the bytes it holds while in flight.
struct Item {
    message: OwnedMessage,
    prepared: Prepared,
    bytes: u64,
}

impl Item {
    fn new(setup: &Setup, message: OwnedMessage) -> Self {
        let catalog = setup.catalog.borrow().clone();
        let prepared = prepare(
            &message,
            &catalog,
            &setup.args.kafka.topic_prefix,
            setup.args.all_types_topic,
            clock::now(),
        );
        let bytes = cost(&message, &prepared);
        Self {
            message,
            prepared,
            bytes,
        }
    }
}

/// How a batch ended (a fatal error is an `Err`).
enum BatchEnd {
    /// Every record committed.
    Committed,
    /// The records from `from` on are not committed and must be consumed again; `refused`: the
    /// dead letter of record `from` cannot be written (why), else a transient error.
    Retry {
        from: usize,
        refused: Option<String>,
    },
}

/// Commits `items` in as few transactions as Kafka takes: all of them, else halves, down to a
/// record alone, whose dead letter then replaces its refused outputs.
async fn commit_batch(
    setup: &Setup,
    consumer: &TxnConsumer,
    producer: &FutureProducer,
    items: &[Item],
) -> anyhow::Result<BatchEnd> {
    let mut ranges = VecDeque::from([(0, items.len(), 1)]);
    while let Some((lo, hi, attempt)) = ranges.pop_front() {
        let part = &items[lo..hi];
        let outputs = part
            .iter()
            .map(|i| (&i.message, i.prepared.records.as_slice()));
        let failure = match transact(consumer, producer, outputs).await {
            Ok(()) => {
                for i in part {
                    count(setup, &i.prepared.result, &i.prepared.kind);
                }
                continue;
            }
            Err(failure) => failure,
        };
        let refused = match failure {
            TxnFailure::Fatal(e) => {
                anyhow::bail!("fatal transaction error (fenced by a newer instance?): {e}")
            }
            TxnFailure::Transient(e) => {
                abort(producer)?;
                setup.metrics.produce_retries.inc();
                if attempt < TRANSIENT_ATTEMPTS {
                    tracing::warn!(error = %e, records = hi - lo, attempt, "transaction failed; aborted, trying again");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    ranges.push_front((lo, hi, attempt + 1));
                    continue;
                }
                tracing::warn!(error = %e, records = hi - lo, "transaction failed; aborted, the records will be consumed again");
                return Ok(BatchEnd::Retry {
                    from: lo,
                    refused: None,
                });
            }
            TxnFailure::Refused(refused) => {
                abort(producer)?;
                refused
            }
        };
        if hi - lo > 1 {
            if (lo, hi) == (0, items.len()) {
                tracing::warn!(error = %refused, records = items.len(),
                    "Kafka refused an output of the batch for good; committing it in parts to find the record");
            }
            let mid = lo + (hi - lo) / 2;
            ranges.push_front((mid, hi, 1));
            ranges.push_front((lo, mid, 1));
            continue;
        }
        let item = &items[lo];
        let (dead, reason) = match (&item.prepared.result, &refused) {
            // Its output is its dead letter already: that is what cannot be written.
            (Err(reason), _) => {
                return Ok(blocked_at(setup, lo, item, &refused, *reason));
            }
            (Ok(_), DeliveryError::TopicMissing(_)) => (
                dead_letter_topic_missing(&item.message, setup.catalog.borrow().as_ref()),
                Reason::TopicMissing,
            ),
            (Ok(_), _) => {
                let topic = refused_topic(&refused, item);
                tracing::warn!(error = %refused, %topic, source_topic = item.message.topic(),
                    partition = item.message.partition(), offset = item.message.offset(),
                    "Kafka refused an enriched record for good; dead-lettering its source");
                (
                    dead_letter_rejected(
                        &item.message,
                        setup.catalog.borrow().as_ref(),
                        &topic,
                        &refused,
                    ),
                    Reason::RejectedByKafka,
                )
            }
        };
        for attempt in 1.. {
            let outputs = std::iter::once((&item.message, std::slice::from_ref(&dead)));
            match transact(consumer, producer, outputs).await {
                Ok(()) => {
                    count(setup, &Err(reason), &item.prepared.kind);
                    break;
                }
                Err(TxnFailure::Fatal(e)) => anyhow::bail!("fatal transaction error: {e}"),
                Err(TxnFailure::Transient(e)) => {
                    abort(producer)?;
                    setup.metrics.produce_retries.inc();
                    if attempt >= TRANSIENT_ATTEMPTS {
                        tracing::warn!(error = %e, "dead-letter transaction failed; the record will be consumed again");
                        return Ok(BatchEnd::Retry {
                            from: lo,
                            refused: None,
                        });
                    }
                    tokio::time::sleep(retry_pause(attempt)).await;
                }
                Err(TxnFailure::Refused(e)) => {
                    abort(producer)?;
                    return Ok(blocked_at(setup, lo, item, &e, reason));
                }
            }
        }
    }
    Ok(BatchEnd::Committed)
}

/// The topic of a refused output: the one a `TopicMissing` names, else the record's first
/// output (a permanent error does not say which; a record alone has at most two).
fn refused_topic(refused: &DeliveryError, item: &Item) -> String {
    match refused {
        DeliveryError::TopicMissing(t) => t.clone(),
        _ => item
            .prepared
            .records
            .first()
            .map(|r| r.topic.clone())
            .unwrap_or_default(),
    }
}

fn blocked_at(
    setup: &Setup,
    from: usize,
    item: &Item,
    error: &DeliveryError,
    reason: Reason,
) -> BatchEnd {
    setup.health.metrics.deadletter_failures.inc();
    let m = &item.message;
    BatchEnd::Retry {
        from,
        refused: Some(format!(
            "the dead letter ({reason}) of {}/{}@{} cannot be written: {error}",
            m.topic(),
            m.partition(),
            m.offset()
        )),
    }
}

/// A record committed: counted as received and as produced or dead-lettered.
fn count(setup: &Setup, result: &Result<crate::enrich::Enriched, Reason>, kind: &str) {
    setup.metrics.received.with_label_values(&[kind]).inc();
    account(&setup.metrics, result, kind);
}

/// A record whose dead letter cannot be written: its partition is paused (rewound to it) until
/// `until`, then consumed again; the worker is not ready meanwhile.
struct Blocked {
    topic: String,
    partition: i32,
    offset: i64,
    backoff: Duration,
    until: Instant,
    paused: bool,
    /// The partition is no longer assigned here: another replica has the record now.
    gone: bool,
}

impl Blocked {
    /// The state after a failed dead letter of `message`; `before`: the previous state.
    fn after(
        before: Option<Blocked>,
        message: &OwnedMessage,
        error: String,
        setup: &Setup,
        consumer: &TxnConsumer,
    ) -> Self {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let backoff = match before {
            Some(b) if (b.topic.as_str(), b.partition, b.offset) == (topic, partition, offset) => {
                tracing::warn!(%error, backoff = ?b.backoff, "dead letter still cannot be written");
                next_backoff(b.backoff)
            }
            before => {
                match before {
                    None => setup.health.block(),
                    // Another record is blocked now: the first one's partition is consumed
                    // again, so that it is not left paused (it blocks again if it must).
                    Some(mut other) => {
                        other.until = Instant::now();
                        other.resume(consumer);
                    }
                }
                tracing::error!(%error, topic, partition, offset,
                    "dead letter cannot be written: the record stays unfinished (its partition \
                     is paused and does not advance), the worker is not ready, and the write is \
                     tried again");
                BLOCKED_BACKOFF_FIRST
            }
        };
        Self {
            topic: topic.to_string(),
            partition,
            offset,
            backoff,
            until: Instant::now() + backoff,
            paused: false,
            gone: false,
        }
    }

    fn list(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, self.partition);
        list
    }

    fn pause(&mut self, consumer: &TxnConsumer) {
        match consumer.pause(&self.list()) {
            Ok(()) => self.paused = true,
            Err(e) => tracing::warn!(error = %e, topic = %self.topic, "cannot pause the partition"),
        }
    }

    /// Resumes the partition once the backoff is over; notices when it is no longer ours.
    fn follow(&mut self, consumer: &TxnConsumer, setup: &Setup) {
        let ours = consumer
            .assignment()
            .is_ok_and(|a| a.find_partition(&self.topic, self.partition).is_some());
        if !ours {
            self.gone = true;
            setup.health.unblock();
            tracing::info!(topic = %self.topic, partition = self.partition,
                "the partition of the record whose dead letter could not be written was revoked");
            return;
        }
        self.resume(consumer);
    }

    /// Resumes the partition if it is paused and its backoff is over.
    fn resume(&mut self, consumer: &TxnConsumer) {
        if self.paused && Instant::now() >= self.until {
            match consumer.resume(&self.list()) {
                Ok(()) => self.paused = false,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "cannot resume the partition")
                }
            }
        }
    }

    /// A committed batch took the record.
    fn passed_by(&self, batch: &[Item]) -> bool {
        batch.iter().any(|i| {
            (i.message.topic(), i.message.partition(), i.message.offset())
                == (self.topic.as_str(), self.partition, self.offset)
        })
    }
}

/// After an abort: consume the records again from the first one of each partition.
fn rewind(consumer: &TxnConsumer, records: &[&OwnedMessage]) {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in records {
        let slot = first
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(i64::MAX);
        *slot = (*slot).min(m.offset());
    }
    for ((topic, partition), offset) in first {
        if let Err(e) = consumer.seek(
            &topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            // Not ours any more (rebalance): the new owner starts from the committed offset.
            tracing::warn!(error = %e, %topic, partition, "cannot rewind");
        }
    }
}
