//! Content compression (§7): the 4-byte big-endian header ID followed by the compressed stream.
//!
//! Writable: zstd, gzip, pgzip (plain gzip members) and raw DEFLATE. S2 and LZ4 are decoded only,
//! so that repositories written with them stay readable. kopia's decoders are general decoders of
//! each format, so our encoder output need not match kopia's byte for byte.

use std::cell::RefCell;
use std::fmt;
use std::io::{Cursor, Read, Write};

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, InBuffer, OutBuffer, ResetDirective};

use crate::error::{FormatError, Result};
use crate::s2;

/// Length of the header ID that starts every compressed payload.
pub const HEADER_LEN: usize = 4;

/// Output buffers are reserved up front up to this size; beyond it they grow as data arrives, so
/// a generous `max_output` costs nothing unless the data really is that large.
const MAX_PREALLOCATION: usize = 32 << 20;

/// A compression header ID as stored in payloads and index v2 format tables. 0 means "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CompressorId(pub u32);

impl CompressorId {
    pub const NONE: CompressorId = CompressorId(0);

    pub fn from_name(name: &str) -> Result<Self> {
        header_id_for_name(name).map(CompressorId)
    }

    pub fn name(self) -> Option<&'static str> {
        name_for_header_id(self.0)
    }

    /// Whether [`compress`] can produce this format (S2 and LZ4 are read-only).
    pub fn is_writable(self) -> bool {
        self.0 == 0 || lookup(self.0).is_some_and(|c| c.codec.is_writable())
    }
}

impl fmt::Display for CompressorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown-{:#x}", self.0),
        }
    }
}

#[derive(Clone, Copy)]
enum Codec {
    /// gzip and pgzip: both are standard gzip members.
    Gzip(u32),
    /// Index into the per-thread zstd contexts, and the zstd C level.
    Zstd(usize, i32),
    S2,
    Lz4,
    Deflate(u32),
}

impl Codec {
    fn is_writable(self) -> bool {
        !matches!(self, Codec::S2 | Codec::Lz4)
    }
}

struct Compressor {
    name: &'static str,
    header_id: u32,
    codec: Codec,
}

const GZIP_DEFAULT: u32 = 6;
const ZSTD_CONTEXTS: usize = 4;

// klauspost/compress/zstd documents SpeedFastest ~ level 1, SpeedDefault ~ level 3,
// SpeedBetterCompression ~ level 7-8 and SpeedBestCompression as its strongest (it maps zstd
// levels >= 10 to it); level 11 keeps "best" at a usable speed.
#[rustfmt::skip]
const COMPRESSORS: [Compressor; 18] = [
    Compressor { name: "gzip", header_id: 0x1000, codec: Codec::Gzip(GZIP_DEFAULT) },
    Compressor { name: "gzip-best-speed", header_id: 0x1001, codec: Codec::Gzip(1) },
    Compressor { name: "gzip-best-compression", header_id: 0x1002, codec: Codec::Gzip(9) },
    Compressor { name: "zstd", header_id: 0x1100, codec: Codec::Zstd(0, 3) },
    Compressor { name: "zstd-fastest", header_id: 0x1101, codec: Codec::Zstd(1, 1) },
    Compressor { name: "zstd-better-compression", header_id: 0x1102, codec: Codec::Zstd(2, 7) },
    Compressor { name: "zstd-best-compression", header_id: 0x1103, codec: Codec::Zstd(3, 11) },
    Compressor { name: "s2-default", header_id: 0x1200, codec: Codec::S2 },
    Compressor { name: "s2-better", header_id: 0x1201, codec: Codec::S2 },
    Compressor { name: "s2-parallel-4", header_id: 0x1202, codec: Codec::S2 },
    Compressor { name: "s2-parallel-8", header_id: 0x1203, codec: Codec::S2 },
    Compressor { name: "pgzip", header_id: 0x1300, codec: Codec::Gzip(GZIP_DEFAULT) },
    Compressor { name: "pgzip-best-speed", header_id: 0x1301, codec: Codec::Gzip(1) },
    Compressor { name: "pgzip-best-compression", header_id: 0x1302, codec: Codec::Gzip(9) },
    Compressor { name: "lz4", header_id: 0x1400, codec: Codec::Lz4 },
    Compressor { name: "deflate-default", header_id: 0x1500, codec: Codec::Deflate(GZIP_DEFAULT) },
    Compressor { name: "deflate-best-speed", header_id: 0x1501, codec: Codec::Deflate(1) },
    Compressor { name: "deflate-best-compression", header_id: 0x1502, codec: Codec::Deflate(9) },
];

