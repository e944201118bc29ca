//! The `kopia.maintenance` blob (next run times and per-task run history) and the statistics a
//! successful run records in its `extra` field, shaped as kopia's `maintenancestats` so that
//! `kopia maintenance info` summarises our runs too.

use chrono::{DateTime, Utc};
use kmover_blob::BlobMetadata;
use kmover_format::format_blob::derive_aux_key;
use kmover_format::maintenance::{
    MAINTENANCE_BLOB_ID, MAINTENANCE_KEY_PURPOSE, MaintenanceSchedule, decrypt_schedule,
    encrypt_schedule,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crypto::{RepoCrypto, random_bytes};
use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// Task names, the keys of the run history.
pub mod task {
    pub const SNAPSHOT_GC: &str = "snapshot-gc";
    pub const DELETE_ORPHANED_BLOBS_QUICK: &str = "quick-delete-blobs";
    pub const DELETE_ORPHANED_BLOBS_FULL: &str = "full-delete-blobs";
    pub const REWRITE_CONTENTS_QUICK: &str = "quick-rewrite-contents";
    pub const REWRITE_CONTENTS_FULL: &str = "full-rewrite-contents";
    pub const DROP_DELETED_CONTENTS_FULL: &str = "full-drop-deleted-content";
    pub const INDEX_COMPACTION: &str = "index-compaction";
    pub const EXTEND_BLOB_RETENTION_TIME_FULL: &str = "extend-blob-retention-time";
    pub const CLEANUP_LOGS: &str = "cleanup-logs";
    pub const EPOCH_ADVANCE: &str = "advance-epoch";
    pub const EPOCH_DELETE_SUPERSEDED_INDEXES: &str = "delete-superseded-epoch-indexes";
    pub const EPOCH_CLEANUP_MARKERS: &str = "cleanup-epoch-markers";
    pub const EPOCH_GENERATE_RANGE: &str = "generate-epoch-range-index";
    pub const EPOCH_COMPACT_SINGLE: &str = "compact-single-epoch";
}

fn schedule_key(crypto: &RepoCrypto) -> [u8; 32] {
    let mut key = [0u8; 32];
    derive_aux_key(
        &crypto.config,
        &crypto.format_key,
        &crypto.format_blob.unique_id,
        MAINTENANCE_KEY_PURPOSE,
        &mut key,
    );
    key
}

/// The schedule; a missing blob is an empty schedule (everything due now).
pub async fn load_schedule(repo: &Repository) -> Result<MaintenanceSchedule> {
    let bytes = match repo.store().get(MAINTENANCE_BLOB_ID).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(MaintenanceSchedule::default()),
        Err(e) => return Err(e.into()),
    };
    decrypt_schedule(&bytes, &schedule_key(repo.crypto()))
        .map_err(|e| RepoError::corrupt_blob(MAINTENANCE_BLOB_ID, e))
}

pub async fn save_schedule(repo: &Repository, schedule: &MaintenanceSchedule) -> Result<()> {
    let bytes = encrypt_schedule(schedule, &schedule_key(repo.crypto()), random_bytes())
        .map_err(|e| RepoError::corrupt_blob(MAINTENANCE_BLOB_ID, e))?;
    repo.store().put(MAINTENANCE_BLOB_ID, bytes).await?;
    Ok(())
}

/// The storage's own timestamp of the schedule blob: kopia's `MaintenanceStartTime`.
pub async fn schedule_blob_metadata(repo: &Repository) -> Result<BlobMetadata> {
    Ok(repo.store().metadata(MAINTENANCE_BLOB_ID).await?)
}

