//! Pack blob framing (§8): preamble, padding, and the postamble that locates the pack-local index
//! used for disaster recovery.
//!
//! Layout: `[format replica] preamble(32 random) contents… padding(1..=4096 random)
//! encrypted-local-index postamble`. Building the local index and encrypting it is the caller's
//! job; this module only does the byte framing.

use std::ops::Range;

use crate::error::{FormatError, Result};

/// Random bytes at the start of every pack (kopia's min and max preamble length are both 32).
pub const PREAMBLE_LEN: usize = 32;
/// Random bytes appended to the local index plaintext before it is hashed and encrypted.
pub const LOCAL_INDEX_RANDOM_TAIL: usize = 32;
/// The local index starts at a multiple of this.
pub const PADDING_UNIT: usize = 4096;
/// kopia looks for the postamble in this many trailing bytes first, then in the whole pack.
pub const POSTAMBLE_SEARCH_LEN: usize = 8192;

const POSTAMBLE_VERSION: u64 = 1;
const CHECKSUM_LEN: usize = 4;
/// The trailing length byte must cover at least the checksum and one more byte.
const MIN_POSTAMBLE_BODY: usize = 5;
/// Longest IV `encode` accepts; real IVs are hash outputs of at most 32 bytes.
pub const MAX_IV_LEN: usize = 64;

/// Random padding needed after `len_before_padding` bytes: always 1..=4096, never 0, so the
/// local index lands on the next 4096-byte boundary.
pub fn padding_len(len_before_padding: usize) -> usize {
    PADDING_UNIT - len_before_padding % PADDING_UNIT
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Postamble {
    /// The full hash of the local index plaintext (with its random tail); also its "content ID"
    /// for encryption.
    pub iv: Vec<u8>,
    pub local_index_offset: u64,
    /// Length of the encrypted local index.
    pub local_index_length: u64,
}

impl Postamble {
    /// The postamble bytes: uvarints of version 1, IV length, IV, offset and length, then a
    /// big-endian CRC-32 (IEEE) of those, then one byte giving the length of everything before it.
    ///
    /// # Panics
    /// If the IV is longer than [`MAX_IV_LEN`] (the length byte could overflow).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.iv.len() <= MAX_IV_LEN,
            "postamble IV of {} bytes is too long",
            self.iv.len()
        );
        let mut out = Vec::with_capacity(3 * 10 + self.iv.len() + CHECKSUM_LEN + 1);
        write_uvarint(&mut out, POSTAMBLE_VERSION);
        write_uvarint(&mut out, self.iv.len() as u64);
        out.extend_from_slice(&self.iv);
        write_uvarint(&mut out, self.local_index_offset);
        write_uvarint(&mut out, self.local_index_length);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        let body_len = u8::try_from(out.len()).expect("bounded by MAX_IV_LEN");
        out.push(body_len);
        out
    }

    /// Where the encrypted local index lies in a pack of `pack_len` bytes whose tail is this
    /// postamble; fails if it would overlap the postamble or run past the end.
    pub fn local_index_range(&self, pack_len: u64) -> Result<Range<u64>> {
        let postamble_len = self.encode_len() as u64;
        let end = self.local_index_offset.checked_add(self.local_index_length);
        match end {
            Some(end) if end <= pack_len.saturating_sub(postamble_len) => {
                Ok(self.local_index_offset..end)
            }
            _ => Err(FormatError::malformed(
                "pack postamble",
                format!(
                    "local index at {}+{} does not fit a pack of {pack_len} bytes",
                    self.local_index_offset, self.local_index_length
                ),
            )),
        }
    }

    fn encode_len(&self) -> usize {
        uvarint_len(POSTAMBLE_VERSION)
            + uvarint_len(self.iv.len() as u64)
            + self.iv.len()
            + uvarint_len(self.local_index_offset)
            + uvarint_len(self.local_index_length)
            + CHECKSUM_LEN
            + 1
    }
}

fn bad(detail: impl Into<String>) -> FormatError {
    FormatError::malformed("pack postamble", detail)
}

/// Parses the postamble at the end of `pack_tail` (the last bytes of a pack, or all of it).
/// The postamble is not authenticated: only the AEAD of the local index it points to is.
pub fn parse_postamble(pack_tail: &[u8]) -> Result<Postamble> {
    let Some((&body_len, before)) = pack_tail.split_last() else {
        return Err(bad("empty pack"));
    };
    let body_len = usize::from(body_len);
    if body_len < MIN_POSTAMBLE_BODY {
        return Err(bad(format!("length byte {body_len} is too small")));
    }
    if body_len > before.len() {
        return Err(bad(format!(
            "length byte {body_len} exceeds the {} bytes available",
            before.len()
        )));
    }
    let body = &before[before.len() - body_len..];
    let (payload, checksum) = body.split_at(body.len() - CHECKSUM_LEN);
    let checksum = u32::from_be_bytes(checksum.try_into().expect("split at 4"));
    if crc32fast::hash(payload) != checksum {
        return Err(bad("checksum mismatch"));
    }

    let mut rest = payload;
    let mut next = |what: &str| -> Result<u64> {
        let (v, n) = read_uvarint(rest).ok_or_else(|| bad(format!("invalid {what}")))?;
        rest = &rest[n..];
        Ok(v)
    };
    let version = next("version flag")?;
    if version != POSTAMBLE_VERSION {
        return Err(bad(format!("unsupported version flag {version}")));
    }
    let iv_len = next("IV length")?;
    let iv_len = usize::try_from(iv_len)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or_else(|| bad("IV exceeds postamble"))?;
    let iv = rest[..iv_len].to_vec();
    rest = &rest[iv_len..];
    let mut next = |what: &str| -> Result<u64> {
        let (v, n) = read_uvarint(rest).ok_or_else(|| bad(format!("invalid {what}")))?;
        rest = &rest[n..];
        // kopia keeps both as uint32.
        if v > u64::from(u32::MAX) {
            return Err(bad(format!("{what} {v} is out of range")));
        }
        Ok(v)
    };
    let local_index_offset = next("local index offset")?;
    let local_index_length = next("local index length")?;
    Ok(Postamble {
        iv,
        local_index_offset,
        local_index_length,
    })
}

