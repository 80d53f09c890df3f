//! An application tab's aggregation (sans-IO): counts, devices, per-field ranges and per-second
//! series of the declared measurements, and the latest messages of the application's own device
//! types, in bounded memory.
//!
//! The state only ever receives records of its own device types' enriched topics (see
//! [`super::layout::Layout::classify`]); [`AppState::ingest`] also refuses a record whose payload
//! names another device type, so that a misrouted message can never reach the tab's clients.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::devices::{DeviceState, Devices, LIST_LIMIT, Observation, StateCounts};
use super::layout::{AppSpec, View};
use super::message::{self, MessageEntry, Parsed, Record};
use super::overview::{MAX_KEYS, UPDATE_SECONDS};
use super::window::{Agg, Counter, CounterView, WINDOW_SECONDS, Window, count_bounded, round};

/// Latest messages kept per application.
pub const LATEST_MESSAGES: usize = 20;
/// Devices per device type charted one line each in the generic view (a line per device is the
/// only honest chart of counters such as a meter's energy; the number is bounded for memory and
/// for the reader).
pub const CHARTED_DEVICES: usize = 6;

/// Points of a sparse series: `[unix_second, value]`, seconds without a value left out.
pub type Points = Vec<(i64, f64)>;

fn points(window: &Window<Agg>, from: i64, to: i64) -> Points {
    window
        .range(from, to)
        .into_iter()
        .zip(from..)
        .filter_map(|(a, t)| Some((t, round(a.and_then(Agg::mean)?, 3))))
        .collect()
}

/// The per-second values of one charted device.
#[derive(Clone, Debug)]
struct ChartedDevice {
    last_second: i64,
    fields: BTreeMap<String, Window<Agg>>,
}

#[derive(Clone, Debug)]
struct FieldStats {
    last: Option<f64>,
    all: Agg,
    window: Window<Agg>,
}

impl Default for FieldStats {
    fn default() -> Self {
        Self {
            last: None,
            all: Agg::default(),
            window: Window::new(WINDOW_SECONDS),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct TypeStats {
    messages: Counter,
    by_event: BTreeMap<String, u64>,
    out_of_range: u64,
    fields: BTreeMap<String, FieldStats>,
    /// Generic view only: per-device series of up to [`CHARTED_DEVICES`] devices.
    charted: Option<BTreeMap<String, ChartedDevice>>,
}

impl TypeStats {
    /// Records one device's value; a device is charted if there is room, or in place of one
    /// silent for the whole window.
    fn chart(&mut self, device: &str, field: &str, second: i64, v: f64) {
        let Some(charted) = self.charted.as_mut() else {
            return;
        };
        if !charted.contains_key(device) {
            if charted.len() >= CHARTED_DEVICES {
                let silent = charted
                    .iter()
                    .find(|(_, d)| d.last_second <= second - WINDOW_SECONDS as i64)
                    .map(|(id, _)| id.clone());
                match silent {
                    Some(id) => charted.remove(&id),
                    None => return,
                };
            }
            let fresh = ChartedDevice {
                last_second: second,
                fields: BTreeMap::new(),
            };
            charted.insert(device.to_string(), fresh);
        }
        let d = charted.get_mut(device).expect("inserted above");
        d.last_second = second;
        let window = d
            .fields
            .entry(field.to_string())
            .or_insert_with(|| Window::new(WINDOW_SECONDS));
        if let Some(b) = window.bucket(second) {
            b.add(v);
        }
    }
}

/// Observed values of one field since the dashboard started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldView {
    pub last: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub count: u64,
}

/// One device type in an application tab.
#[derive(Clone, Debug, Serialize)]
pub struct AppTypeView {
    pub messages: CounterView,
    pub by_event_type: BTreeMap<String, u64>,
    pub out_of_range: u64,
    pub devices: StateCounts,
    pub fields: BTreeMap<String, FieldView>,
    /// Per-second means over all devices of each field, from `series_from` on.
    pub series: BTreeMap<String, Points>,
    /// Generic view: per-second values of each charted device (at most [`CHARTED_DEVICES`]),
    /// by device id and field.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub device_series: BTreeMap<String, BTreeMap<String, Points>>,
}

/// An application tab as the API and the stream show it (snapshot or update, as the Overview).
#[derive(Clone, Debug, Serialize)]
pub struct AppView {
    #[serde(serialize_with = "super::layout::serialize_arc")]
    pub app: Arc<AppSpec>,
    pub now: i64,
    pub started_at: i64,
    pub messages: CounterView,
    pub device_types: BTreeMap<String, AppTypeView>,
    pub devices: StateCounts,
    pub device_list: Vec<DeviceState>,
    /// First second (Unix) of every series: an update replaces the values from there on.
    pub series_from: i64,
    /// Newest first.
    pub latest: Vec<MessageEntry>,
    pub last_seq: u64,
}

/// A record the application must not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub device_type: Option<String>,
}

/// The state of one application tab.
#[derive(Clone, Debug)]
pub struct AppState {
    spec: Arc<AppSpec>,
    started: i64,
    seq: u64,
    messages: Counter,
    types: BTreeMap<String, TypeStats>,
    devices: Devices,
    latest: VecDeque<MessageEntry>,
}

impl AppState {
    pub fn new(spec: Arc<AppSpec>, now_ms: i64) -> Self {
        let types = spec
            .device_types
            .iter()
            .map(|t| {
                let stats = TypeStats {
                    fields: t
                        .fields
                        .iter()
                        .map(|f| (f.key.clone(), FieldStats::default()))
                        .collect(),
                    charted: (t.view == View::Generic).then(BTreeMap::new),
                    ..TypeStats::default()
                };
                (t.id.clone(), stats)
            })
            .collect();
        Self {
            spec,
            started: now_ms.div_euclid(1000),
            seq: 0,
            messages: Counter::default(),
            types,
            devices: Devices::default(),
            latest: VecDeque::new(),
        }
    }

