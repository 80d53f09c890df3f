//! The device CRL: an empty one for a new CA, and revocations added to an existing one (earlier
//! entries kept, CRL number incremented).
//!
//! Mosquitto's `crlfile` makes OpenSSL check every device certificate against this CRL, and
//! OpenSSL refuses every client once the CRL's `nextUpdate` has passed or while its
//! `thisUpdate` is in the future; hence `thisUpdate` is back-dated by [`CLOCK_SKEW`] and the
//! default `nextUpdate` is the CA's own expiry.

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use super::ca::{CLOCK_SKEW, pem_encode};
use super::{CredentialsError, DeviceCa, serial};

/// A signed CRL and what it holds.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    pub pem: String,
    /// The CRL number (big-endian).
    pub number: Vec<u8>,
    /// Serials of the revoked certificates (canonical big-endian).
    pub revoked: Vec<Vec<u8>>,
}

/// The outcome of [`revoke`].
#[derive(Debug, Clone)]
pub enum Revocation {
    /// The serial was added: write this CRL.
    Added(SignedCrl),
    /// The serial was already in the CRL: nothing to write.
    AlreadyRevoked,
}

/// An empty CRL (number 1) of `ca`, valid from `now` until `next_update`.
pub fn empty_crl(
    ca: &DeviceCa,
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<SignedCrl, CredentialsError> {
    sign(ca, vec![1], Vec::new(), now, next_update)
}

/// Adds `serial` to `existing` (the current CRL in PEM, or `None` to start one), which must be
/// `ca`'s: its issuer and signature are checked so that a CRL of another CA is never replaced.
pub fn revoke(
    ca: &DeviceCa,
    existing: Option<&str>,
    serial_number: &[u8],
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<Revocation, CredentialsError> {
    let wanted = serial::canonical(serial_number);
    if wanted.is_empty() {
        return Err(CredentialsError::InvalidSerial(
            serial::to_hex(serial_number),
            "zero is no certificate's serial".into(),
        ));
    }
    let (number, mut entries) = match existing {
        Some(pem) => parse_own_crl(ca, pem)?,
        None => (vec![0], Vec::new()),
    };
    if entries
        .iter()
        .any(|e| serial::canonical(&e.serial_number.to_bytes()) == wanted)
    {
        return Ok(Revocation::AlreadyRevoked);
    }
    entries.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(wanted),
        revocation_time: now,
        reason_code: None,
        invalidity_date: None,
    });
    sign(ca, increment(&number), entries, now, next_update).map(Revocation::Added)
}

/// Reads `pem` as a CRL that `ca` signed: its number and entries.
fn parse_own_crl(
    ca: &DeviceCa,
    pem: &str,
) -> Result<(Vec<u8>, Vec<RevokedCertParams>), CredentialsError> {
    let invalid = |m: String| CredentialsError::InvalidCrl(m);
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid(format!("not PEM: {e}")))?;
    if block.label != "X509 CRL" {
        return Err(invalid(format!(
            "the PEM block is {:?}, not X509 CRL",
            block.label
        )));
    }
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents)
        .map_err(|e| invalid(format!("not a CRL: {e}")))?;
    let ca_cert = ca.x509();
    if crl.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(invalid(format!(
            "it was issued by {:?}, not by this CA ({:?})",
            crl.issuer().to_string(),
            ca_cert.subject().to_string()
        )));
    }
    crl.verify_signature(ca_cert.public_key())
        .map_err(|_| invalid("its signature does not verify with this CA's key".into()))?;
    let number = crl
        .crl_number()
        .map(|n| n.to_bytes_be())
        .unwrap_or_else(|| vec![0]);
    let entries = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let mut reason_code = None;
            let mut invalidity_date = None;
            for ext in entry.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::ReasonCode(code) => reason_code = revocation_reason(code.0),
                    ParsedExtension::InvalidityDate(date) => {
                        invalidity_date = Some(date.to_datetime());
                    }
                    _ => {}
                }
            }
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial::canonical(entry.raw_serial())),
                revocation_time: entry.revocation_date.to_datetime(),
                reason_code,
                invalidity_date,
            }
        })
        .collect();
    Ok((number, entries))
}

