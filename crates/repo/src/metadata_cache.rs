//! Whole metadata packs held in memory while a snapshot tree is walked. Directory listings and
//! indirect-object indexes live many to a `q` pack, so reading them one request each costs a
//! round trip per directory; like kopia's metadata cache (which fetches full blobs), the first
//! content read from a `q` pack fetches the whole pack and later ones decode from memory. Packs
//! are kept up to a byte budget, least recently used first out. Anything not in a stored `q`
//! pack (data contents, contents written but not flushed, unreadable packs) is read through the
//! content manager as usual, so its errors name the pack and content.
//!
//! The object functions mirror [`crate::object`]'s (same checks) with reads through the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kmover_format::ContentId;
use kmover_format::index::IndexEntry;
use kmover_format::object::{IndirectEntry, ObjectId};

use crate::content_manager::ContentManager;
use crate::error::{RepoError, Result};
use crate::object::{ObjectLayout, check_indirection};
use crate::pack_reader::direct_object_bytes;

/// Largest object-compressed (`Z`) chunk decoded, kopia's largest chunk with room to spare.
const MAX_COMPRESSED_CHUNK: usize = 64 << 20;

#[derive(Debug)]
pub struct MetadataCache {
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    packs: HashMap<Arc<str>, CachedPack>,
    bytes: u64,
    clock: u64,
    /// One fetch per pack at a time: later readers of the same pack wait for it.
    loading: HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>,
    /// Packs that could not be fetched whole (not flushed yet, missing): read per content.
    unreadable: std::collections::HashSet<Arc<str>>,
}

#[derive(Debug)]
struct CachedPack {
    data: Arc<Vec<u8>>,
    last_used: u64,
}

impl MetadataCache {
    /// A cache keeping at most `max_bytes` of packs (a larger pack is used once, not kept).
    pub fn new(max_bytes: u64) -> Self {
        MetadataCache {
            max_bytes,
            state: Mutex::default(),
        }
    }

    fn cached(&self, pack: &str) -> Option<Arc<Vec<u8>>> {
        let mut state = self.state.lock().expect("metadata cache lock");
        state.clock += 1;
        let now = state.clock;
        let cached = state.packs.get_mut(pack)?;
        cached.last_used = now;
        Some(cached.data.clone())
    }

    fn keep(&self, pack: Arc<str>, data: Arc<Vec<u8>>) {
        let size = data.len() as u64;
        if size > self.max_bytes {
            return;
        }
        let mut state = self.state.lock().expect("metadata cache lock");
        while state.bytes + size > self.max_bytes {
            let Some(oldest) = state
                .packs
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(evicted) = state.packs.remove(&oldest) {
                state.bytes -= evicted.data.len() as u64;
            }
        }
        state.clock += 1;
        let last_used = state.clock;
        state.bytes += size;
        if let Some(old) = state.packs.insert(pack, CachedPack { data, last_used }) {
            state.bytes -= old.data.len() as u64;
        }
    }

    /// The whole pack of `e`, fetched once; `None` when it cannot be read whole.
    async fn pack(&self, contents: &ContentManager, e: &IndexEntry) -> Option<Arc<Vec<u8>>> {
        if let Some(data) = self.cached(&e.pack_blob_id) {
            return Some(data);
        }
        let gate = {
            let mut state = self.state.lock().expect("metadata cache lock");
            if state.unreadable.contains(&e.pack_blob_id) {
                return None;
            }
            state
                .loading
                .entry(e.pack_blob_id.clone())
                .or_default()
                .clone()
        };
        let _loading = gate.lock().await;
        let found = match self.cached(&e.pack_blob_id) {
            Some(data) => Some(data),
            None => match contents.store().get(&e.pack_blob_id).await {
                Ok(bytes) => {
                    let data = Arc::new(bytes);
                    self.keep(e.pack_blob_id.clone(), data.clone());
                    Some(data)
                }
                Err(_) => None,
            },
        };
        let mut state = self.state.lock().expect("metadata cache lock");
        state.loading.remove(&e.pack_blob_id);
        if found.is_none() {
            state.unreadable.insert(e.pack_blob_id.clone());
        }
        found
    }

