//! `snapshot create`: walks a directory tree, writes every file, symlink and directory listing as
//! kopia does (same splitter, same JSON, so the same object IDs), reuses unchanged files of the
//! previous snapshot without reading them, and saves the snapshot manifest.
//!
//! Directories are walked concurrently and files read in parallel (bounded by `parallel`); each
//! file's chunks are hashed, compressed and encrypted on all cores by the object writer.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use kmover_format::compression::header_id_for_name;
use kmover_format::object::{self, IndirectEntry, ObjectId};
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{
    DirEntry, DirManifest, DirManifestBuilder, DirectorySummary, EntryType, decode_dir_manifest,
    encode_dir_manifest, mode,
};
use kmover_format::snapshot::manifest::{SnapshotManifest, SnapshotStats, SourceInfo};
use kmover_format::snapshot::policy::Policy;
use kmover_repo::object::{
    ObjectWriter, ObjectWriterOptions, open_object, read_object, write_object,
};
use kmover_repo::{ContentManager, Repository};
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, Semaphore};

use crate::checkpoint::{
    CHECKPOINT_INCOMPLETE_REASON, DirNode, MAX_CHECKPOINT_INTERVAL, UploadGuard, random_uuid,
    write_checkpoint, write_file_checkpoint,
};
use crate::error::{Result, SnapshotError};
use crate::ignore_rules::IgnoreContext;
use crate::snapshots;

/// kopia's `upload.parallelUploadAboveSize` default: files larger than this are uploaded in parts.
pub const DEFAULT_PARALLEL_UPLOAD_ABOVE_SIZE: i64 = 2 << 30;
const READ_BUFFER: usize = 1 << 20;
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub source: SourceInfo,
    /// Files read at once; 0 means the number of CPUs.
    pub parallel: usize,
    pub description: String,
    /// User tags without the `tag:` prefix.
    pub tags: BTreeMap<String, String>,
    pub pins: Vec<String>,
    /// How often an incomplete "checkpoint" snapshot is saved; `None` is kopia's 45 minutes.
    pub checkpoint_interval: Option<std::time::Duration>,
}

/// Live counters a progress display reads while the backup runs.
#[derive(Debug, Default)]
pub struct BackupProgress {
    pub hashed_files: AtomicU64,
    pub hashed_bytes: AtomicU64,
    pub cached_files: AtomicU64,
    pub cached_bytes: AtomicU64,
    pub dirs: AtomicU64,
    pub errors: AtomicU64,
}

pub struct BackupOutcome {
    pub manifest_id: String,
    pub manifest: SnapshotManifest,
    /// Fatal (not ignored) errors; the snapshot is saved anyway, as kopia does.
    pub fatal_errors: i64,
}

struct Ctx {
    contents: Arc<ContentManager>,
    policy: Policy,
    file_reads: Semaphore,
    parallel: usize,
    metadata_compression: Option<u32>,
    splitter: Option<String>,
    parallel_upload_above: i64,
    stats: Mutex<SnapshotStats>,
    progress: Arc<BackupProgress>,
}

/// What lstat said about one directory entry, read while listing its parent.
struct Listed {
    name: Vec<u8>,
    path: PathBuf,
    meta: std::fs::Metadata,
}

fn entry_type(meta: &std::fs::Metadata) -> Option<EntryType> {
    let ft = meta.file_type();
    if ft.is_dir() {
        Some(EntryType::Directory)
    } else if ft.is_symlink() {
        Some(EntryType::Symlink)
    } else if ft.is_file() {
        Some(EntryType::File)
    } else {
        None
    }
}

fn new_entry(name: Vec<u8>, meta: &std::fs::Metadata, kind: EntryType) -> DirEntry {
    DirEntry {
        name,
        entry_type: kind,
        mode: mode::from_unix(meta.mode()),
        size: 0,
        mtime: UtcTimestamp::from_unix(meta.mtime(), meta.mtime_nsec() as u32),
        uid: meta.uid(),
        gid: meta.gid(),
        object_id: ObjectId::EMPTY,
        summary: None,
    }
}

fn compression_id(name: &str) -> Option<u32> {
    if name.is_empty() || name == "none" {
        None
    } else {
        header_id_for_name(name).ok()
    }
}

