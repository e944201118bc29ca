//! Snapshot manifests in the manifest store: list, load, save, delete, and find the previous
//! snapshots of a source (whose unchanged files a new backup reuses).

use std::collections::BTreeMap;

use kmover_format::snapshot::manifest::{
    SnapshotManifest, SourceInfo, decode_snapshot_manifest, encode_snapshot_manifest,
    snapshot_labels, source_labels,
};
use kmover_repo::Repository;

use crate::error::{Result, SnapshotError};

pub const SNAPSHOT_TYPE: &str = "snapshot";

fn snapshot_query(source: Option<&SourceInfo>) -> BTreeMap<String, String> {
    let mut q = source.map(source_labels).unwrap_or_default();
    q.insert("type".into(), SNAPSHOT_TYPE.into());
    q
}

/// Snapshots of `source` (or of every source), oldest first by start time. Unparseable manifests
/// are skipped with a warning, as kopia does.
pub async fn list_snapshots(
    repo: &Repository,
    source: Option<&SourceInfo>,
) -> Result<Vec<(String, SnapshotManifest)>> {
    let entries = repo.manifests().find(&snapshot_query(source)).await?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        match decode_snapshot_manifest(&e.data) {
            Ok(mut m) => {
                m.id = e.id.clone();
                out.push((e.id, m));
            }
            Err(err) => tracing::warn!("skipping unreadable snapshot manifest {}: {err}", e.id),
        }
    }
    out.sort_by(|a, b| (a.1.start_time, &a.0).cmp(&(b.1.start_time, &b.0)));
    Ok(out)
}

pub async fn load_snapshot(repo: &Repository, id: &str) -> Result<SnapshotManifest> {
    let entry = repo
        .manifests()
        .get(id)
        .await?
        .ok_or_else(|| SnapshotError::SnapshotNotFound(id.to_string()))?;
    if entry.labels.get("type").map(String::as_str) != Some(SNAPSHOT_TYPE) {
        return Err(SnapshotError::SnapshotNotFound(id.to_string()));
    }
    let mut m = decode_snapshot_manifest(&entry.data)?;
    m.id = entry.id;
    Ok(m)
}

/// Stores a snapshot manifest (its `id` is cleared in storage, as kopia does); returns the new ID.
pub async fn save_snapshot(repo: &Repository, manifest: &SnapshotManifest) -> Result<String> {
    let mut stored = manifest.clone();
    stored.id.clear();
    stored.storage_stats = None;
    let labels = snapshot_labels(&stored)?;
    Ok(repo
        .manifests()
        .put(labels, encode_snapshot_manifest(&stored))
        .await?)
}

pub async fn delete_snapshot(repo: &Repository, id: &str) -> Result<()> {
    load_snapshot(repo, id).await?;
    Ok(repo.manifests().delete(id).await?)
}

/// kopia's `FindPreviousManifests`: the latest complete snapshot of `source` plus every incomplete
/// one that started after it.
pub async fn previous_snapshots(
    repo: &Repository,
    source: &SourceInfo,
) -> Result<Vec<SnapshotManifest>> {
    let all = list_snapshots(repo, Some(source)).await?;
    let latest_complete = all
        .iter()
        .rev()
        .find(|(_, m)| m.incomplete.is_empty())
        .map(|(_, m)| m.clone());
    let after = latest_complete.as_ref().map(|m| m.start_time);
    let mut out: Vec<SnapshotManifest> = latest_complete.into_iter().collect();
    out.extend(
        all.into_iter()
            .map(|(_, m)| m)
            .filter(|m| !m.incomplete.is_empty() && after.is_none_or(|t| m.start_time > t)),
    );
    Ok(out)
}

/// Every source that has snapshots.
pub async fn list_sources(repo: &Repository) -> Result<Vec<SourceInfo>> {
    let mut sources: Vec<SourceInfo> = list_snapshots(repo, None)
        .await?
        .into_iter()
        .map(|(_, m)| m.source)
        .collect();
    sources.sort_by(|a, b| (&a.host, &a.user_name, &a.path).cmp(&(&b.host, &b.user_name, &b.path)));
    sources.dedup();
    Ok(sources)
}
