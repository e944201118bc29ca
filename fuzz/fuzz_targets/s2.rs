//! `s2::decode_stream` on raw input. The output limit must be exact, and every Snappy-framed
//! stream the `snap` crate decodes must decode to the same bytes here (S2 is a superset).
#![no_main]

use std::io::Read;

use kmover_format::s2::decode_stream;
use libfuzzer_sys::fuzz_target;

const MAX_OUTPUT: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let ours = decode_stream(data, MAX_OUTPUT);
    if let Ok(out) = &ours {
        assert!(out.len() <= MAX_OUTPUT);
        assert_eq!(decode_stream(data, out.len()).as_ref(), Ok(out));
        if !out.is_empty() {
            assert!(decode_stream(data, out.len() - 1).is_err());
        }
    }

    let mut reference = Vec::new();
    if snap::read::FrameDecoder::new(data)
        .read_to_end(&mut reference)
        .is_ok()
        && reference.len() <= MAX_OUTPUT
    {
        assert_eq!(ours.as_ref(), Ok(&reference), "snap decodes this stream");
    }
});
