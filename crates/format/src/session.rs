//! Session IDs and the JSON of session markers (spec §12).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::gotime;

/// Blob-ID prefix of session markers, and first letter of every session ID.
pub const SESSION_PREFIX: &str = "s";

/// Nanoseconds in kopia's 30-day session "month".
const MONTH_NANOS: i64 = 30 * 24 * 3600 * 1_000_000_000;

/// `s` + hex of 8 random bytes + unpadded hex of the 30-day periods since 2000-01-01 UTC.
pub fn session_id(random: [u8; 8], now: DateTime<Utc>) -> String {
    let base = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
        .expect("valid constant")
        .with_timezone(&Utc);
    let nanos = |t: DateTime<Utc>| {
        i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos())
    };
    // Go's Time.Sub saturates at the Duration range, and its integer division truncates toward zero.
    let elapsed =
        (nanos(now) - nanos(base)).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let month = elapsed / MONTH_NANOS;
    let sign = if month < 0 { "-" } else { "" };
    format!(
        "{SESSION_PREFIX}{}{sign}{:x}",
        hex::encode(random),
        month.unsigned_abs()
    )
}

/// The session ID of a pack or index blob: the first `-`-separated part after the first that
/// starts with `s`.
pub fn session_id_of_blob(blob_id: &str) -> Option<&str> {
    blob_id
        .split('-')
        .skip(1)
        .find(|part| part.starts_with(SESSION_PREFIX))
}

/// The JSON body of a session marker blob (before blob crypto).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "startTime", with = "crate::gotime", default = "gotime::zero")]
    pub start_time: DateTime<Utc>,
    #[serde(
        rename = "checkpointTime",
        with = "crate::gotime",
        default = "gotime::zero"
    )]
    pub checkpoint_time: DateTime<Utc>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub hostname: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn session_ids_match_spec_examples() {
        let r = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        assert_eq!(
            session_id(r, Utc.with_ymd_and_hms(2025, 6, 15, 0, 0, 0).unwrap()),
            "s0123456789abcdef135"
        );
        assert_eq!(
            session_id(r, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            "s0123456789abcdef13c"
        );
        // Real kopia v0.22.3 blobs written on 2026-11-22 end in 147.
        assert!(
            session_id(r, Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap()).ends_with("147")
        );
        assert_eq!(
            session_id([0; 8], Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap()),
            "s00000000000000000"
        );
        // Before 2000 Go's %x prints a negative number; within the first month it truncates to 0.
        assert_eq!(
            session_id([0; 8], Utc.with_ymd_and_hms(1999, 12, 31, 0, 0, 0).unwrap()),
            "s00000000000000000"
        );
        assert_eq!(
            session_id([0; 8], Utc.with_ymd_and_hms(1999, 11, 1, 0, 0, 0).unwrap()),
            "s0000000000000000-2"
        );
    }

    #[test]
    fn kopia_session_id_from_blob_id_cases() {
        for (blob, want) in [
            ("pdeadbeef", None),
            ("pdeadbeef-", None),
            ("pdeadbeef-whatever", None),
            ("pdeadbeef-s01", Some("s01")),
            ("sdeadbeef-s01", Some("s01")),
            (
                "xn0_abcd-s0123456789abcdef13c-c1",
                Some("s0123456789abcdef13c"),
            ),
        ] {
            assert_eq!(session_id_of_blob(blob), want, "{blob}");
        }
    }

    #[test]
    fn session_info_json_uses_kopia_names() {
        let info = SessionInfo {
            id: "s0123456789abcdef13c".into(),
            start_time: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            checkpoint_time: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 1).unwrap()
                + chrono::Duration::milliseconds(250),
            username: "user".into(),
            hostname: "host".into(),
        };
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(
            json,
            r#"{"id":"s0123456789abcdef13c","startTime":"2026-01-01T00:00:00Z","checkpointTime":"2026-01-01T00:00:01.25Z","username":"user","hostname":"host"}"#
        );
        assert_eq!(serde_json::from_str::<SessionInfo>(&json).unwrap(), info);
        let local: SessionInfo = serde_json::from_str(
            r#"{"id":"s1","startTime":"2026-01-01T01:00:00+01:00","extra":1}"#,
        )
        .unwrap();
        assert_eq!(local.start_time, info.start_time);
        assert_eq!(local.checkpoint_time, gotime::zero());
    }
}
