//! Throughput of each stage of the backup and restore pipeline, with kopia's default algorithms
//! (DYNAMIC-4M-BUZHASH, BLAKE2B-256-128, AES256-GCM-HMAC-SHA256) and zstd-fastest:
//! splitter, hash, hash_many, encrypt/decrypt, compress/decompress, pack build (through the content
//! manager into an in-memory store), index build and lookup over a large index, and directory
//! listing encode/decode.
//!
//! Run all: `cargo bench --bench stages`; one stage: `cargo bench --bench stages -- index_lookup`.
//! Each benchmark takes a few seconds (10 samples, 2 s of measurement; flat sampling where one
//! iteration is long), about 1.5 minutes in all on an idle machine.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::ContentId;
use kmover_format::compression;
use kmover_format::encryption::{ContentEncryptor, EncryptionAlgorithm};
use kmover_format::hashing::HashAlgorithm;
use kmover_format::index::{self, Index, IndexBuilder, IndexEntry};
use kmover_format::object::ObjectId;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::{
    DirEntry, DirManifest, DirManifestBuilder, EntryType, decode_dir_manifest, encode_dir_manifest,
};
use kmover_format::splitter::new_splitter;
use kmover_repo::committed_index::{CommittedIndex, LoadedIndex};
use kmover_repo::{CreateOptions, Repository};

const KEY: [u8; 32] = [7; 32];
/// Content sizes: a typical chunk of DYNAMIC-4M-BUZHASH, and a small file.
const SIZES: &[(&str, usize)] = &[("4MiB", 4 << 20), ("16KiB", 16 << 10)];
/// Entries of the large index the lookups run against (about what 4 TiB of 4 MiB chunks need).
const LARGE_INDEX_ENTRIES: usize = 1_000_000;
/// Lookups per iteration, so one iteration is long enough to time reliably.
const LOOKUPS: usize = 10_000;
/// Entries of the large directory listing.
const LARGE_DIR_ENTRIES: usize = 100_000;

fn configure() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// splitmix64 bytes: incompressible and reproducible.
fn random_data(mut state: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Text-like data that zstd shrinks a few times over.
fn text_data(len: usize) -> Vec<u8> {
    let words = [
        "backup ",
        "restore ",
        "snapshot ",
        "content ",
        "index ",
        "pack ",
        "blob ",
        "policy ",
        "kopia ",
        "kmover ",
        "directory ",
        "object ",
        "\n",
    ];
    let mut state = 11;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let w = words[(splitmix(&mut state) % words.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
    }
    out.truncate(len);
    out
}

fn splitter(c: &mut Criterion) {
    const LEN: usize = 32 << 20;
    const PIECE: usize = 1 << 20;
    let data = random_data(1, LEN);
    let mut g = c.benchmark_group("splitter");
    g.throughput(Throughput::Bytes(LEN as u64));
    let mut s = new_splitter("DYNAMIC-4M-BUZHASH").expect("kopia's default splitter");
    g.bench_function("DYNAMIC-4M-BUZHASH/32MiB", |b| {
        b.iter(|| {
            s.reset();
            let mut chunks = 0usize;
            for piece in data.chunks(PIECE) {
                let mut rest = piece;
                while let Some(n) = s.next_boundary(rest) {
                    chunks += 1;
                    rest = &rest[n..];
                }
            }
            black_box(chunks)
        })
    });
    g.finish();
}

fn hash(c: &mut Criterion) {
    let hasher = HashAlgorithm::Blake2b256_128.hasher(&KEY).expect("hasher");
    let mut g = c.benchmark_group("hash");
    for &(name, len) in SIZES {
        let data = random_data(2, len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("BLAKE2B-256-128", name), |b| {
            b.iter(|| hasher.hash(black_box(&data)))
        });
    }
    g.finish();

    // Many small contents at once, as small files and directory listings arrive.
    const BATCH: usize = 64;
    let inputs: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| random_data(3 + i as u64, 16 << 10))
        .collect();
    let slices: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("hash_many");
    g.throughput(Throughput::Bytes((BATCH * (16 << 10)) as u64));
    g.bench_function("BLAKE2B-256-128/64x16KiB", |b| {
        b.iter(|| hasher.hash_many(black_box(&slices)))
    });
    g.bench_function("BLAKE2B-256-128/64x16KiB-one-by-one", |b| {
        b.iter(|| slices.iter().map(|s| hasher.hash(s)).collect::<Vec<_>>())
    });
    g.finish();
}

fn encrypt(c: &mut Criterion) {
    let enc = ContentEncryptor::new(EncryptionAlgorithm::Aes256GcmHmacSha256, &KEY)
        .expect("kopia's default encryption");
    let iv = [9u8; 16];
    let mut g = c.benchmark_group("encrypt");
    for &(name, len) in SIZES {
        let data = random_data(4, len);
        let mut out = Vec::with_capacity(len + 64);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("AES256-GCM-HMAC-SHA256/seal", name), |b| {
            b.iter(|| {
                out.clear();
                enc.encrypt_into(black_box(&data), &iv, [3; 12], &mut out);
            })
        });
        let sealed = enc.encrypt(&data, &iv, [3; 12]);
        let mut plain = Vec::with_capacity(len);
        g.bench_function(BenchmarkId::new("AES256-GCM-HMAC-SHA256/open", name), |b| {
            b.iter(|| {
                plain.clear();
                enc.decrypt_into(black_box(&sealed), &iv, &mut plain)
                    .expect("authentic")
            })
        });
    }
    g.finish();
}

