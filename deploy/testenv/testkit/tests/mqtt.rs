//! Smoke test: rumqttc against the test environment's real Mosquitto.

use std::time::Duration;

use iot_testkit::{MqttIdentity, mqtt_options, mqtt_url, unique_name};
use rumqttc::{AsyncClient, Event, Packet, QoS};

#[tokio::test]
async fn qos1_publish_reaches_a_second_client() {
    let url = mqtt_url().await;
    let topic = format!("smoke/{}", unique_name("t"));

    let (subscriber, mut sub_loop) = AsyncClient::new(
        mqtt_options(&url, &unique_name("sub"), MqttIdentity::Bridge),
        10,
    );
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    // Wait for the SUBACK so the publish cannot overtake the subscription.
    loop {
        match sub_loop.poll().await.expect("subscriber connection") {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }

    let (publisher, mut pub_loop) = AsyncClient::new(
        mqtt_options(&url, &unique_name("pub"), MqttIdentity::Simulator),
        10,
    );
    publisher
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"{\"device_id\":\"breaker-001\"}".to_vec(),
        )
        .await
        .unwrap();
    let puback = async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) =
                pub_loop.poll().await.expect("publisher connection")
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), puback)
        .await
        .expect("no PUBACK from the broker within 10 s");

    let received = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) =
                sub_loop.poll().await.expect("subscriber connection")
            {
                return p;
            }
        }
    };
    let publish = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the subscriber received nothing within 10 s");
    assert_eq!(publish.topic, topic);
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(&publish.payload[..], b"{\"device_id\":\"breaker-001\"}");
}
