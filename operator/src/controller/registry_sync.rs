//! Keeps the registry ConfigMap (`iot-registry`, key `registry.json`) equal to the enrichment
//! context built from every DeviceType and Application. Workers mount it and reload it on change;
//! they never call the Kubernetes API.
//!
//! A small controller of its own: it watches DeviceTypes, Applications and the ConfigMap itself,
//! and after any change (a burst of changes counts once) rebuilds the registry and writes it when
//! the ConfigMap holds something else. An edited or deleted registry is therefore put back as soon
//! as its watch reports it (well within a second on a healthy API server); failed writes are
//! retried with exponential backoff; nothing is polled.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::{Context, FIELD_MANAGER};
use crate::crd::{Application, DeviceType};
use crate::registry::{CONFIG_MAP_KEY, build_registry};
use iot_process::admin::Readiness;

/// Delay before retrying a failed write: 1 s, 2 s, 4 s ... capped at 32 s.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(5))
}

/// The ConfigMap holding `registry_json`.
pub fn desired_config_map(name: &str, namespace: &str, registry_json: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "iot-cloud".to_string(),
                    ),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "iot-operator".to_string(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([(CONFIG_MAP_KEY.to_string(), registry_json)].into()),
        ..ConfigMap::default()
    }
}

/// A cache of every `K` in `api`, and the stream that fills it: one item per watch event, `true`
/// when the event completes a listing.
fn cache<K>(api: Api<K>) -> (Store<K>, impl futures::Stream<Item = bool>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .map(|e| listed(&e));
    (store, events)
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
}

