//! Finding and running the real kopia binary for this crate's interoperability tests.
//! The binary is `$KOPIA_BIN` or `~/.cache/kmover-tools/kopia-0.22.3/kopia`. Without it the tests are
//! skipped with a loud message, unless `CI=true`, where a missing oracle is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn kopia_binary() -> Option<PathBuf> {
    let candidate = match std::env::var_os("KOPIA_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            PathBuf::from(std::env::var_os("HOME")?).join(".cache/kmover-tools/kopia-0.22.3/kopia")
        }
    };
    candidate.is_file().then_some(candidate)
}

/// The kopia binary, or `None` after warning loudly that `test` is skipped.
pub fn require_kopia(test: &str) -> Option<PathBuf> {
    if let Some(binary) = kopia_binary() {
        return Some(binary);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: the kopia binary is missing (set KOPIA_BIN); CI=true requires it");
    }
    eprintln!("\n!!!!!!!! SKIPPING {test}: kopia binary not found (set KOPIA_BIN) !!!!!!!!\n");
    None
}

/// One kopia client with its own config, cache and log directories under `work`.
pub struct Kopia {
    binary: PathBuf,
    work: PathBuf,
}

pub const PASSWORD: &str = "kmover-test-password";

impl Kopia {
    pub fn new(binary: PathBuf, work: &Path) -> Self {
        Kopia {
            binary,
            work: work.to_path_buf(),
        }
    }

    /// Runs `kopia <args> --config-file … --log-dir …` and returns its output, panicking on failure.
    pub fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("cannot start kopia");
        assert!(
            output.status.success(),
            "kopia {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .arg(format!(
                "--config-file={}",
                self.work.join("kopia.config").display()
            ))
            .arg(format!("--log-dir={}", self.work.join("logs").display()))
            .env("KOPIA_PASSWORD", PASSWORD)
            .env("KOPIA_CHECK_FOR_UPDATES", "false")
            .env("KOPIA_CACHE_DIRECTORY", self.work.join("cache"));
        command
    }

    /// `kopia repository create filesystem --path <path> <extra…>`.
    pub fn create_filesystem_repository(&self, path: &Path, extra: &[&str]) {
        let path = path.display().to_string();
        let mut args = vec![
            "repository",
            "create",
            "filesystem",
            "--path",
            path.as_str(),
        ];
        args.extend_from_slice(extra);
        self.run(&args);
    }
}
