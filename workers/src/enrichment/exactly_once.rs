//! Exactly-once enrichment: read-process-write in Kafka transactions. A batch of records is
//! enriched, its outputs produced and its consumer offsets sent, all in one transaction; a crash
//! or error aborts the transaction and the batch is consumed again, so `read_committed` readers of
//! the enriched topics see every record exactly once. Zombie instances are fenced by the
//! transactional id (stable per replica) and by the consumer group generation (KIP-447).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Offset};
use tokio::task::block_in_place;

use super::{
    Prepared, Setup, account, consumer_config, follow_registry, partition_list, prepare,
    raw_topics, subscribe,
};
use crate::clock;
use crate::kafka;

/// Timeout of the blocking transaction calls.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

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
    let consumer: TxnConsumer = consumer_config(&setup)
        .create_with_context(TxnContext {
            assigned: assigned.clone(),
        })
        .context("creating the Kafka consumer")?;
    let txn_id = transactional_id(&setup);
    let producer: FutureProducer =
        kafka::producer_config(&setup.args.kafka, &format!("{}-producer", setup.group))
            .set("transactional.id", &txn_id)
            .set("transaction.timeout.ms", "60000")
            .create()
            .context("creating the transactional Kafka producer")?;
    block_in_place(|| producer.init_transactions(TXN_CALL_TIMEOUT))
        .with_context(|| format!("initialising transactions as {txn_id}"))?;
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
    tracing::info!(group = %setup.group, %txn_id, ?topics, "enrichment starting (exactly-once)");

    let max_records = setup.args.transaction_max_records;
    let max_wait = Duration::from_millis(setup.args.transaction_max_ms);
    let stop = setup.life.stop.clone();
    // Wakes the loop while no record arrives, so that readiness follows the assignment.
    let mut idle = tokio::time::interval(Duration::from_millis(500));
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ready = assigned.load(Ordering::Relaxed) && reachable.load(Ordering::Relaxed);
        setup.readiness.set(ready);
        setup.metrics.connected.set(i64::from(ready));
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = idle.tick() => continue,
            Ok(()) = setup.catalog.changed() => {
                follow_registry(&mut setup, &consumer, &mut topics)?;
                continue;
            }
            received = consumer.recv() => match received {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    setup.readiness.set(false);
                    continue;
                }
            },
        };
        // Collect a batch: up to `max_records`, for at most `max_wait`.
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_wait;
        while batch.len() < max_records {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                received = consumer.recv() => match received {
                    Ok(m) => batch.push(m.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "consume error");
                        break;
                    }
                },
            }
        }
        setup.metrics.in_flight.set(batch.len() as i64);
        match transact(&setup, &consumer, &producer, &batch).await {
            Ok(done) => {
                for p in &done {
                    setup.metrics.received.with_label_values(&[&p.kind]).inc();
                    account(&setup.metrics, &p.result, &p.kind);
                }
            }
            Err(e) if is_fatal(&e) => {
                return Err(e).context("fatal transaction error (fenced by a newer instance?)");
            }
            Err(e) => {
                setup.metrics.produce_retries.inc();
                tracing::warn!(error = %e, records = batch.len(), "transaction failed; aborting and consuming the batch again");
                if let Err(e) = block_in_place(|| producer.abort_transaction(TXN_CALL_TIMEOUT)) {
                    return Err(e).context("aborting the transaction");
                }
                rewind(&consumer, &batch);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        setup.metrics.in_flight.set(0);
    }
    // Nothing is in flight between transactions: a committed one is complete, an open one was
    // aborted above.
    setup.readiness.set(false);
    tracing::info!("enrichment stopped");
    Ok(())
}

/// One transaction: outputs of every record of the batch, then the batch's offsets.
async fn transact(
    setup: &Setup,
    consumer: &TxnConsumer,
    producer: &FutureProducer,
    batch: &[OwnedMessage],
) -> Result<Vec<Prepared>, KafkaError> {
    block_in_place(|| producer.begin_transaction())?;
    let catalog = setup.catalog.borrow().clone();
    let prefix = &setup.args.kafka.topic_prefix;
    let mut prepared = Vec::with_capacity(batch.len());
    let mut pending = Vec::new();
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
        let p = prepare(
            m,
            &catalog,
            prefix,
            setup.args.all_types_topic,
            clock::now(),
        );
        for r in &p.records {
            pending.push(kafka::enqueue(producer, r).await?);
        }
        prepared.push(p);
        let slot = next
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(0);
        *slot = (*slot).max(m.offset() + 1);
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    let offsets: Vec<((String, i32), i64)> = next.into_iter().collect();
    let group = consumer.group_metadata().ok_or(KafkaError::Canceled)?;
    block_in_place(|| {
        producer.send_offsets_to_transaction(&partition_list(&offsets), &group, TXN_CALL_TIMEOUT)
    })?;
    block_in_place(|| producer.commit_transaction(TXN_CALL_TIMEOUT))?;
    Ok(prepared)
}

/// After an abort: consume the batch again from its first record in each partition.
fn rewind(consumer: &TxnConsumer, batch: &[OwnedMessage]) {
    let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
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
