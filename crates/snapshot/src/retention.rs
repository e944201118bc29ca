//! Snapshot retention exactly as kopia decides it (`ComputeRetentionReasons`, `ApplyRetentionPolicy`):
//! why each snapshot of a source is kept, and deleting the ones with no reason and no pin.
//!
//! Kopia mixes time zones: the daily, hourly, monthly and annual buckets are UTC dates, but the
//! weekly bucket and every cutoff use Go's local zone (`TZ`). [`LocalZone::from_env`] reads `TZ`
//! the way Go's runtime does, so kmover and kopia on the same machine agree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo};
use kmover_format::snapshot::policy::RetentionPolicy;
use kmover_repo::Repository;

use crate::error::Result;
use crate::policy::effective_policy_for;
use crate::snapshots::{SNAPSHOT_TYPE, list_snapshots};

/// The reason given to recent incomplete (checkpoint, canceled) snapshots.
pub const INCOMPLETE_REASON: &str = "incomplete";

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;
const NANOS_PER_HOUR: i64 = 3_600_000_000_000;
/// Incomplete snapshots younger than this (relative to the newest snapshot) are kept.
const KEEP_INCOMPLETE_YOUNGER_THAN_NANOS: i128 = 4 * 3600 * NANOS_PER_SEC;
/// The newest incomplete snapshots are kept regardless of age, up to this many.
const KEEP_INCOMPLETE_MIN_COUNT: usize = 3;

/// Where Go's runtime looks for `TZ` names (`platformZoneSources`).
const GO_ZONEINFO_DIRS: &[&str] = &[
    "/usr/share/zoneinfo",
    "/usr/share/lib/zoneinfo",
    "/usr/lib/locale/TZ",
    "/etc/zoneinfo",
];

/// The time zone Go calls `time.Local`: the weekly bucket and the cutoffs are computed in it.
#[derive(Clone, Debug)]
pub struct LocalZone(TimeZone);

impl LocalZone {
    pub fn utc() -> Self {
        LocalZone(TimeZone::UTC)
    }

    /// Go's `initLocal`: no `TZ` → `/etc/localtime`; empty or `UTC` → UTC; `:` prefix dropped;
    /// an absolute path is read as is, a name is looked up in Go's zoneinfo directories; anything
    /// that fails to load means UTC.
    pub fn from_env() -> Self {
        let Some(tz) = std::env::var_os("TZ") else {
            return Self::from_file("localtime", Path::new("/etc/localtime"))
                .unwrap_or_else(Self::utc);
        };
        let tz = tz.to_string_lossy();
        let tz = tz.strip_prefix(':').unwrap_or(&tz);
        if tz.starts_with('/') {
            Self::from_file(tz, Path::new(tz)).unwrap_or_else(Self::utc)
        } else if tz.is_empty() || tz == "UTC" {
            Self::utc()
        } else {
            Self::named(tz).unwrap_or_else(Self::utc)
        }
    }

    /// A zone by IANA name (e.g. `America/New_York`) from the zoneinfo files Go would read.
    pub fn named(name: &str) -> Option<Self> {
        GO_ZONEINFO_DIRS
            .iter()
            .find_map(|dir| Self::from_file(name, &Path::new(dir).join(name)))
    }

    fn from_file(name: &str, path: &Path) -> Option<Self> {
        let data = std::fs::read(path).ok()?;
        TimeZone::tzif(name, &data).ok().map(LocalZone)
    }

