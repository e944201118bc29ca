//! The VolSync mover contract, checklist of spec §7 (packaging, source and destination items):
//! the kmover binary runs as `/mover-kopia/entry.sh` with VolSync's environment in a temporary
//! pod root (see tests/common/volsync.rs). Each test names the checklist items it covers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::volsync::{self, Pod, Run, snapshots, source_of};
use serde_json::Value;

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Backs up `/data` holding `contents` in `file.txt`; returns the new snapshot's ID.
#[track_caller]
fn backup_version(pod: &Pod, contents: &str, extra: &[(&str, &str)]) -> String {
    write(&pod.path("/data/file.txt"), contents.as_bytes());
    pod.backup(extra).assert_code(0).assert_summary("SUCCESS");
    let all = snapshots(pod);
    all.last().expect("a snapshot")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ids_of(pod: &Pod, source: &str) -> Vec<String> {
    snapshots(pod)
        .iter()
        .filter(|s| source_of(s) == source)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- packaging and launch

/// Items 1, 2, 9, 10: UID 0 without capabilities, UID 1234/GID 5678 without passwd entry or
/// HOME, and UID 1000 each complete a backup; nothing is written outside the writable mounts;
/// `/cache/logs` is created; the summary closes the output.
#[test]
fn backup_as_root_without_capabilities_and_as_unprivileged_users() {
    if !is_root() {
        common::skip_or_fail(
            "backup_as_root_without_capabilities_and_as_unprivileged_users",
            "switching users needs root",
        );
        return;
    }
    for (label, uid, gid) in [
        ("root-no-caps", 0, 0),
        ("1234:5678", 1234, 5678),
        ("1000", 1000, 1000),
    ] {
        let pod = Pod::new();
        write(&pod.path("/data/a.txt"), b"payload");
        pod.chown_mounts(uid, gid);
        // A read-only root: only the mounts are writable (for root, the inventory below checks).
        let home = pod.path("/home-ro");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(pod.root(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let mounts = ["data", "restore", "cache", "tmp", "mnt"];
        let before = volsync::file_inventory(pod.root(), &mounts);
        let mut env = pod.source_env();
        env.insert("HOME".into(), home.display().to_string());
        let run = if uid == 0 {
            // An empty bounding set: root without CAP_DAC_OVERRIDE, CHOWN, FOWNER.
            run_without_capabilities(&pod, env)
        } else {
            volsync::wait(pod.spawn(&["backup"], env, &[], Some((uid, gid))))
        };
        std::fs::set_permissions(pod.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
        run.assert_code(0).assert_summary("SUCCESS");
        assert!(
            run.output.contains("INFO: Snapshot created successfully"),
            "{label}: {}",
            run.output
        );
        assert!(pod.path("/cache/logs").is_dir(), "{label}: /cache/logs");
        assert_eq!(
            volsync::file_inventory(pod.root(), &mounts),
            before,
            "{label}: the mover wrote outside its mounts"
        );
        assert_eq!(
            std::fs::read_dir(&home).unwrap().count(),
            0,
            "{label}: HOME written"
        );
        assert!(
            pod.path("/mnt/repo/kopia.repository.f").is_file(),
            "{label}"
        );
    }
}

fn run_without_capabilities(pod: &Pod, env: std::collections::BTreeMap<String, String>) -> Run {
    use std::io::Read;
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(pod.entry_sh())
        .arg("backup")
        .env_clear()
        .envs(&env)
        .env("KMOVER_VOLSYNC_TEST_ROOT", pod.root())
        .env("PATH", "/usr/bin:/bin")
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .expect("setpriv (util-linux) runs the mover without capabilities");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        output: String::from_utf8_lossy(&out).into_owned(),
    }
}

/// Item 3: DIRECTION wins over the arguments; `DIRECTION=maintenance` runs maintenance.
#[test]
fn direction_wins_over_arguments() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let run = pod.run(&["restore"], pod.source_env(), &[("DIRECTION", "source")]);
    run.assert_code(0)
        .assert_contains("INFO: === Running as SOURCE ====")
        .assert_contains("INFO: Snapshot created successfully")
        .assert_lacks("Running as DESTINATION");
    assert!(run.output.ends_with(
        "INFO: OPERATION_TYPE: source\nINFO: OPERATION_RESULT: SUCCESS\nINFO: EXIT_CODE: 0\nINFO: === Done ===\n"
    ), "{}", run.output);
    let mut env = pod.base_env();
    env.insert("DIRECTION".into(), "maintenance".into());
    env.insert("DATA_DIR".into(), "/data".into());
    std::fs::remove_dir_all(pod.path("/data")).unwrap();
    let run = pod.run(&[], env, &[]);
    run.assert_code(0)
        .assert_contains("INFO: === Running MAINTENANCE ONLY ====")
        .assert_contains("INFO: MAINTENANCE_STATUS: SUCCESS")
        .assert_contains("INFO: OPERATION_TYPE: maintenance");
}

/// Items 4, 5, 6: unknown operation → 2; `maintenance` as an argument → 1; nothing → 0 and no
/// repository.
#[test]
fn operations_from_arguments() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.run(&["frobnicate"], pod.source_env(), &[])
        .assert_code(2)
        .assert_contains("ERROR: unknown operation: frobnicate")
        .assert_summary("FAILURE");
    pod.run(&["maintenance"], pod.source_env(), &[])
        .assert_code(1)
        .assert_contains(
            "ERROR: Command-based maintenance no longer supported. Use KopiaMaintenance CRD.",
        )
        .assert_summary("FAILURE");
    pod.run(&[], pod.source_env(), &[])
        .assert_code(0)
        .assert_summary("SUCCESS");
    assert!(
        !pod.path("/mnt/repo").exists(),
        "no repository without an operation"
    );
}

/// Items 7, 8: mandatory settings and the cache/data directory checks.
#[test]
fn validation_errors() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[("KOPIA_PASSWORD", "")])
        .assert_code(1)
        .assert_contains("ERROR: KOPIA_PASSWORD must be defined")
        .assert_summary("FAILURE");
    pod.backup(&[("DATA_DIR", "")])
        .assert_code(1)
        .assert_contains("ERROR: DATA_DIR must be defined");
    pod.backup(&[("DATA_DIR", "/nope")])
        .assert_code(1)
        .assert_contains("ERROR: Data directory /nope does not exist")
        .assert_summary("FAILURE");
    if is_root() {
        // Unwritable for an unprivileged user: owned by root, mode 0755.
        pod.chown_mounts(1234, 5678);
        volsync::chown_tree(&pod.path("/cache"), 0, 0);
        let run = volsync::wait(pod.spawn(&["backup"], pod.source_env(), &[], Some((1234, 5678))));
        run.assert_code(1)
            .assert_contains("ERROR: Cache directory /cache is not writable")
            .assert_summary("FAILURE");
    } else {
        common::skip_or_fail(
            "validation_errors (unwritable cache)",
            "needs root to switch users",
        );
    }
}

