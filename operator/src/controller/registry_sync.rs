//! Keeps the registry ConfigMap (`iot-registry`, `binaryData` key `registry.json.gz`) equal to
//! the enrichment context built from every DeviceType and Application. Workers mount it and
//! reload it on change; they never call the Kubernetes API.
//!
//! A small controller of its own: it watches DeviceTypes, Applications and the ConfigMap itself
//! (each watch in a task of its own, so that the caches keep up while the writer works), and after
//! any change (a burst of changes counts once) rebuilds the registry, when an object's spec, name
//! or deletion changed (status updates do not rebuild it), and writes it when the ConfigMap holds
//! something else. An edited or deleted registry is therefore put back as soon as
//! its watch reports it (well within a second on a healthy API server); failed writes are retried
//! with exponential backoff; nothing is polled.
//!
//! A registry too large for a ConfigMap ([`crate::registry::check_size`]) is not written: the
//! ConfigMap keeps the last registry that fitted, and the writer says so in four places, once per
//! refused registry: the ConfigMap's annotations ([`ANNOTATION_WRITTEN`], the registry's
//! condition, as a ConfigMap has no status), a Warning Event `RegistryTooLarge` on the ConfigMap
//! and on the DeviceTypes and Applications the workers therefore do not see (at most
//! [`MAX_OBJECT_EVENTS`] of them), the metrics `iot_operator_registry_up_to_date` (0) and
//! `iot_operator_registry_write_failures_total{reason="too_large"}`, and a warning in the log.
//! The operator is ready after its first attempt, whatever its outcome: readiness is about the
//! operator working; the annotations and Events tell the user about the registry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conditions::Note;
use super::{Context, FIELD_MANAGER};
use crate::crd::{Application, DeviceType};
use crate::registry::{self, Encoded, Registry, build_registry};
use iot_process::admin::Readiness;

#[path = "registry_config_map.rs"]
mod config_map;
use config_map::LiveRegistry;
pub use config_map::{
    ANNOTATION_MESSAGE, ANNOTATION_REASON, ANNOTATION_WRITTEN, REASON_TOO_LARGE, REASON_WRITTEN,
    WriteStatus, desired_config_map, registry_bytes, registry_in,
};

/// Most Events about objects left out of a refused registry, per refused registry (the Event on
/// the ConfigMap counts them all).
pub const MAX_OBJECT_EVENTS: usize = 20;

/// Longest run of watch events taken as one burst before the registry is synced.
const MAX_BURST: Duration = Duration::from_millis(200);

/// Delay before retrying a failed write: 1 s, 2 s, 4 s ... capped at 32 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(5))
}

/// A cache of every `K` in `api`, filled by a task of its own in `tasks` (so that it keeps up with
/// the watch while the writer builds and writes), which sends one trigger per watch event.
fn cache<K>(
    api: Api<K>,
    tasks: &mut JoinSet<()>,
    triggers: &mpsc::UnboundedSender<Trigger>,
    trigger: fn(bool) -> Trigger,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .map(move |e| trigger(listed(&e)));
    tasks.spawn(forward(events, triggers.clone()));
    store
}

/// Sends every item of `events` to the writer, then [`Trigger::Ended`].
async fn forward(
    events: impl futures::Stream<Item = Trigger> + Send + 'static,
    triggers: mpsc::UnboundedSender<Trigger>,
) {
    futures::pin_mut!(events);
    while let Some(t) = events.next().await {
        if triggers.send(t).is_err() {
            return;
        }
    }
    let _ = triggers.send(Trigger::Ended);
}

/// Whether a watch event ends a listing (logging a failed watch, which retries with backoff).
fn listed<K>(event: &Result<watcher::Event<K>, watcher::Error>) -> bool {
    if let Err(e) = event {
        tracing::warn!(error = %e, "registry writer: watch failed; retrying");
    }
    matches!(event, Ok(watcher::Event::InitDone))
}

/// What woke the writer up.
enum Trigger {
    /// A DeviceType watch event; `true` once its first listing is complete.
    DeviceTypes(bool),
    /// An Application watch event; `true` once its first listing is complete.
    Applications(bool),
    /// A watch event of the registry ConfigMap.
    Registry(Box<Result<watcher::Event<ConfigMap>, watcher::Error>>),
    /// A watch stream ended (they retry with backoff for ever, so this is a bug).
    Ended,
}

