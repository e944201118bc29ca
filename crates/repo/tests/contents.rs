//! Round trips through the content manager on the in-memory store: every format version, both
//! encryptions, compression, dedup, read-your-writes, reopening, and damage detection.

use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::compression::header_id_for_name;
use kmover_format::encryption::EncryptionAlgorithm;
use kmover_format::hashing::HashAlgorithm;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_repo::{CreateOptions, RepoError, Repository};

const PASSWORD: &str = "correct horse";

fn fast_options() -> CreateOptions {
    // pbkdf2 is the cheaper of kopia's two password KDFs; tests open repositories many times.
    CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    }
}

async fn new_repo(opts: &CreateOptions) -> (DynBlobStore, Repository) {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    Repository::create(store.clone(), opts, PASSWORD)
        .await
        .unwrap();
    let repo = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    (store, repo)
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn samples() -> Vec<(Vec<u8>, Option<u8>)> {
    vec![
        (Vec::new(), None),
        (b"hello".to_vec(), None),
        (pseudo_random(3 << 20, 1), None),
        ("compressible text ".repeat(50_000).into_bytes(), None),
        (b"{\"dir\":true}".repeat(100), Some(b'k')),
        (pseudo_random(1000, 2), Some(b'x')),
        (b"manifest".to_vec(), Some(b'm')),
    ]
}

#[tokio::test]
async fn write_flush_reopen_read_every_setting() {
    let zstd = header_id_for_name("zstd-fastest").unwrap();
    for version in [1u8, 2, 3] {
        for encryption in [
            EncryptionAlgorithm::Aes256GcmHmacSha256,
            EncryptionAlgorithm::Chacha20Poly1305HmacSha256,
        ] {
            for hash in [
                HashAlgorithm::default(),
                HashAlgorithm::parse("BLAKE3-256").unwrap(),
            ] {
                let opts = CreateOptions {
                    format_version: version,
                    encryption,
                    hash,
                    ..fast_options()
                };
                let (store, repo) = new_repo(&opts).await;
                let compression = (version >= 2).then_some(zstd);
                let mut ids = Vec::new();
                for (data, prefix) in samples() {
                    let id = repo
                        .contents()
                        .write_content(&data, prefix, compression)
                        .await
                        .unwrap();
                    assert_eq!(
                        repo.contents().read_content(&id).await.unwrap(),
                        data,
                        "read before flush"
                    );
                    ids.push((id, data));
                }
                repo.contents().flush().await.unwrap();
                for (id, data) in &ids {
                    assert_eq!(
                        &repo.contents().read_content(id).await.unwrap(),
                        data,
                        "read after flush"
                    );
                }
                let reopened = Repository::open(store.clone(), PASSWORD, Default::default())
                    .await
                    .unwrap();
                let listed = reopened.contents().list_contents(false).await;
                assert_eq!(
                    listed.len(),
                    ids.len(),
                    "v{version} {encryption:?} {hash:?}"
                );
                for (id, data) in &ids {
                    assert_eq!(&reopened.contents().read_content(id).await.unwrap(), data);
                    let info = reopened.contents().content_info(id).await.unwrap();
                    assert_eq!(info.pack_blob_id.starts_with('q'), id.has_prefix());
                    assert_eq!(info.original_length as usize, data.len());
                    reopened
                        .contents()
                        .verify_content(&info, true)
                        .await
                        .unwrap();
                }
                let sessions = store.list("s").await.unwrap();
                assert!(
                    sessions.is_empty(),
                    "session markers are deleted on flush: {sessions:?}"
                );
                let index_prefix = if version == 1 { "n" } else { "xn0_" };
                assert!(!store.list(index_prefix).await.unwrap().is_empty());
            }
        }
    }
}

#[tokio::test]
async fn identical_content_is_stored_once() {
    let (store, repo) = new_repo(&fast_options()).await;
    let data = pseudo_random(100_000, 7);
    let a = repo
        .contents()
        .write_content(&data, None, None)
        .await
        .unwrap();
    let b = repo
        .contents()
        .write_content(&data, None, None)
        .await
        .unwrap();
    assert_eq!(a, b);
    repo.contents().flush().await.unwrap();
    let c = repo
        .contents()
        .write_content(&data, None, None)
        .await
        .unwrap();
    assert_eq!(a, c);
    repo.contents().flush().await.unwrap();
    assert_eq!(store.list("p").await.unwrap().len(), 1, "one pack only");
}

#[tokio::test]
async fn compression_is_skipped_when_it_does_not_help() {
    let (_, repo) = new_repo(&fast_options()).await;
    let zstd = header_id_for_name("zstd-fastest").unwrap();
    let random = pseudo_random(50_000, 3);
    let text = "abc ".repeat(20_000).into_bytes();
    let r = repo
        .contents()
        .write_content(&random, None, Some(zstd))
        .await
        .unwrap();
    let t = repo
        .contents()
        .write_content(&text, None, Some(zstd))
        .await
        .unwrap();
    let ri = repo.contents().content_info(&r).await.unwrap();
    let ti = repo.contents().content_info(&t).await.unwrap();
    assert_eq!(ri.compression_header_id, 0);
    assert_eq!(ti.compression_header_id, zstd);
    assert!((ti.packed_length as usize) < text.len() / 10);
}

#[tokio::test]
async fn compression_of_data_contents_is_refused_on_index_v1() {
    let (_, repo) = new_repo(&CreateOptions {
        format_version: 1,
        ..fast_options()
    })
    .await;
    let zstd = header_id_for_name("zstd-fastest").unwrap();
    assert!(
        repo.contents()
            .write_content(b"data", None, Some(zstd))
            .await
            .is_err()
    );
    let id = repo
        .contents()
        .write_content(b"meta", Some(b'k'), Some(zstd))
        .await
        .unwrap();
    assert_eq!(
        repo.contents()
            .content_info(&id)
            .await
            .unwrap()
            .compression_header_id,
        0
    );
}

#[tokio::test]
async fn large_writes_fill_several_packs() {
    let (store, repo) = new_repo(&CreateOptions {
        max_pack_size: 10 << 20,
        ..fast_options()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            repo.contents()
                .write_content(&pseudo_random(2 << 20, 100 + i), None, None)
                .await
                .unwrap(),
        );
    }
    repo.contents().flush().await.unwrap();
    assert!(store.list("p").await.unwrap().len() >= 2);
    let reopened = Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            reopened.contents().read_content(id).await.unwrap(),
            pseudo_random(2 << 20, 100 + i as u64)
        );
    }
}

