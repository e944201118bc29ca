//! Safety margins (kopia's `SafetyParameters`) and the rules that decide from the run history
//! whether a task may run now. `full` lets maintenance run beside other writers; `none` is only
//! safe when nobody else uses the repository.

use chrono::{DateTime, TimeDelta, Utc};
use kmover_format::gotime;
use kmover_format::maintenance::{MaintenanceSchedule, RunInfo};

use super::schedule::task;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafetyParameters {
    /// Contents younger than this are not rewritten (their packs may still be in flux).
    pub rewrite_min_age: TimeDelta,
    /// Unreferenced contents younger than this are not marked deleted: a snapshot in progress
    /// writes its contents long before the manifest that references them.
    pub min_content_age_subject_to_gc: TimeDelta,
    /// Deleted contents are dropped only after a second GC that started this long after an
    /// earlier one ended, so it has seen (and undeleted) what racing snapshots re-referenced.
    pub margin_between_snapshot_gc: TimeDelta,
    pub require_two_gc_cycles: bool,
    pub disable_eventual_consistency_safety: bool,
    /// Subtracted from the older GC's start to give the drop time.
    pub drop_content_from_index_extra_margin: TimeDelta,
    /// Unreferenced packs younger than this are kept: a writer stores packs before the index
    /// entries that reference them.
    pub pack_delete_min_age: TimeDelta,
    /// Packs of a session whose marker was checkpointed more recently than this are kept.
    pub session_expiration_age: TimeDelta,
    /// After a rewrite, other clients may still read the old packs through cached indexes.
    pub min_rewrite_to_orphan_deletion_delay: TimeDelta,
}

impl SafetyParameters {
    /// kopia's `SafetyFull`, the default.
    pub fn full() -> Self {
        SafetyParameters {
            rewrite_min_age: TimeDelta::hours(2),
            min_content_age_subject_to_gc: TimeDelta::hours(24),
            margin_between_snapshot_gc: TimeDelta::hours(4),
            require_two_gc_cycles: true,
            disable_eventual_consistency_safety: false,
            drop_content_from_index_extra_margin: TimeDelta::hours(1),
            pack_delete_min_age: TimeDelta::hours(24),
            session_expiration_age: TimeDelta::hours(96),
            min_rewrite_to_orphan_deletion_delay: TimeDelta::hours(1),
        }
    }

    /// kopia's `SafetyNone`: no delays at all.
    pub fn none() -> Self {
        SafetyParameters {
            rewrite_min_age: TimeDelta::zero(),
            min_content_age_subject_to_gc: TimeDelta::zero(),
            margin_between_snapshot_gc: TimeDelta::zero(),
            require_two_gc_cycles: false,
            disable_eventual_consistency_safety: true,
            drop_content_from_index_extra_margin: TimeDelta::zero(),
            pack_delete_min_age: TimeDelta::zero(),
            session_expiration_age: TimeDelta::zero(),
            min_rewrite_to_orphan_deletion_delay: TimeDelta::zero(),
        }
    }

    /// `full` or `none`, as kopia's `--safety` flag.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "full" => Some(Self::full()),
            "none" => Some(Self::none()),
            _ => None,
        }
    }
}

fn is_zero(t: &DateTime<Utc>) -> bool {
    *t == gotime::zero()
}

fn runs<'a>(s: &'a MaintenanceSchedule, task: &str) -> &'a [RunInfo] {
    s.runs.get(task).map_or(&[], Vec::as_slice)
}

/// The latest end of a successful run of any of `tasks` (Go's zero time if none).
pub fn max_end_time(s: &MaintenanceSchedule, tasks: &[&str]) -> DateTime<Utc> {
    tasks
        .iter()
        .flat_map(|t| runs(s, t))
        .filter(|r| r.success)
        .map(|r| r.end)
        .fold(gotime::zero(), DateTime::max)
}

const REWRITES: [&str; 2] = [task::REWRITE_CONTENTS_FULL, task::REWRITE_CONTENTS_QUICK];
const PACK_DELETIONS: [&str; 2] = [
    task::DELETE_ORPHANED_BLOBS_FULL,
    task::DELETE_ORPHANED_BLOBS_QUICK,
];

/// A new rewrite waits until the previous one's orphaned packs were deleted, so rewriting never
/// starves deletion.
fn rewrite_allowed(s: &MaintenanceSchedule, safety: &SafetyParameters, rewrites: &[&str]) -> bool {
    let latest_rewrite = max_end_time(s, rewrites);
    if is_zero(&latest_rewrite) || safety.min_rewrite_to_orphan_deletion_delay.is_zero() {
        return true;
    }
    max_end_time(s, &PACK_DELETIONS) >= latest_rewrite
}

pub fn should_quick_rewrite_contents(s: &MaintenanceSchedule, safety: &SafetyParameters) -> bool {
    rewrite_allowed(s, safety, &REWRITES)
}

/// Only full rewrites count here, so a full rewrite may follow a quick one.
pub fn should_full_rewrite_contents(s: &MaintenanceSchedule, safety: &SafetyParameters) -> bool {
    rewrite_allowed(s, safety, &[task::REWRITE_CONTENTS_FULL])
}

/// Packs orphaned by a rewrite are deleted only once other clients had time to refresh.
pub fn next_pack_delete_time(s: &MaintenanceSchedule, safety: &SafetyParameters) -> DateTime<Utc> {
    let latest_rewrite = max_end_time(s, &REWRITES);
    if is_zero(&latest_rewrite) {
        return latest_rewrite;
    }
    latest_rewrite + safety.min_rewrite_to_orphan_deletion_delay
}