/// Item 11: no credential value is ever printed, on success or failure.
#[test]
fn secrets_never_reach_the_output() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let sentinels = [
        ("AWS_SECRET_ACCESS_KEY", "sentinel-aws-secret-91"),
        ("WEBDAV_PASSWORD", "sentinel-webdav-92"),
        ("SFTP_PASSWORD", "sentinel-sftp-93"),
        ("B2_APPLICATION_KEY", "sentinel-b2-94"),
        ("KOPIA_AZURE_STORAGE_KEY", "sentinel-azure-95"),
        ("KOPIA_PASSWORD", "sentinel-kopia-password-96"),
    ];
    let mut outputs = vec![pod.backup(&sentinels).assert_code(0).output.clone()];
    let mut restore_env = sentinels.to_vec();
    restore_env.push(("KOPIA_PREVIOUS", "7"));
    outputs.push(pod.restore(&restore_env).assert_code(1).output.clone());
    // A wrong password: the error must not echo either password.
    let wrong = [("KOPIA_PASSWORD", "sentinel-wrong-password-97")];
    outputs.push(pod.backup(&wrong).assert_code(1).output.clone());
    for output in &outputs {
        for (name, value) in sentinels.iter().chain(wrong.iter()) {
            assert!(!output.contains(value), "{name}'s value printed:\n{output}");
        }
    }
}

