//! Topic names (defined in `iot_model::naming`, re-exported here) and the retention syntax of
//! `spec.topics.retention`.

pub use iot_model::naming::{TopicNames, all_enriched_topic, deadletter_topic};

/// The schema pattern of `spec.topics.retention`: `-1` (keep forever), a number of milliseconds,
/// or a number with a unit `ms`, `s`, `m`, `h`, `d` or `w`.
pub const RETENTION_PATTERN: &str = "^(-1|[0-9]+(ms|s|m|h|d|w)?)$";

/// A retention value that does not follow [`RETENTION_PATTERN`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "retention {0:?} is not a duration: use -1 (forever), milliseconds (\"86400000\") or a number \
     with a unit ms|s|m|h|d|w (\"30d\", \"12h\", \"90m\")"
)]
pub struct RetentionError(pub String);

/// `retention.ms` for a `spec.topics.retention` value: `"30d"` -> 2592000000, `"500"` -> 500,
/// `"-1"` -> -1 (keep forever).
pub fn parse_retention_ms(value: &str) -> Result<i64, RetentionError> {
    let invalid = || RetentionError(value.to_string());
    if value == "-1" {
        return Ok(-1);
    }
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let factor: i64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return Err(invalid()),
    };
    number.checked_mul(factor).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_units() {
        assert_eq!(parse_retention_ms("30d"), Ok(30 * 24 * 3_600_000));
        assert_eq!(parse_retention_ms("12h"), Ok(12 * 3_600_000));
        assert_eq!(parse_retention_ms("90m"), Ok(90 * 60_000));
        assert_eq!(parse_retention_ms("45s"), Ok(45_000));
        assert_eq!(parse_retention_ms("2w"), Ok(2 * 604_800_000));
        assert_eq!(parse_retention_ms("250ms"), Ok(250));
        assert_eq!(parse_retention_ms("86400000"), Ok(86_400_000));
        assert_eq!(parse_retention_ms("-1"), Ok(-1));
    }

    #[test]
    fn retention_rejects_what_the_schema_pattern_rejects() {
        for bad in [
            "",
            "d",
            "30 d",
            "30D",
            "1y",
            "-2",
            "1.5h",
            "30dd",
            "99999999999999999999",
        ] {
            assert!(
                parse_retention_ms(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(
            parse_retention_ms("9223372036854775807w").is_err(),
            "overflow"
        );
    }
}
