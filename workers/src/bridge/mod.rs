//! `iot-worker bridge`: MQTT -> Kafka, at-least-once.
//!
//! One persistent MQTT session per replica (stable client id, `clean_session=false`) with a shared
//! subscription, so replicas split the load and a restarted replica gets back what it had not
//! acknowledged. Each QoS 1 message is acknowledged to the broker only after Kafka acknowledged
//! its record (acks=all, idempotent producer): on its raw topic, or on the dead-letter topic when
//! it cannot be carried. At most `max_in_flight` messages are unacknowledged; beyond that the
//! bridge stops reading from the broker (back-pressure; the broker queues for the session).

mod carry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use iot_operator::admin::Readiness;
use rdkafka::producer::{FutureProducer, Producer};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{Semaphore, watch};

use crate::catalog::Catalog;
use crate::cli::{self, KafkaArgs, MqttArgs, RegistryArgs, ShutdownArgs};
use crate::kafka;
use crate::metrics::PipelineMetrics;
use crate::registry_file;
use crate::route::{self, Kind};
use crate::runtime::{self, Flag, Lifecycle};

/// Largest MQTT packet accepted from the broker: the protocol's maximum, so that an oversize
/// payload is dead-lettered instead of breaking the connection (and coming back for ever).
const MQTT_MAX_PACKET: usize = 268_435_455;

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
    /// Messages received and not yet acknowledged by Kafka, at most.
    #[arg(long, env = "IOT_BRIDGE_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
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

/// What one bridge process shares between its message tasks.
struct Shared {
    producer: FutureProducer,
    client: AsyncClient,
    metrics: PipelineMetrics,
    catalog: watch::Receiver<Arc<Catalog>>,
    max_payload_bytes: usize,
    abort: Flag,
}

/// Connection state behind `/readyz`.
#[derive(Default)]
struct Health {
    mqtt: AtomicBool,
    kafka: AtomicBool,
}

impl Health {
    fn publish(&self, readiness: &Readiness, metrics: &PipelineMetrics) {
        let ready = self.mqtt.load(Ordering::Relaxed) && self.kafka.load(Ordering::Relaxed);
        readiness.set(ready);
        metrics.connected.set(i64::from(ready));
    }
}

/// Runs the bridge until `life.stop`, then drains: finishes and acknowledges what is in flight
/// (until `life.abort`), disconnects cleanly, flushes the producer.
pub async fn run(args: BridgeArgs, life: Lifecycle) -> anyhow::Result<()> {
    cli::check_topic_prefix(&args.kafka.topic_prefix)?;
    cli::check_topic_root(&args.mqtt.mqtt_topic_root)?;
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    let client_id = args.client_id();
    let metrics = PipelineMetrics::new("bridge");
    let readiness = Readiness::default();
    let (done_tx, done) = runtime::flag();
    runtime::start_admin(
        args.admin_addr,
        readiness.clone(),
        metrics.registry.clone(),
        done.clone(),
    )
    .await?;
    let catalog = registry_file::watch(
        args.registry.registry_file.clone(),
        args.kafka.topic_prefix.clone(),
        Duration::from_millis(args.registry.registry_poll_ms),
        metrics.clone(),
        done.clone(),
    )?;
    let producer: FutureProducer = kafka::producer_config(&args.kafka.kafka_bootstrap, &client_id)
        .create()
        .context("creating the Kafka producer")?;

    let (host, port) = cli::parse_mqtt_url(&args.mqtt.mqtt_url)?;
    let mut options = MqttOptions::new(client_id.clone(), host, port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MQTT_MAX_PACKET, MQTT_MAX_PACKET);
    // Room for one acknowledgement per in-flight message plus control requests, so that a task
    // acknowledging never waits on the event loop (which may be waiting for a permit).
    let (client, eventloop) = AsyncClient::new(options, args.max_in_flight + 64);

    let health = Arc::new(Health::default());
    let kafka_reachable = Arc::new(AtomicBool::new(false));
    kafka::watch_reachability(
        producer.clone(),
        kafka_reachable.clone(),
        {
            let (health, readiness, metrics) = (health.clone(), readiness.clone(), metrics.clone());
            move |ok| {
                health.kafka.store(ok, Ordering::Relaxed);
                health.publish(&readiness, &metrics);
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
    });
    let permits = Arc::new(Semaphore::new(args.max_in_flight));
    let filters = subscriptions(&args.group, &args.mqtt.mqtt_topic_root);
    tracing::info!(%client_id, ?filters, mqtt = %args.mqtt.mqtt_url, "bridge starting");

    let mut eventloop = eventloop;
    let conn = Conn {
        filters: &filters,
        health: &health,
        readiness: &readiness,
        metrics: &metrics,
        client: &client,
    };
    receive(&mut eventloop, &conn, &shared, &permits, &life.stop).await;

    tracing::info!("stopping: finishing in-flight messages");
    health.mqtt.store(false, Ordering::Relaxed);
    health.publish(&readiness, &metrics);
    drain(
        &mut eventloop,
        &client,
        &permits,
        args.max_in_flight,
        &life.abort,
    )
    .await;
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
        .await
        .context("flushing the producer")?;
    if let Err(e) = flushed {
        tracing::warn!(error = %e, "producer flush incomplete");
    }
    done_tx.set();
    tracing::info!("bridge stopped");
    Ok(())
}

/// What the receive loop needs to manage the connection.
struct Conn<'a> {
    filters: &'a [String],
    health: &'a Health,
    readiness: &'a Readiness,
    metrics: &'a PipelineMetrics,
    client: &'a AsyncClient,
}

/// Polls the MQTT connection until `stop`, handing every publish to [`carry`].
async fn receive(
    eventloop: &mut EventLoop,
    conn: &Conn<'_>,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    stop: &Flag,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = stop.wait() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                let filters = conn
                    .filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = conn.client.try_subscribe_many(filters) {
                    tracing::error!(error = %e, "cannot request the subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused a subscription");
                } else {
                    tracing::info!("MQTT subscriptions active");
                    conn.health.mqtt.store(true, Ordering::Relaxed);
                    conn.health.publish(conn.readiness, conn.metrics);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                // Back-pressure: no more reading until a message in flight is acknowledged.
                let permit = tokio::select! {
                    biased;
                    () = stop.wait() => return,
                    p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                };
                carry::carry(shared, publish, permit).await;
            }
            Ok(_) => {}
            Err(e) => {
                conn.health.mqtt.store(false, Ordering::Relaxed);
                conn.health.publish(conn.readiness, conn.metrics);
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                tokio::select! {
                    () = stop.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// After `stop`: keeps the connection polled so that acknowledgements go out until every
/// in-flight message is done (or `abort`), then disconnects cleanly. Messages arriving meanwhile
/// are not acknowledged: the broker redelivers them to the session later.
async fn drain(
    eventloop: &mut EventLoop,
    client: &AsyncClient,
    permits: &Arc<Semaphore>,
    max_in_flight: usize,
    abort: &Flag,
) {
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let drained = permits.acquire_many(all);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            biased;
            _ = &mut drained => break,
            () = abort.wait() => {
                tracing::warn!("in-flight messages abandoned; they will be redelivered");
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
    if client.try_disconnect().is_err() {
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
