//! The operator's Prometheus metrics, registered in its own registry (served on `/metrics`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by kind and result (`ok`, `error`, `invalid`).
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// Reconcile errors by kind and category (`kube`, `kafka`, `internal`).
    pub errors: IntCounterVec,
    /// Enrichment replicas the scaling policy asks for, per device type.
    pub desired_replicas: IntGaugeVec,
    /// Unprocessed messages in the raw topic, per device type.
    pub consumer_lag: IntGaugeVec,
    /// Registry ConfigMap writes.
    pub registry_updates: IntCounterVec,
    /// Consumer-lag readings of autoscaled DeviceTypes by result (`ok`, `error`).
    pub lag_reads: IntCounterVec,
    /// Size of the registry last built, by encoding (`gzip`: what the ConfigMap holds, `json`).
    pub registry_bytes: IntGaugeVec,
    /// Most compressed bytes the registry ConfigMap may hold.
    pub registry_limit_bytes: IntGauge,
    /// Registries not written, by reason (`too_large`: refused before writing, `api`: the API
    /// server refused or failed the write).
    pub registry_write_failures: IntCounterVec,
    /// 1 when the registry ConfigMap holds the registry of the current objects, else 0.
    pub registry_up_to_date: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "iot_operator_reconciles_total",
                "Reconciles by kind and result",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "iot_operator_reconcile_duration_seconds",
                "Duration of one reconcile",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "iot_operator_reconcile_errors_total",
                "Reconcile errors by kind and category",
            ),
            &["kind", "category"],
        )
        .expect("valid metric");
        let desired_replicas = IntGaugeVec::new(
            Opts::new(
                "iot_operator_desired_replicas",
                "Enrichment replicas wanted per device type",
            ),
            &["device_type"],
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "iot_operator_consumer_lag",
                "Unprocessed raw messages per device type",
            ),
            &["device_type"],
        )
        .expect("valid metric");
        let registry_updates = IntCounterVec::new(
            Opts::new(
                "iot_operator_registry_updates_total",
                "Writes of the registry ConfigMap",
            ),
            &["result"],
        )
        .expect("valid metric");
        let registry_bytes = IntGaugeVec::new(
            Opts::new(
                "iot_operator_registry_bytes",
                "Size of the registry last built, by encoding (gzip: what the ConfigMap holds)",
            ),
            &["encoding"],
        )
        .expect("valid metric");
        let registry_limit_bytes = IntGauge::new(
            "iot_operator_registry_limit_bytes",
            "Most compressed bytes the registry ConfigMap may hold",
        )
        .expect("valid metric");
        registry_limit_bytes.set(crate::registry::MAX_COMPRESSED_BYTES as i64);
        let registry_write_failures = IntCounterVec::new(
            Opts::new(
                "iot_operator_registry_write_failures_total",
                "Registries not written to the ConfigMap, by reason (too_large, api)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let registry_up_to_date = IntGauge::new(
            "iot_operator_registry_up_to_date",
            "1 when the registry ConfigMap holds the registry of the current objects",
        )
        .expect("valid metric");
        let lag_reads = IntCounterVec::new(
            Opts::new(
                "iot_operator_lag_reads_total",
                "Consumer-lag readings of autoscaled device types by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(errors.clone()),
            Box::new(desired_replicas.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(registry_updates.clone()),
            Box::new(lag_reads.clone()),
            Box::new(registry_bytes.clone()),
            Box::new(registry_limit_bytes.clone()),
            Box::new(registry_write_failures.clone()),
            Box::new(registry_up_to_date.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        // Every kind/result and kind/category pair at 0 from the start, so that `rate()` and
        // `increase()` (and the alert on reconcile errors) see the first one.
        for kind in ["DeviceType", "Application"] {
            for result in ["ok", "error", "invalid"] {
                reconciles.with_label_values(&[kind, result]);
            }
            for category in ["kube", "kafka", "internal"] {
                errors.with_label_values(&[kind, category]);
            }
        }
        for result in ["ok", "error"] {
            registry_updates.with_label_values(&[result]);
            lag_reads.with_label_values(&[result]);
        }
        for reason in ["too_large", "api"] {
            registry_write_failures.with_label_values(&[reason]);
        }
        for encoding in ["gzip", "json"] {
            registry_bytes.with_label_values(&[encoding]);
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            errors,
            desired_replicas,
            consumer_lag,
            registry_updates,
            lag_reads,
            registry_bytes,
            registry_limit_bytes,
            registry_write_failures,
            registry_up_to_date,
        }
    }
}

impl Metrics {
    /// Counts one consumer-lag reading.
    pub fn lag_read(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.lag_reads.with_label_values(&[result]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
