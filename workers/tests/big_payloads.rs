//! Large messages at the edge: a 100 MB publish is refused by the broker (its `max_packet_size`
//! is the bridge's payload limit plus 16 KiB) and reaches nobody; then 1,000 publishes of 250 KiB
//! (250 MB in all, just under the 256 KiB payload limit) all arrive enriched, while the bridge and
//! the enrichment never restart and their resident memory stays under the chart's limit of
//! 256 MiB (the bridge asks the broker for no more messages than fit its byte budget; the
//! enrichment holds its in-flight work to its own).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fixtures::SEED_RAW;
use common::loss::SeqCounter;
use common::{Installation, peak_rss};
use iot_testkit::{MqttIdentity, mqtt_options, unique_name};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
/// The chart's memory limit of the bridge and enrichment containers.
const LIMIT: u64 = 256 * 1024 * 1024;
const BIG: usize = 100 * 1000 * 1000;
const COUNT: u64 = 1000;
const SIZE: usize = 250 * 1024;

/// A valid smart-breaker message of `size` bytes for device `id`, numbered `seq`.
fn breaker(id: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(SEED_RAW).unwrap();
    v["device_id"] = id.into();
    v["seq"] = seq.into();
    v["pad"] = "".into();
    let without_pad = serde_json::to_vec(&v).unwrap().len();
    v["pad"] = "x".repeat(size.saturating_sub(without_pad)).into();
    let bytes = serde_json::to_vec(&v).unwrap();
    assert_eq!(bytes.len(), size.max(without_pad));
    bytes
}

/// Publishes `payloads` on `topic` at QoS 1 from one connection; returns how many the broker
/// acknowledged, or the connection error that ended the run.
async fn publish_all(url: &str, topic: &str, payloads: Vec<Vec<u8>>) -> (u64, Option<String>) {
    let mut options = mqtt_options(url, &unique_name("itest-big"), MqttIdentity::Simulator);
    options.set_max_packet_size(200 * 1000 * 1000, 200 * 1000 * 1000);
    options.set_inflight(50);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = payloads.len() as u64;
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for p in payloads {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, p)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    let outcome = tokio::time::timeout(Duration::from_secs(300), async {
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| Some("timed out after 300 s".to_string()));
    sender.abort();
    (acked, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_publish_is_refused_and_large_ones_flow_within_the_memory_limit() {
    let inst = Installation::new("bigpayloads").await;
    let mut bridge = inst.bridge("big-0");
    let mut enrichment =
        inst.enrichment_with("all", &[("IOT_ENRICHMENT_ALL_TYPES_TOPIC", "false")]);
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let run = unique_name("big").replace('.', "-");
    let counter = SeqCounter::start(
        &inst.bootstrap,
        &[
            inst.enriched_topic("smart_breaker"),
            inst.deadletter_topic(),
        ],
    );
    let topic = |id: &str| inst.mqtt_topic(id, "raw");

    // One 100 MB publish: the broker closes the connection instead of acknowledging it.
    let huge_id = format!("{run}-huge");
    let (acked, error) = publish_all(
        &inst.mqtt_url,
        &topic(&huge_id),
        vec![breaker(&huge_id, 1, BIG)],
    )
    .await;
    assert_eq!(acked, 0, "the broker acknowledged a 100 MB publish");
    assert!(
        error.is_some(),
        "the broker refused it by closing the connection"
    );
    eprintln!("100 MB publish: refused ({})", error.unwrap());

    // 1,000 publishes of 250 KiB.
    let id = format!("{run}-large");
    let payloads: Vec<Vec<u8>> = (1..=COUNT).map(|seq| breaker(&id, seq, SIZE)).collect();
    let started = std::time::Instant::now();
    let (acked, error) = publish_all(&inst.mqtt_url, &topic(&id), payloads).await;
    assert_eq!(
        (acked, error),
        (COUNT, None),
        "every 250 KiB publish acknowledged"
    );
    let expected = BTreeMap::from([(id.clone(), COUNT)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !counter.missing_and_duplicates(&expected).0.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {COUNT} large messages enriched within 240 s",
            counter.distinct_with_prefix(&id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    let peaks = [peak_rss(bridge.pid()), peak_rss(enrichment.pid())];
    eprintln!(
        "{COUNT} x {} KiB enriched in {:.1} s; RSS peak bridge {:.1} MiB, enrichment {:.1} MiB",
        SIZE / 1024,
        elapsed.as_secs_f64(),
        peaks[0] as f64 / 1048576.0,
        peaks[1] as f64 / 1048576.0
    );
    assert_eq!(
        counter.distinct_with_prefix(&huge_id),
        0,
        "nothing of the refused publish went anywhere"
    );
    assert!(
        bridge.is_running() && enrichment.is_running(),
        "neither worker restarted"
    );
    for (who, peak) in ["bridge", "enrichment"].iter().zip(&peaks) {
        assert!(
            *peak > 0 && *peak < LIMIT,
            "{who}'s RSS peaked at {peak} bytes, the limit is {LIMIT}"
        );
    }
}
