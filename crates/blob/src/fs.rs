//! The filesystem store, writing exactly kopia's on-disk layout (spec §1.3): a `.shards` file with the
//! sharding parameters, each blob in `<shard dirs>/<rest of ID>.f`, written through a temp file that
//! is renamed over the final name. Kopia and kmover can share one directory.
//!
//! Unlike kopia, a put fsyncs the file and its directory (and any directory it creates) before
//! returning, so a blob that was reported written survives a crash.

use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::direct_append::DirectAppender;
use crate::{BlobBytes, BlobError, BlobMetadata, BlobStore, Result};

/// Name of the sharding parameters file in the repository root.
pub const SHARDS_FILE: &str = ".shards";
/// Suffix of every complete blob file; anything else in the tree is ignored.
pub const BLOB_SUFFIX: &str = ".f";
/// IDs at most this long stay in the root (kopia's default).
pub const DEFAULT_MAX_NON_SHARDED_LENGTH: usize = 20;
pub const DEFAULT_FILE_MODE: u32 = 0o600;
pub const DEFAULT_DIR_MODE: u32 = 0o700;

/// Bytes of randomness in a temp file name: `<path>.tmp.<16 hex>`.
const TEMP_SUFFIX_RANDOM_BYTES: usize = 8;
/// Top-level shard directories walked at the same time when listing.
const LIST_PARALLELISM: usize = 8;

/// Shard widths used instead of the default ones for IDs starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOverride {
    pub prefix: String,
    pub shards: Vec<usize>,
}

/// The content of `.shards`: how blob IDs map to directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingParameters {
    pub default_shards: Vec<usize>,
    /// IDs whose length is at most this value are stored directly in the root.
    pub max_non_sharded_length: usize,
    /// The first override whose prefix starts the ID replaces `default_shards`.
    pub overrides: Vec<ShardOverride>,
}

impl ShardingParameters {
    pub fn with_default_shards(default_shards: Vec<usize>) -> Self {
        ShardingParameters {
            default_shards,
            max_non_sharded_length: DEFAULT_MAX_NON_SHARDED_LENGTH,
            overrides: Vec::new(),
        }
    }

    /// The file content as kopia's Go `json.Encoder` writes it: compact JSON and one newline.
    pub fn to_json(&self) -> String {
        let widths = |shards: &[usize]| {
            let items: Vec<String> = shards.iter().map(usize::to_string).collect();
            format!("[{}]", items.join(","))
        };
        let mut json = format!(
            "{{\"default\":{},\"maxNonShardedLength\":{}",
            widths(&self.default_shards),
            self.max_non_sharded_length
        );
        if !self.overrides.is_empty() {
            let overrides: Vec<String> = self
                .overrides
                .iter()
                .map(|o| {
                    format!(
                        "{{\"prefix\":{},\"shards\":{}}}",
                        go_json_string(&o.prefix),
                        widths(&o.shards)
                    )
                })
                .collect();
            json.push_str(&format!(",\"overrides\":[{}]", overrides.join(",")));
        }
        json.push_str("}\n");
        json
    }

