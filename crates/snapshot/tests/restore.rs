//! Restore: trees are written straight into an in-memory repository (file objects, listings,
//! hand-made indirect indexes, hostile listings), restored into a temporary directory, and the
//! result is checked byte for byte, mode for mode and nanosecond for nanosecond — and nothing may
//! ever appear outside the target.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::{IndirectEntry, ObjectId, encode_indirect_index};
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{
    DirEntry, DirManifest, DirManifestBuilder, DirectorySummary, EntryType, encode_dir_manifest,
    mode,
};
use kmover_repo::object::{ObjectWriterOptions, write_object};
use kmover_repo::{ContentManager, CreateOptions, Repository};
use kmover_snapshot::SnapshotError;
use kmover_snapshot::restore::{MAX_DEPTH, RestoreOptions, RestoreStats, restore};

type Contents = Arc<ContentManager>;

async fn new_repo() -> Repository {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
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

fn ts(secs: i64, nanos: u32) -> UtcTimestamp {
    UtcTimestamp::from_unix(secs, nanos)
}

const T0: i64 = 1_714_557_600; // 2024-05-01T10:00:00Z

/// A tree to write into the repository.
enum Node {
    File {
        name: Vec<u8>,
        data: Vec<u8>,
        mode: u32,
        mtime: UtcTimestamp,
        owner: (u32, u32),
    },
    Dir {
        name: Vec<u8>,
        mode: u32,
        mtime: UtcTimestamp,
        owner: (u32, u32),
        children: Vec<Node>,
    },
    Link {
        name: Vec<u8>,
        target: Vec<u8>,
        mtime: UtcTimestamp,
        owner: (u32, u32),
    },
    /// An entry written as given (hostile or hand-made).
    Raw(DirEntry),
}

fn file(name: &[u8], data: &[u8], unix_mode: u32, mtime: UtcTimestamp) -> Node {
    Node::File {
        name: name.to_vec(),
        data: data.to_vec(),
        mode: unix_mode,
        mtime,
        owner: (0, 0),
    }
}

fn dir(name: &[u8], unix_mode: u32, mtime: UtcTimestamp, children: Vec<Node>) -> Node {
    Node::Dir {
        name: name.to_vec(),
        mode: unix_mode,
        mtime,
        owner: (0, 0),
        children,
    }
}

fn link(name: &[u8], target: &[u8], mtime: UtcTimestamp) -> Node {
    Node::Link {
        name: name.to_vec(),
        target: target.to_vec(),
        mtime,
        owner: (0, 0),
    }
}

fn owned(mut node: Node, uid: u32, gid: u32) -> Node {
    match &mut node {
        Node::File { owner, .. } | Node::Dir { owner, .. } | Node::Link { owner, .. } => {
            *owner = (uid, gid)
        }
        Node::Raw(e) => (e.uid, e.gid) = (uid, gid),
    }
    node
}

async fn data_object(contents: &Contents, data: &[u8]) -> ObjectId {
    write_object(contents, data, ObjectWriterOptions::default())
        .await
        .unwrap()
}

async fn listing_object(contents: &Contents, manifest: &DirManifest) -> ObjectId {
    let opts = ObjectWriterOptions {
        prefix: Some(b'k'),
        ..Default::default()
    };
    write_object(contents, &encode_dir_manifest(manifest), opts)
        .await
        .unwrap()
}

/// Writes `node` (recursively) and returns its directory entry.
async fn build(contents: &Contents, node: Node) -> DirEntry {
    match node {
        Node::File {
            name,
            data,
            mode: m,
            mtime,
            owner,
        } => DirEntry {
            name,
            entry_type: EntryType::File,
            mode: mode::from_unix(m),
            size: data.len() as i64,
            mtime,
            uid: owner.0,
            gid: owner.1,
            object_id: data_object(contents, &data).await,
            summary: None,
        },
        Node::Link {
            name,
            target,
            mtime,
            owner,
        } => DirEntry {
            name,
            entry_type: EntryType::Symlink,
            mode: mode::from_unix(0o777),
            size: target.len() as i64,
            mtime,
            uid: owner.0,
            gid: owner.1,
            object_id: data_object(contents, &target).await,
            summary: None,
        },
        Node::Dir {
            name,
            mode: m,
            mtime,
            owner,
            children,
        } => {
            let mut builder = DirManifestBuilder::new();
            for child in children {
                builder.add_entry(Box::pin(build(contents, child)).await);
            }
            let manifest = builder.build(mtime, "");
            DirEntry {
                name,
                entry_type: EntryType::Directory,
                mode: mode::from_unix(m),
                size: 0,
                mtime,
                uid: owner.0,
                gid: owner.1,
                object_id: listing_object(contents, &manifest).await,
                summary: manifest.summary,
            }
        }
        Node::Raw(e) => e,
    }
}

/// A directory entry whose listing holds `entries` exactly as given: any order, duplicates, any
/// names.
async fn raw_dir(contents: &Contents, name: &[u8], entries: Vec<DirEntry>) -> DirEntry {
    let manifest = DirManifest {
        entries,
        summary: Some(DirectorySummary {
            dirs: 1,
            ..Default::default()
        }),
    };
    DirEntry {
        name: name.to_vec(),
        entry_type: EntryType::Directory,
        mode: mode::from_unix(0o755),
        mtime: ts(T0, 0),
        object_id: listing_object(contents, &manifest).await,
        summary: manifest.summary,
        ..Default::default()
    }
}

/// A target directory inside a private parent, with a sentinel directory beside it: restore
/// must leave both the parent and the sentinel exactly as they were.
struct Sandbox {
    _tmp: tempfile::TempDir,
    parent: PathBuf,
    target: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("parent");
        let outside = tmp.path().join("outside");
        fs::create_dir(&parent).unwrap();
        fs::create_dir(&outside).unwrap();
        let target = parent.join("target");
        Sandbox {
            _tmp: tmp,
            parent,
            target,
            outside,
        }
    }

    fn assert_contained(&self) {
        let outside: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
        assert!(
            outside.is_empty(),
            "written outside the target: {outside:?}"
        );
        let beside: BTreeSet<_> = fs::read_dir(&self.parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            beside.iter().all(|n| n == "target"),
            "written beside the target: {beside:?}"
        );
    }
}

