//! `iot-operator`: reconciles the `DeviceType` and `Application` custom resources into Kafka
//! topics, enrichment Deployments and the registry ConfigMap that the workers read.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// Kubernetes operator for IoT Cloud.
#[derive(Debug, Parser)]
#[command(name = "iot-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers against the cluster in the current kubeconfig or service account.
    Run,
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run | Command::Crd => {
            anyhow::bail!("`{:?}` is not implemented yet", cli.command)
        }
    }
}