#[tokio::test]
async fn wrong_password_is_reported_as_such() {
    let (store, _) = new_repo(&fast_options()).await;
    let err = Repository::open(store, "wrong", Default::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, RepoError::InvalidPassword), "{err}");
    assert_eq!(err.to_string(), "invalid repository password");
}

#[tokio::test]
async fn flipped_pack_byte_names_content_and_pack() {
    let (store, repo) = new_repo(&fast_options()).await;
    let id = repo
        .contents()
        .write_content(&pseudo_random(10_000, 9), None, None)
        .await
        .unwrap();
    repo.contents().flush().await.unwrap();
    let info = repo.contents().content_info(&id).await.unwrap();
    let mut pack = store.get(&info.pack_blob_id).await.unwrap();
    pack[info.pack_offset as usize + 100] ^= 0x01;
    store.put(&info.pack_blob_id, pack).await.unwrap();
    let reopened = Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap();
    let err = reopened
        .contents()
        .read_content(&id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&id.to_string()) && err.contains(&*info.pack_blob_id),
        "{err}"
    );
}

#[tokio::test]
async fn flipped_index_byte_names_the_index_blob() {
    let (store, repo) = new_repo(&fast_options()).await;
    repo.contents()
        .write_content(b"some data", None, None)
        .await
        .unwrap();
    repo.contents().flush().await.unwrap();
    let index = store.list("xn").await.unwrap().remove(0);
    let mut bytes = store.get(&index.id).await.unwrap();
    bytes[20] ^= 0x80;
    store.put(&index.id, bytes).await.unwrap();
    let err = Repository::open(store, PASSWORD, Default::default())
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains(&index.id), "{err}");
}

#[tokio::test]
async fn flipped_format_blob_byte_is_an_error_not_a_panic() {
    let (store, _) = new_repo(&fast_options()).await;
    let original = store.get("kopia.repository").await.unwrap();
    for pos in (0..original.len()).step_by(37) {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x04;
        store.put("kopia.repository", bytes).await.unwrap();
        if let Ok(repo) = Repository::open(store.clone(), PASSWORD, Default::default()).await {
            // A flip in an informational field (tool, buildInfo) is harmless; the config must be intact.
            assert_eq!(repo.crypto().config.hash, "BLAKE2B-256-128");
        }
    }
}

#[tokio::test]
async fn writes_are_refused_when_the_repository_requires_blob_retention() {
    use kmover_format::format_blob::{BlobCfg, encrypt_blobcfg};
    let (store, repo) = new_repo(&fast_options()).await;
    let crypto = repo.crypto();
    let cfg = BlobCfg {
        retention_mode: "COMPLIANCE".into(),
        retention_period_ns: 86_400_000_000_000,
    };
    let bytes = encrypt_blobcfg(
        &cfg,
        &crypto.format_key,
        &crypto.format_blob.unique_id,
        [9; 12],
    );
    store.put("kopia.blobcfg", bytes).await.unwrap();
    let locked = Repository::open(store.clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    let err = locked
        .contents()
        .write_content(b"data", None, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("retention"), "{err}");
    assert!(
        store.list("p").await.unwrap().is_empty() && store.list("s").await.unwrap().is_empty(),
        "nothing written"
    );
}

/// Contents written together (hashed in SIMD lanes at once) get the IDs written one by one
/// would, dedup against each other and earlier writes, and read back.
#[tokio::test]
async fn contents_written_together_match_one_by_one_writes() {
    let (_store, repo) = new_repo(&fast_options()).await;
    let contents = repo.contents();
    let zstd = Some(header_id_for_name("zstd-fastest").unwrap());
    let earlier = pseudo_random(700, 3);
    contents.write_content(&earlier, None, None).await.unwrap();
    let text = "small file ".repeat(300).into_bytes();
    let items: Vec<Vec<u8>> = (0..21)
        .map(|i| match i % 7 {
            0 => earlier.clone(),
            1 => text.clone(),
            2 => Vec::new(),
            _ => pseudo_random(100 * i, 40 + i as u64),
        })
        .collect();
    let batch: Vec<(&[u8], Option<u32>)> = items
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_slice(), if i % 2 == 0 { zstd } else { None }))
        .collect();
    let ids = contents.write_contents(&batch, None).await.unwrap();
    assert_eq!(ids.len(), items.len());
    for (id, data) in ids.iter().zip(&items) {
        assert_eq!(*id, contents.content_id_for(data, None).unwrap());
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    contents.flush().await.unwrap();
    let reopened = Repository::open(repo.store().clone(), PASSWORD, Default::default())
        .await
        .unwrap();
    let stored = reopened.contents().list_contents(false).await;
    assert_eq!(stored.len(), distinct.len());
    for (id, data) in ids.iter().zip(&items) {
        assert_eq!(&reopened.contents().read_content(id).await.unwrap(), data);
    }
}
