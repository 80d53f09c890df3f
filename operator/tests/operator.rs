//! The operator against the test environment's real API server and Kafka: samples reconcile to
//! Ready with their topics, Deployments and registry; bad specs are refused; partition shrink
//! gets a stable condition; drift is corrected; deletion honours the policy; lag scales.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use iot_operator::controller::registry_sync;
use iot_operator::crd::TopicNames;
use iot_operator::kafka::topics::TopicAdmin;
use iot_operator::registry::{CONFIG_MAP_BINARY_KEY, Registry};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewPartitions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;

const BREAKER_YAML: &str = r#"
apiVersion: iotcloud.dev/v1alpha1
kind: DeviceType
metadata: { name: breaker }
spec:
  deviceType: smart_breaker
  displayName: Smart Circuit Breaker
  topics: { partitions: 3, retention: 7d }
  deletionPolicy: Delete
"#;

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_reconcile_to_ready_with_topics_deployments_and_registry() {
    let h = Harness::start("op-samples", |_| {}).await;
    let samples = samples();
    for dt in &samples.device_types {
        h.create_dt(dt).await;
    }
    for app in &samples.applications {
        h.create_app(app).await;
    }
    for dt in &samples.device_types {
        let name = dt.name_any();
        let ready = h.wait_dt(&name, "Ready", dt_ready).await;
        let status = ready.status.unwrap();
        let names = TopicNames::for_device_type(&h.config.topic_prefix, &dt.spec.device_type);
        assert_eq!(status.topics.as_ref(), Some(&names));
        assert_eq!(
            status.applications,
            Some(1),
            "{name}: one sample application each"
        );
        let replicas = status.replicas.unwrap();
        assert_eq!((replicas.desired, replicas.ready), (1, 1));

        // Topics with the spec's partitions and retention.
        let retention_ms =
            iot_operator::crd::parse_retention_ms(dt.spec.topics.retention.as_deref().unwrap())
                .unwrap()
                .to_string();
        for topic in [&names.raw, &names.enriched] {
            let t = h
                .topics
                .observe(topic)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{topic} missing"));
            assert_eq!(t.partitions, dt.spec.topics.partitions, "{topic}");
            assert_eq!(t.config.get("retention.ms"), Some(&retention_ms), "{topic}");
        }
        // The enrichment Deployment, owned by the DeviceType.
        let d: Deployment = Api::namespaced(h.client.clone(), &h.ns.name)
            .get(&format!("{name}-enrichment"))
            .await
            .unwrap();
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(d.owner_references()[0].name, name);
        let env: BTreeMap<_, _> = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert_eq!(env["IOT_DEVICE_TYPE"], dt.spec.device_type);
    }
    for app in &samples.applications {
        h.wait_app(&app.name_any(), "Ready", |a| {
            a.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|(s, _)| s == "True")
        })
        .await;
    }
    for shared in [
        format!("{}.enriched", h.config.topic_prefix),
        format!("{}.deadletter", h.config.topic_prefix),
    ] {
        assert!(
            h.topics.observe(&shared).await.unwrap().is_some(),
            "shared topic {shared}"
        );
    }

    // The registry ConfigMap holds every device type with its application.
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns.name);
    let registry = wait_for(&cms, "iot-registry", "registry with 3 device types", |cm| {
        registry_of(cm).is_some_and(|r| {
            r.device_types.len() == 3 && r.device_types.values().all(|d| d.applications.len() == 1)
        })
    })
    .await;
    let registry = registry_of(&registry).unwrap();
    assert_eq!(registry.topic_prefix, h.config.topic_prefix);

    // An edited or deleted registry is put back within 5 seconds.
    let mut edited = cms.get("iot-registry").await.unwrap();
    edited.binary_data = Some(
        [(
            CONFIG_MAP_BINARY_KEY.to_string(),
            k8s_openapi::ByteString(b"{}".to_vec()),
        )]
        .into(),
    );
    cms.replace("iot-registry", &PostParams::default(), &edited)
        .await
        .unwrap();
    restored_within_5s(&cms, &registry).await;
    cms.delete("iot-registry", &DeleteParams::default())
        .await
        .unwrap();
    restored_within_5s(&cms, &registry).await;
    assert_eq!(
        registry.device_types["smart_breaker"].applications[0].display_name,
        "Smart Grid Monitor"
    );

    // What a user runs: kubectl wait on the Ready condition.
    let status = std::process::Command::new("kubectl")
        .args([
            "wait",
            "--for=condition=Ready",
            "devicetypes",
            "--all",
            "-n",
            &h.ns.name,
            "--timeout=30s",
        ])
        .status()
        .expect("kubectl on PATH (source deploy/testenv/.run/env)");
    assert!(
        status.success(),
        "kubectl wait --for=condition=Ready failed"
    );

    // A new Application shows up in the registry without anything else changing.
    let mut extra = samples
        .applications
        .iter()
        .find(|a| a.name_any() == "smart-grid-monitor")
        .unwrap()
        .clone();
    extra.metadata = kube::api::ObjectMeta {
        name: Some("grid-audit".into()),
        ..Default::default()
    };
    extra.spec.display_name = "Grid Audit".into();
    h.create_app(&extra).await;
    wait_for(
        &cms,
        "iot-registry",
        "registry lists the new application",
        |cm| {
            registry_of(cm).is_some_and(|r| {
                r.device_types["smart_breaker"]
                    .applications
                    .iter()
                    .any(|a| a.display_name == "Grid Audit")
            })
        },
    )
    .await;
    h.wait_dt("smart-breaker", "status counts two applications", |d| {
        d.status.as_ref().and_then(|s| s.applications) == Some(2)
    })
    .await;
    h.stop().await;
}

