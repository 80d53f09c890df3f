//! The operator's control loops: one kube-rs `Controller` per custom resource kind and a registry
//! writer, sharing one [`Context`] (which holds the operator's Kafka clients for its whole life).
//!
//! At start (after winning the leader election) the shared topics `{prefix}.enriched` and
//! `{prefix}.deadletter` are created in the background, retried with backoff until the broker
//! answers ([`create_shared_topics`]); readiness does not wait for it, because the operator's
//! other work (Deployments, the registry ConfigMap) does not need Kafka. DeviceType reconciles
//! check the shared topics too, at most once per resync interval, so that they are put back if
//! deleted.

pub mod application;
pub mod conditions;
pub mod config;
pub mod deployment;
pub mod device_type;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod registry_sync;
pub mod scaling;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conditions::Note;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::crd::{Application, DeviceType, all_enriched_topic, deadletter_topic};
use crate::kafka::lag::{KafkaLagReader, LagReader};
use crate::kafka::topics::{self, DesiredTopic, KafkaTopicAdmin, TopicAdmin, TopicOutcome};
pub use config::OperatorConfig;
use error::Error;
use iot_process::admin::Readiness;
pub use metrics::Metrics;
use scaling::DownscaleWindow;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "iot-operator";
pub const KIND_DEVICE_TYPE: &str = "DeviceType";
pub const KIND_APPLICATION: &str = "Application";
/// How long running reconciles may take to finish once shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub topics: Arc<dyn TopicAdmin>,
    pub lag: Arc<dyn LagReader>,
    pub metrics: Metrics,
    recorder: Recorder,
    device_types: Store<DeviceType>,
    applications: Store<Application>,
    backoff: Mutex<HashMap<String, u32>>,
    downscale: Mutex<HashMap<String, DownscaleWindow>>,
    /// The last check of the shared topics; one check at a time (concurrent reconciles wait for
    /// it instead of all asking the broker).
    shared_topics: tokio::sync::Mutex<SharedTopicsCheck>,
}

/// When the shared topics were last found in place, or last failed and why.
#[derive(Default)]
struct SharedTopicsCheck {
    ok_at: Option<Instant>,
    failed: Option<(Instant, rdkafka::error::KafkaError)>,
}

/// How long a failed check of the shared topics is answered from memory: during a Kafka outage,
/// the reconciles queued behind a check that timed out do not each wait for their own timeout.
const SHARED_TOPICS_FAILURE_MEMORY: Duration = Duration::from_secs(5);

