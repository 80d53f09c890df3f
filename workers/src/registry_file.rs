//! The registry file (the operator's ConfigMap mounted into the pod), loaded at start and
//! re-read when its contents change, so a new Application shows in the next enriched message
//! without a restart. Kubernetes swaps a mounted ConfigMap atomically (a symlink), so comparing
//! contents on a short poll ([`follow`]) is reliable and needs no inotify.
//!
//! The operator writes compact JSON, gzip-compressed (ConfigMap key `registry.json.gz`, which the
//! pods' volumes project to `registry.json`); a plain JSON file (`iot-operator registry -f ...`,
//! the test fixtures) works as well. [`read`] tells them apart by gzip's magic bytes, not by the
//! file name, so the path does not matter.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::PipelineMetrics;

/// Most bytes of JSON a compressed registry may expand to: a worker holds the whole registry in
/// memory, and the cap keeps a corrupt or hostile file (a gzip bomb) from exhausting it. The
/// operator writes no more (`iot_operator::registry::MAX_JSON_BYTES`, a test keeps them equal).
pub const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;

/// What every gzip stream starts with (RFC 1952); JSON never does.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The registry JSON in the contents of a registry file: decompressed when they are gzip, as they
/// are otherwise.
pub fn decode(bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    decode_at_most(bytes, MAX_JSON_BYTES)
}

fn decode_at_most(bytes: Vec<u8>, most: usize) -> std::io::Result<Vec<u8>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    let mut json = Vec::with_capacity(bytes.len() * 8);
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(most as u64 + 1)
        .read_to_end(&mut json)?;
    if json.len() > most {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the compressed registry expands to more than {most} bytes"),
        ));
    }
    Ok(json)
}

/// Reads the registry file at `path` as JSON (see [`decode`]).
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    decode(std::fs::read(path)?)
}

/// Reads and compiles the registry file; returns its contents as read (compressed or not: what
/// [`follow`] compares) and the catalog.
pub fn load(path: &Path, prefix: &str) -> anyhow::Result<(Vec<u8>, Catalog)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the registry file {}", path.display()))?;
    let json = decode(bytes.clone())
        .with_context(|| format!("decompressing the registry file {}", path.display()))?;
    let catalog = Catalog::from_json(&json, prefix)
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

/// Reads `path` every `poll` until `stop` and calls `changed` with the JSON it holds ([`decode`])
/// whenever the file differs from the previous read (`last`: the file's contents the caller
/// already has, as read; a read error counts as "nothing"). The one poller of the registry file,
/// for the data-path workers and the dashboard.
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
        changed(read.and_then(decode));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn plain_and_compressed_registries_are_read_alike() {
        let registry = crate::fixtures::sample_registry("iot");
        let plain = serde_json::to_vec_pretty(&registry).unwrap();
        let compressed = iot_operator::registry::encode(&registry).gzip;
        assert_eq!(decode(plain.clone()).unwrap(), plain);
        let json = decode(compressed.clone()).unwrap();
        assert_eq!(
            iot_model::registry::Registry::from_json(&json).unwrap(),
            registry
        );

        let dir = std::env::temp_dir().join(format!("iot-registry-{}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        // The name does not matter: the pods read the compressed registry as `registry.json`.
        for (name, bytes) in [("registry.json", &compressed), ("plain.json", &plain)] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            let (read, catalog) = load(&path, "iot").unwrap();
            assert_eq!(&read, bytes, "load returns the file as read, for follow");
            assert_eq!(catalog.device_type_ids().len(), 3, "{name}");
        }
        std::fs::write(dir.join("broken"), [0x1f, 0x8b, 0, 1, 2]).unwrap();
        let error = load(&dir.join("broken"), "iot").unwrap_err();
        assert!(format!("{error:#}").contains("decompressing"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_compressed_registry_may_not_expand_without_bound() {
        let zeros = iot_operator::registry::encode(&iot_model::registry::Registry::empty("iot"));
        let json_len = zeros.json_bytes;
        assert!(decode_at_most(zeros.gzip.clone(), json_len).is_ok());
        let error = decode_at_most(zeros.gzip, json_len - 1).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        // The operator never writes more than the workers accept.
        assert_eq!(MAX_JSON_BYTES, iot_operator::registry::MAX_JSON_BYTES);
    }

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
