//! `iot-worker`: the stateless data-path programs of IoT Cloud, one subcommand each.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use iot_workers::bridge::{self, BridgeArgs};
use iot_workers::dashboard::{self, DashboardArgs};
use iot_workers::enrichment::{self, EnrichmentArgs};
use iot_workers::runtime::Lifecycle;
use iot_workers::sim::{self, SimulatorArgs};

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
    Simulator(SimulatorArgs),
    /// MQTT-to-Kafka bridge: carries device messages into per-device-type raw topics.
    Bridge(BridgeArgs),
    /// Enrichment: adds registered metadata and routes to per-device-type enriched topics.
    Enrichment(EnrichmentArgs),
    /// Live web dashboard: an Overview tab and one tab per Application.
    Dashboard(DashboardArgs),
}

// Every message allocates a few short-lived buffers on one thread and frees them on another (the
// MQTT and Kafka clients' threads, tokio's workers): mimalloc's per-thread free lists make that
// cheaper than glibc's arenas (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    iot_process::telemetry::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.role {
            Role::Simulator(args) => {
                // The simulator has nothing in flight worth a long grace period.
                let life = Lifecycle::from_signals(std::time::Duration::from_secs(10));
                sim::run(args, life).await
            }
            Role::Bridge(args) => {
                let life = Lifecycle::from_signals(args.shutdown.grace());
                bridge::run(args, life).await
            }
            Role::Enrichment(args) => {
                let life = Lifecycle::from_signals(args.shutdown.grace());
                enrichment::run(args, life).await
            }
            Role::Dashboard(args) => {
                // Nothing in flight: open streams end at once on SIGTERM.
                let life = Lifecycle::from_signals(std::time::Duration::from_secs(5));
                dashboard::run(args, life).await
            }
        }
    })
}
