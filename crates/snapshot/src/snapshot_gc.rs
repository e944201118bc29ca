//! Snapshot GC (kopia's `snapshot-gc`): contents that no snapshot references are marked deleted,
//! deleted contents that a snapshot references again are restored.
//!
//! Mark: every snapshot manifest (complete or checkpoint) is walked, each directory and indirect
//! object once, and every content ID backing an entry is recorded as an 8-byte fingerprint (the
//! first 8 bytes of its index key). Memory is proportional to the referenced contents, 8 bytes
//! each, and sorting the fingerprints orders them like the index. Two different contents sharing
//! a fingerprint can only make GC keep or restore one too many, never delete a referenced one.
//!
//! Sweep: the index snapshot the manifests were read from is merged with the sorted fingerprints
//! in one pass. Manifest (`m`) contents are never touched; unreferenced contents younger than the
//! safety margin (relative to the maintenance start) are kept, for snapshots still in progress.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kmover_format::ContentId;
use kmover_format::content_id::MAX_HASH_LEN;
use kmover_format::object::{ObjectId, decode_indirect_index};
use kmover_format::snapshot::directory::{DirEntry, EntryType, decode_dir_manifest};
use kmover_format::snapshot::manifest::{SnapshotManifest, decode_snapshot_manifest};
use kmover_format::snapshot::manifest_store::{
    MANIFEST_CONTENT_PREFIX, decode_manifest_content, merge_manifest_entries,
};
use kmover_repo::Repository;
use kmover_repo::committed_index::CommittedIndex;
use kmover_repo::maintenance::SafetyParameters;
use kmover_repo::maintenance::schedule::SnapshotGcStats;
use kmover_repo::object::read_object;

use crate::error::{Result, SnapshotError};
use crate::snapshots::SNAPSHOT_TYPE;

/// Directory and index objects read at once during the walk.
const READ_PARALLELISM: usize = 16;
/// kopia flushes the deletions every this many unreferenced contents.
const FLUSH_EVERY: u32 = 100_000;

/// The first 8 bytes of the index key (prefix byte, then the hash): ordered like the key.
pub fn fingerprint(id: &ContentId) -> u64 {
    let mut key = [0u8; MAX_HASH_LEN + 1];
    let n = id.write_key(&mut key);
    let mut head = [0u8; 8];
    head[..n.min(8)].copy_from_slice(&key[..n.min(8)]);
    u64::from_be_bytes(head)
}

/// The set of referenced contents.
pub struct Marks {
    set: MarkSet,
    /// Distinct contents marked, once [`Marks::finish`] ran.
    count: usize,
}

enum MarkSet {
    /// One bit per record of the merged table the manifests were read from (identified by its
    /// layout and size): 1 bit per indexed content instead of 8 bytes per referenced one.
    Positions {
        layout: (u64, usize),
        bits: Vec<u64>,
    },
    /// Sorted fingerprints, when the index view also has indexes not merged into its table.
    Fingerprints(Vec<u64>),
}

impl Marks {
    /// The mark set for contents of `view`: positions in its table when that holds everything,
    /// else fingerprints with room for `expected` (see [`Marks::fingerprints`]).
    pub fn for_view(view: &CommittedIndex, expected: usize) -> Self {
        if !view.is_fully_merged() {
            return Self::fingerprints(expected);
        }
        let layout = view.table_layout();
        Marks {
            set: MarkSet::Positions {
                layout,
                bits: vec![0; layout.1.div_ceil(64)],
            },
            count: 0,
        }
    }

    /// Fingerprints with room for `expected`: the index's entry count bounds the distinct
    /// contents GC can match, so the buffer is sized once and duplicates (contents shared by
    /// many snapshots) are squeezed out when it fills, instead of doubling it.
    pub fn fingerprints(expected: usize) -> Self {
        Marks {
            set: MarkSet::Fingerprints(Vec::with_capacity(expected.max(1024))),
            count: 0,
        }
    }

