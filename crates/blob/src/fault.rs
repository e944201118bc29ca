//! A wrapper that injects storage failures, for tests of corruption and crash handling above the
//! blob layer. Faults can be added and cleared while the store is in use.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use kmover_blob::{BlobStore, fault::{FaultInjectingStore, PutFault}, memory::MemoryStore};
//! let store = FaultInjectingStore::new(Arc::new(MemoryStore::new()));
//! store.fail_nth_put(2, PutFault::StoredButFailed);
//! store.put("a", vec![1]).await.unwrap();
//! assert!(store.put("b", vec![2]).await.is_err()); // ...yet "b" was written
//! assert_eq!(store.get("b").await.unwrap(), [2]);
//! # });
//! ```

use std::io;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{BlobBytes, BlobError, BlobMetadata, BlobStore, DynBlobStore, Result};

/// What a failing put leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutFault {
    /// Nothing is written: the write never reached storage.
    Lost,
    /// The blob is written but the caller gets an error, as after a timeout or a crash right
    /// after the write landed.
    StoredButFailed,
}

#[derive(Debug, Default)]
struct Faults {
    puts_seen: u64,
    /// Absolute put numbers (1-based, counted since the wrapper was made) that fail.
    failing_put_numbers: Vec<(u64, PutFault)>,
    failing_put_prefixes: Vec<(String, PutFault)>,
    failing_get_prefixes: Vec<String>,
    /// Blobs with these prefixes read as if only their first `n` bytes were stored.
    truncated_prefixes: Vec<(String, u64)>,
    injected: u64,
}

impl Faults {
    fn truncation(&self, id: &str) -> Option<u64> {
        self.truncated_prefixes
            .iter()
            .find(|(p, _)| id.starts_with(p.as_str()))
            .map(|(_, keep)| *keep)
    }
}

#[derive(Debug)]
pub struct FaultInjectingStore {
    inner: DynBlobStore,
    faults: Mutex<Faults>,
}

impl FaultInjectingStore {
    pub fn new(inner: DynBlobStore) -> Self {
        FaultInjectingStore {
            inner,
            faults: Mutex::new(Faults::default()),
        }
    }

