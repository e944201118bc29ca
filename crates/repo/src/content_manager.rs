//! Contents: hashed, optionally compressed, encrypted and appended to pack blobs (`p` for data, `q`
//! for prefixed metadata), indexed on flush. Durability order is kopia's: packs are uploaded first,
//! the index blobs next, the session markers are deleted last — so every index entry points to a
//! pack that is already stored, and a crash leaves at worst unreferenced packs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use kmover_blob::{BlobWriter, DynBlobStore};
use kmover_format::compression;
use kmover_format::index::{IndexBuilder, IndexEntry};
use kmover_format::pack::{self, Postamble};
use kmover_format::session::{SessionInfo, session_id};
use kmover_format::{ContentId, format_blob};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::committed_index::CommittedIndex;
use crate::crypto::{RepoCrypto, random_bytes};
use crate::error::{RepoError, Result};
use crate::index_blobs;
use crate::repository::Clock;

/// Index entries per index blob, as kopia's `DefaultIndexShardSize`.
const INDEX_SHARD_SIZE: usize = 16_000_000;
/// Packs uploaded (or committed, when streamed to the store) concurrently by one writer before
/// `write_content` waits for one to finish: one keeps the store busy while the next pack fills.
const MAX_UPLOADS_IN_FLIGHT: usize = 1;
/// Capacity of a pack buffer past the pack size limit: the largest splitter chunk (16 MiB), its
/// encryption overhead, padding and the local index.
const PACK_BUFFER_HEADROOM: usize = 17 << 20;
/// Bytes a pack streamed to its store gathers in memory before they are written out.
const STREAM_WRITE_BYTES: usize = 1 << 20;
/// A streamed pack's buffer is kept (and passed on to the next pack) up to the largest content
/// it gathers: a fresh one costs a page fault per 4 KiB and a copy per growth, for every pack.
const MAX_KEPT_STREAM_BUFFER: usize = STREAM_WRITE_BYTES + PACK_BUFFER_HEADROOM;
/// Compression output buffers kept for reuse (about one per concurrent writer).
const SPARE_COMPRESSION_BUFFERS: usize = 2;
/// Check buffers grown past this are released after use.
const MAX_KEPT_CHECK_BUFFER: usize = 1 << 20;
thread_local! {
    /// Plaintext and decompressed output of contents checked on this thread.
    static CHECK_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}
/// kopia flushes automatically when this long has passed since the last index flush.
const AUTO_FLUSH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

pub struct ContentManager {
    store: DynBlobStore,
    crypto: Arc<RepoCrypto>,
    committed: RwLock<CommittedIndex>,
    writer: Mutex<WriterState>,
    /// Reused compression outputs: a chunk's compressed form lives only until it is encrypted
    /// into its pack.
    compression_buffers: std::sync::Mutex<Vec<Vec<u8>>>,
    /// The buffer of the last streamed pack sealed, for the next one.
    spare_stream_buffer: std::sync::Mutex<Option<Vec<u8>>>,
    clock: Clock,
    username: String,
    hostname: String,
}

struct Session {
    info: SessionInfo,
    marker_blob_ids: Vec<String>,
}

struct PendingPack {
    blob_id: Arc<str>,
    /// The pack's bytes not yet handed to `stream` (all of them without one).
    data: Vec<u8>,
    /// The store's writer of this pack when it takes blobs in pieces (the filesystem): the
    /// bytes then go to the temporary file as they come instead of staying in memory.
    stream: Option<Box<dyn BlobWriter>>,
    /// Bytes already written to `stream`.
    streamed: usize,
    /// The pack's local index: the newest entry of each content in it.
    entries: IndexBuilder,
}

impl PendingPack {
    fn len(&self) -> usize {
        self.streamed + self.data.len()
    }

    /// Writes the gathered bytes to the stream once there are at least `at_least` of them.
    fn write_out(&mut self, at_least: usize) -> kmover_blob::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if self.data.len() < at_least || self.data.is_empty() {
            return Ok(());
        }
        stream.append(&self.data)?;
        self.streamed += self.data.len();
        if self.data.capacity() > MAX_KEPT_STREAM_BUFFER {
            // Grown past any chunk (a huge metadata content): give that memory back.
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
        Ok(())
    }

    /// Bytes `start..start + len` of the pack.
    fn read(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.checked_add(len)?;
        if start >= self.streamed {
            return self
                .data
                .get(start - self.streamed..end - self.streamed)
                .map(<[u8]>::to_vec);
        }
        let stream = self.stream.as_ref()?;
        let from_stream = end.min(self.streamed) - start;
        let mut bytes = stream.read_at(start as u64, from_stream as u64).ok()?;
        if end > self.streamed {
            bytes.extend_from_slice(self.data.get(..end - self.streamed)?);
        }
        Some(bytes)
    }
}

