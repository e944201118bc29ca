//! The VolSync mover under test: the kmover binary run as `/mover-kopia/entry.sh` with the
//! environment VolSync gives it, in a temporary root standing in for the pod's `/` (the mover
//! resolves `/data`, `/restore/data`, `/cache`, `/tmp`, `/mnt/...` below `KMOVER_VOLSYNC_TEST_ROOT`),
//! plus the controller's log handling (§4 of the spec) ported from Go as test helpers.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use tempfile::TempDir;

/// The password of the §7 checklist.
pub const PASSWORD: &str = "pw-volsync-test";
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// A pod's file system in a temporary directory: `data/`, `restore/data/`, `restore/`, `cache/`,
/// `tmp/`, `mnt/`, plus `mover-kopia/entry.sh` (a link to the kmover binary).
pub struct Pod {
    dir: TempDir,
}

/// A finished mover run: exit code and the combined stdout+stderr, as the pod log has it.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub output: String,
}

impl Run {
    pub fn lines(&self) -> Vec<&str> {
        self.output.lines().collect()
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code}); output:\n{}",
            self.code, self.output
        );
        self
    }

    #[track_caller]
    pub fn assert_contains(&self, text: &str) -> &Self {
        assert!(
            self.output.contains(text),
            "output lacks {text:?}:\n{}",
            self.output
        );
        self
    }

    #[track_caller]
    pub fn assert_lacks(&self, text: &str) -> &Self {
        assert!(
            !self.output.contains(text),
            "output has {text:?}:\n{}",
            self.output
        );
        self
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<&str> {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// The summary's five lines for a non-maintenance run.
    #[track_caller]
    pub fn assert_summary(&self, result: &str) -> &Self {
        let expected = vec![
            "INFO: === OPERATION SUMMARY ===".to_string(),
            "INFO: OPERATION_TYPE: unknown".to_string(),
            format!("INFO: OPERATION_RESULT: {result}"),
            format!("INFO: EXIT_CODE: {}", self.code),
            "INFO: === Done ===".to_string(),
        ];
        assert_eq!(self.tail(5), expected, "summary; output:\n{}", self.output);
        self
    }

    /// `Selected snapshot with id: <id>`.
    pub fn selected_snapshot(&self) -> Option<String> {
        self.output
            .lines()
            .find_map(|l| l.strip_prefix("Selected snapshot with id: "))
            .map(str::to_string)
    }
}

pub fn kmover_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kmover"))
}