/// Item 12: every line ends in `\n`, none holds `\r` or exceeds 64 KiB, even for a 50k-file
/// backup that prints progress.
#[test]
fn output_lines_are_clean_for_the_controller() {
    let pod = Pod::new();
    for i in 0..50_000 {
        write(
            &pod.path(&format!("/data/d{:03}/f{i:05}", i / 500)),
            format!("file {i}\n").as_bytes(),
        );
    }
    let run = pod.backup(&[]);
    run.assert_code(0);
    assert!(run.output.ends_with('\n'));
    assert!(!run.output.contains('\r'));
    for line in run.output.split('\n') {
        assert!(line.len() < 65_535, "line of {} bytes", line.len());
    }
    assert!(
        run.output.contains("(50000 files, "),
        "the summary counts 50k files:\n{}",
        common::clip(run.output.as_bytes())
    );
}

// ---------------------------------------------------------------- source

/// Item 13: an empty volume (or only `lost+found`) is skipped: exit 0, summary FAILURE, no repo.
#[test]
fn empty_source_is_skipped() {
    let pod = Pod::new();
    pod.backup(&[])
        .assert_code(0)
        .assert_contains("== Directory is empty skipping backup ===")
        .assert_summary("FAILURE");
    std::fs::create_dir_all(pod.path("/data/lost+found/inner")).unwrap();
    pod.backup(&[])
        .assert_code(0)
        .assert_contains("== Directory is empty skipping backup ===");
    assert!(!pod.path("/mnt/repo").exists());
}

/// Items 14, 15: the first run creates the repository, the second reuses it; both snapshots are
/// `app@ns1:/data`.
#[test]
fn first_backup_creates_the_repository_second_reuses_it() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"one");
    pod.backup(&[])
        .assert_code(0)
        .assert_contains("INFO: Snapshot created successfully");
    let format_blob = std::fs::read(pod.path("/mnt/repo/kopia.repository.f")).unwrap();
    write(&pod.path("/data/a.txt"), b"two");
    pod.backup(&[]).assert_code(0).assert_summary("SUCCESS");
    assert_eq!(
        std::fs::read(pod.path("/mnt/repo/kopia.repository.f")).unwrap(),
        format_blob,
        "the repository was re-created"
    );
    let all = snapshots(&pod);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|s| source_of(s) == "app@ns1:/data"));
}

/// Items 16, 36: a path override names the source on both sides; the data is `/data`'s.
#[test]
fn source_path_override() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"override");
    pod.backup(&[("KOPIA_SOURCE_PATH_OVERRIDE", "/app/data")])
        .assert_code(0);
    let all = snapshots(&pod);
    assert_eq!(source_of(&all[0]), "app@ns1:/app/data");
    // Without the override the destination finds nothing under /data…
    pod.restore(&[])
        .assert_code(0)
        .assert_contains("No snapshots found for app@ns1:/data");
    // …with it, the snapshot is restored.
    pod.restore(&[("KOPIA_SOURCE_PATH_OVERRIDE", "/app/data")])
        .assert_code(0)
        .assert_contains("INFO: Snapshot restore completed successfully");
    assert_eq!(
        std::fs::read(pod.path("/restore/data/a.txt")).unwrap(),
        b"override"
    );
}

/// Item 17: the source is not modified, and a read-only source works (as an unprivileged user).
#[test]
fn source_is_left_unchanged_and_may_be_read_only() {
    let pod = Pod::new();
    common::tree::hard_tree(&pod.path("/data"), false, 50);
    let before = volsync::file_inventory(&pod.path("/data"), &[]);
    let mtimes_before = mtimes(&pod.path("/data"));
    pod.backup(&[]).assert_code(0);
    assert_eq!(volsync::file_inventory(&pod.path("/data"), &[]), before);
    assert_eq!(mtimes(&pod.path("/data")), mtimes_before);
    if is_root() {
        let pod = Pod::new();
        write(&pod.path("/data/ro/file"), b"read-only");
        pod.chown_mounts(1234, 5678);
        volsync::chown_tree(&pod.path("/data"), 0, 0);
        for p in [
            pod.path("/data/ro/file"),
            pod.path("/data/ro"),
            pod.path("/data"),
        ] {
            let mode = if p.is_dir() { 0o555 } else { 0o444 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        volsync::wait(pod.spawn(&["backup"], pod.source_env(), &[], Some((1234, 5678))))
            .assert_code(0)
            .assert_summary("SUCCESS");
    }
}

/// Every entry's path with its mtime and mode, names as bytes (the tree has invalid UTF-8).
fn mtimes(root: &Path) -> Vec<(std::path::PathBuf, i64, i64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                pending.push(e.path());
            }
            out.push((e.path(), m.mtime(), m.mtime_nsec(), m.mode()));
        }
    }
    out.sort();
    out
}