/// What a pack gets for one content.
enum Packed<'a> {
    /// Already encrypted: `nonce || ciphertext || tag`, appended as it is.
    Sealed(&'a [u8]),
    /// The (possibly compressed) payload, encrypted straight into the pack.
    Plain(&'a [u8]),
}

impl Packed<'_> {
    fn packed_len(&self) -> usize {
        match self {
            Packed::Sealed(b) => b.len(),
            Packed::Plain(p) => p.len() + kmover_format::encryption::OVERHEAD,
        }
    }
}

/// A content as it goes into a pack.
struct StoredForm<'a> {
    bytes: Packed<'a>,
    original_length: u32,
    compression_header_id: u32,
    format_version: u8,
}

/// A sealed pack on its way to the store. The upload owns the bytes: a store may drop them as
/// soon as they are written (the filesystem store does, before its fsync), so a stored pack
/// does not stay in memory beside the one filling meanwhile.
struct UploadingPack {
    /// The bytes, for reads of its contents while the upload still holds them.
    data: std::sync::Weak<Vec<u8>>,
    /// Becomes true when the upload has ended (stored or failed).
    ended: tokio::sync::watch::Receiver<bool>,
}

/// Where the stored bytes of an unflushed content are.
enum UnflushedBytes {
    InMemory(Vec<u8>),
    /// In a pack whose upload has released its buffer: readable once the upload ends.
    Uploading(tokio::sync::watch::Receiver<bool>),
    InStore,
}

struct WriterState {
    session: Option<Session>,
    /// Slot 0 holds `p` (unprefixed) contents, slot 1 `q` (prefixed) ones.
    pending: [Option<PendingPack>; 2],
    uploads: JoinSet<(Arc<str>, Result<()>)>,
    /// Sealed packs being uploaded.
    uploading: HashMap<Arc<str>, UploadingPack>,
    /// The next index blob: the newest entry of each content of the sealed packs (uploaded or
    /// uploading) and of each deletion since the last flush. It is indexed in place at flush;
    /// with the pending packs' entries, it is the only record of unflushed entries, so each is
    /// held once (millions of small files make these the largest structures of a backup).
    written: IndexBuilder,
    last_flush: DateTime<Utc>,
}

impl WriterState {
    /// The newest entry written since the last flush, for dedup and read-your-writes. A pending
    /// pack's entry is newer than any sealed one of the same content.
    fn written(&self, id: &ContentId) -> Option<&IndexEntry> {
        self.pending[usize::from(id.has_prefix())]
            .as_ref()
            .and_then(|p| p.entries.get(id))
            .or_else(|| self.written.get(id))
    }

    /// Where the stored bytes of unflushed content `e` can be read.
    fn unflushed_bytes(&self, e: &IndexEntry) -> UnflushedBytes {
        let range = |data: &[u8]| {
            let start = e.pack_offset as usize;
            data.get(start..start + e.packed_length as usize)
                .map_or(UnflushedBytes::InStore, |b| {
                    UnflushedBytes::InMemory(b.to_vec())
                })
        };
        if let Some(p) = self
            .pending
            .iter()
            .flatten()
            .find(|p| p.blob_id == e.pack_blob_id)
        {
            return p
                .read(e.pack_offset as usize, e.packed_length as usize)
                .map_or(UnflushedBytes::InStore, UnflushedBytes::InMemory);
        }
        match self.uploading.get(&e.pack_blob_id) {
            Some(up) => match up.data.upgrade() {
                Some(data) => range(&data),
                None => UnflushedBytes::Uploading(up.ended.clone()),
            },
            None => UnflushedBytes::InStore,
        }
    }
}

impl ContentManager {
    pub(crate) fn new(
        store: DynBlobStore,
        crypto: Arc<RepoCrypto>,
        committed: CommittedIndex,
        clock: Clock,
        username: String,
        hostname: String,
    ) -> Self {
        let now = clock();
        ContentManager {
            store,
            crypto,
            committed: RwLock::new(committed),
            writer: Mutex::new(WriterState {
                session: None,
                pending: [None, None],
                uploads: JoinSet::new(),
                uploading: HashMap::new(),
                written: IndexBuilder::new(),
                last_flush: now,
            }),
            compression_buffers: std::sync::Mutex::new(Vec::new()),
            spare_stream_buffer: std::sync::Mutex::new(None),
            clock,
            username,
            hostname,
        }
    }

    pub fn crypto(&self) -> &RepoCrypto {
        &self.crypto
    }

    pub fn store(&self) -> &DynBlobStore {
        &self.store
    }

    /// The ID `data` would get with `prefix`, without writing anything.
    pub fn content_id_for(&self, data: &[u8], prefix: Option<u8>) -> Result<ContentId> {
        Ok(ContentId::from_hash(
            prefix,
            self.crypto.hasher.hash(data).as_ref(),
        )?)
    }

