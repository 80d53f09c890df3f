//! Smoke tests: the project's Kubernetes client against the test environment's real API server,
//! controller manager, scheduler and kwok node.

use std::time::Duration;

use futures::TryStreamExt;
use iot_testkit::{TestNamespace, kube_client, unique_name};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

#[tokio::test]
async fn configmap_round_trip() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "smoke-cm").await;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let name = unique_name("cm");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "data": { "registry.json": "{\"deviceTypes\":[]}" }
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();

    let read = api.get(&name).await.unwrap();
    assert_eq!(read.name_any(), name);
    assert_eq!(
        read.data.unwrap().get("registry.json").map(String::as_str),
        Some("{\"deviceTypes\":[]}")
    );
}

#[tokio::test]
async fn deployment_gets_a_running_pod() {
    let client = kube_client().await;
    let ns = TestNamespace::create(&client, "smoke-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let app = unique_name("app");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": app },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": app } },
            "template": {
                "metadata": { "labels": { "app": app } },
                "spec": { "containers": [{ "name": "main", "image": "example.invalid/never-pulled:1" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    // The controller manager creates a ReplicaSet and a Pod, the scheduler binds it to the kwok
    // node, and kwok reports it Running.
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let selector = format!("app={app}");
    let mut running = std::pin::pin!(
        watcher(pods.clone(), watcher::Config::default().labels(&selector))
            .applied_objects()
            .try_filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                futures::future::ready(phase.as_deref() == Some("Running"))
            })
    );
    let pod = tokio::time::timeout(Duration::from_secs(60), running.try_next())
        .await
        .expect(
            "no Running pod within 60 s: are kube-controller-manager, kube-scheduler and kwok up?",
        )
        .unwrap()
        .expect("watch ended");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("kwok-node-0")
    );
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
}
