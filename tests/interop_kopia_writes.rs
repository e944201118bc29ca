//! kopia writes, kmover reads: the real kopia creates a repository and
//! snapshots the sample tree in one setting per test; kmover then connects
//! and must list exactly the same contents, index blobs and blobs, and return
//! every content byte for byte as kopia does.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    Kmover, Kopia, KopiaVersion, RepositoryCli, json_diff, sample_tree, write_random_file,
};
use serde_json::Value;

use KopiaVersion::{V0_21, V0_22, V0_23};

/// `content show` calls take this many IDs at once (each call pays the
/// repository's key derivation, so batching saves seconds per test).
const SHOW_BATCH: usize = 200;

/// One repository setting to test.
struct Case {
    test: &'static str,
    version: KopiaVersion,
    /// Flags for `kopia repository create filesystem`.
    create_flags: &'static [&'static str],
    /// Global compression policy set before the snapshot.
    compression: Option<&'static str>,
    /// Also snapshot a file big enough to be split into several chunks.
    large_file: bool,
    /// Mark one content deleted, so deleted index entries are compared too.
    delete_one_content: bool,
}

impl Case {
    const fn new(test: &'static str, version: KopiaVersion) -> Case {
        Case {
            test,
            version,
            create_flags: &[],
            compression: None,
            large_file: false,
            delete_one_content: false,
        }
    }

    const fn create_flags(mut self, flags: &'static [&'static str]) -> Case {
        self.create_flags = flags;
        self
    }

    const fn compression(mut self, name: &'static str) -> Case {
        self.compression = Some(name);
        self
    }
}

/// kopia writes the repository for `case`, then kmover must read it exactly
/// as kopia does.
fn check(case: Case) {
    if let Some(written) = kopia_writes(&case) {
        compare_reader(&written, &Kmover::new());
    }
}

/// A repository kopia wrote, with the kopia that wrote it still connected.
struct Written {
    kopia: Kopia,
    repo: std::path::PathBuf,
    /// kopia's `content list --json --deleted`.
    contents: Vec<Value>,
    _work: tempfile::TempDir,
}

fn kopia_writes(case: &Case) -> Option<Written> {
    let kopia = Kopia::find(case.version, case.test)?;
    let work = tempfile::tempdir().expect("temporary directory");
    let source = work.path().join("source");
    let repo = work.path().join("repo");
    sample_tree(&source);
    if case.large_file {
        write_random_file(&source, "large.bin", 7, 9 * 1024 * 1024);
    }

    kopia.create_filesystem_repo(&repo, case.create_flags);
    if let Some(name) = case.compression {
        kopia.set_global_policy(&[&format!("--compression={name}")]);
    }
    kopia.snapshot_create(&source);
    if case.delete_one_content {
        let victim = kopia
            .content_list_json()
            .iter()
            .map(content_id)
            .find(|id| !has_prefix(id))
            .expect("the snapshot wrote no data content");
        kopia.content_delete(&victim);
    }

    let contents = kopia.content_list_json_with_deleted();
    sanity_check_kopia_side(case, &contents);
    Some(Written {
        kopia,
        repo,
        contents,
        _work: work,
    })
}

/// `reader` connects to the repository and must see exactly what kopia sees.
fn compare_reader<R: RepositoryCli>(written: &Written, reader: &R) {
    let kopia = &written.kopia;
    reader.connect_filesystem(&written.repo);

    assert_same_contents(
        &kopia.content_list_json(),
        &reader.content_list_json(),
        "content list",
    );
    assert_same_contents(
        &written.contents,
        &reader.content_list_json_with_deleted(),
        "content list --deleted",
    );
    assert_same_plaintexts(kopia, reader, &written.contents);

    assert_eq!(
        blob_ids_and_lengths(&kopia.index_list_json()),
        blob_ids_and_lengths(&reader.index_list_json()),
        "index list: kopia (left) and the reader (right) show different index blobs"
    );
    assert_eq!(
        blob_ids_and_lengths(&kopia.blob_list_json()),
        blob_ids_and_lengths(&reader.blob_list_json()),
        "blob list: kopia (left) and the reader (right) show different blobs"
    );
    assert_same_format(
        &kopia.repository_status_json(),
        &reader.repository_status_json(),
    );

    reader.run(["content", "verify", "--full"]);
}

