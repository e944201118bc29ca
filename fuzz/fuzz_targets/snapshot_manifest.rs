//! Snapshot manifests and policies (the two JSON payloads of the manifest store). Each decoded
//! value re-encodes to a document that decodes to the same value, byte-identical on re-encoding.
#![no_main]

use kmover_format::snapshot::manifest::{
    SourceInfo, decode_snapshot_manifest, encode_snapshot_manifest, snapshot_labels,
};
use kmover_format::snapshot::policy::{decode_policy, effective_policy, encode_policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_snapshot_manifest(data) {
        if let Ok(labels) = snapshot_labels(&m) {
            assert_eq!(SourceInfo::from_labels(&labels), m.source);
        }
        let _ = m.source.to_string();
        let encoded = encode_snapshot_manifest(&m);
        let again = decode_snapshot_manifest(&encoded).unwrap();
        assert_eq!(again, m);
        assert_eq!(encode_snapshot_manifest(&again), encoded);
    }

    if let Ok(p) = decode_policy(data) {
        // Unknown keys keep their JSON text, which is written HTML-escaped like Go's RawMessage:
        // exact from the first re-encoding on, and every known field is exact at once.
        let encoded = encode_policy(&p);
        let again = decode_policy(&encoded).unwrap();
        assert_eq!(encode_policy(&again), encoded);
        let (mut known, mut known_again) = (p.clone(), again);
        known.clear_unknown();
        known_again.clear_unknown();
        assert_eq!(known_again, known);

        let source = SourceInfo {
            host: "host".into(),
            user_name: "user".into(),
            path: "/home/user/file.txt".into(),
        };
        let (mut merged, _) = effective_policy(&source, &[(SourceInfo::default(), p)]);
        let _ = merged
            .compression
            .compressor_for_file(b"dir/file.txt", 1 << 20);
        let _ = merged.metadata_compression.metadata_compressor();
        // Actions are copied with their unknown keys, which are exact only from the first writing.
        let mut merged_again = decode_policy(&encode_policy(&merged)).unwrap();
        merged_again.clear_unknown();
        merged.clear_unknown();
        assert_eq!(merged_again, merged);
    }
});