    /// Marks `id`, which `view` (the view the set was made for) may index.
    pub fn mark(&mut self, view: &CommittedIndex, id: &ContentId) {
        match &mut self.set {
            MarkSet::Positions { bits, .. } => {
                // A content the table lacks is not indexed at all: nothing to keep.
                if let Some(p) = view.table_position(id) {
                    bits[p / 64] |= 1 << (p % 64);
                }
            }
            MarkSet::Fingerprints(fps) => {
                if fps.len() == fps.capacity() {
                    fps.sort_unstable();
                    fps.dedup();
                    let capacity = fps.capacity();
                    if capacity - fps.len() < capacity / 16 + 1 {
                        fps.reserve(capacity / 8 + 1024);
                    }
                }
                fps.push(fingerprint(id));
            }
        }
    }

    pub fn finish(&mut self) {
        self.count = match &mut self.set {
            MarkSet::Positions { bits, .. } => bits.iter().map(|w| w.count_ones() as usize).sum(),
            MarkSet::Fingerprints(fps) => {
                fps.sort_unstable();
                fps.dedup();
                fps.shrink_to_fit();
                fps.len()
            }
        };
    }

    /// Whether `id` (an entry of `view`, a later view of the same index) is marked; `None` when
    /// it was not in the marked view (added since: not this GC's to judge). A view whose table
    /// holds other contents than the marked one cannot be judged: an error, nothing assumed.
    pub fn is_marked(&self, view: &CommittedIndex, id: &ContentId) -> Result<Option<bool>> {
        match &self.set {
            MarkSet::Positions { layout, bits } => {
                if view.table_layout() != *layout {
                    return Err(SnapshotError::Other(
                        "the index changed its contents during snapshot GC: stopping, nothing \
                         more is deleted"
                            .into(),
                    ));
                }
                Ok(view
                    .table_position(id)
                    .map(|p| bits[p / 64] & (1 << (p % 64)) != 0))
            }
            MarkSet::Fingerprints(fps) => Ok(Some(fps.binary_search(&fingerprint(id)).is_ok())),
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held by the mark set.
    pub fn memory_bytes(&self) -> usize {
        match &self.set {
            MarkSet::Positions { bits, .. } => bits.capacity() * 8,
            MarkSet::Fingerprints(fps) => fps.capacity() * 8,
        }
    }
}

/// Every snapshot manifest stored in the `m` contents of `index` — read from that same index
/// snapshot, so whatever they reference is in it too. An unreadable manifest is an error: GC
/// without it would delete what it references.
pub async fn snapshot_manifests(
    repo: &Repository,
    index: &CommittedIndex,
) -> Result<Vec<(String, SnapshotManifest)>> {
    let ids: Vec<ContentId> = index
        .iter()
        .filter(|e| !e.deleted && e.content_id.prefix() == Some(MANIFEST_CONTENT_PREFIX))
        .map(|e| e.content_id)
        .collect();
    let mut all = Vec::new();
    for id in ids {
        let data = repo.contents().read_content(&id).await?;
        let entries = decode_manifest_content(&data)
            .map_err(|e| SnapshotError::Other(format!("manifest content {id}: {e}")))?;
        all.extend(entries);
    }
    let mut out = Vec::new();
    for (id, entry) in merge_manifest_entries(all) {
        if entry.labels.get("type").map(String::as_str) != Some(SNAPSHOT_TYPE) {
            continue;
        }
        let manifest = decode_snapshot_manifest(&entry.data).map_err(|e| {
            SnapshotError::Other(format!("snapshot manifest {id} is unreadable: {e}"))
        })?;
        out.push((id, manifest));
    }
    Ok(out)
}

enum Job {
    /// A directory object to list.
    Dir(ObjectId),
    /// The index object of an indirect object, to list its chunks.
    Indirect(ObjectId),
}

/// Walks every snapshot's tree and returns the contents of `view` (the index the manifests were
/// read from) they reference.
pub async fn mark_referenced(
    repo: &Repository,
    manifests: &[(String, SnapshotManifest)],
    view: &CommittedIndex,
) -> Result<Marks> {
    let mut walk = Walk {
        marks: Marks::for_view(view, view.total_entries()),
        view,
        seen: HashSet::new(),
        queue: Vec::new(),
    };
    for (id, m) in manifests {
        let root = m.root_entry.as_ref().ok_or_else(|| {
            SnapshotError::Other(format!("snapshot {id} has no root entry: refusing to GC"))
        })?;
        walk.entry(root);
    }
    let contents = repo.contents();
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < READ_PARALLELISM {
            let Some(job) = walk.queue.pop() else { break };
            in_flight.push(async move {
                let oid = match &job {
                    Job::Dir(o) | Job::Indirect(o) => *o,
                };
                (job, read_object(contents, &oid).await)
            });
        }
        let Some((job, bytes)) = in_flight.next().await else {
            break;
        };
        match job {
            Job::Dir(oid) => {
                let bytes = bytes.map_err(|e| {
                    SnapshotError::Other(format!("error reading directory {oid}: {e}"))
                })?;
                let listing = decode_dir_manifest(&bytes)
                    .map_err(|e| SnapshotError::Other(format!("directory object {oid}: {e}")))?;
                for child in &listing.entries {
                    walk.entry(child);
                }
            }
            Job::Indirect(index_oid) => {
                let bytes = bytes.map_err(|e| {
                    SnapshotError::Other(format!("error reading index object {index_oid}: {e}"))
                })?;
                let chunks = decode_indirect_index(&bytes)
                    .map_err(|e| SnapshotError::Other(format!("index object {index_oid}: {e}")))?;
                for c in chunks {
                    walk.object(c.object);
                }
            }
        }
    }
    walk.marks.finish();
    Ok(walk.marks)
}

struct Walk<'a> {
    marks: Marks,
    view: &'a CommittedIndex,
    /// Directories and indirect objects already queued: each is read once.
    seen: HashSet<ObjectId>,
    queue: Vec<Job>,
}

