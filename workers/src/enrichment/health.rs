//! What makes the enrichment unready besides its connections ([`Health`]: records whose dead
//! letter cannot be written, a fatal producer error) and the metrics that go with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_process::admin::Readiness;
use prometheus::{IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

/// The enrichment's metrics besides [`crate::metrics::PipelineMetrics`], in the same registry.
#[derive(Clone)]
pub struct EnrichmentMetrics {
    /// `iot_enrichment_deadletter_failures_total`: dead letters Kafka refused or could not take
    /// (topic missing); their records stay unfinished and are tried again.
    pub deadletter_failures: IntCounter,
    /// `iot_enrichment_blocked_records`: records held back because their dead letter cannot be
    /// written (not ready while above 0).
    pub blocked: IntGauge,
    /// `iot_enrichment_outputs_retried_alone_total`: outputs produced again in a batch of their
    /// own after Kafka refused their batch for good.
    pub retried_alone: IntCounter,
    /// `iot_enrichment_in_flight_bytes`: bytes of the records in flight (see [`cost`]).
    pub in_flight_bytes: IntGauge,
    /// `iot_enrichment_in_flight_bytes_peak`: the most bytes in flight at once since the start.
    pub in_flight_bytes_peak: IntGauge,
    /// `iot_enrichment_in_flight_bytes_limit`: the byte budget.
    pub in_flight_bytes_limit: IntGauge,
}

impl EnrichmentMetrics {
    pub fn new(registry: &prometheus::Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        Self {
            deadletter_failures: counter(
                "iot_enrichment_deadletter_failures_total",
                "Dead letters Kafka refused or could not take; their records are tried again",
            ),
            blocked: gauge(
                "iot_enrichment_blocked_records",
                "Records held back because their dead letter cannot be written",
            ),
            retried_alone: counter(
                "iot_enrichment_outputs_retried_alone_total",
                "Outputs produced again alone after Kafka refused their batch for good",
            ),
            in_flight_bytes: gauge(
                "iot_enrichment_in_flight_bytes",
                "Bytes of the records in flight (raw payloads plus produced outputs)",
            ),
            in_flight_bytes_peak: gauge(
                "iot_enrichment_in_flight_bytes_peak",
                "The most bytes in flight at once since the start",
            ),
            in_flight_bytes_limit: gauge(
                "iot_enrichment_in_flight_bytes_limit",
                "The in-flight byte budget",
            ),
        }
    }
}

/// What makes the enrichment unready besides its connections: records whose dead letter cannot
/// be written (their partition cannot advance), and a fatal producer error (the process ends).
#[derive(Clone)]
pub struct Health {
    blocked: Arc<AtomicUsize>,
    fatal: Arc<Mutex<Option<String>>>,
    /// Cancelled on the first fatal error.
    pub fatal_raised: CancellationToken,
    pub metrics: EnrichmentMetrics,
    readiness: Readiness,
}

impl Health {
    pub fn new(readiness: Readiness, metrics: EnrichmentMetrics) -> Self {
        Self {
            blocked: Arc::default(),
            fatal: Arc::default(),
            fatal_raised: CancellationToken::new(),
            metrics,
            readiness,
        }
    }

    /// A record's dead letter cannot be written: not ready until it is.
    pub fn block(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        self.metrics.blocked.inc();
        self.readiness.set(false);
    }

    /// A blocked record's dead letter was written (or the record was given up at shutdown).
    pub fn unblock(&self) {
        self.blocked.fetch_sub(1, Ordering::Relaxed);
        self.metrics.blocked.dec();
    }

    /// Records a fatal producer error (the first one is kept) and makes the worker unready.
    pub fn fatal(&self, error: String) {
        let mut fatal = self.fatal.lock().expect("fatal lock");
        if fatal.is_none() {
            tracing::error!(%error, "fatal Kafka producer error: not ready, the process ends");
            *fatal = Some(error);
        }
        self.readiness.set(false);
        self.fatal_raised.cancel();
    }

    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }

    /// Ready: `connected` (assigned partitions, broker reachable), nothing blocked, no fatal error.
    pub fn ready(&self, connected: bool) -> bool {
        connected && self.blocked.load(Ordering::Relaxed) == 0 && !self.fatal_raised.is_cancelled()
    }
}

/// Capped exponential backoff of a dead letter that cannot be written.
pub fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(BLOCKED_BACKOFF_MAX)
}

/// First and longest wait before a dead letter that could not be written is tried again.
pub const BLOCKED_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BLOCKED_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_records_and_fatal_errors_make_the_worker_unready() {
        let readiness = Readiness::default();
        let health = Health::new(
            readiness.clone(),
            EnrichmentMetrics::new(&prometheus::Registry::new()),
        );
        assert!(health.ready(true));
        assert!(!health.ready(false), "not connected");
        health.block();
        health.block();
        assert!(!health.ready(true) && !readiness.get());
        assert_eq!(health.metrics.blocked.get(), 2);
        health.unblock();
        assert!(!health.ready(true), "one still blocked");
        health.unblock();
        assert!(health.ready(true));
        health.fatal("fenced".into());
        health.fatal("later".into());
        assert!(!health.ready(true) && !readiness.get());
        assert!(health.fatal_raised.is_cancelled());
        assert_eq!(
            health.fatal_error().as_deref(),
            Some("fenced"),
            "the first kept"
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let mut b = BLOCKED_BACKOFF_FIRST;
        let mut seen = vec![b];
        for _ in 0..8 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[..4], [1, 2, 4, 8].map(Duration::from_secs));
        assert_eq!(*seen.last().unwrap(), BLOCKED_BACKOFF_MAX);
    }
}
