//! kopia's `fs.UTCTimestamp`: nanoseconds since the Unix epoch as an `i64`, in JSON a UTC
//! RFC 3339 time with trailing zeros of the fraction trimmed.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::error::{FormatError, Result};

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Unix seconds of Go's zero `time.Time`, 0001-01-01T00:00:00Z.
const GO_ZERO_TIME_UNIX_SECS: i64 = -62_135_596_800;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTimestamp(pub i64);

impl UtcTimestamp {
    pub const EPOCH: UtcTimestamp = UtcTimestamp(0);

    /// What Go's zero `time.Time` becomes in kopia: `UnixNano` wraps around, giving
    /// 1754-08-30T22:43:41.128654848Z. Kopia reads a JSON `null` time as this value.
    pub const GO_ZERO_TIME: UtcTimestamp = UtcTimestamp::from_unix(GO_ZERO_TIME_UNIX_SECS, 0);

    /// Converts like Go's `UnixNano`: wrapping, so times outside ~1678–2262 wrap as in kopia.
    pub const fn from_unix(secs: i64, nanos: u32) -> Self {
        UtcTimestamp(secs.wrapping_mul(NANOS_PER_SEC).wrapping_add(nanos as i64))
    }

    pub const fn unix_secs(self) -> i64 {
        self.0.div_euclid(NANOS_PER_SEC)
    }

    pub const fn subsec_nanos(self) -> u32 {
        self.0.rem_euclid(NANOS_PER_SEC) as u32
    }

    /// The JSON text (without quotes), e.g. `2024-05-01T10:00:02.5Z`.
    pub fn to_rfc3339(self) -> String {
        format_unix(self.unix_secs(), self.subsec_nanos())
    }

    /// Parses any time Go's `time.Time` JSON reader accepts, with any UTC offset.
    pub fn parse_rfc3339(s: &str) -> Result<Self> {
        let (secs, nanos) = parse_go_time(s)?;
        Ok(UtcTimestamp::from_unix(secs, nanos))
    }
}

impl fmt::Display for UtcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Reads like kopia: a JSON string time, or `null` for Go's (wrapped) zero time.
impl<'de> Deserialize<'de> for UtcTimestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct TimeText;
        impl Visitor<'_> for TimeText {
            type Value = UtcTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 time string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<UtcTimestamp, E> {
                UtcTimestamp::parse_rfc3339(s).map_err(E::custom)
            }
        }
        struct NullableTime;
        impl<'de> Visitor<'de> for NullableTime {
            type Value = UtcTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 time string or null")
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<UtcTimestamp, E> {
                Ok(UtcTimestamp::GO_ZERO_TIME)
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<UtcTimestamp, E> {
                Ok(UtcTimestamp::GO_ZERO_TIME)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<UtcTimestamp, D::Error> {
                d.deserialize_str(TimeText)
            }
        }
        d.deserialize_option(NullableTime)
    }
}

/// Formats Unix seconds + nanoseconds like Go's `time.Time.MarshalJSON` in UTC. Callers keep the
/// year within 0..=9999 (every `UtcTimestamp` is).
pub(crate) fn format_unix(secs: i64, nanos: u32) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!(".{nanos:09}");
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses the RFC 3339 dialect Go's `time.Time` JSON reader accepts and returns Unix seconds and
/// nanoseconds. Besides strict RFC 3339 Go allows a one-digit hour, `,` before the fraction,
/// fractions longer than 9 digits (truncated) and offsets up to `±24:60`.
pub(crate) fn parse_go_time(s: &str) -> Result<(i64, u32)> {
    parse_time(s.as_bytes())
        .ok_or_else(|| FormatError::malformed("time", format!("{s:?} is not an RFC 3339 time")))
}

