//! The device CA Secret (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes a CA) and the
//! device CRL ConfigMap (key `crl.pem`) in Kubernetes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::controller::FIELD_MANAGER;

/// Key of the PEM CRL in its ConfigMap.
pub const CRL_KEY: &str = "crl.pem";
/// Keys of the CA Secret.
pub const CA_CERT_KEY: &str = "tls.crt";
pub const CA_KEY_KEY: &str = "tls.key";

/// `NAMESPACE/NAME` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl FromStr for NamespacedName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The CA certificate and key PEMs from the Secret `target`.
pub async fn read_ca_secret(
    client: &Client,
    target: &NamespacedName,
) -> anyhow::Result<(String, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &target.namespace);
    let secret = api
        .get(&target.name)
        .await
        .with_context(|| format!("reading the CA Secret {target}"))?;
    let data = secret.data.unwrap_or_default();
    // Never the value in an error: it is the CA's private key.
    let text = |key: &str| -> anyhow::Result<String> {
        let value = data
            .get(key)
            .with_context(|| format!("the CA Secret {target} has no key {key:?}"))?;
        String::from_utf8(value.0.clone())
            .map_err(|_| anyhow::anyhow!("the CA Secret {target} key {key:?} is not PEM text"))
    };
    Ok((text(CA_CERT_KEY)?, text(CA_KEY_KEY)?))
}

/// The CRL ConfigMap `target` as it is now (`None`: it does not exist).
pub async fn read_crl_config_map(
    client: &Client,
    target: &NamespacedName,
) -> anyhow::Result<Option<ConfigMap>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    api.get_opt(&target.name)
        .await
        .with_context(|| format!("reading the CRL ConfigMap {target}"))
}

/// The PEM CRL in a ConfigMap read by [`read_crl_config_map`].
pub fn crl_pem(config_map: &ConfigMap) -> Option<&str> {
    config_map
        .data
        .as_ref()
        .and_then(|d| d.get(CRL_KEY))
        .map(String::as_str)
        .filter(|pem| !pem.trim().is_empty())
}

/// Writes `pem` as the CRL: replaces `read` (the ConfigMap as read, whose resourceVersion makes
/// a concurrent change fail with 409 Conflict instead of losing a revocation), or creates the
/// ConfigMap if it did not exist.
pub async fn write_crl_config_map(
    client: &Client,
    target: &NamespacedName,
    read: Option<ConfigMap>,
    pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &target.namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    match read {
        Some(mut config_map) => {
            config_map
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert(CRL_KEY.to_string(), pem.to_string());
            api.replace(&target.name, &params, &config_map).await?;
        }
        None => {
            let config_map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(target.name.clone()),
                    namespace: Some(target.namespace.clone()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(CRL_KEY.to_string(), pem.to_string())])),
                ..ConfigMap::default()
            };
            api.create(&params, &config_map).await?;
        }
    }
    Ok(())
}

/// Whether `error` is a lost race (409 Conflict: changed, or created, since it was read).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_names_need_both_parts() {
        assert_eq!(
            "iot/device-ca".parse::<NamespacedName>().unwrap(),
            NamespacedName {
                namespace: "iot".into(),
                name: "device-ca".into()
            }
        );
        for bad in ["device-ca", "/x", "x/", "a/b/c", ""] {
            assert!(bad.parse::<NamespacedName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_crl_key_counts_as_no_crl() {
        let mut cm = ConfigMap::default();
        assert_eq!(crl_pem(&cm), None);
        cm.data = Some(BTreeMap::from([(CRL_KEY.to_string(), "\n".to_string())]));
        assert_eq!(crl_pem(&cm), None);
        cm.data = Some(BTreeMap::from([(CRL_KEY.to_string(), "PEM".to_string())]));
        assert_eq!(crl_pem(&cm), Some("PEM"));
    }
}
