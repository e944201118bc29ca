//! Writing a large, already sorted and de-duplicated entry stream as index blobs without holding
//! the entries: one pass sizes the index (entry count, pack and format tables, entry width), a
//! second writes it straight into its final buffer. The bytes are exactly those of
//! `IndexBuilder::build` (a test checks it), and shards are chosen as kopia does (FNV-1a-32 of the
//! content ID text modulo the shard count).
//!
//! The builder of kmover-format keeps every entry in a hash map (over 100 bytes each); compacting
//! the index of a repository with tens of millions of contents that way would need gigabytes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use kmover_format::ContentId;
use kmover_format::content_id::MAX_HASH_LEN;
use kmover_format::index::{IndexEntry, VERSION_1, VERSION_2};

use crate::error::{RepoError, Result};

const V1_HEADER_LEN: usize = 8;
const V1_VALUE_LEN: usize = 20;
const V1_EMPTY_KEY_SIZE: u8 = 0xFF;
const V2_HEADER_LEN: usize = 17;
const V2_PACK_RECORD_LEN: usize = 5;
const V2_FORMAT_RECORD_LEN: usize = 6;
const DELETED_BIT: u32 = 0x8000_0000;
const V2_MAX_FORMATS: usize = 255;
const V2_MAX_PACKS: usize = 1 << 24;
const V2_MAX_SHORT_PACKS: usize = 1 << 16;
const V2_MAX_CONTENT_LENGTH: u32 = 1 << 28;
const V2_MAX_SHORT_CONTENT_LENGTH: u32 = 1 << 24;
const V2_MAX_PACK_OFFSET: u32 = 1 << 30;
/// Spare capacity of every output: a legacy compaction's 32 random bytes and the encryption
/// overhead fit without reallocating, so a large shard is encrypted in its own buffer.
pub const SPARE_CAPACITY: usize = 32 + kmover_format::encryption::OVERHEAD;

type FormatKey = (u32, u8, u8);

fn format_key(e: &IndexEntry) -> FormatKey {
    (
        e.compression_header_id,
        e.format_version,
        e.encryption_key_id,
    )
}

fn limit(msg: String) -> RepoError {
    RepoError::Other(format!("cannot write index: {msg}"))
}

/// FNV-1a-32 of the content ID's text form (kopia's shard selector).
fn fnv1a32_of_id(id: &ContentId) -> u32 {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let step = |h: u32, b: u8| (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    let mut h = 0x811c_9dc5u32;
    if let Some(p) = id.prefix() {
        h = step(h, p);
    }
    for &b in id.hash() {
        h = step(h, HEX[usize::from(b >> 4)]);
        h = step(h, HEX[usize::from(b & 0x0f)]);
    }
    h
}

/// What the sizing pass learns about one shard.
#[derive(Default)]
struct Layout {
    count: usize,
    key_size: usize,
    formats: Vec<FormatKey>,
    format_index: HashMap<FormatKey, u8>,
    /// Pack IDs in order of first appearance.
    packs: Vec<Arc<str>>,
    pack_index: HashMap<Arc<str>, u32>,
    names_len: usize,
    max_packed: u32,
    max_original: u32,
    max_offset: u32,
}

impl Layout {
    fn add(&mut self, e: &IndexEntry) -> Result<()> {
        let key_size = 1 + e.content_id.hash().len();
        if self.count == 0 {
            self.key_size = key_size;
        } else if key_size != self.key_size {
            return Err(limit(format!(
                "inconsistent key length: {key_size} vs {}",
                self.key_size
            )));
        }
        if e.pack_blob_id.len() > 255 {
            return Err(limit(format!(
                "pack blob ID {:?} is longer than 255 bytes",
                e.pack_blob_id
            )));
        }
        self.count += 1;
        let k = format_key(e);
        if let Entry::Vacant(v) = self.format_index.entry(k) {
            if self.formats.len() == V2_MAX_FORMATS {
                return Err(limit(format!("more than {V2_MAX_FORMATS} unique formats")));
            }
            v.insert(self.formats.len() as u8);
            self.formats.push(k);
        }
        if let Entry::Vacant(v) = self.pack_index.entry(e.pack_blob_id.clone()) {
            v.insert(self.packs.len() as u32);
            self.names_len += e.pack_blob_id.len();
            self.packs.push(e.pack_blob_id.clone());
        }
        self.max_packed = self.max_packed.max(e.packed_length);
        self.max_original = self.max_original.max(e.original_length);
        self.max_offset = self.max_offset.max(e.pack_offset);
        Ok(())
    }
}

fn push_key(out: &mut Vec<u8>, id: &ContentId) {
    let mut key = [0u8; MAX_HASH_LEN + 1];
    let n = id.write_key(&mut key);
    out.extend_from_slice(&key[..n]);
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| limit(format!("{what} {v} does not fit 32 bits")))
}

