//! Snapshot manifests (kopia's `snapshot.Manifest`), stored with `json.Marshal` as the payload of
//! a manifest-store entry labelled `type=snapshot` (see [`snapshot_labels`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{FormatError, Result};
use crate::snapshot::UtcTimestamp;
use crate::snapshot::directory::{DirEntry, write_dir_entry};
use crate::snapshot::json::{
    BoundedList, FieldKey, ObjectWriter, json_error, write_i64, write_str, write_string_list,
    write_string_map,
};

/// Manifest `type` label of snapshots.
pub const SNAPSHOT_MANIFEST_TYPE: &str = "snapshot";
pub const TYPE_LABEL: &str = "type";
pub const HOSTNAME_LABEL: &str = "hostname";
pub const USERNAME_LABEL: &str = "username";
pub const PATH_LABEL: &str = "path";

/// The most tags or pins a decoded manifest may carry.
const MAX_LIST: usize = 1 << 20;

/// What a snapshot (or policy) is about: `user@host:/path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceInfo {
    pub host: String,
    pub user_name: String,
    pub path: String,
}

impl SourceInfo {
    /// The source named by manifest labels (`hostname`, `username`, `path`).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        SourceInfo {
            host: get(HOSTNAME_LABEL),
            user_name: get(USERNAME_LABEL),
            path: get(PATH_LABEL),
        }
    }
}

/// Kopia's text form: `(global)`, `user@host` or `user@host:path`.
impl fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (
            self.host.is_empty() && self.user_name.is_empty() && self.path.is_empty(),
            self.path.is_empty(),
        ) {
            (true, _) => f.write_str("(global)"),
            (false, true) => write!(f, "{}@{}", self.user_name, self.host),
            (false, false) => write!(f, "{}@{}:{}", self.user_name, self.host, self.path),
        }
    }
}

/// Upload statistics (`snapshot.Stats`); informational only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub total_size: i64,
    pub excluded_total_size: i64,
    pub file_count: i32,
    pub cached_files: i32,
    pub non_cached_files: i32,
    pub dir_count: i32,
    pub excluded_file_count: i32,
    pub excluded_dir_count: i32,
    pub ignored_error_count: i32,
    pub error_count: i32,
}

/// `snapshot list --storage-stats` output; never stored by kopia.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub new_data: StorageUsageDetails,
    pub running_total: StorageUsageDetails,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageUsageDetails {
    pub object_bytes: i64,
    pub original_content_bytes: i64,
    pub packed_content_bytes: i64,
    pub file_objects: i32,
    pub dir_objects: i32,
    pub contents: i32,
}

/// One snapshot. Kopia stores `id` as `""` (the manifest entry's ID is the snapshot ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotManifest {
    pub id: String,
    pub source: SourceInfo,
    pub description: String,
    pub start_time: UtcTimestamp,
    pub end_time: UtcTimestamp,
    pub stats: SnapshotStats,
    /// `"checkpoint"`, `"canceled"`, `"limit reached"`, or empty for a complete snapshot.
    pub incomplete: String,
    /// `None` only in broken manifests (written as `null`).
    pub root_entry: Option<DirEntry>,
    /// Keys carry the `tag:` prefix.
    pub tags: BTreeMap<String, String>,
    pub storage_stats: Option<StorageStats>,
    /// Kopia keeps these sorted and unique.
    pub pins: Vec<String>,
}

