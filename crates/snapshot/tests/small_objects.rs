//! The backup's small-object path writes exactly the object the object writer would: for every
//! splitter, with and without compression, on repositories with v1 and v2 indexes.

use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::compression::header_id_for_name;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::object::DIRECTORY_CONTENT_PREFIX;
use kmover_format::splitter::ALL_SPLITTERS;
use kmover_repo::object::{ObjectWriterOptions, read_object, write_object};
use kmover_repo::{CreateOptions, Repository};
use kmover_snapshot::dir_scan::{SMALL_OBJECT_LIMIT, write_small_object};

async fn repo(format_version: u8) -> Repository {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        format_version,
        ..Default::default()
    };
    Repository::create(store.clone(), &opts, "pw")
        .await
        .unwrap();
    Repository::open(store, "pw", Default::default())
        .await
        .unwrap()
}

/// Compressible text with a pseudo-random tail, so both compressed and raw contents occur.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if i < len / 2 {
                b"kopia small object "[i % 19]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

#[tokio::test]
async fn small_objects_match_the_object_writer() {
    let zstd = Some(header_id_for_name("zstd-fastest").unwrap());
    for format_version in [1, 3] {
        let repo = repo(format_version).await;
        let contents = repo.contents();
        for (n, splitter) in ALL_SPLITTERS.iter().enumerate() {
            for len in [0, 1, 100, 4096, SMALL_OBJECT_LIMIT - 1] {
                let data = sample(len, n as u64 * 1000 + len as u64);
                for (prefix, compression) in [
                    (None, None),
                    (None, zstd),
                    (Some(DIRECTORY_CONTENT_PREFIX), zstd),
                ] {
                    let opts = ObjectWriterOptions {
                        prefix,
                        compression,
                        metadata_compression: zstd,
                        splitter: Some(splitter.to_string()),
                        parallelism: 2,
                    };
                    let expected = write_object(contents, &data, opts).await.unwrap();
                    let got = write_small_object(contents, &data, prefix, compression)
                        .await
                        .unwrap();
                    assert_eq!(
                        got, expected,
                        "format {format_version}, {splitter}, {len} bytes, prefix {prefix:?}, \
                         compression {compression:?}"
                    );
                    assert_eq!(read_object(contents, &got).await.unwrap(), data);
                }
            }
        }
    }
}
