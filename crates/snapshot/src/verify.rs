//! `snapshot verify`: walks snapshot trees and checks every directory is readable and every file's
//! contents exist in the index with their packs present; a given percentage of files is also read
//! back and decrypted in full. Errors name the snapshot and the file path.

use std::collections::HashSet;

use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::{DirEntry, EntryType};
use kmover_repo::ContentManager;
use kmover_repo::object::{open_object, read_chunk};

use crate::error::Result;
use crate::tree::read_dir;

#[derive(Debug, Default, Clone)]
pub struct VerifyStats {
    pub dirs: u64,
    pub files: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    /// `path: problem`, one per damaged file or directory.
    pub errors: Vec<String>,
}

pub struct Verifier<'a> {
    contents: &'a ContentManager,
    /// Percentage of files read in full, 0..=100.
    read_percent: f64,
    seen: HashSet<ObjectId>,
    /// Deterministic sampling: every file whose running index falls under the percentage.
    counter: u64,
    pub stats: VerifyStats,
}

impl<'a> Verifier<'a> {
    pub fn new(contents: &'a ContentManager, read_percent: f64) -> Self {
        Verifier {
            contents,
            read_percent: read_percent.clamp(0.0, 100.0),
            seen: HashSet::new(),
            counter: 0,
            stats: VerifyStats::default(),
        }
    }

    /// Verifies the tree under `root`, reporting paths prefixed with `label`.
    pub async fn verify_entry(&mut self, root: &DirEntry, label: &str) -> Result<()> {
        let mut stack = vec![(root.clone(), label.to_string())];
        while let Some((entry, path)) = stack.pop() {
            match entry.entry_type {
                EntryType::Directory => {
                    self.stats.dirs += 1;
                    if !self.seen.insert(entry.object_id) {
                        continue;
                    }
                    match read_dir(self.contents, &entry).await {
                        Ok(listing) => {
                            for child in listing.entries {
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
                    if let Err(e) = self.verify_file(&entry).await {
                        self.stats.errors.push(format!("{path}: {e}"));
                    }
                }
                EntryType::Other(_) => {}
            }
        }
        Ok(())
    }

    async fn verify_file(&mut self, entry: &DirEntry) -> Result<()> {
        self.counter += 1;
        let read_fully = (self.counter as f64 * self.read_percent / 100.0).floor()
            > ((self.counter - 1) as f64 * self.read_percent / 100.0).floor();
        if !read_fully && !self.seen.insert(entry.object_id) {
            return Ok(());
        }
        let layout = open_object(self.contents, &entry.object_id).await?;
        for chunk in &layout.chunks {
            if read_fully {
                let data = read_chunk(self.contents, chunk).await?;
                self.stats.bytes_read += data.len() as u64;
            } else if let Some(cid) = chunk.object.content_id() {
                let info = self
                    .contents
                    .content_info(&cid)
                    .await
                    .ok_or(kmover_repo::RepoError::ContentNotFound(cid))?;
                if info.deleted {
                    return Err(kmover_repo::RepoError::Other(format!(
                        "content {cid} is marked deleted"
                    ))
                    .into());
                }
                self.contents.verify_content(&info, false).await?;
            }
        }
        if read_fully {
            self.stats.files_read += 1;
        }
        Ok(())
    }
}
