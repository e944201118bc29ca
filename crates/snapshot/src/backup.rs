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
    ObjectWriter, ObjectWriterOptions, open_object, read_object, write_chunks, write_object,
};
use kmover_repo::{ContentManager, Repository};
use tokio::sync::Semaphore;

use crate::backup_counters::{StatCounters, add, bump};
use crate::checkpoint::{
    CHECKPOINT_INCOMPLETE_REASON, DirNode, MAX_CHECKPOINT_INTERVAL, UploadGuard, random_uuid,
    write_checkpoint, write_file_checkpoint,
};
use crate::dir_scan::{
    Listed, SMALL_OBJECT_LIMIT, ScanError, ScanRules, Scanned, SmallItem, SmallRead,
    index_previous, read_pending, scan_dir, write_small_object,
};
use crate::error::{Result, SnapshotError};
use crate::ignore_rules::IgnoreContext;
use crate::snapshots;

/// kopia's `upload.parallelUploadAboveSize` default: files larger than this are uploaded in parts.
pub const DEFAULT_PARALLEL_UPLOAD_ABOVE_SIZE: i64 = 2 << 30;
/// Bytes read from a file at a time, straight into its chunk buffer: small enough that the bytes
/// read past a chunk boundary (moved to the next chunk) are few.
const READ_BUFFER: u64 = 512 << 10;
/// Directory subtrees walked at once per file reader (`parallel`): enough for the blocking
/// scans of some to overlap the hashing and writing of others.
const SUBTREE_TASKS_PER_READER: usize = 2;
/// Bytes of small files in a batch above which their writes are spread over `parallel` tasks.
const PARALLEL_WRITE_BYTES: usize = 256 << 10;

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
    /// Statistics of the large-file path; everything else counts in `counters`.
    counters: StatCounters,
    scan_rules: ScanRules,
    /// Subtrees walked on tasks of their own, beyond the one each walking task descends into:
    /// bounds the directories in progress to about (this + 1) x the tree's depth.
    subtree_tasks: Arc<Semaphore>,
    progress: Arc<BackupProgress>,
}

