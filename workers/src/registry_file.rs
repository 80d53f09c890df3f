//! The registry file (the operator's ConfigMap mounted into the pod), loaded at start and
//! re-read when its contents change, so a new Application shows in the next enriched message
//! without a restart. Kubernetes swaps a mounted ConfigMap atomically (a symlink), so comparing
//! contents on a short poll is reliable and needs no inotify.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::PipelineMetrics;

/// Reads and compiles the registry file.
pub fn load(path: &Path, prefix: &str) -> anyhow::Result<(Vec<u8>, Catalog)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the registry file {}", path.display()))?;
    let catalog = Catalog::from_json(&bytes, prefix)
        .with_context(|| format!("registry file {}", path.display()))?;
    if let Some(theirs) = &catalog.registry_prefix_mismatch {
        tracing::warn!(
            registry_prefix = %theirs,
            worker_prefix = %prefix,
            "the registry was written for another topic prefix; using the worker's"
        );
    }
    Ok((bytes, catalog))
}

/// Loads the registry now (an error if it cannot be read), then watches it until `stop`.
/// Readers take `borrow().clone()` of the receiver: a cheap `Arc` of the current catalog.
pub fn watch(
    path: PathBuf,
    prefix: String,
    poll: Duration,
    metrics: PipelineMetrics,
    stop: CancellationToken,
) -> anyhow::Result<watch::Receiver<Arc<Catalog>>> {
    let (mut last, catalog) = load(&path, &prefix)?;
    tracing::info!(
        path = %path.display(),
        device_types = ?catalog.device_type_ids(),
        "registry loaded"
    );
    let (tx, rx) = watch::channel(Arc::new(catalog));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Ok(bytes) = std::fs::read(&path) else {
                // Between two versions of a mounted ConfigMap; keep the current registry.
                continue;
            };
            if bytes == last {
                continue;
            }
            match Catalog::from_json(&bytes, &prefix) {
                Ok(catalog) => {
                    tracing::info!(
                        path = %path.display(),
                        device_types = ?catalog.device_type_ids(),
                        "registry reloaded"
                    );
                    metrics.registry_reloads.with_label_values(&["ok"]).inc();
                    tx.send_replace(Arc::new(catalog));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "registry file unusable; keeping the previous registry");
                    metrics.registry_reloads.with_label_values(&["error"]).inc();
                }
            }
            last = bytes;
        }
    });
    Ok(rx)
}
