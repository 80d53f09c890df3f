//! `Application` (`kubectl get iotapp`): a consumer of device data that registers for device
//! types. It replaces the seed's REST app registry and its SQLite database.
//!
//! Active applications are listed in the enrichment context of each of their device types, and
//! the operator resolves the enriched topics they may read. Unlike the seed, an application has
//! no API key: access to the topics is a matter of the cluster's and the broker's authorization.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::DESCRIPTION_MAX_LENGTH;
use super::{ID_MAX_LENGTH, ID_PATTERN};

/// The CEL check of `spec.contactEmail`: one `@`, no whitespace, a dot in the domain. The
/// schema's `format: email` is checked too, but only by API servers that validate formats.
pub const EMAIL_RULE: &str = r"self.matches('^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$')";

fn default_version() -> String {
    "1.0.0".to_string()
}

fn default_active() -> bool {
    true
}

/// Desired state of an Application: what the seed's app registry stored, without the API key.
// The printer columns repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[kube(
    group = "iotcloud.dev",
    version = "v1alpha1",
    kind = "Application",
    plural = "applications",
    shortname = "iotapp",
    // The plural too, so that `kubectl get devicetypes,iotapps` (README, DESIGN.md) works.
    shortname = "iotapps",
    category = "iotcloud",
    namespaced,
    status = "ApplicationStatus",
    derive = "PartialEq",
    doc = "An application that consumes the enriched data of some device types. Active \
           applications appear in the enrichment context of their device types; the operator \
           reports the enriched topics they may read.",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName",
        description = "Human-readable name"
    ),
    printcolumn(
        name = "Platform",
        type_ = "string",
        json_path = ".spec.platform",
        description = "web, mobile, desktop or api"
    ),
    printcolumn(
        name = "Device Types",
        type_ = "string",
        json_path = ".spec.deviceTypes",
        description = "Device-type ids the application reads"
    ),
    printcolumn(
        name = "Active",
        type_ = "boolean",
        json_path = ".spec.active",
        description = "Whether the application is used for enrichment",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether all its device types exist"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// Human-readable name, e.g. `Smart Grid Monitor` (1-100 characters).
    #[schemars(length(min = 1, max = 100))]
    pub display_name: String,
    /// Who develops the application, e.g. `IoT Solutions Inc.` (1-100 characters).
    #[schemars(length(min = 1, max = 100))]
    pub developer: String,
    /// What the application does (at most 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DESCRIPTION_MAX_LENGTH))]
    pub description: Option<String>,
    /// Where the application runs: `web`, `mobile`, `desktop` or `api`.
    pub platform: Platform,
    /// Category, e.g. `monitoring` (at most 50 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50))]
    pub category: Option<String>,
    /// Ids of the device types whose data the application reads (`spec.deviceType` of a
    /// DeviceType), e.g. `smart_breaker`. At least one, no duplicates.
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = ID_MAX_LENGTH), regex(pattern = ID_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub device_types: Vec<String>,
    /// Version of the application (1-20 characters, default `1.0.0`).
    #[serde(default = "default_version")]
    #[schemars(length(min = 1, max = 20))]
    pub version: String,
    /// Whom to contact about the application, e.g. `grid-team@example.com`.
    #[schemars(email, length(min = 3, max = 254))]
    #[x_kube(validation = Rule::new(EMAIL_RULE).message("contactEmail must be an email address such as team@example.com"))]
    pub contact_email: String,
    /// Whether the application is in use (default `true`). Only active applications appear in
    /// the enrichment context.
    #[serde(default = "default_active")]
    pub active: bool,
}

/// Where an application runs.
#[derive(
    Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// A web application.
    Web,
    /// A mobile application.
    Mobile,
    /// A desktop application.
    Desktop,
    /// A service consuming the data through an API.
    Api,
}

/// What the operator last observed for an Application.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (all device types exist) and the specific conditions behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Device-type ids of `spec.deviceTypes` that a DeviceType defines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_device_types: Vec<String>,
    /// Device-type ids of `spec.deviceTypes` that no DeviceType defines (yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_device_types: Vec<String>,
    /// Enriched topics the application may read, e.g. `iot.smart_breaker.enriched`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let spec: ApplicationSpec = serde_json::from_value(serde_json::json!({
            "displayName": "Energy Analytics",
            "developer": "Grid Insights",
            "platform": "mobile",
            "deviceTypes": ["smart_meter"],
            "contactEmail": "energy@example.com"
        }))
        .unwrap();
        assert_eq!(spec.version, "1.0.0");
        assert!(spec.active);
        assert_eq!(spec.platform, Platform::Mobile);
    }

    #[test]
    fn platform_is_lower_case_on_the_wire() {
        for (platform, text) in [
            (Platform::Web, "web"),
            (Platform::Mobile, "mobile"),
            (Platform::Desktop, "desktop"),
            (Platform::Api, "api"),
        ] {
            assert_eq!(serde_json::to_value(platform).unwrap(), text);
        }
        assert!(serde_json::from_value::<Platform>("Web".into()).is_err());
    }
}