    pub fn spec(&self) -> &Arc<AppSpec> {
        &self.spec
    }

    /// A record of the enriched topic of `topic_type`, one of the application's device types.
    pub fn ingest(
        &mut self,
        topic_type: &str,
        record: &Record,
        parsed: &Parsed,
        now_ms: i64,
    ) -> Result<(), Foreign> {
        let foreign = || Foreign {
            device_type: parsed.device_type.clone(),
        };
        let Some(spec) = self.spec.device_type(topic_type) else {
            return Err(foreign());
        };
        if parsed.device_type.as_deref() != Some(topic_type) {
            return Err(foreign());
        }
        let Some(stats) = self.types.get_mut(topic_type) else {
            return Err(foreign());
        };
        let second = now_ms.div_euclid(1000);
        self.messages.add(second, 1);
        stats.messages.add(second, 1);
        let event = parsed.event_type.as_deref().unwrap_or("unknown");
        count_bounded(&mut stats.by_event, event, MAX_KEYS, 1);
        if parsed.within_ranges == Some(false) {
            stats.out_of_range += 1;
        }
        if let Some(measurements) = parsed.measurements() {
            for field in &spec.fields {
                let (Some(v), Some(fs)) = (
                    message::field_value(measurements, field),
                    stats.fields.get_mut(&field.key),
                ) else {
                    continue;
                };
                fs.last = Some(v);
                fs.all.add(v);
                if let Some(b) = fs.window.bucket(second) {
                    b.add(v);
                }
                if let Some(id) = &parsed.device_id {
                    stats.chart(id, &field.key, second, v);
                }
            }
        }
        if let Some(id) = &parsed.device_id {
            let what = match parsed.online {
                Some(online) => Observation::Status {
                    online,
                    reason: parsed.status_reason.as_deref(),
                },
                None => Observation::Data,
            };
            self.devices.observe(id, topic_type, what, now_ms);
        }
        self.seq += 1;
        self.latest
            .push_front(MessageEntry::new(self.seq, now_ms, record, parsed));
        self.latest.truncate(LATEST_MESSAGES);
        Ok(())
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// A snapshot (`since: None`) or the update after `since`.
    pub fn view(&self, now_ms: i64, since: Option<u64>) -> AppView {
        let now = now_ms.div_euclid(1000);
        let from = match since {
            None => now - WINDOW_SECONDS as i64 + 1,
            Some(_) => now - UPDATE_SECONDS + 1,
        };
        let after = since.unwrap_or(0);
        let devices_by_type = self.devices.counts_by_type();
        let device_types = self
            .types
            .iter()
            .map(|(id, s)| {
                let fields = s
                    .fields
                    .iter()
                    .map(|(k, f)| {
                        let view = FieldView {
                            last: f.last,
                            min: (f.all.count > 0).then_some(f.all.min),
                            max: (f.all.count > 0).then_some(f.all.max),
                            mean: f.all.mean().map(|m| round(m, 3)),
                            count: f.all.count,
                        };
                        (k.clone(), view)
                    })
                    .collect();
                let series = s
                    .fields
                    .iter()
                    .map(|(k, f)| (k.clone(), points(&f.window, from, now)))
                    .filter(|(_, p)| !p.is_empty())
                    .collect();
                let device_series = s
                    .charted
                    .iter()
                    .flatten()
                    .map(|(id, d)| {
                        let fields = d
                            .fields
                            .iter()
                            .map(|(k, w)| (k.clone(), points(w, from, now)))
                            .filter(|(_, p)| !p.is_empty())
                            .collect::<BTreeMap<_, _>>();
                        (id.clone(), fields)
                    })
                    .filter(|(_, fields)| !fields.is_empty())
                    .collect();
                let view = AppTypeView {
                    messages: s.messages.summary(now, self.started),
                    by_event_type: s.by_event.clone(),
                    out_of_range: s.out_of_range,
                    devices: devices_by_type.get(id).copied().unwrap_or_default(),
                    fields,
                    series,
                    device_series,
                };
                (id.clone(), view)
            })
            .collect();
        AppView {
            app: self.spec.clone(),
            now: now_ms,
            started_at: self.started * 1000,
            messages: self.messages.summary(now, self.started),
            device_types,
            devices: self.devices.counts(),
            device_list: self.devices.list(LIST_LIMIT),
            series_from: from,
            latest: self
                .latest
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
    use crate::dashboard::layout::Layout;
    use crate::dashboard::message::parse;
    use crate::fixtures::sample_registry;

    const T0: i64 = 1_700_000_000_000;

    fn grid() -> AppState {
        let layout = Layout::new(Some(&sample_registry("p")), "p");
        AppState::new(
            layout.app("default/smart-grid-monitor").unwrap().clone(),
            T0,
        )
    }

    fn ingest(
        app: &mut AppState,
        topic_type: &str,
        payload: &str,
        now: i64,
    ) -> Result<(), Foreign> {
        let r = Record {
            topic: format!("p.{topic_type}.enriched"),
            payload: payload.as_bytes().to_vec(),
            ..Record::default()
        };
        app.ingest(topic_type, &r, &parse(&r.payload), now)
    }

    fn breaker(id: &str, volts: f64, temp: f64) -> String {
        format!(
            r#"{{"device_id":"{id}","device_type":"smart_breaker","event_type":"telemetry",
            "measurements":{{"voltage":{{"phase_a":{volts},"phase_b":120,"phase_c":121}},
            "temperature":{{"value":{temp}}},"power":{{"active":5000,"factor":0.9}}}},
            "data_quality":{{"within_ranges":{}}}}}"#,
            temp <= 80.0
        )
    }

    #[test]
    fn ranges_series_and_latest_of_the_declared_fields() {
        let mut app = grid();
        ingest(&mut app, "smart_breaker", &breaker("b-1", 118.0, 30.0), T0).unwrap();
        ingest(
            &mut app,
            "smart_breaker",
            &breaker("b-2", 124.0, 95.0),
            T0 + 400,
        )
        .unwrap();
        ingest(
            &mut app,
            "smart_breaker",
            &breaker("b-1", 112.0, 40.0),
            T0 + 1_200,
        )
        .unwrap();
        let v = app.view(T0 + 2_000, None);
        let t = &v.device_types["smart_breaker"];
        assert_eq!(t.messages.total, 3);
        assert_eq!(t.out_of_range, 1);
        assert_eq!(t.devices.online, 2);
        let va = &t.fields["voltage.phase_a"];
        assert_eq!(
            (va.last, va.min, va.max, va.mean, va.count),
            (Some(112.0), Some(112.0), Some(124.0), Some(118.0), 3)
        );
        assert_eq!(t.fields["frequency"].count, 0);
        let s0 = T0 / 1000;
        assert_eq!(t.series["voltage.phase_a"], [(s0, 121.0), (s0 + 1, 112.0)]);
        assert!(!t.series.contains_key("frequency"), "no values, no series");
        assert!(
            t.device_series.is_empty(),
            "the breaker view charts means only"
        );
        assert_eq!(v.latest.len(), 3);
        assert_eq!(v.latest[0].device_id.as_deref(), Some("b-1"));
        assert_eq!(v.latest[0].seq, 3);
        let u = app.view(T0 + 2_000, Some(2));
        assert_eq!(u.latest.len(), 1);
        assert_eq!(u.series_from, s0);
        assert_eq!(
            u.device_types["smart_breaker"].series["temperature"].len(),
            2
        );
        let later = app.view(T0 + 10_000, Some(3));
        assert!(later.device_types["smart_breaker"].series.is_empty());
    }

    #[test]
    fn the_generic_view_charts_a_bounded_number_of_devices() {
        let layout = Layout::new(Some(&sample_registry("p")), "p");
        let mut app = AppState::new(layout.app("default/energy-analytics").unwrap().clone(), T0);
        let meter = |id: &str, energy: f64| {
            format!(
                r#"{{"device_id":"{id}","device_type":"smart_meter","event_type":"telemetry",
                "measurements":{{"energy":{{"value":{energy}}},"demand":{{"value":2.5}}}}}}"#
            )
        };
        for i in 0..(CHARTED_DEVICES + 2) {
            let id = format!("m-{i}");
            ingest(&mut app, "smart_meter", &meter(&id, 100.0 * i as f64), T0).unwrap();
        }
        let v = app.view(T0 + 1_000, None);
        let t = &v.device_types["smart_meter"];
        assert_eq!(t.device_series.len(), CHARTED_DEVICES);
        assert_eq!(t.device_series["m-1"]["energy"], [(T0 / 1000, 100.0)]);
        assert_eq!(t.devices.total as usize, CHARTED_DEVICES + 2);
        // A device silent for the whole window gives its place to a new one.
        let later = T0 + (WINDOW_SECONDS as i64 + 5) * 1000;
        ingest(&mut app, "smart_meter", &meter("m-new", 1.0), later).unwrap();
        let v = app.view(later, None);
        let t = &v.device_types["smart_meter"];
        assert!(t.device_series.contains_key("m-new"));
        assert_eq!(
            t.device_series.len(),
            1,
            "the others have no points left in the window"
        );
    }

