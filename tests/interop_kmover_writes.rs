//! kmover writes a filesystem repository; the real kopia opens it and reads every content back.
//! (Foundation issue, done-means 1, and the v0.21/v0.23 smoke form of it.)

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Kmover, Kopia, KopiaVersion, PASSWORD, RepositoryCli, random_bytes, text_bytes};
use kmover_blob::DynBlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};
use kmover_format::compression::header_id_for_name;
use kmover_format::encryption::EncryptionAlgorithm;
use kmover_format::hashing::HashAlgorithm;
use kmover_repo::{CreateOptions, Repository};
use serde_json::Value;

/// What kmover wrote: (content ID, plaintext).
type Written = Vec<(String, Vec<u8>)>;

/// Creates a repository and writes large and small, compressible and random, prefixed and
/// unprefixed contents, over two flushes (so there are two index blobs and two sessions).
fn write_with_kmover(repo_dir: &Path, opts: CreateOptions) -> Written {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(repo_dir).unwrap();
        let mode = if opts.format_version == 1 {
            ShardingMode::Legacy33
        } else {
            ShardingMode::Default
        };
        let store: DynBlobStore = Arc::new(FilesystemStore::create(repo_dir, mode).await.unwrap());
        Repository::create(store.clone(), &opts, PASSWORD)
            .await
            .unwrap();
        let repo = Repository::open(store, PASSWORD, Default::default())
            .await
            .unwrap();
        let zstd = (opts.format_version >= 2).then(|| header_id_for_name("zstd-fastest").unwrap());
        let samples: Vec<(Vec<u8>, Option<u8>, Option<u32>)> = vec![
            (Vec::new(), None, None),
            (b"x".to_vec(), None, zstd),
            (random_bytes(1, 5 << 20), None, zstd),
            (text_bytes(2, 3 << 20), None, zstd),
            (text_bytes(3, 1000), None, None),
            (text_bytes(4, 20_000), Some(b'k'), zstd),
            (random_bytes(5, 4096), Some(b'x'), zstd),
            (test_manifest_content(), Some(b'm'), zstd),
        ];
        let mut written = Vec::new();
        for (i, (data, prefix, compression)) in samples.into_iter().enumerate() {
            let id = repo
                .contents()
                .write_content(&data, prefix, compression)
                .await
                .unwrap();
            written.push((id.to_string(), data));
            if i == 3 {
                repo.contents().flush().await.unwrap();
            }
        }
        repo.contents().flush().await.unwrap();
        written
    })
}

/// `m` contents are manifests to kopia: write a real one (an unknown type kopia ignores).
fn test_manifest_content() -> Vec<u8> {
    use kmover_format::snapshot::manifest_store::{
        ManifestEntry, encode_manifest_content, new_manifest_id,
    };
    let labels = [("type".to_string(), "kmover-interop-test".to_string())].into();
    let entry = ManifestEntry::new(
        new_manifest_id(&[7; 16]),
        labels,
        chrono::Utc::now(),
        text_json(),
    )
    .unwrap();
    encode_manifest_content(&[entry]).unwrap()
}

fn text_json() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"note": String::from_utf8(text_bytes(6, 700)).unwrap()}))
        .unwrap()
}

fn by_id(list: Vec<Value>) -> std::collections::BTreeMap<String, Value> {
    list.into_iter()
        .map(|v| (v["contentID"].as_str().unwrap().to_string(), v))
        .collect()
}

