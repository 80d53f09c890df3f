//! Mocked-API scenario tests: the exact calls one reconcile makes, in order, where the order is
//! the point. The API server is a `tower-test` mock and the broker a scripted [`TopicAdmin`] and
//! [`LagReader`]; no cluster and no broker are involved.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Request, Response};
use iot_operator::controller::{Context, Metrics, OperatorConfig, device_type};
use iot_operator::crd::{Application, DeviceType};
use iot_operator::kafka::lag::LagReader;
use iot_operator::kafka::topics::{DesiredTopic, ObservedTopic, TopicAdmin, TopicPlan};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};
use rdkafka::error::KafkaError;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn invalid_device_type() -> DeviceType {
    // Stored before the schema's rules existed: min > max, which the API server now refuses.
    serde_json::from_value(serde_json::json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": { "name": "breaker", "namespace": "iot", "uid": "u-1", "generation": 2,
                      "resourceVersion": "7" },
        "spec": {
            "deviceType": "smart_breaker",
            "displayName": "Smart Circuit Breaker",
            "enrichment": { "minReplicas": 4, "maxReplicas": 2 }
        }
    }))
    .unwrap()
}

async fn body_json(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn reply(json: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(&json).unwrap()))
        .unwrap()
}

/// The API server side of the scenario: answers each expected request and checks it.
async fn invalid_spec_api_server(mut handle: Handle, dt: DeviceType) {
    // 1. The status says why, with a SpecValid=False condition and Ready=False.
    let (req, send) = handle.next_request().await.expect("status patch");
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(
        req.uri().path(),
        "/apis/iotcloud.dev/v1alpha1/namespaces/iot/devicetypes/breaker/status"
    );
    let patch = body_json(req).await;
    let conditions = patch["status"]["conditions"].as_array().unwrap().clone();
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned().unwrap();
    assert_eq!(find("SpecValid")["status"], "False");
    assert_eq!(find("SpecValid")["reason"], "InvalidSpec");
    assert!(
        find("SpecValid")["message"]
            .as_str()
            .unwrap()
            .contains("minReplicas")
    );
    assert_eq!(find("Ready")["status"], "False");
    assert_eq!(patch["status"]["observedGeneration"], 2);
    let mut stored = serde_json::to_value(&dt).unwrap();
    stored["status"] = patch["status"].clone();
    send.send_response(reply(stored));

    // 2. A Warning Event about the object.
    let (req, send) = handle.next_request().await.expect("event");
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/events.k8s.io/v1/namespaces/iot/events"
    );
    let event = body_json(req).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["regarding"]["name"], "breaker");
    send.send_response(reply(event));
}

#[tokio::test]
async fn invalid_spec_gets_a_condition_and_an_event_and_nothing_else() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "iot");
    let (dt_store, _dt_writer) = reflector::store::<DeviceType>();
    let (app_store, _app_writer) = reflector::store::<Application>();
    // No broker is contacted on this path; the address is never dialled.
    let config = OperatorConfig::new("iot", "127.0.0.1:1");
    let ctx = Arc::new(Context::new(client, config, Metrics::new(), dt_store, app_store).unwrap());
    let dt = invalid_device_type();

    let server = tokio::spawn(invalid_spec_api_server(handle, dt.clone()));
    let action = device_type::reconcile(Arc::new(dt.clone()), ctx.clone())
        .await
        .unwrap();
    // Nothing to retry until the spec changes: no topic, no Deployment, no requeue loop.
    assert_eq!(action, Action::await_change());
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the API server saw every expected call")
        .unwrap();
    assert_eq!(
        ctx.metrics
            .reconciles
            .with_label_values(&["DeviceType", "invalid"])
            .get(),
        1
    );
    assert_eq!(dt.name_any(), "breaker");
}

/// A broker that holds topics in memory and records what was asked of it.
#[derive(Default)]
struct ScriptedBroker {
    topics: Mutex<BTreeMap<String, ObservedTopic>>,
    calls: Mutex<Vec<String>>,
    lag: i64,
}

impl ScriptedBroker {
    fn with_topic(self, name: &str, partitions: i32) -> Self {
        self.topics.lock().unwrap().insert(
            name.into(),
            ObservedTopic {
                partitions,
                config: BTreeMap::new(),
            },
        );
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl TopicAdmin for ScriptedBroker {
    fn observe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, KafkaError>> {
        Box::pin(async move { Ok(self.topics.lock().unwrap().get(topic).cloned()) })
    }

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredTopic,
        plan: &'a TopicPlan,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            let call = match plan {
                TopicPlan::Create => format!("create {} {}", desired.name, desired.partitions),
                TopicPlan::Update { .. } => format!("update {}", desired.name),
                TopicPlan::UpToDate | TopicPlan::RefuseShrink { .. } => return Ok(()),
            };
            self.calls.lock().unwrap().push(call);
            self.topics.lock().unwrap().insert(
                desired.name.clone(),
                ObservedTopic {
                    partitions: desired.partitions,
                    config: desired.config.clone(),
                },
            );
            Ok(())
        })
    }

    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(async move {
            for t in topics {
                self.calls.lock().unwrap().push(format!("delete {t}"));
                self.topics.lock().unwrap().remove(t);
            }
            Ok(())
        })
    }
}

