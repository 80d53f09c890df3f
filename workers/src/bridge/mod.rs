//! `iot-worker bridge`: MQTT -> Kafka, at-least-once.
//!
//! One persistent MQTT 5 session per replica (stable client id, no clean start, a session that
//! outlives disconnects) with a shared subscription, so replicas split the load and a restarted
//! replica gets back what it had not acknowledged. Each QoS 1 message is acknowledged to the broker
//! only after Kafka acknowledged its record (acks=all, idempotent producer): on its raw topic, or on
//! the dead-letter topic when it cannot be carried.
//!
//! Flow control: the bridge connects with Receive Maximum = `max_in_flight`, lowered so that that
//! many packets of the largest accepted size fit in the in-flight byte budget, so a conforming
//! broker never has more than that many messages unacknowledged with it and queues the rest in
//! the session. Not every broker honours it (Mosquitto before 2.0.13 was measured sending
//! thousands beyond a Receive Maximum of 8), so the bridge paces its own reads too: while
//! `max_in_flight` messages are pending it polls the connection only when a message finishes or
//! every 250 ms, which keeps PUBACKs flowing while reading little; while a PINGREQ waits for its
//! answer it reads on, so that the answer, queued behind whatever the broker sent, arrives within
//! the keep-alive. Capacity is freed when
//! Kafka's outcome is known, before the PUBACK is queued, and the PUBACK never waits for
//! capacity: nothing the poller waits for depends on the poller. (The circular wait this replaces:
//! the poll loop waited for capacity that only queued acknowledgements freed, and acknowledgements
//! could only be queued by the poll loop.)
//!
//! Scale-down: Mosquitto keeps handing a share of the group's messages to a member's session while
//! it is offline, so a replica that is stopped for good would strand them. A replica that releases
//! its share on stop (by default every StatefulSet ordinal above 0) unsubscribes first, carries
//! what its session still holds until nothing has arrived for [`RELEASE_QUIET`], and only then
//! disconnects; the group's remaining members get everything published meanwhile. Ordinal 0 keeps
//! its subscription when it stops, so the group always has a member whose session queues the
//! traffic (a single-replica restart loses nothing).

mod broker_stats;
mod carry;
pub mod progress;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use iot_process::admin::{Liveness, Readiness};
use prometheus::IntGauge;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::broker_stats::BrokerStats;
use self::carry::Incoming;
use self::progress::Progress;
use crate::catalog::Catalog;
use crate::cli::{self, KafkaArgs, MqttArgs, RegistryArgs, ShutdownArgs};
use crate::kafka;
use crate::memory;
use crate::metrics::PipelineMetrics;
use crate::registry_file;
use crate::route::{self, Kind};
use crate::runtime::{self, Lifecycle};

/// Room in an MQTT packet for everything but the payload (fixed header, topic, properties). The
/// bridge accepts packets up to its payload limit plus this, and the broker should refuse larger
/// publishes (Mosquitto's `max_packet_size`, set so by the chart and the test environment):
/// what exceeds the payload limit but fits the packet is dead-lettered as `oversize`.
pub const MQTT_PACKET_OVERHEAD: usize = 16 * 1024;

/// Session Expiry Interval meaning "never": the session and its queue outlive any outage.
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

/// First pause before reconnecting to the broker, doubled per failed attempt up to
/// [`RECONNECT_MAX`]. Short, because Mosquitto (2.0) does not restore shared subscriptions from
/// its saved state: after a broker restart, what devices publish before the bridge has
/// subscribed again has no subscriber and is dropped, so the bridge must be back first.
const RECONNECT_FIRST: Duration = Duration::from_millis(25);
const RECONNECT_MAX: Duration = Duration::from_millis(100);

/// A releasing replica disconnects once nothing has arrived for this long after the broker
/// confirmed its unsubscriptions (the broker sends what the session queued right away).
const RELEASE_QUIET: Duration = Duration::from_secs(1);

/// Whether a stopping bridge hands its share of the group back (see the module documentation).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOnStop {
    /// Release unless the client id ends in `-0` or has no ordinal (StatefulSet ordinal 0 anchors
    /// the group).
    Auto,
    Always,
    Never,
}

impl ReleaseOnStop {
    /// Whether the replica with `client_id` releases its share when it stops.
    pub fn releases(self, client_id: &str) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => client_id
                .rsplit_once('-')
                .and_then(|(_, ordinal)| ordinal.parse::<u32>().ok())
                .is_some_and(|n| n > 0),
        }
    }
}

