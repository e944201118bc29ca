//! Maintenance parameters: a manifest labelled `type: maintenance` whose JSON is kopia's
//! `maintenance.Params` (field order as Go's `json.Marshal` writes it; durations in nanoseconds).
//! The `owner` (`user@host`) is the only client allowed to run maintenance.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use kmover_format::gojson;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::{RepoError, Result};
use crate::repository::Repository;

pub const MAINTENANCE_MANIFEST_TYPE: &str = "maintenance";

const NANOS_PER_HOUR: i64 = 3600 * 1_000_000_000;

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One maintenance cycle (quick or full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleParams {
    #[serde(default, deserialize_with = "null_as_default")]
    pub enabled: bool,
    /// Nanoseconds, as Go's `time.Duration`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub interval: i64,
}

impl CycleParams {
    pub fn interval(&self) -> TimeDelta {
        TimeDelta::nanoseconds(self.interval)
    }
}

/// How many `_log_` diagnostic blobs maintenance keeps. All three zero means kopia's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRetention {
    #[serde(rename = "maxTotalSize", default, deserialize_with = "null_as_default")]
    pub max_total_size: i64,
    #[serde(rename = "maxCount", default, deserialize_with = "null_as_default")]
    pub max_count: i64,
    /// Nanoseconds.
    #[serde(rename = "maxAge", default, deserialize_with = "null_as_default")]
    pub max_age: i64,
}

impl LogRetention {
    /// kopia's defaults: 1 GiB, 10 000 logs, 30 days.
    pub fn kopia_default() -> Self {
        LogRetention {
            max_total_size: 1 << 30,
            max_count: 10_000,
            max_age: 30 * 24 * NANOS_PER_HOUR,
        }
    }

    /// kopia's `OrDefault`: all-zero settings mean the defaults.
    pub fn or_default(self) -> Self {
        if self.max_total_size == 0 && self.max_count == 0 && self.max_age == 0 {
            Self::kopia_default()
        } else {
            self
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceParams {
    #[serde(default, deserialize_with = "null_as_default")]
    pub owner: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub quick: CycleParams,
    #[serde(default, deserialize_with = "null_as_default")]
    pub full: CycleParams,
    #[serde(rename = "logRetention", default, deserialize_with = "null_as_default")]
    pub log_retention: LogRetention,
    #[serde(
        rename = "extendObjectLocks",
        default,
        deserialize_with = "null_as_default"
    )]
    pub extend_object_locks: bool,
    #[serde(
        rename = "listParallelism",
        default,
        deserialize_with = "null_as_default"
    )]
    pub list_parallelism: i64,
    /// Keys this version does not know, written back unchanged.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl Default for MaintenanceParams {
    /// kopia's `DefaultParams()`: both cycles enabled (quick hourly, full daily), no owner.
    fn default() -> Self {
        MaintenanceParams {
            owner: String::new(),
            quick: CycleParams {
                enabled: true,
                interval: NANOS_PER_HOUR,
            },
            full: CycleParams {
                enabled: true,
                interval: 24 * NANOS_PER_HOUR,
            },
            log_retention: LogRetention::kopia_default(),
            extend_object_locks: false,
            list_parallelism: 0,
            unknown: Map::new(),
        }
    }
}

impl MaintenanceParams {
    pub fn with_owner(owner: &str) -> Self {
        MaintenanceParams {
            owner: owner.to_string(),
            ..Self::default()
        }
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(gojson::to_vec(self)?)
    }

    pub fn from_json(data: &[u8]) -> Result<Self> {
        serde_json::from_slice(data)
            .map_err(|e| RepoError::Other(format!("maintenance parameters manifest: {e}")))
    }
}

fn labels() -> BTreeMap<String, String> {
    [("type".to_string(), MAINTENANCE_MANIFEST_TYPE.to_string())].into()
}

/// The parameters in force, or kopia's defaults (with no owner) when none were ever stored.
/// With several manifests (two clients setting them at once) the newest wins, as in kopia.
pub async fn load_params(repo: &Repository) -> Result<MaintenanceParams> {
    Ok(find_params(repo).await?.unwrap_or_default())
}

/// The stored parameters, if any.
pub async fn find_params(repo: &Repository) -> Result<Option<MaintenanceParams>> {
    let found = repo.manifests().find(&labels()).await?;
    // `find` returns oldest first by (modified, id): the last one is kopia's `PickLatestID`.
    match found.last() {
        Some(entry) => Ok(Some(MaintenanceParams::from_json(&entry.data)?)),
        None => Ok(None),
    }
}

/// Replaces the stored parameters (the caller flushes the repository).
pub async fn save_params(repo: &Repository, params: &MaintenanceParams) -> Result<()> {
    repo.manifests()
        .replace(labels(), params.to_json()?)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_kopias() {
        let p = MaintenanceParams::with_owner("alice@laptop");
        assert_eq!(
            String::from_utf8(p.to_json().unwrap()).unwrap(),
            r#"{"owner":"alice@laptop","quick":{"enabled":true,"interval":3600000000000},"full":{"enabled":true,"interval":86400000000000},"logRetention":{"maxTotalSize":1073741824,"maxCount":10000,"maxAge":2592000000000000},"extendObjectLocks":false,"listParallelism":0}"#
        );
    }

    #[test]
    fn missing_fields_are_go_zero_values_and_unknown_ones_survive() {
        let p = MaintenanceParams::from_json(
            br#"{"owner":"a@b","quick":{"enabled":true},"future":[1,2],"full":null}"#,
        )
        .unwrap();
        assert_eq!(p.owner, "a@b");
        assert_eq!(
            p.quick,
            CycleParams {
                enabled: true,
                interval: 0
            }
        );
        assert_eq!(p.full, CycleParams::default());
        assert_eq!(p.log_retention, LogRetention::default());
        assert_eq!(p.log_retention.or_default(), LogRetention::kopia_default());
        let json = String::from_utf8(p.to_json().unwrap()).unwrap();
        assert!(
            json.ends_with(r#""listParallelism":0,"future":[1,2]}"#),
            "{json}"
        );
        assert!(MaintenanceParams::from_json(b"[]").is_err());
    }
}
