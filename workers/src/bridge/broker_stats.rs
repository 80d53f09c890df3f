//! What the MQTT broker says about itself: Mosquitto publishes its counters under `$SYS/`
//! (every `sys_interval`, 10 s by default, retained). The bridge subscribes to the few that tell
//! whether the broker loses or hoards messages and exports them, so that a broker that drops
//! messages (a full session queue, `max_queued_messages` / `max_queued_bytes`) is visible in
//! Prometheus and can alert, although Mosquitto has no metrics endpoint of its own.
//!
//! Brokers without `$SYS` (or an ACL that refuses it) only leave these metrics absent.

use std::sync::Mutex;

use prometheus::{IntCounter, IntGauge, Registry};

/// Total publishes the broker dropped because of in-flight or queue limits.
const DROPPED: &str = "$SYS/broker/publish/messages/dropped";
/// Messages held by the broker (retained, queued and in flight).
const STORED_COUNT: &str = "$SYS/broker/store/messages/count";
/// Payload bytes of those messages.
const STORED_BYTES: &str = "$SYS/broker/store/messages/bytes";

/// The `$SYS` topics the bridge subscribes to (at QoS 0, outside the shared group).
pub const TOPICS: [&str; 3] = [DROPPED, STORED_COUNT, STORED_BYTES];

/// Whether `topic` is one of the broker's own (`$SYS/...`), not device telemetry.
pub fn is_broker_topic(topic: &[u8]) -> bool {
    topic.starts_with(b"$SYS/")
}

/// The broker's counters as Prometheus metrics.
pub struct BrokerStats {
    /// `iot_mqtt_broker_dropped_messages_total`: the broker's drop counter, carried across broker
    /// restarts (a value below the last one means the broker started again from 0).
    dropped: IntCounter,
    stored_messages: IntGauge,
    stored_bytes: IntGauge,
    last_dropped: Mutex<Option<u64>>,
}

impl BrokerStats {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let dropped = IntCounter::new(
            "iot_mqtt_broker_dropped_messages_total",
            "Publishes the MQTT broker dropped (queue or in-flight limits), from its $SYS counter",
        )?;
        let stored_messages = IntGauge::new(
            "iot_mqtt_broker_stored_messages",
            "Messages the MQTT broker holds (queued, in flight, retained), from $SYS",
        )?;
        let stored_bytes = IntGauge::new(
            "iot_mqtt_broker_stored_bytes",
            "Payload bytes of the messages the MQTT broker holds, from $SYS",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(stored_messages.clone()))?;
        registry.register(Box::new(stored_bytes.clone()))?;
        Ok(Self {
            dropped,
            stored_messages,
            stored_bytes,
            last_dropped: Mutex::new(None),
        })
    }

    /// Takes one `$SYS` message; anything unexpected is ignored (it is only a statistic).
    pub fn observe(&self, topic: &[u8], payload: &[u8]) {
        let Some(value) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            return;
        };
        match topic {
            t if t == DROPPED.as_bytes() => {
                let mut last = self.last_dropped.lock().expect("broker stats lock");
                self.dropped.inc_by(dropped_since(*last, value));
                *last = Some(value);
            }
            t if t == STORED_COUNT.as_bytes() => self.stored_messages.set(gauge(value)),
            t if t == STORED_BYTES.as_bytes() => self.stored_bytes.set(gauge(value)),
            _ => {}
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Drops to add to the counter when the broker's total goes from `last` to `now`. The first
/// value seen counts in full: it is what the broker dropped since it started, and a bridge that
/// starts after a broker incident must still show it. A smaller value means the broker restarted.
fn dropped_since(last: Option<u64>, now: u64) -> u64 {
    match last {
        Some(last) if now >= last => now - last,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str) -> f64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| {
                let m = &f.get_metric()[0];
                if m.get_counter().get_value() != 0.0 {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                }
            })
            .unwrap()
    }

    #[test]
    fn the_drop_counter_follows_the_broker_across_its_restarts() {
        assert_eq!(dropped_since(None, 7), 7);
        assert_eq!(dropped_since(Some(7), 7), 0);
        assert_eq!(dropped_since(Some(7), 12), 5);
        // Broker restarted: its counter began again at 0.
        assert_eq!(dropped_since(Some(12), 3), 3);
    }

    #[test]
    fn sys_messages_become_metrics() {
        let registry = Registry::new();
        let stats = BrokerStats::new(&registry).unwrap();
        stats.observe(DROPPED.as_bytes(), b"4");
        stats.observe(DROPPED.as_bytes(), b"10");
        stats.observe(STORED_COUNT.as_bytes(), b"1500");
        stats.observe(STORED_BYTES.as_bytes(), b" 204800 ");
        stats.observe(STORED_BYTES.as_bytes(), b"not a number");
        stats.observe(b"$SYS/broker/uptime", b"12 seconds");
        assert_eq!(
            value(&registry, "iot_mqtt_broker_dropped_messages_total"),
            10.0
        );
        assert_eq!(value(&registry, "iot_mqtt_broker_stored_messages"), 1500.0);
        assert_eq!(value(&registry, "iot_mqtt_broker_stored_bytes"), 204800.0);
        assert!(is_broker_topic(b"$SYS/broker/uptime"));
        assert!(!is_broker_topic(b"iot/breaker-001/raw"));
    }
}
