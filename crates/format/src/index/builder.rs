//! Writing index v1 and v2 (§9.2, §9.3) and splitting large indexes into shards (§9.5).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::{IndexEntry, VERSION_1, VERSION_2, is_greater};
use crate::content_id::{ContentId, MAX_HASH_LEN};
use crate::error::{FormatError, Result};

pub(super) const V1_HEADER_LEN: usize = 8;
pub(super) const V1_VALUE_LEN: usize = 20;
/// v1 key size byte of an index without entries.
pub(super) const EMPTY_KEY_SIZE: u8 = 0xFF;
pub(super) const V1_DELETED: u32 = 0x8000_0000;

pub(super) const V2_HEADER_LEN: usize = 17;
pub(super) const V2_PACK_RECORD_LEN: usize = 5;
pub(super) const V2_FORMAT_RECORD_LEN: usize = 6;
pub(super) const V2_MIN_VALUE_LEN: usize = 16;
pub(super) const V2_MAX_VALUE_LEN: usize = 19;
pub(super) const V2_DELETED: u32 = 0x8000_0000;
const V2_MAX_FORMATS: usize = 255;
const V2_MAX_PACKS: usize = 1 << 24;
const V2_MAX_SHORT_PACKS: usize = 1 << 16;
const V2_MAX_CONTENT_LENGTH: u32 = 1 << 28;
const V2_MAX_SHORT_CONTENT_LENGTH: u32 = 1 << 24;
const V2_MAX_PACK_OFFSET: u32 = 1 << 30;

/// Collects entries for one index; on a duplicate content ID the [`is_greater`] entry is kept.
///
/// Most entries live in one exactly-sized vector in key order; new IDs gather in a small map that
/// is folded into it now and then. A map of every entry would cost about three times the memory
/// (the key held twice, and power-of-two growth: a million entries take two million slots, plus
/// the old table while it grows), and a backup of millions of small files holds one of these
/// with an entry per file until its index is written.
#[derive(Clone, Debug, Default)]
pub struct IndexBuilder {
    /// Winners in key order, each content ID once.
    sorted: Vec<IndexEntry>,
    /// `key_prefix` of each of `sorted`: searching these dense values instead of the entries
    /// touches far fewer cache lines (a lookup per content written, under the writer's lock).
    sorted_prefixes: Vec<u64>,
    /// Entries whose content IDs are not in `sorted`.
    recent: HashMap<ContentId, IndexEntry>,
}

/// `recent` is folded into `sorted` when it holds this many entries, or an eighth of `sorted`
/// if more (so folding costs O(n) per entry at most a constant number of times over).
const MIN_FOLD_AT: usize = 1 << 14;

type FormatKey = (u32, u8, u8);

fn format_key(e: &IndexEntry) -> FormatKey {
    (
        e.compression_header_id,
        e.format_version,
        e.encryption_key_id,
    )
}

fn limit(msg: String) -> FormatError {
    FormatError::Limit(msg)
}

/// The order of keys in an index (content IDs order as their binary keys do).
fn key_order(a: &ContentId, b: &ContentId) -> std::cmp::Ordering {
    a.cmp(b)
}

