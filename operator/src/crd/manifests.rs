//! Reading `DeviceType` and `Application` objects from YAML manifests (`deploy/samples/`, or any
//! directory of files that `kubectl apply -f` would take), without a cluster.
//!
//! Files may hold several documents; documents of other kinds are skipped, so a directory can
//! mix IoT Cloud objects with ordinary Kubernetes ones.

use std::path::{Path, PathBuf};

use super::{API_VERSION, Application, DeviceType};

/// The IoT Cloud objects found in some manifests, in the order they were read.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub device_types: Vec<DeviceType>,
    pub applications: Vec<Application>,
}

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: not valid YAML: {error}")]
    Yaml {
        origin: String,
        error: Box<serde_saphyr::Error>,
    },
    #[error("{origin}, document {document}: invalid {kind}: {error}")]
    Object {
        origin: String,
        document: usize,
        kind: String,
        error: serde_json::Error,
    },
}

impl Manifests {
    /// Adds the objects of one YAML stream; `origin` names it in errors (usually the file).
    pub fn parse_str(&mut self, yaml: &str, origin: &str) -> Result<(), ManifestError> {
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(yaml).map_err(|error| ManifestError::Yaml {
                origin: origin.to_string(),
                error: Box::new(error),
            })?;
        for (index, value) in documents.into_iter().enumerate() {
            let document_number = index + 1;
            if value.get("apiVersion").and_then(|v| v.as_str()) != Some(API_VERSION) {
                continue;
            }
            let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
            let object_error = |error| ManifestError::Object {
                origin: origin.to_string(),
                document: document_number,
                kind: kind.to_string(),
                error,
            };
            match kind {
                "DeviceType" => self
                    .device_types
                    .push(serde_json::from_value(value.clone()).map_err(object_error)?),
                "Application" => self
                    .applications
                    .push(serde_json::from_value(value.clone()).map_err(object_error)?),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the namespace of every object that has none, as `kubectl apply -n` would.
    pub fn default_namespace(&mut self, namespace: &str) {
        let metadata = self
            .device_types
            .iter_mut()
            .map(|d| &mut d.metadata)
            .chain(self.applications.iter_mut().map(|a| &mut a.metadata));
        for meta in metadata {
            meta.namespace.get_or_insert_with(|| namespace.to_string());
        }
    }
}

/// Reads one manifest file, or every `*.yaml` / `*.yml` file of a directory (not recursively,
/// in file-name order).
pub fn load(path: &Path) -> Result<Manifests, ManifestError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ManifestError::Read { path, error }
    };
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_error(path))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(read_error(&file))?;
        manifests.parse_str(&text, &file.display().to_string())?;
    }
    Ok(manifests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ValidationMode;

    const MIXED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: unrelated
---
# an empty document follows
---
apiVersion: iotcloud.dev/v1alpha1
kind: DeviceType
metadata:
  name: smart-meter
spec:
  deviceType: smart_meter
  displayName: Smart Energy Meter
---
apiVersion: iotcloud.dev/v1alpha1
kind: Application
metadata:
  name: energy-analytics
  namespace: analytics
spec:
  displayName: Energy Analytics
  developer: Grid Insights
  platform: mobile
  deviceTypes: [smart_meter]
  contactEmail: energy@example.com
---
apiVersion: iotcloud.dev/v1alpha1
kind: SomethingElse
metadata:
  name: skipped
"#;

    #[test]
    fn parses_matching_kinds_and_skips_the_rest() {
        let mut manifests = Manifests::default();
        manifests.parse_str(MIXED, "mixed.yaml").unwrap();
        assert_eq!(manifests.device_types.len(), 1);
        assert_eq!(manifests.applications.len(), 1);
        assert_eq!(manifests.device_types[0].spec.device_type, "smart_meter");
        assert_eq!(manifests.applications[0].spec.version, "1.0.0");

        manifests.default_namespace("iot");
        assert_eq!(
            manifests.device_types[0].metadata.namespace.as_deref(),
            Some("iot")
        );
        assert_eq!(
            manifests.applications[0].metadata.namespace.as_deref(),
            Some("analytics")
        );
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let bad = "apiVersion: iotcloud.dev/v1alpha1\nkind: Application\nmetadata: {name: x}\nspec:\n  displayName: X\n";
        let mut manifests = Manifests::default();
        let error = manifests
            .parse_str(bad, "apps.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("apps.yaml, document 1: invalid Application: "),
            "{error}"
        );

        let error = manifests
            .parse_str("a: [", "broken.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("broken.yaml: not valid YAML") && error.contains("line 1"),
            "{error}"
        );
    }

    #[test]
    fn off_must_be_quoted_as_for_kubectl() {
        let yaml = |mode: &str| {
            format!(
                "apiVersion: iotcloud.dev/v1alpha1\nkind: DeviceType\nmetadata: {{name: m}}\n\
                 spec: {{deviceType: m, displayName: M, validation: {mode}}}\n"
            )
        };
        let mut manifests = Manifests::default();
        manifests
            .parse_str(&yaml("\"Off\""), "quoted.yaml")
            .unwrap();
        assert_eq!(
            manifests.device_types[0].spec.validation,
            ValidationMode::Off
        );
        // Unquoted, YAML 1.1 (kubectl's YAML) reads a boolean, which the schema refuses.
        let error = manifests
            .parse_str(&yaml("Off"), "unquoted.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("boolean `false`"), "{error}");
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let error = load(Path::new("/nonexistent/manifests.yaml")).unwrap_err();
        assert!(matches!(error, ManifestError::Read { .. }));
    }
}
