//! The manifest store: small labelled JSON documents (snapshots, policies, maintenance parameters)
//! kept in gzip'd `m` contents. Pending changes become one new `m` content at flush; loading merges
//! every `m` content (newest entry per ID wins, tombstones hide) and compacts when there are many.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kmover_format::ContentId;
use kmover_format::compression::header_id_for_name;
use kmover_format::snapshot::manifest_store::{
    AUTO_COMPACTION_CONTENT_COUNT, MANIFEST_CONTENT_PREFIX, ManifestEntry, decode_manifest_content,
    encode_manifest_content, labels_match, merge_manifest_entries, new_manifest_id,
};
use tokio::sync::Mutex;

use crate::content_manager::ContentManager;
use crate::crypto::random_bytes;
use crate::error::{RepoError, Result};
use crate::repository::Clock;

pub type Labels = BTreeMap<String, String>;

/// Manifest contents fetched at once while loading.
const LOAD_PARALLELISM: usize = 8;

pub struct ManifestManager {
    contents: Arc<ContentManager>,
    clock: Clock,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Live committed entries, loaded on first use.
    committed: Option<BTreeMap<String, ManifestEntry>>,
    /// Entries (and tombstones) not yet written.
    pending: BTreeMap<String, ManifestEntry>,
}

impl ManifestManager {
    pub fn new(contents: Arc<ContentManager>, clock: Clock) -> Self {
        ManifestManager {
            contents,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    async fn committed<'a>(
        &self,
        state: &'a mut State,
    ) -> Result<&'a BTreeMap<String, ManifestEntry>> {
        if state.committed.is_none() {
            state.committed = Some(self.load().await?);
        }
        Ok(state.committed.as_ref().expect("just loaded"))
    }

    async fn load(&self) -> Result<BTreeMap<String, ManifestEntry>> {
        let ids: Vec<ContentId> = self
            .contents
            .list_contents_matching(false, |id| id.prefix() == Some(MANIFEST_CONTENT_PREFIX))
            .await
            .into_iter()
            .map(|e| e.content_id)
            .collect();
        let contents = &self.contents;
        let all: Vec<Vec<ManifestEntry>> = futures::stream::iter(ids.iter().copied())
            .map(|id| async move {
                let data = contents.read_content(&id).await?;
                decode_manifest_content(&data)
                    .map_err(|e| RepoError::Other(format!("manifest content {id}: {e}")))
            })
            .buffered(LOAD_PARALLELISM)
            .try_collect()
            .await?;
        let merged = merge_manifest_entries(all.into_iter().flatten());
        if ids.len() >= AUTO_COMPACTION_CONTENT_COUNT {
            self.compact_contents(&ids, &merged).await?;
        }
        Ok(merged)
    }

    /// Rewrites all live entries into one content and deletes the old ones, in one index flush.
    async fn compact_contents(
        &self,
        old: &[ContentId],
        live: &BTreeMap<String, ManifestEntry>,
    ) -> Result<()> {
        let entries: Vec<ManifestEntry> = live.values().cloned().collect();
        // An empty document (`"entries":null`) is unreadable to kopia and to us: write none.
        let new_id = match entries.is_empty() {
            true => None,
            false => Some(self.write_entries(&entries).await?),
        };
        for id in old.iter().filter(|id| Some(**id) != new_id) {
            self.contents.delete_content(id).await?;
        }
        self.contents.flush().await
    }

    async fn write_entries(&self, entries: &[ManifestEntry]) -> Result<ContentId> {
        let bytes = encode_manifest_content(entries)?;
        let zstd = header_id_for_name("zstd-fastest")?;
        self.contents
            .write_content(&bytes, Some(MANIFEST_CONTENT_PREFIX), Some(zstd))
            .await
    }

    /// Adds a manifest; `labels` must include `type`. Returns its new random ID.
    pub async fn put(&self, labels: Labels, data: Vec<u8>) -> Result<String> {
        let id = new_manifest_id(&random_bytes());
        let entry = ManifestEntry::new(id.clone(), labels, (self.clock)(), data)?;
        self.state.lock().await.pending.insert(id.clone(), entry);
        Ok(id)
    }

    /// Records a tombstone for `id`; unknown IDs are ignored, as in kopia.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        let known = state.pending.get(id).is_some_and(|e| !e.deleted)
            || self.committed(&mut state).await?.contains_key(id);
        if known {
            state.pending.insert(
                id.to_string(),
                ManifestEntry::tombstone(id.to_string(), (self.clock)()),
            );
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<ManifestEntry>> {
        let mut state = self.state.lock().await;
        if let Some(e) = state.pending.get(id) {
            return Ok((!e.deleted).then(|| e.clone()));
        }
        Ok(self.committed(&mut state).await?.get(id).cloned())
    }

    /// Entries whose labels include every pair of `query`, oldest first.
    pub async fn find(&self, query: &Labels) -> Result<Vec<ManifestEntry>> {
        let mut state = self.state.lock().await;
        let pending = state.pending.clone();
        let committed = self.committed(&mut state).await?;
        let mut found: BTreeMap<&str, &ManifestEntry> =
            committed.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (id, e) in &pending {
            found.insert(id.as_str(), e);
        }
        let mut out: Vec<ManifestEntry> = found
            .into_values()
            .filter(|e| !e.deleted && labels_match(&e.labels, query))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.modified, &a.id).cmp(&(b.modified, &b.id)));
        Ok(out)
    }

    /// Deletes every manifest matching `labels` and puts a new one (policies, maintenance params).
    pub async fn replace(&self, labels: Labels, data: Vec<u8>) -> Result<String> {
        let existing = self.find(&labels).await?;
        let now = (self.clock)();
        if existing
            .iter()
            .any(|e| now - e.modified < chrono::TimeDelta::milliseconds(100))
        {
            // Distinct timestamps keep "newest wins" unambiguous.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for e in &existing {
            self.delete(&e.id).await?;
        }
        self.put(labels, data).await
    }

    /// Writes pending entries as one `m` content (into a pending pack; the caller flushes contents).
    pub async fn flush(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if state.pending.is_empty() {
            return Ok(());
        }
        let entries: Vec<ManifestEntry> = state.pending.values().cloned().collect();
        self.write_entries(&entries).await?;
        let pending = std::mem::take(&mut state.pending);
        if let Some(committed) = state.committed.as_mut() {
            for (id, e) in pending {
                if e.deleted {
                    committed.remove(&id);
                } else {
                    committed.insert(id, e);
                }
            }
        }
        Ok(())
    }
}
