//! Merging index blobs into a new set: the single-epoch and range compactions of the epoch
//! manager (`xs`, `xr`) and the legacy manager's compaction (`n` + compaction log).
//!
//! Memory stays bounded however many entries the inputs hold: each input blob is decrypted and
//! parsed alone, its (sorted) entries spilled as fixed-width records to a run file in a private
//! temporary directory; the runs are then k-way merged (kopia's winner rule) through small
//! buffered readers, once per pass of the shard writer. Large outputs are split into shards of at
//! most [`OUTPUT_SHARD_ENTRIES`] entries, so one shard is what is built in memory; kopia reads an
//! index set of any shard count, and outputs up to that size stay a single blob as kopia writes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmover_format::ContentId;
use kmover_format::blobcrypto::{decrypt_blob_in_place, encrypt_blob_in_place};
use kmover_format::content_id::MAX_HASH_LEN;
use kmover_format::index::merge::merge_sorted;
use kmover_format::index::{Index, IndexEntry};

use super::index_writer::ShardPlan;
use crate::crypto::random_bytes;
use crate::error::{RepoError, Result};
use crate::repository::Repository;

/// Entries per output shard of a compaction: a shard is built whole in memory (about 35 bytes
/// an entry), so large outputs use more, smaller shards than kopia's 16 million
/// (`DefaultIndexShardSize`).
pub const OUTPUT_SHARD_ENTRIES: usize = 2_000_000;
/// prefix · hash length · hash (padded) · timestamp · deleted · pack position · offset ·
/// packed length · original length · compression header · format version · encryption key.
const RECORD_LEN: usize = 2 + MAX_HASH_LEN + 8 + 1 + 4 + 4 + 4 + 4 + 4 + 1 + 1;
const READ_BUFFER: usize = 64 << 10;

/// How the output blobs are named.
#[derive(Clone, Copy, Debug)]
pub enum OutputNaming<'a> {
    /// Epoch manager: `<prefix><hash>-s<16 hex>-c<N>`, plaintext as built.
    CompleteSet { prefix: &'a str },
    /// Legacy manager: `n<hash>`, plaintext followed by 32 random bytes (as kopia writes them).
    Legacy,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> RepoError {
    RepoError::Other(format!(
        "index compaction: cannot {what} {}: {e}",
        path.display()
    ))
}

/// The entries of the inputs, spilled as sorted runs (one file per input index) in a private
/// directory removed on drop. Pack blob IDs are kept once, in memory, by position.
pub struct SpilledRuns {
    dir: PathBuf,
    runs: Vec<PathBuf>,
    packs: Vec<Arc<str>>,
    pack_positions: HashMap<Arc<str>, u32>,
}

impl Drop for SpilledRuns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SpilledRuns {
    /// An empty set of runs in a new directory under `parent`.
    pub fn new(parent: &Path) -> Result<Self> {
        let dir = parent.join(format!(
            "kmover-index-compaction-{}",
            hex::encode(random_bytes::<8>())
        ));
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "create", e))?;
        Ok(SpilledRuns {
            dir,
            runs: Vec::new(),
            packs: Vec::new(),
            pack_positions: HashMap::new(),
        })
    }

    fn pack_position(&mut self, id: &Arc<str>) -> Result<u32> {
        if let Some(&p) = self.pack_positions.get(id) {
            return Ok(p);
        }
        let p = u32::try_from(self.packs.len())
            .map_err(|_| RepoError::Other("too many pack blobs to compact".into()))?;
        self.packs.push(id.clone());
        self.pack_positions.insert(id.clone(), p);
        Ok(p)
    }

    /// Spills every entry of `index` (sorted by content ID, as any parsed index) as one run.
    pub fn add(&mut self, index: &Index) -> Result<()> {
        let path = self.dir.join(format!("run{:06}", self.runs.len()));
        let file = File::create(&path).map_err(|e| io_error(&path, "create", e))?;
        let mut out = BufWriter::with_capacity(READ_BUFFER, file);
        for e in index.iter() {
            let pack = self.pack_position(&e.pack_blob_id)?;
            out.write_all(&encode_record(&e, pack))
                .map_err(|e| io_error(&path, "write", e))?;
        }
        out.flush().map_err(|e| io_error(&path, "write", e))?;
        self.runs.push(path);
        Ok(())
    }

    /// Every content's winning entry, in order, read back from the runs. A read failure ends
    /// the stream early and is reported by [`MergePass::finish`].
    fn merged(&self) -> MergePass<'_> {
        MergePass {
            runs: self,
            failure: RefCell::new(None),
        }
    }
}

