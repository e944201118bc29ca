//! The source direction (`backup`, §3.2): skip an empty volume, connect, set compression, run the
//! before-action, snapshot `DATA_DIR` as `<user>@<host>:<path>`, apply retention, run the
//! after-action, and record the retention policy for the next run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kmover_format::snapshot::manifest::SourceInfo;
use kmover_snapshot::backup::{BackupOptions, BackupProgress};

use super::connect::{self, Identity, Session};
use super::log::{Flow, Stop};
use super::{Ctx, actions, additional_args, policy_files};
use crate::progress::human_bytes;

const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx) -> Flow {
    let log = &ctx.log;
    check_contents(ctx)?;
    let identity = Identity::for_snapshots(ctx);
    let session = connect::ensure_connected(ctx, &identity).await?;
    log.info("=== Starting backup operation ===");
    let started = Instant::now();
    let path = ctx
        .env
        .get("KOPIA_SOURCE_PATH_OVERRIDE")
        .unwrap_or(ctx.data_dir.as_str())
        .to_string();
    let source = SourceInfo {
        host: identity.host.clone(),
        user_name: identity.user.clone(),
        path: path.clone(),
    };
    super::apply_compression_policy(ctx, &session, &source).await?;

    let extra = ctx
        .env
        .get("KOPIA_ADDITIONAL_ARGS")
        .map(additional_args::split)
        .unwrap_or_default();
    if !extra.is_empty() {
        log.plain(&format!("Added {} additional arguments", extra.len()));
    }
    let flags = additional_args::snapshot_create(&ctx.data_dir, &extra).map_err(|e| {
        log.fatal(
            1,
            &format!("Invalid KOPIA_ADDITIONAL_ARGS for snapshot create: {e}"),
        )
    })?;
    if ctx.env.is_set("KOPIA_SOURCE_PATH_OVERRIDE") {
        log.plain(&format!("Using source path override: {path}"));
    }
    let actions_on = actions_enabled(ctx, &session);
    if let Some(command) = ctx.env.get("KOPIA_BEFORE_SNAPSHOT").filter(|_| actions_on) {
        let limit = actions::timeout(&ctx.env);
        if !actions::run(log, "before-snapshot", command, limit).await {
            return Err(log.fatal(1, "Before-snapshot action failed"));
        }
    }

    log.info(&format!("Creating snapshot for {source}"));
    log.info("Starting kopia snapshot creation...");
    let snapshot_started = Instant::now();
    if let Err(message) = snapshot(ctx, &session, &source, &flags).await {
        log.plain(&message);
        log.timing(&format!(
            "Snapshot creation failed after {} seconds",
            snapshot_started.elapsed().as_secs()
        ));
        return Err(log.fatal(1, "Failed to create snapshot"));
    }
    log.timing(&format!(
        "Snapshot creation completed in {} seconds",
        snapshot_started.elapsed().as_secs()
    ));
    log.info("Snapshot created successfully");

    if let Some(command) = ctx.env.get("KOPIA_AFTER_SNAPSHOT").filter(|_| actions_on) {
        let limit = actions::timeout(&ctx.env);
        if !actions::run(log, "after-snapshot", command, limit).await {
            log.error(
                "WARNING: After-snapshot action failed, but snapshot was created successfully",
            );
        }
    }
    log.timing(&format!(
        "Total backup operation took {} seconds",
        started.elapsed().as_secs()
    ));
    record_retention(ctx, &session, &source).await;
    Ok(())
}

/// `ls -A DATA_DIR --ignore=lost+found`: an empty volume is skipped with exit 0.
fn check_contents(ctx: &Ctx) -> Flow {
    let log = &ctx.log;
    log.plain("=== Checking directory for content ===");
    let entries = std::fs::read_dir(&ctx.data_dir_real).map_err(|e| {
        log.fatal(
            2,
            &format!("Cannot list data directory {}: {e}", ctx.data_dir),
        )
    })?;
    let has_content = entries.flatten().any(|e| e.file_name() != "lost+found");
    if has_content {
        Ok(())
    } else {
        log.plain("== Directory is empty skipping backup ===");
        Err(Stop { code: 0 })
    }
}

fn actions_enabled(ctx: &Ctx, session: &Session) -> bool {
    session.actions_enabled && ctx.env.get("KOPIA_ACTIONS_ENABLED") != Some("false")
}

