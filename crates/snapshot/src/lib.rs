//! Snapshots of directory trees: backing a tree up into a Kopia repository (walk, split, dedup,
//! write directory objects and the snapshot manifest), restoring one safely into a target
//! directory, and listing and verifying snapshots — all bit-compatible with kopia.
//!
//! ```no_run
//! # async fn demo(repo: std::sync::Arc<kmover_repo::Repository>) -> kmover_snapshot::Result<()> {
//! use kmover_snapshot::snapshots;
//! for (id, manifest) in snapshots::list_snapshots(&repo, None).await? {
//!     println!("{id} {}", manifest.source);
//! }
//! # Ok(()) }
//! ```

pub mod backup;
pub mod backup_counters;
pub mod checkpoint;
pub mod dir_scan;
pub mod error;
pub mod ignore_rules;
pub mod maintenance;
pub mod policy;
pub mod repository_setup;
pub mod restore;
pub mod retention;
pub mod snapshot_gc;
pub mod snapshots;
pub mod tree;
pub mod verify;

pub use error::{Result, SnapshotError};
