//! `object::decode_indirect_index`: what decodes re-encodes to a document that decodes to the
//! same entries, and re-encoding that is byte-identical.
#![no_main]

use kmover_format::object::{decode_indirect_index, encode_indirect_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = decode_indirect_index(data) else {
        return;
    };
    for e in &entries {
        let _ = e.end_offset();
        let _ = e.object.is_directory();
    }
    let encoded = encode_indirect_index(&entries);
    let again = decode_indirect_index(&encoded).unwrap();
    assert_eq!(again, entries);
    assert_eq!(encode_indirect_index(&again), encoded);
});
