//! Index compaction of legacy (format v1, non-epoch) repositories, as kopia's v0 index manager
//! does it: merge index blobs into new `n` blobs, record the merge in an `m` compaction log (which
//! makes readers ignore the inputs), delete the inputs once that log has settled, and schedule the
//! logs themselves for deletion through `l` cleanup blobs. Deleted entries older than a cutoff are
//! dropped physically here, since legacy repositories have no deletion watermark.

use chrono::{DateTime, TimeDelta, Utc};
use kmover_blob::BlobMetadata;
use kmover_format::epoch::{
    CleanupEntry, CompactionLog, LEGACY_CLEANUP_PREFIX, LEGACY_COMPACTION_LOG_PREFIX,
    LegacyBlobMetadata,
};

use super::compaction::{OutputNaming, compact_index_blobs};
use super::schedule::TaskStats;
use crate::error::{RepoError, Result};
use crate::index_blobs;
use crate::repository::Repository;

/// Index blobs smaller than 1/20 of the maximum pack size are "very small".
const VERY_SMALL_FRACTION: u64 = 20;
/// How long other clients get to notice a compaction before its inputs go (kopia: 1 h).
const EVENTUAL_CONSISTENCY_SETTLE_TIME: TimeDelta = TimeDelta::hours(1);

#[derive(Clone, Copy, Debug)]
pub struct CompactOptions {
    /// Compact only when at least this many candidate blobs exist (0: always).
    pub max_small_blobs: usize,
    /// Include blobs larger than the maximum pack size.
    pub all_indexes: bool,
    /// Drop deleted entries older than this.
    pub drop_deleted_before: Option<DateTime<Utc>>,
    pub disable_eventual_consistency_safety: bool,
}

impl CompactOptions {
    fn settle_time(&self) -> TimeDelta {
        if self.disable_eventual_consistency_safety {
            TimeDelta::zero()
        } else {
            EVENTUAL_CONSISTENCY_SETTLE_TIME
        }
    }
}

fn to_legacy(b: &BlobMetadata) -> LegacyBlobMetadata {
    LegacyBlobMetadata {
        id: b.id.clone(),
        length: b.length as i64,
        timestamp: b.timestamp,
    }
}

pub async fn compact_indexes(repo: &Repository, opts: CompactOptions) -> Result<Option<TaskStats>> {
    let active = index_blobs::active_index_set(repo.store(), repo.crypto()).await?;
    let max_pack = repo.crypto().max_pack_size() as u64;
    let inputs = blobs_to_compact(&active.blobs, &opts, max_pack);
    let compacted = compact_blobs(repo, &inputs, &opts).await?;
    cleanup(repo, opts.settle_time()).await?;
    repo.contents().refresh().await?;
    Ok(compacted.then(|| TaskStats::CompactIndexes {
        dropped_contents_deleted_before: opts
            .drop_deleted_before
            .unwrap_or_else(kmover_format::gotime::zero),
    }))
}

/// kopia's `getBlobsToCompact`: when enough candidates exist, the very small ones if they are
/// the majority, else all of them.
fn blobs_to_compact(
    blobs: &[BlobMetadata],
    opts: &CompactOptions,
    max_pack: u64,
) -> Vec<BlobMetadata> {
    let candidates: Vec<&BlobMetadata> = blobs
        .iter()
        .filter(|b| opts.all_indexes || b.length <= max_pack)
        .collect();
    if candidates.len() < opts.max_small_blobs {
        return Vec::new();
    }
    let very_small: Vec<&BlobMetadata> = candidates
        .iter()
        .copied()
        .filter(|b| b.length < max_pack / VERY_SMALL_FRACTION)
        .collect();
    let medium = candidates.len() - very_small.len();
    let chosen = if very_small.len() > candidates.len() / 2 && medium + 1 < opts.max_small_blobs {
        very_small
    } else {
        candidates
    };
    chosen.into_iter().cloned().collect()
}

async fn compact_blobs(
    repo: &Repository,
    inputs: &[BlobMetadata],
    opts: &CompactOptions,
) -> Result<bool> {
    if inputs.len() <= 1 && opts.drop_deleted_before.is_none() {
        return Ok(false);
    }
    let ids: Vec<String> = inputs.iter().map(|b| b.id.clone()).collect();
    let drop_before = opts.drop_deleted_before.map(|t| t.timestamp());
    let written = compact_index_blobs(repo, &ids, OutputNaming::Legacy, |e| {
        // kopia: deleted and `Timestamp().Before(dropDeletedBefore)`, compared in whole seconds.
        e.deleted && drop_before.is_some_and(|t| e.timestamp_seconds < t)
    })
    .await?;
    let mut outputs = Vec::with_capacity(written.len());
    for id in &written {
        outputs.push(to_legacy(&repo.store().metadata(id).await?));
    }
    let log = CompactionLog {
        input_metadata: inputs.iter().map(to_legacy).collect(),
        output_metadata: outputs,
    };
    let json = serde_json::to_vec(&log).map_err(|e| RepoError::Other(e.to_string()))?;
    let (log_id, bytes) = repo
        .crypto()
        .encrypt_blob(LEGACY_COMPACTION_LOG_PREFIX, "", &json);
    repo.store().put(&log_id, bytes).await?;
    let log_meta = repo.store().metadata(&log_id).await?;
    delete_old_blobs(repo, &log_meta, opts.settle_time()).await?;
    Ok(true)
}

