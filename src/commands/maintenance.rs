//! `maintenance info|set|run`, with kopia's flags and output.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use kmover_format::gojson;
use kmover_format::maintenance::MaintenanceSchedule;
use kmover_repo::maintenance::{
    self, CycleParams, LogRetention, MaintenanceParams, SafetyParameters, TaskStats,
};
use kmover_snapshot::maintenance::{
    MaintenanceOptions, MaintenanceOutcome, RequestedMode, run_maintenance,
};
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::commands::policy::go;
use crate::connection;
use crate::output::human_time;

#[derive(Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Display maintenance information.
    #[command(alias = "status")]
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Set maintenance parameters.
    Set(SetArgs),
    /// Run repository maintenance.
    Run(RunArgs),
}

fn go_bool(s: &str) -> Result<bool, String> {
    go::parse_bool(s).ok_or_else(|| format!("invalid boolean {s:?}"))
}

fn go_duration(s: &str) -> Result<i64, String> {
    go::parse_duration(s).map_err(|e| e.to_string())
}

fn go_int(s: &str) -> Result<i64, String> {
    go::parse_int(s, 64).ok_or_else(|| format!("invalid number {s:?}"))
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// Set maintenance owner user@hostname (`me` for this client).
    #[arg(long)]
    owner: Option<String>,
    /// Enable or disable quick maintenance.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    enable_quick: Option<bool>,
    #[arg(long, hide = true)]
    no_enable_quick: bool,
    /// Enable or disable full maintenance.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    enable_full: Option<bool>,
    #[arg(long, hide = true)]
    no_enable_full: bool,
    /// Set quick maintenance interval.
    #[arg(long, value_parser = go_duration)]
    quick_interval: Option<i64>,
    /// Set full maintenance interval.
    #[arg(long, value_parser = go_duration)]
    full_interval: Option<i64>,
    /// Pause quick maintenance for a specified duration.
    #[arg(long, value_parser = go_duration)]
    pause_quick: Option<i64>,
    /// Pause full maintenance for a specified duration.
    #[arg(long, value_parser = go_duration)]
    pause_full: Option<i64>,
    /// Set maximum number of log sessions to retain.
    #[arg(long, value_parser = go_int)]
    max_retained_log_count: Option<i64>,
    /// Set maximum age of log sessions to retain.
    #[arg(long, value_parser = go_duration)]
    max_retained_log_age: Option<i64>,
    /// Set maximum total size of log sessions.
    #[arg(long, value_parser = go_int)]
    max_retained_log_size_mb: Option<i64>,
    /// Extend retention period of locked objects as part of full maintenance.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = go_bool)]
    extend_object_locks: Option<bool>,
    #[arg(long, hide = true)]
    no_extend_object_locks: bool,
    /// Override list parallelism.
    #[arg(long, value_parser = go_int)]
    list_parallelism: Option<i64>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Full maintenance.
    #[arg(long)]
    full: bool,
    /// Run maintenance even if not owned (unsafe).
    #[arg(long, hide = true)]
    force: bool,
    /// Safety level.
    #[arg(long, default_value = "full", value_parser = ["full", "none"])]
    safety: String,
}

pub async fn run(global: &GlobalArgs, cmd: MaintenanceCommand) -> anyhow::Result<()> {
    match cmd {
        MaintenanceCommand::Info { json } => info(global, json).await,
        MaintenanceCommand::Set(args) => set(global, args).await,
        MaintenanceCommand::Run(args) => run_now(global, args).await,
    }
}

/// kopia's `MaintenanceInfo`: the parameters with the schedule embedded.
#[derive(Serialize)]
struct InfoJson<'a> {
    #[serde(flatten)]
    params: &'a MaintenanceParams,
    schedule: &'a MaintenanceSchedule,
}

