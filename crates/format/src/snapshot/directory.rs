//! Directory listings (`k` objects): `{"stream":"kopia:directory","entries":[…],"summary":{…}}` +
//! `\n`, plus the builder that orders entries and computes the summary as kopia's
//! `DirManifestBuilder` does.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::{FormatError, Result};
use crate::object::{ObjectId, write_object_id};
use crate::snapshot::UtcTimestamp;
use crate::snapshot::json::{
    BoundedList, FieldKey, GoBytes, ObjectWriter, json_error, write_i64, write_str,
};

/// `stream` value of directory listings.
pub const DIRECTORY_STREAM_TYPE: &str = "kopia:directory";
/// The most entries [`decode_dir_manifest`] accepts in one listing.
pub const MAX_DIR_ENTRIES: usize = 1 << 25;
/// The most failed-entry records [`decode_dir_manifest`] accepts in one summary.
pub const MAX_SUMMARY_ERRORS: usize = 1 << 24;

/// Go `os.FileMode` bits kopia stores in `mode` (`fs.ModBits`). Go keeps the special bits far from
/// their Unix positions.
pub mod mode {
    pub const PERM: u32 = 0o777;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const STICKY: u32 = 1 << 20;
    /// Everything kopia keeps of a mode.
    pub const MOD_BITS: u32 = PERM | SETUID | SETGID | STICKY;

    /// Kopia's `mode` for a Unix `st_mode` (file type bits dropped).
    pub const fn from_unix(st_mode: u32) -> u32 {
        (st_mode & PERM)
            | if st_mode & 0o4000 != 0 { SETUID } else { 0 }
            | if st_mode & 0o2000 != 0 { SETGID } else { 0 }
            | if st_mode & 0o1000 != 0 { STICKY } else { 0 }
    }

    /// The Unix permission bits (`0o7777` range) for a kopia `mode`.
    pub const fn to_unix(mode: u32) -> u32 {
        (mode & PERM)
            | if mode & SETUID != 0 { 0o4000 } else { 0 }
            | if mode & SETGID != 0 { 0o2000 } else { 0 }
            | if mode & STICKY != 0 { 0o1000 } else { 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    /// Any other text; kopia's "unknown" type is the empty string.
    Other(String),
}

impl EntryType {
    pub fn as_str(&self) -> &str {
        match self {
            EntryType::File => "f",
            EntryType::Directory => "d",
            EntryType::Symlink => "s",
            EntryType::Other(s) => s,
        }
    }

    fn from_text(s: String) -> Self {
        match s.as_str() {
            "f" => EntryType::File,
            "d" => EntryType::Directory,
            "s" => EntryType::Symlink,
            _ => EntryType::Other(s),
        }
    }
}

impl Default for EntryType {
    fn default() -> Self {
        EntryType::Other(String::new())
    }
}

/// One entry of a listing (kopia's `snapshot.DirEntry`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirEntry {
    /// Raw name bytes; invalid UTF-8 is written as one `\ufffd` per bad byte, as kopia does.
    pub name: Vec<u8>,
    pub entry_type: EntryType,
    /// Go `FileMode` bits, see [`mode`].
    pub mode: u32,
    pub size: i64,
    pub mtime: UtcTimestamp,
    pub uid: u32,
    pub gid: u32,
    pub object_id: ObjectId,
    /// The child's summary, for directories (and for a single-file snapshot root).
    pub summary: Option<DirectorySummary>,
}

/// kopia's `fs.DirectorySummary`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectorySummary {
    /// Total bytes of files in the subtree.
    pub size: i64,
    pub files: i64,
    pub symlinks: i64,
    /// Directories in the subtree, including this one.
    pub dirs: i64,
    pub max_time: UtcTimestamp,
    /// `"checkpoint"`, `"canceled"`, `"limit reached"` or empty.
    pub incomplete: String,
    pub num_failed: i64,
    pub num_ignored_errors: i64,
    pub errors: Vec<FailedEntry>,
}

/// kopia's `fs.EntryWithError`; raw bytes since paths and OS messages need not be UTF-8.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailedEntry {
    /// Slash-separated path relative to the snapshot root.
    pub path: Vec<u8>,
    pub error: Vec<u8>,
}

/// A directory listing. Kopia writes no entries as `"entries":null`, and so does
/// [`encode_dir_manifest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirManifest {
    pub entries: Vec<DirEntry>,
    pub summary: Option<DirectorySummary>,
}

