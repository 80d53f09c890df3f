//! Table-driven tests of the DeviceType reconcile's pure steps: `decide`, `decide_invalid`,
//! `decide_cleanup`, `finalizer_change` and `after_failed_topic_deletion`.

use std::collections::BTreeMap;

use kube::runtime::events::EventType;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::json;

use super::*;

const TOPIC_CONFIG: &[(&str, &str)] = &[("retention.ms", "86400000")];

fn device_type(enrichment: serde_json::Value, extra_meta: serde_json::Value) -> DeviceType {
    let mut metadata = json!({ "name": "breaker", "namespace": "iot", "uid": "u-1",
                               "generation": 3, "resourceVersion": "9" });
    if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_meta.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": metadata,
        "spec": {
            "deviceType": "smart_breaker",
            "displayName": "Smart Circuit Breaker",
            "topics": { "partitions": 3, "retention": "1d" },
            "enrichment": enrichment
        }
    }))
    .unwrap()
}

fn fixed(replicas: i32) -> DeviceType {
    device_type(json!({ "replicas": replicas }), json!({}))
}

fn autoscaled() -> DeviceType {
    device_type(
        json!({ "minReplicas": 1, "maxReplicas": 5, "lagPerReplica": 100 }),
        json!({}),
    )
}

fn observed_topic(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
    ObservedTopic {
        partitions,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn config() -> OperatorConfig {
    OperatorConfig::new("iot", "kafka:9092")
}

/// Observations with both topics in the given state (the same for raw and enriched).
fn observed(
    dt: &DeviceType,
    topic: Option<ObservedTopic>,
    lag: Option<i64>,
    deployment: Option<(i32, i32)>,
) -> Observed {
    Observed {
        topics: Ok(desired_topics(dt, "iot")
            .into_iter()
            .map(|d| (d, topic.clone()))
            .collect()),
        lag: lag.map_or(
            LagReading::Unreadable(
                "Offset fetch error: OperationTimedOut (Local: Timed out)".into(),
            ),
            LagReading::Read,
        ),
        deployment: deployment.map(|(desired, ready)| DeploymentReplicas {
            desired: Some(desired),
            ready,
        }),
        applications: 2,
        downscale: DownscaleWindow::default(),
        now: Instant::now(),
    }
}

fn cond<'a>(d: &'a Decision, type_: &str) -> &'a Cond {
    d.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

fn reasons(notes: &[Note]) -> Vec<&'static str> {
    notes.iter().map(|n| n.reason).collect()
}

