//! `snapshot create|list|restore|delete|verify`, `restore`, `ls` and `show`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::{DirEntry, EntryType, mode};
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo, encode_snapshot_manifest};
use kmover_repo::Repository;
use kmover_repo::object::{open_object, read_chunk};
use kmover_snapshot::backup::{BackupOptions, BackupProgress, backup};
use kmover_snapshot::restore::{RestoreOptions, restore as restore_entry};
use kmover_snapshot::verify::Verifier;
use kmover_snapshot::{policy, snapshots, tree};

use crate::cli::{GlobalArgs, RestoreArgs, SnapshotCommand, SnapshotCreateArgs, SnapshotListArgs};
use crate::connection::{self, Connected};
use crate::logging::status;
use crate::metrics::{self, IoTotals, Operation, RunReport};
use crate::progress::{Counters, Progress, ProgressSource, Reading, TreeEstimate, human_bytes};

pub async fn run(global: &GlobalArgs, cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create(args) => create(global, args).await,
        SnapshotCommand::List(args) => list(global, args).await,
        SnapshotCommand::Restore(args) => restore(global, args).await,
        SnapshotCommand::Delete { ids, delete } => {
            if !delete {
                bail!(
                    "this would delete {} snapshot(s); pass --delete to confirm",
                    ids.len()
                );
            }
            let c = connection::open_connected(global).await?;
            for id in &ids {
                snapshots::delete_snapshot(&c.repo, id).await?;
                eprintln!("Deleted snapshot {id}");
            }
            c.repo.flush().await?;
            Ok(())
        }
        SnapshotCommand::Expire(args) => {
            crate::commands::snapshot_expire::run_expire(global, args).await
        }
        SnapshotCommand::Pin(args) => crate::commands::snapshot_pin::run_pin(global, args).await,
        SnapshotCommand::Verify {
            ids,
            verify_files_percent,
            json,
        } => verify(global, ids, verify_files_percent, json).await,
        SnapshotCommand::Exists(args) => crate::commands::exists::run(global, args).await,
    }
}

/// Lexically cleaned absolute path, as Go's `filepath.Clean(filepath.Abs(p))` (no symlinks resolved).
fn clean_absolute(p: &Path) -> PathBuf {
    let abs = connection::absolute(p.to_path_buf());
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn parse_source(s: &str) -> anyhow::Result<SourceInfo> {
    let (user_host, path) = s.split_once(':').map_or((s, ""), |(a, b)| (a, b));
    let (user, host) = user_host
        .split_once('@')
        .context(format!("invalid source {s:?}: expected user@host[:/path]"))?;
    Ok(SourceInfo {
        host: host.into(),
        user_name: user.into(),
        path: path.into(),
    })
}

fn local_source(c: &Connected, path: &Path) -> SourceInfo {
    SourceInfo {
        host: c.config.hostname.clone(),
        user_name: c.config.username.clone(),
        path: clean_absolute(path).to_string_lossy().into_owned(),
    }
}

async fn create(global: &GlobalArgs, args: SnapshotCreateArgs) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let mut reports = Vec::new();
    let result = create_all(&c, &args, &mut reports).await;
    metrics::report(&reports).await;
    result
}

