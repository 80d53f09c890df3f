//! Devices seen on the enriched topics and whether they are online (sans-IO).
//!
//! A status message (`event_type: status`) says so explicitly: `status.online`, `false` in the
//! last will the broker publishes when a device vanishes. Telemetry or trends from a device show it
//! is online again. The bridge keys records by device id, so one device's messages stay in order.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Devices kept at most; the least recently seen are forgotten first.
pub const MAX_DEVICES: usize = 10_000;
/// Devices listed in a view (the most recently seen).
pub const LIST_LIMIT: usize = 100;

/// What one message says about its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation<'a> {
    /// A status message.
    Status {
        online: bool,
        reason: Option<&'a str>,
    },
    /// Any other message (telemetry, trends, a status message without `online`).
    Data,
}

/// One device as the dashboard knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceState {
    pub id: String,
    pub device_type: String,
    /// `None` until a status message or data says.
    pub online: Option<bool>,
    /// Last message of any kind (Unix milliseconds).
    pub last_seen: i64,
    /// When `online` last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Why it went offline, e.g. `connection_lost` (last will).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub messages: u64,
}

/// Online, offline and not yet known devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    pub unknown: u64,
}

impl StateCounts {
    fn add(&mut self, online: Option<bool>) {
        self.total += 1;
        match online {
            Some(true) => self.online += 1,
            Some(false) => self.offline += 1,
            None => self.unknown += 1,
        }
    }
}

/// The devices seen, bounded by a capacity.
#[derive(Clone, Debug)]
pub struct Devices {
    map: HashMap<String, DeviceState>,
    capacity: usize,
}

impl Default for Devices {
    fn default() -> Self {
        Self::with_capacity(MAX_DEVICES)
    }
}

impl Devices {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&DeviceState> {
        self.map.get(id)
    }

    pub fn observe(&mut self, id: &str, device_type: &str, what: Observation<'_>, now_ms: i64) {
        if !self.map.contains_key(id) && self.map.len() >= self.capacity {
            self.forget_oldest();
        }
        let d = self
            .map
            .entry(id.to_string())
            .or_insert_with(|| DeviceState {
                id: id.to_string(),
                device_type: device_type.to_string(),
                online: None,
                last_seen: now_ms,
                since: None,
                reason: None,
                messages: 0,
            });
        d.messages += 1;
        d.last_seen = now_ms;
        d.device_type = device_type.to_string();
        let (online, reason) = match what {
            Observation::Status { online, reason } => (online, reason),
            Observation::Data => (true, None),
        };
        if d.online != Some(online) {
            d.online = Some(online);
            d.since = Some(now_ms);
        }
        d.reason = if online {
            None
        } else {
            reason.map(str::to_string)
        };
    }

    /// Forgets the least recently seen tenth (at least one), so that eviction is rare.
    fn forget_oldest(&mut self) {
        let mut seen: Vec<(i64, String)> = self
            .map
            .values()
            .map(|d| (d.last_seen, d.id.clone()))
            .collect();
        seen.sort_unstable();
        let n = (self.capacity / 10).max(1);
        for (_, id) in seen.into_iter().take(n) {
            self.map.remove(&id);
        }
    }

    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for d in self.map.values() {
            c.add(d.online);
        }
        c
    }

    pub fn counts_by_type(&self) -> BTreeMap<String, StateCounts> {
        let mut out: BTreeMap<String, StateCounts> = BTreeMap::new();
        for d in self.map.values() {
            out.entry(d.device_type.clone()).or_default().add(d.online);
        }
        out
    }

    /// The `limit` most recently seen devices, sorted by type and id for a stable table.
    pub fn list(&self, limit: usize) -> Vec<DeviceState> {
        let mut recent: Vec<&DeviceState> = self.map.values().collect();
        recent.sort_unstable_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.id.cmp(&b.id)));
        recent.truncate(limit);
        let mut out: Vec<DeviceState> = recent.into_iter().cloned().collect();
        out.sort_by(|a, b| (&a.device_type, &a.id).cmp(&(&b.device_type, &b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_and_the_last_will_set_the_state() {
        let mut d = Devices::default();
        d.observe("b-1", "smart_breaker", Observation::Data, 1_000);
        assert_eq!(d.get("b-1").unwrap().online, Some(true));
        d.observe(
            "b-1",
            "smart_breaker",
            Observation::Status {
                online: false,
                reason: Some("connection_lost"),
            },
            2_000,
        );
        let b = d.get("b-1").unwrap();
        assert_eq!(
            (b.online, b.since, b.reason.as_deref(), b.messages),
            (Some(false), Some(2_000), Some("connection_lost"), 2)
        );
        // Back: data shows it online again; `since` moves only on a change.
        d.observe("b-1", "smart_breaker", Observation::Data, 3_000);
        d.observe("b-1", "smart_breaker", Observation::Data, 4_000);
        let b = d.get("b-1").unwrap();
        assert_eq!(
            (b.online, b.since, b.reason.as_deref()),
            (Some(true), Some(3_000), None)
        );
        d.observe(
            "m-1",
            "smart_meter",
            Observation::Status {
                online: false,
                reason: None,
            },
            5_000,
        );
        assert_eq!(
            d.counts(),
            StateCounts {
                total: 2,
                online: 1,
                offline: 1,
                unknown: 0
            }
        );
        assert_eq!(d.counts_by_type()["smart_meter"].offline, 1);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let mut d = Devices::with_capacity(20);
        for i in 0..25 {
            d.observe(&format!("d-{i:02}"), "t", Observation::Data, i);
        }
        assert!(d.len() <= 20);
        assert!(d.get("d-00").is_none());
        assert!(d.get("d-24").is_some());
        let list = d.list(3);
        let ids: Vec<&str> = list.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["d-22", "d-23", "d-24"]);
    }
}