/// How a sorted entry stream splits into kopia's shards: which of the `ceil(count / max)` shards
/// are not empty. Shards are then built one at a time, so only one is ever in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    total_shards: u32,
    /// Shard numbers with entries, ascending.
    non_empty: Vec<u32>,
}

impl ShardPlan {
    /// Counts `entries` (sorted by content ID, one per ID); `max_per_shard` is kopia's limit.
    pub fn new<I, F>(max_per_shard: usize, entries: &F) -> Self
    where
        F: Fn() -> I,
        I: Iterator<Item = IndexEntry>,
    {
        let total = entries().count();
        let shards = total.div_ceil(max_per_shard.max(1)).max(1) as u32;
        let mut counts = vec![0usize; shards as usize];
        if shards == 1 {
            counts[0] = total;
        } else {
            for e in entries() {
                counts[(fnv1a32_of_id(&e.content_id) % shards) as usize] += 1;
            }
        }
        ShardPlan {
            total_shards: shards,
            non_empty: (0..shards).filter(|&s| counts[s as usize] > 0).collect(),
        }
    }

    /// The number of index blobs to write.
    pub fn len(&self) -> usize {
        self.non_empty.len()
    }

    pub fn is_empty(&self) -> bool {
        self.non_empty.is_empty()
    }

    /// Builds the `i`th non-empty shard as index `version`.
    pub fn build<I, F>(&self, i: usize, version: u8, entries: &F) -> Result<Vec<u8>>
    where
        F: Fn() -> I,
        I: Iterator<Item = IndexEntry>,
    {
        let (shards, shard) = (self.total_shards, self.non_empty[i]);
        if shards == 1 {
            return write_one(version, entries);
        }
        write_one(version, &|| {
            entries().filter(move |e| fnv1a32_of_id(&e.content_id) % shards == shard)
        })
    }
}

fn write_one<I, F>(version: u8, entries: &F) -> Result<Vec<u8>>
where
    F: Fn() -> I,
    I: Iterator<Item = IndexEntry>,
{
    let mut layout = Layout::default();
    for e in entries() {
        layout.add(&e)?;
    }
    match version {
        VERSION_1 => write_v1(&layout, entries),
        VERSION_2 => write_v2(&layout, entries),
        v => Err(limit(format!("unsupported index version {v}"))),
    }
}