fn opts() -> RestoreOptions {
    RestoreOptions::default()
}

fn ignoring() -> RestoreOptions {
    RestoreOptions {
        ignore_errors: true,
        ..RestoreOptions::default()
    }
}

async fn run(
    contents: &Contents,
    root: &DirEntry,
    target: &Path,
    opts: &RestoreOptions,
) -> kmover_snapshot::Result<RestoreStats> {
    restore(contents.clone(), root, target, opts, None).await
}

fn perm(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn restores_contents_modes_times_and_symlinks() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let big = pseudo_random(9 << 20, 7);
    let abs_target = sb.outside.join("never-followed");
    let tree = dir(
        b"proj",
        0o750,
        ts(T0 + 100, 1),
        vec![
            file(b"plain.txt", b"hello\n", 0o644, ts(T0, 123_456_789)),
            file(b"big.bin", &big, 0o600, ts(T0 + 1, 5)),
            file(b"empty", b"", 0o640, ts(T0 + 2, 0)),
            file(b"tool", b"#!/bin/sh\n", 0o4755, ts(T0 + 3, 999_999_999)),
            file(b"sgid-tool", b"x", 0o2711, ts(T0 + 3, 0)),
            file(b"name with spaces & <tags>.txt", b"s", 0o644, ts(T0, 0)),
            file("ünïcødé-日本.txt".as_bytes(), b"u", 0o644, ts(T0, 0)),
            file(b"bad\xffname", b"b", 0o644, ts(T0, 0)),
            link(b"rel-link", b"plain.txt", ts(T0 + 4, 444_444_444)),
            link(b"dangling", b"does/not/exist", ts(T0 + 5, 0)),
            link(
                b"abs-link",
                abs_target.as_os_str().as_bytes(),
                ts(T0 + 6, 0),
            ),
            dir(
                b"sub",
                0o2775,
                ts(T0 - 500, 0),
                vec![file(b"inner.txt", b"inner", 0o444, ts(T0 + 7, 77))],
            ),
            dir(b"sticky", 0o1777, ts(T0 - 1000, 3), vec![]),
            dir(
                b"setuid-dir",
                0o4755,
                ts(T0 - 2000, 0),
                vec![dir(b"empty-child", 0o700, ts(T0 - 3000, 0), vec![])],
            ),
        ],
    );
    let root = build(&c, tree).await;
    let progress_calls = AtomicUsize::new(0);
    let on_progress = |_: &RestoreStats| {
        progress_calls.fetch_add(1, Ordering::Relaxed);
    };
    let stats = restore(c.clone(), &root, &sb.target, &opts(), Some(&on_progress))
        .await
        .unwrap();
    assert!(progress_calls.load(Ordering::Relaxed) >= 1);
    let t = &sb.target;

    assert_eq!(fs::read(t.join("plain.txt")).unwrap(), b"hello\n");
    assert_eq!(fs::read(t.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(t.join("empty")).unwrap(), b"");
    assert_eq!(
        fs::read(t.join("name with spaces & <tags>.txt")).unwrap(),
        b"s"
    );
    assert_eq!(fs::read(t.join("ünïcødé-日本.txt")).unwrap(), b"u");
    // Names are JSON strings: kopia stores an invalid byte as U+FFFD, and that is what returns.
    assert_eq!(fs::read(t.join("bad\u{fffd}name")).unwrap(), b"b");
    assert_eq!(fs::read(t.join("sub/inner.txt")).unwrap(), b"inner");

    assert_eq!(perm(&t.join("plain.txt")), 0o644);
    assert_eq!(perm(&t.join("big.bin")), 0o600);
    assert_eq!(perm(&t.join("empty")), 0o640);
    assert_eq!(perm(&t.join("tool")), 0o4755);
    assert_eq!(perm(&t.join("sgid-tool")), 0o2711);
    assert_eq!(perm(&t.join("sub")), 0o2775);
    assert_eq!(perm(&t.join("sub/inner.txt")), 0o444);
    assert_eq!(perm(&t.join("sticky")), 0o1777);
    assert_eq!(perm(&t.join("setuid-dir")), 0o4755);
    assert_eq!(perm(&t.join("setuid-dir/empty-child")), 0o700);
    assert_eq!(perm(t), 0o750);

    assert_eq!(mtime_of(&t.join("plain.txt")), (T0, 123_456_789));
    assert_eq!(mtime_of(&t.join("big.bin")), (T0 + 1, 5));
    assert_eq!(mtime_of(&t.join("tool")), (T0 + 3, 999_999_999));
    assert_eq!(mtime_of(&t.join("sub/inner.txt")), (T0 + 7, 77));
    assert_eq!(mtime_of(&t.join("rel-link")), (T0 + 4, 444_444_444));
    assert_eq!(mtime_of(&t.join("dangling")), (T0 + 5, 0));
    // Subdirectories get their summary's maxTime (kopia's directory reader substitutes it);
    // empty ones therefore keep their own mtime. The root keeps the given entry's mtime.
    assert_eq!(mtime_of(&t.join("sub")), (T0 + 7, 77));
    assert_eq!(mtime_of(&t.join("sticky")), (T0 - 1000, 3));
    assert_eq!(mtime_of(&t.join("setuid-dir")), (T0 - 3000, 0));
    assert_eq!(mtime_of(t), (T0 + 100, 1));

    assert_eq!(
        fs::read_link(t.join("rel-link")).unwrap(),
        Path::new("plain.txt")
    );
    assert_eq!(
        fs::read_link(t.join("dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    assert_eq!(fs::read_link(t.join("abs-link")).unwrap(), abs_target);
    assert!(fs::symlink_metadata(&abs_target).is_err());

    assert_eq!(stats.restored_files, 9);
    assert_eq!(stats.restored_symlinks, 3);
    assert_eq!(stats.restored_dirs, 5);
    assert_eq!(
        stats.restored_bytes,
        (6 + big.len() + 10 + 1 + 1 + 1 + 1 + 5) as u64
    );
    assert!(stats.errors.is_empty());
    sb.assert_contained();
}

#[tokio::test]
async fn restores_owners_when_root() {
    if !is_root() {
        eprintln!("skipped: ownership can only be restored as root");
        return;
    }
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let tree = owned(
        dir(
            b"r",
            0o755,
            ts(T0, 0),
            vec![
                owned(file(b"f", b"data", 0o4755, ts(T0, 0)), 1234, 5678),
                owned(link(b"l", b"f", ts(T0, 0)), 1111, 2222),
                owned(dir(b"d", 0o2770, ts(T0, 0), vec![]), 4321, 8765),
            ],
        ),
        3333,
        4444,
    );
    let root = build(&c, tree).await;
    run(&c, &root, &sb.target, &opts()).await.unwrap();
    let owner = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&sb.target.join("f")), (1234, 5678));
    // The setuid bit survives the chown (which clears it) because chmod comes after.
    assert_eq!(perm(&sb.target.join("f")), 0o4755);
    assert_eq!(owner(&sb.target.join("l")), (1111, 2222));
    assert_eq!(owner(&sb.target.join("d")), (4321, 8765));
    assert_eq!(perm(&sb.target.join("d")), 0o2770);
    assert_eq!(owner(&sb.target), (3333, 4444));

    // skip_owners leaves the restoring user as owner.
    let other = Sandbox::new();
    let skip = RestoreOptions {
        skip_owners: true,
        ..opts()
    };
    run(&c, &root, &other.target, &skip).await.unwrap();
    assert_eq!(owner(&other.target.join("f")), (0, 0));
    assert_eq!(owner(&other.target.join("l")), (0, 0));
}

#[tokio::test]
async fn skip_options_leave_metadata_alone() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let tree = dir(
        b"r",
        0o555,
        ts(T0, 0),
        vec![
            file(b"f", b"data", 0o4711, ts(T0, 0)),
            dir(b"d", 0o1777, ts(T0, 0), vec![]),
        ],
    );
    let root = build(&c, tree).await;
    let skip = RestoreOptions {
        skip_permissions: true,
        skip_times: true,
        ..opts()
    };
    run(&c, &root, &sb.target, &skip).await.unwrap();
    // Created as kopia creates them (0600 files, 0700 directories), times left at "now".
    assert_eq!(perm(&sb.target.join("f")), 0o600);
    assert_eq!(perm(&sb.target.join("d")), 0o700);
    assert_eq!(perm(&sb.target), 0o700);
    assert!(mtime_of(&sb.target.join("f")).0 > T0 + 86_400);
    assert_eq!(fs::read(sb.target.join("f")).unwrap(), b"data");
}

/// Many files in many directories at once: every directory's mtime must be set after the last
/// of its children is written, or it would be clobbered.
#[tokio::test]
async fn parallel_restore_sets_directory_times_after_children() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let mut dirs = Vec::new();
    for d in 0..16u32 {
        let files = (0..12u32)
            .map(|f| {
                let data = pseudo_random(1000 + (f as usize) * 3000, u64::from(d * 100 + f));
                file(
                    format!("f{f}").as_bytes(),
                    &data,
                    0o644,
                    ts(T0 + i64::from(f), 0),
                )
            })
            .collect();
        let nested = dir(b"nested", 0o755, ts(T0, 0), files);
        dirs.push(dir(
            format!("d{d}").as_bytes(),
            0o755,
            ts(T0 - 10, 0),
            vec![nested, file(b"x", b"x", 0o644, ts(T0 + 50, 0))],
        ));
    }
    let root = build(&c, dir(b"r", 0o755, ts(T0 - 99, 0), dirs)).await;
    for (parallel, atomic) in [(8, false), (1, true), (3, true)] {
        let sb = Sandbox::new();
        let o = RestoreOptions {
            parallel,
            write_files_atomically: atomic,
            ..opts()
        };
        let stats = run(&c, &root, &sb.target, &o).await.unwrap();
        assert_eq!(stats.restored_files, 16 * 13);
        assert_eq!(stats.restored_dirs, 1 + 16 * 2);
        for d in 0..16u32 {
            let dpath = sb.target.join(format!("d{d}"));
            assert_eq!(mtime_of(&dpath), (T0 + 50, 0), "{dpath:?}");
            assert_eq!(mtime_of(&dpath.join("nested")), (T0 + 11, 0));
            for f in 0..12u32 {
                let data = pseudo_random(1000 + (f as usize) * 3000, u64::from(d * 100 + f));
                assert_eq!(
                    fs::read(dpath.join("nested").join(format!("f{f}"))).unwrap(),
                    data
                );
            }
            let names: Vec<_> = fs::read_dir(dpath.join("nested"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                names.iter().all(|n| n.starts_with('f')),
                "leftovers: {names:?}"
            );
        }
        assert_eq!(mtime_of(&sb.target), (T0 - 99, 0));
        sb.assert_contained();
    }
}

/// A sparse file object like a VM image: 2.5 GiB, a few MiB of data, the rest the same zero
/// chunk over and over (as kopia's dedup stores it).
#[tokio::test]
async fn sparse_file_restores_as_holes() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let zeros4 = data_object(&c, &vec![0u8; 4 << 20]).await;
    let zeros2 = data_object(&c, &vec![0u8; 2 << 20]).await;
    let head = pseudo_random(1 << 20, 1);
    let middle = pseudo_random(1 << 20, 2);
    let tail = pseudo_random(100, 3);
    let mut entries = Vec::new();
    fn push(entries: &mut Vec<IndirectEntry>, object: ObjectId, length: usize) -> u64 {
        let start = entries.last().map_or(0, |e| e.start + e.length);
        entries.push(IndirectEntry {
            start,
            length: length as i64,
            object,
        });
        start as u64
    }
    push(&mut entries, data_object(&c, &head).await, head.len());
    for _ in 0..320 {
        push(&mut entries, zeros4, 4 << 20);
    }
    let middle_at = push(&mut entries, data_object(&c, &middle).await, middle.len());
    for _ in 0..319 {
        push(&mut entries, zeros4, 4 << 20);
    }
    push(&mut entries, zeros2, 2 << 20);
    let tail_at = push(&mut entries, data_object(&c, &tail).await, tail.len());
    let offset = tail_at + tail.len() as u64;
    let length = offset as u64;
    assert_eq!(length, (5 << 29) + 100, "2.5 GiB and a bit");
    let index = encode_indirect_index(&entries);
    let index_opts = ObjectWriterOptions {
        prefix: Some(b'x'),
        ..Default::default()
    };
    let index_id = write_object(&c, &index, index_opts).await.unwrap();
    let image = DirEntry {
        name: b"disk.img".to_vec(),
        entry_type: EntryType::File,
        mode: 0o600,
        size: length as i64,
        mtime: ts(T0, 0),
        object_id: ObjectId::indirect(index_id).unwrap(),
        ..Default::default()
    };
    let mut trailing = vec![7u8; 1000];
    trailing.extend_from_slice(&vec![0u8; 1 << 20]);
    let root = build(
        &c,
        dir(
            b"r",
            0o755,
            ts(T0, 0),
            vec![
                Node::Raw(image),
                file(b"trailing-zeros", &trailing, 0o644, ts(T0, 0)),
            ],
        ),
    )
    .await;
    let sb = Sandbox::new();
    let sparse = RestoreOptions {
        write_sparse_files: true,
        ..opts()
    };
    let started = std::time::Instant::now();
    let stats = run(&c, &root, &sb.target, &sparse).await.unwrap();
    assert!(
        started.elapsed().as_secs() < 120,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(stats.restored_bytes, length + trailing.len() as u64);

    let img = fs::File::open(sb.target.join("disk.img")).unwrap();
    let meta = img.metadata().unwrap();
    assert_eq!(meta.len(), length);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "allocated {} bytes",
        meta.blocks() * 512
    );
    let read_at = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        img.read_exact_at(&mut buf, at).unwrap();
        buf
    };
    assert_eq!(read_at(0, head.len()), head);
    assert_eq!(read_at(middle_at, middle.len()), middle);
    assert_eq!(read_at(tail_at, tail.len()), tail);
    assert!(read_at(middle_at - 4096, 4096).iter().all(|&b| b == 0));
    assert!(read_at(tail_at - 8192, 8192).iter().all(|&b| b == 0));

    // Trailing zeros are a hole too, and the size still comes out right.
    assert_eq!(
        fs::read(sb.target.join("trailing-zeros")).unwrap(),
        trailing
    );

    // Without the option the zeros are real data.
    let dense = Sandbox::new();
    let zero_file = DirEntry {
        name: b"zeros".to_vec(),
        entry_type: EntryType::File,
        size: 3 << 22,
        object_id: {
            let list = (0..3)
                .map(|i| IndirectEntry {
                    start: i << 22,
                    length: 1 << 22,
                    object: zeros4,
                })
                .collect::<Vec<_>>();
            let opts = ObjectWriterOptions {
                prefix: Some(b'x'),
                ..Default::default()
            };
            ObjectId::indirect(
                write_object(&c, &encode_indirect_index(&list), opts)
                    .await
                    .unwrap(),
            )
            .unwrap()
        },
        ..Default::default()
    };
    let root = raw_dir(&c, b"r", vec![zero_file]).await;
    run(&c, &root, &dense.target, &opts()).await.unwrap();
    let meta = fs::metadata(dense.target.join("zeros")).unwrap();
    assert_eq!(meta.len(), 3 << 22);
    assert!(meta.blocks() * 512 >= 3 << 22);
}