#[test]
fn decide_table() {
    struct Case {
        name: &'static str,
        dt: DeviceType,
        observed: Observed,
        /// Plans of the topic changes, in order.
        changes: Vec<TopicPlan>,
        topic_events: Vec<&'static str>,
        events: Vec<&'static str>,
        replicas: i32,
        partitions: i32,
        /// (TopicsReady reason, EnrichmentReady reason)
        reasons: (&'static str, &'static str),
        requeue: Duration,
    }
    let dt = fixed(2);
    let auto = autoscaled();
    let config = config();
    let up_to_date = Some(observed_topic(3, TOPIC_CONFIG));
    let cases = vec![
        Case {
            name: "first reconcile: both topics created, Deployment progressing",
            observed: observed(&dt, None, Some(0), None),
            dt: dt.clone(),
            changes: vec![TopicPlan::Create, TopicPlan::Create],
            topic_events: vec!["TopicCreated", "TopicCreated"],
            events: vec![],
            replicas: 2,
            partitions: 3,
            reasons: ("UpToDate", "Progressing"),
            requeue: Duration::from_secs(5),
        },
        Case {
            name: "settled: nothing to change, resync later",
            observed: observed(&dt, up_to_date.clone(), Some(0), Some((2, 2))),
            dt: dt.clone(),
            changes: vec![],
            topic_events: vec![],
            events: vec![],
            replicas: 2,
            partitions: 3,
            reasons: ("UpToDate", "Available"),
            requeue: config.resync,
        },
        Case {
            name: "shrink refused: topics untouched, partitions reported as they are",
            observed: observed(
                &dt,
                Some(observed_topic(6, TOPIC_CONFIG)),
                Some(0),
                Some((2, 2)),
            ),
            dt: dt.clone(),
            changes: vec![],
            topic_events: vec![],
            events: vec![],
            replicas: 2,
            partitions: 6,
            reasons: ("PartitionShrinkRefused", "Available"),
            requeue: Duration::from_secs(5),
        },
        Case {
            name: "more partitions asked for: both topics grow",
            observed: observed(
                &dt,
                Some(observed_topic(2, TOPIC_CONFIG)),
                Some(0),
                Some((2, 2)),
            ),
            dt: dt.clone(),
            changes: vec![
                TopicPlan::Update {
                    grow_partitions_to: Some(3),
                    set_config: None,
                };
                2
            ],
            topic_events: vec!["PartitionsIncreased", "PartitionsIncreased"],
            events: vec![],
            replicas: 2,
            partitions: 3,
            reasons: ("UpToDate", "Available"),
            requeue: config.resync,
        },
        Case {
            name: "configuration drift is put back",
            observed: observed(
                &dt,
                Some(observed_topic(3, &[("retention.ms", "1")])),
                Some(0),
                Some((2, 2)),
            ),
            dt: dt.clone(),
            changes: vec![
                TopicPlan::Update {
                    grow_partitions_to: None,
                    set_config: Some([("retention.ms".to_string(), "86400000".to_string())].into()),
                };
                2
            ],
            topic_events: vec!["ConfigDriftCorrected", "ConfigDriftCorrected"],
            events: vec![],
            replicas: 2,
            partitions: 3,
            reasons: ("UpToDate", "Available"),
            requeue: config.resync,
        },
        Case {
            name: "Kafka unreachable: no topic change, the Deployment still kept",
            observed: Observed {
                topics: Err(KafkaError::AdminOp(
                    RDKafkaErrorCode::BrokerTransportFailure,
                )),
                lag: LagReading::NotRead,
                ..observed(&dt, None, None, Some((2, 2)))
            },
            dt: dt.clone(),
            changes: vec![],
            topic_events: vec![],
            events: vec![],
            replicas: 2,
            partitions: 3,
            reasons: ("KafkaUnavailable", "Available"),
            requeue: Duration::from_secs(5),
        },
        Case {
            name: "fixed replicas never exceed the partitions",
            observed: observed(&fixed(8), up_to_date.clone(), Some(0), Some((3, 3))),
            dt: fixed(8),
            changes: vec![],
            topic_events: vec![],
            events: vec![],
            replicas: 3,
            partitions: 3,
            reasons: ("UpToDate", "Available"),
            requeue: config.resync,
        },
        Case {
            name: "autoscale up at once: ceil(lag / lagPerReplica), capped by partitions",
            observed: observed(&auto, up_to_date.clone(), Some(250), Some((1, 1))),
            dt: auto.clone(),
            changes: vec![],
            topic_events: vec![],
            events: vec!["Scaled"],
            replicas: 3,
            partitions: 3,
            reasons: ("UpToDate", "Progressing"),
            requeue: config.autoscale_interval,
        },
        Case {
            name: "autoscale down waits for the cool-down",
            observed: observed(&auto, up_to_date.clone(), Some(0), Some((3, 3))),
            dt: auto.clone(),
            changes: vec![],
            topic_events: vec![],
            events: vec![],
            replicas: 3,
            partitions: 3,
            reasons: ("UpToDate", "Available"),
            requeue: config.autoscale_interval,
        },
    ];
    for case in cases {
        let d = decide(&case.dt, &case.observed, &config);
        let plans: Vec<_> = d.topic_changes.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(plans, case.changes, "{}: topic changes", case.name);
        assert_eq!(
            reasons(&d.topic_events),
            case.topic_events,
            "{}: topic events",
            case.name
        );
        assert_eq!(reasons(&d.events), case.events, "{}: events", case.name);
        assert_eq!(d.replicas.desired, case.replicas, "{}: replicas", case.name);
        assert_eq!(
            d.deployment.spec.as_ref().unwrap().replicas,
            Some(case.replicas),
            "{}: the Deployment carries the replicas",
            case.name
        );
        assert_eq!(d.partitions, case.partitions, "{}: partitions", case.name);
        assert_eq!(
            (
                cond(&d, TOPICS_READY).reason,
                cond(&d, ENRICHMENT_READY).reason
            ),
            case.reasons,
            "{}: condition reasons",
            case.name
        );
        assert!(cond(&d, SPEC_VALID).ok, "{}", case.name);
        assert_eq!(d.requeue, case.requeue, "{}: requeue", case.name);
        assert_eq!(d.applications, 2, "{}", case.name);
        assert_eq!(d.topics.raw, "iot.smart_breaker.raw", "{}", case.name);
    }
}

