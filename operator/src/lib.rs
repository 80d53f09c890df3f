//! The IoT Cloud operator as a library, so that its pure parts can be unit-tested and benchmarked
//! and its integration tests can drive the same code the binary runs.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod credentials;
pub mod kafka;
pub mod mosquitto_support;
pub mod registry;
