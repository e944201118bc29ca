//! The destination direction (`restore`, §3.3): optionally empty the volume, pick a snapshot of
//! `<user>@<host>:<path>` (latest, previous, as-of, shallow), restore it into `DATA_DIR` with
//! atomic file writes, and make the data durable before exiting; the discovery block lists what
//! the repository holds when nothing fits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo};
use kmover_snapshot::restore::{RestoreOptions, RestoreStats};

use super::connect::{self, Identity, Session};
use super::log::Flow;
use super::{Ctx, additional_args};
use crate::progress::human_bytes;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The destination mount; snapshots restored there were taken at `/data`.
const DESTINATION_MOUNT: &str = "/restore/data";

/// What the selection rules pick from the newest-first list.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Index(usize),
    NoneEligible,
    /// `KOPIA_PREVIOUS` reaches past the list (the reference restored "null" and failed, Q-5).
    OutOfRange {
        requested: usize,
        available: usize,
    },
}

/// §3.3's table. `starts` are the snapshots' start times, newest first.
pub fn pick(
    starts: &[DateTime<Utc>],
    previous: usize,
    as_of: Option<DateTime<Utc>>,
    shallow: Option<usize>,
) -> Pick {
    if starts.is_empty() {
        return Pick::NoneEligible;
    }
    if let Some(limit) = as_of {
        // Instants are compared, not strings (the reference compared text).
        return starts
            .iter()
            .enumerate()
            .filter(|(_, t)| **t <= limit)
            .nth(previous)
            .map_or(Pick::NoneEligible, |(i, _)| Pick::Index(i));
    }
    if let Some(n) = shallow {
        return if n == 0 || previous >= starts.len() {
            Pick::NoneEligible
        } else {
            Pick::Index(previous)
        };
    }
    if previous < starts.len() {
        Pick::Index(previous)
    } else {
        Pick::OutOfRange {
            requested: previous,
            available: starts.len(),
        }
    }
}

pub async fn run(ctx: &Ctx) -> Flow {
    let log = &ctx.log;
    let identity = Identity::for_snapshots(ctx);
    let session = connect::ensure_connected(ctx, &identity).await?;
    log.info("=== Starting restore operation ===");
    let started = Instant::now();
    let path = lookup_path(ctx);
    let source = SourceInfo {
        host: identity.host.clone(),
        user_name: identity.user.clone(),
        path: path.clone(),
    };
    if ctx.env.is_set("KOPIA_COMPRESSION") {
        super::apply_compression_policy(ctx, &session, &source).await?;
    }
    // Before selection, so the volume is emptied even when nothing is restored (Q-5b, kept).
    if ctx.env.is_true("KOPIA_ENABLE_FILE_DELETION") {
        delete_existing_files(ctx);
    }
    let discovery = ctx.env.is_true("KOPIA_DISCOVER_SNAPSHOTS");
    if discovery {
        log.plain("Discovery mode enabled - will list available snapshots if restore fails");
    }
    let extra = ctx
        .env
        .get("KOPIA_ADDITIONAL_ARGS")
        .map(additional_args::split)
        .unwrap_or_default();

    let Some(snapshot) = select(ctx, &session, &source).await? else {
        log.plain("No eligible snapshots found");
        if discovery {
            log.plain(&format!("No snapshots found for {source}"));
            print_discovery(ctx, &session).await;
        }
        log.plain("=== No data will be restored ===");
        return Ok(());
    };
    log.plain(&format!("Selected snapshot with id: {}", snapshot.id));
    let flags = additional_args::snapshot_restore(&snapshot.id, &extra).map_err(|e| {
        log.fatal(
            1,
            &format!("Invalid KOPIA_ADDITIONAL_ARGS for snapshot restore: {e}"),
        )
    })?;
    if !extra.is_empty() {
        log.plain(&format!("Added {} additional arguments", extra.len()));
    }
    log.info("Executing restore command...");
    let restore_started = Instant::now();
    if let Err(message) = restore(ctx, &session, &snapshot, &flags).await {
        log.plain(&message);
        log.timing(&format!(
            "Restore execution failed after {} seconds",
            restore_started.elapsed().as_secs()
        ));
        if discovery {
            log.error(&format!("Failed to restore snapshot: {}", snapshot.id));
            print_discovery(ctx, &session).await;
        }
        return Err(log.fatal(1, &format!("Failed to restore snapshot: {}", snapshot.id)));
    }
    log.timing(&format!(
        "Restore execution took {} seconds",
        restore_started.elapsed().as_secs()
    ));
    log.timing(&format!(
        "Total restore operation took {} seconds",
        started.elapsed().as_secs()
    ));
    log.info("Snapshot restore completed successfully");
    make_durable(ctx);
    Ok(())
}