/// Writes the registry whenever it changes, until `stop` resolves. Sets `readiness` after the
/// first attempt, written or not (the ConfigMap's annotations and Events report a registry that
/// could not be written).
pub async fn run(
    ctx: Arc<Context>,
    readiness: Readiness,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ns = &ctx.config.namespace;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    // The watches run in tasks of their own, aborted when this function returns.
    let mut tasks = JoinSet::new();
    let (tx, mut triggers) = mpsc::unbounded_channel();
    let client = &ctx.client;
    let device_types = cache::<DeviceType>(
        Api::namespaced(client.clone(), ns),
        &mut tasks,
        &tx,
        Trigger::DeviceTypes,
    );
    let applications = cache::<Application>(
        Api::namespaced(client.clone(), ns),
        &mut tasks,
        &tx,
        Trigger::Applications,
    );
    let selector = format!("metadata.name={}", ctx.config.registry_config_map);
    let cm_events = watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .map(|e| Trigger::Registry(Box::new(e)));
    tasks.spawn(forward(cm_events, tx));

    tokio::pin!(stop);
    // Nothing is written before both kinds are listed, so a restart never writes an empty
    // registry over a full one.
    let (mut dts_listed, mut apps_listed) = (false, false);
    // What the ConfigMap holds, as its watch reports it.
    let mut live = LiveRegistry::default();
    let mut writer = Writer::default();
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    let mut ended = false;
    loop {
        let mut handle = |t: Trigger| match t {
            Trigger::DeviceTypes(done) => dts_listed |= done,
            Trigger::Applications(done) => apps_listed |= done,
            Trigger::Registry(event) => live.observe(*event),
            Trigger::Ended => ended = true,
        };
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return Ok(()),
            t = triggers.recv() => match t {
                Some(t) => handle(t),
                None => handle(Trigger::Ended),
            },
            () = retry => retry_at = None,
        }
        // A burst of changes (a `kubectl apply -f deploy/samples/`) is one rebuild; a stream
        // that never pauses (the status updates of hundreds of objects being reconciled) still
        // gets one every `MAX_BURST`, not only when it ends.
        let burst_ends = Instant::now() + MAX_BURST;
        while Instant::now() < burst_ends {
            match triggers.try_recv() {
                Ok(t) => handle(t),
                Err(_) => break,
            }
        }
        if ended {
            anyhow::bail!("the registry writer's watches ended");
        }
        if !(dts_listed && apps_listed) || retry_at.is_some() {
            continue;
        }
        let objects = Objects {
            device_types: &device_types,
            applications: &applications,
        };
        let result = writer.sync(&ctx, &api, objects, &mut live).await;
        readiness.set(true);
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                ctx.metrics
                    .registry_write_failures
                    .with_label_values(&["api"])
                    .inc();
                let delay = retry_delay(failures);
                tracing::warn!(error = %e, failures, retry_in_s = delay.as_secs(), "writing the registry ConfigMap failed");
                if failures == 1 {
                    let note = Note::warning(
                        "RegistryWriteFailed",
                        format!("writing the registry failed (retrying with backoff): {e}"),
                    );
                    ctx.publish(&writer.config_map_ref(&ctx), &note).await;
                }
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// The writer's caches of both kinds.
#[derive(Clone, Copy)]
struct Objects<'a> {
    device_types: &'a Store<DeviceType>,
    applications: &'a Store<Application>,
}

/// What the registry depends on, per object: kind, name, uid, generation (the spec's version)
/// and whether it is being deleted. A changed status or label does not change the registry.
type ObjectKey = (&'static str, String, Option<String>, Option<i64>, bool);
type Fingerprint = Vec<ObjectKey>;

fn fingerprint(dts: &[Arc<DeviceType>], apps: &[Arc<Application>]) -> Fingerprint {
    fn key<K: Resource>(kind: &'static str, o: &K) -> ObjectKey {
        let m = o.meta();
        (
            kind,
            m.name.clone().unwrap_or_default(),
            m.uid.clone(),
            m.generation,
            m.deletion_timestamp.is_some(),
        )
    }
    let mut keys: Fingerprint = dts.iter().map(|d| key("DeviceType", &**d)).collect();
    keys.extend(apps.iter().map(|a| key("Application", &**a)));
    keys.sort();
    keys
}

/// The registry of the objects as last seen.
struct Built {
    fingerprint: Fingerprint,
    registry: Registry,
    encoded: Encoded,
    /// Whether its refusal (too large) has been reported.
    reported: bool,
}

/// What the writer wants the ConfigMap to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    registry: Option<Vec<u8>>,
    status: WriteStatus,
}