fn encode_record(e: &IndexEntry, pack: u32) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    let hash = e.content_id.hash();
    r[0] = e.content_id.prefix().unwrap_or(0);
    r[1] = hash.len() as u8;
    r[2..2 + hash.len()].copy_from_slice(hash);
    let mut at = 2 + MAX_HASH_LEN;
    let mut put = |bytes: &[u8]| {
        r[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&e.timestamp_seconds.to_be_bytes());
    put(&[u8::from(e.deleted)]);
    put(&pack.to_be_bytes());
    put(&e.pack_offset.to_be_bytes());
    put(&e.packed_length.to_be_bytes());
    put(&e.original_length.to_be_bytes());
    put(&e.compression_header_id.to_be_bytes());
    put(&[e.format_version, e.encryption_key_id]);
    r
}

fn decode_record(r: &[u8; RECORD_LEN], packs: &[Arc<str>]) -> Option<IndexEntry> {
    let prefix = (r[0] != 0).then_some(r[0]);
    let content_id = ContentId::from_hash(prefix, &r[2..2 + usize::from(r[1])]).ok()?;
    let at = 2 + MAX_HASH_LEN;
    let u32_at = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&r[at..at + 8]);
    Some(IndexEntry {
        content_id,
        timestamp_seconds: i64::from_be_bytes(ts),
        deleted: r[at + 8] != 0,
        pack_blob_id: packs.get(u32_at(at + 9) as usize)?.clone(),
        pack_offset: u32_at(at + 13),
        packed_length: u32_at(at + 17),
        original_length: u32_at(at + 21),
        compression_header_id: u32_at(at + 25),
        format_version: r[at + 29],
        encryption_key_id: r[at + 30],
    })
}

/// One or more passes over the merged runs, remembering the first read failure.
struct MergePass<'a> {
    runs: &'a SpilledRuns,
    failure: RefCell<Option<RepoError>>,
}

impl MergePass<'_> {
    fn fail(&self, e: RepoError) {
        self.failure.borrow_mut().get_or_insert(e);
    }

    fn run_reader<'b>(&'b self, path: &'b Path) -> impl Iterator<Item = IndexEntry> + 'b {
        let mut reader = match File::open(path) {
            Ok(f) => Some(BufReader::with_capacity(READ_BUFFER, f)),
            Err(e) => {
                self.fail(io_error(path, "open", e));
                None
            }
        };
        std::iter::from_fn(move || {
            let r = reader.as_mut()?;
            let mut rec = [0u8; RECORD_LEN];
            match r.read_exact(&mut rec) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) => {
                    self.fail(io_error(path, "read", e));
                    return None;
                }
            }
            let entry = decode_record(&rec, &self.runs.packs);
            if entry.is_none() {
                self.fail(RepoError::Other(format!(
                    "index compaction: corrupt record in {}",
                    path.display()
                )));
            }
            entry
        })
    }

    fn entries(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        merge_sorted(self.runs.runs.iter().map(|p| self.run_reader(p)).collect())
    }

    fn finish(&self) -> Result<()> {
        match self.failure.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Fetches, decrypts and parses the index blobs `blob_ids` one at a time and spills each under
/// `parent` (the repository's scratch directory in production).
pub async fn spill_indexes(
    repo: &Repository,
    blob_ids: &[String],
    parent: &Path,
) -> Result<SpilledRuns> {
    let mut runs = SpilledRuns::new(parent)?;
    for id in blob_ids {
        let data = repo.store().get(id).await?;
        let plain = decrypt_blob_in_place(&repo.crypto().encryptor, id, data)
            .map_err(|e| RepoError::corrupt_blob(id, e))?;
        let index = repo.crypto().parse_index(id, plain)?;
        runs.add(&index)?;
    }
    Ok(runs)
}

/// The output shards of the merged `runs` without the entries `omit` selects: planned with one
/// pass over the runs, then built one at a time (each with passes of its own), so only the
/// shard being built is in memory.
pub struct MergedShards<'a, F> {
    runs: &'a SpilledRuns,
    plan: ShardPlan,
    version: u8,
    omit: F,
}

impl<'a, F: Fn(&IndexEntry) -> bool> MergedShards<'a, F> {
    pub fn plan(runs: &'a SpilledRuns, version: u8, max_per_shard: usize, omit: F) -> Result<Self> {
        let pass = runs.merged();
        let plan = ShardPlan::new(max_per_shard, &|| pass.entries().filter(|e| !omit(e)));
        pass.finish()?;
        Ok(MergedShards {
            runs,
            plan,
            version,
            omit,
        })
    }

    /// The number of (non-empty) shards.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// Shard `i` as plaintext index bytes.
    pub fn build(&self, i: usize) -> Result<Vec<u8>> {
        let pass = self.runs.merged();
        let shard = self.plan.build(i, self.version, &|| {
            pass.entries().filter(|e| !(self.omit)(e))
        })?;
        pass.finish()?;
        Ok(shard)
    }
}

