//! Index blobs (§9): the sorted map from content ID to where the content is stored, in kopia's
//! v1 and v2 binary formats, plus the merge rule that decides between entries for the same ID.
//!
//! [`IndexBuilder`] writes indexes, [`Index`] is a validated zero-copy view for lookups, and
//! [`merge`] combines several indexes the way kopia's merged index does.

use std::sync::Arc;

use crate::content_id::ContentId;

mod builder;
pub mod merge;
mod reader;

pub use builder::IndexBuilder;
pub use reader::{Index, RawEntry};

/// Index format versions (the first byte of every index).
pub const VERSION_1: u8 = 1;
pub const VERSION_2: u8 = 2;

/// kopia's default shard size: at most this many entries per index blob.
pub const DEFAULT_MAX_ENTRIES_PER_SHARD: usize = 16_000_000;

/// Pack ID reported for a v1 name or v2 pack index that points outside the index.
pub const INVALID_PACK_BLOB_ID: &str = "---invalid---";
/// Values reported for a v2 format index outside the format table.
pub const INVALID_FORMAT_VERSION: u8 = 0xFF;
pub const INVALID_COMPRESSION_HEADER_ID: u32 = 0xFFFF;
pub const INVALID_ENCRYPTION_KEY_ID: u8 = 0xFF;

/// One index entry (kopia's `Info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub content_id: ContentId,
    /// Unix seconds of the write or delete.
    pub timestamp_seconds: i64,
    pub deleted: bool,
    /// The pack holding the data; deleted entries keep the original pack.
    pub pack_blob_id: Arc<str>,
    /// Absolute offset of the stored payload in the pack.
    pub pack_offset: u32,
    /// Stored (encrypted) length.
    pub packed_length: u32,
    /// Plaintext length before compression.
    pub original_length: u32,
    /// 0 when not compressed.
    pub compression_header_id: u32,
    /// The repository format version the content was written under.
    pub format_version: u8,
    pub encryption_key_id: u8,
}

/// kopia's merge winner rule: `a` beats `b` if it is newer; at equal times a live entry beats a
/// deleted one; then the greater pack blob ID wins. The result does not depend on index order.
pub fn is_greater(a: &IndexEntry, b: &IndexEntry) -> bool {
    if a.timestamp_seconds != b.timestamp_seconds {
        return a.timestamp_seconds > b.timestamp_seconds;
    }
    if a.deleted != b.deleted {
        return !a.deleted;
    }
    a.pack_blob_id.as_bytes() > b.pack_blob_id.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(id: &str, ts: i64, pack: &str, offset: u32, deleted: bool) -> IndexEntry {
        IndexEntry {
            content_id: ContentId::parse(id).unwrap(),
            timestamp_seconds: ts,
            deleted,
            pack_blob_id: pack.into(),
            pack_offset: offset,
            packed_length: 0,
            original_length: 0,
            compression_header_id: 0,
            format_version: 0,
            encryption_key_id: 0,
        }
    }

    #[test]
    fn winner_rule() {
        let newer = entry("aabbcc", 3, "yy", 33, false);
        let older = entry("aabbcc", 1, "zz", 11, false);
        assert!(is_greater(&newer, &older) && !is_greater(&older, &newer));
        let live = entry("de1e1e", 4, "xx", 111, false);
        let dead = entry("de1e1e", 4, "zz", 222, true);
        assert!(is_greater(&live, &dead) && !is_greater(&dead, &live));
        let hh = entry("ccddee", 1, "hh", 11, true);
        let gg = entry("ccddee", 1, "gg", 11, true);
        assert!(is_greater(&hh, &gg) && !is_greater(&gg, &hh));
        assert!(!is_greater(&hh, &hh), "not greater than itself");
    }
}
