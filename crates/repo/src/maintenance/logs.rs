//! Pruning kopia's diagnostic `_log_…` blobs: newest first, keep them while the running total
//! size, the count and the age all stay within the limits, delete the rest.

use chrono::{DateTime, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};

use super::params::LogRetention;
use super::schedule::{CleanupLogsStats, TaskStats};
use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// kopia v0.21–v0.23.1 list every blob starting with `_` as a log.
pub const LOG_BLOB_PREFIX: &str = "_";
const DELETE_PARALLELISM: usize = 8;

pub async fn cleanup_logs(
    repo: &Repository,
    retention: LogRetention,
    now: DateTime<Utc>,
) -> Result<Option<TaskStats>> {
    let retention = retention.or_default();
    let mut logs = repo.store().list(LOG_BLOB_PREFIX).await?;
    logs.sort_by_key(|b| std::cmp::Reverse(b.timestamp));
    let max_age = TimeDelta::nanoseconds(retention.max_age);
    let mut retained_size = 0i64;
    let mut keep = logs.len();
    for (i, b) in logs.iter().enumerate() {
        retained_size += b.length as i64;
        let too_big = retention.max_total_size > 0 && retained_size > retention.max_total_size;
        let too_many = retention.max_count > 0 && i as i64 >= retention.max_count;
        let too_old = retention.max_age != 0 && now - b.timestamp > max_age;
        if too_big || too_many || too_old {
            keep = i;
            break;
        }
    }
    let doomed = &logs[keep..];
    let doomed_size: i64 = doomed.iter().map(|b| b.length as i64).sum();
    let store = repo.store();
    futures::stream::iter(doomed)
        .map(|b| async move {
            store
                .delete(&b.id)
                .await
                .map_err(|e| RepoError::Other(format!("error deleting log {}: {e}", b.id)))
        })
        .buffer_unordered(DELETE_PARALLELISM)
        .try_collect::<()>()
        .await?;
    Ok(Some(TaskStats::CleanupLogs(CleanupLogsStats {
        to_delete_blob_count: doomed.len() as u64,
        to_delete_blob_size: doomed_size,
        deleted_blob_count: doomed.len() as u64,
        deleted_blob_size: doomed_size,
        retained_blob_count: keep as u64,
        retained_blob_size: retained_size,
    })))
}