impl Context {
    /// A context over the given caches (the controllers' stores in [`run`]), talking to the
    /// configured Kafka cluster.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        device_types: Store<DeviceType>,
        applications: Store<Application>,
    ) -> Result<Self, Error> {
        let topics = KafkaTopicAdmin::new(&config.kafka_bootstrap, config.kafka_timeout)?;
        // One lag client for the operator's life; it keeps only the commits of this prefix's
        // groups (`{prefix}.{id}.enrichment`).
        let lag = KafkaLagReader::new(
            &config.kafka_bootstrap,
            &format!("{}.", config.topic_prefix),
            config.kafka_timeout,
        )?;
        Ok(Self::with_kafka(
            client,
            config,
            metrics,
            (device_types, applications),
            Arc::new(topics),
            Arc::new(lag),
        ))
    }

    /// A context with the given topic admin and lag reader (scripted ones in scenario tests).
    pub fn with_kafka(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        (device_types, applications): (Store<DeviceType>, Store<Application>),
        topics: Arc<dyn TopicAdmin>,
        lag: Arc<dyn LagReader>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            topics,
            lag,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            device_types,
            applications,
            config,
            metrics,
            backoff: Mutex::default(),
            downscale: Mutex::default(),
            shared_topics: tokio::sync::Mutex::default(),
        }
    }

    /// Publishes a decided Event about `obj`; failures are logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, note: &Note) {
        let reason = note.reason;
        let event = Event {
            type_: note.type_,
            reason: reason.into(),
            note: Some(note.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(reason, error = %e, "publishing event failed");
        }
    }

    /// Makes sure `{prefix}.enriched` and `{prefix}.deadletter` exist; re-checked at most once per
    /// resync interval, so that most calls cost a lock and a clock reading.
    pub async fn ensure_shared_topics(&self) -> Result<(), Error> {
        let mut check = self.shared_topics.lock().await;
        if check
            .ok_at
            .is_some_and(|t| t.elapsed() < self.config.resync)
        {
            return Ok(());
        }
        if let Some((at, e)) = &check.failed
            && at.elapsed() < SHARED_TOPICS_FAILURE_MEMORY
        {
            return Err(Error::Kafka(e.clone()));
        }
        match self.create_shared_topics_now().await {
            Ok(()) => {
                *check = SharedTopicsCheck {
                    ok_at: Some(Instant::now()),
                    failed: None,
                };
                Ok(())
            }
            Err(e) => {
                check.failed = Some((Instant::now(), e.clone()));
                Err(Error::Kafka(e))
            }
        }
    }

    async fn create_shared_topics_now(&self) -> Result<(), rdkafka::error::KafkaError> {
        let prefix = &self.config.topic_prefix;
        for name in [all_enriched_topic(prefix), deadletter_topic(prefix)] {
            let topic = DesiredTopic {
                name: name.clone(),
                partitions: self.config.shared_topic_partitions,
                replication_factor: self.config.shared_topic_replication_factor,
                config: Default::default(),
            };
            match topics::ensure(&*self.topics, &topic).await? {
                TopicOutcome::Created => tracing::info!(topic = name, "created shared topic"),
                TopicOutcome::ShrinkRefused { existing, .. } => {
                    tracing::info!(
                        topic = name,
                        existing,
                        "shared topic has more partitions than configured"
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The scale-down window of the DeviceType with `uid` (see [`DownscaleWindow`]).
    pub fn downscale_window(&self, uid: &str) -> DownscaleWindow {
        self.downscale
            .lock()
            .expect("lock")
            .get(uid)
            .copied()
            .unwrap_or_default()
    }

    /// Keeps the scale-down window a reconcile decided for the DeviceType with `uid`.
    pub fn store_downscale_window(&self, uid: &str, window: DownscaleWindow) {
        self.downscale
            .lock()
            .expect("lock")
            .insert(uid.to_string(), window);
    }

    /// Active Applications (in the cache) that registered for device type `id`.
    pub fn active_applications_for(&self, id: &str) -> i32 {
        self.applications
            .state()
            .iter()
            .filter(|a| a.spec.active && a.meta().deletion_timestamp.is_none())
            .filter(|a| a.spec.device_types.iter().any(|t| t == id))
            .count() as i32
    }

    /// Whether a DeviceType other than `dt` claims the same device-type id.
    pub fn id_claimed_elsewhere(&self, dt: &DeviceType) -> bool {
        self.device_types.state().iter().any(|other| {
            other.spec.device_type == dt.spec.device_type
                && other.uid() != dt.uid()
                && other.meta().deletion_timestamp.is_none()
        })
    }

    /// Device types (ids) defined by DeviceTypes in the cache that are not being deleted.
    pub fn known_device_type_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .device_types
            .state()
            .iter()
            .filter(|d| d.meta().deletion_timestamp.is_none())
            .map(|d| d.spec.device_type.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn next_backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let key = format!(
            "{}/{}",
            K::kind(&()),
            obj.meta().uid.clone().unwrap_or_default()
        );
        let mut map = self.backoff.lock().expect("lock");
        let n = map.entry(key).or_insert(0);
        *n = (*n + 1).min(8);
        // 1 s, 2 s, 4 s ... capped at 5 minutes.
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    fn reset_backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let key = format!(
            "{}/{}",
            K::kind(&()),
            obj.meta().uid.clone().unwrap_or_default()
        );
        self.backoff.lock().expect("lock").remove(&key);
    }
}

fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let kind = K::kind(&()).to_string();
    ctx.metrics
        .reconciles
        .with_label_values(&[&kind, "error"])
        .inc();
    ctx.metrics
        .errors
        .with_label_values(&[&kind, error.category()])
        .inc();
    let delay = ctx.next_backoff(&*obj);
    tracing::warn!(
        kind,
        name = obj.meta().name.as_deref().unwrap_or_default(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    let reason = match error.category() {
        "kafka" => "KafkaError",
        "kube" => "KubernetesApiError",
        _ => "ReconcileError",
    };
    let note = Note::warning(reason, error.to_string());
    tokio::spawn(async move { ctx.publish(&*obj, &note).await });
    Action::requeue(delay)
}

/// How long [`create_shared_topics`] waits after its first failure; doubled after each further
/// one, up to [`SHARED_TOPICS_MAX_BACKOFF`].
const SHARED_TOPICS_FIRST_BACKOFF: Duration = Duration::from_secs(1);
const SHARED_TOPICS_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Creates the shared topics, retrying with capped exponential backoff until it succeeds or
/// `stop` resolves. Run once at start, so that the dead-letter and all-types topics exist before
/// the first DeviceType does (the bridge dead-letters messages of unknown types from the start).
pub async fn create_shared_topics(ctx: &Context, stop: WaitForCancellationFutureOwned) {
    tokio::pin!(stop);
    let mut backoff = SHARED_TOPICS_FIRST_BACKOFF;
    loop {
        match ctx.ensure_shared_topics().await {
            Ok(()) => {
                tracing::info!("shared topics in place");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "creating the shared topics failed");
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(SHARED_TOPICS_MAX_BACKOFF);
    }
}

/// Runs both controllers and the registry writer until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let ns = config.namespace.clone();
    let device_types: Api<DeviceType> = Api::namespaced(client.clone(), &ns);
    let applications: Api<Application> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Fail early, with a clear message, when the CRDs are not installed.
    for (what, result) in [
        (
            "devicetypes.iotcloud.dev",
            device_types.list(&Default::default()).await.map(|_| ()),
        ),
        (
            "applications.iotcloud.dev",
            applications.list(&Default::default()).await.map(|_| ()),
        ),
    ] {
        if let Err(e) = result {
            anyhow::bail!(
                "cannot list {what} in namespace {ns}: {e} (are the CRDs from crds/ installed?)"
            );
        }
    }

    let dt_controller = Controller::new(device_types.clone(), watcher::Config::default())
        .owns(deployments, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(200)));
    let app_controller = Controller::new(applications.clone(), watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(200)));

    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        metrics,
        dt_controller.store(),
        app_controller.store(),
    )?);

    // An Application change can change a DeviceType's status (its application count), and a
    // DeviceType change can resolve or break an Application: map each to the other.
    let dt_store = ctx.device_types.clone();
    let dt_controller = dt_controller.watches(
        applications.clone(),
        watcher::Config::default(),
        move |app| {
            let wanted = app.spec.device_types.clone();
            dt_store
                .state()
                .iter()
                .filter(|dt| wanted.contains(&dt.spec.device_type))
                .map(|dt| ObjectRef::from_obj(&**dt))
                .collect::<Vec<_>>()
        },
    );
    let app_store = ctx.applications.clone();
    let app_controller = app_controller.watches(
        device_types.clone(),
        watcher::Config::default(),
        move |dt| {
            app_store
                .state()
                .iter()
                .filter(|a| a.spec.device_types.contains(&dt.spec.device_type))
                .map(|a| ObjectRef::from_obj(&**a))
                .collect::<Vec<_>>()
        },
    );

    let stop = CancellationToken::new();
    let dt_loop = dt_controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(device_type::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let app_loop = app_controller
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(application::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let registry_loop = registry_sync::run(ctx.clone(), readiness, stop.clone().cancelled_owned());
    tokio::spawn({
        let (ctx, stop) = (ctx.clone(), stop.clone().cancelled_owned());
        async move { create_shared_topics(&ctx, stop).await }
    });

    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    // Running reconciles get a bounded grace period: a reconcile stuck on an unresponsive broker
    // or API server must not keep the process from stopping.
    let grace = async move {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let loops = async {
        let (_, _, registry) = tokio::join!(dt_loop, app_loop, registry_loop);
        registry
    };
    let result = tokio::select! {
        r = loops => r,
        () = grace => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "reconciles still running after the shutdown grace period; stopping anyway");
            Ok(())
        }
    };
    tracing::info!(
        device_types = ctx.device_types.state().len(),
        applications = ctx.applications.state().len(),
        "controllers stopped"
    );
    result
}
