//! Objects: byte streams cut into contents by the repository's splitter. One chunk is a direct
//! object; more chunks get a `kopia:indirect` index object (itself an object) and an `I…` ID.
//! Chunks are written concurrently (hash, compress and encrypt on all cores) while the splitter
//! moves on, with a bounded number in flight so memory stays flat.

use std::collections::VecDeque;
use std::sync::Arc;

use kmover_format::ContentId;
use kmover_format::compression;
use kmover_format::object::{self, IndirectEntry, ObjectId};
use kmover_format::splitter::{self, Splitter};
use tokio::task::JoinHandle;

use crate::content_manager::ContentManager;
use crate::error::{RepoError, Result};

#[derive(Debug, Clone, Default)]
pub struct ObjectWriterOptions {
    /// Content prefix (`k` for directories); `None` for file data.
    pub prefix: Option<u8>,
    /// Compression header ID for the chunks.
    pub compression: Option<u32>,
    /// Compression header ID for the indirect index object.
    pub metadata_compression: Option<u32>,
    /// Splitter name; `None` uses the repository's.
    pub splitter: Option<String>,
    /// Chunk writes in flight (at least 1).
    pub parallelism: usize,
}

/// Room past a whole chunk in a large chunk buffer, for the bytes one fill reads beyond it.
const FILL_SLACK: usize = 1 << 20;

/// Buffers that grow past this are reserved for a whole chunk at once, so a chunk never moves
/// while it fills; smaller objects get buffers of their own size.
const SMALL_BUFFER: usize = 256 << 10;

struct Chunk {
    start: u64,
    length: u64,
    /// The content's ID, and the chunk's buffer for reuse.
    write: JoinHandle<(Result<ObjectId>, Vec<u8>)>,
}

pub struct ObjectWriter {
    contents: Arc<ContentManager>,
    opts: ObjectWriterOptions,
    splitter: Box<dyn Splitter>,
    /// Bytes of the chunk being assembled, all seen by the splitter (except while lent out).
    buffer: Vec<u8>,
    /// Length of `buffer` when it was lent out by [`ObjectWriter::buffer_to_fill`].
    lent_at: Option<usize>,
    position: u64,
    in_flight: VecDeque<Chunk>,
    /// Buffers of written chunks, reused for the next ones: a fresh multi-MiB buffer costs a page
    /// fault per 4 KiB filled (a tenth of a big file's backup CPU) and an munmap when freed.
    spare: Vec<Vec<u8>>,
    fresh_buffers: usize,
    done: Vec<IndirectEntry>,
    wrote_any: bool,
}

