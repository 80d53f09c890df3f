//! `iot-operator`: reconciles the `DeviceType` and `Application` custom resources into Kafka
//! topics, enrichment Deployments and the registry ConfigMap that the workers read.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;

use iot_operator::credentials::cli::DeviceCredentialsCommand;
use iot_operator::mosquitto_support::cli::{MosquittoReloadArgs, MqttPasswordFileArgs};
use iot_operator::{controller, crd, credentials, mosquitto_support, registry};
use iot_process::{admin, telemetry};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio_util::sync::CancellationToken;

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
    Run(RunArgs),
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
    /// Device identities for the broker's device listener: a device CA, one client certificate
    /// per device, and the CRL of revoked ones.
    DeviceCredentials {
        #[command(subcommand)]
        command: DeviceCredentialsCommand,
    },
    /// Write a Mosquitto password file (`$7$` PBKDF2-SHA512 hashes, as `mosquitto_passwd`
    /// writes them) for the service listener's users.
    MqttPasswordFile(MqttPasswordFileArgs),
    /// Sidecar of the broker (shareProcessNamespace): send SIGHUP to `mosquitto` whenever the
    /// content of a watched file changes, so that it reloads certificates, CRL, passwords, ACL.
    MosquittoReload(MosquittoReloadArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Namespace to watch and manage; default: the namespace of the pod (service account), else
    /// the kubeconfig context's.
    #[arg(long, env = "IOT_NAMESPACE")]
    namespace: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "IOT_KAFKA_BOOTSTRAP", default_value = "localhost:9092")]
    kafka_bootstrap: String,
    /// Prefix of every Kafka topic name.
    #[arg(long, env = "IOT_TOPIC_PREFIX", default_value = "iot")]
    topic_prefix: String,
    /// Image of the enrichment workers (`iot-worker`).
    #[arg(long, env = "IOT_WORKER_IMAGE", default_value = controller::config::DEFAULT_WORKER_IMAGE)]
    worker_image: String,
    /// Name of the registry ConfigMap the workers mount.
    #[arg(long, env = "IOT_REGISTRY_CONFIGMAP", default_value = registry::CONFIG_MAP_NAME)]
    registry_configmap: String,
    /// Partitions of the shared topics ({prefix}.enriched, {prefix}.deadletter).
    #[arg(long, env = "IOT_SHARED_TOPIC_PARTITIONS", default_value_t = 3)]
    shared_topic_partitions: i32,
    /// Replication factor of the shared topics.
    #[arg(long, env = "IOT_SHARED_TOPIC_REPLICATION_FACTOR", default_value_t = 1)]
    shared_topic_replication_factor: i32,
    /// Seconds a lower replica count must be wanted before an autoscaled Deployment scales down.
    #[arg(long, env = "IOT_SCALE_DOWN_COOLDOWN", default_value_t = 120)]
    scale_down_cooldown_seconds: u64,
    /// Seconds between lag readings of autoscaled DeviceTypes.
    #[arg(long, env = "IOT_AUTOSCALE_INTERVAL", default_value_t = 15)]
    autoscale_interval_seconds: u64,
    /// Seconds a deleted DeviceType waits for an unreachable broker before leaving its topics.
    #[arg(long, env = "IOT_TOPIC_CLEANUP_TIMEOUT", default_value_t = 300)]
    topic_cleanup_timeout_seconds: u64,
    /// Node selector of the enrichment pods, a JSON object of strings
    /// (`{"kubernetes.io/os":"linux"}`); empty: none.
    #[arg(long, env = "IOT_ENRICHMENT_NODE_SELECTOR", value_name = "JSON")]
    enrichment_node_selector: Option<String>,
    /// Tolerations of the enrichment pods, a JSON array of Kubernetes tolerations
    /// (`[{"key":"dedicated","operator":"Equal","value":"iot","effect":"NoSchedule"}]`); empty: none.
    #[arg(long, env = "IOT_ENRICHMENT_TOLERATIONS", value_name = "JSON")]
    enrichment_tolerations: Option<String>,
    /// Elect a leader through a Lease so that several replicas can run; only the leader
    /// reconciles.
    #[arg(long, env = "IOT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Deployment running this operator, in the watched namespace: it becomes the owner
    /// of the registry ConfigMap and the leader Lease, so that uninstalling removes them. Empty:
    /// no owner (an operator run from a terminal).
    #[arg(long, env = "IOT_OPERATOR_DEPLOYMENT", value_name = "NAME")]
    owner_deployment: Option<String>,
    /// Address of the admin endpoint (/livez, /readyz, /metrics).
    #[arg(long, env = "IOT_ADMIN_ADDR", default_value = "0.0.0.0:9100")]
    admin_addr: std::net::SocketAddr,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging();
    // Malformed settings fail before anything connects.
    let enrichment_node_selector = controller::config::parse_enrichment_node_selector(
        args.enrichment_node_selector.as_deref().unwrap_or_default(),
    )?;
    let enrichment_tolerations = controller::config::parse_enrichment_tolerations(
        args.enrichment_tolerations.as_deref().unwrap_or_default(),
    )?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster service account or KUBECONFIG)")?;
    let namespace = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let mut config = controller::OperatorConfig::new(namespace, args.kafka_bootstrap);
    config.topic_prefix = args.topic_prefix;
    config.worker_image = args.worker_image;
    config.registry_config_map = args.registry_configmap;
    config.shared_topic_partitions = args.shared_topic_partitions;
    config.shared_topic_replication_factor = args.shared_topic_replication_factor;
    config.scale_down_cooldown = Duration::from_secs(args.scale_down_cooldown_seconds);
    config.autoscale_interval = Duration::from_secs(args.autoscale_interval_seconds);
    config.topic_cleanup_timeout = Duration::from_secs(args.topic_cleanup_timeout_seconds);
    config.enrichment_node_selector = enrichment_node_selector;
    config.enrichment_tolerations = enrichment_tolerations;
    if let Some(name) = args.owner_deployment.filter(|n| !n.is_empty()) {
        config.owner = Some(owner_deployment(&client, &config.namespace, &name).await?);
    }
    anyhow::ensure!(
        registry::is_valid_topic_prefix(&config.topic_prefix),
        "--topic-prefix {:?}: use 1-100 characters of [a-zA-Z0-9_-]",
        config.topic_prefix
    );
    tracing::info!(
        namespace = config.namespace,
        kafka = config.kafka_bootstrap,
        prefix = config.topic_prefix,
        "starting iot-operator"
    );

    let metrics = controller::Metrics::new();
    let readiness = admin::Readiness::default();
    // Cancelled by SIGTERM / Ctrl-C, or when leadership is lost.
    let stop = CancellationToken::new();
    let admin_task = admin::serve(
        args.admin_addr,
        admin::router(readiness.clone(), metrics.registry.clone()),
        stop.clone().cancelled_owned(),
    )
    .await
    .with_context(|| format!("binding the admin endpoint {}", args.admin_addr))?;
    tokio::spawn({
        let stop = stop.clone();
        async move {
            telemetry::shutdown_signal().await;
            stop.cancel();
        }
    });
    let mut lost = None;
    if args.leader_elect {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let mut election = controller::leader::LeaderElection::new(&config.namespace, &identity);
        election.owner = config.owner.clone();
        let mut lost_rx = tokio::select! {
            rx = controller::leader::acquire(client.clone(), election) => rx,
            () = telemetry::shutdown_signal() => return Ok(()),
        };
        let lost_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        lost = Some(lost_flag.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            if lost_rx.wait_for(|v| *v).await.is_ok() {
                lost_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.cancel();
            }
        });
    }
    controller::run(
        client,
        config,
        metrics,
        readiness,
        stop.clone().cancelled_owned(),
    )
    .await?;
    admin_task.await??;
    if lost.is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)) {
        anyhow::bail!("leadership lost; exiting so the replica restarts as a candidate");
    }
    Ok(())
}

/// A non-controlling owner reference to the Deployment `name` (the one running this operator).
async fn owner_deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<OwnerReference> {
    let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), namespace);
    let deployment = api.get(name).await.with_context(|| {
        format!(
            "reading the operator's Deployment {name:?} in namespace {namespace:?} \
             (--owner-deployment / IOT_OPERATOR_DEPLOYMENT)"
        )
    })?;
    let uid = deployment.metadata.uid.with_context(|| {
        format!("the Deployment {name:?} in namespace {namespace:?} has no uid")
    })?;
    Ok(OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.into(),
        uid,
        controller: Some(false),
        block_owner_deletion: None,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(args))?;
        }
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
        Command::DeviceCredentials { command } => {
            // Async for the Kubernetes modes (`--ca-secret`, `--crl-configmap`); one thread.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(credentials::cli::run(command))?;
        }
        Command::MqttPasswordFile(args) => mosquitto_support::cli::mqtt_password_file(args)?,
        Command::MosquittoReload(args) => {
            telemetry::init_logging();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(mosquitto_support::cli::mosquitto_reload(args))?;
        }
    }
    Ok(())
}