/// Statistics of one task run, recorded as `{"kind", "data"}` (kopia's `maintenancestats`).
#[derive(Clone, Debug, PartialEq)]
pub enum TaskStats {
    SnapshotGc(SnapshotGcStats),
    RewriteContents(RewriteContentsStats),
    DeleteUnreferencedPacks(DeleteUnreferencedPacksStats),
    CompactIndexes {
        dropped_contents_deleted_before: DateTime<Utc>,
    },
    CleanupLogs(CleanupLogsStats),
    AdvanceEpoch {
        current_epoch: u64,
        was_advanced: bool,
    },
    CompactSingleEpoch {
        superseded_index_blob_count: usize,
        superseded_index_total_size: u64,
        epoch: u64,
    },
    GenerateRangeCheckpoint {
        range_min_epoch: u64,
        range_max_epoch: u64,
    },
    CleanupMarkers {
        deleted_epoch_marker_blob_count: usize,
        deleted_watermark_blob_count: usize,
    },
    CleanupSupersededIndexes {
        max_replacement_time: DateTime<Utc>,
        deleted_blob_count: usize,
        deleted_total_size: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotGcStats {
    pub unreferenced_content_count: u32,
    pub unreferenced_content_size: i64,
    pub deleted_content_count: u32,
    pub deleted_content_size: i64,
    pub unreferenced_recent_content_count: u32,
    pub unreferenced_recent_content_size: i64,
    pub in_use_content_count: u32,
    pub in_use_content_size: i64,
    pub in_use_system_content_count: u32,
    pub in_use_system_content_size: i64,
    pub recovered_content_count: u32,
    pub recovered_content_size: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewriteContentsStats {
    pub to_rewrite_content_count: u64,
    pub to_rewrite_content_size: i64,
    pub rewritten_content_count: u64,
    pub rewritten_content_size: i64,
    pub retained_content_count: u64,
    pub retained_content_size: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteUnreferencedPacksStats {
    pub unreferenced_pack_count: u32,
    pub unreferenced_total_size: i64,
    pub deleted_pack_count: u32,
    pub deleted_total_size: i64,
    pub retained_pack_count: u32,
    pub retained_total_size: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupLogsStats {
    pub to_delete_blob_count: u64,
    pub to_delete_blob_size: i64,
    pub deleted_blob_count: u64,
    pub deleted_blob_size: i64,
    pub retained_blob_count: u64,
    pub retained_blob_size: i64,
}

fn ser<T: Serialize>(stats: &T) -> Value {
    serde_json::to_value(stats).expect("stats structs always serialise")
}

fn go_time(t: &DateTime<Utc>) -> Value {
    Value::String(kmover_format::gotime::format(t).unwrap_or_else(|_| t.to_rfc3339()))
}

impl TaskStats {
    pub fn kind(&self) -> &'static str {
        match self {
            TaskStats::SnapshotGc(_) => "snapshotGCStats",
            TaskStats::RewriteContents(_) => "rewriteContentsStats",
            TaskStats::DeleteUnreferencedPacks(_) => "deleteUnreferencedPacksStats",
            TaskStats::CompactIndexes { .. } => "compactIndexesStats",
            TaskStats::CleanupLogs(_) => "cleanupLogsStats",
            TaskStats::AdvanceEpoch { .. } => "advanceEpochStats",
            TaskStats::CompactSingleEpoch { .. } => "compactSingleEpochStats",
            TaskStats::GenerateRangeCheckpoint { .. } => "generateRangeCheckpointStats",
            TaskStats::CleanupMarkers { .. } => "cleanupMarkersStats",
            TaskStats::CleanupSupersededIndexes { .. } => "cleanupSupersededIndexesStats",
        }
    }

    fn data(&self) -> Value {
        match self {
            TaskStats::SnapshotGc(s) => ser(s),
            TaskStats::RewriteContents(s) => ser(s),
            TaskStats::DeleteUnreferencedPacks(s) => ser(s),
            TaskStats::CleanupLogs(s) => ser(s),
            TaskStats::CompactIndexes {
                dropped_contents_deleted_before,
            } => json!({"droppedContentsDeletedBefore": go_time(dropped_contents_deleted_before)}),
            TaskStats::AdvanceEpoch {
                current_epoch,
                was_advanced,
            } => json!({"currentEpoch": current_epoch, "wasAdvanced": was_advanced}),
            TaskStats::CompactSingleEpoch {
                superseded_index_blob_count,
                superseded_index_total_size,
                epoch,
            } => json!({
                "supersededIndexBlobCount": superseded_index_blob_count,
                "supersededIndexTotalSize": superseded_index_total_size,
                "epoch": epoch,
            }),
            TaskStats::GenerateRangeCheckpoint {
                range_min_epoch,
                range_max_epoch,
            } => json!({"rangeMinEpoch": range_min_epoch, "rangeMaxEpoch": range_max_epoch}),
            TaskStats::CleanupMarkers {
                deleted_epoch_marker_blob_count,
                deleted_watermark_blob_count,
            } => json!({
                "deletedEpochMarkerBlobCount": deleted_epoch_marker_blob_count,
                "deletedWatermarkBlobCount": deleted_watermark_blob_count,
            }),
            TaskStats::CleanupSupersededIndexes {
                max_replacement_time,
                deleted_blob_count,
                deleted_total_size,
            } => json!({
                "maxReplacementTime": go_time(max_replacement_time),
                "deletedBlobCount": deleted_blob_count,
                "deletedTotalSize": deleted_total_size,
            }),
        }
    }

    /// The `extra` array kopia stores with a successful run.
    pub fn to_extra(&self) -> Value {
        json!([{"kind": self.kind(), "data": self.data()}])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_have_kopias_shape() {
        let gc = TaskStats::SnapshotGc(SnapshotGcStats {
            unreferenced_content_count: 2,
            ..Default::default()
        });
        let extra = gc.to_extra();
        assert_eq!(extra[0]["kind"], "snapshotGCStats");
        assert_eq!(extra[0]["data"]["unreferencedContentCount"], 2);
        assert_eq!(extra[0]["data"]["recoveredContentSize"], 0);
        let adv = TaskStats::AdvanceEpoch {
            current_epoch: 3,
            was_advanced: true,
        };
        assert_eq!(
            adv.to_extra().to_string(),
            r#"[{"kind":"advanceEpochStats","data":{"currentEpoch":3,"wasAdvanced":true}}]"#
        );
    }
}
