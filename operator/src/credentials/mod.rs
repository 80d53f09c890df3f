//! Device identities: a device CA, one client certificate per device (CN = device id) and the
//! CRL that Mosquitto's device listener checks (`iot-operator device-credentials ...`).
//!
//! The certificate work is pure ([`ca`], [`crl`], [`device_id`]); files and the Kubernetes
//! Secret / ConfigMap are at the edges ([`files`], [`kube_store`]); [`cli`] wires both to the
//! subcommands.

pub mod ca;
pub mod cli;
pub mod crl;
pub mod device_id;
pub mod files;
pub mod kube_store;
pub mod serial;

pub use ca::{DeviceCa, IssuedCertificate};
pub use device_id::validate_device_id;

/// What can go wrong with certificates, keys and CRLs (files and Kubernetes objects aside).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("device id {id:?} refused: {reason}")]
    InvalidDeviceId { id: String, reason: String },
    #[error("the CA certificate is not usable: {0}")]
    InvalidCaCertificate(String),
    #[error(
        "the CA key is not usable: {0} (a PKCS#8 PEM key, `BEGIN PRIVATE KEY`, is required; \
         convert with `openssl pkcs8 -topk8 -nocrypt`, or set cert-manager's \
         `spec.privateKey.encoding: PKCS8`)"
    )]
    InvalidCaKey(String),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("the CA certificate expired at {}", rfc3339(*.0))]
    CaExpired(time::OffsetDateTime),
    #[error("certificate: {0}")]
    InvalidCertificate(String),
    #[error("CRL: {0}")]
    InvalidCrl(String),
    #[error("serial number {0:?}: {1}")]
    InvalidSerial(String, String),
    #[error("signing: {0}")]
    Signing(#[from] rcgen::Error),
    #[error("random number generator failed")]
    Random,
}

/// `2027-01-31T12:00:00Z`: how the commands print dates.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}
