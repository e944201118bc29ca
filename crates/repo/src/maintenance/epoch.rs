//! The epoch manager's maintenance (spec storage §11.2): advancing the write epoch, single-epoch
//! and range compactions, removing superseded markers and index blobs once their replacements
//! are old enough for every client to have seen them, and the deletion watermark.
//!
//! Each task reads a fresh listing. Deletions compare storage timestamps only, so a writer's
//! clock never matters.

use chrono::{DateTime, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use kmover_blob::{BlobMetadata, DynBlobStore};
use kmover_format::epoch::{self, CompactionRule};
use kmover_format::gotime;

use super::compaction::{OutputNaming, compact_index_blobs};
use super::schedule::TaskStats;
use crate::error::{RepoError, Result};
use crate::index_blobs::EpochState;
use crate::repository::Repository;

fn params(repo: &Repository) -> &kmover_format::format_blob::EpochParameters {
    &repo.crypto().config.epoch_parameters
}

fn delete_parallelism(repo: &Repository) -> usize {
    usize::try_from(params(repo).delete_parallelism)
        .unwrap_or(1)
        .max(1)
}

async fn delete_all(store: &DynBlobStore, ids: &[String], parallelism: usize) -> Result<()> {
    futures::stream::iter(ids)
        .map(|id| async move { store.delete(id).await })
        .buffer_unordered(parallelism)
        .try_collect::<()>()
        .await?;
    Ok(())
}

fn ids(blobs: &[BlobMetadata]) -> Vec<String> {
    blobs.iter().map(|b| b.id.clone()).collect()
}

/// Writes `xe<W+1>` when the write epoch has lasted long enough and holds enough index data.
pub async fn advance_epoch(repo: &Repository) -> Result<Option<TaskStats>> {
    let state = EpochState::load(repo.store()).await?;
    let p = params(repo);
    let current = state
        .uncompacted_blobs(repo.store(), state.write_epoch)
        .await?;
    let advance = epoch::should_advance_epoch(
        current.iter().map(|b| (b.timestamp, b.length)),
        std::time::Duration::from_nanos(p.min_epoch_duration_ns.max(0) as u64),
        usize::try_from(p.epoch_advance_on_count_threshold).unwrap_or(usize::MAX),
        u64::try_from(p.epoch_advance_on_total_size_bytes_threshold).unwrap_or(u64::MAX),
    );
    let mut current_epoch = state.write_epoch;
    if advance {
        current_epoch += 1;
        repo.store()
            .put(
                &epoch::epoch_marker_id(current_epoch),
                epoch::EPOCH_MARKER_BODY.to_vec(),
            )
            .await?;
    }
    Ok(Some(TaskStats::AdvanceEpoch {
        current_epoch,
        was_advanced: advance,
    }))
}

/// Compacts the oldest settled epoch that has no single-epoch compaction yet into `xs<e>_…`.
pub async fn compact_single_epoch(repo: &Repository) -> Result<Option<TaskStats>> {
    let state = EpochState::load(repo.store()).await?;
    let chain: Vec<(u64, u64)> = state
        .range_chain
        .iter()
        .map(|r| (r.min_epoch, r.max_epoch))
        .collect();
    let e = epoch::oldest_uncompacted_epoch(
        &chain,
        state.single_epoch_sets.keys().copied(),
        CompactionRule::V0_23,
    )?;
    if !state.is_settled(e) {
        return Ok(None);
    }
    let blobs = state.uncompacted_blobs(repo.store(), e).await?;
    let prefix = epoch::single_epoch_compaction_prefix(e);
    compact_index_blobs(
        repo,
        &ids(&blobs),
        OutputNaming::CompleteSet { prefix: &prefix },
        |_| false,
    )
    .await?;
    Ok(Some(TaskStats::CompactSingleEpoch {
        superseded_index_blob_count: blobs.len(),
        superseded_index_total_size: blobs.iter().map(|b| b.length).sum(),
        epoch: e,
    }))
}

/// Merges everything from the end of the range chain to the last settled epoch into one range
/// checkpoint `xr<a>_<b>_…`, once that spans the configured number of epochs.
pub async fn generate_range_checkpoint(repo: &Repository) -> Result<Option<TaskStats>> {
    let state = EpochState::load(repo.store()).await?;
    let chain: Vec<(u64, u64)> = state
        .range_chain
        .iter()
        .map(|r| (r.min_epoch, r.max_epoch))
        .collect();
    let frequency = u64::try_from(params(repo).full_checkpoint_frequency).unwrap_or(u64::MAX);
    let Some((first, last)) = epoch::range_to_checkpoint(state.write_epoch, &chain, frequency)
    else {
        return Ok(None);
    };
    let blobs = state.index_set(repo.store(), first, last).await?;
    let prefix = epoch::range_checkpoint_prefix(first, last);
    compact_index_blobs(
        repo,
        &ids(&blobs),
        OutputNaming::CompleteSet { prefix: &prefix },
        |_| false,
    )
    .await?;
    Ok(Some(TaskStats::GenerateRangeCheckpoint {
        range_min_epoch: first,
        range_max_epoch: last,
    }))
}

/// The storage clock: the newest `xn` blob of epochs W−1..W+1. Nothing is cleaned up before some
/// index was written (kopia returns early then, too).
fn storage_now(state: &EpochState) -> Option<DateTime<Utc>> {
    state
        .uncompacted
        .values()
        .flatten()
        .map(|b| b.timestamp)
        .max()
}

fn cleanup_margin(repo: &Repository) -> TimeDelta {
    TimeDelta::nanoseconds(params(repo).cleanup_safety_margin_ns)
}

/// Removes epoch markers older than W−1 and watermarks that are superseded and old enough.
pub async fn cleanup_markers(repo: &Repository) -> Result<Option<TaskStats>> {
    let state = EpochState::load(repo.store()).await?;
    let Some(max_time) = storage_now(&state) else {
        return Ok(None);
    };
    let max_replacement_time = max_time - cleanup_margin(repo);
    let markers: Vec<String> = state
        .epoch_markers
        .iter()
        .filter(|b| {
            epoch::epoch_number_from_blob_id(&b.id).is_some_and(|n| n + 1 < state.write_epoch)
        })
        .map(|b| b.id.clone())
        .collect();
    let watermarks: Vec<String> = state
        .watermark_blobs
        .iter()
        .filter(|b| match epoch::watermark_from_blob_id(&b.id) {
            Some(ts) => Some(ts) != state.watermark && b.timestamp < max_replacement_time,
            None => false,
        })
        .map(|b| b.id.clone())
        .collect();
    let parallelism = delete_parallelism(repo);
    delete_all(repo.store(), &markers, parallelism).await?;
    delete_all(repo.store(), &watermarks, parallelism).await?;
    Ok(Some(TaskStats::CleanupMarkers {
        deleted_epoch_marker_blob_count: markers.len(),
        deleted_watermark_blob_count: watermarks.len(),
    }))
}

/// Deletes the `xn` blobs of every epoch whose single-epoch compaction was written long enough
/// before the newest index write for all clients to have switched to it.
pub async fn cleanup_superseded_indexes(repo: &Repository) -> Result<Option<TaskStats>> {
    let state = EpochState::load(repo.store()).await?;
    let Some(max_time) = storage_now(&state) else {
        return Ok(None);
    };
    let max_replacement_time = max_time - cleanup_margin(repo);
    let all = repo.store().list(epoch::UNCOMPACTED_INDEX_PREFIX).await?;
    let superseded: Vec<&BlobMetadata> = all
        .iter()
        .filter(|b| {
            epoch::epoch_number_from_blob_id(&b.id)
                .and_then(|e| state.single_epoch_sets.get(&e))
                .and_then(|set| set.iter().map(|m| m.timestamp).max())
                .is_some_and(|written| written < max_replacement_time)
        })
        .collect();
    let to_delete: Vec<String> = superseded.iter().map(|b| b.id.clone()).collect();
    delete_all(repo.store(), &to_delete, delete_parallelism(repo)).await?;
    Ok(Some(TaskStats::CleanupSupersededIndexes {
        max_replacement_time,
        deleted_blob_count: to_delete.len(),
        deleted_total_size: superseded.iter().map(|b| b.length).sum(),
    }))
}

/// Makes deleted contents at or before `ts` invisible by writing the watermark `xw<unix secs>`;
/// never moves it backwards. Returns whether it was written.
pub async fn advance_deletion_watermark(repo: &Repository, ts: DateTime<Utc>) -> Result<bool> {
    let state = EpochState::load(repo.store()).await?;
    let seconds = ts.timestamp();
    if state.watermark.is_some_and(|w| seconds < w) || ts == gotime::zero() {
        return Ok(false);
    }
    repo.store()
        .put(
            &epoch::watermark_id(seconds),
            epoch::WATERMARK_BODY.to_vec(),
        )
        .await
        .map_err(RepoError::from)?;
    Ok(true)
}
