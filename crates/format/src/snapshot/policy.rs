//! Snapshot policies (kopia's `policy.Policy`): the stored JSON, the built-in defaults, the
//! hierarchy of sources a policy is looked up at, and the merge into an effective policy.
//!
//! Every field kopia defines is typed. Keys this version does not know are kept, in order, in each
//! object's `unknown` field and written back after the known ones, so rewriting a policy from a
//! newer kopia does not lose settings (kopia itself would drop them).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::Result;
use crate::snapshot::json::{
    BoundedList, ObjectWriter, json_error, match_field, write_bool, write_compact, write_i64,
    write_str, write_string_list,
};
use crate::snapshot::manifest::{
    HOSTNAME_LABEL, PATH_LABEL, SourceInfo, TYPE_LABEL, USERNAME_LABEL,
};

/// Manifest `type` label of policies.
pub const POLICY_MANIFEST_TYPE: &str = "policy";
pub const POLICY_TYPE_LABEL: &str = "policyType";
const MAX_LIST: usize = 1 << 20;

/// Keys of a policy object this version does not know, with their JSON text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnknownFields(Vec<(String, String)>);

impl UnknownFields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A value in a policy document with Go's encoding rules.
trait GoField {
    /// Go's `omitempty` test (never true for structs).
    fn omit(&self) -> bool;
    fn write(&self, out: &mut Vec<u8>);
    /// Decodes into `self` like Go: `null` leaves values alone and clears pointers and slices.
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error>;
}

impl GoField for bool {
    fn omit(&self) -> bool {
        !*self
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_bool(out, *self);
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        if let Some(v) = Option::deserialize(d)? {
            *self = v;
        }
        Ok(())
    }
}

impl GoField for i64 {
    fn omit(&self) -> bool {
        *self == 0
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_i64(out, *self);
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        if let Some(v) = Option::deserialize(d)? {
            *self = v;
        }
        Ok(())
    }
}

impl GoField for String {
    fn omit(&self) -> bool {
        self.is_empty()
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_str(out, self.as_bytes());
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        if let Some(v) = Option::deserialize(d)? {
            *self = v;
        }
        Ok(())
    }
}

/// Go pointers to scalars (`*OptionalBool`, `*OptionalInt`, `*LogDetail`, …).
macro_rules! optional_scalar {
    ($($t:ty),*) => {$(
        impl GoField for Option<$t> {
            fn omit(&self) -> bool {
                self.is_none()
            }
            fn write(&self, out: &mut Vec<u8>) {
                match self {
                    Some(v) => GoScalar::write_scalar(v, out),
                    None => out.extend_from_slice(b"null"),
                }
            }
            fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
                *self = Option::deserialize(d)?;
                Ok(())
            }
        }
    )*};
}

trait GoScalar {
    fn write_scalar(&self, out: &mut Vec<u8>);
}
impl GoScalar for bool {
    fn write_scalar(&self, out: &mut Vec<u8>) {
        write_bool(out, *self);
    }
}
impl GoScalar for i64 {
    fn write_scalar(&self, out: &mut Vec<u8>) {
        write_i64(out, *self);
    }
}
impl GoScalar for u8 {
    fn write_scalar(&self, out: &mut Vec<u8>) {
        write_i64(out, i64::from(*self));
    }
}
optional_scalar!(bool, i64, u8);

impl GoField for Vec<String> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_string_list(out, self);
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        *self = BoundedList::<String>::of_values(MAX_LIST, "strings")
            .deserialize(d)?
            .unwrap_or_default();
        Ok(())
    }
}

impl GoField for Vec<TimeOfDay> {
    fn omit(&self) -> bool {
        self.is_empty()
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, t) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            t.write(out);
        }
        out.push(b']');
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        *self = BoundedList::<TimeOfDay>::of_values(MAX_LIST, "times of day")
            .deserialize(d)?
            .unwrap_or_default();
        Ok(())
    }
}

impl GoField for Option<ActionCommand> {
    fn omit(&self) -> bool {
        self.is_none()
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Some(a) => a.write(out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
        *self = Option::<ActionCommand>::deserialize(d)?;
        Ok(())
    }
}

/// Decodes a value into an existing field.
struct ReadInto<'a, T>(&'a mut T);

impl<'de, T: GoField> DeserializeSeed<'de> for ReadInto<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        self.0.read(d)
    }
}

