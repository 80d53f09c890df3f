//! At-least-once enrichment: concurrent produces, commits of the contiguous acknowledged prefix
//! of each partition ([`OffsetTracker`]).
//!
//! A record is finished when all its outputs are acknowledged, or when the dead letter that
//! replaces them is: an output Kafka refuses for good is produced again alone (on a second
//! producer that puts every record in a batch of its own), and refused again it is dead-lettered
//! (`rejected_by_kafka`), so the partition moves on. A dead letter that cannot be written keeps
//! its record unfinished and is tried again with backoff while the worker reports not ready.
//! Records in flight hold a share of the count of `--max-in-flight` and of the byte budget.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    BLOCKED_BACKOFF_FIRST, Health, Prepared, Setup, account, consumer_config, cost,
    dead_letter_rejected, dead_letter_topic_missing, follow_registry, next_backoff, partition_list,
    prepare, producer_config, raw_topics, subscribe, watch_reachability,
};
use crate::catalog::Catalog;
use crate::clock;
use crate::kafka::{self, DeliveryError, OutRecord};
use crate::memory::{ByteBudget, BytePermit};
use crate::metrics::PipelineMetrics;
use crate::offsets::OffsetTracker;
use crate::route::Reason;

/// Most records taken from the consumer in one go.
const MAX_BATCH: usize = 256;

