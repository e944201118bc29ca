//! Decoder for the S2 stream format of klauspost/compress, which kopia's `s2-*` compressors write.
//!
//! The stream is Snappy's framing format (chunks of `type, LE24 length, body`) opened by the
//! identifier `S2sTwO` (or Snappy's `sNaPpY`). Data chunks carry a masked CRC-32C of their
//! decoded bytes. Compressed chunks hold one block: a uvarint decoded length, then Snappy's
//! literal/copy tags, where S2 reuses a one-byte-offset copy with offset 0 as "repeat the last
//! offset" with extended lengths. Blocks decode independently. kmover reads S2, never writes it.

use crate::error::{FormatError, Result};
use crate::pack::read_uvarint;

const CHUNK_HEADER_LEN: usize = 4;
const CHECKSUM_LEN: usize = 4;
/// Largest decoded block the S2 reader accepts.
const MAX_BLOCK_SIZE: usize = 4 << 20;
/// Blocks after a Snappy stream identifier are limited as in Snappy.
const MAX_SNAPPY_BLOCK_SIZE: usize = 1 << 16;
/// Largest data chunk: the worst-case encoding of a maximal block (the block, a 4-byte length
/// varint and a 4-byte literal header) plus the checksum.
const MAX_DATA_CHUNK_LEN: usize = MAX_BLOCK_SIZE + 4 + 4 + CHECKSUM_LEN;

const CHUNK_COMPRESSED: u8 = 0x00;
const CHUNK_UNCOMPRESSED: u8 = 0x01;
const CHUNK_STREAM_IDENTIFIER: u8 = 0xff;
/// Types 0x02..=0x7f are reserved and must be understood; 0x80..=0xfe (padding, index, …) are
/// skipped.
const LAST_UNSKIPPABLE_CHUNK: u8 = 0x7f;
const S2_MAGIC: &[u8; 6] = b"S2sTwO";
const SNAPPY_MAGIC: &[u8; 6] = b"sNaPpY";

/// Up-front reservation cap: output beyond it grows with the decoded data.
const MAX_PREALLOCATION: usize = 32 << 20;

fn corrupt(detail: impl Into<String>) -> FormatError {
    FormatError::malformed("s2 stream", detail)
}

