//! The path examples of spec §1.3 (from kopia's own sharded and filesystem tests): each ID lands in
//! the expected file, and lists back as itself.

use std::path::Path;

use kmover_blob::BlobStore;
use kmover_blob::fs::{FilesystemStore, ShardOverride, ShardingMode, ShardingParameters};

fn params(default: &[usize], max: usize, overrides: &[(&str, &[usize])]) -> ShardingParameters {
    ShardingParameters {
        default_shards: default.to_vec(),
        max_non_sharded_length: max,
        overrides: overrides
            .iter()
            .map(|(prefix, shards)| ShardOverride {
                prefix: prefix.to_string(),
                shards: shards.to_vec(),
            })
            .collect(),
    }
}

async fn check(store: &FilesystemStore, cases: &[(&str, &str)]) {
    for (id, expected) in cases {
        let path = store.blob_path(id);
        assert_eq!(
            path,
            store.root().join(expected),
            "path of {id:?} with {:?}",
            store.sharding()
        );
        store.put(id, id.as_bytes().to_vec()).await.unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            id.as_bytes(),
            "file of {id:?}"
        );
    }
    let mut listed: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|(id, _)| id.to_string()).collect();
    listed.sort();
    expected.sort();
    expected.dedup();
    assert_eq!(listed, expected);
}

async fn custom(root: &Path, p: ShardingParameters) -> FilesystemStore {
    FilesystemStore::create(root, ShardingMode::Custom(p))
        .await
        .unwrap()
}

#[tokio::test]
async fn legacy_repository_without_shards_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path()).await.unwrap();
    check(
        &store,
        &[(
            "foobarbaz12345678910123213123",
            "foo/bar/baz12345678910123213123.f",
        )],
    )
    .await;
}

#[tokio::test]
async fn new_repository_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path(), ShardingMode::Default)
        .await
        .unwrap();
    check(
        &store,
        &[
            (
                "foobarbaz12345678910123213123",
                "f/oob/arbaz12345678910123213123.f",
            ),
            ("kopia.repository", "kopia.repository.f"),
            ("kopia.maintenance", "kopia.maintenance.f"),
            ("xe3", "xe3.f"),
            ("xw1700000000", "xw1700000000.f"),
            (
                "p0123456789abcdef0123456789abcdef-s0123456789abcdef13c",
                "p/012/3456789abcdef0123456789abcdef-s0123456789abcdef13c.f",
            ),
            (
                "xn0_0123456789abcdef0123456789abcdef-s0123456789abcdef13c-c1",
                "x/n0_/0123456789abcdef0123456789abcdef-s0123456789abcdef13c-c1.f",
            ),
            // The maxNonShardedLength boundary: 20 characters stay in the root, 21 are sharded.
            ("abcdefghijklmnopqrst", "abcdefghijklmnopqrst.f"),
            ("abcdefghijklmnopqrstu", "a/bcd/efghijklmnopqrstu.f"),
        ],
    )
    .await;
}

#[tokio::test]
async fn widths_3_2_1_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let store = custom(
        dir.path(),
        params(&[3, 2, 1], 2, &[("p", &[2, 2]), ("x", &[1, 1, 1])]),
    )
    .await;
    check(
        &store,
        &[
            ("ab", "ab.f"),
            ("defaultsharded", "def/au/l/tsharded.f"),
            ("phello", "ph/el/lo.f"),
            ("xbye", "x/b/y/e.f"),
            ("xo", "xo.f"),
        ],
    )
    .await;
}

#[tokio::test]
async fn widths_3_3_with_small_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = custom(&dir.path().join("ten"), params(&[3, 3], 10, &[])).await;
    check(
        &store,
        &[
            ("foobarbar", "foobarbar.f"),
            ("foobarbarbar", "foo/bar/barbar.f"),
        ],
    )
    .await;

    let store = custom(&dir.path().join("zero"), params(&[3, 3], 0, &[])).await;
    check(
        &store,
        &[
            ("fo", "fo.f"),
            ("foo", "foo.f"),
            ("foob", "foo/b.f"),
            ("foobar2", "foo/bar/2.f"),
        ],
    )
    .await;
}

#[tokio::test]
async fn widths_5_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = custom(dir.path(), params(&[5, 2], 20, &[])).await;
    check(
        &store,
        &[("someblob1234567812345678", "someb/lo/b1234567812345678.f")],
    )
    .await;
}
