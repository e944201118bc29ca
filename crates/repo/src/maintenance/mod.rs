//! Repository maintenance as kopia runs it (spec snapshots §11, storage §11–§12): the parameters
//! and the owner rule, the schedule and run history in `kopia.maintenance`, and the quick and full
//! task lists with every safety margin of the chosen safety level.
//!
//! Snapshot GC needs to know what snapshots reference, which this crate does not; the snapshot
//! layer runs it between [`MaintenanceRun::begin`] and [`MaintenanceRun::run_tasks`] through
//! [`MaintenanceRun::record`].
//!
//! Every step leaves the repository readable by both tools if interrupted: packs are written
//! before the index entries naming them, compacted indexes before the blobs they replace are
//! deleted (and only after the safety margin), and deletions only remove what nothing indexes.

pub mod compaction;
pub mod epoch;
pub mod index_writer;
pub mod legacy_index;
pub mod logs;
pub mod pack_gc;
pub mod params;
pub mod rewrite;
pub mod safety;
pub mod schedule;

use std::future::Future;

use chrono::{DateTime, TimeDelta, Utc};
use kmover_format::index::IndexEntry;
use kmover_format::maintenance::{MaintenanceSchedule, RunInfo};

pub use params::{CycleParams, LogRetention, MaintenanceParams, load_params, save_params};
pub use safety::SafetyParameters;
pub use schedule::{TaskStats, load_schedule, save_schedule, task};

use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// kopia refuses to run when the storage clock and ours disagree by more than this: every margin
/// compares the two.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);
/// Quick index compaction of legacy repositories merges once this many small index blobs exist.
const LEGACY_MAX_SMALL_BLOBS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Full,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }
}

/// kopia's refusal when someone else owns maintenance.
pub fn not_owned(owner: &str) -> RepoError {
    RepoError::Other(format!(
        "maintenance must be run by designated user: {owner}"
    ))
}

/// The cycle due at `now` (full first, as it includes the quick one), if any.
pub fn due_mode(
    now: DateTime<Utc>,
    params: &MaintenanceParams,
    schedule: &MaintenanceSchedule,
) -> Option<Mode> {
    if params.full.enabled && now >= schedule.next_full_maintenance {
        return Some(Mode::Full);
    }
    if params.quick.enabled && now >= schedule.next_quick_maintenance {
        return Some(Mode::Quick);
    }
    None
}

/// One task's result, for reporting.
#[derive(Clone, Debug)]
pub struct TaskOutcome {
    pub task: &'static str,
    pub stats: Option<TaskStats>,
}

/// A maintenance run in progress: the schedule was updated, the start time taken.
pub struct MaintenanceRun<'a> {
    repo: &'a Repository,
    pub mode: Mode,
    pub params: MaintenanceParams,
    pub safety: SafetyParameters,
    /// The storage timestamp of the schedule blob written at the start (kopia's
    /// `MaintenanceStartTime`): the reference for the GC and pack-deletion margins.
    pub start_time: DateTime<Utc>,
    schedule: MaintenanceSchedule,
    pub outcomes: Vec<TaskOutcome>,
}

impl<'a> MaintenanceRun<'a> {
    /// Moves the next run times forward first, so that a crash does not cause an immediate
    /// re-run; takes the start time from storage, refuses on clock skew, and reloads the index.
    pub async fn begin(
        repo: &'a Repository,
        mode: Mode,
        params: MaintenanceParams,
        safety: SafetyParameters,
    ) -> Result<Self> {
        let mut schedule = load_schedule(repo).await?;
        let now = repo.now();
        if mode == Mode::Full {
            schedule.next_full_maintenance = now + params.full.interval();
        }
        schedule.next_quick_maintenance = now + params.quick.interval();
        save_schedule(repo, &schedule).await?;
        let start_time = schedule::schedule_blob_metadata(repo).await?.timestamp;
        let local = repo.now();
        let skew = (start_time - local).abs();
        if skew > MAX_CLOCK_SKEW {
            return Err(RepoError::Other(format!(
                "clock skew detected: local clock is out of sync with repository timestamp by more than allowed {}m (local: {local} repository: {start_time} skew: {}s). Refusing to run maintenance.",
                MAX_CLOCK_SKEW.num_minutes(),
                skew.num_seconds()
            )));
        }
        repo.contents().refresh().await?;
        Ok(MaintenanceRun {
            repo,
            mode,
            params,
            safety,
            start_time,
            schedule,
            outcomes: Vec::new(),
        })
    }

    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    pub fn schedule(&self) -> &MaintenanceSchedule {
        &self.schedule
    }

