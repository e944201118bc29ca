//! Index blob naming and selection rules (§11): kopia's epoch manager (`xn`/`xs`/`xr`/`xe`/`xw`
//! blobs, format v2+) and the legacy v0 manager (`n` index blobs, `m` compaction logs).
//!
//! Everything here is pure: callers list blobs and pass IDs (and, where needed, timestamps and
//! lengths) in; the parsing quirks follow kopia's Go code (`strconv.Atoi` and friends).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{FormatError, Result};

pub const EPOCH_MARKER_PREFIX: &str = "xe";
pub const UNCOMPACTED_INDEX_PREFIX: &str = "xn";
pub const SINGLE_EPOCH_COMPACTION_PREFIX: &str = "xs";
pub const RANGE_CHECKPOINT_PREFIX: &str = "xr";
pub const DELETION_WATERMARK_PREFIX: &str = "xw";
/// Bodies of the two plain (unencrypted) marker blobs.
pub const EPOCH_MARKER_BODY: &[u8] = b"epoch-marker";
pub const WATERMARK_BODY: &[u8] = b"deletion-watermark";

/// Legacy v0 manager: index blobs, compaction logs and cleanup entries.
pub const LEGACY_INDEX_PREFIX: &str = "n";
pub const LEGACY_COMPACTION_LOG_PREFIX: &str = "m";
pub const LEGACY_CLEANUP_PREFIX: &str = "l";

/// Epochs at or below `write_epoch - 2` are settled: no writer may still add to them.
pub const UNSETTLED_EPOCHS: u64 = 2;

pub fn uncompacted_index_prefix(epoch: u64) -> String {
    format!("{UNCOMPACTED_INDEX_PREFIX}{epoch}_")
}

pub fn epoch_marker_id(epoch: u64) -> String {
    format!("{EPOCH_MARKER_PREFIX}{epoch}")
}

pub fn watermark_id(unix_seconds: i64) -> String {
    format!("{DELETION_WATERMARK_PREFIX}{unix_seconds}")
}

pub fn single_epoch_compaction_prefix(epoch: u64) -> String {
    format!("{SINGLE_EPOCH_COMPACTION_PREFIX}{epoch}_")
}

pub fn range_checkpoint_prefix(min_epoch: u64, max_epoch: u64) -> String {
    format!("{RANGE_CHECKPOINT_PREFIX}{min_epoch}_{max_epoch}_")
}

pub fn is_settled(epoch: u64, write_epoch: u64) -> bool {
    epoch.saturating_add(UNSETTLED_EPOCHS) <= write_epoch
}

/// Go's `strconv.Atoi` on 64-bit: optional sign, decimal digits, no overflow. Rust's `i64`
/// parser accepts exactly that.
fn go_atoi(s: &str) -> Option<i64> {
    s.parse::<i64>().ok()
}

/// An epoch number must be non-negative and fit Go's `int`.
fn epoch_from(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

fn strip_non_digits(s: &str) -> &str {
    s.trim_start_matches(|c: char| !c.is_ascii_digit())
}

/// `<prefix><epoch>_<rest>` → epoch: the part before the first `_`, leading non-digits removed.
/// `xe7` → 7, `xn12_…` → 12, `x01234_1235` → 1234.
pub fn epoch_number_from_blob_id(id: &str) -> Option<u64> {
    let head = id.split_once('_').map_or(id, |(h, _)| h);
    go_atoi(strip_non_digits(head)).and_then(epoch_from)
}

/// `<prefix><min>_<max>_<rest>` → (min, max). The second number is parsed as is (kopia accepts
/// a `+` sign there); negative values are not epochs.
pub fn epoch_range_from_blob_id(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.split('_');
    let (first, second) = (parts.next()?, parts.next()?);
    parts.next()?;
    let min = go_atoi(strip_non_digits(first)).and_then(epoch_from)?;
    let max = go_atoi(second).and_then(epoch_from)?;
    Some((min, max))
}

/// `xw<unix seconds>` → the deletion watermark (may be negative, as in kopia).
pub fn watermark_from_blob_id(id: &str) -> Option<i64> {
    go_atoi(id.strip_prefix(DELETION_WATERMARK_PREFIX).unwrap_or(id))
}

/// kopia's complete-set rule, over items in listing order: an ID `<any>-s<set>-c<N>…` belongs to
/// set `s<set>`, complete once N members have been seen; any other ID is a complete set of its
/// own. Sets are returned in the order they completed.
pub fn find_complete_sets_by<'a, T>(
    items: &'a [T],
    id: impl Fn(&'a T) -> &'a str,
) -> Vec<Vec<&'a T>> {
    let mut open: HashMap<&'a str, Vec<&'a T>> = HashMap::new();
    let mut complete = Vec::new();
    for item in items {
        let mut parts = id(item).split('-');
        let (set, count) = (parts.nth(1), parts.next());
        let member_of = match (set, count) {
            (Some(set), Some(count)) if set.starts_with('s') && count.starts_with('c') => {
                go_atoi(&count[1..]).map(|n| (set, n))
            }
            _ => None,
        };
        match member_of {
            Some((set, n)) => {
                let members = open.entry(set).or_default();
                members.push(item);
                if i64::try_from(members.len()).is_ok_and(|len| len == n) {
                    complete.push(members.clone());
                }
            }
            None => complete.push(vec![item]),
        }
    }
    complete
}

