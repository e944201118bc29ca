//! Full maintenance at scale (maintenance issue: a repository with 20 million contents is
//! maintained within 1 GiB), measured, not projected.
//!
//! A repository of tiny contents is generated through the library: contents packed normally,
//! index blobs written through the epoch manager by periodic flushes, and four snapshots whose
//! files are indirect objects listing many chunks each (one content per chunk). Half of the
//! snapshots are deleted, then full maintenance (safety none) runs in a child process — this
//! test binary again — whose peak RSS (`VmHWM`) must stay within 1 GiB. Afterwards a sample of
//! the live contents reads back intact, a sample of the garbage is gone, and so are its packs.
//!
//! CI runs 200 000 contents. The 20 million run is ignored by default:
//!
//! ```text
//! KMOVER_SCALE_DIR=/tmp/h4 cargo test --release -p kmover-snapshot --test maintenance_scale \
//!     -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use kmover_blob::DynBlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};
use kmover_format::ContentId;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::{
    INDIRECT_CONTENT_PREFIX, IndirectEntry, ObjectId, encode_indirect_index,
};
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{
    DirEntry, DirManifest, DirectorySummary, EntryType, encode_dir_manifest,
};
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo};
use kmover_repo::maintenance::SafetyParameters;
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::maintenance::{MaintenanceOptions, RequestedMode, run_maintenance};
use kmover_snapshot::repository_setup::initialize_manifests;
use kmover_snapshot::snapshots::{delete_snapshot, save_snapshot};

const OWNER: &str = "u@h";
const PASSWORD: &str = "pw";
const CONTENT_SIZE: usize = 32;
/// Chunks listed by one file's index object (about 90 bytes of JSON each).
const CHUNKS_PER_FILE: u64 = 10_000;
const SNAPSHOTS: u64 = 4;
/// The first this many snapshots are deleted before maintenance.
const DELETED_SNAPSHOTS: u64 = 2;
/// Contents written between index flushes while generating: each flush is one index blob.
const FLUSH_EVERY: u64 = 1_000_000;
/// Every this many-th content is read back (live) or looked up (garbage) afterwards.
const SAMPLE_EVERY: u64 = 9_973;
const RSS_BUDGET_KIB: u64 = 1 << 20;
/// Set in the child: the repository it maintains.
const CHILD_ENV: &str = "KMOVER_SCALE_CHILD_REPO";
/// Precedes the child's peak RSS (KiB) in its output.
const PEAK_MARKER: &str = "child-peak-rss-kib=";
/// Overrides the ignored test's content count (e.g. 2000000 for a quicker profile).
const CONTENTS_ENV: &str = "KMOVER_SCALE_CONTENTS";
/// A command (space-separated words) the child runs under, e.g. `heaptrack -o /tmp/h6/gc`.
const CHILD_WRAPPER_ENV: &str = "KMOVER_SCALE_CHILD_WRAPPER";

fn fast_format() -> CreateOptions {
    CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..Default::default()
    }
}

async fn open(path: &Path) -> Repository {
    let store: DynBlobStore = Arc::new(FilesystemStore::open(path).await.unwrap());
    Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap()
}

/// The unique data of content `i` of a repository of `total`.
fn content_data(i: u64, total: u64) -> [u8; CONTENT_SIZE] {
    let mut data = [0u8; CONTENT_SIZE];
    data[..8].copy_from_slice(&i.to_le_bytes());
    data[8..16].copy_from_slice(&total.to_le_bytes());
    data[16..].copy_from_slice(b"maintenancescale");
    data
}

/// Which snapshot references content `i`: contents are written snapshot by snapshot, so a
/// deleted snapshot's contents fill whole packs that maintenance can delete.
fn snapshot_of(i: u64, total: u64) -> u64 {
    i * SNAPSHOTS / total
}

fn entry(name: String, entry_type: EntryType, object_id: ObjectId, size: i64) -> DirEntry {
    let mode = if entry_type == EntryType::Directory {
        0o755
    } else {
        0o644
    };
    DirEntry {
        name: name.into_bytes(),
        entry_type,
        mode,
        size,
        mtime: UtcTimestamp::from_unix(1_700_000_000, 0),
        uid: 0,
        gid: 0,
        object_id,
        summary: None,
    }
}