/// Commits finished offsets of revoked partitions before they go, and reports assignment.
struct GroupContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    assigned: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            let gone: Vec<(String, i32)> = revoked
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            let offsets: Vec<_> = tracker
                .to_commit()
                .into_iter()
                .filter(|(p, _)| gone.contains(p))
                .collect();
            if !offsets.is_empty() {
                match consumer.commit(&partition_list(&offsets), CommitMode::Sync) {
                    Ok(()) => tracker.committed(&offsets),
                    Err(e) => tracing::warn!(error = %e, "commit before revocation failed"),
                }
            }
            for (topic, partition) in gone {
                tracker.revoke(&topic, partition);
            }
            tracing::info!(partitions = revoked.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                tracing::info!(partitions = assigned.count(), "partitions assigned");
                self.assigned.store(true, Ordering::Relaxed);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// What the record tasks share.
struct Shared {
    producer: FutureProducer,
    /// Outputs retried after a permanent refusal, and dead letters: one record per batch.
    alone: FutureProducer,
    metrics: PipelineMetrics,
    health: Health,
    budget: ByteBudget,
    tracker: Arc<Mutex<OffsetTracker>>,
    stop: CancellationToken,
    abort: CancellationToken,
    prefix: String,
    all_types_topic: bool,
}

pub(super) async fn run(mut setup: Setup) -> anyhow::Result<()> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let assigned = Arc::new(AtomicBool::new(false));
    // Watched by the reachability check.
    let consumer: Arc<GroupConsumer> = Arc::new(
        consumer_config(&setup)
            .create_with_context(GroupContext {
                tracker: tracker.clone(),
                assigned: assigned.clone(),
            })
            .context("creating the Kafka consumer")?,
    );
    let producer: FutureProducer = producer_config(&setup, false)
        .create()
        .context("creating the Kafka producer")?;
    let alone: FutureProducer = producer_config(&setup, true)
        .create()
        .context("creating the Kafka producer of records retried alone")?;
    let reachable = watch_reachability(&setup, &producer, &consumer);
    let prefix = setup.args.kafka.topic_prefix.clone();
    let mut topics = raw_topics(&setup.catalog.borrow(), &setup.args.device_type, &prefix);
    subscribe(&consumer, &topics)?;
    tracing::info!(group = %setup.group, ?topics, "enrichment starting (at-least-once)");

    let shared = Arc::new(Shared {
        producer: producer.clone(),
        alone: alone.clone(),
        metrics: setup.metrics.clone(),
        health: setup.health.clone(),
        budget: setup.budget.clone(),
        tracker: tracker.clone(),
        stop: setup.life.stop.clone(),
        abort: setup.life.abort.clone(),
        prefix,
        all_types_topic: setup.args.all_types_topic,
    });
    let max_in_flight = setup.args.max_in_flight;
    // A quarter of the window, so that the next batch is read while one is being delivered.
    let max_batch = (max_in_flight / 4).clamp(1, MAX_BATCH);
    // Likewise a quarter of the byte budget: the raw records of a batch wait in memory for
    // their share of it.
    let max_batch_bytes = setup.budget.limit() / 4;
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut commit_tick =
        tokio::time::interval(Duration::from_millis(setup.args.commit_interval_ms));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = setup.life.stop.clone();
    let fatal = setup.health.fatal_raised.clone();
    loop {
        let connected = assigned.load(Ordering::Relaxed) && reachable.load(Ordering::Relaxed);
        setup.readiness.set(setup.health.ready(connected));
        setup.metrics.connected.set(i64::from(connected));
        tokio::select! {
            biased;
            () = fatal.cancelled() => break,
            () = stop.cancelled() => break,
            _ = commit_tick.tick() => commit(&consumer, &tracker, CommitMode::Async),
            Ok(()) = setup.catalog.changed() => follow_registry(&mut setup, &consumer, &mut topics)?,
            received = consumer.recv() => match received {
                Ok(message) => {
                    // Whatever else is already waiting joins the batch: one task, one tracker
                    // lock and one clock reading per batch instead of per record.
                    let mut batch = vec![message.detach()];
                    let mut batch_bytes = raw_len(&batch[0]);
                    while batch.len() < max_batch && batch_bytes < max_batch_bytes {
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => {
                                let m = m.detach();
                                batch_bytes += raw_len(&m);
                                batch.push(m);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "consume error");
                                break;
                            }
                            None => break,
                        }
                    }
                    let n = u32::try_from(batch.len()).expect("a batch is at most max-in-flight");
                    let permit = tokio::select! {
                        biased;
                        () = stop.cancelled() => break,
                        () = fatal.cancelled() => break,
                        p = permits.clone().acquire_many_owned(n) => p.expect("semaphore never closed"),
                    };
                    let catalog = setup.catalog.borrow().clone();
                    process(&shared, batch, catalog, permit).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    setup.readiness.set(false);
                }
            }
        }
    }

    if let Some(error) = setup.health.fatal_error() {
        setup.readiness.set(false);
        // What is finished is stored: commit it, so that less is consumed again after the
        // restart. Nothing else is waited for: the producer is unusable.
        commit(&consumer, &tracker, CommitMode::Sync);
        anyhow::bail!(
            "fatal Kafka producer error: {error}; exiting so that the process is restarted \
             (records not committed are consumed again)"
        );
    }
    tracing::info!("stopping: finishing in-flight records");
    setup.readiness.set(false);
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => {}
        () = setup.life.abort.cancelled() => tracing::warn!("in-flight records abandoned; they will be consumed again"),
    }
    commit(&consumer, &tracker, CommitMode::Sync);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
        .await
        .context("flushing the producer")?;
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "producer flush incomplete");
    }
    tracing::info!("enrichment stopped");
    Ok(())
}

fn raw_len(message: &OwnedMessage) -> u64 {
    message.payload().map_or(0, <[u8]>::len) as u64
}

/// Commits the finished prefix of every partition.
fn commit(consumer: &GroupConsumer, tracker: &Mutex<OffsetTracker>, mode: CommitMode) {
    let mut tracker = tracker.lock().expect("tracker lock");
    let offsets = tracker.to_commit();
    if offsets.is_empty() {
        return;
    }
    match consumer.commit(&partition_list(&offsets), mode) {
        // An async commit is only queued; recording it now at worst commits the same offsets
        // again next time.
        Ok(()) => tracker.committed(&offsets),
        Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
    }
}