/// Backs up each source in turn, adding one metrics report per source attempted.
async fn create_all(
    c: &Connected,
    args: &SnapshotCreateArgs,
    reports: &mut Vec<RunReport>,
) -> anyhow::Result<()> {
    let mut tags = BTreeMap::new();
    for t in &args.tags {
        let (k, v) = t
            .split_once(':')
            .with_context(|| format!("invalid tag {t:?}: expected key:value"))?;
        tags.insert(k.to_string(), v.to_string());
    }
    let mut failures = 0i64;
    for path in &args.sources {
        let source = match &args.override_source {
            Some(s) => parse_source(s)?,
            None => local_source(c, path),
        };
        let (policy, _) = policy::effective_policy_for(&c.repo, &source).await?;
        let opts = BackupOptions {
            source: source.clone(),
            parallel: args.parallel,
            description: args.description.clone(),
            tags: tags.clone(),
            pins: args.pin.clone(),
            checkpoint_interval: args.checkpoint_interval,
        };
        status(&format!("Snapshotting {source} ..."));
        let started = chrono::Utc::now();
        let io_before = IoTotals::now();
        metrics::take_data_packs();
        let progress = Arc::new(BackupProgress::default());
        let shown = Progress::show(
            "Backup",
            Arc::new(BackupView {
                progress: progress.clone(),
                estimate: TreeEstimate::start(path),
            }),
        );
        let result = backup(&c.repo, path, &opts, &policy, progress.clone()).await;
        drop(shown);
        let report = |success: bool, deduplicated: Option<u64>| RunReport {
            operation: Operation::Backup,
            source: source.to_string(),
            success,
            started,
            finished: chrono::Utc::now(),
            read_bytes: progress.hashed_bytes.load(Ordering::Relaxed),
            written_bytes: IoTotals::now().since(io_before).written_bytes,
            deduplicated_bytes: deduplicated,
            files: progress.hashed_files.load(Ordering::Relaxed)
                + progress.cached_files.load(Ordering::Relaxed),
            errors: progress.errors.load(Ordering::Relaxed),
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                reports.push(report(false, None));
                return Err(e).with_context(|| format!("snapshot of {} failed", path.display()));
            }
        };
        let m = &outcome.manifest;
        let root = m.root_entry.as_ref().expect("backup sets the root entry");
        status(&format!(
            "Created snapshot with root {} and ID {} in {}s",
            root.object_id,
            outcome.manifest_id,
            (m.end_time.unix_secs() - m.start_time.unix_secs()).max(0)
        ));
        if args.json {
            println!("{}", String::from_utf8_lossy(&encode_snapshot_manifest(m)));
        }
        // kopia applies the source's retention policy after every snapshot.
        let zone = kmover_snapshot::retention::LocalZone::from_env();
        let finished = async {
            kmover_snapshot::retention::expire(&c.repo, &source, true, &zone)
                .await
                .with_context(|| format!("error applying retention policy to {source}"))?;
            c.repo.flush().await?;
            anyhow::Ok(())
        }
        .await;
        let logical = progress.hashed_bytes.load(Ordering::Relaxed)
            + progress.cached_bytes.load(Ordering::Relaxed);
        let uploaded = new_data_bytes(c).await;
        reports.push(report(
            finished.is_ok() && outcome.fatal_errors == 0,
            Some(logical.saturating_sub(uploaded)),
        ));
        finished?;
        if outcome.fatal_errors > 0 {
            status(&format!(
                "Found {} fatal error(s) while snapshotting {}.",
                outcome.fatal_errors,
                path.display()
            ));
            failures += outcome.fatal_errors;
        }
    }
    if failures > 0 {
        bail!("encountered {failures} fatal error(s)");
    }
    Ok(())
}

/// A backup's progress: its counters, and the totals of a parallel walk of the source.
struct BackupView {
    progress: Arc<BackupProgress>,
    estimate: TreeEstimate,
}

impl ProgressSource for BackupView {
    fn read(&self) -> Reading {
        let p = &self.progress;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (total_files, total_bytes) = self.estimate.totals();
        Reading {
            files: load(&p.hashed_files) + load(&p.cached_files),
            bytes: load(&p.hashed_bytes) + load(&p.cached_bytes),
            errors: load(&p.errors),
            total_files,
            total_bytes,
            phase: String::new(),
            detail: format!(
                "hashed {} ({} files), cached {} ({} files), {} dirs",
                human_bytes(load(&p.hashed_bytes)),
                load(&p.hashed_files),
                human_bytes(load(&p.cached_bytes)),
                load(&p.cached_files),
                load(&p.dirs),
            ),
        }
    }
}

/// Uncompressed bytes of the data contents this process stored since the previous
/// [`metrics::take_data_packs`]: the contents of the data packs it wrote itself, so another
/// writer of the same repository is not counted.
async fn new_data_bytes(c: &Connected) -> u64 {
    let ours = metrics::take_data_packs();
    if ours.is_empty() {
        return 0;
    }
    c.repo
        .contents()
        .list_contents(false)
        .await
        .iter()
        .filter(|e| !e.content_id.has_prefix() && ours.contains(&*e.pack_blob_id))
        .map(|e| u64::from(e.original_length))
        .sum()
}

