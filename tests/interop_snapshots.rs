//! Snapshots across kmover and the real kopia (snapshot issue, done-means 1–5): each tool verifies
//! and restores the other's snapshots exactly, both produce the same root object ID for the same
//! tree, the second writes no new contents, and unchanged files are reused whoever wrote them.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::tree::{Compare, SPARSE_LEN, allocated_bytes, assert_same_tree, hard_tree};
use common::{Kmover, Kopia, KopiaVersion, RepositoryCli};
use serde_json::Value;

const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";
const EXACT: Compare = Compare {
    dir_mtimes: false,
    owners: true,
};

fn json(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn kmover_snapshot(kmover: &Kmover, dir: &Path) -> Value {
    json(kmover.run(["snapshot", "create", dir.to_str().unwrap(), "--json"]))
}

/// Content IDs other than manifests (`m…`), which every new snapshot adds one of.
fn data_contents(tool: &impl RepositoryCli) -> BTreeSet<String> {
    tool.content_list_json()
        .into_iter()
        .map(|c| c["contentID"].as_str().unwrap().to_string())
        .filter(|id| !id.starts_with('m'))
        .collect()
}

/// A snapshot's stats as `snapshot list --json` shows them (kopia's `create --json` omits them).
fn stats_of(tool: &impl RepositoryCli, id: &str) -> Value {
    let out = tool.run(["snapshot", "list", "--json", "--all"]);
    let list = json(out);
    let m = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} is listed"));
    m["stats"].clone()
}

fn list_ids(tool: &impl RepositoryCli) -> BTreeSet<String> {
    let out = tool.run(["snapshot", "list", "--json", "--all"]);
    json(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kopia_verifies_and_restores_kmover_snapshot_and_root_ids_match() {
    let test = "kopia_verifies_and_restores_kmover_snapshot_and_root_ids_match";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, true, 5000);
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);

    let ours = kmover_snapshot(&kmover, &tree);
    let our_id = ours["id"].as_str().unwrap().to_string();
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let listed = json(kopia.run(["snapshot", "list", "--json", "--all"]));
    let seen = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == our_id.as_str())
        .expect("kopia lists it");
    assert_eq!(seen["stats"], ours["stats"], "kopia shows kmover's stats");
    assert_eq!(seen["rootEntry"], ours["rootEntry"]);
    assert!(ours["stats"]["fileCount"].as_i64().unwrap() > 5000);

    let by_kopia = dir.path().join("restored-by-kopia");
    kopia.run([
        "snapshot",
        "restore",
        &our_id,
        by_kopia.to_str().unwrap(),
        "--write-sparse-files",
    ]);
    assert_same_tree(&tree, &by_kopia, EXACT);

    let before = data_contents(&kopia);
    let theirs = kopia.snapshot_create(&tree);
    assert_eq!(
        theirs["rootEntry"]["obj"], ours["rootEntry"]["obj"],
        "same tree, same root object ID"
    );
    assert_eq!(
        data_contents(&kopia),
        before,
        "the second snapshot writes no new contents"
    );

    let theirs_id = theirs["id"].as_str().unwrap();
    let by_kmover = dir.path().join("restored-by-kmover");
    kmover.run([
        "snapshot",
        "restore",
        theirs_id,
        by_kmover.to_str().unwrap(),
        "--write-sparse-files",
    ]);
    assert_same_tree(&tree, &by_kmover, EXACT);
    assert_same_tree(
        &by_kopia,
        &by_kmover,
        Compare {
            dir_mtimes: true,
            owners: true,
        },
    );
    let sparse = by_kmover.join("data/sparse.img");
    assert!(
        allocated_bytes(&sparse) < 64 << 20,
        "a {SPARSE_LEN}-byte sparse file stays sparse"
    );
}

#[test]
fn kopia_snapshots_first_then_kmover_writes_nothing_new() {
    let test = "kopia_snapshots_first_then_kmover_writes_nothing_new";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 300);
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let theirs = kopia.snapshot_create(&tree);
    let before = data_contents(&kmover);
    let ours = kmover_snapshot(&kmover, &tree);
    assert_eq!(ours["rootEntry"]["obj"], theirs["rootEntry"]["obj"]);
    assert_eq!(data_contents(&kmover), before);
    // The one file read again has an invalid UTF-8 name: kopia's format stores it lossily, so no
    // previous entry can match it — kopia re-reads it too.
    assert_eq!(
        ours["stats"]["nonCachedFiles"], 1,
        "every other file reused from kopia's snapshot: {ours}"
    );
    let again = kopia.snapshot_create(&tree);
    assert_eq!(
        stats_of(&kopia, again["id"].as_str().unwrap())["nonCachedFiles"],
        1,
        "kopia behaves the same"
    );
}

