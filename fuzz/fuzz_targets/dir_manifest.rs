//! `snapshot::directory::decode_dir_manifest`: what decodes re-encodes to a listing that decodes
//! to the same value, and re-encoding that is byte-identical.
#![no_main]

use kmover_format::snapshot::directory::{decode_dir_manifest, encode_dir_manifest, mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = decode_dir_manifest(data) else {
        return;
    };
    for e in &dir.entries {
        let _ = e.entry_type.as_str();
        let _ = mode::to_unix(e.mode);
        let _ = e.mtime.to_rfc3339();
        let _ = e.object_id.is_directory();
    }
    let encoded = encode_dir_manifest(&dir);
    let again = decode_dir_manifest(&encoded).unwrap();
    assert_eq!(again, dir);
    assert_eq!(encode_dir_manifest(&again), encoded);
});
