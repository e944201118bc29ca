//! A merged, compact table of many indexes: one fixed-width record per content (its hash and a
//! 22-byte value), kopia's merge winner only, sorted, with a bucket table on the leading hash bits
//! so a lookup is one bucket read and a binary search over a few records, however many index
//! blobs went into it. Pack blob IDs and formats are stored once and referenced by position.
//!
//! Records are grouped by (prefix byte, hash length): the prefix is not stored per record, and
//! every group has fixed-width keys (hashes are zero-padded to 16, 28 or 32 bytes, which keeps
//! their order since a group's hashes all have the same length).
//!
//! A table nobody else shares takes later indexes in place ([`CompactIndex::fold_in_place`]):
//! existing records are overwritten where the new entry wins, new contents are merged in from the
//! back. A copy of a table of millions of contents would double its memory.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use kmover_format::ContentId;
use kmover_format::content_id::MAX_HASH_LEN;
use kmover_format::index::{INVALID_PACK_BLOB_ID, Index, IndexEntry, RawEntry};

use crate::error::{RepoError, Result};

/// timestamp (6) · offset and deleted flag (4) · packed length (4) · original length (4) ·
/// pack position (3) · format position (1).
const VALUE_LEN: usize = 22;
/// Pack blobs a table can reference (16 M: 320 TB of 20 MB packs).
const MAX_PACKS: usize = 1 << 24;
/// Distinct formats a table can reference (one index blob allows 255).
const MAX_FORMATS: usize = 1 << 8;
const DELETED_BIT: u32 = 0x8000_0000;
/// At most this many leading hash bits select a bucket (16 M buckets).
const MAX_BUCKET_BITS: u32 = 24;
/// Records per bucket the bucket table aims at.
const RECORDS_PER_BUCKET: usize = 4;

type Value = [u8; VALUE_LEN];

/// Source of [`CompactIndex::layout`] values.
static NEXT_LAYOUT: AtomicU64 = AtomicU64::new(1);

fn new_layout() -> u64 {
    NEXT_LAYOUT.fetch_add(1, AtomicOrdering::Relaxed)
}

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
    /// While building: `recs[..sorted_len]` is sorted with one winner per content.
    sorted_len: usize,
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

/// An entry of a folded index whose content the table does not hold yet.
#[derive(Clone, Copy)]
struct Staged {
    prefix: u8,
    hash_len: u8,
    hash: [u8; MAX_HASH_LEN],
    value: Value,
}

impl Staged {
    fn key(&self) -> (u8, u8, &[u8]) {
        (
            self.prefix,
            self.hash_len,
            &self.hash[..usize::from(self.hash_len)],
        )
    }
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

/// Sorts `recs` by hash and keeps each content's winner only. One index's entries (and one
/// compacted blob, the common case) arrive sorted and unique: then nothing is done. The sort is
/// in place: a stable sort's scratch buffer would be half the table again.
fn keep_winners<const K: usize>(
    recs: &mut Vec<Rec<K>>,
    winner_first: &impl Fn(&Value, &Value) -> Ordering,
) {
    if recs.windows(2).all(|w| w[0].hash < w[1].hash) {
        return;
    }
    recs.sort_unstable_by(|a, b| {
        a.hash
            .cmp(&b.hash)
            .then_with(|| winner_first(&a.value, &b.value))
    });
    recs.dedup_by(|later, kept| later.hash == kept.hash);
}

fn too_large() -> RepoError {
    RepoError::Other("too many index entries to hold in memory".into())
}

impl<const K: usize> Table<K> {
    fn new(prefix: u8, hash_len: u8) -> Self {
        Table {
            prefix,
            hash_len,
            recs: Vec::new(),
            buckets: Vec::new(),
            bits: 0,
            sorted_len: 0,
        }
    }

