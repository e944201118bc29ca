//! The manifest store: put/find/delete across flushes and reopenings, tombstones, and kopia's
//! auto-compaction once 16 or more `m` contents exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_repo::{CreateOptions, Repository};

fn labels(kind: &str, n: usize) -> BTreeMap<String, String> {
    [
        ("type".to_string(), kind.to_string()),
        ("n".to_string(), n.to_string()),
    ]
    .into()
}

/// An empty repository on the memory store (pbkdf2: tests open it many times).
async fn new_store() -> DynBlobStore {
    let store: DynBlobStore = Arc::new(MemoryStore::new());
    let opts = CreateOptions {
        key_algorithm: KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
        ..Default::default()
    };
    Repository::create(store.clone(), &opts, "pw")
        .await
        .unwrap();
    store
}

async fn open(store: &DynBlobStore) -> Repository {
    Repository::open(store.clone(), "pw", Default::default())
        .await
        .unwrap()
}

fn manifest_contents(list: &[kmover_format::index::IndexEntry]) -> usize {
    list.iter()
        .filter(|e| e.content_id.prefix() == Some(b'm'))
        .count()
}

#[tokio::test]
async fn many_manifest_contents_are_compacted_into_one_and_nothing_is_lost() {
    let store = new_store().await;
    let repo = open(&store).await;
    let mut ids = Vec::new();
    for n in 0..17 {
        ids.push(
            repo.manifests()
                .put(labels("thing", n), format!("{{\"n\":{n}}}").into_bytes())
                .await
                .unwrap(),
        );
        repo.flush().await.unwrap();
    }
    assert_eq!(
        manifest_contents(&repo.contents().list_contents(false).await),
        17
    );

    // Loading 17 manifest contents (on first use after opening) compacts them into one.
    let reopened = open(&store).await;
    let query: BTreeMap<String, String> = [("type".to_string(), "thing".to_string())].into();
    assert_eq!(reopened.manifests().find(&query).await.unwrap().len(), 17);
    assert_eq!(
        manifest_contents(&reopened.contents().list_contents(false).await),
        1,
        "compacted into one content"
    );

    reopened.manifests().delete(&ids[3]).await.unwrap();
    reopened.flush().await.unwrap();
    let third = open(&store).await;
    let found = third.manifests().find(&query).await.unwrap();
    assert_eq!(found.len(), 16, "17 put, 1 deleted");
    assert!(found.iter().all(|e| e.id != ids[3]));
    assert_eq!(
        manifest_contents(&third.contents().list_contents(false).await),
        2
    );
    assert_eq!(
        third.manifests().get(&ids[5]).await.unwrap().unwrap().data,
        b"{\"n\":5}"
    );
}

#[tokio::test]
async fn compacting_a_store_whose_manifests_are_all_deleted_leaves_it_readable() {
    let store = new_store().await;
    // 8 manifests and 8 tombstones in 16 contents; this instance loads only once (8 < 16).
    let repo = open(&store).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            repo.manifests()
                .put(labels("gone", n), b"{}".to_vec())
                .await
                .unwrap(),
        );
        repo.flush().await.unwrap();
    }
    for id in &ids {
        repo.manifests().delete(id).await.unwrap();
        repo.flush().await.unwrap();
    }
    assert_eq!(
        manifest_contents(&repo.contents().list_contents(false).await),
        16
    );
    // Loading 16 contents with nothing live compacts them away without writing an empty document.
    let query: BTreeMap<String, String> = [("type".to_string(), "gone".to_string())].into();
    let compacting = open(&store).await;
    assert!(
        compacting
            .manifests()
            .find(&query)
            .await
            .unwrap()
            .is_empty()
    );
    let after = open(&store).await;
    assert_eq!(
        manifest_contents(&after.contents().list_contents(false).await),
        0
    );
    assert!(after.manifests().find(&query).await.unwrap().is_empty());
}
