//! The registry ConfigMap at scale, against the test environment's real API server and Kafka:
//! hundreds of breaker-sized DeviceTypes and Applications all reconcile and all reach the
//! registry (the pretty-printed registry broke at about 250); a registry too large for a
//! ConfigMap is reported, not written, and the last one that fitted is kept; the CRDs refuse
//! oversized fields at admission.
//!
//! The default tier runs 300 of each (1.5 to 2.5 minutes on the shared 2-core development
//! machine). A thousand of each (14 minutes there, most of it the API server creating and the
//! operator reconciling 2,000 objects; the registry was complete 10 s after the last creation):
//!
//! ```sh
//! source deploy/testenv/.run/env
//! IOT_REGISTRY_SCALE=1000 cargo test-integration -p iot-operator --test registry_scale -- --nocapture
//! ```

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use iot_operator::controller::registry_sync::{self, REASON_TOO_LARGE, WriteStatus};
use iot_operator::crd::limits::{DESCRIPTION_MAX_LENGTH, largest_device_type_spec};
use iot_operator::crd::{
    Application, DeviceType, EnrichmentSpec, Measurement, MeasurementComponent,
};
use iot_operator::registry::{CONFIG_MAP_BINARY_KEY, MAX_COMPRESSED_BYTES};
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use support::*;

/// Creations in flight at once.
const PARALLEL: usize = 16;

/// `n` copies of the sample smart breaker with distinct names, ids and descriptions: the
/// registry entry of each is that of the sample. The topics have 1 partition and the enrichment
/// 0 replicas (neither is in the registry), which spares the single test broker 6 partitions per
/// type and kwok a pod.
fn breakers(n: usize) -> Vec<DeviceType> {
    let breaker = samples()
        .device_types
        .into_iter()
        .find(|d| d.name_any() == "smart-breaker")
        .unwrap();
    (0..n)
        .map(|i| {
            let mut dt = breaker.clone();
            dt.metadata.name = Some(format!("breaker-{i:04}"));
            dt.spec.device_type = format!("breaker_{i:04}");
            dt.spec.display_name = format!("Smart Circuit Breaker {i}");
            dt.spec.description = Some(format!(
                "Intelligent circuit breaker {i} with monitoring and protection capabilities, \
                 feeder {} of substation {}",
                i % 17,
                i / 17
            ));
            dt.spec.topics.partitions = 1;
            dt.spec.enrichment = EnrichmentSpec {
                replicas: Some(0),
                ..EnrichmentSpec::default()
            };
            dt
        })
        .collect()
}

/// `n` applications, application `i` reading breaker `i % types`.
fn applications(n: usize, types: usize) -> Vec<Application> {
    let app = samples()
        .applications
        .into_iter()
        .find(|a| a.name_any() == "smart-grid-monitor")
        .unwrap();
    (0..n)
        .map(|i| {
            let mut a = app.clone();
            a.metadata.name = Some(format!("app-{i:04}"));
            a.spec.display_name = format!("Grid Monitor {i}");
            a.spec.device_types = vec![format!("breaker_{:04}", i % types)];
            a
        })
        .collect()
}

/// Creates every object, `PARALLEL` at a time.
async fn create_all<K>(api: &Api<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    futures::stream::iter(objects)
        .map(|o| async move {
            api.create(&PostParams::default(), &o)
                .await
                .unwrap_or_else(|e| panic!("creating {}: {e}", o.name_any()))
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
}

/// Waits, by watching the whole kind, until `n` objects pass `ready`; panics after `timeout`.
async fn wait_all<K>(api: &Api<K>, n: usize, what: &str, timeout: Duration, ready: fn(&K) -> bool)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut state: HashMap<String, bool> = HashMap::new();
    let done = async {
        let mut events = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(obj) => {
                    state.insert(obj.name_any(), ready(&obj));
                    if state.values().filter(|r| **r).count() == n {
                        return;
                    }
                }
                // The watcher retries with backoff; a busy API server may cut a listing short.
                Err(e) => eprintln!("{what}: watch failed, retrying: {e}"),
            }
        }
    };
    if tokio::time::timeout(timeout, done).await.is_err() {
        let ready = state.values().filter(|r| **r).count();
        panic!("{what}: {ready} of {n} within {timeout:?}");
    }
}

fn app_ready(app: &Application) -> bool {
    app.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .is_some_and(|(s, _)| s == "True")
}

