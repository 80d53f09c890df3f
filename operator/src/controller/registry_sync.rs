//! Keeps the registry ConfigMap (`iot-registry`, key `registry.json`) equal to the enrichment
//! context built from every DeviceType and Application in the controllers' caches. Workers mount
//! it and reload it on change; they never call the Kubernetes API.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};

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
    // The (uid, resourceVersion) of every cached object when the registry was last settled: an
    // unchanged cache needs no rebuild.
    let mut settled: Option<Vec<(String, String)>> = None;
    loop {
        let versions = cache_versions(&ctx);
        if settled.as_ref() == Some(&versions) {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(POLL) => {}
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
        if written.as_ref() != Some(&json) {
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
        }
    }
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
