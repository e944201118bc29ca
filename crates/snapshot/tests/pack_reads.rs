//! Restore and verify read packs, not contents: a tree is backed up into an in-memory repository
//! behind a blob store that records every read, then restored or verified; each data pack is read
//! in few ranged requests (one for a small tree) and no byte of a pack is fetched twice, however
//! many files share a content; metadata packs (listings) are fetched whole, once. Damaged packs
//! fail exactly the files that need them, naming file, pack and content.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kmover_blob::fault::FaultInjectingStore;
use kmover_blob::memory::MemoryStore;
use kmover_blob::{BlobBytes, BlobMetadata, BlobStore, DynBlobStore, Result as BlobResult};
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::{DirEntry, EntryType};
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::policy::Policy;
use kmover_repo::object::open_object;
use kmover_repo::pack_reader::RangeLimits;
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::backup::{BackupOptions, BackupProgress, backup};
use kmover_snapshot::restore::{RestoreOptions, restore};
use kmover_snapshot::tree;
use kmover_snapshot::verify::Verifier;

/// Records every read of a blob: `(offset, length)`, whole-blob reads as `(0, u64::MAX)`.
#[derive(Debug)]
struct CountingStore {
    inner: DynBlobStore,
    reads: Mutex<HashMap<String, Vec<(u64, u64)>>>,
}

impl CountingStore {
    fn take_reads(&self) -> HashMap<String, Vec<(u64, u64)>> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }

    fn record(&self, id: &str, offset: u64, length: u64) {
        let mut reads = self.reads.lock().unwrap();
        reads
            .entry(id.to_string())
            .or_default()
            .push((offset, length));
    }
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn get(&self, id: &str) -> BlobResult<BlobBytes> {
        self.record(id, 0, u64::MAX);
        self.inner.get(id).await
    }
    async fn get_range(&self, id: &str, offset: u64, length: u64) -> BlobResult<BlobBytes> {
        self.record(id, offset, length);
        self.inner.get_range(id, offset, length).await
    }
    async fn metadata(&self, id: &str) -> BlobResult<BlobMetadata> {
        self.inner.metadata(id).await
    }
    async fn put(&self, id: &str, data: BlobBytes) -> BlobResult<()> {
        self.inner.put(id, data).await
    }
    async fn delete(&self, id: &str) -> BlobResult<()> {
        self.inner.delete(id).await
    }
    async fn list(&self, prefix: &str) -> BlobResult<Vec<BlobMetadata>> {
        self.inner.list(prefix).await
    }
    fn describe(&self) -> String {
        format!("counting {}", self.inner.describe())
    }
}

struct Setup {
    faults: Arc<FaultInjectingStore>,
    counting: Arc<CountingStore>,
    repo: Repository,
    source: tempfile::TempDir,
    root: DirEntry,
}

