//! Crash suite: kmover killed with SIGKILL at seeded points during backup and restore, on a
//! filesystem repository and on S3 (MinIO). After every kill, kmover and the real kopia v0.22.3
//! verify every file of every earlier snapshot and every index entry's pack, the next backup
//! succeeds and restores exactly, and re-running an interrupted restore completes it exactly.
//!
//! CI runs a few rounds per scenario; `KMOVER_RELIABILITY_ROUNDS=30` runs the full suite (see
//! tests/common/crash.rs for the seed and the crash hook of `--features testing` builds).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::crash::{
    Backend, Interrupted, KillAt, SharedRepo, assert_no_secrets, kill_points, mutate_tree, rounds,
    run_killed, say, seed,
};
use common::minio::{self, Minio};
use common::tree::{Compare, assert_same_tree, hard_tree};
use common::{Kopia, KopiaVersion, PASSWORD, RepositoryCli, TestRng};

const EXACT: Compare = Compare {
    dir_mtimes: false,
    owners: true,
};
/// Rounds per scenario when `KMOVER_RELIABILITY_ROUNDS` is not set (CI).
const CI_ROUNDS: usize = 3;
/// Crash hook points inside a backup's storage writes: pack uploads (`p` data, `q` metadata),
/// index blobs (`x`), session markers (`s`) and their removal at the end of a flush.
const BACKUP_POINTS: &[&str] = &[
    "before-put-p",
    "during-put-p",
    "after-put-p",
    "before-put-q",
    "after-put-q",
    "before-put-x",
    "during-put-x",
    "after-put-x",
    "after-put-s",
    "before-delete-s",
];
/// Crash hook points of a restore: the pack reads.
const RESTORE_POINTS: &[&str] = &["get-p"];

fn secrets() -> [&'static str; 2] {
    [PASSWORD, minio::ROOT_PASSWORD]
}

/// Per-test seed, so each scenario draws its own kill points from the suite's seed.
fn test_rng(test: &str) -> TestRng {
    let salt = test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    TestRng::new(seed() ^ salt)
}

fn complete_ids(repo: &SharedRepo) -> Vec<String> {
    repo.snapshot_ids(false)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn describe(round: usize, at: &KillAt, r: &Interrupted) -> String {
    format!(
        "round {round} ({at}, seed {}): {} after {} ms",
        seed(),
        if r.killed { "killed" } else { "finished" },
        r.elapsed.as_millis()
    )
}

fn backup_crash_rounds(test: &str, backend: &Backend, count: usize) {
    let kopia = Kopia::find(KopiaVersion::V0_22, test);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 300);
    let repo = SharedRepo::create(backend, kopia);
    // Retention would expire the older of the many snapshots made here; all must stay.
    repo.kmover
        .run(["policy", "set", "--global", "--keep-latest", "10000"]);
    let mut rng = test_rng(test);

    let started = Instant::now();
    let mut expected = vec![repo.kmover_snapshot(&tree)];
    let window = started.elapsed();
    // Later backups add a few MiB to an unchanged tree: quicker than this first one.
    let points = kill_points(&mut rng, count, window * 6 / 10, BACKUP_POINTS, 1);
    let (mut killed, mut finished) = (0, 0);
    for (round, at) in points.iter().enumerate() {
        mutate_tree(&tree, &mut rng, round);
        let mut args = vec![
            "snapshot".to_string(),
            "create".into(),
            tree.display().to_string(),
        ];
        if round % 2 == 1 {
            // Checkpoints flush the index and save an incomplete snapshot mid-backup.
            args.push("--checkpoint-interval=300ms".into());
        }
        let before = complete_ids(&repo);
        let r = run_killed(&repo.kmover, &args, &[], at);
        let context = format!("{} backup {}", repo.label, describe(round, at, &r));
        assert_no_secrets(&context, &r.output, &secrets());
        if r.killed {
            killed += 1;
        } else {
            finished += 1;
        }
        let after = complete_ids(&repo);
        let new: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
        assert!(
            new.len() <= 1 && (r.killed || new.len() == 1),
            "{context}: new complete snapshots {new:?}"
        );
        expected.extend(new.into_iter().cloned());
        repo.assert_intact(&expected, &context);

        let next = repo.kmover_snapshot(&tree);
        let restored = dir.path().join(format!("check-{round}"));
        repo.kmover
            .run(["snapshot", "restore", &next, restored.to_str().unwrap()]);
        assert_same_tree(&tree, &restored, EXACT);
        std::fs::remove_dir_all(&restored).unwrap();
        expected.push(next);
        say(&context);
    }
    repo.assert_intact(&expected, &format!("{} after all rounds", repo.label));
    say(&format!(
        "{test}: {} backup crash points: {killed} killed, {finished} finished first; \
         {} snapshots intact",
        repo.label,
        expected.len()
    ));
}

/// Sets every entry's mtime to a fixed old time (children first), as data restored by a mover
/// usually is: `--skip-existing` then cannot take a half-written file for a finished one.
fn age_tree(root: &Path) {
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let mut dirs = vec![root.to_path_buf()];
    let mut order = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                dirs.push(e.path());
            } else if ty.is_file() {
                std::fs::File::open(e.path())
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        order.push(d);
    }
    for d in order.iter().rev() {
        std::fs::File::open(d).unwrap().set_modified(old).unwrap();
    }
}

