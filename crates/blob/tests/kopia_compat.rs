//! Interoperability with the real kopia binary: we read the layouts kopia writes, and kopia reads
//! and deletes what we write. Skipped loudly when kopia is absent (fails under CI=true).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use chrono::{DateTime, Utc};
use common::{Kopia, require_kopia};
use kmover_blob::BlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};

/// (id, length, mtime) of every blob file under `root`, derived from the disk alone: the ID is the
/// path with separators and the `.f` suffix removed.
fn blobs_on_disk(root: &Path) -> BTreeMap<String, (u64, DateTime<Utc>)> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, (u64, DateTime<Utc>)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_str().unwrap());
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                walk(&entry.path(), &name, out);
            } else if let Some(id) = name.strip_suffix(".f") {
                out.insert(
                    id.to_string(),
                    (meta.len(), meta.modified().unwrap().into()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// `kopia blob list --json` as (id → (length, timestamp)).
fn kopia_blob_list(kopia: &Kopia, prefix: &str) -> BTreeMap<String, (u64, DateTime<Utc>)> {
    let output = kopia.run(&["blob", "list", "--json", &format!("--prefix={prefix}")]);
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("kopia blob list --json");
    listed
        .iter()
        .map(|b| {
            let id = b["id"].as_str().unwrap().to_string();
            let length = b["length"].as_u64().unwrap();
            let timestamp = DateTime::parse_from_rfc3339(b["timestamp"].as_str().unwrap())
                .unwrap()
                .to_utc();
            (id, (length, timestamp))
        })
        .collect()
}

async fn our_list(store: &FilesystemStore, prefix: &str) -> BTreeMap<String, (u64, DateTime<Utc>)> {
    let listed = store.list(prefix).await.unwrap();
    let count = listed.len();
    let map: BTreeMap<_, _> = listed
        .into_iter()
        .map(|m| (m.id, (m.length, m.timestamp)))
        .collect();
    assert_eq!(map.len(), count, "duplicate IDs in our listing");
    map
}

/// Each kopia layout: `.shards` byte for byte, our listing against the disk and against kopia's,
/// every blob readable, and our `create` writing the same `.shards` as kopia.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_every_layout_kopia_writes() {
    let Some(binary) = require_kopia("we_read_every_layout_kopia_writes") else {
        return;
    };
    for (flags, mode, shards) in [
        (
            &[][..],
            ShardingMode::Default,
            "{\"default\":[1,3],\"maxNonShardedLength\":20}\n",
        ),
        (
            &["--flat"][..],
            ShardingMode::Flat,
            "{\"default\":[],\"maxNonShardedLength\":20}\n",
        ),
        (
            &["--format-version=1"][..],
            ShardingMode::Legacy33,
            "{\"default\":[3,3],\"maxNonShardedLength\":20}\n",
        ),
    ] {
        let work = tempfile::tempdir().unwrap();
        let kopia = Kopia::new(binary.clone(), work.path());
        let repo = work.path().join("repo");
        kopia.create_filesystem_repository(&repo, flags);
        // Some pack, index and session traffic beyond what create writes.
        let source = work.path().join("source");
        fs::create_dir(&source).unwrap();
        fs::write(source.join("file.txt"), "kmover ".repeat(5000)).unwrap();
        kopia.run(&["snapshot", "create", source.to_str().unwrap()]);

        assert_eq!(
            fs::read_to_string(repo.join(".shards")).unwrap(),
            shards,
            "kopia {flags:?} .shards"
        );
        let store = FilesystemStore::open(&repo).await.unwrap();
        assert_eq!(store.sharding(), &mode.parameters(), "{flags:?}");

        let on_disk = blobs_on_disk(&repo);
        let ours = our_list(&store, "").await;
        assert_eq!(
            ours, on_disk,
            "kopia {flags:?}: list(\"\") against the files on disk"
        );
        assert_eq!(
            ours,
            kopia_blob_list(&kopia, ""),
            "kopia {flags:?}: list(\"\") against kopia blob list"
        );
        for prefix in ["p", "q", "x", "xn0_", "kopia.", "_log_", "zz"] {
            assert_eq!(
                our_list(&store, prefix).await,
                kopia_blob_list(&kopia, prefix),
                "{flags:?} prefix {prefix:?}"
            );
        }
        for (id, (length, _)) in &ours {
            let data = store.get(id).await.unwrap();
            assert_eq!(data.len() as u64, *length, "{id}");
            if *length > 4 {
                assert_eq!(
                    store.get_range(id, 2, length - 4).await.unwrap(),
                    data[2..data.len() - 2]
                );
            }
        }
        // Each kopia run derives the password key; one comparison per layout keeps this test quick.
        let pack = ours
            .keys()
            .find(|id| id.starts_with(['p', 'q']))
            .expect("a pack blob");
        assert_eq!(
            store.get(pack).await.unwrap(),
            kopia.run(&["blob", "show", pack]).stdout,
            "{pack}"
        );

        let ours_created = work.path().join("ours");
        FilesystemStore::create(&ours_created, mode).await.unwrap();
        assert_eq!(
            fs::read(ours_created.join(".shards")).unwrap(),
            fs::read(repo.join(".shards")).unwrap()
        );
    }
}

/// Kopia lists, reads and deletes a blob we put, at the path its own layout expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kopia_reads_and_deletes_what_we_write() {
    let Some(binary) = require_kopia("kopia_reads_and_deletes_what_we_write") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let kopia = Kopia::new(binary, work.path());
    let repo = work.path().join("repo");
    kopia.create_filesystem_repository(&repo, &[]);

    let store = FilesystemStore::open(&repo).await.unwrap();
    let id = "zzzextra-test-blob-0123456789";
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put(id, data.clone()).await.unwrap();
    assert_eq!(
        store.blob_path(id),
        repo.join("z/zze/xtra-test-blob-0123456789.f")
    );
    let short = "zzshort";
    store.put(short, b"root-level".to_vec()).await.unwrap();

    let listed = kopia_blob_list(&kopia, "zz");
    let ours = our_list(&store, "zz").await;
    assert_eq!(
        listed, ours,
        "kopia sees our blobs with our lengths and timestamps"
    );
    assert_eq!(listed[id].0, data.len() as u64);
    assert_eq!(kopia.run(&["blob", "show", id]).stdout, data);
    assert_eq!(kopia.run(&["blob", "show", short]).stdout, b"root-level");

    kopia.run(&["blob", "delete", "--dangerous-commands=enabled", id, short]);
    assert!(store.get(id).await.unwrap_err().is_not_found());
    assert!(store.metadata(short).await.unwrap_err().is_not_found());
    // The repository is still healthy for kopia.
    kopia.run(&["repository", "status"]);
}

/// A repository without `.shards` (as kopia ≤ v0.8 left them): we assume [3,3], persist the same
/// file kopia would, and kopia keeps reading every blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_repository_without_shards_file() {
    let Some(binary) = require_kopia("legacy_repository_without_shards_file") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let kopia = Kopia::new(binary, work.path());
    let repo = work.path().join("repo");
    kopia.create_filesystem_repository(&repo, &["--format-version=1"]);
    let before = kopia_blob_list(&kopia, "");
    fs::remove_file(repo.join(".shards")).unwrap();

    let store = FilesystemStore::open(&repo).await.unwrap();
    assert_eq!(
        fs::read_to_string(repo.join(".shards")).unwrap(),
        "{\"default\":[3,3],\"maxNonShardedLength\":20}\n"
    );
    assert_eq!(our_list(&store, "").await, before);
    assert_eq!(kopia_blob_list(&kopia, ""), before);
}
