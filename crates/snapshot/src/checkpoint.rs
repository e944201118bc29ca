//! Checkpoints of long uploads: the part of the tree finished so far, written as directory
//! listings marked `incomplete: "checkpoint"` and saved as an incomplete snapshot, so an upload
//! interrupted after hours still leaves its finished work referenced (kopia: every 45 minutes).
//! The next backup reuses files from it like from any previous snapshot.
//!
//! A file still being uploaded appears as kopia writes it (`snapshot/upload/checkpoint_registry.go`,
//! `runCheckpoints`): an entry named `.checkpointed.<name>.<random UUID>` whose object holds the
//! chunks written so far and whose other fields are the file's. The odd name keeps the next
//! backup from taking the partial object for the file, while its chunks are already stored and
//! need not be uploaded again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kmover_format::object::{self, IndirectEntry, ObjectId};
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{DirEntry, DirManifestBuilder, encode_dir_manifest};
use kmover_repo::ContentManager;
use kmover_repo::crypto::random_bytes;
use kmover_repo::object::{ObjectWriterOptions, write_object};

use crate::error::Result;

/// kopia's default and maximum checkpoint interval.
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(45 * 60);

pub const CHECKPOINT_INCOMPLETE_REASON: &str = "checkpoint";

/// Prefix of the name a partly uploaded file gets in a checkpoint.
pub const CHECKPOINTED_PREFIX: &str = ".checkpointed.";

/// A failed entry as the directory's builder records it.
#[derive(Clone)]
struct FailedEntry {
    rel_path: Vec<u8>,
    ignored: bool,
    error: Vec<u8>,
}

/// A directory whose upload is in progress: its finished entries, its in-progress
/// subdirectories and the files being uploaded in it.
pub struct DirNode {
    /// The directory's own entry, without object and summary yet.
    template: DirEntry,
    dir_mtime: UtcTimestamp,
    finished: Mutex<Vec<DirEntry>>,
    failed: Mutex<Vec<FailedEntry>>,
    children: Mutex<BTreeMap<Vec<u8>, Arc<DirNode>>>,
    uploading: Mutex<BTreeMap<u64, Arc<UploadingFile>>>,
    next_upload: AtomicU64,
}

/// A file (or a part of one) being uploaded: its entry so far and the chunks already written.
pub struct UploadingFile {
    /// The entry kopia would write: the file's name, or a part's random name.
    template: DirEntry,
    chunks: Mutex<Vec<IndirectEntry>>,
}

impl UploadingFile {
    /// Records chunks that are written (their contents are in the repository's packs).
    pub fn add_chunks(&self, chunks: &[IndirectEntry]) {
        self.chunks
            .lock()
            .expect("checkpoint lock")
            .extend_from_slice(chunks);
    }

    /// How many chunks are recorded.
    pub fn chunk_count(&self) -> usize {
        self.chunks.lock().expect("checkpoint lock").len()
    }
}

/// Registration of an [`UploadingFile`]; dropping it takes the file out of later checkpoints.
pub struct UploadGuard {
    node: Arc<DirNode>,
    key: u64,
    file: Arc<UploadingFile>,
}

impl UploadGuard {
    pub fn file(&self) -> &UploadingFile {
        &self.file
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.node
            .uploading
            .lock()
            .expect("checkpoint lock")
            .remove(&self.key);
    }
}

impl DirNode {
    pub fn new(template: DirEntry, dir_mtime: UtcTimestamp) -> Arc<Self> {
        Arc::new(DirNode {
            template,
            dir_mtime,
            finished: Mutex::default(),
            failed: Mutex::default(),
            children: Mutex::default(),
            uploading: Mutex::default(),
            next_upload: AtomicU64::new(0),
        })
    }

    pub fn start_child(&self, template: DirEntry, dir_mtime: UtcTimestamp) -> Arc<DirNode> {
        let node = DirNode::new(template, dir_mtime);
        self.children
            .lock()
            .expect("checkpoint lock")
            .insert(node.template.name.clone(), node.clone());
        node
    }

    pub fn end_child(&self, name: &[u8]) {
        self.children.lock().expect("checkpoint lock").remove(name);
    }

    pub fn finished(&self, entry: DirEntry) {
        self.finished.lock().expect("checkpoint lock").push(entry);
    }

    /// Records a failed entry, which checkpoints list in the directory's summary as kopia's do.
    pub fn failed(&self, rel_path: Vec<u8>, ignored: bool, error: Vec<u8>) {
        self.failed
            .lock()
            .expect("checkpoint lock")
            .push(FailedEntry {
                rel_path,
                ignored,
                error,
            });
    }

