//! The manifest store: each flush writes one `m` content holding gzip(`{"entries":[…]}` + `\n`),
//! each entry `{"id","labels","modified","deleted","data"}`. Deletions are tombstones; the live set
//! is the merge of all contents (see [`merge_manifest_entries`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{FormatError, Result};
use crate::gotime;
use crate::snapshot::json::{
    BoundedList, FieldKey, ObjectWriter, json_error, validate_json, write_compact, write_str,
    write_string_map,
};
use crate::snapshot::manifest::{StringMap, TYPE_LABEL};
use crate::snapshot::timestamp::parse_go_time;

/// Content prefix of manifest-store contents.
pub const MANIFEST_CONTENT_PREFIX: u8 = b'm';
/// Number of `m` contents at which kopia compacts the store when loading it.
pub const AUTO_COMPACTION_CONTENT_COUNT: usize = 16;
/// The largest decompressed manifest content [`decode_manifest_content`] accepts.
pub const MAX_MANIFEST_JSON_SIZE: u64 = 1 << 30;
const MAX_ENTRIES: usize = 1 << 24;

/// One manifest (or tombstone) as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// 32 lowercase hex characters, see [`new_manifest_id`].
    pub id: String,
    /// Empty for tombstones (written as `null`).
    pub labels: BTreeMap<String, String>,
    pub modified: DateTime<Utc>,
    pub deleted: bool,
    /// The payload as JSON text (kopia: `json.Marshal` output); empty is written as `null`.
    pub data: Vec<u8>,
}

impl ManifestEntry {
    /// A live manifest, as kopia's `Put` makes it; `labels` must have a `type`, `data` must be
    /// one JSON value. `modified` is the repository time (kopia: now in UTC).
    pub fn new(
        id: String,
        labels: BTreeMap<String, String>,
        modified: DateTime<Utc>,
        data: Vec<u8>,
    ) -> Result<Self> {
        if labels.get(TYPE_LABEL).is_none_or(String::is_empty) {
            return Err(FormatError::malformed(
                "manifest entry",
                "'type' label is required",
            ));
        }
        validate_json("manifest payload", &data)?;
        Ok(ManifestEntry {
            id,
            labels,
            modified,
            deleted: false,
            data,
        })
    }

    /// A deletion marker for `id`, as kopia's `Delete` makes it.
    pub fn tombstone(id: String, modified: DateTime<Utc>) -> Self {
        ManifestEntry {
            id,
            labels: BTreeMap::new(),
            modified,
            deleted: true,
            data: Vec::new(),
        }
    }
}

/// Go's zero values: no labels, the zero time, no data.
impl Default for ManifestEntry {
    fn default() -> Self {
        ManifestEntry {
            id: String::new(),
            labels: BTreeMap::new(),
            modified: gotime::zero(),
            deleted: false,
            data: Vec::new(),
        }
    }
}

/// A manifest ID from 16 random bytes (kopia reads them from a CSPRNG).
pub fn new_manifest_id(random: &[u8; 16]) -> String {
    hex::encode(random)
}

/// The document text (`{"entries":[…]}` + `\n`) as kopia's `json.Encoder` writes it. Fails only
/// for a `modified` year outside 0..=9999, which Go cannot marshal either.
pub fn encode_manifest_json(entries: &[ManifestEntry]) -> Result<Vec<u8>> {
    let mut out =
        Vec::with_capacity(64 + entries.iter().map(|e| 160 + e.data.len()).sum::<usize>());
    let mut doc = ObjectWriter::begin(&mut out);
    let list = doc.field("entries");
    if entries.is_empty() {
        list.extend_from_slice(b"null");
    } else {
        list.push(b'[');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            let mut obj = ObjectWriter::begin(list);
            write_str(obj.field("id"), e.id.as_bytes());
            if e.labels.is_empty() {
                obj.field("labels").extend_from_slice(b"null");
            } else {
                write_string_map(obj.field("labels"), &e.labels);
            }
            write_str(
                obj.field("modified"),
                gotime::format(&e.modified)?.as_bytes(),
            );
            if e.deleted {
                obj.field("deleted").extend_from_slice(b"true");
            }
            write_compact(obj.field("data"), &e.data);
            obj.end();
        }
        list.push(b']');
    }
    doc.end();
    out.push(b'\n');
    Ok(out)
}

