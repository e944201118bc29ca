//! Reading repository objects for restore with bounded memory: an object is resolved to a flat
//! list of direct chunks whose declared lengths are checked against the content index before any
//! data is read or written, so a hostile index cannot make restore allocate or extend a file by a
//! length nobody stored. Listings and indirect indexes are read through the metadata pack cache.
//!
//! Index entries that are themselves index objects (kopia writes none; its reader accepts them)
//! may expand to at most [`MAX_NESTED_INDEX_ENTRIES`] entries per object, counted before each
//! is expanded: listing one nested index many times would let a few stored bytes describe an
//! unbounded number of chunks.

use kmover_format::object::{IndirectEntry, ObjectId};
use kmover_repo::ContentManager;
use kmover_repo::metadata_cache::MetadataCache;
use kmover_repo::object::MAX_NESTED_INDEX_ENTRIES;

use crate::error::{Result, SnapshotError};

/// Largest single chunk restore holds in memory; kopia's splitters cut at most 16 MiB.
pub(super) const MAX_CHUNK_BYTES: i64 = 64 << 20;
/// Indirect objects nested inside index entries (kopia writes none; its reader accepts them).
const MAX_NESTED_INDEXES: usize = 4;

fn bad(id: &ObjectId, what: String) -> SnapshotError {
    SnapshotError::Other(format!("object {id}: {what}"))
}

/// The direct chunks of object `id` in order, with absolute offsets. Their lengths add up to
/// the object's length and each one matches what the index records for its content.
pub(crate) async fn leaf_chunks(
    contents: &ContentManager,
    cache: &MetadataCache,
    id: &ObjectId,
) -> Result<Vec<IndirectEntry>> {
    let layout = cache.open_object(contents, id).await?;
    let mut out = Vec::with_capacity(layout.chunks.len());
    let mut budget = MAX_NESTED_INDEX_ENTRIES;
    let walk = Walk {
        contents,
        cache,
        id,
    };
    walk.expand(layout.chunks, 0, 0, &mut budget, &mut out)
        .await?;
    Ok(out)
}

/// What stays the same while one object's chunks are expanded.
struct Walk<'a> {
    contents: &'a ContentManager,
    cache: &'a MetadataCache,
    id: &'a ObjectId,
}

impl Walk<'_> {
    async fn expand(
        &self,
        chunks: Vec<IndirectEntry>,
        base: i64,
        nesting: usize,
        // Entries nested indexes may still add.
        budget: &mut usize,
        out: &mut Vec<IndirectEntry>,
    ) -> Result<()> {
        let (contents, cache, id) = (self.contents, self.cache, self.id);
        for chunk in chunks {
            let start = base
                .checked_add(chunk.start)
                .filter(|s| *s >= 0)
                .ok_or_else(|| bad(id, format!("chunk offset {} out of range", chunk.start)))?;
            if chunk.object.indirection() > 0 {
                if nesting >= MAX_NESTED_INDEXES {
                    return Err(bad(id, "index objects nested too deeply".into()));
                }
                let inner = cache.open_object(contents, &chunk.object).await?;
                if i64::try_from(inner.length()).ok() != Some(chunk.length) {
                    return Err(bad(
                        id,
                        format!(
                            "chunk {} is {} bytes, its index says {}",
                            chunk.object,
                            inner.length(),
                            chunk.length
                        ),
                    ));
                }
                *budget = budget.checked_sub(inner.chunks.len()).ok_or_else(|| {
                    bad(
                        id,
                        format!(
                            "nested index objects expand to more than \
                             {MAX_NESTED_INDEX_ENTRIES} entries (at offset {start}, {})",
                            chunk.object
                        ),
                    )
                })?;
                Box::pin(self.expand(inner.chunks, start, nesting + 1, budget, out)).await?;
                continue;
            }
            if !(0..=MAX_CHUNK_BYTES).contains(&chunk.length) {
                return Err(bad(
                    id,
                    format!("chunk {} declares {} bytes", chunk.object, chunk.length),
                ));
            }
            match chunk.object.content_id() {
                None if chunk.length != 0 => {
                    return Err(bad(
                        id,
                        format!("empty chunk declares {} bytes", chunk.length),
                    ));
                }
                // Compressed (`Z`) chunks' true length is only known after decoding; read_chunk checks it.
                Some(cid) if !chunk.object.is_compressed() => {
                    let info = contents
                        .content_info(&cid)
                        .await
                        .ok_or(kmover_repo::RepoError::ContentNotFound(cid))?;
                    if i64::from(info.original_length) != chunk.length {
                        return Err(bad(
                            id,
                            format!(
                                "chunk {} holds {} bytes, its index says {}",
                                chunk.object, info.original_length, chunk.length
                            ),
                        ));
                    }
                }
                _ => {}
            }
            out.push(IndirectEntry {
                start,
                length: chunk.length,
                object: chunk.object,
            });
        }
        Ok(())
    }
}

/// Total length of a [`leaf_chunks`] list.
pub(super) fn chunks_length(chunks: &[IndirectEntry]) -> u64 {
    chunks.last().map_or(0, |c| (c.start + c.length) as u64)
}

/// Reads a whole object that must not exceed `max_len` bytes (listings, symlink targets).
pub(super) async fn read_bounded(
    contents: &ContentManager,
    cache: &MetadataCache,
    id: &ObjectId,
    max_len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    // The declared length is known before any nested index is expanded.
    let declared = cache.open_object(contents, id).await?.length();
    if declared > max_len {
        return Err(bad(
            id,
            format!("{what} of {declared} bytes exceeds {max_len}"),
        ));
    }
    let chunks = leaf_chunks(contents, cache, id).await?;
    let len = chunks_length(&chunks);
    if len > max_len {
        return Err(bad(id, format!("{what} of {len} bytes exceeds {max_len}")));
    }
    let mut out = Vec::with_capacity(len as usize);
    for chunk in &chunks {
        out.extend_from_slice(&cache.read_chunk(contents, chunk).await?);
    }
    Ok(out)
}