/// The snapshot itself, then kopia's retention for the source, then a flush.
async fn snapshot(
    ctx: &Ctx,
    session: &Session,
    source: &SourceInfo,
    flags: &crate::cli::SnapshotCreateArgs,
) -> Result<(), String> {
    let repo = &session.repo;
    let mut tags = BTreeMap::new();
    for t in &flags.tags {
        let (k, v) = t
            .split_once(':')
            .ok_or_else(|| format!("invalid tag {t:?}: expected key:value"))?;
        tags.insert(k.to_string(), v.to_string());
    }
    let parallel = match ctx.env.get("KOPIA_PARALLELISM") {
        Some(p) => p
            .parse()
            .map_err(|_| format!("KOPIA_PARALLELISM={p:?} is not a number"))?,
        None => flags.parallel,
    };
    let opts = BackupOptions {
        source: source.clone(),
        parallel,
        description: flags.description.clone(),
        tags,
        pins: flags.pin.clone(),
        checkpoint_interval: flags.checkpoint_interval,
    };
    let (policy, _) = kmover_snapshot::policy::effective_policy_for(repo, source)
        .await
        .map_err(|e| format!("cannot read the policy of {source}: {e}"))?;
    ctx.log.debug(&format!(
        "Snapshot of {} as {source}: parallel {}, description {:?}, {} tag(s), {} pin(s)",
        ctx.data_dir,
        opts.parallel,
        opts.description,
        opts.tags.len(),
        opts.pins.len()
    ));
    let progress = Arc::new(BackupProgress::default());
    let ticker = spawn_progress(ctx, progress.clone());
    let result =
        kmover_snapshot::backup::backup(repo, &ctx.data_dir_real, &opts, &policy, progress.clone())
            .await;
    ticker.abort();
    let outcome = result.map_err(|e| format!("snapshot of {} failed: {e}", ctx.data_dir))?;
    let m = &outcome.manifest;
    let summary = m
        .root_entry
        .as_ref()
        .and_then(|r| r.summary.clone())
        .unwrap_or_default();
    ctx.log.plain(&format!(
        "Created snapshot with root {} and ID {} in {}s ({} files, {} directories, {})",
        m.root_entry
            .as_ref()
            .map(|r| r.object_id.to_string())
            .unwrap_or_default(),
        outcome.manifest_id,
        (m.end_time.unix_secs() - m.start_time.unix_secs()).max(0),
        summary.files,
        summary.dirs,
        human_bytes(summary.size.max(0) as u64)
    ));
    let zone = kmover_snapshot::retention::LocalZone::from_env();
    kmover_snapshot::retention::expire(repo, source, true, &zone)
        .await
        .map_err(|e| format!("error applying retention policy to {source}: {e}"))?;
    repo.flush()
        .await
        .map_err(|e| format!("cannot flush the repository: {e}"))?;
    if outcome.fatal_errors > 0 {
        return Err(format!(
            "Found {} fatal error(s) while snapshotting {}",
            outcome.fatal_errors, ctx.data_dir
        ));
    }
    Ok(())
}

fn spawn_progress(ctx: &Ctx, p: Arc<BackupProgress>) -> tokio::task::JoinHandle<()> {
    let log = ctx.log.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            log.plain(&format!(
                " * {} hashed ({} files), {} cached ({} files), {} dirs, {} errors",
                human_bytes(p.hashed_bytes.load(Ordering::Relaxed)),
                p.hashed_files.load(Ordering::Relaxed),
                human_bytes(p.cached_bytes.load(Ordering::Relaxed)),
                p.cached_files.load(Ordering::Relaxed),
                p.dirs.load(Ordering::Relaxed),
                p.errors.load(Ordering::Relaxed),
            ));
        }
    })
}

/// `KOPIA_RETAIN_*` become the retention policy of the snapshot's own path (Q-7: the reference
/// set it on `DATA_DIR`, which missed a path override). It takes effect at the next snapshot.
async fn record_retention(ctx: &Ctx, session: &Session, source: &SourceInfo) {
    let log = &ctx.log;
    log.plain("=== Applying retention policy ===");
    let mut flags = Vec::new();
    for (var, flag) in [
        ("KOPIA_RETAIN_HOURLY", "keep-hourly"),
        ("KOPIA_RETAIN_DAILY", "keep-daily"),
        ("KOPIA_RETAIN_WEEKLY", "keep-weekly"),
        ("KOPIA_RETAIN_MONTHLY", "keep-monthly"),
        ("KOPIA_RETAIN_YEARLY", "keep-annual"),
        ("KOPIA_RETAIN_LATEST", "keep-latest"),
    ] {
        if let Some(v) = ctx.env.get(var) {
            flags.push(format!("--{flag}={v}"));
        }
    }
    if flags.is_empty() {
        log.plain("No retention policy settings specified, using defaults");
        return;
    }
    match policy_files::set_policy(&session.repo, source, &flags).await {
        Ok(()) => log.plain("Retention policy applied successfully"),
        Err(e) => {
            log.plain(&format!("{e:#}"));
            log.plain("Warning: Failed to set retention policy, continuing with defaults");
        }
    }
}
