//! A merged, compact table of many indexes: one fixed-width record per content (its hash and a
//! 24-byte value), kopia's merge winner only, sorted, with a bucket table on the leading hash bits
//! so a lookup is one bucket read and a binary search over a few records, however many index
//! blobs went into it. Pack blob IDs and formats are stored once and referenced by position.
//!
//! Records are grouped by (prefix byte, hash length): the prefix is not stored per record, and
//! every group has fixed-width keys (hashes are zero-padded to 16, 28 or 32 bytes, which keeps
//! their order since a group's hashes all have the same length).

use std::collections::HashMap;
use std::sync::Arc;

use kmover_format::ContentId;
use kmover_format::index::{INVALID_PACK_BLOB_ID, Index, IndexEntry, RawEntry};

use crate::error::{RepoError, Result};

/// timestamp (6) · offset and deleted flag (4) · packed length (4) · original length (4) ·
/// pack position (4) · format position (2).
const VALUE_LEN: usize = 24;
const DELETED_BIT: u32 = 0x8000_0000;
/// At most this many leading hash bits select a bucket (16 M buckets).
const MAX_BUCKET_BITS: u32 = 24;
/// Records per bucket the bucket table aims at.
const RECORDS_PER_BUCKET: usize = 4;

type Value = [u8; VALUE_LEN];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Format {
    compression_header_id: u32,
    format_version: u8,
    encryption_key_id: u8,
}

#[derive(Clone, Copy)]
struct Rec<const K: usize> {
    hash: [u8; K],
    value: Value,
}

#[derive(Default)]
struct Table<const K: usize> {
    prefix: u8,
    hash_len: u8,
    recs: Vec<Rec<K>>,
    /// `buckets[b]..buckets[b + 1]`: the records whose leading `bits` hash bits are `b`.
    buckets: Vec<u32>,
    bits: u32,
}

enum Group {
    K16(Table<16>),
    K28(Table<28>),
    K32(Table<32>),
}

macro_rules! with_table {
    ($group:expr, $t:ident => $body:expr) => {
        match $group {
            Group::K16($t) => $body,
            Group::K28($t) => $body,
            Group::K32($t) => $body,
        }
    };
}

fn padded<const K: usize>(hash: &[u8]) -> [u8; K] {
    let mut h = [0u8; K];
    h[..hash.len()].copy_from_slice(hash);
    h
}

fn bucket_of<const K: usize>(hash: &[u8; K], bits: u32) -> usize {
    let lead = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    (u64::from(lead) >> (32 - bits)) as usize
}

impl<const K: usize> Table<K> {
    fn new(prefix: u8, hash_len: u8) -> Self {
        Table {
            prefix,
            hash_len,
            recs: Vec::new(),
            buckets: Vec::new(),
            bits: 0,
        }
    }

    fn find(&self, hash: &[u8]) -> Option<&Value> {
        let h = padded::<K>(hash);
        let b = bucket_of(&h, self.bits);
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let slice = &self.recs[lo..hi];
        slice
            .binary_search_by(|r| r.hash.cmp(&h))
            .ok()
            .map(|i| &slice[i].value)
    }

    /// Sorts by hash with each content's winner first, keeps only winners, builds the buckets.
    fn finish(&mut self, winner_first: impl Fn(&Value, &Value) -> std::cmp::Ordering) {
        // One compacted blob is the common case: already sorted and unique.
        if !self.recs.windows(2).all(|w| w[0].hash < w[1].hash) {
            // Stable sort: it merges the sorted runs the input indexes contribute.
            self.recs.sort_by(|a, b| {
                a.hash
                    .cmp(&b.hash)
                    .then_with(|| winner_first(&a.value, &b.value))
            });
            self.recs.dedup_by(|later, kept| later.hash == kept.hash);
        }
        self.recs.shrink_to_fit();
        let n = self.recs.len();
        self.bits = (n / RECORDS_PER_BUCKET).max(1).ilog2().min(MAX_BUCKET_BITS);
        let count = 1usize << self.bits;
        self.buckets = Vec::with_capacity(count + 1);
        let mut i = 0;
        for b in 0..count {
            while i < n && bucket_of(&self.recs[i].hash, self.bits) < b {
                i += 1;
            }
            self.buckets.push(i as u32);
        }
        self.buckets.push(n as u32);
    }

