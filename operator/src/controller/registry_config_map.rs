//! The registry ConfigMap itself: what the writer applies (the compressed registry in
//! `binaryData`, and its condition in annotations, as a ConfigMap has no status), how to read
//! both back, and what the ConfigMap holds as the writer's watch reports it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::runtime::watcher;

use crate::registry::{self, CONFIG_MAP_BINARY_KEY, Encoded, MAX_COMPRESSED_BYTES, Registry};

/// `"True"` when the ConfigMap holds the registry of the current objects, `"False"` when it keeps
/// an older one (or none) because the current one could not be written.
pub const ANNOTATION_WRITTEN: &str = "iotcloud.dev/registry-written";
/// Why: `Written` or `RegistryTooLarge`.
pub const ANNOTATION_REASON: &str = "iotcloud.dev/registry-reason";
/// What the registry holds and its size against the limit, or why it was not written.
pub const ANNOTATION_MESSAGE: &str = "iotcloud.dev/registry-message";
/// The reason of a registry too large for the ConfigMap (annotation and Events).
pub const REASON_TOO_LARGE: &str = "RegistryTooLarge";
/// The reason of a registry written.
pub const REASON_WRITTEN: &str = "Written";

/// Whether the ConfigMap holds the registry of the current objects, and why not: the registry's
/// condition, written as the ConfigMap's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteStatus {
    pub written: bool,
    pub reason: String,
    pub message: String,
}

impl WriteStatus {
    pub(super) fn written(registry: &Registry, encoded: &Encoded) -> Self {
        let listings: usize = registry
            .device_types
            .values()
            .map(|d| d.applications.len())
            .sum();
        Self {
            written: true,
            reason: REASON_WRITTEN.into(),
            message: format!(
                "{} device types, {listings} application listings; {} bytes gzip-compressed \
                 ({} bytes of JSON), limit {MAX_COMPRESSED_BYTES}",
                registry.device_types.len(),
                encoded.gzip.len(),
                encoded.json_bytes,
            ),
        }
    }

    pub(super) fn too_large(error: &registry::TooLarge, kept: &str) -> Self {
        Self {
            written: false,
            reason: REASON_TOO_LARGE.into(),
            message: format!(
                "{error}; the ConfigMap keeps {kept}. Delete or shorten DeviceTypes or \
                 Applications (descriptions, measurements)"
            ),
        }
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        let written = if self.written { "True" } else { "False" };
        BTreeMap::from([
            (ANNOTATION_WRITTEN.into(), written.into()),
            (ANNOTATION_REASON.into(), self.reason.clone()),
            (ANNOTATION_MESSAGE.into(), self.message.clone()),
        ])
    }

    /// The status a ConfigMap's annotations record, if any.
    pub fn of(cm: &ConfigMap) -> Option<Self> {
        let a = cm.metadata.annotations.as_ref()?;
        Some(Self {
            written: a.get(ANNOTATION_WRITTEN)? == "True",
            reason: a.get(ANNOTATION_REASON)?.clone(),
            message: a.get(ANNOTATION_MESSAGE).cloned().unwrap_or_default(),
        })
    }
}

/// The ConfigMap holding `registry` (compressed, as [`registry::encode`] writes it; none when
/// there is no registry to keep) and `status`, owned by `owner` (the operator's Deployment) when
/// given, so that it goes when the operator is uninstalled.
pub fn desired_config_map(
    name: &str,
    namespace: &str,
    registry: Option<&[u8]>,
    status: &WriteStatus,
    owner: Option<&OwnerReference>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            owner_references: owner.map(|o| vec![o.clone()]),
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
            annotations: Some(status.annotations()),
            ..ObjectMeta::default()
        },
        // Server-side apply with the field manager that used to write `data.registry.json`
        // (pretty JSON, before compression) removes that key: this body does not name it.
        binary_data: registry
            .map(|r| [(CONFIG_MAP_BINARY_KEY.to_string(), ByteString(r.to_vec()))].into()),
        ..ConfigMap::default()
    }
}

/// The compressed registry a ConfigMap holds.
pub fn registry_bytes(cm: &ConfigMap) -> Option<&[u8]> {
    cm.binary_data
        .as_ref()?
        .get(CONFIG_MAP_BINARY_KEY)
        .map(|b| b.0.as_slice())
}

/// The registry a ConfigMap holds; `None` when it has none or an unreadable one.
pub fn registry_in(cm: &ConfigMap) -> Option<Registry> {
    registry::decode(registry_bytes(cm)?).ok()
}

/// The compressed registry the ConfigMap holds, as its watch reports it.
#[derive(Debug, Default)]
pub(super) struct LiveRegistry {
    /// `None` until the first listing is complete; then `Some(None)` when the ConfigMap does not
    /// exist or lacks the key.
    pub(super) current: Option<Option<Vec<u8>>>,
    /// What a listing in progress has found.
    listing: Option<Vec<u8>>,
}

impl LiveRegistry {
    pub(super) fn observe(&mut self, event: Result<watcher::Event<ConfigMap>, watcher::Error>) {
        let held = |cm: &ConfigMap| registry_bytes(cm).map(<[u8]>::to_vec);
        match event {
            Ok(watcher::Event::Init) => self.listing = None,
            Ok(watcher::Event::InitApply(cm)) => self.listing = held(&cm),
            Ok(watcher::Event::InitDone) => self.current = Some(self.listing.take()),
            Ok(watcher::Event::Apply(cm)) => self.current = Some(held(&cm)),
            Ok(watcher::Event::Delete(_)) => self.current = Some(None),
            // The stream retries with backoff; until it lists again, the last state stands.
            Err(e) => tracing::warn!(error = %e, "watching the registry ConfigMap failed"),
        }
    }

    /// Records a write (the watch confirms it shortly).
    pub(super) fn wrote(&mut self, registry: Option<&[u8]>) {
        self.current = Some(registry.map(<[u8]>::to_vec));
    }

    /// The ConfigMap is known to hold something other than `expected`.
    pub(super) fn differs_from(&self, expected: Option<&[u8]>) -> bool {
        match (&self.current, expected) {
            (Some(current), Some(expected)) => current.as_deref() != Some(expected),
            _ => false,
        }
    }
}
