//! The merged view over every loaded index blob plus the index shards this process flushed since:
//! a lookup picks kopia's merge winner (newest, then live over deleted, then greater pack ID) and
//! hides deleted entries at or before the deletion watermark.
//!
//! Indexes stay in their stored binary form (kopia's v1/v2 entries are 30–40 bytes), so memory is
//! proportional to the index size; merged iteration is a streaming k-way merge that allocates
//! nothing per content beyond the entry it yields. Cloning is cheap (shared indexes), which lets
//! long iterations run over a stable snapshot while writers keep flushing.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kmover_blob::DynBlobStore;
use kmover_format::ContentId;
use kmover_format::blobcrypto::decrypt_blob_in_place;
use kmover_format::index::merge::merge_sorted;
use kmover_format::index::{Index, IndexEntry, is_greater};
use tokio::sync::Semaphore;

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

/// One parsed index: a stored blob, or a shard this process flushed (`blob_id` is then `None`).
#[derive(Debug)]
pub struct LoadedIndex {
    pub blob_id: Option<String>,
    pub index: Index,
}

#[derive(Clone, Default)]
pub struct CommittedIndex {
    indexes: Vec<Arc<LoadedIndex>>,
    /// Unix seconds: deleted entries at or before it are treated as absent.
    watermark: Option<i64>,
}

impl CommittedIndex {
    pub async fn load(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<(Self, ActiveIndexSet)> {
        Self::load_reusing(store, crypto, &CommittedIndex::default()).await
    }

    /// Loads the current index set, taking the blobs `previous` already holds from it (index
    /// blobs never change), so a refresh fetches and decodes only what is new and never holds
    /// two copies of a large index.
    pub async fn load_reusing(
        store: &DynBlobStore,
        crypto: &RepoCrypto,
        previous: &CommittedIndex,
    ) -> Result<(Self, ActiveIndexSet)> {
        let known: HashMap<&str, &Arc<LoadedIndex>> = previous
            .indexes
            .iter()
            .filter_map(|l| l.blob_id.as_deref().map(|id| (id, l)))
            .collect();
        let mut delay = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let set = index_blobs::active_index_set(store, crypto).await?;
            match Self::fetch_all(store, crypto, &set, &known).await {
                Ok(indexes) => {
                    let ci = CommittedIndex {
                        indexes,
                        watermark: set.watermark,
                    };
                    return Ok((ci, set));
                }
                Err(RepoError::Blob(e)) if e.is_not_found() && attempt < LOAD_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_all(
        store: &DynBlobStore,
        crypto: &RepoCrypto,
        set: &ActiveIndexSet,
        known: &HashMap<&str, &Arc<LoadedIndex>>,
    ) -> Result<Vec<Arc<LoadedIndex>>> {
        let budget = Semaphore::new(FETCH_BUDGET_BYTES / FETCH_BUDGET_UNIT);
        let budget = &budget;
        futures::stream::iter(set.blobs.iter().map(|b| (b.id.clone(), b.length)))
            .map(|(id, length)| async move {
                if let Some(loaded) = known.get(id.as_str()) {
                    return Ok(Arc::clone(loaded));
                }
                let units = (length as usize)
                    .div_ceil(FETCH_BUDGET_UNIT)
                    .clamp(1, FETCH_BUDGET_BYTES / FETCH_BUDGET_UNIT);
                let _permit = budget
                    .acquire_many(units as u32)
                    .await
                    .expect("the semaphore is never closed");
                let data = store.get(&id).await?;
                let plain = decrypt_blob_in_place(&crypto.encryptor, &id, data)
                    .map_err(|e| RepoError::corrupt_blob(&id, e))?;
                let index = crypto.parse_index(&id, plain)?;
                Ok::<_, RepoError>(Arc::new(LoadedIndex {
                    blob_id: Some(id),
                    index,
                }))
            })
            .buffered(INDEX_FETCH_PARALLELISM)
            .try_collect()
            .await
    }

    /// The merge winner for `id`, including deleted entries (not yet hidden by the watermark).
    pub fn lookup_including_deleted(&self, id: &ContentId) -> Option<IndexEntry> {
        let mut best: Option<IndexEntry> = None;
        for loaded in &self.indexes {
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
        if !index.is_empty() {
            self.indexes.push(Arc::new(LoadedIndex { blob_id, index }));
        }
    }

    /// Every content's winning entry in content-ID order, deleted ones included unless the
    /// watermark hides them. Streams: nothing is collected.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        merge_sorted(self.indexes.iter().map(|l| l.index.iter()).collect())
            .filter(|e| !self.hidden_by_watermark(e))
    }

    /// Every content's winning entry in content-ID order, collected.
    pub fn merged_entries(&self) -> Vec<IndexEntry> {
        self.iter().collect()
    }

    pub fn index_blob_ids(&self) -> impl Iterator<Item = &str> {
        self.indexes.iter().filter_map(|l| l.blob_id.as_deref())
    }

    /// The loaded index of stored blob `blob_id`, if it is part of this view.
    pub fn loaded(&self, blob_id: &str) -> Option<Arc<LoadedIndex>> {
        self.indexes
            .iter()
            .find(|l| l.blob_id.as_deref() == Some(blob_id))
            .cloned()
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Entries across all loaded indexes (duplicates counted once per index).
    pub fn total_entries(&self) -> usize {
        self.indexes.iter().map(|l| l.index.len()).sum()
    }

    /// Bytes of index data held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.indexes.iter().map(|l| l.index.as_bytes().len()).sum()
    }
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
            indexes: Vec::new(),
            watermark: Some(50),
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
}
