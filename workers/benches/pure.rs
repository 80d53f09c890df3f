//! Micro-benchmark of the sans-IO hot path: what the bridge and the enrichment spend on one
//! message besides I/O. `cargo bench -p iot-workers` prints nanoseconds per operation and the
//! implied single-core rate. A plain timing loop (no benchmark framework) keeps the dependency
//! tree small; each figure is the best of five rounds.

#[path = "../tests/common/fixtures.rs"]
mod fixtures;

use std::hint::black_box;
use std::time::{Duration, Instant};

use fastrand::Rng;
use fixtures::{SEED_RAW, sample_registry};
use iot_workers::catalog::Catalog;
use iot_workers::enrich::{self, Outcome, RecordInfo};
use iot_workers::quality;
use iot_workers::route;
use iot_workers::sim::devices::{Device, DeviceKind};

fn bench(name: &str, iterations: u32, mut op: impl FnMut()) {
    for _ in 0..iterations / 10 {
        op();
    }
    let best = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                op();
            }
            start.elapsed() / iterations
        })
        .min()
        .unwrap_or(Duration::ZERO);
    let per_second = 1e9 / best.as_nanos().max(1) as f64;
    println!(
        "{name:<44} {:>8} ns/op {per_second:>12.0} ops/s",
        best.as_nanos()
    );
}

fn main() {
    let catalog = Catalog::from_registry(&sample_registry("iot"), "iot");
    let payload = SEED_RAW.as_bytes();
    let now = iot_workers::clock::now();

    bench("bridge: route (seed message)", 20_000, || {
        let r = route::route(
            "iot/breaker-001/raw",
            black_box(payload),
            &catalog,
            route::Checks::default(),
        );
        black_box(r.is_ok());
    });
    bench("bridge: route (not JSON)", 20_000, || {
        let r = route::route(
            "iot/breaker-001/raw",
            black_box(b"hello"),
            &catalog,
            route::Checks::default(),
        );
        black_box(r.is_err());
    });
    let info = RecordInfo {
        topic_device_type: Some("smart_breaker"),
        bridge_received_at: Some("2025-08-20T18:00:54.200000Z"),
    };
    bench("enrichment: enrich (seed message)", 20_000, || {
        let out = enrich::enrich(black_box(payload), info, &catalog, now);
        black_box(matches!(out, Outcome::Enriched(_)));
    });
    let declared = &catalog.get("smart_breaker").unwrap().measurements;
    let raw: serde_json::Value = serde_json::from_str(SEED_RAW).unwrap();
    let measurements = raw["measurements"].as_object().unwrap();
    bench("enrichment: range checks (8 measurements)", 50_000, || {
        black_box(quality::check_ranges(black_box(measurements), declared));
    });
    let mut rng = Rng::with_seed(1);
    let mut device = Device::new(
        "breaker-001".into(),
        DeviceKind::SmartBreaker,
        now,
        &mut rng,
    );
    bench("simulator: breaker telemetry + JSON", 20_000, || {
        let msg = device.telemetry(&mut rng, now);
        black_box(serde_json::to_vec(&msg).unwrap());
    });
}
