//! The Overview tab's aggregation (sans-IO): message counts and rates per stage and per device
//! type, dead letters by reason, devices online and offline, the message-flow series and the
//! recent messages, all in bounded memory.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::devices::{DeviceState, Devices, LIST_LIMIT, Observation, StateCounts};
use super::message::{self, DeadLetterEntry, MessageEntry, Parsed, Record};
use super::window::{Counter, CounterView, WINDOW_SECONDS, count_bounded};

/// Recent enriched messages kept.
pub const RECENT_MESSAGES: usize = 50;
/// Recent dead letters kept.
pub const RECENT_DEADLETTERS: usize = 30;
/// Distinct device types, event types and dead-letter reasons counted before `other`.
pub const MAX_KEYS: usize = 64;
/// Seconds of flow series in an update (the client replaces them: the last may have been partial).
pub const UPDATE_SECONDS: i64 = 3;

/// Counts of one device type.
#[derive(Clone, Debug, Default)]
struct TypeStats {
    raw: Counter,
    enriched: Counter,
    by_event: BTreeMap<String, u64>,
    out_of_range: u64,
}

/// The Overview's state.
#[derive(Clone, Debug)]
pub struct Overview {
    started: i64,
    seq: u64,
    raw: Counter,
    enriched: Counter,
    deadletter: Counter,
    types: BTreeMap<String, TypeStats>,
    reasons: BTreeMap<String, u64>,
    devices: Devices,
    messages: VecDeque<MessageEntry>,
    deadletters: VecDeque<DeadLetterEntry>,
}

/// Per-stage counters.
#[derive(Clone, Debug, Serialize)]
pub struct Stages {
    /// Bridge output: `{prefix}.{type}.raw`.
    pub raw: CounterView,
    /// Enrichment output: `{prefix}.enriched`.
    pub enriched: CounterView,
    /// `{prefix}.deadletter` (bridge and enrichment).
    pub deadletter: CounterView,
}

/// One device type's line in the Overview.
#[derive(Clone, Debug, Serialize)]
pub struct TypeView {
    pub raw: CounterView,
    pub enriched: CounterView,
    pub by_event_type: BTreeMap<String, u64>,
    pub out_of_range: u64,
    pub devices: StateCounts,
}

/// Messages per second of each stage, one value per second from `from` (Unix seconds).
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub from: i64,
    pub raw: Vec<u64>,
    pub enriched: Vec<u64>,
    pub deadletter: Vec<u64>,
}

/// The Overview as the API and the stream show it. A snapshot holds everything; an update holds
/// only the entries with `seq` above the previous update's `last_seq` and the last seconds of the
/// flow.
#[derive(Clone, Debug, Serialize)]
pub struct OverviewView {
    pub now: i64,
    pub started_at: i64,
    pub stages: Stages,
    pub device_types: BTreeMap<String, TypeView>,
    pub deadletter_reasons: BTreeMap<String, u64>,
    pub devices: StateCounts,
    /// The most recently seen devices (at most 100), by type and id.
    pub device_list: Vec<DeviceState>,
    pub flow: Flow,
    /// Newest first.
    pub messages: Vec<MessageEntry>,
    /// Newest first.
    pub deadletters: Vec<DeadLetterEntry>,
    pub last_seq: u64,
}

fn push_front_bounded<T>(list: &mut VecDeque<T>, item: T, cap: usize) {
    list.push_front(item);
    list.truncate(cap);
}