    /// Merges the records added since the last call into the sorted part, keeping one winner
    /// per content: the table grows by the new records only, never by a second copy.
    fn merge_added(&mut self, winner_first: impl Fn(&Value, &Value) -> Ordering) {
        let p = self.sorted_len;
        if self.recs.len() == p {
            return;
        }
        let mut tail = self.recs.split_off(p);
        keep_winners(&mut tail, &winner_first);
        let t = tail.len();
        let blank = Rec {
            hash: [0u8; K],
            value: [0u8; VALUE_LEN],
        };
        self.recs.resize(p + t, blank);
        // From the back: the write position never passes the unread part of the sorted run.
        let (mut i, mut j, mut k) = (p, t, p + t);
        while j > 0 {
            let next = if i > 0 && self.recs[i - 1].hash > tail[j - 1].hash {
                i -= 1;
                self.recs[i]
            } else if i > 0 && self.recs[i - 1].hash == tail[j - 1].hash {
                i -= 1;
                j -= 1;
                let (held, added) = (self.recs[i], tail[j]);
                // At a tie the record held first stays, as when probing indexes in order.
                if winner_first(&added.value, &held.value) == Ordering::Less {
                    added
                } else {
                    held
                }
            } else {
                j -= 1;
                tail[j]
            };
            k -= 1;
            self.recs[k] = next;
        }
        // `i` sorted records remain in place; duplicates left a gap of `k - i` before the rest.
        if k > i {
            self.recs.copy_within(k.., i);
            self.recs.truncate(p + t - (k - i));
        }
        self.sorted_len = self.recs.len();
    }

    fn find_pos(&self, hash: &[u8]) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let h = padded::<K>(hash);
        let b = bucket_of(&h, self.bits);
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        self.recs[lo..hi]
            .binary_search_by(|r| r.hash.cmp(&h))
            .ok()
            .map(|i| lo + i)
    }

    /// Sorts by hash with each content's winner first, keeps only winners, builds the buckets.
    fn finish(&mut self, winner_first: impl Fn(&Value, &Value) -> Ordering) {
        keep_winners(&mut self.recs, &winner_first);
        self.recs.shrink_to_fit();
        self.build_buckets();
    }

    fn build_buckets(&mut self) {
        let n = self.recs.len();
        self.bits = (n / RECORDS_PER_BUCKET).max(1).ilog2().min(MAX_BUCKET_BITS);
        let count = 1usize << self.bits;
        self.buckets.clear();
        self.buckets.reserve_exact(count + 1);
        let mut i = 0;
        for b in 0..count {
            while i < n && bucket_of(&self.recs[i].hash, self.bits) < b {
                i += 1;
            }
            self.buckets.push(i as u32);
        }
        self.buckets.push(n as u32);
    }

    /// Merges `run` (sorted, one entry per content, none already held) into the records, from
    /// the back, so the table grows by `run` only.
    fn merge_in(&mut self, run: &[Staged]) {
        let (old, n) = (self.recs.len(), run.len());
        self.recs.reserve_exact(n);
        let blank = Rec {
            hash: [0u8; K],
            value: [0u8; VALUE_LEN],
        };
        self.recs.resize(old + n, blank);
        let (mut i, mut j, mut k) = (old, n, old + n);
        while j > 0 {
            let incoming = Rec {
                hash: padded::<K>(run[j - 1].key().2),
                value: run[j - 1].value,
            };
            if i > 0 && self.recs[i - 1].hash > incoming.hash {
                self.recs[k - 1] = self.recs[i - 1];
                i -= 1;
            } else {
                self.recs[k - 1] = incoming;
                j -= 1;
            }
            k -= 1;
        }
        self.build_buckets();
    }