/// An object key: the Go field it selects, or the key itself when unknown.
struct PolicyKey(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for PolicyKey {
    type Value = std::result::Result<&'static str, String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        let key = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(match_field(self.0, &key).ok_or_else(|| key.into_owned()))
    }
}

/// Declares a policy object: the struct (fields in Go order), its encoder and its decoder.
macro_rules! policy_object {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty = $key:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub unknown: UnknownFields,
        }

        impl $name {
            const FIELDS: &'static [&'static str] = &[$($key),*];

            fn write(&self, out: &mut Vec<u8>) {
                let mut obj = ObjectWriter::begin(out);
                $(if !GoField::omit(&self.$field) {
                    GoField::write(&self.$field, obj.field($key));
                })*
                for (k, raw) in &self.unknown.0 {
                    write_compact(obj.escaped_field(k.as_bytes()), raw.as_bytes());
                }
                obj.end();
            }

            fn read_map<'de, A: MapAccess<'de>>(&mut self, mut map: A) -> std::result::Result<(), A::Error> {
                while let Some(key) = map.next_key_seed(PolicyKey(Self::FIELDS))? {
                    match key {
                        $(Ok($key) => map.next_value_seed(ReadInto(&mut self.$field))?,)*
                        Ok(_) => skip_value(&mut map)?,
                        Err(name) => {
                            let raw = map.next_value::<Box<RawValue>>()?;
                            self.unknown.0.push((name, raw.get().to_string()));
                        }
                    }
                }
                Ok(())
            }

            /// Drops unknown keys here and in nested objects, so the encoding is what kopia would
            /// write for the same policy.
            pub fn clear_unknown(&mut self) {
                self.unknown = UnknownFields::default();
                $(ClearUnknown::clear(&mut self.$field);)*
            }
        }

        impl GoField for $name {
            fn omit(&self) -> bool {
                false
            }
            fn write(&self, out: &mut Vec<u8>) {
                $name::write(self, out);
            }
            fn read<'de, D: Deserializer<'de>>(&mut self, d: D) -> std::result::Result<(), D::Error> {
                d.deserialize_option(ObjectInto(self))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let mut v = $name::default();
                d.deserialize_map(ObjectInto(&mut v))?;
                Ok(v)
            }
        }

        impl<'de> Visitor<'de> for ObjectInto<'_, $name> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a {} object", stringify!($name))
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<(), E> {
                Ok(())
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
                Ok(())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
                d.deserialize_map(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<(), A::Error> {
                self.0.read_map(map)
            }
        }

        impl ClearUnknown for $name {
            fn clear(&mut self) {
                self.clear_unknown();
            }
        }
    };
}

/// Decodes an object into an existing struct (Go merges into the value already there).
struct ObjectInto<'a, T>(&'a mut T);

/// Skips a value whose key needs no decoding.
fn skip_value<'de, A: MapAccess<'de>>(map: &mut A) -> std::result::Result<(), A::Error> {
    map.next_value::<de::IgnoredAny>().map(|_| ())
}

/// Reaches nested policy objects for `clear_unknown`; scalars and lists have nothing to clear.
trait ClearUnknown {
    fn clear(&mut self) {}
}
impl ClearUnknown for bool {}
impl ClearUnknown for i64 {}
impl ClearUnknown for String {}
impl<T> ClearUnknown for Vec<T> {}
impl ClearUnknown for Option<bool> {}
impl ClearUnknown for Option<i64> {}
impl ClearUnknown for Option<u8> {}
impl ClearUnknown for Option<ActionCommand> {
    fn clear(&mut self) {
        if let Some(a) = self {
            a.clear_unknown();
        }
    }
}

policy_object!(
    /// Snapshot retention counts (§8 of the spec); `None` inherits.
    RetentionPolicy {
        keep_latest: Option<i64> = "keepLatest",
        keep_hourly: Option<i64> = "keepHourly",
        keep_daily: Option<i64> = "keepDaily",
        keep_weekly: Option<i64> = "keepWeekly",
        keep_monthly: Option<i64> = "keepMonthly",
        keep_annual: Option<i64> = "keepAnnual",
        ignore_identical_snapshots: Option<bool> = "ignoreIdenticalSnapshots",
    }
);

policy_object!(
    /// Which files are snapshotted.
    FilesPolicy {
        /// Gitignore-style rules attached to this directory.
        ignore_rules: Vec<String> = "ignore",
        no_parent_ignore: bool = "noParentIgnore",
        /// Names of ignore files (default `.kopiaignore`).
        dot_ignore_files: Vec<String> = "ignoreDotFiles",
        no_parent_dot_files: bool = "noParentDotFiles",
        /// Effective default: true.
        ignore_cache_dirs: Option<bool> = "ignoreCacheDirs",
        max_file_size: i64 = "maxFileSize",
        one_file_system: Option<bool> = "oneFileSystem",
    }
);

