//! One simulated device's MQTT connection: QoS 1 publishes, PUBACK accounting (so that a run ends
//! only when the broker has every message), an optional retained last will, reconnection.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::SimulatorMetrics;
use crate::mqtt_security::MqttSecurity;

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Credentials and TLS of every device connection.
    pub security: MqttSecurity,
}

/// A device's connection.
pub struct DeviceConn {
    client: AsyncClient,
    published: u64,
    acked: watch::Receiver<u64>,
    connected: watch::Receiver<bool>,
    driver: JoinHandle<()>,
}

impl DeviceConn {
    /// Opens the connection (in the background; publishes wait in the client's queue until it is
    /// up). A persistent session (`clean_session=false`) keeps unacknowledged publishes across a
    /// reconnect.
    pub fn open(
        target: &Target,
        client_id: String,
        will: Option<LastWill>,
        device_type: &'static str,
        metrics: SimulatorMetrics,
    ) -> Self {
        let mut options = MqttOptions::new(client_id, target.host.clone(), target.port);
        target.security.apply(&mut options);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(15))
            .set_inflight(100);
        if let Some(will) = will {
            options.set_last_will(will);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (acked_tx, acked) = watch::channel(0u64);
        let (connected_tx, connected) = watch::channel(false);
        let driver = tokio::spawn(async move {
            let mut acks = 0u64;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        metrics.connected.inc();
                        connected_tx.send_replace(true);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks += 1;
                        metrics.acknowledged.with_label_values(&[device_type]).inc();
                        acked_tx.send_replace(acks);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if connected_tx.send_replace(false) {
                            metrics.connected.dec();
                        }
                        metrics.errors.inc();
                        tracing::warn!(error = %e, "device connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if connected_tx.send_replace(false) {
                metrics.connected.dec();
            }
        });
        Self {
            client,
            published: 0,
            acked,
            connected,
            driver,
        }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Queues a QoS 1 publish; waits only when the client's queue is full.
    pub async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| anyhow::anyhow!("MQTT publish: {e}"))?;
        self.published += 1;
        Ok(())
    }

    /// Publishes queued so far.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// Publishes the broker has acknowledged.
    pub fn acknowledged(&self) -> u64 {
        *self.acked.borrow()
    }

    /// Waits until the broker acknowledged every publish (or `timeout`), then disconnects
    /// cleanly (no last will). Returns the number acknowledged.
    pub async fn close(mut self, timeout: Duration) -> u64 {
        let target = self.published;
        let all_acked = self.acked.wait_for(|n| *n >= target);
        if tokio::time::timeout(timeout, all_acked).await.is_err() {
            tracing::warn!(
                published = target,
                acknowledged = *self.acked.borrow(),
                "not every publish was acknowledged before closing"
            );
        }
        let acked = *self.acked.borrow();
        if self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.driver).await;
        }
        self.driver.abort();
        acked
    }
}
