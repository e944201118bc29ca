//! The merged view over every loaded index blob plus the index shards this process flushed since:
//! a lookup picks kopia's merge winner (newest, then live over deleted, then greater pack ID) and
//! hides deleted entries at or before the deletion watermark.
//!
//! The blobs loaded together are merged once into a [`CompactIndex`] (about 38 bytes per content,
//! winners only), so a lookup costs the same however many index blobs the repository has. Indexes
//! that arrive later (own flushes, a refresh) are probed beside it until there are a few, then
//! folded in. Cloning is cheap (shared tables), which lets long iterations run over a stable
//! snapshot while writers keep flushing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kmover_blob::DynBlobStore;
use kmover_format::ContentId;
use kmover_format::blobcrypto::decrypt_blob_in_place;
use kmover_format::index::merge::merge_sorted;
use kmover_format::index::{Index, IndexEntry, is_greater};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compact_index::{CompactBuilder, CompactIndex};
use crate::crypto::RepoCrypto;
use crate::error::{RepoError, Result};
use crate::index_blobs::{self, ActiveIndexSet};

/// Index blobs fetched at once while loading.
const INDEX_FETCH_PARALLELISM: usize = 16;
/// Encrypted index bytes in flight while loading, so a few huge shards do not all sit in memory
/// twice (ciphertext and plaintext) at the same time. One blob is always allowed.
const FETCH_BUDGET_BYTES: usize = 64 << 20;
const FETCH_BUDGET_UNIT: usize = 64 << 10;
/// Attempts at loading when an index blob vanishes between listing and fetching (compaction).
const LOAD_ATTEMPTS: u32 = 10;
/// Indexes probed beside the merged table before they are folded into it: each one adds a
/// binary search to every lookup, a fold costs one pass over the table.
const MAX_UNMERGED: usize = 4;
/// Against a large table, small flushes (a GC's batches of deletions) stay unmerged up to this
/// many, while their entries are under a tenth of the table's: every fold copies the whole table.
const MAX_UNMERGED_BESIDE_LARGE_TABLE: usize = 32;

/// One parsed index: a stored blob, or a shard this process flushed (`blob_id` is then `None`).
#[derive(Debug)]
pub struct LoadedIndex {
    pub blob_id: Option<String>,
    pub index: Index,
}

#[derive(Clone, Default)]
pub struct CommittedIndex {
    /// Winners of every index merged so far.
    table: Arc<CompactIndex>,
    /// The stored index blobs merged into `table`.
    table_blobs: Arc<[String]>,
    /// Whether `table` also holds indexes without a blob ID (then it cannot be reused on reload).
    table_has_unnamed: bool,
    /// Indexes added after `table` was built, probed beside it.
    recent: Vec<Arc<LoadedIndex>>,
    /// Unix seconds: deleted entries at or before it are treated as absent.
    watermark: Option<i64>,
}

