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

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{TimeDelta, Utc};
use common::crash::rounds;
use common::fake_clock::{ENDPOINT_VAR, FakeClock, ToolEnv};
use common::{
    Kmover, Kopia, KopiaVersion, RepositoryCli, TestRng, sample_tree, skip_or_fail, text_bytes,
};
use serde_json::Value;

const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";
const DEFAULT_ROUNDS: usize = 20;
const SNAPSHOTS_PER_ROUND: usize = 2;
/// A rewrite stamps the contents it copies with the current time (kopia's rule) and runs at most
/// every other round, so rounds 13 h apart let contents reach GC's 24 h margin between rewrites.
const CLOCK_STEP: TimeDelta = TimeDelta::hours(13);

/// Whether this kmover binary takes its time from the fake-time server.
fn follows_fake_clock() -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmover"))
        .arg("--version")
        .env(ENDPOINT_VAR, "http://127.0.0.1:1/")
        .output()
        .expect("run kmover --version");
    !out.status.success()
}

fn json(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One writer: a tool and the tree it keeps changing and snapshotting.
struct Writer<'a> {
    name: &'static str,
    tool: &'a (dyn Fn(&[&str]) -> std::process::Output + Sync),
    tree: PathBuf,
}

impl Writer<'_> {
    fn snapshot(&self, rng: &mut TestRng, round: usize, n: usize) -> String {
        let dir = self.tree.join(format!("round-{round:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{n}.txt")),
            text_bytes(rng.next_u64(), 2000 + rng.below(60_000)),
        )
        .unwrap();
        if round >= 3 {
            // Old files go, so that retention and GC have something to collect.
            let _ = std::fs::remove_dir_all(self.tree.join(format!("round-{:03}", round - 3)));
        }
        let out = (self.tool)(&["snapshot", "create", "--json", self.tree.to_str().unwrap()]);
        json(out)["id"].as_str().expect("snapshot ID").to_string()
    }
}

fn listed(tool: &impl RepositoryCli) -> BTreeSet<String> {
    json(tool.run(["snapshot", "list", "--all", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// The sum of `field` over every recorded run of `task`.
fn total(info: &Value, task: &str, field: &str) -> u64 {
    info["schedule"]["runs"][task]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| r["extra"][0]["data"][field].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn forget_listings(kopia: &Kopia) {
    let dir = kopia.runner().cache_dir().join("blob-list");
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
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
    kopia.run([
        "--no-auto-maintenance",
        "repository",
        "set-parameters",
        "--epoch-min-duration=10m",
        "--epoch-refresh-frequency=3m",
        "--epoch-cleanup-safety-margin=10m",
        "--epoch-advance-on-count=10",
        "--epoch-checkpoint-frequency=2",
    ]);
    kopia.run([
        "--no-auto-maintenance",
        "policy",
        "set",
        "--global",
        "--keep-latest=3",
        "--keep-hourly=0",
        "--keep-daily=0",
        "--keep-weekly=0",
        "--keep-monthly=0",
        "--keep-annual=0",
    ]);

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
    let run_kopia = |args: &[&str]| {
        forget_listings(&kopia);
        let mut all = vec!["--no-auto-maintenance"];
        all.extend_from_slice(args);
        kopia.run(all)
    };
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
        let newest: Vec<(&str, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    s.spawn(move || {
                        let mut rng = TestRng::new((round * 10 + i) as u64);
                        let mut last = String::new();
                        for n in 0..SNAPSHOTS_PER_ROUND {
                            last = w.snapshot(&mut rng, round, n);
                        }
                        (w.name, last)
                    })
                })
                .collect();
            maintainer.run(["maintenance", "run", "--full"]);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
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
    let info = json(maintainer.run(["maintenance", "info", "--json"]));
    let collected = total(&info, "snapshot-gc", "deletedContentCount");
    let packs = total(&info, "full-delete-blobs", "deletedPackCount");
    eprintln!("over {count} rounds GC deleted {collected} contents and {packs} blobs");
    assert!(
        collected > 0,
        "GC never deleted anything: margins never expired; last runs: {}",
        info["schedule"]["runs"]["snapshot-gc"]
    );
    assert!(packs > 0, "no pack was ever deleted: margins never expired");
    let epochs = json(maintainer.run(["blob", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["id"].as_str().is_some_and(|id| id.starts_with("xs")))
        .count();
    assert!(epochs > 0, "no epoch was ever compacted");
}