/// kopia's `snapshot list --json` item: the manifest with its ID filled in, then its retention
/// reasons (kopia embeds the manifest and appends `retentionReason`, omitted when empty).
fn manifest_json(m: &SnapshotManifest, reasons: &[String]) -> String {
    let mut json = String::from_utf8_lossy(&encode_snapshot_manifest(m)).into_owned();
    if !reasons.is_empty() && json.ends_with('}') {
        json.pop();
        json.push_str(",\"retentionReason\":");
        json.push_str(&serde_json::to_string(reasons).unwrap_or_default());
        json.push('}');
    }
    json
}

async fn list(global: &GlobalArgs, args: SnapshotListArgs) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let filter = match &args.source {
        Some(s) if s.contains('@') => Some(parse_source(s)?),
        Some(p) => Some(local_source(&c, Path::new(p))),
        None => None,
    };
    let mut all = snapshots::list_snapshots(&c.repo, filter.as_ref()).await?;
    // kopia's JSON lists every source and the incomplete snapshots whatever the flags say.
    if filter.is_none() && !args.all && !args.json {
        all.retain(|(_, m)| {
            m.source.host == c.config.hostname && m.source.user_name == c.config.username
        });
    }
    if !args.incomplete && !args.json {
        all.retain(|(_, m)| m.incomplete.is_empty());
    }
    // kopia's order: sources by their `user@host:path` text, then by start and end time.
    all.sort_by_cached_key(|(_, m)| (m.source.to_string(), m.start_time, m.end_time));
    let zone = kmover_snapshot::retention::LocalZone::from_env();
    let judged = all.iter().map(|(_, m)| m.clone()).collect();
    let decisions = kmover_snapshot::retention::judge_snapshots(&c.repo, judged, &zone).await?;
    let reasons: std::collections::HashMap<&str, &[String]> = decisions
        .iter()
        .map(|d| (d.id.as_str(), d.reasons.as_slice()))
        .collect();
    if args.json {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        write!(out, "[")?;
        for (i, (id, m)) in all.iter().enumerate() {
            let r = reasons.get(id.as_str()).copied().unwrap_or_default();
            write!(
                out,
                "{}{}",
                if i == 0 { "\n " } else { ",\n " },
                manifest_json(m, r)
            )?;
        }
        write!(out, "\n]")?;
        return Ok(());
    }
    let mut last_source = None;
    for (id, m) in &all {
        if last_source.as_ref() != Some(&m.source) {
            println!("{}", m.source);
            last_source = Some(m.source.clone());
        }
        let root = m.root_entry.clone().unwrap_or_default();
        let summary = root.summary.clone().unwrap_or_default();
        let start =
            chrono::DateTime::from_timestamp(m.start_time.unix_secs(), m.start_time.subsec_nanos())
                .unwrap_or_default();
        let mut line = format!(
            "  {} {} {} files:{} dirs:{}",
            crate::output::human_time(&start),
            root.object_id,
            human_bytes(summary.size.max(0) as u64),
            summary.files,
            summary.dirs
        );
        if args.manifest_id {
            line = format!("{line} manifest:{id}");
        }
        if !m.incomplete.is_empty() {
            line = format!("{line} incomplete:{}", m.incomplete);
        }
        if let Some(r) = reasons.get(id.as_str()).filter(|r| !r.is_empty()) {
            line = format!("{line} ({})", r.join(","));
        }
        println!("{line}");
    }
    Ok(())
}