fn check_kopia_reads(
    version: KopiaVersion,
    test: &str,
    opts: CreateOptions,
    expect_hash: &str,
    expect_enc: &str,
) {
    let Some(kopia) = Kopia::find(version, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let format_version = opts.format_version;
    let written = write_with_kmover(&repo_dir, opts);

    kopia.connect_filesystem(&repo_dir);
    let status = kopia.repository_status_json();
    assert_eq!(status["contentFormat"]["hash"], expect_hash, "{status}");
    assert_eq!(
        status["contentFormat"]["encryption"], expect_enc,
        "{status}"
    );
    assert_eq!(
        status["contentFormat"]["version"],
        i64::from(format_version),
        "{status}"
    );

    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo_dir);
    let theirs = by_id(kopia.content_list_json());
    let ours = by_id(kmover.content_list_json());
    assert_eq!(
        theirs.len(),
        written.len(),
        "kopia lists every content kmover wrote"
    );
    assert_eq!(
        theirs,
        ours,
        "{}",
        common::json_diff(
            "kopia",
            &Value::from_iter(theirs.values().cloned()),
            "kmover",
            &Value::from_iter(ours.values().cloned())
        )
    );
    for (id, data) in &written {
        let info = &theirs[id];
        assert_eq!(
            info["originalLength"].as_u64().unwrap() as usize,
            data.len(),
            "{id}"
        );
        let pack = info["packFile"].as_str().unwrap();
        assert_eq!(
            pack.starts_with('q'),
            id.len() % 2 == 1,
            "prefixed contents live in q packs: {id} in {pack}"
        );
        assert_eq!(&kopia.content_show(id), data, "kopia content show {id}");
    }
    kopia.run(["content", "verify", "--full"]);
    // kopia's own writes go into the same repository and both tools still agree afterwards.
    // kmover does not yet write kopia's maintenance-owner manifest at create: claim ownership.
    kopia.run(["maintenance", "set", "--owner=me"]);
    kopia.run(["maintenance", "run", "--full", "--safety=none"]);
    // No snapshot references these raw contents, so kopia's GC marks them deleted, and with
    // `--safety=none` its deletion watermark may hide them entirely; what matters is that both tools
    // read kopia's rewritten index (and apply the watermark) identically.
    let after_kopia = by_id(kopia.content_list_json_with_deleted());
    let after_kmover = by_id(kmover.content_list_json_with_deleted());
    assert_eq!(
        after_kopia, after_kmover,
        "both tools read kopia's maintained index identically"
    );
}

fn fast(opts: CreateOptions) -> CreateOptions {
    CreateOptions {
        key_algorithm: kmover_format::kdf::KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..opts
    }
}

#[test]
fn kopia_reads_default_repository_written_by_kmover() {
    let opts = CreateOptions {
        key_algorithm: kmover_format::kdf::KeyDerivationAlgorithm::Scrypt65536_8_1,
        ..CreateOptions::default()
    };
    check_kopia_reads(
        KopiaVersion::V0_22,
        "kopia_reads_default_repository_written_by_kmover",
        opts,
        "BLAKE2B-256-128",
        "AES256-GCM-HMAC-SHA256",
    );
}

#[test]
fn kopia_reads_chacha_blake3_repository_written_by_kmover() {
    let opts = fast(CreateOptions {
        encryption: EncryptionAlgorithm::Chacha20Poly1305HmacSha256,
        hash: HashAlgorithm::parse("BLAKE3-256-128").unwrap(),
        ..CreateOptions::default()
    });
    check_kopia_reads(
        KopiaVersion::V0_22,
        "kopia_reads_chacha_blake3_repository_written_by_kmover",
        opts,
        "BLAKE3-256-128",
        "CHACHA20-POLY1305-HMAC-SHA256",
    );
}

#[test]
fn kopia_reads_format_v1_repository_written_by_kmover() {
    let opts = fast(CreateOptions {
        format_version: 1,
        hash: HashAlgorithm::parse("HMAC-SHA256-128").unwrap(),
        ..CreateOptions::default()
    });
    check_kopia_reads(
        KopiaVersion::V0_22,
        "kopia_reads_format_v1_repository_written_by_kmover",
        opts,
        "HMAC-SHA256-128",
        "AES256-GCM-HMAC-SHA256",
    );
}

#[test]
fn smoke_kopia_0_21_reads_kmover_repository() {
    check_kopia_reads(
        KopiaVersion::V0_21,
        "smoke_kopia_0_21_reads_kmover_repository",
        fast(CreateOptions::default()),
        "BLAKE2B-256-128",
        "AES256-GCM-HMAC-SHA256",
    );
}

#[test]
fn smoke_kopia_0_23_reads_kmover_repository() {
    check_kopia_reads(
        KopiaVersion::V0_23,
        "smoke_kopia_0_23_reads_kmover_repository",
        fast(CreateOptions::default()),
        "BLAKE2B-256-128",
        "AES256-GCM-HMAC-SHA256",
    );
}