/// Items 18, 19: before/after actions through /bin/sh, with a time limit.
#[test]
fn snapshot_actions() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let marker = pod.path("/tmp/x");
    let touch = format!("touch {}", marker.display());
    pod.backup(&[("KOPIA_BEFORE_SNAPSHOT", &touch)])
        .assert_code(0)
        .assert_contains("before-snapshot action completed successfully");
    assert!(marker.is_file());
    assert_eq!(snapshots(&pod).len(), 1);

    pod.backup(&[("KOPIA_BEFORE_SNAPSHOT", "exit 3")])
        .assert_code(1)
        .assert_contains("ERROR: Before-snapshot action failed")
        .assert_summary("FAILURE");
    assert_eq!(
        snapshots(&pod).len(),
        1,
        "no snapshot after a failed before-action"
    );

    pod.backup(&[("KOPIA_AFTER_SNAPSHOT", "exit 3")])
        .assert_code(0)
        .assert_contains("After-snapshot action failed")
        .assert_summary("SUCCESS");
    assert_eq!(snapshots(&pod).len(), 2);

    // The limit (300 s in a pod) is shortened through the test-only variable.
    let started = std::time::Instant::now();
    pod.backup(&[
        ("KOPIA_BEFORE_SNAPSHOT", "sleep 60"),
        ("KMOVER_VOLSYNC_TEST_ACTION_TIMEOUT_SECONDS", "2"),
    ])
    .assert_code(1)
    .assert_contains("before-snapshot action failed or timed out after 2 seconds");
    assert!(
        started.elapsed().as_secs() < 30,
        "the action was not killed"
    );
    assert_eq!(snapshots(&pod).len(), 2);
}

/// Item 20: compression policy.
#[test]
fn compression_policy() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), &common::text_bytes(1, 100_000));
    pod.backup(&[("KOPIA_COMPRESSION", "bogus-alg")])
        .assert_code(1)
        .assert_contains("ERROR: Failed to apply compression policy")
        .assert_summary("FAILURE");
    pod.backup(&[("KOPIA_COMPRESSION", "zstd")])
        .assert_code(0)
        .assert_contains("Compression policy applied successfully");
}

/// Item 21: retention set by one run applies at the next snapshot; the newest two remain.
#[test]
fn retention_keeps_the_latest_two() {
    let pod = Pod::new();
    let retain = [
        ("KOPIA_RETAIN_LATEST", "2"),
        ("KOPIA_RETAIN_HOURLY", "0"),
        ("KOPIA_RETAIN_DAILY", "0"),
        ("KOPIA_RETAIN_WEEKLY", "0"),
        ("KOPIA_RETAIN_MONTHLY", "0"),
        ("KOPIA_RETAIN_YEARLY", "0"),
    ];
    let mut made = Vec::new();
    for run in 1..=4 {
        made.push(backup_version(&pod, &format!("version {run}"), &retain));
        let left = ids_of(&pod, "app@ns1:/data");
        match run {
            1 => assert_eq!(left.len(), 1),
            2 => assert_eq!(left.len(), 2),
            _ => assert_eq!(left, made[made.len() - 2..].to_vec(), "after run {run}"),
        }
    }
}

/// Item 22: parallelism is accepted.
#[test]
fn parallelism() {
    let pod = Pod::new();
    for i in 0..20 {
        write(
            &pod.path(&format!("/data/f{i}")),
            &common::random_bytes(i, 10_000),
        );
    }
    pod.backup(&[("KOPIA_PARALLELISM", "4")]).assert_code(0);
}

