//! `kopia.maintenance`: the maintenance schedule and run history (spec §15.1), AES-256-GCM under
//! a key from [`crate::format_blob::derive_aux_key`] with [`MAINTENANCE_KEY_PURPOSE`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::encryption::{NONCE_LEN, open_aes256_gcm, seal_aes256_gcm};
use crate::error::{FormatError, Result};
use crate::{gojson, gotime};

pub const MAINTENANCE_BLOB_ID: &str = "kopia.maintenance";
pub const MAINTENANCE_KEY_PURPOSE: &[u8] = b"maintenance schedule";
const MAINTENANCE_AAD: &[u8] = b"maintenance";
/// Kopia keeps this many runs per task, newest first.
pub const MAX_RUNS_PER_TASK: usize = 50;

/// The schedule; `Default` is what a missing blob means.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceSchedule {
    #[serde(
        rename = "nextFullMaintenance",
        with = "crate::gotime",
        default = "gotime::zero"
    )]
    pub next_full_maintenance: DateTime<Utc>,
    #[serde(
        rename = "nextQuickMaintenance",
        with = "crate::gotime",
        default = "gotime::zero"
    )]
    pub next_quick_maintenance: DateTime<Utc>,
    /// Runs per task name (e.g. `snapshot-gc`), newest first. Go sorts map keys, as a BTreeMap does.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        serialize_with = "empty_as_null"
    )]
    pub runs: BTreeMap<String, Vec<RunInfo>>,
    /// Keys this version does not know, written back unchanged.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl Default for MaintenanceSchedule {
    fn default() -> Self {
        MaintenanceSchedule {
            next_full_maintenance: gotime::zero(),
            next_quick_maintenance: gotime::zero(),
            runs: BTreeMap::new(),
            unknown: Map::new(),
        }
    }
}

impl MaintenanceSchedule {
    /// Records a run as kopia does: newest first, at most [`MAX_RUNS_PER_TASK`] kept.
    pub fn report_run(&mut self, task: &str, run: RunInfo) {
        let history = self.runs.entry(task.to_string()).or_default();
        history.insert(0, run);
        history.truncate(MAX_RUNS_PER_TASK);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    #[serde(with = "crate::gotime", default = "gotime::zero")]
    pub start: DateTime<Utc>,
    #[serde(with = "crate::gotime", default = "gotime::zero")]
    pub end: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Kopia's per-run statistics (`[{"kind", "data"}]`, v0.22+), kept opaque.
    #[serde(
        default,
        skip_serializing_if = "extra_is_empty",
        deserialize_with = "null_as_none"
    )]
    pub extra: Option<Value>,
}

fn extra_is_empty(extra: &Option<Value>) -> bool {
    match extra {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go marshals the history kopia never recorded into (a nil map) as `null`.
fn empty_as_null<S: serde::Serializer>(
    runs: &BTreeMap<String, Vec<RunInfo>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if runs.is_empty() {
        s.serialize_none()
    } else {
        runs.serialize(s)
    }
}

fn null_as_none<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()))
}

pub fn decrypt_schedule(bytes: &[u8], key: &[u8; 32]) -> Result<MaintenanceSchedule> {
    if bytes.len() < NONCE_LEN {
        return Err(FormatError::malformed(
            "kopia.maintenance",
            format!("only {} bytes", bytes.len()),
        ));
    }
    let json = open_aes256_gcm(key, MAINTENANCE_AAD, bytes)
        .ok_or_else(|| FormatError::Decrypt("unable to decrypt kopia.maintenance".to_string()))?;
    serde_json::from_slice(&json)
        .map_err(|e| FormatError::malformed("kopia.maintenance", e.to_string()))
}

/// Fails only for a time Go cannot write (year outside 0..=9999).
pub fn encrypt_schedule(
    schedule: &MaintenanceSchedule,
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let json = gojson::to_vec(schedule)?;
    Ok(seal_aes256_gcm(key, nonce, MAINTENANCE_AAD, &json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const KEY: [u8; 32] = [0x11; 32];

    #[test]
    fn json_matches_kopia_layout() {
        let mut s = MaintenanceSchedule {
            next_full_maintenance: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            next_quick_maintenance: Utc.with_ymd_and_hms(2026, 1, 1, 4, 4, 5).unwrap(),
            ..Default::default()
        };
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 3, 4, 5).unwrap();
        s.report_run(
            "snapshot-gc",
            RunInfo {
                start,
                end: start,
                success: true,
                error: String::new(),
                extra: None,
            },
        );
        s.report_run(
            "cleanup-logs",
            RunInfo {
                start,
                end: start,
                success: false,
                error: "x <y>".into(),
                extra: Some(Value::Array(vec![])),
            },
        );
        assert_eq!(
            String::from_utf8(gojson::to_vec(&s).unwrap()).unwrap(),
            concat!(
                r#"{"nextFullMaintenance":"2026-01-02T03:04:05Z","nextQuickMaintenance":"2026-01-01T04:04:05Z","#,
                r#""runs":{"cleanup-logs":[{"start":"2026-01-01T03:04:05Z","end":"2026-01-01T03:04:05Z","#,
                r#""error":"x \u003cy\u003e"}],"snapshot-gc":[{"start":"2026-01-01T03:04:05Z","#,
                r#""end":"2026-01-01T03:04:05Z","success":true}]}}"#
            )
        );
    }

    #[test]
    fn round_trip_keeps_unknown_and_extra() {
        let json = br#"{"nextFullMaintenance":"2026-01-02T05:04:05.5+02:00","nextQuickMaintenance":"0001-01-01T00:00:00Z","runs":{"t":[{"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","success":true,"extra":[{"kind":"k","data":{"n":1}}]}]},"future":true}"#;
        let s: MaintenanceSchedule = serde_json::from_slice(json).unwrap();
        assert_eq!(
            s.next_full_maintenance,
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::milliseconds(500)
        );
        assert_eq!(s.unknown.get("future"), Some(&Value::Bool(true)));
        let sealed = encrypt_schedule(&s, &KEY, [5; 12]).unwrap();
        assert_eq!(decrypt_schedule(&sealed, &KEY).unwrap(), s);

        let empty: MaintenanceSchedule = serde_json::from_slice(br#"{"runs":null}"#).unwrap();
        assert_eq!(empty, MaintenanceSchedule::default());
        assert_eq!(
            gojson::to_vec(&empty).unwrap(),
            br#"{"nextFullMaintenance":"0001-01-01T00:00:00Z","nextQuickMaintenance":"0001-01-01T00:00:00Z","runs":null}"#
        );
    }

    #[test]
    fn decrypt_errors() {
        let sealed = encrypt_schedule(&MaintenanceSchedule::default(), &KEY, [5; 12]).unwrap();
        assert!(matches!(
            decrypt_schedule(&sealed, &[0x12; 32]),
            Err(FormatError::Decrypt(_))
        ));
        for n in 0..sealed.len() {
            assert!(decrypt_schedule(&sealed[..n], &KEY).is_err());
        }
        let garbage = seal_aes256_gcm(&KEY, [0; 12], MAINTENANCE_AAD, b"{\"runs\":5}");
        assert!(matches!(
            decrypt_schedule(&garbage, &KEY),
            Err(FormatError::Malformed { .. })
        ));
        let too_late = MaintenanceSchedule {
            next_full_maintenance: Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            ..Default::default()
        };
        assert!(encrypt_schedule(&too_late, &KEY, [0; 12]).is_err());
    }
}
