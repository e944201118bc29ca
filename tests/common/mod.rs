//! Helpers shared by the integration tests: run the real kopia and our own
//! `kmover` binary against throwaway repositories, and build sample data.
//!
//! Every tool instance gets its own temporary home holding its config file,
//! cache and logs (always absolute paths: kopia mishandles a relative
//! `--config-file`), so tests never touch the user's kopia setup and can run
//! in parallel.

// Each test crate compiles its own copy of this module and uses a subset.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub mod concurrency;
pub mod crash;
pub mod fake_clock;
pub mod minio;
pub mod tree;
pub mod volsync;

/// Password of every repository the tests create.
pub const PASSWORD: &str = "kmover-test-password";

/// A hung tool must fail its test, not stall the whole suite.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// At most this much of a tool's output goes into a panic message.
const MAX_OUTPUT_IN_MESSAGE: usize = 8 * 1024;

/// The kopia builds the tests know how to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KopiaVersion {
    /// The oldest release we promise to interoperate with.
    V0_21,
    /// The reference release the format was studied against.
    V0_22,
    /// v0.22.3 built with `-tags testing` (fast key derivation, fake clock).
    V0_22Testing,
    /// The newest release we smoke-test against.
    V0_23,
}

impl KopiaVersion {
    pub fn label(self) -> &'static str {
        match self {
            Self::V0_21 => "0.21.1",
            Self::V0_22 => "0.22.3",
            Self::V0_22Testing => "0.22.3 (-tags testing)",
            Self::V0_23 => "0.23.1",
        }
    }

    /// Environment variable that overrides where the binary is.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::V0_21 => "KMOVER_KOPIA_0_21",
            Self::V0_22 => "KMOVER_KOPIA",
            Self::V0_22Testing => "KMOVER_KOPIA_TESTING",
            Self::V0_23 => "KMOVER_KOPIA_0_23",
        }
    }

    /// Directory under the tools cache that `scripts/install-tools.sh` fills.
    fn cache_dir_name(self) -> &'static str {
        match self {
            Self::V0_21 => "kopia-0.21.1",
            Self::V0_22 => "kopia-0.22.3",
            Self::V0_22Testing => "kopia-0.22.3-testing",
            Self::V0_23 => "kopia-0.23.1",
        }
    }
}

/// True when running under CI, where a missing tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Where `scripts/install-tools.sh` puts the tools.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KMOVER_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    Path::new(&home).join(".cache").join("kmover-tools")
}

/// Finds the kopia binary for `version`, or says why it cannot.
pub fn locate_kopia(version: KopiaVersion) -> Result<PathBuf, String> {
    let (path, source) = match std::env::var_os(version.env_var()) {
        Some(path) => (PathBuf::from(path), format!("${}", version.env_var())),
        None => (
            tools_dir().join(version.cache_dir_name()).join("kopia"),
            "the default location".to_owned(),
        ),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "kopia {} not found at {} ({source})",
            version.label(),
            path.display()
        ))
    }
}

