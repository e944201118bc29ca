//! The shared conformance suite against every store and layout.

use std::sync::Arc;

use kmover_blob::conformance::run_conformance_suite;
use kmover_blob::fault::FaultInjectingStore;
use kmover_blob::fs::{FilesystemStore, ShardOverride, ShardingMode, ShardingParameters};
use kmover_blob::memory::MemoryStore;

#[tokio::test]
async fn memory_store() {
    run_conformance_suite(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_twice_on_a_multi_thread_runtime() {
    let store = MemoryStore::new();
    run_conformance_suite(&store).await;
    run_conformance_suite(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injecting_store_without_faults() {
    run_conformance_suite(&FaultInjectingStore::new(Arc::new(MemoryStore::new()))).await;
}

async fn filesystem(mode: ShardingMode) {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::create(dir.path().join("repo"), mode)
        .await
        .unwrap();
    run_conformance_suite(&store).await;
    // A second client on the same directory sees the same (now empty) store and works too.
    let reopened = FilesystemStore::open(store.root()).await.unwrap();
    assert_eq!(reopened.sharding(), store.sharding());
    run_conformance_suite(&reopened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_default_sharding() {
    filesystem(ShardingMode::Default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_flat() {
    filesystem(ShardingMode::Flat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_legacy_3_3() {
    filesystem(ShardingMode::Legacy33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_custom_sharding_with_overrides() {
    // Not kopia's test layout [3,2,1]: that one turns the "." of "kopia.repository.backup…" into a
    // directory named "." (kopia would silently drop it; we refuse the ID).
    filesystem(ShardingMode::Custom(ShardingParameters {
        default_shards: vec![2, 2, 2],
        max_non_sharded_length: 2,
        overrides: vec![
            ShardOverride {
                prefix: "p".into(),
                shards: vec![2, 2],
            },
            ShardOverride {
                prefix: "x".into(),
                shards: vec![1, 1, 1],
            },
        ],
    }))
    .await;
}

#[tokio::test]
async fn filesystem_on_a_current_thread_runtime() {
    filesystem(ShardingMode::Default).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_opened_without_shards_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FilesystemStore::open(dir.path()).await.unwrap();
    assert_eq!(store.sharding(), &ShardingMode::Legacy33.parameters());
    run_conformance_suite(&store).await;
}
