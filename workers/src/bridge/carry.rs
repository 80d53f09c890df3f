//! One message through the bridge: route it, produce its record, and acknowledge it to the
//! MQTT broker once Kafka has acknowledged the record.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::mpsc;

use super::Shared;
use crate::catalog::Catalog;
use crate::clock;
use crate::kafka::{self, DeliveryError, OutRecord, headers};
use crate::metrics::PipelineMetrics;
use crate::route::{self, Kind, Reason, Rejection};

/// What became of a message.
enum Carried {
    Routed {
        device_type: String,
        kind: Kind,
        device_timestamp: Option<jiff::Timestamp>,
    },
    DeadLettered(Reason),
}

/// A message the pump received, for the carrier.
pub(super) struct Incoming {
    pub publish: Publish,
    /// The MQTT connection it arrived on (see `Shared::connection`).
    pub connection: u64,
}

/// One MQTT message with its topic as text.
struct Message {
    topic: String,
    publish: Publish,
    connection: u64,
}

impl Message {
    fn payload(&self) -> &Bytes {
        &self.publish.payload
    }
}

/// Carries the messages the pump hands over, in arrival order, until the pump is gone.
pub(super) async fn carrier(shared: Arc<Shared>, mut from_pump: mpsc::UnboundedReceiver<Incoming>) {
    while let Some(incoming) = from_pump.recv().await {
        carry(&shared, incoming).await;
    }
}

/// Routes one message, hands its record to the producer (in arrival order, which keeps each
/// device's messages in order) and spawns the wait for Kafka's acknowledgement, after which the
/// MQTT message is acknowledged.
async fn carry(shared: &Arc<Shared>, incoming: Incoming) {
    let received_at = clock::now();
    let Incoming {
        publish,
        connection,
    } = incoming;
    // MQTT topic names are UTF-8 by the protocol; a broken one is kept visible, not dropped.
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let publish = Message {
        topic,
        publish,
        connection,
    };
    let kind = route::kind_of_topic(&publish.topic);
    shared
        .metrics
        .received
        .with_label_values(&[kind.map_or("unknown", Kind::as_str)])
        .inc();
    let catalog = shared.catalog.borrow().clone();
    let received = clock::rfc3339(received_at);
    let (record, carried) =
        match route::route(&publish.topic, publish.payload(), &catalog, shared.checks) {
            Ok(r) => {
                let record = OutRecord {
                    topic: r.topic,
                    key: r.key,
                    payload: publish.payload().clone(),
                    headers: vec![
                        (headers::MQTT_TOPIC, publish.topic.clone()),
                        (headers::KIND, r.kind.as_str().to_string()),
                        (headers::RECEIVED_AT, received),
                        (headers::DEVICE_TYPE, r.device_type.clone()),
                    ],
                };
                let carried = Carried::Routed {
                    device_type: r.device_type,
                    kind: r.kind,
                    device_timestamp: r.device_timestamp,
                };
                (record, carried)
            }
            Err(rejection) => {
                let reason = rejection.reason;
                (
                    dead_letter(&catalog, &publish, &rejection, received),
                    Carried::DeadLettered(reason),
                )
            }
        };
    let first = kafka::enqueue(&shared.producer, &record).await;
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = finish(&shared, &publish, record, first, carried, &catalog).await;
        match outcome {
            Ok(carried) => {
                account(&shared.metrics, &carried);
                // Capacity first, then the PUBACK: queueing it may wait for the pump, and the
                // pump may be waiting for capacity. The drain waits for the PUBACK too.
                shared.finish(true);
                acknowledge(&shared, &publish).await;
                shared.acked();
            }
            Err(DeliveryError::Fatal(e)) => {
                // Not acknowledged: the session hands it to the restarted process.
                shared.give_up(publish.connection);
                shared.fail(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = %publish.topic, "message not acknowledged; the broker will redeliver it");
                shared.give_up(publish.connection);
            }
        }
    });
}