async fn read_blob_json<T: serde::de::DeserializeOwned>(
    repo: &Repository,
    id: &str,
) -> Result<Option<T>> {
    let data = match repo.store().get(id).await {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let plain = repo.crypto().decrypt_blob(id, &data)?;
    serde_json::from_slice(&plain)
        .map(Some)
        .map_err(|e| RepoError::corrupt_blob(id, e))
}

/// Deletes the inputs of every settled compaction log, then schedules those logs for deletion.
/// Index blobs go first: deleting a log while its inputs exist would resurrect them.
async fn delete_old_blobs(
    repo: &Repository,
    latest: &BlobMetadata,
    settle: TimeDelta,
) -> Result<()> {
    let cutoff = latest.timestamp - settle;
    let logs: Vec<BlobMetadata> = repo
        .store()
        .list(LEGACY_COMPACTION_LOG_PREFIX)
        .await?
        .into_iter()
        .filter(|b| b.timestamp <= cutoff)
        .collect();
    let mut inputs_to_delete = std::collections::BTreeSet::new();
    for log_blob in &logs {
        let Some(log) = read_blob_json::<CompactionLog>(repo, &log_blob.id).await? else {
            continue;
        };
        if latest.timestamp - log_blob.timestamp >= settle {
            inputs_to_delete.extend(log.input_metadata.into_iter().map(|m| m.id));
        }
    }
    for id in &inputs_to_delete {
        repo.store().delete(id).await?;
    }
    if logs.is_empty() {
        return Ok(());
    }
    let entry = CleanupEntry {
        blob_ids: logs.into_iter().map(|b| b.id).collect(),
        cleanup_schedule_time: latest.timestamp,
    };
    let json = serde_json::to_vec(&entry).map_err(|e| RepoError::Other(e.to_string()))?;
    let (id, bytes) = repo.crypto().encrypt_blob(LEGACY_CLEANUP_PREFIX, "", &json);
    repo.store().put(&id, bytes).await?;
    Ok(())
}

/// Deletes compaction logs (and their cleanup entries) scheduled long enough ago.
async fn cleanup(repo: &Repository, settle: TimeDelta) -> Result<()> {
    let entries = repo.store().list(LEGACY_CLEANUP_PREFIX).await?;
    let Some(latest) = entries.iter().map(|b| b.timestamp).max() else {
        return Ok(());
    };
    let mut logs = Vec::new();
    let mut cleanup_blobs = Vec::new();
    for b in &entries {
        let Some(entry) = read_blob_json::<CleanupEntry>(repo, &b.id).await? else {
            continue;
        };
        if latest - entry.cleanup_schedule_time >= settle {
            logs.extend(entry.blob_ids);
            cleanup_blobs.push(b.id.clone());
        }
    }
    for id in logs.iter().chain(&cleanup_blobs) {
        repo.store().delete(id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: &str, length: u64) -> BlobMetadata {
        BlobMetadata {
            id: id.into(),
            length,
            timestamp: Utc::now(),
        }
    }

    #[test]
    fn choice_of_blobs_follows_kopia() {
        let opts = CompactOptions {
            max_small_blobs: 8,
            all_indexes: false,
            drop_deleted_before: None,
            disable_eventual_consistency_safety: false,
        };
        let max = 2000;
        let few: Vec<BlobMetadata> = (0..7).map(|i| blob(&format!("n{i}"), 10)).collect();
        assert!(blobs_to_compact(&few, &opts, max).is_empty());
        let mut many: Vec<BlobMetadata> = (0..9).map(|i| blob(&format!("n{i}"), 10)).collect();
        many.push(blob("nbig", 5000));
        many.push(blob("nmedium", 500));
        // 9 very small of 10 candidates, 1 medium: only the very small ones.
        assert_eq!(blobs_to_compact(&many, &opts, max).len(), 9);
        let all = CompactOptions {
            all_indexes: true,
            max_small_blobs: 0,
            ..opts
        };
        assert_eq!(blobs_to_compact(&many, &all, max).len(), 11);
    }
}