/// Reports a test that cannot run: a loud skip locally, a failure under CI.
#[track_caller]
pub fn skip_or_fail(test: &str, reason: &str) {
    let banner = "!".repeat(78);
    let message = format!(
        "{banner}\n!! SKIPPING {test}: {reason}\n!! Run scripts/install-tools.sh (or scripts/test.sh) to install it.\n{banner}"
    );
    if in_ci() {
        panic!("{message}\n(CI=true: a missing tool fails the test instead of skipping it)");
    }
    // Straight to stderr: the test harness captures `eprintln!`, and a skip
    // nobody sees would look like a pass.
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

/// One runnable tool with a private home directory and fixed global flags.
pub struct Runner {
    name: String,
    program: PathBuf,
    global_args: Vec<OsString>,
    extra_env: Vec<(&'static str, String)>,
    home: TempDir,
}

impl Runner {
    fn new(name: String, program: PathBuf) -> Self {
        let home = tempfile::Builder::new()
            .prefix("kmover-test-tool-")
            .tempdir()
            .expect("cannot create a temporary directory");
        Runner {
            name,
            program,
            global_args: Vec::new(),
            extra_env: Vec::new(),
            home,
        }
    }

    /// The private directory holding this tool's config, cache and logs.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn config_file(&self) -> PathBuf {
        self.home().join("repository.config")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home().join("cache")
    }

    fn command<I, S>(&self, args: I) -> (Command, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.global_args)
            .args(&args)
            .current_dir(self.home())
            .stdin(Stdio::null())
            .env("KOPIA_PASSWORD", PASSWORD)
            .env("KOPIA_CHECK_FOR_UPDATES", "false")
            // Settings from the developer's own environment must not leak in.
            .env_remove("KOPIA_CONFIG_PATH")
            .env_remove("KOPIA_CACHE_DIRECTORY")
            .env_remove("KOPIA_LOG_DIR")
            .env_remove("KOPIA_DANGEROUS_COMMANDS");
        for (key, value) in &self.extra_env {
            cmd.env(key, value);
        }
        let shown = std::iter::once(self.name.clone())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        (cmd, shown)
    }

    /// Runs the tool and returns its output whatever the exit status.
    #[track_caller]
    pub fn run_unchecked<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (cmd, shown) = self.command(args);
        output_with_timeout(cmd, &shown)
    }

    /// Runs the tool and panics, showing stdout and stderr, unless it succeeds.
    #[track_caller]
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (cmd, shown) = self.command(args);
        let output = output_with_timeout(cmd, &shown);
        if !output.status.success() {
            panic!("{}", describe_failure(&shown, &output));
        }
        output
    }

    /// Runs the tool, expecting it to fail; returns its output.
    #[track_caller]
    pub fn run_expecting_failure<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (cmd, shown) = self.command(args);
        let output = output_with_timeout(cmd, &shown);
        if output.status.success() {
            panic!(
                "expected failure, but it succeeded\n{}",
                describe_failure(&shown, &output)
            );
        }
        output
    }
}

/// Repository commands that kopia and kmover share, with the same output.
pub trait RepositoryCli {
    fn runner(&self) -> &Runner;

    /// Connects this tool's private config to a filesystem repository.
    fn connect_filesystem(&self, repo: &Path);

    /// Creates a filesystem repository at `repo` and connects to it.
    fn create_filesystem_repo(&self, repo: &Path, extra_flags: &[&str]);

    #[track_caller]
    fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.runner().run(args)
    }

    /// `content list --json`: live contents only.
    #[track_caller]
    fn content_list_json(&self) -> Vec<Value> {
        parse_json_list(self, &["content", "list", "--json"])
    }

    /// `content list --json --deleted`: live and deleted contents.
    #[track_caller]
    fn content_list_json_with_deleted(&self) -> Vec<Value> {
        parse_json_list(self, &["content", "list", "--json", "--deleted"])
    }

    /// `content show ID`: the content's plaintext.
    #[track_caller]
    fn content_show(&self, id: &str) -> Vec<u8> {
        self.run(["content", "show", id]).stdout
    }

    /// `content show ID...`: the plaintexts of all `ids`, concatenated.
    #[track_caller]
    fn content_show_many(&self, ids: &[&str]) -> Vec<u8> {
        let mut args = vec!["content", "show"];
        args.extend_from_slice(ids);
        self.run(args).stdout
    }

    /// `index list --json`.
    #[track_caller]
    fn index_list_json(&self) -> Vec<Value> {
        parse_json_list(self, &["index", "list", "--json"])
    }

    /// `blob list --json`.
    #[track_caller]
    fn blob_list_json(&self) -> Vec<Value> {
        parse_json_list(self, &["blob", "list", "--json"])
    }

    /// `repository status --json`.
    #[track_caller]
    fn repository_status_json(&self) -> Value {
        let args = ["repository", "status", "--json"];
        let output = self.run(args);
        parse_json(&output, &args)
    }
}

