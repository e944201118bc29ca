//! Kopia repositories: create, open and connect; the content manager that writes contents into
//! pack blobs and flushes index blobs through the epoch (or legacy) index manager; and reading any
//! content through the merged index of a repository written by kmover or by kopia.
//!
//! ```no_run
//! # async fn demo() -> kmover_repo::Result<()> {
//! use std::sync::Arc;
//! use kmover_blob::fs::{FilesystemStore, ShardingMode};
//! use kmover_repo::{CreateOptions, Repository};
//! let store = Arc::new(FilesystemStore::create("/tmp/repo", ShardingMode::Default).await?);
//! Repository::create(store.clone(), &CreateOptions::default(), "secret").await?;
//! let repo = Repository::open(store, "secret", Default::default()).await?;
//! let id = repo.contents().write_content(b"hello", None, None).await?;
//! repo.contents().flush().await?;
//! assert_eq!(repo.contents().read_content(&id).await?, b"hello");
//! # Ok(()) }
//! ```

pub mod committed_index;
mod compact_index;
pub mod content_manager;
pub mod crypto;
pub mod error;
pub mod index_blobs;
pub mod local_config;
pub mod maintenance;
pub mod manifest;
pub mod metadata_cache;
pub mod object;
pub mod pack_reader;
pub mod repository;

pub use content_manager::ContentManager;
pub use error::{RepoError, Result};
pub use repository::{Clock, CreateOptions, OpenOptions, Repository};
