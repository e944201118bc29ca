//! CronJob/Kyverno backup scripts (spec §6, checklist item 55) run unchanged against kmover
//! invoked as `kopia`: a `kopia` link to the kmover binary first on PATH, bash running the
//! scripts as the generated CronJobs do, on a filesystem repository and on S3 (MinIO). Only the
//! mount paths are filled in, as Kyverno's templating does; the privileged `fsfreeze` steps
//! (4 and 6) are left out, as the checklist allows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::minio::{self, Minio};
use tempfile::TempDir;

/// A CronJob pod: a bin directory with `kopia` → kmover, `/snapshots`, the PVC mount, a HOME.
struct CronPod {
    dir: TempDir,
}

impl CronPod {
    fn new() -> CronPod {
        let dir = tempfile::Builder::new()
            .prefix("kmover-cronjob-")
            .tempdir()
            .unwrap();
        for sub in [
            "bin",
            "snapshots",
            "home",
            "data/media/plex/config",
            "restore",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(
            common::volsync::kmover_binary(),
            dir.path().join("bin/kopia"),
        )
        .unwrap();
        CronPod { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn claim(&self) -> PathBuf {
        self.path("data/media/plex/config")
    }

    /// Runs `script` with bash; returns (exit code, combined output).
    /// Runs `script` with bash; returns (exit code, stdout and stderr interleaved as a pod log).
    fn bash(&self, script: &str, env: &[(&str, String)]) -> (i32, String) {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    self.path("bin").display()
                ),
            )
            .env("HOME", self.path("home"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(writer.try_clone().expect("pipe"))
            .stderr(writer)
            .spawn()
            .expect("bash");
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read the output");
        let status = child.wait().expect("wait for bash");
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out).into_owned(),
        )
    }
}

/// `cp -a`: the reference copy keeps modes and times for the comparison after restore.
fn copy_preserving(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// The onedr0p/lenaxia snapshot CronJob (§6.2), with its repository commands for `storage`.
fn snapshot_script(create: &str, connect: &str, claim: &Path) -> String {
    let claim = claim.display();
    format!(
        r#"printf "\e[1;32m%-6s\e[m\n" "[01/10] Create repo ..." && {create}
printf "\e[1;32m%-6s\e[m\n" "[02/10] Connect to repo ..." && {connect}
printf "\e[1;32m%-6s\e[m\n" "[03/10] Set policies ..." && kopia policy set {claim} --compression=zstd --keep-latest 14 --keep-hourly 0 --keep-daily 7 --keep-weekly 2 --keep-monthly 0 --keep-annual 0
printf "\e[1;32m%-6s\e[m\n" "[05/10] Snapshot ..." && kopia snap create {claim}
printf "\e[1;32m%-6s\e[m\n" "[07/10] List snapshots ..." && kopia snap list {claim}
printf "\e[1;32m%-6s\e[m\n" "[08/10] Show stats ..." && kopia content stats
printf "\e[1;32m%-6s\e[m\n" "[09/10] Show maintenance info ..." && kopia maintenance info
printf "\e[1;32m%-6s\e[m\n" "[10/10] Disconnect from repo ..." && kopia repo disconnect
"#
    )
}

/// The restore Job (§6.1): resolve the newest snapshot with jq, empty the claim, restore.
fn restore_script(connect: &str, claim: &Path) -> String {
    let claim = claim.display();
    format!(
        r#"set -eo pipefail
shopt -s dotglob
{connect}
SNAPSHOT="$(kopia snapshot list --json | jq --raw-output '.[-1] | .id')"
rm -rf {claim}/*
kopia snap restore "${{SNAPSHOT}}" {claim}
kopia repo disconnect
"#
    )
}

fn maintenance_info_available() -> bool {
    Command::new(common::volsync::kmover_binary())
        .args(["maintenance", "info", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn step_output<'a>(output: &'a str, step: &str) -> &'a str {
    let start = output
        .find(step)
        .unwrap_or_else(|| panic!("step {step} did not run:\n{output}"));
    // What the step printed: from the line after its banner to the next banner.
    let rest = &output[start..];
    let rest = rest.split_once('\n').map_or("", |(_, after)| after);
    let end = rest.find("\u{1b}[1;32m").unwrap_or(rest.len());
    &rest[..end]
}

fn check_snapshot_run(code: i32, output: &str, first_run: bool) {
    assert_eq!(code, 0, "the job's result is the last step's:\n{output}");
    if first_run {
        assert!(
            step_output(output, "[01/10]").contains("Initialized repository"),
            "{output}"
        );
    } else {
        assert!(
            step_output(output, "[01/10]").trim().is_empty(),
            "create was not skipped:\n{output}"
        );
    }
    for step in [
        "[02/10]", "[03/10]", "[05/10]", "[07/10]", "[08/10]", "[10/10]",
    ] {
        let text = step_output(output, step);
        assert!(
            !text.contains("ERROR") && !text.contains("error:"),
            "{step} failed:\n{output}"
        );
    }
    assert!(
        step_output(output, "[07/10]").contains("root@cluster:"),
        "{output}"
    );
    assert!(
        step_output(output, "[08/10]").contains("Count: "),
        "{output}"
    );
    if maintenance_info_available() {
        assert!(
            step_output(output, "[09/10]").contains("Owner:"),
            "{output}"
        );
    } else {
        common::skip_or_fail(
            "cronjob step 09 (kopia maintenance info)",
            "kmover has no `maintenance info` command yet",
        );
    }
}

/// jq is part of the CronJob images' userland (§6.3).
fn have_jq(test: &str) -> bool {
    if Command::new("jq").arg("--version").output().is_ok() {
        return true;
    }
    common::skip_or_fail(test, "jq is not installed");
    false
}

/// Item 55 on a filesystem repository: two runs (the second skips create), then the restore Job
/// brings back the newest snapshot; real kopia reads what the CronJob wrote.
#[test]
fn cronjob_on_a_filesystem_repository() {
    if !have_jq("cronjob_on_a_filesystem_repository") {
        return;
    }
    let pod = CronPod::new();
    let snapshots = pod.path("snapshots");
    common::tree::hard_tree(&pod.claim(), false, 20);
    let create = format!(
        "[[ ! -f {0}/kopia.repository.f ]] && kopia repository create filesystem --path={0}",
        snapshots.display()
    );
    let connect = format!(
        "kopia repo connect filesystem --path={} --override-hostname=cluster --override-username=root",
        snapshots.display()
    );
    let env = vec![
        ("KOPIA_PASSWORD", "none".to_string()),
        (
            "KOPIA_CACHE_DIRECTORY",
            pod.path("snapshots-cache").display().to_string(),
        ),
        (
            "KOPIA_LOG_DIR",
            pod.path("snapshots-logs").display().to_string(),
        ),
    ];
    let script = snapshot_script(&create, &connect, &pod.claim());
    let (code, output) = pod.bash(&script, &env);
    check_snapshot_run(code, &output, true);
    assert!(snapshots.join("kopia.repository.f").is_file());

    write(
        &pod.claim().join("second-run.txt"),
        b"only in the newest snapshot",
    );
    let reference = pod.path("reference");
    copy_preserving(&pod.claim(), &reference);
    let (code, output) = pod.bash(&script, &env);
    check_snapshot_run(code, &output, false);

    // Newest = `.[-1]` of `snapshot list --json` (oldest first).
    let connect_script = format!(
        "{connect} >/dev/null 2>&1 && kopia snapshot list --json {}",
        pod.claim().display()
    );
    let (code, listing) = pod.bash(&connect_script, &env);
    assert_eq!(code, 0, "{listing}");
    let start = listing.find('[').unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&listing[start..]).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0]["startTime"].as_str() < list[1]["startTime"].as_str());

    let (code, output) = pod.bash(&restore_script(&connect, &pod.claim()), &env);
    assert_eq!(code, 0, "{output}");
    assert!(
        pod.claim().join("second-run.txt").is_file(),
        "the newest snapshot was restored"
    );

    // The restore Job brought back exactly the tree of the second run.
    common::tree::assert_same_tree(
        &reference,
        &pod.claim(),
        common::tree::Compare {
            dir_mtimes: false,
            owners: false,
        },
    );

    if let Ok(kopia) = common::locate_kopia(common::KopiaVersion::V0_22) {
        let config = pod.path("kopia-reader.config");
        let out = Command::new(kopia)
            .arg("--config-file")
            .arg(&config)
            .args(["repository", "connect", "filesystem", "--path"])
            .arg(&snapshots)
            .env("KOPIA_PASSWORD", "none")
            .env("KOPIA_CHECK_FOR_UPDATES", "false")
            .env("HOME", pod.path("home"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(common::locate_kopia(common::KopiaVersion::V0_22).unwrap())
            .arg("--config-file")
            .arg(&config)
            .args(["snapshot", "verify"])
            .env("KOPIA_PASSWORD", "none")
            .env("HOME", pod.path("home"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        common::skip_or_fail(
            "cronjob: kopia reads the repository",
            "kopia 0.22.3 is missing",
        );
    }
}

/// pmb's variant (§6.2): `set -eo pipefail`, KOPIA_CONFIG_PATH as a file, credentials not
/// persisted, retention on the repository path; any failing step fails the job.
#[test]
fn pmb_style_script_with_set_e_and_unpersisted_credentials() {
    if !have_jq("pmb_style_script") {
        return;
    }
    let pod = CronPod::new();
    let repo = pod.path("snapshots/repo");
    write(
        &pod.claim().join("db.sqlite"),
        &common::random_bytes(5, 100_000),
    );
    let env = vec![
        ("KOPIA_PASSWORD", "pmb-secret".to_string()),
        (
            "KOPIA_CONFIG_PATH",
            pod.path("kopia/repository.config").display().to_string(),
        ),
        ("KOPIA_PERSIST_CREDENTIALS_ON_CONNECT", "false".to_string()),
        ("KOPIA_CHECK_FOR_UPDATES", "false".to_string()),
    ];
    let script = format!(
        r#"set -eo pipefail
if [[ ! -f {repo}/kopia.repository.f ]]; then kopia repository create filesystem --path={repo}; fi
kopia repository connect filesystem --path={repo} --override-hostname=cluster --override-username=cronjob
kopia policy set {repo} --keep-latest 7 --keep-hourly 0 --keep-daily 0 --keep-weekly 0 --keep-monthly 0 --keep-annual 0
kopia policy set {repo} --compression=zstd
kopia snapshot create {claim}
kopia snapshot list
kopia content stats
kopia repository disconnect
"#,
        repo = repo.display(),
        claim = pod.claim().display()
    );
    for run in 0..2 {
        let (code, output) = pod.bash(&script, &env);
        assert_eq!(code, 0, "run {run}:\n{output}");
    }
    // The connection alone: the config file is KOPIA_CONFIG_PATH, the password stays out of it.
    let connect = format!(
        "kopia repository connect filesystem --path={} --override-username=cronjob",
        repo.display()
    );
    let (code, output) = pod.bash(&connect, &env);
    assert_eq!(code, 0, "{output}");
    assert!(
        pod.path("kopia/repository.config").is_file(),
        "KOPIA_CONFIG_PATH is the config file"
    );
    assert!(
        !pod.path("kopia/repository.config.kopia-password").exists(),
        "the password was persisted"
    );
    let restore = format!(
        r#"set -eo pipefail
kopia repository connect filesystem --path={repo} --override-hostname=cluster --override-username=cronjob
id="$(kopia snapshot list --json | jq -r '.[-1] | .id')"
kopia snapshot restore "$id" {target}
"#,
        repo = repo.display(),
        target = pod.path("restore/out").display()
    );
    let (code, output) = pod.bash(&restore, &env);
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        std::fs::read(pod.path("restore/out/db.sqlite")).unwrap(),
        common::random_bytes(5, 100_000)
    );
    // A failing step fails a `set -e` job with kopia's exit code.
    let (code, _) = pod.bash(
        "set -eo pipefail\nkopia snapshot create /nonexistent/path",
        &env,
    );
    assert_eq!(code, 1);
    let (code, output) = pod.bash("kopia snapshot frobnicate", &env);
    assert_eq!(code, 1, "usage errors exit 1 as in kopia:\n{output}");
}

/// Item 55's sequence on S3 (MinIO): create/connect `s3` instead of `filesystem`.
#[test]
fn cronjob_on_s3() {
    if !have_jq("cronjob_on_s3") {
        return;
    }
    let Some(minio) = Minio::start("cronjob_on_s3") else {
        return;
    };
    minio.create_bucket("cron");
    let pod = CronPod::new();
    common::tree::hard_tree(&pod.claim(), false, 10);
    let reference = pod.path("reference");
    copy_preserving(&pod.claim(), &reference);
    let s3 = format!(
        "--bucket=cron --prefix=cluster/ --endpoint={} --disable-tls --access-key={} --secret-access-key={}",
        minio.endpoint(),
        minio::ROOT_USER,
        minio::ROOT_PASSWORD
    );
    let create = format!(
        "kopia repository connect s3 {s3} >/dev/null 2>&1 || kopia repository create s3 {s3}"
    );
    let connect =
        format!("kopia repo connect s3 {s3} --override-hostname=cluster --override-username=root");
    let env = vec![("KOPIA_PASSWORD", "none".to_string())];
    let script = snapshot_script(&create, &connect, &pod.claim());
    let (code, output) = pod.bash(&script, &env);
    assert_eq!(code, 0, "{output}");
    assert!(
        step_output(&output, "[07/10]").contains("root@cluster:"),
        "{output}"
    );
    let (code, output) = pod.bash(&script, &env);
    assert_eq!(code, 0, "{output}");
    std::fs::remove_dir_all(pod.claim()).unwrap();
    std::fs::create_dir_all(pod.claim()).unwrap();
    let (code, output) = pod.bash(&restore_script(&connect, &pod.claim()), &env);
    assert_eq!(code, 0, "{output}");
    common::tree::assert_same_tree(
        &reference,
        &pod.claim(),
        common::tree::Compare {
            dir_mtimes: false,
            owners: false,
        },
    );
}