fn compress(c: &mut Criterion) {
    let zstd_fastest = compression::header_id_for_name("zstd-fastest").expect("known");
    let mut g = c.benchmark_group("compress");
    let len = 4 << 20;
    g.throughput(Throughput::Bytes(len as u64));
    for (name, data) in [("text", text_data(len)), ("random", random_data(5, len))] {
        g.bench_function(BenchmarkId::new("zstd-fastest/compress", name), |b| {
            b.iter(|| compression::compress(zstd_fastest, black_box(&data)).expect("compresses"))
        });
        // Random data does not shrink, so kopia stores it raw: nothing to decompress.
        if let Some(packed) = compression::compress(zstd_fastest, &data).expect("compresses") {
            g.bench_function(BenchmarkId::new("zstd-fastest/decompress", name), |b| {
                b.iter(|| {
                    compression::decompress(zstd_fastest, black_box(&packed), len)
                        .expect("decompresses")
                })
            });
        }
    }
    g.finish();
}

/// Writes unique contents through the content manager (hash, encrypt, append to the pack, build
/// and encrypt the pack's local index, upload to memory) and flushes; the packs are dropped from
/// the store between iterations, outside the timing.
fn pack_build(c: &mut Criterion) {
    const TOTAL: usize = 32 << 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let repo = runtime.block_on(async {
        Repository::create(store.clone(), &CreateOptions::default(), "bench")
            .await
            .expect("create");
        Repository::open(store.clone(), "bench", Default::default())
            .await
            .expect("open")
    });
    let mut g = c.benchmark_group("pack_build");
    // Iterations take 0.1 s or more: equal-sized samples keep the run to a few seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    let mut round = 0u64;
    for &(name, len) in SIZES {
        let mut data = random_data(6, len);
        g.bench_function(BenchmarkId::new("write_content+flush/32MiB", name), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    runtime.block_on(async {
                        for _ in 0..TOTAL / len {
                            // A fresh prefix per content, so nothing deduplicates.
                            round += 1;
                            data[..8].copy_from_slice(&round.to_le_bytes());
                            repo.contents()
                                .write_content(&data, None, None)
                                .await
                                .expect("write");
                        }
                        repo.contents().flush().await.expect("flush");
                    });
                    elapsed += start.elapsed();
                    runtime.block_on(drop_packs(&store));
                }
                elapsed
            })
        });
    }
    g.finish();
}

async fn drop_packs(store: &DynBlobStore) {
    for blob in store.list("p").await.expect("list") {
        store.delete(&blob.id).await.expect("delete");
    }
}

fn entry(i: u64, state: &mut u64, packs: &[Arc<str>]) -> IndexEntry {
    let mut hash = [0u8; 16];
    hash[..8].copy_from_slice(&splitmix(state).to_le_bytes());
    hash[8..].copy_from_slice(&splitmix(state).to_le_bytes());
    IndexEntry {
        content_id: ContentId::from_hash(None, &hash).expect("16-byte hash"),
        timestamp_seconds: 1_700_000_000 + (i % 1000) as i64,
        deleted: false,
        pack_blob_id: packs[(i % packs.len() as u64) as usize].clone(),
        pack_offset: (i % 5000) as u32 * 4096,
        packed_length: 4096,
        original_length: 4000,
        compression_header_id: 0x1101,
        format_version: 2,
        encryption_key_id: 0,
    }
}

/// Index entries with random 16-byte IDs spread over 1 pack per 1000 entries.
fn index_entries(count: usize, seed: u64) -> Vec<IndexEntry> {
    let packs: Vec<Arc<str>> = (0..count.div_ceil(1000))
        .map(|i| format!("p{i:032x}-s0123456789abcdef-c1").into())
        .collect();
    let mut state = seed;
    (0..count as u64)
        .map(|i| entry(i, &mut state, &packs))
        .collect()
}

fn index_build(c: &mut Criterion) {
    const ENTRIES: usize = 100_000;
    let entries = index_entries(ENTRIES, 7);
    let mut g = c.benchmark_group("index_build");
    // Iterations take 0.1 s or more: equal-sized samples keep the run to a few seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(ENTRIES as u64));
    g.bench_function("v2/100k-entries", |b| {
        b.iter(|| {
            let mut builder = IndexBuilder::new();
            for e in &entries {
                builder.add(e.clone());
            }
            builder.build_v2().expect("builds")
        })
    });
    g.finish();
}