/// `KOPIA_SOURCE_PATH_OVERRIDE`, else `/data` for the `/restore/data` mount, else `DATA_DIR`.
fn lookup_path(ctx: &Ctx) -> String {
    let log = &ctx.log;
    if let Some(p) = ctx.env.get("KOPIA_SOURCE_PATH_OVERRIDE") {
        log.plain(&format!("Using source path override: {p}"));
        return p.to_string();
    }
    if ctx.data_dir == DESTINATION_MOUNT {
        log.plain(&format!(
            "Note: Looking for snapshots with path /data (original path) even though restoring to {}",
            ctx.data_dir
        ));
        return "/data".to_string();
    }
    ctx.data_dir.clone()
}

/// Removes every top-level entry but `lost+found`; failures are ignored, as in the reference.
fn delete_existing_files(ctx: &Ctx) {
    let log = &ctx.log;
    log.plain("File deletion enabled - cleaning destination directory before restore");
    let Ok(entries) = std::fs::read_dir(&ctx.data_dir_real) else {
        return;
    };
    log.plain(&format!("Cleaning destination directory: {}", ctx.data_dir));
    for entry in entries.flatten() {
        if entry.file_name() == "lost+found" {
            continue;
        }
        let path = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
    log.plain("Destination directory cleaned (preserved lost+found if present)");
}

fn parse_count(ctx: &Ctx, var: &str) -> Option<usize> {
    let text = ctx.env.get(var)?;
    match text.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            ctx.log.warn(&format!(
                "{var}={text:?} is not a non-negative integer; ignored"
            ));
            None
        }
    }
}

async fn select(
    ctx: &Ctx,
    session: &Session,
    source: &SourceInfo,
) -> Flow<Option<SnapshotManifest>> {
    let log = &ctx.log;
    log.plain("Selecting snapshot to restore");
    log.plain(&format!("Looking for snapshots with identity: {source}"));
    let previous = parse_count(ctx, "KOPIA_PREVIOUS").unwrap_or(0);
    let as_of = match ctx.env.get("KOPIA_RESTORE_AS_OF") {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| log.fatal(1, &format!("Invalid KOPIA_RESTORE_AS_OF {text:?}: {e}")))?,
        ),
        None => None,
    };
    let shallow = parse_count(ctx, "KOPIA_SHALLOW");
    let mut found = kmover_snapshot::snapshots::list_snapshots(&session.repo, Some(source))
        .await
        .map_err(|e| log.fatal(1, &format!("Failed to list snapshots of {source}: {e}")))?;
    found.retain(|(_, m)| m.incomplete.is_empty());
    found.reverse();
    let starts: Vec<DateTime<Utc>> = found.iter().map(|(_, m)| start_time(m)).collect();
    if let Some(t) = as_of {
        log.plain(&format!("Restoring as of: {}", t.to_rfc3339()));
    } else if let Some(n) = shallow {
        log.plain(&format!(
            "Shallow restore, showing last {n} snapshots with previous offset {previous}"
        ));
    } else {
        log.plain(&format!(
            "Using previous offset: {previous} (0=latest, 1=previous, etc.)"
        ));
    }
    match pick(&starts, previous, as_of, shallow) {
        Pick::Index(i) => Ok(Some(found.swap_remove(i).1)),
        Pick::NoneEligible => Ok(None),
        Pick::OutOfRange {
            requested,
            available,
        } => {
            log.error_stdout(&format!(
                "Requested snapshot index {requested} but only {available} snapshots found"
            ));
            if ctx.env.is_true("KOPIA_DISCOVER_SNAPSHOTS") {
                print_discovery(ctx, session).await;
            }
            Err(log.fatal(
                1,
                &format!(
                    "Failed to restore snapshot: index {requested} of {source} does not exist"
                ),
            ))
        }
    }
}