#[tokio::test]
async fn incremental_restore_skips_matching_files() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let root = build(
        &c,
        dir(
            b"r",
            0o755,
            ts(T0, 0),
            vec![
                file(b"same", b"original", 0o644, ts(T0, 0)),
                file(b"resized", b"original", 0o644, ts(T0, 0)),
                file(b"gone", b"original", 0o644, ts(T0, 0)),
                link(b"link", b"same", ts(T0, 0)),
            ],
        ),
    )
    .await;
    run(&c, &root, &sb.target, &opts()).await.unwrap();
    let t = &sb.target;
    // Same size and mtime: considered unchanged even though the bytes differ.
    fs::write(t.join("same"), b"ORIGINAL").unwrap();
    fs::File::options()
        .write(true)
        .open(t.join("same"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(T0 as u64 + 1, 0))
        .unwrap();
    fs::write(t.join("resized"), b"short").unwrap();
    fs::remove_file(t.join("gone")).unwrap();
    fs::remove_file(t.join("link")).unwrap();
    std::os::unix::fs::symlink("elsewhere", t.join("link")).unwrap();

    let inc = RestoreOptions {
        incremental: true,
        ..opts()
    };
    let stats = run(&c, &root, t, &inc).await.unwrap();
    assert_eq!(fs::read(t.join("same")).unwrap(), b"ORIGINAL");
    assert_eq!(fs::read(t.join("resized")).unwrap(), b"original");
    assert_eq!(fs::read(t.join("gone")).unwrap(), b"original");
    assert_eq!(
        fs::read_link(t.join("link")).unwrap(),
        Path::new("elsewhere")
    );
    assert_eq!(
        (
            stats.skipped_files,
            stats.skipped_symlinks,
            stats.restored_files
        ),
        (1, 1, 2)
    );
    assert_eq!(stats.skipped_bytes, 8);

    // Without incremental everything is rewritten.
    let stats = run(&c, &root, t, &opts()).await.unwrap();
    assert_eq!(fs::read(t.join("same")).unwrap(), b"original");
    assert_eq!(fs::read_link(t.join("link")).unwrap(), Path::new("same"));
    assert_eq!((stats.skipped_files, stats.restored_files), (0, 3));
}