fn rel_join(rel: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

pub async fn backup(
    repo: &Repository,
    path: &Path,
    opts: &BackupOptions,
    policy: &Policy,
    progress: Arc<BackupProgress>,
) -> Result<BackupOutcome> {
    let start_time = now_timestamp(repo);
    // A symlinked source is snapshotted through its target; the source path stays as given.
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| SnapshotError::io(path, "resolve source path", e))?;
    let root_meta = std::fs::metadata(&resolved)
        .map_err(|e| SnapshotError::io(&resolved, "read source metadata", e))?;
    let previous = snapshots::previous_snapshots(repo, &opts.source).await?;
    let parallel = if opts.parallel > 0 {
        opts.parallel
    } else {
        policy
            .upload
            .max_parallel_file_reads
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    };
    let ctx = Arc::new(Ctx {
        contents: repo.contents().clone(),
        policy: policy.clone(),
        file_reads: Semaphore::new(parallel),
        parallel,
        metadata_compression: compression_id(policy.metadata_compression.metadata_compressor()),
        splitter: Some(policy.splitter.algorithm.clone()).filter(|s| !s.is_empty()),
        parallel_upload_above: policy
            .upload
            .parallel_upload_above_size
            .unwrap_or(DEFAULT_PARALLEL_UPLOAD_ABOVE_SIZE),
        stats: Mutex::new(SnapshotStats::default()),
        progress,
    });
    let root_name = resolved
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"/".to_vec());
    let root_entry = if root_meta.is_dir() {
        let ignore = IgnoreContext::root(&policy.files).map_err(SnapshotError::Other)?;
        let prev_roots: Vec<ObjectId> = previous
            .iter()
            .filter_map(|m| m.root_entry.as_ref())
            .filter(|e| e.entry_type == EntryType::Directory)
            .map(|e| e.object_id)
            .collect();
        let template = new_entry(root_name, &root_meta, EntryType::Directory);
        let root_node = DirNode::new(template.clone(), template.mtime);
        let upload = upload_dir(
            ctx.clone(),
            resolved.clone(),
            String::new(),
            root_meta.clone(),
            prev_roots,
            ignore,
            root_node.clone(),
        );
        let interval = opts
            .checkpoint_interval
            .unwrap_or(MAX_CHECKPOINT_INTERVAL)
            .min(MAX_CHECKPOINT_INTERVAL);
        let checkpoints = checkpoint_loop(
            repo,
            &ctx,
            CheckpointRoot::Dir(&root_node),
            &opts.source,
            start_time,
            interval,
        );
        let (oid, summary) = tokio::select! {
            result = upload => result?,
            never = checkpoints => match never {},
        };
        DirEntry {
            object_id: oid,
            summary: Some(summary),
            ..template
        }
    } else if root_meta.is_file() {
        let mut entry = new_entry(root_name, &root_meta, EntryType::File);
        // Only its upload registration matters: a single file checkpoints as itself.
        let root_node = DirNode::new(entry.clone(), entry.mtime);
        let upload = upload_file(&ctx, &resolved, &root_meta, &root_node, &entry);
        let interval = opts
            .checkpoint_interval
            .unwrap_or(MAX_CHECKPOINT_INTERVAL)
            .min(MAX_CHECKPOINT_INTERVAL);
        let checkpoints = checkpoint_loop(
            repo,
            &ctx,
            CheckpointRoot::File(&root_node),
            &opts.source,
            start_time,
            interval,
        );
        let (oid, read) = tokio::select! {
            result = upload => result?,
            never = checkpoints => match never {},
        };
        entry.object_id = oid;
        entry.size = root_meta.len() as i64;
        entry.summary = Some(DirectorySummary {
            size: read,
            files: 1,
            max_time: entry.mtime,
            ..Default::default()
        });
        entry
    } else {
        return Err(SnapshotError::Other(format!(
            "{}: not a directory or regular file",
            path.display()
        )));
    };
    let end_time = now_timestamp(repo);
    let stats = ctx.stats.lock().await.clone();
    let fatal_errors = root_entry.summary.as_ref().map_or(0, |s| s.num_failed);
    let manifest = SnapshotManifest {
        id: String::new(),
        source: opts.source.clone(),
        description: opts.description.clone(),
        start_time,
        end_time,
        stats,
        incomplete: String::new(),
        root_entry: Some(root_entry),
        tags: opts
            .tags
            .iter()
            .map(|(k, v)| (format!("tag:{k}"), v.clone()))
            .collect(),
        storage_stats: None,
        pins: {
            let mut p = opts.pins.clone();
            p.sort();
            p.dedup();
            p
        },
    };
    let manifest_id = snapshots::save_snapshot(repo, &manifest).await?;
    repo.flush().await?;
    let mut manifest = manifest;
    manifest.id = manifest_id.clone();
    Ok(BackupOutcome {
        manifest_id,
        manifest,
        fatal_errors,
    })
}