    /// The number of records whose content ID is at or before (`prefix`, `hash`).
    fn first_after(&self, prefix: u8, hash: &[u8]) -> usize {
        let l = usize::from(self.hash_len);
        self.recs
            .partition_point(|r| (self.prefix, &r.hash[..l]) <= (prefix, hash))
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

    fn reserve(&mut self, n: usize) {
        with_table!(self, t => t.recs.reserve_exact(n))
    }

    fn push(&mut self, hash: &[u8], value: Value) {
        with_table!(self, t => t.recs.push(Rec { hash: padded(hash), value }))
    }

    fn find_pos(&self, hash: &[u8]) -> Option<usize> {
        with_table!(self, t => t.find_pos(hash))
    }

    fn value(&self, i: usize) -> &Value {
        with_table!(self, t => &t.recs[i].value)
    }

    fn value_mut(&mut self, i: usize) -> &mut Value {
        with_table!(self, t => &mut t.recs[i].value)
    }

    fn at(&self, i: usize) -> (ContentId, &Value) {
        with_table!(self, t => (t.id_at(i), &t.recs[i].value))
    }

    fn finish(&mut self, winner_first: impl Fn(&Value, &Value) -> Ordering) {
        with_table!(self, t => t.finish(winner_first))
    }

    fn merge_added(&mut self, winner_first: impl Fn(&Value, &Value) -> Ordering) {
        with_table!(self, t => t.merge_added(winner_first))
    }

    fn merge_in(&mut self, run: &[Staged]) {
        with_table!(self, t => t.merge_in(run))
    }

    fn first_after(&self, id: &ContentId) -> usize {
        with_table!(self, t => t.first_after(id.prefix().unwrap_or(0), id.hash()))
    }

    fn memory_bytes(&self) -> usize {
        with_table!(self, t => t.memory_bytes())
    }

    fn copy_from(&mut self, other: &Group, remap: impl Fn(&Value) -> Value) {
        self.reserve(other.len());
        for i in 0..other.len() {
            let (id, value) = other.at(i);
            self.push(id.hash(), remap(value));
        }
    }
}

fn group_position(groups: &mut Vec<Group>, prefix: u8, hash_len: usize) -> usize {
    let key = (prefix, hash_len as u8);
    match groups.iter().position(|g| g.key() == key) {
        Some(i) => i,
        None => {
            groups.push(Group::new(prefix, hash_len));
            groups.len() - 1
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
    u32::from_be_bytes([0, v[18], v[19], v[20]])
}

fn format_pos(v: &Value) -> u8 {
    v[21]
}

fn with_positions(v: &Value, pack: u32, format: u8) -> Value {
    let mut out = *v;
    out[18..21].copy_from_slice(&pack.to_be_bytes()[1..]);
    out[21] = format;
    out
}

/// kopia's rule as an ordering, greatest first: `Less` when `a` beats `b` (newer, then live over
/// deleted, then the greater pack ID).
fn winner_order(packs: &[Arc<str>], a: &Value, b: &Value) -> Ordering {
    timestamp(b)
        .cmp(&timestamp(a))
        .then_with(|| is_deleted(a).cmp(&is_deleted(b)))
        .then_with(|| {
            packs[pack_pos(b) as usize]
                .as_bytes()
                .cmp(packs[pack_pos(a) as usize].as_bytes())
        })
}

/// Pack IDs and formats by position, as records reference them.
#[derive(Default)]
struct Interner {
    packs: Vec<Arc<str>>,
    pack_positions: HashMap<Arc<str>, u32>,
    formats: Vec<Format>,
    format_positions: HashMap<Format, u8>,
}

impl Interner {
    fn from_tables(packs: Vec<Arc<str>>, formats: Vec<Format>) -> Self {
        let pack_positions = packs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let format_positions = formats
            .iter()
            .enumerate()
            .map(|(i, f)| (*f, i as u8))
            .collect();
        Interner {
            packs,
            pack_positions,
            formats,
            format_positions,
        }
    }

    fn pack(&mut self, id: &Arc<str>) -> Result<u32> {
        if let Some(&p) = self.pack_positions.get(id) {
            return Ok(p);
        }
        if self.packs.len() >= MAX_PACKS {
            return Err(RepoError::Other(format!(
                "too many pack blobs in the index (more than {MAX_PACKS})"
            )));
        }
        let p = self.packs.len() as u32;
        self.packs.push(id.clone());
        self.pack_positions.insert(id.clone(), p);
        Ok(p)
    }

    fn format(&mut self, f: Format) -> Result<u8> {
        if let Some(&p) = self.format_positions.get(&f) {
            return Ok(p);
        }
        if self.formats.len() >= MAX_FORMATS {
            return Err(RepoError::Other(format!(
                "too many distinct content formats in the index (more than {MAX_FORMATS})"
            )));
        }
        let p = self.formats.len() as u8;
        self.formats.push(f);
        self.format_positions.insert(f, p);
        Ok(p)
    }

    /// Calls `f` with every entry of `index` as (key, record value), the value referencing this
    /// interner's positions, and the pack table those positions index.
    fn for_each_value(
        &mut self,
        index: &Index,
        mut f: impl FnMut(&[u8], Value, &[Arc<str>]),
    ) -> Result<()> {
        let packs = index
            .pack_ids()
            .iter()
            .map(|p| self.pack(p))
            .collect::<Result<Vec<u32>>>()?;
        let invalid = self.pack(&Arc::from(INVALID_PACK_BLOB_ID))?;
        let mut last_format: Option<(Format, u8)> = None;
        let mut failure = None;
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
                _ => match self.format(format) {
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
            f(key, with_positions(&v, pack, format_pos), &self.packs);
        });
        failure.map_or(Ok(()), Err)
    }
}

/// The merged view: lookups and ordered iteration over the winners of everything added.
pub struct CompactIndex {
    /// Sorted by (prefix, hash length).
    groups: Vec<Group>,
    packs: Vec<Arc<str>>,
    formats: Vec<Format>,
    len: usize,
    /// Identifies the set of contents (hence every record's position): it changes whenever a
    /// content is added, not when a record's value is replaced.
    layout: u64,
}

impl Default for CompactIndex {
    fn default() -> Self {
        CompactIndex {
            groups: Vec::new(),
            packs: Vec::new(),
            formats: Vec::new(),
            len: 0,
            layout: new_layout(),
        }
    }
}

impl CompactIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Equal for two tables (or one table at two times) holding the same contents, so a
    /// [`CompactIndex::position`] taken from one is valid in the other.
    pub fn layout(&self) -> u64 {
        self.layout
    }

    /// Keeps `layout` when this table holds the same contents as the one it was taken from.
    pub fn inherit_layout(&mut self, layout: u64, contents: usize) {
        if self.len == contents {
            self.layout = layout;
        }
    }

    fn group_of(&self, id: &ContentId) -> Option<(usize, &Group)> {
        let key = (id.prefix().unwrap_or(0), id.hash().len() as u8);
        self.groups.iter().enumerate().find(|(_, g)| g.key() == key)
    }

    /// The winning entry for `id`, deleted or not.
    pub fn lookup(&self, id: &ContentId) -> Option<IndexEntry> {
        let (_, group) = self.group_of(id)?;
        group
            .find_pos(id.hash())
            .map(|p| self.entry(*id, group.value(p)))
    }

    /// Where `id`'s record is, `0..len()` in content-ID order of (prefix, hash length) groups.
    pub fn position(&self, id: &ContentId) -> Option<usize> {
        let (g, group) = self.group_of(id)?;
        let p = group.find_pos(id.hash())?;
        Some(self.groups[..g].iter().map(Group::len).sum::<usize>() + p)
    }

    /// Every winner in content-ID order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        self.iter_after(None)
    }

