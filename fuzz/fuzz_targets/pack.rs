//! Pack blobs: `pack::parse_postamble` on the tail and `format_blob::recover_replica` (the
//! format-blob copy at either end of packs of repositories without password change).
#![no_main]

use kmover_format::format_blob::{FormatBlob, checksummed_replica, recover_replica};
use kmover_format::pack::{MAX_IV_LEN, parse_postamble};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(postamble) = parse_postamble(data) {
        if let Ok(range) = postamble.local_index_range(data.len() as u64) {
            assert!(range.start <= range.end && range.end <= data.len() as u64);
            assert_eq!(range.end - range.start, postamble.local_index_length);
        }
        if postamble.iv.len() <= MAX_IV_LEN {
            let encoded = postamble.encode();
            assert_eq!(parse_postamble(&encoded).unwrap(), postamble);
            let mut pack = data.to_vec();
            pack.extend_from_slice(&encoded);
            assert_eq!(parse_postamble(&pack).unwrap(), postamble);
        }
    }

    if let Some(format_bytes) = recover_replica(data) {
        let replica = checksummed_replica(&format_bytes).unwrap();
        assert_eq!(
            recover_replica(&replica).as_deref(),
            Some(&format_bytes[..])
        );
        let _ = FormatBlob::parse(&format_bytes);
    }
});