impl LagReader for ScriptedBroker {
    fn lag<'a>(&'a self, group: &'a str, topic: &'a str) -> BoxFuture<'a, Result<i64, KafkaError>> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("lag {group} {topic}"));
            Ok(self.lag)
        })
    }
}

fn device_type(spec_extra: serde_json::Value, meta_extra: serde_json::Value) -> DeviceType {
    let mut dt = serde_json::json!({
        "apiVersion": "iotcloud.dev/v1alpha1",
        "kind": "DeviceType",
        "metadata": { "name": "breaker", "namespace": "iot", "uid": "u-1", "generation": 1,
                      "resourceVersion": "7" },
        "spec": {
            "deviceType": "smart_breaker",
            "displayName": "Smart Circuit Breaker",
            "topics": { "partitions": 3 },
            "enrichment": { "replicas": 2 }
        }
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        dt["spec"][k] = v.clone();
    }
    for (k, v) in meta_extra.as_object().unwrap() {
        dt["metadata"][k] = v.clone();
    }
    serde_json::from_value(dt).unwrap()
}

/// One recorded API call: method, path, and the JSON body (or null).
type Call = (String, String, serde_json::Value);

/// An API server that answers every request plausibly (nothing exists until it is written;
/// writes echo back) and records the calls, for scenarios where the calls matter, not their
/// exact interleaving with Events.
/// Writes to the DeviceType answer with `stored` (and the status written).
async fn recording_api_server(
    mut handle: Handle,
    calls: Arc<Mutex<Vec<Call>>>,
    stored: serde_json::Value,
) {
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        calls
            .lock()
            .unwrap()
            .push((method.clone(), path.clone(), body.clone()));
        let response = if method == "GET" {
            Response::builder()
                .status(404)
                .body(Body::from(
                    serde_json::to_vec(&serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"
                    }))
                    .unwrap(),
                ))
                .unwrap()
        } else if path.starts_with(DT_PATH) {
            let mut object = stored.clone();
            if let Some(status) = body.get("status") {
                object["status"] = status.clone();
            }
            reply(object)
        } else {
            let mut echo = body;
            if echo.get("metadata").is_none() {
                echo["metadata"] = serde_json::json!({ "name": "x" });
            }
            reply(echo)
        };
        send.send_response(response);
    }
}

struct Scenario {
    ctx: Arc<Context>,
    broker: Arc<ScriptedBroker>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Scenario {
    fn new(broker: ScriptedBroker, dt: &DeviceType, others: &[DeviceType]) -> Self {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "iot");
        let (dt_store, mut dt_writer) = reflector::store::<DeviceType>();
        for other in others {
            dt_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(other.clone()));
        }
        let (app_store, _app_writer) = reflector::store::<Application>();
        let broker = Arc::new(broker);
        let ctx = Arc::new(Context::with_kafka(
            client,
            OperatorConfig::new("iot", "127.0.0.1:1"),
            Metrics::new(),
            (dt_store, app_store),
            broker.clone(),
            broker.clone(),
        ));
        let calls = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(recording_api_server(
            handle,
            calls.clone(),
            serde_json::to_value(dt).unwrap(),
        ));
        Self { ctx, broker, calls }
    }

    fn api_calls(&self) -> Vec<(String, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect()
    }

    fn event_reasons(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p.ends_with("/events"))
            .map(|(_, _, b)| b["reason"].as_str().unwrap().to_string())
            .collect()
    }

    fn status_patch(&self) -> serde_json::Value {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .find(|(_, p, _)| p.ends_with("/status"))
            .map(|(_, _, b)| b["status"].clone())
            .expect("a status patch")
    }
}

fn condition(status: &serde_json::Value, type_: &str) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

const DT_PATH: &str = "/apis/iotcloud.dev/v1alpha1/namespaces/iot/devicetypes/breaker";
const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/iot/deployments/breaker-enrichment";

