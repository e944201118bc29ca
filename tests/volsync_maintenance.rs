//! `DIRECTION=maintenance`, checklist items 49–51 of spec §7: a KopiaMaintenance job (no
//! arguments, no DATA_DIR mount) takes maintenance ownership and runs quick and full
//! maintenance; a failing full run fails the job with the summary's diagnostics.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::volsync::{self, PASSWORD, Pod, Run};

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The KopiaMaintenance job's environment: DIRECTION, DATA_DIR=/data (not mounted), /cache.
fn maintenance_env(pod: &Pod) -> BTreeMap<String, String> {
    let mut env = pod.base_env();
    env.remove("KOPIA_OVERRIDE_USERNAME");
    env.remove("KOPIA_OVERRIDE_HOSTNAME");
    env.insert("DIRECTION".into(), "maintenance".into());
    env.insert("DATA_DIR".into(), "/data".into());
    env
}

fn maintenance(pod: &Pod, extra: &[(&str, &str)]) -> Run {
    std::fs::remove_dir_all(pod.path("/data")).ok();
    pod.run(&[], maintenance_env(pod), extra)
}

fn owner(pod: &Pod) -> String {
    let out = std::process::Command::new(volsync::kmover_binary())
        .arg("--config-file")
        .arg(pod.path("/cache/kopia.config"))
        .args(["maintenance", "info"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Owner: "))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A repository with one snapshot, made by a source run.
fn repository_with_a_snapshot(pod: &Pod) {
    write(&pod.path("/data/a.txt"), &common::random_bytes(1, 100_000));
    pod.backup(&[]).assert_code(0);
}

/// Item 49: success, owner `maintenance@volsync`, and the summary's maintenance lines.
#[test]
fn maintenance_takes_ownership_and_succeeds() {
    let pod = Pod::new();
    repository_with_a_snapshot(&pod);
    let run = maintenance(&pod, &[]);
    run.assert_code(0);
    let tail = run.tail(6);
    assert_eq!(
        tail[0], "INFO: OPERATION_TYPE: maintenance",
        "{}",
        run.output
    );
    assert_eq!(tail[1], "INFO: OPERATION_RESULT: SUCCESS");
    assert_eq!(tail[2], "INFO: MAINTENANCE_STATUS: SUCCESS");
    let duration = tail[3]
        .strip_prefix("INFO: MAINTENANCE_DURATION: ")
        .unwrap();
    assert!(duration.parse::<u64>().is_ok(), "{duration}");
    assert_eq!(tail[4], "INFO: EXIT_CODE: 0");
    assert_eq!(tail[5], "INFO: === Done ===");
    assert_eq!(owner(&pod), "maintenance@volsync");
    // The repository is still whole: the source's snapshot restores.
    pod.restore(&[]).assert_code(0);
    assert_eq!(
        std::fs::read(pod.path("/restore/data/a.txt")).unwrap(),
        common::random_bytes(1, 100_000)
    );
}

/// Item 50: the maintenance identity override, and taking over from another owner.
#[test]
fn maintenance_identity_overrides() {
    let pod = Pod::new();
    repository_with_a_snapshot(&pod);
    maintenance(&pod, &[("KOPIA_OVERRIDE_MAINTENANCE_USERNAME", "x@y")]).assert_code(0);
    assert_eq!(owner(&pod), "x@y");
    maintenance(&pod, &[("KOPIA_OVERRIDE_MAINTENANCE_USERNAME", "ops")])
        .assert_code(0)
        .assert_contains("WARN: Repository has different maintenance owner: x@y");
    assert_eq!(owner(&pod), "ops@volsync");
    maintenance(&pod, &[("KOPIA_OVERRIDE_MAINTENANCE_USERNAME", "a@b")]).assert_code(0);
    assert_eq!(owner(&pod), "a@b");
}

fn set_mode_tree(path: &Path, dir_mode: u32, file_mode: u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            set_mode_tree(&e.path(), dir_mode, file_mode);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(file_mode)).unwrap();
    }
}

/// Item 51: a full maintenance that cannot write (the repository made read-only) fails the job
/// with the failure reason, the error output and the cache diagnostics in the summary.
#[test]
fn failed_full_maintenance_reports_diagnostics() {
    let nix_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !nix_root {
        common::skip_or_fail(
            "failed_full_maintenance_reports_diagnostics",
            "needs root to switch users",
        );
        return;
    }
    let pod = Pod::new();
    repository_with_a_snapshot(&pod);
    pod.chown_mounts(1234, 5678);
    let as_user = |pod: &Pod| {
        std::fs::remove_dir_all(pod.path("/data")).ok();
        volsync::wait(pod.spawn(&[], maintenance_env(pod), &[], Some((1234, 5678))))
    };
    as_user(&pod).assert_code(0);
    set_mode_tree(&pod.path("/mnt/repo"), 0o555, 0o444);
    let run = as_user(&pod);
    set_mode_tree(&pod.path("/mnt/repo"), 0o755, 0o644);
    assert_ne!(run.code, 0, "{}", run.output);
    for line in [
        "INFO: OPERATION_TYPE: maintenance",
        "INFO: OPERATION_RESULT: FAILURE",
        "INFO: MAINTENANCE_STATUS: FAILURE",
        "INFO: MAINTENANCE_FAILURE_REASON: Kopia maintenance run --full failed with exit code 1",
        "INFO: KOPIA_ERROR_OUTPUT_START:",
        "INFO: KOPIA_ERROR_OUTPUT_END",
        "INFO: === Diagnostic Information ===",
    ] {
        run.assert_contains(line);
    }
    assert!(
        run.lines()
            .iter()
            .any(|l| l.starts_with("INFO: CACHE_USAGE_PERCENT: ")),
        "{}",
        run.output
    );
    assert_eq!(
        run.tail(2),
        [
            format!("INFO: EXIT_CODE: {}", run.code).as_str(),
            "INFO: === Done ==="
        ]
    );
}
