//! Restoring a snapshot tree (or one file or symlink) from a repository into a local directory,
//! the way kopia's `restore` with its local filesystem output does, but never writing outside the
//! target whatever the repository holds.
//!
//! Safety: every repository name is checked to be one path component (not empty, `.`, `..`, and
//! without `/` or NUL), duplicates in a listing are refused, and all creation happens relative to
//! directory descriptors with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`; directories are re-opened below
//! the target with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. Symlink targets are written
//! verbatim and never followed. Nesting is bounded by [`MAX_DEPTH`].
//!
//! Order of work (kopia's): a directory is created with mode 0700, its children are restored, and
//! only then does it get its owner, mode and times. Files and symlinks are opened and their chunks
//! resolved as the walk finds them, then written in batches: a batch's contents are read pack by
//! pack in coalesced ranged reads (each range once, a bounded number in flight) and written at
//! their offsets in every file that holds them; then each file gets its size, owner, mode and
//! times (and its final name when written atomically). Memory stays near the bytes of ranged reads
//! allowed in flight (16 MiB) plus the batch's plan and the metadata pack cache, whatever the
//! snapshot's size.

mod batch;
mod fsops;
mod objects;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::{DirEntry, EntryType, decode_dir_manifest};
use kmover_repo::ContentManager;
use kmover_repo::metadata_cache::MetadataCache;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::unistd::{UnlinkatFlags, ftruncate, symlinkat, unlinkat};
use tokio::sync::Semaphore;

use crate::error::{Result, SnapshotError};
use batch::{Prepared, Sink};
use fsops::{AttrPolicy, AttrTarget, Attrs, DirCreation};
pub(crate) use objects::leaf_chunks;
use objects::{chunks_length, read_bounded};

/// Deepest directory nesting restored below the target; deeper entries are refused.
pub const MAX_DEPTH: usize = 1024;
/// Largest directory listing object read (about four million entries).
const MAX_LISTING_BYTES: u64 = 1 << 30;
/// Largest symlink target (Linux `PATH_MAX`).
const MAX_SYMLINK_TARGET: u64 = 4096;
/// Error messages kept in [`RestoreStats::errors`]; the count goes on.
const MAX_RECORDED_ERRORS: usize = 1000;
/// Most files and symlinks written in one batch (each file's descriptor stays open until its
/// batch is done); a low open-file limit lowers it.
const MAX_BATCH_ENTRIES: usize = 4096;
/// Chunks planned in one batch (a few dozen bytes of plan each); a larger file is a batch alone.
const MAX_BATCH_CHUNKS: usize = 1 << 16;
/// File bytes in one batch, so that finished files get their attributes at a steady pace.
const MAX_BATCH_BYTES: u64 = 1 << 30;
/// Batches writing at once: one can read its packs while the other finishes its files.
const MAX_BATCHES_RUNNING: usize = 2;
/// Bytes of ranged reads held at once (fetched, being decoded or written): enough to keep a
/// disk or a high-latency link busy, small next to the rest of a restore's memory.
const RANGE_BYTES_IN_FLIGHT: usize = 16 << 20;
const RANGE_BYTES_UNIT: u64 = 64 << 10;
const RANGE_BYTES_UNITS: usize = RANGE_BYTES_IN_FLIGHT / RANGE_BYTES_UNIT as usize;
/// Metadata (`q`) packs kept in memory during the walk.
const METADATA_CACHE_BYTES: u64 = 64 << 20;
/// Chunks remembered as all-zero, so sparse restores skip fetching them again.
const MAX_ZERO_CHUNKS_REMEMBERED: usize = 4096;
/// kopia's `--skip-existing` tolerance on modification times.
const SAME_MTIME_TOLERANCE_NS: i128 = 2_000_000_000;
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Restore options; [`Default`] gives kopia's CLI defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Replace existing files (otherwise an existing file is an error).
    pub overwrite_files: bool,
    /// Restore into existing non-empty directories (otherwise that is an error).
    pub overwrite_directories: bool,
    /// Replace existing symlinks (otherwise an existing symlink is an error).
    pub overwrite_symlinks: bool,
    pub skip_owners: bool,
    pub skip_permissions: bool,
    pub skip_times: bool,
    /// Ignore EPERM/EACCES from chown, chmod and setting times.
    pub ignore_permission_errors: bool,
    /// Leave filesystem-block-sized runs of zeros as holes.
    pub write_sparse_files: bool,
    /// Record per-entry errors in [`RestoreStats::errors`] and go on, instead of failing.
    pub ignore_errors: bool,
    /// Write each file under a temporary name in its directory, then rename it into place.
    pub write_files_atomically: bool,
    /// Files (and directory listings) restored at once; 0 means one per CPU.
    pub parallel: usize,
    /// Skip files whose size matches and mtime is within 2 s, and existing symlinks (kopia's
    /// `--skip-existing`).
    pub incremental: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            overwrite_files: true,
            overwrite_directories: true,
            overwrite_symlinks: true,
            skip_owners: false,
            skip_permissions: false,
            skip_times: false,
            ignore_permission_errors: true,
            write_sparse_files: false,
            ignore_errors: false,
            write_files_atomically: false,
            parallel: 8,
            incremental: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub restored_files: u64,
    pub restored_dirs: u64,
    pub restored_symlinks: u64,
    /// File bytes restored so far, holes of sparse files included.
    pub restored_bytes: u64,
    /// Files left alone by an incremental restore.
    pub skipped_files: u64,
    pub skipped_symlinks: u64,
    pub skipped_bytes: u64,
    /// Entries that failed (only counted with `ignore_errors`; otherwise the first one ends the
    /// restore with an error).
    pub error_count: u64,
    /// Messages of the first failures, each naming its path.
    pub errors: Vec<String>,
}