fn write_v1<I: Iterator<Item = IndexEntry>>(
    layout: &Layout,
    entries: &impl Fn() -> I,
) -> Result<Vec<u8>> {
    if layout.count == 0 {
        let mut out = vec![VERSION_1, V1_EMPTY_KEY_SIZE];
        out.extend_from_slice(&(V1_VALUE_LEN as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        return Ok(out);
    }
    if layout.formats.iter().any(|f| f.0 != 0 || f.2 != 0) {
        return Err(limit(
            "index v1 cannot record compression or encryption key IDs".into(),
        ));
    }
    if layout.packs.iter().any(|p| p.is_empty()) {
        return Err(limit("index v1 cannot record an empty pack blob ID".into()));
    }
    if layout.max_offset & DELETED_BIT != 0 {
        return Err(limit(format!(
            "pack offset {} is too high for index v1",
            layout.max_offset
        )));
    }
    let extra_offset = V1_HEADER_LEN + layout.count * (layout.key_size + V1_VALUE_LEN);
    to_u32(extra_offset + layout.names_len, "extra data end")?;
    let mut name_offsets: HashMap<&str, u32> = HashMap::with_capacity(layout.packs.len());
    let mut pos = extra_offset;
    for p in &layout.packs {
        name_offsets.insert(p, pos as u32);
        pos += p.len();
    }
    let mut out = Vec::with_capacity(extra_offset + layout.names_len + SPARE_CAPACITY);
    out.push(VERSION_1);
    out.push(layout.key_size as u8);
    out.extend_from_slice(&(V1_VALUE_LEN as u16).to_be_bytes());
    out.extend_from_slice(&to_u32(layout.count, "entry count")?.to_be_bytes());
    for e in entries() {
        push_key(&mut out, &e.content_id);
        let ts_and_flags = ((e.timestamp_seconds as u64) << 16)
            | (u64::from(e.format_version) << 8)
            | e.pack_blob_id.len() as u64;
        out.extend_from_slice(&ts_and_flags.to_be_bytes());
        out.extend_from_slice(&name_offsets[&*e.pack_blob_id].to_be_bytes());
        let offset_and_flag = e.pack_offset | if e.deleted { DELETED_BIT } else { 0 };
        out.extend_from_slice(&offset_and_flag.to_be_bytes());
        out.extend_from_slice(&e.packed_length.to_be_bytes());
    }
    for p in &layout.packs {
        out.extend_from_slice(p.as_bytes());
    }
    Ok(out)
}

fn write_v2<I: Iterator<Item = IndexEntry>>(
    layout: &Layout,
    entries: &impl Fn() -> I,
) -> Result<Vec<u8>> {
    let mut value_len = 16usize;
    if layout.formats.len() > 1 {
        value_len = 17;
    }
    if layout.packs.len() > V2_MAX_PACKS {
        return Err(limit(format!(
            "too many unique pack IDs {} (max {V2_MAX_PACKS})",
            layout.packs.len()
        )));
    }
    if layout.packs.len() > V2_MAX_SHORT_PACKS {
        value_len = value_len.max(18);
    }
    if layout.max_packed >= V2_MAX_CONTENT_LENGTH || layout.max_original >= V2_MAX_CONTENT_LENGTH {
        return Err(limit("maximum content length is too high".into()));
    }
    if layout.max_packed >= V2_MAX_SHORT_CONTENT_LENGTH
        || layout.max_original >= V2_MAX_SHORT_CONTENT_LENGTH
    {
        value_len = 19;
    }
    if layout.max_offset >= V2_MAX_PACK_OFFSET {
        return Err(limit(format!(
            "pack offset {} is too high",
            layout.max_offset
        )));
    }
    if layout.key_size <= 1 {
        return Err(limit(format!("invalid key length {}", layout.key_size)));
    }
    let extra_offset = V2_HEADER_LEN
        + layout.count * (layout.key_size + value_len)
        + layout.packs.len() * V2_PACK_RECORD_LEN
        + layout.formats.len() * V2_FORMAT_RECORD_LEN;
    to_u32(extra_offset + layout.names_len, "extra data end")?;

    let mut out = Vec::with_capacity(extra_offset + layout.names_len + SPARE_CAPACITY);
    out.push(VERSION_2);
    out.push(layout.key_size as u8);
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.extend_from_slice(&to_u32(layout.count, "entry count")?.to_be_bytes());
    out.extend_from_slice(&(layout.packs.len() as u32).to_be_bytes());
    out.push(layout.formats.len() as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    for e in entries() {
        push_key(&mut out, &e.content_id);
        let mut v = [0u8; 19];
        v[0..4].copy_from_slice(&(e.timestamp_seconds as u32).to_be_bytes());
        let offset_and_flag = e.pack_offset | if e.deleted { DELETED_BIT } else { 0 };
        v[4..8].copy_from_slice(&offset_and_flag.to_be_bytes());
        v[8..11].copy_from_slice(&e.original_length.to_be_bytes()[1..]);
        v[11..14].copy_from_slice(&e.packed_length.to_be_bytes()[1..]);
        let pack = layout.pack_index[&e.pack_blob_id];
        v[14..16].copy_from_slice(&(pack as u16).to_be_bytes());
        v[16] = layout.format_index[&format_key(&e)];
        v[17] = (pack >> 16) as u8;
        v[18] = (((e.original_length >> 24) as u8) << 4) | ((e.packed_length >> 24) as u8 & 0x0f);
        out.extend_from_slice(&v[..value_len]);
    }
    let mut name_pos = extra_offset;
    for p in &layout.packs {
        let offset = if p.is_empty() { extra_offset } else { name_pos };
        out.push(p.len() as u8);
        out.extend_from_slice(&(offset as u32).to_be_bytes());
        name_pos += p.len();
    }
    for (compression, format_version, key_id) in &layout.formats {
        out.extend_from_slice(&compression.to_be_bytes());
        out.push(*format_version);
        out.push(*key_id);
    }
    for p in &layout.packs {
        out.extend_from_slice(p.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmover_format::index::{Index, IndexBuilder};

    /// Every shard at once.
    fn write_sorted_shards<I, F>(
        version: u8,
        max_per_shard: usize,
        entries: F,
    ) -> Result<Vec<Vec<u8>>>
    where
        F: Fn() -> I,
        I: Iterator<Item = IndexEntry>,
    {
        let plan = ShardPlan::new(max_per_shard, &entries);
        (0..plan.len())
            .map(|i| plan.build(i, version, &entries))
            .collect()
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_entries(n: usize, seed: u64, packs: u64, formats: u64, big: bool) -> Vec<IndexEntry> {
        let mut rng = Rng(seed);
        let mut b = IndexBuilder::new();
        for _ in 0..n {
            let mut hash = [0u8; 16];
            hash[..8].copy_from_slice(&rng.next().to_be_bytes());
            hash[8..].copy_from_slice(&rng.next().to_be_bytes());
            let prefix = [None, Some(b'k'), Some(b'm'), Some(b'x')][(rng.next() % 4) as usize];
            let len = (rng.next() % if big { 1 << 27 } else { 1 << 20 }) as u32;
            b.add(IndexEntry {
                content_id: ContentId::from_hash(prefix, &hash).unwrap(),
                timestamp_seconds: 1_700_000_000 + (rng.next() % 1000) as i64,
                deleted: rng.next().is_multiple_of(3),
                pack_blob_id: format!("p{:032x}-s1", rng.next() % packs).into(),
                pack_offset: (rng.next() % (1 << 29)) as u32,
                packed_length: len + 28,
                original_length: len,
                compression_header_id: [0, 0x1100][(rng.next() % formats) as usize],
                format_version: 2,
                encryption_key_id: 0,
            });
        }
        b.sorted_entries().into_iter().cloned().collect()
    }

    fn reference(entries: &[IndexEntry], version: u8) -> Vec<u8> {
        let mut b = IndexBuilder::new();
        for e in entries {
            b.add(e.clone());
        }
        b.build(version).unwrap()
    }

    #[test]
    fn bytes_equal_the_format_builders() {
        for (n, packs, formats, big) in [
            (1, 1, 1, false),
            (500, 3, 1, false),
            (2000, 70_000, 2, false),
            (300, 5, 2, true),
        ] {
            let entries = random_entries(n, n as u64 + packs, packs, formats, big);
            let shards = write_sorted_shards(2, 1 << 20, || entries.iter().cloned()).unwrap();
            assert_eq!(shards, vec![reference(&entries, 2)], "v2 n={n}");
            if formats == 1 {
                let v1: Vec<IndexEntry> = entries
                    .iter()
                    .map(|e| IndexEntry {
                        compression_header_id: 0,
                        ..e.clone()
                    })
                    .collect();
                let shards = write_sorted_shards(1, 1 << 20, || v1.iter().cloned()).unwrap();
                assert_eq!(shards, vec![reference(&v1, 1)], "v1 n={n}");
            }
        }
        assert!(
            write_sorted_shards(2, 10, std::iter::empty)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn shards_like_kopia() {
        let entries = random_entries(1000, 7, 4, 1, false);
        let shards = write_sorted_shards(2, 300, || entries.iter().cloned()).unwrap();
        let mut b = IndexBuilder::new();
        for e in &entries {
            b.add(e.clone());
        }
        let expected: Vec<Vec<u8>> = b.shard(300).iter().map(|s| s.build(2).unwrap()).collect();
        assert_eq!(shards.len(), 4);
        assert_eq!(shards, expected);
        let total: usize = shards
            .into_iter()
            .map(|s| Index::parse(s, 28).unwrap().len())
            .sum();
        assert_eq!(total, 1000);
    }
}
