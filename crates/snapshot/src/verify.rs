//! `snapshot verify`: walks snapshot trees and checks every directory is readable and every file's
//! contents exist in the index with their packs present; a given percentage of files is also read
//! back and decrypted in full. Errors name the snapshot and the file path.
//!
//! Each object is checked once however many paths hold it (as kopia's walker, so the counts are
//! kopia's), but a damaged object is reported under every path that holds it: later paths of a
//! damaged file are reported as they are met (or once its batch is read), and the damage found
//! below a directory is repeated under each later path of that directory.
//!
//! Reads are grouped as restore groups them: listings come from whole metadata packs fetched
//! once, pack presence is asked once per pack, and the files read in full are read in batches,
//! their contents coalesced into ranged pack reads with a few in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use kmover_format::index::IndexEntry;
use kmover_format::object::{IndirectEntry, ObjectId};
use kmover_format::snapshot::directory::{DirEntry, EntryType, decode_dir_manifest};
use kmover_repo::metadata_cache::MetadataCache;
use kmover_repo::pack_reader::{
    RangeLimits, coalesce, decode_member, direct_object_bytes, fetch_range,
};
use kmover_repo::{ContentManager, RepoError};

use crate::error::{Result, SnapshotError};
use crate::restore::leaf_chunks;

/// Chunks of fully read files gathered before their packs are read.
const BATCH_CHUNKS: usize = 4096;
/// Ranged pack reads in flight.
const READS_IN_FLIGHT: usize = 8;
/// Metadata (`q`) packs kept in memory.
const METADATA_CACHE_BYTES: u64 = 64 << 20;
/// Largest chunk decoded (kopia cuts at most 16 MiB).
const MAX_CHUNK_BYTES: usize = 64 << 20;

#[derive(Debug, Default, Clone)]
pub struct VerifyStats {
    pub dirs: u64,
    pub files: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    /// Sizes of the files (and symlinks) checked.
    pub bytes: u64,
    /// `path: problem`, one per damaged file or directory.
    pub errors: Vec<String>,
}

/// A file to read in full once its batch is complete.
struct FullRead {
    path: String,
    object: ObjectId,
    chunks: Vec<IndirectEntry>,
}

/// Receives the running totals of a verification.
pub type ProgressFn = Arc<dyn Fn(&VerifyStats) + Send + Sync>;

pub struct Verifier<'a> {
    contents: &'a ContentManager,
    /// Percentage of files read in full, 0..=100.
    read_percent: f64,
    seen: HashSet<ObjectId>,
    /// The problem of each damaged file object, for its later paths.
    damaged: HashMap<ObjectId, String>,
    /// Later paths of file objects whose batch is not read yet.
    waiting_paths: HashMap<ObjectId, Vec<String>>,
    /// First path of every directory object, whose damage later paths repeat.
    dir_paths: HashMap<ObjectId, String>,
    /// Deterministic sampling: every file whose running index falls under the percentage.
    counter: u64,
    metadata: MetadataCache,
    /// Length of every pack asked about so far, or why it could not be had.
    pack_lengths: HashMap<Arc<str>, std::result::Result<u64, String>>,
    batch: Vec<FullRead>,
    batch_chunks: usize,
    pub stats: VerifyStats,
    /// Called after each entry, for a progress display.
    on_progress: Option<ProgressFn>,
}

impl<'a> Verifier<'a> {
    pub fn new(contents: &'a ContentManager, read_percent: f64) -> Self {
        Verifier {
            contents,
            read_percent: read_percent.clamp(0.0, 100.0),
            seen: HashSet::new(),
            damaged: HashMap::new(),
            waiting_paths: HashMap::new(),
            dir_paths: HashMap::new(),
            counter: 0,
            metadata: MetadataCache::new(METADATA_CACHE_BYTES),
            pack_lengths: HashMap::new(),
            batch: Vec::new(),
            batch_chunks: 0,
            stats: VerifyStats::default(),
            on_progress: None,
        }
    }

    /// Calls `report` with the running totals after each entry.
    pub fn with_progress(mut self, report: ProgressFn) -> Self {
        self.on_progress = Some(report);
        self
    }

