//! Checkpoints list a file that is still uploading as kopia does: `.checkpointed.<name>.<uuid>`
//! with the chunks written so far and the file's own metadata; finished entries, failed entries
//! and subdirectories in progress are listed too, and a file without a written chunk is not.

use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::IndirectEntry;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{DirEntry, EntryType};
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::policy::Policy;
use kmover_repo::object::{ObjectWriterOptions, read_object, write_object};
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::backup::{BackupOptions, BackupProgress, backup};
use kmover_snapshot::checkpoint::{
    CHECKPOINTED_PREFIX, DirNode, write_checkpoint, write_file_checkpoint,
};
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

fn entry(name: &str, kind: EntryType, size: i64) -> DirEntry {
    DirEntry {
        name: name.as_bytes().to_vec(),
        entry_type: kind,
        mode: 0o640,
        size,
        mtime: UtcTimestamp::from_unix(1_714_557_600, 123),
        uid: 1000,
        gid: 1001,
        ..Default::default()
    }
}

/// Asserts `name` is `.checkpointed.<file>.<uuid>`.
fn assert_checkpointed_name(name: &[u8], file: &str) {
    let name = String::from_utf8(name.to_vec()).unwrap();
    let uuid = name
        .strip_prefix(&format!("{CHECKPOINTED_PREFIX}{file}."))
        .unwrap_or_else(|| panic!("{name} is not a checkpointed {file}"));
    assert_eq!(uuid.len(), 36, "{name}");
    assert_eq!(uuid.matches('-').count(), 4, "{name}");
}

#[tokio::test]
async fn a_partly_uploaded_file_is_listed_with_its_written_chunks() {
    let repo = repo().await;
    let contents = repo.contents();
    let mtime = UtcTimestamp::from_unix(1_714_557_600, 0);
    let root = DirNode::new(entry("root", EntryType::Directory, 0), mtime);
    let done = write_object(contents, b"hello", ObjectWriterOptions::default())
        .await
        .unwrap();
    root.finished(DirEntry {
        object_id: done,
        ..entry("done.txt", EntryType::File, 5)
    });
    root.failed(b"unreadable".to_vec(), false, b"permission denied".to_vec());

    // Three chunks of a 10 MiB file are written; another file has none yet.
    let sub = root.start_child(entry("sub", EntryType::Directory, 0), mtime);
    let pieces: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(1000 + i, i as u64)).collect();
    let mut chunks = Vec::new();
    let mut start = 0i64;
    for piece in &pieces {
        let object = write_object(contents, piece, ObjectWriterOptions::default())
            .await
            .unwrap();
        chunks.push(IndirectEntry {
            start,
            length: piece.len() as i64,
            object,
        });
        start += piece.len() as i64;
    }
    let partial = sub.start_upload(entry("partial.bin", EntryType::File, 10 << 20));
    partial.file().add_chunks(&chunks[..2]);
    partial.file().add_chunks(&chunks[2..]);
    let _nothing_yet = sub.start_upload(entry("nothing-yet.bin", EntryType::File, 7));
    let single = root.start_upload(entry("single.bin", EntryType::File, 1 << 20));
    single.file().add_chunks(&chunks[..1]);

    let checkpoint = write_checkpoint(&root, contents, None).await.unwrap();
    let summary = checkpoint.summary.clone().unwrap();
    assert_eq!(summary.incomplete, "checkpoint");
    assert_eq!(summary.num_failed, 1);
    assert_eq!(summary.errors[0].path, b"unreadable");
    let top = tree::read_dir(contents, &checkpoint).await.unwrap();
    let names: Vec<&[u8]> = top.entries.iter().map(|e| &e.name[..]).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // Directories first, then the rest by name, as kopia sorts them.
    assert_eq!(names[0], b"sub");
    assert_checkpointed_name(names[1], "single.bin");
    assert_eq!(names[2], b"done.txt");
    // A single written chunk is the object itself.
    assert_eq!(top.entries[1].object_id, chunks[0].object);
    assert_eq!(top.entries[1].size, 1 << 20);

    let inner = tree::read_dir(contents, &top.entries[0]).await.unwrap();
    assert_eq!(
        inner.entries.len(),
        1,
        "a file without written chunks is left out"
    );
    let listed = &inner.entries[0];
    assert_checkpointed_name(&listed.name, "partial.bin");
    // The file's own metadata, as kopia's newDirEntry gives it.
    let want = entry("partial.bin", EntryType::File, 10 << 20);
    assert_eq!(
        (
            &listed.entry_type,
            listed.mode,
            listed.size,
            listed.mtime,
            listed.uid,
            listed.gid
        ),
        (
            &want.entry_type,
            want.mode,
            want.size,
            want.mtime,
            want.uid,
            want.gid
        )
    );
    assert!(
        listed.object_id.indirection() > 0,
        "several chunks: an index"
    );
    assert_eq!(
        read_object(contents, &listed.object_id).await.unwrap(),
        pieces.concat()
    );
    assert_eq!(inner.summary.unwrap().incomplete, "checkpoint");

    // Once the upload ends (its guard drops) checkpoints no longer list it.
    drop(partial);
    drop(single);
    let later = write_checkpoint(&root, contents, None).await.unwrap();
    let top = tree::read_dir(contents, &later).await.unwrap();
    assert!(
        top.entries
            .iter()
            .all(|e| !e.name.starts_with(CHECKPOINTED_PREFIX.as_bytes()))
    );
    let inner = tree::read_dir(contents, &top.entries[0]).await.unwrap();
    assert!(inner.entries.is_empty());
}