fn error_text(r: kmover_snapshot::Result<RestoreStats>) -> String {
    r.expect_err("restore should fail").to_string()
}

#[tokio::test]
async fn overwrite_options_follow_kopia() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let root = build(
        &c,
        dir(
            b"r",
            0o755,
            ts(T0, 0),
            vec![
                file(b"f", b"new", 0o644, ts(T0, 0)),
                link(b"l", b"f", ts(T0, 0)),
                dir(
                    b"d",
                    0o755,
                    ts(T0, 0),
                    vec![file(b"g", b"g", 0o644, ts(T0, 0))],
                ),
            ],
        ),
    )
    .await;

    let sb = Sandbox::new();
    fs::create_dir(&sb.target).unwrap();
    fs::write(sb.target.join("f"), b"old").unwrap();
    let no_files = RestoreOptions {
        overwrite_files: false,
        ..opts()
    };
    let msg = error_text(run(&c, &root, &sb.target, &no_files).await);
    assert!(
        msg.contains(&sb.target.join("f").display().to_string()),
        "{msg}"
    );
    assert_eq!(fs::read(sb.target.join("f")).unwrap(), b"old");
    run(&c, &root, &sb.target, &opts()).await.unwrap();
    assert_eq!(fs::read(sb.target.join("f")).unwrap(), b"new");

    let no_links = RestoreOptions {
        overwrite_symlinks: false,
        ..opts()
    };
    let msg = error_text(run(&c, &root, &sb.target, &no_links).await);
    assert!(
        msg.contains(&sb.target.join("l").display().to_string()),
        "{msg}"
    );

    // A non-empty target needs overwrite_directories; an empty one does not.
    let no_dirs = RestoreOptions {
        overwrite_directories: false,
        ..opts()
    };
    let msg = error_text(run(&c, &root, &sb.target, &no_dirs).await);
    assert!(msg.contains("non-empty directory"), "{msg}");
    let fresh = Sandbox::new();
    fs::create_dir(&fresh.target).unwrap();
    run(&c, &root, &fresh.target, &no_dirs).await.unwrap();
    assert_eq!(fs::read(fresh.target.join("d/g")).unwrap(), b"g");

    // Wrong kinds in the way always fail: a file where a symlink goes, a file where a
    // directory goes, a directory where a file goes.
    for (name, make) in [
        ("l", (|p: &Path| fs::write(p, b"x").unwrap()) as fn(&Path)),
        ("d", |p: &Path| fs::write(p, b"x").unwrap()),
        ("f", |p: &Path| fs::create_dir(p).unwrap()),
    ] {
        let sb = Sandbox::new();
        fs::create_dir(&sb.target).unwrap();
        make(&sb.target.join(name));
        let msg = error_text(run(&c, &root, &sb.target, &opts()).await);
        assert!(
            msg.contains(&sb.target.join(name).display().to_string()),
            "{msg}"
        );
        let stats = run(&c, &root, &sb.target, &ignoring()).await.unwrap();
        assert_eq!(stats.error_count, 1, "{:?}", stats.errors);
    }
}

