//! Blob crypto (spec §10): index blobs, session markers, logs. The blob is named after the hash of
//! its plaintext, and the encryption IV is recovered from that name.

use crate::encryption::{ContentEncryptor, NONCE_LEN};
use crate::error::{FormatError, Result};
use crate::hashing::Hasher;

const IV_LEN: usize = 16;

/// Encrypts `data` and returns `(blob ID, body)`, where the ID is
/// `prefix || hex(H(data)) || ("-" || suffix if suffix is non-empty)`.
///
/// # Panics
/// If `prefix` contains `-`: the IV is read from the part before the first dash, so such a blob
/// could never be decrypted (kopia refuses it too). Every kopia prefix is a dash-free constant.
pub fn encrypt_blob(
    hasher: &Hasher,
    enc: &ContentEncryptor,
    prefix: &str,
    suffix: &str,
    data: &[u8],
    nonce: [u8; NONCE_LEN],
) -> (String, Vec<u8>) {
    let mut owned = Vec::with_capacity(data.len() + crate::encryption::OVERHEAD);
    owned.extend_from_slice(data);
    encrypt_blob_in_place(hasher, enc, prefix, suffix, owned, nonce)
}

/// [`encrypt_blob`] inside the plaintext's own buffer (give it [`crate::encryption::OVERHEAD`]
/// bytes of spare capacity and a large index blob is never held twice).
pub fn encrypt_blob_in_place(
    hasher: &Hasher,
    enc: &ContentEncryptor,
    prefix: &str,
    suffix: &str,
    data: Vec<u8>,
    nonce: [u8; NONCE_LEN],
) -> (String, Vec<u8>) {
    assert!(
        !prefix.contains('-'),
        "blob prefix {prefix:?} must not contain '-'"
    );
    let hash = hasher.hash(&data);
    let mut blob_id =
        String::with_capacity(prefix.len() + 2 * hash.as_bytes().len() + 1 + suffix.len());
    blob_id.push_str(prefix);
    blob_id.push_str(&hash.to_hex());
    if !suffix.is_empty() {
        blob_id.push('-');
        blob_id.push_str(suffix);
    }
    let iv = &hash.as_bytes()[hash.as_bytes().len() - IV_LEN..];
    // Every hash is at least 16 bytes, so the IV is simply its tail, exactly as parsed back.
    let body = enc.encrypt_in_place(data, iv, nonce);
    (blob_id, body)
}

/// Decrypts a blob-crypto body, recomputing its IV from the blob ID.
pub fn decrypt_blob(enc: &ContentEncryptor, blob_id: &str, data: &[u8]) -> Result<Vec<u8>> {
    let iv = iv_from_blob_id(blob_id)?;
    enc.decrypt(data, &iv)
}

/// [`decrypt_blob`] inside the blob's own buffer (no second copy of a large index blob).
pub fn decrypt_blob_in_place(
    enc: &ContentEncryptor,
    blob_id: &str,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    let iv = iv_from_blob_id(blob_id)?;
    enc.decrypt_in_place(data, &iv)
}

/// The last 32 hex digits before the first `-` of the blob ID, decoded.
pub fn iv_from_blob_id(blob_id: &str) -> Result<[u8; IV_LEN]> {
    let bad = |detail: &str| FormatError::malformed("blob ID", format!("{blob_id:?}: {detail}"));
    let head = blob_id.split('-').next().unwrap_or_default().as_bytes();
    if head.len() < 2 * IV_LEN {
        return Err(bad("too short to hold an IV"));
    }
    let mut iv = [0u8; IV_LEN];
    hex::decode_to_slice(&head[head.len() - 2 * IV_LEN..], &mut iv)
        .map_err(|_| bad("IV is not hex"))?;
    Ok(iv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::EncryptionAlgorithm;
    use crate::hashing::HashAlgorithm;

    fn setup() -> (Hasher, ContentEncryptor) {
        let secret: Vec<u8> = (0x40..0x60).collect();
        let master: Vec<u8> = (0x20..0x40).collect();
        (
            HashAlgorithm::default().hasher(&secret).unwrap(),
            ContentEncryptor::new(EncryptionAlgorithm::default(), &master).unwrap(),
        )
    }

    #[test]
    fn round_trip_and_naming() {
        let (h, e) = setup();
        let (id, body) = encrypt_blob(
            &h,
            &e,
            "xn0_",
            "s0123456789abcdef13c-c1",
            b"payload",
            [9; 12],
        );
        let hash = h.hash(b"payload").to_hex();
        assert_eq!(id, format!("xn0_{hash}-s0123456789abcdef13c-c1"));
        assert_eq!(hex::encode(iv_from_blob_id(&id).unwrap()), hash);
        assert_eq!(decrypt_blob(&e, &id, &body).unwrap(), b"payload");
        let (plain_id, body) = encrypt_blob(&h, &e, "n", "", b"", [1; 12]);
        assert_eq!(plain_id, format!("n{}", h.hash(b"").to_hex()));
        assert_eq!(decrypt_blob(&e, &plain_id, &body).unwrap(), b"");
        // The owned variants give the same names and bodies.
        let (owned_id, owned_body) =
            encrypt_blob_in_place(&h, &e, "xn0_", "s1-c1", b"payload".to_vec(), [1; 12]);
        let (id2, body2) = encrypt_blob(&h, &e, "xn0_", "s1-c1", b"payload", [1; 12]);
        assert_eq!((&owned_id, &owned_body), (&id2, &body2));
        assert_eq!(
            decrypt_blob_in_place(&e, &owned_id, owned_body).unwrap(),
            b"payload"
        );
    }

    #[test]
    fn iv_is_tail_of_long_hash() {
        let (_, e) = setup();
        let h = HashAlgorithm::HmacSha3_224.hasher(b"k").unwrap();
        let (id, body) = encrypt_blob(&h, &e, "s", "s01", b"x", [0; 12]);
        let hash = h.hash(b"x");
        assert_eq!(iv_from_blob_id(&id).unwrap(), hash.as_bytes()[12..]);
        assert_eq!(decrypt_blob(&e, &id, &body).unwrap(), b"x");
    }

    #[test]
    fn kopia_negative_cases() {
        let (_, e) = setup();
        for id in [
            "invalid-blob-id",
            "zzz0123456789abcdef0123456789abcde-suffix",
            "",
            "-",
            "é".repeat(20).as_str(),
        ] {
            assert!(decrypt_blob(&e, id, &[0u8; 40]).is_err(), "{id}");
        }
        let (h, e) = setup();
        let (id, mut body) = encrypt_blob(&h, &e, "m", "", b"abc", [0; 12]);
        body[20] ^= 0x80;
        assert!(matches!(
            decrypt_blob(&e, &id, &body),
            Err(FormatError::Decrypt(_))
        ));
    }
}
