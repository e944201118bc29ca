//! Why kmover uses aws-lc-rs for AEAD and blake2b_simd's many-inputs API for hashing: each group
//! compares the chosen implementation with the alternative on 64 KiB and 4 MiB inputs.
//!
//! Run: `cargo bench --bench crypto_choices -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kmover_format::encryption::{ContentEncryptor, EncryptionAlgorithm};
use kmover_format::hashing::HashAlgorithm;

const SIZES: &[(&str, usize)] = &[("64KiB", 64 << 10), ("4MiB", 4 << 20)];
/// Inputs per hashing batch: enough to fill the SIMD lanes of hash_many.
const BATCH: usize = 8;
const KEY: [u8; 32] = [7; 32];
const NONCE: [u8; 12] = [3; 12];
const IV: [u8; 16] = [9; 16];

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + i / 251) as u8).collect()
}

fn aws_lc_seal(alg: &'static aws_lc_rs::aead::Algorithm, buf: &mut [u8]) -> aws_lc_rs::aead::Tag {
    let key = LessSafeKey::new(UnboundKey::new(alg, &KEY).unwrap());
    key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(NONCE), Aad::from(&IV), buf)
        .unwrap()
}

fn aead(c: &mut Criterion) {
    for &(name, len) in SIZES {
        let input = data(len);
        let mut buf = input.clone();

        let mut g = c.benchmark_group("aes256gcm_seal");
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("aws-lc-rs", name), |b| {
            b.iter(|| aws_lc_seal(&AES_256_GCM, &mut buf))
        });
        g.bench_function(BenchmarkId::new("rustcrypto-aes-gcm", name), |b| {
            b.iter(|| {
                let cipher = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
                cipher
                    .encrypt_in_place_detached((&NONCE).into(), &IV, &mut buf)
                    .unwrap()
            })
        });
        let enc = ContentEncryptor::new(EncryptionAlgorithm::Aes256GcmHmacSha256, &KEY).unwrap();
        let mut out = Vec::with_capacity(len + 28);
        g.bench_function(BenchmarkId::new("kmover-ContentEncryptor", name), |b| {
            b.iter(|| {
                out.clear();
                enc.encrypt_into(black_box(&input), &IV, NONCE, &mut out);
            })
        });
        g.finish();

        let mut g = c.benchmark_group("chacha20poly1305_seal");
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("aws-lc-rs", name), |b| {
            b.iter(|| aws_lc_seal(&CHACHA20_POLY1305, &mut buf))
        });
        g.bench_function(BenchmarkId::new("rustcrypto-chacha20poly1305", name), |b| {
            b.iter(|| {
                let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&KEY).unwrap();
                cipher
                    .encrypt_in_place_detached((&NONCE).into(), &IV, &mut buf)
                    .unwrap()
            })
        });
        g.finish();
    }
}

fn hashing(c: &mut Criterion) {
    for &(name, len) in SIZES {
        let inputs: Vec<Vec<u8>> = (0..BATCH).map(|i| data(len + i)).collect();
        let slices: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let bytes: usize = inputs.iter().map(Vec::len).sum();

        let mut g = c.benchmark_group(format!("hash_{BATCH}_inputs"));
        g.throughput(Throughput::Bytes(bytes as u64));
        let blake2b = HashAlgorithm::Blake2b256_128.hasher(&KEY).unwrap();
        g.bench_function(BenchmarkId::new("blake2b-single", name), |b| {
            b.iter(|| slices.iter().map(|s| blake2b.hash(s)).collect::<Vec<_>>())
        });
        g.bench_function(BenchmarkId::new("blake2b-hash_many", name), |b| {
            b.iter(|| blake2b.hash_many(&slices))
        });
        let blake3 = HashAlgorithm::Blake3_256_128.hasher(&KEY).unwrap();
        g.bench_function(BenchmarkId::new("blake3", name), |b| {
            b.iter(|| slices.iter().map(|s| blake3.hash(s)).collect::<Vec<_>>())
        });
        g.finish();
    }
}

criterion_group!(benches, aead, hashing);
criterion_main!(benches);