#[track_caller]
fn parse_json_list<T: RepositoryCli + ?Sized>(tool: &T, args: &[&str]) -> Vec<Value> {
    let output = tool.run(args);
    match parse_json(&output, args) {
        Value::Array(items) => items,
        other => panic!("`{}` printed a JSON {other}, not a list", args.join(" ")),
    }
}

#[track_caller]
fn parse_json(output: &Output, args: &[&str]) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "`{}` printed invalid JSON ({e}):\n{}",
            args.join(" "),
            clip(&output.stdout)
        )
    })
}

/// The real kopia, run with a private config, cache and log directory.
pub struct Kopia {
    runner: Runner,
    version: KopiaVersion,
}

impl Kopia {
    /// Finds kopia `version`. When it is missing, prints a loud skip banner and
    /// returns `None` -- or panics under CI, where skipping would hide gaps.
    #[track_caller]
    pub fn find(version: KopiaVersion, test: &str) -> Option<Kopia> {
        match locate_kopia(version) {
            Ok(program) => Some(Kopia::at(version, program)),
            Err(reason) => {
                skip_or_fail(test, &reason);
                None
            }
        }
    }

    fn at(version: KopiaVersion, program: PathBuf) -> Kopia {
        let mut runner = Runner::new(format!("kopia-{}", version.label()), program);
        let log_dir = runner.home().join("logs");
        runner.global_args = vec![
            "--config-file".into(),
            runner.config_file().into(),
            "--log-dir".into(),
            log_dir.into(),
        ];
        Kopia { runner, version }
    }

    pub fn version(&self) -> KopiaVersion {
        self.version
    }

    /// Sets global policy flags, e.g. `["--compression=zstd-fastest"]`.
    #[track_caller]
    pub fn set_global_policy(&self, flags: &[&str]) {
        let mut args = vec!["policy", "set", "--global"];
        args.extend_from_slice(flags);
        self.run(args);
    }

    /// Snapshots `dir`; returns kopia's snapshot manifest.
    #[track_caller]
    pub fn snapshot_create(&self, dir: &Path) -> Value {
        let args = [
            OsStr::new("snapshot"),
            OsStr::new("create"),
            OsStr::new("--json"),
            dir.as_os_str(),
        ];
        let output = self.run(args);
        parse_json(&output, &["snapshot", "create", "--json"])
    }

    /// Marks one content deleted in the index (a "dangerous" kopia command).
    #[track_caller]
    pub fn content_delete(&self, id: &str) {
        self.run(["--dangerous-commands=enabled", "content", "delete", id]);
    }
}

impl RepositoryCli for Kopia {
    fn runner(&self) -> &Runner {
        &self.runner
    }

    #[track_caller]
    fn connect_filesystem(&self, repo: &Path) {
        let cache = self.runner.cache_dir();
        self.run([
            OsStr::new("repository"),
            OsStr::new("connect"),
            OsStr::new("filesystem"),
            OsStr::new("--path"),
            repo.as_os_str(),
            // kopia takes the cache location only when connecting.
            OsStr::new("--cache-directory"),
            cache.as_os_str(),
        ]);
    }

    #[track_caller]
    fn create_filesystem_repo(&self, repo: &Path, extra_flags: &[&str]) {
        let cache = self.runner.cache_dir();
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("repository"),
            OsStr::new("create"),
            OsStr::new("filesystem"),
            OsStr::new("--path"),
            repo.as_os_str(),
            OsStr::new("--cache-directory"),
            cache.as_os_str(),
        ];
        args.extend(extra_flags.iter().map(OsStr::new));
        self.run(args);
    }
}

/// Our own binary, run the same way as kopia.
pub struct Kmover {
    runner: Runner,
}