fn lookup(header_id: u32) -> Option<&'static Compressor> {
    COMPRESSORS.iter().find(|c| c.header_id == header_id)
}

/// Every compressor name kopia knows, "none" first.
pub fn compressor_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("none").chain(COMPRESSORS.iter().map(|c| c.name))
}

pub fn header_id_for_name(name: &str) -> Result<u32> {
    if name == "none" {
        return Ok(0);
    }
    COMPRESSORS
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.header_id)
        .ok_or_else(|| FormatError::Unsupported {
            what: "compressor",
            name: name.to_string(),
        })
}

pub fn name_for_header_id(id: u32) -> Option<&'static str> {
    if id == 0 {
        return Some("none");
    }
    lookup(id).map(|c| c.name)
}

fn unsupported(header_id: u32) -> FormatError {
    FormatError::Unsupported {
        what: "compressor",
        name: format!("{header_id:#x}"),
    }
}

/// Compresses `data` into `BE32(header_id) || stream`. Returns `None` when that would not be
/// smaller than `data` (kopia then stores the data raw with header ID 0), and for header ID 0.
pub fn compress(header_id: u32, data: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    Ok(compress_into(header_id, data, &mut out)?.then_some(out))
}

/// [`compress`] into `out` (cleared first), so that a caller can reuse one buffer for many
/// payloads. Returns whether the payload is smaller than `data`; when not, `out` holds nothing
/// useful and the data is to be stored raw.
pub fn compress_into(header_id: u32, data: &[u8], out: &mut Vec<u8>) -> Result<bool> {
    out.clear();
    if header_id == 0 {
        return Ok(false);
    }
    let c = lookup(header_id).ok_or_else(|| unsupported(header_id))?;
    let header = header_id.to_be_bytes();
    match c.codec {
        Codec::Zstd(slot, level) => zstd_compress(slot, level, &header, data, out)?,
        Codec::Gzip(level) => {
            reserve_header(out, &header, data.len());
            let mut enc = flate2::write::GzEncoder::new(&mut *out, flate2::Compression::new(level));
            enc.write_all(data)
                .and_then(|_| enc.finish())
                .map_err(encode_error)?;
        }
        Codec::Deflate(level) => {
            reserve_header(out, &header, data.len());
            let mut enc =
                flate2::write::DeflateEncoder::new(&mut *out, flate2::Compression::new(level));
            enc.write_all(data)
                .and_then(|_| enc.finish())
                .map_err(encode_error)?;
        }
        Codec::S2 | Codec::Lz4 => {
            return Err(FormatError::Unsupported {
                what: "compressor for writing",
                name: c.name.to_string(),
            });
        }
    };
    Ok(out.len() < data.len())
}

/// Bytes from the start of a payload that [`worth_compressing`] compresses as a sample.
pub const PROBE_LEN: usize = 64 << 10;

/// Whether compressing `data` with `header_id` is likely to shrink it, judged by compressing its
/// first [`PROBE_LEN`] bytes: a sample that saves less than 1/64 of its size means the payload
/// (random or already compressed data) would almost surely be stored raw anyway, so the full
/// compression pass is skipped. Short payloads are always worth trying.
pub fn worth_compressing(header_id: u32, data: &[u8]) -> Result<bool> {
    if header_id == 0 {
        return Ok(false);
    }
    if data.len() < 4 * PROBE_LEN {
        return Ok(true);
    }
    PROBE_BUFFER.with_borrow_mut(|out| {
        compress_into(header_id, &data[..PROBE_LEN], out)?;
        Ok(out.len() < PROBE_LEN - PROBE_LEN / 64)
    })
}

fn reserve_header(out: &mut Vec<u8>, header: &[u8; HEADER_LEN], data_len: usize) {
    // Output larger than the input is discarded anyway, so this rarely reallocates.
    out.reserve(HEADER_LEN + data_len / 2 + 64);
    out.extend_from_slice(header);
}

fn encode_error(e: std::io::Error) -> FormatError {
    FormatError::malformed("compression", e.to_string())
}

