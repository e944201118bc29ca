//! Machine-readable results: `snapshot verify --json` prints exactly what kopia prints for the
//! same repository (its `VerifierResult`), and `snapshot restore --json` kopia's restore stats.

mod common;

use common::{Kmover, Kopia, KopiaVersion, RepositoryCli};
use serde_json::Value;

#[test]
fn verify_json_matches_kopia_and_restore_json_counts() {
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, "verify_json_matches_kopia") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let tree = dir.path().join("tree");
    let stats = common::sample_tree(&tree);
    kopia.create_filesystem_repo(&repo, &[]);
    kopia.snapshot_create(&tree);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    // kmover's own snapshot of the same tree: two snapshots to verify, shared contents.
    kmover.run(["snapshot", "create", tree.to_str().unwrap()]);

    for percent in ["0", "100"] {
        let flag = format!("--verify-files-percent={percent}");
        let theirs: Value =
            serde_json::from_slice(&kopia.run(["snapshot", "verify", "--json", &flag]).stdout)
                .unwrap();
        let ours: Value =
            serde_json::from_slice(&kmover.run(["snapshot", "verify", "--json", &flag]).stdout)
                .unwrap();
        assert_eq!(ours, theirs, "verify --json {flag}");
    }

    let listed: Vec<Value> =
        serde_json::from_slice(&kmover.run(["snapshot", "list", "--all", "--json"]).stdout)
            .unwrap();
    let id = listed[0]["id"].as_str().unwrap();
    let target = dir.path().join("restored");
    let out = kmover.run([
        "snapshot",
        "restore",
        "--json",
        id,
        target.to_str().unwrap(),
    ]);
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["RestoredFileCount"], stats.files);
    assert_eq!(restored["RestoredDirCount"], stats.dirs);
    assert_eq!(restored["RestoredSymlinkCount"], stats.symlinks);
    assert_eq!(restored["RestoredTotalFileSize"], stats.bytes);
    assert_eq!(restored["SkippedCount"], 0);
    let how = common::tree::Compare {
        dir_mtimes: false,
        owners: false,
    };
    common::tree::assert_same_tree(&tree, &target, how);
}