/// Resolves `ID[/path]`, an object ID, or a source path to the entry it names.
async fn resolve_entry(c: &Connected, spec: &str, snapshot_time: &str) -> anyhow::Result<DirEntry> {
    let (head, rest) = spec.split_once('/').map_or((spec, ""), |(h, r)| (h, r));
    if head.len() == 32 && head.bytes().all(|b| b.is_ascii_hexdigit()) {
        match snapshots::load_snapshot(&c.repo, head).await {
            Ok(m) => {
                let root = m.root_entry.context("snapshot has no root entry")?;
                return Ok(tree::resolve(c.repo.contents(), &root, rest).await?);
            }
            // Not a snapshot ID: maybe an object ID.
            Err(kmover_snapshot::SnapshotError::SnapshotNotFound(_)) => {}
            // A damaged manifest must be reported as such, not as a missing object.
            Err(e) => return Err(e).with_context(|| format!("cannot load snapshot {head}")),
        }
    }
    if let Ok(oid) = ObjectId::parse(head)
        && !oid.is_empty()
        && !spec.starts_with('/')
    {
        let kind = if oid.is_directory() {
            EntryType::Directory
        } else {
            EntryType::File
        };
        let root = DirEntry {
            name: head.as_bytes().to_vec(),
            entry_type: kind,
            object_id: oid,
            mode: 0o755,
            ..Default::default()
        };
        return Ok(tree::resolve(c.repo.contents(), &root, rest).await?);
    }
    // A source path: its latest snapshot (at or before --snapshot-time), then the remaining path.
    let abs = clean_absolute(Path::new(spec));
    let mut candidate = abs.clone();
    loop {
        let source = local_source(c, &candidate);
        let mut found = snapshots::list_snapshots(&c.repo, Some(&source)).await?;
        found.retain(|(_, m)| m.incomplete.is_empty());
        let chosen = match crate::timespec::parse(snapshot_time, c.repo.now())
            .map_err(anyhow::Error::msg)?
        {
            crate::timespec::SnapshotTime::Latest => found.last(),
            crate::timespec::SnapshotTime::Oldest => found.first(),
            crate::timespec::SnapshotTime::Before(t) => {
                let limit = t.timestamp_nanos_opt().unwrap_or(i64::MAX);
                found.iter().rev().find(|(_, m)| m.start_time.0 < limit)
            }
        };
        if let Some((_, m)) = chosen {
            let root = m.root_entry.clone().context("snapshot has no root entry")?;
            let sub = abs.strip_prefix(&candidate).unwrap_or(Path::new(""));
            return Ok(tree::resolve(c.repo.contents(), &root, &sub.to_string_lossy()).await?);
        }
        if !candidate.pop() {
            bail!("no snapshot found for {spec:?}");
        }
    }
}

pub async fn restore(global: &GlobalArgs, args: RestoreArgs) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let entry = resolve_entry(&c, &args.source, &args.snapshot_time).await?;
    let opts = RestoreOptions {
        overwrite_files: args.overwrite_files,
        overwrite_directories: args.overwrite_directories,
        overwrite_symlinks: args.overwrite_symlinks,
        skip_owners: args.skip_owners,
        skip_permissions: args.skip_permissions,
        skip_times: args.skip_times,
        ignore_permission_errors: args.ignore_permission_errors,
        write_sparse_files: args.write_sparse_files,
        ignore_errors: args.ignore_errors,
        write_files_atomically: args.write_files_atomically,
        parallel: args.parallel.max(1),
        incremental: args.skip_existing,
    };
    let target = connection::absolute(args.target.clone());
    status(&format!(
        "Restoring to local filesystem ({}) ...",
        target.display()
    ));
    let started = chrono::Utc::now();
    let io_before = IoTotals::now();
    let counters = Arc::new(Counters::default());
    counters.set_totals(
        Some(entry.summary.as_ref().map_or(1, |s| s.files.max(0) as u64)),
        Some(entry.summary.as_ref().map_or(entry.size, |s| s.size).max(0) as u64),
    );
    let record = {
        let counters = counters.clone();
        move |s: &kmover_snapshot::restore::RestoreStats| {
            counters.set(
                s.restored_files + s.skipped_files,
                s.restored_bytes + s.skipped_bytes,
                s.error_count,
            );
        }
    };
    let shown = Progress::show("Restore", counters.clone());
    let stats = restore_entry(
        c.repo.contents().clone(),
        &entry,
        &target,
        &opts,
        Some(&record),
    )
    .await;
    drop(shown);
    let source = restore_source_label(&c, &args.source).await;
    let stats = match stats {
        Ok(stats) => stats,
        Err(e) => {
            metrics::report(&[RunReport {
                operation: Operation::Restore,
                source,
                success: false,
                started,
                finished: chrono::Utc::now(),
                read_bytes: IoTotals::now().since(io_before).read_bytes,
                written_bytes: counters.bytes(),
                deduplicated_bytes: None,
                files: counters.files(),
                errors: counters.errors().max(1),
            }])
            .await;
            return Err(e.into());
        }
    };
    status(&format!(
        "Restored {} files, {} directories and {} symbolic links ({}).",
        stats.restored_files,
        stats.restored_dirs,
        stats.restored_symlinks,
        human_bytes(stats.restored_bytes)
    ));
    if args.json {
        println!("{}", restore_stats_json(&stats, args.ignore_errors));
    }
    for e in &stats.errors {
        crate::logging::fatal(e);
    }
    let failed = !stats.errors.is_empty() && !args.ignore_errors;
    metrics::report(&[RunReport {
        operation: Operation::Restore,
        source,
        success: !failed,
        started,
        finished: chrono::Utc::now(),
        read_bytes: IoTotals::now().since(io_before).read_bytes,
        written_bytes: stats.restored_bytes,
        deduplicated_bytes: None,
        files: stats.restored_files,
        errors: stats.error_count,
    }])
    .await;
    if failed {
        bail!("restore encountered {} error(s)", stats.errors.len());
    }
    Ok(())
}