    fn id_at(&self, i: usize) -> ContentId {
        let prefix = (self.prefix != 0).then_some(self.prefix);
        ContentId::from_hash(prefix, &self.recs[i].hash[..usize::from(self.hash_len)])
            .expect("the prefix and length came from a valid content ID")
    }

    fn memory_bytes(&self) -> usize {
        self.recs.capacity() * size_of::<Rec<K>>() + self.buckets.capacity() * 4
    }
}

impl Group {
    fn new(prefix: u8, hash_len: usize) -> Group {
        let len = hash_len as u8;
        match hash_len {
            0..=16 => Group::K16(Table::new(prefix, len)),
            17..=28 => Group::K28(Table::new(prefix, len)),
            _ => Group::K32(Table::new(prefix, len)),
        }
    }

    fn key(&self) -> (u8, u8) {
        with_table!(self, t => (t.prefix, t.hash_len))
    }

    fn len(&self) -> usize {
        with_table!(self, t => t.recs.len())
    }

    fn push(&mut self, hash: &[u8], value: Value) {
        with_table!(self, t => t.recs.push(Rec { hash: padded(hash), value }))
    }

    fn find(&self, hash: &[u8]) -> Option<&Value> {
        with_table!(self, t => t.find(hash))
    }

    fn at(&self, i: usize) -> (ContentId, &Value) {
        with_table!(self, t => (t.id_at(i), &t.recs[i].value))
    }

    fn finish(&mut self, winner_first: impl Fn(&Value, &Value) -> std::cmp::Ordering) {
        with_table!(self, t => t.finish(winner_first))
    }

    fn memory_bytes(&self) -> usize {
        with_table!(self, t => t.memory_bytes())
    }

    fn copy_from(&mut self, other: &Group, remap: impl Fn(&Value) -> Value) {
        for i in 0..other.len() {
            let (id, value) = other.at(i);
            self.push(id.hash(), remap(value));
        }
    }
}

fn timestamp(v: &Value) -> i64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&v[0..6]);
    i64::from_be_bytes(b)
}

fn field(v: &Value, at: usize) -> u32 {
    u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]])
}

fn is_deleted(v: &Value) -> bool {
    field(v, 6) & DELETED_BIT != 0
}

fn pack_pos(v: &Value) -> u32 {
    field(v, 18)
}

fn format_pos(v: &Value) -> u16 {
    u16::from_be_bytes([v[22], v[23]])
}

fn with_positions(v: &Value, pack: u32, format: u16) -> Value {
    let mut out = *v;
    out[18..22].copy_from_slice(&pack.to_be_bytes());
    out[22..24].copy_from_slice(&format.to_be_bytes());
    out
}

/// The merged view: lookups and ordered iteration over the winners of everything added.
#[derive(Default)]
pub struct CompactIndex {
    /// Sorted by (prefix, hash length).
    groups: Vec<Group>,
    packs: Vec<Arc<str>>,
    formats: Vec<Format>,
    len: usize,
}

impl CompactIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The winning entry for `id`, deleted or not.
    pub fn lookup(&self, id: &ContentId) -> Option<IndexEntry> {
        let key = (id.prefix().unwrap_or(0), id.hash().len() as u8);
        let group = self.groups.iter().find(|g| g.key() == key)?;
        group.find(id.hash()).map(|v| self.entry(*id, v))
    }

    /// Every winner in content-ID order.
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        // Groups of one prefix with different hash lengths interleave in key order.
        let mut runs: Vec<Vec<&Group>> = Vec::new();
        for g in &self.groups {
            match runs.last_mut() {
                Some(run) if run[0].key().0 == g.key().0 => run.push(g),
                _ => runs.push(vec![g]),
            }
        }
        runs.into_iter()
            .flat_map(move |run| -> Box<dyn Iterator<Item = IndexEntry> + '_> {
                let mut per_group: Vec<_> = run
                    .into_iter()
                    .map(|g| (0..g.len()).map(move |i| self.entry_at(g, i)))
                    .collect();
                if per_group.len() == 1 {
                    Box::new(per_group.pop().expect("one group"))
                } else {
                    Box::new(kmover_format::index::merge::merge_sorted(per_group))
                }
            })
    }

    /// Bytes held: records, bucket tables, pack IDs and formats.
    pub fn memory_bytes(&self) -> usize {
        self.groups.iter().map(Group::memory_bytes).sum::<usize>()
            + self
                .packs
                .iter()
                .map(|p| p.len() + 2 * size_of::<usize>() + size_of::<Arc<str>>())
                .sum::<usize>()
            + self.formats.len() * size_of::<Format>()
    }

    fn entry_at(&self, g: &Group, i: usize) -> IndexEntry {
        let (id, v) = g.at(i);
        self.entry(id, v)
    }

    fn entry(&self, content_id: ContentId, v: &Value) -> IndexEntry {
        let format = self.formats[usize::from(format_pos(v))];
        IndexEntry {
            content_id,
            timestamp_seconds: timestamp(v),
            deleted: is_deleted(v),
            pack_blob_id: self.packs[pack_pos(v) as usize].clone(),
            pack_offset: field(v, 6) & !DELETED_BIT,
            packed_length: field(v, 10),
            original_length: field(v, 14),
            compression_header_id: format.compression_header_id,
            format_version: format.format_version,
            encryption_key_id: format.encryption_key_id,
        }
    }
}