/// Small edits between rounds: change, add, delete, chmod, retarget a symlink.
fn edit(tree: &Path, round: usize) {
    std::fs::write(
        tree.join(format!("data/round-{round}.txt")),
        format!("added in round {round}\n"),
    )
    .unwrap();
    std::fs::write(
        tree.join("data/text.txt"),
        common::text_bytes(100 + round as u64, 50_000),
    )
    .unwrap();
    if round > 0 {
        std::fs::remove_file(tree.join(format!("data/round-{}.txt", round - 1))).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = if round.is_multiple_of(2) {
        0o640
    } else {
        0o644
    };
    std::fs::set_permissions(
        tree.join("names/with spaces.txt"),
        std::fs::Permissions::from_mode(mode),
    )
    .unwrap();
    let link = tree.join("links-to-text");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(format!("target-of-round-{round}"), &link).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn alternating_kmover_and_kopia_rounds_share_and_restore_everything() {
    let test = "alternating_kmover_and_kopia_rounds_share_and_restore_everything";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 200);
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);

    let mut rounds = Vec::new();
    for round in 0..6 {
        edit(&tree, round);
        let saved = dir.path().join(format!("round-{round}"));
        copy_tree(&tree, &saved);
        let m = if round.is_multiple_of(2) {
            kmover_snapshot(&kmover, &tree)
        } else {
            kopia.snapshot_create(&tree)
        };
        if round > 0 {
            let stats = stats_of(&kmover, m["id"].as_str().unwrap());
            let cached = stats["cachedFiles"].as_i64().unwrap();
            assert!(
                cached > 200,
                "round {round} reuses the other tool's unchanged files: {stats}"
            );
            // The added, rewritten and chmod'ed files, plus the invalid-UTF-8 name (see above).
            assert_eq!(
                stats["nonCachedFiles"], 4,
                "only edited files are read: {stats}"
            );
        }
        rounds.push((m["id"].as_str().unwrap().to_string(), saved));
    }
    let ids: BTreeSet<String> = rounds.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(list_ids(&kmover), ids, "kmover lists every round");
    assert_eq!(list_ids(&kopia), ids, "kopia lists every round");
    for (i, (id, saved)) in rounds.iter().enumerate() {
        let a = dir.path().join(format!("kmover-restore-{i}"));
        kmover.run(["snapshot", "restore", id, a.to_str().unwrap()]);
        assert_same_tree(saved, &a, EXACT);
        let b = dir.path().join(format!("kopia-restore-{i}"));
        kopia.run(["snapshot", "restore", id, b.to_str().unwrap()]);
        assert_same_tree(saved, &b, EXACT);
        assert_same_tree(
            &a,
            &b,
            Compare {
                dir_mtimes: true,
                owners: true,
            },
        );
    }
}

#[test]
fn one_changed_file_among_ten_thousand_is_the_only_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for i in 0..10_000 {
        let p = tree.join(format!("d{:03}/f{i:05}.txt", i / 100));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("file {i}\n")).unwrap();
    }
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(&dir.path().join("repo"), &[FAST_KDF]);
    let first = kmover_snapshot(&kmover, &tree);
    assert_eq!(first["stats"]["nonCachedFiles"], 10_000);
    std::fs::write(tree.join("d042/f04242.txt"), "changed\n").unwrap();
    let second = kmover_snapshot(&kmover, &tree);
    assert_eq!(second["stats"]["nonCachedFiles"], 1, "{}", second["stats"]);
    assert_eq!(second["stats"]["cachedFiles"], 9_999, "{}", second["stats"]);
    assert_ne!(first["rootEntry"]["obj"], second["rootEntry"]["obj"]);
}

/// Smoke form of the exchange with older and newer kopia releases: each verifies and restores the
/// other's snapshot of the same small tree, and both agree on the root object ID.
fn smoke_exchange(version: KopiaVersion, test: &str) {
    let Some(kopia) = Kopia::find(version, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 100);
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let ours = kmover_snapshot(&kmover, &tree);
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let by_kopia = dir.path().join("by-kopia");
    kopia.run([
        "snapshot",
        "restore",
        ours["id"].as_str().unwrap(),
        by_kopia.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &by_kopia, EXACT);
    let theirs = kopia.snapshot_create(&tree);
    assert_eq!(theirs["rootEntry"]["obj"], ours["rootEntry"]["obj"]);
    let by_kmover = dir.path().join("by-kmover");
    kmover.run([
        "snapshot",
        "restore",
        theirs["id"].as_str().unwrap(),
        by_kmover.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &by_kmover, EXACT);
    kmover.run(["snapshot", "verify", "--verify-files-percent=100"]);
}

#[test]
fn smoke_snapshots_with_kopia_0_21() {
    smoke_exchange(KopiaVersion::V0_21, "smoke_snapshots_with_kopia_0_21");
}

#[test]
fn smoke_snapshots_with_kopia_0_23() {
    smoke_exchange(KopiaVersion::V0_23, "smoke_snapshots_with_kopia_0_23");
}

/// With zstd-fastest, kmover stores chunks whose sample does not shrink raw (as kopia does when
/// compression does not help) and the others compressed: kopia must read both kinds.
#[test]
fn kopia_reads_compressed_and_raw_chunks_kmover_wrote() {
    let test = "kopia_reads_compressed_and_raw_chunks_kmover_wrote";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("random.bin"), common::random_bytes(21, 3 << 20)).unwrap();
    std::fs::write(tree.join("text.txt"), common::text_bytes(22, 3 << 20)).unwrap();
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    kmover.run(["policy", "set", "--global", "--compression", "zstd-fastest"]);

    let ours = kmover_snapshot(&kmover, &tree);
    let our_id = ours["id"].as_str().unwrap().to_string();
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    kopia.run(["content", "verify", "--full"]);
    let listing = String::from_utf8(kopia.run(["content", "list", "--long"]).stdout).unwrap();
    let data_lines: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_lowercase() && c >= 'g'))
        .collect();
    let compressed = data_lines
        .iter()
        .filter(|l| l.contains(" zstd-fastest "))
        .count();
    let raw = data_lines.iter().filter(|l| l.ends_with(" -")).count();
    assert!(compressed > 0 && raw > 0, "{listing}");

    let by_kopia = dir.path().join("restored-by-kopia");
    kopia.run(["snapshot", "restore", &our_id, by_kopia.to_str().unwrap()]);
    assert_same_tree(&tree, &by_kopia, EXACT);
}
