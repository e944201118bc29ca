//! Content encryption (spec §6): per-content AEAD key = HMAC-SHA256(rootSecret, IV), AAD = IV,
//! output `nonce(12) || ciphertext || tag(16)`.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{FormatError, Result};
use crate::kdf::hkdf_sha256;

/// Bytes added to every encrypted payload: the nonce and the tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// Kopia's content encryption algorithms, named as in the repository config's `encryption` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EncryptionAlgorithm {
    #[default]
    Aes256GcmHmacSha256,
    Chacha20Poly1305HmacSha256,
}

impl EncryptionAlgorithm {
    pub const ALL: &'static [EncryptionAlgorithm] = &[
        EncryptionAlgorithm::Aes256GcmHmacSha256,
        EncryptionAlgorithm::Chacha20Poly1305HmacSha256,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
            .ok_or_else(|| FormatError::Unsupported {
                what: "encryption algorithm",
                name: name.to_string(),
            })
    }

    pub fn name(&self) -> &'static str {
        match self {
            EncryptionAlgorithm::Aes256GcmHmacSha256 => "AES256-GCM-HMAC-SHA256",
            EncryptionAlgorithm::Chacha20Poly1305HmacSha256 => "CHACHA20-POLY1305-HMAC-SHA256",
        }
    }

    fn aead(&self) -> &'static aws_lc_rs::aead::Algorithm {
        match self {
            EncryptionAlgorithm::Aes256GcmHmacSha256 => &AES_256_GCM,
            EncryptionAlgorithm::Chacha20Poly1305HmacSha256 => &CHACHA20_POLY1305,
        }
    }
}

impl fmt::Display for EncryptionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Encrypts and decrypts contents and blob-crypto payloads of one repository.
#[derive(Clone)]
pub struct ContentEncryptor {
    algorithm: EncryptionAlgorithm,
    /// HMAC keyed with the root secret, computed once; cloned per payload.
    key_deriver: Hmac<Sha256>,
}

impl fmt::Debug for ContentEncryptor {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentEncryptor")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The salt/info roles are swapped relative to every other kopia HKDF use (spec §3).
const ROOT_SECRET_SALT: &[u8] = b"encryption";

impl ContentEncryptor {
    pub fn new(algorithm: EncryptionAlgorithm, master_key: &[u8]) -> Result<Self> {
        let mut root_secret = [0u8; 32];
        hkdf_sha256(master_key, ROOT_SECRET_SALT, b"", &mut root_secret);
        let key_deriver =
            Hmac::<Sha256>::new_from_slice(&root_secret).expect("HMAC accepts any key length");
        Ok(ContentEncryptor {
            algorithm,
            key_deriver,
        })
    }

    pub fn algorithm(&self) -> EncryptionAlgorithm {
        self.algorithm
    }

    fn key_for(&self, iv: &[u8]) -> LessSafeKey {
        let mut mac = self.key_deriver.clone();
        mac.update(iv);
        let key = mac.finalize().into_bytes();
        LessSafeKey::new(
            UnboundKey::new(self.algorithm.aead(), &key).expect("HMAC-SHA256 gives a 32-byte key"),
        )
    }

    /// Returns `nonce || ciphertext || tag`. The nonce must be fresh random bytes for every call.
    pub fn encrypt(&self, plaintext: &[u8], iv: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, iv, nonce, &mut out);
        out
    }

    /// Appends `nonce || ciphertext || tag` to `out`, encrypting straight into it.
    pub fn encrypt_into(
        &self,
        plaintext: &[u8],
        iv: &[u8],
        nonce: [u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) {
        let key = self.key_for(iv);
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.resize(start + plaintext.len() + TAG_LEN, 0);
        let (ciphertext, tag) = out[start..].split_at_mut(plaintext.len());
        key.seal_out_of_place_scatter(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(iv),
            plaintext,
            ciphertext,
            &[],
            tag,
        )
        .expect("buffer lengths are exact");
    }

    /// Opens `nonce || ciphertext || tag` produced with the same IV.
    pub fn decrypt(&self, ciphertext: &[u8], iv: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decrypt_into(ciphertext, iv, &mut out)?;
        Ok(out)
    }

    /// Appends the plaintext of `nonce || ciphertext || tag` to `out`; on error `out` is unchanged.
    pub fn decrypt_into(&self, ciphertext: &[u8], iv: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if ciphertext.len() < OVERHEAD {
            return Err(FormatError::Decrypt(format!(
                "ciphertext too short: {} bytes",
                ciphertext.len()
            )));
        }
        let (nonce, rest) = ciphertext.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce is 12 bytes");
        let start = out.len();
        out.resize(start + body.len(), 0);
        let opened = self.key_for(iv).open_separate_gather(
            nonce,
            Aad::from(iv),
            body,
            tag,
            &mut out[start..],
        );
        if opened.is_err() {
            out.truncate(start);
            return Err(FormatError::Decrypt(format!(
                "{} authentication failed",
                self.algorithm.name()
            )));
        }
        Ok(())
    }

    /// [`ContentEncryptor::encrypt`] inside the plaintext's own buffer: with
    /// [`OVERHEAD`] bytes of spare capacity a large payload is never held twice.
    pub fn encrypt_in_place(
        &self,
        mut data: Vec<u8>,
        iv: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        let tag = self
            .key_for(iv)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(iv),
                &mut data,
            )
            .expect("sealing an in-memory buffer cannot fail");
        data.extend_from_slice(tag.as_ref());
        data.splice(0..0, nonce);
        data
    }