/// Entries whose names are not one path component are refused, whatever their type, and
/// nothing lands outside the target.
#[tokio::test]
async fn hostile_names_are_refused() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb_probe = Sandbox::new();
    let outside_abs = sb_probe.outside.as_os_str().as_bytes().to_vec();
    let mut evil_names: Vec<Vec<u8>> = vec![
        b"..".to_vec(),
        b".".to_vec(),
        b"sub/escape".to_vec(),
        b"../escape".to_vec(),
        b"".to_vec(),
        b"x\0y".to_vec(),
        b"/etc".to_vec(),
    ];
    evil_names.push(outside_abs.clone());
    for name in evil_names {
        let payload = file(b"payload", b"pwned", 0o644, ts(T0, 0));
        let evil_dir = build(&c, dir(&name, 0o755, ts(T0, 0), vec![payload])).await;
        let mut evil_file = build(&c, file(&name, b"pwned", 0o644, ts(T0, 0))).await;
        evil_file.name = name.clone();
        let evil_link = build(&c, link(&name, &outside_abs, ts(T0, 0))).await;
        let good = build(&c, file(b"good", b"ok", 0o644, ts(T0, 0))).await;
        let sub = build(&c, dir(b"sub", 0o755, ts(T0, 0), vec![])).await;
        for evil in [evil_dir, evil_file, evil_link] {
            let root = raw_dir(&c, b"r", vec![sub.clone(), evil, good.clone()]).await;
            let sb = Sandbox::new();
            // Point the "outside" at the probe's sentinel so an absolute-name escape would show.
            let err = run(&c, &root, &sb.target, &opts()).await.unwrap_err();
            assert!(
                matches!(&err, SnapshotError::UnsafeEntry { .. }),
                "{name:?}: {err}"
            );
            sb.assert_contained();
            sb_probe.assert_contained();
            assert!(!sb.target.join("sub/escape").exists());

            let sb = Sandbox::new();
            let stats = run(&c, &root, &sb.target, &ignoring()).await.unwrap();
            assert_eq!(stats.error_count, 1, "{name:?}: {:?}", stats.errors);
            assert!(
                stats.errors[0].contains("refusing entry"),
                "{:?}",
                stats.errors
            );
            assert_eq!(fs::read(sb.target.join("good")).unwrap(), b"ok");
            let names: BTreeSet<_> = fs::read_dir(&sb.target)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, BTreeSet::from(["good".into(), "sub".into()]));
            assert!(
                fs::read_dir(sb.target.join("sub"))
                    .unwrap()
                    .next()
                    .is_none()
            );
            sb.assert_contained();
            sb_probe.assert_contained();
        }
    }
}