pub fn should_delete_orphaned_packs(
    now: DateTime<Utc>,
    s: &MaintenanceSchedule,
    safety: &SafetyParameters,
) -> bool {
    now >= next_pack_delete_time(s, safety)
}

/// A quick run that follows a full rewrite must finish it with a full pack deletion.
pub fn had_recent_full_rewrite(s: &MaintenanceSchedule) -> bool {
    max_end_time(s, &[task::REWRITE_CONTENTS_FULL])
        >= max_end_time(s, &[task::REWRITE_CONTENTS_QUICK])
}

/// The latest time before which deleted contents may be dropped from the index: two successful
/// GCs are needed, the later starting more than the margin after the earlier ended; the drop
/// time is the earlier one's start minus the extra margin. `None` if no such pair exists.
pub fn find_safe_drop_time(runs: &[RunInfo], safety: &SafetyParameters) -> Option<DateTime<Utc>> {
    let mut ok: Vec<&RunInfo> = runs.iter().filter(|r| r.success).collect();
    if ok.len() <= 1 {
        return None;
    }
    ok.sort_by_key(|r| std::cmp::Reverse(r.start));
    let latest = ok[0];
    ok[1..]
        .iter()
        .find(|r| latest.start - r.end > safety.margin_between_snapshot_gc)
        .map(|r| r.start - safety.drop_content_from_index_extra_margin)
}

/// The drop time of this full run: the safe drop time under two-cycle safety, else now.
pub fn drop_time(
    now: DateTime<Utc>,
    s: &MaintenanceSchedule,
    safety: &SafetyParameters,
) -> Option<DateTime<Utc>> {
    if safety.require_two_gc_cycles {
        find_safe_drop_time(runs(s, task::SNAPSHOT_GC), safety)
    } else {
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2020, 1, 1, h, m, 0).unwrap()
    }

    fn run(start: DateTime<Utc>, end: DateTime<Utc>, success: bool) -> RunInfo {
        RunInfo {
            start,
            end,
            success,
            error: String::new(),
            extra: None,
        }
    }

    #[test]
    fn kopia_find_safe_drop_time_vectors() {
        let full = SafetyParameters::full();
        let cases: Vec<(Vec<RunInfo>, Option<DateTime<Utc>>)> = vec![
            (vec![], None),
            (vec![run(at(13, 0), at(13, 15), true)], None),
            (
                vec![
                    run(at(7, 0), at(7, 15), true),
                    run(at(9, 0), at(9, 15), true),
                ],
                None,
            ),
            (
                vec![
                    run(at(7, 0), at(7, 15), true),
                    run(at(13, 0), at(13, 15), true),
                ],
                Some(at(6, 0)),
            ),
            (
                vec![
                    run(at(7, 0), at(7, 15), true),
                    run(at(9, 0), at(9, 15), true),
                    run(at(13, 0), at(13, 15), true),
                ],
                Some(at(6, 0)),
            ),
            (
                vec![
                    run(at(7, 0), at(7, 15), false),
                    run(at(9, 0), at(9, 15), true),
                    run(at(13, 0), at(13, 15), true),
                ],
                None,
            ),
        ];
        for (runs, want) in cases {
            assert_eq!(find_safe_drop_time(&runs, &full), want, "{runs:?}");
        }
    }

    fn schedule(entries: &[(&str, RunInfo)]) -> MaintenanceSchedule {
        let mut s = MaintenanceSchedule::default();
        for (t, r) in entries {
            s.report_run(t, r.clone());
        }
        s
    }

    #[test]
    fn rewrite_and_pack_deletion_gating() {
        let full = SafetyParameters::full();
        let none = SafetyParameters::none();
        let empty = MaintenanceSchedule::default();
        assert!(should_quick_rewrite_contents(&empty, &full));
        assert!(should_full_rewrite_contents(&empty, &full));
        assert!(should_delete_orphaned_packs(at(0, 0), &empty, &full));
        assert!(had_recent_full_rewrite(&empty));

        let rewritten = schedule(&[(task::REWRITE_CONTENTS_FULL, run(at(7, 0), at(7, 10), true))]);
        assert!(!should_full_rewrite_contents(&rewritten, &full));
        assert!(should_full_rewrite_contents(&rewritten, &none));
        assert_eq!(next_pack_delete_time(&rewritten, &full), at(8, 10));
        assert!(!should_delete_orphaned_packs(at(8, 9), &rewritten, &full));
        assert!(should_delete_orphaned_packs(at(8, 10), &rewritten, &full));

        let deleted = schedule(&[
            (task::REWRITE_CONTENTS_FULL, run(at(7, 0), at(7, 10), true)),
            (
                task::DELETE_ORPHANED_BLOBS_FULL,
                run(at(8, 20), at(8, 30), true),
            ),
        ]);
        assert!(should_full_rewrite_contents(&deleted, &full));
        let quick_later = schedule(&[
            (task::REWRITE_CONTENTS_FULL, run(at(7, 0), at(7, 10), true)),
            (task::REWRITE_CONTENTS_QUICK, run(at(9, 0), at(9, 10), true)),
        ]);
        assert!(!had_recent_full_rewrite(&quick_later));
        // A failed rewrite does not count.
        let failed = schedule(&[(task::REWRITE_CONTENTS_FULL, run(at(7, 0), at(7, 10), false))]);
        assert!(should_full_rewrite_contents(&failed, &full));
        assert_eq!(drop_time(at(5, 0), &empty, &none), Some(at(5, 0)));
        assert_eq!(drop_time(at(5, 0), &empty, &full), None);
    }
}