/// The metrics `source` of a restore: the snapshot's source when the argument names a snapshot,
/// else the argument itself (an object ID or a path).
async fn restore_source_label(c: &Connected, spec: &str) -> String {
    let head = spec.split('/').next().unwrap_or(spec);
    match snapshots::load_snapshot(&c.repo, head).await {
        Ok(m) => m.source.to_string(),
        Err(_) if spec.starts_with('/') => local_source(c, Path::new(spec)).to_string(),
        Err(_) => spec.to_string(),
    }
}

/// kopia's `restore.Stats` (the shape its API server reports for a restore task).
fn restore_stats_json(s: &kmover_snapshot::restore::RestoreStats, ignore_errors: bool) -> String {
    serde_json::json!({
        "RestoredTotalFileSize": s.restored_bytes,
        "EnqueuedTotalFileSize": s.restored_bytes + s.skipped_bytes,
        "SkippedTotalFileSize": s.skipped_bytes,
        "RestoredFileCount": s.restored_files,
        "RestoredDirCount": s.restored_dirs,
        "RestoredSymlinkCount": s.restored_symlinks,
        "EnqueuedFileCount": s.restored_files + s.skipped_files,
        "EnqueuedDirCount": s.restored_dirs,
        "EnqueuedSymlinkCount": s.restored_symlinks + s.skipped_symlinks,
        "SkippedCount": s.skipped_files + s.skipped_symlinks,
        "DeletedFilesCount": 0,
        "DeletedSymlinkCount": 0,
        "DeletedDirCount": 0,
        "IgnoredErrorCount": if ignore_errors { s.error_count } else { 0 },
    })
    .to_string()
}