/// Guards against a test that passes without exercising its setting.
fn sanity_check_kopia_side(case: &Case, contents: &[Value]) {
    assert!(
        contents.len() > 10,
        "kopia wrote only {} contents",
        contents.len()
    );
    if case.compression.is_some() {
        assert!(
            contents
                .iter()
                .any(|c| !has_prefix(&content_id(c)) && compression_id(c) != 0),
            "with compression {:?} kopia compressed no data content: the sample tree is not compressible enough",
            case.compression
        );
    }
    if case.large_file {
        assert!(
            contents.iter().any(|c| content_id(c).starts_with('x')),
            "the large file produced no indirect (x) content: it was not split"
        );
    }
    if case.delete_one_content {
        assert!(
            contents.iter().any(|c| c["deleted"] == Value::Bool(true)),
            "kopia listed no deleted content after `content delete`"
        );
    }
}

fn content_id(entry: &Value) -> String {
    entry["contentID"]
        .as_str()
        .unwrap_or_else(|| panic!("content entry without contentID: {entry}"))
        .to_owned()
}

fn compression_id(entry: &Value) -> u64 {
    entry
        .get("compression")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Content IDs of kopia's own metadata start with a letter prefix g..z; data
/// content IDs are bare hex.
fn has_prefix(id: &str) -> bool {
    id.len() % 2 == 1
}

fn by_content_id(entries: &[Value]) -> BTreeMap<String, &Value> {
    entries.iter().map(|e| (content_id(e), e)).collect()
}

/// Compares two `content list --json` outputs entry by entry (order-insensitive).
fn assert_same_contents(kopia: &[Value], kmover: &[Value], what: &str) {
    let expected = by_content_id(kopia);
    let actual = by_content_id(kmover);
    if expected == actual && kopia.len() == kmover.len() {
        return;
    }
    let mut report = format!(
        "{what}: kmover differs from kopia ({} vs {} entries)\n",
        kmover.len(),
        kopia.len()
    );
    let mut shown = 0;
    for (id, want) in &expected {
        if shown == 20 {
            report.push_str("  ...\n");
            break;
        }
        match actual.get(id) {
            None => report.push_str(&format!("only kopia lists {id}: {want}\n")),
            Some(got) if got != want => {
                report.push_str(&format!("{id} differs:\n"));
                report.push_str(&json_diff("kopia", want, "kmover", got));
            }
            Some(_) => continue,
        }
        shown += 1;
    }
    for (id, got) in actual
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .take(20)
    {
        report.push_str(&format!("only kmover lists {id}: {got}\n"));
    }
    if kmover.len() != actual.len() {
        report.push_str("kmover lists some content IDs more than once\n");
    }
    panic!("{report}");
}

/// `content show` of every listed content (deleted ones too) must match.
fn assert_same_plaintexts<R: RepositoryCli>(kopia: &Kopia, kmover: &R, contents: &[Value]) {
    let entries: Vec<(String, usize)> = contents
        .iter()
        .map(|c| {
            let length = c["originalLength"]
                .as_u64()
                .unwrap_or_else(|| panic!("no originalLength in {c}"));
            (
                content_id(c),
                usize::try_from(length).expect("length fits usize"),
            )
        })
        .collect();
    for batch in entries.chunks(SHOW_BATCH) {
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let want = kopia.content_show_many(&ids);
        let got = kmover.content_show_many(&ids);
        if want == got {
            continue;
        }
        // Find the first content that differs, using kopia's lengths to cut
        // both concatenations apart.
        let mut offset = 0;
        for (id, length) in batch {
            let end = offset + length;
            let want_part = want.get(offset..end);
            let got_part = got.get(offset..end.min(got.len()));
            if want_part != got_part {
                let got_len = got_part.map_or(0, <[u8]>::len);
                let first_diff = want_part
                    .unwrap_or_default()
                    .iter()
                    .zip(got_part.unwrap_or_default())
                    .position(|(a, b)| a != b);
                panic!(
                    "content show {id}: kmover returned different bytes than kopia \
                     (kopia {length} bytes, kmover {got_len} at the same offset; first differing byte: {first_diff:?}; \
                     whole batch: kopia {} bytes, kmover {} bytes)",
                    want.len(),
                    got.len()
                );
            }
            offset = end;
        }
        panic!(
            "content show: batch output differs in length: kopia {} bytes, kmover {} bytes",
            want.len(),
            got.len()
        );
    }
}

/// `(id, length)` of every blob in an `index list --json` or `blob list --json`.
fn blob_ids_and_lengths(list: &[Value]) -> BTreeSet<(String, u64)> {
    list.iter()
        .map(|b| {
            let id = b["id"]
                .as_str()
                .unwrap_or_else(|| panic!("blob entry without id: {b}"));
            let length = b["length"]
                .as_u64()
                .unwrap_or_else(|| panic!("blob entry without length: {b}"));
            (id.to_owned(), length)
        })
        .collect()
}

/// The parts of `repository status --json` that describe the repository
/// itself (not this client's config, host or disk) must agree.
fn assert_same_format(kopia: &Value, kmover: &Value) {
    for key in ["uniqueIDHex", "contentFormat", "objectFormat"] {
        assert!(
            kopia.get(key).is_some(),
            "kopia's repository status has no {key}: {kopia}"
        );
        assert!(
            kopia[key] == kmover[key],
            "repository status: {key} differs between kopia and kmover:\n{}",
            json_diff("kopia", &kopia[key], "kmover", &kmover[key])
        );
    }
}

/// The harness itself: a second, independent kopia client must pass every
/// comparison, so a kmover failure is kmover's and not the harness's.
#[test]
fn harness_kopia_reads_kopia() {
    let mut case = Case::new("harness_kopia_reads_kopia", V0_22);
    case.delete_one_content = true;
    let Some(written) = kopia_writes(&case) else {
        return;
    };
    let Some(second_client) = Kopia::find(V0_22, case.test) else {
        return;
    };
    compare_reader(&written, &second_client);
}

#[test]
fn defaults() {
    let mut case = Case::new("defaults", V0_22);
    case.large_file = true;
    case.delete_one_content = true;
    check(case);
}

#[test]
fn compression_zstd_fastest() {
    check(Case::new("compression_zstd_fastest", V0_22).compression("zstd-fastest"));
}

#[test]
fn compression_s2_default() {
    check(Case::new("compression_s2_default", V0_22).compression("s2-default"));
}

#[test]
fn compression_gzip() {
    check(Case::new("compression_gzip", V0_22).compression("gzip"));
}

#[test]
fn compression_pgzip() {
    check(Case::new("compression_pgzip", V0_22).compression("pgzip"));
}

#[test]
fn compression_deflate_default() {
    check(Case::new("compression_deflate_default", V0_22).compression("deflate-default"));
}

#[test]
fn encryption_chacha20_poly1305() {
    check(
        Case::new("encryption_chacha20_poly1305", V0_22)
            .create_flags(&["--encryption=CHACHA20-POLY1305-HMAC-SHA256"]),
    );
}

#[test]
fn block_hash_blake3() {
    check(Case::new("block_hash_blake3", V0_22).create_flags(&["--block-hash=BLAKE3-256-128"]));
}

#[test]
fn key_derivation_pbkdf2() {
    check(
        Case::new("key_derivation_pbkdf2", V0_22)
            .create_flags(&["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"]),
    );
}

#[test]
fn format_version_1() {
    check(Case::new("format_version_1", V0_22).create_flags(&["--format-version=1"]));
}

// Smoke runs against the oldest and newest supported kopia releases.

#[test]
fn kopia_0_21_defaults() {
    check(Case::new("kopia_0_21_defaults", V0_21));
}

#[test]
fn kopia_0_21_zstd_fastest() {
    check(Case::new("kopia_0_21_zstd_fastest", V0_21).compression("zstd-fastest"));
}

#[test]
fn kopia_0_23_defaults() {
    check(Case::new("kopia_0_23_defaults", V0_23));
}

#[test]
fn kopia_0_23_zstd_fastest() {
    check(Case::new("kopia_0_23_zstd_fastest", V0_23).compression("zstd-fastest"));
}
