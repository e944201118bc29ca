//! Behaviour of the filesystem store beyond the shared conformance suite: `.shards` handling, the
//! write protocol (modes, temp files, never re-creating the root), foreign files, error messages
//! and a full disk.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use kmover_blob::fs::{
    FilesystemOptions, FilesystemStore, ShardOverride, ShardingMode, ShardingParameters,
};
use kmover_blob::{BlobError, BlobStore};

const PACK: &str = "p0123456789abcdef0123456789abcdef-s0123456789abcdef13c";

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file under `root`, relative, sorted.
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn create_writes_the_shards_file_kopia_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, expected) in [
        (
            ShardingMode::Default,
            "{\"default\":[1,3],\"maxNonShardedLength\":20}\n",
        ),
        (
            ShardingMode::Flat,
            "{\"default\":[],\"maxNonShardedLength\":20}\n",
        ),
        (
            ShardingMode::Legacy33,
            "{\"default\":[3,3],\"maxNonShardedLength\":20}\n",
        ),
    ] {
        let root = dir.path().join(format!("{mode:?}")).join("nested");
        let store = FilesystemStore::create(&root, mode.clone()).await.unwrap();
        assert_eq!(
            fs::read_to_string(root.join(".shards")).unwrap(),
            expected,
            "{mode:?}"
        );
        assert_eq!(mode_of(&root.join(".shards")), 0o600);
        assert_eq!(store.sharding(), &mode.parameters());
        assert_eq!(files_under(&root), [".shards"], "only .shards after create");
        assert!(
            store.list("").await.unwrap().is_empty(),
            ".shards is not a blob"
        );
    }
}

#[tokio::test]
async fn an_existing_shards_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    let shards = "{\"default\":[5,2],\"maxNonShardedLength\":3,\"comment\":\"unknown fields are ignored\",\
                  \"overrides\":[{\"prefix\":\"q\",\"shards\":[1],\"extra\":true}]}";
    fs::write(dir.path().join(".shards"), shards).unwrap();
    let expected = ShardingParameters {
        default_shards: vec![5, 2],
        max_non_sharded_length: 3,
        overrides: vec![ShardOverride {
            prefix: "q".into(),
            shards: vec![1],
        }],
    };
    let created = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    let opened = FilesystemStore::open(dir.path()).await.unwrap();
    assert_eq!(created.sharding(), &expected);
    assert_eq!(opened.sharding(), &expected);
    assert_eq!(
        fs::read_to_string(dir.path().join(".shards")).unwrap(),
        shards,
        "left untouched"
    );
    assert_eq!(opened.blob_path("qwerty"), dir.path().join("q/werty.f"));
    assert_eq!(
        opened.blob_path("abcdefghij"),
        dir.path().join("abcde/fg/hij.f")
    );
}

#[tokio::test]
async fn open_without_shards_assumes_3_3_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path()).await.unwrap();
    assert_eq!(store.sharding(), &ShardingMode::Legacy33.parameters());
    assert_eq!(
        fs::read_to_string(dir.path().join(".shards")).unwrap(),
        "{\"default\":[3,3],\"maxNonShardedLength\":20}\n"
    );
}

#[tokio::test]
async fn a_malformed_shards_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".shards"), "{\"default\":[-1]}").unwrap();
    match FilesystemStore::open(dir.path()).await {
        Err(BlobError::InvalidShards { path, reason }) => {
            assert!(path.ends_with(".shards"), "{path}");
            assert!(reason.contains("negative"), "{reason}");
        }
        other => panic!("expected InvalidShards, got {other:?}"),
    }
}

#[tokio::test]
async fn open_requires_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = FilesystemStore::open(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists(), "open must not create the root");
    fs::write(&missing, b"a file").unwrap();
    assert!(matches!(
        FilesystemStore::open(&missing).await,
        Err(BlobError::Io { .. })
    ));
}

#[tokio::test]
async fn a_vanished_root_is_never_re_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let store = FilesystemStore::create(&root, ShardingMode::Default)
        .await
        .unwrap();
    fs::remove_dir_all(&root).unwrap();
    for id in ["kopia.repository", PACK] {
        let err = store.put(id, b"data".to_vec()).await.unwrap_err();
        assert!(matches!(err, BlobError::Io { .. }), "{err}");
        assert!(!root.exists(), "put of {id:?} re-created the root");
    }
    assert!(matches!(store.list("").await, Err(BlobError::Io { .. })));
}

#[tokio::test]
async fn default_modes_and_no_temp_files_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    store.put(PACK, vec![7; 100]).await.unwrap();
    store.put(PACK, vec![8; 50]).await.unwrap();
    store.put("kopia.repository", b"{}".to_vec()).await.unwrap();
    assert_eq!(mode_of(&store.blob_path(PACK)), 0o600);
    assert_eq!(mode_of(&dir.path().join("p")), 0o700);
    assert_eq!(mode_of(&dir.path().join("p/012")), 0o700);
    assert_eq!(
        files_under(dir.path()),
        [
            ".shards",
            "kopia.repository.f",
            "p/012/3456789abcdef0123456789abcdef-s0123456789abcdef13c.f"
        ]
    );
}

