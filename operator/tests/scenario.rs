//! Mocked-API scenario tests: the exact calls one reconcile makes, in order, where the order is
//! the point. The API server is a `tower-test` mock; no cluster and no broker are involved.

use std::sync::Arc;

use http::{Request, Response};
use iot_operator::controller::{Context, Metrics, OperatorConfig, device_type};
use iot_operator::crd::{Application, DeviceType};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};
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