async fn backed_up(fill: impl FnOnce(&Path)) -> Setup {
    let faults = Arc::new(FaultInjectingStore::new(Arc::new(MemoryStore::new())));
    let counting = Arc::new(CountingStore {
        inner: faults.clone(),
        reads: Mutex::default(),
    });
    let store: DynBlobStore = counting.clone();
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    };
    Repository::create(store.clone(), &opts, "pw")
        .await
        .unwrap();
    let repo = Repository::open(store, "pw", Default::default())
        .await
        .unwrap();
    let source = tempfile::tempdir().unwrap();
    fill(source.path());
    let opts = BackupOptions {
        source: SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: "/src".into(),
        },
        parallel: 2,
        ..Default::default()
    };
    let out = backup(
        &repo,
        source.path(),
        &opts,
        &Policy::kopia_default(),
        Arc::new(BackupProgress::default()),
    )
    .await
    .unwrap();
    let root = out.manifest.root_entry.unwrap();
    Setup {
        faults,
        counting,
        repo,
        source,
        root,
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// 300 small files (every tenth the same), a 1.5 MiB file stored three times, symlinks and an
/// empty file: well under one range cap of distinct data.
fn small_tree(root: &Path) {
    for i in 0..300u64 {
        let data = if i % 10 == 0 {
            b"the same small file, many times\n".to_vec()
        } else {
            pseudo_random(500 + (i as usize * 7) % 2000, i)
        };
        write(&root.join(format!("small/d{}/f{i}.txt", i % 7)), &data);
    }
    let shared = pseudo_random(1536 << 10, 99);
    for name in ["a.bin", "copy/b.bin", "copy/again/c.bin"] {
        write(&root.join("media").join(name), &shared);
    }
    fs::create_dir_all(root.join("links")).unwrap();
    for i in 0..10 {
        symlink(
            format!("../small/d{}/f{i}.txt", i % 7),
            root.join(format!("links/l{i}")),
        )
        .unwrap();
    }
    write(&root.join("empty"), b"");
}

/// Every file and symlink below `root`, relative path to bytes or link target.
fn snapshot_of(root: &Path) -> BTreeMap<PathBuf, (bool, Vec<u8>)> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (bool, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, (true, target.into_os_string().into_encoded_bytes()));
            } else if meta.is_dir() {
                visit(root, &path, out);
            } else {
                out.insert(rel, (false, fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

/// Pack reads, data (`p`) packs only.
fn data_pack_reads(reads: &HashMap<String, Vec<(u64, u64)>>) -> BTreeMap<String, Vec<(u64, u64)>> {
    reads
        .iter()
        .filter(|(id, _)| id.starts_with('p'))
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect()
}

fn assert_no_byte_read_twice(pack: &str, reads: &[(u64, u64)]) {
    let mut sorted = reads.to_vec();
    sorted.sort();
    for pair in sorted.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "pack {pack}: ranges {:?} and {:?} overlap",
            pair[0],
            pair[1]
        );
    }
}

async fn restore_to(
    setup: &Setup,
    target: &Path,
    opts: &RestoreOptions,
) -> kmover_snapshot::restore::RestoreStats {
    restore(
        setup.repo.contents().clone(),
        &setup.root,
        target,
        opts,
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_small_tree_reads_each_data_pack_once() {
    let setup = backed_up(small_tree).await;
    let packs = setup.faults.inner().list("p").await.unwrap();
    assert!(!packs.is_empty());
    setup.counting.take_reads();

    let out = tempfile::tempdir().unwrap();
    let stats = restore_to(&setup, out.path(), &RestoreOptions::default()).await;
    assert_eq!(snapshot_of(out.path()), snapshot_of(setup.source.path()));
    assert_eq!(stats.restored_files, 304);
    assert_eq!(stats.restored_symlinks, 10);

    let reads = setup.counting.take_reads();
    let data = data_pack_reads(&reads);
    for pack in &packs {
        let Some(pack_reads) = data.get(&pack.id) else {
            continue;
        };
        assert_eq!(
            pack_reads.len(),
            1,
            "pack {} ({} bytes) read {} times: {pack_reads:?}",
            pack.id,
            pack.length,
            pack_reads.len()
        );
        assert_ne!(pack_reads[0].1, u64::MAX, "ranged, not whole-blob, reads");
    }
    assert_eq!(
        data.len(),
        packs.len(),
        "every data pack holds restored data"
    );
    // Listings live in metadata packs, each fetched whole once for the walk.
    let metadata: Vec<_> = reads.iter().filter(|(id, _)| id.starts_with('q')).collect();
    assert!(!metadata.is_empty());
    for (id, pack_reads) in metadata {
        assert_eq!(pack_reads, &[(0, u64::MAX)], "metadata pack {id}");
    }

    // Sparse and atomic restores read the same way and give the same files.
    let again = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        write_sparse_files: true,
        write_files_atomically: true,
        ..RestoreOptions::default()
    };
    restore_to(&setup, again.path(), &opts).await;
    assert_eq!(snapshot_of(again.path()), snapshot_of(setup.source.path()));
    let reads = setup.counting.take_reads();
    assert!(data_pack_reads(&reads).values().all(|r| r.len() == 1));
}

#[tokio::test]
async fn large_files_read_every_pack_byte_at_most_once() {
    let setup = backed_up(|root| {
        for i in 0..3u64 {
            let data = pseudo_random(5 << 20, 1000 + i);
            write(&root.join(format!("big{i}.bin")), &data);
            // Whole-file and chunk-level duplicates: the same data, and the data with a tail.
            write(&root.join(format!("dup/big{i}.bin")), &data);
            let mut longer = data.clone();
            longer.extend_from_slice(&pseudo_random(300 << 10, 2000 + i));
            write(&root.join(format!("longer/big{i}.bin")), &longer);
        }
    })
    .await;
    let packs = setup.faults.inner().list("p").await.unwrap();
    setup.counting.take_reads();

    let out = tempfile::tempdir().unwrap();
    restore_to(&setup, out.path(), &RestoreOptions::default()).await;
    assert_eq!(snapshot_of(out.path()), snapshot_of(setup.source.path()));

    let reads = setup.counting.take_reads();
    let data = data_pack_reads(&reads);
    let cap = RangeLimits::default().max_range;
    let mut total_reads = 0;
    for pack in &packs {
        let pack_reads = &data[&pack.id];
        assert_no_byte_read_twice(&pack.id, pack_reads);
        // Neighbouring ranges only split when together they would pass the cap.
        let bound = 2 * pack.length.div_ceil(cap) as usize + 1;
        assert!(
            pack_reads.len() <= bound,
            "pack {} ({} bytes): {} reads, more than {bound}",
            pack.id,
            pack.length,
            pack_reads.len()
        );
        total_reads += pack_reads.len();
    }
    // Files share chunks: each distinct content is read once, in at most one request.
    let mut references = Vec::new();
    chunk_references(&setup, &setup.root, &mut references).await;
    let distinct: std::collections::BTreeSet<_> = references.iter().collect();
    assert!(distinct.len() < references.len(), "the tree shares chunks");
    assert!(
        total_reads <= distinct.len(),
        "{total_reads} reads for {} distinct chunks",
        distinct.len()
    );
}

/// For every file and symlink below `dir`: where its contents stored in `pack` end (empty
/// chunks are never read, so they do not count).
async fn content_ends(
    setup: &Setup,
    dir: &DirEntry,
    rel: PathBuf,
    pack: &str,
    out: &mut BTreeMap<PathBuf, Vec<u64>>,
) {
    let contents = setup.repo.contents();
    for entry in tree::read_dir(contents, dir).await.unwrap().entries {
        let path = rel.join(String::from_utf8(entry.name.clone()).unwrap());
        if entry.entry_type == EntryType::Directory {
            Box::pin(content_ends(setup, &entry, path, pack, out)).await;
            continue;
        }
        let mut ends = Vec::new();
        for chunk in open_object(contents, &entry.object_id)
            .await
            .unwrap()
            .chunks
        {
            let Some(cid) = chunk.object.content_id().filter(|_| chunk.length > 0) else {
                continue;
            };
            let info = contents.content_info(&cid).await.unwrap();
            if &*info.pack_blob_id == pack {
                ends.push(u64::from(info.pack_offset) + u64::from(info.packed_length));
            }
        }
        out.insert(path, ends);
    }
}

/// Every chunk the files below `dir` reference, duplicates included.
async fn chunk_references(setup: &Setup, dir: &DirEntry, out: &mut Vec<ObjectId>) {
    let contents = setup.repo.contents();
    for entry in tree::read_dir(contents, dir).await.unwrap().entries {
        if entry.entry_type == EntryType::Directory {
            Box::pin(chunk_references(setup, &entry, out)).await;
        } else {
            let layout = open_object(contents, &entry.object_id).await.unwrap();
            out.extend(layout.chunks.iter().map(|c| c.object));
        }
    }
}

#[tokio::test]
async fn damaged_packs_fail_the_files_that_need_them_naming_pack_and_content() {
    let setup = backed_up(small_tree).await;
    let packs = setup.faults.inner().list("p").await.unwrap();
    let pack = packs.iter().max_by_key(|p| p.length).unwrap().clone();
    // Cut the pack after half of its contents: exactly the files with a content past the cut
    // fail.
    let mut ends = BTreeMap::new();
    content_ends(&setup, &setup.root, PathBuf::new(), &pack.id, &mut ends).await;
    let mut all_ends: Vec<u64> = ends.values().flatten().copied().collect();
    all_ends.sort();
    let keep = all_ends[all_ends.len() / 2];
    setup.faults.truncate_reads_with_prefix(&pack.id, keep);
    let damaged: BTreeMap<PathBuf, bool> = ends
        .into_iter()
        .map(|(path, ends)| (path, ends.iter().any(|&end| end > keep)))
        .collect();
    let damaged_count = damaged.values().filter(|&&d| d).count();
    assert!(
        damaged_count > 0 && damaged_count < damaged.len(),
        "{damaged:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let opts = RestoreOptions {
        ignore_errors: true,
        write_files_atomically: true,
        ..RestoreOptions::default()
    };
    let stats = restore_to(&setup, out.path(), &opts).await;
    assert_eq!(
        stats.error_count as usize, damaged_count,
        "{:?}",
        stats.errors
    );
    for e in &stats.errors {
        assert!(e.contains(&pack.id.to_string()), "error names no pack: {e}");
        assert!(e.contains("content "), "error names no content: {e}");
    }
    let source = snapshot_of(setup.source.path());
    let restored = snapshot_of(out.path());
    for (rel, data) in &source {
        if damaged[rel] {
            let path = out.path().join(rel).display().to_string();
            assert!(
                !restored.contains_key(rel),
                "{rel:?} restored from a cut pack"
            );
            assert!(
                stats.errors.iter().any(|e| e.contains(&path)),
                "{rel:?} failed without an error naming it"
            );
        } else {
            assert_eq!(restored.get(rel), Some(data), "{rel:?}");
        }
    }
    assert_eq!(
        restored.len(),
        source.len() - damaged_count,
        "temporary files left"
    );

    // A pack that cannot be read at all, without ignore_errors: the restore fails, naming a file.
    setup.faults.clear_faults();
    setup.faults.fail_gets_with_prefix(&pack.id);
    let out = tempfile::tempdir().unwrap();
    let err = restore(
        setup.repo.contents().clone(),
        &setup.root,
        out.path(),
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&out.path().display().to_string()) && err.contains(&pack.id.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn verify_reads_each_pack_once_and_names_damaged_files() {
    let setup = backed_up(small_tree).await;
    let contents = setup.repo.contents();
    setup.counting.take_reads();
    let mut full = Verifier::new(contents, 100.0);
    full.verify_entry(&setup.root, "snap").await.unwrap();
    assert!(full.stats.errors.is_empty(), "{:?}", full.stats.errors);
    // Like kopia's tree walker, each object is verified once however many files hold it.
    let source = snapshot_of(setup.source.path());
    let distinct: std::collections::BTreeSet<&(bool, Vec<u8>)> = source.values().collect();
    assert_eq!(full.stats.files, distinct.len() as u64);
    assert_eq!(full.stats.files_read, distinct.len() as u64);
    let distinct_bytes: u64 = distinct.iter().map(|(_, data)| data.len() as u64).sum();
    assert_eq!(full.stats.bytes_read, distinct_bytes);
    let reads = setup.counting.take_reads();
    assert!(data_pack_reads(&reads).values().all(|r| r.len() == 1));
    assert!(
        reads
            .iter()
            .filter(|(id, _)| id.starts_with('q'))
            .all(|(_, r)| r.len() == 1)
    );

    // Checking presence only reads no data at all.
    let mut quick = Verifier::new(contents, 0.0);
    quick.verify_entry(&setup.root, "snap").await.unwrap();
    assert!(quick.stats.errors.is_empty(), "{:?}", quick.stats.errors);
    assert_eq!(quick.stats.files_read, 0);
    assert!(data_pack_reads(&setup.counting.take_reads()).is_empty());

    // A cut pack: both kinds of verification name the damaged files, the pack and a content.
    let pack = setup.faults.inner().list("p").await.unwrap().remove(0);
    let mut ends = BTreeMap::new();
    content_ends(&setup, &setup.root, PathBuf::new(), &pack.id, &mut ends).await;
    let mut all_ends: Vec<u64> = ends.values().flatten().copied().collect();
    all_ends.sort();
    let keep = all_ends[all_ends.len() / 2];
    setup.faults.truncate_reads_with_prefix(&pack.id, keep);
    let damaged: BTreeMap<String, &(bool, Vec<u8>)> = ends
        .iter()
        .filter(|(_, ends)| ends.iter().any(|&end| end > keep))
        .map(|(path, _)| (format!("snap/{}", path.display()), &source[path]))
        .collect();
    let named_path = |error: &String| {
        damaged
            .keys()
            .any(|path| error.starts_with(&format!("{path}: ")))
    };
    let mut full = Verifier::new(contents, 100.0);
    full.verify_entry(&setup.root, "snap").await.unwrap();
    assert_eq!(
        full.stats.errors.len(),
        // Every path of a damaged object is named, also when several paths share it.
        damaged.len(),
        "{:?}",
        full.stats.errors
    );
    for error in &full.stats.errors {
        assert!(named_path(error), "{error}");
        assert!(
            error.contains(&pack.id) && error.contains("content "),
            "{error}"
        );
    }
    let mut quick = Verifier::new(contents, 0.0);
    quick.verify_entry(&setup.root, "snap").await.unwrap();
    assert!(!quick.stats.errors.is_empty());
    for error in &quick.stats.errors {
        assert!(named_path(error), "{error}");
        assert!(error.contains(&pack.id), "{error}");
    }
}
