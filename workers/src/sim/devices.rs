//! Simulated devices, sans-IO: what each device type says (telemetry, trends, status, last will)
//! and when, given a random source and the time. The I/O loop in [`super`] only sleeps and
//! publishes.
//!
//! The smart breaker reproduces the seed simulator (`SEED_BEHAVIOUR.md`): the same measurements,
//! ranges, rounding and burst logic. The smart meter and the environmental sensor use the ranges
//! of their DeviceTypes in `deploy/samples/`.

use std::time::Duration;

use fastrand::Rng;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::trends::TrendWindow;
use crate::clock;

/// The simulated device types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    SmartBreaker,
    SmartMeter,
    EnvironmentalSensor,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 3] = [
        DeviceKind::SmartBreaker,
        DeviceKind::SmartMeter,
        DeviceKind::EnvironmentalSensor,
    ];

    /// The device-type id in payloads and topic names.
    pub fn type_id(self) -> &'static str {
        match self {
            DeviceKind::SmartBreaker => "smart_breaker",
            DeviceKind::SmartMeter => "smart_meter",
            DeviceKind::EnvironmentalSensor => "environmental_sensor",
        }
    }

    pub fn parse(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.type_id() == id)
    }

    /// Device ids are `{prefix}{stem}-{n:03}`, e.g. `breaker-001` (the seed's device).
    pub fn id_stem(self) -> &'static str {
        match self {
            DeviceKind::SmartBreaker => "breaker",
            DeviceKind::SmartMeter => "meter",
            DeviceKind::EnvironmentalSensor => "sensor",
        }
    }

    fn trend_channels(self) -> &'static [&'static str] {
        match self {
            DeviceKind::SmartBreaker => &[
                "voltage_phase_a",
                "current_phase_a",
                "power_active",
                "temperature",
            ],
            DeviceKind::SmartMeter => &["energy", "demand", "power_factor"],
            DeviceKind::EnvironmentalSensor => &["temperature", "humidity", "pressure"],
        }
    }

    fn firmware(self) -> (&'static str, &'static str) {
        match self {
            DeviceKind::SmartBreaker => ("2.1.0", "A"),
            DeviceKind::SmartMeter => ("1.4.2", "B"),
            DeviceKind::EnvironmentalSensor => ("3.0.1", "C"),
        }
    }
}

/// One step of a device's loop: send `telemetry` messages `gap` apart, then trends and status if
/// `then_trends_and_status`, then wait `pause`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub telemetry: usize,
    pub gap: Duration,
    pub then_trends_and_status: bool,
    pub pause: Duration,
}

/// Telemetry messages between two trends/status messages of the meter and the sensor.
pub const TRENDS_EVERY: u64 = 5;

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + rng.f64() * (hi - lo)
}

fn round(value: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (value * f).round() / f
}

/// A simulated device and what it has sent so far.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub kind: DeviceKind,
    started: Timestamp,
    telemetry_sent: u64,
    messages_sent: u64,
    last_telemetry: Option<Timestamp>,
    energy_kwh: f64,
    window: TrendWindow,
}

impl Device {
    pub fn new(id: String, kind: DeviceKind, started: Timestamp, rng: &mut Rng) -> Self {
        Self {
            id,
            kind,
            started,
            telemetry_sent: 0,
            messages_sent: 0,
            last_telemetry: None,
            energy_kwh: round(uniform(rng, 1_000.0, 50_000.0), 3),
            window: TrendWindow::new(kind.trend_channels()),
        }
    }

    /// The next step of the device's loop. The breaker follows the seed: with probability 0.25 a
    /// burst of 3-6 messages 0.2 s apart followed by trends and status, else one message; then a
    /// pause of 3-8 s. The meter reports every minute and the sensor every 30 s (their registry
    /// update frequencies), with trends and status every [`TRENDS_EVERY`] reports.
    pub fn next_step(&self, rng: &mut Rng) -> Step {
        match self.kind {
            DeviceKind::SmartBreaker => {
                let burst = rng.f64() < 0.25;
                Step {
                    telemetry: if burst { rng.usize(3..=6) } else { 1 },
                    gap: Duration::from_millis(200),
                    then_trends_and_status: burst,
                    pause: Duration::from_secs_f64(uniform(rng, 3.0, 8.0)),
                }
            }
            DeviceKind::SmartMeter | DeviceKind::EnvironmentalSensor => Step {
                telemetry: 1,
                gap: Duration::ZERO,
                then_trends_and_status: (self.telemetry_sent + 1).is_multiple_of(TRENDS_EVERY),
                pause: Duration::from_secs(if self.kind == DeviceKind::SmartMeter {
                    60
                } else {
                    30
                }),
            },
        }
    }