/// Encodes like kopia's `json.Marshal` (no trailing newline).
pub fn encode_snapshot_manifest(m: &SnapshotManifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut obj = ObjectWriter::begin(&mut out);
    write_str(obj.field("id"), m.id.as_bytes());
    let mut src = ObjectWriter::begin(obj.field("source"));
    write_str(src.field("host"), m.source.host.as_bytes());
    write_str(src.field("userName"), m.source.user_name.as_bytes());
    write_str(src.field("path"), m.source.path.as_bytes());
    src.end();
    write_str(obj.field("description"), m.description.as_bytes());
    write_str(obj.field("startTime"), m.start_time.to_rfc3339().as_bytes());
    write_str(obj.field("endTime"), m.end_time.to_rfc3339().as_bytes());
    let s = &m.stats;
    let mut st = ObjectWriter::begin(obj.field("stats"));
    write_i64(st.field("totalSize"), s.total_size);
    write_i64(st.field("excludedTotalSize"), s.excluded_total_size);
    for (key, v) in [
        ("fileCount", s.file_count),
        ("cachedFiles", s.cached_files),
        ("nonCachedFiles", s.non_cached_files),
        ("dirCount", s.dir_count),
        ("excludedFileCount", s.excluded_file_count),
        ("excludedDirCount", s.excluded_dir_count),
        ("ignoredErrorCount", s.ignored_error_count),
        ("errorCount", s.error_count),
    ] {
        write_i64(st.field(key), i64::from(v));
    }
    st.end();
    if !m.incomplete.is_empty() {
        write_str(obj.field("incomplete"), m.incomplete.as_bytes());
    }
    match &m.root_entry {
        Some(e) => write_dir_entry(obj.field("rootEntry"), e),
        None => obj.field("rootEntry").extend_from_slice(b"null"),
    }
    if !m.tags.is_empty() {
        write_string_map(obj.field("tags"), &m.tags);
    }
    if let Some(ss) = &m.storage_stats {
        let mut o = ObjectWriter::begin(obj.field("storageStats"));
        write_usage(o.field("newData"), &ss.new_data);
        write_usage(o.field("runningTotal"), &ss.running_total);
        o.end();
    }
    if !m.pins.is_empty() {
        write_string_list(obj.field("pins"), &m.pins);
    }
    obj.end();
    out
}

fn write_usage(out: &mut Vec<u8>, u: &StorageUsageDetails) {
    let mut o = ObjectWriter::begin(out);
    write_i64(o.field("objectBytes"), u.object_bytes);
    write_i64(o.field("originalContentBytes"), u.original_content_bytes);
    write_i64(o.field("packedContentBytes"), u.packed_content_bytes);
    write_i64(o.field("fileObjects"), i64::from(u.file_objects));
    write_i64(o.field("dirObjects"), i64::from(u.dir_objects));
    write_i64(o.field("contents"), i64::from(u.contents));
    o.end();
}

/// Decodes like kopia's `json.Unmarshal`: the whole input must be one JSON value, keys match
/// case-insensitively, unknown keys are skipped, missing or `null` fields are zero.
pub fn decode_snapshot_manifest(data: &[u8]) -> Result<SnapshotManifest> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let m = Option::<SnapshotManifest>::deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| json_error("snapshot manifest", e))?;
    Ok(m.unwrap_or_default())
}

/// Labels of the store entry for a snapshot, checked as kopia's `SaveSnapshot` does: host, user
/// and path must be set and tags may not replace the source labels.
pub fn snapshot_labels(m: &SnapshotManifest) -> Result<BTreeMap<String, String>> {
    for (what, v) in [
        ("host", &m.source.host),
        ("username", &m.source.user_name),
        ("path", &m.source.path),
    ] {
        if v.is_empty() {
            return Err(FormatError::malformed(
                "snapshot manifest",
                format!("missing {what}"),
            ));
        }
    }
    let mut labels = source_labels(&m.source);
    for (k, v) in &m.tags {
        if labels.contains_key(k) {
            return Err(FormatError::malformed(
                "snapshot manifest",
                format!("invalid or duplicate tag key {k:?}"),
            ));
        }
        labels.insert(k.clone(), v.clone());
    }
    Ok(labels)
}

