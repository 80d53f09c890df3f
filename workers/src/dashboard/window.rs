//! Per-second buckets over a sliding window: message rates and chart series in a fixed amount of
//! memory, whatever the message rate.

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds of history kept for the charts (five minutes).
pub const WINDOW_SECONDS: usize = 300;
/// Complete seconds a rate is averaged over.
pub const RATE_SECONDS: i64 = 10;

/// A ring of `len` one-second slots; slot `s % len` holds second `s` (older seconds are overwritten).
#[derive(Clone, Debug)]
pub struct Window<T> {
    slots: Vec<(i64, T)>,
}

impl<T: Default + Clone> Window<T> {
    pub fn new(len: usize) -> Self {
        assert!(len > 0, "a window has at least one slot");
        Self {
            slots: vec![(i64::MIN, T::default()); len],
        }
    }

    fn index(&self, second: i64) -> usize {
        second.rem_euclid(self.slots.len() as i64) as usize
    }

    /// The bucket of `second`, emptied first if it held an older second; `None` when the slot
    /// already holds a newer second (a late value is dropped rather than corrupting the window).
    pub fn bucket(&mut self, second: i64) -> Option<&mut T> {
        let i = self.index(second);
        let slot = &mut self.slots[i];
        if slot.0 > second {
            return None;
        }
        if slot.0 != second {
            *slot = (second, T::default());
        }
        Some(&mut slot.1)
    }

    /// The bucket of `second`, if the window still holds it.
    pub fn get(&self, second: i64) -> Option<&T> {
        let slot = &self.slots[self.index(second)];
        (slot.0 == second).then_some(&slot.1)
    }

    /// The buckets of `from..=to`, oldest first, `None` for seconds without data or no longer held.
    pub fn range(&self, from: i64, to: i64) -> Vec<Option<&T>> {
        (from..=to).map(|s| self.get(s)).collect()
    }
}

/// A total and its per-second counts.
#[derive(Clone, Debug)]
pub struct Counter {
    pub total: u64,
    pub window: Window<u64>,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            total: 0,
            window: Window::new(WINDOW_SECONDS),
        }
    }
}

impl Counter {
    pub fn add(&mut self, second: i64, n: u64) {
        self.total += n;
        if let Some(b) = self.window.bucket(second) {
            *b += n;
        }
    }

    /// Mean per second over the last [`RATE_SECONDS`] complete seconds (fewer just after
    /// `started`, the first second counted).
    pub fn rate(&self, now: i64, started: i64) -> f64 {
        let from = (now - RATE_SECONDS).max(started);
        let seconds = now - from;
        if seconds <= 0 {
            return 0.0;
        }
        let sum: u64 = self.window.range(from, now - 1).into_iter().flatten().sum();
        round(sum as f64 / seconds as f64, 2)
    }

    /// Counts of `from..=to` (0 for seconds without messages).
    pub fn series(&self, from: i64, to: i64) -> Vec<u64> {
        self.window
            .range(from, to)
            .into_iter()
            .map(|c| c.copied().unwrap_or(0))
            .collect()
    }

    /// Total and rate, as the API shows them.
    pub fn summary(&self, now: i64, started: i64) -> CounterView {
        CounterView {
            total: self.total,
            rate: self.rate(now, started),
        }
    }
}

/// A counter in the API.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CounterView {
    pub total: u64,
    /// Messages per second over the last ten seconds.
    pub rate: f64,
}

/// Count, sum, smallest and largest of the values seen.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Agg {
    pub fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// `v` rounded to `digits` decimals (smaller JSON, no `117.27333333333333`).
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Adds one to `map[key]`, unless the map already holds `cap` keys and not this one: then the
/// count goes to `other` (untrusted keys such as event types cannot grow the map without bound).
pub fn count_bounded(map: &mut BTreeMap<String, u64>, key: &str, cap: usize, n: u64) {
    if let Some(c) = map.get_mut(key) {
        *c += n;
    } else if map.len() < cap {
        map.insert(key.to_string(), n);
    } else {
        *map.entry("other".to_string()).or_insert(0) += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_seconds_only() {
        let mut w: Window<u64> = Window::new(3);
        for s in 10..=14 {
            *w.bucket(s).unwrap() += s as u64;
        }
        assert_eq!(w.get(14), Some(&14));
        assert_eq!(w.get(11), None, "overwritten by second 14");
        assert_eq!(
            w.range(11, 15),
            vec![None, Some(&12), Some(&13), Some(&14), None]
        );
        // A late value for a second whose slot holds a newer one is dropped.
        assert!(w.bucket(11).is_none());
        assert_eq!(w.get(14), Some(&14));
        // Negative seconds work too (rem_euclid).
        let mut n: Window<u64> = Window::new(4);
        *n.bucket(-3).unwrap() = 1;
        assert_eq!(n.get(-3), Some(&1));
    }

    #[test]
    fn rates_average_complete_seconds() {
        let mut c = Counter::default();
        for s in 100..110 {
            c.add(s, 5);
        }
        c.add(110, 100); // the current, incomplete second is not counted
        assert_eq!(c.total, 150);
        assert_eq!(c.rate(110, 0), 5.0);
        // Just after start, the rate is over the seconds since then.
        assert_eq!(c.rate(110, 108), 5.0);
        assert_eq!(c.rate(110, 110), 0.0);
        // Silence brings the rate down.
        assert_eq!(c.rate(115, 0), 12.5);
        assert_eq!(c.rate(121, 0), 0.0);
        assert_eq!(c.rate(200, 0), 0.0);
        assert_eq!(c.series(108, 111), vec![5, 5, 100, 0]);
    }

    #[test]
    fn aggregates_and_rounding() {
        let mut a = Agg::default();
        assert_eq!(a.mean(), None);
        for v in [3.0, -1.0, 4.0] {
            a.add(v);
        }
        assert_eq!((a.count, a.min, a.max), (3, -1.0, 4.0));
        assert_eq!(a.mean(), Some(2.0));
        assert_eq!(round(117.273333, 2), 117.27);
    }

    #[test]
    fn bounded_counts_spill_into_other() {
        let mut m = BTreeMap::new();
        for key in ["a", "b", "a", "c", "d"] {
            count_bounded(&mut m, key, 2, 1);
        }
        assert_eq!(m["a"], 2);
        assert_eq!(m["b"], 1);
        assert_eq!(m["other"], 2);
        assert_eq!(m.len(), 3);
    }
}
