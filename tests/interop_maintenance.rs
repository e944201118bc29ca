//! Maintenance across kmover and the real kopia (maintenance issue, done-means 1 and 2): the
//! parameters and schedule each tool stores are the other's, the owner rule holds for both,
//! each tool's full maintenance leaves a repository the other verifies, restores and maintains
//! again, epoch and legacy index maintenance interoperate, and kmover reclaims at least as much
//! space as kopia with no more index blobs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::tree::{Compare, assert_same_tree};
use common::{Kmover, Kopia, KopiaVersion, RepositoryCli, random_bytes, sample_tree, text_bytes};
use serde_json::Value;

const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";
const EXACT: Compare = Compare {
    dir_mtimes: false,
    owners: true,
};

fn json(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One of the two tools, as the tests drive it.
trait Tool: RepositoryCli {
    /// kopia runs its automatic maintenance after every write command; the tests turn it off
    /// so that only the maintenance they run happens.
    fn write_flags(&self) -> &'static [&'static str];
    /// kopia caches index blob listings (at least 30 s after its own lists); the tests alternate
    /// the tools within seconds, so each kopia command starts without that cache.
    fn forget_listings(&self);
    /// Runs after [`Tool::forget_listings`].
    #[track_caller]
    fn exec<'a>(&self, args: impl IntoIterator<Item = &'a str>) -> std::process::Output {
        self.forget_listings();
        self.run(args.into_iter().collect::<Vec<_>>())
    }
}

impl Tool for Kopia {
    fn write_flags(&self) -> &'static [&'static str] {
        &["--no-auto-maintenance"]
    }

    fn forget_listings(&self) {
        let dir = self.runner().cache_dir().join("blob-list");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

impl Tool for Kmover {
    fn write_flags(&self) -> &'static [&'static str] {
        &[]
    }

    fn forget_listings(&self) {}
}

fn snapshot(tool: &impl Tool, dir: &Path) -> String {
    let mut args = tool.write_flags().to_vec();
    args.extend(["snapshot", "create", "--json"]);
    args.push(dir.to_str().expect("UTF-8 test path"));
    json(tool.exec(args))["id"]
        .as_str()
        .expect("snapshot ID")
        .to_string()
}

fn delete_snapshot(tool: &impl Tool, id: &str) {
    let mut args = tool.write_flags().to_vec();
    args.extend(["snapshot", "delete", id, "--delete"]);
    tool.exec(args);
}

