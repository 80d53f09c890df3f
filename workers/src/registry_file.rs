//! The registry file (the operator's ConfigMap mounted into the pod), loaded at start and
//! re-read when its contents change, so a new Application shows in the next enriched message
//! without a restart. Kubernetes swaps a mounted ConfigMap atomically (a symlink), so comparing
//! contents on a short poll ([`follow`]) is reliable and needs no inotify.

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
    let (last, catalog) = load(&path, &prefix)?;
    tracing::info!(
        path = %path.display(),
        device_types = ?catalog.device_type_ids(),
        "registry loaded"
    );
    let (tx, rx) = watch::channel(Arc::new(catalog));
    tokio::spawn(async move {
        follow(&path, poll, Some(last), stop, |read| {
            // Between two versions of a mounted ConfigMap the file may be missing for a moment:
            // keep the current registry.
            let Ok(bytes) = read else { return };
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
        })
        .await;
    });
    Ok(rx)
}

/// Reads `path` every `poll` until `stop` and calls `changed` with what it read whenever that
/// differs from the previous read (`last`: what the caller already has; a read error counts as
/// "nothing"). The one poller of the registry file, for the data-path workers and the dashboard.
pub async fn follow(
    path: &Path,
    poll: Duration,
    mut last: Option<Vec<u8>>,
    stop: CancellationToken,
    mut changed: impl FnMut(std::io::Result<Vec<u8>>),
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read = std::fs::read(path);
        let current = read.as_ref().ok();
        if current == last.as_ref() {
            continue;
        }
        last = current.cloned();
        changed(read);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn follow_reports_each_change_once_and_stops() {
        let dir = std::env::temp_dir().join(format!("iot-follow-{}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.json");
        std::fs::write(&path, b"one").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (path, seen, stop) = (path.clone(), seen.clone(), stop.clone());
            async move {
                follow(
                    &path,
                    Duration::from_millis(10),
                    Some(b"one".to_vec()),
                    stop,
                    |r| {
                        seen.lock().unwrap().push(r.ok());
                    },
                )
                .await;
            }
        });
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        settle().await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "what the caller has is no change"
        );
        std::fs::write(&path, b"two").unwrap();
        settle().await;
        std::fs::remove_file(&path).unwrap();
        settle().await;
        std::fs::write(&path, b"two").unwrap();
        settle().await;
        assert_eq!(
            *seen.lock().unwrap(),
            [Some(b"two".to_vec()), None, Some(b"two".to_vec())]
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops when cancelled")
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
