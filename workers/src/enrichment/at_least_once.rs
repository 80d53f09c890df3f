//! At-least-once enrichment: concurrent produces, commits of the contiguous acknowledged prefix
//! of each partition ([`OffsetTracker`]).

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
    Prepared, Setup, account, consumer_config, dead_letter_topic_missing, follow_registry,
    partition_list, prepare, raw_topics, subscribe,
};
use crate::catalog::Catalog;
use crate::clock;
use crate::kafka::{self, DeliveryError};
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
    metrics: PipelineMetrics,
    tracker: Arc<Mutex<OffsetTracker>>,
    abort: CancellationToken,
    prefix: String,
    all_types_topic: bool,
}

pub(super) async fn run(mut setup: Setup) -> anyhow::Result<()> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
    let assigned = Arc::new(AtomicBool::new(false));
    let consumer: GroupConsumer = consumer_config(&setup)
        .create_with_context(GroupContext {
            tracker: tracker.clone(),
            assigned: assigned.clone(),
        })
        .context("creating the Kafka consumer")?;
    let producer: FutureProducer =
        kafka::producer_config(&setup.args.kafka, &format!("{}-producer", setup.group))
            .create()
            .context("creating the Kafka producer")?;
    let reachable = Arc::new(AtomicBool::new(false));
    kafka::watch_reachability(
        producer.clone(),
        reachable.clone(),
        |_| {},
        setup.done.clone(),
    );
    let prefix = setup.args.kafka.topic_prefix.clone();
    let mut topics = raw_topics(&setup.catalog.borrow(), &setup.args.device_type, &prefix);
    subscribe(&consumer, &topics)?;
    tracing::info!(group = %setup.group, ?topics, "enrichment starting (at-least-once)");

    let shared = Arc::new(Shared {
        producer: producer.clone(),
        metrics: setup.metrics.clone(),
        tracker: tracker.clone(),
        abort: setup.life.abort.clone(),
        prefix,
        all_types_topic: setup.args.all_types_topic,
    });
    let max_in_flight = setup.args.max_in_flight;
    // A quarter of the window, so that the next batch is read while one is being delivered.
    let max_batch = (max_in_flight / 4).clamp(1, MAX_BATCH);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut commit_tick =
        tokio::time::interval(Duration::from_millis(setup.args.commit_interval_ms));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = setup.life.stop.clone();
    loop {
        let ready = assigned.load(Ordering::Relaxed) && reachable.load(Ordering::Relaxed);
        setup.readiness.set(ready);
        setup.metrics.connected.set(i64::from(ready));
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = commit_tick.tick() => commit(&consumer, &tracker, CommitMode::Async),
            Ok(()) = setup.catalog.changed() => follow_registry(&mut setup, &consumer, &mut topics)?,
            received = consumer.recv() => match received {
                Ok(message) => {
                    // Whatever else is already waiting joins the batch: one task, one tracker
                    // lock and one clock reading per batch instead of per record.
                    let mut batch = vec![message.detach()];
                    while batch.len() < max_batch {
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => batch.push(m.detach()),
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
/// acknowledgements; each record's offset may be committed, and its permit is released, as soon
/// as its outputs are acknowledged.
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
        work.push((message, prepared, firsts, one));
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        // Concurrently, so that one record's retries do not hold up the others.
        let mut pending: FuturesUnordered<_> = work
            .into_iter()
            .map(|(message, prepared, firsts, permit)| {
                let (shared, catalog) = (&shared, &catalog);
                async move {
                    if deliver(shared, &message, catalog, prepared, firsts).await {
                        shared.tracker.lock().expect("tracker lock").finish(
                            message.topic(),
                            message.partition(),
                            message.offset(),
                        );
                    }
                    shared.metrics.in_flight.dec();
                    drop(permit);
                }
            })
            .collect();
        while pending.next().await.is_some() {}
    });
}

/// Waits for one record's outputs; true when it is finished (delivered, or dead-lettered because
/// an output topic is missing).
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
    let missing = outcomes
        .iter()
        .any(|o| matches!(o, Err(DeliveryError::TopicMissing(_))));
    match outcomes.iter().find_map(|o| o.as_ref().err()) {
        None => {
            account(&shared.metrics, &prepared.result, &prepared.kind);
            true
        }
        Some(_) if missing && prepared.result.is_ok() => {
            let fallback = &dead_letter_topic_missing(message, catalog);
            let first = kafka::enqueue(&shared.producer, fallback).await;
            let dl = kafka::deliver(
                &shared.producer,
                fallback,
                first,
                &shared.metrics,
                &shared.abort,
            )
            .await;
            if dl.is_ok() {
                account(&shared.metrics, &Err(Reason::TopicMissing), &prepared.kind);
            }
            dl.is_ok()
        }
        Some(e) => {
            tracing::warn!(
                error = %e,
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "record not finished; it will be consumed again"
            );
            false
        }
    }
}
