//! `index::Index::parse` (v1 and v2, chosen by the first byte), then iteration and lookups of
//! present and absent IDs; the raw walk must agree with iteration. For an index with strictly
//! ascending keys (what writers produce), lookups must agree with iteration and rebuilding the
//! entries must read back the same.
#![no_main]

use std::collections::BTreeMap;

use kmover_format::ContentId;
use kmover_format::encryption::OVERHEAD;
use kmover_format::index::{Index, IndexBuilder, IndexEntry};
use libfuzzer_sys::fuzz_target;

const V1_OVERHEAD: u32 = OVERHEAD as u32;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = Index::parse(data.to_vec(), V1_OVERHEAD) else {
        return;
    };
    assert_eq!(index.as_bytes(), data);
    let entries: Vec<IndexEntry> = index.iter().collect();
    assert_eq!(entries.len(), index.len());
    assert_eq!(index.is_empty(), entries.is_empty());

    // The compact in-memory table is built from the raw walk: it must agree with iteration.
    let mut walked = 0;
    index.for_each_raw(|key, raw| {
        let e = &entries[walked];
        walked += 1;
        assert_eq!(key, e.content_id.key().as_slice());
        let pack = raw.pack.and_then(|p| index.pack_ids().get(p as usize));
        if let Some(pack) = pack {
            assert_eq!(pack, &e.pack_blob_id);
        }
        assert_eq!(
            (
                raw.timestamp_seconds,
                raw.deleted,
                raw.pack_offset,
                raw.packed_length
            ),
            (
                e.timestamp_seconds,
                e.deleted,
                e.pack_offset,
                e.packed_length
            )
        );
        assert_eq!(
            (
                raw.original_length,
                raw.compression_header_id,
                raw.format_version,
                raw.encryption_key_id
            ),
            (
                e.original_length,
                e.compression_header_id,
                e.format_version,
                e.encryption_key_id
            )
        );
    });
    assert_eq!(walked, entries.len());

    let ascending = entries
        .windows(2)
        .all(|w| w[0].content_id.key() < w[1].content_id.key());
    if !ascending {
        // Lookups on unsorted keys may miss, but must not panic or return another ID.
        for e in &entries {
            if let Some(found) = index.lookup(&e.content_id) {
                assert_eq!(found.content_id, e.content_id);
            }
        }
        return;
    }

    let by_id: BTreeMap<ContentId, &IndexEntry> =
        entries.iter().map(|e| (e.content_id, e)).collect();
    for e in &entries {
        assert_eq!(index.lookup(&e.content_id).as_ref(), Some(e));
        for probe in neighbours(&e.content_id) {
            assert_eq!(index.lookup(&probe).as_ref(), by_id.get(&probe).copied());
        }
    }

    // kopia's v2 writer leaves the base timestamp at 0 and keeps the low 32 bits of each time, so
    // only hand-made indexes (with a base) hold times it cannot write back.
    let writable = index.version() == 1
        || entries
            .iter()
            .all(|e| u32::try_from(e.timestamp_seconds).is_ok());
    if !writable {
        return;
    }
    let mut builder = IndexBuilder::new();
    for e in &entries {
        builder.add(e.clone());
    }
    if let Ok(rebuilt) = builder.build(index.version()) {
        let reread: Vec<IndexEntry> = Index::parse(rebuilt, V1_OVERHEAD).unwrap().iter().collect();
        assert_eq!(reread, entries);
    }
});

/// IDs next to `id`: last hash byte ±1, one byte shorter and longer, other prefix.
fn neighbours(id: &ContentId) -> Vec<ContentId> {
    let hash = id.hash();
    let mut out = Vec::new();
    if let Some((&last, head)) = hash.split_last() {
        for b in [last.wrapping_add(1), last.wrapping_sub(1)] {
            let h = [head, &[b]].concat();
            out.extend(ContentId::from_hash(id.prefix(), &h));
        }
        out.extend(ContentId::from_hash(id.prefix(), head));
    }
    out.extend(ContentId::from_hash(id.prefix(), &[hash, &[0]].concat()));
    let other = if id.has_prefix() { None } else { Some(b'k') };
    out.extend(ContentId::from_hash(other, hash));
    out
}