/// Flags of `iot-worker bridge`.
#[derive(Args, Clone, Debug)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    /// MQTT client id; stable per replica (the StatefulSet pod name) so that its persistent
    /// session survives restarts. Default: `$HOSTNAME`, else `iot-bridge`.
    #[arg(long, env = "IOT_BRIDGE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Shared-subscription group: replicas in one group split the messages.
    #[arg(long, env = "IOT_BRIDGE_GROUP", default_value = "iot-bridge")]
    pub group: String,
    /// Messages received and not yet acknowledged, at most (the MQTT Receive Maximum the bridge
    /// asks the broker to respect; 1 to 65535).
    #[arg(long, env = "IOT_BRIDGE_MAX_IN_FLIGHT", default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_in_flight: u16,
    /// Seconds with messages pending and none finished after which the bridge reports itself
    /// stalled: not ready, `iot_bridge_stalled` 1, and (while Kafka answers) not live, so that
    /// Kubernetes restarts it.
    #[arg(long, env = "IOT_BRIDGE_STALL_SECONDS", default_value_t = 30)]
    pub stall_seconds: u64,
    /// Largest payload carried, in bytes; larger ones are dead-lettered (`oversize`).
    #[arg(long, env = "IOT_MAX_PAYLOAD_BYTES", default_value_t = route::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,
    /// Carry messages whose payload `device_id` is not their topic's device level (for fleets
    /// that publish through a gateway); by default they are dead-lettered
    /// (`device_id_mismatch`), so that a device cannot publish as another.
    #[arg(long, env = "IOT_BRIDGE_ALLOW_DEVICE_ID_MISMATCH")]
    pub allow_device_id_mismatch: bool,
    /// Bytes of messages in flight, at most: the Receive Maximum asked of the broker is lowered
    /// so that that many packets of the largest size fit. Default: a quarter of the container's
    /// memory limit (64 MiB without one); refused above the limit.
    #[arg(long, env = "IOT_MAX_IN_FLIGHT_BYTES")]
    pub max_in_flight_bytes: Option<u64>,
    /// On stop, unsubscribe and carry what the session holds before disconnecting, so that a
    /// replica removed by a scale-down strands nothing: `auto` (every StatefulSet ordinal but 0),
    /// `always` or `never`.
    #[arg(long, env = "IOT_BRIDGE_RELEASE_ON_STOP", value_enum, default_value_t = ReleaseOnStop::Auto)]
    pub release_on_stop: ReleaseOnStop,
    /// Admin endpoint (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "IOT_ADMIN_ADDR", default_value = "0.0.0.0:9101")]
    pub admin_addr: SocketAddr,
}

impl BridgeArgs {
    fn client_id(&self) -> String {
        self.client_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "iot-bridge".to_string())
    }
}

/// The largest MQTT packet the bridge takes for a payload limit of `max_payload_bytes` (within
/// the protocol's maximum of 268,435,455 bytes).
pub fn max_packet(max_payload_bytes: usize) -> u32 {
    u32::try_from(max_payload_bytes.saturating_add(MQTT_PACKET_OVERHEAD))
        .unwrap_or(u32::MAX)
        .min(268_435_455)
}

/// The Receive Maximum the bridge asks of the broker: `max_in_flight`, lowered so that that many
/// packets of `max_packet` bytes fit in `budget` bytes (at least 1). The broker never has more
/// messages than this unacknowledged with the bridge, so the bytes in flight stay within the
/// budget whatever the payload sizes.
pub fn receive_maximum(max_in_flight: u16, budget: u64, max_packet: u32) -> u16 {
    let fit = budget / u64::from(max_packet.max(1));
    u16::try_from(fit.clamp(1, u64::from(max_in_flight))).unwrap_or(max_in_flight)
}

/// The MQTT subscriptions of a bridge in `group` for devices under `root`.
pub fn subscriptions(group: &str, root: &str) -> Vec<String> {
    Kind::ALL
        .iter()
        .map(|kind| format!("$share/{group}/{root}/+/{kind}"))
        .collect()
}