impl Walk<'_> {
    fn entry(&mut self, e: &DirEntry) {
        if e.entry_type == EntryType::Directory {
            if self.seen.insert(e.object_id) {
                self.object(e.object_id);
                self.queue.push(Job::Dir(e.object_id));
            }
        } else {
            self.object(e.object_id);
        }
    }

    /// Marks the contents backing `oid`; an indirect object's index object is marked now and
    /// queued so its chunks get marked when read.
    fn object(&mut self, oid: ObjectId) {
        // An indirect ID also names a content (its innermost index object's), so test the
        // indirection first: its chunks are only found by reading the index object.
        match oid.index_object_id() {
            Some(index_oid) => {
                if self.seen.insert(oid) {
                    self.object(index_oid);
                    self.queue.push(Job::Indirect(index_oid));
                }
            }
            None => {
                if let Some(cid) = oid.content_id() {
                    self.marks.mark(self.view, &cid);
                }
            }
        }
    }
}

enum Action {
    Delete,
    Undelete,
}

/// Marks unreferenced contents deleted and restores referenced deleted ones. With `delete` false
/// nothing is deleted.
///
/// Works in batches of [`FLUSH_EVERY`] changes, each decided on a fresh view of the index and
/// applied after that view is released: the index then folds the flushed deletions into its
/// table in place instead of copying a table of millions of contents beside the one a long-held
/// view would keep alive. A batch resumes after the last content ID decided; what precedes it
/// is all this sweep changes, so later contents look as they did when marked.
pub async fn sweep(
    repo: &Repository,
    marks: &Marks,
    safety: &SafetyParameters,
    start_time: DateTime<Utc>,
    delete: bool,
) -> Result<SnapshotGcStats> {
    sweep_in_batches(
        repo,
        marks,
        safety,
        start_time,
        delete,
        FLUSH_EVERY as usize,
    )
    .await
}

