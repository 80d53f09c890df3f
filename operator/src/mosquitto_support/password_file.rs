//! Mosquitto password files in the format `mosquitto_passwd` (2.0) writes:
//! `user:$7$<iterations>$<base64 salt, 12 bytes>$<base64 PBKDF2-HMAC-SHA512, 64 bytes>`,
//! standard base64 with padding, 101 iterations (Mosquitto's `PW_DEFAULT_ITERATIONS`).

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations `mosquitto_passwd` uses by default.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length of Mosquitto's `$7$` hashes.
pub const SALT_LEN: usize = 12;
/// Output length of PBKDF2-HMAC-SHA512.
const HASH_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error(
        "username {0:?} cannot go in a Mosquitto password file: use 1-65535 bytes without ':', \
         whitespace or control characters, not starting with '#'"
    )]
    InvalidUsername(String),
    #[error("username {0:?} is given twice")]
    DuplicateUsername(String),
    #[error("the password of {0:?} is empty")]
    EmptyPassword(String),
    #[error("random number generator failed")]
    Random,
}

/// The `$7$` hash of `password` with `salt` (what follows `user:` in the file).
pub fn hash_with_salt(password: &[u8], salt: &[u8; SALT_LEN], iterations: NonZeroU32) -> String {
    let mut hash = [0u8; HASH_LEN];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        salt,
        password,
        &mut hash,
    );
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

/// The `$7$` hash of `password` with a new random salt and the default iterations.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordFileError> {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PasswordFileError::Random)?;
    let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).expect("non-zero");
    Ok(hash_with_salt(password, &salt, iterations))
}

/// Whether Mosquitto reads `username` back from a password file line as it is: the broker
/// splits lines at ':' and trims blanks, and skips lines starting with '#'.
pub fn validate_username(username: &str) -> Result<(), PasswordFileError> {
    let ok = !username.is_empty()
        && username.len() <= 65_535
        && !username.starts_with('#')
        && !username
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(PasswordFileError::InvalidUsername(username.to_string()))
    }
}

/// The password held in a password file: its content without one trailing line break (files
/// written by `echo` or editors end with one; Kubernetes Secrets usually do not).
pub fn password_from_file_content(content: &[u8]) -> &[u8] {
    content
        .strip_suffix(b"\r\n")
        .or_else(|| content.strip_suffix(b"\n"))
        .unwrap_or(content)
}

/// Whether `hash` (a `$7$` hash as in the file) is the hash of `password`.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    let mut parts = hash.split('$');
    let (Some(""), Some("7"), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Some(iterations), Ok(salt), Ok(expected)) = (
        iterations.parse().ok().and_then(NonZeroU32::new),
        STANDARD.decode(salt),
        STANDARD.decode(expected),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password,
        &expected,
    )
    .is_ok()
}