fn index_lookup(c: &mut Criterion) {
    let entries = index_entries(LARGE_INDEX_ENTRIES, 8);
    let mut builder = IndexBuilder::new();
    for e in &entries {
        builder.add(e.clone());
    }
    let large = Index::parse(builder.build_v2().expect("builds"), 0).expect("parses");
    let hits: Vec<ContentId> = entries
        .iter()
        .step_by(LARGE_INDEX_ENTRIES / LOOKUPS)
        .map(|e| e.content_id)
        .collect();
    let misses: Vec<ContentId> = index_entries(LOOKUPS, 9)
        .into_iter()
        .map(|e| e.content_id)
        .collect();
    // The same entries as 16 smaller indexes, as after many backups before compaction.
    let shards: Vec<Index> = entries
        .chunks(LARGE_INDEX_ENTRIES / 16)
        .map(|chunk| {
            let mut b = IndexBuilder::new();
            for e in chunk {
                b.add(e.clone());
            }
            Index::parse(b.build_v2().expect("builds"), 0).expect("parses")
        })
        .collect();

    let mut g = c.benchmark_group("index_lookup");
    // Iterations take 0.1 s or more: equal-sized samples keep the run to a few seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("v2-1M-entries/hit", |b| {
        b.iter(|| hits.iter().filter_map(|id| large.lookup(id)).count())
    });
    g.bench_function("v2-1M-entries/miss", |b| {
        b.iter(|| misses.iter().filter_map(|id| large.lookup(id)).count())
    });
    g.bench_function("merged-16x62.5k-entries/hit", |b| {
        b.iter(|| {
            hits.iter()
                .filter_map(|id| index::merge::lookup(&shards, id))
                .count()
        })
    });
    g.bench_function("merged-16x62.5k-entries/miss", |b| {
        b.iter(|| {
            misses
                .iter()
                .filter_map(|id| index::merge::lookup(&shards, id))
                .count()
        })
    });
    // The repository's committed index over the same 16 blobs: merged once into one table.
    let committed = CommittedIndex::from_indexes(
        shards
            .iter()
            .map(|s| LoadedIndex {
                blob_id: None,
                index: Index::parse(s.as_bytes().to_vec(), 0).expect("parses"),
            })
            .collect(),
        None,
    )
    .expect("merges");
    eprintln!(
        "committed index: {} entries, {:.1} bytes per entry",
        committed.total_entries(),
        committed.memory_bytes() as f64 / committed.total_entries() as f64
    );
    g.bench_function("committed-16x62.5k-entries/hit", |b| {
        b.iter(|| {
            hits.iter()
                .filter_map(|id| committed.lookup_including_deleted(id))
                .count()
        })
    });
    g.bench_function("committed-16x62.5k-entries/miss", |b| {
        b.iter(|| {
            misses
                .iter()
                .filter_map(|id| committed.lookup_including_deleted(id))
                .count()
        })
    });
    g.finish();
}

fn large_directory() -> DirManifest {
    let mut state = 10;
    let mut builder = DirManifestBuilder::new();
    for i in 0..LARGE_DIR_ENTRIES {
        let hash = random_data(splitmix(&mut state), 16);
        let id = ContentId::from_hash(None, &hash).expect("16-byte hash");
        builder.add_entry(DirEntry {
            name: format!("file-{i:07}.dat").into_bytes(),
            entry_type: EntryType::File,
            mode: 0o644,
            size: (splitmix(&mut state) % (1 << 20)) as i64,
            mtime: UtcTimestamp::from_unix(
                1_700_000_000 + (i as i64),
                (splitmix(&mut state) % 1_000_000_000) as u32,
            ),
            uid: 1000,
            gid: 1000,
            object_id: ObjectId::direct(id),
            summary: None,
        });
    }
    // A few subdirectories, so the listing has both kinds of entries.
    for i in 0..10 {
        let id = ContentId::from_hash(Some(b'k'), &random_data(i, 16)).expect("prefixed");
        builder.add_entry(DirEntry {
            name: format!("sub-{i}").into_bytes(),
            entry_type: EntryType::Directory,
            mode: 0o755,
            mtime: UtcTimestamp::from_unix(1_700_000_000, 0),
            object_id: ObjectId::direct(id),
            ..Default::default()
        });
    }
    builder.build(UtcTimestamp::from_unix(1_700_000_000, 0), "")
}

fn dir_encode(c: &mut Criterion) {
    let dir = large_directory();
    let encoded = encode_dir_manifest(&dir);
    let mut g = c.benchmark_group("dir_encode");
    // Iterations take 0.1 s or more: equal-sized samples keep the run to a few seconds.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(dir.entries.len() as u64));
    g.bench_function("encode/100k-entries", |b| {
        b.iter(|| encode_dir_manifest(black_box(&dir)))
    });
    g.bench_function("decode/100k-entries", |b| {
        b.iter(|| decode_dir_manifest(black_box(&encoded)).expect("decodes"))
    });
    g.finish();
}

criterion_group! {
    name = stages;
    config = configure();
    targets = splitter, hash, encrypt, compress, pack_build, index_build, index_lookup, dir_encode
}
criterion_main!(stages);