/// The registry ConfigMap, once `check` holds for it.
async fn wait_registry(
    cms: &Api<ConfigMap>,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ConfigMap) -> bool,
) -> ConfigMap {
    let cond = |cm: Option<&ConfigMap>| cm.is_some_and(&check);
    match tokio::time::timeout(timeout, await_condition(cms.clone(), "iot-registry", cond)).await {
        Ok(Ok(Some(cm))) => cm,
        _ => {
            let last = cms.get_opt("iot-registry").await.ok().flatten();
            let status = last.as_ref().and_then(WriteStatus::of);
            let types = last
                .as_ref()
                .and_then(registry_sync::registry_in)
                .map(|r| r.device_types.len());
            panic!(
                "iot-registry: {what} within {timeout:?}; status {status:?}, {types:?} device types"
            );
        }
    }
}

/// Deletes every topic under `prefix` (the DeviceTypes here keep theirs: `Retain`). Only once
/// the operator has stopped: it would create them again.
async fn delete_topics_under(bootstrap: &str, prefix: &str) {
    let list = {
        let (bootstrap, prefix) = (bootstrap.to_string(), format!("{prefix}."));
        move || -> Vec<String> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("kafka client");
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .expect("topic list");
            metadata
                .topics()
                .iter()
                .map(|t| t.name().to_string())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        }
    };
    // Kafka deletes asynchronously: a deleted topic can stay in the metadata for a while, so
    // delete what is listed again until nothing is, for up to half a minute.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let names = tokio::task::spawn_blocking(list.clone()).await.unwrap();
        if names.is_empty() {
            return;
        }
        for chunk in names.chunks(100) {
            iot_testkit::delete_topics(bootstrap, chunk).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let left = tokio::task::spawn_blocking(list).await.unwrap();
    assert!(
        left.is_empty(),
        "topics left under {prefix}: {}",
        left.len()
    );
}

async fn scale(n: usize) {
    let h = Harness::start("op-scale", |c| {
        // The default resync: the tests' 2 s would re-check every type's topics 500 times a
        // second.
        c.resync = Duration::from_secs(300);
    })
    .await;
    let started = Instant::now();
    create_all(&h.dts(), breakers(n)).await;
    create_all(&h.apps(), applications(n, n)).await;
    let created = started.elapsed();
    println!("created {n} DeviceTypes and {n} Applications in {created:?}");

    // The three waits run side by side, each timed from the first creation.
    let timeout = Duration::from_secs(60 + n as u64 / 2);
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns.name);
    let (dts_ready, apps_ready, (cm, in_registry)) = tokio::join!(
        async {
            wait_all(&h.dts(), n, "DeviceTypes Ready", timeout, dt_ready).await;
            started.elapsed()
        },
        async {
            wait_all(&h.apps(), n, "Applications Ready", timeout, app_ready).await;
            started.elapsed()
        },
        async {
            let cm = wait_registry(&cms, "every type and application", timeout, |cm| {
                registry_sync::registry_in(cm).is_some_and(|r| {
                    r.device_types.len() == n
                        && r.device_types.values().all(|d| d.applications.len() == 1)
                })
            })
            .await;
            (cm, started.elapsed())
        },
    );

    let registry = registry_sync::registry_in(&cm).unwrap();
    assert!(registry.skipped.is_empty(), "{:?}", registry.skipped);
    let listings: usize = registry
        .device_types
        .values()
        .map(|d| d.applications.len())
        .sum();
    assert_eq!(listings, n);
    let gzip = registry_sync::registry_bytes(&cm).unwrap().len();
    assert!(cm.data.is_none(), "no plain JSON key");
    let status = WriteStatus::of(&cm).unwrap();
    assert!(status.written, "{status:?}");
    assert_eq!(h.metrics.registry_up_to_date.get(), 1);
    let json = h.metrics.registry_bytes.with_label_values(&["json"]).get();
    println!(
        "{n} of each: DeviceTypes Ready after {dts_ready:?}, Applications Ready after \
         {apps_ready:?}, all in the registry after {in_registry:?}; ConfigMap {CONFIG_MAP_BINARY_KEY} \
         {gzip} bytes ({json} bytes of JSON; {:.1} % of the limit); {}",
        gzip as f64 * 100.0 / MAX_COMPRESSED_BYTES as f64,
        status.message
    );
    let m = &h.metrics;
    println!(
        "registry writes: {} ok, {} failed; refused as too large: {}",
        m.registry_updates.with_label_values(&["ok"]).get(),
        m.registry_updates.with_label_values(&["error"]).get(),
        m.registry_write_failures
            .with_label_values(&["too_large"])
            .get(),
    );
    // One call each, rather than the namespace controller's object by object; best effort (a
    // busy API server may cut a long request short), the namespace's deletion follows anyway.
    let all = (DeleteParams::default(), ListParams::default());
    let _ = h.apps().delete_collection(&all.0, &all.1).await;
    let _ = h.dts().delete_collection(&all.0, &all.1).await;
    let (bootstrap, prefix) = (
        h.config.kafka_bootstrap.clone(),
        h.config.topic_prefix.clone(),
    );
    h.stop().await;
    delete_topics_under(&bootstrap, &prefix).await;
}

