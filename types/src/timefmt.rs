//! Timestamps as the contract writes them: RFC 3339 strings or integer epoch milliseconds.

use crate::Millis;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// The latest timestamp accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond digits are truncated).
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).ok().filter(|m| *m <= MAX_MILLIS)
}

/// Formats epoch milliseconds as `2026-11-27T12:00:00.000Z`.
pub fn format_rfc3339(ms: Millis) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.min(MAX_MILLIS)) * 1_000_000)
        .ok()
        .and_then(|dt| dt.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses a query-string bound: epoch milliseconds (at most [`MAX_MILLIS`]) or any RFC 3339
/// timestamp, one before 1970 meaning 0 (a bound before every time stockflow holds).
pub fn parse_bound(s: &str) -> Option<Millis> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return s.parse::<u64>().ok().filter(|ms| *ms <= MAX_MILLIS);
    }
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
    Some(u64::try_from(ms.max(0)).unwrap_or(0).min(MAX_MILLIS))
}

/// Parses a query-string timestamp: epoch milliseconds or RFC 3339.
pub fn parse_param(s: &str) -> Option<Millis> {
    match s.parse::<u64>() {
        Ok(ms) if ms <= MAX_MILLIS => Some(ms),
        Ok(_) => None,
        Err(_) => parse_rfc3339(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let ms = 1_795_780_800_123;
        let s = format_rfc3339(ms);
        assert_eq!(s, "2026-11-27T12:00:00.123Z");
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(parse_rfc3339("2026-11-27T13:00:00.123+01:00"), Some(ms));
    }

    #[test]
    fn rejects_nonsense_and_pre_epoch() {
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_param("12"), Some(12));
        assert_eq!(parse_param("99999999999999999"), None);
    }
}