fn snapshot_ids(tool: &impl Tool) -> BTreeSet<String> {
    let out = tool.exec(["snapshot", "list", "--all", "--json"]);
    json(out)
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every file of every snapshot read in full, every content downloaded and decrypted.
#[track_caller]
fn verify_everything(tool: &impl Tool) {
    tool.exec(["snapshot", "verify", "--verify-files-percent=100"]);
    tool.exec(["content", "verify", "--full"]);
}

fn maintenance_info(tool: &impl Tool) -> Value {
    json(tool.exec(["maintenance", "info", "--json"]))
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Three versions of a tree that share most data: v2 drops a big file of v1 and adds one, v3
/// adds more and drops the small files. Deleting snapshots of some versions leaves contents
/// that only they referenced, next to contents every version shares.
struct Versions {
    dirs: Vec<PathBuf>,
}

impl Versions {
    fn build(root: &Path) -> Versions {
        let v1 = root.join("v1");
        sample_tree(&v1);
        std::fs::write(v1.join("big-a.bin"), random_bytes(101, 6 << 20)).unwrap();
        std::fs::write(v1.join("big-b.bin"), random_bytes(102, 3 << 20)).unwrap();
        std::fs::create_dir_all(v1.join("small")).unwrap();
        for i in 0..150u64 {
            let data = text_bytes(200 + i, 500 + (i as usize * 37) % 4000);
            std::fs::write(v1.join(format!("small/f{i:03}.txt")), data).unwrap();
        }
        let v2 = root.join("v2");
        copy_dir(&v1, &v2);
        std::fs::remove_file(v2.join("big-a.bin")).unwrap();
        std::fs::write(v2.join("big-c.bin"), random_bytes(103, 4 << 20)).unwrap();
        let v3 = root.join("v3");
        copy_dir(&v2, &v3);
        std::fs::remove_dir_all(v3.join("small")).unwrap();
        std::fs::write(v3.join("big-d.bin"), random_bytes(104, 2 << 20)).unwrap();
        std::fs::write(v3.join("notes.txt"), text_bytes(105, 40_000)).unwrap();
        Versions {
            dirs: vec![v1, v2, v3],
        }
    }
}

/// Blobs as `blob list --json` shows them: (id, length).
fn blobs(tool: &impl Tool) -> Vec<(String, u64)> {
    tool.forget_listings();
    tool.blob_list_json()
        .into_iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["length"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes stored, not counting kopia's diagnostic logs; and the number of index blobs.
fn footprint(tool: &impl Tool) -> (u64, usize) {
    let all = blobs(tool);
    let bytes = all
        .iter()
        .filter(|(id, _)| !id.starts_with('_'))
        .map(|(_, len)| len)
        .sum();
    let indexes = all
        .iter()
        .filter(|(id, _)| {
            id.starts_with("xn")
                || id.starts_with("xs")
                || id.starts_with("xr")
                || id.starts_with('n')
        })
        .count();
    (bytes, indexes)
}

fn content_ids(tool: &impl Tool, deleted: bool) -> BTreeSet<String> {
    tool.forget_listings();
    let list = if deleted {
        tool.content_list_json_with_deleted()
    } else {
        tool.content_list_json()
    };
    list.into_iter()
        .map(|c| c["contentID"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn parameters_schedule_and_owner_are_shared_with_kopia() {
    let test = "parameters_schedule_and_owner_are_shared_with_kopia";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(&repo, &[FAST_KDF]);
    kopia.connect_filesystem(&repo);

    // Creation names the creating client as owner; both tools see the same document.
    let ours = maintenance_info(&kmover);
    let theirs = maintenance_info(&kopia);
    assert_eq!(ours, theirs);
    let owner = ours["owner"].as_str().unwrap().to_string();
    assert!(owner.contains('@'), "owner {owner:?}");
    assert_eq!(theirs["schedule"]["runs"], Value::Null);

    // kmover sets, kopia reads.
    kmover.exec([
        "maintenance",
        "set",
        "--owner=alice@elsewhere",
        "--quick-interval=2h30m",
        "--enable-full=false",
        "--max-retained-log-count=7",
        "--list-parallelism=3",
        "--pause-quick=3h",
    ]);
    let theirs = maintenance_info(&kopia);
    assert_eq!(theirs["owner"], "alice@elsewhere");
    assert_eq!(theirs["quick"]["interval"], 9_000_000_000_000i64);
    assert_eq!(theirs["quick"]["enabled"], true);
    assert_eq!(theirs["full"]["enabled"], false);
    assert_eq!(theirs["logRetention"]["maxCount"], 7);
    assert_eq!(theirs["logRetention"]["maxTotalSize"], 1i64 << 30);
    assert_eq!(theirs["listParallelism"], 3);
    let next_quick = theirs["schedule"]["nextQuickMaintenance"].as_str().unwrap();
    let next_quick = chrono::DateTime::parse_from_rfc3339(next_quick).unwrap();
    let ahead = next_quick.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        ahead > chrono::TimeDelta::minutes(170) && ahead <= chrono::TimeDelta::minutes(180),
        "quick maintenance paused for 3h, next run in {ahead}"
    );
    assert_eq!(maintenance_info(&kmover), theirs);

    // Neither tool runs maintenance it does not own; kmover's hidden --force overrides.
    for (tool, out) in [
        ("kopia", {
            kopia.forget_listings();
            kopia.runner().run_expecting_failure(["maintenance", "run"])
        }),
        (
            "kmover",
            kmover
                .runner()
                .run_expecting_failure(["maintenance", "run"]),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("maintenance must be run by designated user: alice@elsewhere"),
            "{tool}: {stderr}"
        );
    }
    kmover.exec(["maintenance", "run", "--force"]);

    // kopia sets, kmover reads; `me` is kopia's user@host, the same client as kmover here.
    kopia.exec([
        "--no-auto-maintenance",
        "maintenance",
        "set",
        "--owner=me",
        "--enable-full=true",
        "--full-interval=12h",
    ]);
    let ours = maintenance_info(&kmover);
    assert_eq!(ours["owner"], owner.as_str());
    assert_eq!(ours["full"]["interval"], 43_200_000_000_000i64);
    assert_eq!(ours["full"]["enabled"], true);
    assert_eq!(ours["quick"]["interval"], 9_000_000_000_000i64);
    // The forced quick run by kmover is in the history both tools show.
    let runs = &ours["schedule"]["runs"];
    assert_eq!(runs["compact-single-epoch"][0]["success"], true);
    assert_eq!(runs["advance-epoch"][0]["success"], true);
    assert_eq!(maintenance_info(&kopia), ours);

    // Now owned by this client again: both run, each appending to the same history.
    kopia.exec(["maintenance", "run"]);
    kmover.exec(["maintenance", "run"]);
    let runs = &maintenance_info(&kopia)["schedule"]["runs"];
    assert_eq!(runs["advance-epoch"].as_array().unwrap().len(), 3);
    assert!(
        kmover
            .runner()
            .run_expecting_failure(["maintenance", "set"])
            .stderr
            .windows(18)
            .any(|w| w == b"no changes specifi")
    );
}

/// Snapshots of all three versions by both tools, then some deleted: returns the IDs kept and
/// the versions they hold.
fn populate(
    writer_a: &impl Tool,
    writer_b: &impl Tool,
    versions: &Versions,
) -> Vec<(String, PathBuf)> {
    let s1 = snapshot(writer_a, &versions.dirs[0]);
    let s2 = snapshot(writer_b, &versions.dirs[1]);
    let s3 = snapshot(writer_a, &versions.dirs[2]);
    let s2b = snapshot(writer_a, &versions.dirs[1]);
    delete_snapshot(writer_b, &s1);
    delete_snapshot(writer_a, &s2);
    vec![
        (s3, versions.dirs[2].clone()),
        (s2b, versions.dirs[1].clone()),
    ]
}

#[test]
fn kopia_verifies_and_maintains_after_kmover_full_maintenance() {
    let test = "kopia_verifies_and_maintains_after_kmover_full_maintenance";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let versions = Versions::build(&dir.path().join("src"));
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF, "--no-auto-maintenance"]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let kept = populate(&kopia, &kmover, &versions);

    let before_live = content_ids(&kopia, false);
    let (bytes_before, _) = footprint(&kopia);
    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);

    // Only contents of the deleted snapshot went, and nothing is left marked deleted.
    let after = content_ids(&kopia, true);
    assert!(after.len() < before_live.len(), "GC deleted nothing");
    assert_eq!(after, content_ids(&kopia, false), "deleted entries remain");
    let (bytes_after, _) = footprint(&kopia);
    assert!(
        bytes_after + (5 << 20) < bytes_before,
        "full maintenance reclaimed too little: {bytes_before} -> {bytes_after} bytes"
    );
    assert_eq!(
        snapshot_ids(&kopia),
        kept.iter().map(|(id, _)| id.clone()).collect()
    );
    verify_everything(&kopia);
    let runs = &maintenance_info(&kopia)["schedule"]["runs"];
    for task in [
        "snapshot-gc",
        "full-rewrite-contents",
        "full-drop-deleted-content",
        "full-delete-blobs",
        "cleanup-logs",
    ] {
        assert_eq!(runs[task][0]["success"], true, "{task}: {runs}");
    }

    // kopia maintains what kmover left, and both still read everything.
    kopia.exec(["maintenance", "run", "--full", "--safety=none"]);
    verify_everything(&kopia);
    verify_everything(&kmover);
    for (i, (id, source)) in kept.iter().enumerate() {
        let target = dir.path().join(format!("restored-{i}"));
        kopia.exec(["restore", id, target.to_str().unwrap()]);
        assert_same_tree(source, &target, EXACT);
    }
}

#[test]
fn kmover_verifies_and_restores_after_kopia_full_maintenance() {
    let test = "kmover_verifies_and_restores_after_kopia_full_maintenance";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let versions = Versions::build(&dir.path().join("src"));
    let repo = dir.path().join("repo");
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(&repo, &[FAST_KDF]);
    kopia.connect_filesystem(&repo);
    let kept = populate(&kmover, &kmover, &versions);
    let before = content_ids(&kmover, false);

    kopia.exec(["maintenance", "run", "--full", "--safety=none"]);
    assert!(
        content_ids(&kmover, false).len() < before.len(),
        "kopia's GC deleted nothing"
    );
    verify_everything(&kmover);
    for (i, (id, source)) in kept.iter().enumerate() {
        let target = dir.path().join(format!("restored-{i}"));
        kmover.exec(["restore", id, target.to_str().unwrap()]);
        assert_same_tree(source, &target, EXACT);
    }

    // kmover maintains what kopia left; new snapshots and another round still work both ways.
    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);
    verify_everything(&kmover);
    verify_everything(&kopia);
    let again = snapshot(&kmover, &versions.dirs[0]);
    kopia.exec(["maintenance", "run", "--full", "--safety=none"]);
    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);
    let target = dir.path().join("restored-again");
    kmover.exec(["restore", &again, target.to_str().unwrap()]);
    assert_same_tree(&versions.dirs[0], &target, EXACT);
    verify_everything(&kopia);
}

#[test]
fn kmover_full_maintenance_reclaims_as_much_space_as_kopia() {
    let test = "kmover_full_maintenance_reclaims_as_much_space_as_kopia";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let versions = Versions::build(&dir.path().join("src"));
    let original = dir.path().join("repo-kmover");
    kopia.create_filesystem_repo(&original, &[FAST_KDF, "--no-auto-maintenance"]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&original);
    populate(&kopia, &kmover, &versions);

    // Index timestamps have 1 s resolution: a maintenance started within the second of the last
    // write sees some contents as written "now" (kept as too young by either tool), and how many
    // depends on where the second boundary falls. Maintenance runs later than that in practice.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let copy = dir.path().join("repo-kopia");
    copy_dir(&original, &copy);
    let kopia_on_copy = Kopia::find(KopiaVersion::V0_22, test).unwrap();
    kopia_on_copy.connect_filesystem(&copy);

    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);
    kopia_on_copy.exec(["maintenance", "run", "--full", "--safety=none"]);
    let (ours, our_indexes) = footprint(&kmover);
    let (theirs, their_indexes) = footprint(&kopia_on_copy);
    eprintln!(
        "after full maintenance: kmover {ours} bytes in {our_indexes} index blobs, kopia {theirs} bytes in {their_indexes} index blobs"
    );
    assert!(
        ours * 100 <= theirs * 105,
        "kmover leaves {ours} bytes, kopia {theirs}: more than 5% larger"
    );
    assert!(
        our_indexes <= their_indexes,
        "kmover leaves {our_indexes} index blobs, kopia {their_indexes}"
    );
    assert_eq!(
        content_ids(&kmover, false),
        content_ids(&kopia_on_copy, false)
    );
    verify_everything(&kopia);
}

/// Sets the storage timestamp (file mtime) of every blob whose ID starts with `prefix` back by
/// `age`, as if the storage had written it that long ago: epoch margins compare these times.
fn age_blobs(repo: &Path, tool: &impl Tool, prefix: &str, age: Duration) {
    let ids: Vec<String> = blobs(tool)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| id.starts_with(prefix))
        .collect();
    for id in ids {
        let file = find_blob_file(repo, &id).unwrap_or_else(|| panic!("no file for blob {id}"));
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }
}

