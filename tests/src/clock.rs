//! Wall-clock times as tests compare them: seconds since the Unix epoch, the
//! unit of the `date +%s.%N` stamps test functions write.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Parses an RFC 3339 timestamp (`2026-11-26T08:49:14.039Z`, any offset) into
/// seconds since the Unix epoch; `None` when it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10Z"), Some(10.0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:10+01:00"), Some(10.0));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10.5Z"), Some(10.5));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01 00:00:10"), None);
        assert_eq!(parse_rfc3339("10"), None);
        assert_eq!(parse_rfc3339(""), None);
    }
}