    /// Opens `nonce || ciphertext || tag` inside its own buffer, which becomes the plaintext:
    /// a large payload (an index blob of millions of entries) is never held twice.
    pub fn decrypt_in_place(&self, mut data: Vec<u8>, iv: &[u8]) -> Result<Vec<u8>> {
        if data.len() < OVERHEAD {
            return Err(FormatError::Decrypt(format!(
                "ciphertext too short: {} bytes",
                data.len()
            )));
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&data[..NONCE_LEN]).expect("nonce is 12 bytes");
        let len = self
            .key_for(iv)
            .open_within(nonce, Aad::from(iv), &mut data, NONCE_LEN..)
            .map_err(|_| {
                FormatError::Decrypt(format!("{} authentication failed", self.algorithm.name()))
            })?
            .len();
        data.truncate(len);
        Ok(data)
    }
}

/// Plain AES-256-GCM under a fixed key, as kopia uses for the format blob, `kopia.blobcfg` and
/// `kopia.maintenance`: returns `nonce || ciphertext || tag`.
pub(crate) fn seal_aes256_gcm(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .expect("AES-GCM sealing of an in-memory buffer");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens [`seal_aes256_gcm`] output; `None` when it is too short or the tag does not verify.
pub(crate) fn open_aes256_gcm(key: &[u8; 32], aad: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < OVERHEAD {
        return None;
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key"));
    let (nonce, rest) = data.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut out = vec![0u8; body.len()];
    key.open_separate_gather(
        Nonce::try_assume_unique_for_key(nonce).ok()?,
        Aad::from(aad),
        body,
        tag,
        &mut out,
    )
    .ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_KEY: &[u8] = b"01234567890123456789012345678901";

    #[test]
    fn root_secret_and_keys_match_spec_intermediates() {
        let mut root = [0u8; 32];
        hkdf_sha256(MASTER_KEY, ROOT_SECRET_SALT, b"", &mut root);
        assert_eq!(
            hex::encode(root),
            "88aac0fcc646ffc04813cc17f4c7a17f8a73b53e4add438898256a7c87ad45d2"
        );
        let e = ContentEncryptor::new(EncryptionAlgorithm::default(), MASTER_KEY).unwrap();
        let key = |iv: &[u8]| {
            let mut m = e.key_deriver.clone();
            m.update(iv);
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(
            key(b"aabbccddeeffgghhiijjkkllmmnnoopp"),
            "6c82491c819ee6c89e7bdd065cca8b86c314a7d950dffa92e1c30506f60463ea"
        );
        assert_eq!(
            key(&[b'0'; 32]),
            "e09bf92edcc7890a612c60ef1df18a8affff56d9fecfc7cb0585f1b73eb43169"
        );
    }

    /// Spec §16.3/§16.5: root secret for masterKey 0x20..0x3f and the key of an index blob's IV.
    #[test]
    fn derived_index_blob_key() {
        let master: Vec<u8> = (0x20..0x40).collect();
        let mut root = [0u8; 32];
        hkdf_sha256(&master, ROOT_SECRET_SALT, b"", &mut root);
        assert_eq!(
            hex::encode(root),
            "49cbbd8ec38e25389b29de48aa0a383cb3aa37e0e2aa4e02e75c7894aebfacce"
        );
        let e = ContentEncryptor::new(EncryptionAlgorithm::default(), &master).unwrap();
        let mut m = e.key_deriver.clone();
        m.update(&hex::decode("c31735d50feccb6f8569f2321160cfc9").unwrap());
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "a897d1f62cae8dac027e6eb07438f8181dee8c529a11053ffa6acbcce7c89426"
        );
    }

    /// Spec §16.1: fixed ciphertexts from kopia's encryption_test.go.
    #[test]
    fn kopia_ciphertexts_decrypt() {
        let cases: &[(EncryptionAlgorithm, &[u8], &[u8], &str)] = &[
            (
                EncryptionAlgorithm::Aes256GcmHmacSha256,
                b"aabbccddeeffgghhiijjkkllmmnnoopp",
                b"foo",
                "e43ba07f85a6d70c5f1102ca06cf19c597e5f91e527b21f00fb76e8bec3fd1",
            ),
            (
                EncryptionAlgorithm::Chacha20Poly1305HmacSha256,
                b"aabbccddeeffgghhiijjkkllmmnnoopp",
                b"foo",
                "118359f3d4d589d939efbbc3168ae4c77c51bcebce6845fe6ef5d11342faa6",
            ),
            (
                EncryptionAlgorithm::Aes256GcmHmacSha256,
                &[b'0'; 32],
                b"quick brown fox jumps over the lazy dog",
                "eaad755a238f1daa4052db2e5ccddd934790b6cca415b3ccfd46ac5746af33d9d30f4400ffa9eb3a64fb1ce21b888c12c043bf6787d4a5c15ad10f21f6a6027ee3afe0",
            ),
            (
                EncryptionAlgorithm::Chacha20Poly1305HmacSha256,
                &[b'0'; 32],
                b"quick brown fox jumps over the lazy dog",
                "836d2ba87892711077adbdbe1452d3b2c590bbfdf6fd3387dc6810220a32ec19de862e1a4f865575e328424b5f178afac1b7eeff11494f719d119b7ebb924d1d0846a3",
            ),
        ];
        for (alg, iv, plaintext, ct_hex) in cases {
            let e = ContentEncryptor::new(*alg, MASTER_KEY).unwrap();
            let ct = hex::decode(ct_hex).unwrap();
            assert_eq!(e.decrypt(&ct, iv).unwrap(), *plaintext, "{alg}");
            // Re-encrypting with kopia's nonce reproduces kopia's bytes exactly.
            let nonce: [u8; 12] = ct[..12].try_into().unwrap();
            assert_eq!(e.encrypt(plaintext, iv, nonce), ct, "{alg}");
        }
    }

    #[test]
    fn tampering_and_short_input_fail() {
        for alg in EncryptionAlgorithm::ALL {
            let e = ContentEncryptor::new(*alg, MASTER_KEY).unwrap();
            let iv = [7u8; 16];
            let mut ct = e.encrypt(b"some data", &iv, [1; 12]);
            assert_eq!(ct.len(), 9 + OVERHEAD);
            assert!(e.decrypt(&ct, &[8u8; 16]).is_err(), "wrong IV");
            let last = ct.len() - 1;
            ct[last] ^= 1;
            assert!(matches!(e.decrypt(&ct, &iv), Err(FormatError::Decrypt(_))));
            for n in 0..OVERHEAD {
                assert!(matches!(
                    e.decrypt(&vec![0u8; n], &iv),
                    Err(FormatError::Decrypt(_))
                ));
            }
            let empty = e.encrypt(b"", &iv, [2; 12]);
            assert_eq!(e.decrypt(&empty, &iv).unwrap(), b"");
            let good = e.encrypt(b"some data", &iv, [1; 12]);
            let mut plain = Vec::with_capacity(9 + OVERHEAD);
            plain.extend_from_slice(b"some data");
            let start = plain.as_ptr();
            let sealed = e.encrypt_in_place(plain, &iv, [1; 12]);
            assert_eq!(sealed, good);
            assert_eq!(sealed.as_ptr(), start, "no second buffer");
            assert_eq!(e.decrypt_in_place(good.clone(), &iv).unwrap(), b"some data");
            assert!(e.decrypt_in_place(good, &[8u8; 16]).is_err(), "wrong IV");
            assert!(e.decrypt_in_place(ct.clone(), &iv).is_err(), "tampered");
            assert!(e.decrypt_in_place(vec![0; OVERHEAD - 1], &iv).is_err());
        }
    }

    #[test]
    fn into_variants_append() {
        let e = ContentEncryptor::new(EncryptionAlgorithm::default(), MASTER_KEY).unwrap();
        let mut buf = b"prefix".to_vec();
        e.encrypt_into(b"payload", b"iv", [3; 12], &mut buf);
        assert_eq!(&buf[..6], b"prefix");
        let mut plain = b"head".to_vec();
        e.decrypt_into(&buf[6..], b"iv", &mut plain).unwrap();
        assert_eq!(plain, b"headpayload");
        assert!(e.decrypt_into(&buf[6..], b"other", &mut plain).is_err());
        assert_eq!(plain, b"headpayload");
        assert_eq!(
            EncryptionAlgorithm::parse("AES256-GCM-HMAC-SHA256").unwrap(),
            EncryptionAlgorithm::default()
        );
        assert!(EncryptionAlgorithm::parse("NONE").is_err());
    }

    #[test]
    fn encryptor_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<ContentEncryptor>();
    }
}
