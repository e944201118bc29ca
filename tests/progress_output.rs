//! Progress output: redrawn in place on a terminal (a pty via util-linux `script`), plain
//! newline-terminated lines without carriage returns otherwise — VolSync reads mover logs line by
//! line — and JSON lines with `--log-format=json`.

mod common;

use std::path::Path;

use common::{Kmover, PASSWORD, RepositoryCli};

/// Big enough that each operation outlasts a few 100 ms progress intervals.
const BIG: usize = 300 << 20;

fn big_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("big.bin"), common::random_bytes(21, BIG)).unwrap();
    for i in 0..50 {
        std::fs::write(dir.join("sub").join(format!("small-{i}")), format!("{i}")).unwrap();
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("UTF-8 stderr")
}

/// Every byte of `text` belongs to a newline-terminated line, and none is a carriage return or
/// a terminal escape.
fn assert_plain_lines(text: &str, what: &str) {
    assert!(!text.contains('\r'), "{what}: no carriage return: {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "{what}: no escape codes: {text:?}"
    );
    assert!(
        text.ends_with('\n'),
        "{what}: last line terminated: {text:?}"
    );
}

fn progress_lines<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let prefix = format!(" * {label}: ");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn pipes_get_plain_lines_for_backup_restore_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    big_tree(&tree);
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    let every = "--progress-update-interval=100ms";

    let backup = stderr_of(&kmover.run(["snapshot", "create", every, tree.to_str().unwrap()]));
    assert_plain_lines(&backup, "backup");
    let lines = progress_lines(&backup, "Backup");
    assert!(!lines.is_empty(), "periodic backup lines: {backup}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" files, ") && l.contains("hashed")),
        "{lines:#?}"
    );
    // The source walk finishes early: totals, a percentage and an ETA follow.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/51 files") && l.contains("ETA")),
        "{lines:#?}"
    );

    let target = dir.path().join("restored");
    let restore = stderr_of(&kmover.run([
        "snapshot",
        "restore",
        every,
        tree.to_str().unwrap(),
        target.to_str().unwrap(),
    ]));
    assert_plain_lines(&restore, "restore");
    let lines = progress_lines(&restore, "Restore");
    assert!(!lines.is_empty(), "periodic restore lines: {restore}");
    assert!(lines.iter().all(|l| l.contains("/51 files")), "{lines:#?}");

    let verify =
        stderr_of(&kmover.run(["snapshot", "verify", every, "--verify-files-percent=100"]));
    assert_plain_lines(&verify, "verify");
    let lines = progress_lines(&verify, "Verify");
    assert!(!lines.is_empty(), "periodic verify lines: {verify}");

    // --no-progress: only the command's own messages.
    let quiet = stderr_of(&kmover.run([
        "snapshot",
        "verify",
        every,
        "--no-progress",
        "--verify-files-percent=100",
    ]));
    assert!(progress_lines(&quiet, "Verify").is_empty(), "{quiet}");
    assert!(quiet.contains("Verified 1 snapshots"), "{quiet}");
}

#[test]
fn json_log_format_writes_only_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    big_tree(&tree);
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    let out = kmover.run([
        "snapshot",
        "create",
        "--log-format=json",
        "--log-level=info",
        "--progress-update-interval=100ms",
        tree.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert_plain_lines(&err, "json logs");
    let records: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(
        records.iter().all(|r| r["t"].is_string()
            && r["level"].is_string()
            && r["m"].is_string()
            && r["n"].is_string()),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["m"].as_str().unwrap().starts_with("Created snapshot")),
        "{records:#?}"
    );
    let progress: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["operation"] == "Backup")
        .collect();
    assert!(!progress.is_empty(), "{records:#?}");
    assert!(
        progress
            .iter()
            .all(|r| r["bytes"].is_u64() && r["files"].is_u64())
    );

    // kopia's spelling, and a failure reported as a JSON error record.
    let failed = kmover.runner().run_expecting_failure([
        "--json-log-console",
        "snapshot",
        "restore",
        "0123456789abcdef0123456789abcdef",
        dir.path().join("nowhere").to_str().unwrap(),
    ]);
    let err = stderr_of(&failed);
    let last: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{err}");
    assert_eq!(failed.status.code(), Some(1));
}

#[test]
fn terminal_gets_a_redrawn_bar() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip_or_fail(
            "terminal_gets_a_redrawn_bar",
            "util-linux `script` is missing",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    big_tree(&tree);
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    let config = kmover.runner().config_file();
    let cache = kmover.runner().cache_dir();
    // `script` gives the command a pty for stdin, stdout and stderr; what it drew is its stdout.
    // A wide terminal, so no part of the line is cut off.
    let cmd = format!(
        "stty cols 200 rows 50; {} --config-file {} --cache-directory {} snapshot create --progress-update-interval=100ms {}",
        env!("CARGO_BIN_EXE_kmover"),
        config.display(),
        cache.display(),
        tree.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .env_remove("KMOVER_PLAIN_PROGRESS")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    // indicatif redraws in place: cursor movement / line clearing, many times over.
    let redraws = shown.matches("\u{1b}[").count() + shown.matches('\r').count();
    assert!(redraws >= 4, "a bar redrawn in place: {shown:?}");
    assert!(shown.contains("Backup:"), "{shown:?}");
    assert!(shown.contains("hashed"), "{shown:?}");
    assert!(shown.contains("/51 files"), "{shown:?}");
    assert!(
        shown.contains("MB/s, ETA "),
        "throughput and ETA shown: {shown:?}"
    );
    // Once the source walk is done the bar gets its length: drawn with `=`.
    assert!(shown.contains("=>") || shown.contains("=]"), "{shown:?}");
    assert!(shown.contains("Created snapshot"), "{shown:?}");
}
