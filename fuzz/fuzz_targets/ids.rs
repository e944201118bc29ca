//! Text identifiers: content and object IDs, epoch-manager blob names, blob-crypto IVs, session
//! IDs in blob names, times and directory-entry modes. The whole input is one ID; its lines are
//! also a blob listing.
#![no_main]

use kmover_format::ContentId;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::parse_mode;
use kmover_format::{blobcrypto, epoch, gotime, session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = kmover_fuzz::text(data);
    let s = text.as_ref();

    if let Ok(id) = ContentId::parse(s) {
        check_content_id(s, &id);
    }
    if let Ok(oid) = ObjectId::parse(s) {
        check_object_id(&oid);
    }
    check_epoch_names(s);

    if let Ok(iv) = blobcrypto::iv_from_blob_id(s) {
        let head = s.split('-').next().unwrap_or_default();
        let tail = &head.as_bytes()[head.len() - 32..];
        assert_eq!(hex::encode(iv).as_bytes(), tail.to_ascii_lowercase());
    }
    if let Some(sid) = session::session_id_of_blob(s) {
        assert!(sid.starts_with(session::SESSION_PREFIX) && !sid.contains('-'));
        assert!(s.contains(&format!("-{sid}")));
    }

    if let Ok(t) = UtcTimestamp::parse_rfc3339(s) {
        assert_eq!(UtcTimestamp::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
    }
    if let Ok(t) = gotime::parse(s) {
        // Go has no leap seconds: chrono's are written as .999999999 and read back differently.
        if let Ok(formatted) = gotime::format(&t)
            && t.timestamp_subsec_nanos() < 1_000_000_000
        {
            assert_eq!(gotime::parse(&formatted).unwrap(), t);
        }
    }
    if let Ok(mode) = parse_mode(s) {
        assert_eq!(parse_mode(&mode.to_string()).unwrap(), mode);
    }

    let listing: Vec<&str> = s.lines().collect();
    check_listing(&listing);
});

fn check_content_id(s: &str, id: &ContentId) {
    let canonical = id.to_string();
    assert_eq!(canonical, s.to_ascii_lowercase());
    assert_eq!(ContentId::parse(&canonical).unwrap(), *id);
    assert_eq!(ContentId::from_key(&id.key()).unwrap(), *id);
    let mut key = [0u8; kmover_format::content_id::MAX_HASH_LEN + 1];
    let n = id.write_key(&mut key);
    assert_eq!(key[..n], id.key());
    assert!(id.iv().len() <= 16 && id.hash().ends_with(id.iv()));
    assert_eq!(id.is_empty(), s.is_empty());
    assert_eq!(id.has_prefix(), id.prefix().is_some());
}

fn check_object_id(oid: &ObjectId) {
    let canonical = oid.to_string();
    assert_eq!(ObjectId::parse(&canonical).unwrap(), *oid);
    let json = serde_json::to_string(oid).unwrap();
    assert_eq!(serde_json::from_str::<ObjectId>(&json).unwrap(), *oid);
    assert_eq!(oid.is_empty(), canonical.is_empty());
    match oid.index_object_id() {
        Some(index) => assert_eq!(ObjectId::indirect(index).unwrap(), *oid),
        None => {
            assert_eq!(oid.indirection(), 0);
            let content = oid
                .content_id()
                .unwrap_or_else(|| ContentId::parse("").unwrap());
            let direct = if oid.is_compressed() {
                ObjectId::compressed(content)
            } else {
                ObjectId::direct(content)
            };
            assert_eq!(direct, *oid);
        }
    }
}

fn check_epoch_names(s: &str) {
    if let Some(n) = epoch::epoch_number_from_blob_id(s) {
        assert_eq!(
            epoch::epoch_number_from_blob_id(&epoch::epoch_marker_id(n)),
            Some(n)
        );
        let index = epoch::uncompacted_index_prefix(n) + "0123";
        assert_eq!(epoch::epoch_number_from_blob_id(&index), Some(n));
    }
    if let Some((min, max)) = epoch::epoch_range_from_blob_id(s) {
        let name = epoch::range_checkpoint_prefix(min, max) + "abcd";
        assert_eq!(epoch::epoch_range_from_blob_id(&name), Some((min, max)));
    }
    if let Some(t) = epoch::watermark_from_blob_id(s) {
        assert_eq!(
            epoch::watermark_from_blob_id(&epoch::watermark_id(t)),
            Some(t)
        );
    }
}

fn check_listing(listing: &[&str]) {
    // A blob may land in more than one set when its set's members disagree on the count, as in
    // kopia; every member comes from the listing all the same.
    let sets = epoch::find_complete_sets(listing);
    for set in &sets {
        assert!(!set.is_empty());
        assert!(set.iter().all(|id| listing.contains(id)));
    }
    let by = epoch::find_complete_sets_by(listing, |id| *id);
    assert_eq!(by.len(), sets.len());
    for (e, set) in epoch::first_complete_set_per_epoch(listing, |id| *id) {
        assert!(
            set.iter()
                .all(|id| epoch::epoch_number_from_blob_id(id) == Some(e))
        );
    }
    for set in epoch::first_complete_set_per_range(listing, |id| *id) {
        let range = Some((set.min_epoch, set.max_epoch));
        assert!(
            set.blobs
                .iter()
                .all(|id| epoch::epoch_range_from_blob_id(id) == range)
        );
    }

    let ranges: Vec<(u64, u64)> = listing
        .iter()
        .filter_map(|id| epoch::epoch_range_from_blob_id(id))
        .collect();
    let chain = epoch::longest_range_chain(&ranges);
    assert!(chain.iter().all(|r| ranges.contains(r)));
    let mut next = Some(0);
    for &(min, max) in &chain {
        assert_eq!(Some(min), next);
        next = max.checked_add(1);
    }

    // Content IDs order as their keys, and as their text.
    let mut ids: Vec<ContentId> = listing
        .iter()
        .filter_map(|l| ContentId::parse(l).ok())
        .collect();
    ids.sort();
    for pair in ids.windows(2) {
        assert!(pair[0].key() <= pair[1].key());
        assert!(pair[0].to_string() <= pair[1].to_string());
    }
}
