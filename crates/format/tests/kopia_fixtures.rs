//! Blobs written by the real kopia v0.22.3 (`tests/data/kopia-0.22.3/<repo>/<blob ID>`), read and
//! re-written byte for byte. AEAD output is deterministic for a given nonce, so re-encrypting
//! with kopia's nonce and getting kopia's bytes proves our plaintext serialisation is identical.
//!
//! Repositories: `default` = `kopia repository create filesystem` with defaults (scrypt,
//! BLAKE2B-256-128, AES); `pbkdf2-sha3-chacha` = pbkdf2-sha256-600000, HMAC-SHA3-224,
//! CHACHA20-POLY1305-HMAC-SHA256; `format-v1` = `--format-version=1` (no password change, so
//! auxiliary keys come from the password and packs start with a format-blob replica).

use std::path::PathBuf;

use kmover_format::blobcrypto::{decrypt_blob, encrypt_blob};
use kmover_format::encryption::{ContentEncryptor, EncryptionAlgorithm};
use kmover_format::format_blob::{
    BlobCfg, FormatBlob, RepositoryConfig, decrypt_blobcfg, derive_aux_key, derive_format_key,
    encrypt_blobcfg, recover_replica,
};
use kmover_format::hashing::{HashAlgorithm, Hasher};
use kmover_format::maintenance::{MAINTENANCE_KEY_PURPOSE, decrypt_schedule, encrypt_schedule};
use kmover_format::session::{SessionInfo, session_id_of_blob};
use kmover_format::{FormatError, gojson};

fn read(repo: &str, blob: &str) -> Vec<u8> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "data",
        "kopia-0.22.3",
        repo,
        blob,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn nonce_of(sealed: &[u8]) -> [u8; 12] {
    sealed[..12].try_into().unwrap()
}

struct Opened {
    blob: FormatBlob,
    format_key: [u8; 32],
    cfg: RepositoryConfig,
    hasher: Hasher,
    encryptor: ContentEncryptor,
}

/// Opens the format blob with the password and checks that re-sealing and re-serialising
/// reproduces kopia's `kopia.repository` exactly.
fn open(repo: &str, password: &str) -> Opened {
    let bytes = read(repo, "kopia.repository");
    let blob = FormatBlob::parse(&bytes).unwrap();
    let format_key = derive_format_key(&blob.key_algo, password, &blob.unique_id).unwrap();
    let cfg = blob.decrypt_config(&format_key).unwrap();
    cfg.validate_for_open().unwrap();

    let mut resealed = blob.clone();
    resealed
        .seal_config(&cfg, &format_key, nonce_of(&blob.encrypted_block_format))
        .unwrap();
    assert_eq!(
        resealed.encrypted_block_format, blob.encrypted_block_format,
        "{repo}: inner config JSON differs"
    );
    assert_eq!(resealed.to_bytes(), bytes, "{repo}: outer JSON differs");

    let wrong = derive_format_key(&blob.key_algo, "wrong password", &blob.unique_id).unwrap();
    assert_eq!(
        blob.decrypt_config(&wrong),
        Err(FormatError::InvalidPassword)
    );

    let hasher = HashAlgorithm::parse(&cfg.hash)
        .unwrap()
        .hasher(&cfg.secret)
        .unwrap();
    let encryptor = ContentEncryptor::new(
        EncryptionAlgorithm::parse(&cfg.encryption).unwrap(),
        &cfg.master_key,
    )
    .unwrap();
    Opened {
        blob,
        format_key,
        cfg,
        hasher,
        encryptor,
    }
}

fn check_blobcfg(repo: &str, o: &Opened) {
    let bytes = read(repo, "kopia.blobcfg");
    let cfg = decrypt_blobcfg(&bytes, &o.format_key, &o.blob.unique_id).unwrap();
    assert_eq!(cfg, BlobCfg::default());
    assert_eq!(
        encrypt_blobcfg(&cfg, &o.format_key, &o.blob.unique_id, nonce_of(&bytes)),
        bytes
    );
}

fn check_maintenance(repo: &str, o: &Opened) {
    let bytes = read(repo, "kopia.maintenance");
    let mut key = [0u8; 32];
    derive_aux_key(
        &o.cfg,
        &o.format_key,
        &o.blob.unique_id,
        MAINTENANCE_KEY_PURPOSE,
        &mut key,
    );
    let schedule = decrypt_schedule(&bytes, &key).unwrap();
    assert!(!schedule.runs.is_empty());
    assert_eq!(
        encrypt_schedule(&schedule, &key, nonce_of(&bytes)).unwrap(),
        bytes,
        "{repo}: schedule JSON differs"
    );
}

