//! The snapshot test tree (every kind of entry a volume holds) and an exact tree comparison.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{random_bytes, text_bytes};

pub const SPARSE_LEN: u64 = 2560 << 20;

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Builds the tree of the snapshot issue: empty files and dirs, a 10 MiB random file, an optional
/// 2.5 GiB sparse file, symlinks (one dangling), awkward names (spaces, `<>&`, non-ASCII, invalid
/// UTF-8), setuid/setgid/sticky modes, hard links, `small_files` small files, nesting 30 deep.
pub fn hard_tree(root: &Path, with_sparse: bool, small_files: usize) {
    std::fs::create_dir_all(root).unwrap();
    write(&root.join("empty.txt"), b"");
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    write(
        &root.join("data/random-10m.bin"),
        &random_bytes(11, 10 << 20),
    );
    write(&root.join("data/text.txt"), &text_bytes(12, 200_000));
    if with_sparse {
        let f = std::fs::File::create(root.join("data/sparse.img")).unwrap();
        f.set_len(SPARSE_LEN).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&random_bytes(13, 1 << 20), 1 << 30).unwrap();
        f.write_all_at(b"tail", SPARSE_LEN - 4).unwrap();
    }
    std::os::unix::fs::symlink("../data/text.txt", root.join("links-to-text")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling/target", root.join("dangling")).unwrap();
    write(&root.join("names/with spaces.txt"), b"spaces");
    write(&root.join("names/a<b>&c.txt"), b"html");
    write(&root.join("names/ünïcødé 名前.txt"), b"unicode");
    let invalid = OsStr::from_bytes(b"bad-\xff\xfe-utf8.bin");
    write(&root.join("names").join(invalid), b"invalid utf-8 name");
    write(&root.join("modes/setuid"), b"#!/bin/true\n");
    chmod(&root.join("modes/setuid"), 0o4755);
    write(&root.join("modes/setgid"), b"#!/bin/true\n");
    chmod(&root.join("modes/setgid"), 0o2755);
    std::fs::create_dir_all(root.join("modes/sticky-dir")).unwrap();
    chmod(&root.join("modes/sticky-dir"), 0o1777);
    std::fs::create_dir_all(root.join("modes/setgid-dir")).unwrap();
    chmod(&root.join("modes/setgid-dir"), 0o2775);
    write(&root.join("modes/private"), b"secret");
    chmod(&root.join("modes/private"), 0o600);
    write(&root.join("hard/original"), &text_bytes(14, 5000));
    std::fs::hard_link(root.join("hard/original"), root.join("hard/link")).unwrap();
    for i in 0..small_files {
        write(
            &root.join(format!("small/d{:03}/f{i:05}.txt", i / 100)),
            format!("small file {i}\n").as_bytes(),
        );
    }
    let mut deep = root.join("deep");
    for i in 0..30 {
        deep = deep.join(format!("level{i:02}"));
    }
    write(&deep.join("bottom.txt"), b"30 levels down");
}

#[derive(Clone, Copy)]
pub struct Compare {
    /// kopia restores a directory's mtime from its summary, not its own: compare only like with like.
    pub dir_mtimes: bool,
    pub owners: bool,
}

fn relative_entries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let child = rel.join(&n);
            if std::fs::symlink_metadata(root.join(&child))
                .unwrap()
                .is_dir()
            {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out.sort();
    out
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The name kopia's format stores for `rel`: invalid UTF-8 becomes one U+FFFD per bad byte (Go's
/// JSON encoder), so no restore — kopia's or ours — can bring such names back byte for byte.
fn stored_name(rel: &Path) -> PathBuf {
    rel.components()
        .map(|c| kmover_format::snapshot::go_lossy_string(c.as_os_str().as_bytes()))
        .collect()
}

/// Panics with the first difference between two trees: names, types, bytes, modes (incl.
/// setuid/setgid/sticky), mtimes to the nanosecond, symlink targets, and owners when asked.
pub fn assert_same_tree(expected: &Path, actual: &Path, how: Compare) {
    let e: Vec<(PathBuf, PathBuf)> = relative_entries(expected)
        .into_iter()
        .map(|r| (stored_name(&r), r))
        .collect();
    let a: std::collections::BTreeSet<PathBuf> = relative_entries(actual).into_iter().collect();
    let expected_names: std::collections::BTreeSet<PathBuf> =
        e.iter().map(|(n, _)| n.clone()).collect();
    let missing: Vec<_> = expected_names.difference(&a).collect();
    let extra: Vec<_> = a.difference(&expected_names).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} vs {}: missing {missing:?}, unexpected {extra:?}",
        expected.display(),
        actual.display()
    );
    for (stored, rel) in &e {
        let (pe, pa) = (expected.join(rel), actual.join(stored));
        let rel = stored;
        let (me, ma) = (
            std::fs::symlink_metadata(&pe).unwrap(),
            std::fs::symlink_metadata(&pa).unwrap(),
        );
        let what = rel.display();
        assert_eq!(me.file_type(), ma.file_type(), "{what}: type");
        if !me.file_type().is_symlink() {
            assert_eq!(me.mode() & 0o7777, ma.mode() & 0o7777, "{what}: mode");
        }
        if how.owners {
            assert_eq!((me.uid(), me.gid()), (ma.uid(), ma.gid()), "{what}: owner");
        }
        if me.is_dir() {
            if how.dir_mtimes {
                assert_eq!(
                    (me.mtime(), me.mtime_nsec()),
                    (ma.mtime(), ma.mtime_nsec()),
                    "{what}: dir mtime"
                );
            }
            continue;
        }
        if me.file_type().is_symlink() {
            // kopia sets symlink times with lutimes, rounding up to the microsecond.
            let ns = |m: &std::fs::Metadata| {
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
            };
            assert!(
                (ns(&me) - ns(&ma)).abs() < 1000,
                "{what}: symlink mtime {} vs {}",
                ns(&me),
                ns(&ma)
            );
        } else {
            assert_eq!(
                (me.mtime(), me.mtime_nsec()),
                (ma.mtime(), ma.mtime_nsec()),
                "{what}: mtime"
            );
        }
        if me.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pe).unwrap(),
                std::fs::read_link(&pa).unwrap(),
                "{what}: symlink target"
            );
        } else {
            assert_eq!(me.len(), ma.len(), "{what}: size");
            assert!(same_contents(&pe, &pa), "{what}: contents differ");
        }
    }
}

/// Allocated bytes of a file (to check sparse restores stay sparse).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}
