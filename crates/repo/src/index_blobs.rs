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

async fn epoch_active_set(store: &DynBlobStore) -> Result<ActiveIndexSet> {
    let (markers, watermarks, singles, ranges) = futures::try_join!(
        store.list("xe"),
        store.list("xw"),
        store.list("xs"),
        store.list("xr")
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
    let singles = epoch::first_complete_set_per_epoch(&singles, blob_id);
    let ranges: BTreeMap<(u64, u64), Vec<&BlobMetadata>> =
        epoch::first_complete_set_per_range(&ranges, blob_id)
            .into_iter()
            .map(|r| ((r.min_epoch, r.max_epoch), r.blobs))
            .collect();

    let range_keys: Vec<(u64, u64)> = ranges.keys().copied().collect();
    let mut blobs = Vec::new();
    let mut start = 0u64;
    for (min, max) in epoch::longest_range_chain(&range_keys) {
        if max > start {
            blobs.extend(ranges[&(min, max)].iter().map(|b| (*b).clone()));
            start = max + 1;
        }
    }
    let settled = |e: u64| e + 2 <= write_epoch;
    for e in start..=write_epoch + 1 {
        match singles.get(&e) {
            Some(set) if settled(e) => blobs.extend(set.iter().map(|b| (*b).clone())),
            _ => blobs.extend(store.list(&epoch::uncompacted_index_prefix(e)).await?),
        }
    }
    Ok(ActiveIndexSet {
        blobs,
        watermark,
        write_epoch,
    })
}

async fn legacy_active_set(store: &DynBlobStore, crypto: &RepoCrypto) -> Result<ActiveIndexSet> {
    let (n_blobs, m_blobs) = futures::try_join!(store.list("n"), store.list("m"))?;
    let mut logs = Vec::with_capacity(m_blobs.len());
    for m in &m_blobs {
        let plain = crypto.decrypt_blob(&m.id, &store.get(&m.id).await?)?;
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
