//! `iot-worker bridge`: MQTT -> Kafka, at-least-once.
//!
//! One persistent MQTT 5 session per replica (stable client id, no clean start, a session that
//! outlives disconnects) with a shared subscription, so replicas split the load and a restarted
//! replica gets back what it had not acknowledged. Each QoS 1 message is acknowledged to the broker
//! only after Kafka acknowledged its record (acks=all, idempotent producer): on its raw topic, or on
//! the dead-letter topic when it cannot be carried.
//!
//! Flow control: the bridge connects with Receive Maximum = `max_in_flight`, so a conforming
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

mod carry;
pub mod progress;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use iot_process::admin::{Liveness, Readiness};
use prometheus::IntGauge;
use rdkafka::producer::{FutureProducer, Producer};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::carry::Incoming;
use self::progress::Progress;
use crate::catalog::Catalog;
use crate::cli::{self, KafkaArgs, MqttArgs, RegistryArgs, ShutdownArgs};
use crate::kafka;
use crate::metrics::PipelineMetrics;
use crate::registry_file;
use crate::route::{self, Kind};
use crate::runtime::{self, Lifecycle};

/// Largest MQTT packet accepted from the broker: the protocol's maximum, so that an oversize
/// payload is dead-lettered instead of breaking the connection (and coming back for ever).
const MQTT_MAX_PACKET: u32 = 268_435_455;

/// Session Expiry Interval meaning "never": the session and its queue outlive any outage.
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

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
    max_payload_bytes: usize,
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
}

impl Shared {
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
            readiness: Readiness::default(),
            liveness: Liveness::default(),
            stalled_gauge,
        })
    }

    fn publish(&self, metrics: &PipelineMetrics) {
        let connected = self.mqtt.load(Ordering::Relaxed) && self.kafka.load(Ordering::Relaxed);
        let stalled = self.stalled.load(Ordering::Relaxed);
        self.readiness.set(connected && !stalled);
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

    let (host, port) = cli::parse_mqtt_url(&args.mqtt.mqtt_url)?;
    let mut options = MqttOptions::new(client_id.clone(), host, port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_NEVER_EXPIRES))
        .set_receive_maximum(Some(args.max_in_flight))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(MQTT_MAX_PACKET));
    // Room for the acknowledgements of a full window, plus control requests. A full channel only
    // delays an acknowledgement: its message's capacity is already free, and the pump drains the
    // channel whenever it polls.
    let (client, eventloop) = AsyncClient::new(options, usize::from(args.max_in_flight) + 64);

    let kafka_reachable = Arc::new(AtomicBool::new(false));
    kafka::watch_reachability(
        producer.clone(),
        kafka_reachable.clone(),
        {
            let (health, metrics) = (health.clone(), metrics.clone());
            move |ok| {
                health.kafka.store(ok, Ordering::Relaxed);
                health.publish(&metrics);
            }
        },
        done.clone(),
    );
    let shared = Arc::new(Shared {
        producer: producer.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        catalog,
        max_payload_bytes: args.max_payload_bytes,
        abort: life.abort.clone(),
        progress: Progress::default(),
        acks_owed: AtomicU64::new(0),
        unacked: AtomicU64::new(0),
        finished: Notify::new(),
        connection: AtomicU64::new(0),
    });
    watch_stalls(
        shared.clone(),
        health.clone(),
        Duration::from_secs(args.stall_seconds),
        u64::from(args.max_in_flight),
        done.clone(),
    );
    let (to_carrier, from_pump) = mpsc::unbounded_channel();
    let carrier = tokio::spawn(carry::carrier(shared.clone(), from_pump));
    let filters = subscriptions(&args.group, &args.mqtt.mqtt_topic_root);
    tracing::info!(%client_id, ?filters, mqtt = %args.mqtt.mqtt_url, max_in_flight = args.max_in_flight, "bridge starting");

    let mut eventloop = eventloop;
    let pump = Pump {
        filters: &filters,
        health: &health,
        shared: &shared,
        to_carrier,
        max_in_flight: u64::from(args.max_in_flight),
    };
    pump.run(&mut eventloop, &life.stop).await;

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
}

impl Pump<'_> {
    /// Polls the MQTT connection until `stop`, handing every publish to the carrier.
    async fn run(&self, eventloop: &mut EventLoop, stop: &CancellationToken) {
        let mut over_window_logged = false;
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
                    let n = self.shared.connection.fetch_add(1, Ordering::AcqRel) + 1;
                    // The broker redelivers what the last connection left unacknowledged.
                    self.shared.unacked.store(0, Ordering::Release);
                    tracing::info!(
                        session_present = ack.session_present,
                        connection = n,
                        "MQTT connected"
                    );
                    // Queued from a task: the request channel may be full of acknowledgements,
                    // which only this loop drains.
                    let filters: Vec<Filter> = self
                        .filters
                        .iter()
                        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
                        .collect();
                    let client = self.shared.client.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client.subscribe_many(filters).await {
                            tracing::error!(error = %e, "cannot request the subscriptions");
                        }
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        tracing::info!("MQTT subscriptions active");
                        self.health.mqtt.store(true, Ordering::Relaxed);
                        self.health.publish(&self.shared.metrics);
                    } else {
                        tracing::error!(codes = ?ack.return_codes, "the broker refused a subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
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
                    tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
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