    /// Every winner whose content ID is greater than `after` (all of them without), in order.
    pub fn iter_after(&self, after: Option<&ContentId>) -> impl Iterator<Item = IndexEntry> + '_ {
        let starts: Vec<usize> = self
            .groups
            .iter()
            .map(|g| after.map_or(0, |a| g.first_after(a)))
            .collect();
        // Groups of one prefix with different hash lengths interleave in key order.
        let mut runs: Vec<Vec<(&Group, usize)>> = Vec::new();
        for (g, start) in self.groups.iter().zip(starts) {
            match runs.last_mut() {
                Some(run) if run[0].0.key().0 == g.key().0 => run.push((g, start)),
                _ => runs.push(vec![(g, start)]),
            }
        }
        runs.into_iter()
            .flat_map(move |run| -> Box<dyn Iterator<Item = IndexEntry> + '_> {
                let mut per_group: Vec<_> = run
                    .into_iter()
                    .map(|(g, start)| (start..g.len()).map(move |i| self.entry_at(g, i)))
                    .collect();
                if per_group.len() == 1 {
                    Box::new(per_group.pop().expect("one group"))
                } else {
                    Box::new(kmover_format::index::merge::merge_sorted(per_group))
                }
            })
    }

    /// Folds `indexes` into this table: a record is overwritten where the folded entry wins
    /// (kopia's rule; at a tie the table's entry stays), contents new to the table are merged
    /// in. The result equals a table built from scratch of everything, without a second copy.
    /// On error the table still holds only winners, but may lack entries of `indexes`.
    pub fn fold_in_place<'a>(
        &mut self,
        indexes: impl IntoIterator<Item = &'a Index>,
    ) -> Result<()> {
        let mut interner = Interner::from_tables(
            std::mem::take(&mut self.packs),
            std::mem::take(&mut self.formats),
        );
        let result = self.fold_with(&mut interner, indexes);
        self.packs = interner.packs;
        self.formats = interner.formats;
        self.len = self.groups.iter().map(Group::len).sum();
        result
    }

    fn fold_with<'a>(
        &mut self,
        interner: &mut Interner,
        indexes: impl IntoIterator<Item = &'a Index>,
    ) -> Result<()> {
        let groups = &mut self.groups;
        let mut staged: Vec<Staged> = Vec::new();
        for index in indexes {
            let mut cached: Option<((u8, u8), Option<usize>)> = None;
            interner.for_each_value(index, |key, value, packs| {
                // Keys were validated by the parser: a prefix byte and at least one hash byte.
                let (&prefix, hash) = key.split_first().expect("index keys are never empty");
                let gkey = (prefix, hash.len() as u8);
                let g = match cached {
                    Some((k, g)) if k == gkey => g,
                    _ => {
                        let g = groups.iter().position(|g| g.key() == gkey);
                        cached = Some((gkey, g));
                        g
                    }
                };
                match g.and_then(|g| groups[g].find_pos(hash).map(|p| (g, p))) {
                    Some((g, p)) => {
                        let current = groups[g].value_mut(p);
                        if winner_order(packs, &value, current) == Ordering::Less {
                            *current = value;
                        }
                    }
                    None => staged.push(Staged {
                        prefix,
                        hash_len: hash.len() as u8,
                        hash: padded(hash),
                        value,
                    }),
                }
            })?;
        }
        if staged.is_empty() {
            return Ok(());
        }
        let packs = &interner.packs;
        staged.sort_unstable_by(|a, b| {
            a.key()
                .cmp(&b.key())
                .then_with(|| winner_order(packs, &a.value, &b.value))
        });
        staged.dedup_by(|later, kept| later.key() == kept.key());
        for run in staged.chunk_by(|a, b| (a.prefix, a.hash_len) == (b.prefix, b.hash_len)) {
            let g = group_position(groups, run[0].prefix, usize::from(run[0].hash_len));
            if u32::try_from(groups[g].len() + run.len()).is_err() {
                return Err(too_large());
            }
            groups[g].merge_in(run);
        }
        groups.sort_by_key(Group::key);
        self.layout = new_layout();
        Ok(())
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
    interner: Interner,
}

