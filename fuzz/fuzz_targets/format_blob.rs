//! The JSON documents of the repository: `kopia.repository` (outer), its decrypted config,
//! `kopia.blobcfg`, `kopia.maintenance` and session markers. The input is read as each of them;
//! the encrypted ones are first sealed with a fixed key so the parser behind the tag runs.
#![no_main]

use kmover_format::format_blob::{
    FORMAT_ENCRYPTION, FormatBlob, RepositoryConfig, decrypt_blobcfg, encrypt_blobcfg,
};
use kmover_format::maintenance::{decrypt_schedule, encrypt_schedule};
use kmover_format::session::SessionInfo;
use kmover_fuzz::{FIXED_KEY, MAINTENANCE_AAD, NONCE, UNIQUE_ID, seal, seal_blobcfg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(blob) = FormatBlob::parse(data) {
        assert_eq!(FormatBlob::parse(&blob.to_bytes()).unwrap(), blob);
        assert!(blob.decrypt_config(&FIXED_KEY).is_err());
    }

    if let Ok(cfg) = RepositoryConfig::parse_json(data) {
        check_config(&cfg);
    }

    if let Ok(cfg) = decrypt_blobcfg(&seal_blobcfg(data), &FIXED_KEY, &UNIQUE_ID) {
        let _ = cfg.is_retention_enabled();
        let sealed = encrypt_blobcfg(&cfg, &FIXED_KEY, &UNIQUE_ID, NONCE);
        assert_eq!(
            decrypt_blobcfg(&sealed, &FIXED_KEY, &UNIQUE_ID).unwrap(),
            cfg
        );
    }

    if let Ok(schedule) = decrypt_schedule(&seal(&FIXED_KEY, MAINTENANCE_AAD, data), &FIXED_KEY) {
        // Writing fails only for years Go cannot write; what was written reads back and writes
        // the same bytes (leap seconds make the first reading differ, not the second).
        if let Ok(sealed) = encrypt_schedule(&schedule, &FIXED_KEY, NONCE) {
            let again = decrypt_schedule(&sealed, &FIXED_KEY).unwrap();
            assert_eq!(encrypt_schedule(&again, &FIXED_KEY, NONCE).unwrap(), sealed);
        }
    }

    if let Ok(info) = serde_json::from_slice::<SessionInfo>(data)
        && let Ok(json) = serde_json::to_vec(&info)
    {
        let again: SessionInfo = serde_json::from_slice(&json).unwrap();
        assert_eq!(serde_json::to_vec(&again).unwrap(), json);
    }
});

fn check_config(cfg: &RepositoryConfig) {
    let _ = cfg.validate_for_open();
    let _ = cfg.effective_index_version();
    let _ = cfg.effective_max_pack_size();
    let _ = cfg.ecc_enabled();
    let unsupported = cfg.unsupported_features();

    let json = cfg.to_json();
    let again = RepositoryConfig::parse_json(&json).unwrap();
    assert_eq!(again, *cfg);
    assert_eq!(again.to_json(), json);

    let mut blob = FormatBlob {
        key_algo: "scrypt-65536-8-1".into(),
        encryption: FORMAT_ENCRYPTION.into(),
        unique_id: UNIQUE_ID.to_vec(),
        ..Default::default()
    };
    blob.seal_config(cfg, &FIXED_KEY, NONCE).unwrap();
    let hard_unsupported = unsupported.map(|u| u.iter().any(|f| !f.warn));
    match blob.decrypt_config(&FIXED_KEY) {
        Ok(opened) => {
            assert_eq!(opened, *cfg);
            assert_eq!(hard_unsupported, Ok(false));
        }
        Err(_) => assert_ne!(hard_unsupported, Ok(false)),
    }
}