/// Restores `root` to `target`. A directory root is restored *into* `target` (created if
/// missing, and given the root's own attributes last); a file or symlink root is restored *as*
/// `target`. Symlinks in `target`'s own path are followed (it is the caller's path); nothing
/// below it ever is. Subdirectories get their entry's `summ.maxTime` as mtime, as in kopia,
/// whose directory reader substitutes it; the root keeps the mtime it is given.
pub async fn restore(
    contents: Arc<ContentManager>,
    root: &DirEntry,
    target: &Path,
    opts: &RestoreOptions,
    progress: Option<&(dyn Fn(&RestoreStats) + Sync)>,
) -> Result<RestoreStats> {
    let (base, base_fd, start) = match &root.entry_type {
        EntryType::Directory => (target.to_path_buf(), prepare_root_dir(target, opts)?, None),
        EntryType::File | EntryType::Symlink => {
            let name = target.file_name().ok_or_else(|| {
                SnapshotError::io(
                    target,
                    "restore",
                    io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"),
                )
            })?;
            let parent = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .map_err(|e| SnapshotError::io(&parent, "create directory", e))?;
            let fd = open_trusted_dir(&parent)?;
            (parent, fd, Some(name.as_bytes().to_vec()))
        }
        EntryType::Other(t) => {
            return Err(SnapshotError::UnsafeEntry {
                path: target.display().to_string(),
                reason: format!("unknown entry type {t:?}"),
            });
        }
    };
    let parallel = match opts.parallel {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let sparse_block = if opts.write_sparse_files {
        Some(fsops::fs_block_size(&base_fd).map_err(|e| SnapshotError::io(&base, "statfs", e))?)
    } else {
        None
    };
    let ctx = Ctx {
        contents,
        opts: opts.clone(),
        attr_policy: AttrPolicy {
            owners: !opts.skip_owners,
            permissions: !opts.skip_permissions,
            times: !opts.skip_times,
            ignore_permission_errors: opts.ignore_permission_errors,
        },
        base,
        base_fd: Arc::new(base_fd),
        sparse_block,
        // Ranged reads in flight, each at most a few MiB (or one content of up to 16 MiB).
        range_permits: Arc::new(Semaphore::new((2 * parallel).clamp(8, 16))),
        range_bytes: Arc::new(Semaphore::new(RANGE_BYTES_UNITS)),
        batch_entries: batch_entry_limit(),
        metadata: MetadataCache::new(METADATA_CACHE_BYTES),
        restored_bytes: Arc::new(AtomicU64::new(0)),
        cancelled: Arc::new(AtomicBool::new(false)),
        zero_chunks: Arc::new(Mutex::new(HashSet::new())),
        temp_seq: AtomicU64::new(0),
    };
    let mut run = Run::new(parallel);
    match start {
        None => {
            run.dirs.insert(
                ROOT_DIR,
                DirNode {
                    rel: Vec::new(),
                    name: Vec::new(),
                    parent: None,
                    depth: 0,
                    object_id: root.object_id,
                    attrs: attrs_of(root, root.mtime),
                    pending: 0,
                },
            );
            run.walks.push(ROOT_DIR);
        }
        Some(name) => run.leaves.push_back(LeafJob {
            parent: None,
            parent_fd: ctx.base_fd.clone(),
            rel: name.clone(),
            name,
            entry: root.clone(),
        }),
    }
    run.execute(&ctx, progress).await
}

fn attrs_of(e: &DirEntry, mtime: kmover_format::snapshot::UtcTimestamp) -> Attrs {
    Attrs {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime,
    }
}

/// Files per batch: two batches hold their files open at once, within a quarter of the
/// open-file limit so descriptors remain for directories and the blob store.
fn batch_entry_limit() -> usize {
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / (4 * MAX_BATCHES_RUNNING as u64))
        .unwrap_or(MAX_BATCH_ENTRIES)
        .clamp(16, MAX_BATCH_ENTRIES)
}

/// Opens a directory of the caller's own path (symlinks allowed there).
fn open_trusted_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SnapshotError::io(path, "open directory", e.into()))
}

/// Creates the target (`mkdir -p`, mode 0700 like kopia) or accepts it per
/// `overwrite_directories`, and opens it.
fn prepare_root_dir(target: &Path, opts: &RestoreOptions) -> Result<OwnedFd> {
    let err = |e| SnapshotError::io(target, "create directory", e);
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => {
            if !opts.overwrite_directories
                && std::fs::read_dir(target).map_err(err)?.next().is_some()
            {
                return Err(err(non_empty_dir_error()));
            }
        }
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a directory",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(target)
            .map_err(err)?,
        Err(e) => return Err(err(e)),
    }
    open_trusted_dir(target)
}

fn non_empty_dir_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        "non-empty directory already exists, not overwriting it",
    )
}