/// The classic: a symlink `evil -> /outside` and then a directory `evil/` with a file inside.
#[tokio::test]
async fn symlink_then_directory_of_the_same_name_cannot_escape() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let outside = sb.outside.as_os_str().as_bytes().to_vec();
    let evil_link = build(&c, link(b"evil", &outside, ts(T0, 0))).await;
    let evil_dir = build(
        &c,
        dir(
            b"evil",
            0o777,
            ts(T0, 0),
            vec![file(b"x", b"pwned", 0o644, ts(T0, 0))],
        ),
    )
    .await;
    let evil_file = build(&c, file(b"evil", b"pwned", 0o644, ts(T0, 0))).await;

    // Within one listing the second "evil" is a duplicate, whichever comes first.
    for entries in [
        vec![evil_link.clone(), evil_dir.clone()],
        vec![evil_link.clone(), evil_file.clone()],
        vec![evil_dir.clone(), evil_link.clone()],
    ] {
        let root = raw_dir(&c, b"r", entries.clone()).await;
        let sb = Sandbox::new();
        let err = run(&c, &root, &sb.target, &opts()).await.unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        let sb2 = Sandbox::new();
        let stats = run(&c, &root, &sb2.target, &ignoring()).await.unwrap();
        assert_eq!(stats.error_count, 1);
        sb.assert_contained();
        sb2.assert_contained();
    }

    // Across restores: the symlink already sits in the target when the directory or the file
    // arrives. The directory is refused; the file replaces the link instead of writing through.
    let root = raw_dir(&c, b"r", vec![evil_link.clone()]).await;
    run(&c, &root, &sb.target, &opts()).await.unwrap();
    assert_eq!(fs::read_link(sb.target.join("evil")).unwrap(), sb.outside);
    let root = raw_dir(&c, b"r", vec![evil_dir.clone()]).await;
    let msg = error_text(run(&c, &root, &sb.target, &opts()).await);
    assert!(msg.contains("not a directory"), "{msg}");
    sb.assert_contained();
    for atomic in [false, true] {
        let sb = Sandbox::new();
        fs::create_dir(&sb.target).unwrap();
        let victim = sb.outside.join("victim");
        std::os::unix::fs::symlink(&victim, sb.target.join("evil")).unwrap();
        let root = raw_dir(&c, b"r", vec![evil_file.clone()]).await;
        let o = RestoreOptions {
            write_files_atomically: atomic,
            ..opts()
        };
        run(&c, &root, &sb.target, &o).await.unwrap();
        assert!(
            fs::symlink_metadata(sb.target.join("evil"))
                .unwrap()
                .is_file()
        );
        assert!(!victim.exists());
        sb.assert_contained();
    }
}