/// More breaker-sized types than the pretty-printed registry held (about 250): 300 of each, or
/// `IOT_REGISTRY_SCALE` (the long form: 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_device_types_and_applications_reach_the_registry() {
    let n = std::env::var("IOT_REGISTRY_SCALE").map_or(300, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("IOT_REGISTRY_SCALE={v} is not a count"))
    });
    scale(n).await;
}

/// Random 4-byte characters (compress worst, and count 4 bytes each): three of the largest valid
/// DeviceTypes of them do not fit in one ConfigMap, two do.
fn largest(name: &str, seed: u64) -> DeviceType {
    let mut state = seed;
    let mut text = move |n: usize| -> String {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from_u32(0x10000 + (state % 0xF0000) as u32).unwrap()
            })
            .collect()
    };
    let mut spec = largest_device_type_spec(&name.replace('-', "_"), &mut text);
    spec.topics.partitions = 1;
    spec.enrichment.replicas = Some(0);
    DeviceType::new(name, spec)
}

/// Warning Events with `reason` about the object `name`, as the API server lists them.
async fn events(h: &Harness, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(h.client.clone(), &h.ns.name);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name},reason={reason}"));
    api.list(&lp).await.unwrap().items
}

/// Polls the Events (at most [`TIMEOUT`]) until one with `reason` is about `name`.
async fn wait_event(h: &Harness, name: &str, reason: &str) -> Event {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(event) = events(h, name, reason).await.pop() {
            return event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} Event about {name} within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_too_large_is_reported_and_the_last_one_that_fitted_is_kept() {
    let h = Harness::start("op-too-large", |_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), &h.ns.name);
    // Two of the largest valid DeviceTypes fit: the API server accepts multi-byte text up to the
    // limits in characters, and the registry is written.
    for (name, seed) in [("big-a", 1), ("big-b", 2)] {
        h.create_dt(&largest(name, seed)).await;
    }
    let two = wait_registry(&cms, "two large types", TIMEOUT, |cm| {
        registry_sync::registry_in(cm).is_some_and(|r| r.device_types.len() == 2)
    })
    .await;
    let kept = registry_sync::registry_bytes(&two).unwrap().to_vec();
    println!(
        "two of the largest DeviceTypes: {} bytes gzip-compressed",
        kept.len()
    );

    // The third does not fit: nothing broken is written, the ConfigMap keeps the two and says so.
    h.create_dt(&largest("big-c", 3)).await;
    let refused = wait_registry(&cms, "RegistryTooLarge", TIMEOUT, |cm| {
        WriteStatus::of(cm).is_some_and(|s| !s.written)
    })
    .await;
    let status = WriteStatus::of(&refused).unwrap();
    assert_eq!(status.reason, REASON_TOO_LARGE);
    assert!(
        status.message.contains("the last registry that fitted"),
        "{}",
        status.message
    );
    assert_eq!(registry_sync::registry_bytes(&refused), Some(&kept[..]));
    assert_eq!(h.metrics.registry_up_to_date.get(), 0);
    let failures = &h.metrics.registry_write_failures;
    assert!(failures.with_label_values(&["too_large"]).get() >= 1);
    assert_eq!(failures.with_label_values(&["api"]).get(), 0);
    // Warning Events on the ConfigMap and on the DeviceType the workers do not see.
    let on_cm = wait_event(&h, "iot-registry", REASON_TOO_LARGE).await;
    assert_eq!(on_cm.type_.as_deref(), Some("Warning"));
    let on_dt = wait_event(&h, "big-c", REASON_TOO_LARGE).await;
    println!("Event on big-c: {}", on_dt.message.unwrap_or_default());
    assert!(events(&h, "big-a", REASON_TOO_LARGE).await.is_empty());
    // The DeviceType itself is reconciled: the registry's state is on the ConfigMap.
    h.wait_dt("big-c", "Ready", dt_ready).await;

    // Deleting one makes it fit again.
    h.dts()
        .delete("big-a", &DeleteParams::default())
        .await
        .unwrap();
    let fits = wait_registry(&cms, "written again", TIMEOUT, |cm| {
        WriteStatus::of(cm).is_some_and(|s| s.written)
    })
    .await;
    let ids: Vec<String> = registry_sync::registry_in(&fits)
        .unwrap()
        .device_types
        .into_keys()
        .collect();
    assert_eq!(ids, ["big_b", "big_c"]);
    assert_eq!(h.metrics.registry_up_to_date.get(), 1);
    let (bootstrap, prefix) = (
        h.config.kafka_bootstrap.clone(),
        h.config.topic_prefix.clone(),
    );
    h.stop().await;
    delete_topics_under(&bootstrap, &prefix).await;
}