    /// The UTC offset in seconds in force at `unix_secs` (clamped to the years jiff knows, far
    /// beyond any snapshot).
    fn offset_at(&self, unix_secs: i128) -> i128 {
        let clamped = unix_secs.clamp(
            i128::from(Timestamp::MIN.as_second()),
            i128::from(Timestamp::MAX.as_second()),
        );
        let ts = i64::try_from(clamped)
            .ok()
            .and_then(|s| Timestamp::from_second(s).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        i128::from(self.0.to_offset(ts).seconds())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12; any day, overflow rolls on).
fn days_from_civil(year: i128, month: i128, day: i128) -> i128 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month 1..=12, day 1..=31).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

/// An instant in nanoseconds since the Unix epoch, wide enough for any cutoff arithmetic.
type Nanos = i128;

fn split_nanos(ns: i64) -> (i128, i128) {
    let ns = i128::from(ns);
    (ns.div_euclid(NANOS_PER_SEC), ns.rem_euclid(NANOS_PER_SEC))
}

/// Go's `t.AddDate(years, months, days)` for `t` in `zone`: wall-clock arithmetic with Go's
/// normalisation (Mar 31 − 1 month = "Feb 31" = Mar 2 or 3), then Go's resolution of the local
/// time back to an instant (in DST gaps and overlaps too).
fn add_date(base: i64, years: i128, months: i128, days: i128, zone: &LocalZone) -> Nanos {
    let (secs, nanos) = split_nanos(base);
    let local = secs + zone.offset_at(secs);
    let (year, month, day) = civil_from_days(local.div_euclid(SECS_PER_DAY));
    let time_of_day = local.rem_euclid(SECS_PER_DAY);
    let month0 = month - 1 + months;
    let year = year + years + month0.div_euclid(12);
    let month = month0.rem_euclid(12) + 1;
    let wall = (days_from_civil(year, month, 1) + day + days - 1) * SECS_PER_DAY + time_of_day;
    // Go looks up the offset at the wall time taken as UTC, then re-checks it at the corrected
    // instant; the second lookup is what counts.
    let offset = zone.offset_at(wall - zone.offset_at(wall));
    (wall - offset) * NANOS_PER_SEC + nanos
}

/// UTC calendar fields of a snapshot time, and its local ISO week.
struct PeriodIds {
    year: String,
    month: String,
    day: String,
    hour: String,
    week: String,
}

impl PeriodIds {
    fn of(start: UtcTimestamp, zone: &LocalZone) -> Self {
        let (secs, _) = split_nanos(start.0);
        let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let hour = secs.rem_euclid(SECS_PER_DAY) / 3600;
        let local_days = (secs + zone.offset_at(secs)).div_euclid(SECS_PER_DAY);
        let (iso_year, iso_week) = iso_week(local_days);
        PeriodIds {
            year: format!("{y:04}"),
            month: format!("{y:04}-{m:02}"),
            day: format!("{y:04}-{m:02}-{d:02}"),
            hour: format!("{y:04}-{m:02}-{d:02} {hour:02}"),
            week: format!("{iso_year:04}-{iso_week:02}"),
        }
    }
}

/// ISO 8601 (year, week) of a day count since 1970-01-01: the week belongs to the year of its
/// Thursday.
fn iso_week(days: i128) -> (i128, i128) {
    // 1970-01-01 was a Thursday; Monday = 1 … Sunday = 7.
    let weekday = (days + 3).rem_euclid(7) + 1;
    let thursday = days + 4 - weekday;
    let (year, _, _) = civil_from_days(thursday);
    (year, (thursday - days_from_civil(year, 1, 1)) / 7 + 1)
}

/// Where each period type stops counting, relative to the newest complete snapshot.
struct Cutoffs {
    annual: Nanos,
    monthly: Nanos,
    weekly: Nanos,
    daily: Nanos,
    hourly: Nanos,
}

impl Cutoffs {
    fn new(r: &RetentionPolicy, newest_complete: i64, zone: &LocalZone) -> Self {
        // Go negates and multiplies in `int`; only the date arithmetic is wide.
        let back = |n: Option<i64>| i128::from(n.unwrap_or(0).wrapping_neg());
        let hours = r.keep_hourly.unwrap_or(0).wrapping_neg();
        Cutoffs {
            annual: add_date(newest_complete, back(r.keep_annual), 0, 0, zone),
            monthly: add_date(newest_complete, 0, back(r.keep_monthly), 0, zone),
            weekly: add_date(
                newest_complete,
                0,
                0,
                i128::from(r.keep_weekly.unwrap_or(0).wrapping_neg().wrapping_mul(7)),
                zone,
            ),
            daily: add_date(newest_complete, 0, 0, back(r.keep_daily), zone),
            // An absolute duration; Go's Duration multiplication wraps.
            hourly: i128::from(newest_complete) + i128::from(hours.wrapping_mul(NANOS_PER_HOUR)),
        }
    }
}

/// Kopia's `EffectiveKeepLatest`: every complete snapshot is "latest" when all counts are zero.
pub fn effective_keep_latest(r: &RetentionPolicy) -> Option<i64> {
    let total = [
        r.keep_latest,
        r.keep_hourly,
        r.keep_daily,
        r.keep_weekly,
        r.keep_monthly,
        r.keep_annual,
    ]
    .iter()
    .fold(0i64, |sum, n| sum.wrapping_add(n.unwrap_or(0)));
    if total == 0 {
        Some(i64::MAX)
    } else {
        r.keep_latest
    }
}

/// Kopia's `ComputeRetentionReasons`: the reasons each snapshot (indexed as `snapshots`) is kept,
/// all of one source, under `policy`. An empty list means the snapshot expires unless pinned.
///
/// Snapshots with equal start and end times are ranked in input order (kopia's order for them
/// is unspecified).
pub fn retention_reasons(
    policy: &RetentionPolicy,
    snapshots: &[SnapshotManifest],
    zone: &LocalZone,
) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); snapshots.len()];
    let Some(newest) = snapshots.iter().map(|s| s.start_time.0).max() else {
        return reasons;
    };
    let newest_complete = snapshots
        .iter()
        .filter(|s| s.incomplete.is_empty())
        .map(|s| s.start_time.0)
        .max();

    let mut order: Vec<usize> = (0..snapshots.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (snapshots[i].start_time, snapshots[i].end_time);
        key(b).cmp(&key(a))
    });

    if let Some(newest_complete) = newest_complete {
        let cutoffs = Cutoffs::new(policy, newest_complete, zone);
        let mut buckets = Buckets::default();
        for (rank, &i) in order.iter().enumerate() {
            if snapshots[i].incomplete.is_empty() {
                reasons[i] = buckets.claim(policy, rank, &snapshots[i], &cutoffs, zone);
            }
        }
    }

    // The newest incomplete snapshots, up to the newest complete one, are kept while young or few.
    for (rank, &i) in order.iter().enumerate() {
        let s = &snapshots[i];
        if s.incomplete.is_empty() {
            break;
        }
        let age = i128::from(newest) - i128::from(s.start_time.0);
        if age < KEEP_INCOMPLETE_YOUNGER_THAN_NANOS || rank < KEEP_INCOMPLETE_MIN_COUNT {
            reasons[i].push(INCOMPLETE_REASON.to_string());
        } else {
            break;
        }
    }
    reasons
}

