//! Deleting pack blobs (and stale session markers) that no index entry references, except those
//! a concurrent writer may still be about to index: blobs written after the maintenance started,
//! blobs younger than the minimum age, and blobs of a session whose marker is still fresh.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use kmover_blob::BlobMetadata;
use kmover_format::session::{SESSION_PREFIX, SessionInfo, session_id_of_blob};

use super::safety::SafetyParameters;
use super::schedule::{DeleteUnreferencedPacksStats, TaskStats};
use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// Full maintenance looks at data packs, metadata packs and session markers.
pub const FULL_PREFIXES: &[&str] = &["p", "q", SESSION_PREFIX];
/// Quick maintenance (legacy repositories) only at metadata packs.
pub const QUICK_PREFIXES: &[&str] = &["q"];
/// kopia's default number of parallel deletions.
const DEFAULT_PARALLELISM: usize = 16;

/// The session markers present, by session ID. An unreadable marker is an error: treating it as
/// absent could delete packs of a live writer.
pub async fn active_sessions(repo: &Repository) -> Result<HashMap<String, SessionInfo>> {
    let markers = repo.store().list(SESSION_PREFIX).await?;
    let mut sessions = HashMap::new();
    for m in markers {
        let sid = session_id_of_blob(&m.id)
            .ok_or_else(|| RepoError::corrupt_blob(&m.id, "found invalid session blob"))?
            .to_string();
        let data = match repo.store().get(&m.id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let plain = repo.crypto().decrypt_blob(&m.id, &data)?;
        let info: SessionInfo = serde_json::from_slice(&plain)
            .map_err(|e| RepoError::corrupt_blob(&m.id, format!("error parsing session: {e}")))?;
        sessions.insert(sid, info);
    }
    Ok(sessions)
}

/// Deletes unreferenced blobs under `prefixes` not written after `not_after` (+1 s of slack).
pub async fn delete_unreferenced_packs(
    repo: &Repository,
    prefixes: &[&str],
    not_after: DateTime<Utc>,
    list_parallelism: usize,
    safety: &SafetyParameters,
) -> Result<Option<TaskStats>> {
    let snapshot = repo.contents().index_snapshot();
    let mut used: HashSet<Arc<str>> = HashSet::new();
    for e in snapshot.iter() {
        if !used.contains(&e.pack_blob_id) && prefixes.iter().any(|p| e.pack_blob_id.starts_with(p))
        {
            used.insert(e.pack_blob_id);
        }
    }
    let sessions = active_sessions(repo).await?;
    let cutoff = not_after + TimeDelta::seconds(1);

    let listings: Vec<Vec<BlobMetadata>> = futures::stream::iter(prefixes)
        .map(|p| repo.store().list(p))
        .buffered(prefixes.len().max(1))
        .try_collect()
        .await?;
    let mut stats = DeleteUnreferencedPacksStats::default();
    let mut doomed = Vec::new();
    for b in listings.into_iter().flatten() {
        if used.contains(b.id.as_str()) {
            continue;
        }
        let live_session = session_id_of_blob(&b.id)
            .and_then(|sid| sessions.get(sid))
            .is_some_and(|s| cutoff - s.checkpoint_time < safety.session_expiration_age);
        if b.timestamp > cutoff || cutoff - b.timestamp < safety.pack_delete_min_age || live_session
        {
            stats.retained_pack_count += 1;
            stats.retained_total_size += b.length as i64;
            continue;
        }
        stats.unreferenced_pack_count += 1;
        stats.unreferenced_total_size += b.length as i64;
        doomed.push(b);
    }
    let parallelism = if list_parallelism > 0 {
        list_parallelism
    } else {
        DEFAULT_PARALLELISM
    };
    let store = repo.store();
    futures::stream::iter(&doomed)
        .map(|b| async move {
            store
                .delete(&b.id)
                .await
                .map_err(|e| RepoError::Other(format!("unable to delete pack blob {}: {e}", b.id)))
        })
        .buffer_unordered(parallelism)
        .try_collect::<()>()
        .await?;
    stats.deleted_pack_count = stats.unreferenced_pack_count;
    stats.deleted_total_size = stats.unreferenced_total_size;
    Ok(Some(TaskStats::DeleteUnreferencedPacks(stats)))
}
