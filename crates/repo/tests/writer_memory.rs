//! What the content writer keeps in memory: a stored pack's buffer is released as soon as its
//! upload ends (not when the next pack is sealed), and each unflushed index entry is held once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kmover_blob::memory::MemoryStore;
use kmover_blob::{BlobBytes, BlobMetadata, BlobStore, DynBlobStore, Result};
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_repo::{CreateOptions, Repository};
use tokio::sync::Semaphore;

const PASSWORD: &str = "correct horse";
const CONTENT: usize = 1 << 20;

/// A memory store whose pack uploads wait until the test lets them through.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore,
    gate: Semaphore,
    /// Shared puts let go of the caller's bytes before waiting, as the filesystem store does
    /// before its fsync.
    release_before_gate: bool,
}

impl GatedStore {
    async fn pass(&self, id: &str) {
        if id.starts_with('p') {
            self.gate.acquire().await.expect("gate closed").forget();
        }
    }
}

#[async_trait]
impl BlobStore for GatedStore {
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
        self.pass(id).await;
        self.inner.put(id, data).await
    }
    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        let bytes = if self.release_before_gate {
            let bytes = data.to_vec();
            drop(data);
            self.pass(id).await;
            bytes
        } else {
            self.pass(id).await;
            data.to_vec()
        };
        self.inner.put(id, bytes).await
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

async fn gated_repo(release_before_gate: bool) -> (Arc<GatedStore>, DynBlobStore, Repository) {
    let gated = Arc::new(GatedStore {
        inner: MemoryStore::new(),
        gate: Semaphore::new(0),
        release_before_gate,
    });
    let store: DynBlobStore = gated.clone();
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    };
    Repository::create(store.clone(), &opts, PASSWORD)
        .await
        .unwrap();
    let repo = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    (gated, store, repo)
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pack_is_released_when_its_upload_ends() {
    let (gated, store, repo) = gated_repo(false).await;
    let contents = repo.contents();
    let max_pack = contents.crypto().max_pack_size();

    // Fill the first pack (its upload then waits at the gate) and start the second.
    let first_pack = max_pack.div_ceil(CONTENT);
    let written = first_pack + 4;
    let mut ids = Vec::new();
    for seed in 0..written {
        let data = pseudo_random(CONTENT, seed as u64 + 1);
        ids.push(contents.write_content(&data, None, None).await.unwrap());
    }
    let both = contents.pack_bytes_in_memory().await;
    assert!(
        both > max_pack + 3 * CONTENT,
        "the uploading pack and the filling one are both held: {both}"
    );

    // Once the upload has ended, the next write releases the stored pack.
    gated.gate.add_permits(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut small = 0u32;
    let held = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        small += 1;
        let data = format!("small content {small}");
        contents
            .write_content(data.as_bytes(), None, None)
            .await
            .unwrap();
        let held = contents.pack_bytes_in_memory().await;
        if held < max_pack || tokio::time::Instant::now() > deadline {
            break held;
        }
    };
    assert!(
        held <= 5 * CONTENT,
        "after its upload, only the filling pack is held, not the stored one: {held} bytes"
    );
    // The stored pack's entries moved to the next index; none is held twice.
    let written = written + small as usize;
    assert_eq!(contents.unflushed_entries().await, written);

    // Deleting a stored content replaces its entry instead of adding one.
    contents.delete_content(&ids[0]).await.unwrap();
    assert_eq!(contents.unflushed_entries().await, written);
    contents.flush().await.unwrap();
    assert_eq!(contents.unflushed_entries().await, 0);
    assert_eq!(contents.pack_bytes_in_memory().await, 0);

    let reopened = Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap();
    let reopened = reopened.contents();
    assert!(reopened.content_info(&ids[0]).await.unwrap().deleted);
    for (seed, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(
            reopened.read_content(id).await.unwrap(),
            pseudo_random(CONTENT, seed as u64 + 1)
        );
    }
}

