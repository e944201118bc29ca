//! The object writer's two ways in (copied slices and lent buffers filled in place) cut the same
//! chunks, and what they store reads back; large incompressible chunks are stored raw.

use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::compression::header_id_for_name;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_repo::object::{ObjectWriter, ObjectWriterOptions, open_object, read_object};
use kmover_repo::{CreateOptions, Repository};

const PASSWORD: &str = "correct horse";

async fn new_repo() -> Repository {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..CreateOptions::default()
    };
    Repository::create(store.clone(), &opts, PASSWORD)
        .await
        .unwrap();
    Repository::open(store, PASSWORD, Default::default())
        .await
        .unwrap()
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

fn options(compression: Option<u32>) -> ObjectWriterOptions {
    ObjectWriterOptions {
        compression,
        parallelism: 2,
        ..Default::default()
    }
}

/// Feeds `data` through lent buffers, `fill` bytes at a time.
async fn write_by_filling(repo: &Repository, data: &[u8], fill: usize) -> ObjectWriter {
    let mut writer = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
    for piece in data.chunks(fill) {
        let mut buffer = writer.buffer_to_fill(piece.len()).unwrap();
        buffer.extend_from_slice(piece);
        writer.filled(buffer).await.unwrap();
    }
    writer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_lent_buffers_cuts_the_same_chunks_as_writing() {
    let repo = new_repo().await;
    // Several chunks of the default 4 MiB splitter, ending mid-chunk.
    let data = pseudo_random(21 << 20, 7);
    let mut copied = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
    for piece in data.chunks(1 << 20) {
        copied.write(piece).await.unwrap();
    }
    let expected = copied.finish().await.unwrap();
    assert!(expected.indirection() > 0, "data this large spans chunks");

    for fill in [100_003, 512 << 10, 3 << 20] {
        let writer = write_by_filling(&repo, &data, fill).await;
        assert_eq!(writer.position(), data.len() as u64);
        assert_eq!(writer.finish().await.unwrap(), expected, "fill {fill}");
    }
    repo.contents().flush().await.unwrap();
    assert_eq!(read_object(repo.contents(), &expected).await.unwrap(), data);
    let layout = open_object(repo.contents(), &expected).await.unwrap();
    assert_eq!(layout.length(), data.len() as u64);
}

#[tokio::test]
async fn small_and_empty_objects_through_lent_buffers() {
    let repo = new_repo().await;
    for data in [Vec::new(), b"x".to_vec(), pseudo_random(70_000, 3)] {
        let mut writer = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
        let buffer = writer.buffer_to_fill(data.len() + 1).unwrap();
        assert!(buffer.capacity() > data.len());
        assert!(
            buffer.capacity() < 1 << 20,
            "a small object gets a small buffer"
        );
        let mut buffer = buffer;
        buffer.extend_from_slice(&data);
        writer.filled(buffer).await.unwrap();
        let id = writer.finish().await.unwrap();
        assert_eq!(read_object(repo.contents(), &id).await.unwrap(), data);
    }
}

#[tokio::test]
async fn a_lent_buffer_must_come_back_before_anything_else() {
    let repo = new_repo().await;
    let mut writer = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
    writer.write(b"abc").await.unwrap();
    let buffer = writer.buffer_to_fill(10).unwrap();
    assert_eq!(buffer, b"abc");
    assert!(writer.write(b"more").await.is_err());
    assert!(writer.buffer_to_fill(1).is_err());
    assert!(
        writer.filled(Vec::new()).await.is_err(),
        "shorter than lent"
    );
    let mut other = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
    assert!(other.filled(b"abc".to_vec()).await.is_err(), "never lent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_incompressible_chunks_are_stored_raw_and_text_compressed() {
    let repo = new_repo().await;
    let zstd = header_id_for_name("zstd-fastest").unwrap();
    // Below the splitter's 2 MiB minimum: one chunk each.
    let random = pseudo_random(3 << 19, 11);
    let text = "kopia pack index ".repeat(90_000).into_bytes();
    for (data, compressed) in [(&random, false), (&text, true)] {
        let mut writer = ObjectWriter::new(repo.contents().clone(), options(Some(zstd))).unwrap();
        writer.write(data).await.unwrap();
        let id = writer.finish().await.unwrap();
        let cid = id.content_id().expect("one chunk: a direct object");
        let info = repo.contents().content_info(&cid).await.unwrap();
        assert_eq!(info.compression_header_id != 0, compressed);
        assert_eq!(read_object(repo.contents(), &id).await.unwrap(), *data);
    }
    repo.contents().flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_buffers_are_reused_once_their_chunks_are_written() {
    let repo = new_repo().await;
    let data = pseudo_random(48 << 20, 11);
    let mut copied = ObjectWriter::new(repo.contents().clone(), options(None)).unwrap();
    copied.write(&data).await.unwrap();
    let filled = write_by_filling(&repo, &data, 1 << 20).await;
    for writer in [copied, filled] {
        let chunks = writer.finished_chunks().len();
        let allocated = writer.chunk_buffers_allocated();
        assert!(chunks >= 6, "{chunks} chunks: too few to tell");
        // At most one per chunk in flight (parallelism 2) and the one being filled.
        assert!(
            allocated <= 3,
            "{allocated} buffers allocated for {chunks} chunks"
        );
        let id = writer.finish().await.unwrap();
        assert_eq!(read_object(repo.contents(), &id).await.unwrap(), data);
    }
}
