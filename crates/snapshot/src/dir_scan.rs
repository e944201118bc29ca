//! The blocking half of the backup walk. One pass per directory, on the blocking pool with plain
//! `std::fs`, lists it, lstats every child, leaves out what the policy excludes, reuses files the
//! previous snapshot has with the same name, type, mode, size, times and owner, and reads small
//! files and symlink targets whole. A directory of small files so costs two or three hops to the
//! blocking pool instead of several per file.
//!
//! Data shorter than [`SMALL_OBJECT_LIMIT`] is one chunk under every kopia splitter, so its object
//! is a direct object of one content, written by [`write_small_object`] without an object writer.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::{DirEntry, DirManifest, EntryType};
use kmover_repo::{ContentManager, object};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::backup::{entry_type, new_entry, rel_join};
use crate::backup_counters::{StatCounters, add, bump};
use crate::error::Result;
use crate::ignore_rules::IgnoreContext;

/// Below this length data is a single chunk for every splitter kopia has: the smallest minimum
/// chunk is 64 KiB (`DYNAMIC-128K-*`; `FIXED-128K` cuts at 128 KiB).
pub const SMALL_OBJECT_LIMIT: usize = 64 << 10;

/// Bytes of small files one blocking pass reads before handing them over to be written.
pub const READ_BATCH_BYTES: usize = 4 << 20;

const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What of the policy the scan applies.
#[derive(Clone, Copy, Debug)]
pub struct ScanRules {
    pub ignore_cache_dirs: bool,
    pub one_file_system: bool,
    /// Files larger than this are left out; 0 means no limit.
    pub max_file_size: i64,
    pub ignore_unknown_types: bool,
}

/// What lstat said about one directory entry, read while listing its parent.
pub struct Listed {
    pub name: Vec<u8>,
    pub path: PathBuf,
    pub meta: std::fs::Metadata,
}

/// The previous snapshots' entries of one directory, by name, in the order the listings had them.
pub type PreviousEntries = HashMap<Vec<u8>, Vec<DirEntry>>;

/// Indexes the previous listings of a directory by entry name.
pub fn index_previous(listings: Vec<DirManifest>) -> PreviousEntries {
    let mut by_name: PreviousEntries = HashMap::new();
    for entry in listings.into_iter().flat_map(|l| l.entries) {
        by_name.entry(entry.name.clone()).or_default().push(entry);
    }
    by_name
}

/// Where reading a small file or link stands.
pub enum SmallRead {
    /// Not read yet (the batch's byte budget ran out).
    Pending,
    Data(Vec<u8>),
    /// Gone since the listing: left out, as kopia does.
    Vanished,
    /// Grew to [`SMALL_OBJECT_LIMIT`] or more since the listing: uploaded as a large file.
    Grew,
    Failed {
        op: &'static str,
        error: std::io::Error,
    },
    /// Stored as `object`, of `size` bytes.
    Written {
        size: i64,
        object: ObjectId,
    },
    /// Handed on; nothing left to hold.
    Done,
}

/// A file below [`SMALL_OBJECT_LIMIT`] or a symlink, to be written whole.
pub struct SmallItem {
    pub listed: Listed,
    /// Its entry without object and size.
    pub entry: DirEntry,
    pub read: SmallRead,
}

/// A scanned directory: its children sorted by what remains to be done for them.
pub struct Scanned {
    /// The directory, open, so its small files are opened relative to it.
    pub handle: Option<Arc<File>>,
    /// The ignore rules inside the directory (its own ignore files added).
    pub ignore: IgnoreContext,
    /// Snapshot-relative paths of entries that are neither file, directory nor symlink (when the
    /// policy does not ignore such entries).
    pub unknown: Vec<String>,
    /// Subdirectories with their objects in the previous snapshots.
    pub subdirs: Vec<(Listed, Vec<ObjectId>)>,
    /// Files and symlinks unchanged since a previous snapshot: complete entries.
    pub cached: Vec<DirEntry>,
    pub small: Vec<SmallItem>,
    /// Files to upload through the object writer, with their entries lacking object and size.
    pub large: Vec<(Listed, DirEntry)>,
}

pub enum ScanError {
    /// The directory could not be listed.
    List(std::io::Error),
    /// Its ignore files are unreadable or invalid.
    Ignore(String),
}