#[test]
fn decide_reports_what_it_will_do_in_words() {
    let dt = fixed(2);
    let d = decide(
        &dt,
        &observed(&dt, Some(observed_topic(6, TOPIC_CONFIG)), Some(0), None),
        &config(),
    );
    assert_eq!(
        cond(&d, TOPICS_READY).message,
        "topic iot.smart_breaker.raw has 6 partitions and spec.topics.partitions asks for 3: \
         Kafka cannot remove partitions; set it to 6 or more"
    );
    assert_eq!(cond(&d, ENRICHMENT_READY).message, "0/2 replicas ready");

    let auto = autoscaled();
    let d = decide(
        &auto,
        &observed(&auto, None, Some(250), Some((1, 1))),
        &config(),
    );
    assert_eq!(
        d.topic_events[0].message,
        "created topic iot.smart_breaker.raw with 3 partitions"
    );
    assert_eq!(d.events[0].message, "enrichment replicas 1 -> 3 (lag 250)");
    assert_eq!(d.events[0].type_, EventType::Normal);
}

#[test]
fn the_scale_down_window_is_carried_between_reconciles() {
    let auto = autoscaled();
    let config = config();
    let t0 = Instant::now();
    let mut obs = observed(&auto, None, Some(0), Some((3, 3)));
    obs.now = t0;
    let first = decide(&auto, &obs, &config);
    assert_eq!(first.replicas.desired, 3, "held during the cool-down");
    obs.downscale = first.downscale;
    obs.now = t0 + config.scale_down_cooldown + Duration::from_secs(1);
    let later = decide(&auto, &obs, &config);
    assert_eq!(later.replicas.desired, 1, "lowered after it");
    assert_eq!(reasons(&later.events), vec!["Scaled"]);
}

/// `dt` with `LagReadable` stored as `status` ("True" / "False").
fn with_stored_lag_readable(mut dt: DeviceType, status: &str) -> DeviceType {
    let cond = json!({ "type": LAG_READABLE, "status": status, "reason": "x", "message": "",
                       "lastTransitionTime": "2026-01-01T00:00:00Z" });
    dt.status = Some(serde_json::from_value(json!({ "conditions": [cond] })).unwrap());
    dt
}

