//! Reading index v1 and v2: every size and offset is validated once in [`Index::parse`], so
//! lookups and iteration index the buffer without further checks failing.

use std::collections::HashMap;
use std::sync::Arc;

use super::builder::{
    EMPTY_KEY_SIZE, V1_DELETED, V1_HEADER_LEN, V1_VALUE_LEN, V2_DELETED, V2_FORMAT_RECORD_LEN,
    V2_HEADER_LEN, V2_MAX_VALUE_LEN, V2_MIN_VALUE_LEN, V2_PACK_RECORD_LEN, key_bytes_prefix,
};
use super::{
    INVALID_COMPRESSION_HEADER_ID, INVALID_ENCRYPTION_KEY_ID, INVALID_FORMAT_VERSION,
    INVALID_PACK_BLOB_ID, IndexEntry, VERSION_1, VERSION_2,
};
use crate::content_id::{ContentId, MAX_HASH_LEN};
use crate::error::{FormatError, Result};

/// Key plus value may not exceed this (kopia's limit for v2).
const MAX_ENTRY_STRIDE: usize = 256;
/// Every this many entries, the leading 8 key bytes are kept in a small table that lookups
/// search first: it stays in cache, so a lookup touches few lines of a large index.
const SAMPLE_STRIDE: usize = 32;

#[derive(Clone, Copy, Debug)]
struct FormatInfo {
    compression_header_id: u32,
    format_version: u8,
    encryption_key_id: u8,
}

/// A parsed index blob (plaintext). Pack blob IDs are interned at parse time, so a lookup
/// allocates nothing beyond cloning an `Arc`.
#[derive(Debug)]
pub struct Index {
    data: Vec<u8>,
    version: u8,
    /// 0 for an empty v1 index.
    key_size: usize,
    value_size: usize,
    count: usize,
    entries_offset: usize,
    base_timestamp: i64,
    v1_overhead: u32,
    /// v2: by pack table position. v1: one per distinct (offset, length) name reference.
    packs: Vec<Arc<str>>,
    /// v1 only: (name offset, name length) → position in `packs`.
    v1_names: HashMap<(u32, u8), u32>,
    formats: Vec<FormatInfo>,
    invalid_pack: Arc<str>,
    /// Key prefixes of entries 0, SAMPLE_STRIDE, 2·SAMPLE_STRIDE, … (empty for small indexes).
    samples: Vec<u64>,
}

fn bad(version: u8, detail: impl Into<String>) -> FormatError {
    FormatError::malformed(
        if version == VERSION_1 {
            "index v1"
        } else {
            "index v2"
        },
        detail,
    )
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn intern(bytes: &[u8]) -> Arc<str> {
    // Pack IDs are ASCII in practice; kopia keeps arbitrary bytes, we keep them readable.
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(bytes).into(),
    }
}

/// `start + count * stride` if it fits within `len`.
fn region_end(start: usize, count: usize, stride: usize, len: usize) -> Option<usize> {
    count
        .checked_mul(stride)?
        .checked_add(start)
        .filter(|&end| end <= len)
}

impl Index {
    /// Parses and validates an index. `encryption_overhead` is subtracted from v1 packed lengths
    /// to give original lengths (v1 does not store them). Trailing bytes are ignored.
    pub fn parse(bytes: Vec<u8>, encryption_overhead: u32) -> Result<Index> {
        match bytes.first() {
            Some(&VERSION_1) => Self::parse_v1(bytes, encryption_overhead),
            Some(&VERSION_2) => Self::parse_v2(bytes),
            Some(&v) => Err(FormatError::Unsupported {
                what: "index version",
                name: v.to_string(),
            }),
            None => Err(FormatError::malformed("index", "empty")),
        }
    }