impl Kmover {
    pub fn new() -> Kmover {
        let mut runner = Runner::new("kmover".to_owned(), env!("CARGO_BIN_EXE_kmover").into());
        runner.global_args = vec![
            "--config-file".into(),
            runner.config_file().into(),
            "--cache-directory".into(),
            runner.cache_dir().into(),
        ];
        runner.extra_env.push(("RUST_BACKTRACE", "1".to_owned()));
        Kmover { runner }
    }
}

impl Default for Kmover {
    fn default() -> Self {
        Kmover::new()
    }
}

impl RepositoryCli for Kmover {
    fn runner(&self) -> &Runner {
        &self.runner
    }

    #[track_caller]
    fn connect_filesystem(&self, repo: &Path) {
        self.run([
            OsStr::new("repository"),
            OsStr::new("connect"),
            OsStr::new("filesystem"),
            OsStr::new("--path"),
            repo.as_os_str(),
        ]);
    }

    #[track_caller]
    fn create_filesystem_repo(&self, repo: &Path, extra_flags: &[&str]) {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("repository"),
            OsStr::new("create"),
            OsStr::new("filesystem"),
            OsStr::new("--path"),
            repo.as_os_str(),
        ];
        args.extend(extra_flags.iter().map(OsStr::new));
        self.run(args);
    }
}

/// Runs `cmd` with captured output, killing it after [`COMMAND_TIMEOUT`].
#[track_caller]
fn output_with_timeout(mut cmd: Command, shown: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
    // Drain both pipes concurrently so a chatty child never blocks on a full pipe.
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut poll = Duration::from_millis(1);
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{shown}` did not finish within {COMMAND_TIMEOUT:?}; killed it\n--- stderr ---\n{}",
                    clip(&stderr.join().unwrap_or_default())
                );
            }
            Ok(None) => {
                thread::sleep(poll);
                poll = (poll * 2).min(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot wait for `{shown}`: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader panicked"),
        stderr: stderr.join().expect("stderr reader panicked"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just truncates what the panic message can show.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn describe_failure(shown: &str, output: &Output) -> String {
    format!(
        "`{shown}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        clip(&output.stdout),
        clip(&output.stderr)
    )
}

/// Output as text for a message: lossy UTF-8, long output cut in the middle.
pub fn clip(bytes: &[u8]) -> String {
    if bytes.len() <= MAX_OUTPUT_IN_MESSAGE {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let half = MAX_OUTPUT_IN_MESSAGE / 2;
    format!(
        "{}\n[... {} bytes cut ...]\n{}",
        String::from_utf8_lossy(&bytes[..half]),
        bytes.len() - 2 * half,
        String::from_utf8_lossy(&bytes[bytes.len() - half..])
    )
}

/// A small deterministic generator (splitmix64), so sample data is the same
/// on every run and machine without a `rand` dependency.
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// `len` bytes of incompressible data.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    TestRng::new(seed).fill(&mut data);
    data
}

/// `len` bytes of English-like text. Built from whole words so that every
/// compressor kopia offers shrinks it (digit soup such as `seq` output does
/// not shrink under zstd-fastest, which would make compression tests vacuous).
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup",
        "repository",
        "content",
        "snapshot",
        "index",
        "pack",
        "blob",
        "object",
        "manifest",
        "policy",
        "compression",
        "encryption",
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "with",
        "as",
        "was",
        "on",
        "file",
        "directory",
        "restore",
        "maintenance",
        "epoch",
        "hash",
        "key",
        "format",
        "version",
        "splitter",
        "chunk",
        "data",
        "storage",
        "cache",
        "password",
        "kopia",
        "kmover",
        "reads",
        "writes",
        "every",
        "byte",
        "exactly",
    ];
    let mut rng = TestRng::new(seed);
    let mut text = Vec::with_capacity(len + 64);
    let mut words_in_line = 0;
    while text.len() < len {
        let word = WORDS[rng.below(WORDS.len())];
        if words_in_line == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                text.extend(first.to_uppercase().to_string().bytes());
                text.extend(chars.as_str().bytes());
            }
        } else {
            text.push(b' ');
            text.extend(word.bytes());
        }
        words_in_line += 1;
        if words_in_line >= 6 + rng.below(10) {
            text.extend(b".\n");
            words_in_line = 0;
        }
    }
    text.truncate(len);
    text
}

