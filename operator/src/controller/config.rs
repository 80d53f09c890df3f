//! The operator's settings (flags and environment variables of `iot-operator run`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Settings that shape what the operator creates.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Namespace watched and managed.
    pub namespace: String,
    /// Kafka bootstrap servers, for the operator itself and passed to the enrichment workers.
    pub kafka_bootstrap: String,
    /// Prefix of every topic name (`iot` gives `iot.smart_breaker.raw`).
    pub topic_prefix: String,
    /// Image of the `iot-worker` container run by the enrichment Deployments.
    pub worker_image: String,
    /// Name of the registry ConfigMap.
    pub registry_config_map: String,
    /// Partitions of the shared topics (`{prefix}.enriched`, `{prefix}.deadletter`).
    pub shared_topic_partitions: i32,
    /// Replication factor of the shared topics.
    pub shared_topic_replication_factor: i32,
    /// Kafka admin timeout.
    pub kafka_timeout: Duration,
    /// Re-check interval of a settled resource (drift safety net).
    pub resync: Duration,
    /// Re-check interval of an autoscaled DeviceType (how often lag is read).
    pub autoscale_interval: Duration,
    /// How long a lower replica count must be wanted before scaling down.
    pub scale_down_cooldown: Duration,
    /// How long a deleted DeviceType with `deletionPolicy: Delete` waits for an unreachable broker
    /// before its finalizer is removed anyway (its topics are then left behind, with an Event).
    pub topic_cleanup_timeout: Duration,
    /// Node selector of the enrichment pods (none when empty).
    pub enrichment_node_selector: BTreeMap<String, String>,
    /// Tolerations of the enrichment pods (none when empty).
    pub enrichment_tolerations: Vec<Toleration>,
    /// Owner of the objects the operator creates for itself (the registry ConfigMap, the leader
    /// Lease): the operator's own Deployment, so that uninstalling it removes them too. None when
    /// the operator runs outside a Deployment (from a terminal).
    pub owner: Option<OwnerReference>,
}

impl OperatorConfig {
    /// Defaults that work on a laptop, for tests and `iot-operator run` without flags.
    pub fn new(namespace: impl Into<String>, kafka_bootstrap: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            kafka_bootstrap: kafka_bootstrap.into(),
            topic_prefix: "iot".into(),
            worker_image: DEFAULT_WORKER_IMAGE.into(),
            registry_config_map: crate::registry::CONFIG_MAP_NAME.into(),
            shared_topic_partitions: 3,
            shared_topic_replication_factor: 1,
            kafka_timeout: Duration::from_secs(10),
            resync: Duration::from_secs(300),
            autoscale_interval: Duration::from_secs(15),
            scale_down_cooldown: Duration::from_secs(120),
            topic_cleanup_timeout: Duration::from_secs(300),
            enrichment_node_selector: BTreeMap::new(),
            enrichment_tolerations: Vec::new(),
            owner: None,
        }
    }

    /// Consumer group of the enrichment workers of device type `id`; the operator reads its lag.
    pub fn enrichment_group(&self, id: &str) -> String {
        iot_model::naming::enrichment_group(&self.topic_prefix, id)
    }
}

/// The worker image when none is configured.
pub const DEFAULT_WORKER_IMAGE: &str = "ghcr.io/iot-cloud/iot-worker:latest";

/// A JSON-valued setting that does not parse; names the flag, its variable and what it expects.
#[derive(Debug, thiserror::Error)]
#[error("{flag} ({env}): expected {expected}: {reason}")]
pub struct InvalidSetting {
    flag: &'static str,
    env: &'static str,
    expected: &'static str,
    reason: String,
}

/// The fields of a Kubernetes Toleration. k8s-openapi ignores unknown fields, so a misspelt
/// `efect` would silently widen the toleration to every effect: refused instead.
const TOLERATION_FIELDS: [&str; 5] = ["key", "operator", "value", "effect", "tolerationSeconds"];