    /// Stores `data` unless a live content with the same ID exists; returns its ID.
    /// `compression` is a kopia compression header ID; data that does not shrink is stored raw.
    pub async fn write_content(
        &self,
        data: &[u8],
        prefix: Option<u8>,
        compression: Option<u32>,
    ) -> Result<ContentId> {
        let id = self.content_id_for(data, prefix)?;
        self.write_content_with_id(id, data, compression).await
    }

    /// [`ContentManager::write_content`] for several contents of one prefix, in order. Their
    /// IDs are computed together: BLAKE2 hashes several inputs at once in SIMD lanes, about
    /// twice as fast per byte on small inputs (a directory of small files).
    pub async fn write_contents(
        &self,
        contents: &[(&[u8], Option<u32>)],
        prefix: Option<u8>,
    ) -> Result<Vec<ContentId>> {
        let inputs: Vec<&[u8]> = contents.iter().map(|(data, _)| *data).collect();
        let hashes = self.crypto.hasher.hash_many(&inputs);
        let mut ids = Vec::with_capacity(contents.len());
        for ((data, compression), hash) in contents.iter().zip(hashes) {
            let id = ContentId::from_hash(prefix, hash.as_ref())?;
            ids.push(self.write_content_with_id(id, data, *compression).await?);
        }
        Ok(ids)
    }

    /// Stores `data` under `id`, which the caller computed from `data` and its prefix.
    async fn write_content_with_id(
        &self,
        id: ContentId,
        data: &[u8],
        compression: Option<u32>,
    ) -> Result<ContentId> {
        let previous = self
            .committed
            .read()
            .expect("index lock poisoned")
            .lookup_including_deleted(&id);
        if previous.as_ref().is_some_and(|e| !e.deleted) {
            return Ok(id);
        }
        let original_length = u32::try_from(data.len())
            .map_err(|_| RepoError::Other(format!("content {id} is too large")))?;
        let mut compressed = self.take_compression_buffer();
        let result = self
            .store_new_content(
                id,
                data,
                compression,
                original_length,
                previous,
                &mut compressed,
            )
            .await;
        self.return_compression_buffer(compressed);
        result.map(|()| id)
    }

    /// Compresses `data` (into `compressed`) and appends it, encrypted, to a pack.
    async fn store_new_content(
        &self,
        id: ContentId,
        data: &[u8],
        compression: Option<u32>,
        original_length: u32,
        previous: Option<IndexEntry>,
        compressed: &mut Vec<u8>,
    ) -> Result<()> {
        let header_id = self.compress(&id, data, compression, compressed)?;
        let payload = if header_id == 0 { data } else { compressed };

        let mut w = self.writer.lock().await;
        let newest = w.written(&id);
        if newest.is_some_and(|e| !e.deleted) {
            return Ok(());
        }
        let previous_ts = newest.or(previous.as_ref()).map(|e| e.timestamp_seconds);
        let stored = StoredForm {
            bytes: Packed::Plain(payload),
            original_length,
            compression_header_id: header_id,
            format_version: self.crypto.format_version(),
        };
        self.append_locked(&mut w, id, stored, false, previous_ts)
            .await?;
        if (self.clock)() - w.last_flush >= AUTO_FLUSH_INTERVAL {
            self.flush_locked(&mut w).await?;
        }
        Ok(())
    }

    fn take_compression_buffer(&self) -> Vec<u8> {
        self.compression_buffers
            .lock()
            .expect("buffer pool lock poisoned")
            .pop()
            .unwrap_or_default()
    }

    fn return_compression_buffer(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        let mut pool = self
            .compression_buffers
            .lock()
            .expect("buffer pool lock poisoned");
        if pool.len() < SPARE_COMPRESSION_BUFFERS {
            pool.push(buffer);
        }
    }