fn now_timestamp(repo: &Repository) -> UtcTimestamp {
    let now = repo.now();
    UtcTimestamp::from_unix(now.timestamp(), now.timestamp_subsec_nanos())
}

/// What a checkpoint starts from: the root directory, or the single file being snapshotted.
#[derive(Clone, Copy)]
enum CheckpointRoot<'a> {
    Dir(&'a Arc<DirNode>),
    File(&'a Arc<DirNode>),
}

/// Saves an incomplete "checkpoint" snapshot of the finished part of the tree at every interval,
/// and flushes, so the work survives an interruption. Runs until the upload finishes.
async fn checkpoint_loop(
    repo: &Repository,
    ctx: &Ctx,
    root: CheckpointRoot<'_>,
    source: &SourceInfo,
    start_time: UtcTimestamp,
    interval: std::time::Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(interval).await;
        let saved = async {
            let (contents, compression) = (&ctx.contents, ctx.metadata_compression);
            let entry = match root {
                CheckpointRoot::Dir(node) => write_checkpoint(node, contents, compression).await?,
                CheckpointRoot::File(node) => {
                    match write_file_checkpoint(node, contents, compression).await? {
                        Some(entry) => entry,
                        // Nothing of the file is written yet: no checkpoint, as in kopia.
                        None => return Ok(None),
                    }
                }
            };
            let manifest = SnapshotManifest {
                source: source.clone(),
                start_time,
                end_time: now_timestamp(repo),
                incomplete: CHECKPOINT_INCOMPLETE_REASON.to_string(),
                root_entry: Some(entry),
                ..Default::default()
            };
            let id = snapshots::save_snapshot(repo, &manifest).await?;
            repo.flush().await?;
            Ok::<_, SnapshotError>(Some(id))
        }
        .await;
        match saved {
            Ok(Some(id)) => tracing::info!("saved checkpoint snapshot {id}"),
            Ok(None) => {}
            // A failed checkpoint only loses resumability; the upload itself goes on.
            Err(e) => tracing::warn!("checkpoint failed: {e}"),
        }
    }
}

/// Lists `dir` and lstats every child (blocking I/O, off the async runtime).
async fn list_dir(dir: PathBuf) -> std::io::Result<Vec<Listed>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let path = e.path();
            match std::fs::symlink_metadata(&path) {
                Ok(meta) => out.push(Listed {
                    name: e.file_name().as_bytes().to_vec(),
                    path,
                    meta,
                }),
                // Vanished between readdir and lstat: skipped silently, as kopia does.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(dir.join(CACHEDIR_TAG)) else {
        return false;
    };
    let mut head = [0u8; 43];
    f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

/// Loads the listings of the previous snapshots' corresponding directory (deduplicated by ID).
async fn previous_listings(contents: &ContentManager, ids: &[ObjectId]) -> Vec<DirManifest> {
    let mut unique: Vec<ObjectId> = ids.to_vec();
    unique.sort();
    unique.dedup();
    let mut out = Vec::with_capacity(unique.len());
    for id in unique {
        // An unreadable previous listing only costs us the reuse of its files.
        match read_object(contents, &id)
            .await
            .ok()
            .and_then(|b| decode_dir_manifest(&b).ok())
        {
            Some(m) => out.push(m),
            None => tracing::warn!(
                "previous directory {id} is unreadable; its files will be read again"
            ),
        }
    }
    out
}

enum Outcome {
    Entry(DirEntry),
    Failed {
        rel: String,
        ignored: bool,
        error: String,
    },
    Skipped,
}

