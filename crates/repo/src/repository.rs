//! Creating and opening a repository: the format blob, then the committed index.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kmover_blob::DynBlobStore;

use crate::committed_index::CommittedIndex;
use crate::content_manager::ContentManager;
use crate::crypto::{FormatOptions, KnownFormatKey, RepoCrypto};
use crate::error::Result;
use crate::manifest::ManifestManager;

/// The time source; tests substitute a fake clock shared with kopia.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

pub type CreateOptions = FormatOptions;

#[derive(Clone)]
pub struct OpenOptions {
    pub clock: Clock,
    /// Recorded in session markers, as kopia's client identity.
    pub username: String,
    pub hostname: String,
    /// Skips the key derivation when it is this repository's key.
    pub known_format_key: Option<KnownFormatKey>,
    /// Where index compaction spills its sorted runs: the client's cache directory (a VolSync
    /// mover's `/tmp` may be memory-backed); the system temporary directory when `None`.
    pub scratch_directory: Option<PathBuf>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            clock: system_clock(),
            username: "kmover".into(),
            hostname: "localhost".into(),
            known_format_key: None,
            scratch_directory: None,
        }
    }
}

pub struct Repository {
    store: DynBlobStore,
    contents: Arc<ContentManager>,
    manifests: ManifestManager,
    clock: Clock,
    scratch_directory: Option<PathBuf>,
}

impl Repository {
    /// Writes a new repository's format blobs. The store must be empty of them.
    pub async fn create(store: DynBlobStore, opts: &CreateOptions, password: &str) -> Result<()> {
        RepoCrypto::initialize(&store, opts, password)
            .await
            .map(|_| ())
    }

    pub async fn open(store: DynBlobStore, password: &str, opts: OpenOptions) -> Result<Self> {
        let crypto =
            Arc::new(RepoCrypto::load(&store, password, opts.known_format_key.as_ref()).await?);
        let (committed, _) = CommittedIndex::load(&store, &crypto).await?;
        let contents = Arc::new(ContentManager::new(
            store.clone(),
            crypto,
            committed,
            opts.clock.clone(),
            opts.username,
            opts.hostname,
        ));
        let manifests = ManifestManager::new(contents.clone(), opts.clock.clone());
        Ok(Repository {
            store,
            contents,
            manifests,
            clock: opts.clock,
            scratch_directory: opts.scratch_directory,
        })
    }

    pub fn contents(&self) -> &Arc<ContentManager> {
        &self.contents
    }

    pub fn manifests(&self) -> &ManifestManager {
        &self.manifests
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// A directory for temporary files, created if missing.
    pub fn scratch_directory(&self) -> PathBuf {
        match &self.scratch_directory {
            Some(dir) if std::fs::create_dir_all(dir).is_ok() => dir.clone(),
            _ => std::env::temp_dir(),
        }
    }

    /// Makes everything written so far durable: manifests first (into a pack), then packs, then the
    /// index — so no manifest becomes visible before the contents it names.
    pub async fn flush(&self) -> Result<()> {
        self.manifests.flush().await?;
        self.contents.flush().await
    }

    pub fn crypto(&self) -> &RepoCrypto {
        self.contents.crypto()
    }

    pub fn store(&self) -> &DynBlobStore {
        &self.store
    }
}
