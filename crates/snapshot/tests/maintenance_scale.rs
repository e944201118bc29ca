//! Memory of full maintenance grows with the index, not beyond it (maintenance issue, scale):
//! a repository with 20 million contents must be maintained within 1 GiB.
//!
//! Synthetic repositories at two sizes — small contents in full packs, one snapshot referencing
//! them through directories of 1000 entries, the same number of garbage contents interleaved —
//! are maintained in full (GC, drop, pack deletion) from a fresh open, with every heap
//! allocation counted. The growth between the two sizes gives the bytes per content (index,
//! marks and everything else that grows with the repository); with the fixed part it
//! extrapolates to 20 million contents. Garbage is held equal so that the deletions GC buffers
//! between index flushes (at most kopia's 100 000) count as the fixed cost they are.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kmover_blob::DynBlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{
    DirEntry, DirManifest, DirectorySummary, EntryType, encode_dir_manifest,
};
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo};
use kmover_repo::maintenance::SafetyParameters;
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::maintenance::{MaintenanceOptions, RequestedMode, run_maintenance};
use kmover_snapshot::repository_setup::initialize_manifests;
use kmover_snapshot::snapshots::save_snapshot;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const OWNER: &str = "u@h";
const DIR_ENTRIES: usize = 1000;
/// Unreferenced contents in every repository.
const GARBAGE: u64 = 10_000;
const TARGET_CONTENTS: f64 = 20e6;
const BUDGET: f64 = 1024.0 * 1024.0 * 1024.0;

fn fast_format() -> CreateOptions {
    CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        // Small packs, so that even these few megabytes of contents fill many of them.
        max_pack_size: 1 << 20,
        ..Default::default()
    }
}

async fn open(path: &Path) -> Repository {
    let store: DynBlobStore = Arc::new(FilesystemStore::open(path).await.unwrap());
    Repository::open(store, "pw", Default::default())
        .await
        .unwrap()
}

fn file_entry(name: String, object_id: ObjectId) -> DirEntry {
    DirEntry {
        name: name.into_bytes(),
        entry_type: EntryType::File,
        mode: 0o644,
        size: 32,
        mtime: UtcTimestamp::from_unix(1_700_000_000, 0),
        uid: 0,
        gid: 0,
        object_id,
        summary: None,
    }
}

fn dir_entry(name: String, object_id: ObjectId, files: i64) -> DirEntry {
    DirEntry {
        entry_type: EntryType::Directory,
        mode: 0o755,
        size: 0,
        summary: Some(DirectorySummary {
            files,
            dirs: 1,
            size: files * 32,
            ..Default::default()
        }),
        ..file_entry(name, object_id)
    }
}

/// `live` contents of 32 bytes, files of one snapshot, with [`GARBAGE`] others spread among them.
async fn build(path: &Path, live_count: u64) {
    let total = live_count + GARBAGE;
    let garbage_every = total / GARBAGE;
    let store: DynBlobStore = Arc::new(
        FilesystemStore::create(path, ShardingMode::Default)
            .await
            .unwrap(),
    );
    Repository::create(store, &fast_format(), "pw")
        .await
        .unwrap();
    let repo = open(path).await;
    initialize_manifests(&repo, OWNER).await.unwrap();
    let contents = repo.contents();
    let mut subdirs = Vec::new();
    let mut files = Vec::with_capacity(DIR_ENTRIES);
    let mut live = 0i64;
    for i in 0..total {
        let mut data = [0u8; 32];
        data[..8].copy_from_slice(&i.to_le_bytes());
        data[8..16].copy_from_slice(&total.to_le_bytes());
        let id = contents.write_content(&data, None, None).await.unwrap();
        if i % garbage_every == garbage_every - 1 {
            continue;
        }
        live += 1;
        files.push(file_entry(format!("f{i:09}"), ObjectId::direct(id)));
        if files.len() == DIR_ENTRIES || i + 1 == total {
            let n = files.len() as i64;
            let listing = DirManifest {
                entries: std::mem::take(&mut files),
                summary: None,
            };
            let dir_id = contents
                .write_content(&encode_dir_manifest(&listing), Some(b'k'), None)
                .await
                .unwrap();
            subdirs.push(dir_entry(
                format!("d{:06}", subdirs.len()),
                ObjectId::direct(dir_id),
                n,
            ));
        }
    }
    let root = DirManifest {
        entries: subdirs,
        summary: None,
    };
    let root_id = contents
        .write_content(&encode_dir_manifest(&root), Some(b'k'), None)
        .await
        .unwrap();
    let manifest = SnapshotManifest {
        source: SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: "/data".into(),
        },
        root_entry: Some(dir_entry("data".into(), ObjectId::direct(root_id), live)),
        ..Default::default()
    };
    save_snapshot(&repo, &manifest).await.unwrap();
    repo.flush().await.unwrap();
}

/// Heap bytes at the peak of a full maintenance of the repository at `path`, above what was
/// allocated before it started (the index of the opened repository included).
async fn maintained_peak(path: &Path, expected_live: u64) -> usize {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let repo = open(path).await;
    let opts = MaintenanceOptions {
        safety: SafetyParameters::none(),
        ..MaintenanceOptions::new(RequestedMode::Full, OWNER)
    };
    run_maintenance(&repo, &opts).await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    // The garbage is gone, the rest is still there.
    let listed = repo.contents().list_contents(true).await;
    assert!(listed.iter().all(|e| !e.deleted));
    assert!(listed.len() as u64 >= expected_live);
    peak
}

#[test]
fn full_maintenance_memory_scales_to_20_million_contents_in_1_gib() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (100_000u64, 400_000u64);
    let mut peaks = Vec::new();
    for n in [small, large] {
        let path = dir.path().join(format!("repo-{n}"));
        runtime.block_on(build(&path, n));
        // Deletions are stamped after the writes; a second later GC's drop covers them all.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        peaks.push(runtime.block_on(maintained_peak(&path, n)) as f64);
    }
    let per_content = (peaks[1] - peaks[0]) / (large - small) as f64;
    let fixed = peaks[0] - per_content * small as f64;
    let projected = fixed + per_content * TARGET_CONTENTS;
    eprintln!(
        "full maintenance peak heap: {:.1} MiB for {small} contents, {:.1} MiB for {large}: \
         {per_content:.1} bytes per content + {:.1} MiB; {:.0} MiB projected for 20 million",
        peaks[0] / 1048576.0,
        peaks[1] / 1048576.0,
        fixed / 1048576.0,
        projected / 1048576.0
    );
    assert!(
        projected <= BUDGET,
        "20 million contents would need {:.0} MiB",
        projected / 1048576.0
    );
}
