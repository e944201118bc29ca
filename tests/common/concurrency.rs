//! Concurrent writers beside maintenance: the pieces the maintenance-concurrency suites share.
//! Several kmover and kopia processes snapshot one repository while kmover runs maintenance, the
//! shared fake clock ([`super::fake_clock`]) jumping ahead between rounds so that every safety
//! margin expires; afterwards the repository must hold every snapshot it should.
//!
//! Needs kmover built with `--features testing` (see [`follows_fake_clock`]) and kopia 0.22.3
//! built with `-tags testing`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use super::fake_clock::ENDPOINT_VAR;
use super::{Kopia, RepositoryCli, TestRng, clip, text_bytes};

/// Whether this kmover binary takes its time from the fake-time server: a testing build cannot
/// start without reaching it.
pub fn follows_fake_clock() -> bool {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmover"))
        .arg("--version")
        .env(ENDPOINT_VAR, "http://127.0.0.1:1/")
        .output()
        .expect("run kmover --version");
    !out.status.success()
}

/// A command's stdout as JSON.
#[track_caller]
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}): {}\n--- stderr ---\n{}",
            clip(&out.stdout),
            clip(&out.stderr)
        )
    })
}

/// The ID printed by `snapshot create --json`.
#[track_caller]
pub fn snapshot_id(out: &Output) -> String {
    json(out)["id"]
        .as_str()
        .expect("snapshot create --json printed no snapshot ID")
        .to_string()
}

/// IDs of every snapshot `tool` lists (all sources).
#[track_caller]
pub fn listed(tool: &impl RepositoryCli) -> BTreeSet<String> {
    json(&tool.run(["snapshot", "list", "--all", "--json"]))
        .as_array()
        .expect("snapshot list --json prints a list")
        .iter()
        .map(|m| m["id"].as_str().expect("snapshot ID").to_string())
        .collect()
}

/// The sum of `field` over every run of `task` that `maintenance info --json` records.
pub fn maintenance_total(info: &Value, task: &str, field: &str) -> u64 {
    info["schedule"]["runs"][task]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| r["extra"][0]["data"][field].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// What maintenance collected over a test, from `maintenance info --json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// Contents snapshot GC marked deleted.
    pub contents: u64,
    /// Unreferenced pack blobs full maintenance deleted.
    pub packs: u64,
    /// The recorded snapshot GC runs, for failure messages.
    pub gc_runs: Value,
}

impl Collected {
    #[track_caller]
    pub fn of(tool: &impl RepositoryCli) -> Collected {
        let info = json(&tool.run(["maintenance", "info", "--json"]));
        Collected {
            contents: maintenance_total(&info, "snapshot-gc", "deletedContentCount"),
            packs: maintenance_total(&info, "full-delete-blobs", "deletedPackCount"),
            gc_runs: info["schedule"]["runs"]["snapshot-gc"].clone(),
        }
    }
}

/// Number of compacted epoch (`xs…`) index blobs.
#[track_caller]
pub fn compacted_epochs(tool: &impl RepositoryCli) -> usize {
    tool.blob_list_json()
        .iter()
        .filter(|b| b["id"].as_str().is_some_and(|id| id.starts_with("xs")))
        .count()
}

/// Drops kopia's cached blob listings: after a jump of the fake clock kopia would trust a
/// listing that misses what the other processes wrote since.
pub fn forget_listings(kopia: &Kopia) {
    let dir = kopia.runner().cache_dir().join("blob-list");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
}

/// Runs kopia with fresh listings and without its automatic maintenance (kmover maintains).
#[track_caller]
pub fn kopia_run(kopia: &Kopia, args: &[&str]) -> Output {
    forget_listings(kopia);
    let mut all = vec!["--no-auto-maintenance"];
    all.extend_from_slice(args);
    kopia.run(all)
}

/// kopia's smallest epoch parameters, so that epochs advance, compact and get cleaned up within
/// a few rounds.
#[track_caller]
pub fn use_small_epochs(kopia: &Kopia) {
    kopia_run(
        kopia,
        &[
            "repository",
            "set-parameters",
            "--epoch-min-duration=10m",
            "--epoch-refresh-frequency=3m",
            "--epoch-cleanup-safety-margin=10m",
            "--epoch-advance-on-count=10",
            "--epoch-checkpoint-frequency=2",
        ],
    );
}

/// Sets the global retention to keep the `latest` newest snapshots of each source and nothing
/// by age.
#[track_caller]
pub fn keep_latest(kopia: &Kopia, latest: usize) {
    let latest = format!("--keep-latest={latest}");
    kopia_run(
        kopia,
        &[
            "policy",
            "set",
            "--global",
            &latest,
            "--keep-hourly=0",
            "--keep-daily=0",
            "--keep-weekly=0",
            "--keep-monthly=0",
            "--keep-annual=0",
        ],
    );
}

/// Changes a source tree between snapshots: one new text file in this round's directory, and
/// the directory of three rounds ago goes, so that old contents become garbage.
pub fn change_tree(tree: &Path, rng: &mut TestRng, round: usize, n: usize) {
    let dir = tree.join(format!("round-{round:03}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let file = dir.join(format!("{n}.txt"));
    std::fs::write(&file, text_bytes(rng.next_u64(), 2000 + rng.below(60_000)))
        .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    if round >= 3 {
        let old = tree.join(format!("round-{:03}", round - 3));
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
        }
    }
}

/// Runs every job on its own thread, all started together, while `maintenance` runs on this
/// one; returns the jobs' results in order once all have finished.
pub fn beside_maintenance<J, T>(
    jobs: impl IntoIterator<Item = J>,
    maintenance: impl FnOnce(),
) -> Vec<T>
where
    J: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
        maintenance();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}
