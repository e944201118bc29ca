//! The one error type of the format crate: every decoder returns it instead of panicking.

use thiserror::Error;

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The password did not decrypt the format blob (GCM tag mismatch).
    #[error("invalid repository password")]
    InvalidPassword,
    /// An AEAD tag did not verify: the data was corrupted or the wrong key was used.
    #[error("decryption failed: {0}")]
    Decrypt(String),
    #[error("unsupported {what}: {name:?}")]
    Unsupported { what: &'static str, name: String },
    /// Structurally invalid input; the message says what and where.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("invalid content ID {id:?}: {reason}")]
    InvalidContentId { id: String, reason: &'static str },
    /// A value exceeds a limit of the format (e.g. index v2 lengths).
    #[error("{0}")]
    Limit(String),
}

impl FormatError {
    pub fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