fn upload_dir(
    ctx: Arc<Ctx>,
    dir: PathBuf,
    rel: String,
    dir_meta: std::fs::Metadata,
    prev_ids: Vec<ObjectId>,
    parent_ignore: IgnoreContext,
    node: Arc<DirNode>,
) -> futures::future::BoxFuture<'static, Result<(ObjectId, DirectorySummary)>> {
    Box::pin(async move {
        ctx.progress.dirs.fetch_add(1, Ordering::Relaxed);
        ctx.stats.lock().await.dir_count += 1;
        let ignore_cache_dirs = ctx.policy.files.ignore_cache_dirs.unwrap_or(true);
        let listed = if ignore_cache_dirs && is_cache_dir(&dir) {
            Vec::new()
        } else {
            list_dir(dir.clone())
                .await
                .map_err(|e| SnapshotError::io(&dir, "list directory", e))?
        };
        let ignore = parent_ignore
            .child(&dir, &rel)
            .map_err(SnapshotError::Other)?;
        let prev = previous_listings(&ctx.contents, &prev_ids).await;
        let one_fs = ctx.policy.files.one_file_system.unwrap_or(false);
        let max_file_size = ctx.policy.files.max_file_size;

        let mut work = Vec::new();
        for item in listed {
            let Some(kind) = entry_type(&item.meta) else {
                if !ctx
                    .policy
                    .error_handling
                    .ignore_unknown_types
                    .unwrap_or(true)
                {
                    work.push((item, None));
                }
                continue;
            };
            let child_rel = rel_join(&rel, &item.name);
            let is_dir = kind == EntryType::Directory;
            if ignore.is_ignored(&child_rel, is_dir) {
                let mut stats = ctx.stats.lock().await;
                if is_dir {
                    stats.excluded_dir_count += 1;
                } else {
                    stats.excluded_file_count += 1;
                    stats.excluded_total_size += item.meta.len() as i64;
                }
                continue;
            }
            if (one_fs && item.meta.dev() != dir_meta.dev())
                || (max_file_size > 0 && !is_dir && item.meta.len() as i64 > max_file_size)
            {
                continue;
            }
            work.push((item, Some(kind)));
        }

        let mut outcomes = futures::stream::iter(work.into_iter().map(|(item, kind)| {
            let ctx = ctx.clone();
            let ignore = ignore.clone();
            let rel = rel.clone();
            let node = node.clone();
            let prev_entries: Vec<DirEntry> = prev
                .iter()
                .flat_map(|m| m.entries.iter())
                .filter(|e| e.name == item.name)
                .cloned()
                .collect();
            async move { upload_entry(ctx, item, kind, rel, prev_entries, ignore, node).await }
        }))
        .buffer_unordered(ctx.parallel.max(2));

        let mut builder = DirManifestBuilder::new();
        while let Some(outcome) = outcomes.next().await {
            match outcome? {
                Outcome::Entry(e) => {
                    node.finished(e.clone());
                    builder.add_entry(e)
                }
                Outcome::Failed {
                    rel,
                    ignored,
                    error,
                } => {
                    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                    let mut stats = ctx.stats.lock().await;
                    if ignored {
                        stats.ignored_error_count += 1;
                    } else {
                        stats.error_count += 1;
                    }
                    tracing::warn!("{}: {error}", rel);
                    node.failed(
                        rel.clone().into_bytes(),
                        ignored,
                        error.clone().into_bytes(),
                    );
                    builder.add_failed_entry(rel.into_bytes(), ignored, error.into_bytes());
                }
                Outcome::Skipped => {}
            }
        }
        let dir_mtime = UtcTimestamp::from_unix(dir_meta.mtime(), dir_meta.mtime_nsec() as u32);
        let manifest = builder.build(dir_mtime, "");
        let summary = manifest.summary.clone().unwrap_or_default();
        let json = encode_dir_manifest(&manifest);
        let opts = ObjectWriterOptions {
            prefix: Some(object::DIRECTORY_CONTENT_PREFIX),
            compression: ctx.metadata_compression,
            metadata_compression: ctx.metadata_compression,
            splitter: ctx.splitter.clone(),
            parallelism: ctx.parallel,
        };
        let oid = write_object(&ctx.contents, &json, opts).await?;
        Ok((oid, summary))
    })
}