    fn envelope(&self, event_type: &str, now: Timestamp) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("device_id".into(), self.id.clone().into());
        m.insert("device_type".into(), self.kind.type_id().into());
        m.insert("timestamp".into(), clock::rfc3339(now).into());
        m.insert("event_type".into(), event_type.into());
        m
    }

    /// A telemetry message; its values enter the trends window.
    pub fn telemetry(&mut self, rng: &mut Rng, now: Timestamp) -> Value {
        let measurements = self.measurements(rng, now);
        let mut m = self.envelope("telemetry", now);
        m.insert("measurements".into(), measurements);
        self.telemetry_sent += 1;
        self.messages_sent += 1;
        self.last_telemetry = Some(now);
        Value::Object(m)
    }

    /// A load-test telemetry message: as [`Device::telemetry`] plus `seq`.
    pub fn telemetry_with_seq(&mut self, rng: &mut Rng, now: Timestamp, seq: u64) -> Value {
        let mut v = self.telemetry(rng, now);
        v["seq"] = seq.into();
        v
    }

    /// A trends message over the telemetry sent since the previous one.
    pub fn trends(&mut self, now: Timestamp) -> Value {
        let items = self.window.take(now);
        let mut m = self.envelope("trends", now);
        m.insert("trends".into(), Value::Array(items));
        self.messages_sent += 1;
        Value::Object(m)
    }

    /// A status message (published retained, so a new subscriber sees the latest state).
    pub fn status(&mut self, now: Timestamp, online: bool) -> Value {
        let (firmware, hardware) = self.kind.firmware();
        let uptime_hours = clock::seconds_between(self.started, now) / 3600.0;
        let mut m = self.envelope("status", now);
        m.insert(
            "status".into(),
            json!({
                "online": online,
                "last_telemetry": self.last_telemetry.map(clock::rfc3339),
                "message_count": self.messages_sent,
                "uptime_hours": round(uptime_hours, 4),
                "firmware_version": firmware,
                "hardware_revision": hardware,
            }),
        );
        self.messages_sent += 1;
        Value::Object(m)
    }

    /// The last will the broker publishes (retained) when the device vanishes. It carries no
    /// `timestamp`: it is written at connect time, not when the device went away.
    pub fn last_will(&self) -> Value {
        json!({
            "device_id": self.id,
            "device_type": self.kind.type_id(),
            "event_type": "status",
            "status": {"online": false, "reason": "connection_lost"},
        })
    }

    fn measurements(&mut self, rng: &mut Rng, now: Timestamp) -> Value {
        match self.kind {
            DeviceKind::SmartBreaker => self.breaker(rng),
            DeviceKind::SmartMeter => self.meter(rng, now),
            DeviceKind::EnvironmentalSensor => self.sensor(rng),
        }
    }

    fn breaker(&mut self, rng: &mut Rng) -> Value {
        let mut u = |lo, hi, d| round(uniform(rng, lo, hi), d);
        let voltage = [u(110.0, 130.0, 2), u(110.0, 130.0, 2), u(110.0, 130.0, 2)];
        let current = [u(0.0, 100.0, 2), u(0.0, 100.0, 2), u(0.0, 100.0, 2)];
        let (active, reactive, apparent, factor) = (
            u(5000.0, 12000.0, 2),
            u(1000.0, 3000.0, 2),
            u(5000.0, 13000.0, 2),
            u(0.85, 0.98, 3),
        );
        let frequency = u(59.5, 60.5, 2);
        let temperature = u(20.0, 80.0, 2);
        let ground_fault = u(0.0, 5.0, 2);
        let load = u(20.0, 90.0, 1);
        let hours = u(100.0, 1000.0, 1);
        self.window.record("voltage_phase_a", voltage[0]);
        self.window.record("current_phase_a", current[0]);
        self.window.record("power_active", active);
        self.window.record("temperature", temperature);
        json!({
            "voltage": {"phase_a": voltage[0], "phase_b": voltage[1], "phase_c": voltage[2], "unit": "V"},
            "current": {"phase_a": current[0], "phase_b": current[1], "phase_c": current[2], "unit": "A"},
            "power": {"active": active, "reactive": reactive, "apparent": apparent, "factor": factor, "unit": "W"},
            "frequency": {"value": frequency, "unit": "Hz"},
            "temperature": {"value": temperature, "unit": "°C"},
            "status": {"breaker": rng.u8(0..=1), "position": rng.u8(0..=1), "communication": 1},
            "protection": {"trip_count": rng.u32(0..=10), "ground_fault_current": ground_fault, "arc_fault_detected": rng.bool()},
            "operational": {"load_percentage": load, "operating_hours": hours, "maintenance_due": rng.bool()},
        })
    }

    fn meter(&mut self, rng: &mut Rng, now: Timestamp) -> Value {
        let demand = round(uniform(rng, 0.5, 15.0), 3);
        let hours = self
            .last_telemetry
            .map_or(0.0, |last| clock::seconds_between(last, now) / 3600.0);
        self.energy_kwh = round(self.energy_kwh + demand * hours, 3);
        let power_factor = round(uniform(rng, 0.8, 1.0), 3);
        self.window.record("energy", self.energy_kwh);
        self.window.record("demand", demand);
        self.window.record("power_factor", power_factor);
        json!({
            "energy": {"value": self.energy_kwh, "unit": "kWh"},
            "demand": {"value": demand, "unit": "kW"},
            "power_factor": {"value": power_factor},
        })
    }

    fn sensor(&mut self, rng: &mut Rng) -> Value {
        let temperature = round(uniform(rng, -10.0, 40.0), 2);
        let humidity = round(uniform(rng, 20.0, 90.0), 2);
        let pressure = round(uniform(rng, 980.0, 1040.0), 2);
        self.window.record("temperature", temperature);
        self.window.record("humidity", humidity);
        self.window.record("pressure", pressure);
        json!({
            "temperature": {"value": temperature, "unit": "°C"},
            "humidity": {"value": humidity, "unit": "%RH"},
            "pressure": {"value": pressure, "unit": "hPa"},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_registry;
    use crate::quality;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn every_device_type_stays_inside_its_registered_ranges() {
        let registry = sample_registry("iot");
        let mut rng = Rng::with_seed(7);
        for kind in DeviceKind::ALL {
            let declared = &registry.device_types[kind.type_id()].measurements;
            let mut d = Device::new("d".into(), kind, t("2025-01-01T00:00:00Z"), &mut rng);
            for i in 0..2000 {
                let now = t("2025-01-01T00:00:00Z")
                    .checked_add(jiff::SignedDuration::from_secs(i * 30))
                    .unwrap();
                let msg = d.telemetry(&mut rng, now);
                let m = msg["measurements"].as_object().unwrap();
                let c = quality::completeness(m, declared);
                assert_eq!(c.present, c.declared, "{kind:?} sends every measurement");
                assert_eq!(quality::check_ranges(m, declared), [], "{kind:?}: {msg}");
            }
        }
    }

    #[test]
    fn breaker_telemetry_has_the_seed_shape() {
        let mut rng = Rng::with_seed(1);
        let mut d = Device::new(
            "breaker-001".into(),
            DeviceKind::SmartBreaker,
            t("2025-08-20T18:00:00Z"),
            &mut rng,
        );
        let msg = d.telemetry(&mut rng, t("2025-08-20T18:00:54.117782Z"));
        assert_eq!(msg["device_id"], "breaker-001");
        assert_eq!(msg["device_type"], "smart_breaker");
        assert_eq!(msg["timestamp"], "2025-08-20T18:00:54.117782Z");
        assert_eq!(msg["event_type"], "telemetry");
        let m = &msg["measurements"];
        assert_eq!(m["voltage"]["unit"], "V");
        assert_eq!(m["power"]["unit"], "W");
        assert_eq!(m["status"]["communication"], 1);
        let f = m["power"]["factor"].as_f64().unwrap();
        assert_eq!(round(f, 3), f);
        assert!((0.85..=0.98).contains(&f));
        let p = m["power"]["active"].as_f64().unwrap();
        assert!((5000.0..=12000.0).contains(&p));
        assert!(m["protection"]["arc_fault_detected"].is_boolean());
        assert!(m["protection"]["trip_count"].as_u64().unwrap() <= 10);
    }

    #[test]
    fn breaker_bursts_like_the_seed() {
        let mut rng = Rng::with_seed(3);
        let d = Device::new(
            "b".into(),
            DeviceKind::SmartBreaker,
            t("2025-01-01T00:00:00Z"),
            &mut rng,
        );
        let steps: Vec<Step> = (0..4000).map(|_| d.next_step(&mut rng)).collect();
        let bursts = steps.iter().filter(|s| s.then_trends_and_status).count();
        assert!(
            (850..1150).contains(&bursts),
            "about 25 % bursts, got {bursts}"
        );
        for s in &steps {
            if s.then_trends_and_status {
                assert!((3..=6).contains(&s.telemetry));
            } else {
                assert_eq!(s.telemetry, 1);
            }
            assert!(s.pause >= Duration::from_secs(3) && s.pause <= Duration::from_secs(8));
        }
        let per_minute = steps
            .iter()
            .map(|s| s.telemetry as f64 + if s.then_trends_and_status { 2.0 } else { 0.0 })
            .sum::<f64>()
            / steps.iter().map(|s| s.pause.as_secs_f64()).sum::<f64>()
            * 60.0;
        assert!(
            (15.0..30.0).contains(&per_minute),
            "seed: about 25 messages a minute, got {per_minute}"
        );
    }

    #[test]
    fn trends_aggregate_the_telemetry_actually_sent() {
        let mut rng = Rng::with_seed(5);
        let start = t("2025-01-01T00:00:00Z");
        let mut d = Device::new("b".into(), DeviceKind::SmartBreaker, start, &mut rng);
        let temps: Vec<f64> = (0..4)
            .map(|_| {
                d.telemetry(&mut rng, start)["measurements"]["temperature"]["value"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        let trends = d.trends(t("2025-01-01T00:00:10Z"));
        assert_eq!(trends["event_type"], "trends");
        let items = trends["trends"].as_array().unwrap();
        let channels: Vec<&str> = items.iter().map(|i| i["c"].as_str().unwrap()).collect();
        assert_eq!(
            channels,
            [
                "voltage_phase_a",
                "current_phase_a",
                "power_active",
                "temperature"
            ]
        );
        let temp = &items[3];
        let max = temps.iter().cloned().fold(f64::MIN, f64::max);
        let min = temps.iter().cloned().fold(f64::MAX, f64::min);
        let avg = temps.iter().sum::<f64>() / 4.0;
        assert_eq!(temp["max"], format!("{max:.2}"));
        assert_eq!(temp["min"], format!("{min:.2}"));
        assert_eq!(temp["avg"], format!("{avg:.2}"));
        assert_eq!(temp["v"], format!("{:.2}", temps[3]));
        assert_eq!(temp["n"], 4);
        assert_eq!(temp["t"], 1735689610);
        // The next window starts empty.
        assert_eq!(d.trends(start)["trends"], json!([]));
    }

    #[test]
    fn status_reports_real_uptime_and_counts() {
        let mut rng = Rng::with_seed(9);
        let start = t("2025-01-01T00:00:00Z");
        let mut d = Device::new("m".into(), DeviceKind::SmartMeter, start, &mut rng);
        let first = d.status(start, true);
        assert_eq!(first["status"]["last_telemetry"], Value::Null);
        assert_eq!(first["status"]["uptime_hours"], 0.0);
        d.telemetry(&mut rng, t("2025-01-01T01:30:00Z"));
        let s = d.status(t("2025-01-01T03:00:00Z"), true);
        assert_eq!(s["event_type"], "status");
        assert_eq!(s["status"]["online"], true);
        assert_eq!(s["status"]["uptime_hours"], 3.0);
        assert_eq!(s["status"]["last_telemetry"], "2025-01-01T01:30:00.000000Z");
        assert_eq!(s["status"]["message_count"], 2);
        assert_eq!(s["status"]["firmware_version"], "1.4.2");
        let will = d.last_will();
        assert_eq!(will["status"]["online"], false);
        assert_eq!(will["device_type"], "smart_meter");
        assert!(will.get("timestamp").is_none());
    }

    #[test]
    fn meter_energy_accumulates_and_cadences_follow_the_registry() {
        let mut rng = Rng::with_seed(11);
        let start = t("2025-01-01T00:00:00Z");
        let mut d = Device::new("m".into(), DeviceKind::SmartMeter, start, &mut rng);
        let mut last = 0.0;
        for i in 0..10 {
            let now = start
                .checked_add(jiff::SignedDuration::from_secs(60 * i))
                .unwrap();
            let e = d.telemetry(&mut rng, now)["measurements"]["energy"]["value"]
                .as_f64()
                .unwrap();
            assert!(e >= last);
            last = e;
        }
        let step = d.next_step(&mut rng);
        assert_eq!(step.pause, Duration::from_secs(60));
        let s = Device::new("s".into(), DeviceKind::EnvironmentalSensor, start, &mut rng);
        assert_eq!(s.next_step(&mut rng).pause, Duration::from_secs(30));
        let seq = d.telemetry_with_seq(&mut rng, start, 42);
        assert_eq!(seq["seq"], 42);
        assert_eq!(
            DeviceKind::parse("smart_meter"),
            Some(DeviceKind::SmartMeter)
        );
        assert_eq!(DeviceKind::parse("toaster"), None);
    }
}