/// Encodes a listing exactly as kopia's `json.Encoder` does, trailing newline included. Entries are
/// written in the given order ([`DirManifestBuilder`] sorts them as kopia does).
pub fn encode_dir_manifest(dir: &DirManifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + dir.entries.len() * 192);
    let mut doc = ObjectWriter::begin(&mut out);
    write_str(doc.field("stream"), DIRECTORY_STREAM_TYPE.as_bytes());
    let list = doc.field("entries");
    if dir.entries.is_empty() {
        list.extend_from_slice(b"null");
    } else {
        list.push(b'[');
        for (i, e) in dir.entries.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            write_dir_entry(list, e);
        }
        list.push(b']');
    }
    match &dir.summary {
        Some(s) => write_summary(doc.field("summary"), s),
        None => doc.field("summary").extend_from_slice(b"null"),
    }
    doc.end();
    out.push(b'\n');
    out
}

/// Decodes a listing like kopia's reader: the first JSON value is read, keys match
/// case-insensitively, unknown keys are skipped, `stream` must be `kopia:directory`.
pub fn decode_dir_manifest(data: &[u8]) -> Result<DirManifest> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let doc = DirDoc::deserialize(&mut de).map_err(|e| json_error("directory", e))?;
    if doc.stream.as_deref() != Some(DIRECTORY_STREAM_TYPE) {
        return Err(FormatError::malformed(
            "directory",
            "invalid directory stream type",
        ));
    }
    Ok(doc.dir)
}

pub(crate) fn write_dir_entry(out: &mut Vec<u8>, e: &DirEntry) {
    let mut obj = ObjectWriter::begin(out);
    if !e.name.is_empty() {
        write_str(obj.field("name"), &e.name);
    }
    let ty = e.entry_type.as_str();
    if !ty.is_empty() {
        write_str(obj.field("type"), ty.as_bytes());
    }
    if e.mode != 0 {
        write_str(obj.field("mode"), format!("0{:o}", e.mode).as_bytes());
    }
    if e.size != 0 {
        write_i64(obj.field("size"), e.size);
    }
    if e.mtime.0 != 0 {
        write_str(obj.field("mtime"), e.mtime.to_rfc3339().as_bytes());
    }
    if e.uid != 0 {
        write_i64(obj.field("uid"), i64::from(e.uid));
    }
    if e.gid != 0 {
        write_i64(obj.field("gid"), i64::from(e.gid));
    }
    write_object_id(obj.field("obj"), &e.object_id);
    if let Some(s) = &e.summary {
        write_summary(obj.field("summ"), s);
    }
    obj.end();
}

fn write_summary(out: &mut Vec<u8>, s: &DirectorySummary) {
    let mut obj = ObjectWriter::begin(out);
    write_i64(obj.field("size"), s.size);
    write_i64(obj.field("files"), s.files);
    write_i64(obj.field("symlinks"), s.symlinks);
    write_i64(obj.field("dirs"), s.dirs);
    write_str(obj.field("maxTime"), s.max_time.to_rfc3339().as_bytes());
    if !s.incomplete.is_empty() {
        write_str(obj.field("incomplete"), s.incomplete.as_bytes());
    }
    write_i64(obj.field("numFailed"), s.num_failed);
    if s.num_ignored_errors != 0 {
        write_i64(obj.field("numIgnoredErrors"), s.num_ignored_errors);
    }
    if !s.errors.is_empty() {
        let list = obj.field("errors");
        list.push(b'[');
        for (i, f) in s.errors.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            let mut e = ObjectWriter::begin(list);
            write_str(e.field("path"), &f.path);
            write_str(e.field("error"), &f.error);
            e.end();
        }
        list.push(b']');
    }
    obj.end();
}

/// Parses kopia's `mode` text like Go's `strconv.ParseInt(s, 0, 32)`: `0` prefix octal, `0x` hex,
/// `0o` octal, `0b` binary, else decimal, `_` separators allowed. Negative modes, which kopia
/// would accept but never writes, are refused.
pub fn parse_mode(s: &str) -> Result<u32> {
    parse_go_int32(s)
        .ok_or_else(|| FormatError::malformed("directory entry", format!("invalid mode {s:?}")))
}