    fn empty_shell(data: Vec<u8>, version: u8) -> Index {
        Index {
            data,
            version,
            key_size: 0,
            value_size: 0,
            count: 0,
            entries_offset: 0,
            base_timestamp: 0,
            v1_overhead: 0,
            packs: Vec::new(),
            v1_names: HashMap::new(),
            formats: Vec::new(),
            invalid_pack: INVALID_PACK_BLOB_ID.into(),
            samples: Vec::new(),
        }
    }

    fn parse_v1(data: Vec<u8>, overhead: u32) -> Result<Index> {
        let v = VERSION_1;
        let header = data
            .get(..V1_HEADER_LEN)
            .ok_or_else(|| bad(v, "truncated header"))?;
        let key_size = usize::from(header[1]);
        let value_size = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let count = be32(&header[4..8]) as usize;
        if header[1] == EMPTY_KEY_SIZE {
            // Written when there are no entries: nothing can be found in it.
            return Ok(Index::empty_shell(data, v));
        }
        if key_size <= 1 || key_size > MAX_HASH_LEN + 1 {
            return Err(bad(v, format!("invalid key size {key_size}")));
        }
        if value_size != V1_VALUE_LEN {
            return Err(bad(v, format!("invalid entry length {value_size}")));
        }
        let stride = key_size + V1_VALUE_LEN;
        region_end(V1_HEADER_LEN, count, stride, data.len()).ok_or_else(|| {
            bad(
                v,
                format!("{count} entries do not fit in {} bytes", data.len()),
            )
        })?;

        let mut index = Index::empty_shell(data, v);
        index.key_size = key_size;
        index.value_size = V1_VALUE_LEN;
        index.count = count;
        index.entries_offset = V1_HEADER_LEN;
        index.v1_overhead = overhead;
        index.validate_key_prefixes()?;
        index.build_samples();
        for i in 0..count {
            let value = index.value_at(i);
            let name = (be32(&value[8..12]), value[7]);
            if !index.v1_names.contains_key(&name) {
                let start = name.0 as usize;
                let pack = match index.data.get(start..start + usize::from(name.1)) {
                    Some(bytes) => intern(bytes),
                    None => index.invalid_pack.clone(),
                };
                index.v1_names.insert(name, index.packs.len() as u32);
                index.packs.push(pack);
            }
        }
        Ok(index)
    }

    fn parse_v2(data: Vec<u8>) -> Result<Index> {
        let v = VERSION_2;
        let header = data
            .get(..V2_HEADER_LEN)
            .ok_or_else(|| bad(v, "truncated header"))?;
        let key_size = usize::from(header[1]);
        let value_size = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let count = be32(&header[4..8]) as usize;
        let pack_count = be32(&header[8..12]) as usize;
        let format_count = usize::from(header[12]);
        let base_timestamp = i64::from(be32(&header[13..17]));
        if key_size <= 1 || key_size > MAX_HASH_LEN + 1 {
            return Err(bad(v, format!("invalid key size {key_size}")));
        }
        if !(V2_MIN_VALUE_LEN..=V2_MAX_VALUE_LEN).contains(&value_size) {
            return Err(bad(v, format!("invalid entry size {value_size}")));
        }
        let stride = key_size + value_size;
        if stride > MAX_ENTRY_STRIDE {
            return Err(bad(v, "entry stride too big"));
        }
        let len = data.len();
        let packs_offset = region_end(V2_HEADER_LEN, count, stride, len)
            .ok_or_else(|| bad(v, format!("{count} entries do not fit in {len} bytes")))?;
        let formats_offset = region_end(packs_offset, pack_count, V2_PACK_RECORD_LEN, len)
            .ok_or_else(|| {
                bad(
                    v,
                    format!("{pack_count} pack records do not fit in {len} bytes"),
                )
            })?;
        region_end(formats_offset, format_count, V2_FORMAT_RECORD_LEN, len)
            .ok_or_else(|| bad(v, "unable to read formats section"))?;

        let mut packs = Vec::with_capacity(pack_count);
        for rec in data[packs_offset..formats_offset].chunks_exact(V2_PACK_RECORD_LEN) {
            let start = be32(&rec[1..5]) as usize;
            let name = data
                .get(start..start + usize::from(rec[0]))
                .ok_or_else(|| bad(v, "pack blob ID outside the index"))?;
            packs.push(intern(name));
        }
        let formats = data[formats_offset..formats_offset + format_count * V2_FORMAT_RECORD_LEN]
            .chunks_exact(V2_FORMAT_RECORD_LEN)
            .map(|f| FormatInfo {
                compression_header_id: be32(f),
                format_version: f[4],
                encryption_key_id: f[5],
            })
            .collect();

        let mut index = Index::empty_shell(data, v);
        index.key_size = key_size;
        index.value_size = value_size;
        index.count = count;
        index.entries_offset = V2_HEADER_LEN;
        index.base_timestamp = base_timestamp;
        index.packs = packs;
        index.formats = formats;
        index.validate_key_prefixes()?;
        index.build_samples();
        Ok(index)
    }