/// [`find_complete_sets_by`] over plain blob IDs.
pub fn find_complete_sets<'a>(blob_ids_in_listing_order: &[&'a str]) -> Vec<Vec<&'a str>> {
    find_complete_sets_by(blob_ids_in_listing_order, |s| *s)
        .into_iter()
        .map(|set| set.into_iter().copied().collect())
        .collect()
}

/// For single-epoch compactions (`xs` listing): per epoch, the first complete set.
pub fn first_complete_set_per_epoch<'a, T>(
    items: &'a [T],
    id: impl Fn(&'a T) -> &'a str + Copy,
) -> BTreeMap<u64, Vec<&'a T>> {
    let mut groups: BTreeMap<u64, Vec<&'a T>> = BTreeMap::new();
    for item in items {
        if let Some(e) = epoch_number_from_blob_id(id(item)) {
            groups.entry(e).or_default().push(item);
        }
    }
    groups
        .into_iter()
        .filter_map(|(e, group)| {
            let first = find_complete_sets_by(&group, |t| id(*t))
                .into_iter()
                .next()?;
            Some((e, first.into_iter().copied().collect()))
        })
        .collect()
}

/// A range checkpoint set covering epochs `min_epoch..=max_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet<B> {
    pub min_epoch: u64,
    pub max_epoch: u64,
    pub blobs: Vec<B>,
}

/// For range checkpoints (`xr` listing): per (min, max), the first complete set, sorted by range.
pub fn first_complete_set_per_range<'a, T>(
    items: &'a [T],
    id: impl Fn(&'a T) -> &'a str + Copy,
) -> Vec<RangeSet<&'a T>> {
    let mut groups: BTreeMap<(u64, u64), Vec<&'a T>> = BTreeMap::new();
    for item in items {
        if let Some(r) = epoch_range_from_blob_id(id(item)) {
            groups.entry(r).or_default().push(item);
        }
    }
    groups
        .into_iter()
        .filter_map(|((min_epoch, max_epoch), group)| {
            let first = find_complete_sets_by(&group, |t| id(*t))
                .into_iter()
                .next()?;
            Some(RangeSet {
                min_epoch,
                max_epoch,
                blobs: first.into_iter().copied().collect(),
            })
        })
        .collect()
}

/// The chain of ranges `[0,a], [a+1,b], …` reaching the highest epoch; on a tie the chain with
/// fewer ranges wins, then the one whose first range comes first in `ranges`. A chain ending at
/// epoch 0 is never chosen. Ranges with max < min are ignored (kopia would recurse forever).
pub fn longest_range_chain(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    #[derive(Clone, Copy)]
    struct Best {
        first: (u64, u64),
        last_max: u64,
        len: usize,
    }
    let mut by_min: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for &r in ranges.iter().filter(|r| r.1 >= r.0) {
        by_min.entry(r.0).or_default().push(r);
    }
    // Every range ends at or after its start, so the chain from a start depends only on chains
    // from later starts: solve from the highest start down.
    let mut best: HashMap<u64, Best> = HashMap::new();
    for (&start, candidates) in by_min.iter().rev() {
        let (mut longest, mut longest_len, mut chosen) = (0u64, 0usize, None);
        for &r in candidates {
            let tail = r.1.checked_add(1).and_then(|next| best.get(&next));
            let (last_max, len) = tail.map_or((r.1, 1), |t| (t.last_max, t.len + 1));
            if last_max > longest || (last_max == longest && len < longest_len) {
                (longest, longest_len, chosen) = (
                    last_max,
                    len,
                    Some(Best {
                        first: r,
                        last_max,
                        len,
                    }),
                );
            }
        }
        if let Some(b) = chosen {
            best.insert(start, b);
        }
    }
    let mut chain = Vec::new();
    let mut next = Some(0u64);
    while let Some(b) = next.and_then(|s| best.get(&s)) {
        chain.push(b.first);
        next = b.first.1.checked_add(1);
    }
    chain
}