    /// Parses `.shards` the way kopia's Go decoder does: the first JSON value counts, field names
    /// match case-insensitively, unknown fields and `null`s are ignored.
    pub(crate) fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let value = match values.next() {
            None => return Err("empty file".into()),
            Some(Err(e)) => return Err(format!("not JSON: {e}")),
            Some(Ok(value)) => value,
        };
        let mut params = ShardingParameters {
            default_shards: Vec::new(),
            max_non_sharded_length: 0,
            overrides: Vec::new(),
        };
        let fields = match value {
            Value::Null => return Ok(params),
            Value::Object(fields) => fields,
            other => return Err(format!("expected a JSON object, found {other}")),
        };
        for (key, value) in &fields {
            if key.eq_ignore_ascii_case("default") {
                params.default_shards = parse_widths(value, "default")?;
            } else if key.eq_ignore_ascii_case("maxNonShardedLength") {
                if let Some(length) = parse_integer(value, "maxNonShardedLength")? {
                    // A negative limit shards every non-empty ID, exactly like a limit of 0.
                    params.max_non_sharded_length = usize::try_from(length.max(0))
                        .map_err(|_| "maxNonShardedLength is too large".to_string())?;
                }
            } else if key.eq_ignore_ascii_case("overrides") {
                params.overrides = parse_overrides(value)?;
            }
        }
        Ok(params)
    }

    /// The shard widths that apply to `id`.
    pub fn shards_for(&self, id: &str) -> &[usize] {
        self.overrides
            .iter()
            .find(|o| id.starts_with(&o.prefix))
            .map_or(&self.default_shards[..], |o| &o.shards[..])
    }

    /// Splits `id` into its shard directory names and the remaining file stem (without `.f`).
    /// Works on bytes, as kopia does, so a split inside a multi-byte character is possible.
    fn split<'a>(&self, id: &'a str) -> (Vec<&'a [u8]>, &'a [u8]) {
        let mut rest = id.as_bytes();
        let mut dirs = Vec::new();
        if rest.len() <= self.max_non_sharded_length {
            return (dirs, rest);
        }
        for &width in self.shards_for(id) {
            if rest.len() <= width {
                break;
            }
            let (dir, tail) = rest.split_at(width);
            // Kopia joins paths with Go's path.Join, which drops an empty segment.
            if !dir.is_empty() {
                dirs.push(dir);
            }
            rest = tail;
        }
        (dirs, rest)
    }

    /// The path of blob `id` relative to the repository root, e.g. `p/012/3456…-s….f`.
    pub fn relative_path(&self, id: &str) -> PathBuf {
        let (dirs, stem) = self.split(id);
        let mut path = PathBuf::new();
        for dir in dirs {
            path.push(OsStr::from_bytes(dir));
        }
        let mut file_name = stem.to_vec();
        file_name.extend_from_slice(BLOB_SUFFIX.as_bytes());
        path.push(OsString::from_vec(file_name));
        path
    }

    /// Refuses IDs whose path would not list back as the same ID or would leave the root.
    fn validate_id(&self, id: &str) -> Result<()> {
        let invalid = |reason| {
            Err(BlobError::InvalidId {
                id: id.to_string(),
                reason,
            })
        };
        if id.is_empty() {
            return invalid("it is empty");
        }
        if id.contains('/') {
            return invalid("it contains '/'");
        }
        if id.contains('\0') {
            return invalid("it contains NUL");
        }
        let (dirs, _) = self.split(id);
        if dirs.iter().any(|d| *d == b"." || *d == b"..") {
            return invalid("a shard directory would be '.' or '..'");
        }
        Ok(())
    }
}

fn parse_integer(value: &Value, field: &str) -> std::result::Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{field}: {n} is not an integer")),
        other => Err(format!("{field}: expected an integer, found {other}")),
    }
}

fn parse_widths(value: &Value, field: &str) -> std::result::Result<Vec<usize>, String> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(format!(
                "{field}: expected an array of widths, found {other}"
            ));
        }
    };
    items
        .iter()
        .map(|item| match parse_integer(item, field)? {
            Some(width) => usize::try_from(width)
                .map_err(|_| format!("{field}: shard width {width} is negative")),
            None => Err(format!("{field}: shard width is null")),
        })
        .collect()
}

fn parse_overrides(value: &Value) -> std::result::Result<Vec<ShardOverride>, String> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(format!("overrides: expected an array, found {other}")),
    };
    let mut overrides = Vec::with_capacity(items.len());
    for item in items {
        let fields = match item {
            Value::Null => continue,
            Value::Object(fields) => fields,
            other => return Err(format!("overrides: expected an object, found {other}")),
        };
        let mut entry = ShardOverride {
            prefix: String::new(),
            shards: Vec::new(),
        };
        for (key, value) in fields {
            if key.eq_ignore_ascii_case("prefix") {
                match value {
                    Value::Null => {}
                    Value::String(prefix) => entry.prefix = prefix.clone(),
                    other => {
                        return Err(format!("overrides: prefix must be a string, found {other}"));
                    }
                }
            } else if key.eq_ignore_ascii_case("shards") {
                entry.shards = parse_widths(value, "overrides.shards")?;
            }
        }
        overrides.push(entry);
    }
    Ok(overrides)
}

/// A JSON string escaped as Go's `encoding/json` does (HTML characters and U+2028/9 as `\u`).
fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The layout a newly created repository gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ShardingMode {
    /// `[1,3]`, what `kopia repository create filesystem` writes.
    #[default]
    Default,
    /// `[]`, kopia's `--flat`: every blob in the root.
    Flat,
    /// `[3,3]`, what kopia uses for `--format-version=1` and for old repositories without `.shards`.
    Legacy33,
    Custom(ShardingParameters),
}

