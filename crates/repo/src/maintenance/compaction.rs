//! Merging index blobs into a new set: the single-epoch and range compactions of the epoch
//! manager (`xs`, `xr`) and the legacy manager's compaction (`n` + compaction log). Inputs the
//! content manager already holds are reused rather than fetched and decoded a second time.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kmover_format::blobcrypto::{decrypt_blob_in_place, encrypt_blob_in_place};
use kmover_format::index::IndexEntry;
use kmover_format::index::merge::merge_sorted;

use super::index_writer::ShardPlan;
use crate::committed_index::LoadedIndex;
use crate::crypto::random_bytes;
use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// kopia's `DefaultIndexShardSize`.
pub const INDEX_SHARD_SIZE: usize = 16_000_000;
const FETCH_PARALLELISM: usize = 4;

/// How the output blobs are named.
#[derive(Clone, Copy, Debug)]
pub enum OutputNaming<'a> {
    /// Epoch manager: `<prefix><hash>-s<16 hex>-c<N>`, plaintext as built.
    CompleteSet { prefix: &'a str },
    /// Legacy manager: `n<hash>`, plaintext followed by 32 random bytes (as kopia writes them).
    Legacy,
}

/// The parsed indexes of `blob_ids`, shared with the content manager where it has them.
pub async fn load_indexes(repo: &Repository, blob_ids: &[String]) -> Result<Vec<Arc<LoadedIndex>>> {
    let snapshot = repo.contents().index_snapshot();
    let snapshot = &snapshot;
    futures::stream::iter(blob_ids.iter())
        .map(|id| async move {
            if let Some(loaded) = snapshot.loaded(id) {
                return Ok(loaded);
            }
            let data = repo.store().get(id).await?;
            let plain = decrypt_blob_in_place(&repo.crypto().encryptor, id, data)
                .map_err(|e| RepoError::corrupt_blob(id, e))?;
            let index = repo.crypto().parse_index(id, plain)?;
            Ok::<_, RepoError>(Arc::new(LoadedIndex {
                blob_id: Some(id.clone()),
                index,
            }))
        })
        .buffered(FETCH_PARALLELISM)
        .try_collect()
        .await
}

/// Merges `inputs` (kopia's winner rule per content), leaves out the entries `omit` selects, and
/// writes the result; returns the IDs of the blobs written (none when nothing is left).
pub async fn write_merged(
    repo: &Repository,
    inputs: &[Arc<LoadedIndex>],
    naming: OutputNaming<'_>,
    omit: impl Fn(&IndexEntry) -> bool,
) -> Result<Vec<String>> {
    let crypto = repo.crypto();
    let entries =
        || merge_sorted(inputs.iter().map(|l| l.index.iter()).collect()).filter(|e| !omit(e));
    let plan = ShardPlan::new(INDEX_SHARD_SIZE, &entries);
    let set_suffix = format!("s{}-c{}", hex::encode(random_bytes::<8>()), plan.len());
    let mut written = Vec::with_capacity(plan.len());
    // One shard at a time, encrypted in its own buffer: a shard of millions of entries is in
    // memory once.
    for i in 0..plan.len() {
        let mut shard = plan.build(i, crypto.index_version(), &entries)?;
        let (prefix, suffix) = match naming {
            OutputNaming::CompleteSet { prefix } => (prefix, set_suffix.as_str()),
            OutputNaming::Legacy => {
                shard.extend_from_slice(&random_bytes::<32>());
                (kmover_format::epoch::LEGACY_INDEX_PREFIX, "")
            }
        };
        let (id, bytes) = encrypt_blob_in_place(
            &crypto.hasher,
            &crypto.encryptor,
            prefix,
            suffix,
            shard,
            random_bytes(),
        );
        repo.store().put(&id, bytes).await?;
        written.push(id);
    }
    Ok(written)
}