    /// Appends one stored (encrypted) content to the pending pack of its kind, with a timestamp
    /// after `previous_ts`, and starts uploading the pack once it is full.
    async fn append_locked(
        &self,
        w: &mut WriterState,
        id: ContentId,
        stored: StoredForm<'_>,
        deleted: bool,
        previous_ts: Option<i64>,
    ) -> Result<()> {
        let now = (self.clock)().timestamp();
        let slot = usize::from(id.has_prefix());
        // Uploads that ended since the last append release their pack buffers now rather than
        // when the next pack is sealed, so a stored pack does not stay beside the filling one.
        Self::reap_finished_uploads(w)?;
        if w.pending[slot].is_none() {
            let session_id = self.ensure_session(w).await?;
            let pack = self.new_pending_pack(slot, &session_id).await?;
            w.pending[slot] = Some(pack);
        }
        let pending = w.pending[slot]
            .as_mut()
            .expect("pending pack was just created");
        let entry = IndexEntry {
            content_id: id,
            timestamp_seconds: previous_ts.map_or(now, |p| now.max(p + 1)),
            deleted,
            pack_blob_id: pending.blob_id.clone(),
            pack_offset: u32::try_from(pending.len())
                .map_err(|_| RepoError::Other("pack offset overflow".into()))?,
            packed_length: u32::try_from(stored.bytes.packed_len())
                .map_err(|_| RepoError::Other(format!("content {id} is too large")))?,
            original_length: stored.original_length,
            compression_header_id: stored.compression_header_id,
            format_version: stored.format_version,
            encryption_key_id: 0,
        };
        pending.data.reserve(stored.bytes.packed_len());
        match stored.bytes {
            Packed::Sealed(bytes) => pending.data.extend_from_slice(bytes),
            // Encrypting under the writer lock costs little (AES-GCM runs at several GB/s) and
            // saves a ciphertext buffer and a copy per content.
            Packed::Plain(payload) => self.crypto.encryptor.encrypt_into(
                payload,
                id.iv(),
                random_bytes(),
                &mut pending.data,
            ),
        }
        pending.entries.add(entry);
        let full = pending.len() >= self.crypto.max_pack_size();
        if let Err(e) = pending.write_out(STREAM_WRITE_BYTES) {
            // The pack is broken: dropping it forgets its contents (none is indexed yet) and
            // removes its temporary file.
            w.pending[slot] = None;
            return Err(e.into());
        }
        if full {
            self.start_upload(w, slot).await?;
        }
        Ok(())
    }

    /// Copies a content into a new pack, unchanged except for a newer timestamp: its stored bytes
    /// are authenticated, then appended as they are (same ID, hence same IV and key). With
    /// `undelete`, only a deleted content is copied, and the copy is live; otherwise the copy
    /// keeps the deleted flag. Missing contents are an error.
    pub async fn rewrite_content(&self, id: &ContentId, undelete: bool) -> Result<()> {
        let (entry, in_memory) = self.current_entry(id).await?;
        if undelete && !entry.deleted {
            return Ok(());
        }
        let bytes = match in_memory {
            Some(bytes) => bytes,
            None => self.fetch_packed(&entry).await?,
        };
        self.check_packed(&entry, &bytes)?;
        let stored = StoredForm {
            bytes: Packed::Sealed(&bytes),
            original_length: entry.original_length,
            compression_header_id: entry.compression_header_id,
            format_version: entry.format_version,
        };
        let deleted = entry.deleted && !undelete;
        let mut w = self.writer.lock().await;
        let previous_ts = w
            .written(id)
            .map_or(entry.timestamp_seconds, |e| e.timestamp_seconds);
        self.append_locked(&mut w, *id, stored, deleted, Some(previous_ts))
            .await
    }

    /// Compresses `data` into `out` and returns the header ID to record, or 0 when the data is
    /// to be stored raw (no compression asked, or it would not shrink).
    fn compress(
        &self,
        id: &ContentId,
        data: &[u8],
        compression: Option<u32>,
        out: &mut Vec<u8>,
    ) -> Result<u32> {
        let Some(header_id) = compression.filter(|&h| h != 0) else {
            return Ok(0);
        };
        if self.crypto.index_version() < 2 {
            // Index v1 cannot record compression: kopia stores metadata raw and refuses data.
            if id.has_prefix() {
                return Ok(0);
            }
            return Err(RepoError::Other(
                "compression requires index format v2; this repository uses v1 (upgrade it first)"
                    .into(),
            ));
        }
        if !compression::worth_compressing(header_id, data)? {
            return Ok(0);
        }
        Ok(if compression::compress_into(header_id, data, out)? {
            header_id
        } else {
            0
        })
    }

    async fn new_pending_pack(&self, slot: usize, session_id: &str) -> Result<PendingPack> {
        let letter = if slot == 0 { 'p' } else { 'q' };
        let blob_id: Arc<str> =
            format!("{letter}{}-{session_id}", hex::encode(random_bytes::<16>())).into();
        let stream = self.store.start_blob(&blob_id).await?;
        // In memory, room for a last content of the largest chunk size past the limit, so the
        // buffer never reallocates (a copy of the whole pack); untouched capacity costs no
        // memory. Those are not reused: a kept one would stay resident beside the next pack.
        // A streamed pack only gathers a content or so at a time: its buffer is passed on.
        let spare = match stream {
            Some(_) => self
                .spare_stream_buffer
                .lock()
                .expect("buffer lock poisoned")
                .take(),
            None => None,
        };
        let mut data = spare.unwrap_or_else(|| {
            Vec::with_capacity(match stream {
                Some(_) => 2 * STREAM_WRITE_BYTES,
                None => self.crypto.max_pack_size() + PACK_BUFFER_HEADROOM,
            })
        });
        if !self.crypto.config.enable_password_change {
            // Packs of v1-created repositories start with a checksummed copy of the format blob.
            if let Ok(replica) = format_blob::checksummed_replica(&self.crypto.format_blob_bytes) {
                data.extend_from_slice(&replica);
            }
        }
        data.extend_from_slice(&random_bytes::<{ pack::PREAMBLE_LEN }>());
        Ok(PendingPack {
            blob_id,
            data,
            stream,
            streamed: 0,
            entries: IndexBuilder::new(),
        })
    }

