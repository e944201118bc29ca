//! Corruption suite: seeded bit flips and truncations in pack, index, manifest and format blobs of
//! a filesystem repository. Every read path must name the damaged blob and content (and, for
//! snapshots, the file paths), never panic and never write wrong bytes silently;
//! `snapshot verify` must list exactly the damaged files and `snapshot restore --ignore-errors`
//! must restore every undamaged file exactly.
//!
//! The expected damage is computed independently of the code under test: the snapshot's tree is
//! walked in-process before the damage, mapping every file and directory to the contents (and
//! their pack ranges) it depends on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use common::crash::{FAST_KDF, rounds, say, seed};
use common::{Kmover, Kopia, KopiaVersion, PASSWORD, RepositoryCli, TestRng, clip};
use kmover_blob::fs::FilesystemStore;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::directory::EntryType;
use kmover_repo::{ContentManager, Repository};

const CI_ROUNDS: usize = 8;

/// Where one content is stored.
#[derive(Debug, Clone)]
struct Stored {
    pack: String,
    offset: u64,
    length: u64,
}

/// What the snapshot is made of: every file and directory and the contents each depends on.
struct Layout {
    snapshot: String,
    /// Relative path → contents (data chunks and indirect index objects).
    files: BTreeMap<String, Vec<String>>,
    /// Relative path ("" for the root) → contents of its listing.
    dirs: BTreeMap<String, Vec<String>>,
    contents: BTreeMap<String, Stored>,
}