#[tokio::test]
async fn deep_nesting_is_bounded() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let mut entry = build(&c, file(b"bottom", b"deep", 0o644, ts(T0, 0))).await;
    for _ in 0..2000 {
        let mut builder = DirManifestBuilder::new();
        builder.add_entry(entry);
        let manifest = builder.build(ts(T0, 0), "");
        entry = DirEntry {
            name: b"d".to_vec(),
            entry_type: EntryType::Directory,
            mode: 0o755,
            mtime: ts(T0, 0),
            object_id: listing_object(&c, &manifest).await,
            summary: manifest.summary,
            ..Default::default()
        };
    }
    let sb = Sandbox::new();
    let err = run(&c, &entry, &sb.target, &opts()).await.unwrap_err();
    assert!(
        matches!(&err, SnapshotError::UnsafeEntry { reason, .. } if reason.contains("deeper")),
        "{err}"
    );
    let sb = Sandbox::new();
    let stats = run(&c, &entry, &sb.target, &ignoring()).await.unwrap();
    assert_eq!(stats.error_count, 1);
    assert_eq!(stats.restored_dirs as usize, 1 + MAX_DEPTH);
    let mut depth = 0;
    let mut p = sb.target.clone();
    while p.join("d").is_dir() {
        p.push("d");
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
    assert!(fs::read_dir(&p).unwrap().next().is_none());
    sb.assert_contained();
}