#[tokio::test]
async fn configured_modes_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let options = FilesystemOptions {
        file_mode: 0o640,
        dir_mode: 0o750,
    };
    let store =
        FilesystemStore::create_with_options(dir.path().join("r"), ShardingMode::Default, options)
            .await
            .unwrap();
    store.put(PACK, vec![1]).await.unwrap();
    assert_eq!(mode_of(&dir.path().join("r")), 0o750);
    assert_eq!(mode_of(&dir.path().join("r/.shards")), 0o640);
    assert_eq!(mode_of(&dir.path().join("r/p/012")), 0o750);
    assert_eq!(mode_of(&store.blob_path(PACK)), 0o640);
}

#[tokio::test]
async fn listing_ignores_foreign_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = FilesystemStore::create(root, ShardingMode::Default)
        .await
        .unwrap();
    store.put(PACK, vec![1, 2, 3]).await.unwrap();
    fs::write(
        root.join("kopia.repository.f.tmp.0123456789abcdef"),
        b"half-written",
    )
    .unwrap();
    fs::write(root.join("README"), b"not a blob").unwrap();
    fs::write(root.join("p/012/notes.txt"), b"not a blob").unwrap();
    fs::create_dir(root.join("dir.f")).unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"bad\xff.f")),
        b"not UTF-8",
    )
    .unwrap();
    let ids: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [PACK]);
    // A file that kopia would list, placed by hand where the layout does not put it, is listed
    // under the name its path spells; kopia does the same.
    fs::write(root.join("p/012/x.f"), b"stray").unwrap();
    let ids: Vec<String> = store
        .list("p012")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(
        ids,
        [
            "p0123456789abcdef0123456789abcdef-s0123456789abcdef13c",
            "p012x"
        ]
    );
}

#[tokio::test]
async fn timestamps_are_file_mtimes() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    store.put(PACK, vec![0; 10]).await.unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(store.blob_path(PACK))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let expected: DateTime<Utc> = mtime.into();
    assert_eq!(store.metadata(PACK).await.unwrap().timestamp, expected);
    assert_eq!(store.list("p").await.unwrap()[0].timestamp, expected);
}

#[tokio::test]
async fn invalid_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    for id in [
        "",
        "a/b",
        "../../../../etc/passwd-is-long-enough",
        "nul\0in-the-middle-of-it",
        ".abcdefghijklmnopqrstuvwxyz",
    ] {
        assert!(
            matches!(
                store.put(id, vec![1]).await,
                Err(BlobError::InvalidId { .. })
            ),
            "put {id:?}"
        );
        assert!(
            matches!(store.get(id).await, Err(BlobError::InvalidId { .. })),
            "get {id:?}"
        );
    }
    assert_eq!(files_under(dir.path()), [".shards"]);
}

#[tokio::test]
async fn io_errors_name_the_operation_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    // A regular file where the shard directory "p" should be.
    fs::write(dir.path().join("p"), b"in the way").unwrap();
    match store.put(PACK, vec![1]).await {
        Err(BlobError::Io { id, op, path, .. }) => {
            assert_eq!(id, PACK);
            assert!(
                op.contains("temporary file") || op.contains("directory"),
                "{op}"
            );
            assert!(
                path.starts_with(&dir.path().join("p").display().to_string()),
                "{path}"
            );
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    let message = store.get(PACK).await.unwrap_err().to_string();
    assert!(
        message.contains(PACK) && message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

/// A tiny tmpfs, unmounted on drop. Mounting needs root; without it the caller skips loudly.
struct TinyTmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TinyTmpfs {
    fn mount(size: &str) -> Option<TinyTmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(TinyTmpfs { path, _dir: dir }),
            _ => {
                eprintln!(
                    "\n!!!!!!!! SKIPPING full-disk test: cannot mount a tmpfs (needs root) !!!!!!!!\n"
                );
                None
            }
        }
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_an_io_error_and_leaves_no_partial_blob() {
    let Some(tmpfs) = TinyTmpfs::mount("256k") else {
        return;
    };
    let root = tmpfs.path.join("repo");
    let store = FilesystemStore::create(&root, ShardingMode::Default)
        .await
        .unwrap();
    store.put("kopia.repository", b"{}".to_vec()).await.unwrap();
    match store.put(PACK, vec![0x5a; 1024 * 1024]).await {
        Err(BlobError::Io {
            op, path, source, ..
        }) => {
            assert_eq!(
                source.raw_os_error(),
                Some(28),
                "ENOSPC expected, got {source}"
            );
            assert!(
                path.starts_with(&store.blob_path(PACK).display().to_string()),
                "{op} {path}"
            );
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert!(!store.blob_path(PACK).exists(), "partial blob left behind");
    assert_eq!(
        files_under(&root),
        [".shards", "kopia.repository.f"],
        "temp file left behind"
    );
    assert!(store.get(PACK).await.unwrap_err().is_not_found());

    // Fill the disk completely: opening a root without .shards then only logs the failed write.
    let filler = tmpfs.path.join("filler");
    let _ = fs::write(&filler, vec![0; 1024 * 1024]);
    let legacy = tmpfs.path.join("legacy");
    fs::create_dir(&legacy).unwrap();
    let opened = FilesystemStore::open(&legacy).await.unwrap();
    assert_eq!(opened.sharding(), &ShardingMode::Legacy33.parameters());
    assert!(
        files_under(&legacy).is_empty(),
        "no partial .shards: {:?}",
        files_under(&legacy)
    );
}
