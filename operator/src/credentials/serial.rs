//! Certificate serial numbers: random ones for new certificates, and the hex form people pass
//! to `revoke --serial` (as printed by `issue`, or by `openssl x509 -serial`).

use ring::rand::{SecureRandom, SystemRandom};

use super::CredentialsError;

/// Octets of a new serial: 16 random bytes, well under RFC 5280's limit of 20.
const SERIAL_LEN: usize = 16;

/// A new random positive serial number (big-endian bytes; the top bit is clear so that the DER
/// integer needs no padding, the next bit is set so that it always has 16 octets).
pub fn random_serial() -> Result<Vec<u8>, CredentialsError> {
    let mut bytes = vec![0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CredentialsError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(bytes)
}

/// The serial's canonical bytes: big-endian without leading zero octets (DER adds one back for
/// a set top bit; comparing these is comparing the integers).
pub fn canonical(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Lowercase hex of the serial's canonical bytes, the form `issue` prints and `revoke` takes.
pub fn to_hex(bytes: &[u8]) -> String {
    let canonical = canonical(bytes);
    if canonical.is_empty() {
        return "00".to_string();
    }
    canonical.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a serial in hex: any case, optional `0x` prefix or `serial=` (openssl's output),
/// optional `:` separators.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, CredentialsError> {
    let invalid = |reason: &str| CredentialsError::InvalidSerial(text.to_string(), reason.into());
    let trimmed = text.trim();
    let trimmed = trimmed.strip_prefix("serial=").unwrap_or(trimmed);
    let trimmed = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed);
    let digits: String = trimmed.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() {
        return Err(invalid("it is empty"));
    }
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(invalid(&format!("{c:?} is not a hex digit")));
    }
    // An odd number of digits has an implied leading zero.
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("checked hex digits"))
        .collect();
    if canonical(&bytes).len() > 20 {
        return Err(invalid("longer than 20 octets (RFC 5280)"));
    }
    Ok(canonical(&bytes).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_sixteen_octets_and_differ() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_eq!(a.len(), SERIAL_LEN);
        assert!(a[0] & 0x80 == 0 && a[0] & 0x40 != 0);
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trips_in_the_forms_people_paste() {
        let serial = vec![0x4a, 0x00, 0xff, 0x01];
        assert_eq!(to_hex(&serial), "4a00ff01");
        for text in [
            "4a00ff01",
            "4A00FF01",
            "0x4a00ff01",
            "4a:00:ff:01",
            "serial=4A00FF01",
            "004a00ff01",
            " 4a00ff01\n",
        ] {
            assert_eq!(parse_hex(text).unwrap(), serial, "{text:?}");
        }
        assert_eq!(parse_hex("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(to_hex(&[0, 0, 0x80]), "80");
    }

    #[test]
    fn malformed_serials_are_refused() {
        for text in ["", "0x", "xyz", "12 34", &"ab".repeat(21)] {
            assert!(parse_hex(text).is_err(), "{text:?}");
        }
    }
}