async fn upload_entry(
    ctx: Arc<Ctx>,
    item: Listed,
    kind: Option<EntryType>,
    rel: String,
    prev_entries: Vec<DirEntry>,
    ignore: IgnoreContext,
    node: Arc<DirNode>,
) -> Result<Outcome> {
    let child_rel = rel_join(&rel, &item.name);
    let Some(kind) = kind else {
        return Ok(Outcome::Failed {
            rel: child_rel,
            ignored: false,
            error: "unknown or unsupported entry type".into(),
        });
    };
    let mut entry = new_entry(item.name.clone(), &item.meta, kind.clone());
    match kind {
        EntryType::Directory => {
            let prev_ids: Vec<ObjectId> = prev_entries
                .iter()
                .filter(|e| e.entry_type == EntryType::Directory)
                .map(|e| e.object_id)
                .collect();
            let dir_mtime = entry.mtime;
            let child = node.start_child(entry.clone(), dir_mtime);
            let result = upload_dir(
                ctx.clone(),
                item.path.clone(),
                child_rel.clone(),
                item.meta.clone(),
                prev_ids,
                ignore,
                child,
            )
            .await;
            node.end_child(&item.name);
            match result {
                Ok((oid, summary)) => {
                    entry.object_id = oid;
                    entry.summary = Some(summary);
                    Ok(Outcome::Entry(entry))
                }
                Err(SnapshotError::Io { source, .. }) => Ok(Outcome::Failed {
                    rel: child_rel,
                    ignored: ctx
                        .policy
                        .error_handling
                        .ignore_directory_errors
                        .unwrap_or(false),
                    error: format!("unable to read directory: {source}"),
                }),
                Err(e) => Err(e),
            }
        }
        EntryType::Symlink | EntryType::File => {
            let size = item.meta.len() as i64;
            if let Some(hit) = prev_entries.iter().find(|p| {
                p.entry_type == entry.entry_type
                    && p.mode == entry.mode
                    && p.mtime == entry.mtime
                    && p.uid == entry.uid
                    && p.gid == entry.gid
                    && p.size == size
            }) {
                entry.object_id = hit.object_id;
                entry.size = size;
                ctx.progress.cached_files.fetch_add(1, Ordering::Relaxed);
                ctx.progress
                    .cached_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                let mut stats = ctx.stats.lock().await;
                if kind == EntryType::File {
                    stats.cached_files += 1;
                    stats.total_size += size;
                }
                return Ok(Outcome::Entry(entry));
            }
            let result = if kind == EntryType::Symlink {
                upload_symlink(&ctx, &item.path).await
            } else {
                upload_file(&ctx, &item.path, &item.meta, &node, &entry).await
            };
            match result {
                Ok((oid, read)) => {
                    entry.object_id = oid;
                    entry.size = read;
                    if kind == EntryType::File {
                        let mut stats = ctx.stats.lock().await;
                        stats.non_cached_files += 1;
                        stats.total_size += read;
                    }
                    Ok(Outcome::Entry(entry))
                }
                Err(SnapshotError::Io { source, op, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && op == "open" =>
                {
                    Ok(Outcome::Skipped)
                }
                Err(SnapshotError::Io { source, op, path }) => Ok(Outcome::Failed {
                    rel: child_rel,
                    ignored: ctx
                        .policy
                        .error_handling
                        .ignore_file_errors
                        .unwrap_or(false),
                    error: format!("unable to {op} file {}: {source}", path.display()),
                }),
                Err(e) => Err(e),
            }
        }
        EntryType::Other(_) => Ok(Outcome::Skipped),
    }
}

async fn upload_symlink(ctx: &Ctx, path: &Path) -> Result<(ObjectId, i64)> {
    let target = tokio::fs::read_link(path)
        .await
        .map_err(|e| SnapshotError::io(path, "read link", e))?;
    let bytes = target.as_os_str().as_bytes();
    let opts = ObjectWriterOptions {
        metadata_compression: ctx.metadata_compression,
        splitter: ctx.splitter.clone(),
        parallelism: 1,
        ..Default::default()
    };
    let oid = write_object(&ctx.contents, bytes, opts).await?;
    Ok((oid, bytes.len() as i64))
}

/// Uploads one file, compressed as the policy says for its name and size. While it uploads,
/// checkpoints of `node` list what of it is written (`entry` is its entry without an object).
async fn upload_file(
    ctx: &Ctx,
    path: &Path,
    meta: &std::fs::Metadata,
    node: &Arc<DirNode>,
    entry: &DirEntry,
) -> Result<(ObjectId, i64)> {
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    let compression = compression_id(
        ctx.policy
            .compression
            .compressor_for_file(name, meta.len() as i64),
    );
    let _permit = ctx
        .file_reads
        .acquire()
        .await
        .map_err(|e| SnapshotError::Other(e.to_string()))?;
    let size = meta.len() as i64;
    let part_size = ctx.parallel_upload_above;
    let opts = ObjectWriterOptions {
        prefix: None,
        compression,
        metadata_compression: ctx.metadata_compression,
        splitter: ctx.splitter.clone(),
        parallelism: ctx.parallel.max(2),
    };
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| SnapshotError::io(path, "open", e))?;
    // kopia's checkpoint entry of a file carries the size the file had when listed.
    let template = DirEntry {
        size,
        ..entry.clone()
    };
    if part_size > 0 && size > part_size {
        return upload_in_parts(
            ctx,
            path,
            &mut file,
            part_size as u64,
            opts,
            node,
            &template,
        )
        .await;
    }
    let upload = node.start_upload(template);
    let mut writer = ObjectWriter::new(ctx.contents.clone(), opts)?;
    let read = copy_into(ctx, path, &mut file, &mut writer, u64::MAX, &upload).await?;
    ctx.stats.lock().await.file_count += 1;
    ctx.progress.hashed_files.fetch_add(1, Ordering::Relaxed);
    Ok((writer.finish().await?, read as i64))
}

/// Copies up to `limit` bytes (to EOF when u64::MAX) from `file` into `writer`, recording the
/// chunks written so far in `upload` for checkpoints.
async fn copy_into(
    ctx: &Ctx,
    path: &Path,
    file: &mut tokio::fs::File,
    writer: &mut ObjectWriter,
    limit: u64,
    upload: &UploadGuard,
) -> Result<u64> {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut total = 0u64;
    while total < limit {
        let want = (limit - total).min(READ_BUFFER as u64) as usize;
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| SnapshotError::io(path, "read", e))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n]).await?;
        let recorded = upload.file().chunk_count();
        if let Some(new) = writer.finished_chunks().get(recorded..)
            && !new.is_empty()
        {
            upload.file().add_chunks(new);
        }
        total += n as u64;
        ctx.progress
            .hashed_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(total)
}