    /// The plaintext of content `id`: from its cached `q` pack, or read the usual way.
    pub async fn read_content(&self, contents: &ContentManager, id: &ContentId) -> Result<Vec<u8>> {
        let Some(e) = contents.content_info(id).await else {
            return contents.read_content(id).await;
        };
        if !e.pack_blob_id.starts_with('q') {
            return contents.read_content(id).await;
        }
        let start = e.pack_offset as usize;
        let end = start + e.packed_length as usize;
        match self.pack(contents, &e).await {
            Some(pack) if end <= pack.len() => contents.decode_packed(&e, &pack[start..end]),
            _ => contents.read_content(id).await,
        }
    }

    async fn read_direct(&self, contents: &ContentManager, id: &ObjectId) -> Result<Vec<u8>> {
        match id.content_id() {
            Some(cid) => {
                let plain = self.read_content(contents, &cid).await?;
                direct_object_bytes(id, plain, MAX_COMPRESSED_CHUNK)
            }
            None => Ok(Vec::new()),
        }
    }

    /// [`crate::object::open_object`] reading through the cache.
    pub async fn open_object(
        &self,
        contents: &ContentManager,
        id: &ObjectId,
    ) -> Result<ObjectLayout> {
        if id.indirection() == 0 {
            let length = match id.content_id() {
                None => 0,
                // The stored length of a `Z` object is the compressed one: decode to learn it.
                Some(_) if id.is_compressed() => self.read_direct(contents, id).await?.len() as u64,
                Some(cid) => u64::from(
                    contents
                        .content_info(&cid)
                        .await
                        .ok_or(RepoError::ContentNotFound(cid))?
                        .original_length,
                ),
            };
            return Ok(ObjectLayout::direct(id, length));
        }
        check_indirection(id)?;
        let index_id = id.index_object_id().expect("indirect ID has an index");
        let index_bytes = Box::pin(self.read_object(contents, &index_id)).await?;
        ObjectLayout::from_index(id, &index_bytes)
    }

    /// [`crate::object::read_chunk`] reading through the cache.
    pub async fn read_chunk(
        &self,
        contents: &ContentManager,
        chunk: &IndirectEntry,
    ) -> Result<Vec<u8>> {
        let data = if chunk.object.indirection() == 0 {
            self.read_direct(contents, &chunk.object).await?
        } else {
            Box::pin(self.read_object(contents, &chunk.object)).await?
        };
        if data.len() as i64 != chunk.length {
            return Err(RepoError::Other(format!(
                "object {}: chunk is {} bytes, its index says {}",
                chunk.object,
                data.len(),
                chunk.length
            )));
        }
        Ok(data)
    }

    /// [`crate::object::read_object`] reading through the cache.
    pub async fn read_object(&self, contents: &ContentManager, id: &ObjectId) -> Result<Vec<u8>> {
        if id.indirection() == 0 {
            return self.read_direct(contents, id).await;
        }
        let layout = self.open_object(contents, id).await?;
        let capacity = usize::try_from(layout.length()).unwrap_or(0).min(256 << 20);
        let mut out = Vec::with_capacity(capacity);
        for chunk in &layout.chunks {
            out.extend_from_slice(&self.read_chunk(contents, chunk).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_packs_leave_first() {
        let cache = MetadataCache::new(100);
        cache.keep("q1".into(), Arc::new(vec![1; 40]));
        cache.keep("q2".into(), Arc::new(vec![2; 40]));
        assert!(cache.cached("q1").is_some(), "q1 is now the most recent");
        cache.keep("q3".into(), Arc::new(vec![3; 40]));
        assert!(cache.cached("q2").is_none(), "q2 was least recently used");
        assert!(cache.cached("q1").is_some() && cache.cached("q3").is_some());
        // A pack larger than the whole budget is used once, never kept.
        cache.keep("q4".into(), Arc::new(vec![4; 101]));
        assert!(cache.cached("q4").is_none());
        assert_eq!(cache.state.lock().unwrap().bytes, 80);
    }
}
