//! `iot-worker`: the stateless data-path programs of IoT Cloud, one subcommand each.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// IoT Cloud data-path workers.
#[derive(Debug, Parser)]
#[command(name = "iot-worker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Simulated devices publishing telemetry, trends and status over MQTT.
    Simulator,
    /// MQTT-to-Kafka bridge: carries device messages into per-device-type raw topics.
    Bridge,
    /// Enrichment: adds registered metadata and routes to per-device-type enriched topics.
    Enrichment,
    /// Live web dashboard.
    Dashboard,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!("`{:?}` is not implemented yet", cli.role)
}
