//! Restore against the real kopia: kopia snapshots a tree, then both kopia and kmover restore it,
//! and the two results must agree on every byte, mode, owner and timestamp (kopia sets symlink
//! times with `lutimes`, rounded up to the microsecond, so those are compared that way).
//! The binary is `$KOPIA_BIN` or `~/.cache/kmover-tools/kopia-0.22.3/kopia`; without it the test
//! is skipped loudly, unless `CI=true`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::fs::FilesystemStore;
use kmover_repo::Repository;
use kmover_snapshot::restore::{RestoreOptions, restore};
use kmover_snapshot::snapshots::load_snapshot;
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

const PASSWORD: &str = "kmover-restore-test";

fn kopia_binary() -> Option<PathBuf> {
    let candidate = match std::env::var_os("KOPIA_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/kmover-tools/kopia-0.22.3/kopia")
        }
    };
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the kopia binary is missing (set KOPIA_BIN); CI=true requires it");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPING restore_kopia: kopia binary not found (set KOPIA_BIN) !!!!!!!!\n"
    );
    None
}

fn kopia(binary: &Path, work: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg(format!(
            "--config-file={}",
            work.join("kopia.config").display()
        ))
        .arg(format!("--log-dir={}", work.join("logs").display()))
        .env("KOPIA_PASSWORD", PASSWORD)
        .env("KOPIA_CHECK_FOR_UPDATES", "false")
        .env("KOPIA_CACHE_DIRECTORY", work.join("cache"))
        .output()
        .expect("cannot start kopia");
    assert!(
        out.status.success(),
        "kopia {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A source tree with the metadata restore has to get right.
fn make_source(src: &Path) {
    let t = 1_700_000_000i64;
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::create_dir(src.join("sticky")).unwrap();
    fs::create_dir(src.join("empty dir")).unwrap();
    fs::write(src.join("plain.txt"), b"hello kopia\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("tool"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::write(src.join("ünï <&> name.txt"), b"unicode").unwrap();
    let mut big = Vec::with_capacity(12 << 20);
    let mut x = 0x1234_5678_9abc_def1u64;
    while big.len() < 12 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(src.join("sub/big.bin"), &big).unwrap();
    fs::write(src.join("sub/deeper/leaf.txt"), b"leaf").unwrap();
    symlink("plain.txt", src.join("link")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    symlink("../plain.txt", src.join("sub/up-link")).unwrap();

    chmod(&src.join("plain.txt"), 0o640);
    chmod(&src.join("empty"), 0o600);
    chmod(&src.join("tool"), 0o4755);
    chmod(&src.join("sub"), 0o2775);
    chmod(&src.join("sticky"), 0o1777);
    chmod(&src.join("empty dir"), 0o700);
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(src.join("plain.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("link"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(src.join("sub/deeper"), Some(1111), Some(2222)).unwrap();
        // chown clears setuid; set it again.
        std::os::unix::fs::lchown(src.join("tool"), Some(0), Some(0)).unwrap();
        chmod(&src.join("tool"), 0o4755);
    }

    // Times last, children before parents.
    set_mtime(&src.join("plain.txt"), t, 123_456_789);
    set_mtime(&src.join("empty"), t + 1, 0);
    set_mtime(&src.join("tool"), t + 2, 999_999_999);
    set_mtime(&src.join("ünï <&> name.txt"), t + 3, 1);
    set_mtime(&src.join("sub/big.bin"), t + 4, 500_000_000);
    set_mtime(&src.join("sub/deeper/leaf.txt"), t + 5, 42);
    set_mtime(&src.join("link"), t + 6, 654_321_987);
    set_mtime(&src.join("dangling"), t + 7, 0);
    set_mtime(&src.join("sub/up-link"), t + 8, 8);
    set_mtime(&src.join("sub/deeper"), t - 100, 0);
    set_mtime(&src.join("sub"), t - 200, 0);
    set_mtime(&src.join("sticky"), t - 300, 3);
    set_mtime(&src.join("empty dir"), t - 400, 4);
    set_mtime(src, t - 500, 5);
}

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    perm: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
    content: Vec<u8>,
}

fn scan(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let (kind, content) = if m.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ("symlink", target.into_os_string().into_encoded_bytes())
        } else if m.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            ("dir", Vec::new())
        } else {
            ("file", fs::read(&path).unwrap())
        };
        // kopia sets symlink times with lutimes, rounding up to the microsecond (Go's
        // NsecToTimeval); kmover keeps the nanoseconds. Compare the rounded value.
        let mtime = if kind == "symlink" {
            let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            let up = (ns + 999) / 1000 * 1000;
            ((up / 1_000_000_000) as i64, (up % 1_000_000_000) as i64)
        } else {
            (m.mtime(), m.mtime_nsec())
        };
        out.insert(
            rel,
            Seen {
                kind,
                perm: m.mode() & 0o7777,
                owner: (m.uid(), m.gid()),
                mtime,
                content,
            },
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_matches_kopia_restore() {
    let Some(binary) = kopia_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (work, repo_dir, src) = (
        tmp.path().join("work"),
        tmp.path().join("repo"),
        tmp.path().join("src"),
    );
    fs::create_dir_all(&work).unwrap();
    make_source(&src);
    let repo_path = repo_dir.display().to_string();
    kopia(
        &binary,
        &work,
        &["repository", "create", "filesystem", "--path", &repo_path],
    );
    let src_text = src.display().to_string();
    kopia(&binary, &work, &["snapshot", "create", &src_text]);
    let listed = kopia(&binary, &work, &["snapshot", "list", &src_text, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();

    let by_kopia = tmp.path().join("by-kopia");
    let by_kopia_text = by_kopia.display().to_string();
    kopia(&binary, &work, &["restore", &id, &by_kopia_text]);
    kopia(&binary, &work, &["repository", "disconnect"]);

    let store: DynBlobStore = Arc::new(FilesystemStore::open(&repo_dir).await.unwrap());
    let repo = Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap();
    let manifest = load_snapshot(&repo, &id).await.unwrap();
    let root = manifest.root_entry.expect("root entry");
    let by_kmover = tmp.path().join("by-kmover");
    let stats = restore(
        repo.contents().clone(),
        &root,
        &by_kmover,
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert!(stats.errors.is_empty());
    assert_eq!(stats.restored_files, 6);
    assert_eq!(stats.restored_symlinks, 3);

    let (ours, theirs) = (scan(&by_kmover), scan(&by_kopia));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (path, seen) in &theirs {
        assert_eq!(&ours[path], seen, "{path:?} differs from kopia's restore");
    }
    // Sanity: this is really the tree, with kopia's directory-time substitution visible.
    assert_eq!(ours[Path::new("tool")].perm, 0o4755);
    assert_eq!(ours[Path::new("sub")].perm, 0o2775);
    assert_eq!(ours[Path::new("sticky")].perm, 0o1777);
    assert_eq!(
        ours[Path::new("plain.txt")].mtime,
        (1_700_000_000, 123_456_789)
    );
    assert_eq!(
        ours[Path::new("sub")].mtime,
        (1_700_000_008, 8),
        "a subdirectory gets its subtree's newest mtime"
    );
    assert_eq!(ours[Path::new("")].mtime, (1_700_000_000 - 500, 5));
}
