//! Go `time.Time` JSON: RFC 3339 with up to 9 fractional digits, trailing zeros trimmed, `Z` for
//! UTC. Use as `#[serde(with = "crate::gotime")]` on a `DateTime<Utc>` field.
//!
//! Reading accepts any offset (kopia writes local time, e.g. `+02:00`) and maps `null` to Go's
//! zero time, as Go does for a missing value.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};

use crate::error::{FormatError, Result};

/// Go's zero `time.Time`: 0001-01-01T00:00:00Z.
pub fn zero() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .expect("valid date")
        .and_hms_opt(0, 0, 0)
        .expect("valid time")
        .and_utc()
}

/// Formats like Go's `time.Time.MarshalJSON` (without the quotes). Go refuses years outside
/// 0..=9999, and so do we.
pub fn format(t: &DateTime<Utc>) -> Result<String> {
    if !(0..=9999).contains(&t.year()) {
        return Err(FormatError::Limit(format!(
            "time {t} has a year outside of range [0,9999]"
        )));
    }
    // chrono encodes a leap second as nanos >= 1e9; Go has no leap seconds.
    let nanos = t.nanosecond().min(999_999_999);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Ok(s)
}

/// Parses an RFC 3339 time with any offset and converts it to UTC.
pub fn parse(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| FormatError::malformed("time", format!("{s:?}: {e}")))
}

pub fn serialize<S: Serializer>(
    t: &DateTime<Utc>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(t).map_err(serde::ser::Error::custom)?)
}

pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<DateTime<Utc>, D::Error> {
    match Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)? {
        None => Ok(zero()),
        Some(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_like_go() {
        let t = Utc.with_ymd_and_hms(2025, 6, 15, 12, 34, 56).unwrap();
        assert_eq!(format(&t).unwrap(), "2025-06-15T12:34:56Z");
        let t = t + chrono::Duration::nanoseconds(120_000_000);
        assert_eq!(format(&t).unwrap(), "2025-06-15T12:34:56.12Z");
        let t = t + chrono::Duration::nanoseconds(3);
        assert_eq!(format(&t).unwrap(), "2025-06-15T12:34:56.120000003Z");
        assert_eq!(format(&zero()).unwrap(), "0001-01-01T00:00:00Z");
        let far = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert!(format(&far).is_err());
    }

    #[test]
    fn parses_offsets_and_null() {
        let t = parse("2025-06-15T14:34:56.5+02:00").unwrap();
        assert_eq!(format(&t).unwrap(), "2025-06-15T12:34:56.5Z");
        assert!(parse("yesterday").is_err());

        #[derive(serde::Deserialize, serde::Serialize)]
        struct W {
            #[serde(with = "crate::gotime")]
            t: DateTime<Utc>,
        }
        let w: W = serde_json::from_str(r#"{"t":null}"#).unwrap();
        assert_eq!(w.t, zero());
        let w: W = serde_json::from_str(r#"{"t":"2026-01-01T00:00:00.000000001Z"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"t":"2026-01-01T00:00:00.000000001Z"}"#
        );
        assert!(serde_json::from_str::<W>(r#"{"t":5}"#).is_err());
    }
}
