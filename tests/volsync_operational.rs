//! The VolSync mover's operational items of spec §7: the debug mover (52), SIGTERM with a full
//! cache (53), and a backup killed mid-upload followed by a clean run (54).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::volsync::{self, Pod, snapshots};

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 52: DEBUG_MOVER=1 touches no repository and waits for its marker file to go.
#[test]
fn debug_mover_waits_for_its_marker() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let spawned = pod.spawn(&["backup"], pod.source_env(), &[("DEBUG_MOVER", "1")], None);
    let marker = pod.path("/tmp/exit-debug-if-removed");
    wait_for("the debug marker", Duration::from_secs(30), || {
        marker.exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&marker).unwrap();
    let removed = Instant::now();
    let run = volsync::wait(spawned);
    assert!(removed.elapsed() < Duration::from_secs(15));
    run.assert_code(0)
        .assert_contains("DEBUG_MOVER is enabled, this pod will sleep indefinitely.")
        .assert_contains("Debug done, exiting.");
    assert!(
        !pod.path("/mnt/repo").exists(),
        "the debug mover touched the repository"
    );
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Item 53: SIGTERM with the cache at ≥ 90 % of its capacity exits 137 with the banner; below
/// that it exits 143 without it. A running action is stopped with the mover.
#[test]
fn sigterm_reports_cache_exhaustion() {
    for (capacity, code) in [("10000", 137), ("1073741824", 143)] {
        let pod = Pod::new();
        write(&pod.path("/data/a.txt"), b"x");
        write(&pod.path("/cache/filler"), &vec![0u8; 20_000]);
        let started = pod.path("/tmp/action-started");
        let action = format!("touch {}; sleep 120", started.display());
        let spawned = pod.spawn(
            &["backup"],
            pod.source_env(),
            &[
                ("KOPIA_CACHE_CAPACITY_BYTES", capacity),
                ("KOPIA_BEFORE_SNAPSHOT", &action),
            ],
            None,
        );
        wait_for("the action", Duration::from_secs(60), || started.exists());
        sigterm(spawned.pid());
        let run = volsync::wait(spawned);
        run.assert_code(code)
            .assert_contains("WARN: Received SIGTERM signal - pod is being terminated");
        if code == 137 {
            run.assert_contains("ERROR: CACHE EXHAUSTION DETECTED")
                .assert_contains("Cache usage: ");
        } else {
            run.assert_lacks("CACHE EXHAUSTION")
                .assert_contains("Pod termination not due to cache exhaustion");
        }
        run.assert_summary("FAILURE");
    }
}

/// Item 54: a backup killed with SIGKILL mid-upload leaves no lock; the next run succeeds.
#[test]
fn backup_after_a_killed_backup() {
    let pod = Pod::new();
    for i in 0..40 {
        write(
            &pod.path(&format!("/data/big-{i}.bin")),
            &common::random_bytes(100 + i, 2 << 20),
        );
    }
    let spawned = pod.spawn(&["backup"], pod.source_env(), &[], None);
    let packs_dir = pod.path("/mnt/repo");
    wait_for("the first uploads", Duration::from_secs(120), || {
        std::fs::read_dir(&packs_dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with('p'))
            })
            .unwrap_or(false)
    });
    let mut child = spawned.child;
    child.kill().unwrap();
    child.wait().unwrap();
    pod.backup(&[]).assert_code(0).assert_summary("SUCCESS");
    let all = snapshots(&pod);
    assert_eq!(all.len(), 1, "one complete snapshot");
    pod.restore(&[]).assert_code(0);
    common::tree::assert_same_tree(
        &pod.path("/data"),
        &pod.path("/restore/data"),
        common::tree::Compare {
            dir_mtimes: false,
            owners: false,
        },
    );
}