/// Index objects that declare lengths nobody stored: refused before the file is even created,
/// and a file's declared `size` never stretches it.
#[tokio::test]
async fn declared_lengths_are_checked_against_the_repository() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let small = data_object(&c, b"tiny").await;
    let x_opts = || ObjectWriterOptions {
        prefix: Some(b'x'),
        ..Default::default()
    };
    let huge_index = encode_indirect_index(&[IndirectEntry {
        start: 0,
        length: 1 << 60,
        object: small,
    }]);
    let huge = ObjectId::indirect(write_object(&c, &huge_index, x_opts()).await.unwrap()).unwrap();
    let lying_index = encode_indirect_index(&[
        IndirectEntry {
            start: 0,
            length: 4,
            object: small,
        },
        IndirectEntry {
            start: 4,
            length: 1 << 40,
            object: small,
        },
    ]);
    let lying =
        ObjectId::indirect(write_object(&c, &lying_index, x_opts()).await.unwrap()).unwrap();
    let missing = ObjectId::direct(c.content_id_for(b"never stored", None).unwrap());
    let entry = |name: &[u8], object_id: ObjectId, size: i64, ty: EntryType| DirEntry {
        name: name.to_vec(),
        entry_type: ty,
        mode: 0o644,
        size,
        object_id,
        ..Default::default()
    };
    let long_target = data_object(&c, &vec![b'a'; 10_000]).await;
    let root = raw_dir(
        &c,
        b"r",
        vec![
            entry(b"huge", huge, 1 << 60, EntryType::File),
            entry(b"lying", lying, 4 + (1 << 40), EntryType::File),
            entry(b"missing", missing, 5, EntryType::File),
            entry(b"long-link", long_target, 10_000, EntryType::Symlink),
            entry(b"weird-type", small, 4, EntryType::Other("x".into())),
            entry(b"understated", small, 1 << 50, EntryType::File),
        ],
    )
    .await;
    let sb = Sandbox::new();
    let stats = run(&c, &root, &sb.target, &ignoring()).await.unwrap();
    assert_eq!(stats.error_count, 5, "{:?}", stats.errors);
    for name in ["huge", "lying", "missing", "long-link"] {
        let path = sb.target.join(name);
        assert!(
            stats
                .errors
                .iter()
                .any(|e| e.contains(&path.display().to_string())),
            "no error names {path:?}: {:?}",
            stats.errors
        );
        assert!(fs::symlink_metadata(&path).is_err(), "{name} was created");
    }
    assert!(
        stats
            .errors
            .iter()
            .any(|e| e.contains("unknown entry type"))
    );
    // The object, not the declared size, decides the length.
    assert_eq!(fs::read(sb.target.join("understated")).unwrap(), b"tiny");

    // Without ignore_errors the first failure is the error, naming its path.
    let sb = Sandbox::new();
    let msg = error_text(run(&c, &root, &sb.target, &opts()).await);
    assert!(
        msg.contains(&sb.target.display().to_string()) || msg.contains("refusing"),
        "{msg}"
    );
}

#[tokio::test]
async fn single_file_and_symlink_roots_restore_as_the_target() {
    let repo = new_repo().await;
    let c = repo.contents().clone();
    let sb = Sandbox::new();
    let f = build(&c, file(b"ignored-name", b"content", 0o4750, ts(T0, 42))).await;
    let dest = sb.target.join("nested/out.bin");
    run(&c, &f, &dest, &opts()).await.unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"content");
    assert_eq!(perm(&dest), 0o4750);
    assert_eq!(mtime_of(&dest), (T0, 42));

    let l = build(&c, link(b"x", b"../somewhere", ts(T0, 7))).await;
    let dest = sb.target.join("link");
    run(&c, &l, &dest, &opts()).await.unwrap();
    assert_eq!(fs::read_link(&dest).unwrap(), Path::new("../somewhere"));
    assert_eq!(mtime_of(&dest), (T0, 7));

    // A file root is written as the target even when the target is a symlink: it is replaced.
    let dest = sb.target.join("was-link");
    std::os::unix::fs::symlink(sb.outside.join("victim"), &dest).unwrap();
    run(&c, &f, &dest, &opts()).await.unwrap();
    assert!(fs::symlink_metadata(&dest).unwrap().is_file());
    sb.assert_contained();
}

#[test]
fn defaults_are_kopias_cli_defaults() {
    let d = RestoreOptions::default();
    assert!(d.overwrite_files && d.overwrite_directories && d.overwrite_symlinks);
    assert!(d.ignore_permission_errors);
    assert!(!d.skip_owners && !d.skip_permissions && !d.skip_times);
    assert!(!d.write_sparse_files && !d.write_files_atomically && !d.ignore_errors);
    assert!(!d.incremental);
    assert_eq!(d.parallel, 8);
}

#[test]
fn restore_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (root, opts) = (DirEntry::default(), RestoreOptions::default());
    let cb = |_: &RestoreStats| {};
    let make = |contents: Contents| {
        let fut = restore(contents, &root, Path::new("/nonexistent"), &opts, Some(&cb));
        assert_send(&fut);
    };
    let _ = make;
}
