//! Bad configuration: a malformed environment variable, flag, endpoint URL, CA bundle or JSON
//! connection file makes kmover exit non-zero with a message naming the variable (or file) and
//! the problem, before it touches the repository: a filesystem repository stays byte for byte
//! the same, and an S3 endpoint (a listening socket here) never sees a connection.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::crash::{FAST_KDF, say};
use common::{Kmover, RepositoryCli, clip};

fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A TCP endpoint that counts the connections it is offered.
struct Listener {
    socket: TcpListener,
}

impl Listener {
    fn new() -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Listener { socket }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.socket.local_addr().unwrap().port())
    }

    fn connections(&self) -> usize {
        std::thread::sleep(Duration::from_millis(50));
        std::iter::from_fn(|| self.socket.accept().ok()).count()
    }
}

fn run_env(kmover: &Kmover, env: &[(&str, &str)], args: &[&str]) -> Output {
    let (mut cmd, _) = kmover_command(kmover, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kmover")
}

fn kmover_command(kmover: &Kmover, args: &[&str]) -> (std::process::Command, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmover"));
    cmd.arg("--config-file")
        .arg(kmover.runner().config_file())
        .arg("--cache-directory")
        .arg(kmover.runner().cache_dir())
        .args(args)
        .current_dir(kmover.runner().home())
        .env("KOPIA_PASSWORD", common::PASSWORD)
        .env_remove("KMOVER_LOG")
        .env_remove("KOPIA_CONFIG_PATH")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("ROOT_CA_PEM_BASE64");
    (cmd, args.join(" "))
}

/// Asserts a clean refusal whose message holds every one of `names`.
#[track_caller]
fn assert_refused(what: &str, o: &Output, names: &[&str]) {
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && o.status.code().is_some() && !text.contains("panicked"),
        "{what}: expected a clean failure, got {}:\n{}",
        o.status,
        clip(&o.stderr)
    );
    for name in names {
        assert!(
            text.contains(name),
            "{what}: the message does not name {name:?}:\n{}",
            clip(&o.stderr)
        );
    }
}

fn s3_args<'a>(endpoint: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "repository",
        "connect",
        "s3",
        "--bucket",
        "b",
        "--endpoint",
        endpoint,
        "--access-key",
        "AKIDEXAMPLE",
        "--secret-access-key",
        "config-test-secret",
        "--disable-tls",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn malformed_storage_environment_is_named_before_any_request() {
    let listener = Listener::new();
    let endpoint = listener.endpoint();
    let kmover = Kmover::new();
    let mut refused = 0;
    for (var, value, problem) in [
        ("KMOVER_RETRY_MAX_TIME", "soon", "not a number of seconds"),
        ("KMOVER_RETRY_MAX_TIME", "-3", "not a number of seconds"),
        ("KMOVER_RETRY_MAX_TIME", "NaN", "not a number of seconds"),
        ("KMOVER_STORAGE_CONCURRENCY", "0", "not a positive number"),
        (
            "KMOVER_STORAGE_CONCURRENCY",
            "many",
            "not a positive number",
        ),
    ] {
        let o = run_env(&kmover, &[(var, value)], &s3_args(&endpoint, &[]));
        assert_refused(&format!("{var}={value}"), &o, &[var, problem]);
        assert_eq!(listener.connections(), 0, "{var}={value}: S3 was contacted");
        refused += 1;
    }
    say(&format!("malformed storage variables refused: {refused}"));
}

#[test]
fn malformed_log_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(&dir.path().join("repo"), &[FAST_KDF]);
    let before = files(&dir.path().join("repo"));
    let o = run_env(
        &kmover,
        &[("KMOVER_LOG", "debug,[[[")],
        &["snapshot", "list"],
    );
    assert_refused("KMOVER_LOG=debug,[[[", &o, &["KMOVER_LOG"]);
    let o = run_env(&kmover, &[], &["--log-level", "loud", "snapshot", "list"]);
    assert_refused("--log-level=loud", &o, &["log-level", "loud"]);
    assert_eq!(before, files(&dir.path().join("repo")));
}

#[test]
fn malformed_endpoints_are_named_before_any_request() {
    let listener = Listener::new();
    let endpoint = listener.endpoint();
    let kmover = Kmover::new();
    let with_scheme = format!("http://{endpoint}");
    let with_path = format!("{endpoint}/bucket");
    let mut refused = 0;
    for (bad, problem) in [
        (with_scheme.as_str(), "endpoint"),
        (with_path.as_str(), "endpoint"),
        ("", "endpoint"),
    ] {
        let o = run_env(&kmover, &[], &s3_args(bad, &[]));
        assert_refused(&format!("--endpoint {bad:?}"), &o, &[problem]);
        assert_eq!(listener.connections(), 0);
        assert!(!kmover.runner().config_file().exists());
        refused += 1;
    }
    say(&format!("malformed endpoints refused: {refused}"));
}

