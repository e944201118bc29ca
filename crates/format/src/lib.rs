//! Pure codecs of the Kopia repository format: the `kopia.repository` format blob and its key
//! derivation, content hashing, content encryption, compression, content IDs, pack blobs, index v1
//! and v2, blob crypto for index/session/log blobs, epoch-manager blob names and `kopia.maintenance`.
//!
//! Nothing here does I/O or reads a clock or a random source: callers pass nonces, random bytes and
//! times in, so every function is deterministic and every decoder can be fuzzed.
//!
//! ```
//! use kmover_format::hashing::HashAlgorithm;
//! let h = HashAlgorithm::parse("BLAKE2B-256-128").unwrap().hasher(&[0u8; 32]).unwrap();
//! assert_eq!(h.hash(b"hello world").as_ref().len(), 16);
//! ```

pub mod blobcrypto;
pub mod compression;
pub mod content_id;
pub mod encryption;
pub mod epoch;
pub mod error;
pub mod format_blob;
pub mod gojson;
pub mod gotime;
pub mod hashing;
pub mod index;
pub mod kdf;
pub mod maintenance;
pub mod object;
pub mod pack;
pub mod s2;
mod scrypt_half_memory;
pub mod session;
pub mod snapshot;
pub mod splitter;

pub use content_id::ContentId;
pub use error::{FormatError, Result};