/// The file of blob `id` in a filesystem repository (sharded or flat, `.f` suffix).
fn find_blob_file(repo: &Path, id: &str) -> Option<PathBuf> {
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(repo) {
                let flat: String = rel
                    .to_string_lossy()
                    .replace('/', "")
                    .trim_end_matches(".f")
                    .to_string();
                if flat == id {
                    return Some(p);
                }
            }
        }
    }
    None
}

fn epoch_of(tool: &impl Tool) -> u64 {
    blobs(tool)
        .into_iter()
        .filter_map(|(id, _)| id.strip_prefix("xe").and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0)
}

fn has_blob(tool: &impl Tool, prefix: &str) -> bool {
    blobs(tool).iter().any(|(id, _)| id.starts_with(prefix))
}

#[test]
fn epoch_advance_compaction_and_cleanup_interoperate() {
    let test = "epoch_advance_compaction_and_cleanup_interoperate";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF, "--no-auto-maintenance"]);
    // The smallest epochs kopia allows, so a test can walk through several.
    kopia.exec([
        "--no-auto-maintenance",
        "repository",
        "set-parameters",
        "--epoch-min-duration=10m",
        "--epoch-refresh-frequency=3m",
        "--epoch-cleanup-safety-margin=10m",
        "--epoch-advance-on-count=10",
        "--epoch-checkpoint-frequency=2",
    ]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let src = dir.path().join("src");
    sample_tree(&src);

    // Each round: both tools write index blobs into the current epoch, which is then made to
    // look old; alternately one tool's quick maintenance advances (and compacts) epochs, and
    // the other verifies everything.
    let mut kept = Vec::new();
    for round in 0..5u64 {
        for i in 0..10u64 {
            std::fs::write(
                src.join(format!("round-{round}-{i}.txt")),
                text_bytes(1000 * round + i, 3000),
            )
            .unwrap();
            let id = if i % 2 == 0 {
                snapshot(&kmover, &src)
            } else {
                snapshot(&kopia, &src)
            };
            kept.push(id);
        }
        // The epoch spans more than its minimum duration once its first blob is an hour old.
        let epoch = epoch_of(&kopia);
        let first = blobs(&kopia)
            .into_iter()
            .map(|(id, _)| id)
            .find(|id| id.starts_with(&format!("xn{epoch}_")))
            .expect("an index blob in the write epoch");
        age_blobs(&repo, &kopia, &first, Duration::from_secs(3600));
        if round % 2 == 0 {
            kmover.exec(["maintenance", "run"]);
            verify_everything(&kopia);
        } else {
            kopia.exec(["maintenance", "run"]);
            verify_everything(&kmover);
        }
        assert_eq!(
            epoch_of(&kopia),
            epoch + 1,
            "round {round}: epoch not advanced"
        );
    }
    assert!(has_blob(&kopia, "xs0_"), "epoch 0 was not compacted");

    // Full maintenance: a range checkpoint, then (compactions aged past the margin) markers and
    // superseded index blobs go.
    kmover.exec(["maintenance", "run", "--full"]);
    assert!(has_blob(&kopia, "xr0_"), "no range checkpoint was written");
    age_blobs(&repo, &kopia, "xs", Duration::from_secs(7200));
    age_blobs(&repo, &kopia, "xr", Duration::from_secs(7200));
    kopia.exec(["maintenance", "run", "--full"]);
    kmover.exec(["maintenance", "run", "--full"]);
    assert!(
        !has_blob(&kopia, "xn0_"),
        "superseded epoch 0 index blobs remain"
    );
    assert!(!has_blob(&kopia, "xe1"), "old epoch markers remain");
    verify_everything(&kopia);
    verify_everything(&kmover);
    // Snapshot retention (latest 10 of a source) expired the older ones; both tools agree.
    let listed = snapshot_ids(&kmover);
    assert_eq!(listed, snapshot_ids(&kopia));
    assert!(listed.contains(kept.last().unwrap()));
    let target = dir.path().join("restored");
    kmover.exec(["restore", kept.last().unwrap(), target.to_str().unwrap()]);
    assert_same_tree(&src, &target, EXACT);
}

