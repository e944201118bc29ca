//! Secrets never appear in kmover's output: not in logs at debug and trace level, not in errors,
//! not in `--json` output, not in what a crashed (killed) run printed. The repository password,
//! the S3 secret key and session token are checked as written and base64-encoded.

mod common;

use std::process::Output;

use common::crash::{Backend, FAST_KDF, KillAt, SharedRepo, assert_no_secrets, run_killed, say};
use common::minio::{self, Minio};
use common::{Kmover, PASSWORD, RepositoryCli, clip};

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Each secret as written and base64-encoded (kopia keeps a saved password that way).
fn forbidden(secrets: &[&str]) -> Vec<String> {
    secrets
        .iter()
        .flat_map(|s| [s.to_string(), base64(s.as_bytes())])
        .collect()
}

/// kmover with extra environment, the test's config file, and debug logging on both ways.
fn run(kmover: &Kmover, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmover"));
    cmd.arg("--config-file")
        .arg(kmover.runner().config_file())
        .arg("--cache-directory")
        .arg(kmover.runner().cache_dir())
        .args(["--log-level", "debug"])
        .args(args)
        .current_dir(kmover.runner().home())
        .env("KOPIA_PASSWORD", PASSWORD)
        .env("KMOVER_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env_remove("KOPIA_CONFIG_PATH")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kmover")
}

#[track_caller]
fn check(what: &str, o: &Output, secrets: &[String]) {
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secrets(what, o, &refs);
}

/// Every read and write command of a filesystem repository, successful and failing.
#[test]
fn no_secret_in_any_output_of_a_filesystem_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let tree = dir.path().join("tree");
    common::sample_tree(&tree);
    let kmover = Kmover::new();
    let secrets = forbidden(&[PASSWORD, "wrong-password-7f3c"]);
    let create = run(
        &kmover,
        &[],
        &[
            "repository",
            "create",
            "filesystem",
            "--path",
            repo.to_str().unwrap(),
            FAST_KDF,
        ],
    );
    assert!(create.status.success(), "{}", clip(&create.stderr));
    check("repository create", &create, &secrets);
    let mut debug_lines = 0;
    let snap = run(
        &kmover,
        &[],
        &["snapshot", "create", tree.to_str().unwrap(), "--json"],
    );
    assert!(snap.status.success(), "{}", clip(&snap.stderr));
    check("snapshot create --json", &snap, &secrets);
    let id = serde_json::from_slice::<serde_json::Value>(&snap.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = dir.path().join("restored");
    let commands: Vec<Vec<&str>> = vec![
        vec!["repository", "status"],
        vec!["repository", "status", "--json"],
        vec!["snapshot", "list", "--json", "--all"],
        vec!["snapshot", "verify", "--verify-files-percent=100"],
        vec!["snapshot", "restore", &id, target.to_str().unwrap()],
        vec!["content", "list", "--json"],
        vec!["index", "list", "--json"],
        vec!["blob", "list", "--json"],
        vec!["policy", "list", "--json"],
        vec!["ls", "-l", &id],
    ];
    let mut checked = 2;
    for args in &commands {
        let o = run(&kmover, &[], args);
        assert!(o.status.success(), "{args:?}: {}", clip(&o.stderr));
        check(&args.join(" "), &o, &secrets);
        let text = String::from_utf8_lossy(&o.stderr);
        debug_lines += text
            .lines()
            .filter(|l| l.contains("DEBUG") || l.contains("TRACE"))
            .count();
        checked += 1;
    }
    // Failures: a wrong password (flag and variable), a missing snapshot, a bad connect.
    for (env, args) in [
        (
            vec![],
            vec!["--password", "wrong-password-7f3c", "snapshot", "list"],
        ),
        (
            vec![("KOPIA_PASSWORD", "wrong-password-7f3c")],
            vec!["snapshot", "list"],
        ),
        (
            vec![],
            vec![
                "snapshot",
                "restore",
                "0123456789abcdef0123456789abcdef",
                "/nonexistent",
            ],
        ),
        (
            vec![("KOPIA_PASSWORD", "wrong-password-7f3c")],
            vec![
                "repository",
                "connect",
                "filesystem",
                "--path",
                repo.to_str().unwrap(),
            ],
        ),
    ] {
        let o = run(&Kmover::new(), &env, &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        check(&format!("failing {}", args.join(" ")), &o, &secrets);
        checked += 1;
    }
    // A run killed mid-backup prints nothing secret either.
    std::fs::write(tree.join("late.bin"), common::random_bytes(9, 8 << 20)).unwrap();
    let r = run_killed(
        &kmover,
        ["snapshot", "create", tree.to_str().unwrap()],
        &[("KMOVER_LOG", "trace")],
        &KillAt::Delay(std::time::Duration::from_millis(150)),
    );
    check("killed snapshot create", &r.output, &secrets);
    say(&format!(
        "filesystem commands checked for secrets: {}, {debug_lines} debug lines",
        checked + 1
    ));
}

/// S3 credentials in every command's output, including `--json` and a failing session token.
#[test]
fn no_s3_secret_in_any_output() {
    let test = "no_s3_secret_in_any_output";
    let Some(server) = Minio::start(test) else {
        return;
    };
    server.create_bucket("secrets");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    common::sample_tree(&tree);
    let token = "kmover-session-token-8d1e2f";
    let secrets = forbidden(&[PASSWORD, minio::ROOT_PASSWORD, token]);
    let backend = Backend::S3 {
        minio: &server,
        bucket: "secrets".into(),
        prefix: "s/".into(),
    };
    let repo = SharedRepo::create(&backend, None);
    let kmover = &repo.kmover;
    let mut checked = 0;
    let mut debug_lines = 0;
    for args in [
        vec!["snapshot", "create", tree.to_str().unwrap(), "--json"],
        vec!["repository", "status", "--json"],
        vec!["snapshot", "list", "--json"],
        vec!["snapshot", "verify", "--verify-files-percent=100"],
        vec!["blob", "list", "--json"],
        vec!["content", "list", "--json"],
    ] {
        let o = run(kmover, &[], &args);
        assert!(o.status.success(), "{args:?}: {}", clip(&o.stderr));
        check(&args.join(" "), &o, &secrets);
        debug_lines += String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.contains("DEBUG") || l.contains("TRACE"))
            .count();
        checked += 1;
    }
    // The S3 client logs its requests at debug level: the check above saw real log lines.
    assert!(
        debug_lines > 0,
        "debug logging was on, yet nothing was logged"
    );
    // Credentials from the AWS variables with a session token MinIO refuses.
    let endpoint = server.endpoint();
    let o = run(
        &Kmover::new(),
        &[
            ("AWS_ACCESS_KEY_ID", minio::ROOT_USER),
            ("AWS_SECRET_ACCESS_KEY", minio::ROOT_PASSWORD),
            ("AWS_SESSION_TOKEN", token),
        ],
        &[
            "repository",
            "connect",
            "s3",
            "--bucket",
            "secrets",
            "--endpoint",
            &endpoint,
            "--prefix",
            "s/",
            "--disable-tls",
        ],
    );
    assert!(
        !o.status.success(),
        "MinIO accepted a made-up session token"
    );
    check("connect with a refused session token", &o, &secrets);
    say(&format!(
        "S3 commands checked for secrets: {}, {debug_lines} debug lines",
        checked + 1
    ));
}