/// Item 23: two sources sharing a repository each restore only their own snapshots.
#[test]
fn identities_keep_tenants_apart() {
    let pod = Pod::new();
    write(&pod.path("/data/owner.txt"), b"alice");
    pod.backup(&[("KOPIA_OVERRIDE_USERNAME", "alice")])
        .assert_code(0);
    write(&pod.path("/data/owner.txt"), b"bob");
    pod.backup(&[("KOPIA_OVERRIDE_USERNAME", "bob")])
        .assert_code(0);
    for who in ["alice", "bob"] {
        pod.restore(&[("KOPIA_OVERRIDE_USERNAME", who)])
            .assert_code(0);
        assert_eq!(
            std::fs::read_to_string(pod.path("/restore/data/owner.txt")).unwrap(),
            who
        );
    }
    let sources: std::collections::BTreeSet<String> =
        snapshots(&pod).iter().map(source_of).collect();
    assert_eq!(
        sources.into_iter().collect::<Vec<_>>(),
        ["alice@ns1:/data", "bob@ns1:/data"]
    );
}

// ---------------------------------------------------------------- destination

/// Three versions of `/data/file.txt`, oldest first, with their snapshot JSON.
fn three_versions(pod: &Pod) -> Vec<Value> {
    for v in 1..=3 {
        backup_version(pod, &format!("version {v}"), &[]);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    snapshots(pod)
}

fn restored(pod: &Pod) -> String {
    std::fs::read_to_string(pod.path("/restore/data/file.txt")).unwrap_or_default()
}

/// Items 24, 25, 26, 28: latest, previous, as-of and shallow selection.
#[test]
fn snapshot_selection() {
    let pod = Pod::new();
    let snaps = three_versions(&pod);
    let id = |i: usize| snaps[i]["id"].as_str().unwrap().to_string();
    let run = pod.restore(&[]);
    run.assert_code(0)
        .assert_contains(&format!("Selected snapshot with id: {}", id(2)))
        .assert_contains("INFO: Snapshot restore completed successfully")
        .assert_summary("SUCCESS");
    assert_eq!(restored(&pod), "version 3");

    pod.restore(&[("KOPIA_PREVIOUS", "1")]).assert_code(0);
    assert_eq!(restored(&pod), "version 2");

    // As-of between snapshots 1 and 2 restores 1; with previous=1 after snapshot 3, snapshot 2.
    let between = snaps[0]["endTime"].as_str().unwrap().to_string();
    let run = pod.restore(&[("KOPIA_RESTORE_AS_OF", &between)]);
    assert_eq!(run.selected_snapshot(), Some(id(0)), "{}", run.output);
    assert_eq!(restored(&pod), "version 1");
    let after = "2999-01-01T00:00:00Z";
    let run = pod.restore(&[("KOPIA_RESTORE_AS_OF", after), ("KOPIA_PREVIOUS", "1")]);
    assert_eq!(run.selected_snapshot(), Some(id(1)));

    std::fs::write(pod.path("/restore/data/file.txt"), "untouched").unwrap();
    pod.restore(&[("KOPIA_SHALLOW", "0")])
        .assert_code(0)
        .assert_contains("No eligible snapshots found");
    assert_eq!(restored(&pod), "untouched");
    let run = pod.restore(&[("KOPIA_SHALLOW", "5")]);
    assert_eq!(run.selected_snapshot(), Some(id(2)));
}

/// Item 27: nothing eligible → exit 0, the volume unchanged, the discovery output.
#[test]
fn nothing_eligible_restores_nothing() {
    let pod = Pod::new();
    three_versions(&pod);
    write(&pod.path("/restore/data/keep.txt"), b"keep");
    let before = volsync::file_inventory(&pod.path("/restore/data"), &[]);
    pod.restore(&[("KOPIA_RESTORE_AS_OF", "1980-01-01T00:00:00Z")])
        .assert_code(0)
        .assert_contains("No eligible snapshots found")
        .assert_contains("=== No data will be restored ===")
        .assert_summary("SUCCESS");
    assert_eq!(
        volsync::file_inventory(&pod.path("/restore/data"), &[]),
        before
    );
}

/// Item 29: a previous offset past the list fails with an ERROR line and leaves the volume.
#[test]
fn previous_beyond_the_list_fails() {
    let pod = Pod::new();
    three_versions(&pod);
    write(&pod.path("/restore/data/keep.txt"), b"keep");
    let before = volsync::file_inventory(&pod.path("/restore/data"), &[]);
    pod.restore(&[("KOPIA_PREVIOUS", "3")])
        .assert_code(1)
        .assert_contains("ERROR: Requested snapshot index 3 but only 3 snapshots found")
        .assert_summary("FAILURE");
    assert_eq!(
        volsync::file_inventory(&pod.path("/restore/data"), &[]),
        before
    );
}

/// Items 30, 31: the discovery block, and what the controller makes of it.
#[test]
fn discovery_block_and_controller_status() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"a");
    pod.backup(&[("KOPIA_OVERRIDE_USERNAME", "other")])
        .assert_code(0);
    pod.backup(&[("KOPIA_OVERRIDE_USERNAME", "other")])
        .assert_code(0);
    pod.backup(&[("KOPIA_OVERRIDE_HOSTNAME", "ns2")])
        .assert_code(0);
    let run = pod.restore(&[]);
    run.assert_code(0)
        .assert_contains("No snapshots found for app@ns1:/data")
        .assert_contains("=== Discovery Mode: Available Snapshots ===")
        .assert_contains("=== End Discovery Mode ===");
    let json_line = regex::Regex::new(r#"^\{.*"id".*"userName".*"hostName".*\}"#).unwrap();
    let lines: Vec<&str> = run
        .lines()
        .into_iter()
        .filter(|l| json_line.is_match(l))
        .collect();
    assert_eq!(lines.len(), 3, "one line per snapshot:\n{}", run.output);
    for line in &lines {
        let v: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["id", "userName", "hostName", "path", "startTime", "endTime"]
        );
        for t in ["startTime", "endTime"] {
            chrono::DateTime::parse_from_rfc3339(v[t].as_str().unwrap()).expect("RFC 3339");
        }
    }
    let logs = volsync::mover_status_logs(&run.output, true, 1024);
    let status = volsync::parse_discovery(&logs);
    assert_eq!(status.requested_identity, "app@ns1");
    let counts: Vec<(&str, usize)> = status
        .available_identities
        .iter()
        .map(|i| (i.identity.as_str(), i.snapshot_count))
        .collect();
    assert_eq!(counts, [("app@ns2", 1), ("other@ns1", 2)]);
    assert_eq!(status.snapshots_found, 0);
}