thread_local! {
    // Creating a zstd context allocates its tables; reusing one per level and thread keeps the
    // hot path allocation-light.
    static ZSTD_CCTX: RefCell<[Option<CCtx<'static>>; ZSTD_CONTEXTS]> = const { RefCell::new([None, None, None, None]) };
    static ZSTD_DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
    static PROBE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn zstd_error(what: &'static str, code: usize) -> FormatError {
    FormatError::malformed(what, zstd_safe::get_error_name(code).to_string())
}

fn context_allocation_failed() -> FormatError {
    FormatError::Limit("cannot allocate a zstd context".to_string())
}

fn zstd_compress(
    slot: usize,
    level: i32,
    header: &[u8; HEADER_LEN],
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    ZSTD_CCTX.with_borrow_mut(|contexts| {
        let cctx = match &mut contexts[slot] {
            Some(c) => c,
            empty => {
                let mut c = CCtx::try_create().ok_or_else(context_allocation_failed)?;
                c.set_parameter(CParameter::CompressionLevel(level))
                    .map_err(|e| zstd_error("zstd level", e))?;
                // klauspost writes a checksum by default; keep that integrity check.
                c.set_parameter(CParameter::ChecksumFlag(true))
                    .map_err(|e| zstd_error("zstd checksum", e))?;
                empty.insert(c)
            }
        };
        out.reserve(HEADER_LEN + zstd_safe::compress_bound(data.len()));
        out.extend_from_slice(header);
        let mut cursor = Cursor::new(out);
        cursor.set_position(HEADER_LEN as u64);
        let r = cctx.compress2(&mut cursor, data);
        if let Err(code) = r {
            let _ = cctx.reset(ResetDirective::SessionOnly);
            return Err(zstd_error("zstd compression", code));
        }
        Ok(())
    })
}

/// Decompresses a payload written under `header_id`: checks that the payload's own 4-byte header
/// equals it, and fails rather than produce more than `max_output` bytes (pass the index's
/// original length; it guards against decompression bombs).
pub fn decompress(header_id: u32, payload: &[u8], max_output: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(header_id, payload, max_output, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (replacing what it held), reusing its memory where the codec can:
/// callers that only check a payload avoid a fresh buffer (a page fault per 4 KiB) each time.
pub fn decompress_into(
    header_id: u32,
    payload: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    let c = lookup(header_id).ok_or_else(|| unsupported(header_id))?;
    let Some((header, stream)) = payload.split_first_chunk::<HEADER_LEN>() else {
        return Err(FormatError::malformed(
            "compressed payload",
            "shorter than the compression header",
        ));
    };
    let found = u32::from_be_bytes(*header);
    if found != header_id {
        return Err(FormatError::malformed(
            "compressed payload",
            format!("invalid compression header, expected {header_id:08x} but got {found:08x}"),
        ));
    }
    *out = match c.codec {
        Codec::Zstd(..) => return zstd_decompress(stream, max_output, out),
        Codec::Gzip(_) => read_bounded(
            flate2::bufread::MultiGzDecoder::new(stream),
            max_output,
            "gzip stream",
        ),
        Codec::Deflate(_) => read_bounded(
            flate2::bufread::DeflateDecoder::new(stream),
            max_output,
            "deflate stream",
        ),
        Codec::Lz4 => read_bounded(
            lz4_flex::frame::FrameDecoder::new(stream),
            max_output,
            "lz4 frame",
        ),
        Codec::S2 => s2::decode_stream(stream, max_output),
    }?;
    Ok(())
}

fn initial_capacity(max_output: usize) -> usize {
    max_output.min(MAX_PREALLOCATION)
}

fn too_large(max_output: usize) -> FormatError {
    FormatError::Limit(format!(
        "decompressed data exceeds the expected {max_output} bytes"
    ))
}

fn read_bounded(reader: impl Read, max_output: usize, what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(initial_capacity(max_output));
    // One byte beyond the limit tells "exactly max_output" apart from "more".
    let limit = (max_output as u64).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| FormatError::malformed(what, e.to_string()))?;
    if out.len() > max_output {
        return Err(too_large(max_output));
    }
    Ok(out)
}

fn zstd_decompress(stream: &[u8], max_output: usize, out: &mut Vec<u8>) -> Result<()> {
    // klauspost's reader returns nothing for an empty stream, which its writer emits for empty input.
    if stream.is_empty() {
        return Ok(());
    }
    ZSTD_DCTX.with_borrow_mut(|slot| {
        let dctx = match slot {
            Some(d) => d,
            empty => empty.insert(DCtx::try_create().ok_or_else(context_allocation_failed)?),
        };
        let r = zstd_decode_frames(dctx, stream, max_output, out);
        if r.is_err() {
            // Leave the context ready for the next payload.
            let _ = dctx.reset(ResetDirective::SessionOnly);
        }
        r
    })
}

fn zstd_decode_frames(
    dctx: &mut DCtx<'static>,
    stream: &[u8],
    max_output: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    const MIN_GROWTH: usize = 64 << 10;
    let cap_limit = max_output.saturating_add(1);
    if out.capacity() < initial_capacity(max_output) {
        out.reserve_exact(initial_capacity(max_output));
    }
    let mut input = InBuffer::around(stream);
    loop {
        if out.len() == out.capacity() {
            if out.capacity() >= cap_limit {
                return Err(too_large(max_output));
            }
            let target = out
                .capacity()
                .saturating_mul(2)
                .max(MIN_GROWTH)
                .min(cap_limit);
            out.reserve_exact(target - out.len());
        }
        let pos = out.len();
        let hint = {
            let mut ob = OutBuffer::around_pos(out, pos);
            dctx.decompress_stream(&mut ob, &mut input)
                .map_err(|e| zstd_error("zstd stream", e))?
        };
        if out.len() > max_output {
            return Err(too_large(max_output));
        }
        let input_done = input.pos() == stream.len();
        if hint == 0 && input_done {
            return Ok(());
        }
        // zstd wants more input, has room for output, and there is none left: truncated.
        if hint != 0 && input_done && out.len() < out.capacity() {
            return Err(FormatError::malformed("zstd stream", "truncated frame"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let words = ["kopia ", "content ", "pack ", "index ", "zstd ", "blob "];
        let mut out = Vec::with_capacity(len + 16);
        let mut x: u32 = 7;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn names_and_ids_cover_the_kopia_table() {
        let expected = [
            ("none", 0),
            ("gzip", 0x1000),
            ("gzip-best-speed", 0x1001),
            ("gzip-best-compression", 0x1002),
            ("zstd", 0x1100),
            ("zstd-fastest", 0x1101),
            ("zstd-better-compression", 0x1102),
            ("zstd-best-compression", 0x1103),
            ("s2-default", 0x1200),
            ("s2-better", 0x1201),
            ("s2-parallel-4", 0x1202),
            ("s2-parallel-8", 0x1203),
            ("pgzip", 0x1300),
            ("pgzip-best-speed", 0x1301),
            ("pgzip-best-compression", 0x1302),
            ("lz4", 0x1400),
            ("deflate-default", 0x1500),
            ("deflate-best-speed", 0x1501),
            ("deflate-best-compression", 0x1502),
        ];
        for (name, id) in expected {
            assert_eq!(header_id_for_name(name).unwrap(), id, "{name}");
            assert_eq!(name_for_header_id(id), Some(name));
            assert_eq!(CompressorId(id).to_string(), name);
        }
        assert_eq!(compressor_names().count(), expected.len());
        assert!(header_id_for_name("zstd-ultra").is_err());
        assert_eq!(name_for_header_id(0x1600), None);
        assert_eq!(CompressorId(0x1600).to_string(), "unknown-0x1600");
        assert!(!CompressorId(0x1200).is_writable());
        assert!(!CompressorId(0x1400).is_writable());
        assert!(CompressorId(0x1101).is_writable());
    }

    #[test]
    fn every_writable_compressor_round_trips() {
        let data = sample(100_000);
        for c in COMPRESSORS.iter().filter(|c| c.codec.is_writable()) {
            let packed = compress(c.header_id, &data)
                .unwrap()
                .unwrap_or_else(|| panic!("{} did not shrink", c.name));
            assert_eq!(&packed[..4], &c.header_id.to_be_bytes(), "{}", c.name);
            assert!(packed.len() < data.len());
            assert_eq!(
                decompress(c.header_id, &packed, data.len()).unwrap(),
                data,
                "{}",
                c.name
            );
            // Twice, so the second call reuses the thread's zstd contexts.
            let again = compress(c.header_id, &data).unwrap().unwrap();
            assert_eq!(
                decompress(c.header_id, &again, data.len()).unwrap(),
                data,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn incompressible_data_is_left_raw() {
        let mut data = vec![0u8; 4096];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for id in [0x1000, 0x1100, 0x1101, 0x1300, 0x1500] {
            assert_eq!(compress(id, &data).unwrap(), None, "{id:#x}");
        }
        assert_eq!(
            compress(0x1100, b"").unwrap(),
            None,
            "empty input never shrinks"
        );
        assert_eq!(
            compress(0, b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
            None
        );
    }

    #[test]
    fn probe_skips_random_data_and_keeps_compressible_data() {
        let mut random = vec![0u8; 8 * PROBE_LEN];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let text = sample(8 * PROBE_LEN);
        for id in [0x1000, 0x1101, 0x1500] {
            assert!(!worth_compressing(id, &random).unwrap(), "{id:#x} random");
            assert!(worth_compressing(id, &text).unwrap(), "{id:#x} text");
            assert!(
                worth_compressing(id, &random[..PROBE_LEN]).unwrap(),
                "{id:#x} short"
            );
        }
        assert!(!worth_compressing(0, &text).unwrap());
    }

    #[test]
    fn compress_into_reuses_the_buffer_and_matches_compress() {
        let text = sample(100_000);
        let mut out = b"stale bytes".to_vec();
        for id in [0x1000, 0x1101, 0x1500] {
            assert!(compress_into(id, &text, &mut out).unwrap());
            assert_eq!(Some(out.clone()), compress(id, &text).unwrap());
            assert_eq!(decompress(id, &out, text.len()).unwrap(), text);
        }
    }

    #[test]
    fn read_only_and_unknown_compressors_are_refused() {
        for id in [0x1200, 0x1203, 0x1400] {
            assert!(matches!(
                compress(id, &sample(1000)),
                Err(FormatError::Unsupported { .. })
            ));
        }
        assert!(matches!(
            compress(0x9999, b"x"),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(matches!(
            decompress(0x9999, b"\0\0\x99\x99", 10),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(decompress(0, b"\0\0\0\0", 10).is_err());
    }

    #[test]
    fn header_must_match_the_index() {
        let data = sample(10_000);
        let packed = compress(0x1100, &data).unwrap().unwrap();
        let err = decompress(0x1101, &packed, data.len()).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected 00001101 but got 00001100"),
            "{err}"
        );
        assert!(decompress(0x1100, &packed[..3], data.len()).is_err());
    }

    #[test]
    fn output_limit_is_enforced_for_every_codec() {
        let data = sample(50_000);
        for c in COMPRESSORS.iter().filter(|c| c.codec.is_writable()) {
            let packed = compress(c.header_id, &data).unwrap().unwrap();
            assert_eq!(
                decompress(c.header_id, &packed, data.len()).unwrap().len(),
                data.len()
            );
            let err = decompress(c.header_id, &packed, data.len() - 1).unwrap_err();
            assert!(matches!(err, FormatError::Limit(_)), "{}: {err}", c.name);
            assert!(decompress(c.header_id, &packed, 0).is_err(), "{}", c.name);
        }
    }

    #[test]
    fn bomb_is_stopped_without_allocating_the_claimed_size() {
        let zeros = vec![0u8; 8 << 20];
        let packed = compress(0x1100, &zeros).unwrap().unwrap();
        assert!(packed.len() < 4096);
        assert!(matches!(
            decompress(0x1100, &packed, 1 << 20),
            Err(FormatError::Limit(_))
        ));
        // A huge limit is fine: buffers grow with the data, not with the limit.
        assert_eq!(
            decompress(0x1100, &packed, usize::MAX).unwrap().len(),
            zeros.len()
        );
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let data = sample(30_000);
        for c in COMPRESSORS.iter().filter(|c| c.codec.is_writable()) {
            let packed = compress(c.header_id, &data).unwrap().unwrap();
            for cut in [packed.len() - 1, packed.len() / 2, 5] {
                assert!(
                    decompress(c.header_id, &packed[..cut], data.len()).is_err(),
                    "{} cut at {cut}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn concatenated_zstd_frames_decode() {
        let a = sample(5000);
        let b = sample(7000);
        let fa = compress(0x1100, &a).unwrap().unwrap();
        let fb = compress(0x1100, &b).unwrap().unwrap();
        let mut joined = fa.clone();
        joined.extend_from_slice(&fb[4..]);
        let out = decompress(0x1100, &joined, a.len() + b.len()).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut x: u64 = 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ids: Vec<u32> = COMPRESSORS.iter().map(|c| c.header_id).collect();
        for round in 0..3000 {
            let id = ids[round % ids.len()];
            let len = (next() % 200) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if payload.len() >= 4 {
                payload[..4].copy_from_slice(&id.to_be_bytes());
            }
            let _ = decompress(id, &payload, 1 << 16);
        }
        // Mutations of valid payloads.
        let data = sample(20_000);
        for c in COMPRESSORS.iter().filter(|c| c.codec.is_writable()) {
            let packed = compress(c.header_id, &data).unwrap().unwrap();
            for _ in 0..200 {
                let mut p = packed.clone();
                let pos = 4 + (next() as usize % (p.len() - 4));
                p[pos] ^= (next() as u8) | 1;
                let _ = decompress(c.header_id, &p, data.len());
            }
        }
    }
}