/// Reads the document text like kopia: only the `entries` key (case-insensitive) matters and may
/// appear once; the bytes after the top-level object are ignored.
pub fn decode_manifest_json(data: &[u8]) -> Result<Vec<ManifestEntry>> {
    let mut de = serde_json::Deserializer::from_slice(data);
    Ok(ManifestDoc::deserialize(&mut de)
        .map_err(|e| json_error("manifest content", e))?
        .0)
}

/// The `m` content bytes: the gzip-compressed document. (Gzip output need not match kopia's byte
/// for byte; only the document inside matters.)
pub fn encode_manifest_content(entries: &[ManifestEntry]) -> Result<Vec<u8>> {
    let json = encode_manifest_json(entries)?;
    let mut gz = GzEncoder::new(
        Vec::with_capacity(json.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&json)
        .and_then(|()| gz.finish())
        .map_err(|e| FormatError::malformed("manifest content", e.to_string()))
}

/// Decompresses and decodes an `m` content, refusing more than [`MAX_MANIFEST_JSON_SIZE`]
/// decompressed bytes.
pub fn decode_manifest_content(content: &[u8]) -> Result<Vec<ManifestEntry>> {
    let mut json = Vec::new();
    MultiGzDecoder::new(content)
        .take(MAX_MANIFEST_JSON_SIZE + 1)
        .read_to_end(&mut json)
        .map_err(|e| FormatError::malformed("manifest content", format!("gzip: {e}")))?;
    if json.len() as u64 > MAX_MANIFEST_JSON_SIZE {
        return Err(FormatError::Limit(format!(
            "manifest content exceeds {MAX_MANIFEST_JSON_SIZE} bytes"
        )));
    }
    decode_manifest_json(&json)
}

/// The committed view kopia builds from all `m` contents: per ID the entry with the strictly
/// latest `modified` wins (on a tie the first one seen), then IDs whose winner is a tombstone are
/// dropped.
pub fn merge_manifest_entries(
    entries: impl IntoIterator<Item = ManifestEntry>,
) -> BTreeMap<String, ManifestEntry> {
    let mut merged: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    for e in entries {
        match merged.get(&e.id) {
            Some(prev) if e.modified <= prev.modified => {}
            _ => {
                merged.insert(e.id.clone(), e);
            }
        }
    }
    merged.retain(|_, e| !e.deleted);
    merged
}

/// Whether `labels` contains every key/value pair of `query` (kopia's `Find` match).
pub fn labels_match(labels: &BTreeMap<String, String>, query: &BTreeMap<String, String>) -> bool {
    query.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Kopia's `PickLatestID`: a left-to-right scan replacing the pick when an entry is newer or has a
/// greater ID. On input sorted by `modified` (as `Find` returns it) this is the newest entry,
/// ties broken by the greater ID.
pub fn pick_latest<'a>(
    entries: impl IntoIterator<Item = &'a ManifestEntry>,
) -> Option<&'a ManifestEntry> {
    let mut latest: Option<&ManifestEntry> = None;
    for e in entries {
        if latest.is_none_or(|l| e.modified > l.modified || e.id > l.id) {
            latest = Some(e);
        }
    }
    latest
}

struct ManifestDoc(Vec<ManifestEntry>);

impl<'de> Deserialize<'de> for ManifestDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ManifestDoc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a manifest content object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<ManifestDoc, A::Error> {
                let mut entries = None;
                while let Some(key) = map.next_key_seed(FieldKey(&["entries"]))? {
                    if key.is_none() {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    if entries.is_some() {
                        return Err(de::Error::custom("repeated entries field"));
                    }
                    let list = map.next_value_seed(BoundedList::<ManifestEntry>::of_pointers(
                        MAX_ENTRIES,
                        "manifest entries",
                    ))?;
                    entries =
                        Some(list.ok_or_else(|| de::Error::custom("entries must be an array"))?);
                }
                Ok(ManifestDoc(entries.unwrap_or_default()))
            }
        }
        d.deserialize_map(V)
    }
}

/// Go's `time.Time` JSON: `null` leaves the zero time.
struct GoTime(DateTime<Utc>);

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(GoTime(gotime::zero()));
        };
        let (secs, nanos) = parse_go_time(&text).map_err(de::Error::custom)?;
        DateTime::from_timestamp(secs, nanos)
            .map(GoTime)
            .ok_or_else(|| de::Error::custom("time out of range"))
    }
}