/// Enriches a batch of records, hands their output records to the producer (in consumption
/// order, which keeps each device's messages in order) and spawns the wait for their
/// acknowledgements; each record's offset may be committed, and its permits are released, as
/// soon as its outputs are acknowledged. A record waits for its share of the byte budget before
/// it is produced; on `stop` (or a fatal error) the rest of the batch is left unfinished, so it is
/// consumed again.
async fn process(
    shared: &Arc<Shared>,
    batch: Vec<OwnedMessage>,
    catalog: Arc<Catalog>,
    mut permit: OwnedSemaphorePermit,
) {
    {
        let mut tracker = shared.tracker.lock().expect("tracker lock");
        for m in &batch {
            tracker.start(m.topic(), m.partition(), m.offset());
        }
    }
    let now = clock::now();
    let mut work = Vec::with_capacity(batch.len());
    for message in batch {
        let prepared = prepare(
            &message,
            &catalog,
            &shared.prefix,
            shared.all_types_topic,
            now,
        );
        let bytes = cost(&message, &prepared);
        let held = match shared.budget.try_acquire(bytes) {
            Some(held) => held,
            None => {
                // What this batch started must be able to finish, and give its bytes back,
                // while the rest waits.
                spawn_deliveries(shared, std::mem::take(&mut work), &catalog);
                tokio::select! {
                    biased;
                    () = shared.stop.cancelled() => return,
                    () = shared.health.fatal_raised.cancelled() => return,
                    held = shared.budget.acquire(bytes) => held,
                }
            }
        };
        shared
            .metrics
            .received
            .with_label_values(&[&prepared.kind])
            .inc();
        shared.metrics.in_flight.inc();
        let mut firsts = Vec::with_capacity(prepared.records.len());
        for r in &prepared.records {
            firsts.push(kafka::enqueue(&shared.producer, r).await);
        }
        let one = permit.split(1).expect("one permit per record");
        work.push(Work {
            message,
            prepared,
            firsts,
            permits: (one, held),
        });
    }
    spawn_deliveries(shared, work, &catalog);
}

/// A record handed to the producer, with its share of the count and of the byte budget.
struct Work {
    message: OwnedMessage,
    prepared: Prepared,
    firsts: Vec<Result<DeliveryFuture, KafkaError>>,
    permits: (OwnedSemaphorePermit, BytePermit),
}

/// Spawns the wait for the acknowledgements of `work`.
fn spawn_deliveries(shared: &Arc<Shared>, work: Vec<Work>, catalog: &Arc<Catalog>) {
    if work.is_empty() {
        return;
    }
    let (shared, catalog) = (shared.clone(), catalog.clone());
    tokio::spawn(async move {
        // Concurrently, so that one record's retries do not hold up the others.
        let mut pending: FuturesUnordered<_> = work
            .into_iter()
            .map(|w| {
                let (shared, catalog) = (&shared, &catalog);
                async move {
                    let Work {
                        message,
                        prepared,
                        firsts,
                        permits,
                    } = w;
                    if deliver(shared, &message, catalog, prepared, firsts).await {
                        shared.tracker.lock().expect("tracker lock").finish(
                            message.topic(),
                            message.partition(),
                            message.offset(),
                        );
                    }
                    shared.metrics.in_flight.dec();
                    drop(permits);
                }
            })
            .collect();
        while pending.next().await.is_some() {}
    });
}