/// The labels that select all snapshots of `source` (user and path only when set).
pub fn source_labels(source: &SourceInfo) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (TYPE_LABEL.to_string(), SNAPSHOT_MANIFEST_TYPE.to_string()),
        (HOSTNAME_LABEL.to_string(), source.host.clone()),
    ]);
    if !source.user_name.is_empty() {
        labels.insert(USERNAME_LABEL.to_string(), source.user_name.clone());
    }
    if !source.path.is_empty() {
        labels.insert(PATH_LABEL.to_string(), source.path.clone());
    }
    labels
}

/// A Go `map[string]string`: `null` values read as `""`.
pub(crate) struct StringMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<StringMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.len() == MAX_LIST {
                        return Err(serde::de::Error::custom("too many map entries"));
                    }
                    out.insert(k, map.next_value::<Option<String>>()?.unwrap_or_default());
                }
                Ok(StringMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn opt_string(v: Option<String>, old: String) -> String {
    v.unwrap_or(old)
}

impl<'de> Deserialize<'de> for SnapshotManifest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SnapshotManifest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a snapshot manifest object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<SnapshotManifest, A::Error> {
                const FIELDS: &[&str] = &[
                    "id",
                    "source",
                    "description",
                    "startTime",
                    "endTime",
                    "stats",
                    "incomplete",
                    "rootEntry",
                    "tags",
                    "storageStats",
                    "pins",
                ];
                let mut m = SnapshotManifest::default();
                while let Some(key) = map.next_key_seed(FieldKey(FIELDS))? {
                    match key {
                        Some("id") => m.id = opt_string(map.next_value()?, m.id),
                        Some("source") => {
                            if let Some(s) = map.next_value::<Option<SourceInfo>>()? {
                                m.source = s;
                            }
                        }
                        Some("description") => {
                            m.description = opt_string(map.next_value()?, m.description)
                        }
                        Some("startTime") => m.start_time = map.next_value()?,
                        Some("endTime") => m.end_time = map.next_value()?,
                        Some("stats") => {
                            if let Some(s) = map.next_value::<Option<SnapshotStats>>()? {
                                m.stats = s;
                            }
                        }
                        Some("incomplete") => {
                            m.incomplete = opt_string(map.next_value()?, m.incomplete)
                        }
                        Some("rootEntry") => m.root_entry = map.next_value()?,
                        Some("tags") => {
                            m.tags = map
                                .next_value::<Option<StringMap>>()?
                                .map(|t| t.0)
                                .unwrap_or_default()
                        }
                        Some("storageStats") => m.storage_stats = map.next_value()?,
                        Some("pins") => {
                            m.pins = map
                                .next_value_seed(BoundedList::<String>::of_values(
                                    MAX_LIST, "pins",
                                ))?
                                .unwrap_or_default();
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for SourceInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SourceInfo;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a source object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<SourceInfo, A::Error> {
                let mut s = SourceInfo::default();
                while let Some(key) = map.next_key_seed(FieldKey(&["host", "userName", "path"]))? {
                    match key {
                        Some("host") => s.host = opt_string(map.next_value()?, s.host),
                        Some("userName") => {
                            s.user_name = opt_string(map.next_value()?, s.user_name)
                        }
                        Some("path") => s.path = opt_string(map.next_value()?, s.path),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for SnapshotStats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SnapshotStats;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a stats object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<SnapshotStats, A::Error> {
                const FIELDS: &[&str] = &[
                    "totalSize",
                    "excludedTotalSize",
                    "fileCount",
                    "cachedFiles",
                    "nonCachedFiles",
                    "dirCount",
                    "excludedFileCount",
                    "excludedDirCount",
                    "ignoredErrorCount",
                    "errorCount",
                ];
                let mut s = SnapshotStats::default();
                while let Some(key) = map.next_key_seed(FieldKey(FIELDS))? {
                    let field = match key {
                        Some("totalSize") => {
                            s.total_size = map.next_value::<Option<i64>>()?.unwrap_or(s.total_size);
                            continue;
                        }
                        Some("excludedTotalSize") => {
                            s.excluded_total_size = map
                                .next_value::<Option<i64>>()?
                                .unwrap_or(s.excluded_total_size);
                            continue;
                        }
                        Some("fileCount") => &mut s.file_count,
                        Some("cachedFiles") => &mut s.cached_files,
                        Some("nonCachedFiles") => &mut s.non_cached_files,
                        Some("dirCount") => &mut s.dir_count,
                        Some("excludedFileCount") => &mut s.excluded_file_count,
                        Some("excludedDirCount") => &mut s.excluded_dir_count,
                        Some("ignoredErrorCount") => &mut s.ignored_error_count,
                        Some("errorCount") => &mut s.error_count,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if let Some(v) = map.next_value::<Option<i32>>()? {
                        *field = v;
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for StorageStats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StorageStats;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a storage stats object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<StorageStats, A::Error> {
                let mut s = StorageStats::default();
                while let Some(key) = map.next_key_seed(FieldKey(&["newData", "runningTotal"]))? {
                    let target = match key {
                        Some("newData") => &mut s.new_data,
                        Some("runningTotal") => &mut s.running_total,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if let Some(v) = map.next_value::<Option<StorageUsageDetails>>()? {
                        *target = v;
                    }
                }
                Ok(s)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for StorageUsageDetails {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StorageUsageDetails;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a storage usage object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<StorageUsageDetails, A::Error> {
                const FIELDS: &[&str] = &[
                    "objectBytes",
                    "originalContentBytes",
                    "packedContentBytes",
                    "fileObjects",
                    "dirObjects",
                    "contents",
                ];
                let mut u = StorageUsageDetails::default();
                while let Some(key) = map.next_key_seed(FieldKey(FIELDS))? {
                    let wide = match key {
                        Some("objectBytes") => &mut u.object_bytes,
                        Some("originalContentBytes") => &mut u.original_content_bytes,
                        Some("packedContentBytes") => &mut u.packed_content_bytes,
                        Some(narrow) => {
                            let field = match narrow {
                                "fileObjects" => &mut u.file_objects,
                                "dirObjects" => &mut u.dir_objects,
                                _ => &mut u.contents,
                            };
                            if let Some(v) = map.next_value::<Option<i32>>()? {
                                *field = v;
                            }
                            continue;
                        }
                        None => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if let Some(v) = map.next_value::<Option<i64>>()? {
                        *wide = v;
                    }
                }
                Ok(u)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_save_snapshot() {
        let mut m = SnapshotManifest {
            source: SourceInfo {
                host: "laptop".into(),
                user_name: "alice".into(),
                path: "/p".into(),
            },
            tags: BTreeMap::from([("tag:env".to_string(), "prod".to_string())]),
            ..Default::default()
        };
        let labels = snapshot_labels(&m).unwrap();
        let want: BTreeMap<String, String> = [
            ("type", "snapshot"),
            ("hostname", "laptop"),
            ("username", "alice"),
            ("path", "/p"),
            ("tag:env", "prod"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, want);
        m.tags.insert("path".into(), "x".into());
        assert!(snapshot_labels(&m).is_err());
        m.tags.clear();
        m.source.user_name.clear();
        assert!(snapshot_labels(&m).is_err());
        assert_eq!(source_labels(&m.source).len(), 3);
    }

    #[test]
    fn source_display() {
        assert_eq!(SourceInfo::default().to_string(), "(global)");
        let s = SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: String::new(),
        };
        assert_eq!(s.to_string(), "u@h");
        assert_eq!(
            SourceInfo {
                path: "/x".into(),
                ..s
            }
            .to_string(),
            "u@h:/x"
        );
    }

    #[test]
    fn decode_errors() {
        for bad in [
            &b"{} x"[..],
            b"[]",
            b"{\"stats\":{\"fileCount\":2147483648}}",
            b"{\"rootEntry\":5}",
            b"",
        ] {
            assert!(
                decode_snapshot_manifest(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
