//! Retention and policies through the library on the in-memory store: which snapshots `expire`
//! deletes, per source and per policy level, and how stored policies are found and merged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use kmover_blob::DynBlobStore;
use kmover_blob::memory::MemoryStore;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::manifest::{SnapshotManifest, SourceInfo};
use kmover_format::snapshot::policy::{Policy, RetentionPolicy, encode_policy, policy_labels};
use kmover_repo::{CreateOptions, OpenOptions, Repository};
use kmover_snapshot::policy::{
    defined_policy, effective_policy_for, list_policies, policy_by_id, remove_policy, set_policy,
};
use kmover_snapshot::retention::{LocalZone, expire, judge_snapshots, snapshot_sources};
use kmover_snapshot::snapshots::{list_snapshots, save_snapshot};

/// A clock that advances one second per reading, so manifest times are distinct and ordered.
fn ticking_clock() -> kmover_repo::Clock {
    let next = Arc::new(AtomicI64::new(1_700_000_000));
    Arc::new(move || {
        DateTime::<Utc>::from_timestamp(next.fetch_add(1, Ordering::SeqCst), 0).expect("valid time")
    })
}

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
    let opts = OpenOptions {
        clock: ticking_clock(),
        ..Default::default()
    };
    Repository::open(store.clone(), "pw", opts).await.unwrap()
}

fn source(path: &str) -> SourceInfo {
    SourceInfo {
        host: "h".into(),
        user_name: "u".into(),
        path: path.into(),
    }
}