/// Collects the entries of indexes (and of earlier compact indexes), then sorts and merges them
/// once in [`CompactBuilder::finish`].
#[derive(Default)]
pub struct CompactBuilder {
    groups: Vec<Group>,
    packs: Vec<Arc<str>>,
    pack_positions: HashMap<Arc<str>, u32>,
    formats: Vec<Format>,
    format_positions: HashMap<Format, u16>,
}

impl CompactBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn intern_pack(&mut self, id: &Arc<str>) -> Result<u32> {
        if let Some(&p) = self.pack_positions.get(id) {
            return Ok(p);
        }
        let p = u32::try_from(self.packs.len())
            .map_err(|_| RepoError::Other("too many pack blobs in the index".into()))?;
        self.packs.push(id.clone());
        self.pack_positions.insert(id.clone(), p);
        Ok(p)
    }

    fn intern_format(&mut self, f: Format) -> Result<u16> {
        if let Some(&p) = self.format_positions.get(&f) {
            return Ok(p);
        }
        let p = u16::try_from(self.formats.len()).map_err(|_| {
            RepoError::Other("too many distinct content formats in the index".into())
        })?;
        self.formats.push(f);
        self.format_positions.insert(f, p);
        Ok(p)
    }

    fn group_position(&mut self, prefix: u8, hash_len: usize) -> usize {
        let key = (prefix, hash_len as u8);
        match self.groups.iter().position(|g| g.key() == key) {
            Some(i) => i,
            None => {
                self.groups.push(Group::new(prefix, hash_len));
                self.groups.len() - 1
            }
        }
    }

    /// Adds every entry of `index`.
    pub fn add_index(&mut self, index: &Index) -> Result<()> {
        let packs = index
            .pack_ids()
            .iter()
            .map(|p| self.intern_pack(p))
            .collect::<Result<Vec<u32>>>()?;
        let invalid = self.intern_pack(&Arc::from(INVALID_PACK_BLOB_ID))?;
        let mut last_format: Option<(Format, u16)> = None;
        let mut failure = None;
        let mut group: Option<usize> = None;
        index.for_each_raw(|key, raw: RawEntry| {
            if failure.is_some() {
                return;
            }
            let format = Format {
                compression_header_id: raw.compression_header_id,
                format_version: raw.format_version,
                encryption_key_id: raw.encryption_key_id,
            };
            let format_pos = match last_format {
                Some((f, p)) if f == format => p,
                _ => match self.intern_format(format) {
                    Ok(p) => {
                        last_format = Some((format, p));
                        p
                    }
                    Err(e) => {
                        failure = Some(e);
                        return;
                    }
                },
            };
            let pack = raw.pack.map_or(invalid, |p| packs[p as usize]);
            let mut v = [0u8; VALUE_LEN];
            v[0..6].copy_from_slice(&(raw.timestamp_seconds as u64).to_be_bytes()[2..]);
            let flag = if raw.deleted { DELETED_BIT } else { 0 };
            v[6..10].copy_from_slice(&(raw.pack_offset | flag).to_be_bytes());
            v[10..14].copy_from_slice(&raw.packed_length.to_be_bytes());
            v[14..18].copy_from_slice(&raw.original_length.to_be_bytes());
            let v = with_positions(&v, pack, format_pos);
            // Keys were validated by the parser: a prefix byte and at least one hash byte.
            let (&prefix, hash) = key.split_first().expect("index keys are never empty");
            let g = match group {
                Some(g) if self.groups[g].key() == (prefix, hash.len() as u8) => g,
                _ => {
                    let g = self.group_position(prefix, hash.len());
                    group = Some(g);
                    g
                }
            };
            self.groups[g].push(hash, v);
        });
        failure.map_or(Ok(()), Err)
    }

    /// Adds every winner of `compact`.
    pub fn add_compact(&mut self, compact: &CompactIndex) -> Result<()> {
        let packs = compact
            .packs
            .iter()
            .map(|p| self.intern_pack(p))
            .collect::<Result<Vec<u32>>>()?;
        let formats = compact
            .formats
            .iter()
            .map(|&f| self.intern_format(f))
            .collect::<Result<Vec<u16>>>()?;
        for g in &compact.groups {
            let (prefix, hash_len) = g.key();
            let target = self.group_position(prefix, usize::from(hash_len));
            self.groups[target].copy_from(g, |v| {
                with_positions(
                    v,
                    packs[pack_pos(v) as usize],
                    formats[usize::from(format_pos(v))],
                )
            });
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<CompactIndex> {
        let packs = self.packs;
        let winner_first = |a: &Value, b: &Value| {
            // kopia's rule, greatest first: newer, then live over deleted, then greater pack ID.
            timestamp(b)
                .cmp(&timestamp(a))
                .then_with(|| is_deleted(a).cmp(&is_deleted(b)))
                .then_with(|| {
                    packs[pack_pos(b) as usize]
                        .as_bytes()
                        .cmp(packs[pack_pos(a) as usize].as_bytes())
                })
        };
        let mut len = 0usize;
        for g in &mut self.groups {
            if u32::try_from(g.len()).is_err() {
                return Err(RepoError::Other(
                    "too many index entries to hold in memory".into(),
                ));
            }
            g.finish(winner_first);
            len += g.len();
        }
        self.groups.sort_by_key(Group::key);
        Ok(CompactIndex {
            groups: self.groups,
            packs,
            formats: self.formats,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmover_format::index::IndexBuilder;
    use kmover_format::index::merge::{lookup as merged_lookup, merge_sorted};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn random_id(rng: &mut Rng, pool: u64, len: usize) -> ContentId {
        // A small pool of IDs, so indexes share contents.
        let n = rng.next() % pool;
        let prefix = [None, Some(b'k'), Some(b'x')][(n % 3) as usize];
        let hash: Vec<u8> = (0..len)
            .map(|i| (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 8 * 8)) as u8 ^ i as u8)
            .collect();
        ContentId::from_hash(prefix, &hash).unwrap()
    }

    fn random_index(rng: &mut Rng, entries: usize, pool: u64, hash_len: usize) -> Index {
        let mut b = IndexBuilder::new();
        for _ in 0..entries {
            b.add(IndexEntry {
                content_id: random_id(rng, pool, hash_len),
                // Few distinct timestamps and packs, so ties exercise every rule.
                timestamp_seconds: 1_700_000_000 + (rng.next() % 4) as i64,
                deleted: rng.next().is_multiple_of(3),
                pack_blob_id: format!("p{:02}", rng.next() % 5).into(),
                pack_offset: (rng.next() % (1 << 30)) as u32,
                packed_length: (rng.next() % (1 << 27)) as u32,
                original_length: (rng.next() % (1 << 27)) as u32,
                compression_header_id: [0, 0x1100][(rng.next() % 2) as usize],
                format_version: 2,
                encryption_key_id: 0,
            });
        }
        Index::parse(b.build(2).unwrap(), 28).unwrap()
    }

    /// Equal under kopia's rule: same content and winner fields (ties may pick either offset).
    fn same_winner(a: &IndexEntry, b: &IndexEntry) -> bool {
        a.content_id == b.content_id
            && a.timestamp_seconds == b.timestamp_seconds
            && a.deleted == b.deleted
            && a.pack_blob_id == b.pack_blob_id
    }

    #[test]
    fn matches_the_k_way_merge_for_lookups_and_iteration() {
        let mut rng = Rng(77);
        // Two hash lengths (one per index), which interleave under each prefix.
        let indexes: Vec<Index> = (0..9)
            .map(|i| random_index(&mut rng, 50 + i * 40, 400, [16, 16, 32][i % 3]))
            .collect();
        let mut builder = CompactBuilder::new();
        for ix in &indexes {
            builder.add_index(ix).unwrap();
        }
        let compact = builder.finish().unwrap();
        let expected: Vec<IndexEntry> =
            merge_sorted(indexes.iter().map(|ix| ix.iter()).collect()).collect();
        let got: Vec<IndexEntry> = compact.iter().collect();
        assert_eq!(got.len(), expected.len());
        assert_eq!(compact.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert!(same_winner(g, e), "{g:?} vs {e:?}");
            let looked_up = compact.lookup(&e.content_id).unwrap();
            assert_eq!(&looked_up, g);
            assert!(same_winner(
                &merged_lookup(&indexes, &e.content_id).unwrap(),
                g
            ));
        }
        for i in 0..500 {
            let id = random_id(&mut rng, 800, [16, 32][i % 2]);
            assert_eq!(
                compact.lookup(&id).is_some(),
                merged_lookup(&indexes, &id).is_some()
            );
        }

        // Folding a compact index into another gives the same view.
        let mut refold = CompactBuilder::new();
        refold.add_compact(&compact).unwrap();
        refold.add_index(&indexes[0]).unwrap();
        let refolded = refold.finish().unwrap();
        assert!(
            refolded
                .iter()
                .zip(compact.iter())
                .all(|(a, b)| same_winner(&a, &b))
        );
        assert_eq!(refolded.len(), compact.len());
    }

    #[test]
    fn large_tables_use_buckets_and_stay_compact() {
        let mut rng = Rng(5);
        let mut b = IndexBuilder::new();
        let mut ids = Vec::new();
        for i in 0..20_000u32 {
            let hash: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
            let id = ContentId::from_hash(None, &hash).unwrap();
            ids.push(id);
            b.add(IndexEntry {
                content_id: id,
                timestamp_seconds: 1_700_000_000,
                deleted: false,
                pack_blob_id: format!("p{}", i % 100).into(),
                pack_offset: i,
                packed_length: 100,
                original_length: 72,
                compression_header_id: 0,
                format_version: 2,
                encryption_key_id: 0,
            });
        }
        let ix = Index::parse(b.build(2).unwrap(), 28).unwrap();
        let mut builder = CompactBuilder::new();
        builder.add_index(&ix).unwrap();
        let compact = builder.finish().unwrap();
        for id in &ids {
            assert_eq!(compact.lookup(id), ix.lookup(id));
        }
        let miss = ContentId::from_hash(None, &[0xAB; 16]).unwrap();
        assert_eq!(compact.lookup(&miss), ix.lookup(&miss));
        let per_entry = compact.memory_bytes() as f64 / ids.len() as f64;
        assert!(per_entry <= 42.0, "{per_entry} bytes per entry");
    }

    #[test]
    fn invalid_pack_references_keep_kopias_marker() {
        let mut b = IndexBuilder::new();
        b.add(IndexEntry {
            content_id: ContentId::parse("aa11").unwrap(),
            timestamp_seconds: 5,
            deleted: false,
            pack_blob_id: "p1".into(),
            pack_offset: 0,
            packed_length: 1,
            original_length: 1,
            compression_header_id: 0,
            format_version: 2,
            encryption_key_id: 0,
        });
        let mut bytes = b.build(2).unwrap();
        // Pack count 0: the entry's pack position now points outside the table.
        bytes[8..12].copy_from_slice(&0u32.to_be_bytes());
        let ix = Index::parse(bytes, 0).unwrap();
        let mut builder = CompactBuilder::new();
        builder.add_index(&ix).unwrap();
        let compact = builder.finish().unwrap();
        let id = ContentId::parse("aa11").unwrap();
        assert_eq!(compact.lookup(&id), ix.lookup(&id));
        assert_eq!(
            &*compact.lookup(&id).unwrap().pack_blob_id,
            INVALID_PACK_BLOB_ID
        );
    }
}
