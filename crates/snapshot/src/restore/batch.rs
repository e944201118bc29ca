//! Writing a batch of files and symlinks with few blob reads: every content the batch needs is
//! looked up once, the contents are grouped by pack and neighbours coalesced into capped ranged
//! reads, the ranges are fetched with bounded parallelism, and each content is decoded once and
//! written at every offset where it occurs (dedup within and across files) with positional
//! writes. Memory stays near the restore's byte budget for reads in flight, whatever the batch
//! holds.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kmover_format::index::IndexEntry;
use kmover_format::object::{IndirectEntry, ObjectId};
use kmover_repo::ContentManager;
use kmover_repo::pack_reader::{
    FetchedRange, PackRange, RangeLimits, coalesce, decode_member, direct_object_bytes, fetch_range,
};
use tokio::task::JoinSet;

use super::fsops;
use super::objects::MAX_CHUNK_BYTES;
use super::{Ctx, LeafJob};
use crate::error::SnapshotError;

/// Where a prepared entry's contents go.
pub(super) enum Sink {
    /// An open regular file (a temporary one when `temp_name` is set), written at offsets.
    File {
        file: File,
        temp_name: Option<Vec<u8>>,
    },
    /// A symlink target collected in memory (at most `MAX_SYMLINK_TARGET` bytes).
    Symlink { target: Mutex<Vec<u8>> },
}

/// A file or symlink whose chunks are resolved and checked, waiting for its contents.
pub(super) struct Prepared {
    pub job: LeafJob,
    pub sink: Sink,
    /// Length of the object (the sum of `chunks`).
    pub length: u64,
    pub chunks: Vec<IndirectEntry>,
}

/// One distinct content of the batch and every place it goes.
struct Needed {
    object: ObjectId,
    length: u64,
    /// (index of the prepared entry, offset in it)
    targets: Vec<(usize, u64)>,
}

/// What the range tasks share: the batch, its plan and the first failure of each entry.
struct Shared {
    contents: Arc<ContentManager>,
    entries: Vec<Prepared>,
    needed: Vec<Needed>,
    /// Index entries to read, and which `needed` each one is.
    index: Vec<IndexEntry>,
    index_owner: Vec<usize>,
    failures: Vec<OnceLock<SnapshotError>>,
    any_failed: AtomicBool,
    sparse_block: Option<u64>,
    zero_chunks: Arc<Mutex<HashSet<ObjectId>>>,
    restored_bytes: Arc<AtomicU64>,
}

impl Shared {
    fn fail(&self, entry: usize, e: SnapshotError) {
        // Only the first error of an entry is kept; later ones follow from it.
        let _ = self.failures[entry].set(e);
        self.any_failed.store(true, Ordering::Relaxed);
    }

    fn failed(&self, entry: usize) -> bool {
        self.failures[entry].get().is_some()
    }

    /// Decodes every member of `range` and writes it to its targets (blocking I/O and CPU).
    fn write_range(&self, range: &PackRange, mut fetched: FetchedRange) {
        for (position, &member) in range.members.iter().enumerate() {
            let needed = &self.needed[self.index_owner[member]];
            if needed.targets.iter().all(|&(entry, _)| self.failed(entry)) {
                continue;
            }
            let data = decode_member(
                &self.contents,
                range,
                &mut fetched,
                position,
                &self.index[member],
            )
            .and_then(|plain| direct_object_bytes(&needed.object, plain, MAX_CHUNK_BYTES as usize))
            .map_err(|e| e.to_string())
            .and_then(|data| {
                if data.len() as u64 == needed.length {
                    Ok(data)
                } else {
                    Err(format!(
                        "object {}: chunk is {} bytes, its index says {}",
                        needed.object,
                        data.len(),
                        needed.length
                    ))
                }
            });
            let data = match data {
                Ok(data) => data,
                Err(reason) => {
                    for &(entry, _) in &needed.targets {
                        self.fail(entry, SnapshotError::Other(reason.clone()));
                    }
                    continue;
                }
            };
            let all_zero = self.sparse_block.is_some() && fsops::is_zero(&data);
            for &(entry, offset) in &needed.targets {
                if self.failed(entry) {
                    continue;
                }
                match &self.entries[entry].sink {
                    // Sparse restores leave an all-zero content as a hole: nothing to write.
                    Sink::File { .. } if all_zero => {
                        self.restored_bytes
                            .fetch_add(needed.length, Ordering::Relaxed);
                    }
                    Sink::File { file, .. } => {
                        match fsops::write_region(file, offset, &data, self.sparse_block) {
                            Ok(_) => {
                                self.restored_bytes
                                    .fetch_add(needed.length, Ordering::Relaxed);
                            }
                            Err(e) => self.fail(
                                entry,
                                SnapshotError::Other(format!("write at offset {offset}: {e}")),
                            ),
                        }
                    }
                    Sink::Symlink { target } => {
                        let mut target = target.lock().expect("symlink target lock");
                        let start = offset as usize;
                        match target.get_mut(start..start + data.len()) {
                            Some(place) => place.copy_from_slice(&data),
                            None => self.fail(
                                entry,
                                SnapshotError::Other(format!(
                                    "chunk at offset {offset} lies past the symlink target's end"
                                )),
                            ),
                        }
                    }
                }
            }
            if all_zero && needed.length > 0 {
                let mut known = self.zero_chunks.lock().expect("zero chunks lock");
                if known.len() < super::MAX_ZERO_CHUNKS_REMEMBERED {
                    known.insert(needed.object);
                }
            }
        }
    }
}

