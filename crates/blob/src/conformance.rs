//! The behaviour every [`BlobStore`] must show (spec §1.2), as one suite shared by all backends and
//! wrappers. It panics with a message naming the store and the check that failed.
//!
//! The store must be empty when the suite starts; the suite deletes everything it wrote, so the
//! store is empty again afterwards.

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{Duration, Utc};
use futures::future::join_all;

use crate::{BlobError, BlobMetadata, BlobStore, Result};

/// Runs every check against `store`.
pub async fn run_conformance_suite(store: &dyn BlobStore) {
    let s = Suite {
        store,
        name: store.describe(),
    };
    let all = s.list("").await;
    assert!(
        all.is_empty(),
        "[{}] the conformance suite needs an empty store, found {all:?}",
        s.name
    );

    s.put_get_overwrite().await;
    s.empty_blob().await;
    s.large_blob().await;
    s.ranged_reads().await;
    s.metadata_and_timestamps().await;
    s.missing_blobs().await;
    s.delete_is_idempotent().await;
    s.listing_by_arbitrary_prefix().await;
    s.id_lengths_around_the_shard_boundary().await;
    s.concurrent_puts().await;
    s.concurrent_overwrites_are_atomic().await;

    let left = s.list("").await;
    assert!(
        left.is_empty(),
        "[{}] blobs left behind by the suite: {left:?}",
        s.name
    );
}

struct Suite<'a> {
    store: &'a dyn BlobStore,
    name: String,
}

/// Deterministic, incompressible-looking bytes (xorshift), different for each seed.
fn pseudo_random(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// IDs shaped like the ones kopia writes, with their contents.
fn kopia_like_blobs() -> BTreeMap<String, Vec<u8>> {
    let session = "s0123456789abcdef13c";
    let ids = [
        "kopia.repository".to_string(),
        "kopia.blobcfg".to_string(),
        "kopia.maintenance".to_string(),
        "kopia.repository.backup.user@host".to_string(),
        format!("p0123456789abcdef0123456789abcdef-{session}"),
        format!("p01fedcba9876543210fedcba98765432-{session}"),
        format!("p1123456789abcdef0123456789abcdef-{session}"),
        format!("pf123456789abcdef0123456789abcdef-{session}"),
        format!("q0123456789abcdef0123456789abcdef-{session}"),
        format!("s0123456789abcdef0123456789abcdef-{session}"),
        format!("xn0_0123456789abcdef0123456789abcdef-{session}-c1"),
        format!("xn0_fedcba9876543210fedcba98765432-{session}-c2"),
        format!("xn1_0123456789abcdef0123456789abcdef-{session}-c1"),
        format!("xn10_0123456789abcdef0123456789abcdef-{session}-c1"),
        "xs0_0123456789abcdef0123456789abcdef-s0123456789abcdef-c1".to_string(),
        "xr0_2_0123456789abcdef0123456789abcdef-s0123456789abcdef-c1".to_string(),
        "xe0".to_string(),
        "xe1".to_string(),
        "xw1700000000".to_string(),
        format!("n0123456789abcdef0123456789abcdef-{session}"),
        "n00000000000000000000000000000000-repository_unreadable_by_this_kopia_version_upgrade_required".to_string(),
        "m0123456789abcdef0123456789abcdef".to_string(),
        "l0123456789abcdef0123456789abcdef".to_string(),
        "_log_20240101120000_1a2b_1704110400_1704110460_1_0123456789abcdef0123456789abcdef".to_string(),
    ];
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| (id, pseudo_random(i as u64 + 100, i * 7)))
        .collect()
}