fn retention(latest: i64) -> Policy {
    Policy {
        retention: RetentionPolicy {
            keep_latest: Some(latest),
            keep_hourly: Some(0),
            keep_daily: Some(0),
            keep_weekly: Some(0),
            keep_monthly: Some(0),
            keep_annual: Some(0),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Saves a snapshot of `path` started at `start`; returns its ID.
async fn snapshot(
    repo: &Repository,
    path: &str,
    start: &str,
    incomplete: bool,
    pin: bool,
) -> String {
    let start_time = UtcTimestamp::parse_rfc3339(start).unwrap();
    let m = SnapshotManifest {
        source: source(path),
        start_time,
        end_time: UtcTimestamp(start_time.0 + 1_000_000_000),
        incomplete: if incomplete {
            "checkpoint".into()
        } else {
            String::new()
        },
        pins: if pin { vec!["keep".into()] } else { Vec::new() },
        ..Default::default()
    };
    save_snapshot(repo, &m).await.unwrap()
}

#[tokio::test]
async fn expire_deletes_snapshots_without_reasons_or_pins_per_source_policy() {
    let store = new_store().await;
    let repo = open(&store).await;
    set_policy(&repo, &SourceInfo::default(), &retention(2))
        .await
        .unwrap();
    set_policy(&repo, &source("/b"), &retention(1))
        .await
        .unwrap();

    let pinned = snapshot(&repo, "/a", "2024-05-01T01:00:00Z", false, true).await;
    let a_old = snapshot(&repo, "/a", "2024-05-01T02:00:00Z", false, false).await;
    let a_checkpoint = snapshot(&repo, "/a", "2024-05-01T02:30:00Z", true, false).await;
    let a_second = snapshot(&repo, "/a", "2024-05-01T03:00:00Z", false, false).await;
    let a_newest = snapshot(&repo, "/a", "2024-05-01T04:00:00Z", false, false).await;
    let b_old = snapshot(&repo, "/b", "2024-05-01T01:00:00Z", false, false).await;
    let b_newest = snapshot(&repo, "/b", "2024-05-01T02:00:00Z", false, false).await;

    // A user@host source covers both paths, each judged under its own effective policy.
    let everyone = SourceInfo {
        path: String::new(),
        ..source("")
    };
    let dry_run = expire(&repo, &everyone, false, &LocalZone::utc())
        .await
        .unwrap();
    let reasons: BTreeMap<&str, (Vec<String>, bool)> = dry_run
        .iter()
        .map(|d| (d.id.as_str(), (d.reasons.clone(), d.expired())))
        .collect();
    assert_eq!(
        reasons[a_newest.as_str()],
        (vec!["latest-1".to_string()], false)
    );
    assert_eq!(
        reasons[a_second.as_str()],
        (vec!["latest-2".to_string()], false)
    );
    assert_eq!(
        reasons[pinned.as_str()],
        (vec![], false),
        "pinned snapshots stay"
    );
    assert_eq!(reasons[a_old.as_str()], (vec![], true));
    assert_eq!(
        reasons[a_checkpoint.as_str()],
        (vec![], true),
        "older than the newest complete one"
    );
    assert_eq!(
        reasons[b_newest.as_str()],
        (vec!["latest-1".to_string()], false)
    );
    assert_eq!(reasons[b_old.as_str()], (vec![], true));
    // Groups in user@host:path order.
    let order: Vec<&str> = dry_run.iter().map(|d| d.source.path.as_str()).collect();
    assert_eq!(order, ["/a", "/a", "/a", "/a", "/a", "/b", "/b"]);
    assert_eq!(
        list_snapshots(&repo, None).await.unwrap().len(),
        7,
        "a dry run deletes nothing"
    );

    expire(&repo, &everyone, true, &LocalZone::utc())
        .await
        .unwrap();
    repo.flush().await.unwrap();

    let reopened = open(&store).await;
    let left: BTreeSet<String> = list_snapshots(&reopened, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let want: BTreeSet<String> = [pinned, a_second, a_newest, b_newest].into_iter().collect();
    assert_eq!(left, want);
}

#[tokio::test]
async fn judging_groups_by_manifest_source_and_sources_come_from_labels() {
    let store = new_store().await;
    let repo = open(&store).await;
    set_policy(&repo, &SourceInfo::default(), &retention(1))
        .await
        .unwrap();
    snapshot(&repo, "/z", "2024-01-01T00:00:00Z", false, false).await;
    snapshot(&repo, "/a", "2024-01-01T00:00:00Z", false, false).await;
    snapshot(&repo, "/a", "2024-01-02T00:00:00Z", false, false).await;

    let sources = snapshot_sources(&repo).await.unwrap();
    assert_eq!(sources, [source("/a"), source("/z")]);

    let all = list_snapshots(&repo, None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let decisions = judge_snapshots(&repo, all, &LocalZone::utc())
        .await
        .unwrap();
    let kept: Vec<(String, bool)> = decisions
        .iter()
        .map(|d| (d.source.path.clone(), d.expired()))
        .collect();
    assert_eq!(
        kept,
        [
            ("/a".to_string(), true),
            ("/a".to_string(), false),
            ("/z".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn policies_stored_at_one_level_are_all_merged_oldest_first() {
    let store = new_store().await;
    let repo = open(&store).await;
    let target = source("/p");
    // Two clients raced: both policies exist for the same target (kopia keeps both).
    let mut older = Policy::default();
    older.retention.keep_latest = Some(5);
    let mut newer = Policy::default();
    newer.retention.keep_latest = Some(7);
    newer.retention.keep_daily = Some(3);
    for p in [&older, &newer] {
        repo.manifests()
            .put(policy_labels(&target), encode_policy(p))
            .await
            .unwrap();
    }

    let (effective, def) = effective_policy_for(&repo, &target).await.unwrap();
    assert_eq!(
        effective.retention.keep_latest,
        Some(5),
        "the oldest wins, as in kopia"
    );
    assert_eq!(effective.retention.keep_daily, Some(3));
    assert_eq!(
        effective.retention.keep_hourly,
        Some(48),
        "defaults fill the rest"
    );
    assert_eq!(def.source_of("retention.keepDaily"), Some(&target));
    // `policy set` edits the newest one and replaces both.
    assert_eq!(
        defined_policy(&repo, &target).await.unwrap(),
        Some(newer.clone())
    );
    set_policy(&repo, &target, &newer).await.unwrap();
    let stored = list_policies(&repo).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        policy_by_id(&repo, &stored[0].id)
            .await
            .unwrap()
            .map(|p| p.target),
        Some(target.clone())
    );
}

#[tokio::test]
async fn set_validates_and_remove_deletes_every_copy() {
    let store = new_store().await;
    let repo = open(&store).await;
    let mut parallel = Policy::default();
    parallel.upload.max_parallel_snapshots = Some(2);
    assert!(set_policy(&repo, &source("/p"), &parallel).await.is_err());
    assert!(
        set_policy(&repo, &source("/p/"), &Policy::default())
            .await
            .is_err()
    );
    let host = SourceInfo {
        host: "h".into(),
        ..Default::default()
    };
    set_policy(&repo, &host, &parallel).await.unwrap();
    set_policy(&repo, &SourceInfo::default(), &retention(3))
        .await
        .unwrap();
    set_policy(&repo, &source("/p"), &retention(4))
        .await
        .unwrap();

    let targets: Vec<String> = list_policies(&repo)
        .await
        .unwrap()
        .iter()
        .map(|p| p.target.to_string())
        .collect();
    assert_eq!(targets, ["(global)", "@h", "u@h:/p"]);

    assert_eq!(remove_policy(&repo, &host).await.unwrap(), 1);
    assert_eq!(remove_policy(&repo, &host).await.unwrap(), 0);
    repo.flush().await.unwrap();
    let reopened = open(&store).await;
    assert_eq!(list_policies(&reopened).await.unwrap().len(), 2);
    let (effective, _) = effective_policy_for(&reopened, &source("/p/child"))
        .await
        .unwrap();
    assert_eq!(
        effective.retention.keep_latest,
        Some(4),
        "inherited from the parent path"
    );
}
