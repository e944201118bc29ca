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

/// The set of referenced contents, as sorted fingerprints once [`Marks::finish`] ran.
#[derive(Default)]
pub struct Marks {
    fingerprints: Vec<u64>,
}

impl Marks {
    /// Room for `expected` fingerprints: the index's entry count bounds the distinct contents
    /// GC can match, so the buffer is sized once and duplicates (contents shared by many
    /// snapshots) are squeezed out when it fills, instead of doubling it.
    pub fn with_capacity(expected: usize) -> Self {
        Marks {
            fingerprints: Vec::with_capacity(expected.max(1024)),
        }
    }

    pub fn mark(&mut self, id: &ContentId) {
        if self.fingerprints.len() == self.fingerprints.capacity() {
            self.dedup();
            let capacity = self.fingerprints.capacity();
            if capacity - self.fingerprints.len() < capacity / 16 + 1 {
                self.fingerprints.reserve(capacity / 8 + 1024);
            }
        }
        self.fingerprints.push(fingerprint(id));
    }

    fn dedup(&mut self) {
        self.fingerprints.sort_unstable();
        self.fingerprints.dedup();
    }

    pub fn finish(&mut self) {
        self.dedup();
        self.fingerprints.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Bytes held by the mark set.
    pub fn memory_bytes(&self) -> usize {
        self.fingerprints.capacity() * std::mem::size_of::<u64>()
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

/// Walks every snapshot's tree and returns the contents they reference; `expected` sizes the
/// mark set (the number of index entries).
pub async fn mark_referenced(
    repo: &Repository,
    manifests: &[(String, SnapshotManifest)],
    expected: usize,
) -> Result<Marks> {
    let mut walk = Walk {
        marks: Marks::with_capacity(expected),
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

struct Walk {
    marks: Marks,
    /// Directories and indirect objects already queued: each is read once.
    seen: HashSet<ObjectId>,
    queue: Vec<Job>,
}

impl Walk {
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
                    self.marks.mark(&cid);
                }
            }
        }
    }
}

/// Marks unreferenced contents deleted and restores referenced deleted ones, over `index` (the
/// snapshot the marks were computed from). With `delete` false nothing is changed.
pub async fn sweep(
    repo: &Repository,
    index: &CommittedIndex,
    marks: &Marks,
    safety: &SafetyParameters,
    start_time: DateTime<Utc>,
    delete: bool,
) -> Result<SnapshotGcStats> {
    let contents = repo.contents();
    let mut stats = SnapshotGcStats::default();
    let refs = &marks.fingerprints;
    let mut cursor = 0usize;
    for e in index.iter() {
        let size = i64::from(e.packed_length);
        if e.content_id.prefix() == Some(MANIFEST_CONTENT_PREFIX) {
            stats.in_use_system_content_count += 1;
            stats.in_use_system_content_size += size;
            continue;
        }
        let fp = fingerprint(&e.content_id);
        while cursor < refs.len() && refs[cursor] < fp {
            cursor += 1;
        }
        if cursor < refs.len() && refs[cursor] == fp {
            if e.deleted {
                contents
                    .undelete_content(&e.content_id)
                    .await
                    .map_err(|err| {
                        SnapshotError::Other(format!(
                            "could not undelete referenced content {}: {err}",
                            e.content_id
                        ))
                    })?;
                stats.recovered_content_count += 1;
                stats.recovered_content_size += size;
            }
            stats.in_use_content_count += 1;
            stats.in_use_content_size += size;
            continue;
        }
        let written = DateTime::from_timestamp(e.timestamp_seconds, 0).unwrap_or(start_time);
        if start_time - written < safety.min_content_age_subject_to_gc {
            stats.unreferenced_recent_content_count += 1;
            stats.unreferenced_recent_content_size += size;
            continue;
        }
        stats.unreferenced_content_count += 1;
        stats.unreferenced_content_size += size;
        if delete {
            contents.delete_content(&e.content_id).await?;
            stats.deleted_content_count += 1;
            stats.deleted_content_size += size;
            if stats.unreferenced_content_count.is_multiple_of(FLUSH_EVERY) {
                contents.flush().await?;
            }
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
    let marks = mark_referenced(repo, &manifests, index.total_entries()).await?;
    drop(manifests);
    tracing::info!(
        "snapshot GC: {} referenced contents ({} bytes of marks)",
        marks.len(),
        marks.memory_bytes()
    );
    let stats = sweep(repo, &index, &marks, safety, start_time, delete).await?;
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

    #[test]
    fn marks_dedup_and_sort_within_their_buffer() {
        let mut m = Marks::with_capacity(0);
        let capacity = m.fingerprints.capacity();
        // Far more references than fit, to few distinct contents: the buffer never grows.
        for i in 0..10 * capacity {
            let id = format!("{:02x}aa", i % 3);
            m.mark(&ContentId::parse(&id).unwrap());
        }
        assert_eq!(m.fingerprints.capacity(), capacity);
        m.finish();
        assert_eq!(m.len(), 3);
        assert!(m.fingerprints.windows(2).all(|w| w[0] < w[1]));
        // Distinct contents beyond the estimate still all fit.
        let mut m = Marks::with_capacity(0);
        for i in 0..3 * capacity {
            m.mark(&ContentId::parse(&format!("{i:08x}")).unwrap());
        }
        m.finish();
        assert_eq!(m.len(), 3 * capacity);
    }
}