/// Which kopia release's rule picks the next epoch to compact (§11.2 maintenance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionRule {
    /// v0.21/v0.22: uses the first contiguous run of compacted epochs, starting at the lowest.
    V0_22,
    /// v0.23+: skips the run of compacted epochs starting right after the range chain.
    V0_23,
}

/// The oldest epoch that still needs a single-epoch compaction, given the longest range chain
/// and the epochs that already have a complete single-epoch compaction set.
pub fn oldest_uncompacted_epoch(
    range_chain: &[(u64, u64)],
    single_compacted_epochs: impl IntoIterator<Item = u64>,
    rule: CompactionRule,
) -> Result<u64> {
    let mut candidate = 0;
    if let (Some(first), Some(last)) = (range_chain.first(), range_chain.last()) {
        if first.0 != 0 {
            return Err(FormatError::malformed(
                "epoch range checkpoints",
                format!(
                    "epoch 0 not included in range compaction, lowest epoch in range compactions: {}",
                    first.0
                ),
            ));
        }
        candidate = last.1.saturating_add(1);
    }
    let compacted: BTreeSet<u64> = single_compacted_epochs.into_iter().collect();
    let run_end = |start: u64| {
        let mut end = start;
        while end.checked_add(1).is_some_and(|n| compacted.contains(&n)) {
            end += 1;
        }
        end
    };
    Ok(match rule {
        CompactionRule::V0_22 => match compacted.first() {
            Some(&lo) if candidate >= lo && candidate <= run_end(lo) => run_end(lo) + 1,
            _ => candidate,
        },
        CompactionRule::V0_23 if compacted.contains(&candidate) => run_end(candidate) + 1,
        CompactionRule::V0_23 => candidate,
    })
}

/// Whether maintenance should write the next epoch marker, given the `(timestamp, length)` of
/// every `xn` blob of the write epoch: the blobs must span at least `min_epoch_duration`, and
/// reach `count_threshold` blobs or `total_size_threshold` bytes.
pub fn should_advance_epoch(
    blobs: impl IntoIterator<Item = (DateTime<Utc>, u64)>,
    min_epoch_duration: std::time::Duration,
    count_threshold: usize,
    total_size_threshold: u64,
) -> bool {
    let mut iter = blobs.into_iter();
    let Some((first_time, first_len)) = iter.next() else {
        return false;
    };
    let (mut min, mut max, mut count, mut total) = (first_time, first_time, 1usize, first_len);
    for (t, len) in iter {
        min = min.min(t);
        max = max.max(t);
        count += 1;
        total = total.saturating_add(len);
    }
    let Ok(min_duration) = chrono::TimeDelta::from_std(min_epoch_duration) else {
        return false;
    };
    if max - min < min_duration {
        return false;
    }
    count >= count_threshold || total >= total_size_threshold
}

/// The range a full maintenance would checkpoint: from just after the chain to the last settled
/// epoch, if that spans at least `full_checkpoint_frequency` epochs.
pub fn range_to_checkpoint(
    write_epoch: u64,
    range_chain: &[(u64, u64)],
    full_checkpoint_frequency: u64,
) -> Option<(u64, u64)> {
    let latest_settled = write_epoch.checked_sub(UNSETTLED_EPOCHS)?;
    let first = range_chain.last().map_or(0, |r| r.1.saturating_add(1));
    (latest_settled >= first && latest_settled - first >= full_checkpoint_frequency)
        .then_some((first, latest_settled))
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Blob metadata as kopia serializes it inside legacy compaction logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyBlobMetadata {
    pub id: String,
    #[serde(default)]
    pub length: i64,
    #[serde(default)]
    pub timestamp: DateTime<Utc>,
}

/// The JSON body of a legacy `m` blob: these inputs were merged into these outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionLog {
    #[serde(default, deserialize_with = "null_as_default")]
    pub input_metadata: Vec<LegacyBlobMetadata>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub output_metadata: Vec<LegacyBlobMetadata>,
}

