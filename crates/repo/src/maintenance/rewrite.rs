//! Rewriting the contents of short and mostly-dead packs into new packs, so the old packs become
//! unreferenced and pack deletion can reclaim them.
//!
//! kopia rewrites every content of a pack whose indexed contents total under 60 % of the maximum
//! pack size (deleted contents included, keeping their flag). We count only what survives this
//! run: deleted contents that the same run is about to drop from the index are neither counted
//! nor copied. So a full pack that is mostly dead qualifies too, and rewritten packs carry no
//! data that is garbage already. A lone candidate of its kind is still left alone when rewriting
//! it would reclaim nothing, as kopia does.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kmover_format::ContentId;
use kmover_format::index::IndexEntry;

use super::safety::SafetyParameters;
use super::schedule::{RewriteContentsStats, TaskStats};
use crate::error::{RepoError, Result};
use crate::repository::Repository;

const SHORT_PACK_PERCENT: usize = 60;
/// Copies indexed between flushes: unflushed entries are held in memory until the next flush,
/// so one flush at the end would hold every rewritten content (GB at millions of contents).
const FLUSH_EVERY_REWRITTEN: u64 = 100_000;
/// Copies in flight together.
const COPY_BATCH: usize = 4096;
/// Copies running at once: many, so that a cold repository's small reads overlap...
const REWRITE_PARALLELISM: usize = 64;
/// ...within this many KiB of contents held at once (large chunks are MiBs each).
const REWRITE_KIB_IN_FLIGHT: u32 = 8 << 10;

#[derive(Clone, Copy, Debug)]
pub struct RewriteOptions {
    /// Only packs whose ID starts with this (quick maintenance: `q`).
    pub pack_prefix: Option<&'static str>,
    /// Only contents with a prefixed ID (quick maintenance).
    pub prefixed_only: bool,
}

impl RewriteOptions {
    pub fn full() -> Self {
        RewriteOptions {
            pack_prefix: None,
            prefixed_only: false,
        }
    }

    pub fn quick() -> Self {
        RewriteOptions {
            pack_prefix: Some("q"),
            prefixed_only: true,
        }
    }

    fn selects(&self, e: &IndexEntry) -> bool {
        (!self.prefixed_only || e.content_id.has_prefix())
            && self
                .pack_prefix
                .is_none_or(|p| e.pack_blob_id.starts_with(p))
    }
}

#[derive(Default)]
struct PackUsage {
    /// Packed bytes of every indexed content (kopia's measure).
    total: u64,
    /// Packed bytes of the contents that remain indexed after this run.
    retained: u64,
}

