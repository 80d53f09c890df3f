//! Prometheus metrics of the dashboard, in a per-process registry served on `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::devices::StateCounts;

#[derive(Clone)]
pub struct DashboardMetrics {
    pub registry: Registry,
    /// `iot_dashboard_records_total{source}`: records consumed (`enriched`, `deadletter`, `raw`,
    /// `app` for the per-device-type enriched topics).
    pub records: IntCounterVec,
    /// `iot_dashboard_isolation_drops_total`: records refused by an application tab because they
    /// name another device type than their topic's.
    pub isolation_drops: IntCounter,
    /// `iot_dashboard_stream_clients`: open live streams.
    pub stream_clients: IntGauge,
    /// `iot_dashboard_registry_reloads_total{result}`: `ok`, `error`, `missing`.
    pub registry_reloads: IntCounterVec,
    /// `iot_dashboard_kafka_connected`: 1 when the last metadata request succeeded.
    pub kafka_connected: IntGauge,
    /// `iot_dashboard_assigned_partitions`: partitions the dashboard reads.
    pub assigned_partitions: IntGauge,
    /// `iot_dashboard_devices{device_type,state}`: devices seen, by `online`, `offline`, `unknown`.
    pub devices: IntGaugeVec,
}

impl DashboardMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let records = IntCounterVec::new(
            Opts::new(
                "iot_dashboard_records_total",
                "Kafka records consumed, by source",
            ),
            &["source"],
        )
        .expect("valid metric");
        let isolation_drops = IntCounter::new(
            "iot_dashboard_isolation_drops_total",
            "Records refused by an application tab because they name another device type",
        )
        .expect("valid metric");
        let stream_clients =
            IntGauge::new("iot_dashboard_stream_clients", "Open live streams (SSE)")
                .expect("valid metric");
        let registry_reloads = IntCounterVec::new(
            Opts::new(
                "iot_dashboard_registry_reloads_total",
                "Registry file reloads by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let kafka_connected = IntGauge::new(
            "iot_dashboard_kafka_connected",
            "1 when the last Kafka metadata request succeeded",
        )
        .expect("valid metric");
        let assigned_partitions = IntGauge::new(
            "iot_dashboard_assigned_partitions",
            "Kafka partitions the dashboard reads",
        )
        .expect("valid metric");
        let devices = IntGaugeVec::new(
            Opts::new(
                "iot_dashboard_devices",
                "Devices seen on the enriched topic, by device type and state",
            ),
            &["device_type", "state"],
        )
        .expect("valid metric");
        for m in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(isolation_drops.clone()),
            Box::new(stream_clients.clone()),
            Box::new(registry_reloads.clone()),
            Box::new(kafka_connected.clone()),
            Box::new(assigned_partitions.clone()),
            Box::new(devices.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Self {
            registry,
            records,
            isolation_drops,
            stream_clients,
            registry_reloads,
            kafka_connected,
            assigned_partitions,
            devices,
        }
    }

    /// Sets `iot_dashboard_devices` from the current counts (types no longer seen are removed).
    pub fn set_devices<'a>(
        &self,
        by_type: impl IntoIterator<Item = (&'a String, &'a StateCounts)>,
    ) {
        self.devices.reset();
        for (device_type, c) in by_type {
            for (state, n) in [
                ("online", c.online),
                ("offline", c.offline),
                ("unknown", c.unknown),
            ] {
                self.devices
                    .with_label_values(&[device_type.as_str(), state])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Default for DashboardMetrics {
    fn default() -> Self {
        Self::new()
    }
}