    async fn ensure_session(&self, w: &mut WriterState) -> Result<String> {
        if let Some(s) = &w.session {
            return Ok(s.info.id.clone());
        }
        if !self.crypto.blobcfg.retention_mode.is_empty() {
            // Blobs written without the lock would silently lack the protection the owner chose.
            return Err(RepoError::Other(format!(
                "repository uses blob retention ({} mode), which kmover cannot apply to new blobs yet: refusing to write",
                self.crypto.blobcfg.retention_mode
            )));
        }
        let now = (self.clock)();
        let info = SessionInfo {
            id: session_id(random_bytes(), now),
            start_time: now,
            checkpoint_time: now,
            username: self.username.clone(),
            hostname: self.hostname.clone(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| RepoError::Other(e.to_string()))?;
        let (marker_id, bytes) = self.crypto.encrypt_blob("s", &info.id, &json);
        self.store.put(&marker_id, bytes).await?;
        let id = info.id.clone();
        w.session = Some(Session {
            info,
            marker_blob_ids: vec![marker_id],
        });
        Ok(id)
    }

    /// Pads the pack, appends its encrypted local index and postamble, and starts uploading it.
    /// Does nothing when `slot` has no pending pack. Cancel-safe: it waits for room among the
    /// uploads before taking the pack, and from then on does not yield until the upload is
    /// registered, so a dropped caller (e.g. a checkpoint cut short) never loses a pack whose
    /// contents were listed.
    async fn start_upload(&self, w: &mut WriterState, slot: usize) -> Result<()> {
        if w.pending[slot].is_none() {
            return Ok(());
        }
        while w.uploads.len() >= MAX_UPLOADS_IN_FLIGHT {
            Self::finish_one_upload(w).await?;
        }
        let Some(PendingPack {
            blob_id,
            mut data,
            stream,
            streamed,
            entries,
        }) = w.pending[slot].take()
        else {
            return Ok(());
        };
        let pad = pack::padding_len(streamed + data.len());
        let mut padding = vec![0u8; pad];
        getrandom::fill(&mut padding).expect("the OS random source failed");
        data.extend_from_slice(&padding);

        let mut local_plain = entries.build(self.crypto.index_version())?;
        local_plain.extend_from_slice(&random_bytes::<{ pack::LOCAL_INDEX_RANDOM_TAIL }>());
        let iv = self.crypto.hasher.hash(&local_plain);
        let local_index_offset = (streamed + data.len()) as u64;
        self.crypto
            .encryptor
            .encrypt_into(&local_plain, iv.as_ref(), random_bytes(), &mut data);
        let postamble = Postamble {
            iv: iv.as_ref().to_vec(),
            local_index_offset,
            local_index_length: (streamed + data.len()) as u64 - local_index_offset,
        };
        data.extend_from_slice(&postamble.encode());

        let id = blob_id.clone();
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        let uploading = match stream {
            Some(mut stream) => {
                // An error drops the stream, which removes the partial pack; its contents were
                // never indexed.
                stream.append(&data)?;
                if data.capacity() <= MAX_KEPT_STREAM_BUFFER {
                    data.clear();
                    *self
                        .spare_stream_buffer
                        .lock()
                        .expect("buffer lock poisoned") = Some(data);
                } else {
                    drop(data);
                }
                // The blocking pool starts the fsync at once, whichever tasks keep the workers.
                w.uploads.spawn_blocking(move || {
                    let r = stream.commit().map_err(RepoError::from);
                    ended_tx.send_replace(true);
                    (id, r)
                });
                UploadingPack {
                    data: std::sync::Weak::new(),
                    ended,
                }
            }
            None => {
                let data = Arc::new(data);
                let store = self.store.clone();
                let uploading = UploadingPack {
                    data: Arc::downgrade(&data),
                    ended,
                };
                w.uploads.spawn(async move {
                    let r = store.put_shared(&id, data).await.map_err(RepoError::from);
                    ended_tx.send_replace(true);
                    (id, r)
                });
                uploading
            }
        };
        w.uploading.insert(blob_id, uploading);
        // The entries join the next index now; a failed upload takes them out again. The
        // smaller index goes into the larger (winners do not depend on the order), so a first
        // pack's index is moved, not copied, and two large ones are never held at once.
        let (mut larger, smaller) = if entries.len() > w.written.len() {
            (entries, std::mem::take(&mut w.written))
        } else {
            (std::mem::take(&mut w.written), entries)
        };
        for e in smaller.sorted_entries() {
            larger.add(e.clone());
        }
        w.written = larger;
        Ok(())
    }

    async fn finish_one_upload(w: &mut WriterState) -> Result<()> {
        match w.uploads.join_next().await {
            Some(joined) => Self::complete_upload(w, joined),
            None => Ok(()),
        }
    }

    /// Completes every upload that has already ended, without waiting for the others.
    fn reap_finished_uploads(w: &mut WriterState) -> Result<()> {
        while let Some(joined) = w.uploads.try_join_next() {
            Self::complete_upload(w, joined)?;
        }
        Ok(())
    }

    /// Releases an ended upload's pack buffer; a failed upload's entries leave the next index.
    fn complete_upload(
        w: &mut WriterState,
        joined: std::result::Result<(Arc<str>, Result<()>), tokio::task::JoinError>,
    ) -> Result<()> {
        let (blob_id, result) =
            joined.map_err(|e| RepoError::Other(format!("pack upload task failed: {e}")))?;
        w.uploading.remove(&blob_id).expect("upload was registered");
        result.inspect_err(|_| {
            // These contents never became durable: nothing may index them. Rare enough that
            // rebuilding the next index without them beats tracking entries per pack.
            let kept = std::mem::take(&mut w.written);
            for e in kept.sorted_entries() {
                if e.pack_blob_id != blob_id {
                    w.written.add(e.clone());
                }
            }
        })
    }

    /// Bytes of pack data this writer holds in memory: the packs filling and those uploading.
    pub async fn pack_bytes_in_memory(&self) -> usize {
        let w = self.writer.lock().await;
        let pending: usize = w.pending.iter().flatten().map(|p| p.data.len()).sum();
        let uploading: usize = w
            .uploading
            .values()
            .filter_map(|up| up.data.upgrade())
            .map(|data| data.len())
            .sum();
        pending + uploading
    }

    /// Index entries held for the next flush (each content's newest entry counts once).
    pub async fn unflushed_entries(&self) -> usize {
        let w = self.writer.lock().await;
        let pending: usize = w.pending.iter().flatten().map(|p| p.entries.len()).sum();
        w.written.len() + pending
    }

    /// Uploads pending packs, writes the index blobs for everything stored, and commits the session.
    pub async fn flush(&self) -> Result<()> {
        let mut w = self.writer.lock().await;
        self.flush_locked(&mut w).await
    }

    async fn flush_locked(&self, w: &mut WriterState) -> Result<()> {
        for slot in 0..2 {
            self.start_upload(w, slot).await?;
        }
        let mut first_error = None;
        while !w.uploads.is_empty() {
            if let Err(e) = Self::finish_one_upload(w).await {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if !w.written.is_empty() {
            // Deletions alone start no pack, hence no session yet: the index blob still needs one.
            let session_id = self.ensure_session(w).await?;
            let version = self.crypto.index_version();
            // One shard (the usual case) is built in place, without a copy of the entries.
            let shards = if w.written.len() <= INDEX_SHARD_SIZE {
                vec![w.written.build(version)?]
            } else {
                w.written
                    .clone()
                    .shard(INDEX_SHARD_SIZE)
                    .iter()
                    .map(|b| b.build(version))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let ids =
                index_blobs::write_index_shards(&self.store, &self.crypto, &session_id, &shards)
                    .await?;
            w.written = IndexBuilder::new();
            let own = ids
                .into_iter()
                .zip(shards)
                .map(|(id, shard)| Ok((self.crypto.parse_index(&id, shard)?, id)))
                .collect::<Result<Vec<_>>>()?;
            let mut committed = self.committed.write().expect("index lock poisoned");
            for (index, id) in own {
                committed.add_own(Some(id), index);
            }
            drop(committed);
        }
        if let Some(session) = w.session.take() {
            for marker in &session.marker_blob_ids {
                self.store.delete(marker).await?;
            }
        }
        w.last_flush = (self.clock)();
        Ok(())
    }

    /// Marks a content deleted: a new index entry copying the old one, newer than it. The data
    /// stays in its pack until maintenance rewrites or removes that pack.
    pub async fn delete_content(&self, id: &ContentId) -> Result<()> {
        let mut w = self.writer.lock().await;
        Self::reap_finished_uploads(&mut w)?;
        let current = match w.written(id) {
            Some(e) => Some(e.clone()),
            None => self
                .committed
                .read()
                .expect("index lock poisoned")
                .lookup_including_deleted(id),
        };
        let Some(current) = current.filter(|e| !e.deleted) else {
            return Ok(());
        };
        let slot = usize::from(id.has_prefix());
        if let Some(pending) = w.pending[slot]
            .as_mut()
            .filter(|p| p.blob_id == current.pack_blob_id)
        {
            // Its pack is still filling: the content leaves that pack's index instead (as
            // kopia does; its bytes stay unreferenced in the pack). Deletions of contents
            // written moments ago are rare, so the pack's index is rebuilt without it.
            let kept = std::mem::take(&mut pending.entries);
            for e in kept.sorted_entries() {
                if e.content_id != *id {
                    pending.entries.add(e.clone());
                }
            }
            return Ok(());
        }
        let now = (self.clock)().timestamp();
        let tombstone = IndexEntry {
            deleted: true,
            timestamp_seconds: now.max(current.timestamp_seconds + 1),
            ..current
        };
        // Newer than every entry of the content (an uploading pack's too, as with kopia), the
        // tombstone replaces them in the next index.
        w.written.add(tombstone);
        Ok(())
    }

    /// The winning index entry of `id`, deleted or not, including unflushed writes.
    pub async fn content_info(&self, id: &ContentId) -> Option<IndexEntry> {
        if let Some(e) = self.writer.lock().await.written(id) {
            return Some(e.clone());
        }
        self.committed
            .read()
            .expect("index lock poisoned")
            .lookup_including_deleted(id)
    }

    /// Every content (merged winners) in ID order; deleted ones only when asked.
    pub async fn list_contents(&self, include_deleted: bool) -> Vec<IndexEntry> {
        self.list_contents_matching(include_deleted, |_| true).await
    }

    /// The contents whose ID satisfies `keep`, in ID order, unflushed writes included. Only the
    /// matching entries are collected, so listing e.g. the manifest (`m`) contents of a large
    /// repository costs one pass over the index, not a copy of it.
    pub async fn list_contents_matching(
        &self,
        include_deleted: bool,
        keep: impl Fn(&ContentId) -> bool,
    ) -> Vec<IndexEntry> {
        let snapshot = self.index_snapshot();
        let mut all: BTreeMap<ContentId, IndexEntry> = snapshot
            .iter()
            .filter(|e| keep(&e.content_id))
            .map(|e| (e.content_id, e))
            .collect();
        let w = self.writer.lock().await;
        // Pending packs' entries are newer than sealed ones of the same content: they go last.
        let pending = w
            .pending
            .iter()
            .flatten()
            .flat_map(|p| p.entries.sorted_entries());
        for e in w.written.sorted_entries().into_iter().chain(pending) {
            if keep(&e.content_id) {
                all.insert(e.content_id, e.clone());
            }
        }
        drop(w);
        all.into_values()
            .filter(|e| include_deleted || !e.deleted)
            .collect()
    }

    /// The committed index as of now (cheap: the loaded indexes are shared). Long iterations use
    /// it so that flushes made meanwhile neither block nor change what they see.
    pub fn index_snapshot(&self) -> CommittedIndex {
        self.committed.read().expect("index lock poisoned").clone()
    }

    /// Reloads the committed index from storage, picking up what other writers (and index
    /// compactions) stored since it was loaded. Unflushed writes stay pending.
    pub async fn refresh(&self) -> Result<()> {
        // Holding the writer keeps a flush from adding entries the new load would not have.
        let _w = self.writer.lock().await;
        let previous = self.index_snapshot();
        let (committed, _) =
            CommittedIndex::load_reusing(&self.store, &self.crypto, &previous).await?;
        drop(previous);
        *self.committed.write().expect("index lock poisoned") = committed;
        Ok(())
    }

    /// Makes a deleted content live again by copying it (kopia's `UndeleteContent`); a live
    /// content is left alone, an unknown one is an error.
    pub async fn undelete_content(&self, id: &ContentId) -> Result<()> {
        self.rewrite_content(id, true).await
    }

    pub fn index_blob_ids(&self) -> Vec<String> {
        self.committed
            .read()
            .expect("index lock poisoned")
            .index_blob_ids()
            .map(str::to_owned)
            .collect()
    }

    /// The winning entry of `id` (deleted or not), unflushed writes first, with its stored bytes
    /// when its pack is still in memory.
    async fn current_entry(&self, id: &ContentId) -> Result<(IndexEntry, Option<Vec<u8>>)> {
        let unflushed = {
            let w = self.writer.lock().await;
            w.written(id).map(|e| (e.clone(), w.unflushed_bytes(e)))
        };
        match unflushed {
            Some((e, UnflushedBytes::InMemory(bytes))) => Ok((e, Some(bytes))),
            Some((e, UnflushedBytes::InStore)) => Ok((e, None)),
            Some((e, UnflushedBytes::Uploading(mut ended))) => {
                // A closed channel means the upload task is gone: ended either way.
                let _ = ended.wait_for(|&done| done).await;
                Ok((e, None))
            }
            None => {
                let e = self
                    .committed
                    .read()
                    .expect("index lock poisoned")
                    .lookup_including_deleted(id);
                Ok((e.ok_or(RepoError::ContentNotFound(*id))?, None))
            }
        }
    }

    pub async fn read_content(&self, id: &ContentId) -> Result<Vec<u8>> {
        let (entry, in_memory) = self.current_entry(id).await?;
        let bytes = match in_memory {
            Some(bytes) => bytes,
            None => self.fetch_packed(&entry).await?,
        };
        self.decode_packed_owned(&entry, bytes)
    }

    async fn fetch_packed(&self, e: &IndexEntry) -> Result<Vec<u8>> {
        self.store
            .get_range(
                &e.pack_blob_id,
                u64::from(e.pack_offset),
                u64::from(e.packed_length),
            )
            .await
            .map_err(|err| corrupt(e, format!("cannot read pack: {err}")))
    }

    /// Decrypts and decompresses one content's stored bytes.
    pub fn decode_packed(&self, e: &IndexEntry, packed: &[u8]) -> Result<Vec<u8>> {
        Self::check_key(e)?;
        let plain = self
            .crypto
            .encryptor
            .decrypt(packed, e.content_id.iv())
            .map_err(|err| undecryptable(e, err))?;
        Self::decompress(e, plain)
    }

    /// [`ContentManager::decode_packed`] inside the stored bytes' own buffer, so a large content
    /// is not held twice while it is decrypted.
    pub fn decode_packed_owned(&self, e: &IndexEntry, packed: Vec<u8>) -> Result<Vec<u8>> {
        Self::check_key(e)?;
        let plain = self
            .crypto
            .encryptor
            .decrypt_in_place(packed, e.content_id.iv())
            .map_err(|err| undecryptable(e, err))?;
        Self::decompress(e, plain)
    }

    /// [`ContentManager::decode_packed`] for its verdict only: the plaintext goes into buffers
    /// this thread reuses, so checking many contents costs no allocation per content.
    fn check_packed(&self, e: &IndexEntry, packed: &[u8]) -> Result<()> {
        Self::check_key(e)?;
        CHECK_BUFFERS.with_borrow_mut(|(plain, decompressed)| {
            plain.clear();
            let checked = self
                .crypto
                .encryptor
                .decrypt_into(packed, e.content_id.iv(), plain)
                .map_err(|err| undecryptable(e, err))
                .and_then(|()| {
                    if e.compression_header_id == 0 {
                        return Ok(());
                    }
                    compression::decompress_into(
                        e.compression_header_id,
                        plain,
                        e.original_length as usize,
                        decompressed,
                    )
                    .map_err(|err| undecompressable(e, err))
                });
            // Large contents' buffers are not kept: every worker thread would hold them.
            for buffer in [plain, decompressed] {
                if buffer.capacity() > MAX_KEPT_CHECK_BUFFER {
                    *buffer = Vec::new();
                }
            }
            checked
        })
    }

    fn check_key(e: &IndexEntry) -> Result<()> {
        if e.encryption_key_id != 0 {
            return Err(corrupt(
                e,
                format!("unsupported encryption key ID {}", e.encryption_key_id),
            ));
        }
        Ok(())
    }

    fn decompress(e: &IndexEntry, plain: Vec<u8>) -> Result<Vec<u8>> {
        if e.compression_header_id == 0 {
            return Ok(plain);
        }
        compression::decompress(e.compression_header_id, &plain, e.original_length as usize)
            .map_err(|err| undecompressable(e, err))
    }

    /// Checks one content: its pack range exists (quick) or it decrypts and decompresses (full).
    pub async fn verify_content(&self, e: &IndexEntry, full: bool) -> Result<()> {
        if full {
            let bytes = self.fetch_packed(e).await?;
            self.decode_packed_owned(e, bytes).map(|_| ())
        } else {
            let meta = self
                .store
                .metadata(&e.pack_blob_id)
                .await
                .map_err(|err| corrupt(e, format!("pack blob is missing: {err}")))?;
            if u64::from(e.pack_offset) + u64::from(e.packed_length) > meta.length {
                return Err(corrupt(
                    e,
                    format!(
                        "pack is shorter ({} bytes) than the content's range",
                        meta.length
                    ),
                ));
            }
            Ok(())
        }
    }
}

fn undecryptable(e: &IndexEntry, err: impl std::fmt::Display) -> RepoError {
    corrupt(e, format!("{err} (the pack is damaged)"))
}

fn undecompressable(e: &IndexEntry, err: impl std::fmt::Display) -> RepoError {
    corrupt(e, format!("cannot decompress: {err}"))
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
