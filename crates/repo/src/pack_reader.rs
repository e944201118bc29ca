//! Reading many contents with few blob requests: contents are grouped by pack blob and
//! neighbours merged into one ranged read, each read capped in size so memory stays bounded by
//! `reads in flight × cap`. Callers (restore, verify) plan a batch of index entries with
//! [`coalesce`], fetch each [`PackRange`] once with [`fetch_range`], and decode every member from
//! the fetched bytes with [`decode_member`].
//!
//! ```no_run
//! # async fn demo(contents: &kmover_repo::ContentManager, ids: &[kmover_format::ContentId]) -> kmover_repo::Result<()> {
//! use kmover_repo::pack_reader::{RangeLimits, coalesce, decode_member, fetch_range};
//! let mut entries = Vec::new();
//! for id in ids {
//!     entries.extend(contents.content_info(id).await);
//! }
//! for range in coalesce(&entries, RangeLimits::default()) {
//!     let mut fetched = fetch_range(contents, &range, &entries).await;
//!     for (position, &i) in range.members.iter().enumerate() {
//!         let plain = decode_member(contents, &range, &mut fetched, position, &entries[i])?;
//!         println!("{}: {} bytes", entries[i].content_id, plain.len());
//!     }
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use kmover_blob::BlobError;
use kmover_format::compression;
use kmover_format::index::IndexEntry;
use kmover_format::object::ObjectId;

use crate::content_manager::ContentManager;
use crate::error::{RepoError, Result};

/// How neighbouring contents of one pack are merged into a single ranged read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeLimits {
    /// Unneeded bytes between two contents that are read through rather than split into two
    /// requests (one request costs about as much as this many bytes of transfer).
    pub max_gap: u64,
    /// Largest read made of several contents; a single content larger than this is read alone.
    pub max_range: u64,
}

impl Default for RangeLimits {
    fn default() -> Self {
        RangeLimits {
            max_gap: 512 << 10,
            max_range: 4 << 20,
        }
    }
}

/// One ranged read of a pack blob and the contents it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRange {
    pub pack_blob_id: Arc<str>,
    pub offset: u64,
    pub length: u64,
    /// Indices into the entries given to [`coalesce`], in pack order.
    pub members: Vec<usize>,
}

/// Groups `entries` by pack and merges neighbours (gap at most `max_gap`, merged read at most
/// `max_range`) into ranged reads. Every entry lands in exactly one range; pass each content once.
pub fn coalesce(entries: &[IndexEntry], limits: RangeLimits) -> Vec<PackRange> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        (&*a.pack_blob_id, a.pack_offset, a.packed_length).cmp(&(
            &*b.pack_blob_id,
            b.pack_offset,
            b.packed_length,
        ))
    });
    let mut ranges: Vec<PackRange> = Vec::new();
    for i in order {
        let e = &entries[i];
        let (start, end) = span(e);
        if let Some(last) = ranges.last_mut()
            && last.pack_blob_id == e.pack_blob_id
        {
            let last_end = last.offset + last.length;
            let merged_end = end.max(last_end);
            if start <= last_end.saturating_add(limits.max_gap)
                && merged_end - last.offset <= limits.max_range
            {
                last.length = merged_end - last.offset;
                last.members.push(i);
                continue;
            }
        }
        ranges.push(PackRange {
            pack_blob_id: e.pack_blob_id.clone(),
            offset: start,
            length: end - start,
            members: vec![i],
        });
    }
    ranges
}

fn span(e: &IndexEntry) -> (u64, u64) {
    let start = u64::from(e.pack_offset);
    (start, start + u64::from(e.packed_length))
}

/// What reading one [`PackRange`] gave.
#[derive(Debug)]
pub enum FetchedRange {
    /// The range's stored bytes, shorter than the range when the pack is truncated; members
    /// are decoded from them.
    Packed(Vec<u8>),
    /// The pack could not be read in one request: each member (in `members` order) read on its
    /// own through the content manager, which also finds contents written but not yet flushed
    /// and names the pack and content in its errors.
    Separately(Vec<Option<Result<Vec<u8>>>>),
}

/// Reads `range` with one request. A pack shorter than the range (damaged, or an index pointing
/// past its end) is read up to its end, so the contents before the damage still decode.
pub async fn fetch_range(
    contents: &ContentManager,
    range: &PackRange,
    entries: &[IndexEntry],
) -> FetchedRange {
    let store = contents.store();
    let whole = match store
        .get_range(&range.pack_blob_id, range.offset, range.length)
        .await
    {
        Err(BlobError::InvalidRange { actual, .. }) if actual > range.offset => {
            store
                .get_range(&range.pack_blob_id, range.offset, actual - range.offset)
                .await
        }
        other => other,
    };
    if let Ok(bytes) = whole {
        return FetchedRange::Packed(bytes);
    }
    let mut each = Vec::with_capacity(range.members.len());
    for &i in &range.members {
        each.push(Some(contents.read_content(&entries[i].content_id).await));
    }
    FetchedRange::Separately(each)
}

