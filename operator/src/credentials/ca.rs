//! The device CA: creating one, loading an existing one (ours, openssl's or cert-manager's, as
//! long as the key is PKCS#8) and issuing device client certificates with it.

use std::fmt;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use super::{CredentialsError, serial, validate_device_id};

/// How far back `notBefore` (and a CRL's `thisUpdate`) is dated: a broker or device whose clock
/// runs a little behind must not see a certificate, or the CRL, as not yet valid (a CRL that is
/// not yet valid makes OpenSSL refuse every client).
pub const CLOCK_SKEW: Duration = Duration::hours(1);

/// Common name of a CA made by `init-ca` without `--common-name`.
pub const DEFAULT_CA_COMMON_NAME: &str = "IoT Cloud device CA";

/// A CA certificate with its signing key.
pub struct DeviceCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for DeviceCa {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A new device certificate and its private key.
pub struct IssuedCertificate {
    pub device_id: String,
    pub cert_pem: String,
    /// PKCS#8 PEM. Write it with mode 0600; never print or log it.
    pub key_pem: String,
    pub serial: Vec<u8>,
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedCertificate {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("device_id", &self.device_id)
            .field("serial", &serial::to_hex(&self.serial))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl DeviceCa {
    /// A new self-signed CA (ECDSA P-256) valid from `now` for `validity`, allowed to sign
    /// end-entity certificates (path length 0) and CRLs.
    pub fn generate(
        common_name: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialsError> {
        if common_name.trim().is_empty() {
            return Err(CredentialsError::InvalidCaCertificate(
                "the common name is empty".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&serial::random_serial()?));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + validity;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its PEM certificate (the first block; a chain may follow) and its PKCS#8
    /// PEM key, checking that the certificate is a CA that may sign certificates and that the
    /// key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CredentialsError> {
        let invalid_cert = |m: String| CredentialsError::InvalidCaCertificate(m);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid_cert(format!("not PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(invalid_cert(format!(
                "the first PEM block is {:?}, not CERTIFICATE",
                pem.label
            )));
        }
        let cert_der = pem.contents;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid_cert(format!("not an X.509 certificate: {e}")))?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| invalid_cert(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid_cert(
                "it is not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        if let Some(ku) = x509.key_usage().map_err(|e| invalid_cert(e.to_string()))?
            && !ku.value.key_cert_sign()
        {
            return Err(invalid_cert(
                "its key usage does not allow signing certificates".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CredentialsError::InvalidCaKey(e.to_string()))?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(CredentialsError::KeyMismatch);
        }
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(Self {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
            not_after,
        })
    }

    /// The CA certificate (PEM), for `ca.crt`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM), for `ca.key`. Write it with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The parsed CA certificate (cannot fail: it was parsed when loaded).
    pub(crate) fn x509(&self) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(&self.cert_der)
            .expect("parsed when loaded")
            .1
    }

    /// A client certificate for device `id` (CN = id, extended key usage clientAuth, a random
    /// serial, a new ECDSA P-256 key), valid from `now` for `validity` but never past the CA.
    pub fn issue_device(
        &self,
        id: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CredentialsError> {
        validate_device_id(id)?;
        if now >= self.not_after {
            return Err(CredentialsError::CaExpired(self.not_after));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = serial::random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity).min(self.not_after);
        let (cert, key) = self.sign_with_new_key(&params)?;
        Ok(IssuedCertificate {
            device_id: id.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            not_after: params.not_after,
        })
    }

    /// Signs `params` (with the authority key identifier of this CA) for a new ECDSA P-256 key.
    pub fn sign_with_new_key(
        &self,
        params: &CertificateParams,
    ) -> Result<(Certificate, KeyPair), CredentialsError> {
        let mut params = params.clone();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }

    /// The serial of `cert_pem`, after checking that this CA issued it (issuer name and
    /// signature): revoking a serial of another CA's certificate would revoke nothing, or the
    /// wrong certificate.
    pub fn serial_of_issued(&self, cert_pem: &str) -> Result<Vec<u8>, CredentialsError> {
        let invalid = |m: String| CredentialsError::InvalidCertificate(m);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("not PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
        let ca = self.x509();
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            return Err(invalid(format!(
                "it was issued by {:?}, not by this CA ({:?})",
                cert.issuer().to_string(),
                ca.subject().to_string()
            )));
        }
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            invalid(
                "its signature does not verify with this CA's key (another CA of the same name?)"
                    .into(),
            )
        })?;
        Ok(serial::canonical(cert.raw_serial()).to_vec())
    }
}

/// PEM text of one DER block (64-column base64, as OpenSSL writes it).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn ca() -> DeviceCa {
        DeviceCa::generate("test CA", Duration::days(10), now()).unwrap()
    }

    #[test]
    fn a_generated_ca_loads_back_from_its_own_pem() {
        let ca = ca();
        let loaded = DeviceCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn device_certificates_carry_the_id_client_auth_and_the_serial() {
        let ca = ca();
        let issued = ca
            .issue_device("sensor-1", Duration::days(365), now())
            .unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["sensor-1"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(
            !cert
                .basic_constraints()
                .unwrap()
                .is_some_and(|b| b.value.ca)
        );
        assert_eq!(serial::canonical(cert.raw_serial()), issued.serial);
        // Longer than the CA: cut to the CA's end.
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            ca.not_after().replace_nanosecond(0).unwrap()
        );
        cert.verify_signature(Some(ca.x509().public_key())).unwrap();
        assert_eq!(
            ca.serial_of_issued(&issued.cert_pem).unwrap(),
            issued.serial
        );
        assert!(!format!("{issued:?}").contains("PRIVATE"));
    }

    #[test]
    fn reserved_and_malformed_ids_get_no_certificate() {
        let ca = ca();
        for id in ["iot-bridge", "a/b", "#", ""] {
            assert!(matches!(
                ca.issue_device(id, Duration::days(1), now()),
                Err(CredentialsError::InvalidDeviceId { .. })
            ));
        }
    }

    #[test]
    fn a_key_of_another_ca_or_a_leaf_certificate_is_refused() {
        let ca = ca();
        let other = DeviceCa::generate("test CA", Duration::days(10), now()).unwrap();
        assert!(matches!(
            DeviceCa::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(CredentialsError::KeyMismatch)
        ));
        let leaf = ca.issue_device("dev", Duration::days(1), now()).unwrap();
        let err = DeviceCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
        // Same name, other key: not this CA's certificate.
        let foreign = other.issue_device("dev", Duration::days(1), now()).unwrap();
        assert!(ca.serial_of_issued(&foreign.cert_pem).is_err());
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_refused_with_a_hint() {
        let ca = ca();
        let err = DeviceCa::from_pem(
            ca.cert_pem(),
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn an_expired_ca_issues_nothing() {
        let ca = DeviceCa::generate("old", Duration::days(1), now() - Duration::days(3)).unwrap();
        assert!(matches!(
            ca.issue_device("dev", Duration::days(1), now()),
            Err(CredentialsError::CaExpired(_))
        ));
    }
}
