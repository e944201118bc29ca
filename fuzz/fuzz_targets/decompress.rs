//! `compression::decompress` for every header ID kopia knows (and an unknown one).
//!
//! Input: `selector, stream`. Selector bits 0–5 pick the header ID; bit 6 passes the stream as
//! the whole payload (its own header, usually a mismatch) instead of prefixing the chosen header;
//! bit 7 sets the output limit to the stream length instead of 1 MiB, to hit the bomb guard.
#![no_main]

use kmover_format::compression::{CompressorId, compress, compressor_names, decompress};
use libfuzzer_sys::fuzz_target;

const MAX_OUTPUT: usize = 1 << 20;
/// Not a kopia compressor.
const UNKNOWN_HEADER_ID: u32 = 0x1600;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let ids: Vec<u32> = compressor_names()
        .map(|name| CompressorId::from_name(name).unwrap().0)
        .chain([UNKNOWN_HEADER_ID])
        .collect();
    let header_id = ids[usize::from(selector & 0x3f) % ids.len()];
    let payload = if selector & 0x40 != 0 {
        stream.to_vec()
    } else {
        [&header_id.to_be_bytes()[..], stream].concat()
    };
    let max_output = if selector & 0x80 != 0 {
        stream.len()
    } else {
        MAX_OUTPUT
    };

    let Ok(out) = decompress(header_id, &payload, max_output) else {
        return;
    };
    assert!(out.len() <= max_output);
    assert_ne!(
        header_id, 0,
        "header ID 0 is stored raw, never decompressed"
    );
    // The limit is exact: the output's own length passes, one byte less fails.
    assert_eq!(decompress(header_id, &payload, out.len()).unwrap(), out);
    if !out.is_empty() {
        assert!(decompress(header_id, &payload, out.len() - 1).is_err());
    }

    if CompressorId(header_id).is_writable() {
        let writer = recompression_id(header_id);
        if let Some(recompressed) = compress(writer, &out).unwrap() {
            assert_eq!(decompress(writer, &recompressed, out.len()).unwrap(), out);
        }
    }
});

/// The compressor the output is written back with: the same one, except that every zstd level
/// is written at kopia's default level. zstd's C code, built by GCC with ASan, reads a constant
/// table in its optimal parser (levels above 10) that ASan reports as stack-use-after-scope: the
/// table is a global, so the report is false, and the writer is no decoder anyway.
fn recompression_id(header_id: u32) -> u32 {
    const ZSTD_FAMILY: std::ops::RangeInclusive<u32> = 0x1100..=0x11ff;
    if ZSTD_FAMILY.contains(&header_id) {
        CompressorId::from_name("zstd").unwrap().0
    } else {
        header_id
    }
}
