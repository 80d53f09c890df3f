//! The data path end to end on the real Mosquitto and Kafka: simulator -> bridge -> enrichment,
//! each an `iot-worker` process, in an installation of its own (topic prefix, MQTT root,
//! registry file).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::fixtures::SEED_RAW;
use common::{DEVICE_TYPES, Installation, Record};
use iot_model::registry::{Platform, RegistryApplication, ValidationMode};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(60);
const ARRIVAL: Duration = Duration::from_secs(90);

fn expected_app(device_type: &str) -> &'static str {
    match device_type {
        "smart_breaker" => "Smart Grid Monitor",
        "smart_meter" => "Energy Analytics",
        "environmental_sensor" => "Environmental Tracker",
        other => panic!("unknown type {other}"),
    }
}

fn device_types(records: &[Record], topic: &str) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.topic == topic)
        .map(|r| r.json()["device_type"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_device_types_arrive_in_their_own_enriched_topics() {
    let inst = Installation::new("e2e").await;
    let mut bridge = inst.bridge("bridge-e2e-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&inst.all_topics());
    // One device of each type, forty times faster than real time.
    let mut simulator = inst.simulator(
        "simulator",
        &[
            "--breakers",
            "1",
            "--meters",
            "1",
            "--sensors",
            "1",
            "--speed",
            "40",
            "--seed",
            "7",
        ],
    );
    simulator.wait_ready(READY).await;

    // Telemetry of every type in its own topic, and breaker trends and status too.
    let want = |records: &[Record]| {
        let kinds: BTreeSet<(String, String)> = records
            .iter()
            .filter(|r| r.topic.ends_with(".enriched") && r.topic != inst.all_enriched_topic())
            .map(|r| {
                let v = r.json();
                (
                    v["device_type"].as_str().unwrap_or("?").to_string(),
                    v["event_type"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        device_types(records, &inst.all_enriched_topic()).len() == DEVICE_TYPES.len()
            && DEVICE_TYPES
                .iter()
                .all(|t| kinds.contains(&(t.to_string(), "telemetry".into())))
            && kinds.contains(&("smart_breaker".into(), "trends".into()))
            && kinds.contains(&("smart_breaker".into(), "status".into()))
    };
    let records = collector
        .wait_until(
            "telemetry of every type, breaker trends and status",
            ARRIVAL,
            want,
        )
        .await;

    for device_type in DEVICE_TYPES {
        let topic = inst.enriched_topic(device_type);
        assert_eq!(
            device_types(&records, &topic),
            BTreeSet::from([device_type.to_string()]),
            "{topic} holds only {device_type}"
        );
        for r in records.iter().filter(|r| r.topic == topic) {
            let v = r.json();
            assert_eq!(r.key.as_deref(), v["device_id"].as_str(), "key = device id");
            assert_eq!(v["device_metadata"]["device_type"], device_type);
            assert_eq!(v["enrichment_info"]["device_type_detected"], device_type);
            assert!(
                v["enrichment_info"]["enriched_at"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z') && t.parse::<jiff::Timestamp>().is_ok()),
                "enriched_at is RFC 3339: {}",
                v["enrichment_info"]["enriched_at"]
            );
            let apps = &v["application_registry"];
            assert_eq!(apps["registered_applications_count"], 1);
            assert_eq!(apps["applications"][0]["name"], expected_app(device_type));
            assert!(
                !v.to_string().contains("@example.com"),
                "no contact e-mails"
            );
            assert_eq!(r.headers["device_type"], device_type);
            assert!(r.headers.contains_key("received_at"));
            let dq = &v["data_quality"];
            match v["event_type"].as_str() {
                Some("telemetry") => {
                    assert_eq!(dq["timestamp_valid"], true, "{v}");
                    assert_eq!(dq["measurements_complete"], true, "{v}");
                    assert_eq!(dq["within_ranges"], true, "{v}");
                    assert_eq!(r.headers["kind"], "raw");
                }
                Some("trends") => {
                    let items = v["trends"].as_array().unwrap();
                    assert!(!items.is_empty());
                    assert!(
                        items
                            .iter()
                            .all(|i| i["avg"].is_string() && i["n"].as_u64() > Some(0))
                    );
                    assert_eq!(r.headers["kind"], "trends");
                }
                Some("status") => {
                    assert!(v["status"]["online"].is_boolean());
                    assert_eq!(r.headers["kind"], "status");
                }
                other => panic!("unexpected event_type {other:?}"),
            }
        }
    }
    // The all-types topic has all three.
    assert_eq!(
        device_types(&records, &inst.all_enriched_topic()),
        DEVICE_TYPES.iter().map(|t| t.to_string()).collect()
    );
    assert!(
        collector.on(&inst.deadletter_topic()).is_empty(),
        "nothing dead-lettered"
    );

    // A device that vanishes shows offline: kill the simulator, the broker publishes the last wills.
    simulator.kill9();
    // Each last will lands in the device type's own topic and in the all-types topic.
    let offline_wills = |records: &[Record], topic: &str| -> BTreeSet<String> {
        records
            .iter()
            .filter(|r| r.topic == topic)
            .filter_map(|r| {
                let v: Value = serde_json::from_slice(&r.payload).ok()?;
                (v["status"]["online"] == false && v["status"]["reason"] == "connection_lost")
                    .then(|| v["device_id"].as_str().unwrap_or("?").to_string())
            })
            .collect()
    };
    let records = collector
        .wait_until("the last will of every device", ARRIVAL, |records| {
            offline_wills(records, &inst.all_enriched_topic()).len() == 3
                && DEVICE_TYPES
                    .iter()
                    .all(|t| offline_wills(records, &inst.enriched_topic(t)).len() == 1)
        })
        .await;
    assert_eq!(
        offline_wills(&records, &inst.all_enriched_topic()),
        BTreeSet::from([
            "breaker-001".to_string(),
            "meter-001".to_string(),
            "sensor-001".to_string()
        ])
    );
    let will = records
        .iter()
        .find(|r| {
            r.topic == inst.enriched_topic("smart_meter") && r.json()["status"]["online"] == false
        })
        .expect("meter offline in its own topic");
    assert_eq!(
        will.json()["device_metadata"]["device_type_name"],
        "Smart Energy Meter"
    );

    let produced = bridge
        .metric(r#"iot_bridge_messages_produced_total{device_type="smart_breaker",kind="raw"}"#);
    assert!(
        produced >= 1.0,
        "bridge metric counts produced messages: {produced}"
    );
    assert!(enrichment.metric("iot_enrichment_end_to_end_latency_seconds_count") >= 1.0);
    assert_eq!(bridge.metric("iot_bridge_connected"), 1.0);

    // Graceful stops.
    assert!(bridge.terminate(Duration::from_secs(30)).await.success());
    assert!(
        enrichment
            .terminate(Duration::from_secs(30))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_example_message_is_enriched_with_the_seed_fields() {
    let inst = Installation::new("seed").await;
    let mut bridge = inst.bridge("bridge-seed-0");
    let mut enrichment = inst.enrichment("smart_breaker");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[
        inst.enriched_topic("smart_breaker"),
        inst.all_enriched_topic(),
    ]);

    inst.publish(&inst.mqtt_topic("breaker-001", "raw"), SEED_RAW.as_bytes())
        .await;
    let records = collector
        .wait_until("the seed message on both enriched topics", ARRIVAL, |r| {
            r.len() >= 2
        })
        .await;
    assert_eq!(records.len(), 2);
    let topics: BTreeSet<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(
        topics,
        BTreeSet::from([
            inst.enriched_topic("smart_breaker").as_str(),
            inst.all_enriched_topic().as_str()
        ])
    );
    let raw: Value = serde_json::from_str(SEED_RAW).unwrap();
    let v = records[0].json();
    assert_eq!(
        records[0].payload, records[1].payload,
        "the same message on both topics"
    );
    for key in [
        "device_id",
        "device_type",
        "timestamp",
        "event_type",
        "measurements",
    ] {
        assert_eq!(v[key], raw[key], "{key} kept as sent");
    }
    // The seed README's enriched fields.
    let meta = &v["device_metadata"];
    assert_eq!(meta["device_type"], "smart_breaker");
    assert_eq!(meta["device_type_name"], "Smart Circuit Breaker");
    assert_eq!(
        meta["device_type_description"],
        "Intelligent circuit breaker with monitoring and protection capabilities"
    );
    assert_eq!(meta["device_category"], "electrical_protection");
    assert_eq!(meta["capabilities"][0], "voltage_monitoring");
    assert_eq!(meta["data_format"], "json");
    assert_eq!(meta["update_frequency"], "5_seconds");
    assert_eq!(meta["retention_policy"], "30_days");
    let apps = &v["application_registry"];
    assert_eq!(apps["device_type"], "smart_breaker");
    assert_eq!(apps["registered_applications_count"], 1);
    let app = &apps["applications"][0];
    assert_eq!(app["name"], "Smart Grid Monitor");
    assert_eq!(app["developer"], "IoT Solutions Inc.");
    assert_eq!(app["platform"], "web");
    assert_eq!(app["category"], "monitoring");
    assert_eq!(app["status"], "active");
    let info = &v["enrichment_info"];
    assert_eq!(info["enrichment_service"], "iot-enrichment-service");
    assert_eq!(info["device_type_detected"], "smart_breaker");
    assert_eq!(info["app_registry_integration"], true);
    let enriched_at = info["enriched_at"].as_str().unwrap();
    assert!(enriched_at.ends_with('Z') && enriched_at.parse::<jiff::Timestamp>().is_ok());
    assert_eq!(v["data_quality"]["timestamp_valid"], true);
    assert_eq!(v["data_quality"]["measurements_complete"], true);
    assert_eq!(v["data_quality"]["enrichment_success"], true);
    assert_eq!(records[0].key.as_deref(), Some("breaker-001"));
    assert_eq!(
        records[0].headers["mqtt_topic"],
        inst.mqtt_topic("breaker-001", "raw")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason_and_the_workers_go_on() {
    let inst = Installation::new("dlq").await;
    // Environmental sensors dead-letter out-of-range values.
    let mut registry = inst.sample_registry();
    registry
        .device_types
        .get_mut("environmental_sensor")
        .unwrap()
        .validation = ValidationMode::DeadLetter;
    inst.write_registry(&registry);
    let mut bridge = inst.bridge("bridge-dlq-0");
    let mut enrichment = inst.enrichment("all");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.deadletter_topic(), inst.all_enriched_topic()]);

    let raw = |id: &str| inst.mqtt_topic(id, "raw");
    let oversize = format!(
        r#"{{"device_id":"big","device_type":"smart_breaker","pad":"{}"}}"#,
        // Over the 256 KiB payload limit, within the broker's packet limit (payload limit +
        // 16 KiB): the bridge receives it and dead-letters it.
        "x".repeat(260 * 1024)
    );
    let too_hot = json!({"device_id": "sensor-9", "device_type": "environmental_sensor",
        "timestamp": "2025-08-20T18:00:54Z", "event_type": "telemetry",
        "measurements": {"temperature": {"value": 150.0}, "humidity": {"value": 50.0}, "pressure": {"value": 1000.0}}});
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "not_utf8",
            raw("d1"),
            b"{\"device_id\":\"\xff\xfe\"}".to_vec(),
        ),
        ("not_json", raw("d2"), b"hello, broker".to_vec()),
        ("not_object", raw("d3"), b"[1, 2, 3]".to_vec()),
        (
            "no_device_id",
            raw("d4"),
            br#"{"device_type":"smart_breaker"}"#.to_vec(),
        ),
        (
            "no_device_type",
            raw("d5"),
            br#"{"device_id":"d5"}"#.to_vec(),
        ),
        (
            "unregistered_device_type",
            raw("d6"),
            br#"{"device_id":"d6","device_type":"toaster"}"#.to_vec(),
        ),
        (
            "device_id_mismatch",
            raw("d7"),
            br#"{"device_id":"d8","device_type":"smart_breaker"}"#.to_vec(),
        ),
        ("oversize", raw("big"), oversize.into_bytes()),
        (
            "out_of_range",
            raw("sensor-9"),
            serde_json::to_vec(&too_hot).unwrap(),
        ),
    ];
    for (_, topic, payload) in &cases {
        inst.publish(topic, payload).await;
    }
    let records = collector
        .wait_until("one dead letter per malformed kind", ARRIVAL, |r| {
            r.iter()
                .filter(|r| r.topic == inst.deadletter_topic())
                .count()
                >= cases.len()
        })
        .await;
    let dead: HashMap<String, &Record> = records
        .iter()
        .filter(|r| r.topic == inst.deadletter_topic())
        .map(|r| (r.headers["reason"].clone(), r))
        .collect();
    for (reason, topic, payload) in &cases {
        let r = dead.get(*reason).unwrap_or_else(|| {
            panic!("no dead letter with reason {reason}; got {:?}", dead.keys())
        });
        let stage = if *reason == "out_of_range" {
            "enrichment"
        } else {
            "bridge"
        };
        assert_eq!(r.headers["stage"], stage, "{reason}");
        assert_eq!(r.headers["mqtt_topic"], *topic, "{reason}");
        assert!(!r.headers["detail"].is_empty(), "{reason}");
        assert_eq!(
            r.headers["original_size"],
            payload.len().to_string(),
            "{reason}"
        );
        if *reason == "oversize" {
            assert_eq!(
                r.payload.len(),
                1024,
                "only the head of an oversize payload"
            );
        } else {
            assert_eq!(&r.payload, payload, "{reason}: original payload kept");
        }
    }
    assert_eq!(dead["out_of_range"].key.as_deref(), Some("sensor-9"));
    assert!(dead["out_of_range"].headers["detail"].contains("temperature"));
    assert!(
        dead["out_of_range"].headers["source"].starts_with(&inst.raw_topic("environmental_sensor"))
    );
    assert_eq!(dead["unregistered_device_type"].key.as_deref(), Some("d6"));
    assert_eq!(dead["not_json"].headers["source"], raw("d2"));
    assert!(
        collector.on(&inst.all_enriched_topic()).is_empty(),
        "nothing malformed was enriched"
    );

    // Both workers are still running and carry a good message.
    assert!(bridge.is_running() && enrichment.is_running());
    inst.publish(&raw("breaker-001"), SEED_RAW.as_bytes()).await;
    collector
        .wait_until("the good message after the bad ones", ARRIVAL, |r| {
            r.iter().any(|r| r.topic == inst.all_enriched_topic())
        })
        .await;
    assert_eq!(
        bridge.metric(r#"iot_bridge_messages_deadlettered_total{reason="not_json"}"#),
        1.0
    );
    assert_eq!(
        bridge.metric(r#"iot_bridge_messages_deadlettered_total{reason="oversize"}"#),
        1.0
    );
    assert_eq!(
        enrichment.metric(r#"iot_enrichment_messages_deadlettered_total{reason="out_of_range"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_change_shows_in_newly_enriched_messages_without_a_restart() {
    let inst = Installation::new("reload").await;
    let mut bridge = inst.bridge("bridge-reload-0");
    let mut enrichment = inst.enrichment("smart_breaker");
    bridge.wait_ready(READY).await;
    enrichment.wait_ready(READY).await;
    let collector = inst.collect(&[inst.enriched_topic("smart_breaker")]);
    let topic = inst.mqtt_topic("breaker-001", "raw");

    inst.publish(&topic, SEED_RAW.as_bytes()).await;
    let first = collector
        .wait_until("the first message", ARRIVAL, |r| !r.is_empty())
        .await;
    assert_eq!(
        first[0].json()["application_registry"]["registered_applications_count"],
        1
    );
    let pid = enrichment.pid();

    // A new Application for smart_breaker, as the operator would write it.
    let mut registry = inst.sample_registry();
    registry
        .device_types
        .get_mut("smart_breaker")
        .unwrap()
        .applications
        .push(RegistryApplication {
            id: "default/grid-analytics".into(),
            display_name: "Grid Analytics".into(),
            developer: "Analytics Co.".into(),
            platform: Platform::Api,
            category: Some("analytics".into()),
            version: "2.0.0".into(),
            status: "active".into(),
        });
    inst.write_registry(&registry);

    // Keep publishing until a newly enriched message lists the new application.
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let names = loop {
        inst.publish(&topic, SEED_RAW.as_bytes()).await;
        let seen = collector.records().len();
        let records = collector
            .wait_until("the next enriched message", ARRIVAL, |r| r.len() > seen)
            .await;
        let apps = records.last().unwrap().json()["application_registry"].clone();
        if apps["registered_applications_count"] == 2 {
            let names: Vec<String> = apps["applications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_string())
                .collect();
            break names;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registry change never showed"
        );
    };
    assert_eq!(names, ["Smart Grid Monitor", "Grid Analytics"]);
    assert_eq!(enrichment.pid(), pid);
    assert!(enrichment.is_running(), "no restart");
    assert!(enrichment.metric(r#"iot_enrichment_registry_reloads_total{result="ok"}"#) >= 1.0);
}