fn start_time(m: &SnapshotManifest) -> DateTime<Utc> {
    DateTime::from_timestamp(m.start_time.unix_secs(), m.start_time.subsec_nanos())
        .unwrap_or_default()
}

fn end_time(m: &SnapshotManifest) -> DateTime<Utc> {
    DateTime::from_timestamp(m.end_time.unix_secs(), m.end_time.subsec_nanos()).unwrap_or_default()
}

async fn restore(
    ctx: &Ctx,
    session: &Session,
    snapshot: &SnapshotManifest,
    flags: &crate::cli::RestoreArgs,
) -> Result<(), String> {
    let root = snapshot
        .root_entry
        .clone()
        .ok_or_else(|| format!("snapshot {} has no root entry", snapshot.id))?;
    let opts = RestoreOptions {
        overwrite_files: flags.overwrite_files,
        overwrite_directories: flags.overwrite_directories,
        overwrite_symlinks: flags.overwrite_symlinks,
        skip_owners: flags.skip_owners,
        skip_permissions: flags.skip_permissions,
        skip_times: flags.skip_times,
        ignore_permission_errors: true,
        write_sparse_files: flags.write_sparse_files,
        ignore_errors: flags.ignore_errors,
        write_files_atomically: true,
        parallel: flags.parallel.max(1),
        incremental: flags.skip_existing,
    };
    ctx.log.debug(&format!("Restore options: {opts:?}"));
    let latest = Arc::new(Mutex::new(RestoreStats::default()));
    let record = {
        let latest = latest.clone();
        move |s: &RestoreStats| *latest.lock().expect("progress lock") = s.clone()
    };
    let ticker = {
        let (log, latest) = (ctx.log.clone(), latest.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = latest.lock().expect("progress lock").clone();
                log.plain(&format!(
                    "Processed {} files, {} directories ({})",
                    s.restored_files,
                    s.restored_dirs,
                    human_bytes(s.restored_bytes)
                ));
            }
        })
    };
    let result = kmover_snapshot::restore::restore(
        session.repo.contents().clone(),
        &root,
        &ctx.data_dir_real,
        &opts,
        Some(&record),
    )
    .await;
    ticker.abort();
    let stats = result.map_err(|e| format!("restore of {} failed: {e}", snapshot.id))?;
    ctx.log.plain(&format!(
        "Restored {} files, {} directories and {} symbolic links ({}).",
        stats.restored_files,
        stats.restored_dirs,
        stats.restored_symlinks,
        human_bytes(stats.restored_bytes)
    ));
    if !stats.errors.is_empty() {
        for e in &stats.errors {
            ctx.log.plain(&format!("restore problem: {e}"));
        }
        if !flags.ignore_errors {
            return Err(format!("restore hit {} problem(s)", stats.errors.len()));
        }
    }
    Ok(())
}

/// `sync -f DATA_DIR`: the controller snapshots the volume as soon as the job completes.
fn make_durable(ctx: &Ctx) {
    let synced = std::fs::File::open(&ctx.data_dir_real)
        .map_err(|e| e.to_string())
        .and_then(|dir| nix::unistd::syncfs(&dir).map_err(|e| e.to_string()));
    if let Err(e) = synced {
        ctx.log.warn(&format!(
            "Could not sync {} to stable storage: {e}",
            ctx.data_dir
        ));
    }
}