/// A memory store whose pack uploads fail while `failing` is set.
#[derive(Debug)]
struct FailingPacks {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl FailingPacks {
    fn check(&self, id: &str) -> Result<()> {
        if id.starts_with('p') && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kmover_blob::BlobError::Other(format!(
                "{id}: injected failure"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FailingPacks {
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
        self.check(id)?;
        self.inner.put(id, data).await
    }
    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        self.check(id)?;
        self.inner.put(id, data.to_vec()).await
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

#[tokio::test]
async fn failed_and_deleted_unflushed_contents_are_not_indexed() {
    let failing = Arc::new(FailingPacks {
        inner: MemoryStore::new(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let store: DynBlobStore = failing.clone();
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    };
    Repository::create(store.clone(), &opts, PASSWORD)
        .await
        .unwrap();
    let repo = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    let contents = repo.contents();

    // Flushed before the failure: kept.
    let kept = contents.write_content(b"kept", None, None).await.unwrap();
    contents.flush().await.unwrap();
    // A content deleted while its pack fills leaves that pack's index, tombstone-free.
    let dropped = contents
        .write_content(b"dropped", None, None)
        .await
        .unwrap();
    let survivor = contents
        .write_content(b"survivor", None, None)
        .await
        .unwrap();
    contents.delete_content(&dropped).await.unwrap();
    assert!(contents.content_info(&dropped).await.is_none());
    assert_eq!(contents.unflushed_entries().await, 1);
    contents.flush().await.unwrap();

    // A pack whose upload fails is indexed by nothing; the flush reports the failure.
    let lost = contents.write_content(b"lost", None, None).await.unwrap();
    failing
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(contents.flush().await.is_err());
    assert!(contents.content_info(&lost).await.is_none());
    assert_eq!(contents.unflushed_entries().await, 0);
    failing
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    contents.flush().await.unwrap();

    let reopened = Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap();
    let reopened = reopened.contents();
    assert_eq!(reopened.read_content(&kept).await.unwrap(), b"kept");
    assert_eq!(reopened.read_content(&survivor).await.unwrap(), b"survivor");
    assert!(reopened.content_info(&dropped).await.is_none());
    assert!(reopened.content_info(&lost).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_released_by_its_upload_is_not_held_and_reads_wait_for_the_store() {
    let (gated, _store, repo) = gated_repo(true).await;
    let contents = repo.contents();
    let max_pack = contents.crypto().max_pack_size();
    let first_pack = max_pack.div_ceil(CONTENT);
    let mut ids = Vec::new();
    for seed in 0..first_pack + 2 {
        let data = pseudo_random(CONTENT, seed as u64 + 1);
        ids.push(contents.write_content(&data, None, None).await.unwrap());
    }
    // The first pack is sealed and its upload has let go of the bytes while it waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let held = loop {
        let held = contents.pack_bytes_in_memory().await;
        if held < max_pack || tokio::time::Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        held <= 3 * CONTENT,
        "an upload that released its bytes is not held by the writer: {held} bytes"
    );

    // A read of one of its contents waits for the upload, then reads the store.
    let reader = {
        let contents = contents.clone();
        let id = ids[0];
        tokio::spawn(async move { contents.read_content(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!reader.is_finished(), "the read waits for the upload");
    gated.gate.add_permits(100);
    assert_eq!(reader.await.unwrap().unwrap(), pseudo_random(CONTENT, 1));
    contents.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_packs_are_written_as_they_fill() {
    use kmover_blob::fs::{FilesystemStore, ShardingMode};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let store: DynBlobStore = Arc::new(
        FilesystemStore::create(&root, ShardingMode::Default)
            .await
            .unwrap(),
    );
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    };
    Repository::create(store.clone(), &opts, PASSWORD)
        .await
        .unwrap();
    let repo = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    let contents = repo.contents();
    let max_pack = contents.crypto().max_pack_size();

    // Two packs and a half; at no point is more than a content and a write's worth in memory.
    let count = 5 * max_pack / (2 * CONTENT);
    let mut ids = Vec::new();
    let mut most = 0;
    for seed in 0..count {
        let data = pseudo_random(CONTENT, seed as u64 + 1);
        ids.push(contents.write_content(&data, None, None).await.unwrap());
        most = most.max(contents.pack_bytes_in_memory().await);
        // Read-your-writes of a content whose bytes are already in the pack's file.
        if seed % 7 == 3 {
            assert_eq!(contents.read_content(&ids[seed - 1]).await.unwrap(), {
                pseudo_random(CONTENT, seed as u64)
            });
        }
    }
    let small = contents.write_content(b"tail", None, None).await.unwrap();
    assert_eq!(contents.read_content(&small).await.unwrap(), b"tail");
    assert!(
        most <= 2 * CONTENT,
        "a pack streamed to its file is not held in memory: {most} bytes"
    );
    contents.flush().await.unwrap();

    let reopened = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    let reopened = reopened.contents();
    for (seed, id) in ids.iter().enumerate() {
        assert_eq!(
            reopened.read_content(id).await.unwrap(),
            pseudo_random(CONTENT, seed as u64 + 1)
        );
    }
    assert_eq!(reopened.read_content(&small).await.unwrap(), b"tail");
    // Every pack was renamed into place: no temporary file is left.
    let leftovers: Vec<_> = walk_files(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let packs = store.list("p").await.unwrap();
    assert!(packs.len() >= 3, "{packs:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