    /// Every key must be a content ID: prefix byte 0 or `g`..=`z`.
    fn validate_key_prefixes(&self) -> Result<()> {
        for i in 0..self.count {
            let p = self.key_at(i)[0];
            if !(p == 0 || (b'g'..=b'z').contains(&p)) {
                return Err(bad(
                    self.version,
                    format!("entry {i} has invalid content ID prefix byte {p:#04x}"),
                ));
            }
        }
        Ok(())
    }

    fn build_samples(&mut self) {
        if self.count >= 4 * SAMPLE_STRIDE {
            self.samples = (0..self.count)
                .step_by(SAMPLE_STRIDE)
                .map(|i| key_bytes_prefix(self.key_at(i)))
                .collect();
        }
    }

    /// Entries outside the returned range cannot have a key with this 8-byte prefix.
    fn search_range(&self, prefix: u64) -> (usize, usize) {
        if self.samples.is_empty() {
            return (0, self.count);
        }
        // Blocks before the one preceding the first sample >= prefix hold only smaller keys;
        // blocks from the first sample > prefix on hold only greater keys.
        let first_not_less = self.samples.partition_point(|&s| s < prefix);
        let first_greater =
            first_not_less + self.samples[first_not_less..].partition_point(|&s| s <= prefix);
        (
            first_not_less.saturating_sub(1) * SAMPLE_STRIDE,
            (first_greater * SAMPLE_STRIDE).min(self.count),
        )
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The index plaintext this view was parsed from.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    fn entry_bytes(&self, i: usize) -> &[u8] {
        let stride = self.key_size + self.value_size;
        let start = self.entries_offset + i * stride;
        &self.data[start..start + stride]
    }

    fn key_at(&self, i: usize) -> &[u8] {
        &self.entry_bytes(i)[..self.key_size]
    }

    fn value_at(&self, i: usize) -> &[u8] {
        &self.entry_bytes(i)[self.key_size..]
    }

    /// The entry for `id`, if present. IDs of another length than this index's keys are absent.
    pub fn lookup(&self, id: &ContentId) -> Option<IndexEntry> {
        let mut key = [0u8; MAX_HASH_LEN + 1];
        let n = id.write_key(&mut key);
        if n != self.key_size {
            return None;
        }
        let key = &key[..n];
        let (lo, hi) = self.search_range(key_bytes_prefix(key));
        let pos = lo + partition_point(hi - lo, |i| self.key_at(lo + i) < key);
        (pos < hi && self.key_at(pos) == key).then(|| self.decode(*id, self.value_at(pos)))
    }

    /// All entries in content ID order.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        // Keys were validated at parse, so `from_key` cannot fail here.
        (0..self.count).filter_map(|i| {
            ContentId::from_key(self.key_at(i))
                .ok()
                .map(|id| self.decode(id, self.value_at(i)))
        })
    }