async fn info(global: &GlobalArgs, json: bool) -> anyhow::Result<()> {
    let conn = connection::open_connected(global).await?;
    let repo = &conn.repo;
    let params = maintenance::load_params(repo).await?;
    let schedule = maintenance::load_schedule(repo).await?;
    if json {
        let doc = gojson::to_vec(&InfoJson {
            params: &params,
            schedule: &schedule,
        })?;
        println!("{}", String::from_utf8(doc)?);
        return Ok(());
    }
    let now = repo.now();
    println!("Owner: {}", params.owner);
    println!("Quick Cycle:");
    print_cycle(&params.quick, &schedule.next_quick_maintenance, now);
    println!("Full Cycle:");
    print_cycle(&params.full, &schedule.next_full_maintenance, now);
    let logs = params.log_retention.or_default();
    println!("Log Retention:");
    println!("  max count:       {}", logs.max_count);
    println!("  max age of logs: {}", go::format_duration(logs.max_age));
    println!(
        "  max total size:  {}",
        go::bytes_string(logs.max_total_size)
    );
    let locks = if params.extend_object_locks {
        "enabled"
    } else {
        "disabled"
    };
    println!("Object Lock Extension: {locks}");
    if params.list_parallelism != 0 {
        println!("List parallelism: {}", params.list_parallelism);
    }
    println!("Recent Maintenance Runs:");
    for (task, runs) in &schedule.runs {
        println!("  {task}:");
        for r in runs {
            let took = (r.end - r.start).num_seconds() * 1_000_000_000;
            let message = if r.success {
                "SUCCESS".to_string()
            } else {
                format!("ERROR: {}", r.error)
            };
            println!(
                "    {} ({}) {message}",
                human_time(&r.start),
                go::format_duration(took)
            );
        }
    }
    Ok(())
}

fn print_cycle(cycle: &CycleParams, next: &DateTime<Utc>, now: DateTime<Utc>) {
    println!("  scheduled: {}", cycle.enabled);
    if cycle.enabled {
        println!("  interval: {}", go::format_duration(cycle.interval));
        if now < *next {
            let left = (*next - now).num_seconds() * 1_000_000_000;
            println!(
                "  next run: {} (in {})",
                human_time(next),
                go::format_duration(left)
            );
        } else {
            println!("  next run: now");
        }
    }
}

fn flag(value: Option<bool>, negated: bool) -> Option<bool> {
    if negated { Some(false) } else { value }
}

async fn set(global: &GlobalArgs, args: SetArgs) -> anyhow::Result<()> {
    let conn = connection::open_connected(global).await?;
    if conn.config.readonly {
        bail!("unable to set maintenance parameters: the repository connection is read-only");
    }
    let repo = &conn.repo;
    let mut params = maintenance::load_params(repo).await?;
    let mut schedule = maintenance::load_schedule(repo).await?;
    let before = params.clone();
    if let Some(owner) = &args.owner {
        params.owner = if owner == "me" {
            format!("{}@{}", conn.config.username, conn.config.hostname)
        } else {
            owner.clone()
        };
        eprintln!("Setting maintenance owner to {}", params.owner);
    }
    if let Some(on) = flag(args.enable_quick, args.no_enable_quick) {
        params.quick.enabled = on;
    }
    if let Some(ns) = args.quick_interval {
        params.quick.interval = ns;
    }
    if let Some(on) = flag(args.enable_full, args.no_enable_full) {
        params.full.enabled = on;
    }
    if let Some(ns) = args.full_interval {
        params.full.interval = ns;
    }
    let mut logs: Option<LogRetention> = None;
    if let Some(n) = args.max_retained_log_count {
        logs.get_or_insert(params.log_retention.or_default())
            .max_count = n;
    }
    if let Some(ns) = args.max_retained_log_age {
        logs.get_or_insert(params.log_retention.or_default())
            .max_age = ns;
    }
    if let Some(mb) = args.max_retained_log_size_mb {
        logs.get_or_insert(params.log_retention.or_default())
            .max_total_size = mb << 20;
    }
    if let Some(l) = logs {
        params.log_retention = l;
    }
    if let Some(n) = args.list_parallelism {
        params.list_parallelism = n;
    }
    if let Some(on) = flag(args.extend_object_locks, args.no_extend_object_locks) {
        params.extend_object_locks = on;
    }
    // Setting a flag to its current value still counts as a change, as in kopia.
    let params_changed = params != before
        || args.owner.is_some()
        || args.enable_quick.is_some()
        || args.no_enable_quick
        || args.enable_full.is_some()
        || args.no_enable_full
        || args.quick_interval.is_some()
        || args.full_interval.is_some()
        || logs.is_some()
        || args.list_parallelism.is_some()
        || args.extend_object_locks.is_some()
        || args.no_extend_object_locks;
    let now = repo.now();
    let mut schedule_changed = false;
    if let Some(ns) = args.pause_quick {
        schedule.next_quick_maintenance = now + chrono::TimeDelta::nanoseconds(ns);
        schedule_changed = true;
        eprintln!(
            "Quick maintenance paused until {}",
            human_time(&schedule.next_quick_maintenance)
        );
    }
    if let Some(ns) = args.pause_full {
        schedule.next_full_maintenance = now + chrono::TimeDelta::nanoseconds(ns);
        schedule_changed = true;
        eprintln!(
            "Full maintenance paused until {}",
            human_time(&schedule.next_full_maintenance)
        );
    }
    if !params_changed && !schedule_changed {
        bail!("no changes specified");
    }
    check_extend_retention(repo, &params)?;
    if schedule_changed {
        maintenance::save_schedule(repo, &schedule)
            .await
            .context("unable to set schedule")?;
    }
    if params_changed {
        maintenance::save_params(repo, &params)
            .await
            .context("unable to set params")?;
        repo.flush().await?;
    }
    Ok(())
}