impl CommittedIndex {
    pub async fn load(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<(Self, ActiveIndexSet)> {
        Self::load_reusing(store, crypto, &CommittedIndex::default()).await
    }

    /// A view over `indexes` (already parsed), merged into one table.
    pub fn from_indexes(indexes: Vec<LoadedIndex>, watermark: Option<i64>) -> Result<Self> {
        let mut builder = CompactBuilder::new();
        let mut blobs = Vec::new();
        let mut has_unnamed = false;
        for loaded in &indexes {
            builder.add_index(&loaded.index)?;
            match &loaded.blob_id {
                Some(id) => blobs.push(id.clone()),
                None => has_unnamed = true,
            }
        }
        Ok(CommittedIndex {
            table: Arc::new(builder.finish()?),
            table_blobs: blobs.into(),
            table_has_unnamed: has_unnamed,
            recent: Vec::new(),
            watermark,
        })
    }

    /// Loads the current index set. Index blobs never change, so when every blob merged into
    /// `previous` is still part of the set, its table is kept and only the new blobs are fetched;
    /// after a compaction removed some, everything is merged again.
    pub async fn load_reusing(
        store: &DynBlobStore,
        crypto: &RepoCrypto,
        previous: &CommittedIndex,
    ) -> Result<(Self, ActiveIndexSet)> {
        let mut delay = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let set = index_blobs::active_index_set(store, crypto).await?;
            match Self::load_set(store, crypto, &set, previous).await {
                Ok(ci) => return Ok((ci, set)),
                Err(RepoError::Blob(e)) if e.is_not_found() && attempt < LOAD_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn load_set(
        store: &DynBlobStore,
        crypto: &RepoCrypto,
        set: &ActiveIndexSet,
        previous: &CommittedIndex,
    ) -> Result<Self> {
        let active: HashSet<&str> = set.blobs.iter().map(|b| b.id.as_str()).collect();
        let known: HashMap<&str, &Arc<LoadedIndex>> = previous
            .recent
            .iter()
            .filter_map(|l| l.blob_id.as_deref().map(|id| (id, l)))
            .collect();
        // A first load has no table to reuse: it takes the streaming path below.
        let reuse_table = !previous.table_has_unnamed
            && !previous.table_blobs.is_empty()
            && previous
                .table_blobs
                .iter()
                .all(|id| active.contains(id.as_str()));
        if reuse_table {
            let merged: HashSet<&str> = previous.table_blobs.iter().map(String::as_str).collect();
            let missing: Vec<(String, u64)> = set
                .blobs
                .iter()
                .filter(|b| !merged.contains(b.id.as_str()))
                .map(|b| (b.id.clone(), b.length))
                .collect();
            if missing.len() > MAX_UNMERGED {
                // Too many to probe beside the table: merged into a copy of it as they arrive,
                // rather than all parsed first and folded after.
                let mut builder = CompactBuilder::new();
                builder.add_compact(&previous.table)?;
                let mut blobs = previous.table_blobs.to_vec();
                let stream = fetch_stream(store, crypto, missing, &known);
                add_streamed(&mut builder, &mut blobs, stream).await?;
                let mut table = builder.finish()?;
                table.inherit_layout(previous.table.layout(), previous.table.len());
                return Ok(CommittedIndex {
                    table: Arc::new(table),
                    table_blobs: blobs.into(),
                    table_has_unnamed: false,
                    recent: Vec::new(),
                    watermark: set.watermark,
                });
            }
            // Collected: the budget is released as each blob arrives.
            let recent = fetch_stream(store, crypto, missing, &known)
                .map_ok(|(loaded, _budget)| loaded)
                .try_collect::<Vec<_>>()
                .await?;
            let mut ci = CommittedIndex {
                table: Arc::clone(&previous.table),
                table_blobs: Arc::clone(&previous.table_blobs),
                table_has_unnamed: false,
                recent,
                watermark: set.watermark,
            };
            ci.fold_if_needed()?;
            return Ok(ci);
        }
        // Each index is merged as it arrives and then dropped, so only the table and the blobs
        // in flight are in memory.
        let all = set.blobs.iter().map(|b| (b.id.clone(), b.length)).collect();
        let mut builder = CompactBuilder::new();
        let mut blobs = Vec::with_capacity(set.blobs.len());
        add_streamed(
            &mut builder,
            &mut blobs,
            fetch_stream(store, crypto, all, &known),
        )
        .await?;
        Ok(CommittedIndex {
            table: Arc::new(builder.finish()?),
            table_blobs: blobs.into(),
            table_has_unnamed: false,
            recent: Vec::new(),
            watermark: set.watermark,
        })
    }

    /// Merges the recent indexes into the table once there are too many to probe one by one:
    /// in place when no other view shares the table, else into a copy.
    fn fold_if_needed(&mut self) -> Result<()> {
        if self.recent.len() <= MAX_UNMERGED {
            return Ok(());
        }
        if let Some(table) = Arc::get_mut(&mut self.table) {
            // Folded indexes leave `recent` even on error: the table then holds only winners
            // still, and the blobs stay listed, so a reload merges them again.
            let result = table.fold_in_place(self.recent.iter().map(|l| &l.index));
            let mut blobs = self.table_blobs.to_vec();
            for loaded in self.recent.drain(..) {
                match &loaded.blob_id {
                    Some(id) => blobs.push(id.clone()),
                    None => self.table_has_unnamed = true,
                }
            }
            self.table_blobs = blobs.into();
            return result;
        }
        let recent_entries: usize = self.recent.iter().map(|l| l.index.len()).sum();
        if self.recent.len() <= MAX_UNMERGED_BESIDE_LARGE_TABLE
            && recent_entries * 10 < self.table.len()
        {
            return Ok(());
        }
        let mut builder = CompactBuilder::new();
        builder.add_compact(&self.table)?;
        let mut blobs = self.table_blobs.to_vec();
        for loaded in &self.recent {
            builder.add_index(&loaded.index)?;
            match &loaded.blob_id {
                Some(id) => blobs.push(id.clone()),
                None => self.table_has_unnamed = true,
            }
        }
        let mut table = builder.finish()?;
        table.inherit_layout(self.table.layout(), self.table.len());
        self.table = Arc::new(table);
        self.table_blobs = blobs.into();
        self.recent.clear();
        Ok(())
    }

    /// The merge winner for `id`, including deleted entries (not yet hidden by the watermark).
    pub fn lookup_including_deleted(&self, id: &ContentId) -> Option<IndexEntry> {
        let mut best = self.table.lookup(id);
        for loaded in &self.recent {
            if let Some(e) = loaded.index.lookup(id)
                && best.as_ref().is_none_or(|b| is_greater(&e, b))
            {
                best = Some(e);
            }
        }
        best.filter(|e| !self.hidden_by_watermark(e))
    }

    pub fn hidden_by_watermark(&self, e: &IndexEntry) -> bool {
        e.deleted && self.watermark.is_some_and(|w| e.timestamp_seconds <= w)
    }

    /// Adds an index blob this process just wrote, so its entries are visible at once.
    pub fn add_own(&mut self, blob_id: Option<String>, index: Index) {
        if index.is_empty() {
            return;
        }
        self.recent.push(Arc::new(LoadedIndex { blob_id, index }));
        if let Err(e) = self.fold_if_needed() {
            // Folding fails only past the table's limits; probing the recent indexes one by one
            // stays correct, just slower.
            tracing::warn!("index entries stay unmerged: {e}");
        }
    }

    /// Every content's winning entry in content-ID order, deleted ones included unless the
    /// watermark hides them. Streams: nothing is collected.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        self.iter_after(None)
    }

    /// Like [`CommittedIndex::iter`], from the first content ID greater than `after`: a long
    /// pass can release its view between batches and resume on a fresh one.
    pub fn iter_after(&self, after: Option<&ContentId>) -> impl Iterator<Item = IndexEntry> + '_ {
        let after = after.copied();
        let visible = |e: &IndexEntry| !self.hidden_by_watermark(e);
        if self.recent.is_empty() {
            return Box::new(self.table.iter_after(after.as_ref()).filter(visible))
                as Box<dyn Iterator<Item = IndexEntry> + '_>;
        }
        let mut sources: Vec<Box<dyn Iterator<Item = IndexEntry> + '_>> =
            vec![Box::new(self.table.iter_after(after.as_ref()))];
        sources.extend(self.recent.iter().map(|l| {
            Box::new(
                l.index
                    .iter()
                    .skip_while(move |e| after.is_some_and(|a| e.content_id <= a)),
            ) as Box<dyn Iterator<Item = IndexEntry>>
        }));
        Box::new(merge_sorted(sources).filter(visible))
    }

    /// Where `id` is in the merged table (see [`CompactIndex::position`]); `None` for contents
    /// only in indexes not merged yet.
    pub fn table_position(&self, id: &ContentId) -> Option<usize> {
        self.table.position(id)
    }

    /// The merged table's [`CompactIndex::layout`] and size: positions stay valid while the
    /// layout does.
    pub fn table_layout(&self) -> (u64, usize) {
        (self.table.layout(), self.table.len())
    }

    /// Whether every entry is in the merged table (none in indexes probed beside it).
    pub fn is_fully_merged(&self) -> bool {
        self.recent.is_empty()
    }

    /// Every content's winning entry in content-ID order, collected.
    pub fn merged_entries(&self) -> Vec<IndexEntry> {
        self.iter().collect()
    }

    pub fn index_blob_ids(&self) -> impl Iterator<Item = &str> {
        self.table_blobs
            .iter()
            .map(String::as_str)
            .chain(self.recent.iter().filter_map(|l| l.blob_id.as_deref()))
    }

    /// The parsed index of stored blob `blob_id`, if this view still holds it as such (blobs
    /// merged into the table are not kept: callers fetch those).
    pub fn loaded(&self, blob_id: &str) -> Option<Arc<LoadedIndex>> {
        self.recent
            .iter()
            .find(|l| l.blob_id.as_deref() == Some(blob_id))
            .cloned()
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Entries held: one per content in the merged table, plus every entry of the indexes not
    /// merged yet (a content in several counts once per index).
    pub fn total_entries(&self) -> usize {
        self.table.len() + self.recent.iter().map(|l| l.index.len()).sum::<usize>()
    }

    /// Bytes of index data held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
            + self
                .recent
                .iter()
                .map(|l| l.index.as_bytes().len())
                .sum::<usize>()
    }
}

/// Adds every index of `stream` to `builder` (noting its blob in `blobs`) as it arrives, then
/// drops it with its share of the fetch budget.
async fn add_streamed(
    builder: &mut CompactBuilder,
    blobs: &mut Vec<String>,
    stream: impl futures::Stream<Item = Result<(Arc<LoadedIndex>, Option<OwnedSemaphorePermit>)>>,
) -> Result<()> {
    let mut stream = std::pin::pin!(stream);
    while let Some((loaded, budget)) = stream.try_next().await? {
        builder.add_index(&loaded.index)?;
        blobs.extend(loaded.blob_id.clone());
        // Only now may further blobs take its place in memory.
        drop((loaded, budget));
    }
    Ok(())
}

/// Fetches, decrypts and parses `blobs` (reusing `known` ones), in order, with bounded memory:
/// each fetched index comes with its share of the byte budget, which the consumer holds until it
/// is done with the index (parsed indexes waiting in order count against the budget too).
fn fetch_stream<'a>(
    store: &'a DynBlobStore,
    crypto: &'a RepoCrypto,
    blobs: Vec<(String, u64)>,
    known: &'a HashMap<&str, &Arc<LoadedIndex>>,
) -> impl futures::Stream<Item = Result<(Arc<LoadedIndex>, Option<OwnedSemaphorePermit>)>> + 'a {
    let budget = Arc::new(Semaphore::new(FETCH_BUDGET_BYTES / FETCH_BUDGET_UNIT));
    futures::stream::iter(blobs)
        .map(move |(id, length)| {
            let budget = Arc::clone(&budget);
            async move {
                if let Some(loaded) = known.get(id.as_str()) {
                    return Ok((Arc::clone(loaded), None));
                }
                let units = (length as usize)
                    .div_ceil(FETCH_BUDGET_UNIT)
                    .clamp(1, FETCH_BUDGET_BYTES / FETCH_BUDGET_UNIT);
                let permit = budget
                    .acquire_many_owned(units as u32)
                    .await
                    .expect("the semaphore is never closed");
                let data = store.get(&id).await?;
                let plain = decrypt_blob_in_place(&crypto.encryptor, &id, data)
                    .map_err(|e| RepoError::corrupt_blob(&id, e))?;
                let index = crypto.parse_index(&id, plain)?;
                let loaded = Arc::new(LoadedIndex {
                    blob_id: Some(id),
                    index,
                });
                Ok::<_, RepoError>((loaded, Some(permit)))
            }
        })
        .buffered(INDEX_FETCH_PARALLELISM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmover_format::index::IndexBuilder;

    fn entry(id: &str, ts: i64, pack: &str, deleted: bool) -> IndexEntry {
        IndexEntry {
            content_id: ContentId::parse(id).unwrap(),
            timestamp_seconds: ts,
            deleted,
            pack_blob_id: pack.into(),
            pack_offset: 32,
            packed_length: 100,
            original_length: 72,
            compression_header_id: 0,
            format_version: 2,
            encryption_key_id: 0,
        }
    }

    fn index(entries: &[IndexEntry]) -> Index {
        let mut b = IndexBuilder::new();
        for e in entries {
            b.add(e.clone());
        }
        Index::parse(b.build(2).unwrap(), 28).unwrap()
    }

    #[test]
    fn merged_view_picks_winners_and_applies_the_watermark() {
        let mut ci = CommittedIndex {
            watermark: Some(50),
            ..CommittedIndex::default()
        };
        ci.add_own(
            None,
            index(&[
                entry("aa11", 10, "p1", false),
                entry("bb22", 10, "p1", false),
                entry("cc33", 10, "p1", false),
            ]),
        );
        ci.add_own(
            None,
            index(&[
                entry("aa11", 40, "p1", true),
                entry("bb22", 60, "p1", true),
                entry("dd44", 11, "p2", false),
            ]),
        );
        let id = |s| ContentId::parse(s).unwrap();
        // Deleted at 40, under the watermark: gone.
        assert_eq!(ci.lookup_including_deleted(&id("aa11")), None);
        assert!(ci.lookup_including_deleted(&id("bb22")).unwrap().deleted);
        assert!(!ci.lookup_including_deleted(&id("cc33")).unwrap().deleted);
        let listed: Vec<(String, bool)> = ci
            .iter()
            .map(|e| (e.content_id.to_string(), e.deleted))
            .collect();
        assert_eq!(
            listed,
            [
                ("bb22".to_string(), true),
                ("cc33".to_string(), false),
                ("dd44".to_string(), false)
            ]
        );
        assert_eq!(ci.total_entries(), 6);
        assert_eq!(ci.index_blob_ids().count(), 0);
    }

    #[test]
    fn small_flushes_beside_a_large_table_fold_only_in_bulk() {
        let mut ci = CommittedIndex::default();
        let large: Vec<IndexEntry> = (0..2000u32)
            .map(|i| entry(&format!("{i:08x}"), 10, "pbig", false))
            .collect();
        for chunk in large.chunks(400) {
            ci.add_own(None, index(chunk));
        }
        assert_eq!(ci.table.len(), 2000, "the first flushes fold as usual");
        // A GC deleting in small batches while a view shares the table: each fold would copy
        // all 2000 entries.
        let shared = ci.clone();
        for batch in 0..MAX_UNMERGED_BESIDE_LARGE_TABLE {
            let deleted = entry(&format!("{batch:08x}"), 20, "pbig", true);
            ci.add_own(None, index(&[deleted]));
        }
        assert_eq!(ci.recent.len(), MAX_UNMERGED_BESIDE_LARGE_TABLE);
        let first = ContentId::parse("00000000").unwrap();
        assert!(ci.lookup_including_deleted(&first).unwrap().deleted);
        ci.add_own(None, index(&[entry("ffffffff", 30, "p2", false)]));
        assert!(ci.recent.is_empty(), "folded once there were too many");
        assert_eq!(ci.table.len(), 2001);
        assert!(ci.lookup_including_deleted(&first).unwrap().deleted);
        assert!(!shared.lookup_including_deleted(&first).unwrap().deleted);
        assert_ne!(
            ci.table_layout(),
            shared.table_layout(),
            "a content was added"
        );
    }

    #[test]
    fn an_unshared_table_folds_in_place_and_keeps_positions_for_updates() {
        let mut ci = CommittedIndex::default();
        let live: Vec<IndexEntry> = (0..1000u32)
            .map(|i| entry(&format!("{:08x}", i * 7), 10, "pbig", false))
            .collect();
        ci.add_own(Some("xn-live".into()), index(&live));
        for i in 0..MAX_UNMERGED {
            ci.add_own(None, index(&[entry(&format!("{i:08x}"), 1, "p0", false)]));
        }
        assert!(
            ci.recent.is_empty(),
            "an unshared table folds small indexes at once"
        );
        let layout = ci.table_layout();
        let table = Arc::as_ptr(&ci.table);
        let id = |i: u32| ContentId::parse(&format!("{:08x}", i * 7)).unwrap();
        let before: Vec<Option<usize>> = (0..1000).map(|i| ci.table_position(&id(i))).collect();
        // Deletions only: the same table, the same positions.
        for round in 0..=MAX_UNMERGED as u32 {
            let batch: Vec<IndexEntry> = (round * 100..round * 100 + 100)
                .map(|i| entry(&format!("{:08x}", i * 7), 20, "pbig", true))
                .collect();
            ci.add_own(Some(format!("xn-del{round}")), index(&batch));
        }
        assert!(ci.recent.is_empty());
        assert_eq!(Arc::as_ptr(&ci.table), table, "folded in place");
        assert_eq!(ci.table_layout(), layout);
        let after: Vec<Option<usize>> = (0..1000).map(|i| ci.table_position(&id(i))).collect();
        assert_eq!(before, after);
        assert!(ci.lookup_including_deleted(&id(3)).unwrap().deleted);
        assert!(!ci.lookup_including_deleted(&id(999)).unwrap().deleted);
        assert_eq!(ci.index_blob_ids().count(), 1 + MAX_UNMERGED + 1);
        // An older entry loses to the table's.
        for _ in 0..=MAX_UNMERGED {
            ci.add_own(
                None,
                index(&[entry(&format!("{:08x}", 999 * 7), 5, "pz", true)]),
            );
        }
        assert!(!ci.lookup_including_deleted(&id(999)).unwrap().deleted);
    }

    #[test]
    fn recent_indexes_fold_into_the_table_without_changing_the_view() {
        let mut ci = CommittedIndex {
            watermark: Some(50),
            ..CommittedIndex::default()
        };
        let mut before_fold = None;
        // Every round adds a newer version of "aa11" and one new content.
        for round in 0..=MAX_UNMERGED as i64 + 2 {
            let fresh = format!("{:02x}22", 0x10 + round);
            ci.add_own(
                Some(format!("xn{round}")),
                index(&[
                    entry("aa11", 10 + round, &format!("p{round}"), round == 3),
                    entry(&fresh, 10, "p1", false),
                ]),
            );
            if round == 0 {
                assert!(ci.loaded("xn0").is_some(), "held as parsed until folded");
            }
            if round == MAX_UNMERGED as i64 - 1 {
                before_fold = Some(ci.merged_entries());
            }
        }
        assert!(ci.recent.len() <= MAX_UNMERGED, "folded");
        assert!(
            ci.loaded("xn0").is_none(),
            "merged blobs are not kept parsed"
        );
        let ids: Vec<&str> = ci.index_blob_ids().collect();
        assert_eq!(
            ids.len(),
            MAX_UNMERGED + 3,
            "every blob is still listed: {ids:?}"
        );
        let aa = ci
            .lookup_including_deleted(&ContentId::parse("aa11").unwrap())
            .unwrap();
        assert_eq!(aa.timestamp_seconds, 10 + MAX_UNMERGED as i64 + 2);
        assert_eq!(&*aa.pack_blob_id, format!("p{}", MAX_UNMERGED + 2));
        let listed = ci.merged_entries();
        assert_eq!(listed.len(), MAX_UNMERGED + 4);
        // What was visible before the fold still is, except for newer versions of "aa11".
        for e in before_fold.unwrap() {
            if e.content_id != ContentId::parse("aa11").unwrap() {
                assert!(listed.contains(&e), "{e:?}");
            }
        }
    }
}