/// kopia's parallel parts: `floor(size / part) + 1` parts, each through its own writer (so the
/// splitter restarts at every part), concatenated into one `I…` object with an `x` index.
async fn upload_in_parts(
    ctx: &Ctx,
    path: &Path,
    file: &mut tokio::fs::File,
    part_size: u64,
    opts: ObjectWriterOptions,
    node: &Arc<DirNode>,
    template: &DirEntry,
) -> Result<(ObjectId, i64)> {
    let mut parts = Vec::new();
    let mut total = 0u64;
    loop {
        // As kopia, a part being uploaded checkpoints under a random name of its own; finished
        // parts are in no checkpoint until the file is done.
        let upload = node.start_upload(DirEntry {
            name: random_uuid().into_bytes(),
            ..template.clone()
        });
        let mut writer = ObjectWriter::new(ctx.contents.clone(), opts.clone())?;
        let read = copy_into(ctx, path, file, &mut writer, part_size, &upload).await?;
        ctx.stats.lock().await.file_count += 1;
        parts.push(writer.finish().await?);
        total += read;
        if read < part_size {
            break;
        }
    }
    ctx.progress.hashed_files.fetch_add(1, Ordering::Relaxed);
    let oid = concatenate(&ctx.contents, &parts, ctx.metadata_compression).await?;
    Ok((oid, total as i64))
}

/// kopia's `Concatenate`: one flat chunk list over all parts, written as an `x`-prefixed index.
async fn concatenate(
    contents: &Arc<ContentManager>,
    parts: &[ObjectId],
    metadata_compression: Option<u32>,
) -> Result<ObjectId> {
    if parts.len() == 1 {
        return Ok(parts[0]);
    }
    let mut entries = Vec::new();
    let mut offset = 0i64;
    for part in parts {
        let layout = open_object(contents, part).await?;
        for c in &layout.chunks {
            entries.push(IndirectEntry {
                start: offset + c.start,
                length: c.length,
                object: c.object,
            });
        }
        offset += layout.length() as i64;
    }
    let index = object::encode_indirect_index(&entries);
    let opts = ObjectWriterOptions {
        prefix: Some(object::INDIRECT_CONTENT_PREFIX),
        compression: metadata_compression,
        metadata_compression,
        splitter: None,
        parallelism: 2,
    };
    let index_id = write_object(contents, &index, opts).await?;
    Ok(ObjectId::indirect(index_id)?)
}
