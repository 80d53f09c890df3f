//! Test fixtures shared by the unit tests, the integration tests and the benchmarks: the seed's
//! example message and the registry of `deploy/samples/` (the seed's three device types and three
//! applications), built by the operator's own code (a dev-dependency: the workers themselves do
//! not depend on the operator).
#![allow(dead_code)]

use std::path::PathBuf;

use iot_model::registry::{DEFAULT_NAMESPACE, Registry};
use iot_operator::crd::manifests;
use iot_operator::registry::build_registry;

/// The raw message of the seed's README (`SEED_README.md`), byte for byte.
pub const SEED_RAW: &str = r#"{
  "device_id": "breaker-001",
  "device_type": "smart_breaker",
  "timestamp": "2025-08-20T18:00:54.117782Z",
  "event_type": "telemetry",
  "measurements": {
    "voltage": {"phase_a": 117.27, "phase_b": 112.34, "phase_c": 114.52, "unit": "V"},
    "current": {"phase_a": 69.94, "phase_b": 33.83, "phase_c": 54.86, "unit": "A"},
    "power": {"active": 5775.99, "reactive": 1945.16, "apparent": 6094.73, "factor": 0.948, "unit": "W"},
    "frequency": {"value": 59.28, "unit": "Hz"},
    "temperature": {"value": 34.92, "unit": "°C"},
    "status": {"breaker": 1, "position": 1, "communication": 1},
    "protection": {"trip_count": 5, "ground_fault_current": 0.0, "arc_fault_detected": false},
    "operational": {"load_percentage": 48.1, "operating_hours": 982.8, "maintenance_due": true}
  }
}"#;

/// `deploy/samples/` of this repository.
pub fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples")
}

/// The registry the operator builds from `deploy/samples/` under `prefix`.
pub fn sample_registry(prefix: &str) -> Registry {
    let mut loaded = manifests::load(&samples_dir()).expect("deploy/samples loads");
    loaded.default_namespace(DEFAULT_NAMESPACE);
    build_registry(&loaded.device_types, &loaded.applications, prefix)
}