impl IndexBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, entry: IndexEntry) {
        if let Ok(i) = self.position(&entry.content_id) {
            if is_greater(&entry, &self.sorted[i]) {
                self.sorted[i] = entry;
            }
            return;
        }
        match self.recent.entry(entry.content_id) {
            Entry::Vacant(v) => {
                v.insert(entry);
            }
            Entry::Occupied(mut o) => {
                if is_greater(&entry, o.get()) {
                    o.insert(entry);
                }
            }
        }
        if self.recent.len() >= MIN_FOLD_AT.max(self.sorted.len() / 8) {
            self.fold();
        }
    }

    fn position(&self, id: &ContentId) -> std::result::Result<usize, usize> {
        let prefix = key_prefix(id);
        let mut i = self.sorted_prefixes.partition_point(|&p| p < prefix);
        while i < self.sorted.len() && self.sorted_prefixes[i] == prefix {
            match key_order(&self.sorted[i].content_id, id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => return Ok(i),
                std::cmp::Ordering::Greater => break,
            }
        }
        Err(i)
    }

    /// Moves `recent` into `sorted`: grows it by exactly their number and merges from the back,
    /// so no second copy of `sorted` is ever made.
    fn fold(&mut self) {
        let mut incoming: Vec<IndexEntry> = self.recent.drain().map(|(_, e)| e).collect();
        self.recent = HashMap::new();
        incoming.sort_unstable_by(|a, b| key_order(&a.content_id, &b.content_id));
        let old_len = self.sorted.len();
        self.sorted.reserve_exact(incoming.len());
        // Pad with copies, then fill every slot from the back: the largest remaining of the
        // two runs goes into the last unfilled slot.
        let Some(filler) = incoming.first().cloned() else {
            return;
        };
        self.sorted.resize(old_len + incoming.len(), filler);
        let mut old = old_len;
        let mut slot = self.sorted.len();
        while let Some(next) = incoming.pop() {
            while old > 0 && key_order(&self.sorted[old - 1].content_id, &next.content_id).is_gt() {
                slot -= 1;
                old -= 1;
                self.sorted.swap(old, slot);
            }
            slot -= 1;
            self.sorted[slot] = next;
        }
        self.sorted_prefixes.clear();
        self.sorted_prefixes.reserve_exact(self.sorted.len());
        self.sorted_prefixes
            .extend(self.sorted.iter().map(|e| key_prefix(&e.content_id)));
    }

    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &ContentId) -> Option<&IndexEntry> {
        match self.recent.get(id) {
            Some(e) => Some(e),
            None => self.position(id).ok().map(|i| &self.sorted[i]),
        }
    }

    /// The entries in content ID order.
    pub fn sorted_entries(&self) -> Vec<&IndexEntry> {
        let mut recent: Vec<&IndexEntry> = self.recent.values().collect();
        recent.sort_unstable_by(|a, b| key_order(&a.content_id, &b.content_id));
        let mut merged = Vec::with_capacity(self.len());
        let mut recent = recent.into_iter().peekable();
        for e in &self.sorted {
            while let Some(r) = recent.next_if(|r| key_order(&r.content_id, &e.content_id).is_lt())
            {
                merged.push(r);
            }
            merged.push(e);
        }
        merged.extend(recent);
        merged
    }

    /// Builds the given index version. Unlike [`Self::build_v1`], version 1 is written without
    /// checking original lengths, for callers that do not know the per-content overhead.
    pub fn build(&self, version: u8) -> Result<Vec<u8>> {
        match version {
            VERSION_1 => write_v1(&self.sorted_entries()),
            VERSION_2 => self.build_v2(),
            v => Err(FormatError::Unsupported {
                what: "index version",
                name: v.to_string(),
            }),
        }
    }

    /// Index v1. It cannot store compression, key IDs or original lengths (readers derive the
    /// latter as `packed_length − encryption_overhead`), so entries that would not read back the
    /// same are refused.
    pub fn build_v1(&self, encryption_overhead: u32) -> Result<Vec<u8>> {
        let sorted = self.sorted_entries();
        if let Some(e) = sorted
            .iter()
            .find(|e| e.original_length != e.packed_length.wrapping_sub(encryption_overhead))
        {
            return Err(FormatError::malformed(
                "index v1 entry",
                format!(
                    "{}: original length {} is not packed length {} minus overhead {encryption_overhead}",
                    e.content_id, e.original_length, e.packed_length
                ),
            ));
        }
        write_v1(&sorted)
    }

    /// Index v2 with the narrowest entry size that holds every entry.
    pub fn build_v2(&self) -> Result<Vec<u8>> {
        write_v2(&self.sorted_entries())
    }

    /// Splits into shards of at most about `max_entries_per_shard` entries, the way kopia does:
    /// `ceil(len / max)` shards chosen by FNV-1a-32 of the content ID text, empty shards dropped.
    /// A limit of 0 is treated as 1.
    pub fn shard(self, max_entries_per_shard: usize) -> Vec<IndexBuilder> {
        let max = max_entries_per_shard.max(1);
        let count = self.len().div_ceil(max);
        if count <= 1 {
            return if self.is_empty() {
                Vec::new()
            } else {
                vec![self]
            };
        }
        let mut shards = vec![IndexBuilder::new(); count];
        for e in self.sorted.into_iter().chain(self.recent.into_values()) {
            let shard = fnv1a32_of_id(&e.content_id) as usize % count;
            shards[shard].add(e);
        }
        shards.retain(|s| !s.is_empty());
        shards
    }
}