/// Writes `chunks` as one file's indirect object and returns its directory entry.
async fn write_file(repo: &Repository, name: String, chunks: &[IndirectEntry]) -> DirEntry {
    let index = encode_indirect_index(chunks);
    let index_id = repo
        .contents()
        .write_content(&index, Some(INDIRECT_CONTENT_PREFIX), None)
        .await
        .unwrap();
    let oid = ObjectId::indirect(ObjectId::direct(index_id)).unwrap();
    let size = chunks.last().map_or(0, |c| c.end_offset());
    entry(name, EntryType::File, oid, size)
}

/// Generates the repository and returns the IDs of the snapshots to delete.
async fn generate(path: &Path, total: u64) -> Vec<String> {
    let store: DynBlobStore = Arc::new(
        FilesystemStore::create(path, ShardingMode::Default)
            .await
            .unwrap(),
    );
    Repository::create(store, &fast_format(), PASSWORD)
        .await
        .unwrap();
    let repo = open(path).await;
    initialize_manifests(&repo, OWNER).await.unwrap();
    let contents = repo.contents();
    let mut to_delete = Vec::new();
    let mut i = 0u64;
    for snapshot in 0..SNAPSHOTS {
        let mut files = Vec::new();
        let mut chunks = Vec::with_capacity(CHUNKS_PER_FILE as usize);
        let mut file_bytes = 0i64;
        while i < total && snapshot_of(i, total) == snapshot {
            let id = contents
                .write_content(&content_data(i, total), None, None)
                .await
                .unwrap();
            chunks.push(IndirectEntry {
                start: file_bytes,
                length: CONTENT_SIZE as i64,
                object: ObjectId::direct(id),
            });
            file_bytes += CONTENT_SIZE as i64;
            i += 1;
            if chunks.len() as u64 == CHUNKS_PER_FILE {
                let name = format!("f{:06}", files.len());
                files.push(write_file(&repo, name, &chunks).await);
                chunks.clear();
                file_bytes = 0;
            }
            if i.is_multiple_of(FLUSH_EVERY) {
                contents.flush().await.unwrap();
            }
        }
        if !chunks.is_empty() {
            let name = format!("f{:06}", files.len());
            files.push(write_file(&repo, name, &chunks).await);
        }
        let file_count = files.len() as i64;
        let listing = DirManifest {
            entries: files,
            summary: None,
        };
        let root_id = contents
            .write_content(&encode_dir_manifest(&listing), Some(b'k'), None)
            .await
            .unwrap();
        let mut root = entry(
            "data".into(),
            EntryType::Directory,
            ObjectId::direct(root_id),
            0,
        );
        root.summary = Some(DirectorySummary {
            files: file_count,
            dirs: 1,
            ..Default::default()
        });
        let manifest = SnapshotManifest {
            source: SourceInfo {
                host: "h".into(),
                user_name: "u".into(),
                path: "/data".into(),
            },
            start_time: UtcTimestamp::from_unix(1_700_000_000 + snapshot as i64 * 3600, 0),
            end_time: UtcTimestamp::from_unix(1_700_000_000 + snapshot as i64 * 3600 + 60, 0),
            root_entry: Some(root),
            ..Default::default()
        };
        let id = save_snapshot(&repo, &manifest).await.unwrap();
        if snapshot < DELETED_SNAPSHOTS {
            to_delete.push(id);
        }
    }
    repo.flush().await.unwrap();
    to_delete
}

/// Blobs whose ID starts with `prefix`, and their total bytes.
async fn blobs(path: &Path, prefix: &str) -> (usize, u64) {
    let store = FilesystemStore::open(path).await.unwrap();
    let list = kmover_blob::BlobStore::list(&store, prefix).await.unwrap();
    (list.len(), list.iter().map(|b| b.length).sum())
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// The child's job: full maintenance of the repository named by [`CHILD_ENV`]; prints its
/// peak RSS on a line of its own for the parent.
fn child_maintenance(repo_path: &str) {
    // As the kmover binary does at start (src/allocator.rs): every buffer of 1 MiB or more is
    // mapped on its own and handed back to the OS when freed, so per-thread arenas do not keep
    // the freed batches of one phase resident into the next.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and takes glibc's own lock.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let repo = open(Path::new(repo_path)).await;
        let opts = MaintenanceOptions {
            safety: SafetyParameters::none(),
            ..MaintenanceOptions::new(RequestedMode::Full, OWNER)
        };
        run_maintenance(&repo, &opts).await.unwrap();
    });
    // On a line of its own: the test harness prints the test name before it.
    println!("\n{PEAK_MARKER}{}", peak_rss_kib());
}

fn scratch_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("KMOVER_SCALE_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir).join("maintenance-scale-repo");
            let _ = std::fs::remove_dir_all(&dir);
            (None, dir)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("repo");
            (Some(tmp), dir)
        }
    }
}