/// What the pump, the carrier and the message tasks of one bridge process share.
struct Shared {
    producer: FutureProducer,
    client: AsyncClient,
    metrics: PipelineMetrics,
    catalog: watch::Receiver<Arc<Catalog>>,
    checks: route::Checks,
    abort: CancellationToken,
    progress: Progress,
    /// Finished messages whose PUBACK is not queued yet (the drain waits for 0).
    acks_owed: AtomicU64,
    /// Messages of the current connection given up without a PUBACK (their dead letter could
    /// not be written). Each holds one of the broker's Receive Maximum slots until the next
    /// connection, where the broker redelivers it.
    unacked: AtomicU64,
    /// Woken whenever a message is finished or its PUBACK queued (pump and drain wait on it).
    finished: Notify,
    /// Number of the current MQTT connection: a message received on an earlier connection is
    /// not acknowledged (the broker redelivers it on the new one, and its packet id may have been
    /// reused).
    connection: AtomicU64,
    /// Settings of the producer that retries a refused record in a batch of its own, created on
    /// first use.
    isolating_config: ClientConfig,
    isolating: OnceLock<FutureProducer>,
    /// A fatal producer error: the bridge stops (not ready first) and exits with it.
    fatal: CancellationToken,
    fatal_error: Mutex<Option<String>>,
}

impl Shared {
    /// The producer that sends one record per batch (see [`kafka::deliver_alone`]).
    fn isolating_producer(&self) -> Result<&FutureProducer, kafka::DeliveryError> {
        if let Some(p) = self.isolating.get() {
            return Ok(p);
        }
        let created: FutureProducer = self.isolating_config.create().map_err(|e| {
            kafka::DeliveryError::Fatal(format!("creating the isolating producer: {e}"))
        })?;
        Ok(self.isolating.get_or_init(|| created))
    }

    /// The producer can no longer deliver: stop the bridge, which then exits with `error`.
    fn fail(&self, error: String) {
        let mut first = self.fatal_error.lock().expect("fatal error lock");
        if first.is_none() {
            tracing::error!(%error, "fatal Kafka producer error: stopping (unacknowledged messages are redelivered to the restarted bridge)");
            *first = Some(error);
        }
        self.fatal.cancel();
    }

    /// Kafka's outcome for a message is known: its capacity is free. `ack` says whether a PUBACK
    /// follows (see [`Shared::acked`]).
    fn finish(&self, ack: bool) {
        if ack {
            self.acks_owed.fetch_add(1, Ordering::AcqRel);
        }
        self.metrics.in_flight.dec();
        self.progress.finished();
        self.finished.notify_waiters();
    }

    /// Kafka's outcome is known but the message cannot be acknowledged: the broker keeps it (and,
    /// on the current connection, one of its window's slots) until it redelivers it.
    fn give_up(&self, connection: u64) {
        if self.is_current(connection) {
            self.unacked.fetch_add(1, Ordering::AcqRel);
        }
        self.finish(false);
    }

    /// Whether `connection` is the current MQTT connection.
    fn is_current(&self, connection: u64) -> bool {
        connection == self.connection.load(Ordering::Acquire)
    }

    /// Returns at the next finish or queued PUBACK, or at once when `done` already holds
    /// (checked after arming, so no wake-up is missed in between).
    async fn next_change_unless(&self, done: impl Fn(&Self) -> bool) {
        let changed = self.finished.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !done(self) {
            changed.await;
        }
    }

    /// The PUBACK of a finished message is queued (or given up).
    fn acked(&self) {
        self.acks_owed.fetch_sub(1, Ordering::AcqRel);
        self.finished.notify_waiters();
    }

    /// Nothing pending and every PUBACK queued.
    fn settled(&self) -> bool {
        self.progress.pending() == 0 && self.acks_owed.load(Ordering::Acquire) == 0
    }
}

/// Connection and stall state behind `/readyz`, `/livez` and `iot_bridge_stalled`.
struct Health {
    mqtt: AtomicBool,
    kafka: AtomicBool,
    stalled: AtomicBool,
    /// A fatal producer error: never ready again (the process is ending).
    fatal: AtomicBool,
    readiness: Readiness,
    liveness: Liveness,
    stalled_gauge: IntGauge,
}

impl Health {
    fn new(metrics: &PipelineMetrics) -> anyhow::Result<Self> {
        let stalled_gauge = IntGauge::new(
            "iot_bridge_stalled",
            "1 while messages are pending and none has been finished for IOT_BRIDGE_STALL_SECONDS",
        )?;
        metrics.registry.register(Box::new(stalled_gauge.clone()))?;
        Ok(Self {
            mqtt: AtomicBool::new(false),
            kafka: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            readiness: Readiness::default(),
            liveness: Liveness::default(),
            stalled_gauge,
        })
    }

