//! Backup through the library on the in-memory store: every file reads back, a second backup
//! reuses everything, ignore rules and cache directories leave entries out as kopia does.

use std::path::Path;
use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::snapshot::directory::EntryType;
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::policy::Policy;
use kmover_repo::object::read_object;
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::backup::{BackupOptions, BackupOutcome, BackupProgress, backup};
use kmover_snapshot::{snapshots, tree};

async fn repo() -> Repository {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..Default::default()
    };
    Repository::create(store.clone(), &opts, "pw")
        .await
        .unwrap();
    Repository::open(store, "pw", Default::default())
        .await
        .unwrap()
}

async fn snap(repo: &Repository, dir: &Path) -> BackupOutcome {
    let opts = BackupOptions {
        source: SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: dir.to_string_lossy().into(),
        },
        parallel: 2,
        ..Default::default()
    };
    backup(
        repo,
        dir,
        &opts,
        &Policy::kopia_default(),
        Arc::new(BackupProgress::default()),
    )
    .await
    .unwrap()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[tokio::test]
async fn files_read_back_and_second_backup_reuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..(20u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&dir.path().join("big.bin"), &big);
    write(&dir.path().join("a/b/c.txt"), b"nested");
    write(&dir.path().join("empty"), b"");
    std::os::unix::fs::symlink("a/b/c.txt", dir.path().join("link")).unwrap();
    let repo = repo().await;
    let first = snap(&repo, dir.path()).await;
    let root = first.manifest.root_entry.clone().unwrap();
    let summary = root.summary.clone().unwrap();
    assert_eq!((summary.files, summary.symlinks, summary.dirs), (3, 1, 3));
    assert_eq!(summary.size, big.len() as i64 + 6);
    let big_entry = tree::resolve(repo.contents(), &root, "big.bin")
        .await
        .unwrap();
    assert!(
        big_entry.object_id.indirection() == 1,
        "20 MiB is several chunks: {}",
        big_entry.object_id
    );
    assert_eq!(
        read_object(repo.contents(), &big_entry.object_id)
            .await
            .unwrap(),
        big
    );
    let nested = tree::resolve(repo.contents(), &root, "a/b/c.txt")
        .await
        .unwrap();
    assert_eq!(
        read_object(repo.contents(), &nested.object_id)
            .await
            .unwrap(),
        b"nested"
    );
    let link = tree::resolve(repo.contents(), &root, "link").await.unwrap();
    assert_eq!(link.entry_type, EntryType::Symlink);
    assert_eq!(
        read_object(repo.contents(), &link.object_id).await.unwrap(),
        b"a/b/c.txt"
    );

    let second = snap(&repo, dir.path()).await;
    assert_eq!(second.manifest.stats.non_cached_files, 0);
    assert_eq!(second.manifest.stats.cached_files, 3);
    assert_eq!(
        second.manifest.root_entry.unwrap().object_id,
        root.object_id
    );
    assert_eq!(
        snapshots::list_snapshots(&repo, None).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn ignore_files_and_cache_dirs_leave_entries_out() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join(".kopiaignore"), b"*.log\n/build/\n");
    write(&dir.path().join("keep.txt"), b"keep");
    write(&dir.path().join("x.log"), b"ignored");
    write(&dir.path().join("sub/y.log"), b"ignored too");
    write(&dir.path().join("build/out.o"), b"ignored dir");
    write(
        &dir.path().join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    );
    write(&dir.path().join("cache/blob"), b"cached data");
    let repo = repo().await;
    let out = snap(&repo, dir.path()).await;
    let root = out.manifest.root_entry.unwrap();
    let listing = tree::read_dir(repo.contents(), &root).await.unwrap();
    let names: Vec<String> = listing
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(names, vec!["cache", "sub", ".kopiaignore", "keep.txt"]);
    let cache = tree::resolve(repo.contents(), &root, "cache")
        .await
        .unwrap();
    assert!(
        tree::read_dir(repo.contents(), &cache)
            .await
            .unwrap()
            .entries
            .is_empty(),
        "cache dir listed empty"
    );
    let sub = tree::resolve(repo.contents(), &root, "sub").await.unwrap();
    assert!(
        tree::read_dir(repo.contents(), &sub)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(out.manifest.stats.excluded_file_count, 2);
    assert_eq!(out.manifest.stats.excluded_dir_count, 1);
}

#[tokio::test]
async fn long_uploads_leave_readable_checkpoint_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6u32 {
        let data: Vec<u8> = (0..(16u32 << 20))
            .map(|b| (b.wrapping_mul(2654435761).wrapping_add(i) >> 11) as u8)
            .collect();
        write(&dir.path().join(format!("d{i}/file.bin")), &data);
    }
    let repo = repo().await;
    let opts = BackupOptions {
        source: SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: "/src".into(),
        },
        parallel: 1,
        checkpoint_interval: Some(std::time::Duration::from_millis(30)),
        ..Default::default()
    };
    let done = backup(
        &repo,
        dir.path(),
        &opts,
        &Policy::kopia_default(),
        Arc::new(BackupProgress::default()),
    )
    .await
    .unwrap();
    let all = snapshots::list_snapshots(&repo, None).await.unwrap();
    let checkpoints: Vec<_> = all
        .iter()
        .filter(|(_, m)| m.incomplete == "checkpoint")
        .collect();
    assert!(!checkpoints.is_empty(), "a slow upload saves checkpoints");
    for (_, m) in &checkpoints {
        let root = m.root_entry.clone().unwrap();
        assert_eq!(root.summary.as_ref().unwrap().incomplete, "checkpoint");
        // Every file a checkpoint lists is complete and readable; a file still uploading is
        // listed as kopia lists it, `.checkpointed.<name>.<uuid>`, with the chunks written so far.
        let listing = tree::read_dir(repo.contents(), &root).await.unwrap();
        for sub in listing.entries {
            for f in tree::read_dir(repo.contents(), &sub).await.unwrap().entries {
                let data = read_object(repo.contents(), &f.object_id).await.unwrap();
                assert_eq!(f.size, 16 << 20);
                if f.name.starts_with(b".checkpointed.file.bin.") {
                    assert!(data.len() < 16 << 20 && !data.is_empty());
                } else {
                    assert_eq!(f.name, b"file.bin");
                    assert_eq!(data.len(), 16 << 20);
                }
            }
        }
    }
    assert!(done.manifest.incomplete.is_empty());
    let previous = snapshots::previous_snapshots(&repo, &opts.source)
        .await
        .unwrap();
    assert_eq!(
        previous[0].root_entry.as_ref().unwrap().object_id,
        done.manifest.root_entry.unwrap().object_id
    );
}
