//! Which index blobs make up the repository's index, and how a flush writes new ones: the epoch
//! manager (format v2/v3: `xn`/`xs`/`xr`/`xe`/`xw` blobs) or the legacy v0 manager (format v1: `n`
//! blobs and `m` compaction logs).

use std::collections::{BTreeMap, HashSet};

use kmover_blob::{BlobMetadata, DynBlobStore};
use kmover_format::epoch;

use crate::crypto::RepoCrypto;
use crate::error::{RepoError, Result};

/// The index blobs to load, and the deletion watermark to apply after merging them.
#[derive(Debug, Clone, Default)]
pub struct ActiveIndexSet {
    pub blobs: Vec<BlobMetadata>,
    /// Unix seconds: deleted entries at or before it are treated as absent.
    pub watermark: Option<i64>,
    /// The current write epoch (epoch manager only).
    pub write_epoch: u64,
}

pub async fn active_index_set(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<ActiveIndexSet> {
    if crypto.epoch_enabled() {
        epoch_active_set(store).await
    } else {
        legacy_active_set(store, crypto).await
    }
}

pub async fn current_write_epoch(store: &DynBlobStore) -> Result<u64> {
    let markers = store.list("xe").await?;
    Ok(markers
        .iter()
        .filter_map(|b| epoch::epoch_number_from_blob_id(&b.id))
        .max()
        .unwrap_or(0))
}

fn blob_id(b: &BlobMetadata) -> &str {
    &b.id
}

/// What the epoch manager's listing shows at one moment (kopia's `CurrentSnapshot`).
#[derive(Debug, Clone, Default)]
pub struct EpochState {
    pub write_epoch: u64,
    pub epoch_markers: Vec<BlobMetadata>,
    pub watermark_blobs: Vec<BlobMetadata>,
    /// Unix seconds: the greatest watermark.
    pub watermark: Option<i64>,
    /// Per epoch, the first complete single-epoch compaction set.
    pub single_epoch_sets: BTreeMap<u64, Vec<BlobMetadata>>,
    /// The longest chain of complete range checkpoint sets starting at epoch 0.
    pub range_chain: Vec<epoch::RangeSet<BlobMetadata>>,
    /// The uncompacted (`xn`) blobs of epochs W−1, W and W+1.
    pub uncompacted: BTreeMap<u64, Vec<BlobMetadata>>,
}

impl EpochState {
    pub async fn load(store: &DynBlobStore) -> Result<Self> {
        let (markers, watermarks, singles, ranges) = futures::try_join!(
            store.list(epoch::EPOCH_MARKER_PREFIX),
            store.list(epoch::DELETION_WATERMARK_PREFIX),
            store.list(epoch::SINGLE_EPOCH_COMPACTION_PREFIX),
            store.list(epoch::RANGE_CHECKPOINT_PREFIX)
        )?;
        let write_epoch = markers
            .iter()
            .filter_map(|b| epoch::epoch_number_from_blob_id(&b.id))
            .max()
            .unwrap_or(0);
        let watermark = watermarks
            .iter()
            .filter_map(|b| epoch::watermark_from_blob_id(&b.id))
            .max();
        let single_epoch_sets = epoch::first_complete_set_per_epoch(&singles, blob_id)
            .into_iter()
            .map(|(e, set)| (e, set.into_iter().cloned().collect()))
            .collect();
        let sets: Vec<epoch::RangeSet<BlobMetadata>> =
            epoch::first_complete_set_per_range(&ranges, blob_id)
                .into_iter()
                .map(|r| epoch::RangeSet {
                    min_epoch: r.min_epoch,
                    max_epoch: r.max_epoch,
                    blobs: r.blobs.into_iter().cloned().collect(),
                })
                .collect();
        let keys: Vec<(u64, u64)> = sets.iter().map(|r| (r.min_epoch, r.max_epoch)).collect();
        let range_chain = epoch::longest_range_chain(&keys)
            .into_iter()
            .filter_map(|k| {
                sets.iter()
                    .find(|r| (r.min_epoch, r.max_epoch) == k)
                    .cloned()
            })
            .collect();
        let mut uncompacted = BTreeMap::new();
        for e in write_epoch.saturating_sub(1)..=write_epoch + 1 {
            uncompacted.insert(e, store.list(&epoch::uncompacted_index_prefix(e)).await?);
        }
        Ok(EpochState {
            write_epoch,
            epoch_markers: markers,
            watermark_blobs: watermarks,
            watermark,
            single_epoch_sets,
            range_chain,
            uncompacted,
        })
    }

    pub fn is_settled(&self, e: u64) -> bool {
        epoch::is_settled(e, self.write_epoch)
    }

    /// The uncompacted blobs of epoch `e`, listing them if this state did not.
    pub async fn uncompacted_blobs(
        &self,
        store: &DynBlobStore,
        e: u64,
    ) -> Result<Vec<BlobMetadata>> {
        match self.uncompacted.get(&e) {
            Some(blobs) => Ok(blobs.clone()),
            None => Ok(store.list(&epoch::uncompacted_index_prefix(e)).await?),
        }
    }

    /// The index blobs that together hold every entry of epochs `min_epoch..=max_epoch`
    /// (kopia's `getCompleteIndexSetForCommittedState`).
    pub async fn index_set(
        &self,
        store: &DynBlobStore,
        min_epoch: u64,
        max_epoch: u64,
    ) -> Result<Vec<BlobMetadata>> {
        let mut blobs = Vec::new();
        let mut start = min_epoch;
        for r in &self.range_chain {
            if r.max_epoch > start {
                blobs.extend(r.blobs.iter().cloned());
                start = r.max_epoch + 1;
            }
        }
        for e in start..=max_epoch {
            match self.single_epoch_sets.get(&e) {
                Some(set) if self.is_settled(e) => blobs.extend(set.iter().cloned()),
                _ => blobs.extend(self.uncompacted_blobs(store, e).await?),
            }
        }
        Ok(blobs)
    }
}

async fn epoch_active_set(store: &DynBlobStore) -> Result<ActiveIndexSet> {
    let state = EpochState::load(store).await?;
    let blobs = state.index_set(store, 0, state.write_epoch + 1).await?;
    Ok(ActiveIndexSet {
        blobs,
        watermark: state.watermark,
        write_epoch: state.write_epoch,
    })
}

async fn legacy_active_set(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<ActiveIndexSet> {
    let (n_blobs, m_blobs) = futures::try_join!(store.list("n"), store.list("m"))?;
    let mut logs = Vec::with_capacity(m_blobs.len());
    for m in &m_blobs {
        // Maintenance may delete a settled compaction log between listing and reading it.
        let data = match store.get(&m.id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let plain = crypto.decrypt_blob(&m.id, &data)?;
        let log: epoch::CompactionLog =
            serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt_blob(&m.id, e))?;
        logs.push(log);
    }
    let ids: Vec<String> = n_blobs.iter().map(|b| b.id.clone()).collect();
    let active: HashSet<String> = epoch::active_legacy_index_blobs(&ids, &logs)
        .into_iter()
        .collect();
    let blobs = n_blobs
        .into_iter()
        .filter(|b| active.contains(&b.id))
        .collect();
    Ok(ActiveIndexSet {
        blobs,
        watermark: None,
        write_epoch: 0,
    })
}

/// Writes the shards of one flush and returns their blob IDs. Each shard is named after its
/// plaintext hash, with the session ID (and, for the epoch manager, the shard count) as suffix.
pub async fn write_index_shards(
    store: &DynBlobStore,
    crypto: &RepoCrypto,
    session_id: &str,
    shards: &[Vec<u8>],
) -> Result<Vec<String>> {
    if !crypto.epoch_enabled() {
        let mut ids = Vec::with_capacity(shards.len());
        for shard in shards {
            let (id, bytes) = crypto.encrypt_blob("n", session_id, shard);
            store.put(&id, bytes).await?;
            ids.push(id);
        }
        return Ok(ids);
    }
    let suffix = format!("{session_id}-c{}", shards.len());
    loop {
        let epoch = current_write_epoch(store).await?;
        let prefix = epoch::uncompacted_index_prefix(epoch);
        let mut ids = Vec::with_capacity(shards.len());
        for shard in shards {
            let (id, bytes) = crypto.encrypt_blob(&prefix, &suffix, shard);
            store.put(&id, bytes).await?;
            ids.push(id);
        }
        // If maintenance advanced the epoch twice meanwhile, our blobs may already be compacted
        // away unseen: remove them and write again into the current epoch.
        let now_epoch = current_write_epoch(store).await?;
        if now_epoch < epoch + 2 {
            return Ok(ids);
        }
        for id in &ids {
            store.delete(id).await?;
        }
    }
}
