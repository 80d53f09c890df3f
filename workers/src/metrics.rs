//! Prometheus metrics of the data-path workers, registered in a per-process registry served on
//! `/metrics` (no globals). Names are `iot_{role}_...`, e.g. `iot_bridge_messages_received_total`.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Buckets of the end-to-end latency histogram, in seconds (1 ms .. 60 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Metrics of a worker that carries messages into Kafka (bridge, enrichment).
#[derive(Clone)]
pub struct PipelineMetrics {
    pub registry: Registry,
    /// `iot_{role}_messages_received_total{kind}`: messages taken in.
    pub received: IntCounterVec,
    /// `iot_{role}_messages_produced_total{device_type,kind}`: messages Kafka acknowledged on
    /// their destination topic(s).
    pub produced: IntCounterVec,
    /// `iot_{role}_messages_deadlettered_total{reason}`: messages Kafka acknowledged on the
    /// dead-letter topic.
    pub deadlettered: IntCounterVec,
    /// `iot_{role}_in_flight_messages`: taken in, not yet acknowledged by Kafka.
    pub in_flight: IntGauge,
    /// `iot_{role}_end_to_end_latency_seconds`: from the device's `timestamp` to Kafka's
    /// acknowledgement of this stage's produce.
    pub latency: Histogram,
    /// `iot_{role}_produce_retries_total`: produces that failed and were tried again.
    pub produce_retries: IntCounter,
    /// `iot_{role}_registry_reloads_total{result}`: registry file reloads (`ok`, `error`).
    pub registry_reloads: IntCounterVec,
    /// `iot_{role}_connected`: 1 when connected to its brokers (the readiness condition).
    pub connected: IntGauge,
}

impl PipelineMetrics {
    pub fn new(role: &str) -> Self {
        let registry = Registry::new();
        let name = |n: &str| format!("iot_{role}_{n}");
        let received = IntCounterVec::new(
            Opts::new(
                name("messages_received_total"),
                "Messages taken in, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let produced = IntCounterVec::new(
            Opts::new(
                name("messages_produced_total"),
                "Messages acknowledged by Kafka on their destination topics",
            ),
            &["device_type", "kind"],
        )
        .expect("valid metric");
        let deadlettered = IntCounterVec::new(
            Opts::new(
                name("messages_deadlettered_total"),
                "Messages acknowledged by Kafka on the dead-letter topic, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            name("in_flight_messages"),
            "Messages taken in and not yet acknowledged by Kafka",
        )
        .expect("valid metric");
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                name("end_to_end_latency_seconds"),
                "Seconds from the device timestamp to Kafka's acknowledgement of this stage",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let produce_retries = IntCounter::new(
            name("produce_retries_total"),
            "Kafka produces that failed and were tried again",
        )
        .expect("valid metric");
        let registry_reloads = IntCounterVec::new(
            Opts::new(
                name("registry_reloads_total"),
                "Registry file reloads by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let connected = IntGauge::new(name("connected"), "1 when connected to the brokers")
            .expect("valid metric");
        for m in [
            Box::new(received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(produced.clone()),
            Box::new(deadlettered.clone()),
            Box::new(in_flight.clone()),
            Box::new(latency.clone()),
            Box::new(produce_retries.clone()),
            Box::new(registry_reloads.clone()),
            Box::new(connected.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        // Export every dead-letter reason and message kind at 0 from the start, so alerts on
        // their rate see the first one.
        for reason in crate::route::Reason::ALL {
            deadlettered.with_label_values(&[reason.as_str()]);
        }
        for kind in crate::route::Kind::ALL {
            received.with_label_values(&[kind.as_str()]);
        }
        for result in ["ok", "error"] {
            registry_reloads.with_label_values(&[result]);
        }
        Self {
            registry,
            received,
            produced,
            deadlettered,
            in_flight,
            latency,
            produce_retries,
            registry_reloads,
            connected,
        }
    }
}

/// Metrics of the simulator.
#[derive(Clone)]
pub struct SimulatorMetrics {
    pub registry: Registry,
    /// `iot_simulator_messages_published_total{device_type,kind}`: QoS 1 publishes sent.
    pub published: IntCounterVec,
    /// `iot_simulator_messages_acknowledged_total{device_type}`: PUBACKs from the broker.
    pub acknowledged: IntCounterVec,
    /// `iot_simulator_publish_errors_total`: connection errors (publishes are retried).
    pub errors: IntCounter,
    /// `iot_simulator_devices_connected`: devices with a live MQTT connection.
    pub connected: IntGauge,
}

impl SimulatorMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let published = IntCounterVec::new(
            Opts::new(
                "iot_simulator_messages_published_total",
                "QoS 1 publishes sent by simulated devices",
            ),
            &["device_type", "kind"],
        )
        .expect("valid metric");
        let acknowledged = IntCounterVec::new(
            Opts::new(
                "iot_simulator_messages_acknowledged_total",
                "Publishes acknowledged by the MQTT broker (PUBACK)",
            ),
            &["device_type"],
        )
        .expect("valid metric");
        let errors = IntCounter::new(
            "iot_simulator_publish_errors_total",
            "MQTT connection errors of simulated devices",
        )
        .expect("valid metric");
        let connected = IntGauge::new(
            "iot_simulator_devices_connected",
            "Simulated devices with a live MQTT connection",
        )
        .expect("valid metric");
        registry
            .register(Box::new(published.clone()))
            .expect("unique");
        registry
            .register(Box::new(acknowledged.clone()))
            .expect("unique");
        registry.register(Box::new(errors.clone())).expect("unique");
        registry
            .register(Box::new(connected.clone()))
            .expect("unique");
        Self {
            registry,
            published,
            acknowledged,
            errors,
            connected,
        }
    }
}

impl Default for SimulatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn names_carry_the_role() {
        let m = PipelineMetrics::new("bridge");
        m.received.with_label_values(&["raw"]).inc();
        m.deadlettered.with_label_values(&["not_json"]).inc();
        m.latency.observe(0.02);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("iot_bridge_messages_received_total{kind=\"raw\"} 1"));
        assert!(text.contains("iot_bridge_messages_deadlettered_total{reason=\"not_json\"} 1"));
        assert!(text.contains("iot_bridge_end_to_end_latency_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("iot_bridge_in_flight_messages 0"));
        // Reasons not seen yet are exported at 0, so rate() sees the first dead letter.
        assert!(text.contains("iot_bridge_messages_deadlettered_total{reason=\"oversize\"} 0"));
    }
}
