//! Concurrency suite: in every round four kmover processes and one kopia process (`-tags
//! testing`) snapshot one filesystem repository, all started together, while kmover runs full
//! maintenance (`--safety=full`) and then quick maintenance. Two kmover writers share one
//! source, kmover and kopia share another, one kmover writer has its own; every source changes
//! before each round. The shared fake clock moves 13 hours on per round so that every safety
//! margin expires, and the test deletes the snapshots of older rounds so that GC has garbage.
//!
//! After every round: exactly the snapshots made and not deleted by the test are listed, both
//! tools verify every file of every one of them and every index entry's pack, and one of the
//! round's snapshots (seeded choice, restored by kmover and kopia in turn) restores byte for
//! byte. At the end every surviving snapshot is restored and compared with its source as it was.
//!
//! `KMOVER_RELIABILITY_ROUNDS=20` runs the full suite (the default is CI's short run),
//! `KMOVER_RELIABILITY_SEED` replays a run. Needs kmover built with `--features testing`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{TimeDelta, Utc};
use common::concurrency::{
    Collected, beside_maintenance, change_tree, compacted_epochs, follows_fake_clock,
    forget_listings, keep_latest, kopia_run, listed, snapshot_id, use_small_epochs,
};
use common::crash::{FAST_KDF, SharedRepo, rounds, say, seed};
use common::fake_clock::{FakeClock, ToolEnv};
use common::tree::{Compare, assert_same_tree};
use common::{Kmover, Kopia, KopiaVersion, RepositoryCli, TestRng, sample_tree, skip_or_fail};

/// Rounds when `KMOVER_RELIABILITY_ROUNDS` is not set: CI's run, about 40 s here (20 rounds,
/// the full suite, take about 90 s).
const CI_ROUNDS: usize = 8;
/// Moves the clock past GC's 24 h content age within two rounds.
const CLOCK_STEP: TimeDelta = TimeDelta::hours(13);
/// The test deletes a round's snapshots this many rounds later.
const KEEP_ROUNDS: usize = 2;
/// A file written in round 0 is removed from its source in round 3 and its last snapshot
/// (round 2) deleted in round 4, so GC collects from round 5 on and the packs it emptied go
/// later: from this many rounds on, the test insists that maintenance collected something.
const ROUNDS_UNTIL_COLLECTED: usize = 7;
const EXACT: Compare = Compare {
    dir_mtimes: false,
    owners: true,
};

/// A source tree and the writers that snapshot it.
struct Source {
    name: &'static str,
    tree: PathBuf,
}

/// One snapshotting process per round: a tool and the source it snapshots.
struct Writer<'a> {
    name: &'static str,
    tool: &'a (dyn Fn(&[&str]) -> std::process::Output + Sync),
    source: usize,
}

/// A snapshot the test made, with the round and source it belongs to.
#[derive(Debug, Clone)]
struct Made {
    id: String,
    round: usize,
    source: usize,
    writer: &'static str,
}