#[tokio::test]
async fn a_single_file_root_checkpoints_as_itself() {
    let repo = repo().await;
    let contents = repo.contents();
    let template = entry("big.bin", EntryType::File, 0);
    let root = DirNode::new(template.clone(), template.mtime);
    assert!(
        write_file_checkpoint(&root, contents, None)
            .await
            .unwrap()
            .is_none()
    );
    let upload = root.start_upload(DirEntry {
        size: 99,
        ..template
    });
    assert!(
        write_file_checkpoint(&root, contents, None)
            .await
            .unwrap()
            .is_none(),
        "nothing written yet"
    );
    let object = write_object(contents, b"first chunk", ObjectWriterOptions::default())
        .await
        .unwrap();
    upload.file().add_chunks(&[IndirectEntry {
        start: 0,
        length: 11,
        object,
    }]);
    let root_entry = write_file_checkpoint(&root, contents, None)
        .await
        .unwrap()
        .unwrap();
    assert_checkpointed_name(&root_entry.name, "big.bin");
    assert_eq!((root_entry.object_id, root_entry.size), (object, 99));
}

#[tokio::test]
async fn checkpoints_of_a_long_single_file_upload_hold_its_written_part() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data = pseudo_random(48 << 20, 7);
    std::fs::write(&path, &data).unwrap();
    let repo = repo().await;
    let opts = BackupOptions {
        source: SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: path.to_string_lossy().into(),
        },
        parallel: 1,
        checkpoint_interval: Some(std::time::Duration::from_millis(20)),
        ..Default::default()
    };
    let done = backup(
        &repo,
        &path,
        &opts,
        &Policy::kopia_default(),
        Arc::new(BackupProgress::default()),
    )
    .await
    .unwrap();
    assert!(done.manifest.incomplete.is_empty());
    let all = snapshots::list_snapshots(&repo, None).await.unwrap();
    let checkpoints: Vec<_> = all
        .iter()
        .filter(|(_, m)| m.incomplete == "checkpoint")
        .collect();
    assert!(!checkpoints.is_empty(), "a long upload saves checkpoints");
    for (_, m) in checkpoints {
        let root = m.root_entry.as_ref().unwrap();
        assert_checkpointed_name(&root.name, "big.bin");
        assert_eq!(root.size, data.len() as i64);
        let written = read_object(repo.contents(), &root.object_id).await.unwrap();
        assert!(!written.is_empty() && written.len() < data.len());
        assert!(
            data.starts_with(&written),
            "the written part is the file's start"
        );
    }
}
