//! Blob stores for Kopia repositories. A blob store keeps opaque, immutable blobs by ID and knows
//! nothing of encryption or contents. Backends never retry by themselves; wrappers add behaviour.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use kmover_blob::{BlobStore, memory::MemoryStore};
//! let store = MemoryStore::new();
//! store.put("kopia.repository", b"{}".to_vec().into()).await.unwrap();
//! assert_eq!(store.get("kopia.repository").await.unwrap(), b"{}".to_vec());
//! # });
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

pub mod conformance;
mod direct_append;
pub mod fault;
pub mod fs;
pub mod memory;
pub mod retry;
pub mod s3;

/// What a listing or metadata call reports of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMetadata {
    pub id: String,
    pub length: u64,
    /// Assigned by the storage (file mtime, S3 LastModified); the epoch manager and GC compare these.
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("blob {0:?} not found")]
    NotFound(String),
    /// A ranged read asked for bytes past the end of the blob.
    #[error("blob {id:?}: range {offset}+{length} is beyond its length {actual}")]
    InvalidRange {
        id: String,
        offset: u64,
        length: u64,
        actual: u64,
    },
    #[error("blob {id:?}: {op} failed at {path}: {source}")]
    Io {
        id: String,
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("blob store: {0}")]
    Other(String),
    /// The ID cannot be stored by this backend (empty, or a `/`, NUL or `.`/`..` path segment).
    #[error("blob ID {id:?} is not valid: {reason}")]
    InvalidId { id: String, reason: &'static str },
    /// A remote store (S3) failed to do `op`. `transient` failures (5xx, throttling, timeouts,
    /// broken connections, short bodies) may succeed when tried again.
    #[error("{op} {id:?} at {endpoint}: {message}")]
    Remote {
        op: &'static str,
        id: String,
        endpoint: String,
        status: Option<u16>,
        transient: bool,
        message: String,
    },
    /// The filesystem store's `.shards` file exists but cannot be understood.
    #[error("sharding parameters in {path} are not valid: {reason}")]
    InvalidShards { path: String, reason: String },
}

impl BlobError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BlobError::NotFound(_))
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BlobError::Remote {
                transient: true,
                ..
            }
        )
    }
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Bytes of a blob. `bytes::Bytes` would avoid a copy for memory stores; a Vec keeps the API plain.
pub type BlobBytes = Vec<u8>;

#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The whole blob.
    async fn get(&self, id: &str) -> Result<BlobBytes>;
    /// Exactly `length` bytes from `offset`; a short blob is `InvalidRange`, never a short read.
    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes>;
    async fn metadata(&self, id: &str) -> Result<BlobMetadata>;
    /// Atomic: readers see the old blob or the complete new one.
    async fn put(&self, id: &str, data: BlobBytes) -> Result<()>;
    /// [`BlobStore::put`] of bytes the caller keeps (e.g. to serve reads while they upload).
    /// Stores that can write from a borrowed buffer override it to avoid the copy.
    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        self.put(id, Arc::unwrap_or_clone(data)).await
    }
    /// A writer of blob `id` in pieces, for stores that keep a partial blob outside memory
    /// (the filesystem store); `None` when the store takes whole blobs only. Wrappers that
    /// change what a put does must not forward it.
    async fn start_blob(&self, _id: &str) -> Result<Option<Box<dyn BlobWriter>>> {
        Ok(None)
    }
    /// Deleting a missing blob succeeds.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Every blob whose ID starts with `prefix` (any string prefix), in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>>;
    /// A human-readable location for messages ("filesystem /repo", "s3://bucket/prefix").
    fn describe(&self) -> String;
}

/// A blob written in pieces (see [`BlobStore::start_blob`]): invisible until committed, and
/// gone if dropped uncommitted. Its methods do blocking I/O.
pub trait BlobWriter: Send + Sync + std::fmt::Debug {
    /// Appends `data` to the blob.
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// `length` bytes from `offset` of what was appended.
    fn read_at(&self, offset: u64, length: u64) -> Result<BlobBytes>;
    /// Bytes appended so far.
    fn bytes_written(&self) -> u64;
    /// Makes the blob durable and visible under its ID, atomically.
    fn commit(self: Box<Self>) -> Result<()>;
}

pub type DynBlobStore = Arc<dyn BlobStore>;
