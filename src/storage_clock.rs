//! Test-only (the `testing` feature): when the clock follows a fake-time server, blobs written
//! to a filesystem repository get that time as their modification time, as the webdav server of
//! kopia's own endurance test does. Maintenance compares storage timestamps with the clock (the
//! start time of a run is the storage time of `kopia.maintenance`, and every deletion margin is
//! measured on storage times); with real file times and a clock hours ahead, every run would
//! refuse for clock skew, and no margin would ever expire.

use std::sync::Arc;

use async_trait::async_trait;
use kmover_blob::fs::FilesystemStore;
use kmover_blob::{BlobBytes, BlobError, BlobMetadata, BlobStore, DynBlobStore, Result};
use kmover_repo::Clock;
use kmover_repo::local_config::LocalConfig;

/// `store` stamping its writes with `clock`, when the clock is fake and the storage a directory.
pub async fn wrap(store: DynBlobStore, config: &LocalConfig, clock: Clock) -> DynBlobStore {
    let fake = std::env::var(crate::fake_clock::ENDPOINT_VAR).is_ok_and(|e| !e.is_empty());
    let Some(path) = config.filesystem_path().filter(|_| fake) else {
        return store;
    };
    // A second handle, only to map blob IDs to file paths with the repository's sharding.
    match FilesystemStore::open(&path).await {
        Ok(paths) => Arc::new(StampingStore {
            inner: store,
            paths,
            clock,
        }),
        Err(_) => store,
    }
}

struct StampingStore {
    inner: DynBlobStore,
    paths: FilesystemStore,
    clock: Clock,
}

impl std::fmt::Debug for StampingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampingStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BlobStore for StampingStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        self.inner.get(id).await
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        self.inner.get_range(id, offset, length).await
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        self.inner.metadata(id).await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        self.inner.put(id, data).await?;
        let path = self.paths.blob_path(id);
        let time: std::time::SystemTime = (self.clock)().into();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(time))
            .map_err(|e| BlobError::Io {
                id: id.to_string(),
                op: "set fake modification time",
                path: path.display().to_string(),
                source: e,
            })
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
