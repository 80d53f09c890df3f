//! Timestamps on the wire: RFC 3339 in UTC with microseconds (`2025-08-20T18:00:54.117782Z`), the
//! seed's format, but always with the `Z` that the seed sometimes left out.

use jiff::Timestamp;

/// The current time.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// `ts` as RFC 3339 UTC with microseconds.
pub fn rfc3339(ts: Timestamp) -> String {
    format!("{ts:.6}")
}

/// Parses an RFC 3339 timestamp with an explicit offset (`Z` or `+hh:mm`); `None` otherwise.
pub fn parse(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// Seconds from `earlier` to `later`, never negative (device clocks may run ahead).
pub fn seconds_between(earlier: Timestamp, later: Timestamp) -> f64 {
    later.duration_since(earlier).as_secs_f64().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_microseconds() {
        let ts: Timestamp = "2025-08-20T18:00:54.117782Z".parse().unwrap();
        assert_eq!(rfc3339(ts), "2025-08-20T18:00:54.117782Z");
        let whole: Timestamp = "2025-08-20T18:00:54Z".parse().unwrap();
        assert_eq!(rfc3339(whole), "2025-08-20T18:00:54.000000Z");
    }

    #[test]
    fn parses_offsets_and_rejects_naive_times() {
        assert_eq!(
            parse("2025-08-20T20:00:54+02:00"),
            parse("2025-08-20T18:00:54Z")
        );
        assert!(parse("2025-08-20T18:00:54.117782").is_none());
        assert!(parse("yesterday").is_none());
    }

    #[test]
    fn latency_is_never_negative() {
        let a = parse("2025-08-20T18:00:54Z").unwrap();
        let b = parse("2025-08-20T18:00:55.5Z").unwrap();
        assert_eq!(seconds_between(a, b), 1.5);
        assert_eq!(seconds_between(b, a), 0.0);
    }
}
