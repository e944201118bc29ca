//! Decryption under fixed keys: content AEAD (both algorithms), blob crypto, the format blob's
//! config, `kopia.blobcfg` and `kopia.maintenance`. None may panic; forged input never opens.
//! Then the input is sealed and opened again, which must round-trip and detect a flipped bit.
//!
//! Input: `selector, id length, id, body`. The selector's low bit picks the algorithm, the rest
//! picks what `body` is decrypted as; `id` is the IV, the blob ID or the unique ID.
#![no_main]

use std::sync::LazyLock;

use kmover_format::blobcrypto::{decrypt_blob, encrypt_blob, iv_from_blob_id};
use kmover_format::encryption::{ContentEncryptor, EncryptionAlgorithm, OVERHEAD};
use kmover_format::format_blob::{FORMAT_ENCRYPTION, FormatBlob, decrypt_blobcfg};
use kmover_format::hashing::{HashAlgorithm, Hasher};
use kmover_format::maintenance::decrypt_schedule;
use kmover_fuzz::{FIXED_KEY, text};
use libfuzzer_sys::fuzz_target;

static ENCRYPTORS: LazyLock<[ContentEncryptor; 2]> = LazyLock::new(|| {
    EncryptionAlgorithm::ALL
        .iter()
        .map(|&a| ContentEncryptor::new(a, &FIXED_KEY).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
});

static HASHER: LazyLock<Hasher> =
    LazyLock::new(|| HashAlgorithm::default().hasher(&FIXED_KEY).unwrap());

fuzz_target!(|data: &[u8]| {
    let [selector, id_len, rest @ ..] = data else {
        return;
    };
    let (id, body) = rest.split_at(usize::from(*id_len).min(rest.len()));
    let enc = &ENCRYPTORS[usize::from(selector & 1)];

    let opened = match (selector >> 1) % 5 {
        0 => {
            // On failure the output buffer is left as it was.
            let mut out = b"prefix".to_vec();
            let r = enc.decrypt_into(body, id, &mut out);
            if r.is_err() {
                assert_eq!(out, b"prefix");
            }
            r.is_ok()
        }
        1 => {
            let blob_id = text(id);
            let r = decrypt_blob(enc, &blob_id, body);
            if iv_from_blob_id(&blob_id).is_err() {
                assert!(r.is_err());
            }
            r.is_ok()
        }
        2 => {
            let encryption = if selector & 0x80 == 0 {
                FORMAT_ENCRYPTION.to_string()
            } else {
                text(id).into_owned()
            };
            let blob = FormatBlob {
                key_algo: "pbkdf2-sha256-600000".into(),
                encryption,
                unique_id: id.to_vec(),
                encrypted_block_format: body.to_vec(),
                ..Default::default()
            };
            blob.decrypt_config(&FIXED_KEY).is_ok()
        }
        3 => decrypt_blobcfg(body, &FIXED_KEY, id).is_ok(),
        _ => decrypt_schedule(body, &FIXED_KEY).is_ok(),
    };
    assert!(!opened, "forged ciphertext opened");

    // Seal and open: exact round trip, and any flipped bit is detected.
    let nonce = [*selector; 12];
    let sealed = enc.encrypt(body, id, nonce);
    assert_eq!(sealed.len(), body.len() + OVERHEAD);
    assert_eq!(enc.decrypt(&sealed, id).unwrap(), body);
    let mut tampered = sealed.clone();
    let bit = usize::from(*id_len) * 8 + usize::from(*selector);
    tampered[bit / 8 % sealed.len()] ^= 1 << (bit % 8);
    assert!(enc.decrypt(&tampered, id).is_err());

    let (blob_id, blob) = encrypt_blob(&HASHER, enc, "q", &text(id), body, nonce);
    assert_eq!(decrypt_blob(enc, &blob_id, &blob).unwrap(), body);
});