/// Why `name` cannot be one path component, if it cannot.
fn unsafe_name_reason(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == b"." || name == b".." {
        Some("name is a relative path step")
    } else if name.contains(&b'/') {
        Some("name contains '/'")
    } else if name.contains(&0) {
        Some("name contains a NUL byte")
    } else {
        None
    }
}

fn join_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = Vec::with_capacity(parent.len() + 1 + name.len());
    rel.extend_from_slice(parent);
    if !parent.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// Shared, read-only state of one restore; jobs borrow it.
struct Ctx {
    contents: Arc<ContentManager>,
    opts: RestoreOptions,
    attr_policy: AttrPolicy,
    /// Path of `base_fd`: the target directory, or a single entry's parent.
    base: PathBuf,
    base_fd: Arc<OwnedFd>,
    sparse_block: Option<u64>,
    /// Bounds the ranged pack reads in flight across batches (requests at once)...
    range_permits: Arc<Semaphore>,
    /// ...and their bytes in memory, in units of [`RANGE_BYTES_UNIT`].
    range_bytes: Arc<Semaphore>,
    batch_entries: usize,
    /// Whole `q` packs, so that listings and indirect indexes cost no request each.
    metadata: MetadataCache,
    restored_bytes: Arc<AtomicU64>,
    /// Set after a fatal error so running file copies stop early.
    cancelled: Arc<AtomicBool>,
    zero_chunks: Arc<Mutex<HashSet<ObjectId>>>,
    temp_seq: AtomicU64,
}

impl Ctx {
    fn path_of(&self, rel: &[u8]) -> PathBuf {
        self.base.join(OsStr::from_bytes(rel))
    }

    fn refuse(&self, rel: &[u8], reason: String) -> SnapshotError {
        SnapshotError::UnsafeEntry {
            path: self.path_of(rel).display().to_string(),
            reason,
        }
    }

    /// Wraps repository and format errors with the path being restored.
    fn at(&self, rel: &[u8]) -> impl Fn(SnapshotError) -> SnapshotError + '_ {
        let path = self.path_of(rel);
        move |e| match e {
            e @ (SnapshotError::Io { .. }
            | SnapshotError::UnsafeEntry { .. }
            | SnapshotError::RestoreFailed { .. }) => e,
            e => SnapshotError::RestoreFailed {
                path: path.clone(),
                source: Box::new(e),
            },
        }
    }

    fn io_at(&self, rel: &[u8], op: &'static str) -> impl Fn(io::Error) -> SnapshotError + '_ {
        let path = self.path_of(rel);
        move |e| SnapshotError::io(path.clone(), op, e)
    }

    fn open_dir(&self, rel: &[u8]) -> io::Result<Arc<OwnedFd>> {
        if rel.is_empty() {
            Ok(self.base_fd.clone())
        } else {
            fsops::open_dir_beneath(&self.base_fd, rel).map(Arc::new)
        }
    }
}

const ROOT_DIR: usize = 0;

/// A directory being restored: it gets its attributes once `pending` children are done.
struct DirNode {
    /// Path below the target, components joined by `/` (empty for the root).
    rel: Vec<u8>,
    name: Vec<u8>,
    parent: Option<usize>,
    depth: usize,
    object_id: ObjectId,
    attrs: Attrs,
    pending: usize,
}

/// A file or symlink to restore in an already open directory.
struct LeafJob {
    /// Directory to report completion to (`None` for a single-entry restore).
    parent: Option<usize>,
    parent_fd: Arc<OwnedFd>,
    rel: Vec<u8>,
    name: Vec<u8>,
    entry: DirEntry,
}

/// A walked directory: its descriptor and the children that passed the checks.
struct Listing {
    fd: Arc<OwnedFd>,
    children: Vec<DirEntry>,
    refused: Vec<SnapshotError>,
}

enum LeafDone {
    Restored,
    Skipped,
}

/// How one file or symlink ended, for the statistics and its parent directory.
struct LeafResult {
    parent: Option<usize>,
    kind: EntryType,
    size: u64,
    result: Result<LeafDone>,
}

/// A prepared leaf either waits for its batch or is already done (skipped, empty, or failed).
enum Preparation {
    Ready(Box<Prepared>),
    Done(LeafResult),
}

enum Outcome {
    Walked(usize, Result<Listing>),
    Prepared(Preparation),
    Batch(Vec<LeafResult>),
}

/// Mutable scheduling state, owned by the loop in [`Run::execute`].
struct Run {
    parallel: usize,
    dirs: HashMap<usize, DirNode>,
    next_dir: usize,
    /// Directories to walk, depth first.
    walks: Vec<usize>,
    leaves: VecDeque<LeafJob>,
    /// Leaves being opened and resolved.
    preparing: usize,
    /// Prepared leaves waiting for their contents, and their totals.
    batch: Vec<Prepared>,
    batch_chunks: usize,
    batch_bytes: u64,
    batches_running: usize,
    stats: RestoreStats,
    fatal: Option<SnapshotError>,
}

impl Run {
    fn new(parallel: usize) -> Self {
        Run {
            parallel,
            dirs: HashMap::new(),
            next_dir: ROOT_DIR + 1,
            walks: Vec::new(),
            leaves: VecDeque::new(),
            preparing: 0,
            batch: Vec::new(),
            batch_chunks: 0,
            batch_bytes: 0,
            batches_running: 0,
            stats: RestoreStats::default(),
            fatal: None,
        }
    }

