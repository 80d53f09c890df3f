//! `iot-operator`: reconciles the `DeviceType` and `Application` custom resources into Kafka
//! topics, enrichment Deployments and the registry ConfigMap that the workers read.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iot_operator::{crd, registry};

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
    /// Print the CustomResourceDefinitions as multi-document YAML, or write one file per CRD.
    Crd {
        /// Write `application.yaml` and `devicetype.yaml` into this directory (e.g. `crds/`)
        /// instead of printing.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Print the registry JSON (ConfigMap `iot-registry`, key `registry.json`) that the operator
    /// would build from the DeviceType and Application manifests in a file or directory.
    Registry {
        /// A manifest file, or a directory whose *.yaml and *.yml files are read.
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        path: PathBuf,
        /// Prefix of every Kafka topic name.
        #[arg(long, env = "IOT_TOPIC_PREFIX", default_value = "iot")]
        topic_prefix: String,
        /// Namespace of the objects whose manifests name none.
        #[arg(short = 'n', long, default_value = registry::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => anyhow::bail!("`run` is not implemented yet"),
        Command::Crd { write: None } => {
            let yaml = crd::render_all().context("rendering the CRDs")?;
            std::io::stdout().write_all(yaml.as_bytes())?;
        }
        Command::Crd { write: Some(dir) } => {
            for path in crd::write_crd_files(&dir)? {
                eprintln!("wrote {}", path.display());
            }
        }
        Command::Registry {
            path,
            topic_prefix,
            namespace,
        } => {
            anyhow::ensure!(
                registry::is_valid_topic_prefix(&topic_prefix),
                "--topic-prefix {topic_prefix:?}: use 1-100 characters of [a-zA-Z0-9_-]"
            );
            let mut manifests = crd::manifests::load(&path)?;
            manifests.default_namespace(&namespace);
            let registry = registry::build_registry(
                &manifests.device_types,
                &manifests.applications,
                &topic_prefix,
            );
            let json = serde_json::to_string_pretty(&registry)?;
            writeln!(std::io::stdout(), "{json}")?;
        }
    }
    Ok(())
}