/// A whole password file for `users` (username, password), one line each in the given order.
///
/// A user whose line in `previous` (the file as it was) still verifies with the same password
/// keeps that line: regenerating an unchanged file gives the same bytes, so a reload sidecar
/// watching it has nothing to do.
pub fn render(
    users: &[(String, Vec<u8>)],
    previous: Option<&str>,
) -> Result<String, PasswordFileError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for (username, password) in users {
        validate_username(username)?;
        if !seen.insert(username.as_str()) {
            return Err(PasswordFileError::DuplicateUsername(username.clone()));
        }
        if password.is_empty() {
            return Err(PasswordFileError::EmptyPassword(username.clone()));
        }
        let kept = previous.and_then(|file| {
            file.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(user, hash)| user.trim() == username && verify(hash.trim(), password))
                .map(|(_, hash)| hash.trim().to_string())
        });
        let hash = match kept {
            Some(hash) => hash,
            None => hash_password(password)?,
        };
        out.push_str(username);
        out.push(':');
        out.push_str(&hash);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Salt 00 01 .. 0b, password `device-pass`, 101 iterations: computed once with Python's
    /// `hashlib.pbkdf2_hmac("sha512", ...)`; the integration test (tests/device_credentials.rs)
    /// checks that the broker accepts hashes made this way.
    #[test]
    fn matches_a_known_pbkdf2_sha512_vector() {
        let salt: [u8; SALT_LEN] = std::array::from_fn(|i| i as u8);
        let hash = hash_with_salt(b"device-pass", &salt, NonZeroU32::new(101).unwrap());
        assert_eq!(
            hash,
            "$7$101$AAECAwQFBgcICQoL$r6gOgSCSclaNAifoHMai28Gu4CuvkK6bcZYDAFeU7RTJSNbPCzRV6Ib8E\
             HGZtCw+YfClZVHmrS563kHW4BCZ9w=="
        );
    }

    /// A line `mosquitto_passwd -b` (2.0.21) wrote for alice / `secret`: the same salt gives
    /// the same hash.
    #[test]
    fn reproduces_a_line_written_by_mosquitto_passwd() {
        let line = "alice:$7$101$rPxy4pF9P4HKsiA6$zIN4uuLn5o0iBLLnGqmq1+dYUBqZKEWU2w/MrUlpd2slxAuBO\
                    Sb3NELja06Np0aN6HAnidZ95qf+sA8Uj2yRKg==";
        let salt: [u8; SALT_LEN] = STANDARD
            .decode("rPxy4pF9P4HKsiA6")
            .unwrap()
            .try_into()
            .unwrap();
        let hash = hash_with_salt(b"secret", &salt, NonZeroU32::new(101).unwrap());
        assert_eq!(format!("alice:{hash}"), line);
    }

    #[test]
    fn new_hashes_have_mosquittos_shape_and_fresh_salts() {
        let a = hash_password(b"pw").unwrap();
        let b = hash_password(b"pw").unwrap();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('$').collect();
        assert_eq!(parts.len(), 5, "{a}");
        assert_eq!((parts[0], parts[1], parts[2]), ("", "7", "101"));
        assert_eq!(STANDARD.decode(parts[3]).unwrap().len(), SALT_LEN);
        assert_eq!(STANDARD.decode(parts[4]).unwrap().len(), HASH_LEN);
    }

    #[test]
    fn render_writes_one_line_per_user_and_refuses_what_mosquitto_would_misread() {
        let file = render(
            &[
                ("iot-bridge".into(), b"b".to_vec()),
                ("iot-simulator".into(), b"s".to_vec()),
            ],
            None,
        )
        .unwrap();
        let users: Vec<&str> = file.lines().map(|l| l.split_once(':').unwrap().0).collect();
        assert_eq!(users, ["iot-bridge", "iot-simulator"]);
        for bad in ["", "a:b", "a b", "#a", "a\n", "tab\t"] {
            assert!(
                matches!(
                    render(&[(bad.into(), b"p".to_vec())], None),
                    Err(PasswordFileError::InvalidUsername(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            render(
                &[("a".into(), b"1".to_vec()), ("a".into(), b"2".to_vec())],
                None
            ),
            Err(PasswordFileError::DuplicateUsername(_))
        ));
        assert!(matches!(
            render(&[("a".into(), Vec::new())], None),
            Err(PasswordFileError::EmptyPassword(_))
        ));
    }

    #[test]
    fn verify_accepts_the_right_password_only() {
        let line_hash = "$7$101$rPxy4pF9P4HKsiA6$zIN4uuLn5o0iBLLnGqmq1+dYUBqZKEWU2w/MrUlpd2slxAuBO\
                         Sb3NELja06Np0aN6HAnidZ95qf+sA8Uj2yRKg==";
        assert!(verify(line_hash, b"secret"));
        assert!(!verify(line_hash, b"Secret"));
        assert!(!verify("$6$abc$def", b"secret"));
        assert!(!verify("$7$0$AAAA$AAAA", b"secret"));
        assert!(verify(&hash_password(b"pw").unwrap(), b"pw"));
    }

    #[test]
    fn regenerating_with_unchanged_passwords_gives_the_same_file() {
        let users = vec![
            ("iot-bridge".to_string(), b"b".to_vec()),
            ("iot-simulator".to_string(), b"s".to_vec()),
        ];
        let first = render(&users, None).unwrap();
        assert_eq!(render(&users, Some(&first)).unwrap(), first);
        let changed = vec![
            users[0].clone(),
            ("iot-simulator".to_string(), b"new".to_vec()),
        ];
        let second = render(&changed, Some(&first)).unwrap();
        assert_eq!(second.lines().next(), first.lines().next());
        assert_ne!(second.lines().nth(1), first.lines().nth(1));
        assert!(verify(
            second.lines().nth(1).unwrap().split_once(':').unwrap().1,
            b"new"
        ));
    }

    #[test]
    fn one_trailing_line_break_is_not_part_of_the_password() {
        assert_eq!(password_from_file_content(b"pw\n"), b"pw");
        assert_eq!(password_from_file_content(b"pw\r\n"), b"pw");
        assert_eq!(password_from_file_content(b"pw"), b"pw");
        assert_eq!(password_from_file_content(b"pw\n\n"), b"pw\n");
    }
}