    fn batch_full(&self, ctx: &Ctx) -> bool {
        self.batch.len() >= ctx.batch_entries
            || self.batch_chunks >= MAX_BATCH_CHUNKS
            || self.batch_bytes >= MAX_BATCH_BYTES
    }

    /// Whether another leaf may be prepared without overfilling the batch.
    fn batch_has_room(&self, ctx: &Ctx) -> bool {
        self.batch.len() + self.preparing < ctx.batch_entries
            && self.batch_chunks < MAX_BATCH_CHUNKS
            && self.batch_bytes < MAX_BATCH_BYTES
    }

    async fn execute(
        mut self,
        ctx: &Ctx,
        progress: Option<&(dyn Fn(&RestoreStats) + Sync)>,
    ) -> Result<RestoreStats> {
        let mut jobs: FuturesUnordered<BoxFuture<'_, Outcome>> = FuturesUnordered::new();
        let walk_limit = (self.parallel / 2).max(1);
        let mut walks_running = 0usize;
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // A batch starts when it is full, or when nothing else could still join it.
            let nothing_to_add = self.walks.is_empty()
                && walks_running == 0
                && self.leaves.is_empty()
                && self.preparing == 0;
            if self.fatal.is_none()
                && !self.batch.is_empty()
                && self.batches_running < MAX_BATCHES_RUNNING
                && (self.batch_full(ctx) || nothing_to_add)
            {
                let batch = std::mem::take(&mut self.batch);
                (self.batch_chunks, self.batch_bytes) = (0, 0);
                self.batches_running += 1;
                jobs.push(Box::pin(write_batch(ctx, batch)));
            }
            while self.fatal.is_none() && jobs.len() - self.batches_running < self.parallel {
                // Walk ahead only while few files wait, so queued work stays bounded.
                let walk_now = walks_running < walk_limit && self.leaves.len() < 2 * self.parallel;
                if walk_now && let Some(id) = self.walks.pop() {
                    let dir = &self.dirs[&id];
                    let parent_rel = dir
                        .parent
                        .map(|p| self.dirs[&p].rel.clone())
                        .unwrap_or_default();
                    jobs.push(Box::pin(walk_dir(
                        ctx,
                        id,
                        parent_rel,
                        dir.rel.clone(),
                        dir.name.clone(),
                        dir.depth,
                        dir.object_id,
                    )));
                    walks_running += 1;
                } else if self.batch_has_room(ctx)
                    && let Some(leaf) = self.leaves.pop_front()
                {
                    self.preparing += 1;
                    jobs.push(Box::pin(prepare_leaf(ctx, leaf)));
                } else {
                    break;
                }
            }
            if jobs.is_empty() {
                break;
            }
            let outcome = tokio::select! {
                Some(outcome) = jobs.next() => outcome,
                _ = ticker.tick() => {
                    self.report(ctx, progress);
                    continue;
                }
            };
            match outcome {
                Outcome::Walked(id, result) => {
                    walks_running -= 1;
                    self.walked(ctx, id, result);
                }
                Outcome::Prepared(Preparation::Ready(prepared)) => {
                    self.preparing -= 1;
                    if self.fatal.is_some() {
                        discard(*prepared);
                    } else {
                        self.batch_chunks += prepared.chunks.len();
                        self.batch_bytes += prepared.length;
                        self.batch.push(*prepared);
                    }
                }
                Outcome::Prepared(Preparation::Done(leaf)) => {
                    self.preparing -= 1;
                    self.leaf_done(ctx, leaf);
                }
                Outcome::Batch(leaves) => {
                    self.batches_running -= 1;
                    for leaf in leaves {
                        self.leaf_done(ctx, leaf);
                    }
                }
            }
        }
        // Only a fatal error leaves prepared leaves behind; their temporary files go.
        for prepared in std::mem::take(&mut self.batch) {
            discard(prepared);
        }
        if let Some(e) = self.fatal {
            return Err(e);
        }
        self.report(ctx, progress);
        Ok(self.stats)
    }

    fn leaf_done(&mut self, ctx: &Ctx, leaf: LeafResult) {
        match leaf.result {
            Ok(LeafDone::Restored) if leaf.kind == EntryType::Symlink => {
                self.stats.restored_symlinks += 1
            }
            Ok(LeafDone::Restored) => self.stats.restored_files += 1,
            Ok(LeafDone::Skipped) if leaf.kind == EntryType::Symlink => {
                self.stats.skipped_symlinks += 1
            }
            Ok(LeafDone::Skipped) => {
                self.stats.skipped_files += 1;
                self.stats.skipped_bytes += leaf.size;
            }
            Err(e) => self.failed(ctx, e),
        }
        if let Some(parent) = leaf.parent {
            self.child_done(ctx, parent);
        }
    }

    fn report(&mut self, ctx: &Ctx, progress: Option<&(dyn Fn(&RestoreStats) + Sync)>) {
        self.stats.restored_bytes = ctx.restored_bytes.load(Ordering::Relaxed);
        if let Some(cb) = progress {
            cb(&self.stats);
        }
    }

    /// Records an entry's failure, or makes it the restore's error.
    fn failed(&mut self, ctx: &Ctx, e: SnapshotError) {
        if ctx.opts.ignore_errors {
            tracing::warn!("restore: ignored error: {e}");
            self.stats.error_count += 1;
            if self.stats.errors.len() < MAX_RECORDED_ERRORS {
                self.stats.errors.push(e.to_string());
            }
        } else if self.fatal.is_none() {
            self.fatal = Some(e);
            ctx.cancelled.store(true, Ordering::Relaxed);
            self.walks.clear();
            self.leaves.clear();
        }
    }

    fn walked(&mut self, ctx: &Ctx, id: usize, result: Result<Listing>) {
        let listing = match result {
            Ok(listing) => listing,
            Err(e) => {
                self.failed(ctx, e);
                // Its subtree is skipped; the parent still completes.
                let parent = self.dirs.remove(&id).and_then(|d| d.parent);
                if let Some(parent) = parent {
                    self.child_done(ctx, parent);
                }
                return;
            }
        };
        self.stats.restored_dirs += 1;
        for e in listing.refused {
            self.failed(ctx, e);
        }
        if self.fatal.is_some() {
            return;
        }
        let (rel, depth) = {
            let d = &self.dirs[&id];
            (d.rel.clone(), d.depth)
        };
        let mut pending = 0;
        let mut subdirs = Vec::new();
        for entry in listing.children {
            pending += 1;
            let child_rel = join_rel(&rel, &entry.name);
            if entry.entry_type == EntryType::Directory {
                // kopia's directory reader replaces a subdirectory's mtime by its summary's.
                let mtime = entry.summary.as_ref().map_or(entry.mtime, |s| s.max_time);
                let child = self.next_dir;
                self.next_dir += 1;
                self.dirs.insert(
                    child,
                    DirNode {
                        rel: child_rel,
                        name: entry.name.clone(),
                        parent: Some(id),
                        depth: depth + 1,
                        object_id: entry.object_id,
                        attrs: attrs_of(&entry, mtime),
                        pending: 0,
                    },
                );
                subdirs.push(child);
            } else {
                self.leaves.push_back(LeafJob {
                    parent: Some(id),
                    parent_fd: listing.fd.clone(),
                    rel: child_rel,
                    name: entry.name.clone(),
                    entry,
                });
            }
        }
        // Reversed so the stack pops them in listing order.
        self.walks.extend(subdirs.into_iter().rev());
        self.dirs
            .get_mut(&id)
            .expect("walked directory is known")
            .pending = pending;
        if pending == 0 {
            self.finish_dir(ctx, id);
        }
    }

    fn child_done(&mut self, ctx: &Ctx, dir: usize) {
        let Some(node) = self.dirs.get_mut(&dir) else {
            return;
        };
        node.pending -= 1;
        if node.pending == 0 {
            self.finish_dir(ctx, dir);
        }
    }

    /// All children are done: apply the directory's attributes, then tell its parent.
    fn finish_dir(&mut self, ctx: &Ctx, mut id: usize) {
        loop {
            if self.fatal.is_some() {
                return;
            }
            let node = self.dirs.remove(&id).expect("finished directory is known");
            let applied = ctx
                .open_dir(&node.rel)
                .map_err(ctx.io_at(&node.rel, "open directory"))
                .and_then(|fd| {
                    fsops::set_attributes(AttrTarget::Fd(&fd), &node.attrs, &ctx.attr_policy)
                        .map_err(|(op, e)| ctx.io_at(&node.rel, op)(e))
                });
            if let Err(e) = applied {
                self.failed(ctx, e);
            }
            let Some(parent) = node.parent else {
                return;
            };
            let p = self
                .dirs
                .get_mut(&parent)
                .expect("parent outlives children");
            p.pending -= 1;
            if p.pending > 0 {
                return;
            }
            id = parent;
        }
    }
}

