//! Navigating a snapshot's tree: reading directory listings and resolving `a/b/c` below an entry.

use kmover_format::snapshot::directory::{DirEntry, DirManifest, EntryType, decode_dir_manifest};
use kmover_repo::ContentManager;
use kmover_repo::object::read_object;

use crate::error::{Result, SnapshotError};

/// The listing of a directory entry.
pub async fn read_dir(contents: &ContentManager, dir: &DirEntry) -> Result<DirManifest> {
    if dir.entry_type != EntryType::Directory {
        return Err(SnapshotError::Other(format!(
            "{} is not a directory",
            String::from_utf8_lossy(&dir.name)
        )));
    }
    let bytes = read_object(contents, &dir.object_id).await?;
    decode_dir_manifest(&bytes)
        .map_err(|e| SnapshotError::Other(format!("directory object {}: {e}", dir.object_id)))
}

/// The entry at slash-separated `path` below `root` (`""` is `root` itself).
pub async fn resolve(contents: &ContentManager, root: &DirEntry, path: &str) -> Result<DirEntry> {
    let mut current = root.clone();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let listing = read_dir(contents, &current).await?;
        current = listing
            .entries
            .into_iter()
            .find(|e| e.name == part.as_bytes())
            .ok_or_else(|| {
                SnapshotError::Other(format!("path {path:?} not found in snapshot (no {part:?})"))
            })?;
    }
    Ok(current)
}
