//! Splitter throughput on 64 MiB of pseudo-random data fed in 1 MiB pieces, like a file reader.
//! `cargo bench -p kmover-format --bench splitter`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmover_format::splitter::new_splitter;

const DATA_LEN: usize = 64 << 20;
const PIECE_LEN: usize = 1 << 20;

/// splitmix64 output bytes (little-endian); incompressible and reproducible.
fn random_data(mut state: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn bench_splitters(c: &mut Criterion) {
    let data = random_data(42, DATA_LEN);
    let mut group = c.benchmark_group("splitter");
    group.throughput(Throughput::Bytes(DATA_LEN as u64));
    group.sample_size(10);
    for name in [
        "DYNAMIC-4M-BUZHASH",
        "DYNAMIC-1M-BUZHASH",
        "DYNAMIC-128K-BUZHASH",
        "DYNAMIC-4M-RABINKARP",
        "FIXED-4M",
    ] {
        let mut splitter = new_splitter(name).expect("registered splitter");
        group.bench_function(name, |b| {
            b.iter(|| {
                splitter.reset();
                let mut chunks = 0usize;
                for piece in data.chunks(PIECE_LEN) {
                    let mut rest = piece;
                    while let Some(n) = splitter.next_boundary(rest) {
                        chunks += 1;
                        rest = &rest[n..];
                    }
                }
                black_box(chunks)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_splitters);
criterion_main!(benches);