fn parse_time(b: &[u8]) -> Option<(i64, u32)> {
    let mut p = Cursor { b, pos: 0 };
    let year = p.number(4, 4)?;
    p.expect(b'-')?;
    let month = p.number(2, 2)?;
    p.expect(b'-')?;
    let day = p.number(2, 2)?;
    p.expect(b'T')?;
    let hour = p.number(1, 2)?;
    p.expect(b':')?;
    let minute = p.number(2, 2)?;
    p.expect(b':')?;
    let second = p.number(2, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut nanos = 0u32;
    if matches!(p.peek(), Some(b'.' | b',')) && p.b.get(p.pos + 1).is_some_and(u8::is_ascii_digit) {
        p.pos += 1;
        let mut digits = 0;
        while let Some(d) = p.peek().filter(u8::is_ascii_digit) {
            if digits < 9 {
                nanos = nanos * 10 + u32::from(d - b'0');
                digits += 1;
            }
            p.pos += 1;
        }
        nanos *= 10u32.pow(9 - digits);
    }
    let offset = match p.next()? {
        b'Z' => 0,
        sign @ (b'+' | b'-') => {
            let hh = p.number(2, 2)?;
            p.expect(b':')?;
            let mm = p.number(2, 2)?;
            if hh > 24 || mm > 60 {
                return None;
            }
            let offset = hh * 3600 + mm * 60;
            if sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    if p.pos != b.len() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset,
        nanos,
    ))
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// Reads `min..=max` decimal digits (greedy).
    fn number(&mut self, min: usize, max: usize) -> Option<i64> {
        let mut v = 0i64;
        let mut n = 0;
        while n < max {
            match self.peek() {
                Some(d @ b'0'..=b'9') => {
                    v = v * 10 + i64::from(d - b'0');
                    self.pos += 1;
                    n += 1;
                }
                _ => break,
            }
        }
        (n >= min).then_some(v)
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kopia() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (1, "1970-01-01T00:00:00.000000001Z"),
            (-1, "1969-12-31T23:59:59.999999999Z"),
            (1_714_557_600_500_000_000, "2024-05-01T10:00:00.5Z"),
            (1_714_557_600_120_000_000, "2024-05-01T10:00:00.12Z"),
            (i64::MAX, "2262-04-11T23:47:16.854775807Z"),
            (i64::MIN, "1677-09-21T00:12:43.145224192Z"),
        ];
        for (ns, text) in cases {
            assert_eq!(UtcTimestamp(ns).to_rfc3339(), text);
            assert_eq!(
                UtcTimestamp::parse_rfc3339(text).unwrap(),
                UtcTimestamp(ns),
                "{text}"
            );
        }
        assert_eq!(
            UtcTimestamp::GO_ZERO_TIME.to_rfc3339(),
            "1754-08-30T22:43:41.128654848Z"
        );
        assert_eq!(
            UtcTimestamp::parse_rfc3339("0001-01-01T00:00:00Z").unwrap(),
            UtcTimestamp::GO_ZERO_TIME
        );
    }

    #[test]
    fn parses_go_dialect() {
        let p = |s: &str| UtcTimestamp::parse_rfc3339(s).map(UtcTimestamp::to_rfc3339);
        assert_eq!(
            p("2022-03-22T22:45:22.159239913-07:00").unwrap(),
            "2022-03-23T05:45:22.159239913Z"
        );
        assert_eq!(p("2024-05-01T1:00:00Z").unwrap(), "2024-05-01T01:00:00Z");
        assert_eq!(
            p("2024-05-01T10:00:00,5Z").unwrap(),
            "2024-05-01T10:00:00.5Z"
        );
        assert_eq!(
            p("2024-05-01T10:00:00.1234567891Z").unwrap(),
            "2024-05-01T10:00:00.123456789Z"
        );
        assert_eq!(
            p("2024-05-01T10:00:00+24:00").unwrap(),
            "2024-04-30T10:00:00Z"
        );
        assert_eq!(p("2024-02-29T00:00:00Z").unwrap(), "2024-02-29T00:00:00Z");
        for bad in [
            "2024-05-01t10:00:00z",
            "2024-05-01 10:00:00Z",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:60Z",
            "2024-05-01T10:00:00.Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "10000-01-01T00:00:00Z",
            "2024-05-01T10:00:00+0200",
            "2024-05-01T10:00:00+25:00",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 1, 10_957, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