/// Merges the index blobs `blob_ids` (kopia's winner rule per content), leaves out the entries
/// `omit` selects, and writes the result; returns the IDs of the blobs written (none when
/// nothing is left).
pub async fn compact_index_blobs(
    repo: &Repository,
    blob_ids: &[String],
    naming: OutputNaming<'_>,
    omit: impl Fn(&IndexEntry) -> bool,
) -> Result<Vec<String>> {
    let runs = spill_indexes(repo, blob_ids, &repo.scratch_directory()).await?;
    let crypto = repo.crypto();
    let shards = MergedShards::plan(&runs, crypto.index_version(), OUTPUT_SHARD_ENTRIES, omit)?;
    let set_suffix = format!("s{}-c{}", hex::encode(random_bytes::<8>()), shards.len());
    let mut written = Vec::with_capacity(shards.len());
    for i in 0..shards.len() {
        let mut shard = shards.build(i)?;
        let (prefix, suffix) = match naming {
            OutputNaming::CompleteSet { prefix } => (prefix, set_suffix.as_str()),
            OutputNaming::Legacy => {
                shard.extend_from_slice(&random_bytes::<32>());
                (kmover_format::epoch::LEGACY_INDEX_PREFIX, "")
            }
        };
        // Encrypted in its own buffer: a shard is in memory once.
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

#[cfg(test)]
mod tests {
    use super::*;
    use kmover_format::index::IndexBuilder;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Indexes over a small pool of IDs with three prefixes, with deletions and timestamp and
    /// pack ties, so every rule of the merge matters.
    fn random_indexes(seed: u64) -> Vec<Index> {
        let mut rng = Rng(seed);
        (0..7)
            .map(|i| {
                let mut b = IndexBuilder::new();
                for _ in 0..40 + i * 30 {
                    let n = rng.next() % 300;
                    let hash: Vec<u8> = (0..16).map(|k| (n >> (k % 8)) as u8 ^ k as u8).collect();
                    let prefix = [None, Some(b'k'), Some(b'x')][(n % 3) as usize];
                    b.add(IndexEntry {
                        content_id: ContentId::from_hash(prefix, &hash).unwrap(),
                        timestamp_seconds: 1_700_000_000 + (rng.next() % 3) as i64,
                        deleted: rng.next().is_multiple_of(3),
                        pack_blob_id: format!("p{}", rng.next() % 4).into(),
                        pack_offset: (rng.next() % 1000) as u32,
                        packed_length: (rng.next() % 5000) as u32,
                        original_length: (rng.next() % 5000) as u32,
                        compression_header_id: [0, 0x1100][(rng.next() % 2) as usize],
                        format_version: 2,
                        encryption_key_id: 0,
                    });
                }
                Index::parse(b.build(2).unwrap(), 28).unwrap()
            })
            .collect()
    }

    #[test]
    fn spilled_merge_equals_the_in_memory_merge() {
        let tmp = tempfile::tempdir().unwrap();
        for seed in [3, 17, 99] {
            let indexes = random_indexes(seed);
            let mut runs = SpilledRuns::new(tmp.path()).unwrap();
            for ix in &indexes {
                runs.add(ix).unwrap();
            }
            let pass = runs.merged();
            let spilled: Vec<IndexEntry> = pass.entries().collect();
            pass.finish().unwrap();
            let in_memory: Vec<IndexEntry> =
                merge_sorted(indexes.iter().map(|ix| ix.iter()).collect()).collect();
            assert_eq!(spilled, in_memory, "seed {seed}");

            // The blobs written: one (as kopia) when small, else shards that together hold
            // exactly the merged entries minus the omitted ones.
            let omit = |e: &IndexEntry| e.deleted && e.timestamp_seconds < 1_700_000_001;
            let kept: Vec<&IndexEntry> = in_memory.iter().filter(|e| !omit(e)).collect();
            for max in [1 << 20, 50] {
                let shards = MergedShards::plan(&runs, 2, max, omit).unwrap();
                if max > kept.len() {
                    assert_eq!(shards.len(), 1);
                } else {
                    assert!(shards.len() > 1 && shards.len() <= kept.len().div_ceil(max));
                }
                let mut reread: Vec<IndexEntry> = (0..shards.len())
                    .flat_map(|i| {
                        let bytes = shards.build(i).unwrap();
                        Index::parse(bytes, 28).unwrap().iter().collect::<Vec<_>>()
                    })
                    .collect();
                reread.sort_by_key(|e| e.content_id);
                assert_eq!(reread.iter().collect::<Vec<_>>(), kept, "seed {seed}");
            }
            let dir = runs.dir.clone();
            drop(runs);
            assert!(!dir.exists(), "runs are removed");
        }
    }
}