fn restore_tree(root: &Path) {
    hard_tree(root, false, 500);
    for i in 0..3 {
        common::write_random_file(&root.join("data"), &format!("big-{i}.bin"), 40 + i, 9 << 20);
    }
    age_tree(root);
}

/// Runs an interrupted restore again: it must succeed and leave exactly the snapshot's tree.
fn rerun_completes(repo: &SharedRepo, args: &[String], tree: &Path, target: &Path, context: &str) {
    let out = repo.kmover.runner().run_unchecked(args);
    assert!(
        out.status.success(),
        "{context}: re-running `kmover {}` failed: {}\n{}",
        args.join(" "),
        out.status,
        common::clip(&out.stderr)
    );
    assert_same_tree(tree, target, EXACT);
}

fn restore_crash_rounds(test: &str, backend: &Backend, count: usize) {
    let kopia = Kopia::find(KopiaVersion::V0_22, test);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    restore_tree(&tree);
    let repo = SharedRepo::create(backend, kopia);
    let id = repo.kmover_snapshot(&tree);
    let mut rng = test_rng(test);

    let first = dir.path().join("uninterrupted");
    let started = Instant::now();
    repo.kmover
        .run(["snapshot", "restore", &id, first.to_str().unwrap()]);
    let window = started.elapsed();
    assert_same_tree(&tree, &first, EXACT);
    std::fs::remove_dir_all(&first).unwrap();

    let points = kill_points(&mut rng, count, window * 9 / 10, RESTORE_POINTS, 8);
    let (mut killed, mut finished) = (0, 0);
    for (round, at) in points.iter().enumerate() {
        let target: PathBuf = dir.path().join(format!("restore-{round}"));
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            id.clone(),
            target.display().to_string(),
        ];
        let r = run_killed(&repo.kmover, &args, &[], at);
        let context = format!("{} restore {}", repo.label, describe(round, at, &r));
        assert_no_secrets(&context, &r.output, &secrets());
        if r.killed {
            killed += 1;
        } else {
            finished += 1;
        }
        // Re-running completes the target, with or without skipping what is already there.
        if round % 2 == 1 {
            args.push("--skip-existing".into());
        }
        // Said first: a failure below must name the kill point and seed that led to it.
        say(&format!("{context}; re-running `{}`", args.join(" ")));
        rerun_completes(&repo, &args, &tree, &target, &context);
        std::fs::remove_dir_all(&target).unwrap();
    }
    repo.assert_intact(&[id], &format!("{} after restore crashes", repo.label));
    say(&format!(
        "{test}: {} restore crash points: {killed} killed, {finished} finished first",
        repo.label
    ));
}

#[test]
fn backup_survives_kills_on_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Filesystem(dir.path().join("repo"));
    backup_crash_rounds(
        "backup_survives_kills_on_filesystem",
        &backend,
        rounds(CI_ROUNDS),
    );
}

#[test]
fn backup_survives_kills_on_s3() {
    let test = "backup_survives_kills_on_s3";
    let Some(server) = Minio::start(test) else {
        return;
    };
    server.create_bucket("crash");
    let backend = Backend::S3 {
        minio: &server,
        bucket: "crash".into(),
        prefix: "backup/".into(),
    };
    backup_crash_rounds(test, &backend, rounds(CI_ROUNDS));
}

#[test]
fn restore_survives_kills_on_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Filesystem(dir.path().join("repo"));
    restore_crash_rounds(
        "restore_survives_kills_on_filesystem",
        &backend,
        rounds(CI_ROUNDS),
    );
}

#[test]
fn restore_survives_kills_on_s3() {
    let test = "restore_survives_kills_on_s3";
    let Some(server) = Minio::start(test) else {
        return;
    };
    server.create_bucket("crash");
    let backend = Backend::S3 {
        minio: &server,
        bucket: "crash".into(),
        prefix: "restore/".into(),
    };
    restore_crash_rounds(test, &backend, rounds(CI_ROUNDS));
}

/// `--write-files-atomically` writes each file under a temporary name first: a restore killed
/// then, and run again, must not leave those temporary files in the target.
#[test]
fn interrupted_atomic_restore_leaves_no_temp_files() {
    let test = "interrupted_atomic_restore_leaves_no_temp_files";
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    restore_tree(&tree);
    let backend = Backend::Filesystem(dir.path().join("repo"));
    let repo = SharedRepo::create(&backend, None);
    let id = repo.kmover_snapshot(&tree);
    let mut rng = test_rng(test);
    let started = Instant::now();
    let first = dir.path().join("uninterrupted");
    repo.kmover
        .run(["snapshot", "restore", &id, first.to_str().unwrap()]);
    let window = started.elapsed();
    for (round, at) in kill_points(&mut rng, rounds(CI_ROUNDS), window, RESTORE_POINTS, 8)
        .into_iter()
        .enumerate()
    {
        let target = dir.path().join(format!("atomic-{round}"));
        let args = vec![
            "snapshot".to_string(),
            "restore".into(),
            id.clone(),
            target.display().to_string(),
            "--write-files-atomically".into(),
        ];
        let r = run_killed(&repo.kmover, &args, &[], &at);
        let context = format!("atomic restore {}", describe(round, &at, &r));
        say(&context);
        rerun_completes(&repo, &args, &tree, &target, &context);
    }
}