/// Decodes a whole S2 (or Snappy-framed) stream. Fails instead of producing more than
/// `max_output` bytes. An empty input is an empty stream, as for klauspost's reader.
pub fn decode_stream(input: &[u8], max_output: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(
        max_output
            .min(MAX_PREALLOCATION)
            .min(input.len().saturating_mul(8)),
    );
    let mut rest = input;
    let mut seen_identifier = false;
    let mut snappy = false;
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<CHUNK_HEADER_LEN>() else {
            return Err(corrupt("truncated chunk header"));
        };
        let chunk_type = header[0];
        let len = u32::from_le_bytes([header[1], header[2], header[3], 0]) as usize;
        if !seen_identifier && chunk_type != CHUNK_STREAM_IDENTIFIER {
            return Err(corrupt("missing stream identifier"));
        }
        if len > after.len() {
            return Err(corrupt(format!("chunk of {len} bytes is truncated")));
        }
        let (body, next) = after.split_at(len);
        rest = next;
        match chunk_type {
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                if !(CHECKSUM_LEN..=MAX_DATA_CHUNK_LEN).contains(&len) {
                    return Err(corrupt(format!("invalid data chunk length {len}")));
                }
                let (checksum, data) = body.split_at(CHECKSUM_LEN);
                let checksum = u32::from_le_bytes(checksum.try_into().expect("split at 4"));
                let start = out.len();
                if chunk_type == CHUNK_COMPRESSED {
                    let (decoded_len, header_len) = decoded_len(data)?;
                    check_block_size(decoded_len, snappy, start, max_output)?;
                    out.resize(start + decoded_len, 0);
                    decode_block(&data[header_len..], &mut out[start..])?;
                } else {
                    check_block_size(data.len(), snappy, start, max_output)?;
                    out.extend_from_slice(data);
                }
                if masked_crc32c(&out[start..]) != checksum {
                    return Err(corrupt("crc mismatch"));
                }
            }
            CHUNK_STREAM_IDENTIFIER => {
                snappy = match body {
                    b if b == S2_MAGIC => false,
                    b if b == SNAPPY_MAGIC => true,
                    _ => return Err(corrupt("invalid stream identifier")),
                };
                seen_identifier = true;
            }
            t if t <= LAST_UNSKIPPABLE_CHUNK => {
                return Err(FormatError::Unsupported {
                    what: "s2 chunk type",
                    name: format!("{t:#04x}"),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn check_block_size(len: usize, snappy: bool, produced: usize, max_output: usize) -> Result<()> {
    let max_block = if snappy {
        MAX_SNAPPY_BLOCK_SIZE
    } else {
        MAX_BLOCK_SIZE
    };
    if len > max_block {
        return Err(corrupt(format!("block of {len} bytes exceeds {max_block}")));
    }
    if len > max_output - produced {
        return Err(FormatError::Limit(format!(
            "decompressed data exceeds the expected {max_output} bytes"
        )));
    }
    Ok(())
}

/// The block's decoded length and the length of its uvarint header.
fn decoded_len(block: &[u8]) -> Result<(usize, usize)> {
    match read_uvarint(block) {
        Some((v, n)) if v <= u64::from(u32::MAX) => Ok((
            usize::try_from(v).map_err(|_| corrupt("block too large"))?,
            n,
        )),
        _ => Err(corrupt("invalid block length")),
    }
}

const TAG_LITERAL: u8 = 0;
const TAG_COPY1: u8 = 1;
const TAG_COPY2: u8 = 2;
#[cfg(test)]
const TAG_COPY4: u8 = 3;

/// Decodes one S2 block body (after its length varint) into `dst`, which must be exactly the
/// decoded length. Copies may only reach back within the block.
fn decode_block(src: &[u8], dst: &mut [u8]) -> Result<()> {
    // Reads `n` little-endian bytes at `s`, or fails when the block ends early.
    fn le(src: &[u8], s: usize, n: usize) -> Result<u32> {
        let bytes = src.get(s..s + n).ok_or_else(|| corrupt("truncated tag"))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    }

    let mut s = 0usize;
    let mut d = 0usize;
    let mut offset = 0usize;
    while s < src.len() {
        let tag = src[s];
        let length;
        match tag & 0x03 {
            TAG_LITERAL => {
                let x = tag >> 2;
                let (n, header) = match x {
                    0..60 => (u64::from(x), 1),
                    60..=63 => {
                        let extra = usize::from(x - 59);
                        (u64::from(le(src, s + 1, extra)?), 1 + extra)
                    }
                    _ => unreachable!("six-bit value"),
                };
                s += header;
                let len = n + 1;
                if len > (dst.len() - d) as u64 || len > (src.len() - s) as u64 {
                    return Err(corrupt("literal exceeds the block"));
                }
                let len = len as usize;
                dst[d..d + len].copy_from_slice(&src[s..s + len]);
                d += len;
                s += len;
                continue;
            }
            TAG_COPY1 => {
                let b1 = le(src, s + 1, 1)? as usize;
                s += 2;
                let short_len = usize::from((tag >> 2) & 0x07);
                let new_offset = (usize::from(tag & 0xe0) << 3) | b1;
                if new_offset == 0 {
                    // S2 repeat: keep the previous offset; lengths 5..7 take extension bytes.
                    length = 4 + match short_len {
                        5 => {
                            s += 1;
                            le(src, s - 1, 1)? as usize + 4
                        }
                        6 => {
                            s += 2;
                            le(src, s - 2, 2)? as usize + (1 << 8)
                        }
                        7 => {
                            s += 3;
                            le(src, s - 3, 3)? as usize + (1 << 16)
                        }
                        n => n,
                    };
                } else {
                    offset = new_offset;
                    length = 4 + short_len;
                }
            }
            TAG_COPY2 => {
                offset = le(src, s + 1, 2)? as usize;
                length = 1 + usize::from(tag >> 2);
                s += 3;
            }
            _ => {
                // Copy with a 4-byte offset (tag 3).
                offset = le(src, s + 1, 4)? as usize;
                length = 1 + usize::from(tag >> 2);
                s += 5;
            }
        }
        if offset == 0 || offset > d || length > dst.len() - d {
            return Err(corrupt(format!(
                "invalid copy (offset {offset}, length {length}) at {d}"
            )));
        }
        copy_within_block(dst, d, offset, length);
        d += length;
    }
    if d != dst.len() {
        return Err(corrupt(format!(
            "block decoded to {d} bytes instead of {}",
            dst.len()
        )));
    }
    Ok(())
}

/// LZ77 copy of `length` bytes from `offset` back. Overlapping copies repeat the period, so
/// each step can copy everything written so far from the source start (doubling each time).
fn copy_within_block(dst: &mut [u8], d: usize, offset: usize, length: usize) {
    let src = d - offset;
    let mut copied = 0;
    while copied < length {
        let n = (offset + copied).min(length - copied);
        dst.copy_within(src..src + n, d + copied);
        copied += n;
    }
}

/// The Snappy/S2 checksum: CRC-32C, rotated and offset so that CRCs of CRCs are not trivial.
fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI_REFLECTED
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

/// CRC-32C (Castagnoli), slicing by 8.
fn crc32c(data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `blocks` (already encoded block bodies with their varint) as a stream.
    fn stream(magic: &[u8; 6], chunks: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0xff, 6, 0, 0];
        out.extend_from_slice(magic);
        for (t, body) in chunks {
            out.push(*t);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes()[..3]);
            out.extend_from_slice(body);
        }
        out
    }

    fn data_chunk(t: u8, decoded: &[u8], payload: &[u8]) -> (u8, Vec<u8>) {
        let mut body = masked_crc32c(decoded).to_le_bytes().to_vec();
        body.extend_from_slice(payload);
        (t, body)
    }

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let bytewise = long.iter().fold(!0u32, |crc, &b| {
            CRC32C_TABLES[0][((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
        });
        assert_eq!(crc32c(&long), !bytewise);
    }

    #[test]
    fn hand_built_block_with_every_tag() {
        // "abcd" literal, copy2 (off 4, len 4), copy1 (off 8, len 4), repeat (len 4), repeat with
        // one extension byte (len 4+4+1 = 9, overlapping), copy4 (off 2, len 3), literal with a
        // one-byte length.
        let expected = b"abcdabcdabcdabcdabcdabcdadadXYZ".to_vec();
        let mut block = Vec::new();
        block.push(expected.len() as u8);
        block.extend_from_slice(&[3 << 2, b'a', b'b', b'c', b'd']);
        block.extend_from_slice(&[(3 << 2) | TAG_COPY2, 4, 0]);
        block.extend_from_slice(&[TAG_COPY1, 8]);
        block.extend_from_slice(&[TAG_COPY1, 0]);
        block.extend_from_slice(&[(5 << 2) | TAG_COPY1, 0, 1]);
        block.extend_from_slice(&[(2 << 2) | TAG_COPY4, 2, 0, 0, 0]);
        block.extend_from_slice(&[60 << 2, 2, b'X', b'Y', b'Z']);
        let s = stream(S2_MAGIC, &[data_chunk(CHUNK_COMPRESSED, &expected, &block)]);
        assert_eq!(decode_stream(&s, 1000).unwrap(), expected);
    }

    #[test]
    fn snappy_stream_with_uncompressed_and_skippable_chunks() {
        let s = stream(
            SNAPPY_MAGIC,
            &[
                (0xfe, vec![0; 10]),
                data_chunk(CHUNK_UNCOMPRESSED, b"hello ", b"hello "),
                (0x99, vec![1, 2, 3]),
                data_chunk(CHUNK_UNCOMPRESSED, b"world", b"world"),
            ],
        );
        assert_eq!(decode_stream(&s, 100).unwrap(), b"hello world");
        // A second identifier in the middle (concatenated streams) is accepted.
        let mut two = s.clone();
        two.extend_from_slice(&stream(
            S2_MAGIC,
            &[data_chunk(CHUNK_UNCOMPRESSED, b"!", b"!")],
        ));
        assert_eq!(decode_stream(&two, 100).unwrap(), b"hello world!");
    }

    #[test]
    fn empty_and_identifier_only_streams_are_empty() {
        assert_eq!(decode_stream(b"", 0).unwrap(), b"");
        assert_eq!(decode_stream(&stream(S2_MAGIC, &[]), 0).unwrap(), b"");
    }

    #[test]
    fn structural_errors() {
        let good = stream(S2_MAGIC, &[data_chunk(CHUNK_UNCOMPRESSED, b"abc", b"abc")]);
        // Missing identifier.
        assert!(decode_stream(&good[10..], 100).is_err());
        // Bad CRC.
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(
            decode_stream(&bad, 100)
                .unwrap_err()
                .to_string()
                .contains("crc")
        );
        // Truncations at every length.
        for cut in 1..good.len() {
            if cut == 10 {
                continue; // exactly the identifier: a valid empty stream
            }
            assert!(decode_stream(&good[..cut], 100).is_err(), "cut {cut}");
        }
        // Unknown magic, reserved chunk type, short data chunk.
        assert!(decode_stream(&stream(b"S2sTwX", &[]), 100).is_err());
        assert!(matches!(
            decode_stream(&stream(S2_MAGIC, &[(0x02, vec![])]), 100),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(decode_stream(&stream(S2_MAGIC, &[(CHUNK_COMPRESSED, vec![0, 0])]), 100).is_err());
        // Output limit.
        assert!(matches!(
            decode_stream(&good, 2),
            Err(FormatError::Limit(_))
        ));
    }

    #[test]
    fn snappy_blocks_are_limited_to_64k() {
        let big = vec![7u8; MAX_SNAPPY_BLOCK_SIZE + 1];
        let chunk = data_chunk(CHUNK_UNCOMPRESSED, &big, &big);
        assert!(
            decode_stream(
                &stream(SNAPPY_MAGIC, std::slice::from_ref(&chunk)),
                usize::MAX
            )
            .is_err()
        );
        assert_eq!(
            decode_stream(&stream(S2_MAGIC, &[chunk]), usize::MAX).unwrap(),
            big
        );
    }

    #[test]
    fn invalid_copies_are_rejected() {
        let cases: [&[u8]; 6] = [
            &[4, TAG_COPY1, 0],                        // repeat before any offset
            &[4, (3 << 2) | TAG_COPY2, 1, 0],          // copy before any data
            &[3, 1 << 2, b'a', b'b', TAG_COPY2, 0, 0], // offset 0
            &[3, 1 << 2, b'a', b'b', TAG_COPY2, 3, 0], // offset beyond the start
            &[3, 2 << 2, b'a', b'b'],                  // literal longer than the input
            &[4, 0, b'a', (1 << 2) | TAG_COPY1, 1],    // copy longer than the output
        ];
        for block in cases {
            let mut dst = vec![0u8; block[0] as usize];
            assert!(decode_block(&block[1..], &mut dst).is_err(), "{block:?}");
        }
        // Short output: data remains unfilled.
        let mut dst = vec![0u8; 5];
        assert!(decode_block(&[1 << 2, b'a', b'b'], &mut dst).is_err());
    }

    #[test]
    fn overlapping_copy_repeats_the_pattern() {
        let mut dst = vec![0u8; 3 + 50];
        dst[..3].copy_from_slice(b"xyz");
        copy_within_block(&mut dst, 3, 3, 50);
        let expected: Vec<u8> = b"xyz".iter().copied().cycle().take(53).collect();
        assert_eq!(dst, expected);
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let chunk_type = if next() % 2 == 0 {
                CHUNK_COMPRESSED
            } else {
                CHUNK_UNCOMPRESSED
            };
            // Give the decoder a plausible varint so block decoding is exercised.
            if let Some(b) = body.get_mut(4) {
                *b &= 0x3f;
            }
            let s = stream(S2_MAGIC, &[(chunk_type, std::mem::take(&mut body))]);
            let _ = decode_stream(&s, 1 << 16);
            let _ = decode_block(&s[4..], &mut vec![0u8; (next() % 64) as usize]);
        }
    }
}