impl Pod {
    pub fn new() -> Pod {
        let dir = tempfile::Builder::new()
            .prefix("kmover-pod-")
            .tempdir()
            .expect("temporary directory");
        for sub in ["data", "restore/data", "cache", "tmp", "mnt", "mover-kopia"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(kmover_binary(), dir.path().join("mover-kopia/entry.sh"))
            .unwrap();
        // Other users (the unprivileged runs) must reach the mounts.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Pod { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where the pod path `logical` (absolute) is on this machine.
    pub fn path(&self, logical: &str) -> PathBuf {
        self.root().join(logical.trim_start_matches('/'))
    }

    pub fn entry_sh(&self) -> PathBuf {
        self.path("/mover-kopia/entry.sh")
    }

    /// The checklist's defaults (§7), without DATA_DIR.
    pub fn base_env(&self) -> BTreeMap<String, String> {
        [
            ("KOPIA_PASSWORD", PASSWORD),
            ("KOPIA_CACHE_DIR", "/cache"),
            ("KOPIA_OVERRIDE_USERNAME", "app"),
            ("KOPIA_OVERRIDE_HOSTNAME", "ns1"),
            ("KOPIA_REPOSITORY", "filesystem:///mnt/repo"),
            ("KOPIA_CACHE_CAPACITY_BYTES", "1073741824"),
            ("PRIVILEGED_MOVER", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub fn source_env(&self) -> BTreeMap<String, String> {
        let mut env = self.base_env();
        env.insert("DATA_DIR".into(), "/data".into());
        env
    }

    pub fn destination_env(&self) -> BTreeMap<String, String> {
        let mut env = self.base_env();
        env.insert("DATA_DIR".into(), "/restore/data".into());
        env.insert("KOPIA_DISCOVER_SNAPSHOTS".into(), "true".into());
        env
    }

    /// `backup` with the source defaults plus `extra` (an empty value removes a variable).
    #[track_caller]
    pub fn backup(&self, extra: &[(&str, &str)]) -> Run {
        self.run(&["backup"], self.source_env(), extra)
    }

    #[track_caller]
    pub fn restore(&self, extra: &[(&str, &str)]) -> Run {
        self.run(&["restore"], self.destination_env(), extra)
    }

    #[track_caller]
    pub fn run(&self, args: &[&str], env: BTreeMap<String, String>, extra: &[(&str, &str)]) -> Run {
        let child = self.spawn(args, env, extra, None);
        wait(child)
    }

    /// Starts the mover; `uid_gid` runs it as another user (the test must run as root for that).
    pub fn spawn(
        &self,
        args: &[&str],
        mut env: BTreeMap<String, String>,
        extra: &[(&str, &str)],
        uid_gid: Option<(u32, u32)>,
    ) -> Spawned {
        for (k, v) in extra {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut cmd = Command::new(self.entry_sh());
        cmd.args(args)
            .env_clear()
            .envs(&env)
            .env("KMOVER_VOLSYNC_TEST_ROOT", self.root())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("KMOVER_RETRY_MAX_TIME", "5")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("pipe clone"))
            .stderr(writer);
        if let Some((uid, gid)) = uid_gid {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("start the mover");
        // The Command (holding the write ends) is dropped here, so EOF comes when the child ends.
        drop(cmd);
        let reader_thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut reader = reader;
            let _ = reader.read_to_end(&mut out);
            out
        });
        Spawned {
            child,
            reader: Some(reader_thread),
        }
    }

    /// Makes the pod's mounts writable by `uid:gid` (for runs as a non-root user).
    pub fn chown_mounts(&self, uid: u32, gid: u32) {
        for sub in ["data", "restore", "cache", "tmp", "mnt"] {
            chown_tree(&self.path(sub), uid, gid);
        }
    }
}

impl Default for Pod {
    fn default() -> Self {
        Pod::new()
    }
}

pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    if path.is_dir()
        && !path.is_symlink()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

pub struct Spawned {
    pub child: Child,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

#[track_caller]
pub fn wait(mut s: Spawned) -> Run {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match s.child.try_wait().expect("wait for the mover") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = s.child.kill();
                panic!("the mover did not finish within {RUN_TIMEOUT:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let out = s
        .reader
        .take()
        .expect("reader")
        .join()
        .expect("reader thread");
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Run {
        code,
        output: String::from_utf8_lossy(&out).into_owned(),
    }
}

// ---- The controller's side (volsync-fork internal/controller), ported for comparison. ----

/// `LogFilter` of the destination mover: which lines survive into the CR status.
pub fn destination_log_filter(line: &str) -> bool {
    let lower = line.to_lowercase();
    if lower.contains("error") || lower.contains("failed") || lower.contains("unable to") {
        return true;
    }
    if line.contains("=== Discovery Mode")
        || line.contains("Available Snapshots")
        || line.contains("No snapshots found")
    {
        return true;
    }
    let listing = Regex::new(r"^[^@]+@[^:]+:.+\s+\d{4}-\d{2}-\d{2}").unwrap();
    if listing.is_match(line) {
        return true;
    }
    if line.contains("\"userName\"") && line.contains("\"hostName\"") {
        return true;
    }
    [
        "Snapshot created successfully",
        "Snapshot restore completed",
        "Repository connected",
        "No eligible snapshots",
    ]
    .iter()
    .any(|s| line.contains(s))
}

/// `latestMoverStatus.logs`: filtered lines joined by `\n`, then the last `max_bytes` bytes. Like
/// Go's `bufio.Scanner`, a line over 64 KiB ends the scan.
pub fn mover_status_logs(output: &str, destination: bool, max_bytes: usize) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for line in output.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.len() > 64 * 1024 {
            break;
        }
        if !destination || destination_log_filter(line) {
            kept.push(line);
        }
    }
    let joined = kept.join("\n");
    let bytes = joined.as_bytes();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max_bytes)..]).into_owned()
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdentityInfo {
    pub identity: String,
    pub snapshot_count: usize,
    /// RFC 3339, as the status shows it (second precision, like metav1.Time).
    pub latest_snapshot: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryStatus {
    pub requested_identity: String,
    pub available_identities: Vec<IdentityInfo>,
    pub error_msg: String,
    /// `status.kopia.snapshotsFound`.
    pub snapshots_found: usize,
}

/// `ParseKopiaDiscoveryOutput` plus the snapshot count the mover stores.
pub fn parse_discovery(logs: &str) -> DiscoveryStatus {
    let no_snapshots = Regex::new(r"No snapshots found for ([^@]+)@([^:]+):(.+)").unwrap();
    let listing =
        Regex::new(r"^([^@]+)@([^:]+):(.+)\s+(\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2})").unwrap();
    let identity_error = Regex::new(r#"unable to find snapshots for source "([^"]+)""#).unwrap();
    let header = Regex::new(r"=== Discovery Mode: Available Snapshots ===").unwrap();
    let json_line = Regex::new(r#"^\{.*"id".*"userName".*"hostName".*\}"#).unwrap();
    let mut status = DiscoveryStatus::default();
    let mut in_discovery = false;
    let mut found: BTreeMap<String, (usize, Option<chrono::DateTime<chrono::Utc>>)> =
        BTreeMap::new();
    let mut json_lines = Vec::new();
    for raw in logs.split('\n') {
        let line = raw.trim();
        if header.is_match(line) {
            in_discovery = true;
            continue;
        }
        if let Some(c) = no_snapshots.captures(line) {
            status.requested_identity = format!("{}@{}", &c[1], &c[2]);
            status.error_msg = line.to_string();
            continue;
        }
        if let Some(c) = identity_error.captures(line) {
            status.requested_identity = c[1].split(':').next().unwrap_or("").to_string();
            status.error_msg = format!(
                "No snapshots found for identity '{}'",
                status.requested_identity
            );
            continue;
        }
        if in_discovery && json_line.is_match(line) {
            json_lines.push(line.to_string());
            continue;
        }
        if let Some(c) = listing.captures(line) {
            let entry = found.entry(format!("{}@{}", &c[1], &c[2])).or_default();
            entry.0 += 1;
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&c[4], "%Y-%m-%d %H:%M:%S") {
                let t = t.and_utc();
                if entry.1.is_none_or(|l| t > l) {
                    entry.1 = Some(t);
                }
            }
        }
    }
    for line in json_lines {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        // Go's json.Unmarshal into time.Time demands RFC 3339; a bad time drops the line.
        let end = match v.get("endTime").and_then(Value::as_str) {
            Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(t) => t.with_timezone(&chrono::Utc),
                Err(_) => continue,
            },
            None => chrono::DateTime::UNIX_EPOCH,
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let entry = found
            .entry(format!("{}@{}", text("userName"), text("hostName")))
            .or_default();
        entry.0 += 1;
        if entry.1.is_none_or(|l| end > l) {
            entry.1 = Some(end);
        }
    }
    status.available_identities = found
        .into_iter()
        .map(|(identity, (count, latest))| IdentityInfo {
            identity,
            snapshot_count: count,
            latest_snapshot: latest.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        })
        .collect();
    if !status.requested_identity.is_empty() && !status.available_identities.is_empty() {
        let names: Vec<&str> = status
            .available_identities
            .iter()
            .map(|i| i.identity.as_str())
            .collect();
        status.error_msg = format!(
            "No snapshots found for identity '{}'. Available identities: {}",
            status.requested_identity,
            names.join(", ")
        );
    } else if status.error_msg.is_empty() && !status.requested_identity.is_empty() {
        status.error_msg = format!(
            "No snapshots found for identity '{}'",
            status.requested_identity
        );
    }
    status.snapshots_found = status
        .available_identities
        .iter()
        .find(|i| i.identity == status.requested_identity)
        .map_or(0, |i| i.snapshot_count);
    status
}

/// Every file below `root` (relative path → size and mode), skipping `skip` subtrees.
pub fn file_inventory(root: &Path, skip: &[&str]) -> BTreeMap<String, (u64, u32)> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, (u64, u32)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if skip
                .iter()
                .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
            {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            out.insert(
                rel,
                (
                    if meta.is_dir() { 0 } else { meta.len() },
                    meta.permissions().mode(),
                ),
            );
            if meta.is_dir() {
                walk(root, &path, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

/// `snapshot list --all --json` of the pod's repository, through the client config the mover
/// left in `/cache` (oldest first within each source).
#[track_caller]
pub fn snapshots(pod: &Pod) -> Vec<Value> {
    let out = Command::new(kmover_binary())
        .arg("--config-file")
        .arg(pod.path("/cache/kopia.config"))
        .args(["snapshot", "list", "--all", "--json"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .env_remove("KOPIA_CONFIG_PATH")
        .output()
        .expect("run kmover snapshot list");
    assert!(
        out.status.success(),
        "snapshot list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("snapshot list JSON") {
        Value::Array(items) => items,
        other => panic!("not a list: {other}"),
    }
}

/// `user@host:path` of a snapshot JSON.
pub fn source_of(snapshot: &Value) -> String {
    let s = &snapshot["source"];
    format!(
        "{}@{}:{}",
        s["userName"].as_str().unwrap_or(""),
        s["host"].as_str().unwrap_or(""),
        s["path"].as_str().unwrap_or("")
    )
}