impl Overview {
    pub fn new(now_ms: i64) -> Self {
        Self {
            started: now_ms.div_euclid(1000),
            seq: 0,
            raw: Counter::default(),
            enriched: Counter::default(),
            deadletter: Counter::default(),
            types: BTreeMap::new(),
            reasons: BTreeMap::new(),
            devices: Devices::default(),
            messages: VecDeque::new(),
            deadletters: VecDeque::new(),
        }
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    fn type_stats(&mut self, device_type: &str) -> &mut TypeStats {
        let key = if self.types.contains_key(device_type) || self.types.len() < MAX_KEYS {
            device_type
        } else {
            "other"
        };
        self.types.entry(key.to_string()).or_default()
    }

    /// A record of a raw topic (the bridge's output): counted, not read.
    pub fn ingest_raw(&mut self, device_type: &str, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        self.raw.add(second, 1);
        self.type_stats(device_type).raw.add(second, 1);
    }

    /// A record of `{prefix}.enriched`.
    pub fn ingest_enriched(&mut self, record: &Record, parsed: &Parsed, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        self.enriched.add(second, 1);
        let device_type = parsed.device_type.as_deref().unwrap_or("unknown");
        let event = parsed.event_type.as_deref().unwrap_or("unknown");
        let stats = self.type_stats(device_type);
        stats.enriched.add(second, 1);
        count_bounded(&mut stats.by_event, event, MAX_KEYS, 1);
        if parsed.within_ranges == Some(false) {
            stats.out_of_range += 1;
        }
        if let Some(id) = &parsed.device_id {
            let what = match parsed.online {
                Some(online) => Observation::Status {
                    online,
                    reason: parsed.status_reason.as_deref(),
                },
                None => Observation::Data,
            };
            self.devices.observe(id, device_type, what, now_ms);
        }
        self.seq += 1;
        let entry = MessageEntry::new(self.seq, now_ms, record, parsed);
        push_front_bounded(&mut self.messages, entry, RECENT_MESSAGES);
    }

    /// A record of `{prefix}.deadletter`.
    pub fn ingest_deadletter(&mut self, record: &Record, now_ms: i64) {
        self.deadletter.add(now_ms.div_euclid(1000), 1);
        count_bounded(
            &mut self.reasons,
            &message::deadletter_reason(record),
            MAX_KEYS,
            1,
        );
        self.seq += 1;
        let entry = DeadLetterEntry::new(self.seq, now_ms, record);
        push_front_bounded(&mut self.deadletters, entry, RECENT_DEADLETTERS);
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// A snapshot (`since: None`) or the update after `since`.
    pub fn view(&self, now_ms: i64, since: Option<u64>) -> OverviewView {
        let now = now_ms.div_euclid(1000);
        let from = match since {
            None => now - WINDOW_SECONDS as i64 + 1,
            Some(_) => now - UPDATE_SECONDS + 1,
        };
        let after = since.unwrap_or(0);
        let by_type = self.devices.counts_by_type();
        OverviewView {
            now: now_ms,
            started_at: self.started * 1000,
            stages: Stages {
                raw: self.raw.summary(now, self.started),
                enriched: self.enriched.summary(now, self.started),
                deadletter: self.deadletter.summary(now, self.started),
            },
            device_types: self
                .types
                .iter()
                .map(|(id, s)| {
                    let view = TypeView {
                        raw: s.raw.summary(now, self.started),
                        enriched: s.enriched.summary(now, self.started),
                        by_event_type: s.by_event.clone(),
                        out_of_range: s.out_of_range,
                        devices: by_type.get(id).copied().unwrap_or_default(),
                    };
                    (id.clone(), view)
                })
                .collect(),
            deadletter_reasons: self.reasons.clone(),
            devices: self.devices.counts(),
            device_list: self.devices.list(LIST_LIMIT),
            flow: Flow {
                from,
                raw: self.raw.series(from, now),
                enriched: self.enriched.series(from, now),
                deadletter: self.deadletter.series(from, now),
            },
            messages: self
                .messages
                .iter()
                .take_while(|m| m.seq > after)
                .cloned()
                .collect(),
            deadletters: self
                .deadletters
                .iter()
                .take_while(|m| m.seq > after)
                .cloned()
                .collect(),
            last_seq: self.seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::message::parse;

    fn record(topic: &str, payload: &str) -> Record {
        Record {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            ..Record::default()
        }
    }

    fn enriched(o: &mut Overview, payload: &str, now_ms: i64) {
        let r = record("p.enriched", payload);
        o.ingest_enriched(&r, &parse(&r.payload), now_ms);
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn counts_rates_and_flow_per_stage_and_type() {
        let mut o = Overview::new(T0);
        for i in 0..20 {
            let t = T0 + i * 500; // two per second for ten seconds
            o.ingest_raw("smart_breaker", t);
            enriched(
                &mut o,
                r#"{"device_id":"b-1","device_type":"smart_breaker","event_type":"telemetry","data_quality":{"within_ranges":false}}"#,
                t,
            );
        }
        enriched(
            &mut o,
            r#"{"device_id":"m-1","device_type":"smart_meter","event_type":"status","status":{"online":false}}"#,
            T0 + 9_000,
        );
        let mut dl = record("p.deadletter", "{");
        dl.reason = Some("not_json".into());
        o.ingest_deadletter(&dl, T0 + 9_500);
        o.ingest_deadletter(&record("p.deadletter", "x"), T0 + 9_600);

        let v = o.view(T0 + 10_000, None);
        assert_eq!(v.stages.raw.total, 20);
        assert_eq!(v.stages.raw.rate, 2.0);
        assert_eq!(v.stages.enriched.total, 21);
        assert_eq!(v.stages.deadletter.total, 2);
        let b = &v.device_types["smart_breaker"];
        assert_eq!(
            (b.raw.total, b.enriched.total, b.out_of_range),
            (20, 20, 20)
        );
        assert_eq!(b.by_event_type["telemetry"], 20);
        assert_eq!(v.device_types["smart_meter"].by_event_type["status"], 1);
        assert_eq!(v.deadletter_reasons["not_json"], 1);
        assert_eq!(v.deadletter_reasons["unknown"], 1);
        assert_eq!(
            (v.devices.total, v.devices.online, v.devices.offline),
            (2, 1, 1)
        );
        assert_eq!(b.devices.online, 1);
        // Flow: one value per second of the window, the last ones hold the messages.
        assert_eq!(v.flow.enriched.len(), WINDOW_SECONDS);
        assert_eq!(
            v.flow.from + WINDOW_SECONDS as i64 - 1,
            (T0 + 10_000) / 1000
        );
        assert_eq!(v.flow.raw[WINDOW_SECONDS - 2], 2);
        assert_eq!(v.flow.enriched[WINDOW_SECONDS - 2], 3);
        assert_eq!(v.flow.deadletter[WINDOW_SECONDS - 2], 2);
    }

    #[test]
    fn recent_lists_are_newest_first_bounded_and_incremental() {
        let mut o = Overview::new(T0);
        for i in 0..(RECENT_MESSAGES as i64 + 10) {
            enriched(&mut o, &format!(r#"{{"device_id":"d-{i}"}}"#), T0 + i);
        }
        let v = o.view(T0 + 1_000, None);
        assert_eq!(v.messages.len(), RECENT_MESSAGES);
        assert_eq!(v.messages[0].device_id.as_deref(), Some("d-59"));
        assert_eq!(v.last_seq, 60);
        let before = v.last_seq;
        enriched(&mut o, r#"{"device_id":"new"}"#, T0 + 2_000);
        let u = o.view(T0 + 2_000, Some(before));
        let ids: Vec<_> = u.messages.iter().map(|m| m.device_id.as_deref()).collect();
        assert_eq!(ids, [Some("new")]);
        assert!(u.deadletters.is_empty());
        assert_eq!(u.flow.enriched.len(), UPDATE_SECONDS as usize);
        assert_eq!(o.view(T0 + 2_000, Some(u.last_seq)).messages.len(), 0);
    }

    #[test]
    fn untrusted_keys_cannot_grow_the_maps() {
        let mut o = Overview::new(T0);
        for i in 0..(MAX_KEYS + 20) {
            enriched(
                &mut o,
                &format!(r#"{{"device_type":"t{i}","event_type":"e{i}"}}"#),
                T0,
            );
            let mut dl = record("p.deadletter", "");
            dl.reason = Some(format!("r{i}"));
            o.ingest_deadletter(&dl, T0);
        }
        let v = o.view(T0, None);
        assert!(v.device_types.len() <= MAX_KEYS + 1);
        assert!(v.deadletter_reasons.len() <= MAX_KEYS + 1);
        assert_eq!(v.device_types["other"].enriched.total, 20);
    }
}