/// The discovery block (§4.3): every complete snapshot of the repository as one compact JSON
/// line, then one `<identity> - Last snapshot: <end>` line per snapshot, sorted and unique.
pub async fn print_discovery(ctx: &Ctx, session: &Session) {
    let log = &ctx.log;
    log.blank();
    log.plain("=== Discovery Mode: Available Snapshots ===");
    log.plain("Listing all available snapshot identities in the repository...");
    let mut all = kmover_snapshot::snapshots::list_snapshots(&session.repo, None)
        .await
        .unwrap_or_default();
    all.retain(|(_, m)| m.incomplete.is_empty());
    // kopia's `snapshot list --all --json` order: by `user@host:path` text, then start and end.
    all.sort_by_cached_key(|(_, m)| (m.source.to_string(), m.start_time, m.end_time));
    if all.is_empty() {
        log.plain("No snapshots found in the repository");
        log.blank();
        log.plain("Repository status:");
        print_status(ctx, session);
    } else {
        log.plain("Found snapshots in repository:");
        log.blank();
        let mut summaries = Vec::with_capacity(all.len());
        for (id, m) in &all {
            let end = crate::output::go_time(&end_time(m));
            let line = serde_json::json!({
                "id": id,
                "userName": m.source.user_name,
                "hostName": m.source.host,
                "path": m.source.path,
                "startTime": crate::output::go_time(&start_time(m)),
                "endTime": end,
            });
            log.plain(&line.to_string());
            summaries.push(format!(
                "{}@{}:{} - Last snapshot: {end}",
                m.source.user_name, m.source.host, m.source.path
            ));
        }
        summaries.sort();
        summaries.dedup();
        log.blank();
        log.plain("Available identities (username@hostname combinations):");
        for s in &summaries {
            log.plain(s);
        }
    }
    log.plain("=== End Discovery Mode ===");
    log.blank();
}

fn print_status(ctx: &Ctx, session: &Session) {
    let log = &ctx.log;
    let crypto = session.repo.crypto();
    log.plain(&format!(
        "Config file:         {}",
        session.config_path.display()
    ));
    log.plain(&format!(
        "Description:         {}",
        session.config.description
    ));
    log.plain(&format!("Hostname:            {}", session.config.hostname));
    log.plain(&format!("Username:            {}", session.config.username));
    log.plain(&format!(
        "Storage type:        {}",
        session
            .config
            .storage
            .as_ref()
            .map_or("", |s| s.kind.as_str())
    ));
    log.plain(&format!(
        "Unique ID:           {}",
        hex::encode(&crypto.format_blob.unique_id)
    ));
    log.plain(&format!(
        "Encryption:          {}",
        crypto.config.encryption
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(n: i64) -> Vec<DateTime<Utc>> {
        // Newest first: n-1 … 0 hours after the epoch.
        (0..n)
            .rev()
            .map(|h| DateTime::from_timestamp(h * 3600, 0).unwrap())
            .collect()
    }

    #[test]
    fn latest_and_previous() {
        let t = times(3);
        assert_eq!(pick(&t, 0, None, None), Pick::Index(0));
        assert_eq!(pick(&t, 2, None, None), Pick::Index(2));
        assert_eq!(
            pick(&t, 3, None, None),
            Pick::OutOfRange {
                requested: 3,
                available: 3
            }
        );
        assert_eq!(pick(&[], 0, None, None), Pick::NoneEligible);
    }

    #[test]
    fn as_of_filters_then_offsets() {
        let t = times(3); // starts at 2h, 1h, 0h
        let at = |h: i64, m: i64| Some(DateTime::from_timestamp(h * 3600 + m * 60, 0).unwrap());
        assert_eq!(pick(&t, 0, at(0, 30), None), Pick::Index(2));
        assert_eq!(pick(&t, 1, at(2, 30), None), Pick::Index(1));
        assert_eq!(pick(&t, 5, at(2, 30), None), Pick::NoneEligible);
        assert_eq!(
            pick(&t, 0, Some(DateTime::from_timestamp(-1, 0).unwrap()), None),
            Pick::NoneEligible
        );
        // As-of wins over shallow.
        assert_eq!(pick(&t, 0, at(1, 0), Some(0)), Pick::Index(1));
    }

    #[test]
    fn shallow_only_matters_at_zero() {
        let t = times(3);
        assert_eq!(pick(&t, 0, None, Some(0)), Pick::NoneEligible);
        assert_eq!(pick(&t, 0, None, Some(5)), Pick::Index(0));
        assert_eq!(pick(&t, 1, None, Some(1)), Pick::Index(1));
        assert_eq!(pick(&t, 3, None, Some(1)), Pick::NoneEligible);
    }
}