/// The writer's memory between syncs.
#[derive(Default)]
struct Writer {
    built: Option<Built>,
    /// What the last successful write sent.
    applied: Option<Desired>,
    /// Objects told by an Event that the registry the workers read lacks them, since the last
    /// registry written.
    told: BTreeSet<(&'static str, String)>,
}

impl Writer {
    fn config_map_ref(&self, ctx: &Context) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(ctx.config.registry_config_map.clone()),
                namespace: Some(ctx.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// Rebuilds the registry when the objects changed and writes the ConfigMap when it should
    /// hold something else; reports a registry too large to write.
    async fn sync(
        &mut self,
        ctx: &Context,
        api: &Api<ConfigMap>,
        objects: Objects<'_>,
        live: &mut LiveRegistry,
    ) -> Result<(), kube::Error> {
        let dts = objects.device_types.state();
        let apps = objects.applications.state();
        let fingerprint = fingerprint(&dts, &apps);
        if self
            .built
            .as_ref()
            .is_none_or(|b| b.fingerprint != fingerprint)
        {
            // A thousand objects take a noticeable time to convert and compress: off the
            // runtime's worker threads, which the controllers share.
            let prefix = ctx.config.topic_prefix.clone();
            let (registry, encoded) = tokio::task::spawn_blocking(move || {
                let dts: Vec<DeviceType> = dts.iter().map(|d| (**d).clone()).collect();
                let apps: Vec<Application> = apps.iter().map(|a| (**a).clone()).collect();
                let registry = build_registry(&dts, &apps, &prefix);
                let encoded = registry::encode(&registry);
                (registry, encoded)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let bytes = &ctx.metrics.registry_bytes;
            bytes
                .with_label_values(&["gzip"])
                .set(encoded.gzip.len() as i64);
            bytes
                .with_label_values(&["json"])
                .set(encoded.json_bytes as i64);
            self.built = Some(Built {
                fingerprint,
                registry,
                encoded,
                reported: false,
            });
        }
        let fits = registry::check_size(&self.built.as_ref().expect("built above").encoded);
        let desired = match fits {
            Ok(()) => {
                let built = self.built.as_ref().expect("built above");
                Desired {
                    registry: Some(built.encoded.gzip.clone()),
                    status: WriteStatus::written(&built.registry, &built.encoded),
                }
            }
            Err(too_large) => {
                // The last registry that fitted: ours, or what the ConfigMap holds (written before
                // a restart); unknown until the ConfigMap's watch has listed it.
                let kept = match &self.applied {
                    Some(applied) => Some(applied.registry.clone()),
                    None => live.current.clone(),
                };
                self.report_too_large(ctx, objects, &too_large, kept.as_ref())
                    .await;
                let Some(kept) = kept else {
                    return Ok(());
                };
                let what = match &kept {
                    Some(_) => "the last registry that fitted",
                    None => "no registry",
                };
                Desired {
                    registry: kept,
                    status: WriteStatus::too_large(&too_large, what),
                }
            }
        };
        let up_to_date = &ctx.metrics.registry_up_to_date;
        if self.applied.as_ref() == Some(&desired)
            && !live.differs_from(desired.registry.as_deref())
        {
            up_to_date.set(i64::from(desired.status.written));
            return Ok(());
        }
        if self.applied.as_ref() == Some(&desired) {
            tracing::warn!(
                config_map = %ctx.config.registry_config_map,
                "the registry ConfigMap was edited or deleted; putting it back"
            );
        }
        let cm = desired_config_map(
            &ctx.config.registry_config_map,
            &ctx.config.namespace,
            desired.registry.as_deref(),
            &desired.status,
            ctx.config.owner.as_ref(),
        );
        let result = api
            .patch(
                &ctx.config.registry_config_map,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        ctx.metrics
            .registry_updates
            .with_label_values(&[outcome])
            .inc();
        result?;
        up_to_date.set(i64::from(desired.status.written));
        let built = self.built.as_ref().expect("built above");
        if desired.status.written {
            let was_refused = self.applied.as_ref().is_some_and(|a| !a.status.written);
            tracing::info!(
                device_types = built.registry.device_types.len(),
                skipped = built.registry.skipped.len(),
                gzip_bytes = built.encoded.gzip.len(),
                json_bytes = built.encoded.json_bytes,
                "registry ConfigMap updated{}",
                if was_refused { " (it fits again)" } else { "" }
            );
            self.told.clear();
        }
        live.wrote(desired.registry.as_deref());
        self.applied = Some(desired);
        Ok(())
    }

    /// Reports a registry too large to write, once per registry: log, metric, and Warning Events
    /// on the ConfigMap and on the objects the kept registry lacks.
    async fn report_too_large(
        &mut self,
        ctx: &Context,
        objects: Objects<'_>,
        error: &registry::TooLarge,
        kept: Option<&Option<Vec<u8>>>,
    ) {
        let built = self.built.as_mut().expect("built before reporting");
        if built.reported {
            return;
        }
        built.reported = true;
        ctx.metrics
            .registry_write_failures
            .with_label_values(&["too_large"])
            .inc();
        ctx.metrics.registry_up_to_date.set(0);
        let holds = match kept {
            Some(Some(_)) => "keeps the last registry that fitted",
            Some(None) => "holds no registry",
            None => "keeps the registry it holds",
        };
        let kept = kept
            .and_then(|k| k.as_deref())
            .and_then(|bytes| registry::decode(bytes).ok());
        let missing = missing_from(kept.as_ref(), &built.registry);
        tracing::warn!(
            error = %error,
            device_types = built.registry.device_types.len(),
            objects_left_out = missing.len(),
            "the registry is too large for its ConfigMap; keeping the last one that fitted"
        );
        let message = format!(
            "{error}. The ConfigMap {holds}; {} DeviceTypes and Applications (or their latest \
             changes) are not in it. Delete or shorten DeviceTypes or Applications \
             (descriptions, measurements)",
            missing.len()
        );
        let note = Note::warning(REASON_TOO_LARGE, message);
        ctx.publish(&self.config_map_ref(ctx), &note).await;
        let untold: Vec<_> = missing
            .into_iter()
            .filter(|m| !self.told.contains(m))
            .take(MAX_OBJECT_EVENTS)
            .collect();
        for (kind, name) in untold {
            let note = Note::warning(
                REASON_TOO_LARGE,
                format!(
                    "the registry the workers read does not have this {kind}'s current \
                     version: {error}. Delete or shorten DeviceTypes or Applications"
                ),
            );
            let ns = &ctx.config.namespace;
            if kind == "DeviceType" {
                let key = ObjectRef::new(&name).within(ns);
                if let Some(dt) = objects.device_types.get(&key) {
                    ctx.publish(&*dt, &note).await;
                }
            } else {
                let key = ObjectRef::new(&name).within(ns);
                if let Some(app) = objects.applications.get(&key) {
                    ctx.publish(&*app, &note).await;
                }
            }
            self.told.insert((kind, name));
        }
    }
}

/// The DeviceTypes and Applications (kind, name) whose current registry entries `kept` lacks:
/// device types that are new or whose entry changed (other than in its applications), and
/// applications missing from a device type's list or listed differently.
fn missing_from(kept: Option<&Registry>, current: &Registry) -> BTreeSet<(&'static str, String)> {
    let name = |source: &str| source.rsplit('/').next().unwrap_or(source).to_string();
    let mut missing = BTreeSet::new();
    for (id, entry) in &current.device_types {
        let old = kept.and_then(|k| k.device_types.get(id));
        let same = old.is_some_and(|old| {
            let mut old = old.clone();
            old.applications.clone_from(&entry.applications);
            &old == entry
        });
        if !same {
            missing.insert(("DeviceType", name(&entry.source)));
        }
        for app in &entry.applications {
            if !old.is_some_and(|o| o.applications.contains(app)) {
                missing.insert(("Application", name(&app.id)));
            }
        }
    }
    missing
}

#[cfg(test)]
#[path = "registry_sync_tests.rs"]
mod tests;