/// Parses `--enrichment-node-selector` / `IOT_ENRICHMENT_NODE_SELECTOR`: a JSON object of strings
/// (`{"kubernetes.io/os":"linux"}`); empty or blank means no node selector.
pub fn parse_enrichment_node_selector(
    json: &str,
) -> Result<BTreeMap<String, String>, InvalidSetting> {
    let invalid = |reason: String| InvalidSetting {
        flag: "--enrichment-node-selector",
        env: "IOT_ENRICHMENT_NODE_SELECTOR",
        expected: "a JSON object of strings (label: value)",
        reason,
    };
    if json.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(json).map_err(|e| invalid(e.to_string()))
}

/// Parses `--enrichment-tolerations` / `IOT_ENRICHMENT_TOLERATIONS`: a JSON array of Kubernetes
/// tolerations (`[{"key":"dedicated","operator":"Equal","value":"iot","effect":"NoSchedule"}]`);
/// empty or blank means no tolerations.
pub fn parse_enrichment_tolerations(json: &str) -> Result<Vec<Toleration>, InvalidSetting> {
    let invalid = |reason: String| InvalidSetting {
        flag: "--enrichment-tolerations",
        env: "IOT_ENRICHMENT_TOLERATIONS",
        expected: "a JSON array of tolerations",
        reason,
    };
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let items: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if let Some(unknown) = item
                .keys()
                .find(|k| !TOLERATION_FIELDS.contains(&k.as_str()))
            {
                return Err(invalid(format!(
                    "toleration {i}: unknown field `{unknown}`, expected one of {}",
                    TOLERATION_FIELDS.join(", ")
                )));
            }
            serde_json::from_value(serde_json::Value::Object(item))
                .map_err(|e| invalid(format!("toleration {i}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selector_parses_an_object_of_strings() {
        let selector =
            parse_enrichment_node_selector(r#"{"kubernetes.io/os":"linux","pool":"iot"}"#).unwrap();
        assert_eq!(
            selector,
            BTreeMap::from([
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("pool".to_string(), "iot".to_string()),
            ])
        );
    }

    #[test]
    fn empty_node_selector_is_none() {
        assert!(parse_enrichment_node_selector("").unwrap().is_empty());
        assert!(parse_enrichment_node_selector("  ").unwrap().is_empty());
        assert!(parse_enrichment_node_selector("{}").unwrap().is_empty());
    }

    #[test]
    fn malformed_node_selector_names_the_flag_and_what_it_expects() {
        for bad in [
            r#"{"pool":1}"#,
            r#"["pool"]"#,
            "pool=iot",
            r#"{"pool":"iot""#,
        ] {
            let e = parse_enrichment_node_selector(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "--enrichment-node-selector (IOT_ENRICHMENT_NODE_SELECTOR): \
                     expected a JSON object of strings (label: value): "
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn tolerations_parse_an_array_of_tolerations() {
        let tolerations = parse_enrichment_tolerations(
            r#"[{"key":"dedicated","operator":"Equal","value":"iot","effect":"NoSchedule"},
                {"key":"node.kubernetes.io/unreachable","operator":"Exists",
                 "effect":"NoExecute","tolerationSeconds":60}]"#,
        )
        .unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(tolerations[0].value.as_deref(), Some("iot"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(tolerations[1].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[1].toleration_seconds, Some(60));
    }

    #[test]
    fn empty_tolerations_are_none() {
        assert!(parse_enrichment_tolerations("").unwrap().is_empty());
        assert!(parse_enrichment_tolerations("\n").unwrap().is_empty());
        assert!(parse_enrichment_tolerations("[]").unwrap().is_empty());
    }

    #[test]
    fn malformed_tolerations_name_the_flag_and_what_they_expect() {
        let prefix = "--enrichment-tolerations (IOT_ENRICHMENT_TOLERATIONS): \
                      expected a JSON array of tolerations: ";
        for bad in [
            r#"{"key":"dedicated"}"#,
            r#"["dedicated"]"#,
            r#"[{"key":1}]"#,
            r#"[{"key":"a","tolerationSeconds":"60"}]"#,
            "dedicated=iot:NoSchedule",
        ] {
            let e = parse_enrichment_tolerations(bad).unwrap_err().to_string();
            assert!(e.starts_with(prefix), "{bad}: {e}");
        }
        let e = parse_enrichment_tolerations(r#"[{"key":"dedicated","efect":"NoSchedule"}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("toleration 0: unknown field `efect`"), "{e}");
    }
}
