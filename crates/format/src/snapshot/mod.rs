//! The snapshot layer's JSON documents, byte-identical to kopia's: directory listings, snapshot
//! manifests, the manifest store's contents and policies.
//!
//! Everything is pure: documents in, bytes out. Random manifest IDs and times are parameters.

pub mod directory;
pub(crate) mod json;
pub mod manifest;
pub mod manifest_store;
pub mod policy;
mod timestamp;

pub use json::go_lossy_string;
pub use timestamp::UtcTimestamp;

#[cfg(test)]
mod kopia_vectors;
