//! Full maintenance with safety `full` beside concurrent writers (maintenance issue,
//! done-means 3): in every round the shared fake clock moves 13 hours on, then two kmover
//! processes and one kopia process (`-tags testing`) snapshot the same repository while kmover
//! runs full maintenance. Over the rounds every margin expires — contents get old enough to be
//! collected, GC runs far enough apart to drop deletions, packs old enough to be deleted, epochs
//! long enough to advance and compact — yet afterwards both tools verify every file of every
//! snapshot, and the newest snapshot of every writer is there.
//!
//! Needs kmover built with `--features testing` (its clock then follows the fake-time server
//! and it stamps the blobs it writes with that time) and kopia 0.22.3 built with
//! `-tags testing`. `KMOVER_RELIABILITY_ROUNDS` overrides the number of rounds (default 20).
//! tests/reliability_concurrency.rs runs the larger version (four kmover writers, some sharing a
//! source, beside full and quick maintenance); both build on tests/common/concurrency.rs.

mod common;

use std::path::PathBuf;

use chrono::{TimeDelta, Utc};
use common::concurrency::{
    Collected, beside_maintenance, change_tree, compacted_epochs, follows_fake_clock,
    forget_listings, keep_latest, kopia_run, listed, snapshot_id, use_small_epochs,
};
use common::crash::{FAST_KDF, rounds};
use common::fake_clock::{FakeClock, ToolEnv};
use common::{Kmover, Kopia, KopiaVersion, RepositoryCli, TestRng, sample_tree, skip_or_fail};

const DEFAULT_ROUNDS: usize = 20;
const SNAPSHOTS_PER_ROUND: usize = 2;
/// A rewrite stamps the contents it copies with the current time (kopia's rule) and runs at most
/// every other round, so rounds 13 h apart let contents reach GC's 24 h margin between rewrites.
const CLOCK_STEP: TimeDelta = TimeDelta::hours(13);

/// One writer: a tool and the tree it keeps changing and snapshotting.
struct Writer<'a> {
    name: &'static str,
    tool: &'a (dyn Fn(&[&str]) -> std::process::Output + Sync),
    tree: PathBuf,
}

impl Writer<'_> {
    fn snapshot(&self, rng: &mut TestRng, round: usize, n: usize) -> String {
        change_tree(&self.tree, rng, round, n);
        snapshot_id(&(self.tool)(&[
            "snapshot",
            "create",
            "--json",
            self.tree.to_str().unwrap(),
        ]))
    }
}

#[test]
fn full_maintenance_beside_concurrent_writers_loses_nothing() {
    let test = "full_maintenance_beside_concurrent_writers_loses_nothing";
    if !follows_fake_clock() {
        skip_or_fail(
            test,
            "kmover was built without the `testing` feature (cargo test --features testing)",
        );
        return;
    }
    let Some(mut kopia) = Kopia::find(KopiaVersion::V0_22Testing, test) else {
        return;
    };
    // kopia writes its blobs with real file times, kmover (built for tests) with the fake time.
    // Behind real time, the fake clock sees kopia's blobs as written in the future — kept, never
    // too old — while kmover's carry consistent times and go through every margin. Ahead of it,
    // kopia's fresh packs would look days old and lose the protection of PackDeleteMinAge.
    let clock = FakeClock::start(Utc::now() - TimeDelta::days(30));
    let mut writer_a = Kmover::new();
    let mut writer_b = Kmover::new();
    let mut maintainer = Kmover::new();
    for tool in [&mut writer_a, &mut writer_b, &mut maintainer] {
        tool.follow_clock(&clock);
    }
    kopia.follow_clock(&clock);

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    maintainer.create_filesystem_repo(&repo, &[FAST_KDF]);
    writer_a.connect_filesystem(&repo);
    writer_b.connect_filesystem(&repo);
    kopia.connect_filesystem(&repo);
    // Small epochs (kopia's minimums) so that epochs advance, compact and get cleaned up too;
    // short retention so that expired snapshots leave garbage every round.
    use_small_epochs(&kopia);
    keep_latest(&kopia, 3);

    let trees: Vec<PathBuf> = ["a", "b", "kopia"]
        .iter()
        .map(|n| {
            let t = dir.path().join(n);
            sample_tree(&t);
            t
        })
        .collect();
    let run_a = |args: &[&str]| writer_a.run(args);
    let run_b = |args: &[&str]| writer_b.run(args);
    let run_kopia = |args: &[&str]| kopia_run(&kopia, args);
    let writers = [
        Writer {
            name: "kmover-a",
            tool: &run_a,
            tree: trees[0].clone(),
        },
        Writer {
            name: "kmover-b",
            tool: &run_b,
            tree: trees[1].clone(),
        },
        Writer {
            name: "kopia",
            tool: &run_kopia,
            tree: trees[2].clone(),
        },
    ];

    let count = rounds(DEFAULT_ROUNDS);
    for round in 0..count {
        clock.advance(CLOCK_STEP);
        let jobs = writers.iter().enumerate().map(|(i, w)| {
            move || {
                let mut rng = TestRng::new((round * 10 + i) as u64);
                let mut last = String::new();
                for n in 0..SNAPSHOTS_PER_ROUND {
                    last = w.snapshot(&mut rng, round, n);
                }
                (w.name, last)
            }
        });
        let newest = beside_maintenance(jobs, || {
            maintainer.run(["maintenance", "run", "--full"]);
        });
        let ids = listed(&maintainer);
        for (writer, id) in &newest {
            assert!(
                ids.contains(id),
                "round {round}: the newest snapshot {id} of {writer} is gone"
            );
        }
        maintainer.run(["snapshot", "verify", "--verify-files-percent=100"]);
        maintainer.run(["content", "verify"]);
        run_kopia(&["snapshot", "verify", "--verify-files-percent=100"]);
        eprintln!("round {round}: {} snapshots verified", ids.len());
    }

    // The same once more with kopia, and the margins did expire: data was collected.
    forget_listings(&kopia);
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    kopia.run(["content", "verify", "--full"]);
    maintainer.run(["content", "verify", "--full"]);
    let Collected {
        contents: collected,
        packs,
        gc_runs,
    } = Collected::of(&maintainer);
    eprintln!("over {count} rounds GC deleted {collected} contents and {packs} blobs");
    assert!(
        collected > 0,
        "GC never deleted anything: margins never expired; last runs: {gc_runs}"
    );
    assert!(packs > 0, "no pack was ever deleted: margins never expired");
    assert!(
        compacted_epochs(&maintainer) > 0,
        "no epoch was ever compacted"
    );
}
