//! `iot-worker dashboard`: the live web dashboard.
//!
//! An Overview tab (rates per stage and device type, dead letters by reason, devices online and
//! offline, the registry, the message flow, recent messages) and one tab per active Application of
//! the registry, fed only from the enriched topics of that application's device types. Updates are
//! pushed to the browser once a second over server-sent events; the page, its scripts and charts
//! are embedded in the binary.
//!
//! Sans-IO core (unit-tested): [`layout`] (the registry as tabs and topics), [`overview`] and
//! [`app_view`] (aggregation), [`devices`], [`message`], [`window`]. I/O at the edges: [`source`]
//! (Kafka, read without a consumer group from the end of the topics), [`registry_watch`], [`http`];
//! [`hub`] joins them.

pub mod app_view;
pub mod devices;
pub mod http;
pub mod hub;
pub mod layout;
pub mod message;
pub mod metrics;
pub mod overview;
pub mod registry_watch;
pub mod source;
pub mod window;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use iot_process::admin::{self, Readiness};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::hub::{Hub, KafkaStatus};
use self::layout::Layout;
use self::source::now_ms;
use crate::cli::{self, KafkaArgs, RegistryArgs};
use crate::runtime::Lifecycle;
use tokio_util::sync::CancellationToken;

/// How often every open stream gets an update.
pub const TICK: Duration = Duration::from_secs(1);

/// Flags of `iot-worker dashboard`.
#[derive(Args, Clone, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Address of the page, its JSON API and live streams, and of `/livez`, `/readyz`, `/metrics`.
    #[arg(long, env = "IOT_DASHBOARD_ADDR", default_value = "0.0.0.0:5001")]
    pub addr: SocketAddr,
}

/// A started dashboard.
pub struct Running {
    /// The address it listens on (the bound port when asked for port 0).
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    server: JoinHandle<std::io::Result<()>>,
    source: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs until the stop flag is set and the server has closed, or until the Kafka consumer
    /// fails for good.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            served = &mut self.server => {
                served.context("HTTP server task")?.context("HTTP server")?;
                self.source.await.context("Kafka consumer task")?
            }
            consumed = &mut self.source => {
                consumed.context("Kafka consumer task")??;
                self.server.await.context("HTTP server task")?.context("HTTP server")?;
                Ok(())
            }
        }
    }
}

/// Binds the address, loads the registry (if there is one yet) and starts consuming, pushing and
/// serving until `stop`.
pub async fn start(args: DashboardArgs, stop: CancellationToken) -> anyhow::Result<Running> {
    let prefix = args.kafka.topic_prefix.clone();
    cli::check_topic_prefix(&prefix)?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("dashboard address {}", args.addr))?;
    let addr = listener.local_addr()?;

    let path = args.registry.registry_file.clone();
    let (layout, status) = registry_watch::load(&path, &prefix);
    let layout = match layout {
        Ok(layout) => layout,
        Err(e) => {
            tracing::warn!(error = %e, "starting without a registry");
            Layout::new(None, &prefix)
        }
    };
    let kafka = KafkaStatus {
        bootstrap: args.kafka.kafka_bootstrap.clone(),
        error: Some("not checked yet".into()),
        ..KafkaStatus::default()
    };
    let hub = Arc::new(Hub::new(layout, kafka, status, now_ms()));
    let readiness = Readiness::default();

    let source = tokio::spawn(source::run(
        args.kafka.kafka_bootstrap.clone(),
        source::unique_group(&prefix),
        hub.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    tokio::spawn(registry_watch::watch(
        path,
        prefix,
        Duration::from_millis(args.registry.registry_poll_ms.max(1)),
        hub.clone(),
        stop.clone(),
    ));
    tokio::spawn({
        let (hub, stop) = (hub.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => hub.tick(now_ms()),
                }
            }
        }
    });

    let router = http::router(hub.clone(), stop.clone())
        .merge(admin::router(readiness, hub.metrics.registry.clone()));
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future(),
    );
    tracing::info!(%addr, "dashboard listening");
    Ok(Running {
        addr,
        hub,
        server,
        source,
    })
}

/// `iot-worker dashboard`: serves until SIGTERM.
pub async fn run(args: DashboardArgs, life: Lifecycle) -> anyhow::Result<()> {
    start(args, life.stop).await?.wait().await
}