/// Writes the registry whenever it changes, until `stop` resolves. Sets `readiness` after the
/// first successful write (the workers then have a registry).
pub async fn run(
    ctx: Arc<Context>,
    readiness: Readiness,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let ns = &ctx.config.namespace;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let (device_types, dt_events) = cache::<DeviceType>(Api::namespaced(ctx.client.clone(), ns));
    let (applications, app_events) = cache::<Application>(Api::namespaced(ctx.client.clone(), ns));
    let dt_events = dt_events.map(Trigger::DeviceTypes);
    let app_events = app_events.map(Trigger::Applications);
    let selector = format!("metadata.name={}", ctx.config.registry_config_map);
    let cm_events = watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .map(|e| Trigger::Registry(Box::new(e)));
    let mut triggers =
        futures::stream::select_all([dt_events.boxed(), app_events.boxed(), cm_events.boxed()]);

    tokio::pin!(stop);
    // Nothing is written before both kinds are listed, so a restart never writes an empty
    // registry over a full one.
    let (mut dts_listed, mut apps_listed) = (false, false);
    // What the ConfigMap holds, as its watch reports it.
    let mut live = LiveRegistry::default();
    let mut written: Option<String> = None;
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    loop {
        let mut handle = |t: Trigger| match t {
            Trigger::DeviceTypes(done) => dts_listed |= done,
            Trigger::Applications(done) => apps_listed |= done,
            Trigger::Registry(event) => live.observe(*event),
        };
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return Ok(()),
            t = triggers.next() => match t {
                Some(t) => handle(t),
                None => anyhow::bail!("the registry writer's watches ended"),
            },
            () = retry => retry_at = None,
        }
        // A burst of changes (a `kubectl apply -f deploy/samples/`) is one rebuild.
        while let Some(Some(t)) = triggers.next().now_or_never() {
            handle(t);
        }
        if !(dts_listed && apps_listed) || retry_at.is_some() {
            continue;
        }
        match sync(
            &ctx,
            &api,
            &device_types,
            &applications,
            &mut live,
            &written,
        )
        .await
        {
            Ok(Some(json)) => {
                written = Some(json);
                failures = 0;
                readiness.set(true);
            }
            Ok(None) => {}
            Err(e) => {
                failures += 1;
                let delay = retry_delay(failures);
                tracing::warn!(error = %e, failures, retry_in_s = delay.as_secs(), "writing the registry ConfigMap failed");
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// Builds the registry from the caches and writes it when it changed or the ConfigMap holds
/// something else; returns what it wrote.
async fn sync(
    ctx: &Context,
    api: &Api<ConfigMap>,
    device_types: &Store<DeviceType>,
    applications: &Store<Application>,
    live: &mut LiveRegistry,
    written: &Option<String>,
) -> anyhow::Result<Option<String>> {
    let dts: Vec<_> = device_types.state().iter().map(|d| (**d).clone()).collect();
    let apps: Vec<_> = applications.state().iter().map(|a| (**a).clone()).collect();
    let registry = build_registry(&dts, &apps, &ctx.config.topic_prefix);
    let json = serde_json::to_string_pretty(&registry)?;
    let unchanged = written.as_ref() == Some(&json);
    if unchanged && !live.differs_from(Some(&json)) {
        return Ok(None);
    }
    if unchanged {
        tracing::warn!(
            config_map = %ctx.config.registry_config_map,
            "the registry ConfigMap was edited or deleted; putting it back"
        );
    }
    let cm = desired_config_map(
        &ctx.config.registry_config_map,
        &ctx.config.namespace,
        json.clone(),
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
    tracing::info!(
        device_types = registry.device_types.len(),
        skipped = registry.skipped.len(),
        "registry ConfigMap updated"
    );
    live.wrote(&json);
    Ok(Some(json))
}

/// The registry JSON the ConfigMap holds, as its watch reports it.
#[derive(Debug, Default)]
struct LiveRegistry {
    /// `None` until the first listing is complete; then `Some(None)` when the ConfigMap does not
    /// exist or lacks the key.
    current: Option<Option<String>>,
    /// What a listing in progress has found.
    listing: Option<String>,
}

impl LiveRegistry {
    fn observe(&mut self, event: Result<watcher::Event<ConfigMap>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Init) => self.listing = None,
            Ok(watcher::Event::InitApply(cm)) => self.listing = registry_json(&cm),
            Ok(watcher::Event::InitDone) => self.current = Some(self.listing.take()),
            Ok(watcher::Event::Apply(cm)) => self.current = Some(registry_json(&cm)),
            Ok(watcher::Event::Delete(_)) => self.current = Some(None),
            // The stream retries with backoff; until it lists again, the last state stands.
            Err(e) => tracing::warn!(error = %e, "watching the registry ConfigMap failed"),
        }
    }

    /// Records a write (the watch confirms it shortly).
    fn wrote(&mut self, json: &str) {
        self.current = Some(Some(json.to_string()));
    }

    /// The ConfigMap is known to hold something other than `expected`.
    fn differs_from(&self, expected: Option<&str>) -> bool {
        match (&self.current, expected) {
            (Some(current), Some(expected)) => current.as_deref() != Some(expected),
            _ => false,
        }
    }
}

fn registry_json(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get(CONFIG_MAP_KEY).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(json: &str) -> ConfigMap {
        desired_config_map("iot-registry", "ns", json.to_string())
    }

    #[test]
    fn the_watched_registry_tells_an_edit_or_deletion_from_our_own_write() {
        let mut live = LiveRegistry::default();
        // Nothing known before the first listing: no write is forced.
        assert!(!live.differs_from(Some("a")));
        live.observe(Ok(watcher::Event::Init));
        live.observe(Ok(watcher::Event::InitDone));
        assert!(live.differs_from(Some("a")), "absent after listing");
        live.wrote("a");
        assert!(!live.differs_from(Some("a")));
        live.observe(Ok(watcher::Event::Apply(cm("a"))));
        assert!(!live.differs_from(Some("a")), "our own write coming back");
        live.observe(Ok(watcher::Event::Apply(cm("{}"))));
        assert!(live.differs_from(Some("a")), "edited");
        live.observe(Ok(watcher::Event::Delete(cm("{}"))));
        assert!(live.differs_from(Some("a")), "deleted");
        live.observe(Ok(watcher::Event::Init));
        live.observe(Ok(watcher::Event::InitApply(cm("a"))));
        assert!(
            live.differs_from(Some("a")),
            "a relisting counts only when done"
        );
        live.observe(Ok(watcher::Event::InitDone));
        assert!(!live.differs_from(Some("a")));
        let mut no_key = cm("a");
        no_key.data = None;
        live.observe(Ok(watcher::Event::Apply(no_key)));
        assert!(live.differs_from(Some("a")), "the key removed");
        assert!(
            !live.differs_from(None),
            "nothing written yet: nothing to restore"
        );
    }

    #[test]
    fn failed_writes_back_off_exponentially_to_half_a_minute() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 32, 32]);
    }
}