/// Creates (or accepts) one directory and reads its listing, refusing unsafe entries.
async fn walk_dir(
    ctx: &Ctx,
    id: usize,
    parent_rel: Vec<u8>,
    rel: Vec<u8>,
    name: Vec<u8>,
    depth: usize,
    object_id: ObjectId,
) -> Outcome {
    Outcome::Walked(
        id,
        walk_dir_inner(ctx, &parent_rel, &rel, &name, depth, &object_id).await,
    )
}

async fn walk_dir_inner(
    ctx: &Ctx,
    parent_rel: &[u8],
    rel: &[u8],
    name: &[u8],
    depth: usize,
    object_id: &ObjectId,
) -> Result<Listing> {
    let fd = if rel.is_empty() {
        remove_abandoned_temp_files(ctx, &ctx.base_fd, rel)?;
        ctx.base_fd.clone()
    } else {
        if depth > MAX_DEPTH {
            return Err(ctx.refuse(
                rel,
                format!("directories nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let parent = ctx
            .open_dir(parent_rel)
            .map_err(ctx.io_at(parent_rel, "open directory"))?;
        match fsops::create_dir_at(&parent, name).map_err(ctx.io_at(rel, "create directory"))? {
            DirCreation::Created(fd) => Arc::new(fd),
            DirCreation::Existing(fd) => {
                remove_abandoned_temp_files(ctx, &fd, rel)?;
                if !ctx.opts.overwrite_directories
                    && !fsops::dir_is_empty(&fd).map_err(ctx.io_at(rel, "read directory"))?
                {
                    return Err(ctx.io_at(rel, "create directory")(non_empty_dir_error()));
                }
                Arc::new(fd)
            }
        }
    };
    let data = read_bounded(
        &ctx.contents,
        &ctx.metadata,
        object_id,
        MAX_LISTING_BYTES,
        "directory listing",
    )
    .await
    .map_err(ctx.at(rel))?;
    let manifest = decode_dir_manifest(&data).map_err(|e| ctx.at(rel)(e.into()))?;
    drop(data);
    let mut seen = HashSet::with_capacity(manifest.entries.len());
    let mut children = Vec::with_capacity(manifest.entries.len());
    let mut refused = Vec::new();
    for entry in manifest.entries {
        let refuse = |reason: String| ctx.refuse(&join_rel(rel, &entry.name), reason);
        if let Some(reason) = unsafe_name_reason(&entry.name) {
            refused.push(refuse(reason.to_string()));
        } else if !matches!(
            entry.entry_type,
            EntryType::File | EntryType::Directory | EntryType::Symlink
        ) {
            refused.push(refuse(format!(
                "unknown entry type {:?}",
                entry.entry_type.as_str()
            )));
        } else if !seen.insert(entry.name.clone()) {
            refused.push(refuse("duplicate name in its directory".to_string()));
        } else {
            children.push(entry);
        }
    }
    Ok(Listing {
        fd,
        children,
        refused,
    })
}

/// Opens a file (or checks a symlink's place) and resolves its chunks; the contents come later,
/// in a batch.
async fn prepare_leaf(ctx: &Ctx, job: LeafJob) -> Outcome {
    let parent = job.parent;
    let kind = job.entry.entry_type.clone();
    let size = u64::try_from(job.entry.size).unwrap_or(0);
    let prepared = match kind {
        EntryType::Symlink => prepare_symlink(ctx, job).await,
        _ => prepare_file(ctx, job).await,
    };
    Outcome::Prepared(match prepared {
        Ok(Preparation::Ready(p)) => Preparation::Ready(p),
        Ok(Preparation::Done(done)) => Preparation::Done(done),
        Err(e) => Preparation::Done(LeafResult {
            parent,
            kind,
            size,
            result: Err(e),
        }),
    })
}

fn done(job: &LeafJob, result: Result<LeafDone>) -> Preparation {
    Preparation::Done(LeafResult {
        parent: job.parent,
        kind: job.entry.entry_type.clone(),
        size: u64::try_from(job.entry.size).unwrap_or(0),
        result,
    })
}

async fn prepare_symlink(ctx: &Ctx, job: LeafJob) -> Result<Preparation> {
    let rel = &job.rel[..];
    let existing = fsops::lstat_at(&job.parent_fd, &job.name).map_err(ctx.io_at(rel, "lstat"))?;
    if ctx.opts.incremental && existing.is_some_and(|st| fsops::file_type(&st) == SFlag::S_IFLNK) {
        return Ok(done(&job, Ok(LeafDone::Skipped)));
    }
    let chunks = leaf_chunks(&ctx.contents, &ctx.metadata, &job.entry.object_id)
        .await
        .map_err(ctx.at(rel))?;
    let length = chunks_length(&chunks);
    if length > MAX_SYMLINK_TARGET {
        return Err(ctx.at(rel)(SnapshotError::Other(format!(
            "object {}: symlink target of {length} bytes exceeds {MAX_SYMLINK_TARGET}",
            job.entry.object_id
        ))));
    }
    if length == 0 {
        let result = finish_symlink(ctx, &job, Vec::new());
        return Ok(done(&job, result));
    }
    Ok(Preparation::Ready(Box::new(Prepared {
        sink: Sink::Symlink {
            target: std::sync::Mutex::new(vec![0; length as usize]),
        },
        length,
        chunks,
        job,
    })))
}

/// Creates the symlink once its target is read, replacing what is there as the options allow.
fn finish_symlink(ctx: &Ctx, job: &LeafJob, target: Vec<u8>) -> Result<LeafDone> {
    let (fd, name, rel) = (&job.parent_fd, &job.name[..], &job.rel[..]);
    if target.is_empty() || target.contains(&0) {
        return Err(ctx.refuse(rel, "symlink target is empty or contains a NUL byte".into()));
    }
    let existing = fsops::lstat_at(fd, name).map_err(ctx.io_at(rel, "lstat"))?;
    let is_link = existing.is_some_and(|st| fsops::file_type(&st) == SFlag::S_IFLNK);
    let create = ctx.io_at(rel, "create symlink");
    match existing {
        // An existing symlink is replaced by the rename below.
        None => {}
        Some(_) if is_link && ctx.opts.overwrite_symlinks => {}
        Some(_) if is_link => {
            return Err(create(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "will not overwrite existing symlink",
            )));
        }
        Some(_) => {
            return Err(create(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a symlink",
            )));
        }
    }
    // Made under a temporary name and renamed into place with its owner and times, so that a
    // symlink under its final name is always complete: an interrupted restore re-run with
    // `--skip-existing` keeps the symlinks it finds.
    let temp = create_temp_symlink(ctx, fd, &target).map_err(&create)?;
    let placed = fsops::set_attributes(
        AttrTarget::Symlink {
            parent: fd,
            name: &temp,
        },
        &attrs_of(&job.entry, job.entry.mtime),
        &ctx.attr_policy,
    )
    .map_err(|(op, e)| ctx.io_at(rel, op)(e))
    .and_then(|()| renameat(&**fd, &temp[..], &**fd, name).map_err(|e| create(e.into())));
    if placed.is_err() {
        let _ = unlinkat(&**fd, &temp[..], UnlinkatFlags::NoRemoveDir);
    }
    placed.map(|()| LeafDone::Restored)
}

fn mtime_close_enough(st: &nix::sys::stat::FileStat, entry: &DirEntry) -> bool {
    let local = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
    (local - i128::from(entry.mtime.0)).abs() < SAME_MTIME_TOLERANCE_NS
}

async fn prepare_file(ctx: &Ctx, job: LeafJob) -> Result<Preparation> {
    let (dir, name, rel) = (&job.parent_fd, &job.name[..], &job.rel[..]);
    let existing = fsops::lstat_at(dir, name).map_err(ctx.io_at(rel, "lstat"))?;
    let existing_type = existing.as_ref().map(fsops::file_type);
    if ctx.opts.incremental
        && let Some(st) = &existing
        && existing_type == Some(SFlag::S_IFREG)
        && st.st_size == job.entry.size
        && mtime_close_enough(st, &job.entry)
    {
        return Ok(done(&job, Ok(LeafDone::Skipped)));
    }
    // Resolve and check every chunk before touching the target.
    let chunks = leaf_chunks(&ctx.contents, &ctx.metadata, &job.entry.object_id)
        .await
        .map_err(ctx.at(rel))?;
    let length = chunks_length(&chunks);

    let create = ctx.io_at(rel, "create file");
    match existing_type {
        None => {}
        Some(SFlag::S_IFREG | SFlag::S_IFLNK) if !ctx.opts.overwrite_files => {
            return Err(create(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "file already exists",
            )));
        }
        Some(SFlag::S_IFREG) => {}
        // The link itself is replaced; it is never written through.
        Some(SFlag::S_IFLNK) if !ctx.opts.write_files_atomically => {
            unlinkat(&**dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| create(e.into()))?
        }
        Some(SFlag::S_IFLNK) => {}
        Some(_) => {
            return Err(create(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a regular file",
            )));
        }
    }

    let (fd, temp_name) = if ctx.opts.write_files_atomically {
        let (fd, temp) = create_temp_file(ctx, dir).map_err(&create)?;
        (fd, Some(temp))
    } else {
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NONBLOCK;
        let fd = openat(&**dir, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| create(e.into()))?;
        // Something other than a regular file may have appeared since the lstat.
        let st = fstat(&fd).map_err(|e| create(e.into()))?;
        if fsops::file_type(&st) != SFlag::S_IFREG {
            return Err(create(io::Error::other("not a regular file")));
        }
        (fd, None)
    };
    let file = File::from(fd);
    if length == 0 {
        let result = finish_file(ctx, &job, file, temp_name, 0, None);
        return Ok(done(&job, result));
    }
    Ok(Preparation::Ready(Box::new(Prepared {
        sink: Sink::File { file, temp_name },
        length,
        chunks,
        job,
    })))
}