/// The plaintext of member `e`, the `position`-th of `range.members`, from what [`fetch_range`]
/// returned (each member is taken once). Errors are [`RepoError::CorruptContent`] (naming the
/// content, its pack and its position) or [`RepoError::ContentNotFound`].
pub fn decode_member(
    contents: &ContentManager,
    range: &PackRange,
    fetched: &mut FetchedRange,
    position: usize,
    e: &IndexEntry,
) -> Result<Vec<u8>> {
    let data = match fetched {
        FetchedRange::Packed(data) => data,
        FetchedRange::Separately(each) => {
            return each
                .get_mut(position)
                .and_then(Option::take)
                .unwrap_or_else(|| Err(corrupt(e, "member read twice or not in range".into())));
        }
    };
    let (start, end) = span(e);
    if range.members.len() == 1 && start == range.offset && data.len() as u64 == end - start {
        // The range is this content alone: decrypt it where it was read.
        return contents.decode_packed_owned(e, std::mem::take(data));
    }
    let packed = (start >= range.offset)
        .then(|| data.get((start - range.offset) as usize..(end - range.offset) as usize))
        .flatten()
        .ok_or_else(|| {
            corrupt(
                e,
                format!(
                    "pack is shorter ({} bytes) than the content's range",
                    range.offset + data.len() as u64
                ),
            )
        })?;
    contents.decode_packed(e, packed)
}

/// The bytes of the direct object `object` from its content's plaintext: a `Z` object (kopia's
/// object-level compression, used where the index cannot record compression) is decompressed to
/// at most `max_len` bytes; any other object is the plaintext itself.
pub fn direct_object_bytes(object: &ObjectId, plain: Vec<u8>, max_len: usize) -> Result<Vec<u8>> {
    if !object.is_compressed() {
        return Ok(plain);
    }
    let header = plain
        .first_chunk::<4>()
        .map(|h| u32::from_be_bytes(*h))
        .ok_or_else(|| {
            RepoError::Other(format!("object {object}: compressed content too short"))
        })?;
    Ok(compression::decompress(header, &plain, max_len)?)
}

fn corrupt(e: &IndexEntry, reason: String) -> RepoError {
    RepoError::CorruptContent {
        id: e.content_id,
        pack: e.pack_blob_id.to_string(),
        offset: e.pack_offset,
        length: e.packed_length,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmover_format::ContentId;

    fn entry(n: u8, pack: &str, offset: u32, length: u32) -> IndexEntry {
        IndexEntry {
            content_id: ContentId::from_hash(None, &[n; 32]).unwrap(),
            timestamp_seconds: 0,
            deleted: false,
            pack_blob_id: pack.into(),
            pack_offset: offset,
            packed_length: length,
            original_length: length,
            compression_header_id: 0,
            format_version: 2,
            encryption_key_id: 0,
        }
    }

    const LIMITS: RangeLimits = RangeLimits {
        max_gap: 100,
        max_range: 1000,
    };

    #[test]
    fn neighbours_merge_within_gap_and_cap() {
        let entries = vec![
            entry(1, "p2", 0, 10),
            entry(2, "p1", 150, 100),
            entry(3, "p1", 0, 100),
            // Exactly `max_gap` after the previous end (250): merged.
            entry(4, "p1", 350, 100),
            // One byte more than `max_gap`: a new range.
            entry(5, "p1", 551, 10),
            // Would make that range 1001 bytes long: a new range.
            entry(6, "p1", 561, 991),
        ];
        let ranges = coalesce(&entries, LIMITS);
        let summary: Vec<(&str, u64, u64, Vec<usize>)> = ranges
            .iter()
            .map(|r| (&*r.pack_blob_id, r.offset, r.length, r.members.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("p1", 0, 450, vec![2, 1, 3]),
                ("p1", 551, 10, vec![4]),
                ("p1", 561, 991, vec![5]),
                ("p2", 0, 10, vec![0]),
            ]
        );
    }

    #[test]
    fn a_content_larger_than_the_cap_is_read_alone() {
        let entries = vec![entry(1, "p", 0, 5000), entry(2, "p", 5000, 10)];
        let ranges = coalesce(&entries, LIMITS);
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].offset, ranges[0].length), (0, 5000));
        assert_eq!((ranges[1].offset, ranges[1].length), (5000, 10));
    }

    #[test]
    fn overlapping_entries_share_one_range() {
        let entries = vec![entry(1, "p", 0, 100), entry(2, "p", 50, 20)];
        let ranges = coalesce(&entries, LIMITS);
        assert_eq!(ranges.len(), 1);
        assert_eq!((ranges[0].offset, ranges[0].length), (0, 100));
        assert_eq!(ranges[0].members, vec![0, 1]);
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(coalesce(&[], RangeLimits::default()).is_empty());
    }
}
