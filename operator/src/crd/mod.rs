//! The custom resource API of IoT Cloud, group `iotcloud.dev`, version `v1alpha1`.
//!
//! The Rust types here are the source of truth. `crds/` holds the YAML generated from them
//! (`cargo run -p iot-operator -- crd --write crds/`); a unit test fails when it is stale, so the
//! committed CRDs never drift from the types. The API server enforces the schema and the CEL rules
//! (`x-kubernetes-validations`) at `kubectl apply`; [`validate`] repeats them as plain Rust for the
//! operator's validate stage and for objects that were stored before a rule existed.

mod application;
mod device_type;
pub mod limits;
pub mod manifests;
mod measurement;
pub mod topics;
pub mod validate;

#[cfg(test)]
mod cel_tests;
#[cfg(test)]
mod samples_tests;

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use application::{Application, ApplicationSpec, ApplicationStatus, Platform};
pub use device_type::{
    DEFAULT_LAG_PER_REPLICA, DEFAULT_MIN_REPLICAS, DEFAULT_REPLICAS, DeletionPolicy, DeviceType,
    DeviceTypeSpec, DeviceTypeStatus, EnrichmentSpec, ReplicaCounts, Scaling, TopicsSpec,
    ValidationMode,
};
pub use measurement::{DataType, Manufacturer, Measurement, MeasurementComponent};
pub use topics::{
    RetentionError, TopicNames, all_enriched_topic, deadletter_topic, parse_retention_ms,
};

/// The API group of every IoT Cloud custom resource.
pub const GROUP: &str = "iotcloud.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every IoT Cloud custom resource.
pub const API_VERSION: &str = "iotcloud.dev/v1alpha1";

/// What a device-type id looks like: it appears in payloads and in Kafka topic names
/// (`iot.{id}.raw`), so it is restricted to lower-case letters, digits and underscores.
pub const ID_PATTERN: &str = "^[a-z][a-z0-9_]*$";
/// Longest device-type id, the length of a DNS label, which keeps topic names far below Kafka's
/// limit of 249 characters.
pub const ID_MAX_LENGTH: usize = 63;

/// The condition every resource carries; `kubectl wait --for=condition=Ready` waits on it.
pub const CONDITION_READY: &str = "Ready";

/// The command that regenerates `crds/`, quoted in error messages.
pub const REGENERATE_COMMAND: &str = "cargo run -p iot-operator -- crd --write crds/";

/// One generated CRD and the file it is committed as.
#[derive(Clone, Debug)]
pub struct CrdFile {
    /// File name inside `crds/`.
    pub file_name: &'static str,
    pub crd: CustomResourceDefinition,
}

/// Every CRD of the project, one file each (the layout Helm expects in a chart's `crds/`).
pub fn crd_files() -> Vec<CrdFile> {
    vec![
        CrdFile {
            file_name: "application.yaml",
            crd: Application::crd(),
        },
        CrdFile {
            file_name: "devicetype.yaml",
            crd: DeviceType::crd(),
        },
    ]
}

/// The committed text of one CRD file: a header saying where it comes from, then the YAML.
///
/// Written with serde-saphyr rather than serde_yaml because kubectl reads YAML 1.1: serde_yaml
/// leaves the enum value `Off` unquoted, which kubectl turns into the boolean `false`.
pub fn render_crd_file(
    crd: &CustomResourceDefinition,
) -> Result<String, serde_saphyr::SerializeError> {
    let yaml = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in operator/src/crd/ by `{REGENERATE_COMMAND}`.\n\
         # Do not edit by hand: a unit test fails when this file differs from the types.\n\
         {yaml}"
    ))
}

/// Every CRD as one multi-document YAML stream, for `kubectl apply -f -`.
pub fn render_all() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for file in crd_files() {
        out.push_str("---\n");
        out.push_str(&render_crd_file(&file.crd)?);
    }
    Ok(out)
}