#[tokio::test]
async fn happy_path_creates_topics_then_the_deployment_then_writes_status() {
    let dt = device_type(serde_json::json!({}), serde_json::json!({}));
    let s = Scenario::new(ScriptedBroker::default(), &dt, &[]);
    let action = device_type::reconcile(Arc::new(dt), s.ctx.clone())
        .await
        .unwrap();
    // Not settled yet (no replica ready): look again soon.
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
    // Shared topics first (observe), then the type's topics are created (apply). The lag of a
    // type with fixed replicas is not read.
    assert_eq!(
        s.broker.calls(),
        [
            "create iot.enriched 3",
            "create iot.deadletter 3",
            "create iot.smart_breaker.raw 3",
            "create iot.smart_breaker.enriched 3",
        ]
    );
    let calls = s.api_calls();
    let pos = |m: &str, p: &str| {
        calls
            .iter()
            .position(|(cm, cp)| cm == m && cp.starts_with(p))
            .unwrap_or_else(|| panic!("no {m} {p} in {calls:?}"))
    };
    // Observe the Deployment, apply it, then write the status.
    assert!(pos("GET", DEPLOYMENT_PATH) < pos("PATCH", DEPLOYMENT_PATH));
    assert!(pos("PATCH", DEPLOYMENT_PATH) < pos("PATCH", &format!("{DT_PATH}/status")));
    let applied = &s.calls.lock().unwrap()[pos("PATCH", DEPLOYMENT_PATH)]
        .2
        .clone();
    assert_eq!(applied["spec"]["replicas"], 2);
    let status = s.status_patch();
    assert_eq!(
        condition(&status, "TopicsReady"),
        ("True".into(), "UpToDate".into())
    );
    assert_eq!(
        condition(&status, "EnrichmentReady"),
        ("False".into(), "Progressing".into())
    );
    assert_eq!(status["topics"]["raw"], "iot.smart_breaker.raw");
    assert_eq!(status["replicas"]["desired"], 2);
    assert!(status["lag"].is_null(), "not read for fixed replicas");
    // Two TopicCreated Events: the recorder sends the second as an update of the first's series.
    assert_eq!(s.event_reasons(), ["TopicCreated"]);
    let event_updates = calls
        .iter()
        .filter(|(m, p)| m == "PATCH" && p.contains("/events/"))
        .count();
    assert_eq!(event_updates, 1, "{calls:?}");
}

#[tokio::test]
async fn a_partition_shrink_is_refused_without_touching_the_topics() {
    let broker = ScriptedBroker::default()
        .with_topic("iot.enriched", 3)
        .with_topic("iot.deadletter", 3)
        .with_topic("iot.smart_breaker.raw", 6)
        .with_topic("iot.smart_breaker.enriched", 6);
    let dt = device_type(serde_json::json!({}), serde_json::json!({}));
    let s = Scenario::new(broker, &dt, &[]);
    device_type::reconcile(Arc::new(dt), s.ctx.clone())
        .await
        .unwrap();
    assert!(
        s.broker
            .calls()
            .iter()
            .all(|c| !c.starts_with("create") && !c.starts_with("update")),
        "no topic changed: {:?}",
        s.broker.calls()
    );
    let status = s.status_patch();
    assert_eq!(
        condition(&status, "TopicsReady"),
        ("False".into(), "PartitionShrinkRefused".into())
    );
    assert_eq!(condition(&status, "Ready").0, "False");
    assert_eq!(
        status["partitions"], 6,
        "the partitions the topic really has"
    );
    // The enrichment still runs, sized for the real partition count.
    assert!(
        s.api_calls()
            .iter()
            .any(|(m, p)| m == "PATCH" && p.starts_with(DEPLOYMENT_PATH))
    );
}

#[tokio::test]
async fn deletion_with_delete_policy_deletes_the_topics_then_releases_the_finalizer() {
    let deleting = serde_json::json!({
        "finalizers": ["iotcloud.dev/topics"],
        "deletionTimestamp": "2026-01-01T00:00:00Z"
    });
    let broker = ScriptedBroker::default()
        .with_topic("iot.smart_breaker.raw", 3)
        .with_topic("iot.smart_breaker.enriched", 3);
    let dt = device_type(
        serde_json::json!({ "deletionPolicy": "Delete" }),
        deleting.clone(),
    );
    let s = Scenario::new(broker, &dt, &[]);
    let action = device_type::reconcile(Arc::new(dt), s.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(
        s.broker.calls(),
        [
            "delete iot.smart_breaker.raw",
            "delete iot.smart_breaker.enriched"
        ]
    );
    assert_eq!(s.event_reasons(), ["TopicsDeleted"]);
    let calls = s.calls.lock().unwrap().clone();
    let (_, _, finalizer_patch) = calls
        .iter()
        .find(|(m, p, _)| m == "PATCH" && p == DT_PATH)
        .expect("the finalizer patch");
    assert_eq!(
        finalizer_patch["metadata"]["finalizers"],
        serde_json::json!([])
    );
    assert!(
        calls
            .iter()
            .all(|(_, p, _)| !p.starts_with(DEPLOYMENT_PATH)),
        "the Deployment goes with its owner, not by a call"
    );

    // The same deletion while another DeviceType claims the id keeps the topics.
    let mut other = device_type(serde_json::json!({}), serde_json::json!({}));
    other.metadata.name = Some("breaker-copy".into());
    other.metadata.uid = Some("u-2".into());
    let dt = device_type(serde_json::json!({ "deletionPolicy": "Delete" }), deleting);
    let s = Scenario::new(ScriptedBroker::default(), &dt, &[other]);
    device_type::reconcile(Arc::new(dt), s.ctx.clone())
        .await
        .unwrap();
    assert!(s.broker.calls().is_empty(), "{:?}", s.broker.calls());
    assert_eq!(s.event_reasons(), ["TopicsKept"]);
}