/// The periods already claimed (one set shared by all types, as in kopia: an ISO week ID such as
/// `2024-02` blocks the month February 2024 and vice versa) and how many each type kept.
#[derive(Default)]
struct Buckets {
    claimed: HashSet<String>,
    kept: HashMap<&'static str, i64>,
}

impl Buckets {
    fn claim(
        &mut self,
        r: &RetentionPolicy,
        rank: usize,
        s: &SnapshotManifest,
        cutoffs: &Cutoffs,
        zone: &LocalZone,
    ) -> Vec<String> {
        let ids = PeriodIds::of(s.start_time, zone);
        let start = i128::from(s.start_time.0);
        let cases: [(&'static str, String, Option<i64>, Option<Nanos>); 6] = [
            ("latest", rank.to_string(), effective_keep_latest(r), None),
            ("annual", ids.year, r.keep_annual, Some(cutoffs.annual)),
            ("monthly", ids.month, r.keep_monthly, Some(cutoffs.monthly)),
            ("weekly", ids.week, r.keep_weekly, Some(cutoffs.weekly)),
            ("daily", ids.day, r.keep_daily, Some(cutoffs.daily)),
            ("hourly", ids.hour, r.keep_hourly, Some(cutoffs.hourly)),
        ];
        let mut reasons = Vec::new();
        for (kind, period, max, cutoff) in cases {
            let Some(max) = max else { continue };
            if cutoff.is_some_and(|c| start < c) || self.claimed.contains(&period) {
                continue;
            }
            let kept = self.kept.entry(kind).or_insert(0);
            if *kept < max {
                self.claimed.insert(period);
                *kept += 1;
                reasons.push(format!("{kind}-{kept}"));
            }
        }
        sort_retention_tags(&mut reasons);
        reasons
    }
}

fn type_rank(kind: &str) -> u8 {
    match kind {
        "latest" => 1,
        "hourly" => 2,
        "daily" => 3,
        "weekly" => 4,
        "monthly" => 5,
        "annual" => 6,
        _ => 0,
    }
}

/// Splits `daily-3` at its last `-`; a reason without one is all prefix.
fn prefix_suffix(s: &str) -> (&str, &str) {
    match s.rfind('-') {
        Some(p) => (&s[..p], &s[p + 1..]),
        None => (s, ""),
    }
}

/// Kopia's `SortRetentionTags`: by type (latest, hourly, daily, weekly, monthly, annual; unknown
/// types first), then type name, then the suffix compared as a string.
pub fn sort_retention_tags(tags: &mut [String]) {
    tags.sort_by(|a, b| {
        let (pa, sa) = prefix_suffix(a);
        let (pb, sb) = prefix_suffix(b);
        (type_rank(pa), pa, sa).cmp(&(type_rank(pb), pb, sb))
    });
}

/// Kopia's `CompactRetentionReasons` for display: numbered reasons of one type become runs
/// (`latest-1`, `latest-2`, `latest-5` → `latest-1..2`, `latest-5`); others are kept verbatim.
pub fn compact_retention_reasons(reasons: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut numbered: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in reasons {
        let (prefix, suffix) = prefix_suffix(r);
        match parse_go_int(suffix) {
            Some(n) => numbered.entry(prefix).or_default().push(n),
            None => out.push(r.clone()),
        }
    }
    for (prefix, mut numbers) in numbered {
        numbers.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for n in numbers {
            match runs.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(n) => *end = n,
                _ => runs.push((n, n)),
            }
        }
        out.extend(runs.into_iter().map(|(a, b)| {
            if a == b {
                format!("{prefix}-{a}")
            } else {
                format!("{prefix}-{a}..{b}")
            }
        }));
    }
    sort_retention_tags(&mut out);
    out
}

