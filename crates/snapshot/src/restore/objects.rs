//! Reading repository objects for restore with bounded memory: an object is resolved to a flat
//! list of direct chunks whose declared lengths are checked against the content index before any
//! data is read or written, so a hostile index cannot make restore allocate or extend a file by a
//! length nobody stored.

use kmover_format::object::{IndirectEntry, ObjectId};
use kmover_repo::ContentManager;
use kmover_repo::object::{open_object, read_chunk};

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
pub(super) async fn leaf_chunks(
    contents: &ContentManager,
    id: &ObjectId,
) -> Result<Vec<IndirectEntry>> {
    let layout = open_object(contents, id).await?;
    let mut out = Vec::with_capacity(layout.chunks.len());
    expand(contents, id, layout.chunks, 0, 0, &mut out).await?;
    Ok(out)
}

async fn expand(
    contents: &ContentManager,
    id: &ObjectId,
    chunks: Vec<IndirectEntry>,
    base: i64,
    nesting: usize,
    out: &mut Vec<IndirectEntry>,
) -> Result<()> {
    for chunk in chunks {
        let start = base
            .checked_add(chunk.start)
            .filter(|s| *s >= 0)
            .ok_or_else(|| bad(id, format!("chunk offset {} out of range", chunk.start)))?;
        if chunk.object.indirection() > 0 {
            if nesting >= MAX_NESTED_INDEXES {
                return Err(bad(id, "index objects nested too deeply".into()));
            }
            let inner = open_object(contents, &chunk.object).await?;
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
            Box::pin(expand(contents, id, inner.chunks, start, nesting + 1, out)).await?;
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

/// Total length of a [`leaf_chunks`] list.
pub(super) fn chunks_length(chunks: &[IndirectEntry]) -> u64 {
    chunks.last().map_or(0, |c| (c.start + c.length) as u64)
}

/// Reads a whole object that must not exceed `max_len` bytes (listings, symlink targets).
pub(super) async fn read_bounded(
    contents: &ContentManager,
    id: &ObjectId,
    max_len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let chunks = leaf_chunks(contents, id).await?;
    let len = chunks_length(&chunks);
    if len > max_len {
        return Err(bad(id, format!("{what} of {len} bytes exceeds {max_len}")));
    }
    let mut out = Vec::with_capacity(len as usize);
    for chunk in &chunks {
        out.extend_from_slice(&read_chunk(contents, chunk).await?);
    }
    Ok(out)
}