fn sign(
    ca: &DeviceCa,
    number: Vec<u8>,
    revoked_certs: Vec<RevokedCertParams>,
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<SignedCrl, CredentialsError> {
    let this_update = now - CLOCK_SKEW;
    if next_update <= now {
        return Err(CredentialsError::InvalidCrl(format!(
            "the next update ({next_update}) must be in the future"
        )));
    }
    // The authority key identifier must equal the CA certificate's subject key identifier, or
    // OpenSSL may not match the CRL to the CA (a CA made by openssl or cert-manager derives it
    // differently from rcgen).
    let ca_cert = ca.x509();
    let key_identifier_method = ca_cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    let revoked: Vec<Vec<u8>> = revoked_certs
        .iter()
        .map(|e| serial::canonical(&e.serial_number.to_bytes()).to_vec())
        .collect();
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from_slice(&number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method,
    };
    let crl = params.signed_by(ca.issuer())?;
    Ok(SignedCrl {
        pem: pem_encode("X509 CRL", crl.der()),
        number,
        revoked,
    })
}

/// `number + 1` for a big-endian unsigned integer.
fn increment(number: &[u8]) -> Vec<u8> {
    let mut out = number.to_vec();
    for byte in out.iter_mut().rev() {
        let (sum, carry) = byte.overflowing_add(1);
        *byte = sum;
        if !carry {
            return serial::canonical(&out).to_vec();
        }
    }
    out.insert(0, 1);
    out
}

fn revocation_reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        0 => RevocationReason::Unspecified,
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn parse(pem: &str) -> (Vec<u8>, Vec<Vec<u8>>, OffsetDateTime) {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&block.contents).unwrap();
        let number = crl.crl_number().unwrap().to_bytes_be();
        let serials = crl
            .iter_revoked_certificates()
            .map(|e| serial::canonical(e.raw_serial()).to_vec())
            .collect();
        (number, serials, crl.next_update().unwrap().to_datetime())
    }

    #[test]
    fn revocations_accumulate_and_the_number_grows() {
        let ca = DeviceCa::generate("crl test", Duration::days(30), now()).unwrap();
        let next = ca.not_after();
        let empty = empty_crl(&ca, now(), next).unwrap();
        assert!(empty.pem.starts_with("-----BEGIN X509 CRL-----\n"));
        let (number, serials, next_update) = parse(&empty.pem);
        assert_eq!((number, serials.len()), (vec![1], 0));
        assert_eq!(next_update, next);

        let a = ca.issue_device("a", Duration::days(1), now()).unwrap();
        let b = ca.issue_device("b", Duration::days(1), now()).unwrap();
        let Revocation::Added(one) = revoke(&ca, Some(&empty.pem), &a.serial, now(), next).unwrap()
        else {
            panic!("a was not revoked yet");
        };
        let Revocation::Added(two) = revoke(&ca, Some(&one.pem), &b.serial, now(), next).unwrap()
        else {
            panic!("b was not revoked yet");
        };
        let (number, serials, _) = parse(&two.pem);
        assert_eq!(number, vec![3]);
        assert_eq!(serials, vec![a.serial.clone(), b.serial.clone()]);
        assert_eq!(two.revoked, serials);
        assert!(matches!(
            revoke(&ca, Some(&two.pem), &a.serial, now(), next).unwrap(),
            Revocation::AlreadyRevoked
        ));
    }

    #[test]
    fn a_crl_of_another_ca_is_never_replaced() {
        let ca = DeviceCa::generate("same name", Duration::days(30), now()).unwrap();
        let other = DeviceCa::generate("same name", Duration::days(30), now()).unwrap();
        let foreign = empty_crl(&other, now(), other.not_after()).unwrap();
        let err = revoke(&ca, Some(&foreign.pem), &[1], now(), ca.not_after()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        let renamed = DeviceCa::generate("other name", Duration::days(30), now()).unwrap();
        let foreign = empty_crl(&renamed, now(), renamed.not_after()).unwrap();
        let err = revoke(&ca, Some(&foreign.pem), &[1], now(), ca.not_after()).unwrap_err();
        assert!(err.to_string().contains("not by this CA"), "{err}");
    }

    #[test]
    fn a_missing_crl_is_started_and_a_past_next_update_refused() {
        let ca = DeviceCa::generate("crl test", Duration::days(30), now()).unwrap();
        let Revocation::Added(crl) = revoke(&ca, None, &[0x42], now(), ca.not_after()).unwrap()
        else {
            panic!("nothing was revoked");
        };
        assert_eq!(parse(&crl.pem).0, vec![1]);
        assert!(revoke(&ca, None, &[0x42], now(), now() - Duration::days(1)).is_err());
        assert!(revoke(&ca, None, &[0], now(), ca.not_after()).is_err());
    }

    #[test]
    fn crl_numbers_increment_with_carry() {
        assert_eq!(increment(&[0]), vec![1]);
        assert_eq!(increment(&[0x01, 0xff]), vec![0x02, 0x00]);
        assert_eq!(increment(&[0xff]), vec![0x01, 0x00]);
    }
}
