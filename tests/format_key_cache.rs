//! The format key derived at connect time is kept beside the persisted password, so later
//! commands skip the key derivation (scrypt) — and only while that password is the one in use.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Kmover, Kopia, KopiaVersion, PASSWORD, RepositoryCli};

const USED_SAVED_KEY: &str = "format key: the one derived on an earlier open";

fn key_file(tool: &Kmover) -> PathBuf {
    let mut path = tool.runner().config_file().into_os_string();
    path.push(".kmover-format-key");
    path.into()
}

fn debug_list(tool: &Kmover, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["snapshot", "list", "--log-level=debug"];
    args.extend_from_slice(extra);
    tool.runner().run_unchecked(args)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn new_repo(dir: &Path) -> (Kmover, PathBuf) {
    let tool = Kmover::new();
    let repo = dir.join("repo");
    tool.create_filesystem_repo(&repo, &[]);
    (tool, repo)
}

fn connect_without_persisting(tool: &Kmover, repo: &Path) {
    tool.run([
        "repository".as_ref(),
        "connect".as_ref(),
        "filesystem".as_ref(),
        "--no-persist-credentials".as_ref(),
        "--path".as_ref(),
        repo.as_os_str(),
    ]);
}

#[test]
fn a_connected_client_derives_the_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let (tool, _) = new_repo(dir.path());
    let file = key_file(&tool);
    let meta = std::fs::metadata(&file).expect("the key is saved at connect time");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(PASSWORD), "{text}");

    let listed = debug_list(&tool, &[]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains(USED_SAVED_KEY),
        "{}",
        stderr(&listed)
    );

    // Another password for one run: never opened with the saved key, refused as kopia does.
    let wrong = debug_list(&tool, &["--password=not-the-password"]);
    assert!(!wrong.status.success());
    assert!(
        !stderr(&wrong).contains(USED_SAVED_KEY),
        "{}",
        stderr(&wrong)
    );
    assert!(
        stderr(&wrong).contains("invalid repository password"),
        "{}",
        stderr(&wrong)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        text,
        "a wrong password rewrote the key"
    );

    tool.run(["repository", "disconnect"]);
    assert!(!file.exists(), "disconnect leaves the key behind");
}

#[test]
fn a_damaged_or_foreign_key_falls_back_to_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (tool, _) = new_repo(dir.path());
    let file = key_file(&tool);
    let good = std::fs::read_to_string(&file).unwrap();
    let value: serde_json::Value = serde_json::from_str(&good).unwrap();
    let wrong_key = serde_json::json!({
        "uniqueID": value["uniqueID"],
        "keyAlgo": value["keyAlgo"],
        "key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    });
    let other_repo = serde_json::json!({
        "uniqueID": "00".repeat(32),
        "keyAlgo": value["keyAlgo"],
        "key": value["key"],
    });
    for damaged in [
        wrong_key.to_string(),
        other_repo.to_string(),
        "{not json".to_owned(),
        String::new(),
    ] {
        std::fs::write(&file, &damaged).unwrap();
        let listed = debug_list(&tool, &[]);
        assert!(listed.status.success(), "{damaged}: {}", stderr(&listed));
        assert!(!stderr(&listed).contains(USED_SAVED_KEY), "{damaged}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            good,
            "{damaged}: not repaired"
        );
    }
}

#[test]
fn no_key_is_kept_without_a_persisted_password() {
    let dir = tempfile::tempdir().unwrap();
    let (creator, repo) = new_repo(dir.path());
    assert!(key_file(&creator).exists());

    let tool = Kmover::new();
    connect_without_persisting(&tool, &repo);
    let listed = debug_list(&tool, &[]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(!stderr(&listed).contains(USED_SAVED_KEY));
    assert!(!key_file(&tool).exists());

    // Reconnecting the first client without persisting drops its saved key too.
    connect_without_persisting(&creator, &repo);
    assert!(!key_file(&creator).exists());
}

#[test]
fn a_password_changed_by_kopia_retires_the_saved_key() {
    let Some(kopia) = Kopia::find(
        KopiaVersion::V0_22,
        "a_password_changed_by_kopia_retires_the_saved_key",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (tool, repo) = new_repo(dir.path());
    kopia.connect_filesystem(&repo);
    kopia.run([
        "repository",
        "change-password",
        "--new-password=a-new-password",
    ]);

    // The persisted (old) password with its saved key must not open the repository.
    let old = debug_list(&tool, &[]);
    assert!(!old.status.success(), "opened with a retired key");
    assert!(
        stderr(&old).contains("invalid repository password"),
        "{}",
        stderr(&old)
    );

    let new = debug_list(&tool, &["--password=a-new-password"]);
    assert!(new.status.success(), "{}", stderr(&new));
    assert!(!stderr(&new).contains(USED_SAVED_KEY));
}
