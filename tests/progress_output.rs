//! Progress output: redrawn in place on a terminal (a pty via `script`), plain newline-terminated
//! lines without carriage returns otherwise — VolSync reads mover logs line by line.

mod common;

use common::{Kmover, PASSWORD, RepositoryCli};

fn big_tree(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("big.bin"), common::random_bytes(21, 300 << 20)).unwrap();
}

#[test]
fn terminal_gets_a_redrawn_bar_and_pipes_get_plain_lines() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip_or_fail(
            "terminal_gets_a_redrawn_bar_and_pipes_get_plain_lines",
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

    // Not a terminal: lines only.
    let piped = kmover.run(["snapshot", "create", tree.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains('\r'),
        "no carriage returns when not on a terminal: {err:?}"
    );
    assert!(err.ends_with('\n'));

    // On a terminal: the bar redraws (carriage returns / cursor control).
    std::fs::write(
        tree.join("changed.bin"),
        common::random_bytes(22, 300 << 20),
    )
    .unwrap();
    let config = kmover.runner().config_file();
    let cmd = format!(
        "{} --config-file {} snapshot create {}",
        env!("CARGO_BIN_EXE_kmover"),
        config.display(),
        tree.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains('\r') || shown.contains("\u{1b}["),
        "a live bar on a terminal: {shown:?}"
    );
    assert!(shown.contains("hashed"), "{shown:?}");
}
