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
/// Neighbouring contents of a pack are read together, in reads of up to this many bytes: one
/// read per content made a cold repository's rewrite wait on thousands of small disk reads.
const MAX_SPAN: u64 = 4 << 20;
/// Span reads in flight (their copies run meanwhile, on every core).
const SPANS_IN_FLIGHT: usize = 4;

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
                to_copy.push(e.clone());
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
    batch: Vec<IndexEntry>,
    stats: &mut RewriteContentsStats,
) -> Result<()> {
    let copies: Vec<Vec<(ContentId, u32, Result<()>)>> = futures::stream::iter(spans(batch))
        .map(|span| copy_span(repo, span))
        .buffer_unordered(SPANS_IN_FLIGHT)
        .collect()
        .await;
    let mut failed = Vec::new();
    for (id, len, r) in copies.into_iter().flatten() {
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

/// Contents of one pack lying within [`MAX_SPAN`] bytes, read together.
struct Span {
    pack: Arc<str>,
    start: u64,
    end: u64,
    entries: Vec<IndexEntry>,
}

fn spans(mut entries: Vec<IndexEntry>) -> Vec<Span> {
    entries.sort_unstable_by(|a, b| {
        (&a.pack_blob_id, a.pack_offset).cmp(&(&b.pack_blob_id, b.pack_offset))
    });
    let mut spans: Vec<Span> = Vec::new();
    for e in entries {
        let (start, end) = (
            u64::from(e.pack_offset),
            u64::from(e.pack_offset) + u64::from(e.packed_length),
        );
        match spans.last_mut() {
            Some(s) if s.pack == e.pack_blob_id && end.max(s.end) - s.start <= MAX_SPAN => {
                s.end = s.end.max(end);
                s.entries.push(e);
            }
            _ => spans.push(Span {
                pack: e.pack_blob_id.clone(),
                start,
                end,
                entries: vec![e],
            }),
        }
    }
    spans
}

/// Copies a span's contents from one read of it. If that read fails, each content is read on
/// its own, so a failure names the contents it concerns.
async fn copy_span(repo: &Repository, span: Span) -> Vec<(ContentId, u32, Result<()>)> {
    let bytes = repo
        .store()
        .get_range(&span.pack, span.start, span.end - span.start)
        .await
        .ok()
        .filter(|b| b.len() as u64 == span.end - span.start)
        .map(Arc::new);
    // Each copy is a task of its own: checking contents (decrypt, decompress) then runs on
    // every core instead of on the one polling the stream.
    let copies: Vec<_> = span
        .entries
        .into_iter()
        .map(|e| {
            let contents = repo.contents().clone();
            let bytes = bytes.clone();
            let start = span.start;
            let (id, len) = (e.content_id, e.packed_length);
            let copy = tokio::spawn(async move {
                let at = (u64::from(e.pack_offset) - start) as usize;
                let fetched = bytes
                    .as_deref()
                    .map(|b| (&e, &b[at..at + e.packed_length as usize]));
                contents
                    .rewrite_content_using(&e.content_id, false, fetched)
                    .await
            });
            (id, len, copy)
        })
        .collect();
    let mut done = Vec::with_capacity(copies.len());
    for (id, len, copy) in copies {
        let r = copy
            .await
            .unwrap_or_else(|e| Err(RepoError::Other(format!("copy task failed: {e}"))));
        done.push((id, len, r));
    }
    done
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

    #[test]
    fn neighbours_in_a_pack_share_a_read() {
        let entry = |pack: &str, offset: u32, len: u32, n: u8| IndexEntry {
            content_id: ContentId::from_hash(None, &[n; 16]).unwrap(),
            timestamp_seconds: 0,
            deleted: false,
            pack_blob_id: Arc::from(pack),
            pack_offset: offset,
            packed_length: len,
            original_length: len,
            compression_header_id: 0,
            format_version: 2,
            encryption_key_id: 0,
        };
        let max = MAX_SPAN as u32;
        let got = spans(vec![
            entry("p2", 100, 10, 1),
            entry("p1", 5000, 100, 2),
            entry("p1", 0, 100, 3),
            entry("p1", max - 50, 50, 4),
            entry("p1", max, 10, 5),
            entry("p1", max + 10, max + 1, 6),
        ]);
        let shape: Vec<(&str, u64, u64, usize)> = got
            .iter()
            .map(|s| (&*s.pack, s.start, s.end, s.entries.len()))
            .collect();
        let max = MAX_SPAN;
        assert_eq!(
            shape,
            [
                // Up to MAX_SPAN bytes of one pack, in offset order, read together...
                ("p1", 0, max, 3),
                // ...then a new read; a content larger than a span is read alone.
                ("p1", max, max + 10, 1),
                ("p1", max + 10, 2 * max + 11, 1),
                ("p2", 100, 110, 1),
            ]
        );
        let offsets: Vec<u32> = got[0].entries.iter().map(|e| e.pack_offset).collect();
        assert_eq!(offsets, [0, 5000, max as u32 - 50]);
    }
}