/// Every content an object's bytes depend on.
async fn object_contents(c: &ContentManager, id: &ObjectId, out: &mut Vec<String>) {
    if id.indirection() == 0 {
        out.extend(id.content_id().map(|cid| cid.to_string()));
        return;
    }
    let index = id.index_object_id().unwrap();
    Box::pin(object_contents(c, &index, out)).await;
    let layout = kmover_repo::object::open_object(c, id).await.unwrap();
    for chunk in &layout.chunks {
        Box::pin(object_contents(c, &chunk.object, out)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn open(repo: &Path) -> Repository {
    let store: kmover_blob::DynBlobStore = Arc::new(FilesystemStore::open(repo).await.unwrap());
    Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap()
}

fn layout(repo: &Path, snapshot: &str) -> Layout {
    runtime().block_on(async {
        let r = open(repo).await;
        let c = r.contents();
        let m = kmover_snapshot::snapshots::load_snapshot(&r, snapshot)
            .await
            .unwrap();
        let mut out = Layout {
            snapshot: snapshot.to_string(),
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            contents: BTreeMap::new(),
        };
        let mut stack = vec![(m.root_entry.unwrap(), String::new())];
        while let Some((entry, rel)) = stack.pop() {
            let mut deps = Vec::new();
            object_contents(c, &entry.object_id, &mut deps).await;
            match entry.entry_type {
                EntryType::Directory => {
                    let listing = kmover_snapshot::tree::read_dir(c, &entry).await.unwrap();
                    for child in listing.entries {
                        let name = String::from_utf8(child.name.clone()).unwrap();
                        let child_rel = if rel.is_empty() {
                            name
                        } else {
                            format!("{rel}/{name}")
                        };
                        stack.push((child, child_rel));
                    }
                    out.dirs.insert(rel, deps);
                }
                _ => {
                    out.files.insert(rel, deps);
                }
            }
        }
        for e in c.list_contents(false).await {
            out.contents.insert(
                e.content_id.to_string(),
                Stored {
                    pack: e.pack_blob_id.to_string(),
                    offset: u64::from(e.pack_offset),
                    length: u64::from(e.packed_length),
                },
            );
        }
        out
    })
}

impl Layout {
    /// What `snapshot verify` must report when `damaged` contents cannot be read: each
    /// unreadable directory (not below another one) and each damaged file outside them.
    fn expected_errors(&self, damaged: &BTreeSet<String>) -> BTreeSet<String> {
        let bad = |deps: &Vec<String>| deps.iter().any(|d| damaged.contains(d));
        let bad_dirs: Vec<&String> = self
            .dirs
            .iter()
            .filter(|(_, deps)| bad(deps))
            .map(|(rel, _)| rel)
            .collect();
        let below_bad_dir = |rel: &str| {
            bad_dirs
                .iter()
                .any(|d| d.is_empty() || rel.starts_with(&format!("{d}/")))
        };
        let mut out: BTreeSet<String> = bad_dirs
            .iter()
            .filter(|d| !below_bad_dir(d))
            .map(|d| d.to_string())
            .collect();
        for (rel, deps) in &self.files {
            if bad(deps) && !below_bad_dir(rel) {
                out.insert(rel.clone());
            }
        }
        out
    }

    /// Files that must come back exactly from a restore with `--ignore-errors`.
    fn undamaged_files(&self, errors: &BTreeSet<String>) -> Vec<&String> {
        self.files
            .keys()
            .filter(|rel| {
                !errors
                    .iter()
                    .any(|e| *rel == e || rel.starts_with(&format!("{e}/")))
            })
            .collect()
    }

    fn data_contents(&self) -> Vec<&String> {
        let listed: BTreeSet<&String> = self.files.values().flatten().collect();
        self.contents
            .iter()
            .filter(|(id, s)| s.pack.starts_with('p') && listed.contains(id))
            .map(|(id, _)| id)
            .collect()
    }

    /// Directory listings (except the root's) and indirect index objects.
    fn metadata_contents(&self) -> Vec<&String> {
        let root = self.dirs.get("").cloned().unwrap_or_default();
        let used: BTreeSet<&String> = self
            .files
            .values()
            .chain(self.dirs.values())
            .flatten()
            .collect();
        self.contents
            .keys()
            .filter(|id| {
                (id.starts_with('k') || id.starts_with('x'))
                    && !root.contains(id)
                    && used.contains(id)
            })
            .collect()
    }
}

/// The tree: many small files sharing packs, files of several chunks (indirect objects) and
/// nested directories, all with distinct listings; optionally a duplicate (one object, two
/// paths).
fn corruption_tree(root: &Path, with_duplicate: bool) {
    let w = |rel: &str, data: Vec<u8>| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    for i in 0..40u64 {
        w(
            &format!("small/s{i:02}.txt"),
            common::text_bytes(1000 + i, 200 + 300 * i as usize),
        );
    }
    for i in 0..6u64 {
        w(
            &format!("medium/m{i}.bin"),
            common::random_bytes(2000 + i, 100_000 + 150_000 * i as usize),
        );
    }
    for i in 0..2u64 {
        w(
            &format!("large/l{i}.bin"),
            common::random_bytes(3000 + i, (12 << 20) + 12345 * i as usize),
        );
    }
    if with_duplicate {
        w("copy/m3-again.bin", common::random_bytes(2003, 550_000));
    }
    for depth in 0..4 {
        let dir: String = (0..=depth).map(|d| format!("n{d}/")).collect();
        w(
            &format!("{dir}leaf-{depth}.txt"),
            common::text_bytes(4000 + depth, 5000),
        );
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    pristine: PathBuf,
    repo: PathBuf,
    kmover: Kmover,
    kopia: Option<Kopia>,
    layout: Layout,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        Fixture::with_tree(test, false)
    }

    fn with_tree(test: &str, with_duplicate: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        corruption_tree(&tree, with_duplicate);
        let repo = dir.path().join("repo");
        let kmover = Kmover::new();
        kmover.create_filesystem_repo(&repo, &[FAST_KDF]);
        let out = kmover.run(["snapshot", "create", tree.to_str().unwrap(), "--json"]);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let snapshot = m["id"].as_str().unwrap().to_string();
        let layout = layout(&repo, &snapshot);
        let kopia = Kopia::find(KopiaVersion::V0_22, test);
        if let Some(k) = &kopia {
            k.connect_filesystem(&repo);
        }
        let pristine = dir.path().join("pristine");
        copy_dir(&repo, &pristine);
        Fixture {
            _dir: dir,
            tree,
            pristine,
            repo,
            kmover,
            kopia,
            layout,
        }
    }

    /// Puts the undamaged repository back, and empties kopia's cache: kopia keeps the pack
    /// ranges it read there, damaged or not, and would report an earlier round's damage.
    fn reset(&self) {
        std::fs::remove_dir_all(&self.repo).unwrap();
        copy_dir(&self.pristine, &self.repo);
        if let Some(k) = &self.kopia {
            let _ = std::fs::remove_dir_all(k.runner().cache_dir());
        }
    }

    fn blob_path(&self, id: &str) -> PathBuf {
        runtime().block_on(async {
            FilesystemStore::open(&self.repo)
                .await
                .unwrap()
                .blob_path(id)
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.kmover.runner().run_unchecked(args);
        assert_not_panicked(&format!("kmover {}", args.join(" ")), &out);
        out
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_not_panicked(what: &str, o: &Output) {
    let text = stderr(o);
    assert!(
        !text.contains("panicked") && o.status.code() != Some(101) && o.status.code().is_some(),
        "{what}: crashed ({}):\n{}",
        o.status,
        clip(&o.stderr)
    );
}

#[track_caller]
fn assert_fails_naming(what: &str, o: &Output, names: &[&str]) {
    assert!(
        !o.status.success(),
        "{what}: succeeded on a damaged repository"
    );
    let text = stderr(o);
    for name in names {
        assert!(
            text.contains(name),
            "{what}: the error does not name {name:?}:\n{}",
            clip(&o.stderr)
        );
    }
}

fn flip_bit(path: &Path, offset: u64, bit: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// Whether two format blobs hold the same settings: the fields kopia reads (anything else,
/// such as `tool` or `buildVersion`, is informational and unauthenticated, for kopia too).
fn same_format_settings(a: &[u8], b: &[u8]) -> bool {
    let settings = |bytes: &[u8]| {
        let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let read = [
            "uniqueID",
            "keyAlgo",
            "version",
            "encryption",
            "encryptedBlockFormat",
        ];
        Some(read.map(|k| doc.get(k).cloned()))
    };
    settings(a).is_some() && settings(a) == settings(b)
}

/// The relative paths `snapshot verify` names in its errors.
fn verify_error_paths(o: &Output, snapshot: &str, tree: &Path) -> BTreeSet<String> {
    let root = format!("{snapshot}:{}", tree.display());
    let mut out = BTreeSet::new();
    for line in stderr(o).lines() {
        let Some(at) = line.find(&root) else {
            continue;
        };
        let rest = &line[at + root.len()..];
        let Some(colon) = rest.find(": ") else {
            continue;
        };
        out.insert(rest[..colon].trim_start_matches('/').to_string());
    }
    out
}

/// One seeded damage to pack contents; returns the damaged contents and a description.
fn damage_packs(f: &Fixture, rng: &mut TestRng, kind: usize) -> (BTreeSet<String>, String) {
    let l = &f.layout;
    let mut damaged = BTreeSet::new();
    match kind {
        // Bit flips inside 1–3 data contents.
        0 => {
            let data = l.data_contents();
            let mut what = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let id = data[rng.below(data.len())].clone();
                let s = &l.contents[&id];
                let at = s.offset + rng.below(s.length as usize) as u64;
                flip_bit(&f.blob_path(&s.pack), at, rng.below(8) as u32);
                what.push(format!("{id}@{}+{}", s.pack, at - s.offset));
                damaged.insert(id);
            }
            (damaged, format!("bit flips in data contents {what:?}"))
        }
        // A data pack cut short inside its contents.
        1 => {
            let packs: BTreeSet<&String> = l
                .data_contents()
                .into_iter()
                .map(|id| &l.contents[id].pack)
                .collect();
            let packs: Vec<&String> = packs.into_iter().collect();
            let pack = packs[rng.below(packs.len())].clone();
            let in_pack: Vec<(&String, &Stored)> =
                l.contents.iter().filter(|(_, s)| s.pack == pack).collect();
            let first = in_pack.iter().map(|(_, s)| s.offset).min().unwrap();
            let end = in_pack
                .iter()
                .map(|(_, s)| s.offset + s.length)
                .max()
                .unwrap();
            let cut = first + rng.below((end - first) as usize) as u64;
            truncate(&f.blob_path(&pack), cut);
            for (id, s) in in_pack {
                if s.offset + s.length > cut {
                    damaged.insert(id.clone());
                }
            }
            (damaged, format!("pack {pack} truncated to {cut} bytes"))
        }
        // A bit flip in a directory listing or an indirect object's index.
        2 => {
            let meta = l.metadata_contents();
            let id = meta[rng.below(meta.len())].clone();
            let s = &l.contents[&id];
            let at = s.offset + rng.below(s.length as usize) as u64;
            flip_bit(&f.blob_path(&s.pack), at, rng.below(8) as u32);
            damaged.insert(id.clone());
            (damaged, format!("bit flip in metadata content {id}"))
        }
        // A bit flip in a data pack outside every content (padding, local index): harmless.
        _ => {
            let pack = l.contents[l.data_contents()[0]].pack.clone();
            let path = f.blob_path(&pack);
            let len = std::fs::metadata(&path).unwrap().len();
            let used: Vec<(u64, u64)> = l
                .contents
                .values()
                .filter(|s| s.pack == pack)
                .map(|s| (s.offset, s.offset + s.length))
                .collect();
            let at = (0..100_000)
                .map(|_| rng.below(len as usize) as u64)
                .find(|o| !used.iter().any(|(a, b)| (*a..*b).contains(o)))
                .expect("a byte outside every content");
            flip_bit(&path, at, rng.below(8) as u32);
            (
                damaged,
                format!("bit flip at {at} of {pack}, outside its contents"),
            )
        }
    }
}

/// Damaged file data and metadata: verify lists exactly the damaged paths, every read path
/// names blob and content, `--ignore-errors` restores every undamaged file exactly.
#[test]
fn damaged_packs_are_reported_exactly_and_the_rest_restores() {
    let test = "damaged_packs_are_reported_exactly_and_the_rest_restores";
    let f = Fixture::new(test);
    let mut rng = TestRng::new(seed() ^ 0xc0);
    let count = rounds(CI_ROUNDS);
    let (mut detected, mut harmless) = (0, 0);
    for round in 0..count {
        f.reset();
        let kind = round % 4;
        let (damaged, what) = damage_packs(&f, &mut rng, kind);
        let context = format!("round {round}: {what}");
        let expected = f.layout.expected_errors(&damaged);
        let snap = f.layout.snapshot.as_str();

        let verify = f.run(&["snapshot", "verify", "--verify-files-percent=100"]);
        let reported = verify_error_paths(&verify, snap, &f.tree);
        assert_eq!(
            reported,
            expected,
            "{context}: snapshot verify must list exactly the damaged paths:\n{}",
            clip(&verify.stderr)
        );
        assert_eq!(verify.status.success(), expected.is_empty(), "{context}");
        // Each damaged file's line names one of its damaged contents and that content's pack
        // (reading a file stops at its first bad chunk).
        for (rel, deps) in &f.layout.files {
            if !expected.contains(rel) {
                continue;
            }
            let line = stderr(&verify)
                .lines()
                .find(|l| l.contains(&format!("{}/{rel}: ", f.tree.display())))
                .unwrap_or_default()
                .to_string();
            assert!(
                deps.iter().any(|d| damaged.contains(d)
                    && line.contains(d.as_str())
                    && line.contains(f.layout.contents[d].pack.as_str())),
                "{context}: the error of {rel} names no damaged content and pack: {line}"
            );
        }
        for id in &damaged {
            let pack = f.layout.contents[id].pack.as_str();
            let shown = f.run(&["content", "show", id]);
            assert_fails_naming(
                &format!("{context}: content show"),
                &shown,
                &[id.as_str(), pack],
            );
            assert!(
                shown.stdout.is_empty(),
                "{context}: content show wrote bytes"
            );
        }
        if !damaged.is_empty() {
            let full = f.run(&["content", "verify", "--full"]);
            let ids: Vec<&str> = damaged.iter().map(String::as_str).collect();
            assert_fails_naming(&format!("{context}: content verify --full"), &full, &ids);
        }
        for rel in &expected {
            if f.layout.files.contains_key(rel) {
                let o = f.run(&["show", &format!("{snap}/{rel}")]);
                assert_fails_naming(&format!("{context}: show {rel}"), &o, &[]);
                let original = std::fs::read(f.tree.join(rel)).unwrap();
                assert!(
                    o.stdout.len() < original.len(),
                    "{context}: show {rel} wrote {} bytes of a damaged file",
                    o.stdout.len()
                );
            }
        }
        if let Some(kopia) = &f.kopia {
            let o =
                kopia
                    .runner()
                    .run_unchecked(["snapshot", "verify", "--verify-files-percent=100"]);
            assert_eq!(
                o.status.success(),
                expected.is_empty(),
                "{context}: kopia disagrees about the damage:\n{}",
                clip(&o.stderr)
            );
        }

        let target = f._dir.path().join(format!("restore-{round}"));
        let o = f.run(&[
            "snapshot",
            "restore",
            snap,
            target.to_str().unwrap(),
            "--ignore-errors",
        ]);
        for rel in &expected {
            let at = target.join(rel).display().to_string();
            assert!(
                stderr(&o).contains(&at),
                "{context}: restore --ignore-errors does not name {at}:\n{}",
                clip(&o.stderr)
            );
        }
        for rel in f.layout.undamaged_files(&expected) {
            let restored = std::fs::read(target.join(rel))
                .unwrap_or_else(|e| panic!("{context}: undamaged {rel} not restored: {e}"));
            assert!(
                restored == std::fs::read(f.tree.join(rel)).unwrap(),
                "{context}: undamaged {rel} restored with wrong bytes"
            );
        }
        std::fs::remove_dir_all(&target).unwrap();
        if !expected.is_empty() {
            let o = f.run(&["snapshot", "restore", snap, target.to_str().unwrap()]);
            assert_fails_naming(&format!("{context}: restore"), &o, &[]);
            assert!(
                expected
                    .iter()
                    .any(|rel| stderr(&o).contains(&target.join(rel).display().to_string())),
                "{context}: restore fails without naming a damaged path:\n{}",
                clip(&o.stderr)
            );
            let _ = std::fs::remove_dir_all(&target);
        }
        if expected.is_empty() {
            harmless += 1;
        } else {
            detected += 1;
        }
        say(&format!(
            "{context}: {} damaged paths, all reported",
            expected.len()
        ));
    }
    say(&format!(
        "{test}: {detected} pack corruptions detected exactly; {harmless} harmless flips \
         (outside every content) reported as no damage"
    ));
}

/// Commands that read the repository, each of which must fail cleanly on a damaged index or
/// format blob.
fn read_commands(snap: &str, target: &Path) -> Vec<Vec<String>> {
    let t = target.display().to_string();
    [
        vec!["content", "list"],
        vec!["snapshot", "list"],
        vec!["snapshot", "verify", "--verify-files-percent=100"],
        vec!["snapshot", "restore", snap, t.as_str()],
        vec!["ls", snap],
        vec!["show", format!("{snap}/small/s01.txt").as_str()],
        vec!["content", "verify"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect()
}

#[test]
fn damaged_index_blobs_are_named_by_every_read_path() {
    let f = Fixture::new("damaged_index_blobs_are_named_by_every_read_path");
    let mut rng = TestRng::new(seed() ^ 0x1d);
    let indexes: Vec<String> = f
        .kmover
        .index_list_json()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let target = f._dir.path().join("restore");
    let mut detected = 0;
    for round in 0..rounds(CI_ROUNDS).max(2) {
        f.reset();
        let blob = &indexes[rng.below(indexes.len())];
        let path = f.blob_path(blob);
        let len = std::fs::metadata(&path).unwrap().len();
        let what = if round % 2 == 0 {
            let at = rng.below(len as usize) as u64;
            flip_bit(&path, at, rng.below(8) as u32);
            format!("bit flip at {at} of {blob}")
        } else {
            let cut = rng.below(len as usize) as u64;
            truncate(&path, cut);
            format!("{blob} truncated to {cut} bytes")
        };
        for args in read_commands(&f.layout.snapshot, &target) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = f.run(&args);
            let named = [blob.as_str()];
            assert_fails_naming(&format!("{what}: kmover {}", args.join(" ")), &o, &named);
            assert!(
                !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
                "{what}: restore wrote files from a repository it cannot index"
            );
            let _ = std::fs::remove_dir_all(&target);
        }
        detected += 1;
    }
    say(&format!("index blob corruptions detected: {detected}"));
}

#[test]
fn damaged_manifests_are_named_and_other_snapshots_still_work() {
    let f = Fixture::new("damaged_manifests_are_named_and_other_snapshots_still_work");
    let manifests: Vec<&String> = f
        .layout
        .contents
        .keys()
        .filter(|id| id.starts_with('m'))
        .collect();
    assert!(!manifests.is_empty());
    let mut rng = TestRng::new(seed() ^ 0x3a);
    let target = f._dir.path().join("restore");
    for id in manifests {
        f.reset();
        let s = &f.layout.contents[id];
        let at = s.offset + rng.below(s.length as usize) as u64;
        flip_bit(&f.blob_path(&s.pack), at, rng.below(8) as u32);
        let what = format!("bit flip in manifest content {id} ({})", s.pack);
        for args in read_commands(&f.layout.snapshot, &target) {
            if args[0] == "content" {
                continue;
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = f.run(&args);
            assert_fails_naming(
                &format!("{what}: kmover {}", args.join(" ")),
                &o,
                &[id.as_str(), s.pack.as_str()],
            );
            let _ = std::fs::remove_dir_all(&target);
        }
    }
}

#[test]
fn damaged_format_blob_is_named_by_every_command() {
    let f = Fixture::new("damaged_format_blob_is_named_by_every_command");
    let path = f.repo.join("kopia.repository.f");
    let pristine = std::fs::read(&path).unwrap();
    let len = pristine.len() as u64;
    let mut harmless_count = 0;
    let mut rng = TestRng::new(seed() ^ 0xf0);
    let target = f._dir.path().join("restore");
    let mut detected = 0;
    for round in 0..rounds(CI_ROUNDS).max(2) {
        f.reset();
        let what = if round % 2 == 0 {
            let at = rng.below(len as usize) as u64;
            flip_bit(&path, at, rng.below(8) as u32);
            format!("bit flip at {at} of kopia.repository")
        } else {
            let cut = rng.below(len as usize) as u64;
            truncate(&path, cut);
            format!("kopia.repository truncated to {cut} bytes")
        };
        let damaged = std::fs::read(&path).unwrap();
        let mut commands = read_commands(&f.layout.snapshot, &target);
        commands.push(vec![
            "snapshot".into(),
            "create".into(),
            f.tree.display().to_string(),
        ]);
        // Damage to the informational fields or to whitespace is harmless (see below).
        let harmless = same_format_settings(&pristine, &damaged);
        for args in commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = f.run(&args);
            if harmless {
                assert!(
                    o.status.success(),
                    "{what} (harmless): kmover {}: {}\n{}",
                    args.join(" "),
                    o.status,
                    clip(&o.stderr)
                );
                let _ = std::fs::remove_dir_all(&target);
                continue;
            }
            // A flip in a JSON field may leave a valid document with a different key
            // derivation or salt: then the password no longer opens it, which is all one can say.
            let names = stderr(&o).contains("kopia.repository")
                || stderr(&o).contains("invalid repository password");
            assert!(
                !o.status.success() && names,
                "{what}: kmover {}: {}\n{}",
                args.join(" "),
                o.status,
                clip(&o.stderr)
            );
            let _ = std::fs::remove_dir_all(&target);
        }
        assert!(
            std::fs::read(&path).unwrap() == damaged,
            "{what}: a command rewrote the damaged format blob"
        );
        if harmless {
            harmless_count += 1;
        } else {
            detected += 1;
        }
    }
    say(&format!(
        "format blob corruptions detected: {detected}; harmless (informational fields): \
         {harmless_count}"
    ));
}

/// Two paths holding one object whose data is damaged: both files are damaged, and verify must
/// list both.
#[test]
fn a_damaged_shared_object_is_listed_under_every_path() {
    let f = Fixture::with_tree("a_damaged_shared_object_is_listed_under_every_path", true);
    let deps = &f.layout.files["copy/m3-again.bin"];
    assert_eq!(
        deps, &f.layout.files["medium/m3.bin"],
        "one object, two paths"
    );
    let id = &deps[0];
    let s = &f.layout.contents[id];
    flip_bit(&f.blob_path(&s.pack), s.offset + s.length / 2, 3);
    let damaged = BTreeSet::from([id.clone()]);
    let expected = f.layout.expected_errors(&damaged);
    assert_eq!(expected.len(), 2);
    let verify = f.run(&["snapshot", "verify", "--verify-files-percent=100"]);
    assert_eq!(
        verify_error_paths(&verify, &f.layout.snapshot, &f.tree),
        expected,
        "{}",
        clip(&verify.stderr)
    );
}