#[test]
fn an_unreadable_lag_holds_the_replicas_with_a_condition_and_an_event() {
    let auto = autoscaled();
    let config = config();
    let up_to_date = Some(observed_topic(3, TOPIC_CONFIG));
    // Lag was high, the Deployment runs 3; now Kafka cannot say: 3 stay (not the minimum of 1).
    let d = decide(
        &auto,
        &observed(&auto, up_to_date.clone(), None, Some((3, 3))),
        &config,
    );
    assert_eq!(d.replicas.desired, 3);
    assert_eq!(d.deployment.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.lag, None, "no lag in the status rather than a made-up 0");
    assert_eq!(
        d.downscale,
        DownscaleWindow::default(),
        "the cool-down starts over"
    );
    let c = cond(&d, LAG_READABLE);
    assert_eq!((c.ok, c.reason), (false, "LagUnreadable"));
    assert_eq!(
        c.message,
        "cannot read the lag of consumer group iot.smart_breaker.enrichment: Offset fetch error: \
         OperationTimedOut (Local: Timed out); holding 3 enrichment replicas until it can be read"
    );
    assert_eq!(reasons(&d.events), vec!["LagUnreadable"]);
    assert_eq!(d.events[0].type_, EventType::Warning);
    assert_eq!(d.events[0].message, c.message);
    assert_eq!(d.requeue, config.autoscale_interval);

    // Still unreadable on the next reconcile: no new Event.
    let stored_false = with_stored_lag_readable(auto.clone(), "False");
    let d = decide(
        &stored_false,
        &observed(&stored_false, up_to_date.clone(), None, Some((3, 3))),
        &config,
    );
    assert_eq!(reasons(&d.events), Vec::<&str>::new());

    // Readable again: the condition clears, with a Normal Event; scaling down still waits for
    // the cool-down.
    let d = decide(
        &stored_false,
        &observed(&stored_false, up_to_date.clone(), Some(0), Some((3, 3))),
        &config,
    );
    let c = cond(&d, LAG_READABLE);
    assert_eq!((c.ok, c.reason), (true, "LagRead"));
    assert_eq!(reasons(&d.events), vec!["LagReadable"]);
    assert_eq!(d.replicas.desired, 3);
    assert_eq!(d.lag, Some(0));

    // Readable and stored readable: nothing to say.
    let stored_true = with_stored_lag_readable(auto.clone(), "True");
    let d = decide(
        &stored_true,
        &observed(&stored_true, up_to_date, Some(0), Some((3, 3))),
        &config,
    );
    assert_eq!(reasons(&d.events), Vec::<&str>::new());
}

#[test]
fn fixed_replicas_have_no_lag_condition() {
    let dt = fixed(2);
    let mut obs = observed(
        &dt,
        Some(observed_topic(3, TOPIC_CONFIG)),
        None,
        Some((2, 2)),
    );
    obs.lag = LagReading::NotRead;
    let d = decide(&dt, &obs, &config());
    assert!(d.conditions.iter().all(|c| c.type_ != LAG_READABLE));
    assert_eq!((d.replicas.desired, d.lag), (2, None));
    assert!(d.events.is_empty());
}

#[test]
fn kafka_unreachable_makes_the_lag_of_an_autoscaled_type_unreadable_too() {
    let auto = autoscaled();
    let obs = Observed {
        topics: Err(KafkaError::AdminOp(
            RDKafkaErrorCode::BrokerTransportFailure,
        )),
        lag: LagReading::Unreadable("Kafka is unavailable: broker down".into()),
        ..observed(&auto, None, None, Some((4, 4)))
    };
    let d = decide(&auto, &obs, &config());
    assert_eq!(d.replicas.desired, 3, "held, within the partition count");
    assert_eq!(cond(&d, TOPICS_READY).reason, "KafkaUnavailable");
    assert_eq!(cond(&d, LAG_READABLE).reason, "LagUnreadable");
}

#[test]
fn a_failed_topic_change_turns_topics_ready_false_and_keeps_the_rest() {
    let dt = fixed(2);
    let d = decide(&dt, &observed(&dt, None, Some(0), Some((2, 2))), &config());
    let after = d.conditions_after_topic_failure(&KafkaError::AdminOp(
        RDKafkaErrorCode::TopicAuthorizationFailed,
    ));
    let topics = after.iter().find(|c| c.type_ == TOPICS_READY).unwrap();
    assert_eq!((topics.ok, topics.reason), (false, "KafkaUnavailable"));
    assert_eq!(after.len(), d.conditions.len());
    assert!(
        after
            .iter()
            .find(|c| c.type_ == ENRICHMENT_READY)
            .unwrap()
            .ok
    );
}

