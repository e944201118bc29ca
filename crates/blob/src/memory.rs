//! An in-memory store for tests. Timestamps come from a clock the test may control, so epoch and
//! GC logic that compares blob ages can be exercised without waiting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{BlobBytes, BlobError, BlobMetadata, BlobStore, Result};

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

struct StoredBlob {
    data: Arc<[u8]>,
    timestamp: DateTime<Utc>,
}

pub struct MemoryStore {
    blobs: Mutex<BTreeMap<String, StoredBlob>>,
    clock: Clock,
}

impl MemoryStore {
    /// A store stamping blobs with the wall clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(Utc::now))
    }

    /// A store stamping each put with `clock()`.
    pub fn with_clock(clock: Clock) -> Self {
        MemoryStore {
            blobs: Mutex::new(BTreeMap::new()),
            clock,
        }
    }

    fn blobs(&self) -> MutexGuard<'_, BTreeMap<String, StoredBlob>> {
        // The map stays consistent even if a holder panicked: every update is a single insert or remove.
        self.blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn data(&self, id: &str) -> Result<Arc<[u8]>> {
        self.blobs()
            .get(id)
            .map(|blob| blob.data.clone())
            .ok_or_else(|| BlobError::NotFound(id.to_string()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("blobs", &self.blobs().len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        Ok(self.data(id)?.to_vec())
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        let data = self.data(id)?;
        let actual = data.len() as u64;
        match offset.checked_add(length) {
            Some(end) if end <= actual => Ok(data[offset as usize..end as usize].to_vec()),
            _ => Err(BlobError::InvalidRange {
                id: id.to_string(),
                offset,
                length,
                actual,
            }),
        }
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        let blobs = self.blobs();
        let blob = blobs
            .get(id)
            .ok_or_else(|| BlobError::NotFound(id.to_string()))?;
        Ok(BlobMetadata {
            id: id.to_string(),
            length: blob.data.len() as u64,
            timestamp: blob.timestamp,
        })
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        let timestamp = (self.clock)();
        self.blobs().insert(
            id.to_string(),
            StoredBlob {
                data: data.into(),
                timestamp,
            },
        );
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.blobs().remove(id);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        Ok(self
            .blobs()
            .range(prefix.to_string()..)
            .take_while(|(id, _)| id.starts_with(prefix))
            .map(|(id, blob)| BlobMetadata {
                id: id.clone(),
                length: blob.data.len() as u64,
                timestamp: blob.timestamp,
            })
            .collect())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[tokio::test]
    async fn timestamps_come_from_the_clock() {
        let now = Arc::new(AtomicI64::new(1_700_000_000));
        let clock_now = now.clone();
        let store = MemoryStore::with_clock(Arc::new(move || {
            Utc.timestamp_opt(clock_now.load(Ordering::SeqCst), 0)
                .unwrap()
        }));
        store.put("a", vec![1]).await.unwrap();
        now.store(1_700_000_100, Ordering::SeqCst);
        store.put("b", vec![2, 3]).await.unwrap();
        let listed = store.list("").await.unwrap();
        let stamps: Vec<i64> = listed.iter().map(|m| m.timestamp.timestamp()).collect();
        assert_eq!(stamps, [1_700_000_000, 1_700_000_100]);
        assert_eq!(store.metadata("b").await.unwrap().length, 2);
    }
}