fn write_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uvarint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Decodes a uvarint as Go's `binary.Uvarint` does (non-minimal encodings accepted): the value
/// and the bytes used, or `None` when truncated or overflowing 64 bits.
pub(crate) fn read_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    const MAX_LEN: usize = 10;
    let mut x = 0u64;
    for (i, &b) in buf.iter().enumerate().take(MAX_LEN) {
        if b < 0x80 {
            if i == MAX_LEN - 1 && b > 1 {
                return None;
            }
            return Some((x | u64::from(b) << (7 * i), i + 1));
        }
        x |= u64::from(b & 0x7f) << (7 * i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector() -> Postamble {
        Postamble {
            iv: hex::decode("00112233445566778899aabbccddeeff").unwrap(),
            local_index_offset: 8192,
            local_index_length: 300,
        }
    }

    #[test]
    fn spec_postamble_vector() {
        let encoded = vector().encode();
        assert_eq!(
            hex::encode(&encoded),
            "011000112233445566778899aabbccddeeff8040ac0236e4378f1a"
        );
        assert_eq!(encoded.len(), vector().encode_len());
        assert_eq!(parse_postamble(&encoded).unwrap(), vector());
    }

    #[test]
    fn parses_from_a_pack_tail_and_checks_the_range() {
        let mut pack = vec![0xAAu8; 8192 + 300];
        pack.extend_from_slice(&vector().encode());
        let p = parse_postamble(&pack).unwrap();
        assert_eq!(p.local_index_range(pack.len() as u64).unwrap(), 8192..8492);
        assert!(p.local_index_range(pack.len() as u64 - 1).is_err());
        let huge = Postamble {
            local_index_offset: u64::MAX,
            ..vector()
        };
        assert!(huge.local_index_range(u64::MAX).is_err());
    }

    #[test]
    fn rejects_damaged_postambles() {
        let good = vector().encode();
        assert!(parse_postamble(&[]).is_err());
        assert!(parse_postamble(&[4]).is_err(), "length below 5");
        assert!(
            parse_postamble(&good[1..]).is_err(),
            "length byte beyond the data"
        );
        for i in 0..good.len() - 1 {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(parse_postamble(&bad).is_err(), "flipped byte {i}");
        }
        // Correct CRC but version 2.
        let mut body = vec![2u8, 0, 0, 0];
        body.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        body.push(body.len() as u8);
        assert!(
            parse_postamble(&body)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        // Correct CRC but the IV length runs past the body.
        let mut body = vec![1u8, 20, 0, 0];
        body.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        body.push(body.len() as u8);
        assert!(parse_postamble(&body).is_err());
    }

    #[test]
    fn random_tails_never_panic() {
        let mut x: u64 = 99;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let mut tail: Vec<u8> = (0..len).map(|i| (x >> (i % 57)) as u8).collect();
            if let Some(last) = tail.last_mut() {
                *last = (x >> 8) as u8 % 64;
            }
            let _ = parse_postamble(&tail);
        }
    }

    #[test]
    fn padding_is_never_zero() {
        assert_eq!(padding_len(0), 4096);
        assert_eq!(padding_len(1), 4095);
        assert_eq!(padding_len(4095), 1);
        assert_eq!(padding_len(4096), 4096);
        assert_eq!(padding_len(10_000), 2288);
        for n in 0..10_000 {
            let p = padding_len(n);
            assert!((1..=4096).contains(&p) && (n + p).is_multiple_of(4096));
        }
    }

    #[test]
    fn uvarint_matches_go() {
        for v in [0u64, 1, 127, 128, 300, 8192, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write_uvarint(&mut buf, v);
            assert_eq!(buf.len(), uvarint_len(v));
            assert_eq!(read_uvarint(&buf), Some((v, buf.len())));
        }
        assert_eq!(
            read_uvarint(&[0x80, 0x00]),
            Some((0, 2)),
            "non-minimal is accepted"
        );
        assert_eq!(read_uvarint(&[0x80]), None);
        assert_eq!(
            read_uvarint(&[0xff; 9].iter().copied().chain([2]).collect::<Vec<_>>()),
            None
        );
        assert_eq!(read_uvarint(&[0x80; 11]), None);
    }
}