fn du_mib(path: &Path) -> f64 {
    let out = Command::new("du").arg("-sk").arg(path).output().unwrap();
    let kib: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// Generates a repository of `total` contents, maintains it in a child process (this test,
/// re-run with [`CHILD_ENV`] set) and checks the peak RSS and the outcome.
fn maintain_at_scale(test_name: &str, total: u64) {
    if let Ok(repo_path) = std::env::var(CHILD_ENV) {
        child_maintenance(&repo_path);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_tmp, path) = scratch_dir();
    let started = Instant::now();
    let to_delete = runtime.block_on(generate(&path, total));
    let generated_in = started.elapsed();
    let (packs_before, pack_bytes_before) = runtime.block_on(blobs(&path, "p"));
    let (indexes_before, _) = runtime.block_on(blobs(&path, "x"));
    let du_before = du_mib(&path);
    runtime.block_on(async {
        let repo = open(&path).await;
        for id in &to_delete {
            delete_snapshot(&repo, id).await.unwrap();
        }
        repo.flush().await.unwrap();
    });
    // Deletions are stamped after the writes; a second later GC's drop covers them all.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let wrapper = std::env::var(CHILD_WRAPPER_ENV).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut child = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let out = child
        .args([test_name, "--exact", "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let maintained_in = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "maintenance child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_kib: u64 = stdout
        .lines()
        .find_map(|l| l.split_once(PEAK_MARKER).map(|(_, v)| v.trim()))
        .expect("the child reports its peak RSS")
        .parse()
        .unwrap();
    let (packs_after, pack_bytes_after) = runtime.block_on(blobs(&path, "p"));
    let (indexes_after, _) = runtime.block_on(blobs(&path, "x"));
    eprintln!(
        "{total} contents: generated in {:.1} s ({du_before:.0} MiB on disk, {packs_before} packs \
         of {:.0} MiB, {indexes_before} index blobs); full maintenance {:.1} s, peak RSS {:.1} MiB; \
         after: {:.0} MiB on disk, {packs_after} packs of {:.0} MiB, {indexes_after} index blobs",
        generated_in.as_secs_f64(),
        pack_bytes_before as f64 / 1048576.0,
        maintained_in.as_secs_f64(),
        peak_kib as f64 / 1024.0,
        du_mib(&path),
        pack_bytes_after as f64 / 1048576.0,
    );
    assert!(
        peak_kib <= RSS_BUDGET_KIB,
        "full maintenance of {total} contents peaked at {:.0} MiB",
        peak_kib as f64 / 1024.0
    );
    // The deleted snapshots' contents filled about half of the data packs.
    assert!(
        pack_bytes_after * 10 <= pack_bytes_before * 6,
        "pack bytes {pack_bytes_before} -> {pack_bytes_after}: garbage packs were not deleted"
    );

    runtime.block_on(async {
        let repo = open(&path).await;
        let contents = repo.contents();
        let (mut live, mut gone) = (0, 0);
        for i in (0..total).step_by(SAMPLE_EVERY as usize) {
            let data = content_data(i, total);
            let id: ContentId = contents.content_id_for(&data, None).unwrap();
            if snapshot_of(i, total) < DELETED_SNAPSHOTS {
                let info = contents.content_info(&id).await;
                assert!(
                    info.is_none_or(|e| e.deleted),
                    "garbage content {id} (#{i}) survived maintenance"
                );
                assert!(contents.read_content(&id).await.is_err());
                gone += 1;
            } else {
                let read = contents.read_content(&id).await.unwrap_or_else(|e| {
                    panic!("live content {id} (#{i}) unreadable after maintenance: {e}")
                });
                assert_eq!(read, data, "content {id} (#{i})");
                live += 1;
            }
        }
        assert!(live > 0 && gone > 0);
    });
}

#[test]
fn full_maintenance_of_200_thousand_contents_fits_in_1_gib() {
    maintain_at_scale(
        "full_maintenance_of_200_thousand_contents_fits_in_1_gib",
        200_000,
    );
}

#[test]
#[ignore = "generates 20 million contents (~3 GB, minutes): run with --ignored --release"]
fn full_maintenance_of_20_million_contents_fits_in_1_gib() {
    let total = std::env::var(CONTENTS_ENV)
        .ok()
        .map(|v| v.parse().expect("KMOVER_SCALE_CONTENTS is a number"))
        .unwrap_or(20_000_000);
    maintain_at_scale(
        "full_maintenance_of_20_million_contents_fits_in_1_gib",
        total,
    );
}