impl CompactBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every entry of `index`.
    pub fn add_index(&mut self, index: &Index) -> Result<()> {
        let groups = &mut self.groups;
        let mut group: Option<usize> = None;
        self.interner.for_each_value(index, |key, v, _| {
            // Keys were validated by the parser: a prefix byte and at least one hash byte.
            let (&prefix, hash) = key.split_first().expect("index keys are never empty");
            let g = match group {
                Some(g) if groups[g].key() == (prefix, hash.len() as u8) => g,
                _ => {
                    let g = group_position(groups, prefix, hash.len());
                    group = Some(g);
                    g
                }
            };
            groups[g].push(hash, v);
        })?;
        self.merge_added();
        Ok(())
    }

    /// Merges what was just added, so the builder never holds more than the winners so far
    /// plus one index (a repository's many index blobs repeat contents: deletions, rewrites).
    fn merge_added(&mut self) {
        let packs = &self.interner.packs;
        for g in &mut self.groups {
            g.merge_added(|a, b| winner_order(packs, a, b));
        }
    }

    /// Adds every winner of `compact`.
    pub fn add_compact(&mut self, compact: &CompactIndex) -> Result<()> {
        let packs = compact
            .packs
            .iter()
            .map(|p| self.interner.pack(p))
            .collect::<Result<Vec<u32>>>()?;
        let formats = compact
            .formats
            .iter()
            .map(|&f| self.interner.format(f))
            .collect::<Result<Vec<u8>>>()?;
        for g in &compact.groups {
            let (prefix, hash_len) = g.key();
            let target = group_position(&mut self.groups, prefix, usize::from(hash_len));
            self.groups[target].copy_from(g, |v| {
                with_positions(
                    v,
                    packs[pack_pos(v) as usize],
                    formats[usize::from(format_pos(v))],
                )
            });
        }
        self.merge_added();
        Ok(())
    }

    pub fn finish(mut self) -> Result<CompactIndex> {
        let packs = self.interner.packs;
        let mut len = 0usize;
        for g in &mut self.groups {
            if u32::try_from(g.len()).is_err() {
                return Err(too_large());
            }
            g.finish(|a, b| winner_order(&packs, a, b));
            len += g.len();
        }
        self.groups.sort_by_key(Group::key);
        Ok(CompactIndex {
            groups: self.groups,
            packs,
            formats: self.interner.formats,
            len,
            layout: new_layout(),
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
    fn folding_in_place_equals_building_from_scratch() {
        let mut rng = Rng(99);
        for round in 0..24usize {
            // Overlapping pools of two hash lengths: updates, deletions, ties and new contents.
            let indexes: Vec<Index> = (0..6)
                .map(|i| random_index(&mut rng, 20 + i * 30, 300, [16, 16, 32][(i + round) % 3]))
                .collect();
            let split = round % 6;
            let mut base = CompactBuilder::new();
            for ix in &indexes[..split] {
                base.add_index(ix).unwrap();
            }
            let mut folded = base.finish().unwrap();
            let (layout, len_before) = (folded.layout(), folded.len());
            folded.fold_in_place(&indexes[split..]).unwrap();
            let mut all = CompactBuilder::new();
            for ix in &indexes {
                all.add_index(ix).unwrap();
            }
            let rebuilt = all.finish().unwrap();
            assert_eq!(folded.len(), rebuilt.len(), "round {round}");
            assert_eq!(folded.layout() == layout, folded.len() == len_before);
            let listed: Vec<IndexEntry> = folded.iter().collect();
            assert_eq!(listed.len(), folded.len());
            let mut positions = Vec::new();
            for (f, r) in listed.iter().zip(rebuilt.iter()) {
                assert!(same_winner(f, &r), "round {round}: {f:?} vs {r:?}");
                assert_eq!(folded.lookup(&f.content_id).as_ref(), Some(f));
                positions.push(folded.position(&f.content_id).unwrap());
            }
            positions.sort_unstable();
            assert!(positions.iter().enumerate().all(|(i, &p)| i == p));
            for a in listed.iter().step_by(7) {
                let tail: Vec<IndexEntry> = folded.iter_after(Some(&a.content_id)).collect();
                let expected: Vec<&IndexEntry> = listed
                    .iter()
                    .filter(|e| e.content_id > a.content_id)
                    .collect();
                assert_eq!(tail.iter().collect::<Vec<_>>(), expected);
            }
        }
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
        assert!(per_entry <= 40.0, "{per_entry} bytes per entry");
    }

    #[test]
    fn formats_beyond_the_record_field_are_refused() {
        let index_of = |formats: std::ops::Range<u32>| {
            let mut b = IndexBuilder::new();
            for f in formats {
                b.add(IndexEntry {
                    content_id: ContentId::from_hash(None, &f.to_be_bytes().repeat(4)).unwrap(),
                    timestamp_seconds: 5,
                    deleted: false,
                    pack_blob_id: "p1".into(),
                    pack_offset: 0,
                    packed_length: 1,
                    original_length: 1,
                    compression_header_id: f,
                    format_version: 2,
                    encryption_key_id: 0,
                });
            }
            Index::parse(b.build(2).unwrap(), 28).unwrap()
        };
        let mut builder = CompactBuilder::new();
        builder.add_index(&index_of(0..200)).unwrap();
        builder.add_index(&index_of(200..256)).unwrap();
        let err = builder.add_index(&index_of(256..300)).unwrap_err();
        assert!(
            err.to_string()
                .contains("too many distinct content formats"),
            "{err}"
        );
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