impl Suite<'_> {
    fn expect<T>(&self, what: &str, result: Result<T>) -> T {
        result.unwrap_or_else(|e| panic!("[{}] {what} failed: {e}", self.name))
    }

    fn expect_err<T: Debug>(&self, what: &str, result: Result<T>) -> BlobError {
        match result {
            Ok(value) => panic!(
                "[{}] {what} should have failed but returned {value:?}",
                self.name
            ),
            Err(e) => e,
        }
    }

    async fn put(&self, id: &str, data: &[u8]) {
        self.expect(
            &format!("put {id:?}"),
            self.store.put(id, data.to_vec()).await,
        );
    }

    async fn get(&self, id: &str) -> Vec<u8> {
        self.expect(&format!("get {id:?}"), self.store.get(id).await)
    }

    async fn delete(&self, id: &str) {
        self.expect(&format!("delete {id:?}"), self.store.delete(id).await);
    }

    async fn list(&self, prefix: &str) -> Vec<BlobMetadata> {
        let mut listed = self.expect(&format!("list {prefix:?}"), self.store.list(prefix).await);
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        for pair in listed.windows(2) {
            assert_ne!(
                pair[0].id, pair[1].id,
                "[{}] list({prefix:?}) returned an ID twice",
                self.name
            );
        }
        listed
    }

    async fn assert_content(&self, id: &str, expected: &[u8]) {
        let got = self.get(id).await;
        assert!(
            got == expected,
            "[{}] get {id:?} returned {} bytes that differ from the {} bytes put",
            self.name,
            got.len(),
            expected.len()
        );
    }

    fn assert_invalid_range(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        actual: u64,
        result: Result<Vec<u8>>,
    ) {
        let what = format!("get_range({id:?}, {offset}, {length}) of a {actual}-byte blob");
        match self.expect_err(&what, result.map(|v| v.len())) {
            BlobError::InvalidRange {
                id: got_id,
                actual: got_actual,
                ..
            } => {
                assert_eq!(
                    got_id, id,
                    "[{}] {what}: InvalidRange names the wrong blob",
                    self.name
                );
                assert_eq!(
                    got_actual, actual,
                    "[{}] {what}: InvalidRange reports the wrong length",
                    self.name
                );
            }
            other => panic!(
                "[{}] {what}: expected InvalidRange, got {other:?}",
                self.name
            ),
        }
    }

    async fn put_get_overwrite(&self) {
        let id = "kopia.repository";
        self.put(id, b"first version").await;
        self.assert_content(id, b"first version").await;
        self.put(id, b"a longer second version of the blob").await;
        self.assert_content(id, b"a longer second version of the blob")
            .await;
        self.put(id, b"short").await;
        self.assert_content(id, b"short").await;
        let meta = self.expect("metadata after overwrite", self.store.metadata(id).await);
        assert_eq!(
            meta.length, 5,
            "[{}] metadata length after shrinking overwrite",
            self.name
        );
        let binary: Vec<u8> = (0..=255).collect();
        self.put(id, &binary).await;
        self.assert_content(id, &binary).await;
        self.delete(id).await;
    }

    async fn empty_blob(&self) {
        let id = "xe0";
        self.put(id, b"").await;
        self.assert_content(id, b"").await;
        let meta = self.expect("metadata of an empty blob", self.store.metadata(id).await);
        assert_eq!(
            meta.length, 0,
            "[{}] metadata length of an empty blob",
            self.name
        );
        let range = self.expect(
            "get_range(0, 0) of an empty blob",
            self.store.get_range(id, 0, 0).await,
        );
        assert!(
            range.is_empty(),
            "[{}] get_range(0, 0) of an empty blob returned bytes",
            self.name
        );
        self.assert_invalid_range(id, 0, 1, 0, self.store.get_range(id, 0, 1).await);
        self.assert_invalid_range(id, 1, 0, 0, self.store.get_range(id, 1, 0).await);
        let listed = self.list("xe").await;
        assert!(
            listed.len() == 1 && listed[0].id == id && listed[0].length == 0,
            "[{}] list(\"xe\") should show the empty blob with length 0, got {listed:?}",
            self.name
        );
        self.delete(id).await;
    }

    async fn large_blob(&self) {
        let id = "p0123456789abcdef0123456789abcdef-s0123456789abcdef13c";
        let data = pseudo_random(1, 5 * 1024 * 1024 + 123);
        self.put(id, &data).await;
        self.assert_content(id, &data).await;
        let (offset, length) = (1024 * 1024 - 17, 2 * 1024 * 1024 + 5);
        let range = self.expect(
            "ranged read of a large blob",
            self.store.get_range(id, offset, length).await,
        );
        assert!(
            range == data[offset as usize..(offset + length) as usize],
            "[{}] get_range({offset}, {length}) of a large blob returned the wrong bytes",
            self.name
        );
        let meta = self.expect("metadata of a large blob", self.store.metadata(id).await);
        assert_eq!(
            meta.length,
            data.len() as u64,
            "[{}] metadata length of a large blob",
            self.name
        );
        self.delete(id).await;
    }

    async fn ranged_reads(&self) {
        let id = "q0123456789abcdef0123456789abcdef-s0123456789abcdef13c";
        let data = pseudo_random(2, 1000);
        let len = data.len() as u64;
        self.put(id, &data).await;
        for (offset, length) in [
            (0, len),
            (0, 1),
            (0, 0),
            (1, 998),
            (999, 1),
            (500, 500),
            (len, 0),
            (123, 0),
        ] {
            let got = self.expect(
                &format!("get_range({offset}, {length}) of a {len}-byte blob"),
                self.store.get_range(id, offset, length).await,
            );
            assert!(
                got == data[offset as usize..(offset + length) as usize],
                "[{}] get_range({offset}, {length}) returned the wrong bytes",
                self.name
            );
        }
        for (offset, length) in [
            (len + 1, 0),
            (len, 1),
            (len - 1, 2),
            (0, len + 1),
            (u64::MAX, 1),
            (1, u64::MAX),
            (0, u64::MAX),
        ] {
            self.assert_invalid_range(
                id,
                offset,
                length,
                len,
                self.store.get_range(id, offset, length).await,
            );
        }
        self.delete(id).await;
    }

    async fn metadata_and_timestamps(&self) {
        let id = "xw1700000000";
        let before = Utc::now();
        self.put(id, b"deletion-watermark").await;
        let after = Utc::now();
        let meta = self.expect("metadata", self.store.metadata(id).await);
        assert_eq!(meta.id, id, "[{}] metadata names the wrong blob", self.name);
        assert_eq!(meta.length, 18, "[{}] metadata length", self.name);
        // Filesystem clocks are coarse and remote stores have their own clocks: allow some skew.
        let slack = Duration::minutes(5);
        assert!(
            meta.timestamp >= before - slack && meta.timestamp <= after + slack,
            "[{}] timestamp {} is far from the time of the put ({before} .. {after})",
            self.name,
            meta.timestamp
        );
        let listed = self.list(id).await;
        assert_eq!(
            listed,
            vec![meta.clone()],
            "[{}] list and metadata disagree",
            self.name
        );

        self.put(id, b"rewritten").await;
        let rewritten = self.expect("metadata after overwrite", self.store.metadata(id).await);
        assert!(
            rewritten.timestamp >= meta.timestamp && rewritten.length == 9,
            "[{}] overwrite should update length and not move the timestamp back: {meta:?} then {rewritten:?}",
            self.name
        );
        self.delete(id).await;
    }

    async fn missing_blobs(&self) {
        self.put("p1", b"present").await;
        for id in [
            "p",
            "p10",
            "missing-blob-with-a-name-longer-than-twenty",
            "kopia.repository",
        ] {
            let check = |what: &str, err: BlobError| match err {
                BlobError::NotFound(got) => {
                    assert_eq!(
                        got, id,
                        "[{}] {what} of missing {id:?}: NotFound names the wrong blob",
                        self.name
                    )
                }
                other => panic!(
                    "[{}] {what} of missing {id:?}: expected NotFound, got {other:?}",
                    self.name
                ),
            };
            check(
                "get",
                self.expect_err("get of a missing blob", self.store.get(id).await),
            );
            check(
                "get_range",
                self.expect_err(
                    "get_range of a missing blob",
                    self.store.get_range(id, 0, 1).await,
                ),
            );
            check(
                "get_range(0, 0)",
                self.expect_err(
                    "get_range(0, 0) of a missing blob",
                    self.store.get_range(id, 0, 0).await,
                ),
            );
            check(
                "metadata",
                self.expect_err("metadata of a missing blob", self.store.metadata(id).await),
            );
            assert!(
                self.store.get(id).await.unwrap_err().is_not_found(),
                "[{}] is_not_found() is false for a missing blob",
                self.name
            );
        }
        self.delete("p1").await;
    }

    async fn delete_is_idempotent(&self) {
        let id = "s0123456789abcdef0123456789abcdef-s0123456789abcdef13c";
        self.put(id, b"session").await;
        self.delete(id).await;
        assert!(
            self.store.get(id).await.is_err_and(|e| e.is_not_found()),
            "[{}] a deleted blob can still be read",
            self.name
        );
        self.delete(id).await;
        self.delete("never-existed").await;
        self.delete("never-existed-and-long-enough-to-be-sharded")
            .await;
        assert!(
            self.list("").await.is_empty(),
            "[{}] delete left blobs behind",
            self.name
        );
    }

    async fn listing_by_arbitrary_prefix(&self) {
        let blobs = kopia_like_blobs();
        for (id, data) in &blobs {
            self.put(id, data).await;
        }
        let longest = blobs
            .keys()
            .max_by_key(|id| id.len())
            .cloned()
            .unwrap_or_default();
        let mut prefixes: Vec<String> = [
            "",
            "p",
            "p0",
            "p01",
            "p012",
            "p0123",
            "p01234",
            "q",
            "s",
            "x",
            "xn",
            "xn0",
            "xn0_",
            "xn1",
            "xn10_",
            "xs",
            "xr",
            "xe",
            "xe0",
            "xw",
            "n",
            "n0",
            "m",
            "l",
            "_",
            "_log_",
            "_log_2024",
            "k",
            "kopia.",
            "kopia.repository",
            "kopia.repository.",
            "kopia.repository.backup.user@host",
            "zz",
            "pz",
            "xn2_",
            "kopia.repositoryx",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        // Every prefix of one long ID: the shard boundaries fall at all possible places.
        prefixes.extend((1..=longest.len()).map(|n| longest[..n].to_string()));
        for prefix in &prefixes {
            let listed = self.list(prefix).await;
            let expected: Vec<(&str, u64)> = blobs
                .iter()
                .filter(|(id, _)| id.starts_with(prefix.as_str()))
                .map(|(id, data)| (id.as_str(), data.len() as u64))
                .collect();
            let got: Vec<(&str, u64)> = listed.iter().map(|m| (m.id.as_str(), m.length)).collect();
            assert_eq!(
                got, expected,
                "[{}] list({prefix:?}) returned the wrong blobs",
                self.name
            );
        }
        for id in blobs.keys() {
            self.delete(id).await;
        }
    }

    async fn id_lengths_around_the_shard_boundary(&self) {
        let alphabet =
            "b0123456789abcdefghijklmnopqrstuvwxyz-_.0123456789abcdefghijklmnopqrstuvwxyz";
        let ids: Vec<&str> = (1..=64).map(|n| &alphabet[..n]).collect();
        for id in &ids {
            self.put(id, id.as_bytes()).await;
        }
        for id in &ids {
            self.assert_content(id, id.as_bytes()).await;
            let meta = self.expect(&format!("metadata {id:?}"), self.store.metadata(id).await);
            assert_eq!(
                meta.length,
                id.len() as u64,
                "[{}] metadata length of {id:?}",
                self.name
            );
        }
        // IDs are prefixes of each other, so each listing must stop exactly at the right length.
        for n in [1, 2, 3, 4, 5, 19, 20, 21, 22, 23, 24, 25, 40, 63, 64] {
            let prefix = &alphabet[..n];
            let listed: Vec<String> = self.list(prefix).await.into_iter().map(|m| m.id).collect();
            let mut expected: Vec<String> = ids[n - 1..].iter().map(|id| id.to_string()).collect();
            expected.sort();
            assert_eq!(
                listed, expected,
                "[{}] list({prefix:?}) over IDs of lengths 1..64",
                self.name
            );
        }
        for id in &ids {
            self.delete(id).await;
        }
    }

    async fn concurrent_puts(&self) {
        let blobs: Vec<(String, Vec<u8>)> = (0..100u64)
            .map(|i| {
                let id = format!(
                    "p{:032x}-s0123456789abcdef13c",
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                );
                (id, pseudo_random(i + 1000, (i as usize * 37) % 3000))
            })
            .collect();
        let results = join_all(
            blobs
                .iter()
                .map(|(id, data)| self.store.put(id, data.clone())),
        )
        .await;
        for ((id, _), result) in blobs.iter().zip(results) {
            self.expect(&format!("concurrent put {id:?}"), result);
        }
        let listed = self.list("p").await;
        let mut expected: Vec<(String, u64)> = blobs
            .iter()
            .map(|(id, data)| (id.clone(), data.len() as u64))
            .collect();
        expected.sort();
        let got: Vec<(String, u64)> = listed.into_iter().map(|m| (m.id, m.length)).collect();
        assert_eq!(
            got, expected,
            "[{}] list after 100 concurrent puts",
            self.name
        );
        let reads = join_all(blobs.iter().map(|(id, _)| self.store.get(id))).await;
        for ((id, data), read) in blobs.iter().zip(reads) {
            let read = self.expect(&format!("concurrent get {id:?}"), read);
            assert!(
                read == *data,
                "[{}] concurrent get {id:?} returned the wrong bytes",
                self.name
            );
        }
        let deletes = join_all(blobs.iter().map(|(id, _)| self.store.delete(id))).await;
        for ((id, _), result) in blobs.iter().zip(deletes) {
            self.expect(&format!("concurrent delete {id:?}"), result);
        }
    }

    async fn concurrent_overwrites_are_atomic(&self) {
        let id = "kopia.maintenance";
        let versions: Vec<Vec<u8>> = (0..10)
            .map(|i| pseudo_random(i + 2000, 64 * 1024 + i as usize))
            .collect();
        let results = join_all(versions.iter().map(|v| self.store.put(id, v.clone()))).await;
        for result in results {
            self.expect("concurrent overwrite", result);
        }
        let got = self.get(id).await;
        assert!(
            versions.contains(&got),
            "[{}] after concurrent overwrites the blob is none of the versions written ({} bytes)",
            self.name,
            got.len()
        );
        let listed = self.list("kopia.").await;
        assert!(
            listed.len() == 1 && listed[0].length == got.len() as u64,
            "[{}] list after concurrent overwrites: {listed:?}",
            self.name
        );
        self.delete(id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_seeded() {
        assert_eq!(pseudo_random(7, 64), pseudo_random(7, 64));
        assert_ne!(pseudo_random(7, 64), pseudo_random(8, 64));
        assert_eq!(pseudo_random(7, 0), Vec::<u8>::new());
    }
}
