//! Shared set-up of the operator's integration tests: the CRDs installed in the real API server,
//! a fresh namespace and topic prefix per test, and the operator running in-process against them.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use iot_operator::controller::{self, Metrics, OperatorConfig};
use iot_operator::crd::{Application, DeviceType, manifests::Manifests};
use iot_operator::kafka::topics::{KafkaTopicAdmin, ObservedTopic, TopicAdmin};
use iot_process::admin::Readiness;
use iot_testkit::{TestNamespace, kafka_bootstrap, kube_client};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use tokio::sync::watch;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// One test's world: namespace, topic prefix, running operator.
pub struct Harness {
    pub client: Client,
    pub ns: TestNamespace,
    pub config: OperatorConfig,
    pub topics: KafkaTopicAdmin,
    pub metrics: Metrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Installs (or updates) the CRDs and waits until the API server serves them.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [DeviceType::crd(), Application::crd()] {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("iot-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
        tokio::time::timeout(
            TIMEOUT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not established"))
        .unwrap();
    }
}

impl Harness {
    /// Starts the operator for a fresh namespace; `tune` adjusts its settings first.
    pub async fn start(prefix: &str, tune: impl FnOnce(&mut OperatorConfig)) -> Self {
        let client = kube_client().await;
        let bootstrap = kafka_bootstrap();
        install_crds(&client).await;
        let ns = TestNamespace::create(&client, prefix).await;
        let mut config = OperatorConfig::new(ns.name.clone(), bootstrap.clone());
        // Topic names are global to the broker: a prefix per test keeps tests apart.
        config.topic_prefix = ns.name.replace('-', "_");
        config.resync = Duration::from_secs(2);
        config.autoscale_interval = Duration::from_secs(1);
        config.scale_down_cooldown = Duration::from_secs(2);
        config.worker_image = "iot-worker:test".into();
        tune(&mut config);
        let metrics = Metrics::new();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(controller::run(
            client.clone(),
            config.clone(),
            metrics.clone(),
            Readiness::default(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        ));
        let topics = KafkaTopicAdmin::new(&bootstrap, Duration::from_secs(10)).unwrap();
        Self {
            client,
            ns,
            config,
            topics,
            metrics,
            stop,
            task,
        }
    }

    pub fn dts(&self) -> Api<DeviceType> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub fn apps(&self) -> Api<Application> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub async fn create_dt(&self, dt: &DeviceType) -> DeviceType {
        self.dts().create(&PostParams::default(), dt).await.unwrap()
    }

    pub async fn create_app(&self, app: &Application) -> Application {
        self.apps()
            .create(&PostParams::default(), app)
            .await
            .unwrap()
    }

    /// Waits until `check` holds for the named DeviceType, failing with its last status.
    pub async fn wait_dt(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&DeviceType) -> bool,
    ) -> DeviceType {
        wait_for(&self.dts(), name, what, check).await
    }

    pub async fn wait_app(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Application) -> bool,
    ) -> Application {
        wait_for(&self.apps(), name, what, check).await
    }

    /// Polls the broker until `check` holds for `topic` (`None`: it does not exist).
    pub async fn wait_topic(
        &self,
        topic: &str,
        what: &str,
        check: impl Fn(Option<&ObservedTopic>) -> bool,
    ) -> Option<ObservedTopic> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let observed = self.topics.observe(topic).await.unwrap();
            if check(observed.as_ref()) {
                return observed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "topic {topic}: {what}; last seen {observed:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn stop(self) {
        // Delete the namespace while the operator still runs, so it can release the topic
        // finalizers (and delete the topics of DeviceTypes with deletionPolicy Delete).
        self.ns.delete().await;
        let dts = self.dts();
        let drained = async {
            while !dts
                .list(&Default::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(true)
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .is_err()
        {
            eprintln!(
                "DeviceTypes in {} still present 30 s after namespace deletion",
                self.ns.name
            );
        }
        let _ = self.stop.send(true);
        let result = tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("operator stops");
        result.unwrap().unwrap();
    }
}

/// Polls `check` until it holds.
pub async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits, by watching, until `check` holds for object `name`.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let cond = |obj: Option<&K>| obj.is_some_and(&check);
    match tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        _ => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!("{name}: {what} did not happen within {TIMEOUT:?}; last state: {last:#?}");
        }
    }
}

/// The condition `type_` of a status condition list, as (status, reason).
pub fn condition(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn dt_condition(dt: &DeviceType, type_: &str) -> Option<(String, String)> {
    dt.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, type_))
}

pub fn dt_ready(dt: &DeviceType) -> bool {
    dt_condition(dt, "Ready").is_some_and(|(s, _)| s == "True")
        && dt.status.as_ref().and_then(|s| s.observed_generation) == dt.meta().generation
}

/// The sample manifests of deploy/samples/.
pub fn samples() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    iot_operator::crd::manifests::load(&dir).expect("samples parse")
}

/// A DeviceType from YAML text.
pub fn device_type(yaml: &str) -> DeviceType {
    let mut m = Manifests::default();
    m.parse_str(yaml, "test").unwrap();
    m.device_types.into_iter().next().expect("one DeviceType")
}