/// Item 32: a restore failure (a pack blob deleted) → exit 1, the error and the discovery block.
#[test]
fn restore_failure_reports_and_discovers() {
    let pod = Pod::new();
    write(
        &pod.path("/data/big.bin"),
        &common::random_bytes(9, 3 << 20),
    );
    pod.backup(&[]).assert_code(0);
    let id = snapshots(&pod)[0]["id"].as_str().unwrap().to_string();
    let mut removed = 0;
    let repo = pod.path("/mnt/repo");
    for entry in walk_files(&repo) {
        // Sharded: `p0a/bc/…` holds blob `p0abc…`; data packs start with `p`.
        let relative = entry
            .strip_prefix(&repo)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if relative.starts_with('p') {
            std::fs::remove_file(&entry).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "no data pack found");
    pod.restore(&[])
        .assert_code(1)
        .assert_contains(&format!("ERROR: Failed to restore snapshot: {id}"))
        .assert_contains("=== Discovery Mode: Available Snapshots ===")
        .assert_summary("FAILURE");
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Items 33, 34: file deletion before restore (also with nothing to restore), and without it
/// extra files survive while same-named ones are overwritten.
#[test]
fn file_deletion_and_overwrite() {
    let pod = Pod::new();
    write(&pod.path("/data/file.txt"), b"from snapshot");
    pod.backup(&[]).assert_code(0);
    let seed = |pod: &Pod| {
        write(&pod.path("/restore/data/stale"), b"stale");
        write(&pod.path("/restore/data/lost+found/keep"), b"keep");
        write(&pod.path("/restore/data/file.txt"), b"old local copy");
    };
    seed(&pod);
    pod.restore(&[]).assert_code(0);
    assert!(
        pod.path("/restore/data/stale").exists(),
        "extra files survive"
    );
    assert_eq!(restored(&pod), "from snapshot");

    seed(&pod);
    pod.restore(&[("KOPIA_ENABLE_FILE_DELETION", "true")])
        .assert_code(0);
    assert!(!pod.path("/restore/data/stale").exists());
    assert!(pod.path("/restore/data/lost+found/keep").exists());
    assert_eq!(restored(&pod), "from snapshot");

    seed(&pod);
    pod.restore(&[
        ("KOPIA_ENABLE_FILE_DELETION", "true"),
        ("KOPIA_RESTORE_AS_OF", "1980-01-01T00:00:00Z"),
    ])
    .assert_code(0)
    .assert_contains("=== No data will be restored ===");
    assert!(!pod.path("/restore/data/stale").exists());
    assert!(!pod.path("/restore/data/file.txt").exists());
    assert!(pod.path("/restore/data/lost+found/keep").exists());
}

/// Item 35 and the round trip: the mover's backup restored by the mover is the same tree (files,
/// directories, symlinks, modes, mtimes; owners as root); an unprivileged restore succeeds.
#[test]
fn mover_round_trip_reproduces_the_volume() {
    let pod = Pod::new();
    common::tree::hard_tree(&pod.path("/data"), false, 200);
    if is_root() {
        volsync::chown_tree(&pod.path("/data/names"), 4321, 8765);
    }
    pod.backup(&[]).assert_code(0);
    pod.restore(&[]).assert_code(0);
    common::tree::assert_same_tree(
        &pod.path("/data"),
        &pod.path("/restore/data"),
        common::tree::Compare {
            dir_mtimes: false,
            owners: is_root(),
        },
    );
    if is_root() {
        let pod2 = Pod::new();
        std::fs::remove_dir_all(pod2.path("/mnt")).unwrap();
        copy_dir(&pod.path("/mnt"), &pod2.path("/mnt"));
        pod2.chown_mounts(1234, 5678);
        volsync::wait(pod2.spawn(
            &["restore"],
            pod2.destination_env(),
            &[],
            Some((1234, 5678)),
        ))
        .assert_code(0)
        .assert_contains("INFO: Snapshot restore completed successfully");
        common::tree::assert_same_tree(
            &pod.path("/data"),
            &pod2.path("/restore/data"),
            common::tree::Compare {
                dir_mtimes: false,
                owners: false,
            },
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Item 37: another destination mount is looked up under its own path.
#[test]
fn other_destination_paths_are_their_own_source() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[]).assert_code(0);
    std::fs::create_dir_all(pod.path("/target")).unwrap();
    pod.restore(&[("DATA_DIR", "/target")])
        .assert_code(0)
        .assert_contains("No snapshots found for app@ns1:/target");
}

/// Item 38: the restored data is synced (syncfs on DATA_DIR) before exit 0.
#[test]
fn restored_data_is_synced() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        common::skip_or_fail("restored_data_is_synced", "strace is not installed");
        return;
    }
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"durable");
    pod.backup(&[]).assert_code(0);
    let trace = pod.path("/tmp/strace.out");
    let mut env = pod.destination_env();
    env.insert(
        "KMOVER_VOLSYNC_TEST_ROOT".into(),
        pod.root().display().to_string(),
    );
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=syncfs,sync,fsync", "-o"])
        .arg(&trace)
        .arg(pod.entry_sh())
        .arg("restore")
        .env_clear()
        .envs(&env)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let traced = std::fs::read_to_string(&trace).unwrap();
    assert!(
        traced
            .lines()
            .any(|l| l.contains("syncfs(") && l.contains("= 0")),
        "no successful syncfs:\n{traced}"
    );
}

/// Item 48 (file system half): additional arguments reach snapshot create and restore only.
#[test]
fn additional_arguments_reach_snapshot_and_restore() {
    let pod = Pod::new();
    write(&pod.path("/data/private"), b"mode 751");
    std::fs::set_permissions(
        pod.path("/data/private"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    pod.backup(&[(
        "KOPIA_ADDITIONAL_ARGS",
        "--description=nightly|VOLSYNC_ARG_SEP|--tags=env:PROD",
    )])
    .assert_code(0);
    let snap = &snapshots(&pod)[0];
    assert_eq!(snap["description"], "nightly");
    assert_eq!(snap["tags"]["tag:env"], "PROD", "{snap}");
    pod.restore(&[("KOPIA_ADDITIONAL_ARGS", "--skip-permissions")])
        .assert_code(0);
    let mode = std::fs::metadata(pod.path("/restore/data/private"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_ne!(mode, 0o751, "--skip-permissions did not reach the restore");
    pod.backup(&[("KOPIA_ADDITIONAL_ARGS", "--no-such-flag")])
        .assert_code(1)
        .assert_contains("Invalid KOPIA_ADDITIONAL_ARGS");
}