/// A copy of `tree` with modes and times, to compare a later restore with.
fn keep_copy(tree: &Path, copy: &Path) {
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(tree)
        .arg(copy)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp -a {} {}: {}",
        tree.display(),
        copy.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores `snapshot` with kmover or kopia and compares the result with `expected`.
fn assert_restores(repo: &SharedRepo, by_kopia: bool, snapshot: &Made, expected: &Path, at: &Path) {
    let target = at.to_str().unwrap();
    let args = ["snapshot", "restore", snapshot.id.as_str(), target];
    match &repo.kopia {
        Some(kopia) if by_kopia => {
            kopia_run(kopia, &args);
        }
        _ => {
            repo.kmover.run(args);
        }
    }
    assert_same_tree(expected, at, EXACT);
    std::fs::remove_dir_all(at).unwrap();
}

#[test]
fn four_kmover_and_one_kopia_writer_beside_maintenance_lose_nothing() {
    let test = "four_kmover_and_one_kopia_writer_beside_maintenance_lose_nothing";
    if !follows_fake_clock() {
        skip_or_fail(
            test,
            "kmover was built without the `testing` feature (cargo test --features kmover/testing)",
        );
        return;
    }
    let Some(mut kopia) = Kopia::find(KopiaVersion::V0_22Testing, test) else {
        return;
    };
    let started = Instant::now();
    let count = rounds(CI_ROUNDS);
    let seed = seed();
    say(&format!("{test}: {count} rounds, seed {seed}"));

    // Behind real time, as in tests/interop_maintenance_concurrency.rs: kopia stamps its blobs
    // with real time and kmover (testing build) with the fake one.
    let clock = FakeClock::start(Utc::now() - TimeDelta::days(30));
    let mut kmovers: Vec<Kmover> = (0..5).map(|_| Kmover::new()).collect();
    for k in &mut kmovers {
        k.follow_clock(&clock);
    }
    kopia.follow_clock(&clock);
    let maintainer = kmovers.pop().expect("five kmover connections");

    let dir = tempfile::tempdir().unwrap();
    let repo_path = dir.path().join("repo");
    maintainer.create_filesystem_repo(&repo_path, &[FAST_KDF]);
    for k in &kmovers {
        k.connect_filesystem(&repo_path);
    }
    kopia.connect_filesystem(&repo_path);
    use_small_epochs(&kopia);
    // The test alone deletes snapshots: retention keeps them all.
    keep_latest(&kopia, 100_000);
    let repo = SharedRepo {
        kmover: maintainer,
        kopia: Some(kopia),
        label: "filesystem",
    };
    let kopia = repo.kopia.as_ref().expect("kopia is there");

    let sources: Vec<Source> = ["kmover-pair", "mixed", "solo"]
        .into_iter()
        .map(|name| {
            let tree = dir.path().join("sources").join(name);
            sample_tree(&tree);
            Source { name, tree }
        })
        .collect();
    let kmovers = &kmovers;
    let run = |i: usize| move |args: &[&str]| kmovers[i].run(args);
    let (run0, run1, run2, run3) = (run(0), run(1), run(2), run(3));
    let run_kopia = |args: &[&str]| kopia_run(kopia, args);
    let writers = [
        Writer {
            name: "kmover-0",
            tool: &run0,
            source: 0,
        },
        Writer {
            name: "kmover-1",
            tool: &run1,
            source: 0,
        },
        Writer {
            name: "kmover-2",
            tool: &run2,
            source: 1,
        },
        Writer {
            name: "kopia",
            tool: &run_kopia,
            source: 1,
        },
        Writer {
            name: "kmover-3",
            tool: &run3,
            source: 2,
        },
    ];

    let copies = dir.path().join("copies");
    let restores = dir.path().join("restores");
    let mut rng = TestRng::new(seed);
    let mut live: Vec<Made> = Vec::new();
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut verified = 0usize;
    for round in 0..count {
        let round_started = Instant::now();
        clock.advance(CLOCK_STEP);
        for (i, source) in sources.iter().enumerate() {
            change_tree(&source.tree, &mut rng, round, i);
            keep_copy(
                &source.tree,
                &copies.join(format!("round-{round:03}")).join(source.name),
            );
        }
        let jobs = writers.iter().map(|w| {
            let tree = sources[w.source].tree.to_str().unwrap();
            move || {
                let out = (w.tool)(&["snapshot", "create", "--json", tree]);
                Made {
                    id: snapshot_id(&out),
                    round,
                    source: w.source,
                    writer: w.name,
                }
            }
        });
        let made = beside_maintenance(jobs, || {
            repo.kmover
                .run(["maintenance", "run", "--full", "--safety=full"]);
            repo.kmover.run(["maintenance", "run"]);
        });
        live.extend(made.iter().cloned());

        let context = format!("round {round} (seed {seed})");
        let expected: BTreeSet<String> = live.iter().map(|m| m.id.clone()).collect();
        let now_listed = listed(&repo.kmover);
        assert_eq!(
            now_listed, expected,
            "{context}: the listed snapshots are not those made and not deleted"
        );
        forget_listings(kopia);
        let ids: Vec<String> = expected.iter().cloned().collect();
        repo.assert_intact(&ids, &context);
        verified += ids.len();

        let sample = &made[rng.below(made.len())];
        assert_restores(
            &repo,
            round % 2 == 1,
            sample,
            &sources[sample.source].tree,
            &restores.join(format!("round-{round:03}")),
        );

        // Deleting a round's snapshots (by kmover and kopia in turn) leaves its old files as
        // garbage for the next rounds' GC.
        if let Some(old) = round.checked_sub(KEEP_ROUNDS) {
            let (gone, kept): (Vec<Made>, Vec<Made>) = live.drain(..).partition(|m| m.round == old);
            live = kept;
            let mut args = vec!["snapshot", "delete"];
            args.extend(gone.iter().map(|m| m.id.as_str()));
            args.push("--delete");
            if round % 2 == 0 {
                repo.kmover.run(&args);
            } else {
                kopia_run(kopia, &args);
            }
            deleted.extend(gone.into_iter().map(|m| m.id));
            std::fs::remove_dir_all(copies.join(format!("round-{old:03}"))).unwrap();
        }
        say(&format!(
            "{context}: {} snapshots made, {} verified by both tools, sample {} of {} restored \
             by {}; {:.1}s",
            made.len(),
            ids.len(),
            sample.writer,
            sources[sample.source].name,
            if round % 2 == 1 { "kopia" } else { "kmover" },
            round_started.elapsed().as_secs_f64()
        ));
    }

    // Every survivor restores as its source was, by both tools in turn; the deleted stay gone.
    forget_listings(kopia);
    let ids: Vec<String> = live.iter().map(|m| m.id.clone()).collect();
    repo.assert_intact(&ids, "after all rounds");
    kopia_run(kopia, &["content", "verify", "--full"]);
    repo.kmover.run(["content", "verify", "--full"]);
    let now_listed = listed(&repo.kmover);
    assert!(
        now_listed.is_disjoint(&deleted),
        "deleted snapshots came back: {:?}",
        now_listed.intersection(&deleted).collect::<Vec<_>>()
    );
    for (i, m) in live.iter().enumerate() {
        let copy = copies
            .join(format!("round-{:03}", m.round))
            .join(sources[m.source].name);
        assert_restores(
            &repo,
            i % 2 == 0,
            m,
            &copy,
            &restores.join(format!("final-{i}")),
        );
    }

    let collected = Collected::of(&repo.kmover);
    let epochs = compacted_epochs(&repo.kmover);
    say(&format!(
        "{test}: {count} rounds in {:.0}s: {verified} snapshot verifications by each tool \
         ({} snapshots made, {} deleted by the test, {} restored and compared); GC deleted {} \
         contents, maintenance deleted {} blobs; {epochs} compacted epoch blobs",
        started.elapsed().as_secs_f64(),
        deleted.len() + live.len(),
        deleted.len(),
        count + live.len(),
        collected.contents,
        collected.packs,
    ));
    if count >= ROUNDS_UNTIL_COLLECTED {
        assert!(
            collected.contents > 0,
            "GC never deleted anything in {count} rounds: margins never expired; runs: {}",
            collected.gc_runs
        );
        assert!(
            collected.packs > 0,
            "no pack was deleted in {count} rounds: margins never expired"
        );
        assert!(epochs > 0, "no epoch was compacted in {count} rounds");
    }
}
