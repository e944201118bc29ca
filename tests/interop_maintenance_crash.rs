//! Maintenance killed with SIGKILL at seeded points (maintenance issue, done-means 4): after
//! every kill, kmover and the real kopia v0.22.3 verify every file of every snapshot and every
//! index entry's pack, and the next maintenance run completes the interrupted work.
//!
//! Each round gives maintenance work to do (a new snapshot, an old one deleted), then kills a
//! full maintenance with safety `none` (so it deletes and rewrites at once) either after a
//! seeded delay or, in a `--features testing` build, at a seeded storage operation: a schedule
//! update, a pack or index upload, a watermark, a pack or session deletion.
//! `KMOVER_RELIABILITY_ROUNDS` and `KMOVER_RELIABILITY_SEED` as in tests/common/crash.rs.

mod common;

use std::time::{Duration, Instant};

use common::crash::{Backend, SharedRepo, kill_points, mutate_tree, rounds, run_killed, say, seed};
use common::{Kopia, KopiaVersion, RepositoryCli, TestRng, sample_tree};
use serde_json::Value;

/// The issue asks for 20 kill points.
const DEFAULT_ROUNDS: usize = 20;
/// Storage operations of a full maintenance: the schedule blob (`k`), rewritten packs (`p`,
/// `q`), index blobs and the watermark (`x`), pack and session-marker deletions.
const MAINTENANCE_POINTS: &[&str] = &[
    "after-put-k",
    "before-put-p",
    "during-put-p",
    "after-put-q",
    "before-put-x",
    "after-put-x",
    "before-delete-p",
    "after-delete-q",
    "before-delete-s",
    "after-delete-p",
];
const FULL_NONE: [&str; 4] = ["maintenance", "run", "--full", "--safety=none"];

/// kopia caches index listings for 30 s; a kopia client that had listed just before
/// maintenance deleted packs would look in them, which `--safety=none` does not protect.
fn forget_kopia_listings(repo: &SharedRepo) {
    if let Some(kopia) = &repo.kopia {
        let dir = kopia.runner().cache_dir().join("blob-list");
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

fn assert_intact(repo: &SharedRepo, context: &str) {
    forget_kopia_listings(repo);
    let kept: Vec<String> = repo
        .snapshot_ids(true)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    repo.assert_intact(&kept, context);
}

/// Index times have one-second resolution and a deleted entry is dropped only when strictly
/// older than the drop time, so entries the GC of a run marks deleted within the same second
/// survive that run (as in kopia). One more run a second later drops them.
fn finish_pending_drops(repo: &SharedRepo) {
    std::thread::sleep(Duration::from_millis(1100));
    repo.kmover.run(FULL_NONE);
}

/// No deleted index entry and no pack blob that nothing references is left.
fn assert_work_completed(repo: &SharedRepo, context: &str) {
    let with_deleted = repo.kmover.content_list_json_with_deleted();
    let live = repo.kmover.content_list_json();
    assert_eq!(
        with_deleted.len(),
        live.len(),
        "{context}: deleted entries remain after an uninterrupted run"
    );
    let referenced: std::collections::BTreeSet<String> = live
        .iter()
        .map(|c| c["packFile"].as_str().unwrap_or_default().to_string())
        .collect();
    let stray: Vec<String> = repo
        .kmover
        .blob_list_json()
        .into_iter()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .filter(|id| (id.starts_with('p') || id.starts_with('q')) && !referenced.contains(id))
        .collect();
    assert!(
        stray.is_empty(),
        "{context}: unreferenced packs remain after an uninterrupted run: {stray:?}"
    );
}

#[test]
fn killed_maintenance_leaves_a_repository_both_tools_read() {
    let test = "killed_maintenance_leaves_a_repository_both_tools_read";
    let kopia = Kopia::find(KopiaVersion::V0_22, test);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let repo = SharedRepo::create(&Backend::Filesystem(dir.path().join("repo")), kopia);
    let mut rng = TestRng::new(seed() ^ 0x6d61_696e_7465_6e61);

    // An uninterrupted run sets the window for delay kills and proves the baseline.
    let mut ids = vec![repo.kmover_snapshot(&tree)];
    mutate_tree(&tree, &mut rng, 0);
    ids.push(repo.kmover_snapshot(&tree));
    repo.kmover
        .run(["snapshot", "delete", &ids.remove(0), "--delete"]);
    let started = Instant::now();
    repo.kmover.run(FULL_NONE);
    let window = started.elapsed() + Duration::from_millis(200);
    finish_pending_drops(&repo);
    assert_work_completed(&repo, "baseline");

    let count = rounds(DEFAULT_ROUNDS);
    let points = kill_points(&mut rng, count, window, MAINTENANCE_POINTS, 2);
    let mut killed = 0;
    for (round, at) in points.iter().enumerate() {
        mutate_tree(&tree, &mut rng, round + 1);
        ids.push(repo.kmover_snapshot(&tree));
        if ids.len() > 2 {
            repo.kmover
                .run(["snapshot", "delete", &ids.remove(0), "--delete"]);
        }
        let r = run_killed(&repo.kmover, FULL_NONE, &[], at);
        killed += usize::from(r.killed);
        let context = format!(
            "round {round} ({at}): {} after {} ms",
            if r.killed { "killed" } else { "finished" },
            r.elapsed.as_millis()
        );
        say(&context);
        assert_intact(&repo, &context);
        // The next run completes what the killed one left, and both tools read the result.
        repo.kmover.run(FULL_NONE);
        finish_pending_drops(&repo);
        assert_work_completed(&repo, &context);
        assert_intact(&repo, &format!("{context}, after the next run"));
    }
    say(&format!("{killed} of {count} maintenance runs were killed"));
    // Delay kills land after a fast run has finished on a lucky schedule (seen: 9–13 of 20),
    // so a third is the floor that still proves the points hit maintenance.
    assert!(
        killed * 3 >= count,
        "only {killed} of {count} runs were killed: the kill points miss the maintenance"
    );
    let history: Value =
        serde_json::from_slice(&repo.kmover.run(["maintenance", "info", "--json"]).stdout).unwrap();
    assert_eq!(
        history["schedule"]["runs"]["cleanup-logs"][0]["success"],
        true
    );
}
