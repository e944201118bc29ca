//! Index plaintexts written by kopia, checked against kopia's own reading of them
//! (see tests/data/index/README.md).

use std::path::PathBuf;

use kmover_format::ContentId;
use kmover_format::index::{Index, IndexBuilder, IndexEntry};

const V1_OVERHEAD: u32 = 28;

fn expected_entries(json: &serde_json::Value) -> Vec<IndexEntry> {
    let field = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| IndexEntry {
            content_id: ContentId::parse(v["contentID"].as_str().unwrap()).unwrap(),
            timestamp_seconds: v["timestamp"].as_i64().unwrap(),
            deleted: v["deleted"].as_bool().unwrap(),
            pack_blob_id: v["pack"].as_str().unwrap().into(),
            pack_offset: field(v, "packOffset") as u32,
            packed_length: field(v, "packedLength") as u32,
            original_length: field(v, "originalLength") as u32,
            compression_header_id: field(v, "compression") as u32,
            format_version: field(v, "formatVersion") as u8,
            encryption_key_id: field(v, "encryptionKeyID") as u8,
        })
        .collect()
}

#[test]
fn kopia_indexes_read_as_kopia_reads_them_and_rebuild_identically() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/index");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        let expected = expected_entries(&json);

        let ix = Index::parse(bytes.clone(), V1_OVERHEAD).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ix.iter().collect::<Vec<_>>(), expected, "{name}");
        for e in &expected {
            assert_eq!(ix.lookup(&e.content_id).as_ref(), Some(e), "{name}");
        }

        let mut builder = IndexBuilder::new();
        expected.iter().cloned().for_each(|e| builder.add(e));
        let rebuilt = builder.build(ix.version()).unwrap();
        if ix.version() == 1 {
            assert_eq!(builder.build_v1(V1_OVERHEAD).unwrap(), rebuilt, "{name}");
        }
        assert!(
            bytes.starts_with(&rebuilt),
            "{name}: our build differs from kopia's"
        );
        let tail = bytes.len() - rebuilt.len();
        assert!(
            tail == 0 || tail == 32,
            "{name}: unexpected {tail} trailing bytes"
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}
