//! Helpers shared by the fuzz targets: fixed keys, and sealing of fuzz input as the plaintext of
//! the fixed-key AES-256-GCM blobs, so the decoders behind the authentication tag get fuzzed too.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use kmover_format::encryption::NONCE_LEN;
use kmover_format::kdf::hkdf_sha256;

/// Stands for the format (password) key and for the master key.
pub const FIXED_KEY: [u8; 32] = *b"kmover-fuzz-fixed-key-0123456789";
/// The repository unique ID paired with [`FIXED_KEY`].
pub const UNIQUE_ID: [u8; 32] = *b"kmover-fuzz-unique-id-0123456789";
pub const NONCE: [u8; NONCE_LEN] = *b"fuzz-nonce-1";
/// kopia's AAD of `kopia.maintenance`.
pub const MAINTENANCE_AAD: &[u8] = b"maintenance";

/// `nonce || AES-256-GCM(plaintext) || tag`, the layout of the format blob's config,
/// `kopia.blobcfg` and `kopia.maintenance`.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let mut body = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(NONCE),
            Aad::from(aad),
            &mut body,
        )
        .expect("sealing an in-memory buffer");
    let mut out = NONCE.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Seals `plaintext` as `kopia.blobcfg` of the repository ([`FIXED_KEY`], [`UNIQUE_ID`]): key and
/// AAD are HKDF-SHA256 of the format key salted with the unique ID, info `AES` / `CHECKSUM`.
pub fn seal_blobcfg(plaintext: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 32];
    let mut aad = [0u8; 32];
    hkdf_sha256(&FIXED_KEY, &UNIQUE_ID, b"AES", &mut key);
    hkdf_sha256(&FIXED_KEY, &UNIQUE_ID, b"CHECKSUM", &mut aad);
    seal(&key, &aad, plaintext)
}

/// Text of fuzz input: invalid UTF-8 becomes U+FFFD, which is a valid input as well.
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