pub(crate) fn entry_type(meta: &std::fs::Metadata) -> Option<EntryType> {
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

pub(crate) fn new_entry(name: Vec<u8>, meta: &std::fs::Metadata, kind: EntryType) -> DirEntry {
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

pub(crate) fn rel_join(rel: &str, name: &[u8]) -> String {
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
        counters: StatCounters::default(),
        scan_rules: ScanRules {
            ignore_cache_dirs: policy.files.ignore_cache_dirs.unwrap_or(true),
            one_file_system: policy.files.one_file_system.unwrap_or(false),
            max_file_size: policy.files.max_file_size,
            ignore_unknown_types: policy.error_handling.ignore_unknown_types.unwrap_or(true),
        },
        subtree_tasks: Arc::new(Semaphore::new(parallel * SUBTREE_TASKS_PER_READER)),
        progress,
    });
    let root_name = resolved
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"/".to_vec());
    let checkpoint_interval = opts
        .checkpoint_interval
        .unwrap_or(MAX_CHECKPOINT_INTERVAL)
        .min(MAX_CHECKPOINT_INTERVAL);
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
        let checkpoints = checkpoint_loop(
            repo,
            &ctx,
            CheckpointRoot::Dir(&root_node),
            &opts.source,
            start_time,
            checkpoint_interval,
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
        let checkpoints = checkpoint_loop(
            repo,
            &ctx,
            CheckpointRoot::File(&root_node),
            &opts.source,
            start_time,
            checkpoint_interval,
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
    let stats = ctx.counters.added_to(&SnapshotStats::default());
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

fn join_error(e: tokio::task::JoinError) -> SnapshotError {
    SnapshotError::Other(format!("backup task failed: {e}"))
}

/// Adds an entry's outcome to its directory's listing and checkpoint node.
fn record(ctx: &Ctx, node: &DirNode, builder: &mut DirManifestBuilder, outcome: Outcome) {
    match outcome {
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
            if ignored {
                bump(&ctx.counters.ignored_error_count);
            } else {
                bump(&ctx.counters.error_count);
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

/// Walks one directory: scans it on the blocking pool, starts its subdirectories on tasks of
/// their own while the tree-wide budget allows, writes its small files and symlinks, uploads its
/// large files, walks the remaining subdirectories in turn, and writes its listing.
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
        bump(&ctx.counters.dir_count);
        let previous = index_previous(previous_listings(&ctx.contents, &prev_ids).await);
        let scanned = {
            let (ctx, dir, rel) = (ctx.clone(), dir.clone(), rel.clone());
            let dir_meta = dir_meta.clone();
            tokio::task::spawn_blocking(move || {
                scan_dir(
                    &dir,
                    &rel,
                    &dir_meta,
                    &parent_ignore,
                    previous,
                    ctx.scan_rules,
                    &ctx.counters,
                )
            })
            .await
            .map_err(join_error)?
        };
        let Scanned {
            handle,
            ignore,
            unknown,
            subdirs,
            cached,
            small,
            mut large,
        } = match scanned {
            Ok(s) => s,
            Err(ScanError::List(e)) => return Err(SnapshotError::io(&dir, "list directory", e)),
            Err(ScanError::Ignore(e)) => return Err(SnapshotError::Other(e)),
        };
        let mut builder = DirManifestBuilder::new();
        for rel in unknown {
            let failed = Outcome::Failed {
                rel,
                ignored: false,
                error: "unknown or unsupported entry type".into(),
            };
            record(&ctx, &node, &mut builder, failed);
        }
        for entry in cached {
            ctx.progress.cached_files.fetch_add(1, Ordering::Relaxed);
            ctx.progress
                .cached_bytes
                .fetch_add(entry.size as u64, Ordering::Relaxed);
            if entry.entry_type == EntryType::File {
                bump(&ctx.counters.cached_files);
                add(&ctx.counters.total_size, entry.size);
            }
            record(&ctx, &node, &mut builder, Outcome::Entry(entry));
        }

        let subtree = |listed: Listed, previous: Vec<ObjectId>| {
            upload_subdir(
                ctx.clone(),
                listed,
                rel.clone(),
                previous,
                ignore.clone(),
                node.clone(),
            )
        };
        let mut spawned = tokio::task::JoinSet::new();
        let mut in_turn = Vec::new();
        for (listed, previous) in subdirs {
            match ctx.subtree_tasks.clone().try_acquire_owned() {
                Ok(permit) => {
                    let walk = subtree(listed, previous);
                    spawned.spawn(async move {
                        let outcome = walk.await;
                        drop(permit);
                        outcome
                    });
                }
                Err(_) => in_turn.push((listed, previous)),
            }
        }

        let grown = write_small_items(&ctx, &rel, &node, &mut builder, handle, small).await?;
        large.extend(grown);
        let mut uploads = futures::stream::iter(
            large
                .into_iter()
                .map(|(listed, entry)| upload_large(&ctx, &rel, &node, listed, entry)),
        )
        .buffer_unordered(ctx.parallel.max(2));
        while let Some(outcome) = uploads.next().await {
            record(&ctx, &node, &mut builder, outcome?);
        }
        drop(uploads);

        for (listed, previous) in in_turn {
            let walk = subtree(listed, previous);
            match ctx.subtree_tasks.clone().try_acquire_owned() {
                Ok(permit) => {
                    spawned.spawn(async move {
                        let outcome = walk.await;
                        drop(permit);
                        outcome
                    });
                }
                Err(_) => record(&ctx, &node, &mut builder, walk.await?),
            }
        }
        while let Some(joined) = spawned.join_next().await {
            record(&ctx, &node, &mut builder, joined.map_err(join_error)??);
        }

        let dir_mtime = UtcTimestamp::from_unix(dir_meta.mtime(), dir_meta.mtime_nsec() as u32);
        let manifest = builder.build(dir_mtime, "");
        let summary = manifest.summary.clone().unwrap_or_default();
        let json = encode_dir_manifest(&manifest);
        drop(manifest);
        let prefix = Some(object::DIRECTORY_CONTENT_PREFIX);
        let oid = if json.len() < SMALL_OBJECT_LIMIT {
            write_small_object(&ctx.contents, &json, prefix, ctx.metadata_compression).await?
        } else {
            let opts = ObjectWriterOptions {
                prefix,
                compression: ctx.metadata_compression,
                metadata_compression: ctx.metadata_compression,
                splitter: ctx.splitter.clone(),
                parallelism: ctx.parallel,
            };
            write_object(&ctx.contents, &json, opts).await?
        };
        Ok((oid, summary))
    })
}

/// Walks subdirectory `listed` of the directory at snapshot-relative `parent_rel`.
async fn upload_subdir(
    ctx: Arc<Ctx>,
    listed: Listed,
    parent_rel: String,
    previous: Vec<ObjectId>,
    ignore: IgnoreContext,
    node: Arc<DirNode>,
) -> Result<Outcome> {
    let child_rel = rel_join(&parent_rel, &listed.name);
    let mut entry = new_entry(listed.name.clone(), &listed.meta, EntryType::Directory);
    let child = node.start_child(entry.clone(), entry.mtime);
    let result = upload_dir(
        ctx.clone(),
        listed.path,
        child_rel.clone(),
        listed.meta,
        previous,
        ignore,
        child,
    )
    .await;
    node.end_child(&listed.name);
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

/// The outcome of a file that could not be read.
fn file_failed(ctx: &Ctx, rel: String, op: &str, path: &Path, error: std::io::Error) -> Outcome {
    Outcome::Failed {
        rel,
        ignored: ctx
            .policy
            .error_handling
            .ignore_file_errors
            .unwrap_or(false),
        error: format!("unable to {op} file {}: {error}", path.display()),
    }
}

/// Writes the small files and symlinks of a directory, reading on the blocking pool what the
/// scan left unread, a batch at a time. Returns the files that grew too large meanwhile.
async fn write_small_items(
    ctx: &Ctx,
    rel: &str,
    node: &DirNode,
    builder: &mut DirManifestBuilder,
    dir: Option<Arc<std::fs::File>>,
    mut items: Vec<SmallItem>,
) -> Result<Vec<(Listed, DirEntry)>> {
    let mut grown = Vec::new();
    let mut done = 0;
    while done < items.len() {
        if matches!(items[done].read, SmallRead::Pending) {
            let (start, dir) = (done, dir.clone());
            items = tokio::task::spawn_blocking(move || {
                read_pending(dir.as_deref(), &mut items[start..]);
                items
            })
            .await
            .map_err(join_error)?;
        }
        let end = items[done..]
            .iter()
            .position(|i| matches!(i.read, SmallRead::Pending))
            .map_or(items.len(), |n| done + n);
        write_batch(ctx, &mut items[done..end]).await?;
        for item in &mut items[done..end] {
            let outcome = match std::mem::replace(&mut item.read, SmallRead::Done) {
                SmallRead::Written { size, object } => {
                    if item.entry.entry_type == EntryType::File {
                        bump(&ctx.counters.file_count);
                        bump(&ctx.counters.non_cached_files);
                        add(&ctx.counters.total_size, size);
                        ctx.progress.hashed_files.fetch_add(1, Ordering::Relaxed);
                        ctx.progress
                            .hashed_bytes
                            .fetch_add(size as u64, Ordering::Relaxed);
                    }
                    Outcome::Entry(DirEntry {
                        object_id: object,
                        size,
                        ..item.entry.clone()
                    })
                }
                SmallRead::Vanished => Outcome::Skipped,
                SmallRead::Grew => {
                    let listed = Listed {
                        name: std::mem::take(&mut item.listed.name),
                        path: std::mem::take(&mut item.listed.path),
                        meta: item.listed.meta.clone(),
                    };
                    grown.push((listed, item.entry.clone()));
                    continue;
                }
                SmallRead::Failed { op, error } => file_failed(
                    ctx,
                    rel_join(rel, &item.listed.name),
                    op,
                    &item.listed.path,
                    error,
                ),
                SmallRead::Pending | SmallRead::Data(_) | SmallRead::Done => {
                    return Err(SnapshotError::Other(format!(
                        "{}: small file was not written",
                        item.listed.path.display()
                    )));
                }
            };
            record(ctx, node, builder, outcome);
        }
        done = end;
    }
    Ok(grown)
}

/// Small files whose IDs are computed together (BLAKE2b's SIMD lanes take several inputs).
const HASHED_TOGETHER: usize = 16;

/// One small object to write: its index in the batch, its bytes and their compression.
type SmallJob = (usize, Vec<u8>, Option<u32>);

/// Writes the read items of a batch (their data becomes [`SmallRead::Written`]). A batch of many
/// bytes is spread over `parallel` tasks, so hashing and compressing a directory of small files
/// uses every core; a few bytes are not worth the hand-offs.
async fn write_batch(ctx: &Ctx, items: &mut [SmallItem]) -> Result<()> {
    let mut jobs: Vec<SmallJob> = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        if !matches!(item.read, SmallRead::Data(_)) {
            continue;
        }
        let SmallRead::Data(data) = std::mem::replace(&mut item.read, SmallRead::Done) else {
            continue;
        };
        // Symlink targets are stored uncompressed, as kopia does.
        let compression = match item.entry.entry_type {
            EntryType::File => compression_id(
                ctx.policy
                    .compression
                    .compressor_for_file(&item.listed.name, item.listed.meta.len() as i64),
            ),
            _ => None,
        };
        jobs.push((i, data, compression));
    }
    let bytes: usize = jobs.iter().map(|(_, data, _)| data.len()).sum();
    let tasks = ctx.parallel.min(jobs.len());
    let written = if tasks < 2 || bytes < PARALLEL_WRITE_BYTES {
        write_jobs(&ctx.contents, jobs).await?
    } else {
        let mut groups: Vec<Vec<SmallJob>> = (0..tasks).map(|_| Vec::new()).collect();
        for (n, job) in jobs.into_iter().enumerate() {
            groups[n % tasks].push(job);
        }
        let mut running = tokio::task::JoinSet::new();
        for group in groups {
            let contents = ctx.contents.clone();
            running.spawn(async move { write_jobs(&contents, group).await });
        }
        let mut written = Vec::new();
        while let Some(joined) = running.join_next().await {
            written.extend(joined.map_err(join_error)??);
        }
        written
    };
    for (i, size, object) in written {
        items[i].read = SmallRead::Written { size, object };
    }
    Ok(())
}

/// Writes small objects in turn: `(index, size, object)` for each.
async fn write_jobs(
    contents: &ContentManager,
    jobs: Vec<SmallJob>,
) -> Result<Vec<(usize, i64, ObjectId)>> {
    let mut written = Vec::with_capacity(jobs.len());
    for group in jobs.chunks(HASHED_TOGETHER) {
        let chunks: Vec<(&[u8], Option<u32>)> = group
            .iter()
            .map(|(_, data, compression)| (data.as_slice(), *compression))
            .collect();
        let objects = write_chunks(contents, &chunks).await?;
        for ((i, data, _), object) in group.iter().zip(objects) {
            written.push((*i, data.len() as i64, object));
        }
    }
    Ok(written)
}

/// Uploads a file through the object writer (in parts when it is large enough).
async fn upload_large(
    ctx: &Ctx,
    rel: &str,
    node: &Arc<DirNode>,
    listed: Listed,
    mut entry: DirEntry,
) -> Result<Outcome> {
    match upload_file(ctx, &listed.path, &listed.meta, node, &entry).await {
        Ok((oid, read)) => {
            entry.object_id = oid;
            entry.size = read;
            bump(&ctx.counters.non_cached_files);
            add(&ctx.counters.total_size, read);
            Ok(Outcome::Entry(entry))
        }
        Err(SnapshotError::Io { source, op, .. })
            if source.kind() == std::io::ErrorKind::NotFound && op == "open" =>
        {
            Ok(Outcome::Skipped)
        }
        Err(SnapshotError::Io { source, op, path }) => Ok(file_failed(
            ctx,
            rel_join(rel, &listed.name),
            op,
            &path,
            source,
        )),
        Err(e) => Err(e),
    }
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
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| SnapshotError::io(path, "open", e))?;
    // Reads run on the blocking pool straight into the object writer's chunk buffers.
    let file = Arc::new(file.into_std().await);
    // kopia's checkpoint entry of a file carries the size the file had when listed.
    let template = DirEntry {
        size,
        ..entry.clone()
    };
    if part_size > 0 && size > part_size {
        return upload_in_parts(ctx, path, &file, part_size as u64, opts, node, &template).await;
    }
    let upload = node.start_upload(template);
    let mut writer = ObjectWriter::new(ctx.contents.clone(), opts)?;
    let read = copy_into(
        ctx,
        path,
        &file,
        size as u64,
        &mut writer,
        u64::MAX,
        &upload,
    )
    .await?;
    bump(&ctx.counters.file_count);
    ctx.progress.hashed_files.fetch_add(1, Ordering::Relaxed);
    Ok((writer.finish().await?, read as i64))
}

/// Copies up to `limit` bytes (to EOF when u64::MAX) from `file` into `writer`, recording the
/// chunks written so far in `upload` for checkpoints. `expected` is how much the file should
/// still hold (its listed size); reads are sized by it so a small file takes one read.
async fn copy_into(
    ctx: &Ctx,
    path: &Path,
    file: &Arc<std::fs::File>,
    expected: u64,
    writer: &mut ObjectWriter,
    limit: u64,
    upload: &UploadGuard,
) -> Result<u64> {
    let mut total = 0u64;
    while total < limit {
        // One byte more than the file should still hold lets a short read tell EOF at once.
        let remaining = match expected.saturating_sub(total) {
            0 => READ_BUFFER,
            n => n.saturating_add(1),
        };
        let want = (limit - total).min(READ_BUFFER).min(remaining);
        let buffer = writer.buffer_to_fill(want as usize)?;
        let reader = file.clone();
        let (buffer, read) = tokio::task::spawn_blocking(move || {
            let mut buffer = buffer;
            // read_to_end appends into the spare capacity without zeroing it first.
            let read =
                std::io::Read::read_to_end(&mut std::io::Read::take(&*reader, want), &mut buffer);
            (buffer, read)
        })
        .await
        .map_err(|e| {
            SnapshotError::Other(format!("read task for {} failed: {e}", path.display()))
        })?;
        let n = read.map_err(|e| SnapshotError::io(path, "read", e))? as u64;
        writer.filled(buffer).await?;
        let recorded = upload.file().chunk_count();
        if let Some(new) = writer.finished_chunks().get(recorded..)
            && !new.is_empty()
        {
            upload.file().add_chunks(new);
        }
        total += n;
        ctx.progress.hashed_bytes.fetch_add(n, Ordering::Relaxed);
        if n < want {
            break;
        }
    }
    Ok(total)
}

/// kopia's parallel parts: `floor(size / part) + 1` parts, each through its own writer (so the
/// splitter restarts at every part), concatenated into one `I…` object with an `x` index.
async fn upload_in_parts(
    ctx: &Ctx,
    path: &Path,
    file: &Arc<std::fs::File>,
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
        let read = copy_into(
            ctx,
            path,
            file,
            // The template carries the size the file had when listed.
            (template.size as u64).saturating_sub(total),
            &mut writer,
            part_size,
            &upload,
        )
        .await?;
        bump(&ctx.counters.file_count);
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
