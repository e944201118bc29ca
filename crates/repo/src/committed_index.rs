//! The merged view over every loaded index blob plus the entries this process flushed since: a
//! lookup picks kopia's merge winner (newest, then live over deleted, then greater pack ID) and
//! hides deleted entries at or before the deletion watermark.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kmover_blob::DynBlobStore;
use kmover_format::ContentId;
use kmover_format::index::{Index, IndexEntry, is_greater};

use crate::crypto::RepoCrypto;
use crate::error::{RepoError, Result};
use crate::index_blobs::{self, ActiveIndexSet};

/// Index blobs fetched at once while loading.
const INDEX_FETCH_PARALLELISM: usize = 16;
/// Attempts at loading when an index blob vanishes between listing and fetching (compaction).
const LOAD_ATTEMPTS: u32 = 10;

#[derive(Default)]
pub struct CommittedIndex {
    indexes: Vec<(String, Arc<Index>)>,
    /// Entries flushed by this process after loading.
    own: BTreeMap<ContentId, IndexEntry>,
    watermark: Option<i64>,
}

impl CommittedIndex {
    pub async fn load(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<(Self, ActiveIndexSet)> {
        let mut delay = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let set = index_blobs::active_index_set(store, crypto).await?;
            match Self::fetch_all(store, crypto, &set).await {
                Ok(indexes) => {
                    let ci = CommittedIndex {
                        indexes,
                        own: BTreeMap::new(),
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
    ) -> Result<Vec<(String, Arc<Index>)>> {
        futures::stream::iter(set.blobs.iter().map(|b| b.id.clone()))
            .map(|id| async move {
                let data = store.get(&id).await?;
                let plain = crypto.decrypt_blob(&id, &data)?;
                let index = crypto.parse_index(&id, plain)?;
                Ok::<_, RepoError>((id, Arc::new(index)))
            })
            .buffered(INDEX_FETCH_PARALLELISM)
            .try_collect()
            .await
    }

    /// The merge winner for `id`, including deleted entries (not yet hidden by the watermark).
    pub fn lookup_including_deleted(&self, id: &ContentId) -> Option<IndexEntry> {
        let mut best = self.own.get(id).cloned();
        for (_, index) in &self.indexes {
            if let Some(e) = index.lookup(id)
                && best.as_ref().is_none_or(|b| is_greater(&e, b))
            {
                best = Some(e);
            }
        }
        best.filter(|e| !self.hidden_by_watermark(e))
    }

    fn hidden_by_watermark(&self, e: &IndexEntry) -> bool {
        e.deleted && self.watermark.is_some_and(|w| e.timestamp_seconds <= w)
    }

    pub fn add_own(&mut self, entries: impl IntoIterator<Item = IndexEntry>) {
        for e in entries {
            match self.own.get(&e.content_id) {
                Some(old) if !is_greater(&e, old) => {}
                _ => {
                    self.own.insert(e.content_id, e);
                }
            }
        }
    }

    /// Every content's winning entry in content-ID order.
    pub fn merged_entries(&self) -> Vec<IndexEntry> {
        let mut all: BTreeMap<ContentId, IndexEntry> = self.own.clone();
        for (_, index) in &self.indexes {
            for e in index.iter() {
                match all.get(&e.content_id) {
                    Some(old) if !is_greater(&e, old) => {}
                    _ => {
                        all.insert(e.content_id, e);
                    }
                }
            }
        }
        all.into_values()
            .filter(|e| !self.hidden_by_watermark(e))
            .collect()
    }

    pub fn index_blob_ids(&self) -> impl Iterator<Item = &str> {
        self.indexes.iter().map(|(id, _)| id.as_str())
    }
}