    /// Runs one task and records it in the run history (kopia's `ReportRun`). A failure to
    /// save the history is logged, not fatal; the task's own error is returned.
    pub async fn record<F>(&mut self, task: &'static str, work: F) -> Result<()>
    where
        F: Future<Output = Result<Option<TaskStats>>>,
    {
        tracing::info!("maintenance: running {task}");
        let start = self.repo.now();
        let result = work.await;
        let end = self.repo.now();
        let run = match &result {
            Ok(stats) => RunInfo {
                start,
                end,
                success: true,
                error: String::new(),
                extra: stats.as_ref().map(TaskStats::to_extra),
            },
            Err(e) => RunInfo {
                start,
                end,
                success: false,
                error: e.to_string(),
                extra: None,
            },
        };
        self.schedule.report_run(task, run);
        if let Err(e) = save_schedule(self.repo, &self.schedule).await {
            tracing::error!("unable to report run of {task}: {e}");
        }
        match result {
            Ok(stats) => {
                self.outcomes.push(TaskOutcome { task, stats });
                Ok(())
            }
            Err(e) => Err(RepoError::Other(format!(
                "maintenance task {task} failed: {e}"
            ))),
        }
    }

    /// The task list of this run's mode, in kopia's order; the first failure stops it.
    pub async fn run_tasks(&mut self) -> Result<()> {
        let epoch_enabled = self.repo.crypto().epoch_enabled();
        match (self.mode, epoch_enabled) {
            (Mode::Quick, true) => {
                let repo = self.repo;
                self.record(
                    task::EPOCH_COMPACT_SINGLE,
                    epoch::compact_single_epoch(repo),
                )
                .await?;
                self.record(task::EPOCH_ADVANCE, epoch::advance_epoch(repo))
                    .await
            }
            (Mode::Quick, false) => self.run_legacy_quick().await,
            (Mode::Full, _) => self.run_full(epoch_enabled).await,
        }
    }

    async fn run_legacy_quick(&mut self) -> Result<()> {
        let repo = self.repo;
        let safety = self.safety;
        if safety::should_quick_rewrite_contents(&self.schedule, &safety) {
            let now = repo.now();
            let work = rewrite::rewrite_contents(
                repo,
                rewrite::RewriteOptions::quick(),
                &safety,
                now,
                |_| false,
            );
            self.record(task::REWRITE_CONTENTS_QUICK, work).await?;
        }
        if safety::should_delete_orphaned_packs(repo.now(), &self.schedule, &safety) {
            let parallelism = self.list_parallelism();
            // A full rewrite's orphans need the full deletion, or quick runs would never finish it.
            let (name, prefixes) = if safety::had_recent_full_rewrite(&self.schedule) {
                (task::DELETE_ORPHANED_BLOBS_FULL, pack_gc::FULL_PREFIXES)
            } else {
                (task::DELETE_ORPHANED_BLOBS_QUICK, pack_gc::QUICK_PREFIXES)
            };
            let work = pack_gc::delete_unreferenced_packs(
                repo,
                prefixes,
                self.start_time,
                parallelism,
                &safety,
            );
            self.record(name, work).await?;
        }
        let opts = legacy_index::CompactOptions {
            max_small_blobs: LEGACY_MAX_SMALL_BLOBS,
            all_indexes: false,
            drop_deleted_before: None,
            disable_eventual_consistency_safety: safety.disable_eventual_consistency_safety,
        };
        self.record(
            task::INDEX_COMPACTION,
            legacy_index::compact_indexes(repo, opts),
        )
        .await?;
        self.cleanup_logs().await
    }

    async fn run_full(&mut self, epoch_enabled: bool) -> Result<()> {
        let repo = self.repo;
        let safety = self.safety;
        // Decided once: the rewrite skips exactly what the drop below makes invisible.
        let drop_time = safety::drop_time(repo.now(), &self.schedule, &safety);
        let dropped = |e: &IndexEntry| will_be_dropped(e, drop_time, epoch_enabled);
        if safety::should_full_rewrite_contents(&self.schedule, &safety) {
            let now = repo.now();
            let work = rewrite::rewrite_contents(
                repo,
                rewrite::RewriteOptions::full(),
                &safety,
                now,
                dropped,
            );
            self.record(task::REWRITE_CONTENTS_FULL, work).await?;
        }
        if let Some(drop_time) = drop_time {
            let work = drop_deleted_contents(repo, drop_time, epoch_enabled, &safety);
            self.record(task::DROP_DELETED_CONTENTS_FULL, work).await?;
        }
        if safety::should_delete_orphaned_packs(repo.now(), &self.schedule, &safety) {
            let parallelism = self.list_parallelism();
            let work = pack_gc::delete_unreferenced_packs(
                repo,
                pack_gc::FULL_PREFIXES,
                self.start_time,
                parallelism,
                &safety,
            );
            self.record(task::DELETE_ORPHANED_BLOBS_FULL, work).await?;
        }
        if self.params.extend_object_locks {
            self.record(
                task::EXTEND_BLOB_RETENTION_TIME_FULL,
                extend_blob_retention(repo),
            )
            .await?;
        }
        if epoch_enabled {
            self.record(
                task::EPOCH_COMPACT_SINGLE,
                epoch::compact_single_epoch(repo),
            )
            .await?;
            self.record(task::EPOCH_ADVANCE, epoch::advance_epoch(repo))
                .await?;
            self.record(
                task::EPOCH_GENERATE_RANGE,
                epoch::generate_range_checkpoint(repo),
            )
            .await?;
            self.record(task::EPOCH_CLEANUP_MARKERS, epoch::cleanup_markers(repo))
                .await?;
            self.record(
                task::EPOCH_DELETE_SUPERSEDED_INDEXES,
                epoch::cleanup_superseded_indexes(repo),
            )
            .await?;
        }
        self.cleanup_logs().await
    }

    async fn cleanup_logs(&mut self) -> Result<()> {
        let repo = self.repo;
        let work = logs::cleanup_logs(repo, self.params.log_retention, repo.now());
        self.record(task::CLEANUP_LOGS, work).await
    }

    fn list_parallelism(&self) -> usize {
        usize::try_from(self.params.list_parallelism).unwrap_or(0)
    }
}

/// Whether dropping deleted contents at `drop_time` removes `e` from the index: at or before the
/// watermark second (epoch manager), strictly before it (legacy compaction).
fn will_be_dropped(e: &IndexEntry, drop_time: Option<DateTime<Utc>>, epoch_enabled: bool) -> bool {
    let Some(t) = drop_time else {
        return false;
    };
    let t = t.timestamp();
    e.deleted
        && if epoch_enabled {
            e.timestamp_seconds <= t
        } else {
            e.timestamp_seconds < t
        }
}

/// Makes deleted contents older than `drop_time` disappear from the index, then reloads it.
async fn drop_deleted_contents(
    repo: &Repository,
    drop_time: DateTime<Utc>,
    epoch_enabled: bool,
    safety: &SafetyParameters,
) -> Result<Option<TaskStats>> {
    if !epoch_enabled {
        let opts = legacy_index::CompactOptions {
            max_small_blobs: 0,
            all_indexes: true,
            drop_deleted_before: Some(drop_time),
            disable_eventual_consistency_safety: safety.disable_eventual_consistency_safety,
        };
        return legacy_index::compact_indexes(repo, opts).await;
    }
    let advanced = epoch::advance_deletion_watermark(repo, drop_time).await?;
    repo.contents().refresh().await?;
    Ok(advanced.then_some(TaskStats::CompactIndexes {
        dropped_contents_deleted_before: drop_time,
    }))
}

/// Object-lock retention cannot be extended through kmover's blob stores yet; without retention
/// there is nothing to do, as in kopia.
async fn extend_blob_retention(repo: &Repository) -> Result<Option<TaskStats>> {
    if !repo.crypto().blobcfg.is_retention_enabled() {
        return Ok(None);
    }
    Err(RepoError::Other(format!(
        "extending object-lock retention ({} mode) is not supported by kmover",
        repo.crypto().blobcfg.retention_mode
    )))
}