fn is_cache_dir(dir: &Path) -> bool {
    let Ok(mut f) = File::open(dir.join(CACHEDIR_TAG)) else {
        return false;
    };
    let mut head = [0u8; 43];
    f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

/// Lists `dir` and lstats every child.
fn list_dir(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        // lstat relative to the open directory: no walk of the whole path per entry.
        match e.metadata() {
            Ok(meta) => out.push(Listed {
                name: e.file_name().as_bytes().to_vec(),
                path: e.path(),
                meta,
            }),
            // Vanished between readdir and lstat: skipped silently, as kopia does.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(out)
}

/// The cached entry for `entry` (a file or symlink of lstat size `size`), if a previous snapshot
/// has one that matches in everything but the object.
fn reuse(previous: Option<&Vec<DirEntry>>, entry: &DirEntry, size: i64) -> Option<DirEntry> {
    let hit = previous?.iter().find(|p| {
        p.entry_type == entry.entry_type
            && p.mode == entry.mode
            && p.mtime == entry.mtime
            && p.uid == entry.uid
            && p.gid == entry.gid
            && p.size == size
    })?;
    Some(DirEntry {
        object_id: hit.object_id,
        size,
        ..entry.clone()
    })
}

/// Scans directory `dir` (snapshot-relative `rel`, lstat `dir_meta`): everything but uploads.
/// Exclusions are counted in `counters`; small files are read up to [`READ_BATCH_BYTES`].
pub fn scan_dir(
    dir: &Path,
    rel: &str,
    dir_meta: &std::fs::Metadata,
    parent_ignore: &IgnoreContext,
    mut previous: PreviousEntries,
    rules: ScanRules,
    counters: &StatCounters,
) -> std::result::Result<Scanned, ScanError> {
    let listed = if rules.ignore_cache_dirs && is_cache_dir(dir) {
        Vec::new()
    } else {
        list_dir(dir).map_err(ScanError::List)?
    };
    let ignore = parent_ignore.child(dir, rel).map_err(ScanError::Ignore)?;
    let mut scanned = Scanned {
        // Unopenable (e.g. listed but not searchable): files are opened by path and fail there.
        handle: File::open(dir).ok().map(Arc::new),
        ignore,
        unknown: Vec::new(),
        subdirs: Vec::new(),
        cached: Vec::new(),
        small: Vec::new(),
        large: Vec::new(),
    };
    // Matching builds each entry's path; without rules there is nothing to match.
    let has_rules = scanned.ignore.has_rules();
    for item in listed {
        let Some(kind) = entry_type(&item.meta) else {
            if !rules.ignore_unknown_types {
                scanned.unknown.push(rel_join(rel, &item.name));
            }
            continue;
        };
        let is_dir = kind == EntryType::Directory;
        if has_rules
            && scanned
                .ignore
                .is_ignored(&rel_join(rel, &item.name), is_dir)
        {
            if is_dir {
                bump(&counters.excluded_dir_count);
            } else {
                bump(&counters.excluded_file_count);
                add(&counters.excluded_total_size, item.meta.len() as i64);
            }
            continue;
        }
        if (rules.one_file_system && item.meta.dev() != dir_meta.dev())
            || (rules.max_file_size > 0 && !is_dir && item.meta.len() as i64 > rules.max_file_size)
        {
            continue;
        }
        let prev = previous.remove(&item.name);
        if is_dir {
            let ids = prev
                .iter()
                .flatten()
                .filter(|e| e.entry_type == EntryType::Directory)
                .map(|e| e.object_id)
                .collect();
            scanned.subdirs.push((item, ids));
            continue;
        }
        let entry = new_entry(item.name.clone(), &item.meta, kind.clone());
        let size = item.meta.len() as i64;
        if let Some(entry) = reuse(prev.as_ref(), &entry, size) {
            scanned.cached.push(entry);
        } else if kind == EntryType::Symlink || item.meta.len() < SMALL_OBJECT_LIMIT as u64 {
            scanned.small.push(SmallItem {
                listed: item,
                entry,
                read: SmallRead::Pending,
            });
        } else {
            scanned.large.push((item, entry));
        }
    }
    read_pending(scanned.handle.as_deref(), &mut scanned.small);
    Ok(scanned)
}

/// Reads pending small files and links of `items` in order until [`READ_BATCH_BYTES`] are read.
/// Returns whether any is still pending.
pub fn read_pending(dir: Option<&File>, items: &mut [SmallItem]) -> bool {
    let mut budget = READ_BATCH_BYTES;
    for item in items.iter_mut() {
        if !matches!(item.read, SmallRead::Pending) {
            continue;
        }
        if budget == 0 {
            return true;
        }
        item.read = if item.entry.entry_type == EntryType::Symlink {
            read_link(&item.listed.path)
        } else {
            read_small_file(dir, &item.listed, item.listed.meta.len() as usize)
        };
        if let SmallRead::Data(data) = &item.read {
            budget = budget.saturating_sub(data.len().max(1));
        }
    }
    false
}

fn read_link(path: &Path) -> SmallRead {
    match std::fs::read_link(path) {
        Ok(target) => SmallRead::Data(target.into_os_string().into_vec()),
        Err(error) => SmallRead::Failed {
            op: "read link",
            error,
        },
    }
}

/// Opens `listed` relative to its directory when that is open, else by path.
fn open_in(dir: Option<&File>, listed: &Listed) -> std::io::Result<File> {
    match dir {
        Some(dir) => Ok(File::from(openat(
            dir,
            listed.name.as_slice(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)),
        None => File::open(&listed.path),
    }
}

fn read_small_file(dir: Option<&File>, listed: &Listed, listed_len: usize) -> SmallRead {
    let file = match open_in(dir, listed) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return SmallRead::Vanished,
        Err(error) => return SmallRead::Failed { op: "open", error },
    };
    // One byte more than listed, so reading to the end needs no second allocation.
    let mut data = Vec::with_capacity(listed_len.min(SMALL_OBJECT_LIMIT) + 1);
    match file.take(SMALL_OBJECT_LIMIT as u64).read_to_end(&mut data) {
        Ok(_) if data.len() >= SMALL_OBJECT_LIMIT => SmallRead::Grew,
        Ok(_) => SmallRead::Data(data),
        Err(error) => SmallRead::Failed { op: "read", error },
    }
}

/// Writes `data` (shorter than [`SMALL_OBJECT_LIMIT`]) as the object the object writer would
/// make of it: a direct object of one content. Repositories whose index cannot record
/// compression (v1) get kopia's object-level compression (`Z` IDs) for unprefixed data.
pub async fn write_small_object(
    contents: &ContentManager,
    data: &[u8],
    prefix: Option<u8>,
    compression: Option<u32>,
) -> Result<ObjectId> {
    debug_assert!(data.len() < SMALL_OBJECT_LIMIT);
    Ok(object::write_chunk(contents, data, prefix, compression).await?)
}