/// Waits for one record's outputs; true when it is finished: delivered, or replaced by its dead
/// letter (an output topic is missing, or Kafka refused an output for good, even alone).
async fn deliver(
    shared: &Shared,
    message: &OwnedMessage,
    catalog: &Catalog,
    prepared: Prepared,
    firsts: Vec<Result<DeliveryFuture, KafkaError>>,
) -> bool {
    let deliveries = prepared.records.iter().zip(firsts).map(|(r, first)| {
        kafka::deliver(&shared.producer, r, first, &shared.metrics, &shared.abort)
    });
    let outcomes = join_all(deliveries).await;
    // The dead letter that replaces the record's outputs, and its reason.
    let mut replacement: Option<(OutRecord, Reason)> = None;
    for (record, outcome) in prepared.records.iter().zip(outcomes) {
        let error = match outcome {
            Ok(_) => continue,
            // The broker refuses a whole batch when it is too large for the topic: the
            // record may only have shared one. Its own batch tells.
            Err(DeliveryError::Permanent(_)) => {
                shared.health.metrics.retried_alone.inc();
                match kafka::deliver_alone(&shared.alone, record, &shared.metrics, &shared.abort)
                    .await
                {
                    Ok(_) => continue,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        match &error {
            DeliveryError::Fatal(e) => {
                shared.health.fatal(e.clone());
                return false;
            }
            DeliveryError::Aborted => {
                tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "record not finished at shutdown; it will be consumed again"
                );
                return false;
            }
            // The record's output is its dead letter already: it is what cannot be written.
            _ if prepared.result.is_err() => {
                let reason = *prepared.result.as_ref().expect_err("a dead letter");
                replacement.get_or_insert_with(|| (record.clone(), reason));
            }
            DeliveryError::TopicMissing(_) => {
                replacement.get_or_insert_with(|| {
                    (
                        dead_letter_topic_missing(message, catalog),
                        Reason::TopicMissing,
                    )
                });
            }
            DeliveryError::Permanent(_) => {
                tracing::warn!(%error, topic = %record.topic, source_topic = message.topic(),
                    partition = message.partition(), offset = message.offset(),
                    "Kafka refused an enriched record for good; dead-lettering its source");
                replacement.get_or_insert_with(|| {
                    (
                        dead_letter_rejected(message, catalog, &record.topic, &error),
                        Reason::RejectedByKafka,
                    )
                });
            }
        }
    }
    match replacement {
        None => {
            account(&shared.metrics, &prepared.result, &prepared.kind);
            true
        }
        Some((dead, reason)) => {
            dead_letter_until_written(shared, message, &dead, reason, &prepared.kind).await
        }
    }
}

/// Writes the dead letter that replaces a record's outputs, alone. While it cannot be written
/// (refused, or the dead-letter topic missing) the record stays unfinished, so its partition does
/// not advance and nothing is lost, the worker is not ready, and the write is tried again with
/// capped backoff until it succeeds or the grace period ends. True when written.
async fn dead_letter_until_written(
    shared: &Shared,
    message: &OwnedMessage,
    dead: &OutRecord,
    reason: Reason,
    kind: &str,
) -> bool {
    let mut backoff = BLOCKED_BACKOFF_FIRST;
    let mut blocked = false;
    let written = loop {
        match kafka::deliver_alone(&shared.alone, dead, &shared.metrics, &shared.abort).await {
            Ok(_) => {
                account(&shared.metrics, &Err(reason), kind);
                break true;
            }
            Err(DeliveryError::Fatal(e)) => {
                shared.health.fatal(e);
                break false;
            }
            Err(DeliveryError::Aborted) => break false,
            Err(error) => {
                shared.health.metrics.deadletter_failures.inc();
                if blocked {
                    tracing::warn!(%error, ?backoff, topic = message.topic(),
                        partition = message.partition(), offset = message.offset(),
                        "dead letter still cannot be written");
                } else {
                    blocked = true;
                    shared.health.block();
                    tracing::error!(%error, reason = reason.as_str(), deadletter_topic = %dead.topic,
                        topic = message.topic(), partition = message.partition(),
                        offset = message.offset(),
                        "dead letter cannot be written: the record stays unfinished (its partition \
                         does not advance), the worker is not ready, and the write is tried again");
                }
                tokio::select! {
                    () = shared.abort.cancelled() => break false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = next_backoff(backoff);
            }
        }
    };
    if blocked {
        shared.health.unblock();
        if written {
            tracing::info!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "dead letter written after all; the partition moves on"
            );
        }
    }
    written
}
