//! Decodes payloads written by kopia v0.22.3's own compressors (see tests/data/compression/README.md).

use std::collections::HashMap;
use std::path::PathBuf;

use kmover_format::compression;
use sha2::{Digest, Sha256};

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

const WORDS: [&str; 32] = [
    "kopia",
    "backup",
    "repository",
    "snapshot",
    "content",
    "index",
    "pack",
    "blob",
    "epoch",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "compression",
    "zstd",
    "s2",
    "gzip",
    "deflate",
    "encryption",
    "hash",
    "manifest",
    "directory",
    "file",
    "object",
    "session",
    "marker",
    "format",
    "version",
    "data",
];

/// The generator's inputs, byte for byte.
fn input(name: &str) -> Vec<u8> {
    match name {
        "empty" => Vec::new(),
        "text" => {
            let mut r = SplitMix(2);
            let mut b = Vec::new();
            let mut n = 0;
            while b.len() < 12000 {
                b.extend_from_slice(WORDS[(r.next() % WORDS.len() as u64) as usize].as_bytes());
                b.push(if n % 12 == 11 { b'\n' } else { b' ' });
                n += 1;
            }
            b.truncate(12000);
            b
        }
        "random" => {
            let mut b = vec![0u8; 6000];
            SplitMix(1).fill(&mut b);
            b
        }
        "repetitive" => {
            let mut b: Vec<u8> = b"kopia-".iter().copied().cycle().take(40000).collect();
            b.extend_from_slice(&[0u8; 60000]);
            b.extend_from_slice(b"tail");
            b
        }
        "big" => {
            let mut seg = vec![0u8; 4096];
            SplitMix(3).fill(&mut seg);
            let n = 5 * 1024 * 1024 + 123;
            let mut b: Vec<u8> = seg.iter().copied().cycle().take(n).collect();
            let mut m = SplitMix(4);
            let mut blk = 0;
            while blk * 4096 < n {
                let pos = blk * 4096 + (m.next() % 4096) as usize;
                let v = m.next() as u8;
                if pos < n {
                    b[pos] = v;
                }
                blk += 1;
            }
            b
        }
        other => panic!("unknown input {other}"),
    }
}

#[test]
fn kopia_written_payloads_decode_exactly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/compression");
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).unwrap();
    let mut inputs: HashMap<String, Vec<u8>> = HashMap::new();
    let (mut decoded, mut rejected) = (0, 0);
    let mut header_ids_seen = std::collections::BTreeSet::new();
    for line in manifest.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[0] {
            "input" => {
                let data = input(fields[1]);
                assert_eq!(data.len().to_string(), fields[2], "{line}");
                assert_eq!(
                    hex::encode(Sha256::digest(&data)),
                    fields[3],
                    "generator mismatch for {}",
                    fields[1]
                );
                inputs.insert(fields[1].to_string(), data);
            }
            "vector" | "vector-kopia-unreadable" => {
                let payload = std::fs::read(dir.join(fields[1])).unwrap();
                let id = u32::from_str_radix(fields[2], 16).unwrap();
                let expected = &inputs[fields[3]];
                let got = compression::decompress(id, &payload, expected.len())
                    .unwrap_or_else(|e| panic!("{}: {e}", fields[1]));
                assert!(got == *expected, "{} decoded to different data", fields[1]);
                if !expected.is_empty() {
                    assert!(
                        compression::decompress(id, &payload, expected.len() - 1).is_err(),
                        "{}",
                        fields[1]
                    );
                }
                header_ids_seen.insert(id);
                decoded += 1;
            }
            "reject" => {
                let payload = std::fs::read(dir.join(fields[1])).unwrap();
                let id = u32::from_str_radix(fields[2], 16).unwrap();
                assert!(
                    compression::decompress(id, &payload, 1 << 20).is_err(),
                    "{} must be rejected",
                    fields[1]
                );
                rejected += 1;
            }
            other => panic!("unknown manifest line kind {other}"),
        }
    }
    assert_eq!(
        header_ids_seen.len(),
        18,
        "every kopia compressor has vectors"
    );
    assert!(
        decoded >= 90 && rejected >= 1,
        "{decoded} decoded, {rejected} rejected"
    );
}

#[test]
fn our_output_round_trips_on_kopia_inputs() {
    // Our encoders on the same inputs: kopia's decoders are standard, so a round trip through our
    // own decoder (which reads kopia's output above) is the compatibility check available here.
    for name in ["text", "repetitive", "big"] {
        let data = input(name);
        for id in [
            0x1000, 0x1001, 0x1002, 0x1100, 0x1101, 0x1102, 0x1103, 0x1300, 0x1500, 0x1501, 0x1502,
        ] {
            let packed = compression::compress(id, &data)
                .unwrap()
                .expect("compressible");
            assert_eq!(
                compression::decompress(id, &packed, data.len()).unwrap(),
                data,
                "{name} {id:#x}"
            );
        }
    }
}
