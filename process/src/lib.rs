//! What every IoT Cloud process does the same way, the operator and the workers alike, without
//! either pulling in the other's world: the admin endpoint ([`admin`]: `/livez`, `/readyz`,
//! `/metrics`) and logging and the shutdown signal ([`telemetry`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod telemetry;
