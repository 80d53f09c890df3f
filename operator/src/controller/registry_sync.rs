//! Keeps the registry ConfigMap (`iot-registry`, key `registry.json`) equal to the enrichment
//! context built from every DeviceType and Application in the controllers' caches. Workers mount
//! it and reload it on change; they never call the Kubernetes API.
//!
//! It also watches the ConfigMap itself: an edited or deleted registry is put back as soon as the
//! watch reports it (within about a second), and failed writes are retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

use super::{Context, FIELD_MANAGER};
use crate::registry::{CONFIG_MAP_KEY, build_registry};
use iot_process::admin::Readiness;

/// How often the caches are compared with the last written registry. Building it is cheap (a few
/// microseconds per DeviceType); the write only happens when the bytes change.
const POLL: Duration = Duration::from_millis(250);

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

/// Writes the registry whenever it changes, until `stop` resolves. Sets `readiness` after the
/// first successful write (the caches are then synced and the workers have a registry).
pub async fn run(
    ctx: Arc<Context>,
    readiness: Readiness,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    tokio::pin!(stop);
    // Wait for both caches to hold the cluster's state before the first write, so a restart never
    // writes an empty registry over a full one.
    tokio::select! {
        () = &mut stop => return Ok(()),
        r = async { tokio::try_join!(ctx.device_types.wait_until_ready(), ctx.applications.wait_until_ready()) } => {
            r?;
        }
    }
    let mut written: Option<String> = None;
    let mut failures = 0u32;
    // What the ConfigMap holds, as the watch reports it: `None` until the watch has listed it,
    // `Some(None)` when it does not exist.
    let mut live = LiveRegistry::default();
    let selector = format!("metadata.name={}", ctx.config.registry_config_map);
    let mut changes = watcher(api.clone(), watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    // The (uid, resourceVersion) of every cached object when the registry was last settled: an
    // unchanged cache needs no rebuild.
    let mut settled: Option<Vec<(String, String)>> = None;
    loop {
        let versions = cache_versions(&ctx);
        if settled.as_ref() == Some(&versions) && !live.differs_from(written.as_deref()) {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(POLL) => {}
                Some(event) = changes.next() => live.observe(event),
            }
            continue;
        }
        let dts: Vec<_> = ctx
            .device_types
            .state()
            .iter()
            .map(|d| (**d).clone())
            .collect();
        let apps: Vec<_> = ctx
            .applications
            .state()
            .iter()
            .map(|a| (**a).clone())
            .collect();
        let registry = build_registry(&dts, &apps, &ctx.config.topic_prefix);
        let json = serde_json::to_string_pretty(&registry)?;
        if written.as_ref() != Some(&json) || live.differs_from(Some(&json)) {
            if written.as_ref() == Some(&json) {
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
            match api
                .patch(
                    &ctx.config.registry_config_map,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&cm),
                )
                .await
            {
                Ok(_) => {
                    ctx.metrics
                        .registry_updates
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::info!(
                        device_types = registry.device_types.len(),
                        skipped = registry.skipped.len(),
                        "registry ConfigMap updated"
                    );
                    live.wrote(&json);
                    written = Some(json);
                    failures = 0;
                    readiness.set(true);
                }
                Err(e) => {
                    ctx.metrics
                        .registry_updates
                        .with_label_values(&["error"])
                        .inc();
                    failures += 1;
                    tracing::warn!(error = %e, failures, "writing the registry ConfigMap failed");
                }
            }
        }
        if failures == 0 {
            settled = Some(versions);
        }
        let wait = if failures == 0 {
            POLL
        } else {
            Duration::from_secs(1 << failures.min(5))
        };
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(wait) => {}
            Some(event) = changes.next(), if failures == 0 => live.observe(event),
        }
    }
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

/// Identity and version of every cached DeviceType and Application, in a stable order.
fn cache_versions(ctx: &Context) -> Vec<(String, String)> {
    let ids = |meta: &ObjectMeta| {
        (
            meta.uid.clone().unwrap_or_default(),
            meta.resource_version.clone().unwrap_or_default(),
        )
    };
    let mut versions: Vec<_> = ctx
        .device_types
        .state()
        .iter()
        .map(|d| ids(&d.metadata))
        .chain(ctx.applications.state().iter().map(|a| ids(&a.metadata)))
        .collect();
    versions.sort();
    versions
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
}
