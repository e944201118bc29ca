//! Content IDs: an optional one-letter prefix (`g`..`z`) and a 16–32 byte hash.
//!
//! The binary form (the index key) is one prefix byte (0 when there is none) followed by the hash,
//! so byte order of keys equals the order of the text form.

use std::fmt;

use crate::error::{FormatError, Result};

pub const MAX_HASH_LEN: usize = 32;

/// Fixed-size and `Copy`, so index lookups never allocate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentId {
    prefix: u8,
    len: u8,
    hash: [u8; MAX_HASH_LEN],
}

impl ContentId {
    pub fn from_hash(prefix: Option<u8>, hash: &[u8]) -> Result<Self> {
        if hash.len() > MAX_HASH_LEN {
            return Err(FormatError::InvalidContentId {
                id: hex::encode(hash),
                reason: "hash too long",
            });
        }
        let prefix = match prefix {
            None | Some(0) => 0,
            Some(p @ b'g'..=b'z') => p,
            Some(_) => {
                return Err(FormatError::InvalidContentId {
                    id: hex::encode(hash),
                    reason: "invalid prefix, must be empty or a single letter between 'g' and 'z'",
                });
            }
        };
        let mut h = [0u8; MAX_HASH_LEN];
        h[..hash.len()].copy_from_slice(hash);
        Ok(ContentId {
            prefix,
            len: hash.len() as u8,
            hash: h,
        })
    }

    /// Parses the text form: an odd length means the first character is the prefix.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason| FormatError::InvalidContentId {
            id: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Ok(ContentId {
                prefix: 0,
                len: 0,
                hash: [0; MAX_HASH_LEN],
            });
        }
        let bytes = s.as_bytes();
        let (prefix, hex_part) = if bytes.len() % 2 == 1 {
            if bytes.len() == 1 {
                return Err(bad("id too short"));
            }
            match bytes[0] {
                p @ b'g'..=b'z' => (p, &s[1..]),
                _ => return Err(bad("invalid content prefix")),
            }
        } else {
            (0, s)
        };
        if hex_part.len() > 2 * MAX_HASH_LEN {
            return Err(bad("hash too long"));
        }
        let mut hash = [0u8; MAX_HASH_LEN];
        let n = hex_part.len() / 2;
        hex::decode_to_slice(hex_part, &mut hash[..n]).map_err(|_| bad("invalid content hash"))?;
        Ok(ContentId {
            prefix,
            len: n as u8,
            hash,
        })
    }

    /// Decodes the binary index key (prefix byte + hash).
    pub fn from_key(key: &[u8]) -> Result<Self> {
        let Some((&p, hash)) = key.split_first() else {
            return Err(FormatError::malformed("index key", "empty key"));
        };
        ContentId::from_hash(if p == 0 { None } else { Some(p) }, hash)
    }

    pub fn prefix(&self) -> Option<u8> {
        (self.prefix != 0).then_some(self.prefix)
    }

    pub fn has_prefix(&self) -> bool {
        self.prefix != 0
    }

    pub fn hash(&self) -> &[u8] {
        &self.hash[..self.len as usize]
    }

    /// The encryption IV: the last 16 bytes of the hash.
    pub fn iv(&self) -> &[u8] {
        let h = self.hash();
        &h[h.len().saturating_sub(16)..]
    }

    /// Writes the binary key into `out` and returns its length (1 + hash length).
    pub fn write_key(&self, out: &mut [u8; MAX_HASH_LEN + 1]) -> usize {
        out[0] = self.prefix;
        out[1..=self.len as usize].copy_from_slice(self.hash());
        1 + self.len as usize
    }

    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + self.len as usize);
        k.push(self.prefix);
        k.extend_from_slice(self.hash());
        k
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.prefix == 0
    }
}

impl Ord for ContentId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.prefix, self.hash()).cmp(&(other.prefix, other.hash()))
    }
}

impl PartialOrd for ContentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix != 0 {
            write!(f, "{}", self.prefix as char)?;
        }
        for b in self.hash() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl std::str::FromStr for ContentId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        ContentId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kopia_sorted_ids_round_trip_and_order() {
        let ids = [
            "",
            "0012abcd",
            "12345678",
            "ffffffff",
            "g01234567",
            "g01234568",
            "yffffffff",
            "z00000000",
            "z00000001",
            "zffffffff",
        ];
        let parsed: Vec<ContentId> = ids.iter().map(|s| ContentId::parse(s).unwrap()).collect();
        for (s, id) in ids.iter().zip(&parsed) {
            assert_eq!(&id.to_string(), s);
        }
        for w in parsed.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
            assert!(w[0].key() < w[1].key());
        }
    }

    #[test]
    fn from_hash_cases() {
        assert_eq!(
            ContentId::from_hash(None, &[0x12, 0x34])
                .unwrap()
                .to_string(),
            "1234"
        );
        assert_eq!(
            ContentId::from_hash(Some(b'x'), &[0x12, 0x34])
                .unwrap()
                .to_string(),
            "x1234"
        );
        assert!(ContentId::from_hash(Some(b'A'), &[1]).is_err());
        assert!(ContentId::from_hash(None, &[0u8; 33]).is_err());
    }

    #[test]
    fn parse_errors() {
        for bad in ["x", "x1", "xx", "A00", "@abcd"] {
            assert!(ContentId::parse(bad).is_err(), "{bad}");
        }
        let long = format!("x{}", "0".repeat(66));
        assert!(ContentId::parse(&long).is_err());
        assert!(
            ContentId::parse("ABCD").is_ok(),
            "Go's hex decoder accepts uppercase"
        );
    }

    #[test]
    fn iv_is_last_16_bytes() {
        let h: Vec<u8> = (0..32).collect();
        let id = ContentId::from_hash(Some(b'k'), &h).unwrap();
        assert_eq!(id.iv(), &h[16..]);
    }
}