/// Go's `strconv.Atoi`: optional sign, ASCII digits only.
fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Kopia's `CompactPins`: sorted, without duplicates.
pub fn compact_pins(pins: &[String]) -> Vec<String> {
    let mut out = pins.to_vec();
    out.sort();
    out.dedup();
    out
}

/// What retention decided for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionDecision {
    pub id: String,
    pub source: SourceInfo,
    pub start_time: UtcTimestamp,
    /// Why the snapshot is kept, in kopia's order (`latest-1`, `daily-2`, `incomplete`, …).
    pub reasons: Vec<String>,
    pub pins: Vec<String>,
}

impl RetentionDecision {
    /// Kopia deletes a snapshot that has neither a retention reason nor a pin.
    pub fn expired(&self) -> bool {
        self.reasons.is_empty() && self.pins.is_empty()
    }
}

/// Retention of `snapshots` (any sources): grouped by their `source`, each group judged under
/// that source's effective policy. Groups come in kopia's order (by `user@host:path` text),
/// each in input order.
pub async fn judge_snapshots(
    repo: &Repository,
    snapshots: Vec<SnapshotManifest>,
    zone: &LocalZone,
) -> Result<Vec<RetentionDecision>> {
    // Keyed by text first for kopia's order; the source itself keeps look-alikes apart.
    let mut groups: BTreeMap<(String, SourceInfo), Vec<SnapshotManifest>> = BTreeMap::new();
    for s in snapshots {
        groups
            .entry((s.source.to_string(), s.source.clone()))
            .or_default()
            .push(s);
    }
    let mut out = Vec::new();
    for ((_, source), group) in groups {
        let (policy, _) = effective_policy_for(repo, &source).await?;
        let reasons = retention_reasons(&policy.retention, &group, zone);
        out.extend(
            group
                .into_iter()
                .zip(reasons)
                .map(|(s, reasons)| RetentionDecision {
                    id: s.id,
                    source: s.source,
                    start_time: s.start_time,
                    reasons,
                    pins: s.pins,
                }),
        );
    }
    Ok(out)
}

/// Kopia's `ApplyRetentionPolicy`: judges every snapshot matching `source` (a `user@host` source
/// matches all its paths) and, when `delete` is set, deletes the expired ones. The caller flushes
/// the repository. Returns every decision, kept and expired.
pub async fn expire(
    repo: &Repository,
    source: &SourceInfo,
    delete: bool,
    zone: &LocalZone,
) -> Result<Vec<RetentionDecision>> {
    let snapshots = list_snapshots(repo, Some(source))
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let decisions = judge_snapshots(repo, snapshots, zone).await?;
    if delete {
        for d in decisions.iter().filter(|d| d.expired()) {
            repo.manifests().delete(&d.id).await?;
        }
    }
    Ok(decisions)
}