    fn publish(&self, metrics: &PipelineMetrics) {
        let connected = self.mqtt.load(Ordering::Relaxed) && self.kafka.load(Ordering::Relaxed);
        let stalled = self.stalled.load(Ordering::Relaxed);
        self.readiness
            .set(connected && !stalled && !self.fatal.load(Ordering::Relaxed));
        // A restart cures a stuck process, not a broker outage: only a stall while Kafka answers
        // fails liveness.
        self.liveness
            .set(!(stalled && self.kafka.load(Ordering::Relaxed)));
        metrics.connected.set(i64::from(connected));
        self.stalled_gauge.set(i64::from(stalled));
    }
}

/// Runs the bridge until `life.stop`, then drains: finishes and acknowledges what is in flight
/// (until `life.abort`), disconnects cleanly, flushes the producer.
pub async fn run(args: BridgeArgs, life: Lifecycle) -> anyhow::Result<()> {
    cli::check_topic_prefix(&args.kafka.topic_prefix)?;
    cli::check_topic_root(&args.mqtt.mqtt_topic_root)?;
    anyhow::ensure!(args.stall_seconds > 0, "--stall-seconds must be at least 1");
    let client_id = args.client_id();
    let limit = memory::memory_limit();
    let budget = memory::choose_budget(args.max_in_flight_bytes, limit)
        .context("--max-in-flight-bytes / IOT_MAX_IN_FLIGHT_BYTES")?;
    let max_packet = max_packet(args.max_payload_bytes);
    let window = receive_maximum(args.max_in_flight, budget, max_packet);
    tracing::info!(
        memory_limit = ?limit,
        in_flight_bytes = budget,
        max_packet,
        receive_maximum = window,
        "in-flight messages bounded by count and bytes"
    );
    let metrics = PipelineMetrics::new("bridge");
    let health = Arc::new(Health::new(&metrics)?);
    let started = runtime::start(
        args.admin_addr,
        health.readiness.clone(),
        health.liveness.clone(),
        metrics.registry.clone(),
    )
    .await?;
    let done = started.done.clone();
    let catalog = registry_file::watch(
        args.registry.registry_file.clone(),
        args.kafka.topic_prefix.clone(),
        Duration::from_millis(args.registry.registry_poll_ms),
        metrics.clone(),
        done.clone(),
    )?;
    let producer: FutureProducer = kafka::producer_config(&args.kafka, &client_id)
        .create()
        .context("creating the Kafka producer")?;

    let (host, port, security) = args.mqtt.connection()?;
    let mut options = MqttOptions::new(client_id.clone(), host, port);
    security.apply_v5(&mut options);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_NEVER_EXPIRES))
        .set_receive_maximum(Some(window))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(max_packet));
    // Room for the acknowledgements of a full window, plus control requests. A full channel only
    // delays an acknowledgement: its message's capacity is already free, and the pump drains the
    // channel whenever it polls.
    let (client, eventloop) = AsyncClient::new(options, usize::from(window) + 64);

    let shared = Arc::new(Shared {
        producer: producer.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        catalog,
        checks: route::Checks {
            max_payload_bytes: args.max_payload_bytes,
            device_id_matches_topic: !args.allow_device_id_mismatch,
        },
        abort: life.abort.clone(),
        progress: Progress::default(),
        acks_owed: AtomicU64::new(0),
        unacked: AtomicU64::new(0),
        finished: Notify::new(),
        connection: AtomicU64::new(0),
        isolating_config: kafka::isolating_producer_config(
            &args.kafka,
            &format!("{client_id}-isolating"),
        ),
        isolating: OnceLock::new(),
        fatal: CancellationToken::new(),
        fatal_error: Mutex::new(None),
    });
    let probe = kafka::ReachabilityProbe::new(kafka::connection_config(&args.kafka));
    kafka::watch_reachability(
        {
            let producer = producer.clone();
            move || probe.check(producer.client())
        },
        {
            let (health, metrics) = (health.clone(), metrics.clone());
            move |ok| {
                health.kafka.store(ok, Ordering::Relaxed);
                health.publish(&metrics);
            }
        },
        {
            let shared = shared.clone();
            move |error| shared.fail(error)
        },
        done.clone(),
    );
    watch_stalls(
        shared.clone(),
        health.clone(),
        Duration::from_secs(args.stall_seconds),
        u64::from(window),
        done.clone(),
    );
    let (to_carrier, from_pump) = mpsc::unbounded_channel();
    let carrier = tokio::spawn(carry::carrier(shared.clone(), from_pump));
    let filters = subscriptions(&args.group, &args.mqtt.mqtt_topic_root);
    let releases = args.release_on_stop.releases(&client_id);
    tracing::info!(%client_id, ?filters, mqtt = %args.mqtt.mqtt_url, max_in_flight = args.max_in_flight, releases_on_stop = releases, "bridge starting");

    let mut eventloop = eventloop;
    let pump = Pump {
        filters: &filters,
        health: &health,
        shared: &shared,
        to_carrier,
        max_in_flight: u64::from(window),
        broker_stats: BrokerStats::new(&metrics.registry)?,
        release: Release::default(),
    };
    // Stop at the signal, or at a fatal producer error.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (stop, signal, fatal) = (stop.clone(), life.stop.clone(), shared.fatal.clone());
        async move {
            tokio::select! {
                () = signal.cancelled() => {}
                () = fatal.cancelled() => {}
            }
            stop.cancel();
        }
    });
    pump.run(&mut eventloop, &stop).await;

    let fatal = shared.fatal_error.lock().expect("fatal error lock").clone();
    if let Some(error) = fatal {
        health.fatal.store(true, Ordering::Relaxed);
        health.publish(&metrics);
        // Nothing more can be carried; what is pending stays unacknowledged and comes back.
        let _ = shared.client.try_disconnect();
        drop(started);
        anyhow::bail!("fatal Kafka producer error: {error}");
    }
    if releases {
        pump.release(&mut eventloop, &life.abort).await;
    }
    tracing::info!("stopping: finishing in-flight messages");
    health.mqtt.store(false, Ordering::Relaxed);
    health.publish(&metrics);
    drain(&mut eventloop, &shared, &life.abort).await;
    carrier.abort();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
        .await
        .context("flushing the producer")?;
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "producer flush incomplete");
    }
    drop(started);
    tracing::info!("bridge stopped");
    Ok(())
}