impl ShardingMode {
    pub fn parameters(&self) -> ShardingParameters {
        match self {
            ShardingMode::Default => ShardingParameters::with_default_shards(vec![1, 3]),
            ShardingMode::Flat => ShardingParameters::with_default_shards(Vec::new()),
            ShardingMode::Legacy33 => ShardingParameters::with_default_shards(vec![3, 3]),
            ShardingMode::Custom(params) => params.clone(),
        }
    }
}

/// Permissions of the files and directories the store creates (before the umask), like kopia's
/// `--file-mode` and `--dir-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesystemOptions {
    pub file_mode: u32,
    pub dir_mode: u32,
}

impl Default for FilesystemOptions {
    fn default() -> Self {
        FilesystemOptions {
            file_mode: DEFAULT_FILE_MODE,
            dir_mode: DEFAULT_DIR_MODE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FilesystemStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    sharding: ShardingParameters,
    options: FilesystemOptions,
}

impl FilesystemStore {
    /// Creates the root if needed and writes `.shards` for `mode` before anything else. If the root
    /// already has a `.shards`, that one is kept and used, as kopia does: it describes the files there.
    pub async fn create(root: impl Into<PathBuf>, mode: ShardingMode) -> Result<Self> {
        Self::create_with_options(root, mode, FilesystemOptions::default()).await
    }

    pub async fn create_with_options(
        root: impl Into<PathBuf>,
        mode: ShardingMode,
        options: FilesystemOptions,
    ) -> Result<Self> {
        let root = root.into();
        blocking(move || {
            DirBuilder::new()
                .recursive(true)
                .mode(options.dir_mode)
                .create(&root)
                .map_err(|e| io_error("", "create repository directory", &root, e))?;
            check_root(&root)?;
            let sharding = match read_shards_file(&root)? {
                Some(existing) => existing,
                None => {
                    let sharding = mode.parameters();
                    write_shards_file(&root, &sharding, options)?;
                    sharding
                }
            };
            Ok(Self::from_parts(root, sharding, options))
        })
        .await
    }

    /// Opens an existing root. Without `.shards` (repositories made by kopia ≤ v0.8) the layout is
    /// `[3,3]`, and, like kopia, the store tries to persist that; a failure is only logged.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with_options(root, FilesystemOptions::default()).await
    }

    pub async fn open_with_options(
        root: impl Into<PathBuf>,
        options: FilesystemOptions,
    ) -> Result<Self> {
        let root = root.into();
        blocking(move || {
            check_root(&root)?;
            let sharding = match read_shards_file(&root)? {
                Some(existing) => existing,
                None => {
                    let legacy = ShardingMode::Legacy33.parameters();
                    if let Err(e) = write_shards_file(&root, &legacy, options) {
                        tracing::warn!("unable to persist sharding parameters: {e}");
                    }
                    legacy
                }
            };
            Ok(Self::from_parts(root, sharding, options))
        })
        .await
    }

    fn from_parts(root: PathBuf, sharding: ShardingParameters, options: FilesystemOptions) -> Self {
        FilesystemStore {
            inner: Arc::new(Inner {
                root,
                sharding,
                options,
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn sharding(&self) -> &ShardingParameters {
        &self.inner.sharding
    }

    /// Where blob `id` lives (whether or not it exists).
    pub fn blob_path(&self, id: &str) -> PathBuf {
        self.inner.root.join(self.inner.sharding.relative_path(id))
    }

    fn checked_path(&self, id: &str) -> Result<PathBuf> {
        self.inner.sharding.validate_id(id)?;
        Ok(self.blob_path(id))
    }
}

#[async_trait]
impl BlobStore for FilesystemStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        blocking(move || std::fs::read(&path).map_err(|e| read_error(&id, "read", &path, e))).await
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        blocking(move || read_range(&id, &path, offset, length)).await
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| read_error(&id, "stat", &path, e))?;
            let timestamp =
                modification_time(&meta).map_err(|e| io_error(&id, "read mtime", &path, e))?;
            Ok(BlobMetadata {
                id,
                length: meta.len(),
                timestamp,
            })
        })
        .await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        let inner = self.inner.clone();
        blocking(move || write_atomically(&inner.root, &id, &path, data, inner.options)).await
    }

    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        let inner = self.inner.clone();
        // Our reference goes once the bytes are in the file, before the (slow) fsync: a caller
        // holding none of its own gets the memory back while the disk catches up.
        blocking(move || {
            write_atomically(&inner.root, &id, &path, SharedBytes(data), inner.options)
        })
        .await
    }

    async fn start_blob(&self, id: &str) -> Result<Option<Box<dyn crate::BlobWriter>>> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        let inner = self.inner.clone();
        blocking(move || {
            let (file, temp) = create_temporary(&inner.root, &id, &path, inner.options)?;
            let writer: Box<dyn crate::BlobWriter> = Box::new(FileBlobWriter {
                id,
                file: DirectAppender::new(file),
                temp,
                path,
                root: inner.root.clone(),
                committed: false,
            });
            Ok(Some(writer))
        })
        .await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let path = self.checked_path(id)?;
        let id = id.to_string();
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&id, "delete", &path, e)),
            _ => Ok(()),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        let root = self.inner.root.clone();
        let prefix_bytes = prefix.as_bytes().to_vec();
        let (mut found, subdirs) = {
            let prefix = prefix_bytes.clone();
            blocking(move || {
                let mut found = Vec::new();
                let subdirs = scan_directory(&root, &[], &prefix, &mut found, true)?;
                Ok((found, subdirs))
            })
            .await?
        };
        // Top-level shard directories are walked in parallel; each walk is a blocking task.
        let walks = futures::stream::iter(subdirs)
            .map(|(dir, accumulated)| {
                let prefix = prefix_bytes.clone();
                blocking(move || {
                    let mut found = Vec::new();
                    walk(&dir, accumulated, &prefix, &mut found)?;
                    Ok(found)
                })
            })
            .buffer_unordered(LIST_PARALLELISM)
            .try_collect::<Vec<_>>()
            .await?;
        found.extend(walks.into_iter().flatten());
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("filesystem {}", self.inner.root.display())
    }
}

