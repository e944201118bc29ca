//! `snapshot exists`: exit 0 when the source has a complete snapshot, 1 when it has none, 3 when
//! the repository cannot tell; `--json` in pvc-plumber's answer shape. Also on a repository and
//! snapshot written by the real kopia.

mod common;

use std::path::Path;

use common::{Kmover, KopiaVersion, RepositoryCli};
use serde_json::Value;

fn exists(kmover: &Kmover, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec!["snapshot", "exists", "--json"];
    args.extend_from_slice(extra);
    let out = kmover.runner().run_unchecked(args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn small_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello").unwrap();
}

#[test]
fn present_absent_and_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    small_tree(&tree);
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    kmover.run([
        "snapshot",
        "create",
        "--override-source=data-backup@ns1:/data",
        tree.to_str().unwrap(),
    ]);

    let (code, json, _) = exists(&kmover, &["--source=data-backup@ns1:/data"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["exists"], true);
    assert_eq!(json["decision"], "restore");
    assert_eq!(json["authoritative"], true);
    assert_eq!(json["backend"], "kopia-fs");
    assert_eq!(json["snapshots"], 1);
    assert!(json["latestSnapshotTime"].is_string(), "{json}");

    // Any path of the identity.
    let (code, _, _) = exists(&kmover, &["--source=data-backup@ns1"]);
    assert_eq!(code, Some(0));

    for absent in [
        "other-backup@ns1:/data",
        "data-backup@ns1:/elsewhere",
        "data-backup@ns2",
    ] {
        let (code, json, _) = exists(&kmover, &[&format!("--source={absent}")]);
        assert_eq!(code, Some(1), "{absent}: {json}");
        assert_eq!(json["exists"], false);
        assert_eq!(json["decision"], "fresh");
        assert_eq!(json["authoritative"], true);
        assert_eq!(json["source"], absent);
    }

    // Text output and plain exit codes.
    let out = kmover.run(["snapshot", "exists", "--source=data-backup@ns1:/data"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 snapshot(s)"));

    // A wrong password: "cannot tell", never "absent"; the password is not echoed.
    let wrong = "not-the-password-4711";
    let (code, json, err) = exists(
        &kmover,
        &[
            &format!("--password={wrong}"),
            "--source=data-backup@ns1:/data",
        ],
    );
    assert_eq!(code, Some(3), "{json} {err}");
    assert_eq!(json["exists"], false);
    assert_eq!(json["decision"], "unknown");
    assert_eq!(json["authoritative"], false);
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("invalid repository password"), "{error}");
    assert!(!error.contains(wrong) && !err.contains(wrong), "{err}");

    // No repository at all (no connection file): also "cannot tell".
    let unconnected = Kmover::new();
    let (code, json, _) = exists(&unconnected, &["--source=data-backup@ns1:/data"]);
    assert_eq!(code, Some(3), "{json}");
    assert_eq!(json["decision"], "unknown");

    // Bad input is a usage error (2, never 1 = "none") naming the value.
    let out = kmover
        .runner()
        .run_expecting_failure(["snapshot", "exists", "--source=no-at-sign"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-at-sign"));
}

#[test]
fn answers_for_snapshots_kopia_wrote() {
    let Some(kopia) = common::Kopia::find(KopiaVersion::V0_22, "answers_for_snapshots_kopia_wrote")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let tree = dir.path().join("tree");
    small_tree(&tree);
    kopia.create_filesystem_repo(&repo, &[]);
    let manifest = kopia.snapshot_create(&tree);
    let source = &manifest["source"];
    let query = format!(
        "{}@{}:{}",
        source["userName"].as_str().unwrap(),
        source["host"].as_str().unwrap(),
        source["path"].as_str().unwrap()
    );
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let (code, json, _) = exists(&kmover, &[&format!("--source={query}")]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["snapshots"], 1);
    let (code, _, _) = exists(&kmover, &["--source=nobody@nowhere:/x"]);
    assert_eq!(code, Some(1));
}