/// What [`sample_tree`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleTreeStats {
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub bytes: u64,
}

/// Writes a deterministic tree of about 3 MiB under `dir` (created if needed):
/// empty, tiny, text and random files, a duplicate file, all-zero data,
/// nested and empty directories, non-ASCII names and (on Unix) a symlink.
#[track_caller]
pub fn sample_tree(dir: &Path) -> SampleTreeStats {
    let mut stats = SampleTreeStats {
        files: 0,
        dirs: 1,
        symlinks: 0,
        bytes: 0,
    };
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));

    let guide = text_bytes(2, 300 * 1024);
    let small_notes: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            (
                format!("docs/notes/note-{i}.txt"),
                text_bytes(100 + i, 100 + 97 * i as usize),
            )
        })
        .collect();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("empty.txt".into(), Vec::new()),
        ("one-byte.bin".into(), vec![0x2a]),
        ("README.txt".into(), text_bytes(1, 2 * 1024)),
        ("docs/guide.txt".into(), guide.clone()),
        (
            "docs/notes/deep/deeper/log.txt".into(),
            text_bytes(3, 1024 * 1024),
        ),
        ("data/random-64k.bin".into(), random_bytes(4, 64 * 1024)),
        ("data/random-1m.bin".into(), random_bytes(5, 1024 * 1024)),
        ("data/zeros-256k.bin".into(), vec![0; 256 * 1024]),
        // Same bytes as docs/guide.txt: must deduplicate to the same content.
        ("data/copy of guide.txt".into(), guide),
        ("unicode/ünïcødé 名前.txt".into(), text_bytes(6, 500)),
    ];
    files.extend(small_notes);

    for (relative, data) in &files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        std::fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        stats.files += 1;
        stats.bytes += data.len() as u64;
    }
    std::fs::create_dir_all(dir.join("empty-dir")).expect("create empty-dir");
    // docs, docs/notes, docs/notes/deep, docs/notes/deep/deeper, data, unicode, empty-dir
    stats.dirs += 7;

    #[cfg(unix)]
    {
        std::fs::create_dir_all(dir.join("links")).expect("create links");
        std::os::unix::fs::symlink("../README.txt", dir.join("links/to-readme"))
            .expect("create symlink");
        stats.dirs += 1;
        stats.symlinks += 1;
    }
    stats
}

/// Writes `len` random bytes to `dir/name`. With more than 8 MiB, kopia's
/// default splitter (DYNAMIC-4M-BUZHASH, chunks of at most 8 MiB) must cut
/// the file into several contents and add an indirect (`x`) object.
#[track_caller]
pub fn write_random_file(dir: &Path, name: &str, seed: u64, len: usize) {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(seed, len))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A short human-readable comparison of two JSON values for messages.
pub fn json_diff(left_name: &str, left: &Value, right_name: &str, right: &Value) -> String {
    let mut out = String::new();
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for (key, lv) in l {
                match r.get(key) {
                    Some(rv) if rv == lv => {}
                    Some(rv) => {
                        let _ = writeln!(out, "  {key}: {left_name}={lv} {right_name}={rv}");
                    }
                    None => {
                        let _ = writeln!(out, "  {key}: {left_name}={lv} {right_name}=<missing>");
                    }
                }
            }
            for (key, rv) in r {
                if !l.contains_key(key) {
                    let _ = writeln!(out, "  {key}: {left_name}=<missing> {right_name}={rv}");
                }
            }
        }
        _ => {
            let _ = writeln!(out, "  {left_name}={left}\n  {right_name}={right}");
        }
    }
    out
}