/// Why the CRD files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CrdWriteError {
    #[error("cannot render CRD {name} as YAML: {error}")]
    Render {
        name: String,
        error: serde_saphyr::SerializeError,
    },
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Writes one file per CRD into `dir` (created if missing) and returns the paths written.
pub fn write_crd_files(dir: &Path) -> Result<Vec<PathBuf>, CrdWriteError> {
    std::fs::create_dir_all(dir).map_err(|error| CrdWriteError::Write {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut written = Vec::new();
    for file in crd_files() {
        let text = render_crd_file(&file.crd).map_err(|error| CrdWriteError::Render {
            name: file.crd.metadata.name.clone().unwrap_or_default(),
            error,
        })?;
        let path = dir.join(file.file_name);
        std::fs::write(&path, text).map_err(|error| CrdWriteError::Write {
            path: path.clone(),
            error,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_path(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(relative)
    }

    /// The kube `verify_crd` habit: the committed YAML must be exactly what the types generate.
    #[test]
    fn committed_crds_are_up_to_date() {
        let mut stale = Vec::new();
        for file in crd_files() {
            let expected = render_crd_file(&file.crd).unwrap();
            let path = repo_path("crds").join(file.file_name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != expected {
                stale.push(format!("crds/{}", file.file_name));
            }
        }
        assert!(
            stale.is_empty(),
            "crds/ is stale ({}): run `{REGENERATE_COMMAND}` and commit the result",
            stale.join(", ")
        );
    }

    #[test]
    fn crd_names_and_scope() {
        let dt = DeviceType::crd();
        assert_eq!(
            dt.metadata.name.as_deref(),
            Some("devicetypes.iotcloud.dev")
        );
        assert_eq!(dt.spec.scope, "Namespaced");
        assert_eq!(dt.spec.names.short_names, Some(vec!["dt".to_string()]));
        assert_eq!(dt.spec.names.categories, Some(vec!["iotcloud".to_string()]));

        let app = Application::crd();
        assert_eq!(
            app.metadata.name.as_deref(),
            Some("applications.iotcloud.dev")
        );
        assert_eq!(app.spec.scope, "Namespaced");
        assert_eq!(
            app.spec.names.short_names,
            Some(vec!["iotapp".to_string(), "iotapps".to_string()])
        );
        assert_eq!(
            app.spec.names.categories,
            Some(vec!["iotcloud".to_string()])
        );
        for crd in [dt, app] {
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(version.served && version.storage);
            assert!(version.subresources.as_ref().unwrap().status.is_some());
        }
    }

    #[test]
    fn printer_columns() {
        let columns = |crd: CustomResourceDefinition| -> Vec<(String, String)> {
            crd.spec.versions[0]
                .additional_printer_columns
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.name, c.json_path))
                .collect()
        };
        let dt = columns(DeviceType::crd());
        let names: Vec<&str> = dt.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ID",
                "Topic",
                "Partitions",
                "Desired",
                "Ready Replicas",
                "Lag",
                "Ready",
                "Age"
            ]
        );
        assert!(dt.contains(&(
            "Ready".into(),
            r#".status.conditions[?(@.type=="Ready")].status"#.into()
        )));
        let app = columns(Application::crd());
        let names: Vec<&str> = app.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Display Name",
                "Platform",
                "Device Types",
                "Active",
                "Ready",
                "Age"
            ]
        );
    }

    /// Every property in the schema carries a description, so `kubectl explain` is useful.
    #[test]
    fn every_schema_property_is_documented() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let here = format!("{path}.{name}");
                    // metadata, apiVersion and kind are described by Kubernetes itself.
                    let standard = path.is_empty()
                        && ["metadata", "apiVersion", "kind"].contains(&name.as_str());
                    if prop.get("description").is_none() && !standard {
                        missing.push(here.clone());
                    }
                    walk(&here, prop, missing);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(inner) = schema.get(key) {
                    walk(&format!("{path}[]"), inner, missing);
                }
            }
        }
        for crd in [DeviceType::crd(), Application::crd()] {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut missing = Vec::new();
            walk("", &schema, &mut missing);
            // Condition comes from k8s-openapi and is documented there.
            missing.retain(|p| !p.starts_with(".status.conditions[]"));
            assert!(
                missing.is_empty(),
                "{}: undocumented {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn render_all_is_a_multi_document_stream() {
        let all = render_all().unwrap();
        assert_eq!(
            all.matches("\n---\n").count() + usize::from(all.starts_with("---\n")),
            2
        );
        assert!(all.contains("name: devicetypes.iotcloud.dev"));
        assert!(all.contains("name: applications.iotcloud.dev"));
    }

    /// kubectl reads YAML 1.1, where a plain `Off` is the boolean `false`: the rendered YAML,
    /// read back as kubectl would, must be exactly the CRD (quoting and folded descriptions).
    #[test]
    fn rendered_yaml_reads_back_as_the_crd() {
        for file in crd_files() {
            let yaml = render_crd_file(&file.crd).unwrap();
            let read_back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
            assert_eq!(
                read_back,
                serde_json::to_value(&file.crd).unwrap(),
                "{}",
                file.file_name
            );
        }
        let yaml = render_crd_file(&DeviceType::crd()).unwrap();
        assert!(
            yaml.contains("- \"Off\""),
            "the enum value Off must be quoted"
        );
    }

    #[test]
    fn write_crd_files_writes_one_file_per_crd() {
        let dir = std::env::temp_dir().join(format!("iot-operator-crds-{}", std::process::id()));
        let written = write_crd_files(&dir).unwrap();
        assert_eq!(written.len(), 2);
        for path in &written {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("# Generated from the Rust types"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