/// Runs blocking file I/O on tokio's blocking pool so the async workers stay free.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BlobError::Other(format!(
            "filesystem task did not finish: {e}"
        ))),
    }
}

fn io_error(id: &str, op: &'static str, path: &Path, source: io::Error) -> BlobError {
    BlobError::Io {
        id: id.to_string(),
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Like `io_error`, but a missing file means a missing blob.
fn read_error(id: &str, op: &'static str, path: &Path, source: io::Error) -> BlobError {
    if source.kind() == io::ErrorKind::NotFound {
        BlobError::NotFound(id.to_string())
    } else {
        io_error(id, op, path, source)
    }
}

fn modification_time(meta: &std::fs::Metadata) -> io::Result<DateTime<Utc>> {
    meta.modified().map(DateTime::<Utc>::from)
}

fn check_root(root: &Path) -> Result<()> {
    let meta = std::fs::metadata(root)
        .map_err(|e| io_error("", "access repository directory", root, e))?;
    if !meta.is_dir() {
        let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
        return Err(io_error("", "access repository directory", root, e));
    }
    Ok(())
}

fn read_shards_file(root: &Path) -> Result<Option<ShardingParameters>> {
    let path = root.join(SHARDS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => ShardingParameters::from_json(&bytes)
            .map(Some)
            .map_err(|reason| BlobError::InvalidShards {
                path: path.display().to_string(),
                reason,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(SHARDS_FILE, "read", &path, e)),
    }
}

fn write_shards_file(
    root: &Path,
    sharding: &ShardingParameters,
    options: FilesystemOptions,
) -> Result<()> {
    let path = root.join(SHARDS_FILE);
    write_atomically(
        root,
        SHARDS_FILE,
        &path,
        sharding.to_json().as_bytes(),
        options,
    )
}

fn read_range(id: &str, path: &Path, offset: u64, length: u64) -> Result<BlobBytes> {
    let file = File::open(path).map_err(|e| read_error(id, "open", path, e))?;
    let actual = file
        .metadata()
        .map_err(|e| io_error(id, "stat", path, e))?
        .len();
    let invalid_range = |actual| BlobError::InvalidRange {
        id: id.to_string(),
        offset,
        length,
        actual,
    };
    match offset.checked_add(length) {
        Some(end) if end <= actual => {}
        _ => return Err(invalid_range(actual)),
    }
    // Bounded by the file size checked above, never by the caller's length alone.
    let mut buffer = vec![0; length as usize];
    match file.read_exact_at(&mut buffer, offset) {
        Ok(()) => Ok(buffer),
        // The file shrank between the size check and the read.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let now = file.metadata().map(|m| m.len()).unwrap_or(0);
            Err(invalid_range(now))
        }
        Err(e) => Err(io_error(id, "read", path, e)),
    }
}

/// Kopia's write protocol plus fsyncs: exclusive temp file next to `path`, write, fsync, rename
/// over `path`, fsync the directory. The temp file is removed on any failure.
/// A shared blob body as a byte slice.
struct SharedBytes(Arc<BlobBytes>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Writes `data` to a temporary file, fsyncs it and renames it to `path`. `data` is dropped as
/// soon as it is written, before the fsync.
fn write_atomically(
    root: &Path,
    id: &str,
    path: &Path,
    data: impl AsRef<[u8]>,
    options: FilesystemOptions,
) -> Result<()> {
    let (mut file, temp) = create_temporary(root, id, path, options)?;
    let parent = path.parent().unwrap_or(root);
    let written = file
        .write_all(data.as_ref())
        .map_err(|e| io_error(id, "write temporary file", &temp, e))
        .and_then(|()| {
            drop(data);
            file.sync_all()
                .map_err(|e| io_error(id, "fsync temporary file", &temp, e))
        })
        .and_then(|()| {
            drop(file);
            std::fs::rename(&temp, path)
                .map_err(|e| io_error(id, "rename temporary file to", path, e))
        });
    if let Err(error) = written {
        if let Err(e) = std::fs::remove_file(&temp) {
            tracing::warn!("cannot remove temporary file {}: {e}", temp.display());
        }
        return Err(error);
    }
    sync_directory(parent).map_err(|e| io_error(id, "fsync directory", parent, e))
}

/// Creates `<path>.tmp.<random>` (and missing shard directories) for a blob to be renamed to
/// `path`.
fn create_temporary(
    root: &Path,
    id: &str,
    path: &Path,
    options: FilesystemOptions,
) -> Result<(File, PathBuf)> {
    let mut random = [0u8; TEMP_SUFFIX_RANDOM_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| BlobError::Other(format!("no random bytes for a temp file name: {e}")))?;
    let mut temp_name = path.as_os_str().to_os_string();
    temp_name.push(format!(".tmp.{}", hex::encode(random)));
    let temp = PathBuf::from(temp_name);
    let parent = path.parent().unwrap_or(root);
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(options.file_mode)
            .open(&temp)
    };
    let file = match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && parent != root => {
            create_shard_dirs(root, parent, id, options.dir_mode)?;
            create()
        }
        other => other,
    }
    .map_err(|e| io_error(id, "create temporary file", &temp, e))?;
    Ok((file, temp))
}

/// A blob written in pieces into its temporary file (around the page cache where possible),
/// renamed into place on commit.
#[derive(Debug)]
struct FileBlobWriter {
    id: String,
    file: DirectAppender,
    temp: PathBuf,
    path: PathBuf,
    root: PathBuf,
    committed: bool,
}

impl crate::BlobWriter for FileBlobWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .append(data)
            .map_err(|e| io_error(&self.id, "write temporary file", &self.temp, e))
    }

    fn read_at(&self, offset: u64, length: u64) -> Result<BlobBytes> {
        let len = self.file.len();
        if offset.checked_add(length).is_none_or(|end| end > len) {
            return Err(BlobError::InvalidRange {
                id: self.id.clone(),
                offset,
                length,
                actual: len,
            });
        }
        let mut buffer = vec![0u8; length as usize];
        let in_file = self.file.staged_part(offset, &mut buffer);
        if in_file > 0 {
            // The writing handle may be in direct mode, which takes aligned reads only.
            File::open(&self.temp)
                .and_then(|f| f.read_exact_at(&mut buffer[..in_file], offset))
                .map_err(|e| io_error(&self.id, "read temporary file", &self.temp, e))?;
        }
        Ok(buffer)
    }

    fn bytes_written(&self) -> u64 {
        self.file.len()
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        self.file
            .finish()
            .map_err(|e| io_error(&self.id, "write and fsync temporary file", &self.temp, e))?;
        std::fs::rename(&self.temp, &self.path)
            .map_err(|e| io_error(&self.id, "rename temporary file to", &self.path, e))?;
        self.committed = true;
        let parent = self.path.parent().unwrap_or(&self.root);
        sync_directory(parent).map_err(|e| io_error(&self.id, "fsync directory", parent, e))
    }
}