/// Names of atomic writes' temporary files: `<prefix><pid>-<sequence><suffix>`.
const TEMP_PREFIX: &str = ".kmover-restore-";
const TEMP_SUFFIX: &str = ".tmp";

/// Whether `name` is a temporary file (of an atomic write) or symlink of a restore that was
/// stopped before it could rename or remove it: one of ours whose process is gone. Our own
/// process ID counts as gone (a restarted container reuses it), since this restore only creates
/// temporary entries in a directory after that directory is cleaned.
fn is_abandoned_temp_file(name: &[u8]) -> bool {
    let Some(middle) = name
        .strip_prefix(TEMP_PREFIX.as_bytes())
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX.as_bytes()))
    else {
        return false;
    };
    let Some((pid, seq)) = std::str::from_utf8(middle)
        .ok()
        .and_then(|m| m.split_once('-'))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(seq) {
        return false;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if pid.unsigned_abs() == std::process::id() {
        return true;
    }
    // A live process (even one we may not signal) may still be writing it.
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Removes the temporary files and symlinks an interrupted restore left in an existing directory.
fn remove_abandoned_temp_files(ctx: &Ctx, dir: &OwnedFd, rel: &[u8]) -> Result<()> {
    let removed = fsops::remove_stale_files(dir, is_abandoned_temp_file)
        .map_err(ctx.io_at(rel, "remove abandoned temporary files"))?;
    if removed > 0 {
        tracing::info!(
            "restore: removed {removed} temporary files of an interrupted restore in {}",
            ctx.path_of(rel).display()
        );
    }
    Ok(())
}

/// A new empty file under a unique hidden name in `dir`, for atomic writes.
fn create_temp_file(ctx: &Ctx, dir: &OwnedFd) -> io::Result<(OwnedFd, Vec<u8>)> {
    let flags =
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    loop {
        let name = next_temp_name(ctx);
        match openat(dir, &name[..], flags, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => return Ok((fd, name)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A new symlink to `target` under a unique hidden name in `dir`; returns the name.
fn create_temp_symlink(ctx: &Ctx, dir: &OwnedFd, target: &[u8]) -> io::Result<Vec<u8>> {
    loop {
        let name = next_temp_name(ctx);
        match symlinkat(target, dir, &name[..]) {
            Ok(()) => return Ok(name),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn next_temp_name(ctx: &Ctx) -> Vec<u8> {
    let seq = ctx.temp_seq.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}-{seq}{TEMP_SUFFIX}", std::process::id()).into_bytes()
}

/// Reads and writes the contents of a batch, then finishes each of its files and symlinks.
async fn write_batch(ctx: &Ctx, batch: Vec<Prepared>) -> Outcome {
    let written = batch::write_contents(ctx, batch).await;
    Outcome::Batch(
        written
            .into_iter()
            .map(|(prepared, failure)| finish_prepared(ctx, prepared, failure))
            .collect(),
    )
}

fn finish_prepared(ctx: &Ctx, prepared: Prepared, failure: Option<SnapshotError>) -> LeafResult {
    let Prepared {
        job, sink, length, ..
    } = prepared;
    let result = match sink {
        Sink::File { file, temp_name } => finish_file(ctx, &job, file, temp_name, length, failure),
        Sink::Symlink { target } => match failure {
            Some(e) => Err(ctx.at(&job.rel)(e)),
            None => finish_symlink(ctx, &job, target.into_inner().expect("symlink target lock")),
        },
    };
    LeafResult {
        parent: job.parent,
        kind: job.entry.entry_type.clone(),
        size: u64::try_from(job.entry.size).unwrap_or(0),
        result,
    }
}

/// Gives a written file its size and attributes and, when written atomically, its name; a
/// failed file's temporary copy is removed.
fn finish_file(
    ctx: &Ctx,
    job: &LeafJob,
    file: File,
    temp_name: Option<Vec<u8>>,
    length: u64,
    failure: Option<SnapshotError>,
) -> Result<LeafDone> {
    let rel = &job.rel[..];
    let fd = OwnedFd::from(file);
    let finished = match failure {
        Some(e) => Err(ctx.at(rel)(e)),
        None => i64::try_from(length)
            .map_err(|_| {
                ctx.at(rel)(SnapshotError::Other(format!(
                    "file length {length} too large"
                )))
            })
            // Sets the size and leaves trailing zeros of a sparse copy as a hole.
            .and_then(|length| {
                ftruncate(&fd, length).map_err(|e| ctx.io_at(rel, "truncate")(e.into()))
            })
            .and_then(|()| {
                fsops::set_attributes(
                    AttrTarget::Fd(&fd),
                    &attrs_of(&job.entry, job.entry.mtime),
                    &ctx.attr_policy,
                )
                .map_err(|(op, e)| ctx.io_at(rel, op)(e))
            })
            .and_then(|()| match &temp_name {
                Some(temp) => renameat(&*job.parent_fd, &temp[..], &*job.parent_fd, &job.name[..])
                    .map_err(|e| ctx.io_at(rel, "rename into place")(e.into())),
                None => Ok(()),
            }),
    };
    if finished.is_err()
        && let Some(temp) = &temp_name
    {
        let _ = unlinkat(&*job.parent_fd, &temp[..], UnlinkatFlags::NoRemoveDir);
    }
    finished.map(|()| LeafDone::Restored)
}

/// Drops a prepared leaf that will not be written, removing its temporary file.
fn discard(prepared: Prepared) {
    if let Sink::File {
        temp_name: Some(temp),
        ..
    } = &prepared.sink
    {
        let _ = unlinkat(
            &*prepared.job.parent_fd,
            &temp[..],
            UnlinkatFlags::NoRemoveDir,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_components_are_safe_names() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/etc",
            b"../x",
            b"x\0y",
            b"/",
        ] {
            assert!(unsafe_name_reason(bad).is_some(), "{bad:?}");
        }
        for good in [
            &b"a"[..],
            b"...",
            b"..a",
            b".hidden",
            b"a b <&>",
            b"\xff\xfe",
            "日本".as_bytes(),
        ] {
            assert_eq!(unsafe_name_reason(good), None, "{good:?}");
        }
    }

    #[test]
    fn only_our_abandoned_temp_names_are_stale() {
        let own = format!(".kmover-restore-{}-7.tmp", std::process::id());
        assert!(is_abandoned_temp_file(own.as_bytes()));
        // PID 1 is always running.
        assert!(!is_abandoned_temp_file(b".kmover-restore-1-0.tmp"));
        for other in [
            &b"kmover-restore-5-0.tmp"[..],
            b".kmover-restore-5-0.tmp.bak",
            b".kmover-restore--0.tmp",
            b".kmover-restore-5-.tmp",
            b".kmover-restore-5-x.tmp",
            b".kmover-restore-0-1.tmp",
            b".kmover-restore-+5-1.tmp",
            b".kmover-restore-99999999999-1.tmp",
            b"data.tmp",
        ] {
            assert!(!is_abandoned_temp_file(other), "{other:?}");
        }
    }

    #[test]
    fn relative_paths_join_with_slashes() {
        assert_eq!(join_rel(b"", b"a"), b"a");
        assert_eq!(join_rel(b"a/b", b"c"), b"a/b/c");
    }
}