/// kopia refuses lock extension when the retention period does not outlast a full cycle by a day.
fn check_extend_retention(
    repo: &kmover_repo::Repository,
    params: &MaintenanceParams,
) -> anyhow::Result<()> {
    if !params.extend_object_locks {
        return Ok(());
    }
    if !params.full.enabled {
        eprintln!("Object Lock extension will not function because Full-Maintenance is disabled");
    }
    let period = repo.crypto().blobcfg.retention_period_ns;
    let day = 24 * 3600 * 1_000_000_000i64;
    if period > 0 && period - params.full.interval < day {
        bail!(
            "unable to apply maintenance changes: The repo RetentionPeriod must be 24h0m0s greater than the Full Maintenance interval {} {}",
            go::format_duration(period),
            go::format_duration(params.full.interval)
        );
    }
    Ok(())
}

async fn run_now(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<()> {
    let conn = connection::open_connected(global).await?;
    if conn.config.readonly {
        bail!("not running maintenance on read-only repository connection");
    }
    let safety = SafetyParameters::by_name(&args.safety).context("unhandled safety level")?;
    let mode = if args.full {
        RequestedMode::Full
    } else {
        RequestedMode::Quick
    };
    let mut lock_file = conn.config_path.clone().into_os_string();
    lock_file.push(".mlock");
    let opts = MaintenanceOptions {
        mode,
        force: args.force,
        safety,
        client: format!("{}@{}", conn.config.username, conn.config.hostname),
        lock_file: Some(lock_file.into()),
    };
    match run_maintenance(&conn.repo, &opts).await? {
        MaintenanceOutcome::Completed { mode, tasks } => {
            for t in &tasks {
                if let Some(summary) = t.stats.as_ref().map(summarize) {
                    eprintln!("{}: {summary}", t.task);
                }
            }
            eprintln!("Finished {} maintenance.", mode.name());
        }
        MaintenanceOutcome::AlreadyRunning => {
            eprintln!("maintenance is already in progress locally");
        }
        MaintenanceOutcome::NotDue | MaintenanceOutcome::NotOwner { .. } => {}
    }
    Ok(())
}

fn summarize(s: &TaskStats) -> String {
    match s {
        TaskStats::SnapshotGc(g) => format!(
            "{} unused contents deleted, {} too recent, {} in use, {} system, {} undeleted",
            g.deleted_content_count,
            g.unreferenced_recent_content_count,
            g.in_use_content_count,
            g.in_use_system_content_count,
            g.recovered_content_count
        ),
        TaskStats::RewriteContents(r) => format!(
            "rewrote {} of {} contents ({} bytes), kept {} too young",
            r.rewritten_content_count,
            r.to_rewrite_content_count,
            r.rewritten_content_size,
            r.retained_content_count
        ),
        TaskStats::DeleteUnreferencedPacks(p) => format!(
            "deleted {} unreferenced blobs ({} bytes), kept {}",
            p.deleted_pack_count, p.deleted_total_size, p.retained_pack_count
        ),
        TaskStats::CleanupLogs(l) => format!("deleted {} logs", l.deleted_blob_count),
        other => serde_json::to_string(&other.to_extra()[0]["data"]).unwrap_or_default(),
    }
}
