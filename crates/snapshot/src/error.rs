//! Errors of the snapshot layer: they name the file or snapshot involved.

use std::path::PathBuf;

use thiserror::Error;

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Repo(#[from] kmover_repo::RepoError),
    #[error(transparent)]
    Format(#[from] kmover_format::FormatError),
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A repository entry that must not be restored (hostile or corrupt names, paths, types).
    #[error("refusing entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    /// Restoring one entry failed for a repository or format reason; `path` is where it was going.
    #[error("restoring {path}: {source}")]
    RestoreFailed {
        path: PathBuf,
        source: Box<SnapshotError>,
    },
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    #[error("{0}")]
    Other(String),
}

impl SnapshotError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        SnapshotError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