/// The JSON body of a legacy `l` blob: compaction logs scheduled for deletion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupEntry {
    #[serde(rename = "blobIDs", default, deserialize_with = "null_as_default")]
    pub blob_ids: Vec<String>,
    #[serde(rename = "cleanupScheduleTime")]
    pub cleanup_schedule_time: DateTime<Utc>,
}

/// The legacy manager's live index set: the listed `n` blobs (in their order) minus the inputs
/// of every compaction log whose outputs are all listed.
pub fn active_legacy_index_blobs(n_blobs: &[String], logs: &[CompactionLog]) -> Vec<String> {
    let listed: HashSet<&str> = n_blobs.iter().map(String::as_str).collect();
    let superseded: HashSet<&str> = logs
        .iter()
        .filter(|log| {
            log.output_metadata
                .iter()
                .all(|o| listed.contains(o.id.as_str()))
        })
        .flat_map(|log| log.input_metadata.iter().map(|i| i.id.as_str()))
        .collect();
    n_blobs
        .iter()
        .filter(|b| !superseded.contains(b.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(uncompacted_index_prefix(5), "xn5_");
        assert_eq!(epoch_marker_id(7), "xe7");
        assert_eq!(watermark_id(1_700_000_000), "xw1700000000");
        assert_eq!(single_epoch_compaction_prefix(3), "xs3_");
        assert_eq!(range_checkpoint_prefix(0, 6), "xr0_6_");
        assert!(is_settled(0, 2) && !is_settled(1, 2) && !is_settled(0, 1));
    }

    #[test]
    fn kopia_epoch_number_vectors() {
        for (id, want) in [
            ("pppp9", 9),
            ("x7", 7),
            ("x01234_1235", 1234),
            ("x0_1235", 0),
            ("abc01234_", 1234),
            ("abc1234_", 1234),
            ("abc1234_xxxx-sadfasd", 1234),
            (
                "xn12_c31735d50feccb6f8569f2321160cfc9-s0123456789abcdef13c-c1",
                12,
            ),
        ] {
            assert_eq!(epoch_number_from_blob_id(id), Some(want), "{id}");
        }
        for id in ["_", "a_", "x123x_", "xe", "xe99999999999999999999"] {
            assert_eq!(epoch_number_from_blob_id(id), None, "{id}");
        }
    }

    #[test]
    fn ranges_and_watermarks() {
        assert_eq!(
            epoch_range_from_blob_id("xr0_6_c31735d50feccb6f8569f2321160cfc9-s0011223344556677-c2"),
            Some((0, 6))
        );
        assert_eq!(
            epoch_range_from_blob_id("xr10_+19_x"),
            Some((10, 19)),
            "Atoi accepts a sign"
        );
        assert_eq!(epoch_range_from_blob_id("xr0_6"), None, "needs three parts");
        assert_eq!(epoch_range_from_blob_id("xr0_x6_y"), None);
        assert_eq!(epoch_range_from_blob_id("xr0_-6_y"), None);
        assert_eq!(watermark_from_blob_id("xw1700000000"), Some(1_700_000_000));
        assert_eq!(watermark_from_blob_id("xw-5"), Some(-5));
        assert_eq!(watermark_from_blob_id("xwabc"), None);
    }

    #[test]
    fn complete_sets() {
        let ids = [
            "xs0_aa-s1-c2",
            "xs0_bb-s2-c1",
            "xs0_cc-s1-c2",
            "xs0_dd-s3-c2",
            "xs0_malformed",
            "xs0_ee-s4-cx",
            "xs0_ff-s5-c0",
        ];
        let sets = find_complete_sets(&ids);
        assert_eq!(
            sets,
            vec![
                vec!["xs0_bb-s2-c1"],
                vec!["xs0_aa-s1-c2", "xs0_cc-s1-c2"],
                vec!["xs0_malformed"],
                vec!["xs0_ee-s4-cx"]
            ]
        );
        assert!(find_complete_sets(&[]).is_empty());
    }

    #[test]
    fn first_sets_per_epoch_and_range() {
        let xs = [
            "xs1_a-s9-c2",
            "xs0_b-s1-c1",
            "xs1_c-s8-c1",
            "xs1_d-s9-c2",
            "xs2_e-s7-c2",
        ];
        let per_epoch = first_complete_set_per_epoch(&xs, |s| s);
        assert_eq!(per_epoch.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            per_epoch[&1],
            [&"xs1_c-s8-c1"],
            "the first set to complete wins"
        );
        let xr = ["xr0_9_a-s1-c1", "xr10_19_b-s2-c2", "xr0_9_c-s3-c1"];
        let per_range = first_complete_set_per_range(&xr, |s| s);
        assert_eq!(
            per_range,
            vec![RangeSet {
                min_epoch: 0,
                max_epoch: 9,
                blobs: vec![&"xr0_9_a-s1-c1"]
            }]
        );
    }

    /// kopia's TestLongestRangeCheckpoint.
    #[test]
    fn kopia_longest_range_chain_vectors() {
        type Case<'a> = (&'a [(u64, u64)], &'a [(u64, u64)]);
        let cases: [Case; 9] = [
            (&[], &[]),
            (&[(0, 9), (10, 19), (20, 29)], &[(0, 9), (10, 19), (20, 29)]),
            (
                &[(0, 9), (10, 19), (20, 29), (50, 59)],
                &[(0, 9), (10, 19), (20, 29)],
            ),
            (&[(0, 9), (20, 29), (50, 59)], &[(0, 9)]),
            (&[(0, 29), (20, 29), (30, 39)], &[(0, 29), (30, 39)]),
            (&[(0, 9), (0, 29), (10, 19), (30, 39)], &[(0, 29), (30, 39)]),
            (&[(0, 9), (0, 29), (10, 59), (30, 39)], &[(0, 9), (10, 59)]),
            (
                &[(0, 9), (0, 9), (0, 29), (10, 59), (30, 39)],
                &[(0, 9), (10, 59)],
            ),
            (
                &[(10, 59), (30, 39), (50, 59), (40, 49), (0, 9), (0, 29)],
                &[(0, 9), (10, 59)],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(longest_range_chain(input), want, "{input:?}");
        }
        assert!(
            longest_range_chain(&[(0, 0)]).is_empty(),
            "a chain ending at 0 is never chosen"
        );
        assert_eq!(longest_range_chain(&[(0, 0), (1, 5)]), [(0, 0), (1, 5)]);
        assert_eq!(
            longest_range_chain(&[(0, 9), (10, 5), (5, 4)]),
            [(0, 9)],
            "inverted ranges are ignored"
        );
    }

    /// kopia's TestOldestUncompactedEpoch, plus the case where v0.22 and v0.23 differ.
    #[test]
    fn kopia_oldest_uncompacted_vectors() {
        let both = [CompactionRule::V0_22, CompactionRule::V0_23];
        type Case<'a> = (&'a [(u64, u64)], &'a [u64], u64);
        let cases: [Case; 24] = [
            (&[], &[], 0),
            (&[], &[0], 1),
            (&[], &[0, 1], 2),
            (&[], &[1], 0),
            (&[], &[23], 0),
            (&[], &[0, 2], 1),
            (&[], &[0, 4], 1),
            (&[], &[0, 1, 3], 2),
            (&[], &[0, 1, 4], 2),
            (&[], &[0, 1, 4, 5], 2),
            (&[], &[0, 1, 2, 4], 3),
            (&[], &[0, 1, 2, 4, 6, 9], 3),
            (&[(0, 2)], &[], 3),
            (&[(0, 2)], &[0, 1], 3),
            (&[(0, 2)], &[1, 2], 3),
            (&[(0, 2)], &[1], 3),
            (&[(0, 2)], &[4, 5], 3),
            (&[(0, 2)], &[2, 3], 4),
            (&[(0, 2)], &[3, 4], 5),
            (&[(0, 2)], &[3, 5], 4),
            (&[(0, 7)], &[0, 1, 2, 4, 6, 9], 8),
            (&[(0, 7)], &[9, 10], 8),
            (&[(0, 7)], &[8, 10], 9),
            (&[(0, 7)], &[8, 9, 12], 10),
        ];
        for (chain, singles, want) in cases {
            for rule in both {
                assert_eq!(
                    oldest_uncompacted_epoch(chain, singles.iter().copied(), rule).unwrap(),
                    want,
                    "{chain:?} {singles:?} {rule:?}"
                );
            }
        }
        for rule in both {
            assert!(oldest_uncompacted_epoch(&[(1, 2)], [3, 4], rule).is_err());
        }
        let singles = [0, 1, 2, 4, 6, 8, 9];
        assert_eq!(
            oldest_uncompacted_epoch(&[(0, 7)], singles, CompactionRule::V0_22).unwrap(),
            8
        );
        assert_eq!(
            oldest_uncompacted_epoch(&[(0, 7)], singles, CompactionRule::V0_23).unwrap(),
            10
        );
    }

    /// kopia's TestShouldAdvanceEpoch with the default parameters.
    #[test]
    fn kopia_should_advance_vectors() {
        let day = std::time::Duration::from_secs(24 * 3600);
        let (count, size) = (20usize, 10u64 << 20);
        let t0 = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t_day = t0 + chrono::TimeDelta::from_std(day).unwrap();
        let just_short = t_day - chrono::TimeDelta::nanoseconds(1);
        let adv = |blobs: Vec<(DateTime<Utc>, u64)>| should_advance_epoch(blobs, day, count, size);
        assert!(!adv(vec![]));
        assert!(!adv(vec![(t0, 1)]));
        assert!(!adv(vec![(just_short, size), (t0, 1)]));
        assert!(adv(vec![(t0, 1), (t_day, size)]));
        assert!(!adv(vec![(t0, 1), (t_day, size - 2)]));
        assert!(!adv(vec![(t0, 1), (t_day, 1)]));
        let mut lots = vec![(t0, 1)];
        lots.extend(std::iter::repeat_n((t_day, 1), count));
        assert!(adv(lots));
    }

    #[test]
    fn checkpoint_range() {
        assert_eq!(range_to_checkpoint(1, &[], 7), None);
        assert_eq!(range_to_checkpoint(8, &[], 7), None);
        assert_eq!(range_to_checkpoint(9, &[], 7), Some((0, 7)));
        assert_eq!(range_to_checkpoint(17, &[(0, 7)], 7), Some((8, 15)));
        assert_eq!(range_to_checkpoint(16, &[(0, 7)], 7), None);
    }

    #[test]
    fn legacy_compaction_logs() {
        let json = r#"{"inputMetadata":[{"id":"n1","length":10,"timestamp":"2021-01-02T03:04:05.123456789+01:00"},
            {"id":"n2","length":10,"timestamp":"0001-01-01T00:00:00Z"}],
            "outputMetadata":[{"id":"n3","length":20,"timestamp":"2021-01-02T03:04:06Z"}]}"#;
        let log: CompactionLog = serde_json::from_str(json).unwrap();
        assert_eq!(
            log.input_metadata[0].timestamp.to_rfc3339(),
            "2021-01-02T02:04:05.123456789+00:00"
        );
        let pending: CompactionLog = serde_json::from_str(
            r#"{"inputMetadata":[{"id":"n3"}],"outputMetadata":[{"id":"n9"}]}"#,
        )
        .unwrap();
        let nulls: CompactionLog =
            serde_json::from_str(r#"{"inputMetadata":null,"outputMetadata":null}"#).unwrap();
        assert_eq!(nulls, CompactionLog::default());
        let listed: Vec<String> = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
        assert_eq!(
            active_legacy_index_blobs(&listed, &[log.clone(), pending, nulls]),
            ["n3", "n4"]
        );
        // Outputs not (yet) listed: the inputs stay.
        assert_eq!(
            active_legacy_index_blobs(&listed[..2], std::slice::from_ref(&log)),
            ["n1", "n2"]
        );
        let round: CompactionLog =
            serde_json::from_str(&serde_json::to_string(&log).unwrap()).unwrap();
        assert_eq!(round, log);
        let cleanup: CleanupEntry = serde_json::from_str(
            r#"{"blobIDs":["m1","m2"],"cleanupScheduleTime":"2021-01-02T03:04:05Z"}"#,
        )
        .unwrap();
        assert_eq!(cleanup.blob_ids, ["m1", "m2"]);
    }
}