#[test]
fn legacy_format_maintenance_interoperates() {
    let test = "legacy_format_maintenance_interoperates";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let versions = Versions::build(&dir.path().join("src"));
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(
        &repo,
        &[FAST_KDF, "--format-version=1", "--no-auto-maintenance"],
    );
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);
    let kept = populate(&kopia, &kmover, &versions);
    // Enough small index blobs for the quick index compaction.
    for i in 0..8 {
        let extra = dir.path().join(format!("extra-{i}"));
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("f.txt"), text_bytes(500 + i, 2000)).unwrap();
        let id = if i % 2 == 0 {
            snapshot(&kmover, &extra)
        } else {
            snapshot(&kopia, &extra)
        };
        delete_snapshot(&kopia, &id);
    }
    kopia.forget_listings();
    let indexes_before = kopia.index_list_json().len();
    kmover.exec(["maintenance", "run"]);
    kopia.forget_listings();
    let indexes_after = kopia.index_list_json().len();
    assert!(
        indexes_after < indexes_before,
        "quick maintenance compacted no index: {indexes_before} -> {indexes_after}"
    );
    verify_everything(&kopia);

    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);
    verify_everything(&kopia);
    // Legacy compaction drops deletions strictly older than the drop time (kopia's rule), and
    // a deletion (or its copy by the rewrite) may be stamped a second ahead of the clock: the
    // tombstones of this run go in the next one, two seconds later.
    std::thread::sleep(Duration::from_millis(2100));
    kmover.exec(["maintenance", "run", "--full", "--safety=none"]);
    assert_eq!(
        content_ids(&kopia, true),
        content_ids(&kopia, false),
        "deleted entries remain"
    );
    verify_everything(&kopia);
    kopia.exec(["maintenance", "run", "--full", "--safety=none"]);
    verify_everything(&kmover);
    for (i, (id, source)) in kept.iter().enumerate() {
        let target = dir.path().join(format!("restored-{i}"));
        kmover.exec(["restore", id, target.to_str().unwrap()]);
        assert_same_tree(source, &target, EXACT);
    }
}