impl Drop for FileBlobWriter {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_file(&self.temp)
        {
            tracing::warn!("cannot remove temporary file {}: {e}", self.temp.display());
        }
    }
}

/// Creates the missing directories between `root` (never created: a vanished root, e.g. an
/// unmounted volume, must not be silently re-created) and `dir`, one level at a time.
fn create_shard_dirs(root: &Path, dir: &Path, id: &str, dir_mode: u32) -> Result<()> {
    let Ok(relative) = dir.strip_prefix(root) else {
        return Err(BlobError::Other(format!(
            "{} is outside the repository root",
            dir.display()
        )));
    };
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match DirBuilder::new().mode(dir_mode).create(&current) {
            Ok(()) => {
                sync_directory(&parent).map_err(|e| io_error(id, "fsync directory", &parent, e))?
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(id, "create shard directory", &current, e)),
        }
    }
    Ok(())
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True if a directory whose accumulated name is `accumulated` may hold IDs starting with `prefix`.
fn compatible(accumulated: &[u8], prefix: &[u8]) -> bool {
    accumulated.starts_with(prefix) || prefix.starts_with(accumulated)
}

/// Reads one directory: matching blobs go to `found`; matching sub-directories are returned (with
/// their accumulated names) when `defer_subdirs`, else walked at once.
fn scan_directory(
    dir: &Path,
    accumulated: &[u8],
    prefix: &[u8],
    found: &mut Vec<BlobMetadata>,
    defer_subdirs: bool,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("", "list directory", dir, e))?;
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("", "list directory", dir, e))?;
        let mut name = accumulated.to_vec();
        name.extend_from_slice(entry.file_name().as_bytes());
        let file_type = match entry.file_type() {
            Ok(t) => t,
            // Deleted since the directory was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("", "stat", &entry.path(), e)),
        };
        if file_type.is_dir() {
            if !compatible(&name, prefix) {
                continue;
            }
            if defer_subdirs {
                subdirs.push((entry.path(), name));
            } else {
                walk(&entry.path(), name, prefix, found)?;
            }
            continue;
        }
        let Some(id) = name.strip_suffix(BLOB_SUFFIX.as_bytes()) else {
            continue;
        };
        if !id.starts_with(prefix) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("", "stat", &entry.path(), e)),
        };
        let Ok(id) = String::from_utf8(id.to_vec()) else {
            tracing::warn!(
                "ignoring {}: its blob ID is not UTF-8",
                entry.path().display()
            );
            continue;
        };
        let timestamp =
            modification_time(&meta).map_err(|e| io_error(&id, "read mtime", &entry.path(), e))?;
        found.push(BlobMetadata {
            id,
            length: meta.len(),
            timestamp,
        });
    }
    Ok(subdirs)
}