async fn verify(
    global: &GlobalArgs,
    ids: Vec<String>,
    percent: f64,
    json: bool,
) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let targets: Vec<(String, SnapshotManifest)> = if ids.is_empty() {
        snapshots::list_snapshots(&c.repo, None).await?
    } else {
        let mut v = Vec::new();
        for id in ids {
            let m = snapshots::load_snapshot(&c.repo, &id).await?;
            v.push((id, m));
        }
        v
    };
    let started = chrono::Utc::now();
    let io_before = IoTotals::now();
    // kopia's expected totals: every file, directory and symlink of every root, and file bytes.
    let (mut expected_objects, mut expected_files, mut expected_bytes) = (0i64, 0i64, 0i64);
    for (_, m) in &targets {
        if let Some(s) = m.root_entry.as_ref().and_then(|r| r.summary.as_ref()) {
            expected_objects += s.files + s.dirs + s.symlinks;
            expected_files += s.files;
            expected_bytes += s.size;
        }
    }
    let counters = Arc::new(Counters::default());
    counters.set_totals(
        Some((expected_files.max(0)) as u64),
        Some(expected_bytes.max(0) as u64),
    );
    let live = counters.clone();
    let mut verifier = Verifier::new(c.repo.contents(), percent).with_progress(Arc::new(
        move |s: &kmover_snapshot::verify::VerifyStats| {
            live.set(s.files, s.bytes, s.errors.len() as u64);
        },
    ));
    let shown = Progress::show("Verify", counters.clone());
    let mut walked = Ok(());
    for (id, m) in &targets {
        if let Some(root) = &m.root_entry
            && let Err(e) = verifier
                .verify_entry(root, &format!("{id}:{}", m.source.path))
                .await
        {
            walked = Err(e);
            break;
        }
    }
    drop(shown);
    let s = &verifier.stats;
    let error_count = s.errors.len() as u64 + u64::from(walked.is_err());
    metrics::report(&[RunReport {
        operation: Operation::Verify,
        source: verify_source_label(&targets),
        success: error_count == 0,
        started,
        finished: chrono::Utc::now(),
        read_bytes: IoTotals::now().since(io_before).read_bytes,
        written_bytes: 0,
        deduplicated_bytes: None,
        files: s.files,
        errors: error_count,
    }])
    .await;
    walked?;
    for e in &s.errors {
        crate::logging::fatal(e);
    }
    if json {
        // kopia's `VerifierResult`.
        let mut result = serde_json::json!({
            "stats": {
                "processedObjectCount": s.dirs + s.files,
                "processedBytes": s.bytes,
                "readFileCount": s.files_read,
                "readBytes": s.bytes_read,
                "expectedTotalObjectCount": expected_objects,
                "expectedTotalFileCount": expected_files,
                "expectedTotalBytes": expected_bytes,
            },
            "errorCount": s.errors.len(),
        });
        if !s.errors.is_empty() {
            result["errorStrings"] = serde_json::json!(s.errors);
        }
        println!("{result}");
    } else {
        status(&format!(
            "Verified {} snapshots: {} directories, {} files ({} read fully, {}), {} errors.",
            targets.len(),
            s.dirs,
            s.files,
            s.files_read,
            human_bytes(s.bytes_read),
            s.errors.len()
        ));
    }
    if !s.errors.is_empty() {
        bail!("snapshot verification found {} error(s)", s.errors.len());
    }
    Ok(())
}

/// The metrics `source` of a verify: the one source verified, or `all`.
fn verify_source_label(targets: &[(String, SnapshotManifest)]) -> String {
    match targets.split_first() {
        Some(((_, first), rest)) if rest.iter().all(|(_, m)| m.source == first.source) => {
            first.source.to_string()
        }
        _ => "all".to_string(),
    }
}

fn mode_string(e: &DirEntry) -> String {
    let kind = match e.entry_type {
        EntryType::Directory => 'd',
        EntryType::Symlink => 'l',
        _ => '-',
    };
    let perm = mode::to_unix(e.mode) & 0o777;
    let bits: String = (0..9)
        .map(|i| {
            if perm & (1 << (8 - i)) != 0 {
                ['r', 'w', 'x'][i % 3]
            } else {
                '-'
            }
        })
        .collect();
    format!("{kind}{bits}")
}

pub async fn ls(global: &GlobalArgs, spec: &str, long: bool) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let dir = resolve_entry(&c, spec, "latest").await?;
    let listing = tree::read_dir(c.repo.contents(), &dir).await?;
    for e in &listing.entries {
        let name = String::from_utf8_lossy(&e.name);
        let suffix = if e.entry_type == EntryType::Directory {
            "/"
        } else {
            ""
        };
        if long {
            let t = chrono::DateTime::from_timestamp(e.mtime.unix_secs(), e.mtime.subsec_nanos())
                .unwrap_or_default();
            let size = e.summary.as_ref().map_or(e.size, |s| s.size);
            println!(
                "{} {:>12} {} {:<34} {name}{suffix}",
                mode_string(e),
                size,
                crate::output::human_time(&t),
                e.object_id.to_string()
            );
        } else {
            println!("{name}{suffix}");
        }
    }
    Ok(())
}

pub async fn show(global: &GlobalArgs, spec: &str) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let entry = resolve_entry(&c, spec, "latest").await?;
    write_object_to_stdout(&c.repo, &entry.object_id).await
}

async fn write_object_to_stdout(repo: &Repository, id: &ObjectId) -> anyhow::Result<()> {
    let layout = open_object(repo.contents(), id).await?;
    let mut out = std::io::stdout().lock();
    for chunk in &layout.chunks {
        out.write_all(&read_chunk(repo.contents(), chunk).await?)?;
    }
    out.flush()?;
    Ok(())
}