async fn sweep_in_batches(
    repo: &Repository,
    marks: &Marks,
    safety: &SafetyParameters,
    start_time: DateTime<Utc>,
    delete: bool,
    batch_size: usize,
) -> Result<SnapshotGcStats> {
    let contents = repo.contents();
    let mut stats = SnapshotGcStats::default();
    let mut after: Option<ContentId> = None;
    loop {
        let mut batch: Vec<(ContentId, Action, i64)> = Vec::new();
        let mut resume = None;
        {
            let view = contents.index_snapshot();
            for e in view.iter_after(after.as_ref()) {
                let size = i64::from(e.packed_length);
                if e.content_id.prefix() == Some(MANIFEST_CONTENT_PREFIX) {
                    stats.in_use_system_content_count += 1;
                    stats.in_use_system_content_size += size;
                    continue;
                }
                let Some(marked) = marks.is_marked(&view, &e.content_id)? else {
                    continue;
                };
                if marked {
                    if e.deleted {
                        batch.push((e.content_id, Action::Undelete, size));
                    }
                    stats.in_use_content_count += 1;
                    stats.in_use_content_size += size;
                } else {
                    let written =
                        DateTime::from_timestamp(e.timestamp_seconds, 0).unwrap_or(start_time);
                    if start_time - written < safety.min_content_age_subject_to_gc {
                        stats.unreferenced_recent_content_count += 1;
                        stats.unreferenced_recent_content_size += size;
                        continue;
                    }
                    stats.unreferenced_content_count += 1;
                    stats.unreferenced_content_size += size;
                    if delete {
                        batch.push((e.content_id, Action::Delete, size));
                    }
                }
                if batch.len() >= batch_size {
                    resume = Some(e.content_id);
                    break;
                }
            }
        }
        for (id, action, size) in &batch {
            match action {
                Action::Undelete => {
                    contents.undelete_content(id).await.map_err(|err| {
                        SnapshotError::Other(format!(
                            "could not undelete referenced content {id}: {err}"
                        ))
                    })?;
                    stats.recovered_content_count += 1;
                    stats.recovered_content_size += size;
                }
                Action::Delete => {
                    contents.delete_content(id).await?;
                    stats.deleted_content_count += 1;
                    stats.deleted_content_size += size;
                }
            }
        }
        match resume {
            Some(id) => {
                contents.flush().await?;
                after = Some(id);
            }
            None => break,
        }
    }
    contents.flush().await?;
    Ok(stats)
}