    /// Verifies the tree under `root`, reporting paths prefixed with `label`.
    pub async fn verify_entry(&mut self, root: &DirEntry, label: &str) -> Result<()> {
        let mut stack = vec![(root.clone(), label.to_string())];
        // Later paths of directories already walked, in the order met.
        let mut repeated_dirs: Vec<(ObjectId, String)> = Vec::new();
        while let Some((entry, path)) = stack.pop() {
            // As kopia's tree walker: each object once, however many snapshots or paths share
            // it, so the counts (and `--json`) are kopia's.
            if !self.seen.insert(entry.object_id) {
                match entry.entry_type {
                    EntryType::Directory => repeated_dirs.push((entry.object_id, path)),
                    EntryType::File | EntryType::Symlink => {
                        self.file_seen_again(&entry.object_id, path)
                    }
                    EntryType::Other(_) => {}
                }
                continue;
            }
            match entry.entry_type {
                EntryType::Directory => {
                    self.stats.dirs += 1;
                    self.dir_paths.insert(entry.object_id, path.clone());
                    match self.read_dir(&entry).await {
                        Ok(children) => {
                            for child in children {
                                let child_path =
                                    format!("{path}/{}", String::from_utf8_lossy(&child.name));
                                stack.push((child, child_path));
                            }
                        }
                        Err(e) => self
                            .stats
                            .errors
                            .push(format!("{path}: unreadable directory: {e}")),
                    }
                }
                EntryType::File | EntryType::Symlink => {
                    self.stats.files += 1;
                    self.stats.bytes += entry.size.max(0) as u64;
                    if let Err(e) = self.verify_file(&entry, &path).await {
                        let problem = e.to_string();
                        self.stats.errors.push(format!("{path}: {problem}"));
                        self.damaged.insert(entry.object_id, problem);
                    }
                }
                EntryType::Other(_) => {}
            }
            if let Some(report) = &self.on_progress {
                report(&self.stats);
            }
        }
        self.read_batch().await;
        self.repeat_dir_errors(&repeated_dirs);
        Ok(())
    }

    /// A file object met before under another path: its damage, once known, is this path's too.
    fn file_seen_again(&mut self, object: &ObjectId, path: String) {
        if let Some(problem) = self.damaged.get(object) {
            self.stats.errors.push(format!("{path}: {problem}"));
        } else if let Some(paths) = self.waiting_paths.get_mut(object) {
            paths.push(path);
        }
    }

    /// Repeats the errors found at or below each directory's first path under its later paths.
    /// In the order met, so a repeated directory inside another one is filled in first (a
    /// depth-first walk finishes a directory's subtree before meeting its next path).
    fn repeat_dir_errors(&mut self, repeated: &[(ObjectId, String)]) {
        for (object, path) in repeated {
            let Some(first) = self.dir_paths.get(object) else {
                continue;
            };
            let copies: Vec<String> = self
                .stats
                .errors
                .iter()
                .filter_map(|e| {
                    let rest = e.strip_prefix(first.as_str())?;
                    (rest.starts_with('/') || rest.starts_with(": "))
                        .then(|| format!("{path}{rest}"))
                })
                .collect();
            self.stats.errors.extend(copies);
        }
    }

    async fn read_dir(&self, dir: &DirEntry) -> Result<Vec<DirEntry>> {
        let bytes = self
            .metadata
            .read_object(self.contents, &dir.object_id)
            .await?;
        let listing = decode_dir_manifest(&bytes).map_err(|e| {
            SnapshotError::Other(format!("directory object {}: {e}", dir.object_id))
        })?;
        Ok(listing.entries)
    }

    async fn verify_file(&mut self, entry: &DirEntry, path: &str) -> Result<()> {
        self.counter += 1;
        let read_fully = (self.counter as f64 * self.read_percent / 100.0).floor()
            > ((self.counter - 1) as f64 * self.read_percent / 100.0).floor();
        // Nested index objects are expanded as restore expands them: bounded, lengths checked.
        let chunks = leaf_chunks(self.contents, &self.metadata, &entry.object_id).await?;
        if !read_fully {
            for chunk in &chunks {
                if let Some(cid) = chunk.object.content_id() {
                    self.check_stored(&cid).await?;
                }
            }
            return Ok(());
        }
        self.batch_chunks += chunks.len();
        self.waiting_paths.insert(entry.object_id, Vec::new());
        self.batch.push(FullRead {
            path: path.to_string(),
            object: entry.object_id,
            chunks,
        });
        if self.batch_chunks >= BATCH_CHUNKS {
            self.read_batch().await;
        }
        Ok(())
    }

