//! Bytes moved to and from repository storage, counted by a blob-store wrapper, for the
//! `read`/`written` metrics. Process-wide: a command opens its repository once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use kmover_blob::{BlobBytes, BlobMetadata, BlobStore, BlobWriter, DynBlobStore, Result};

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
        count_put(id, len);
        Ok(())
    }

    // Forwarded as shared: the default would copy every pack the content manager uploads.
    async fn put_shared(&self, id: &str, data: std::sync::Arc<BlobBytes>) -> Result<()> {
        let len = data.len() as u64;
        self.inner.put_shared(id, data).await?;
        count_put(id, len);
        Ok(())
    }

    async fn start_blob(&self, id: &str) -> Result<Option<Box<dyn BlobWriter>>> {
        let inner = self.inner.start_blob(id).await?;
        Ok(inner.map(|inner| {
            Box::new(CountingWriter {
                id: id.to_string(),
                inner,
            }) as Box<dyn BlobWriter>
        }))
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

/// A blob written in pieces, counted when committed.
#[derive(Debug)]
struct CountingWriter {
    id: String,
    inner: Box<dyn BlobWriter>,
}

impl BlobWriter for CountingWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.inner.append(data)
    }

    // Reads back what this process is writing, not the repository: not counted.
    fn read_at(&self, offset: u64, length: u64) -> Result<BlobBytes> {
        self.inner.read_at(offset, length)
    }

    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let len = self.inner.bytes_written();
        self.inner.commit()?;
        count_put(&self.id, len);
        Ok(())
    }
}

fn count_put(id: &str, len: u64) {
    WRITTEN_BYTES.fetch_add(len, Ordering::Relaxed);
    if id.starts_with('p') {
        DATA_PACKS
            .lock()
            .expect("pack list lock")
            .get_or_insert_with(HashSet::new)
            .insert(id.to_string());
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

    /// A store that only accepts shared puts, as a copy-free backend would.
    #[derive(Debug)]
    struct SharedPutsOnly(kmover_blob::memory::MemoryStore);

    #[async_trait]
    impl BlobStore for SharedPutsOnly {
        async fn get(&self, id: &str) -> Result<BlobBytes> {
            self.0.get(id).await
        }
        async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
            self.0.get_range(id, offset, length).await
        }
        async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
            self.0.metadata(id).await
        }
        async fn put(&self, id: &str, _: BlobBytes) -> Result<()> {
            panic!("put of {id}: a shared put was copied on its way down");
        }
        async fn put_shared(&self, id: &str, data: std::sync::Arc<BlobBytes>) -> Result<()> {
            self.0.put(id, data.to_vec()).await
        }
        async fn delete(&self, id: &str) -> Result<()> {
            self.0.delete(id).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
            self.0.list(prefix).await
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    #[tokio::test]
    async fn shared_puts_reach_the_store_uncopied_and_counted() {
        let store = count_io(std::sync::Arc::new(SharedPutsOnly(
            kmover_blob::memory::MemoryStore::new(),
        )));
        let before = IoTotals::now();
        let pack = std::sync::Arc::new(vec![7u8; 64]);
        store.put_shared("pshared", pack.clone()).await.unwrap();
        assert_eq!(store.get("pshared").await.unwrap(), *pack);
        assert!(IoTotals::now().since(before).written_bytes >= 64);
    }

    #[tokio::test]
    async fn blobs_written_in_pieces_pass_through_and_count_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let fs = kmover_blob::fs::FilesystemStore::create(
            dir.path().join("repo"),
            kmover_blob::fs::ShardingMode::Default,
        )
        .await
        .unwrap();
        let store = count_io(std::sync::Arc::new(fs));
        let mut writer = store
            .start_blob("pstreamed0")
            .await
            .unwrap()
            .expect("the filesystem store takes blobs in pieces through the counter");
        writer.append(&[1u8; 100]).unwrap();
        writer.append(&[2u8; 28]).unwrap();
        let before = IoTotals::now();
        writer.commit().unwrap();
        assert!(IoTotals::now().since(before).written_bytes >= 128);
        assert_eq!(store.get("pstreamed0").await.unwrap().len(), 128);
    }
}