/// The first 8 bytes of the binary key, big-endian and zero-padded: ordering these agrees with
/// ordering the keys, except that equal values need the full keys to decide.
pub(super) fn key_prefix(id: &ContentId) -> u64 {
    let mut key = [0u8; MAX_HASH_LEN + 1];
    id.write_key(&mut key);
    key_bytes_prefix(&key)
}

pub(super) fn key_bytes_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// FNV-1a-32 of the content ID's text form, without building the string.
pub(super) fn fnv1a32_of_id(id: &ContentId) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let step = |h: u32, b: u8| (h ^ u32::from(b)).wrapping_mul(PRIME);
    let mut h = OFFSET;
    if let Some(p) = id.prefix() {
        h = step(h, p);
    }
    for &b in id.hash() {
        h = step(h, HEX[usize::from(b >> 4)]);
        h = step(h, HEX[usize::from(b & 0x0f)]);
    }
    h
}

fn key_len(e: &IndexEntry) -> usize {
    1 + e.content_id.hash().len()
}

fn check_key_len(e: &IndexEntry, expected: usize) -> Result<()> {
    let len = key_len(e);
    if len != expected {
        return Err(FormatError::malformed(
            "index entry",
            format!("inconsistent key length: {len} vs {expected}"),
        ));
    }
    Ok(())
}

fn push_key(out: &mut Vec<u8>, id: &ContentId) {
    let mut key = [0u8; MAX_HASH_LEN + 1];
    let n = id.write_key(&mut key);
    out.extend_from_slice(&key[..n]);
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| limit(format!("index too large: {what} {v} does not fit 32 bits")))
}

fn pack_name_len(e: &IndexEntry) -> Result<u8> {
    u8::try_from(e.pack_blob_id.len()).map_err(|_| {
        limit(format!(
            "pack blob ID {:?} is longer than 255 bytes",
            e.pack_blob_id
        ))
    })
}

/// Unique pack IDs in order of first appearance, and each one's offset in the extra data.
fn pack_names<'a>(sorted: &[&'a IndexEntry]) -> (Vec<&'a str>, HashMap<&'a str, u32>, usize) {
    let mut order = Vec::new();
    let mut index = HashMap::new();
    let mut extra_len = 0usize;
    for e in sorted {
        let name: &str = &e.pack_blob_id;
        if let Entry::Vacant(v) = index.entry(name) {
            v.insert(order.len() as u32);
            order.push(name);
            extra_len += name.len();
        }
    }
    (order, index, extra_len)
}

