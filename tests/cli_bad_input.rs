//! Bad input through the CLI: a wrong password, and flipped bytes in pack, index and format blobs,
//! give clear errors naming what is wrong, a non-zero exit (never a panic), and change nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Kmover, RepositoryCli};

/// Every file under `root` with its bytes, to prove a failed command wrote nothing.
fn snapshot_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &std::process::Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: exit code must be 1 (not a panic): {}",
        stderr(o)
    );
    assert!(!stderr(o).contains("panicked"), "{what}: {}", stderr(o));
}

/// A repository with two contents, created by kmover's CLI, and the ID of one data content.
fn repo_with_contents(dir: &Path) -> (Kmover, PathBuf) {
    let repo = dir.join("repo");
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &repo,
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: kmover_blob::DynBlobStore =
            std::sync::Arc::new(kmover_blob::fs::FilesystemStore::open(&repo).await.unwrap());
        let r = kmover_repo::Repository::open(store, common::PASSWORD, Default::default())
            .await
            .unwrap();
        r.contents()
            .write_content(&common::random_bytes(9, 200_000), None, None)
            .await
            .unwrap();
        r.contents()
            .write_content(b"{\"k\":1}", Some(b'k'), None)
            .await
            .unwrap();
        r.contents().flush().await.unwrap();
    });
    (kmover, repo)
}

#[test]
fn wrong_password_is_named_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo_with_contents(dir.path());
    let before = snapshot_files(&repo);
    let other = Kmover::new();
    let o = other.runner().run_unchecked([
        "--password",
        "not-the-password",
        "repository",
        "connect",
        "filesystem",
        "--path",
        repo.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "connect with a wrong password");
    assert!(
        stderr(&o).contains("invalid repository password"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("not-the-password"),
        "the password must never be echoed"
    );
    assert!(
        !other.runner().config_file().exists(),
        "no connection file is written"
    );
    assert_eq!(before, snapshot_files(&repo), "the repository is unchanged");
}

#[test]
fn creating_over_an_existing_repository_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, repo) = repo_with_contents(dir.path());
    let before = snapshot_files(&repo);
    let o = Kmover::new().runner().run_unchecked([
        "repository",
        "create",
        "filesystem",
        "--path",
        repo.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "create over an existing repository");
    assert!(stderr(&o).contains("existing data"), "{}", stderr(&o));
    assert_eq!(before, snapshot_files(&repo));
}

#[test]
fn flipped_pack_byte_names_content_and_pack() {
    let dir = tempfile::tempdir().unwrap();
    let (kmover, repo) = repo_with_contents(dir.path());
    let list = kmover.content_list_json();
    let data = list
        .iter()
        .find(|c| c["packFile"].as_str().unwrap().starts_with('p'))
        .unwrap();
    let (id, pack) = (
        data["contentID"].as_str().unwrap(),
        data["packFile"].as_str().unwrap(),
    );
    let pack_path = walk_find(&repo, &pack[4..]).expect("pack file on disk");
    let mut bytes = std::fs::read(&pack_path).unwrap();
    let at = data["packOffset"].as_u64().unwrap() as usize + 1000;
    bytes[at] ^= 0x20;
    std::fs::write(&pack_path, bytes).unwrap();

    let o = kmover.runner().run_unchecked(["content", "show", id]);
    assert_clean_failure(&o, "content show of a damaged content");
    assert!(
        stderr(&o).contains(id) && stderr(&o).contains(pack),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty(), "no wrong bytes are written out");
    let o = kmover
        .runner()
        .run_unchecked(["content", "verify", "--full"]);
    assert_clean_failure(&o, "content verify --full");
    assert!(stderr(&o).contains(id), "{}", stderr(&o));
}

#[test]
fn flipped_index_byte_names_the_index_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (kmover, repo) = repo_with_contents(dir.path());
    let index = kmover.index_list_json().remove(0);
    let index_id = index["id"].as_str().unwrap().to_string();
    let path = walk_find(&repo, &index_id[4..]).expect("index file on disk");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let o = kmover.runner().run_unchecked(["content", "list"]);
    assert_clean_failure(&o, "content list with a damaged index");
    assert!(stderr(&o).contains(&index_id), "{}", stderr(&o));
}

#[test]
fn damaged_format_blob_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (kmover, repo) = repo_with_contents(dir.path());
    let path = repo.join("kopia.repository.f");
    let original = std::fs::read(&path).unwrap();
    for (i, cut) in [original.len() / 3, original.len() - 40, 10]
        .into_iter()
        .enumerate()
    {
        let mut bytes = original.clone();
        if i == 2 {
            bytes.truncate(cut);
        } else {
            bytes[cut] ^= 0x02;
        }
        std::fs::write(&path, &bytes).unwrap();
        let o = kmover.runner().run_unchecked(["content", "list"]);
        assert_clean_failure(&o, "content list with a damaged format blob");
        assert!(
            stderr(&o).contains("kopia.repository") || stderr(&o).contains("password"),
            "{}",
            stderr(&o)
        );
    }
}

/// The file whose path (shard dirs + name, without `.f`) ends with `suffix`.
fn walk_find(root: &Path, suffix: &str) -> Option<PathBuf> {
    snapshot_files(root)
        .into_keys()
        .find(|p| p.to_string_lossy().trim_end_matches(".f").ends_with(suffix))
}