#[test]
fn malformed_ca_bundles_are_named_before_any_request() {
    let listener = Listener::new();
    let endpoint = listener.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.pem");
    let kmover = Kmover::new();
    let mut refused = 0;
    for (path, problem) in [
        (&garbage, "certificate"),
        (&empty, "certificate"),
        (&missing, "No such file"),
    ] {
        let p = path.to_str().unwrap();
        let args = s3_args(&endpoint, &["--root-ca-pem-path", p]);
        // TLS on: the CA matters.
        let args: Vec<&str> = args.into_iter().filter(|a| *a != "--disable-tls").collect();
        let o = run_env(&kmover, &[], &args);
        assert_refused(&format!("--root-ca-pem-path {p}"), &o, &[p, problem]);
        assert_eq!(listener.connections(), 0);
        refused += 1;
    }
    for (value, env) in [("%%% not base64 %%%", false), ("bm90IGEgcGVt", true)] {
        let args = s3_args(&endpoint, &[]);
        let mut args: Vec<&str> = args.into_iter().filter(|a| *a != "--disable-tls").collect();
        let o = if env {
            run_env(&kmover, &[("ROOT_CA_PEM_BASE64", value)], &args)
        } else {
            args.extend(["--root-ca-pem-base64", value]);
            run_env(&kmover, &[], &args)
        };
        assert_refused(&format!("CA {value:?} (env: {env})"), &o, &["CA"]);
        assert_eq!(listener.connections(), 0);
        refused += 1;
    }
    say(&format!("malformed CA bundles refused: {refused}"));
}

#[test]
fn malformed_connection_files_are_named_before_touching_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(&repo, &[FAST_KDF]);
    let before = files(&repo);
    let config = kmover.runner().config_file();
    let good = std::fs::read_to_string(&config).unwrap();
    let listener = Listener::new();
    // The connection file kmover wrote, with only its storage replaced.
    let with_storage = |storage: serde_json::Value| {
        let mut doc: serde_json::Value = serde_json::from_str(&good).unwrap();
        doc["storage"] = storage;
        doc.to_string()
    };
    let bad_configs: Vec<(String, &str)> = vec![
        (good[..good.len() / 2].to_string(), "EOF"),
        ("not json at all".to_string(), "expected"),
        ("{}".to_string(), "missing field"),
        (
            with_storage(serde_json::json!({"type": "ftp", "config": {}})),
            "ftp",
        ),
        (
            with_storage(serde_json::json!({"type": "filesystem", "config": {}})),
            "path",
        ),
        (
            with_storage(serde_json::json!({"type": "filesystem", "config": {"path": 7}})),
            "path",
        ),
        (
            with_storage(serde_json::json!({"type": "s3", "config": {
                "endpoint": listener.endpoint(), "doNotUseTLS": true}})),
            "bucket",
        ),
        (with_storage(serde_json::json!([])), "line 1 column"),
    ];
    let config_name = config.display().to_string();
    let mut refused = 0;
    for (text, problem) in &bad_configs {
        std::fs::write(&config, text).unwrap();
        for args in [
            &["snapshot", "list"][..],
            &["repository", "status"][..],
            &["snapshot", "create", dir.path().to_str().unwrap()][..],
        ] {
            let o = run_env(&kmover, &[], args);
            assert_refused(
                &format!("config {text:?}: {}", args.join(" ")),
                &o,
                &[config_name.as_str(), problem],
            );
            refused += 1;
        }
        assert_eq!(listener.connections(), 0);
        assert_eq!(
            before,
            files(&repo),
            "config {text:?}: the repository changed"
        );
    }
    // The same through KOPIA_CONFIG_PATH.
    let elsewhere = dir.path().join("elsewhere.config");
    std::fs::write(&elsewhere, "{").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmover"));
    cmd.args(["snapshot", "list"])
        .env("KOPIA_CONFIG_PATH", &elsewhere)
        .env("KOPIA_PASSWORD", common::PASSWORD);
    let o = cmd.output().unwrap();
    assert_refused("KOPIA_CONFIG_PATH", &o, &[elsewhere.to_str().unwrap()]);
    std::fs::write(&config, good).unwrap();
    kmover.run(["snapshot", "list"]);
    say(&format!(
        "malformed connection files refused: {}",
        refused + 1
    ));
}