/// Rewrites what [`candidate_packs`] selects. `dropped` tells which (deleted) entries this run
/// will drop from the index. Flushes every [`FLUSH_EVERY_REWRITTEN`] copies and at the end.
pub async fn rewrite_contents(
    repo: &Repository,
    opts: RewriteOptions,
    safety: &SafetyParameters,
    now: DateTime<Utc>,
    dropped: impl Fn(&IndexEntry) -> bool,
) -> Result<Option<TaskStats>> {
    let threshold = (repo.crypto().max_pack_size() * SHORT_PACK_PERCENT / 100) as u64;
    let mut usage: HashMap<Arc<str>, PackUsage> = HashMap::new();
    for e in repo
        .contents()
        .index_snapshot()
        .iter()
        .filter(|e| opts.selects(e))
    {
        let u = usage.entry(e.pack_blob_id.clone()).or_default();
        u.total += u64::from(e.packed_length);
        if !dropped(&e) {
            u.retained += u64::from(e.packed_length);
        }
    }
    let packs = candidate_packs(usage, threshold);
    let mut stats = RewriteContentsStats::default();
    if packs.is_empty() {
        return Ok(Some(TaskStats::RewriteContents(stats)));
    }

    let min_age = safety.rewrite_min_age;
    // Batches chosen on a fresh view each, released before copying: the flushed copies then
    // fold into the index's table in place rather than into a copy of it. A batch resumes
    // after the last content chosen; copies only change what precedes it.
    let mut after: Option<ContentId> = None;
    loop {
        let mut to_copy = Vec::new();
        let mut resume = None;
        {
            let view = repo.contents().index_snapshot();
            let candidates = view
                .iter_after(after.as_ref())
                .filter(|e| opts.selects(e) && packs.contains_key(&e.pack_blob_id) && !dropped(e));
            for e in candidates {
                if now - DateTime::from_timestamp(e.timestamp_seconds, 0).unwrap_or(now) < min_age {
                    stats.retained_content_count += 1;
                    stats.retained_content_size += i64::from(e.packed_length);
                    continue;
                }
                stats.to_rewrite_content_count += 1;
                stats.to_rewrite_content_size += i64::from(e.packed_length);
                to_copy.push((e.content_id, e.packed_length));
                if to_copy.len() as u64 >= FLUSH_EVERY_REWRITTEN {
                    resume = Some(e.content_id);
                    break;
                }
            }
        }
        let mut rest = to_copy.as_slice();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at(rest.len().min(COPY_BATCH));
            copy_batch(repo, batch.to_vec(), &mut stats).await?;
            rest = tail;
        }
        repo.contents().flush().await?;
        match resume {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    Ok(Some(TaskStats::RewriteContents(stats)))
}

async fn copy_batch(
    repo: &Repository,
    batch: Vec<(ContentId, u32)>,
    stats: &mut RewriteContentsStats,
) -> Result<()> {
    // Each copy is a task of its own: checking contents (decrypt, decompress) then runs on
    // every core instead of on the one polling the stream.
    let budget = Arc::new(tokio::sync::Semaphore::new(REWRITE_KIB_IN_FLIGHT as usize));
    let copies: Vec<(ContentId, u32, Result<()>)> = futures::stream::iter(batch)
        .map(|(id, len)| {
            let contents = repo.contents().clone();
            let budget = budget.clone();
            async move {
                let kib = len.div_ceil(1024).clamp(1, REWRITE_KIB_IN_FLIGHT);
                let copied = tokio::spawn(async move {
                    let _held = budget.acquire_many_owned(kib).await;
                    contents.rewrite_content(&id, false).await
                })
                .await
                .unwrap_or_else(|e| Err(RepoError::Other(format!("copy task failed: {e}"))));
                (id, len, copied)
            }
        })
        .buffer_unordered(REWRITE_PARALLELISM)
        .collect()
        .await;
    let mut failed = Vec::new();
    for (id, len, r) in copies {
        match r {
            Ok(()) => {
                stats.rewritten_content_count += 1;
                stats.rewritten_content_size += i64::from(len);
            }
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(first) => Err(RepoError::Other(format!(
            "failed to rewrite {} contents (first: {first})",
            failed.len()
        ))),
    }
}

/// The packs worth rewriting: under the short-pack threshold by what they keep. Of a lone
/// candidate of its kind (`p`/`q`), rewriting pays only if it reclaims something.
fn candidate_packs(
    usage: HashMap<Arc<str>, PackUsage>,
    threshold: u64,
) -> HashMap<Arc<str>, PackUsage> {
    let mut short: HashMap<Arc<str>, PackUsage> = usage
        .into_iter()
        .filter(|(_, u)| u.retained < threshold)
        .collect();
    let mut per_kind: HashMap<char, usize> = HashMap::new();
    for id in short.keys() {
        *per_kind
            .entry(id.chars().next().unwrap_or(' '))
            .or_default() += 1;
    }
    short.retain(|id, u| {
        let kind = id.chars().next().unwrap_or(' ');
        per_kind[&kind] > 1 || u.retained < u.total
    });
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(items: &[(&str, u64, u64)]) -> HashMap<Arc<str>, PackUsage> {
        items
            .iter()
            .map(|(id, total, retained)| {
                (
                    Arc::from(*id),
                    PackUsage {
                        total: *total,
                        retained: *retained,
                    },
                )
            })
            .collect()
    }

    fn names(m: &HashMap<Arc<str>, PackUsage>) -> Vec<String> {
        let mut v: Vec<String> = m.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn candidates() {
        // One short p pack with nothing to reclaim stays; two short q packs both go.
        let c = candidate_packs(
            usage(&[("p1", 10, 10), ("q1", 5, 5), ("q2", 7, 7), ("p2", 100, 100)]),
            60,
        );
        assert_eq!(names(&c), ["q1", "q2"]);
        // A full pack that is mostly dead qualifies; so does a lone short one that reclaims.
        let c = candidate_packs(usage(&[("p1", 100, 20), ("q1", 10, 4)]), 60);
        assert_eq!(names(&c), ["p1", "q1"]);
        // Mostly live full packs never do.
        let c = candidate_packs(usage(&[("p1", 100, 70), ("p2", 100, 61)]), 60);
        assert!(c.is_empty());
    }
}
