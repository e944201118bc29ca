//! Bytes moved to and from repository storage, counted by a blob-store wrapper, for the
//! `read`/`written` metrics. Process-wide: a command opens its repository once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use kmover_blob::{BlobBytes, BlobMetadata, BlobStore, DynBlobStore, Result};

static READ_BYTES: AtomicU64 = AtomicU64::new(0);
static WRITTEN_BYTES: AtomicU64 = AtomicU64::new(0);
/// IDs of the data packs (`p…` blobs) written since the last [`take_data_packs`].
static DATA_PACKS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Totals since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTotals {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl IoTotals {
    pub fn now() -> Self {
        IoTotals {
            read_bytes: READ_BYTES.load(Ordering::Relaxed),
            written_bytes: WRITTEN_BYTES.load(Ordering::Relaxed),
        }
    }

    /// What moved since `earlier`.
    pub fn since(self, earlier: IoTotals) -> IoTotals {
        IoTotals {
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }
}

/// The data packs written since the previous call, which tells a backup's new contents from
/// those of other writers of the same repository.
pub fn take_data_packs() -> HashSet<String> {
    DATA_PACKS
        .lock()
        .expect("pack list lock")
        .take()
        .unwrap_or_default()
}

/// `store`, counting the bytes read from and written to it.
pub fn count_io(store: DynBlobStore) -> DynBlobStore {
    std::sync::Arc::new(CountingStore { inner: store })
}

#[derive(Debug)]
struct CountingStore {
    inner: DynBlobStore,
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        let data = self.inner.get(id).await?;
        READ_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        let data = self.inner.get_range(id, offset, length).await?;
        READ_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        self.inner.metadata(id).await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        let len = data.len() as u64;
        self.inner.put(id, data).await?;
        WRITTEN_BYTES.fetch_add(len, Ordering::Relaxed);
        if id.starts_with('p') {
            DATA_PACKS
                .lock()
                .expect("pack list lock")
                .get_or_insert_with(HashSet::new)
                .insert(id.to_string());
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.inner.delete(id).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        self.inner.list(prefix).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_reads_writes_and_data_packs() {
        let store = count_io(std::sync::Arc::new(kmover_blob::memory::MemoryStore::new()));
        let before = IoTotals::now();
        store.put("pabc", vec![0; 10]).await.unwrap();
        store.put("xn0_index", vec![0; 5]).await.unwrap();
        store.get("pabc").await.unwrap();
        store.get_range("pabc", 2, 3).await.unwrap();
        let moved = IoTotals::now().since(before);
        // Other tests in this process may add to the totals, never take away.
        assert!(
            moved.written_bytes >= 15 && moved.read_bytes >= 13,
            "{moved:?}"
        );
        assert!(take_data_packs().contains("pabc"));
    }
}
