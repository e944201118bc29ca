//! Checkpoints of long uploads: the part of the tree finished so far, written as directory
//! listings marked `incomplete: "checkpoint"` and saved as an incomplete snapshot, so an upload
//! interrupted after hours still leaves its finished work referenced (kopia: every 45 minutes).
//! The next backup reuses files from it like from any previous snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kmover_format::object;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{DirEntry, DirManifestBuilder, encode_dir_manifest};
use kmover_repo::ContentManager;
use kmover_repo::object::{ObjectWriterOptions, write_object};

use crate::error::Result;

/// kopia's default and maximum checkpoint interval.
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(45 * 60);

pub const CHECKPOINT_INCOMPLETE_REASON: &str = "checkpoint";

/// A directory whose upload is in progress: its finished entries and in-progress subdirectories.
pub struct DirNode {
    /// The directory's own entry, without object and summary yet.
    template: DirEntry,
    dir_mtime: UtcTimestamp,
    finished: Mutex<Vec<DirEntry>>,
    children: Mutex<BTreeMap<Vec<u8>, Arc<DirNode>>>,
}

impl DirNode {
    pub fn new(template: DirEntry, dir_mtime: UtcTimestamp) -> Arc<Self> {
        Arc::new(DirNode {
            template,
            dir_mtime,
            finished: Mutex::default(),
            children: Mutex::default(),
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
}

/// Writes the listings of everything finished under `node` and returns its checkpoint entry.
pub fn write_checkpoint<'a>(
    node: &'a Arc<DirNode>,
    contents: &'a Arc<ContentManager>,
    metadata_compression: Option<u32>,
) -> futures::future::BoxFuture<'a, Result<DirEntry>> {
    Box::pin(async move {
        let mut entries = node.finished.lock().expect("checkpoint lock").clone();
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
        let mut builder = DirManifestBuilder::new();
        for e in entries {
            builder.add_entry(e);
        }
        let listing = builder.build(node.dir_mtime, CHECKPOINT_INCOMPLETE_REASON);
        let opts = ObjectWriterOptions {
            prefix: Some(object::DIRECTORY_CONTENT_PREFIX),
            compression: metadata_compression,
            metadata_compression,
            splitter: None,
            parallelism: 2,
        };
        let oid = write_object(contents, &encode_dir_manifest(&listing), opts).await?;
        Ok(DirEntry {
            object_id: oid,
            summary: listing.summary,
            ..node.template.clone()
        })
    })
}
