//! Trends aggregated from the telemetry a device actually sent, sans-IO. The seed fabricated its
//! trend numbers; here each item summarises the samples of one channel since the previous trends
//! message. The item layout is the seed's: `c` channel, `t` epoch seconds, and `v` (latest),
//! `avg`, `min`, `max` as strings with two decimals; `n` (sample count) is added.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stats {
    last: f64,
    sum: f64,
    min: f64,
    max: f64,
    n: u64,
}

/// Samples per channel since the last [`TrendWindow::take`].
#[derive(Clone, Debug, Default)]
pub struct TrendWindow {
    channels: BTreeMap<&'static str, Stats>,
    order: Vec<&'static str>,
}

impl TrendWindow {
    /// A window over these channels (the order of the trends items).
    pub fn new(channels: &[&'static str]) -> Self {
        Self {
            channels: BTreeMap::new(),
            order: channels.to_vec(),
        }
    }

    /// Records one sample of `channel`.
    pub fn record(&mut self, channel: &'static str, value: f64) {
        self.channels
            .entry(channel)
            .and_modify(|s| {
                s.last = value;
                s.sum += value;
                s.min = s.min.min(value);
                s.max = s.max.max(value);
                s.n += 1;
            })
            .or_insert(Stats {
                last: value,
                sum: value,
                min: value,
                max: value,
                n: 1,
            });
    }

    /// The trends items of the window ending `now`, and a fresh window. Channels without samples
    /// are left out.
    pub fn take(&mut self, now: Timestamp) -> Vec<Value> {
        let channels = std::mem::take(&mut self.channels);
        self.order
            .iter()
            .filter_map(|c| {
                let s = channels.get(c)?;
                Some(json!({
                    "c": c,
                    "t": now.as_second(),
                    "v": format!("{:.2}", s.last),
                    "avg": format!("{:.2}", s.sum / s.n as f64),
                    "min": format!("{:.2}", s.min),
                    "max": format!("{:.2}", s.max),
                    "n": s.n,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_what_was_recorded_then_starts_over() {
        let mut w = TrendWindow::new(&["voltage_phase_a", "temperature", "unused"]);
        for v in [118.0, 121.5, 116.25] {
            w.record("voltage_phase_a", v);
        }
        w.record("temperature", 40.0);
        let now: Timestamp = "2025-08-20T18:00:54Z".parse().unwrap();
        let items = w.take(now);
        assert_eq!(
            items,
            [
                json!({"c": "voltage_phase_a", "t": 1755712854, "v": "116.25", "avg": "118.58",
                       "min": "116.25", "max": "121.50", "n": 3}),
                json!({"c": "temperature", "t": 1755712854, "v": "40.00", "avg": "40.00",
                       "min": "40.00", "max": "40.00", "n": 1}),
            ]
        );
        assert_eq!(w.take(now), Vec::<Value>::new());
    }
}
