//! The registry file, re-read when its contents change so that application tabs appear and
//! disappear without a restart. Unlike the data-path workers, the dashboard starts without it
//! (the ConfigMap is mounted as optional, and the Overview needs no registry): it shows why the
//! file cannot be used and keeps the last good registry when a new version is broken.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iot_model::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, RegistryStatus};
use super::layout::Layout;
use super::source::now_ms;
use crate::registry_file;

/// Why a registry file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry file {0} does not exist (yet): showing the Overview only")]
    Missing(String),
    #[error("cannot read registry file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("registry file {path}: {error}")]
    Invalid {
        path: String,
        error: iot_model::registry::RegistryError,
    },
}

impl RegistryError {
    fn metric_label(&self) -> &'static str {
        match self {
            RegistryError::Missing(_) => "missing",
            _ => "error",
        }
    }
}

/// Parses a registry document.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Registry, RegistryError> {
    Registry::from_json(bytes).map_err(|error| RegistryError::Invalid {
        path: path.display().to_string(),
        error,
    })
}

fn read_result(read: std::io::Result<Vec<u8>>, path: &Path) -> Result<Vec<u8>, RegistryError> {
    read.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            RegistryError::Missing(path.display().to_string())
        } else {
            RegistryError::Read {
                path: path.display().to_string(),
                error,
            }
        }
    })
}

/// The layout and status for the file's current contents.
pub fn load(path: &Path, prefix: &str) -> (Result<Layout, RegistryError>, RegistryStatus) {
    interpret(registry_file::read(path), path, prefix)
}

/// The layout and status for what a read of the file at `path` gave.
fn interpret(
    read: std::io::Result<Vec<u8>>,
    path: &Path,
    prefix: &str,
) -> (Result<Layout, RegistryError>, RegistryStatus) {
    let mut status = RegistryStatus {
        path: path.display().to_string(),
        ..RegistryStatus::default()
    };
    match read_result(read, path).and_then(|bytes| parse(&bytes, path)) {
        Ok(registry) => {
            if registry.topic_prefix != prefix {
                status.warning = Some(format!(
                    "the registry was written for topic prefix {:?}; the dashboard reads {:?}",
                    registry.topic_prefix, prefix
                ));
            }
            status.loaded_at = Some(now_ms());
            (Ok(Layout::new(Some(&registry), prefix)), status)
        }
        Err(e) => {
            status.error = Some(e.to_string());
            (Err(e), status)
        }
    }
}

/// Follows `path` ([`registry_file::follow`]) until `stop`; applies each change to `hub`.
pub async fn watch(
    path: PathBuf,
    prefix: String,
    poll: Duration,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    let seen = std::fs::read(&path).ok();
    let mut loaded_at = hub.registry().status.loaded_at;
    registry_file::follow(&path, poll, seen, stop, |read| {
        let (layout, mut status) = interpret(read, &path, &prefix);
        match layout {
            Ok(layout) => {
                tracing::info!(
                    path = %path.display(),
                    applications = layout.apps.len(),
                    device_types = layout.device_types.len(),
                    "registry reloaded"
                );
                hub.metrics
                    .registry_reloads
                    .with_label_values(&["ok"])
                    .inc();
                loaded_at = status.loaded_at;
                hub.set_layout(layout, status, now_ms());
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "registry unusable; keeping the previous one");
                hub.metrics
                    .registry_reloads
                    .with_label_values(&[error.metric_label()])
                    .inc();
                status.loaded_at = loaded_at;
                hub.set_registry_status(status);
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_registry;

    #[test]
    fn missing_broken_and_good_files() {
        let dir = std::env::temp_dir().join(format!(
            "dash-reg-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.json");

        let (layout, status) = load(&path, "p");
        assert!(matches!(layout, Err(RegistryError::Missing(_))));
        assert!(status.error.unwrap().contains("does not exist"));

        std::fs::write(&path, b"{").unwrap();
        let (layout, status) = load(&path, "p");
        assert!(layout.is_err());
        assert!(status.error.unwrap().contains("not valid JSON"));

        let mut registry = sample_registry("p");
        registry.version = 99;
        std::fs::write(&path, serde_json::to_vec(&registry).unwrap()).unwrap();
        assert!(load(&path, "p").1.error.unwrap().contains("version 99"));

        std::fs::write(&path, serde_json::to_vec(&sample_registry("q")).unwrap()).unwrap();
        let (layout, status) = load(&path, "p");
        assert_eq!(layout.unwrap().apps.len(), 3);
        assert!(status.error.is_none());
        assert!(status.warning.unwrap().contains("\"q\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