    /// Registers a file being uploaded in this directory; `template` is its entry (name, type,
    /// mode, size, times, owner) without an object. Checkpoints list it until the guard drops.
    pub fn start_upload(self: &Arc<Self>, template: DirEntry) -> UploadGuard {
        let key = self.next_upload.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(UploadingFile {
            template,
            chunks: Mutex::default(),
        });
        self.uploading
            .lock()
            .expect("checkpoint lock")
            .insert(key, file.clone());
        UploadGuard {
            node: self.clone(),
            key,
            file,
        }
    }

    fn uploading(&self) -> Vec<Arc<UploadingFile>> {
        self.uploading
            .lock()
            .expect("checkpoint lock")
            .values()
            .cloned()
            .collect()
    }
}

/// A random (version 4) UUID in its usual text form, as Go's `uuid.New().String()`.
pub fn random_uuid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn metadata_writer_options(prefix: u8, metadata_compression: Option<u32>) -> ObjectWriterOptions {
    ObjectWriterOptions {
        prefix: Some(prefix),
        compression: metadata_compression,
        metadata_compression,
        splitter: None,
        parallelism: 2,
    }
}

/// The checkpoint entry of a file being uploaded, or `None` while none of its chunks is written:
/// the chunks so far as one object (an `x`-prefixed index when there are several), under
/// kopia's `.checkpointed.` name.
async fn checkpoint_upload(
    file: &UploadingFile,
    contents: &Arc<ContentManager>,
    metadata_compression: Option<u32>,
) -> Result<Option<DirEntry>> {
    let chunks = file.chunks.lock().expect("checkpoint lock").clone();
    let object_id = match chunks.as_slice() {
        [] => return Ok(None),
        [only] => only.object,
        _ => {
            let index = object::encode_indirect_index(&chunks);
            let opts =
                metadata_writer_options(object::INDIRECT_CONTENT_PREFIX, metadata_compression);
            ObjectId::indirect(write_object(contents, &index, opts).await?)?
        }
    };
    let mut name = CHECKPOINTED_PREFIX.as_bytes().to_vec();
    name.extend_from_slice(&file.template.name);
    name.push(b'.');
    name.extend_from_slice(random_uuid().as_bytes());
    Ok(Some(DirEntry {
        name,
        object_id,
        ..file.template.clone()
    }))
}

/// Writes the listings of everything finished under `node` and returns its checkpoint entry.
pub fn write_checkpoint<'a>(
    node: &'a Arc<DirNode>,
    contents: &'a Arc<ContentManager>,
    metadata_compression: Option<u32>,
) -> futures::future::BoxFuture<'a, Result<DirEntry>> {
    Box::pin(async move {
        let mut entries = node.finished.lock().expect("checkpoint lock").clone();
        let failed = node.failed.lock().expect("checkpoint lock").clone();
        let children: Vec<Arc<DirNode>> = node
            .children
            .lock()
            .expect("checkpoint lock")
            .values()
            .cloned()
            .collect();
        for child in &children {
            if entries.iter().any(|e| e.name == child.template.name) {
                continue;
            }
            entries.push(write_checkpoint(child, contents, metadata_compression).await?);
        }
        for file in node.uploading() {
            if let Some(entry) = checkpoint_upload(&file, contents, metadata_compression).await? {
                entries.push(entry);
            }
        }
        let mut builder = DirManifestBuilder::new();
        for e in entries {
            builder.add_entry(e);
        }
        for f in failed {
            builder.add_failed_entry(f.rel_path, f.ignored, f.error);
        }
        let listing = builder.build(node.dir_mtime, CHECKPOINT_INCOMPLETE_REASON);
        let opts = metadata_writer_options(object::DIRECTORY_CONTENT_PREFIX, metadata_compression);
        let oid = write_object(contents, &encode_dir_manifest(&listing), opts).await?;
        Ok(DirEntry {
            object_id: oid,
            summary: listing.summary,
            ..node.template.clone()
        })
    })
}

/// The checkpoint root of a single-file snapshot: the file's `.checkpointed.` entry while it is
/// being uploaded (kopia's `uploadFileWithCheckpointing`), `None` before any chunk is written.
pub async fn write_file_checkpoint(
    node: &Arc<DirNode>,
    contents: &Arc<ContentManager>,
    metadata_compression: Option<u32>,
) -> Result<Option<DirEntry>> {
    for file in node.uploading() {
        if let Some(entry) = checkpoint_upload(&file, contents, metadata_compression).await? {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_have_gos_text_form() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "version 4: {u}");
        assert!(
            matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
            "variant: {u}"
        );
        assert_ne!(random_uuid(), u);
    }
}