#[test]
fn decide_invalid_table() {
    let cases = [
        (fixed(2), None),
        (
            device_type(json!({ "minReplicas": 4, "maxReplicas": 2 }), json!({})),
            Some("minReplicas"),
        ),
        (
            device_type(json!({ "replicas": 1, "maxReplicas": 2 }), json!({})),
            Some("replicas"),
        ),
    ];
    for (dt, mentions) in cases {
        let decided = decide_invalid(&dt);
        match mentions {
            None => assert!(decided.is_none(), "{:?}", decided),
            Some(field) => {
                let (cond, note) = decided.expect("invalid");
                assert_eq!(
                    (cond.type_, cond.ok, cond.reason),
                    (SPEC_VALID, false, "InvalidSpec")
                );
                assert!(cond.message.contains(field), "{}", cond.message);
                assert_eq!(
                    (note.type_, note.reason),
                    (EventType::Warning, "InvalidSpec")
                );
                assert_eq!(note.message, cond.message);
            }
        }
    }
}

#[test]
fn finalizer_change_table() {
    let with = |policy: &str, finalizers: &[&str]| {
        let mut dt = fixed(1);
        dt.spec.deletion_policy = if policy == "Delete" {
            DeletionPolicy::Delete
        } else {
            DeletionPolicy::Retain
        };
        dt.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        dt
    };
    assert_eq!(finalizer_change(&with("Retain", &[])), None);
    assert_eq!(finalizer_change(&with("Delete", &[])), Some(true));
    assert_eq!(
        finalizer_change(&with("Delete", &["other", TOPIC_FINALIZER])),
        None
    );
    assert_eq!(
        finalizer_change(&with("Retain", &[TOPIC_FINALIZER])),
        Some(false)
    );
}

#[test]
fn decide_cleanup_table() {
    let topics = vec![
        "iot.smart_breaker.raw".to_string(),
        "iot.smart_breaker.enriched".to_string(),
    ];
    let dt = |finalizer: bool, skip: bool| {
        let mut meta = json!({});
        if finalizer {
            meta["finalizers"] = json!([TOPIC_FINALIZER]);
        }
        if skip {
            meta["annotations"] = json!({ SKIP_TOPIC_CLEANUP_ANNOTATION: "true" });
        }
        device_type(json!({}), meta)
    };
    assert_eq!(
        decide_cleanup(&dt(false, false), "iot", false),
        Cleanup::Nothing
    );
    assert_eq!(
        decide_cleanup(&dt(true, false), "iot", false),
        Cleanup::DeleteTopics(topics.clone())
    );
    for (skip, claimed, why) in [
        (true, false, "skip annotation set"),
        (false, true, "another DeviceType uses the same id"),
    ] {
        match decide_cleanup(&dt(true, skip), "iot", claimed) {
            Cleanup::KeepTopics(note) => {
                assert_eq!(note.reason, "TopicsKept");
                assert!(note.message.ends_with(why), "{}", note.message);
            }
            other => panic!("expected KeepTopics, got {other:?}"),
        }
    }
}

#[test]
fn a_failed_topic_deletion_retries_until_the_timeout_then_lets_go() {
    let topics = vec!["a".to_string(), "b".to_string()];
    let e = KafkaError::AdminOp(RDKafkaErrorCode::BrokerTransportFailure);
    let timeout = Duration::from_secs(300);
    let retry = after_failed_topic_deletion(&topics, &e, Duration::from_secs(10), timeout)
        .expect_err("retries before the timeout");
    assert_eq!(retry.reason, "TopicDeletionFailed");
    assert!(retry.message.contains(SKIP_TOPIC_CLEANUP_ANNOTATION));
    let gone = after_failed_topic_deletion(&topics, &e, Duration::from_secs(301), timeout)
        .expect("lets go after the timeout");
    assert_eq!(gone.reason, "TopicsLeftBehind");
    assert!(gone.message.contains("a and b"), "{}", gone.message);
}