impl ObjectWriter {
    pub fn new(contents: Arc<ContentManager>, opts: ObjectWriterOptions) -> Result<Self> {
        let name = opts
            .splitter
            .clone()
            .unwrap_or_else(|| contents.crypto().config.splitter.clone());
        let name = if name.is_empty() {
            splitter::DEFAULT_SPLITTER.to_string()
        } else {
            name
        };
        let splitter = splitter::new_splitter(&name)?;
        Ok(ObjectWriter {
            contents,
            opts,
            splitter,
            buffer: Vec::new(),
            lent_at: None,
            position: 0,
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            fresh_buffers: 0,
            done: Vec::new(),
            wrote_any: false,
        })
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check_not_lent()?;
        while !data.is_empty() {
            match self.splitter.next_boundary(data) {
                Some(n) => {
                    self.reserve(n);
                    self.buffer.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    let next = self.next_buffer();
                    let chunk = std::mem::replace(&mut self.buffer, next);
                    self.flush_chunk(chunk).await?;
                }
                None => {
                    self.reserve(data.len());
                    self.buffer.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Lends out the buffer of the chunk being assembled with room for `additional` more bytes,
    /// so a reader can append to it directly (no copy through a separate read buffer). Hand it
    /// back with [`ObjectWriter::filled`] before any other call.
    pub fn buffer_to_fill(&mut self, additional: usize) -> Result<Vec<u8>> {
        self.check_not_lent()?;
        self.reserve(additional);
        self.lent_at = Some(self.buffer.len());
        Ok(std::mem::take(&mut self.buffer))
    }

    /// Takes back the buffer from [`ObjectWriter::buffer_to_fill`] with bytes appended, and
    /// writes every chunk they complete.
    pub async fn filled(&mut self, buffer: Vec<u8>) -> Result<()> {
        let Some(mut scanned) = self.lent_at.take() else {
            return Err(RepoError::Other(
                "object writer: a buffer came back that was not lent".into(),
            ));
        };
        if buffer.len() < scanned {
            return Err(RepoError::Other(
                "object writer: the lent buffer came back shorter than it left".into(),
            ));
        }
        self.buffer = buffer;
        while let Some(n) = self.splitter.next_boundary(&self.buffer[scanned..]) {
            let cut = scanned + n;
            let rest = self.buffer.len() - cut;
            let mut next = self.next_buffer();
            Self::reserve_in(&mut next, rest, self.splitter.max_segment_size());
            next.extend_from_slice(&self.buffer[cut..]);
            self.buffer.truncate(cut);
            let chunk = std::mem::replace(&mut self.buffer, next);
            self.flush_chunk(chunk).await?;
            scanned = 0;
        }
        Ok(())
    }

    /// A written chunk's buffer, else a new one.
    fn next_buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_else(|| {
            self.fresh_buffers += 1;
            Vec::new()
        })
    }

    /// Chunk buffers this writer allocated after its first; every other chunk reused one.
    pub fn chunk_buffers_allocated(&self) -> usize {
        self.fresh_buffers
    }

    fn check_not_lent(&self) -> Result<()> {
        match self.lent_at {
            Some(_) => Err(RepoError::Other(
                "object writer: used while its buffer is lent out".into(),
            )),
            None => Ok(()),
        }
    }

    /// Makes room for `additional` more bytes in the chunk buffer.
    fn reserve(&mut self, additional: usize) {
        Self::reserve_in(
            &mut self.buffer,
            additional,
            self.splitter.max_segment_size(),
        );
    }

    fn reserve_in(buffer: &mut Vec<u8>, additional: usize, max_segment: usize) {
        let needed = buffer.len() + additional;
        if needed <= buffer.capacity() {
            return;
        }
        if needed <= SMALL_BUFFER {
            buffer.reserve(additional);
        } else {
            // A whole chunk plus what one fill may read past its end: never reallocated again.
            let target = needed.max(max_segment + FILL_SLACK.max(additional));
            buffer.reserve_exact(target - buffer.len());
        }
    }

    async fn flush_chunk(&mut self, chunk: Vec<u8>) -> Result<()> {
        let length = chunk.len() as u64;
        let contents = self.contents.clone();
        let (prefix, compression) = (self.opts.prefix, self.opts.compression);
        let write = tokio::spawn(async move {
            let id = write_chunk(&contents, &chunk, prefix, compression).await;
            (id, chunk)
        });
        self.in_flight.push_back(Chunk {
            start: self.position,
            length,
            write,
        });
        self.position += length;
        self.wrote_any = true;
        while self.in_flight.len() > self.opts.parallelism.max(1) {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<()> {
        let Some(chunk) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (id, mut buffer) = chunk
            .write
            .await
            .map_err(|e| RepoError::Other(format!("chunk write task failed: {e}")))?;
        let id = id?;
        // As many spares as chunks may be in flight: all a steady stream of chunks needs.
        if buffer.capacity() > SMALL_BUFFER && self.spare.len() < self.opts.parallelism.max(1) {
            buffer.clear();
            self.spare.push(buffer);
        }
        self.done.push(IndirectEntry {
            start: chunk.start as i64,
            length: chunk.length as i64,
            object: id,
        });
        Ok(())
    }

    /// Chunks whose writes have completed, in order; a checkpoint of a partly uploaded file
    /// lists them (kopia's `Checkpoint`).
    pub fn finished_chunks(&self) -> &[IndirectEntry] {
        &self.done
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.position + self.buffer.len() as u64
    }

    /// Writes what remains and returns the object's ID. An empty object is one empty content.
    pub async fn finish(mut self) -> Result<ObjectId> {
        self.check_not_lent()?;
        if !self.buffer.is_empty() || !self.wrote_any {
            let chunk = std::mem::take(&mut self.buffer);
            self.flush_chunk(chunk).await?;
        }
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        if self.done.len() == 1 {
            return Ok(self.done[0].object);
        }
        let index = object::encode_indirect_index(&self.done);
        let index_opts = ObjectWriterOptions {
            prefix: Some(self.opts.prefix.unwrap_or(object::INDIRECT_CONTENT_PREFIX)),
            compression: self.opts.metadata_compression,
            metadata_compression: self.opts.metadata_compression,
            splitter: None,
            parallelism: self.opts.parallelism,
        };
        let mut writer = ObjectWriter::new(self.contents.clone(), index_opts)?;
        writer.write(&index).await?;
        let index_id = Box::pin(writer.finish()).await?;
        Ok(ObjectId::indirect(index_id)?)
    }
}

/// [`write_chunk`] for several chunks of unprefixed data, hashed together (see
/// [`ContentManager::write_contents`]).
pub async fn write_chunks(
    contents: &ContentManager,
    chunks: &[(&[u8], Option<u32>)],
) -> Result<Vec<ObjectId>> {
    if contents.crypto().index_version() < 2 {
        // kopia's legacy object-level compression: one by one.
        let mut ids = Vec::with_capacity(chunks.len());
        for (chunk, compression) in chunks {
            ids.push(write_chunk(contents, chunk, None, *compression).await?);
        }
        return Ok(ids);
    }
    let ids = contents.write_contents(chunks, None).await?;
    Ok(ids.into_iter().map(ObjectId::direct).collect())
}

/// Writes one chunk. Repositories whose index cannot record compression (v1) get kopia's legacy
/// object-level compression (`Z` IDs) for unprefixed data. Data shorter than every splitter's
/// minimum segment is a whole object this way.
pub async fn write_chunk(
    contents: &ContentManager,
    chunk: &[u8],
    prefix: Option<u8>,
    compression: Option<u32>,
) -> Result<ObjectId> {
    if let Some(header) = compression
        && prefix.is_none()
        && contents.crypto().index_version() < 2
    {
        if let Some(compressed) = compression::compress(header, chunk)? {
            let id = contents.write_content(&compressed, None, None).await?;
            return Ok(ObjectId::compressed(id));
        }
        return Ok(ObjectId::direct(
            contents.write_content(chunk, None, None).await?,
        ));
    }
    Ok(ObjectId::direct(
        contents.write_content(chunk, prefix, compression).await?,
    ))
}

/// Writes `data` as one object.
pub async fn write_object(
    contents: &Arc<ContentManager>,
    data: &[u8],
    opts: ObjectWriterOptions,
) -> Result<ObjectId> {
    let mut w = ObjectWriter::new(contents.clone(), opts)?;
    w.write(data).await?;
    w.finish().await
}

/// The chunks of an object: one for a direct object, the index entries for an indirect one.
#[derive(Debug, Clone)]
pub struct ObjectLayout {
    pub id: ObjectId,
    pub chunks: Vec<IndirectEntry>,
}

impl ObjectLayout {
    /// The layout of a direct object: one chunk, the object itself.
    pub fn direct(id: &ObjectId, length: u64) -> Self {
        ObjectLayout {
            id: *id,
            chunks: vec![IndirectEntry {
                start: 0,
                length: length as i64,
                object: *id,
            }],
        }
    }

    /// The layout of an indirect object from its decoded index object's bytes; entries must
    /// tile the object from offset 0 without gaps.
    pub fn from_index(id: &ObjectId, index_bytes: &[u8]) -> Result<Self> {
        let chunks = object::decode_indirect_index(index_bytes)
            .map_err(|e| RepoError::Other(format!("object {id}: invalid index object: {e}")))?;
        let mut expected_start = 0i64;
        for c in &chunks {
            if c.start != expected_start || c.length < 0 {
                return Err(RepoError::Other(format!(
                    "object {id}: index entries are not contiguous at offset {}",
                    c.start
                )));
            }
            expected_start = c.end_offset();
        }
        Ok(ObjectLayout { id: *id, chunks })
    }

    pub fn length(&self) -> u64 {
        self.chunks
            .last()
            .map_or(0, |c| c.end_offset().max(0) as u64)
    }
}

/// Deepest indirection accepted when reading: kopia never writes more than a few levels, and a
/// hostile repository must not make us recurse without bound.
const MAX_INDIRECTION: u8 = 8;

/// Refuses object IDs nested deeper than [`MAX_INDIRECTION`].
pub fn check_indirection(id: &ObjectId) -> Result<()> {
    if id.indirection() > MAX_INDIRECTION {
        return Err(RepoError::Other(format!(
            "object {id}: too many levels of indirection"
        )));
    }
    Ok(())
}

/// Resolves an object's chunk list. Direct chunks come back with their length from the index.
pub async fn open_object(contents: &ContentManager, id: &ObjectId) -> Result<ObjectLayout> {
    if id.indirection() == 0 {
        return Ok(ObjectLayout::direct(id, direct_length(contents, id).await?));
    }
    check_indirection(id)?;
    let index_id = id.index_object_id().expect("indirect ID has an index");
    let index_bytes = Box::pin(read_object(contents, &index_id)).await?;
    ObjectLayout::from_index(id, &index_bytes)
}

async fn direct_length(contents: &ContentManager, id: &ObjectId) -> Result<u64> {
    let Some(cid) = id.content_id() else {
        return Ok(0);
    };
    if id.is_compressed() {
        // The stored length is the compressed one; only decoding tells the real length.
        return Ok(read_direct(contents, id, &cid).await?.len() as u64);
    }
    let info = contents
        .content_info(&cid)
        .await
        .ok_or(RepoError::ContentNotFound(cid))?;
    Ok(u64::from(info.original_length))
}

async fn read_direct(contents: &ContentManager, id: &ObjectId, cid: &ContentId) -> Result<Vec<u8>> {
    let data = contents.read_content(cid).await?;
    if !id.is_compressed() {
        return Ok(data);
    }
    let header = data
        .get(..4)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
        .ok_or_else(|| RepoError::Other(format!("object {id}: compressed content too short")))?;
    // Object-level compression records no original length; bound it by the chunk size limit.
    Ok(compression::decompress(header, &data, 64 << 20)?)
}

/// Entries that index objects nested in an object's index (kopia writes none; its reader accepts
/// them) may add, counted before each is read: one nested index listed many times would let a
/// few stored bytes describe an unbounded object.
pub const MAX_NESTED_INDEX_ENTRIES: usize = 1 << 20;

/// Largest index entry that is itself an index object (kopia writes none) read into memory as
/// one chunk; kopia's splitters cut at most 16 MiB.
const MAX_NESTED_CHUNK_BYTES: i64 = 64 << 20;

/// Reads one chunk (a direct object, or recursively an indirect one) and checks its length.
/// An indirect chunk's declared length is checked before anything of it is read.
pub async fn read_chunk(contents: &ContentManager, chunk: &IndirectEntry) -> Result<Vec<u8>> {
    let data = if chunk.object.indirection() == 0 {
        match chunk.object.content_id() {
            Some(cid) => read_direct(contents, &chunk.object, &cid).await?,
            None => Vec::new(),
        }
    } else {
        if !(0..=MAX_NESTED_CHUNK_BYTES).contains(&chunk.length) {
            return Err(RepoError::Other(format!(
                "object {}: nested index object declares {} bytes, more than a chunk may hold \
                 ({MAX_NESTED_CHUNK_BYTES})",
                chunk.object, chunk.length
            )));
        }
        let mut budget = MAX_NESTED_INDEX_ENTRIES;
        Box::pin(read_indirect(
            contents,
            &chunk.object,
            Some(chunk.length),
            0,
            &mut budget,
        ))
        .await?
    };
    if data.len() as i64 != chunk.length {
        return Err(RepoError::Other(format!(
            "object {}: chunk is {} bytes, its index says {}",
            chunk.object,
            data.len(),
            chunk.length
        )));
    }
    Ok(data)
}

/// Reads a whole object into memory (directories, index objects, small files).
pub async fn read_object(contents: &ContentManager, id: &ObjectId) -> Result<Vec<u8>> {
    if id.indirection() == 0 {
        return match id.content_id() {
            Some(cid) => read_direct(contents, id, &cid).await,
            None => Ok(Vec::new()),
        };
    }
    let mut budget = MAX_NESTED_INDEX_ENTRIES;
    read_indirect(contents, id, None, 0, &mut budget).await
}

/// Reads an indirect object whose length, when known, must be `expected`; its nested index
/// objects may add at most `budget` more entries.
async fn read_indirect(
    contents: &ContentManager,
    id: &ObjectId,
    expected: Option<i64>,
    nesting: u8,
    budget: &mut usize,
) -> Result<Vec<u8>> {
    let layout = open_object(contents, id).await?;
    if nesting > 0 {
        *budget = budget.checked_sub(layout.chunks.len()).ok_or_else(|| {
            RepoError::Other(format!(
                "object {id}: nested index objects expand to more than \
                 {MAX_NESTED_INDEX_ENTRIES} entries"
            ))
        })?;
    }
    if let Some(expected) = expected
        && i64::try_from(layout.length()).ok() != Some(expected)
    {
        return Err(RepoError::Other(format!(
            "object {id}: is {} bytes, its index says {expected}",
            layout.length()
        )));
    }
    let mut out = Vec::with_capacity(usize::try_from(layout.length()).unwrap_or(0).min(256 << 20));
    for chunk in &layout.chunks {
        if chunk.object.indirection() == 0 {
            out.extend_from_slice(&read_chunk(contents, chunk).await?);
            continue;
        }
        if nesting >= MAX_INDIRECTION {
            return Err(RepoError::Other(format!(
                "object {id}: index objects nested too deeply"
            )));
        }
        let data = Box::pin(read_indirect(
            contents,
            &chunk.object,
            Some(chunk.length),
            nesting + 1,
            budget,
        ))
        .await?;
        out.extend_from_slice(&data);
    }
    Ok(out)
}
