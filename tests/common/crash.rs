//! Crash testing: run a kmover command, kill it with SIGKILL at a seeded point, then prove the
//! repository survived: both kmover and the real kopia verify every file of every earlier
//! snapshot, every index entry points to a stored pack, and the next run succeeds.
//!
//! A kill point is a seeded delay after the start ([`KillAt::Delay`]) or, in a binary built with
//! the `testing` feature, a named place in kmover's storage writes ([`KillAt::Hook`], see
//! `src/crash_hook.rs`): the process aborts itself the `n`th time it gets there, which lands a
//! crash exactly inside a pack upload, an index write or a manifest flush.
//!
//! A new crash scenario (say maintenance) needs only: a [`SharedRepo`] with snapshots, a loop
//! over [`kill_points`], [`run_killed`] with its command, and [`SharedRepo::assert_intact`].
//!
//! Counts: `KMOVER_RELIABILITY_ROUNDS` (default: each test's small CI count) and
//! `KMOVER_RELIABILITY_SEED` (default fixed, printed, so any failing round can be replayed).

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::minio::{self, Minio};
use super::{Kmover, Kopia, RepositoryCli, TestRng, clip, drain};

pub const ROUNDS_VAR: &str = "KMOVER_RELIABILITY_ROUNDS";
pub const SEED_VAR: &str = "KMOVER_RELIABILITY_SEED";
/// The variable the `testing` build's crash hook reads: `<point>:<n>`.
pub const CRASH_AT_VAR: &str = "KMOVER_TEST_CRASH_AT";
/// kopia's fastest key derivation, so that each of the many tool runs opens quickly.
pub const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";
/// A killed command that has not died by then is a hung test.
const KILL_TIMEOUT: Duration = Duration::from_secs(300);

/// Rounds to run: `$KMOVER_RELIABILITY_ROUNDS`, else `ci_default`.
pub fn rounds(ci_default: usize) -> usize {
    match std::env::var(ROUNDS_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ROUNDS_VAR}={text:?} is not a number of rounds")),
        Err(_) => ci_default,
    }
}

/// The seed of every random choice of a reliability test (`$KMOVER_RELIABILITY_SEED`).
pub fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a number")),
        Err(_) => 0x6b6d_6f76_6572,
    }
}

/// Prints straight to stderr: the harness captures `eprintln!`, and the counts are the point.
pub fn say(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// Names a kmover binary built with `--features testing`, for when the tests themselves were
/// built without it.
pub const TESTING_BIN_VAR: &str = "KMOVER_TESTING_BIN";

fn has_hook(program: &Path) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .env(CRASH_AT_VAR, "probe:0")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stderr).contains("crash hook armed"))
}

/// A kmover binary with the crash hook: this build's when it has one, else
/// `$KMOVER_TESTING_BIN`.
pub fn hook_binary() -> Option<PathBuf> {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_kmover"));
    if has_hook(&own) {
        return Some(own);
    }
    let other = PathBuf::from(std::env::var_os(TESTING_BIN_VAR)?);
    if has_hook(&other) {
        Some(other)
    } else {
        panic!("${TESTING_BIN_VAR}={} has no crash hook", other.display())
    }
}

pub fn hook_available() -> bool {
    hook_binary().is_some()
}

/// A command running `program` in `cmd`'s directory with `cmd`'s environment (no arguments).
fn like(cmd: &std::process::Command, program: &OsStr) -> std::process::Command {
    let mut out = std::process::Command::new(program);
    if let Some(dir) = cmd.get_current_dir() {
        out.current_dir(dir);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => out.env(key, v),
            None => out.env_remove(key),
        };
    }
    out
}

/// Where a run is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillAt {
    /// SIGKILL this long after the start.
    Delay(Duration),
    /// The crash hook aborts the process the `n`th time (1-based) it reaches `point`.
    Hook { point: String, n: u32 },
}

impl std::fmt::Display for KillAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillAt::Delay(d) => write!(f, "SIGKILL after {} ms", d.as_millis()),
            KillAt::Hook { point, n } => write!(f, "crash at {point}:{n}"),
        }
    }
}

/// `count` seeded kill points: hook points (cycling through `points`, each at a seeded
/// occurrence up to `max_n`) when the binary has the hook and `points` is not empty, else delays
/// spread over `window` (the duration of an uninterrupted run).
pub fn kill_points(
    rng: &mut TestRng,
    count: usize,
    window: Duration,
    points: &[&str],
    max_n: u32,
) -> Vec<KillAt> {
    let hooks = !points.is_empty() && hook_available();
    (0..count)
        .map(|i| {
            // Every other point is a delay even with the hook: kills between storage writes
            // (hashing, walking, restoring files) matter as much as kills inside them.
            if hooks && i % 2 == 0 {
                KillAt::Hook {
                    point: points[(i / 2) % points.len()].to_string(),
                    n: 1 + rng.below(max_n.max(1) as usize) as u32,
                }
            } else {
                let ms = window.as_millis().max(1) as usize;
                KillAt::Delay(Duration::from_millis(rng.below(ms) as u64))
            }
        })
        .collect()
}