/// Waits (at most 5 s) until ConfigMap `iot-registry` holds `expected` again.
async fn restored_within_5s(cms: &Api<ConfigMap>, expected: &Registry) {
    let started = std::time::Instant::now();
    let back = |cm: Option<&ConfigMap>| cm.and_then(registry_of).as_ref() == Some(expected);
    let restored = tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(cms.clone(), "iot-registry", back),
    )
    .await;
    assert!(
        matches!(restored, Ok(Ok(Some(_)))),
        "iot-registry was not put back within 5 s: {:?}",
        cms.get_opt("iot-registry").await
    );
    println!("iot-registry put back after {:?}", started.elapsed());
}

fn registry_of(cm: &ConfigMap) -> Option<Registry> {
    registry_sync::registry_in(cm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_by_the_api_server() {
    let h = Harness::start("op-invalid", |_| {}).await;
    let cases = [
        (
            "bad id",
            BREAKER_YAML.replace("deviceType: smart_breaker", "deviceType: Smart-Breaker"),
        ),
        (
            "min > max",
            BREAKER_YAML.replace(
                "deletionPolicy: Delete",
                "enrichment: { minReplicas: 3, maxReplicas: 2 }",
            ),
        ),
        (
            "zero partitions",
            BREAKER_YAML.replace("partitions: 3", "partitions: 0"),
        ),
    ];
    for (what, yaml) in cases {
        let err = h
            .dts()
            .create(&PostParams::default(), &device_type(&yaml))
            .await
            .expect_err(what);
        match err {
            kube::Error::Api(s) => assert_eq!(s.code, 422, "{what}: {s:?}"),
            other => panic!("{what}: unexpected error {other}"),
        }
    }
    let mut app = samples().applications[0].clone();
    app.spec.contact_email = "not-an-email".into();
    assert!(
        h.apps().create(&PostParams::default(), &app).await.is_err(),
        "bad email accepted"
    );

    // The device-type id is immutable.
    h.create_dt(&device_type(BREAKER_YAML)).await;
    let err = h
        .dts()
        .patch(
            "breaker",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"deviceType": "other"}})),
        )
        .await
        .expect_err("id change accepted");
    assert!(
        err.to_string().contains("immutable") || err.to_string().contains("Invalid"),
        "{err}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_shrink_is_refused_with_a_stable_condition_and_drift_is_corrected() {
    let h = Harness::start("op-topics", |_| {}).await;
    h.create_dt(&device_type(BREAKER_YAML)).await;
    h.wait_dt("breaker", "Ready", dt_ready).await;
    let names = TopicNames::for_device_type(&h.config.topic_prefix, "smart_breaker");
    let admin = admin(&h.config.kafka_bootstrap);
    let opts = AdminOptions::new();

    // Drift behind the operator's back: retention changed on the broker.
    admin
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic(&names.raw)).set("retention.ms", "1000")],
            &opts,
        )
        .await
        .unwrap();
    let week = (7 * 86_400_000i64).to_string();
    h.wait_topic(&names.raw, "retention put back", |t| {
        t.is_some_and(|t| t.config.get("retention.ms") == Some(&week))
    })
    .await;

    // The raw topic grown to 5 partitions behind the operator's back: the spec's 3 would be a
    // shrink, which Kafka cannot do. The operator says so and does not retry-loop.
    let results = admin
        .create_partitions([&NewPartitions::new(&names.raw, 5)], &opts)
        .await
        .unwrap();
    results.into_iter().for_each(|r| {
        r.unwrap();
    });
    let dt = h
        .wait_dt("breaker", "PartitionShrinkRefused", |d| {
            dt_condition(d, "TopicsReady")
                == Some(("False".into(), "PartitionShrinkRefused".into()))
        })
        .await;
    assert_eq!(dt_condition(&dt, "Ready").unwrap().0, "False");
    let transition = dt
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "TopicsReady")
        .unwrap()
        .last_transition_time
        .clone();
    // Several reconciles later the condition is unchanged (same transition time): no retry loop
    // that flips it, no error backoff.
    let reconciles = || {
        h.metrics
            .reconciles
            .with_label_values(&["DeviceType", "ok"])
            .get()
    };
    let before = reconciles();
    wait_until("three more reconciles", || reconciles() >= before + 3).await;
    let later = h.dts().get("breaker").await.unwrap();
    let c = later
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "TopicsReady")
        .unwrap();
    assert_eq!(
        (c.reason.as_str(), &c.last_transition_time),
        ("PartitionShrinkRefused", &transition)
    );
    assert_eq!(
        h.metrics
            .errors
            .with_label_values(&["DeviceType", "kafka"])
            .get(),
        0
    );
    assert_eq!(
        h.topics
            .observe(&names.raw)
            .await
            .unwrap()
            .unwrap()
            .partitions,
        5
    );

    // Growing the spec to match clears it.
    h.dts()
        .patch(
            "breaker",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"topics": {"partitions": 5}}})),
        )
        .await
        .unwrap();
    h.wait_dt("breaker", "Ready again", dt_ready).await;
    let enriched = h.topics.observe(&names.enriched).await.unwrap().unwrap();
    assert_eq!(enriched.partitions, 5, "enriched topic grown too");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_delete_removes_topics_and_retain_keeps_them() {
    let h = Harness::start("op-delete", |_| {}).await;
    let retain_yaml = BREAKER_YAML
        .replace("name: breaker", "name: meter")
        .replace("smart_breaker", "smart_meter")
        .replace("deletionPolicy: Delete", "deletionPolicy: Retain");
    h.create_dt(&device_type(BREAKER_YAML)).await;
    h.create_dt(&device_type(&retain_yaml)).await;
    let deleted = h.wait_dt("breaker", "Ready", dt_ready).await;
    assert!(
        deleted
            .finalizers()
            .iter()
            .any(|f| f == "iotcloud.dev/topics"),
        "Delete policy adds the finalizer"
    );
    let kept = h.wait_dt("meter", "Ready", dt_ready).await;
    assert!(
        kept.finalizers().is_empty(),
        "Retain policy needs no finalizer"
    );

    for name in ["breaker", "meter"] {
        h.dts()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let dts = h.dts();
    for name in ["breaker", "meter"] {
        tokio::time::timeout(
            support::TIMEOUT,
            kube::runtime::wait::await_condition(
                dts.clone(),
                name,
                kube::runtime::wait::conditions::is_deleted(""),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} not deleted (stuck finalizer?)"))
        .unwrap();
    }
    let gone = TopicNames::for_device_type(&h.config.topic_prefix, "smart_breaker");
    for t in [&gone.raw, &gone.enriched] {
        h.wait_topic(t, "deleted with its DeviceType", |t| t.is_none())
            .await;
    }
    let kept = TopicNames::for_device_type(&h.config.topic_prefix, "smart_meter");
    for t in [&kept.raw, &kept.enriched] {
        assert!(
            h.topics.observe(t).await.unwrap().is_some(),
            "{t} kept by Retain"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_scales_the_enrichment_up_and_back_down() {
    let h = Harness::start("op-scale", |_| {}).await;
    let yaml = BREAKER_YAML.replace(
        "deletionPolicy: Delete",
        "enrichment: { minReplicas: 1, maxReplicas: 3, lagPerReplica: 10 }",
    );
    h.create_dt(&device_type(&yaml)).await;
    h.wait_dt("breaker", "Ready", dt_ready).await;
    let deployments: Api<Deployment> = Api::namespaced(h.client.clone(), &h.ns.name);
    let replicas =
        |n: i32| move |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas) == Some(n);
    wait_for(&deployments, "breaker-enrichment", "1 replica", replicas(1)).await;

    // 45 unconsumed messages: ceil(45 / 10) = 5, capped at maxReplicas 3.
    let names = TopicNames::for_device_type(&h.config.topic_prefix, "smart_breaker");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.config.kafka_bootstrap)
        .create()
        .unwrap();
    for i in 0..45 {
        producer
            .send(
                FutureRecord::to(&names.raw)
                    .key(&format!("breaker-{:03}", i % 7))
                    .payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    wait_for(
        &deployments,
        "breaker-enrichment",
        "3 replicas for lag 45",
        replicas(3),
    )
    .await;
    let dt = h
        .wait_dt("breaker", "lag 45 in status", |d| {
            d.status.as_ref().and_then(|s| s.lag) == Some(45)
        })
        .await;
    assert_eq!(dt.status.unwrap().replicas.unwrap().desired, 3);

    // The enrichment group catches up: back to the minimum after the cool-down.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &h.config.kafka_bootstrap)
        .set("group.id", h.config.enrichment_group("smart_breaker"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&names.raw]).unwrap();
    for _ in 0..45 {
        let m = tokio::time::timeout(support::TIMEOUT, consumer.recv())
            .await
            .unwrap()
            .unwrap();
        consumer.commit_message(&m, CommitMode::Sync).unwrap();
    }
    wait_for(
        &deployments,
        "breaker-enrichment",
        "back to 1 replica",
        replicas(1),
    )
    .await;
    h.wait_dt("breaker", "lag 0 in status", |d| {
        d.status.as_ref().and_then(|s| s.lag) == Some(0)
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_with_unknown_device_type_gets_a_clear_condition_until_it_exists() {
    let h = Harness::start("op-app", |_| {}).await;
    let app = samples()
        .applications
        .into_iter()
        .find(|a| a.name_any() == "smart-grid-monitor")
        .unwrap();
    h.create_app(&app).await;
    let waiting = h
        .wait_app("smart-grid-monitor", "MissingDeviceTypes", |a| {
            a.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "DeviceTypesResolved"))
                == Some(("False".into(), "MissingDeviceTypes".into()))
        })
        .await;
    assert_eq!(
        waiting.status.unwrap().missing_device_types,
        vec!["smart_breaker".to_string()]
    );
    h.create_dt(&device_type(BREAKER_YAML)).await;
    let resolved = h
        .wait_app("smart-grid-monitor", "Ready", |a| {
            a.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|(s, _)| s == "True")
        })
        .await;
    let status = resolved.status.unwrap();
    assert_eq!(
        status.resolved_device_types,
        vec!["smart_breaker".to_string()]
    );
    assert_eq!(
        status.topics,
        vec![format!("{}.smart_breaker.enriched", h.config.topic_prefix)]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_replica_leads_and_another_takes_over_an_expired_lease() {
    use iot_operator::controller::leader::{Attempt, LeaderElection, try_acquire};
    use k8s_openapi::api::coordination::v1::Lease;
    let client = iot_testkit::kube_client().await;
    let ns = iot_testkit::TestNamespace::create(&client, "op-leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut a = LeaderElection::new(&ns.name, "replica-a");
    let mut b = LeaderElection::new(&ns.name, "replica-b");
    a.lease_duration = Duration::from_secs(2);
    b.lease_duration = Duration::from_secs(2);

    assert_eq!(try_acquire(&leases, &a).await.unwrap(), Attempt::Leading);
    assert_eq!(
        try_acquire(&leases, &b).await.unwrap(),
        Attempt::Following {
            holder: "replica-a".into()
        }
    );
    assert_eq!(
        try_acquire(&leases, &a).await.unwrap(),
        Attempt::Leading,
        "renewal"
    );
    // replica-a stops renewing: once its lease is older than 2 s, replica-b takes over.
    let taken = async {
        loop {
            if try_acquire(&leases, &b).await.unwrap() == Attempt::Leading {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), taken)
        .await
        .expect("replica-b never took over");
    let lease = leases
        .get("iot-operator-leader")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert_ne!(
        try_acquire(&leases, &a).await.unwrap(),
        Attempt::Leading,
        "old leader must follow"
    );
}
