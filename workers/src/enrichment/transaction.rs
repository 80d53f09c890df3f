//! The Kafka transaction of the exactly-once enrichment: one transaction of outputs and offsets
//! ([`transact`]), what its failure means ([`TxnFailure`]), and a resumable abort ([`abort`]).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::task::block_in_place;
use tokio::time::Instant;

use super::partition_list;
use crate::kafka::{self, DeliveryError, OutRecord};

/// Timeout of the blocking transaction calls.
pub(super) const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a transaction that fails transiently before its records are consumed again. The
/// first transaction after an abort that followed a refusal may fail at once (librdkafka purges
/// it while the producer's epoch is bumped); the next one goes through.
pub(super) const TRANSIENT_ATTEMPTS: u32 = 3;

pub(super) fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(100) * attempt
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

/// Why a transaction failed.
pub(super) enum TxnFailure {
    /// The producer is unusable (fenced, or a fatal idempotence error).
    Fatal(String),
    /// Kafka refused an output for good, or its topic is missing.
    Refused(DeliveryError),
    /// Anything else (a broker restart, a rebalance): abort and try again.
    Transient(KafkaError),
}

/// A transaction error: fatal, or transient.
fn txn_failure(producer: &FutureProducer, e: KafkaError) -> TxnFailure {
    if is_fatal(&e) {
        return TxnFailure::Fatal(e.to_string());
    }
    match producer.client().fatal_error() {
        Some((code, reason)) => TxnFailure::Fatal(format!("{code:?}: {reason}")),
        None => TxnFailure::Transient(e),
    }
}

/// A failed produce of an output to `topic`.
fn produce_failure(producer: &FutureProducer, topic: &str, e: KafkaError) -> TxnFailure {
    if is_fatal(&e) {
        return TxnFailure::Fatal(e.to_string());
    }
    match kafka::classify(producer, topic, &e) {
        Some(DeliveryError::Fatal(reason)) => TxnFailure::Fatal(reason),
        Some(refused @ (DeliveryError::Permanent(_) | DeliveryError::TopicMissing(_))) => {
            TxnFailure::Refused(refused)
        }
        Some(DeliveryError::Aborted) | None => TxnFailure::Transient(e),
    }
}

/// Aborts the open transaction. An abort that times out waiting for messages in flight is
/// retriable (librdkafka goes on in the background; they expire after `message.timeout.ms`), so
/// it is resumed a few times before it counts as fatal.
pub(super) fn abort(producer: &FutureProducer) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1.. {
        match block_in_place(|| producer.abort_transaction(TXN_CALL_TIMEOUT)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "transaction abort not complete yet; resuming it");
            }
            Err(e) => return Err(e).context("aborting the transaction"),
        }
    }
    unreachable!("the loop returns")
}

/// One transaction: the outputs of every record, then the records' offsets.
pub(super) async fn transact<'a, C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    producer: &FutureProducer,
    outputs: impl Iterator<Item = (&'a OwnedMessage, &'a [OutRecord])>,
) -> Result<(), TxnFailure> {
    block_in_place(|| producer.begin_transaction()).map_err(|e| txn_failure(producer, e))?;
    let mut pending = Vec::new();
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (m, records) in outputs {
        for r in records {
            let future = kafka::enqueue(producer, r)
                .await
                .map_err(|e| produce_failure(producer, &r.topic, e))?;
            pending.push((r.topic.as_str(), future));
        }
        let slot = next
            .entry((m.topic().to_string(), m.partition()))
            .or_insert(0);
        *slot = (*slot).max(m.offset() + 1);
    }
    // In the order they complete: the refusal that failed the transaction comes before the
    // purge of what was still queued, which it causes. A transient failure waits a moment for a
    // refusal or a fatal error behind it, which decide what happens next.
    let mut pending: FuturesUnordered<_> = pending
        .into_iter()
        .map(|(topic, delivery)| async move { (topic, delivery.await) })
        .collect();
    let mut transient: Option<(TxnFailure, Instant)> = None;
    loop {
        let next = match &transient {
            None => pending.next().await,
            Some((_, deadline)) => match tokio::time::timeout_at(*deadline, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((topic, result)) = next else { break };
        let failure = match result {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => produce_failure(producer, topic, e),
            Err(_) => TxnFailure::Transient(KafkaError::Canceled),
        };
        match failure {
            TxnFailure::Transient(_) => {
                transient.get_or_insert((failure, Instant::now() + Duration::from_secs(1)));
            }
            decisive => return Err(decisive),
        }
    }
    if let Some((failure, _)) = transient {
        return Err(failure);
    }
    let offsets: Vec<((String, i32), i64)> = next.into_iter().collect();
    let group = consumer
        .group_metadata()
        .ok_or(TxnFailure::Transient(KafkaError::Canceled))?;
    block_in_place(|| {
        producer.send_offsets_to_transaction(&partition_list(&offsets), &group, TXN_CALL_TIMEOUT)
    })
    .map_err(|e| txn_failure(producer, e))?;
    block_in_place(|| producer.commit_transaction(TXN_CALL_TIMEOUT))
        .map_err(|e| txn_failure(producer, e))
}