/// Acknowledges a carried message to the broker, unless it arrived on an earlier connection
/// (the broker has redelivered it on the current one, where it is carried again).
async fn acknowledge(shared: &Shared, message: &Message) {
    if !shared.is_current(message.connection) {
        return;
    }
    if let Err(e) = shared.client.ack(&message.publish).await {
        tracing::warn!(error = %e, topic = %message.topic, "MQTT acknowledgement not sent; the broker will redeliver");
    }
}

/// Waits for the record's acknowledgement; a record Kafka cannot take goes to the dead-letter
/// topic instead.
async fn finish(
    shared: &Shared,
    publish: &Message,
    record: OutRecord,
    first: Result<rdkafka::producer::DeliveryFuture, rdkafka::error::KafkaError>,
    carried: Carried,
    catalog: &Catalog,
) -> Result<Carried, DeliveryError> {
    let reason = match kafka::deliver(
        &shared.producer,
        &record,
        first,
        &shared.metrics,
        &shared.abort,
    )
    .await
    {
        Ok(_) => return Ok(carried),
        Err(e @ (DeliveryError::Aborted | DeliveryError::Fatal(_))) => return Err(e),
        Err(e) if record.topic == catalog.deadletter_topic => return Err(e),
        Err(DeliveryError::TopicMissing(topic)) => Rejection::new(
            Reason::TopicMissing,
            format!("topic {topic} does not exist"),
        ),
        // The broker refuses a whole batch that exceeds the topic's `max.message.bytes`: only
        // a record refused on its own is dead-lettered.
        Err(DeliveryError::Permanent(_)) => {
            match kafka::deliver_alone(
                shared.isolating_producer()?,
                &record,
                &shared.metrics,
                &shared.abort,
            )
            .await
            {
                Ok(_) => return Ok(carried),
                Err(DeliveryError::Permanent(e)) => Rejection::new(
                    Reason::RejectedByKafka,
                    format!("Kafka refused the record for {}: {e}", record.topic),
                ),
                Err(e) => return Err(e),
            }
        }
    };
    let received = record
        .headers
        .iter()
        .find(|(k, _)| *k == headers::RECEIVED_AT)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut rejection = reason;
    rejection.device_id = Some(record.key.clone());
    let dead = dead_letter(catalog, publish, &rejection, received);
    let first = kafka::enqueue(&shared.producer, &dead).await;
    kafka::deliver(
        &shared.producer,
        &dead,
        first,
        &shared.metrics,
        &shared.abort,
    )
    .await?;
    Ok(Carried::DeadLettered(rejection.reason))
}

fn dead_letter(
    catalog: &Catalog,
    publish: &Message,
    rejection: &Rejection,
    received: String,
) -> OutRecord {
    let mut extra = vec![
        (headers::MQTT_TOPIC, publish.topic.clone()),
        (headers::RECEIVED_AT, received),
    ];
    if let Some(kind) = route::kind_of_topic(&publish.topic) {
        extra.push((headers::KIND, kind.as_str().to_string()));
    }
    kafka::deadletter_record(
        &catalog.deadletter_topic,
        "bridge",
        publish.topic.clone(),
        &publish.topic,
        publish.payload(),
        rejection,
        extra,
    )
}

fn account(metrics: &PipelineMetrics, carried: &Carried) {
    match carried {
        Carried::Routed {
            device_type,
            kind,
            device_timestamp,
        } => {
            metrics
                .produced
                .with_label_values(&[device_type.as_str(), kind.as_str()])
                .inc();
            if let Some(ts) = device_timestamp {
                metrics
                    .latency
                    .observe(clock::seconds_between(*ts, clock::now()));
            }
        }
        Carried::DeadLettered(reason) => {
            metrics
                .deadlettered
                .with_label_values(&[reason.as_str()])
                .inc();
        }
    }
}