    #[test]
    fn foreign_records_are_refused() {
        let mut app = grid();
        let meter = r#"{"device_id":"m-1","device_type":"smart_meter","event_type":"telemetry"}"#;
        // From a topic that is not one of the application's.
        assert_eq!(
            ingest(&mut app, "smart_meter", meter, T0),
            Err(Foreign {
                device_type: Some("smart_meter".into())
            })
        );
        // In the breaker topic but naming another type (misrouted upstream).
        assert!(ingest(&mut app, "smart_breaker", meter, T0).is_err());
        assert!(ingest(&mut app, "smart_breaker", "not json", T0).is_err());
        let v = app.view(T0, None);
        assert_eq!(v.messages.total, 0);
        assert!(v.latest.is_empty());
        assert_eq!(v.devices.total, 0);
    }

    #[test]
    fn latest_messages_are_bounded() {
        let mut app = grid();
        for i in 0..(LATEST_MESSAGES as i64 * 3) {
            ingest(
                &mut app,
                "smart_breaker",
                &breaker(&format!("b-{i}"), 120.0, 30.0),
                T0 + i,
            )
            .unwrap();
        }
        let v = app.view(T0 + 100, None);
        assert_eq!(v.latest.len(), LATEST_MESSAGES);
        assert_eq!(v.device_list.len(), LIST_LIMIT.min(LATEST_MESSAGES * 3));
    }
}
