//! Keyed content hashes (spec §4). The key is the repository's HMAC `secret`; the output is the
//! content ID hash and, for blob crypto, the blob-name hash.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Sha224, Sha256};
use sha3::{Sha3_224, Sha3_256};

use crate::error::{FormatError, Result};

/// The longest hash of any algorithm (and of a content ID).
pub const MAX_HASH_LEN: usize = 32;

const BLAKE3_CONTEXT: &str = "kopia blake3 derived key v1";

/// Kopia's content hash algorithms, named as in the repository config's `hash` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    /// Keyed BLAKE2b with a 32-byte digest, truncated to 16 bytes (not BLAKE2b-128).
    #[default]
    Blake2b256_128,
    Blake2b256,
    /// Native 16-byte BLAKE2s digest; needs a non-empty key.
    Blake2s128,
    Blake2s256,
    Blake3_256,
    Blake3_256_128,
    HmacSha256,
    HmacSha256_128,
    HmacSha224,
    HmacSha3_224,
    HmacSha3_256,
}

impl HashAlgorithm {
    pub const ALL: &'static [HashAlgorithm] = &[
        HashAlgorithm::Blake2b256_128,
        HashAlgorithm::Blake2b256,
        HashAlgorithm::Blake2s128,
        HashAlgorithm::Blake2s256,
        HashAlgorithm::Blake3_256,
        HashAlgorithm::Blake3_256_128,
        HashAlgorithm::HmacSha256,
        HashAlgorithm::HmacSha256_128,
        HashAlgorithm::HmacSha224,
        HashAlgorithm::HmacSha3_224,
        HashAlgorithm::HmacSha3_256,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
            .ok_or_else(|| FormatError::Unsupported {
                what: "hash algorithm",
                name: name.to_string(),
            })
    }

    pub fn name(&self) -> &'static str {
        match self {
            HashAlgorithm::Blake2b256_128 => "BLAKE2B-256-128",
            HashAlgorithm::Blake2b256 => "BLAKE2B-256",
            HashAlgorithm::Blake2s128 => "BLAKE2S-128",
            HashAlgorithm::Blake2s256 => "BLAKE2S-256",
            HashAlgorithm::Blake3_256 => "BLAKE3-256",
            HashAlgorithm::Blake3_256_128 => "BLAKE3-256-128",
            HashAlgorithm::HmacSha256 => "HMAC-SHA256",
            HashAlgorithm::HmacSha256_128 => "HMAC-SHA256-128",
            HashAlgorithm::HmacSha224 => "HMAC-SHA224",
            HashAlgorithm::HmacSha3_224 => "HMAC-SHA3-224",
            HashAlgorithm::HmacSha3_256 => "HMAC-SHA3-256",
        }
    }

    /// Length in bytes of the hash (and so of a content ID without prefix).
    pub fn output_len(&self) -> usize {
        match self {
            HashAlgorithm::Blake2b256_128
            | HashAlgorithm::Blake2s128
            | HashAlgorithm::Blake3_256_128
            | HashAlgorithm::HmacSha256_128 => 16,
            HashAlgorithm::HmacSha224 | HashAlgorithm::HmacSha3_224 => 28,
            HashAlgorithm::Blake2b256
            | HashAlgorithm::Blake2s256
            | HashAlgorithm::Blake3_256
            | HashAlgorithm::HmacSha256
            | HashAlgorithm::HmacSha3_256 => 32,
        }
    }

    /// Builds a hasher keyed with `secret`. Fails where kopia fails: a BLAKE2b key over 64 bytes,
    /// a BLAKE2s key over 32 bytes, or an empty BLAKE2S-128 key.
    pub fn hasher(&self, secret: &[u8]) -> Result<Hasher> {
        let bad_key =
            |reason: &str| FormatError::malformed("hash key", format!("{}: {reason}", self.name()));
        let keyed = match self {
            HashAlgorithm::Blake2b256_128 | HashAlgorithm::Blake2b256 => {
                if secret.len() > blake2b_simd::KEYBYTES {
                    return Err(bad_key("key longer than 64 bytes"));
                }
                // The digest length is 32 even for the truncated variant: it is part of the hash.
                let mut params = blake2b_simd::Params::new();
                params.hash_length(32).key(secret);
                Keyed::Blake2b(params)
            }
            HashAlgorithm::Blake2s128 | HashAlgorithm::Blake2s256 => {
                if secret.len() > blake2s_simd::KEYBYTES {
                    return Err(bad_key("key longer than 32 bytes"));
                }
                if *self == HashAlgorithm::Blake2s128 && secret.is_empty() {
                    return Err(bad_key("a key is required for a 128-bit hash"));
                }
                let mut params = blake2s_simd::Params::new();
                params.hash_length(self.output_len()).key(secret);
                Keyed::Blake2s(params)
            }
            HashAlgorithm::Blake3_256 | HashAlgorithm::Blake3_256_128 => {
                let key: [u8; 32] = match secret.get(..32) {
                    Some(k) => k.try_into().expect("slice of 32"),
                    None => blake3::derive_key(BLAKE3_CONTEXT, secret),
                };
                Keyed::Blake3(key)
            }
            HashAlgorithm::HmacSha256 | HashAlgorithm::HmacSha256_128 => Keyed::HmacSha256(
                Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            ),
            HashAlgorithm::HmacSha224 => Keyed::HmacSha224(
                Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            ),
            HashAlgorithm::HmacSha3_224 => Keyed::HmacSha3_224(
                Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            ),
            HashAlgorithm::HmacSha3_256 => Keyed::HmacSha3_256(
                Hmac::new_from_slice(secret).expect("HMAC accepts any key length"),
            ),
        };
        Ok(Hasher {
            algorithm: *self,
            keyed,
        })
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hash value of up to 32 bytes, kept inline so hashing never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HashOutput {
    bytes: [u8; MAX_HASH_LEN],
    len: u8,
}

impl HashOutput {
    fn truncated(full: &[u8], len: usize) -> Self {
        let mut bytes = [0u8; MAX_HASH_LEN];
        bytes[..len].copy_from_slice(&full[..len]);
        HashOutput {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Lowercase hex, as used in blob names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl AsRef<[u8]> for HashOutput {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Key state computed once; each `hash` only clones it.
#[derive(Clone)]
enum Keyed {
    Blake2b(blake2b_simd::Params),
    Blake2s(blake2s_simd::Params),
    /// BLAKE3 has no key schedule, so keeping the key is as cheap as keeping a state.
    Blake3([u8; 32]),
    HmacSha256(Hmac<Sha256>),
    HmacSha224(Hmac<Sha224>),
    HmacSha3_224(Hmac<Sha3_224>),
    HmacSha3_256(Hmac<Sha3_256>),
}

/// A keyed hash function of one algorithm, cheap to clone and share between threads.
#[derive(Clone)]
pub struct Hasher {
    algorithm: HashAlgorithm,
    keyed: Keyed,
}

impl fmt::Debug for Hasher {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    pub fn output_len(&self) -> usize {
        self.algorithm.output_len()
    }

    pub fn hash(&self, data: &[u8]) -> HashOutput {
        let len = self.output_len();
        match &self.keyed {
            Keyed::Blake2b(params) => HashOutput::truncated(params.hash(data).as_bytes(), len),
            Keyed::Blake2s(params) => HashOutput::truncated(params.hash(data).as_bytes(), len),
            Keyed::Blake3(key) => {
                HashOutput::truncated(blake3::keyed_hash(key, data).as_bytes(), len)
            }
            Keyed::HmacSha256(m) => mac(m, data, len),
            Keyed::HmacSha224(m) => mac(m, data, len),
            Keyed::HmacSha3_224(m) => mac(m, data, len),
            Keyed::HmacSha3_256(m) => mac(m, data, len),
        }
    }

    /// Hashes many inputs at once; BLAKE2 hashes several inputs in parallel SIMD lanes.
    pub fn hash_many(&self, inputs: &[&[u8]]) -> Vec<HashOutput> {
        let len = self.output_len();
        match &self.keyed {
            Keyed::Blake2b(params) => {
                let mut jobs: Vec<_> = inputs
                    .iter()
                    .map(|i| blake2b_simd::many::HashManyJob::new(params, i))
                    .collect();
                blake2b_simd::many::hash_many(jobs.iter_mut());
                jobs.iter()
                    .map(|j| HashOutput::truncated(j.to_hash().as_bytes(), len))
                    .collect()
            }
            Keyed::Blake2s(params) => {
                let mut jobs: Vec<_> = inputs
                    .iter()
                    .map(|i| blake2s_simd::many::HashManyJob::new(params, i))
                    .collect();
                blake2s_simd::many::hash_many(jobs.iter_mut());
                jobs.iter()
                    .map(|j| HashOutput::truncated(j.to_hash().as_bytes(), len))
                    .collect()
            }
            _ => inputs.iter().map(|i| self.hash(i)).collect(),
        }
    }
}

fn mac<M: Mac + Clone>(keyed: &M, data: &[u8], len: usize) -> HashOutput {
    let mut m = keyed.clone();
    m.update(data);
    HashOutput::truncated(&m.finalize().into_bytes(), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §16.4: secret 0x00..0x1f, H("hello world") and H("").
    const VECTORS: &[(&str, &str, &str)] = &[
        (
            "BLAKE2B-256-128",
            "e284e5ae9e9ee34777499c886c42fce0",
            "4e51e7a913fc80137da52880fecca175",
        ),
        (
            "BLAKE2B-256",
            "e284e5ae9e9ee34777499c886c42fce0466a813b7e278dc806db57bcfe2255f1",
            "4e51e7a913fc80137da52880fecca175bf81e117d5c68126dc2774033517ea0d",
        ),
        (
            "BLAKE2S-128",
            "9dc39de6198d670172a4bf1a20c88f06",
            "9536f9b267655743dee97b8a670f9f53",
        ),
        (
            "BLAKE2S-256",
            "91f7ccd2b023b7b4e708a750f8a59051ca893082d25d2f49a558f249fe7c0ccd",
            "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49",
        ),
        (
            "BLAKE3-256",
            "4ebf5cf7a32a345339118ca2eba61501ff2e13cfe42678516560aac298c3dad3",
            "73492b19995d71cdb1e9d74decc09809eb732f1b00bc95c27cb15f9dd4d6478f",
        ),
        (
            "BLAKE3-256-128",
            "4ebf5cf7a32a345339118ca2eba61501",
            "73492b19995d71cdb1e9d74decc09809",
        ),
        (
            "HMAC-SHA256",
            "411b9a51e8565e1fc79643b2a6c4672f4a3c3e573c33d0995a08748cb6128e8e",
            "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb",
        ),
        (
            "HMAC-SHA256-128",
            "411b9a51e8565e1fc79643b2a6c4672f",
            "d38b42096d80f45f826b44a9d5607de7",
        ),
        (
            "HMAC-SHA224",
            "b4d40f8484842f7cad969aea7ea110e291697f07d3c9ffcd2f10a475",
            "2a7430f93bb5456d155c654063c7074aa70c01936a6c0e53a9f9407f",
        ),
        (
            "HMAC-SHA3-224",
            "cfdc0f7c3ae4f7c413f7fa56c3a83e656c87e06d1dbbd935ca912861",
            "2e37c6fd64fd8a04653d260323bc726482d8cb6b4d9e59e02bd58cd9",
        ),
        (
            "HMAC-SHA3-256",
            "f76aacea7480978b8dbeb285452b5bc8f9f016ae33b0f7ff99fcbf73edd02c2c",
            "50ab1606034383fe4b3b4bc0a341a82e40ac85e455cdfeed4cac902a7b8ccfc1",
        ),
    ];

    #[test]
    fn derived_vectors_for_every_algorithm() {
        let secret: Vec<u8> = (0..32).collect();
        assert_eq!(VECTORS.len(), HashAlgorithm::ALL.len());
        for (name, hello, empty) in VECTORS {
            let alg = HashAlgorithm::parse(name).unwrap();
            assert_eq!(alg.name(), *name);
            let h = alg.hasher(&secret).unwrap();
            assert_eq!(h.hash(b"hello world").to_hex(), *hello, "{name}");
            assert_eq!(h.hash(b"").to_hex(), *empty, "{name}");
            assert_eq!(h.output_len() * 2, hello.len(), "{name}");
        }
    }

    #[test]
    fn hash_many_matches_hash() {
        let secret: Vec<u8> = (0..32).collect();
        let data: Vec<Vec<u8>> = (0..37usize)
            .map(|n| (0..n * 97).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let inputs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        for alg in HashAlgorithm::ALL {
            let h = alg.hasher(&secret).unwrap();
            let many = h.hash_many(&inputs);
            let single: Vec<_> = inputs.iter().map(|i| h.hash(i)).collect();
            assert_eq!(many, single, "{alg}");
        }
    }

    #[test]
    fn blake3_short_key_is_stretched() {
        assert_eq!(
            hex::encode(blake3::derive_key(BLAKE3_CONTEXT, b"secret")),
            "551a3fb015a839c9f575153c26d153c0e7faa9770f84aaf12ceefda277a01fb5"
        );
        assert_eq!(
            hex::encode(blake3::derive_key(BLAKE3_CONTEXT, b"")),
            "7b5413acb31aa3ec9a5d6e9cbe6ce8556b36f6aba504cf6f025b1cb60f5b4520"
        );
        let h = HashAlgorithm::Blake3_256.hasher(b"secret").unwrap();
        assert_eq!(
            h.hash(b"hello world").to_hex(),
            "b770fd339d7ed5bc21aa35c3a40fde1b5d15dc87e193d08ce9ad3c17c231ce2e"
        );
        // A longer key is cut to its first 32 bytes.
        let long: Vec<u8> = (0..40).collect();
        let cut = HashAlgorithm::Blake3_256.hasher(&long[..32]).unwrap();
        assert_eq!(
            HashAlgorithm::Blake3_256.hasher(&long).unwrap().hash(b"x"),
            cut.hash(b"x")
        );
    }

    #[test]
    fn key_limits_follow_kopia() {
        assert!(HashAlgorithm::Blake2s128.hasher(b"").is_err());
        assert!(HashAlgorithm::Blake2s256.hasher(b"").is_ok());
        assert!(HashAlgorithm::Blake2s256.hasher(&[0; 33]).is_err());
        assert!(HashAlgorithm::Blake2b256.hasher(&[0; 64]).is_ok());
        assert!(HashAlgorithm::Blake2b256_128.hasher(&[0; 65]).is_err());
        assert!(HashAlgorithm::HmacSha256.hasher(&[0; 200]).is_ok());
        assert!(HashAlgorithm::parse("SHA256").is_err());
        assert_eq!(HashAlgorithm::default(), HashAlgorithm::Blake2b256_128);
    }

    #[test]
    fn hasher_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Hasher>();
    }
}