/// Fetches and writes the contents of `entries`; returns each entry with its first failure.
/// Entries come back in their order, their sinks still open, for the caller to finish.
pub(super) async fn write_contents(
    ctx: &Ctx,
    entries: Vec<Prepared>,
) -> Vec<(Prepared, Option<SnapshotError>)> {
    let failures: Vec<OnceLock<SnapshotError>> = entries.iter().map(|_| OnceLock::new()).collect();
    let mut shared = Shared {
        contents: ctx.contents.clone(),
        entries,
        needed: Vec::new(),
        index: Vec::new(),
        index_owner: Vec::new(),
        failures,
        any_failed: AtomicBool::new(false),
        sparse_block: ctx.sparse_block,
        zero_chunks: ctx.zero_chunks.clone(),
        restored_bytes: ctx.restored_bytes.clone(),
    };
    plan(&mut shared).await;
    let ranges = coalesce(&shared.index, RangeLimits::default());
    let shared = Arc::new(shared);

    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut stopped = false;
    for range in ranges {
        stopped = ctx.cancelled.load(Ordering::Relaxed)
            || (!ctx.opts.ignore_errors && shared.any_failed.load(Ordering::Relaxed));
        if stopped {
            break;
        }
        // A range larger than the whole budget takes all of it: it is read alone.
        let units = range
            .length
            .div_ceil(super::RANGE_BYTES_UNIT)
            .clamp(1, super::RANGE_BYTES_UNITS as u64) as u32;
        let Ok(bytes_permit) = ctx.range_bytes.clone().acquire_many_owned(units).await else {
            stopped = true;
            break;
        };
        let Ok(permit) = ctx.range_permits.clone().acquire_owned().await else {
            stopped = true;
            break;
        };
        let (shared, range) = (shared.clone(), Arc::new(range));
        tasks.spawn(async move {
            let _permits = (permit, bytes_permit);
            let fetched = fetch_range(&shared.contents, &range, &shared.index).await;
            let (writer, written_range) = (shared.clone(), range.clone());
            let written =
                tokio::task::spawn_blocking(move || writer.write_range(&written_range, fetched))
                    .await;
            if let Err(e) = written {
                for &member in &range.members {
                    for &(entry, _) in &shared.needed[shared.index_owner[member]].targets {
                        shared.fail(
                            entry,
                            SnapshotError::Other(format!("content write task failed: {e}")),
                        );
                    }
                }
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}

    let Shared {
        entries, failures, ..
    } = Arc::into_inner(shared).expect("every range task has finished");
    let (mut done, unread): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .zip(failures)
        .map(|(entry, failure)| (entry, failure.into_inner()))
        .partition(|(_, failure)| !stopped || failure.is_some());
    // Entries whose ranges were never read are incomplete; they come last so the error that
    // stopped the batch is reported first.
    done.extend(unread.into_iter().map(|(entry, _)| {
        let stopped = SnapshotError::Other("restore stopped after an earlier error".into());
        (entry, Some(stopped))
    }));
    done
}

/// Finds the distinct contents of the batch and their index entries; contents known to be all
/// zeros are skipped in sparse restores, contents missing from the index fail their entries.
async fn plan(shared: &mut Shared) {
    let mut by_object: HashMap<ObjectId, usize> = HashMap::new();
    let known_zero: HashSet<ObjectId> = if shared.sparse_block.is_some() {
        shared.zero_chunks.lock().expect("zero chunks lock").clone()
    } else {
        HashSet::new()
    };
    for (i, entry) in shared.entries.iter().enumerate() {
        let is_file = matches!(entry.sink, Sink::File { .. });
        for chunk in &entry.chunks {
            if chunk.length == 0 || chunk.object.content_id().is_none() {
                continue;
            }
            if is_file && known_zero.contains(&chunk.object) {
                shared
                    .restored_bytes
                    .fetch_add(chunk.length as u64, Ordering::Relaxed);
                continue;
            }
            let slot = *by_object.entry(chunk.object).or_insert_with(|| {
                shared.needed.push(Needed {
                    object: chunk.object,
                    length: chunk.length as u64,
                    targets: Vec::new(),
                });
                shared.needed.len() - 1
            });
            let needed = &mut shared.needed[slot];
            if needed.length != chunk.length as u64 {
                // Only `Z` chunks reach here unchecked: one object cannot have two lengths.
                let _ = shared.failures[i].set(SnapshotError::Other(format!(
                    "object {}: chunk lengths disagree ({} and {})",
                    chunk.object, needed.length, chunk.length
                )));
                shared.any_failed.store(true, Ordering::Relaxed);
                continue;
            }
            needed.targets.push((i, chunk.start as u64));
        }
    }
    for (slot, needed) in shared.needed.iter().enumerate() {
        let cid = needed
            .object
            .content_id()
            .expect("only objects with a content are planned");
        match shared.contents.content_info(&cid).await {
            Some(info) => {
                shared.index.push(info);
                shared.index_owner.push(slot);
            }
            None => {
                for &(entry, _) in &needed.targets {
                    let _ = shared.failures[entry]
                        .set(kmover_repo::RepoError::ContentNotFound(cid).into());
                    shared.any_failed.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}