/// Kopia's `ListSources`: every source named by the labels of a snapshot manifest, sorted by its
/// `user@host:path` text as `snapshot expire --all` processes them.
pub async fn snapshot_sources(repo: &Repository) -> Result<Vec<SourceInfo>> {
    let query = BTreeMap::from([("type".to_string(), SNAPSHOT_TYPE.to_string())]);
    let mut sources: Vec<SourceInfo> = repo
        .manifests()
        .find(&query)
        .await?
        .iter()
        .map(|e| SourceInfo::from_labels(&e.labels))
        .collect();
    sources.sort_by_cached_key(|s| s.to_string());
    sources.dedup();
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> LocalZone {
        if name == "UTC" {
            return LocalZone::utc();
        }
        LocalZone::named(name).unwrap_or_else(|| panic!("zoneinfo for {name} is not installed"))
    }

    fn at(rfc3339: &str) -> UtcTimestamp {
        UtcTimestamp::parse_rfc3339(rfc3339).unwrap()
    }

    fn snap(start: &str, incomplete: bool) -> SnapshotManifest {
        let start_time = at(start);
        SnapshotManifest {
            id: start.to_string(),
            start_time,
            end_time: UtcTimestamp(start_time.0 + 1_000_000_000),
            incomplete: if incomplete {
                "checkpoint".into()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    fn policy(counts: [Option<i64>; 6]) -> RetentionPolicy {
        let [latest, hourly, daily, weekly, monthly, annual] = counts;
        RetentionPolicy {
            keep_latest: latest,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_annual: annual,
            ..Default::default()
        }
    }

    /// Runs retention and checks every snapshot's reasons; `expected` is (start, incomplete,
    /// reasons joined by spaces, "" = expires).
    fn check(r: &RetentionPolicy, tz: &str, expected: &[(&str, bool, &str)]) {
        let snaps: Vec<SnapshotManifest> =
            expected.iter().map(|(t, inc, _)| snap(t, *inc)).collect();
        let got = retention_reasons(r, &snaps, &zone(tz));
        for ((t, _, want), got) in expected.iter().zip(&got) {
            assert_eq!(got.join(" "), *want, "snapshot {t} in {tz}");
        }
        // The input order must not matter.
        let mut reversed = snaps.clone();
        reversed.reverse();
        let mut got_rev = retention_reasons(r, &reversed, &zone(tz));
        got_rev.reverse();
        assert_eq!(got, got_rev, "order dependence in {tz}");
    }

    #[test]
    fn spec_example_a_latest_and_daily() {
        let r = policy([Some(2), None, Some(3), None, None, None]);
        for tz in ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Tokyo"] {
            check(
                &r,
                tz,
                &[
                    ("2024-03-04T07:30:00Z", false, "latest-1 daily-1"),
                    ("2024-03-04T07:00:00Z", false, "latest-2"),
                    ("2024-03-03T21:00:00Z", false, "daily-2"),
                    ("2024-03-03T09:00:00Z", false, ""),
                    ("2024-03-02T09:00:00Z", false, "daily-3"),
                    ("2024-03-01T20:00:00Z", false, ""),
                    ("2024-03-01T08:00:00Z", false, ""),
                ],
            );
        }
    }

    #[test]
    fn spec_example_b_weekly_ids_collide_with_monthly_ids() {
        let r = policy([None, None, None, Some(4), Some(3), None]);
        for tz in [
            "UTC",
            "America/Los_Angeles",
            "America/New_York",
            "Asia/Kolkata",
            "Pacific/Kiritimati",
        ] {
            check(
                &r,
                tz,
                &[
                    ("2024-02-05T10:00:00Z", false, "weekly-1 monthly-1"),
                    ("2024-01-22T10:00:00Z", false, "weekly-2 monthly-2"),
                    ("2024-01-15T10:00:00Z", false, "weekly-3"),
                    ("2024-01-09T10:00:00Z", false, ""),
                    ("2024-01-08T10:00:00Z", false, ""),
                ],
            );
        }
    }

    #[test]
    fn spec_example_c_incomplete_snapshots() {
        let r = policy([Some(1), None, None, None, None, None]);
        for tz in ["UTC", "America/New_York", "Asia/Kolkata"] {
            check(
                &r,
                tz,
                &[
                    ("2024-06-01T09:30:00Z", true, "incomplete"),
                    ("2024-06-01T05:00:00Z", true, "incomplete"),
                    ("2024-06-01T04:00:00Z", true, "incomplete"),
                    ("2024-06-01T03:00:00Z", true, ""),
                    ("2024-06-01T02:00:00Z", true, ""),
                    ("2024-06-01T01:00:00Z", false, "latest-1"),
                    ("2024-06-01T00:00:00Z", false, ""),
                ],
            );
        }
    }

    #[test]
    fn spec_example_d_weeks_are_local() {
        let r = policy([None, None, None, Some(2), None, None]);
        let times = [
            "2024-03-17T12:00:00Z",
            "2024-03-11T01:00:00Z",
            "2024-03-10T23:30:00Z",
        ];
        for (tz, want) in [
            ("UTC", ["weekly-1", "", "weekly-2"]),
            ("America/Los_Angeles", ["weekly-1", "weekly-2", ""]),
            ("Asia/Tokyo", ["weekly-1", "", ""]),
        ] {
            let expected: Vec<(&str, bool, &str)> = times
                .iter()
                .zip(want)
                .map(|(t, w)| (*t, false, w))
                .collect();
            check(&r, tz, &expected);
        }
    }

    #[test]
    fn spec_example_e_default_policy() {
        let r = kmover_format::snapshot::policy::Policy::kopia_default().retention;
        let times = [
            "2024-01-01T02:30:00Z",
            "2024-01-01T02:00:00Z",
            "2024-01-01T01:00:00Z",
            "2023-12-31T23:00:00Z",
        ];
        for (tz, want) in [
            (
                "UTC",
                [
                    "latest-1 hourly-1 daily-1 monthly-1 annual-1",
                    "latest-2",
                    "latest-3 hourly-2",
                    "latest-4 hourly-3 daily-2 weekly-1 monthly-2 annual-2",
                ],
            ),
            (
                "America/Los_Angeles",
                [
                    "latest-1 hourly-1 daily-1 weekly-1 monthly-1 annual-1",
                    "latest-2",
                    "latest-3 hourly-2",
                    "latest-4 hourly-3 daily-2 monthly-2 annual-2",
                ],
            ),
        ] {
            let expected: Vec<(&str, bool, &str)> = times
                .iter()
                .zip(want)
                .map(|(t, w)| (*t, false, w))
                .collect();
            check(&r, tz, &expected);
        }
    }

    #[test]
    fn spec_example_f_empty_policy_keeps_every_complete_snapshot() {
        for r in [
            RetentionPolicy::default(),
            policy([Some(0); 6]),
            // ignoreIdenticalSnapshots plays no part in retention.
            RetentionPolicy {
                ignore_identical_snapshots: Some(true),
                ..policy([Some(0); 6])
            },
        ] {
            check(
                &r,
                "UTC",
                &[
                    ("2024-01-01T10:00:00Z", false, "latest-1"),
                    ("2024-01-01T09:00:00Z", true, ""),
                    ("2023-01-01T09:00:00Z", false, "latest-2"),
                    ("2020-01-01T09:00:00Z", false, "latest-3"),
                ],
            );
        }
    }

    /// (start time, incomplete, expected reasons joined by spaces).
    type Rows = Vec<(&'static str, bool, &'static str)>;

    /// Kopia's `TestRetentionPolicyTest` cases (`retention_policy_test.go`).
    #[test]
    fn kopia_table_cases() {
        const C: bool = false;
        const I: bool = true;
        let cases: Vec<(RetentionPolicy, Rows)> = vec![
            (
                policy([Some(3), None, None, None, None, None]),
                vec![
                    ("2020-01-01T12:00:00Z", C, ""),
                    ("2020-01-01T12:01:00Z", C, "latest-3"),
                    ("2020-01-01T12:02:00Z", C, "latest-2"),
                    ("2020-01-01T12:03:00Z", C, "latest-1"),
                ],
            ),
            (
                policy([None, None, Some(3), None, None, None]),
                vec![
                    ("2020-01-01T12:00:00Z", C, ""),
                    ("2020-01-01T15:00:00Z", C, ""),
                    ("2020-01-02T12:00:00Z", C, ""),
                    ("2020-01-02T15:00:00Z", C, "daily-3"),
                    ("2020-01-03T12:00:00Z", C, ""),
                    ("2020-01-03T15:00:00Z", C, "daily-2"),
                    ("2020-01-04T12:00:00Z", C, ""),
                    ("2020-01-04T15:00:00Z", C, "daily-1"),
                ],
            ),
            (
                policy([None, None, None, None, Some(3), None]),
                vec![
                    ("2020-01-01T12:00:00Z", C, ""),
                    ("2020-01-01T15:00:00Z", C, ""),
                    ("2020-03-02T15:00:00Z", C, "monthly-2"),
                    ("2020-04-01T12:00:00Z", C, ""),
                    ("2020-04-02T15:00:00Z", C, "monthly-1"),
                ],
            ),
            (
                policy([Some(3), Some(7), Some(5), None, Some(2), None]),
                vec![
                    ("2020-01-02T15:00:00Z", C, ""),
                    ("2020-03-02T13:00:00Z", C, ""),
                    ("2020-03-02T15:00:00Z", C, "monthly-2"),
                    ("2020-04-01T14:00:00Z", C, ""),
                    ("2020-04-01T15:00:00Z", C, "daily-2"),
                    ("2020-04-02T12:00:00Z", C, "latest-3 hourly-3"),
                    ("2020-04-02T13:00:00Z", C, "latest-2 hourly-2"),
                    (
                        "2020-04-02T15:00:00Z",
                        C,
                        "latest-1 hourly-1 daily-1 monthly-1",
                    ),
                    ("2020-04-02T15:01:00Z", I, ""),
                    ("2020-04-02T19:01:00Z", I, ""),
                    ("2020-04-02T20:01:00Z", I, "incomplete"),
                    ("2020-04-02T23:01:00Z", I, "incomplete"),
                    ("2020-04-02T23:50:00Z", I, "incomplete"),
                ],
            ),
            (
                policy([Some(3), None, None, None, None, None]),
                vec![
                    ("2020-04-02T15:00:00Z", C, "latest-1"),
                    ("2020-04-02T15:01:00Z", I, ""),
                    ("2020-04-02T17:01:00Z", I, ""),
                    ("2020-04-02T18:01:00Z", I, "incomplete"),
                    ("2020-04-02T19:01:00Z", I, "incomplete"),
                    ("2020-04-02T23:50:00Z", I, "incomplete"),
                ],
            ),
            (
                policy([None, None, None, Some(3), None, None]),
                vec![
                    ("2020-01-01T12:00:00Z", C, ""),
                    ("2020-01-01T15:00:00Z", C, "weekly-3"),
                    ("2020-01-08T12:00:00Z", C, ""),
                    ("2020-01-09T12:00:00Z", C, "weekly-2"),
                    ("2020-01-15T12:00:00Z", C, "weekly-1"),
                ],
            ),
        ];
        for (r, rows) in cases {
            check(&r, "UTC", &rows);
        }
    }

    #[test]
    fn nothing_complete_keeps_only_young_or_newest_incomplete() {
        let r = policy([Some(10), None, None, None, None, None]);
        check(
            &r,
            "UTC",
            &[
                ("2024-06-01T09:00:00Z", true, "incomplete"),
                ("2024-06-01T01:00:00Z", true, "incomplete"),
                ("2024-05-01T01:00:00Z", true, "incomplete"),
                ("2024-04-01T01:00:00Z", true, ""),
            ],
        );
        assert!(retention_reasons(&r, &[], &LocalZone::utc()).is_empty());
    }

    #[test]
    fn cutoffs_use_local_calendar_arithmetic() {
        // Newest 2024-03-31 12:00 in New York (EDT); one month back is "Feb 31" = Mar 2 local,
        // 17:00Z (EST). February's snapshot after that instant would count, one before not.
        let r = policy([None, None, None, None, Some(1), None]);
        let ny = zone("America/New_York");
        let cut = Cutoffs::new(&r, at("2024-03-31T16:00:00Z").0, &ny);
        assert_eq!(cut.monthly, i128::from(at("2024-03-02T17:00:00Z").0));
        // Across the spring-forward gap a week back keeps the local wall time.
        let r = policy([None, None, None, Some(1), Some(0), None]);
        let cut = Cutoffs::new(&r, at("2024-03-12T16:00:00Z").0, &ny);
        assert_eq!(cut.weekly, i128::from(at("2024-03-05T17:00:00Z").0));
        // Hours are absolute.
        let r = policy([None, Some(2), None, None, None, None]);
        let cut = Cutoffs::new(&r, at("2024-03-10T08:00:00Z").0, &ny);
        assert_eq!(cut.hourly, i128::from(at("2024-03-10T06:00:00Z").0));
    }

    #[test]
    fn go_date_resolution_in_dst_gap_and_overlap() {
        let ny = zone("America/New_York");
        // 2024-03-10 02:30 does not exist in New York; Go's two lookups land on EDT → 06:30Z
        // (01:30 EST), checked against Go's `AddDate`.
        let base = at("2024-03-11T06:30:00Z").0; // 02:30 EDT on Mar 11
        assert_eq!(
            add_date(base, 0, 0, -1, &ny),
            i128::from(at("2024-03-10T06:30:00Z").0)
        );
        // 2024-11-03 01:30 happens twice; Go picks the first (EDT) → 05:30Z.
        let base = at("2024-11-04T06:30:00Z").0; // 01:30 EST on Nov 4
        assert_eq!(
            add_date(base, 0, 0, -1, &ny),
            i128::from(at("2024-11-03T05:30:00Z").0)
        );
    }

    #[test]
    fn iso_weeks_at_year_edges() {
        let week = |date: &str| {
            let days =
                i128::from(at(&format!("{date}T12:00:00Z")).unix_secs()).div_euclid(SECS_PER_DAY);
            iso_week(days)
        };
        assert_eq!(week("2024-01-01"), (2024, 1));
        assert_eq!(week("2023-12-31"), (2023, 52));
        assert_eq!(week("2021-01-03"), (2020, 53));
        assert_eq!(week("2019-12-30"), (2020, 1));
        assert_eq!(week("2026-12-31"), (2026, 53));
    }

    #[test]
    fn negative_counts_keep_nothing_of_their_type() {
        // The sum is 1, so keepLatest = -1 is used as is and no snapshot is "latest".
        let r = policy([Some(-1), None, Some(2), None, None, None]);
        check(
            &r,
            "UTC",
            &[
                ("2024-01-02T10:00:00Z", false, "daily-1"),
                ("2024-01-01T10:00:00Z", false, "daily-2"),
                ("2023-12-31T10:00:00Z", false, ""),
            ],
        );
    }

    #[test]
    fn effective_keep_latest_sums_with_go_wrapping() {
        assert_eq!(
            effective_keep_latest(&RetentionPolicy::default()),
            Some(i64::MAX)
        );
        assert_eq!(
            effective_keep_latest(&policy([Some(3), Some(-3), None, None, None, None])),
            Some(i64::MAX)
        );
        assert_eq!(
            effective_keep_latest(&policy([None, Some(1), None, None, None, None])),
            None
        );
        assert_eq!(
            effective_keep_latest(&policy([Some(5), Some(1), None, None, None, None])),
            Some(5)
        );
    }

    #[test]
    fn huge_counts_do_not_panic() {
        let r = policy([
            Some(i64::MAX),
            Some(i64::MIN),
            Some(i64::MAX),
            Some(i64::MIN),
            Some(i64::MAX),
            Some(i64::MIN),
        ]);
        let snaps = vec![
            snap("2024-01-01T00:00:00Z", false),
            snap("1700-01-01T00:00:00Z", false),
        ];
        let got = retention_reasons(&r, &snaps, &zone("America/New_York"));
        assert_eq!(got[0].first().map(String::as_str), Some("latest-1"));
    }

    #[test]
    fn compacting_reasons_and_pins() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], &[&str]); 6] = [
            (&[], &[]),
            (&["latest-1", "latest-2"], &["latest-1..2"]),
            (
                &["latest-1", "daily-3", "latest-2", "daily-2"],
                &["latest-1..2", "daily-2..3"],
            ),
            (
                &["latest-1", "weekly-7", "latest-2"],
                &["latest-1..2", "weekly-7"],
            ),
            (
                &["latest-1", "latest-2", "latest-5", "latest-6", "latest-7"],
                &["latest-1..2", "latest-5..7"],
            ),
            (
                &["latest-1", "zrogue", "arogue", "latest-2"],
                &["arogue", "zrogue", "latest-1..2"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(compact_retention_reasons(&s(input)), s(want), "{input:?}");
        }
        assert_eq!(
            compact_pins(&s(&["z", "x", "a", "b", "d", "b", "z"])),
            s(&["a", "b", "d", "x", "z"])
        );
        let mut tags = s(&["incomplete", "annual-1", "latest-10", "latest-2", "daily-1"]);
        sort_retention_tags(&mut tags);
        assert_eq!(
            tags,
            s(&["incomplete", "latest-10", "latest-2", "daily-1", "annual-1"])
        );
    }

    #[test]
    fn tz_env_rules_match_go() {
        // A name that does not resolve falls back to UTC, as Go does.
        assert!(LocalZone::named("No/Such_Zone").is_none());
        assert!(LocalZone::named("Asia/Kolkata").is_some());
        let kolkata = zone("Asia/Kolkata");
        assert_eq!(kolkata.offset_at(0), 19_800);
        assert_eq!(LocalZone::utc().offset_at(1_700_000_000), 0);
    }
}