/// A blob-crypto blob: decrypts, is named after the hash of its plaintext, and re-encrypts to
/// kopia's bytes under kopia's name.
fn check_blob_crypto(repo: &str, o: &Opened, blob_id: &str, prefix: &str) -> Vec<u8> {
    let body = read(repo, blob_id);
    let plaintext = decrypt_blob(&o.encryptor, blob_id, &body).unwrap();
    let rest = &blob_id[prefix.len()..];
    let suffix = rest.split_once('-').map_or("", |(_, s)| s);
    let (id, resealed) = encrypt_blob(
        &o.hasher,
        &o.encryptor,
        prefix,
        suffix,
        &plaintext,
        nonce_of(&body),
    );
    assert_eq!(id, blob_id);
    assert_eq!(resealed, body);
    plaintext
}

#[test]
fn default_repository() {
    let o = open("default", "fixture-pass<&>");
    assert_eq!(o.blob.key_algo, "scrypt-65536-8-1");
    assert_eq!(o.cfg, {
        let mut want = RepositoryConfig::new_default([0; 32], [0; 32]);
        want.secret = o.cfg.secret.clone();
        want.master_key = o.cfg.master_key.clone();
        want
    });
    check_blobcfg("default", &o);
    check_maintenance("default", &o);

    check_blob_crypto(
        "default",
        &o,
        "xn0_895576a961081625bbe22b739df827b6-s04cfffe16fbbcf44147-c1",
        "xn0_",
    );
    let log = check_blob_crypto(
        "default",
        &o,
        "_log_20261122050024_427f_1795323624_1795323624_1_ac966f18fbc752cdac8b8d00af7b86e2",
        "_log_20261122050024_427f_1795323624_1795323624_1_",
    );
    assert_eq!(&log[..2], [0x1f, 0x8b], "log blobs are gzip");

    let marker_id = "s62f3cb533d50ebb091dde0e7919e7600-s641a04b6a9a191fe147";
    let json = check_blob_crypto("default", &o, marker_id, "s");
    let info: SessionInfo = serde_json::from_slice(&json).unwrap();
    assert_eq!(Some(info.id.as_str()), session_id_of_blob(marker_id));
    assert_eq!(
        gojson::to_vec(&info).unwrap(),
        json,
        "session marker JSON differs"
    );
}

#[test]
fn pbkdf2_sha3_chacha_repository() {
    let o = open("pbkdf2-sha3-chacha", "pw2");
    assert_eq!(o.blob.key_algo, "pbkdf2-sha256-600000");
    assert_eq!(o.hasher.algorithm(), HashAlgorithm::HmacSha3_224);
    assert_eq!(
        o.encryptor.algorithm(),
        EncryptionAlgorithm::Chacha20Poly1305HmacSha256
    );
    check_blobcfg("pbkdf2-sha3-chacha", &o);
    // A 28-byte hash: the IV is its last 16 bytes.
    check_blob_crypto(
        "pbkdf2-sha3-chacha",
        &o,
        "xn0_ba24c66b399349f9f3ad079f1f62741a4036554f93c1d5c80742863d-s5b14f4a59fab4bc3147-c1",
        "xn0_",
    );
}

#[test]
fn format_v1_repository() {
    let o = open("format-v1", "pw3");
    assert_eq!(o.cfg.version, 1);
    assert!(!o.cfg.enable_password_change);
    assert_eq!(o.cfg.effective_index_version(), 1);
    assert!(!o.cfg.epoch_parameters.enabled);
    check_blobcfg("format-v1", &o);
    // Keys for auxiliary data come from the password here.
    check_maintenance("format-v1", &o);
    check_blob_crypto("format-v1", &o, "n44432b17561628bd1c978f8b2e9b56f7", "n");

    let pack = read(
        "format-v1",
        "q5bb20330ee160d14ad3f82c39e8a9c68-sfc8eb079e76be7e9147",
    );
    let replica = recover_replica(&pack).expect("v1 packs start with the format blob");
    assert_eq!(replica, read("format-v1", "kopia.repository"));
    let replica_len = 2 + replica.len() + 32 + 2;
    assert_eq!(
        kmover_format::format_blob::checksummed_replica(&replica).unwrap(),
        pack[..replica_len]
    );
}