fn parse_go_int32(s: &str) -> Option<u32> {
    let body = s.strip_prefix('+').unwrap_or(s);
    let b = body.as_bytes();
    let lower = |i: usize| b.get(i).map(u8::to_ascii_lowercase);
    let (base, digits): (u32, &[u8]) = match (b.first(), lower(1)) {
        (Some(b'0'), Some(b'b')) if b.len() >= 3 => (2, &b[2..]),
        (Some(b'0'), Some(b'o')) if b.len() >= 3 => (8, &b[2..]),
        (Some(b'0'), Some(b'x')) if b.len() >= 3 => (16, &b[2..]),
        (Some(b'0'), _) => (8, &b[1..]),
        (Some(_), _) => (10, b),
        (None, _) => return None,
    };
    let mut value: u64 = 0;
    let mut underscores = false;
    for &c in digits {
        if c == b'_' {
            underscores = true;
            continue;
        }
        let d = char::from(c).to_digit(16).filter(|d| *d < base)?;
        value = value
            .checked_mul(u64::from(base))?
            .checked_add(u64::from(d))?;
        if value > i32::MAX as u64 {
            return None;
        }
    }
    if underscores && !underscores_ok(b) {
        return None;
    }
    u32::try_from(value).ok()
}

/// Go's rule: `_` only between digits, or between a base prefix and a digit.
fn underscores_ok(s: &[u8]) -> bool {
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if s.len() >= 2 && s[0] == b'0' && matches!(s[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = s[1].eq_ignore_ascii_case(&b'x');
    }
    for &c in &s[i..] {
        if c.is_ascii_digit() || hex && c.is_ascii_hexdigit() {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
    }
    saw != b'_'
}

struct DirDoc {
    stream: Option<String>,
    dir: DirManifest,
}

impl<'de> Deserialize<'de> for DirDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DirDoc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a directory listing object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<DirDoc, A::Error> {
                let mut doc = DirDoc {
                    stream: None,
                    dir: DirManifest::default(),
                };
                while let Some(key) =
                    map.next_key_seed(FieldKey(&["stream", "entries", "summary"]))?
                {
                    match key {
                        Some("stream") => {
                            if let Some(s) = map.next_value::<Option<String>>()? {
                                doc.stream = Some(s);
                            }
                        }
                        Some("entries") => {
                            doc.dir.entries = map
                                .next_value_seed(BoundedList::<DirEntry>::of_pointers(
                                    MAX_DIR_ENTRIES,
                                    "directory entries",
                                ))?
                                .unwrap_or_default();
                        }
                        Some("summary") => doc.dir.summary = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(doc)
            }
        }
        d.deserialize_map(V)
    }
}

const DIR_ENTRY_FIELDS: &[&str] = &[
    "name", "type", "mode", "size", "mtime", "uid", "gid", "obj", "summ",
];

impl<'de> Deserialize<'de> for DirEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DirEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a directory entry object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<DirEntry, A::Error> {
                let mut e = DirEntry::default();
                while let Some(key) = map.next_key_seed(FieldKey(DIR_ENTRY_FIELDS))? {
                    match key {
                        Some("name") => e.name = map.next_value::<GoBytes>()?.0,
                        Some("type") => {
                            e.entry_type = EntryType::from_text(
                                map.next_value::<Option<String>>()?.unwrap_or_default(),
                            )
                        }
                        // Kopia fails on a null mode (it parses the empty string).
                        Some("mode") => {
                            let text = map.next_value::<Option<String>>()?.unwrap_or_default();
                            e.mode = parse_mode(&text).map_err(de::Error::custom)?;
                        }
                        Some("size") => e.size = map.next_value::<Option<i64>>()?.unwrap_or(e.size),
                        Some("mtime") => e.mtime = map.next_value()?,
                        Some("uid") => e.uid = map.next_value::<Option<u32>>()?.unwrap_or(e.uid),
                        Some("gid") => e.gid = map.next_value::<Option<u32>>()?.unwrap_or(e.gid),
                        Some("obj") => e.object_id = map.next_value()?,
                        Some("summ") => e.summary = map.next_value()?,
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

const SUMMARY_FIELDS: &[&str] = &[
    "size",
    "files",
    "symlinks",
    "dirs",
    "maxTime",
    "incomplete",
    "numFailed",
    "numIgnoredErrors",
    "errors",
];

impl<'de> Deserialize<'de> for DirectorySummary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DirectorySummary;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a directory summary object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<DirectorySummary, A::Error> {
                let mut s = DirectorySummary::default();
                while let Some(key) = map.next_key_seed(FieldKey(SUMMARY_FIELDS))? {
                    let int = |v: Option<i64>, old: i64| v.unwrap_or(old);
                    match key {
                        Some("size") => s.size = int(map.next_value()?, s.size),
                        Some("files") => s.files = int(map.next_value()?, s.files),
                        Some("symlinks") => s.symlinks = int(map.next_value()?, s.symlinks),
                        Some("dirs") => s.dirs = int(map.next_value()?, s.dirs),
                        Some("maxTime") => s.max_time = map.next_value()?,
                        Some("incomplete") => {
                            s.incomplete =
                                map.next_value::<Option<String>>()?.unwrap_or(s.incomplete)
                        }
                        Some("numFailed") => s.num_failed = int(map.next_value()?, s.num_failed),
                        Some("numIgnoredErrors") => {
                            s.num_ignored_errors = int(map.next_value()?, s.num_ignored_errors)
                        }
                        Some("errors") => {
                            s.errors = map
                                .next_value_seed(BoundedList::<FailedEntry>::of_pointers(
                                    MAX_SUMMARY_ERRORS,
                                    "failed entries",
                                ))?
                                .unwrap_or_default();
                        }
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

impl<'de> Deserialize<'de> for FailedEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FailedEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a failed entry object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<FailedEntry, A::Error> {
                let mut e = FailedEntry::default();
                while let Some(key) = map.next_key_seed(FieldKey(&["path", "error"]))? {
                    match key {
                        Some("path") => e.path = map.next_value::<GoBytes>()?.0,
                        Some("error") => e.error = map.next_value::<GoBytes>()?.0,
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

/// Builds a listing and its summary the way kopia's `DirManifestBuilder` does.
#[derive(Clone, Debug, Default)]
pub struct DirManifestBuilder {
    summary: DirectorySummary,
    entries: Vec<DirEntry>,
}

impl DirManifestBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; its size, type and child summary are folded into the summary.
    pub fn add_entry(&mut self, entry: DirEntry) {
        let s = &mut self.summary;
        s.max_time = s.max_time.max(entry.mtime);
        match entry.entry_type {
            EntryType::Symlink => s.symlinks = s.symlinks.wrapping_add(1),
            EntryType::File => {
                s.files = s.files.wrapping_add(1);
                s.size = s.size.wrapping_add(entry.size);
            }
            EntryType::Directory => {
                if let Some(child) = &entry.summary {
                    s.files = s.files.wrapping_add(child.files);
                    s.size = s.size.wrapping_add(child.size);
                    s.dirs = s.dirs.wrapping_add(child.dirs);
                    s.symlinks = s.symlinks.wrapping_add(child.symlinks);
                    s.num_failed = s.num_failed.wrapping_add(child.num_failed);
                    s.num_ignored_errors =
                        s.num_ignored_errors.wrapping_add(child.num_ignored_errors);
                    s.errors.extend_from_slice(&child.errors);
                    s.max_time = s.max_time.max(child.max_time);
                }
            }
            EntryType::Other(_) => {}
        }
        self.entries.push(entry);
    }

    /// Records an entry that could not be snapshotted; `rel_path` is relative to the snapshot root.
    pub fn add_failed_entry(&mut self, rel_path: Vec<u8>, ignored: bool, error: Vec<u8>) {
        let s = &mut self.summary;
        if ignored {
            s.num_ignored_errors = s.num_ignored_errors.wrapping_add(1);
        } else {
            s.num_failed = s.num_failed.wrapping_add(1);
        }
        s.errors.push(FailedEntry {
            path: rel_path,
            error,
        });
    }

    /// The listing: directories first, then by name bytewise; the summary counts this directory,
    /// takes `dir_mtime` as `maxTime` only when there are no entries, and keeps all failures
    /// sorted by path (kopia means to keep 10 but, through slice aliasing, writes them all).
    pub fn build(&self, dir_mtime: UtcTimestamp, incomplete: &str) -> DirManifest {
        let mut summary = self.summary.clone();
        summary.dirs = summary.dirs.wrapping_add(1);
        if self.entries.is_empty() {
            summary.max_time = dir_mtime;
        }
        summary.incomplete = incomplete.to_string();
        summary.errors.sort_by(|a, b| a.path.cmp(&b.path));
        let mut entries = self.entries.clone();
        sort_entries(&mut entries);
        DirManifest {
            entries,
            summary: Some(summary),
        }
    }
}

/// Kopia's listing order: directories first, then everything else, each by raw name bytes.
pub fn sort_entries(entries: &mut [DirEntry]) {
    entries.sort_by(|a, b| {
        let dir = |e: &DirEntry| e.entry_type != EntryType::Directory;
        (dir(a), &a.name).cmp(&(dir(b), &b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_bits_like_go() {
        assert_eq!(mode::from_unix(0o100644), 0o644);
        assert_eq!(format!("0{:o}", mode::from_unix(0o4755)), "040000755");
        assert_eq!(format!("0{:o}", mode::from_unix(0o2775)), "020000775");
        assert_eq!(format!("0{:o}", mode::from_unix(0o1777)), "04000777");
        for m in [0, 0o644, 0o4755, 0o2775, 0o1777, 0o7777] {
            assert_eq!(mode::to_unix(mode::from_unix(m)), m);
        }
    }

    #[test]
    fn parses_modes_like_strconv() {
        let cases = [
            ("0644", Some(0o644)),
            ("0x1ff", Some(0o777)),
            ("420", Some(420)),
            ("0o644", Some(0o644)),
            ("0_644", Some(0o644)),
            ("0b111", Some(7)),
            ("0", Some(0)),
            ("017777777777", Some(0x7fff_ffff)),
            ("020000000000", None),
            ("09", None),
            ("", None),
            ("0x", None),
            ("-1", None),
            ("0__644", None),
            ("644_", None),
            ("+0644", Some(0o644)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_mode(text).ok(), want, "{text}");
        }
    }

    #[test]
    fn builder_summarises() {
        let mut b = DirManifestBuilder::new();
        b.add_entry(DirEntry {
            name: b"b".to_vec(),
            entry_type: EntryType::File,
            size: 5,
            mtime: UtcTimestamp(7),
            ..Default::default()
        });
        b.add_entry(DirEntry {
            name: b"l".to_vec(),
            entry_type: EntryType::Symlink,
            size: 3,
            ..Default::default()
        });
        b.add_failed_entry(b"z".to_vec(), true, b"e1".to_vec());
        b.add_failed_entry(b"a".to_vec(), false, b"e2".to_vec());
        b.add_entry(DirEntry {
            name: b"a".to_vec(),
            entry_type: EntryType::Directory,
            summary: Some(DirectorySummary {
                size: 10,
                files: 2,
                dirs: 1,
                max_time: UtcTimestamp(9),
                ..Default::default()
            }),
            ..Default::default()
        });
        let dir = b.build(UtcTimestamp(100), "");
        let names: Vec<&[u8]> = dir.entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [b"a", b"b", b"l"]);
        let s = dir.summary.unwrap();
        assert_eq!(
            (s.size, s.files, s.symlinks, s.dirs, s.max_time),
            (15, 3, 1, 2, UtcTimestamp(9))
        );
        assert_eq!((s.num_failed, s.num_ignored_errors), (1, 1));
        assert_eq!(s.errors[0].path, b"a");

        let empty = DirManifestBuilder::new().build(UtcTimestamp(100), "checkpoint");
        assert_eq!(
            encode_dir_manifest(&empty),
            b"{\"stream\":\"kopia:directory\",\"entries\":null,\"summary\":{\"size\":0,\"files\":0,\"symlinks\":0,\"dirs\":1,\"maxTime\":\"1970-01-01T00:00:00.0000001Z\",\"incomplete\":\"checkpoint\",\"numFailed\":0}}\n"
        );
    }

    #[test]
    fn decode_limits_and_errors() {
        for bad in [
            &b"{}"[..],
            b"{\"stream\":\"kopia:directory\",\"entries\":[null]}",
            b"{\"stream\":\"kopia:directory\",\"entries\":[{\"mode\":null}]}",
            b"{\"stream\":\"kopia:directory\",\"entries\":[{\"uid\":-1}]}",
            b"{\"stream\":\"kopia:directory\",\"entries\":{}}",
            b"[",
            b"",
            b"\xff",
        ] {
            assert!(
                decode_dir_manifest(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Deeply nested unknown values are skipped without recursion (no stack overflow).
        let deep = format!(
            "{{\"stream\":\"kopia:directory\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode_dir_manifest(deep.as_bytes()).is_ok());
        let deep_typed = format!(
            "{{\"stream\":\"kopia:directory\",\"summary\":{}",
            "{\"errors\":[".repeat(10_000)
        );
        assert!(decode_dir_manifest(deep_typed.as_bytes()).is_err());
    }
}