policy_object!(
    ErrorHandlingPolicy {
        ignore_file_errors: Option<bool> = "ignoreFileErrors",
        ignore_directory_errors: Option<bool> = "ignoreDirectoryErrors",
        ignore_unknown_types: Option<bool> = "ignoreUnknownTypes",
    }
);

/// A time of day in a scheduling policy (`{"hour":H,"min":M}`, both always written).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    pub hour: i64,
    pub minute: i64,
}

impl TimeOfDay {
    fn write(&self, out: &mut Vec<u8>) {
        let mut obj = ObjectWriter::begin(out);
        write_i64(obj.field("hour"), self.hour);
        write_i64(obj.field("min"), self.minute);
        obj.end();
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeOfDay;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a time of day object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<TimeOfDay, A::Error> {
                let mut t = TimeOfDay::default();
                while let Some(key) = map.next_key_seed(PolicyKey(&["hour", "min"]))? {
                    match key {
                        Ok("hour") => map.next_value_seed(ReadInto(&mut t.hour))?,
                        Ok(_) => map.next_value_seed(ReadInto(&mut t.minute))?,
                        Err(_) => skip_value(&mut map)?,
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

policy_object!(
    SchedulingPolicy {
        interval_seconds: i64 = "intervalSeconds",
        times_of_day: Vec<TimeOfDay> = "timeOfDay",
        no_parent_time_of_day: bool = "noParentTimeOfDay",
        manual: bool = "manual",
        /// Cron expressions; text after `#` is a comment.
        cron: Vec<String> = "cron",
        run_missed: Option<bool> = "runMissed",
    }
);

policy_object!(
    CompressionPolicy {
        compressor_name: String = "compressorName",
        /// Extensions including the dot; merged as a sorted union.
        only_compress: Vec<String> = "onlyCompress",
        no_parent_only_compress: bool = "noParentOnlyCompress",
        never_compress: Vec<String> = "neverCompress",
        no_parent_never_compress: bool = "noParentNeverCompress",
        min_size: i64 = "minSize",
        max_size: i64 = "maxSize",
    }
);

policy_object!(MetadataCompressionPolicy {
    compressor_name: String = "compressorName",
});

policy_object!(SplitterPolicy {
    /// A registered splitter name; empty (or unknown) means the repository default.
    algorithm: String = "algorithm",
});

policy_object!(
    /// A command run before or after a folder or snapshot root.
    ActionCommand {
        command: String = "path",
        args: Vec<String> = "args",
        /// Alternative to `command`: an inline script.
        script: String = "script",
        timeout_seconds: i64 = "timeout",
        /// `essential`, `optional` or `async`.
        mode: String = "mode",
    }
);

policy_object!(
    ActionsPolicy {
        /// Folder actions are not inherited.
        before_folder: Option<ActionCommand> = "beforeFolder",
        after_folder: Option<ActionCommand> = "afterFolder",
        before_snapshot_root: Option<ActionCommand> = "beforeSnapshotRoot",
        after_snapshot_root: Option<ActionCommand> = "afterSnapshotRoot",
    }
);

policy_object!(
    VolumeShadowCopyPolicy {
        /// 0 never, 1 always, 2 when available (Windows only).
        enable: Option<u8> = "enable",
    }
);

policy_object!(OsSnapshotPolicy {
    volume_shadow_copy: VolumeShadowCopyPolicy = "volumeShadowCopy",
});

policy_object!(
    /// Log detail levels: 0 none, 5 normal, 10 max.
    DirLoggingPolicy {
        snapshotted: Option<i64> = "snapshotted",
        ignored: Option<i64> = "ignored",
    }
);

policy_object!(
    EntryLoggingPolicy {
        snapshotted: Option<i64> = "snapshotted",
        ignored: Option<i64> = "ignored",
        cache_hit: Option<i64> = "cacheHit",
        cache_miss: Option<i64> = "cacheMiss",
    }
);

policy_object!(LoggingPolicy {
    directories: DirLoggingPolicy = "directories",
    entries: EntryLoggingPolicy = "entries",
});

policy_object!(
    UploadPolicy {
        max_parallel_snapshots: Option<i64> = "maxParallelSnapshots",
        max_parallel_file_reads: Option<i64> = "maxParallelFileReads",
        /// Files above this size are uploaded in parallel parts (default 2 GiB).
        parallel_upload_above_size: Option<i64> = "parallelUploadAboveSize",
    }
);

policy_object!(
    /// A stored policy, or an effective (merged) one.
    Policy {
        retention: RetentionPolicy = "retention",
        files: FilesPolicy = "files",
        error_handling: ErrorHandlingPolicy = "errorHandling",
        scheduling: SchedulingPolicy = "scheduling",
        compression: CompressionPolicy = "compression",
        metadata_compression: MetadataCompressionPolicy = "metadataCompression",
        splitter: SplitterPolicy = "splitter",
        actions: ActionsPolicy = "actions",
        os_snapshots: OsSnapshotPolicy = "osSnapshots",
        logging: LoggingPolicy = "logging",
        upload: UploadPolicy = "upload",
        /// Stops inheritance at this policy (and skips the built-in defaults).
        no_parent: bool = "noParent",
    }
);

impl Policy {
    /// Kopia's `DefaultPolicy`: stored as the global policy by `repository create` and merged in
    /// last when computing an effective policy.
    pub fn kopia_default() -> Self {
        Policy {
            retention: RetentionPolicy {
                keep_latest: Some(10),
                keep_hourly: Some(48),
                keep_daily: Some(7),
                keep_weekly: Some(4),
                keep_monthly: Some(24),
                keep_annual: Some(3),
                ignore_identical_snapshots: Some(false),
                ..Default::default()
            },
            files: FilesPolicy {
                dot_ignore_files: vec![".kopiaignore".into()],
                ..Default::default()
            },
            error_handling: ErrorHandlingPolicy {
                ignore_file_errors: Some(false),
                ignore_directory_errors: Some(false),
                ignore_unknown_types: Some(true),
                ..Default::default()
            },
            scheduling: SchedulingPolicy {
                run_missed: Some(true),
                ..Default::default()
            },
            compression: CompressionPolicy {
                compressor_name: "none".into(),
                ..Default::default()
            },
            metadata_compression: MetadataCompressionPolicy {
                compressor_name: "zstd-fastest".into(),
                ..Default::default()
            },
            os_snapshots: OsSnapshotPolicy {
                volume_shadow_copy: VolumeShadowCopyPolicy {
                    enable: Some(0),
                    ..Default::default()
                },
                ..Default::default()
            },
            logging: LoggingPolicy {
                directories: DirLoggingPolicy {
                    snapshotted: Some(5),
                    ignored: Some(5),
                    ..Default::default()
                },
                entries: EntryLoggingPolicy {
                    snapshotted: Some(0),
                    ignored: Some(5),
                    cache_hit: Some(0),
                    cache_miss: Some(0),
                    ..Default::default()
                },
                ..Default::default()
            },
            upload: UploadPolicy {
                max_parallel_snapshots: Some(1),
                max_parallel_file_reads: None,
                parallel_upload_above_size: Some(2 << 30),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

impl CompressionPolicy {
    /// Kopia's `CompressorForFile`: the compressor for a file named `name` (raw bytes) of `size`
    /// bytes, or `""` for none. Extension lists are searched as sorted lists, as kopia does.
    pub fn compressor_for_file(&self, name: &[u8], size: i64) -> &str {
        if self.compressor_name == "none" {
            return "";
        }
        if (self.min_size > 0 && size < self.min_size)
            || (self.max_size > 0 && size > self.max_size)
        {
            return "";
        }
        let ext = file_ext(name);
        if !self.only_compress.is_empty() && in_sorted(&self.only_compress, ext) {
            return &self.compressor_name;
        }
        if in_sorted(&self.never_compress, ext) {
            return "";
        }
        &self.compressor_name
    }
}

impl MetadataCompressionPolicy {
    /// The compressor for directory listings and indirect indexes; `"none"` means none (`""`).
    pub fn metadata_compressor(&self) -> &str {
        if self.compressor_name == "none" {
            ""
        } else {
            &self.compressor_name
        }
    }
}

/// Go's `filepath.Ext`: from the last `.` of the last path element, or empty.
fn file_ext(name: &[u8]) -> &[u8] {
    for (i, &c) in name.iter().enumerate().rev() {
        match c {
            b'/' => break,
            b'.' => return &name[i..],
            _ => {}
        }
    }
    &[]
}

/// Go's `sort.SearchStrings` then an equality check (exact even on unsorted input).
fn in_sorted(list: &[String], x: &[u8]) -> bool {
    let (mut lo, mut hi) = (0, list.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if list[mid].as_bytes() < x {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    list.get(lo).is_some_and(|s| s.as_bytes() == x)
}

/// Encodes like kopia's `json.Marshal` (no trailing newline).
pub fn encode_policy(p: &Policy) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    p.write(&mut out);
    out
}

/// Decodes like kopia's `json.Unmarshal` (case-insensitive keys, `null` = unset); unknown keys
/// are kept in the objects' `unknown` fields.
pub fn decode_policy(data: &[u8]) -> Result<Policy> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let mut p = Policy::default();
    GoField::read(&mut p, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| json_error("policy", e))?;
    Ok(p)
}

/// The manifest labels of the policy for `source`: global, host (`@host`), user (`user@host`)
/// or path (`user@host:/path`).
pub fn policy_labels(source: &SourceInfo) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(TYPE_LABEL.to_string(), POLICY_MANIFEST_TYPE.to_string())]);
    let mut add = |k: &str, v: &str| {
        labels.insert(k.to_string(), v.to_string());
    };
    if !source.path.is_empty() {
        add(POLICY_TYPE_LABEL, "path");
        add(USERNAME_LABEL, &source.user_name);
        add(HOSTNAME_LABEL, &source.host);
        add(PATH_LABEL, &source.path);
    } else if !source.user_name.is_empty() {
        add(POLICY_TYPE_LABEL, "user");
        add(USERNAME_LABEL, &source.user_name);
        add(HOSTNAME_LABEL, &source.host);
    } else if !source.host.is_empty() {
        add(POLICY_TYPE_LABEL, "host");
        add(HOSTNAME_LABEL, &source.host);
    } else {
        add(POLICY_TYPE_LABEL, "global");
    }
    labels
}

/// The sources whose stored policies apply to `source`, most specific first, as kopia's
/// `GetPolicyHierarchy` queries them: the path and each parent up to the root, then `user@host`,
/// `@host` and global. Look each up with [`policy_labels`] (an entry may repeat, as in kopia).
pub fn policy_lookup_order(source: &SourceInfo) -> Vec<SourceInfo> {
    let mut order = Vec::new();
    if !source.path.is_empty() {
        let mut path = source.path.clone();
        loop {
            order.push(SourceInfo {
                path: path.clone(),
                ..source.clone()
            });
            let parent = parent_path(&path);
            if parent == path {
                break;
            }
            path = parent;
        }
    }
    order.push(SourceInfo {
        host: source.host.clone(),
        user_name: source.user_name.clone(),
        path: String::new(),
    });
    order.push(SourceInfo {
        host: source.host.clone(),
        ..Default::default()
    });
    order.push(SourceInfo::default());
    order
}

/// Kopia's OS-independent parent: `/` and `\` both separate, a Windows volume `X:` is kept and the
/// root is its own parent.
pub fn parent_path(p: &str) -> String {
    let b = p.as_bytes();
    let (vol, mut path) = if b.len() >= 3 && b[1] == b':' && matches!(b[2], b'/' | b'\\') {
        p.split_at(2)
    } else {
        ("", p)
    };
    let mut last = path.rfind(['/', '\\']);
    if path.is_empty() {
        return p.to_string();
    }
    if last == Some(path.len() - 1) && last != Some(0) {
        path = &path[..path.len() - 1];
        last = path.rfind(['/', '\\']);
    }
    match last {
        None => p.to_string(),
        Some(0) => format!("{vol}{}", &path[..1]),
        Some(i) => format!("{vol}{}", &path[..i]),
    }
}

/// Which source defined each field of a merged policy, keyed by the field's JSON path
/// (e.g. `retention.keepLatest`, `logging.entries.cacheHit`). Fields from the built-in
/// defaults map to the global source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Definition(BTreeMap<&'static str, SourceInfo>);

impl Definition {
    pub fn source_of(&self, field: &str) -> Option<&SourceInfo> {
        self.0.get(field)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &SourceInfo)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

/// The effective policy for `source` from the stored policies found for it, in
/// [`policy_lookup_order`] order with each policy's target. As kopia does, an empty policy for
/// `source` is put first unless the first found policy is for `source` itself.
pub fn effective_policy(
    source: &SourceInfo,
    found: &[(SourceInfo, Policy)],
) -> (Policy, Definition) {
    if found.first().is_some_and(|(target, _)| target == source) {
        return merge_policies(found);
    }
    let mut all = Vec::with_capacity(found.len() + 1);
    all.push((source.clone(), Policy::default()));
    all.extend_from_slice(found);
    merge_policies(&all)
}

/// Kopia's `MergePolicies`: walks `(target, policy)` pairs from most to least specific and fills
/// each field that is still unset, then the built-in defaults (unless a policy had `noParent`);
/// folder actions come only from the first policy.
pub fn merge_policies(policies: &[(SourceInfo, Policy)]) -> (Policy, Definition) {
    let mut merged = Policy::default();
    let mut def = Definition::default();
    for (target, p) in policies {
        merge_into(
            &mut merged,
            p,
            &mut Merger {
                def: &mut def,
                source: target,
            },
        );
        if p.no_parent {
            return (merged, def);
        }
    }
    let global = SourceInfo::default();
    merge_into(
        &mut merged,
        &Policy::kopia_default(),
        &mut Merger {
            def: &mut def,
            source: &global,
        },
    );
    if let Some((_, first)) = policies.first() {
        merged.actions.before_folder = first.actions.before_folder.clone();
        merged.actions.after_folder = first.actions.after_folder.clone();
    }
    (merged, def)
}

struct Merger<'a> {
    def: &'a mut Definition,
    source: &'a SourceInfo,
}

impl Merger<'_> {
    fn defined(&mut self, key: &'static str) {
        self.def.0.insert(key, self.source.clone());
    }

    /// Pointers: the first non-nil value wins.
    fn first<T: Clone>(&mut self, key: &'static str, target: &mut Option<T>, src: &Option<T>) {
        if target.is_none() && src.is_some() {
            target.clone_from(src);
            self.defined(key);
        }
    }

    fn int(&mut self, key: &'static str, target: &mut i64, src: i64) {
        if *target == 0 && src != 0 {
            *target = src;
            self.defined(key);
        }
    }

    fn string(&mut self, key: &'static str, target: &mut String, src: &str) {
        if target.is_empty() && !src.is_empty() {
            *target = src.to_string();
            self.defined(key);
        }
    }

    fn flag(&mut self, key: &'static str, target: &mut bool, src: bool) {
        if !*target && src {
            *target = true;
            self.defined(key);
        }
    }

    /// Lists that replace: the first non-empty one wins.
    fn list(&mut self, key: &'static str, target: &mut Vec<String>, src: &[String]) {
        if target.is_empty() && !src.is_empty() {
            *target = src.to_vec();
            self.defined(key);
        }
    }

    /// Lists that accumulate: sorted union, until a level sets its `noParent…` flag.
    fn union(
        &mut self,
        key: &'static str,
        target: &mut Vec<String>,
        target_stop: &mut bool,
        src: &[String],
        src_stop: bool,
    ) {
        if *target_stop {
            return;
        }
        if !src.is_empty() {
            self.defined(key);
        }
        target.extend_from_slice(src);
        target.sort();
        target.dedup();
        if src_stop {
            *target_stop = true;
        }
    }
}

fn merge_into(p: &mut Policy, src: &Policy, m: &mut Merger) {
    let (r, s) = (&mut p.retention, &src.retention);
    m.first("retention.keepLatest", &mut r.keep_latest, &s.keep_latest);
    m.first("retention.keepHourly", &mut r.keep_hourly, &s.keep_hourly);
    m.first("retention.keepDaily", &mut r.keep_daily, &s.keep_daily);
    m.first("retention.keepWeekly", &mut r.keep_weekly, &s.keep_weekly);
    m.first(
        "retention.keepMonthly",
        &mut r.keep_monthly,
        &s.keep_monthly,
    );
    m.first("retention.keepAnnual", &mut r.keep_annual, &s.keep_annual);
    m.first(
        "retention.ignoreIdenticalSnapshots",
        &mut r.ignore_identical_snapshots,
        &s.ignore_identical_snapshots,
    );

    let (f, s) = (&mut p.files, &src.files);
    m.list("files.ignore", &mut f.ignore_rules, &s.ignore_rules);
    m.flag(
        "files.noParentIgnore",
        &mut f.no_parent_ignore,
        s.no_parent_ignore,
    );
    m.list(
        "files.ignoreDotFiles",
        &mut f.dot_ignore_files,
        &s.dot_ignore_files,
    );
    m.flag(
        "files.noParentDotFiles",
        &mut f.no_parent_dot_files,
        s.no_parent_dot_files,
    );
    m.first(
        "files.ignoreCacheDirs",
        &mut f.ignore_cache_dirs,
        &s.ignore_cache_dirs,
    );
    m.int("files.maxFileSize", &mut f.max_file_size, s.max_file_size);
    m.first(
        "files.oneFileSystem",
        &mut f.one_file_system,
        &s.one_file_system,
    );

    let (e, s) = (&mut p.error_handling, &src.error_handling);
    m.first(
        "errorHandling.ignoreFileErrors",
        &mut e.ignore_file_errors,
        &s.ignore_file_errors,
    );
    m.first(
        "errorHandling.ignoreDirectoryErrors",
        &mut e.ignore_directory_errors,
        &s.ignore_directory_errors,
    );
    m.first(
        "errorHandling.ignoreUnknownTypes",
        &mut e.ignore_unknown_types,
        &s.ignore_unknown_types,
    );

    let (sc, s) = (&mut p.scheduling, &src.scheduling);
    m.int(
        "scheduling.intervalSeconds",
        &mut sc.interval_seconds,
        s.interval_seconds,
    );
    if !s.times_of_day.is_empty() {
        // Kopia records the definition even when noParentTimeOfDay blocks the merge.
        m.defined("scheduling.timeOfDay");
        if !sc.no_parent_time_of_day {
            sc.times_of_day.splice(0..0, s.times_of_day.iter().copied());
            sc.times_of_day.sort();
            sc.times_of_day.dedup();
        }
    }
    m.list("scheduling.cron", &mut sc.cron, &s.cron);
    if s.no_parent_time_of_day {
        sc.no_parent_time_of_day = true;
    }
    m.flag("scheduling.manual", &mut sc.manual, s.manual);
    m.first("scheduling.runMissed", &mut sc.run_missed, &s.run_missed);

    let (u, s) = (&mut p.upload, &src.upload);
    m.first(
        "upload.maxParallelSnapshots",
        &mut u.max_parallel_snapshots,
        &s.max_parallel_snapshots,
    );
    m.first(
        "upload.maxParallelFileReads",
        &mut u.max_parallel_file_reads,
        &s.max_parallel_file_reads,
    );
    m.first(
        "upload.parallelUploadAboveSize",
        &mut u.parallel_upload_above_size,
        &s.parallel_upload_above_size,
    );

    let (c, s) = (&mut p.compression, &src.compression);
    m.string(
        "compression.compressorName",
        &mut c.compressor_name,
        &s.compressor_name,
    );
    m.int("compression.minSize", &mut c.min_size, s.min_size);
    m.int("compression.maxSize", &mut c.max_size, s.max_size);
    m.union(
        "compression.onlyCompress",
        &mut c.only_compress,
        &mut c.no_parent_only_compress,
        &s.only_compress,
        s.no_parent_only_compress,
    );
    m.union(
        "compression.neverCompress",
        &mut c.never_compress,
        &mut c.no_parent_never_compress,
        &s.never_compress,
        s.no_parent_never_compress,
    );

    m.string(
        "metadataCompression.compressorName",
        &mut p.metadata_compression.compressor_name,
        &src.metadata_compression.compressor_name,
    );
    m.string(
        "splitter.algorithm",
        &mut p.splitter.algorithm,
        &src.splitter.algorithm,
    );

    let (a, s) = (&mut p.actions, &src.actions);
    m.first(
        "actions.beforeSnapshotRoot",
        &mut a.before_snapshot_root,
        &s.before_snapshot_root,
    );
    m.first(
        "actions.afterSnapshotRoot",
        &mut a.after_snapshot_root,
        &s.after_snapshot_root,
    );

    m.first(
        "osSnapshots.volumeShadowCopy.enable",
        &mut p.os_snapshots.volume_shadow_copy.enable,
        &src.os_snapshots.volume_shadow_copy.enable,
    );

    let (d, s) = (&mut p.logging.directories, &src.logging.directories);
    m.first(
        "logging.directories.snapshotted",
        &mut d.snapshotted,
        &s.snapshotted,
    );
    m.first("logging.directories.ignored", &mut d.ignored, &s.ignored);
    let (e, s) = (&mut p.logging.entries, &src.logging.entries);
    m.first(
        "logging.entries.snapshotted",
        &mut e.snapshotted,
        &s.snapshotted,
    );
    m.first("logging.entries.ignored", &mut e.ignored, &s.ignored);
    m.first("logging.entries.cacheHit", &mut e.cache_hit, &s.cache_hit);
    m.first(
        "logging.entries.cacheMiss",
        &mut e.cache_miss,
        &s.cache_miss,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = r#"{"retention":{},"files":{},"errorHandling":{},"scheduling":{},"compression":{},"metadataCompression":{},"splitter":{},"actions":{},"osSnapshots":{"volumeShadowCopy":{}},"logging":{"directories":{},"entries":{}},"upload":{}}"#;

    #[test]
    fn empty_policy_bytes() {
        assert_eq!(
            String::from_utf8(encode_policy(&Policy::default())).unwrap(),
            EMPTY
        );
        assert_eq!(decode_policy(EMPTY.as_bytes()).unwrap(), Policy::default());
        assert_eq!(decode_policy(b"null").unwrap(), Policy::default());
    }

    #[test]
    fn unknown_fields_survive_rewrite() {
        let text = r#"{"retention":{"keepLatest":1,"future":{"b":[1, 2],"a":"<x>"}},"files":{},"errorHandling":{},"scheduling":{},"compression":{},"metadataCompression":{},"splitter":{},"actions":{"beforeFolder":{"path":"p","newKey":true}},"osSnapshots":{"volumeShadowCopy":{}},"logging":{"directories":{},"entries":{}},"upload":{},"newSection":{}}"#;
        let p = decode_policy(text.as_bytes()).unwrap();
        assert_eq!(p.retention.keep_latest, Some(1));
        assert_eq!(p.unknown.iter().collect::<Vec<_>>(), [("newSection", "{}")]);
        let again = String::from_utf8(encode_policy(&p)).unwrap();
        assert_eq!(
            again,
            text.replace("[1, 2]", "[1,2]")
                .replace("<x>", "\\u003cx\\u003e")
        );
    }

    #[test]
    fn decode_errors() {
        for bad in [
            &b"[]"[..],
            b"{\"retention\":{\"keepLatest\":1.5}}",
            b"{\"osSnapshots\":{\"volumeShadowCopy\":{\"enable\":256}}}",
            b"{} {}",
            b"",
        ] {
            assert!(
                decode_policy(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lookup_order_and_parents() {
        assert_eq!(parent_path("/a/b"), "/a");
        assert_eq!(parent_path("/a"), "/");
        assert_eq!(parent_path("/"), "/");
        assert_eq!(parent_path("/a/b/"), "/a");
        assert_eq!(parent_path("C:\\x\\y"), "C:\\x");
        assert_eq!(parent_path("C:\\x"), "C:\\");
        assert_eq!(parent_path("C:\\"), "C:\\");
        assert_eq!(parent_path("rel"), "rel");
        assert_eq!(parent_path(""), "");
        let si = SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: "/a/b".into(),
        };
        let order: Vec<String> = policy_lookup_order(&si)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            order,
            ["u@h:/a/b", "u@h:/a", "u@h:/", "u@h", "@h", "(global)"]
        );
        assert_eq!(policy_labels(&order_source("@h"))["policyType"], "host");
    }

    fn order_source(s: &str) -> SourceInfo {
        let (user, host) = s.split_once('@').unwrap();
        SourceInfo {
            host: host.into(),
            user_name: user.into(),
            path: String::new(),
        }
    }

    #[test]
    fn compressor_for_file_rules() {
        let c = CompressionPolicy {
            compressor_name: "zstd".into(),
            only_compress: vec![".log".into(), ".txt".into()],
            never_compress: vec![".gz".into(), ".zip".into()],
            min_size: 10,
            ..Default::default()
        };
        assert_eq!(c.compressor_for_file(b"a.txt", 100), "zstd");
        assert_eq!(c.compressor_for_file(b"a.tar.gz", 100), "");
        assert_eq!(c.compressor_for_file(b"noext", 100), "zstd");
        assert_eq!(c.compressor_for_file(b"a.txt", 5), "");
        assert_eq!(file_ext(b"dir.d/file"), b"");
        assert_eq!(file_ext(b".bashrc"), b".bashrc");
        let none = CompressionPolicy {
            compressor_name: "none".into(),
            ..Default::default()
        };
        assert_eq!(none.compressor_for_file(b"a.txt", 100), "");
        assert_eq!(
            MetadataCompressionPolicy {
                compressor_name: "none".into(),
                ..Default::default()
            }
            .metadata_compressor(),
            ""
        );
    }
}
