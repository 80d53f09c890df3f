//! The enrichment Deployment of a DeviceType, built as a pure function of the resource and the
//! operator's settings, applied with server-side apply and owned by the DeviceType.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction,
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::config::OperatorConfig;
use crate::crd::DeviceType;
use crate::registry::CONFIG_MAP_BINARY_KEY;
use iot_model::registry::{CONFIG_MAP_KEY, MOUNT_DIR, mounted_file};

/// Port of the worker's admin endpoint (`/livez`, `/readyz`, `/metrics`).
pub const ADMIN_PORT: i32 = 9102;
/// Label with the device-type id on everything the operator creates for a DeviceType.
pub const DEVICE_TYPE_LABEL: &str = "iotcloud.dev/device-type";

/// Name of the enrichment Deployment of the DeviceType named `name`.
pub fn enrichment_deployment_name(name: &str) -> String {
    format!("{name}-enrichment")
}

/// Labels selecting the enrichment pods of one DeviceType.
pub fn selector_labels(dt: &DeviceType) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "iot-enrichment".into()),
        ("app.kubernetes.io/instance".into(), dt.name_any()),
    ])
}

/// The Deployment running `iot-worker enrichment` for `dt` with `replicas` replicas.
pub fn desired_enrichment_deployment(
    dt: &DeviceType,
    config: &OperatorConfig,
    replicas: i32,
) -> Deployment {
    let id = &dt.spec.device_type;
    let selector = selector_labels(dt);
    let mut labels = selector.clone();
    labels.insert("app.kubernetes.io/component".into(), "enrichment".into());
    labels.insert("app.kubernetes.io/part-of".into(), "iot-cloud".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "iot-operator".into());
    labels.insert(DEVICE_TYPE_LABEL.into(), id.clone());

    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "enrichment".into(),
        image: Some(config.worker_image.clone()),
        args: Some(vec!["enrichment".into()]),
        env: Some(vec![
            env("IOT_DEVICE_TYPE", id.clone()),
            env("IOT_KAFKA_BOOTSTRAP", config.kafka_bootstrap.clone()),
            env("IOT_TOPIC_PREFIX", config.topic_prefix.clone()),
            env("IOT_CONSUMER_GROUP", config.enrichment_group(id)),
            env("IOT_REGISTRY_FILE", mounted_file()),
            env("IOT_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: ADMIN_PORT,
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/livez")),
        readiness_probe: Some(probe("/readyz")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "registry".into(),
            mount_path: MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    Deployment {
        metadata: ObjectMeta {
            name: Some(enrichment_deployment_name(&dt.name_any())),
            namespace: dt.namespace(),
            labels: Some(labels.clone()),
            owner_references: dt.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), ADMIN_PORT.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Workers never call the Kubernetes API.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    // Left out when unset: server-side apply then does not own the fields, and
                    // the operator does not fight whoever else sets them.
                    node_selector: Some(config.enrichment_node_selector.clone())
                        .filter(|s| !s.is_empty()),
                    tolerations: Some(config.enrichment_tolerations.clone())
                        .filter(|t| !t.is_empty()),
                    volumes: Some(vec![Volume {
                        name: "registry".into(),
                        // The compressed registry, at the path the workers read by default
                        // (`IOT_REGISTRY_FILE`); they recognise gzip by its magic bytes.
                        config_map: Some(ConfigMapVolumeSource {
                            name: config.registry_config_map.clone(),
                            items: Some(vec![KeyToPath {
                                key: CONFIG_MAP_BINARY_KEY.into(),
                                path: CONFIG_MAP_KEY.into(),
                                mode: None,
                            }]),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn sample() -> DeviceType {
        let mut dt: DeviceType = serde_json::from_value(serde_json::json!({
            "apiVersion": "iotcloud.dev/v1alpha1",
            "kind": "DeviceType",
            "metadata": { "name": "smart-breaker", "namespace": "iot", "uid": "u-1" },
            "spec": { "deviceType": "smart_breaker", "displayName": "Smart Circuit Breaker" }
        }))
        .unwrap();
        dt.meta_mut().resource_version = Some("1".into());
        dt
    }

    #[test]
    fn deployment_runs_enrichment_for_the_device_type() {
        let config = OperatorConfig::new("iot", "kafka:9092");
        let d = desired_enrichment_deployment(&sample(), &config, 2);
        assert_eq!(d.metadata.name.as_deref(), Some("smart-breaker-enrichment"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("iot"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DeviceType", Some(true))
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["enrichment".to_string()][..]));
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["IOT_DEVICE_TYPE"], "smart_breaker");
        assert_eq!(env["IOT_KAFKA_BOOTSTRAP"], "kafka:9092");
        assert_eq!(env["IOT_CONSUMER_GROUP"], "iot.smart_breaker.enrichment");
        assert_eq!(env["IOT_REGISTRY_FILE"], "/etc/iot-cloud/registry.json");
        // ... where the volume puts the compressed registry.
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, "/etc/iot-cloud");
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.name, mount.name);
        let items = volume.config_map.as_ref().unwrap().items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("registry.json.gz", "registry.json")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn configured_placement_reaches_the_pod_spec() {
        let mut config = OperatorConfig::new("iot", "kafka:9092");
        config.enrichment_node_selector = BTreeMap::from([("pool".into(), "iot".into())]);
        config.enrichment_tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("iot".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }];
        let d = desired_enrichment_deployment(&sample(), &config, 1);
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector, Some(config.enrichment_node_selector));
        assert_eq!(pod.tolerations, Some(config.enrichment_tolerations));
    }

    #[test]
    fn unset_placement_is_absent_from_the_applied_pod_spec() {
        let config = OperatorConfig::new("iot", "kafka:9092");
        let d = desired_enrichment_deployment(&sample(), &config, 1);
        // What server-side apply sends: an absent field is not owned by the operator.
        let pod = &serde_json::to_value(&d).unwrap()["spec"]["template"]["spec"];
        assert!(pod.get("nodeSelector").is_none(), "{pod}");
        assert!(pod.get("tolerations").is_none(), "{pod}");
        assert!(pod.get("affinity").is_none(), "{pod}");
    }
}