/// What became of a run that was to be killed.
pub struct Interrupted {
    /// It died of the kill (SIGKILL, or the hook's abort) rather than finishing by itself.
    pub killed: bool,
    pub output: Output,
    pub elapsed: Duration,
}

impl Interrupted {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs kmover with `args` (and `env`, at debug log level so crash output can be checked for
/// secrets) and kills it at `at`. A run that finishes first is reported with `killed: false`; it
/// must then have succeeded.
#[track_caller]
pub fn run_killed<I, S>(kmover: &Kmover, args: I, env: &[(&str, &str)], at: &KillAt) -> Interrupted
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let (mut cmd, shown) = kmover.runner().command(&args);
    if let KillAt::Hook { .. } = at {
        let program = hook_binary().expect("a crash point needs a binary with the crash hook");
        let mut hooked = like(&cmd, program.as_os_str());
        hooked.args(cmd.get_args());
        cmd = hooked;
    }
    cmd.env("KMOVER_LOG", "debug");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let KillAt::Hook { point, n } = at {
        cmd.env(CRASH_AT_VAR, format!("{point}:{n}"));
    }
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let kill_time = match at {
        KillAt::Delay(d) => Some(started + *d),
        KillAt::Hook { .. } => None,
    };
    let mut sent_kill = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        let now = Instant::now();
        if !sent_kill && kill_time.is_some_and(|t| now >= t) {
            child.kill().expect("SIGKILL the child");
            sent_kill = true;
        }
        if now - started > KILL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{shown}` ({at}) did not end within {KILL_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(1));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    let killed = match status.signal() {
        // The hook kills the process itself (SIGKILL, else SIGABRT); any other signal, or a
        // SIGKILL nobody sent, is a real crash of kmover.
        Some(9) => sent_kill || matches!(at, KillAt::Hook { .. }),
        Some(6) if matches!(at, KillAt::Hook { .. }) => true,
        Some(sig) => panic!(
            "`{shown}` ({at}) died of signal {sig}:\n{}",
            clip(&output.stderr)
        ),
        None => false,
    };
    if !killed {
        assert!(
            status.success(),
            "`{shown}` ({at}) finished before the kill, but failed: {status}\n{}",
            clip(&output.stderr)
        );
    }
    if let KillAt::Hook { point, n } = at
        && killed
    {
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(&format!("crashing at {point}:{n}")),
            "`{shown}` aborted, but not at {point}:{n}:\n{}",
            clip(&output.stderr)
        );
    }
    Interrupted {
        killed,
        output,
        elapsed,
    }
}

/// Panics if any of `secrets` shows in `output` (stdout or stderr).
#[track_caller]
pub fn assert_no_secrets(what: &str, output: &Output, secrets: &[&str]) {
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{what}: {stream} shows the secret {secret:?}:\n{}",
                clip(bytes)
            );
        }
    }
}

/// Where the repository under test lives.
pub enum Backend<'a> {
    Filesystem(PathBuf),
    S3 {
        minio: &'a Minio,
        bucket: String,
        prefix: String,
    },
}

impl Backend<'_> {
    /// `repository <verb> <type> <flags>` (without kopia's cache flag).
    fn repository_args(&self, verb: &str) -> Vec<String> {
        let mut args = vec!["repository".to_string(), verb.to_string()];
        match self {
            Backend::Filesystem(path) => {
                args.push("filesystem".into());
                args.push("--path".into());
                args.push(path.display().to_string());
            }
            Backend::S3 {
                minio: server,
                bucket,
                prefix,
            } => {
                args.push("s3".into());
                for (flag, value) in [
                    ("--bucket", bucket.as_str()),
                    ("--endpoint", &server.endpoint()),
                    ("--access-key", minio::ROOT_USER),
                    ("--secret-access-key", minio::ROOT_PASSWORD),
                    ("--prefix", prefix.as_str()),
                ] {
                    args.push(flag.into());
                    args.push(value.into());
                }
                args.push("--disable-tls".into());
            }
        }
        if verb == "create" {
            args.push(FAST_KDF.into());
        }
        args
    }

    pub fn label(&self) -> &'static str {
        match self {
            Backend::Filesystem(_) => "filesystem",
            Backend::S3 { .. } => "S3",
        }
    }
}

/// One repository used by kmover and (when installed) the real kopia.
pub struct SharedRepo {
    pub kmover: Kmover,
    pub kopia: Option<Kopia>,
    pub label: &'static str,
}

impl SharedRepo {
    /// kmover creates the repository; kopia connects to it.
    pub fn create(backend: &Backend, kopia: Option<Kopia>) -> SharedRepo {
        let kmover = Kmover::new();
        kmover.run(backend.repository_args("create"));
        if let Some(kopia) = &kopia {
            let mut args = backend.repository_args("connect");
            args.push(format!(
                "--cache-directory={}",
                kopia.runner().cache_dir().display()
            ));
            kopia.run(args);
        }
        SharedRepo {
            kmover,
            kopia,
            label: backend.label(),
        }
    }

    /// `snapshot create DIR --json` by kmover; the new snapshot's ID.
    pub fn kmover_snapshot(&self, dir: &Path) -> String {
        let out = self
            .kmover
            .run(["snapshot", "create", dir.to_str().unwrap(), "--json"]);
        let m: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("snapshot create printed invalid JSON ({e})"));
        m["id"].as_str().expect("snapshot ID").to_string()
    }

    /// IDs of every snapshot kmover lists, complete or not.
    pub fn snapshot_ids(&self, incomplete: bool) -> Vec<(String, bool)> {
        let mut args = vec!["snapshot", "list", "--all", "--json"];
        if incomplete {
            args.push("--incomplete");
        }
        let out = self.kmover.run(args);
        let list: Value = serde_json::from_slice(&out.stdout).expect("snapshot list JSON");
        list.as_array()
            .expect("a JSON list")
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m.get("incomplete").and_then(Value::as_str).is_some(),
                )
            })
            .collect()
    }

    /// Every snapshot in `expected` is listed, and both tools verify every file of every
    /// snapshot (reading all of it) and every index entry's pack.
    #[track_caller]
    pub fn assert_intact(&self, expected: &[String], context: &str) {
        let listed: Vec<String> = self
            .snapshot_ids(true)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for id in expected {
            assert!(
                listed.contains(id),
                "{context}: snapshot {id} is no longer listed: {listed:?}"
            );
        }
        let verify = ["snapshot", "verify", "--verify-files-percent=100"];
        let runs: Vec<(&str, &super::Runner)> = std::iter::once(("kmover", self.kmover.runner()))
            .chain(self.kopia.as_ref().map(|k| ("kopia", k.runner())))
            .collect();
        for (tool, runner) in runs {
            for args in [&verify[..], &["content", "verify"][..]] {
                let out = runner.run_unchecked(args);
                assert!(
                    out.status.success(),
                    "{context}: `{tool} {}` failed: {}\n{}",
                    args.join(" "),
                    out.status,
                    clip(&out.stderr)
                );
            }
        }
    }
}

/// Deterministic edits between backup rounds: new files (some large enough to span several
/// packs), one rewritten file and one removed file.
pub fn mutate_tree(tree: &Path, rng: &mut TestRng, round: usize) {
    let dir = tree.join(format!("round-{round:03}"));
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1 + rng.below(2) {
        let len = (256 << 10) + rng.below(3 << 20);
        std::fs::write(
            dir.join(format!("new-{i}.bin")),
            super::random_bytes(rng.next_u64(), len),
        )
        .unwrap();
    }
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("small-{i}.txt")),
            super::text_bytes(rng.next_u64(), 100 + rng.below(4000)),
        )
        .unwrap();
    }
    std::fs::write(
        tree.join("data/text.txt"),
        super::text_bytes(rng.next_u64(), 50_000 + rng.below(200_000)),
    )
    .unwrap();
    if round >= 2 {
        let old = tree
            .join(format!("round-{:03}", round - 2))
            .join("small-0.txt");
        let _ = std::fs::remove_file(old);
    }
}

/// A run whose peak memory was watched.
pub struct Measured {
    pub output: Output,
    /// Peak resident set (`VmHWM`) in bytes, sampled until the process exited.
    pub peak_rss: u64,
    pub elapsed: Duration,
}

fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs kmover with its address space limited to `max_virtual` bytes (so a runaway allocation
/// fails inside the child instead of exhausting the machine), killing it after `timeout`, and
/// reports its peak resident memory.
#[track_caller]
pub fn run_measured<I, S>(kmover: &Kmover, args: I, max_virtual: u64, timeout: Duration) -> Measured
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (inner, shown) = kmover.runner().command(args);
    // `sh` applies the limit and then becomes kmover (same PID, so /proc shows kmover).
    let mut cmd = like(&inner, OsStr::new("sh"));
    cmd.arg("-c")
        .arg(format!("ulimit -v {} && exec \"$@\"", max_virtual / 1024))
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss_of(child.id()) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{shown}` did not finish within {timeout:?} (peak RSS {} MiB so far)",
                peak >> 20
            );
        }
        thread::sleep(Duration::from_millis(2));
    };
    Measured {
        output: Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        },
        peak_rss: peak,
        elapsed: started.elapsed(),
    }
}

/// A tmpfs of a fixed size mounted on a fresh directory (root only), unmounted when dropped.
pub struct TmpfsMount {
    dir: tempfile::TempDir,
}

impl TmpfsMount {
    /// Mounts `size_bytes` of tmpfs, or says loudly why it cannot and returns `None` (a failure
    /// under CI, whose machine runs the suite as root).
    #[track_caller]
    pub fn new(test: &str, size_bytes: u64) -> Option<TmpfsMount> {
        let dir = tempfile::Builder::new()
            .prefix("kmover-tmpfs-")
            .tempdir()
            .expect("create a mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes}"))
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TmpfsMount { dir }),
            Ok(o) => {
                super::skip_or_fail(
                    test,
                    &format!(
                        "cannot mount a tmpfs: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ),
                );
                None
            }
            Err(e) => {
                super::skip_or_fail(test, &format!("cannot run mount: {e}"));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}