fn walk(
    dir: &Path,
    accumulated: Vec<u8>,
    prefix: &[u8],
    found: &mut Vec<BlobMetadata>,
) -> Result<()> {
    match scan_directory(dir, &accumulated, prefix, found, false) {
        // A shard directory removed while listing holds no blobs.
        Err(BlobError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(default: &[usize], max: usize, overrides: &[(&str, &[usize])]) -> ShardingParameters {
        ShardingParameters {
            default_shards: default.to_vec(),
            max_non_sharded_length: max,
            overrides: overrides
                .iter()
                .map(|(prefix, shards)| ShardOverride {
                    prefix: prefix.to_string(),
                    shards: shards.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn writes_exactly_what_kopia_writes() {
        assert_eq!(
            ShardingMode::Default.parameters().to_json(),
            "{\"default\":[1,3],\"maxNonShardedLength\":20}\n"
        );
        assert_eq!(
            ShardingMode::Flat.parameters().to_json(),
            "{\"default\":[],\"maxNonShardedLength\":20}\n"
        );
        assert_eq!(
            ShardingMode::Legacy33.parameters().to_json(),
            "{\"default\":[3,3],\"maxNonShardedLength\":20}\n"
        );
        assert_eq!(
            params(&[3, 2, 1], 2, &[("p", &[2, 2]), ("<&>", &[])]).to_json(),
            "{\"default\":[3,2,1],\"maxNonShardedLength\":2,\"overrides\":[{\"prefix\":\"p\",\"shards\":[2,2]},\
             {\"prefix\":\"\\u003c\\u0026\\u003e\",\"shards\":[]}]}\n"
        );
    }

    #[test]
    fn parse_round_trips_and_ignores_unknown_fields() {
        let p = params(&[3, 2, 1], 2, &[("p", &[2, 2]), ("x", &[1, 1, 1])]);
        assert_eq!(
            ShardingParameters::from_json(p.to_json().as_bytes()).unwrap(),
            p
        );
        let parsed = ShardingParameters::from_json(
            br#"{"future":{"a":[1]},"DEFAULT":[5,2],"maxnonshardedlength":7,"overrides":null} trailing"#,
        )
        .unwrap();
        assert_eq!(parsed, params(&[5, 2], 7, &[]));
        assert_eq!(
            ShardingParameters::from_json(b"null").unwrap(),
            params(&[], 0, &[])
        );
        assert_eq!(
            ShardingParameters::from_json(br#"{"default":[1],"maxNonShardedLength":-4}"#).unwrap(),
            params(&[1], 0, &[])
        );
    }

    #[test]
    fn parse_rejects_malformed_files() {
        for bad in [
            &b""[..],
            b"   ",
            b"{",
            b"[1,3]",
            b"\"x\"",
            br#"{"default":[-1]}"#,
            br#"{"default":[1.5]}"#,
            br#"{"default":"13"}"#,
            br#"{"default":[null]}"#,
            br#"{"maxNonShardedLength":"20"}"#,
            br#"{"maxNonShardedLength":1e1}"#,
            br#"{"maxNonShardedLength":99999999999999999999}"#,
            br#"{"overrides":{}}"#,
            br#"{"overrides":[{"prefix":1}]}"#,
            br#"{"overrides":[7]}"#,
        ] {
            assert!(
                ShardingParameters::from_json(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn zero_width_shards_add_no_directory() {
        let p = params(&[0, 2, 0], 0, &[]);
        assert_eq!(p.relative_path("abcdef"), PathBuf::from("ab/cdef.f"));
    }

    #[test]
    fn shard_boundaries_may_split_characters() {
        let p = params(&[1], 0, &[]);
        let path = p.relative_path("é1");
        let bytes = path.as_os_str().as_bytes();
        assert_eq!(bytes, b"\xc3/\xa91.f");
    }

    #[test]
    fn rejects_ids_that_would_not_round_trip() {
        let p = params(&[1, 3], 20, &[]);
        for bad in [
            "",
            "a/b",
            "a\0b",
            ".abcdefghijklmnopqrstuvwxyz",
            "x/..abcdefghijklmnopqrstuvw",
        ] {
            assert!(
                matches!(p.validate_id(bad), Err(BlobError::InvalidId { .. })),
                "accepted {bad:?}"
            );
        }
        for good in [".", "..", ".shards", "x..abcdefghijklmnopqrstuvw", "..."] {
            p.validate_id(good).unwrap();
        }
        let two = params(&[1, 2], 0, &[]);
        assert!(two.validate_id("x..y").is_err());
        two.validate_id("x.y").unwrap();
    }

    #[test]
    fn go_string_escaping() {
        assert_eq!(
            go_json_string("a\"\\\n\u{1}\u{2028}é"),
            "\"a\\\"\\\\\\n\\u0001\\u2028é\""
        );
    }

    #[tokio::test]
    async fn blob_written_in_pieces_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let store = FilesystemStore::create(&root, ShardingMode::Default)
            .await
            .unwrap();
        let mut writer = store.start_blob("pabcdef012345").await.unwrap().unwrap();
        writer.append(b"hello ").unwrap();
        writer.append(b"world").unwrap();
        assert_eq!(writer.bytes_written(), 11);
        assert_eq!(writer.read_at(6, 5).unwrap(), b"world");
        assert!(writer.read_at(6, 6).is_err());
        assert!(store.list("p").await.unwrap().is_empty());
        writer.commit().unwrap();
        assert_eq!(store.get("pabcdef012345").await.unwrap(), b"hello world");

        // Dropped uncommitted: nothing stays behind, not even the temporary file.
        let mut abandoned = store.start_blob("pabcdef0999").await.unwrap().unwrap();
        abandoned.append(b"partial").unwrap();
        drop(abandoned);
        assert!(store.get("pabcdef0999").await.unwrap_err().is_not_found());
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(
            files.iter().all(|f| !f.to_string_lossy().contains(".tmp.")),
            "{files:?}"
        );
    }
}
