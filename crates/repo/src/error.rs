//! Errors of the repository layer. Messages name the blob (and content) involved, never a secret.

use kmover_blob::BlobError;
use kmover_format::{ContentId, FormatError};
use thiserror::Error;

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum RepoError {
    #[error("invalid repository password")]
    InvalidPassword,
    #[error("repository not found: {0} has no kopia.repository blob")]
    NotInitialized(String),
    #[error("repository already exists at {0}: refusing to overwrite it")]
    AlreadyExists(String),
    #[error("content {0} not found")]
    ContentNotFound(ContentId),
    /// A content could not be read back; names the pack and position so the damage can be found.
    #[error("content {id} (pack {pack}, offset {offset}, length {length}): {reason}")]
    CorruptContent {
        id: ContentId,
        pack: String,
        offset: u32,
        length: u32,
        reason: String,
    },
    /// A blob that is not a content pack (index, format, session) could not be decoded.
    #[error("blob {blob}: {reason}")]
    CorruptBlob { blob: String, reason: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

impl RepoError {
    pub fn corrupt_blob(blob: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        RepoError::CorruptBlob {
            blob: blob.into(),
            reason: reason.to_string(),
        }
    }
}