    /// The content is indexed, not deleted, and its pack holds its range.
    async fn check_stored(&mut self, cid: &kmover_format::ContentId) -> Result<()> {
        let info = self
            .contents
            .content_info(cid)
            .await
            .ok_or(RepoError::ContentNotFound(*cid))?;
        if info.deleted {
            return Err(RepoError::Other(format!("content {cid} is marked deleted")).into());
        }
        if !self.pack_lengths.contains_key(&info.pack_blob_id) {
            let length = match self.contents.store().metadata(&info.pack_blob_id).await {
                Ok(meta) => Ok(meta.length),
                Err(e) => Err(format!("pack blob is missing: {e}")),
            };
            self.pack_lengths.insert(info.pack_blob_id.clone(), length);
        }
        let problem = match &self.pack_lengths[&info.pack_blob_id] {
            Err(reason) => Some(reason.clone()),
            Ok(length) if u64::from(info.pack_offset) + u64::from(info.packed_length) > *length => {
                Some(format!(
                    "pack is shorter ({length} bytes) than the content's range"
                ))
            }
            Ok(_) => None,
        };
        match problem {
            Some(reason) => Err(corrupt(&info, reason).into()),
            None => Ok(()),
        }
    }

    /// Reads and decodes every content of the batched files, each distinct content once,
    /// and records each file's first problem.
    async fn read_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_chunks = 0;
        if batch.is_empty() {
            return;
        }
        let mut failures: Vec<Option<String>> = vec![None; batch.len()];
        // Distinct contents, their expected length and the files that hold them.
        let mut slots: HashMap<ObjectId, usize> = HashMap::new();
        let mut needed: Vec<(ObjectId, i64, Vec<usize>)> = Vec::new();
        for (file, read) in batch.iter().enumerate() {
            for chunk in &read.chunks {
                if chunk.object.content_id().is_none() {
                    if chunk.length != 0 {
                        failures[file].get_or_insert_with(|| {
                            format!("empty chunk declares {} bytes", chunk.length)
                        });
                    }
                    continue;
                }
                let slot = *slots.entry(chunk.object).or_insert_with(|| {
                    needed.push((chunk.object, chunk.length, Vec::new()));
                    needed.len() - 1
                });
                if needed[slot].1 != chunk.length {
                    failures[file].get_or_insert_with(|| {
                        format!(
                            "object {}: chunk lengths disagree ({} and {})",
                            chunk.object, needed[slot].1, chunk.length
                        )
                    });
                }
                needed[slot].2.push(file);
            }
        }
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(needed.len());
        let mut owners: Vec<usize> = Vec::with_capacity(needed.len());
        for (slot, (object, _, files)) in needed.iter().enumerate() {
            let cid = object
                .content_id()
                .expect("only chunks with contents are planned");
            match self.contents.content_info(&cid).await {
                Some(info) => {
                    entries.push(info);
                    owners.push(slot);
                }
                None => {
                    for &file in files {
                        failures[file].get_or_insert_with(|| format!("content {cid} not found"));
                    }
                }
            }
        }
        let ranges = coalesce(&entries, RangeLimits::default());
        let contents = self.contents;
        let entries_ref = &entries;
        let mut fetched = futures::stream::iter(ranges)
            .map(|range| async move {
                let fetched = fetch_range(contents, &range, entries_ref).await;
                (range, fetched)
            })
            .buffer_unordered(READS_IN_FLIGHT);
        while let Some((range, mut data)) = fetched.next().await {
            for (position, &member) in range.members.iter().enumerate() {
                let (object, length, files) = &needed[owners[member]];
                let plain = decode_member(contents, &range, &mut data, position, &entries[member])
                    .and_then(|plain| direct_object_bytes(object, plain, MAX_CHUNK_BYTES));
                let problem = match plain {
                    Ok(plain) if plain.len() as i64 == *length => continue,
                    Ok(plain) => format!(
                        "object {object}: chunk is {} bytes, its index says {length}",
                        plain.len()
                    ),
                    Err(e) => e.to_string(),
                };
                for &file in files {
                    failures[file].get_or_insert_with(|| problem.clone());
                }
            }
        }
        for (read, failure) in batch.into_iter().zip(failures) {
            let later_paths = self.waiting_paths.remove(&read.object).unwrap_or_default();
            match failure {
                Some(problem) => {
                    for path in std::iter::once(&read.path).chain(&later_paths) {
                        self.stats.errors.push(format!("{path}: {problem}"));
                    }
                    self.damaged.insert(read.object, problem);
                }
                None => {
                    self.stats.files_read += 1;
                    self.stats.bytes_read +=
                        read.chunks.iter().map(|c| c.length as u64).sum::<u64>();
                }
            }
        }
    }
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