    /// The pack blob IDs entries refer to by position (see [`RawEntry::pack`]).
    pub fn pack_ids(&self) -> &[Arc<str>] {
        &self.packs
    }

    /// All entries in key order without building [`IndexEntry`] values: `f` gets each binary key
    /// (prefix byte + hash) and its fields, the pack as a position in [`Index::pack_ids`].
    pub fn for_each_raw(&self, mut f: impl FnMut(&[u8], RawEntry)) {
        for i in 0..self.count {
            f(self.key_at(i), self.decode_raw(self.value_at(i)));
        }
    }

    fn decode(&self, content_id: ContentId, value: &[u8]) -> IndexEntry {
        let raw = self.decode_raw(value);
        IndexEntry {
            content_id,
            timestamp_seconds: raw.timestamp_seconds,
            deleted: raw.deleted,
            pack_blob_id: raw
                .pack
                .and_then(|p| self.packs.get(p as usize))
                .unwrap_or(&self.invalid_pack)
                .clone(),
            pack_offset: raw.pack_offset,
            packed_length: raw.packed_length,
            original_length: raw.original_length,
            compression_header_id: raw.compression_header_id,
            format_version: raw.format_version,
            encryption_key_id: raw.encryption_key_id,
        }
    }

    fn decode_raw(&self, value: &[u8]) -> RawEntry {
        if self.version == VERSION_1 {
            self.decode_v1(value)
        } else {
            self.decode_v2(value)
        }
    }

    fn decode_v1(&self, v: &[u8]) -> RawEntry {
        let timestamp = u64::from_be_bytes([0, 0, v[0], v[1], v[2], v[3], v[4], v[5]]) as i64;
        let offset_and_flag = be32(&v[12..16]);
        let packed_length = be32(&v[16..20]);
        RawEntry {
            timestamp_seconds: timestamp,
            deleted: offset_and_flag & V1_DELETED != 0,
            pack: self.v1_names.get(&(be32(&v[8..12]), v[7])).copied(),
            pack_offset: offset_and_flag & !V1_DELETED,
            packed_length,
            // As kopia computes it (a uint32 subtraction).
            original_length: packed_length.wrapping_sub(self.v1_overhead),
            compression_header_id: 0,
            format_version: v[6],
            encryption_key_id: 0,
        }
    }

    fn decode_v2(&self, v: &[u8]) -> RawEntry {
        let offset_and_flag = be32(&v[4..8]);
        let high = v.get(18).copied().unwrap_or(0);
        let format = v.get(16).map_or(0, |&f| usize::from(f));
        let pack = u32::from(u16::from_be_bytes([v[14], v[15]]))
            | u32::from(v.get(17).copied().unwrap_or(0)) << 16;
        let (compression_header_id, format_version, encryption_key_id) =
            match self.formats.get(format) {
                Some(f) => (
                    f.compression_header_id,
                    f.format_version,
                    f.encryption_key_id,
                ),
                None => (
                    INVALID_COMPRESSION_HEADER_ID,
                    INVALID_FORMAT_VERSION,
                    INVALID_ENCRYPTION_KEY_ID,
                ),
            };
        RawEntry {
            timestamp_seconds: i64::from(be32(&v[0..4])) + self.base_timestamp,
            deleted: offset_and_flag & V2_DELETED != 0,
            pack: ((pack as usize) < self.packs.len()).then_some(pack),
            pack_offset: offset_and_flag & !V2_DELETED,
            packed_length: be24(&v[11..14]) | u32::from(high & 0x0f) << 24,
            original_length: be24(&v[8..11]) | u32::from(high >> 4) << 24,
            compression_header_id,
            format_version,
            encryption_key_id,
        }
    }
}