/// The whole GC: load the index snapshot and its snapshot manifests, mark, sweep.
pub async fn run_snapshot_gc(
    repo: &Repository,
    safety: &SafetyParameters,
    start_time: DateTime<Utc>,
    delete: bool,
) -> Result<SnapshotGcStats> {
    let index = repo.contents().index_snapshot();
    let manifests = snapshot_manifests(repo, &index).await?;
    let marks = mark_referenced(repo, &manifests, &index).await?;
    // The sweep takes its own views: holding this one would keep the table shared.
    drop(index);
    drop(manifests);
    tracing::info!(
        "snapshot GC: {} referenced contents ({} bytes of marks)",
        marks.len(),
        marks.memory_bytes()
    );
    let stats = sweep(repo, &marks, safety, start_time, delete).await?;
    if stats.unreferenced_content_count > 0 && !delete {
        return Err(SnapshotError::Other(
            "Not deleting because 'gcDelete' was not set".into(),
        ));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sweeps in batches of 7 over a table folded in place between them: exactly the unmarked
    /// contents end deleted, marked deleted ones come back, and positions stay valid throughout.
    #[tokio::test]
    async fn batched_sweep_over_a_table_folded_in_place() {
        use kmover_blob::DynBlobStore;
        use kmover_blob::memory::MemoryStore;
        use kmover_repo::CreateOptions;

        let store: DynBlobStore = std::sync::Arc::new(MemoryStore::new());
        let opts = CreateOptions {
            key_algorithm: kmover_format::kdf::KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
            ..Default::default()
        };
        Repository::create(store.clone(), &opts, "pw")
            .await
            .unwrap();
        let repo = Repository::open(store, "pw", Default::default())
            .await
            .unwrap();
        let contents = repo.contents();
        let mut ids = Vec::new();
        // Four flushes, then the deletions': the fifth index folds them all into one unshared
        // table.
        for round in 0..4u32 {
            for i in 0..15u32 {
                let data = format!("content {round} {i}");
                ids.push(
                    contents
                        .write_content(data.as_bytes(), None, None)
                        .await
                        .unwrap(),
                );
            }
            contents.flush().await.unwrap();
        }
        let marked = |i: usize| i.is_multiple_of(3);
        for (i, id) in ids.iter().enumerate() {
            if marked(i) && i.is_multiple_of(2) {
                contents.delete_content(id).await.unwrap();
            }
        }
        contents.flush().await.unwrap();
        // Deleted later than written, and older than the GC start.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let view = contents.index_snapshot();
        assert!(view.is_fully_merged(), "the deletions folded in too");
        let mut marks = Marks::for_view(&view, view.total_entries());
        for (i, id) in ids.iter().enumerate() {
            if marked(i) {
                marks.mark(&view, id);
            }
        }
        marks.finish();
        assert!(matches!(marks.set, MarkSet::Positions { .. }));
        assert_eq!(marks.len(), ids.len().div_ceil(3));
        drop(view);

        let start = repo.now() + chrono::TimeDelta::seconds(5);
        let stats = sweep_in_batches(&repo, &marks, &SafetyParameters::none(), start, true, 7)
            .await
            .unwrap();
        let unmarked = ids.len() - marks.len();
        assert_eq!(stats.deleted_content_count as usize, unmarked);
        assert_eq!(stats.in_use_content_count as usize, marks.len());
        assert_eq!(
            stats.recovered_content_count as usize,
            ids.len().div_ceil(6)
        );
        for (i, id) in ids.iter().enumerate() {
            let e = contents.content_info(id).await.unwrap();
            assert_eq!(e.deleted, !marked(i), "content #{i}");
        }
    }

    #[test]
    fn fingerprints_order_like_keys() {
        let ids = ["00ff", "0100", "k0011223344556677", "kff", "m01", "x00"];
        let fps: Vec<u64> = ids
            .iter()
            .map(|s| fingerprint(&ContentId::parse(s).unwrap()))
            .collect();
        let mut sorted = fps.clone();
        sorted.sort_unstable();
        assert_eq!(fps, sorted);
        assert_eq!(
            fps[2],
            u64::from_be_bytes(*b"k\x00\x11\x22\x33\x44\x55\x66")
        );
    }

    fn fps(m: &Marks) -> &Vec<u64> {
        match &m.set {
            MarkSet::Fingerprints(f) => f,
            MarkSet::Positions { .. } => panic!("fingerprint marks expected"),
        }
    }

    #[test]
    fn marks_dedup_and_sort_within_their_buffer() {
        let view = CommittedIndex::default();
        let mut m = Marks::fingerprints(0);
        let capacity = fps(&m).capacity();
        // Far more references than fit, to few distinct contents: the buffer never grows.
        for i in 0..10 * capacity {
            let id = format!("{:02x}aa", i % 3);
            m.mark(&view, &ContentId::parse(&id).unwrap());
        }
        assert_eq!(fps(&m).capacity(), capacity);
        m.finish();
        assert_eq!(m.len(), 3);
        assert!(fps(&m).windows(2).all(|w| w[0] < w[1]));
        // Distinct contents beyond the estimate still all fit.
        let mut m = Marks::fingerprints(0);
        for i in 0..3 * capacity {
            m.mark(&view, &ContentId::parse(&format!("{i:08x}")).unwrap());
        }
        m.finish();
        assert_eq!(m.len(), 3 * capacity);
    }
}