    pub fn inner(&self) -> &DynBlobStore {
        &self.inner
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `n`-th put from now fails (`n = 1`: the next one).
    pub fn fail_nth_put(&self, n: u64, fault: PutFault) {
        let mut faults = self.faults();
        let at = faults.puts_seen + n.max(1);
        faults.failing_put_numbers.push((at, fault));
    }

    /// Every put of an ID starting with `prefix` fails (`""`: every put).
    pub fn fail_puts_with_prefix(&self, prefix: &str, fault: PutFault) {
        self.faults()
            .failing_put_prefixes
            .push((prefix.to_string(), fault));
    }

    /// Every `get` and `get_range` of an ID starting with `prefix` fails.
    pub fn fail_gets_with_prefix(&self, prefix: &str) {
        self.faults().failing_get_prefixes.push(prefix.to_string());
    }

    /// Blobs whose ID starts with `prefix` look cut to their first `keep` bytes, to every read,
    /// metadata and listing, as after a torn write.
    pub fn truncate_reads_with_prefix(&self, prefix: &str, keep: u64) {
        self.faults()
            .truncated_prefixes
            .push((prefix.to_string(), keep));
    }

    /// Removes every fault; counters keep running.
    pub fn clear_faults(&self) {
        let mut faults = self.faults();
        faults.failing_put_numbers.clear();
        faults.failing_put_prefixes.clear();
        faults.failing_get_prefixes.clear();
        faults.truncated_prefixes.clear();
    }

    /// How many operations have failed on purpose so far.
    pub fn injected_faults(&self) -> u64 {
        self.faults().injected
    }

    pub fn puts_seen(&self) -> u64 {
        self.faults().puts_seen
    }

    fn injected_error(&self, id: &str, op: &'static str) -> BlobError {
        BlobError::Io {
            id: id.to_string(),
            op,
            path: self.inner.describe(),
            source: io::Error::other("injected fault"),
        }
    }

    fn check_get(&self, id: &str) -> Result<Option<u64>> {
        let mut faults = self.faults();
        if faults
            .failing_get_prefixes
            .iter()
            .any(|p| id.starts_with(p.as_str()))
        {
            faults.injected += 1;
            return Err(self.injected_error(id, "get (injected fault)"));
        }
        Ok(faults.truncation(id))
    }
}

#[async_trait]
impl BlobStore for FaultInjectingStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        let truncation = self.check_get(id)?;
        let mut data = self.inner.get(id).await?;
        if let Some(keep) = truncation {
            data.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Ok(data)
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        if let Some(keep) = self.check_get(id)? {
            let actual = self.inner.metadata(id).await?.length.min(keep);
            if offset.checked_add(length).is_none_or(|end| end > actual) {
                return Err(BlobError::InvalidRange {
                    id: id.to_string(),
                    offset,
                    length,
                    actual,
                });
            }
        }
        self.inner.get_range(id, offset, length).await
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        let mut metadata = self.inner.metadata(id).await?;
        if let Some(keep) = self.faults().truncation(id) {
            metadata.length = metadata.length.min(keep);
        }
        Ok(metadata)
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        let fault = {
            let mut faults = self.faults();
            faults.puts_seen += 1;
            let number = faults.puts_seen;
            let by_number = faults
                .failing_put_numbers
                .iter()
                .position(|(n, _)| *n == number);
            let fault = match by_number {
                Some(index) => Some(faults.failing_put_numbers.swap_remove(index).1),
                None => faults
                    .failing_put_prefixes
                    .iter()
                    .find(|(p, _)| id.starts_with(p.as_str()))
                    .map(|(_, fault)| *fault),
            };
            if fault.is_some() {
                faults.injected += 1;
            }
            fault
        };
        match fault {
            None => self.inner.put(id, data).await,
            Some(PutFault::Lost) => {
                Err(self.injected_error(id, "put (injected fault, nothing written)"))
            }
            Some(PutFault::StoredButFailed) => {
                self.inner.put(id, data).await?;
                Err(self.injected_error(id, "put (injected fault after the write)"))
            }
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.inner.delete(id).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        let mut listed = self.inner.list(prefix).await?;
        let faults = self.faults();
        for metadata in &mut listed {
            if let Some(keep) = faults.truncation(&metadata.id) {
                metadata.length = metadata.length.min(keep);
            }
        }
        Ok(listed)
    }

    fn describe(&self) -> String {
        format!("fault-injecting {}", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use std::sync::Arc;

    fn store() -> FaultInjectingStore {
        FaultInjectingStore::new(Arc::new(MemoryStore::new()))
    }

    #[tokio::test]
    async fn nth_put_fails_once() {
        let store = store();
        store.put("a", vec![1]).await.unwrap();
        store.fail_nth_put(2, PutFault::Lost);
        store.put("b", vec![2]).await.unwrap();
        assert!(matches!(
            store.put("c", vec![3]).await,
            Err(BlobError::Io { .. })
        ));
        assert!(store.get("c").await.unwrap_err().is_not_found());
        store.put("c", vec![3]).await.unwrap();
        assert_eq!(store.get("c").await.unwrap(), [3]);
        assert_eq!((store.injected_faults(), store.puts_seen()), (1, 4));
    }

    #[tokio::test]
    async fn prefix_put_faults_until_cleared() {
        let store = store();
        store.fail_puts_with_prefix("p", PutFault::StoredButFailed);
        store.fail_puts_with_prefix("x", PutFault::Lost);
        assert!(store.put("p1", vec![1]).await.is_err());
        assert_eq!(store.get("p1").await.unwrap(), [1]);
        assert!(store.put("x1", vec![1]).await.is_err());
        assert!(store.metadata("x1").await.unwrap_err().is_not_found());
        store.put("q1", vec![1]).await.unwrap();
        store.clear_faults();
        store.put("x1", vec![1]).await.unwrap();
        assert_eq!(store.injected_faults(), 2);
    }

    #[tokio::test]
    async fn get_faults_and_truncation() {
        let store = store();
        store.put("n1", vec![1, 2, 3, 4]).await.unwrap();
        store.put("p1", vec![1, 2, 3, 4]).await.unwrap();
        store.fail_gets_with_prefix("n");
        assert!(store.get("n1").await.is_err());
        assert!(store.get_range("n1", 0, 1).await.is_err());
        assert_eq!(store.metadata("n1").await.unwrap().length, 4);

        store.truncate_reads_with_prefix("p", 2);
        assert_eq!(store.get("p1").await.unwrap(), [1, 2]);
        assert_eq!(store.get_range("p1", 1, 1).await.unwrap(), [2]);
        assert!(matches!(
            store.get_range("p1", 1, 2).await,
            Err(BlobError::InvalidRange { actual: 2, .. })
        ));
        assert_eq!(store.metadata("p1").await.unwrap().length, 2);
        let lengths: Vec<u64> = store
            .list("")
            .await
            .unwrap()
            .iter()
            .map(|m| m.length)
            .collect();
        assert_eq!(lengths, [4, 2]);
        assert_eq!(store.injected_faults(), 2);
    }
}