fn write_v1(sorted: &[&IndexEntry]) -> Result<Vec<u8>> {
    let Some(first) = sorted.first() else {
        let mut out = vec![VERSION_1, EMPTY_KEY_SIZE];
        out.extend_from_slice(&(V1_VALUE_LEN as u16).to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        return Ok(out);
    };
    let key_size = key_len(first);
    for e in sorted {
        check_key_len(e, key_size)?;
        if e.compression_header_id != 0 {
            return Err(FormatError::Unsupported {
                what: "index v1 feature",
                name: "compression".into(),
            });
        }
        if e.encryption_key_id != 0 {
            return Err(FormatError::Unsupported {
                what: "index v1 feature",
                name: "encryption key ID".into(),
            });
        }
        if e.pack_blob_id.is_empty() {
            return Err(FormatError::malformed(
                "index v1 entry",
                format!("empty pack blob ID for {}", e.content_id),
            ));
        }
        if e.pack_offset & V1_DELETED != 0 {
            return Err(limit(format!(
                "pack offset {} is too high for index v1",
                e.pack_offset
            )));
        }
        pack_name_len(e)?;
    }

    let (names, _, extra_len) = pack_names(sorted);
    let entries_len = sorted.len() * (key_size + V1_VALUE_LEN);
    let extra_offset = V1_HEADER_LEN + entries_len;
    to_u32(extra_offset + extra_len, "extra data end")?;
    let mut name_offsets: HashMap<&str, u32> = HashMap::with_capacity(names.len());
    let mut pos = extra_offset;
    for n in &names {
        name_offsets.insert(n, pos as u32);
        pos += n.len();
    }

    let mut out = Vec::with_capacity(extra_offset + extra_len);
    out.push(VERSION_1);
    out.push(key_size as u8);
    out.extend_from_slice(&(V1_VALUE_LEN as u16).to_be_bytes());
    out.extend_from_slice(&to_u32(sorted.len(), "entry count")?.to_be_bytes());
    for e in sorted {
        push_key(&mut out, &e.content_id);
        // kopia packs these into one BE64; the timestamp keeps its low 48 bits.
        let ts_and_flags = ((e.timestamp_seconds as u64) << 16)
            | (u64::from(e.format_version) << 8)
            | e.pack_blob_id.len() as u64;
        out.extend_from_slice(&ts_and_flags.to_be_bytes());
        out.extend_from_slice(&name_offsets[&*e.pack_blob_id].to_be_bytes());
        let offset_and_flag = e.pack_offset | if e.deleted { V1_DELETED } else { 0 };
        out.extend_from_slice(&offset_and_flag.to_be_bytes());
        out.extend_from_slice(&e.packed_length.to_be_bytes());
    }
    for n in names {
        out.extend_from_slice(n.as_bytes());
    }
    Ok(out)
}

fn write_v2(sorted: &[&IndexEntry]) -> Result<Vec<u8>> {
    let mut formats: Vec<FormatKey> = Vec::new();
    let mut format_index: HashMap<FormatKey, u8> = HashMap::new();
    for e in sorted {
        let k = format_key(e);
        if let Entry::Vacant(v) = format_index.entry(k) {
            v.insert(formats.len() as u8);
            formats.push(k);
            if formats.len() > V2_MAX_FORMATS {
                // Count them all for kopia's message.
                let total = sorted
                    .iter()
                    .map(|e| format_key(e))
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                return Err(limit(format!(
                    "unsupported - too many unique formats {total} (max {V2_MAX_FORMATS})"
                )));
            }
        }
    }
    let mut value_len = V2_MIN_VALUE_LEN;
    if formats.len() > 1 {
        value_len = value_len.max(17);
    }
    let (names, pack_index, extra_len) = pack_names(sorted);
    if names.len() > V2_MAX_PACKS {
        return Err(limit(format!(
            "unsupported - too many unique pack IDs {} (max {V2_MAX_PACKS})",
            names.len()
        )));
    }
    if names.len() > V2_MAX_SHORT_PACKS {
        value_len = value_len.max(18);
    }
    let max_packed = sorted.iter().map(|e| e.packed_length).max().unwrap_or(0);
    let max_original = sorted.iter().map(|e| e.original_length).max().unwrap_or(0);
    let max_offset = sorted.iter().map(|e| e.pack_offset).max().unwrap_or(0);
    if max_packed >= V2_MAX_CONTENT_LENGTH || max_original >= V2_MAX_CONTENT_LENGTH {
        return Err(limit(format!(
            "maximum content length is too high: (packed {max_packed}, original {max_original}, max {V2_MAX_CONTENT_LENGTH})"
        )));
    }
    if max_packed >= V2_MAX_SHORT_CONTENT_LENGTH || max_original >= V2_MAX_SHORT_CONTENT_LENGTH {
        value_len = V2_MAX_VALUE_LEN;
    }
    if max_offset >= V2_MAX_PACK_OFFSET {
        return Err(limit(format!("pack offset {max_offset} is too high")));
    }
    let key_size = sorted.first().map_or(0, |e| key_len(e));
    if key_size <= 1 {
        return Err(FormatError::malformed(
            "index v2",
            format!("invalid key length: {key_size} for {}", sorted.len()),
        ));
    }
    for e in sorted {
        check_key_len(e, key_size)?;
        pack_name_len(e)?;
    }

    let extra_offset = V2_HEADER_LEN
        + sorted.len() * (key_size + value_len)
        + names.len() * V2_PACK_RECORD_LEN
        + formats.len() * V2_FORMAT_RECORD_LEN;
    to_u32(extra_offset + extra_len, "extra data end")?;

    let mut out = Vec::with_capacity(extra_offset + extra_len);
    out.push(VERSION_2);
    out.push(key_size as u8);
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.extend_from_slice(&to_u32(sorted.len(), "entry count")?.to_be_bytes());
    out.extend_from_slice(&(names.len() as u32).to_be_bytes());
    out.push(formats.len() as u8);
    // kopia never sets the base timestamp.
    out.extend_from_slice(&0u32.to_be_bytes());

    for e in sorted {
        push_key(&mut out, &e.content_id);
        let mut v = [0u8; V2_MAX_VALUE_LEN];
        // The timestamp keeps its low 32 bits, as in kopia.
        v[0..4].copy_from_slice(&(e.timestamp_seconds as u32).to_be_bytes());
        let offset_and_flag = e.pack_offset | if e.deleted { V2_DELETED } else { 0 };
        v[4..8].copy_from_slice(&offset_and_flag.to_be_bytes());
        v[8..11].copy_from_slice(&e.original_length.to_be_bytes()[1..]);
        v[11..14].copy_from_slice(&e.packed_length.to_be_bytes()[1..]);
        let pack = pack_index[&*e.pack_blob_id];
        v[14..16].copy_from_slice(&(pack as u16).to_be_bytes());
        v[16] = format_index[&format_key(e)];
        v[17] = (pack >> 16) as u8;
        v[18] = (((e.original_length >> 24) as u8) << 4) | ((e.packed_length >> 24) as u8 & 0x0f);
        // The entry size was chosen so that every byte beyond it is zero.
        debug_assert!(v[value_len..].iter().all(|&b| b == 0));
        out.extend_from_slice(&v[..value_len]);
    }
    let mut name_pos = extra_offset;
    for n in &names {
        // kopia gives an empty pack ID the offset of the extra data itself.
        let offset = if n.is_empty() { extra_offset } else { name_pos };
        out.push(n.len() as u8);
        out.extend_from_slice(&(offset as u32).to_be_bytes());
        name_pos += n.len();
    }
    for (compression, format_version, key_id) in &formats {
        out.extend_from_slice(&compression.to_be_bytes());
        out.push(*format_version);
        out.push(*key_id);
    }
    for n in names {
        out.extend_from_slice(n.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Index, tests::entry};
    use super::*;

    const PACK_A: &str = "p0123456789abcdef0123456789abcdef-s0123456789abcdef13c";
    const PACK_B: &str = "qfedcba9876543210fedcba9876543210-s0123456789abcdef13c";

    fn spec_entries(compressed: bool) -> [IndexEntry; 2] {
        let a = IndexEntry {
            content_id: ContentId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            timestamp_seconds: 1_700_000_000,
            deleted: false,
            pack_blob_id: PACK_A.into(),
            pack_offset: 32,
            packed_length: if compressed { 532 } else { 1028 },
            original_length: 1000,
            compression_header_id: if compressed { 0x1101 } else { 0 },
            format_version: 3,
            encryption_key_id: 0,
        };
        let b = IndexEntry {
            content_id: ContentId::parse("kfedcba9876543210fedcba9876543210").unwrap(),
            timestamp_seconds: 1_700_000_001,
            deleted: true,
            pack_blob_id: PACK_B.into(),
            pack_offset: 32,
            packed_length: 328,
            original_length: 300,
            compression_header_id: 0,
            format_version: 3,
            encryption_key_id: 0,
        };
        [a, b]
    }

    fn builder(entries: impl IntoIterator<Item = IndexEntry>) -> IndexBuilder {
        let mut b = IndexBuilder::new();
        for e in entries {
            b.add(e);
        }
        b
    }

    const SPEC_V2: &str = "0211001100000002000000020200000000000123456789abcdef0123456789abcdef6553f100000000200003e80002140000006bfedcba9876543210fedcba98765432106553f1018000002000012c000148000101360000006b36000000a10000110103000000000003007030313233343536373839616263646566303132333435363738396162636465662d73303132333435363738396162636465663133637166656463626139383736353433323130666564636261393837363534333231302d7330313233343536373839616263646566313363";
    const SPEC_V1: &str = "0111001400000002000123456789abcdef0123456789abcdef00006553f10003360000005200000020000004046bfedcba9876543210fedcba987654321000006553f10103360000008880000020000001487030313233343536373839616263646566303132333435363738396162636465662d73303132333435363738396162636465663133637166656463626139383736353433323130666564636261393837363534333231302d7330313233343536373839616263646566313363";

    #[test]
    fn spec_worked_example_v2() {
        let entries = spec_entries(true);
        // Added in reverse to show the output is sorted.
        let bytes = builder(entries.iter().rev().cloned()).build_v2().unwrap();
        assert_eq!(bytes.len(), 215);
        assert_eq!(hex::encode(&bytes), SPEC_V2);
        assert_eq!(builder(entries.clone()).build(2).unwrap(), bytes);
        let ix = Index::parse(bytes, 28).unwrap();
        assert_eq!(ix.iter().collect::<Vec<_>>(), entries);
    }

    #[test]
    fn spec_worked_example_v1() {
        let entries = spec_entries(false);
        let bytes = builder(entries.clone()).build_v1(28).unwrap();
        assert_eq!(bytes.len(), 190);
        assert_eq!(hex::encode(&bytes), SPEC_V1);
        assert_eq!(builder(entries.clone()).build(1).unwrap(), bytes);
        let ix = Index::parse(bytes, 28).unwrap();
        assert_eq!(ix.version(), 1);
        assert_eq!(ix.iter().collect::<Vec<_>>(), entries);
    }

    #[test]
    fn v1_refuses_what_it_cannot_store() {
        let [a, b] = spec_entries(true);
        assert!(builder([a.clone()]).build_v1(28).is_err(), "compressed");
        assert!(builder([a]).build(1).is_err(), "compressed, unchecked path");
        assert!(
            builder([b.clone()]).build_v1(27).is_err(),
            "original length would read back as 301"
        );
        let keyed = IndexEntry {
            encryption_key_id: 1,
            ..b.clone()
        };
        assert!(builder([keyed]).build(1).is_err());
        let no_pack = IndexEntry {
            pack_blob_id: "".into(),
            ..b.clone()
        };
        assert!(builder([no_pack]).build(1).is_err());
        let far = IndexEntry {
            pack_offset: 1 << 31,
            ..b
        };
        assert!(builder([far]).build(1).is_err());
    }

    #[test]
    fn empty_indexes() {
        let v1 = IndexBuilder::new().build(1).unwrap();
        assert_eq!(hex::encode(&v1), "01ff001400000000");
        let ix = Index::parse(v1, 28).unwrap();
        assert!(ix.is_empty());
        assert_eq!(
            ix.lookup(&ContentId::parse("00112233445566778899aabbccddeeff").unwrap()),
            None
        );
        assert!(
            IndexBuilder::new().build_v2().is_err(),
            "kopia's v2 builder refuses empty indexes"
        );
        assert!(IndexBuilder::new().build(3).is_err());
    }

    /// kopia's TestPackIndexPerContentLimits.
    #[test]
    fn v2_per_content_limits() {
        let base = IndexEntry {
            content_id: ContentId::parse("x00112233445566778899aabbccddeeff00112233").unwrap(),
            timestamp_seconds: 0,
            deleted: false,
            pack_blob_id: "".into(),
            pack_offset: 0,
            packed_length: 0,
            original_length: 0,
            compression_header_id: 0,
            format_version: 0,
            encryption_key_id: 0,
        };
        let cases = [
            (
                IndexEntry {
                    packed_length: 1 << 28,
                    ..base.clone()
                },
                Some("maximum content length is too high"),
            ),
            (
                IndexEntry {
                    packed_length: (1 << 28) - 1,
                    ..base.clone()
                },
                None,
            ),
            (
                IndexEntry {
                    original_length: 1 << 28,
                    ..base.clone()
                },
                Some("maximum content length is too high"),
            ),
            (
                IndexEntry {
                    original_length: (1 << 28) - 1,
                    ..base.clone()
                },
                None,
            ),
            (
                IndexEntry {
                    pack_offset: 1 << 30,
                    ..base.clone()
                },
                Some("pack offset 1073741824 is too high"),
            ),
            (
                IndexEntry {
                    pack_offset: (1 << 30) - 1,
                    ..base.clone()
                },
                None,
            ),
        ];
        for (e, err) in cases {
            let result = builder([e.clone()]).build_v2();
            match err {
                Some(msg) => assert!(result.unwrap_err().to_string().contains(msg), "{e:?}"),
                None => {
                    let ix = Index::parse(result.unwrap(), 27).unwrap();
                    assert_eq!(ix.lookup(&e.content_id), Some(e));
                }
            }
        }
    }

    fn sha1_id(i: usize) -> ContentId {
        let h = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            i.to_string().as_bytes(),
        );
        let mut prefix = None;
        if i.is_multiple_of(2) {
            prefix = Some(b'x');
        }
        if i.is_multiple_of(7) {
            prefix = Some(b'y');
        }
        if i.is_multiple_of(5) {
            prefix = Some(b'm');
        }
        ContentId::from_hash(prefix, h.as_ref()).unwrap()
    }

    /// kopia's TestPackIndexV2TooManyUniqueFormats.
    #[test]
    fn v2_too_many_formats() {
        let mut b = IndexBuilder::new();
        for i in 0..255 {
            let id = sha1_id(i);
            b.add(IndexEntry {
                content_id: id,
                timestamp_seconds: 0,
                deleted: false,
                pack_blob_id: id.to_string().into(),
                pack_offset: 0,
                packed_length: 0,
                original_length: 0,
                compression_header_id: 1000 + i as u32,
                format_version: 1,
                encryption_key_id: 0,
            });
        }
        let bytes = b.build_v2().unwrap();
        assert_eq!(Index::parse(bytes, 0).unwrap().len(), 255);
        let mut extra = b.get(&sha1_id(0)).unwrap().clone();
        extra.content_id = sha1_id(255);
        extra.compression_header_id = 5000;
        b.add(extra);
        assert_eq!(
            b.build_v2().unwrap_err().to_string(),
            "unsupported - too many unique formats 256 (max 255)"
        );
    }

    #[test]
    fn v2_entry_size_follows_the_writer_rules() {
        let id = |i: u32| {
            ContentId::from_hash(None, &[(i >> 16) as u8, (i >> 8) as u8, i as u8, 0xAA]).unwrap()
        };
        let plain = |i: u32, pack: Arc<str>| IndexEntry {
            content_id: id(i),
            timestamp_seconds: 1,
            deleted: false,
            pack_blob_id: pack,
            pack_offset: i,
            packed_length: 100,
            original_length: 90,
            compression_header_id: 0x1100,
            format_version: 2,
            encryption_key_id: 0,
        };
        let entry_size = |bytes: &[u8]| u16::from_be_bytes([bytes[2], bytes[3]]);
        let check = |b: &IndexBuilder, want: u16| {
            let bytes = b.build_v2().unwrap();
            assert_eq!(entry_size(&bytes), want);
            let ix = Index::parse(bytes, 0).unwrap();
            for e in b.sorted_entries() {
                assert_eq!(ix.lookup(&e.content_id).as_ref(), Some(e));
            }
        };
        let shared: Arc<str> = "p1".into();
        let mut b = builder((0..10).map(|i| plain(i, shared.clone())));
        check(&b, 16);
        b.add(IndexEntry {
            compression_header_id: 0,
            ..plain(10, shared.clone())
        });
        check(&b, 17);
        b.add(IndexEntry {
            packed_length: 1 << 24,
            ..plain(11, shared.clone())
        });
        check(&b, 19);
        let b = builder([IndexEntry {
            original_length: (1 << 28) - 1,
            ..plain(0, shared.clone())
        }]);
        check(&b, 19);
        // More than 2^16 packs needs the third pack index byte (entries get distinct packs).
        let b = builder((0..=(1u32 << 16)).map(|i| plain(i, format!("p{i}").into())));
        check(&b, 18);
        let b = builder((0..(1u32 << 16)).map(|i| plain(i, format!("p{i}").into())));
        check(&b, 16);
    }

    #[test]
    fn duplicate_ids_keep_the_greater_entry() {
        let mut b = IndexBuilder::new();
        b.add(entry("aabbcc", 1, "xx", 11, false));
        b.add(entry("aabbcc", 3, "yy", 33, false));
        b.add(entry("aabbcc", 2, "zz", 22, false));
        assert_eq!(b.len(), 1);
        assert_eq!(
            b.get(&ContentId::parse("aabbcc").unwrap())
                .unwrap()
                .pack_offset,
            33
        );
    }

    #[test]
    fn inconsistent_key_lengths_are_refused() {
        let b = builder([
            entry("aabbcc", 1, "xx", 1, false),
            entry("aabbccdd", 1, "xx", 1, false),
        ]);
        assert!(b.build_v2().is_err());
        assert!(b.build(1).is_err());
    }

    #[test]
    fn fnv_vector() {
        let id = ContentId::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(fnv1a32_of_id(&id), 0x86d0_4db5);
        let prefixed = ContentId::parse("k0123").unwrap();
        let mut h: u32 = 0x811c_9dc5;
        for b in b"k0123" {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        assert_eq!(fnv1a32_of_id(&prefixed), h);
    }

    /// Many folds (with IDs added again, newer and older, before and after folding) keep
    /// exactly the winner of each ID, in key order, as a map of every entry would.
    #[test]
    fn folded_entries_match_a_map_of_winners() {
        let mut b = IndexBuilder::new();
        let mut model: std::collections::BTreeMap<ContentId, IndexEntry> = Default::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..(5 * MIN_FOLD_AT) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = sha1_id((x % (3 * MIN_FOLD_AT as u64)) as usize);
            let e = IndexEntry {
                content_id: id,
                timestamp_seconds: (x >> 40) as i64 % 7,
                deleted: x & 1 == 1,
                pack_offset: step as u32,
                ..entry("00", 0, "p1", 0, false)
            };
            b.add(e.clone());
            match model.get(&id) {
                Some(old) if !is_greater(&e, old) => {}
                _ => {
                    model.insert(id, e);
                }
            }
        }
        assert!(!b.sorted.is_empty() && !b.recent.is_empty());
        assert!(
            b.sorted
                .iter()
                .map(|e| key_prefix(&e.content_id))
                .eq(b.sorted_prefixes.iter().copied())
        );
        assert_eq!(b.len(), model.len());
        let got: Vec<&IndexEntry> = b.sorted_entries();
        let mut want: Vec<&IndexEntry> = model.values().collect();
        want.sort_by(|a, b| key_order(&a.content_id, &b.content_id));
        assert!(got == want, "entries or their order differ from the model");
        for e in model.values() {
            assert_eq!(b.get(&e.content_id), Some(e));
        }
        assert_eq!(b.get(&sha1_id(usize::MAX)), None);
    }

    /// kopia's TestShard.
    #[test]
    fn kopia_shard_vectors() {
        let mut b = IndexBuilder::new();
        for i in 0..10_000 {
            b.add(IndexEntry {
                content_id: sha1_id(i),
                ..entry("00", 0, "", 0, false)
            });
        }
        let sizes = |max: usize| {
            let shards = b.clone().shard(max);
            let mut all: Vec<ContentId> = shards
                .iter()
                .flat_map(|s| s.sorted_entries().into_iter().map(|e| e.content_id))
                .collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 10_000);
            let mut v: Vec<usize> = shards.iter().map(IndexBuilder::len).collect();
            v.sort();
            v
        };
        assert_eq!(sizes(100_000), [10_000]);
        assert_eq!(sizes(100).len(), 100);
        assert_eq!(
            sizes(500),
            [
                460, 472, 473, 477, 479, 483, 486, 492, 498, 499, 501, 503, 504, 505, 511, 519,
                524, 528, 542, 544
            ]
        );
        assert_eq!(
            sizes(1000),
            [945, 964, 988, 988, 993, 1002, 1014, 1017, 1021, 1068]
        );
        assert_eq!(sizes(2000), [1952, 1995, 2005, 2013, 2035]);
        assert!(IndexBuilder::new().shard(10).is_empty());
        assert_eq!(builder([entry("aa", 0, "p", 0, false)]).shard(0).len(), 1);
    }
}
