//! Which device ids may get a certificate.
//!
//! The id becomes the certificate's CN, which Mosquitto's device listener turns into the MQTT
//! username and client id (`use_identity_as_username`, `use_username_as_clientid`), and the ACL
//! patterns `R/%u/raw` substitute it into a topic. So an id must be exactly one topic level
//! that no wildcard can hide in, and must not collide with the platform's own identities.

use super::CredentialsError;

/// Prefix of the platform's own MQTT identities (`iot-bridge`, `iot-simulator`, ...).
pub const RESERVED_PREFIX: &str = "iot-";

/// Longest id: the upper bound of an X.509 common name (RFC 5280 `ub-common-name`).
pub const MAX_LEN: usize = 64;

/// Checks that `id` may be issued a device certificate.
///
/// Allowed: 1-64 characters of `[A-Za-z0-9._-]`, not only dots (`.` and `..` read as paths), not
/// starting with `iot-` in any letter case (reserved; case-insensitive so that no device can
/// pose as `IOT-bridge` in logs and dashboards).
pub fn validate_device_id(id: &str) -> Result<(), CredentialsError> {
    let invalid = |reason: &str| CredentialsError::InvalidDeviceId {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_LEN {
        return Err(invalid(&format!(
            "it is longer than {MAX_LEN} characters (the limit of a certificate's common name)"
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(&format!(
            "{c:?} is not allowed: a device id is one MQTT topic level of [A-Za-z0-9._-] \
             (no '/', '+', '#', spaces or other characters)"
        )));
    }
    if id.chars().all(|c| c == '.') {
        return Err(invalid("an id of only dots is not allowed"));
    }
    if id
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
    {
        return Err(invalid(&format!(
            "ids starting with {RESERVED_PREFIX:?} are reserved for the platform's own \
             identities (iot-bridge, iot-simulator)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_topic_levels() {
        for id in [
            "sensor-1",
            "A",
            "thermo_42.kitchen",
            "0",
            "iot",
            "iotx-1",
            "my-iot-device",
            ".hidden",
            &"x".repeat(MAX_LEN),
        ] {
            assert!(validate_device_id(id).is_ok(), "{id:?} should be accepted");
        }
    }

    #[test]
    fn refuses_wildcards_separators_and_other_characters() {
        for id in [
            "", "+", "#", "a/b", "/a", "a/", "a+", "a#", "a b", "a\n", "a\0b", "ä", "a:b", "$SYS",
            "a*", ".", "..", "...",
        ] {
            let err = validate_device_id(id).expect_err(id);
            assert!(
                matches!(err, CredentialsError::InvalidDeviceId { .. }),
                "{id:?}: {err}"
            );
        }
        assert!(validate_device_id(&"x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn refuses_reserved_platform_identities_in_any_case() {
        for id in [
            "iot-bridge",
            "iot-simulator",
            "iot-",
            "IOT-x",
            "Iot-anything",
        ] {
            let err = validate_device_id(id).expect_err(id).to_string();
            assert!(err.contains("reserved"), "{id:?}: {err}");
        }
    }

    #[test]
    fn the_error_names_the_id_and_the_offending_character() {
        let err = validate_device_id("room/1").unwrap_err().to_string();
        assert!(err.contains("room/1") && err.contains("'/'"), "{err}");
    }
}