/// Checks the stall rule every second and publishes it (readiness, liveness, metric, one log
/// line per change).
///
/// A bridge is also stalled when messages it gave up without a PUBACK fill the broker's window
/// (`window`): the broker then sends nothing more on this connection, with nothing pending here.
fn watch_stalls(
    shared: Arc<Shared>,
    health: Arc<Health>,
    bound: Duration,
    window: u64,
    done: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                _ = tick.tick() => {}
            }
            let unacked = shared.unacked.load(Ordering::Acquire);
            let exhausted = unacked >= window;
            let stalled = shared.progress.is_stalled(bound) || exhausted;
            if stalled != health.stalled.swap(stalled, Ordering::Relaxed) {
                if exhausted {
                    tracing::error!(
                        unacked,
                        window,
                        "stalled: messages that could not be carried hold the broker's whole window"
                    );
                } else if stalled {
                    tracing::error!(
                        pending = shared.progress.pending(),
                        seconds_without_progress = shared.progress.since_moved().as_secs(),
                        "stalled: messages are pending and none is being finished"
                    );
                } else {
                    tracing::info!("progressing again");
                }
            }
            health.publish(&shared.metrics);
        }
    });
}

/// The task that owns the MQTT connection: it polls it without ever waiting on anything else.
struct Pump<'a> {
    filters: &'a [String],
    health: &'a Health,
    shared: &'a Shared,
    to_carrier: mpsc::UnboundedSender<Incoming>,
    max_in_flight: u64,
    broker_stats: BrokerStats,
    release: Release,
}

/// State of a replica handing its share of the group back.
struct Release {
    /// Set once the replica stops: connections subscribe no more, they unsubscribe.
    releasing: AtomicBool,
    /// UNSUBACKs received on the current connection.
    unsubscribed: AtomicUsize,
    /// When the last publish arrived.
    last_publish: std::sync::Mutex<Instant>,
}

impl Default for Release {
    fn default() -> Self {
        Self {
            releasing: AtomicBool::new(false),
            unsubscribed: AtomicUsize::new(0),
            last_publish: std::sync::Mutex::new(Instant::now()),
        }
    }
}