/// An entry's fields as stored, with its pack as a position in [`Index::pack_ids`] (`None` when
/// the reference points outside the index: kopia then reports [`INVALID_PACK_BLOB_ID`]).
/// Timestamps are within 0..2^48 (v1 stores 48 bits, v2 a 32-bit base plus 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub timestamp_seconds: i64,
    pub deleted: bool,
    pub pack: Option<u32>,
    pub pack_offset: u32,
    pub packed_length: u32,
    pub original_length: u32,
    pub compression_header_id: u32,
    pub format_version: u8,
    pub encryption_key_id: u8,
}

/// First index in `0..n` for which `pred` is false (`pred` must be true then false).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::super::IndexBuilder;
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_entries(rng: &mut Rng, n: usize, v1: bool) -> Vec<IndexEntry> {
        let packs: Vec<Arc<str>> = (0..7)
            .map(|i| format!("p{i:032x}-s0123456789abcdef13c").into())
            .collect();
        (0..n)
            .map(|_| {
                let mut hash = [0u8; 16];
                hash.iter_mut().for_each(|b| *b = rng.next() as u8);
                let prefix = [None, Some(b'k'), Some(b'x'), Some(b'm')][rng.next() as usize % 4];
                let packed = rng.next() as u32 % (1 << 27) + 28;
                IndexEntry {
                    content_id: ContentId::from_hash(prefix, &hash).unwrap(),
                    timestamp_seconds: (rng.next() % (1 << 31)) as i64,
                    deleted: rng.next().is_multiple_of(5),
                    pack_blob_id: packs[rng.next() as usize % packs.len()].clone(),
                    pack_offset: rng.next() as u32 % (1 << 30),
                    packed_length: packed,
                    original_length: if v1 {
                        packed - 28
                    } else {
                        rng.next() as u32 % (1 << 28)
                    },
                    compression_header_id: if v1 {
                        0
                    } else {
                        [0, 0x1100, 0x1101][rng.next() as usize % 3]
                    },
                    format_version: if v1 { 1 } else { 2 + rng.next() as u8 % 2 },
                    encryption_key_id: 0,
                }
            })
            .collect()
    }

    fn build(entries: &[IndexEntry], version: u8) -> Vec<u8> {
        let mut b = IndexBuilder::new();
        entries.iter().cloned().for_each(|e| b.add(e));
        b.build(version).unwrap()
    }

    #[test]
    fn round_trips_v1_and_v2() {
        let mut rng = Rng(42);
        for version in [1u8, 2] {
            let mut entries = random_entries(&mut rng, 3000, version == 1);
            let mut bytes = build(&entries, version);
            // Builds are deterministic; kopia's random tail is ignored by readers.
            assert_eq!(bytes, build(&entries, version));
            bytes.extend_from_slice(&[0x5A; 32]);
            let ix = Index::parse(bytes, 28).unwrap();
            assert_eq!(ix.version(), version);
            assert_eq!(ix.len(), entries.len());
            entries.sort_by_key(|e| e.content_id);
            assert_eq!(ix.iter().collect::<Vec<_>>(), entries);
            for e in &entries {
                assert_eq!(ix.lookup(&e.content_id).as_ref(), Some(e));
                let mut missing = e.content_id.hash().to_vec();
                missing[15] ^= 1;
                let missing = ContentId::from_hash(e.content_id.prefix(), &missing).unwrap();
                if !entries.iter().any(|x| x.content_id == missing) {
                    assert_eq!(ix.lookup(&missing), None);
                }
            }
            let shorter = ContentId::parse("0011").unwrap();
            assert_eq!(
                ix.lookup(&shorter),
                None,
                "other key lengths are never found"
            );
        }
    }

    #[test]
    fn lookups_with_equal_key_prefixes_across_sample_blocks() {
        // Runs of keys sharing their first 8 bytes span several sample blocks.
        let mut entries = Vec::new();
        let template = random_entries(&mut Rng(3), 1, false).remove(0);
        for group in 0..5u8 {
            for i in 0..150u16 {
                let mut hash = [group; 16];
                hash[14..].copy_from_slice(&(i * 2).to_be_bytes());
                let content_id = ContentId::from_hash(None, &hash).unwrap();
                entries.push(IndexEntry {
                    content_id,
                    pack_offset: u32::from(i),
                    ..template.clone()
                });
            }
        }
        let ix = Index::parse(build(&entries, 2), 0).unwrap();
        assert!(!ix.samples.is_empty());
        for e in &entries {
            assert_eq!(ix.lookup(&e.content_id).as_ref(), Some(e));
            let mut odd = e.content_id.hash().to_vec();
            odd[15] += 1;
            assert_eq!(ix.lookup(&ContentId::from_hash(None, &odd).unwrap()), None);
        }
        for probe in [[0u8; 16], [0xFF; 16], [2; 16]] {
            let id = ContentId::from_hash(None, &probe).unwrap();
            assert_eq!(
                ix.lookup(&id).is_some(),
                entries.iter().any(|e| e.content_id == id)
            );
        }
    }

    #[test]
    fn v1_original_length_uses_the_overhead_like_kopia() {
        let mut rng = Rng(7);
        let mut e = random_entries(&mut rng, 1, true).remove(0);
        e.packed_length = 10;
        e.original_length = 10u32.wrapping_sub(28);
        let ix = Index::parse(build(std::slice::from_ref(&e), 1), 28).unwrap();
        assert_eq!(
            ix.lookup(&e.content_id).unwrap().original_length,
            10u32.wrapping_sub(28)
        );
        let ix = Index::parse(build(std::slice::from_ref(&e), 1), 0).unwrap();
        assert_eq!(ix.lookup(&e.content_id).unwrap().original_length, 10);
    }

    #[test]
    fn out_of_range_references_give_kopias_markers() {
        let mut rng = Rng(9);
        let mut e = random_entries(&mut rng, 1, false).remove(0);
        e.packed_length = 100;
        e.original_length = 90;
        let mut bytes = build(std::slice::from_ref(&e), 2);
        assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), 16);
        // Widen the entry to 18 bytes by hand: format index 5 and pack index bits 16..23 = 1.
        let key = bytes[1] as usize;
        let mut widened = bytes[..V2_HEADER_LEN].to_vec();
        widened[3] = 18;
        widened.extend_from_slice(&bytes[V2_HEADER_LEN..V2_HEADER_LEN + key + 16]);
        widened.extend_from_slice(&[5, 1]);
        let tables = &bytes[V2_HEADER_LEN + key + 16..];
        // Pack name offsets move by the two inserted bytes.
        let mut tables = tables.to_vec();
        let off = be32(&tables[1..5]) + 2;
        tables[1..5].copy_from_slice(&off.to_be_bytes());
        widened.extend_from_slice(&tables);
        let got = Index::parse(widened, 0)
            .unwrap()
            .lookup(&e.content_id)
            .unwrap();
        assert_eq!(&*got.pack_blob_id, INVALID_PACK_BLOB_ID);
        assert_eq!(got.format_version, 0xFF);
        assert_eq!(got.compression_header_id, 0xFFFF);
        assert_eq!(got.encryption_key_id, 0xFF);
        assert_eq!(got.packed_length, e.packed_length);

        // v1: a pack name beyond the data.
        let mut v1e = random_entries(&mut rng, 1, true).remove(0);
        v1e.original_length = v1e.packed_length - 28;
        bytes = build(&[v1e.clone()], 1);
        let name_offset = V1_HEADER_LEN + bytes[1] as usize + 8;
        bytes[name_offset..name_offset + 4].copy_from_slice(&0xFFFF_0000u32.to_be_bytes());
        let got = Index::parse(bytes, 28)
            .unwrap()
            .lookup(&v1e.content_id)
            .unwrap();
        assert_eq!(&*got.pack_blob_id, INVALID_PACK_BLOB_ID);
    }

    #[test]
    fn v2_base_timestamp_is_added() {
        let mut rng = Rng(11);
        let e = random_entries(&mut rng, 1, false).remove(0);
        let mut bytes = build(std::slice::from_ref(&e), 2);
        bytes[13..17].copy_from_slice(&1000u32.to_be_bytes());
        let got = Index::parse(bytes, 0)
            .unwrap()
            .lookup(&e.content_id)
            .unwrap();
        assert_eq!(got.timestamp_seconds, e.timestamp_seconds + 1000);
    }

    #[test]
    fn header_validation() {
        let mut rng = Rng(5);
        let v2 = build(&random_entries(&mut rng, 3, false), 2);
        let v1 = {
            let mut es = random_entries(&mut rng, 3, true);
            es.iter_mut()
                .for_each(|e| e.original_length = e.packed_length - 28);
            build(&es, 1)
        };
        assert!(Index::parse(Vec::new(), 0).is_err());
        assert!(Index::parse(vec![3; 40], 0).is_err(), "unknown version");
        let mutate = |src: &[u8], at: usize, value: &[u8]| {
            let mut b = src.to_vec();
            b[at..at + value.len()].copy_from_slice(value);
            Index::parse(b, 0)
        };
        assert!(mutate(&v2, 1, &[1]).is_err(), "key size 1");
        assert!(
            mutate(&v2, 1, &[34]).is_err(),
            "key longer than a content ID"
        );
        assert!(mutate(&v2, 2, &[0, 15]).is_err(), "entry size 15");
        assert!(mutate(&v2, 2, &[0, 20]).is_err(), "entry size 20");
        assert!(mutate(&v2, 4, &[0, 0, 1, 0]).is_err(), "too many entries");
        assert!(
            mutate(&v2, 8, &[0xFF, 0xFF, 0xFF, 0xFF]).is_err(),
            "too many packs"
        );
        assert!(mutate(&v2, 12, &[0xFF]).is_err(), "too many formats");
        assert!(mutate(&v2, 17, b"A").is_err(), "invalid prefix byte");
        assert!(mutate(&v1, 2, &[0, 21]).is_err(), "v1 value size");
        assert!(
            mutate(&v1, 4, &[0, 1, 0, 0]).is_err(),
            "v1 entries beyond data"
        );
        assert!(mutate(&v1, 1, &[1]).is_err(), "v1 key size 1");
        let empty = mutate(&v1, 1, &[0xFF]).unwrap();
        assert!(
            empty.is_empty() && empty.iter().next().is_none(),
            "key size 255 means empty"
        );
    }

    #[test]
    fn damaged_indexes_never_panic() {
        let mut rng = Rng(1234);
        let mut v1e = random_entries(&mut rng, 40, true);
        v1e.iter_mut()
            .for_each(|e| e.original_length = e.packed_length - 28);
        let originals = [
            build(&random_entries(&mut rng, 40, false), 2),
            build(&v1e, 1),
        ];
        for original in &originals {
            for cut in 0..original.len() {
                if let Ok(ix) = Index::parse(original[..cut].to_vec(), 28) {
                    ix.iter().for_each(drop);
                }
            }
            for _ in 0..20_000 {
                let mut data = original.clone();
                for _ in 0..1 + rng.next() % 3 {
                    let pos = rng.next() as usize % data.len();
                    data[pos] = rng.next() as u8;
                }
                if rng.next().is_multiple_of(4) {
                    let pos = rng.next() as usize % data.len();
                    data.truncate(pos.max(1));
                }
                if let Ok(ix) = Index::parse(data, 28) {
                    let entries: Vec<IndexEntry> = ix.iter().take(10).collect();
                    for e in entries {
                        let _ = ix.lookup(&e.content_id);
                    }
                }
            }
        }
        for _ in 0..20_000 {
            let len = rng.next() as usize % 100;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(b) = data.first_mut() {
                *b = 1 + (rng.next() % 2) as u8;
            }
            if let Ok(ix) = Index::parse(data, 28) {
                ix.iter().for_each(drop);
            }
        }
    }
}