impl<'de> Deserialize<'de> for ManifestEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ManifestEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a manifest entry object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<ManifestEntry, A::Error> {
                let mut e = ManifestEntry::default();
                while let Some(key) =
                    map.next_key_seed(FieldKey(&["id", "labels", "modified", "deleted", "data"]))?
                {
                    match key {
                        Some("id") => e.id = map.next_value::<Option<String>>()?.unwrap_or(e.id),
                        Some("labels") => {
                            e.labels = map
                                .next_value::<Option<StringMap>>()?
                                .map(|m| m.0)
                                .unwrap_or_default()
                        }
                        Some("modified") => e.modified = map.next_value::<GoTime>()?.0,
                        Some("deleted") => {
                            e.deleted = map.next_value::<Option<bool>>()?.unwrap_or(e.deleted)
                        }
                        Some("data") => {
                            e.data = map.next_value::<Box<RawValue>>()?.get().as_bytes().to_vec()
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 123_000_000).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn entry_round_trip() {
        let live = ManifestEntry::new(
            "a1".into(),
            labels(&[("type", "x<y>")]),
            t(1),
            b"{ \"k\" : \"<v>\" }".to_vec(),
        )
        .unwrap();
        let dead = ManifestEntry::tombstone("b2".into(), t(2));
        let json = encode_manifest_json(&[live.clone(), dead.clone()]).unwrap();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            "{\"entries\":[{\"id\":\"a1\",\"labels\":{\"type\":\"x\\u003cy\\u003e\"},\"modified\":\"1970-01-01T00:00:01.123Z\",\"data\":{\"k\":\"\\u003cv\\u003e\"}},{\"id\":\"b2\",\"labels\":null,\"modified\":\"1970-01-01T00:00:02.123Z\",\"deleted\":true,\"data\":null}]}\n"
        );
        let back = decode_manifest_json(&json).unwrap();
        assert_eq!(
            back[1],
            ManifestEntry {
                data: b"null".to_vec(),
                ..dead
            }
        );
        assert_eq!(back[0].data, b"{\"k\":\"\\u003cv\\u003e\"}");
        let gz = encode_manifest_content(&back).unwrap();
        assert_eq!(decode_manifest_content(&gz).unwrap(), back);
        assert_eq!(encode_manifest_json(&back).unwrap(), json);
    }

    #[test]
    fn put_rules() {
        assert!(
            ManifestEntry::new("a".into(), labels(&[("x", "y")]), t(0), b"1".to_vec()).is_err()
        );
        assert!(
            ManifestEntry::new("a".into(), labels(&[("type", "")]), t(0), b"1".to_vec()).is_err()
        );
        assert!(
            ManifestEntry::new("a".into(), labels(&[("type", "t")]), t(0), b"{".to_vec()).is_err()
        );
        assert_eq!(new_manifest_id(&[0xab; 16]), "ab".repeat(16));
    }

    #[test]
    fn merge_and_find() {
        let e = |id: &str, secs, deleted| ManifestEntry {
            id: id.into(),
            labels: if deleted {
                BTreeMap::new()
            } else {
                labels(&[("type", "t"), ("n", id)])
            },
            modified: t(secs),
            deleted,
            data: b"{}".to_vec(),
        };
        let merged = merge_manifest_entries([
            e("a", 1, false),
            e("a", 2, true),
            e("b", 2, false),
            e("b", 2, true),
            e("c", 3, true),
            e("c", 1, false),
        ]);
        assert_eq!(merged.keys().collect::<Vec<_>>(), ["b"]);
        assert!(labels_match(&merged["b"].labels, &labels(&[("type", "t")])));
        assert!(!labels_match(
            &merged["b"].labels,
            &labels(&[("type", "u")])
        ));
        assert!(labels_match(&merged["b"].labels, &BTreeMap::new()));

        let (x, y, z) = (e("9", 1, false), e("1", 2, false), e("5", 2, false));
        assert_eq!(pick_latest([&x, &y, &z]).unwrap().id, "5");
        assert!(pick_latest([]).is_none());
    }

    #[test]
    fn decode_errors() {
        for bad in [
            &b"{\"entries\":[],\"ENTRIES\":[]}"[..],
            b"{\"entries\":[null]}",
            b"{\"entries\":null}",
            b"{\"entries\":[{\"modified\":\"yesterday\"}]}",
            b"[]",
            b"",
        ] {
            assert!(
                decode_manifest_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_manifest_json(b"{\"other\":{\"x\":1}} trailing").unwrap(),
            []
        );
        assert!(decode_manifest_content(b"not gzip").is_err());
    }
}