impl Pump<'_> {
    /// Every filter of this bridge: the shared telemetry subscriptions, then the broker's own
    /// statistics (QoS 0, outside the group).
    fn all_filters(&self) -> Vec<Filter> {
        let telemetry = self
            .filters
            .iter()
            .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
        let stats = broker_stats::TOPICS
            .iter()
            .map(|t| Filter::new((*t).to_string(), QoS::AtMostOnce));
        telemetry.chain(stats).collect()
    }

    /// Asks for the subscriptions, or while releasing for their removal. Queued from a task: the
    /// request channel may be full of acknowledgements, which only the pump drains.
    fn request_subscriptions(&self) {
        let filters = self.all_filters();
        let client = self.shared.client.clone();
        if self.release.releasing.load(Ordering::Acquire) {
            self.release.unsubscribed.store(0, Ordering::Release);
            tokio::spawn(async move {
                for f in filters {
                    if let Err(e) = client.unsubscribe(f.path).await {
                        tracing::error!(error = %e, "cannot request an unsubscription");
                    }
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::error!(error = %e, "cannot request the subscriptions");
                }
            });
        }
    }

    /// Hands this replica's share of the group back: unsubscribes, carries what the session still
    /// delivers, and returns once the broker confirmed every unsubscription, everything received
    /// is finished and nothing has arrived for [`RELEASE_QUIET`] (or at `abort`).
    async fn release(&self, eventloop: &mut EventLoop, abort: &CancellationToken) {
        tracing::info!("releasing this replica's share of the group: unsubscribing");
        self.release.releasing.store(true, Ordering::Release);
        *self.release.last_publish.lock().expect("release lock") = Instant::now();
        self.request_subscriptions();
        let wanted = self.all_filters().len();
        let released = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let quiet = self
                    .release
                    .last_publish
                    .lock()
                    .expect("release lock")
                    .elapsed()
                    >= RELEASE_QUIET;
                if self.release.unsubscribed.load(Ordering::Acquire) >= wanted
                    && self.shared.settled()
                    && quiet
                {
                    return;
                }
            }
        };
        let never = CancellationToken::new();
        tokio::select! {
            () = released => tracing::info!("share released: the group's other members take the traffic"),
            () = abort.cancelled() => tracing::warn!("grace period over before the share was released"),
            () = self.run(eventloop, &never) => {}
        }
    }

    /// Polls the MQTT connection until `stop`, handing every publish to the carrier.
    async fn run(&self, eventloop: &mut EventLoop, stop: &CancellationToken) {
        let mut over_window_logged = false;
        let mut reconnect = RECONNECT_FIRST;
        let mut failures = 0u64;
        loop {
            if self.shared.progress.pending() >= self.max_in_flight
                && !eventloop.state.await_pingresp
            {
                // A full window: read no more until a message finishes, but poll at least every
                // 250 ms so that acknowledgements and keep-alives still go out.
                let window_open = |s: &Shared| s.progress.pending() < self.max_in_flight;
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = self.shared.next_change_unless(window_open) => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            let event = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    reconnect = RECONNECT_FIRST;
                    failures = 0;
                    let n = self.shared.connection.fetch_add(1, Ordering::AcqRel) + 1;
                    // The broker redelivers what the last connection left unacknowledged.
                    self.shared.unacked.store(0, Ordering::Release);
                    tracing::info!(
                        session_present = ack.session_present,
                        connection = n,
                        "MQTT connected"
                    );
                    self.request_subscriptions();
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    // The telemetry filters come first; the broker statistics are optional.
                    let (telemetry, stats) = ack
                        .return_codes
                        .split_at(self.filters.len().min(ack.return_codes.len()));
                    let ok = |c: &SubscribeReasonCode| matches!(c, SubscribeReasonCode::Success(_));
                    if telemetry.iter().all(ok) {
                        tracing::info!("MQTT subscriptions active");
                        self.health.mqtt.store(true, Ordering::Relaxed);
                        self.health.publish(&self.shared.metrics);
                    } else {
                        tracing::error!(codes = ?ack.return_codes, "the broker refused a subscription");
                    }
                    if !stats.iter().all(ok) {
                        tracing::warn!(codes = ?stats, "the broker refused its $SYS statistics; iot_mqtt_broker_* metrics stay absent");
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                    self.release.unsubscribed.fetch_add(1, Ordering::AcqRel);
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if broker_stats::is_broker_topic(&publish.topic) =>
                {
                    self.broker_stats.observe(&publish.topic, &publish.payload);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    *self.release.last_publish.lock().expect("release lock") = Instant::now();
                    self.shared.progress.received();
                    self.shared.metrics.in_flight.inc();
                    let pending = self.shared.progress.pending();
                    if pending > self.max_in_flight && !over_window_logged {
                        over_window_logged = true;
                        tracing::info!(
                            pending,
                            max = self.max_in_flight,
                            "the broker sends beyond the Receive Maximum; the bridge paces its reads instead"
                        );
                    }
                    let incoming = Incoming {
                        publish,
                        connection: self.shared.connection.load(Ordering::Acquire),
                    };
                    if self.to_carrier.send(incoming).is_err() {
                        tracing::error!("the carrier task ended; stopping");
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.health.mqtt.store(false, Ordering::Relaxed);
                    self.health.publish(&self.shared.metrics);
                    // One line per outage, then one per ~10 s of retries.
                    if failures.is_multiple_of(100) {
                        tracing::warn!(error = %e, attempts = failures + 1, "MQTT connection lost; reconnecting");
                    }
                    failures += 1;
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(reconnect) => {}
                    }
                    reconnect = (reconnect * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
}

/// After `stop`: keeps the connection polled so that acknowledgements go out until every
/// message handed to the carrier is finished (or `abort`), then disconnects cleanly. Messages
/// arriving meanwhile are not acknowledged: the broker redelivers them to the session later.
async fn drain(eventloop: &mut EventLoop, shared: &Shared, abort: &CancellationToken) {
    while !shared.settled() {
        tokio::select! {
            biased;
            () = shared.next_change_unless(Shared::settled) => {}
            () = abort.cancelled() => {
                tracing::warn!(pending = shared.progress.pending(), "in-flight messages abandoned; they will be redelivered");
                break;
            }
            event = eventloop.poll() => {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "MQTT connection lost while draining");
                    return;
                }
            }
        }
    }
    if shared.client.try_disconnect().is_err() {
        return;
    }
    // After DISCONNECT, read until the broker closes the connection. Closing our end while its
    // messages are still unread would make the kernel reset the connection, and the broker could
    // drop our last acknowledgements with it (they would come back as duplicates).
    let disconnected = async {
        let mut sent = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => sent = true,
                Ok(_) => {}
                Err(_) => return sent,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), disconnected).await {
        Ok(true) => tracing::info!("MQTT session closed cleanly"),
        Ok(false) => tracing::warn!("MQTT connection lost before the disconnect was sent"),
        Err(_) => tracing::warn!("the broker did not close the MQTT connection within 5 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fits_the_byte_budget() {
        let packet = max_packet(256 * 1024);
        assert_eq!(packet, 272 * 1024);
        // 64 MiB of 272 KiB packets: 240.
        assert_eq!(receive_maximum(1000, 64 * 1024 * 1024, packet), 240);
        // A budget larger than the count needs: the count.
        assert_eq!(receive_maximum(1000, 1 << 40, packet), 1000);
        // A budget below one packet: one at a time, never zero.
        assert_eq!(receive_maximum(1000, 1024, packet), 1);
        assert_eq!(max_packet(usize::MAX), 268_435_455);
    }

    #[test]
    fn every_statefulset_ordinal_but_0_releases_its_share_by_default() {
        let auto = ReleaseOnStop::Auto;
        assert!(!auto.releases("iot-bridge-0"));
        assert!(auto.releases("iot-bridge-1"));
        assert!(auto.releases("iot-bridge-12"));
        assert!(!auto.releases("iot-bridge"));
        assert!(!auto.releases("bridge-x"));
        assert!(ReleaseOnStop::Always.releases("iot-bridge-0"));
        assert!(!ReleaseOnStop::Never.releases("iot-bridge-3"));
    }

    #[test]
    fn shared_subscriptions_cover_the_three_kinds() {
        assert_eq!(
            subscriptions("iot-bridge", "iot"),
            [
                "$share/iot-bridge/iot/+/raw",
                "$share/iot-bridge/iot/+/trends",
                "$share/iot-bridge/iot/+/status"
            ]
        );
    }
}