/// The operator is ready although its first write is refused: readiness is about the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_registry_too_large_does_not_keep_the_operator_from_being_ready() {
    let client = iot_testkit::kube_client().await;
    install_crds(&client).await;
    let ns = iot_testkit::TestNamespace::create(&client, "op-first-too-large").await;
    let dts: Api<DeviceType> = Api::namespaced(client.clone(), &ns.name);
    for (name, seed) in [("big-a", 1), ("big-b", 2), ("big-c", 3)] {
        dts.create(&PostParams::default(), &largest(name, seed))
            .await
            .unwrap();
    }
    let mut config = iot_operator::controller::OperatorConfig::new(
        ns.name.clone(),
        iot_testkit::kafka_bootstrap(),
    );
    config.topic_prefix = ns.name.replace('-', "_");
    let readiness = iot_process::admin::Readiness::default();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(iot_operator::controller::run(
        client.clone(),
        config.clone(),
        iot_operator::controller::Metrics::new(),
        readiness.clone(),
        async move {
            let _ = stopped.wait_for(|v| *v).await;
        },
    ));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm = wait_registry(&cms, "RegistryTooLarge", TIMEOUT, |cm| {
        WriteStatus::of(cm).is_some_and(|s| !s.written)
    })
    .await;
    // Set right after the write this ConfigMap shows.
    wait_until("ready after the first attempt", || readiness.get()).await;
    assert!(
        cm.binary_data.is_none(),
        "no registry to keep: none written"
    );
    assert!(
        WriteStatus::of(&cm)
            .unwrap()
            .message
            .contains("keeps no registry"),
        "{:?}",
        WriteStatus::of(&cm)
    );

    ns.delete().await;
    let _ = stop.send(true);
    tokio::time::timeout(TIMEOUT, operator)
        .await
        .expect("operator stops")
        .unwrap()
        .unwrap();
    delete_topics_under(&config.kafka_bootstrap, &config.topic_prefix).await;
}

/// The CRDs bound every free-text field: a 1.1 MB description is refused at admission; 1,024
/// characters of 2-byte text are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_at_admission() {
    let client = iot_testkit::kube_client().await;
    install_crds(&client).await;
    let ns = iot_testkit::TestNamespace::create(&client, "op-admission").await;
    let dts: Api<DeviceType> = Api::namespaced(client.clone(), &ns.name);
    let mut dt = breakers(1).remove(0);
    dt.spec.description = Some("x".repeat(1_100_000));
    let err = dts
        .create(&PostParams::default(), &dt)
        .await
        .expect_err("a 1.1 MB description accepted");
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains("spec.description") && s.message.contains("1024"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected error {other}"),
    }
    // The other limits, as the API server enforces them (schema, and CEL where the schema cannot
    // say it).
    let refused = |change: fn(&mut DeviceType)| {
        let mut dt = breakers(1).remove(0);
        change(&mut dt);
        let dts = dts.clone();
        async move { dts.create(&PostParams::default(), &dt).await.map(|_| ()) }
    };
    type Change = fn(&mut DeviceType);
    let cases: [(&str, Change); 4] = [
        ("a valid value of 33 characters", |dt| {
            let status = dt.spec.measurements.get_mut("status").unwrap();
            status.valid_values = vec![IntOrString::String("v".repeat(33))];
        }),
        ("a measurement name of 65 characters", |dt| {
            let voltage = dt.spec.measurements["voltage"].clone();
            dt.spec.measurements.insert("m".repeat(65), voltage);
        }),
        ("65 components in all", |dt| {
            for m in 0..3 {
                let measurement = Measurement {
                    components: (0..22)
                        .map(|c| (format!("c{c}"), MeasurementComponent::default()))
                        .collect(),
                    ..Measurement::default()
                };
                dt.spec.measurements.insert(format!("m{m}"), measurement);
            }
        }),
        ("33 capabilities", |dt| {
            dt.spec.capabilities = (0..33).map(|i| format!("c{i}")).collect();
        }),
    ];
    for (what, change) in cases {
        match refused(change).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {s:?}");
                println!("{what}: {}", s.message);
            }
            other => panic!("{what}: {other:?}"),
        }
    }

    dt.spec.description = Some("é".repeat(DESCRIPTION_MAX_LENGTH));
    dt.spec.measurements.get_mut("status").unwrap().valid_values = vec![
        IntOrString::Int(i32::MIN),
        IntOrString::String("é".repeat(32)),
    ];
    dts.create(&PostParams::default(), &dt)
        .await
        .expect("1,024 characters of 2-byte text");

    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let mut app = applications(1, 1).remove(0);
    app.spec.description = Some("x".repeat(DESCRIPTION_MAX_LENGTH + 1));
    assert!(
        apps.create(&PostParams::default(), &app).await.is_err(),
        "an Application description of 1,025 characters accepted"
    );
    ns.delete().await;
}
