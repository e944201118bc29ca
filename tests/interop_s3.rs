//! S3 repositories on a real S3 server (MinIO) shared by kmover and the real kopia, in both
//! directions; kmover through a fault-injecting proxy (5xx, broken connections, delays); and
//! no secret in kmover's output even at debug level.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::minio::{self, Minio};
use common::tree::{Compare, assert_same_tree, hard_tree};
use common::{Kmover, Kopia, KopiaVersion, PASSWORD, RepositoryCli, TestRng, clip};
use serde_json::Value;

const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";
const EXACT: Compare = Compare {
    dir_mtimes: false,
    owners: true,
};

fn s3_flags(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    [
        "--bucket",
        bucket,
        "--endpoint",
        endpoint,
        "--disable-tls",
        "--access-key",
        minio::ROOT_USER,
        "--secret-access-key",
        minio::ROOT_PASSWORD,
        "--prefix",
        prefix,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn kopia_s3(kopia: &Kopia, verb: &str, endpoint: &str, bucket: &str, prefix: &str) {
    let cache = kopia.runner().cache_dir();
    let mut args: Vec<String> = vec!["repository".into(), verb.into(), "s3".into()];
    args.extend(s3_flags(endpoint, bucket, prefix));
    args.push(format!("--cache-directory={}", cache.display()));
    if verb == "create" {
        args.push(FAST_KDF.into());
    }
    kopia.run(args);
}

fn kmover_s3(kmover: &Kmover, verb: &str, endpoint: &str, bucket: &str, prefix: &str) {
    let mut args: Vec<String> = vec!["repository".into(), verb.into(), "s3".into()];
    args.extend(s3_flags(endpoint, bucket, prefix));
    if verb == "create" {
        args.push(FAST_KDF.into());
    }
    kmover.run(args);
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", clip(&out.stdout)))
}

fn snapshot_id(manifest: &Value) -> String {
    manifest["id"].as_str().expect("snapshot ID").to_string()
}

fn storage_of(config_file: &Path) -> Value {
    let text = std::fs::read_to_string(config_file).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["storage"].clone()
}

#[test]
fn kmover_writes_an_s3_repository_that_kopia_verifies_and_restores() {
    let test = "kmover_writes_an_s3_repository_that_kopia_verifies_and_restores";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let Some(minio) = Minio::start(test) else {
        return;
    };
    minio.create_bucket("interop");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    // The full snapshot-issue tree: 2.5 GiB sparse file, 5,000 small files.
    hard_tree(&tree, true, 5000);

    let kmover = Kmover::new();
    let started = Instant::now();
    kmover_s3(
        &kmover,
        "create",
        &minio.endpoint(),
        "interop",
        "kmover-first/",
    );
    let ours = json(&kmover.run(["snapshot", "create", tree.to_str().unwrap(), "--json"]));
    eprintln!(
        "kmover: S3 create + snapshot of {} entries: {:.2}s",
        ours["stats"]["fileCount"],
        started.elapsed().as_secs_f64()
    );

    kopia_s3(
        &kopia,
        "connect",
        &minio.endpoint(),
        "interop",
        "kmover-first/",
    );
    assert_eq!(
        storage_of(&kopia.runner().config_file()),
        storage_of(&kmover.runner().config_file()),
        "kmover's connection file holds exactly kopia's S3 storage config"
    );
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let restored = dir.path().join("restored-by-kopia");
    kopia.run([
        "snapshot",
        "restore",
        &snapshot_id(&ours),
        restored.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &restored, EXACT);

    // Every blob sits at `prefix + ID`, and both tools list the same IDs, lengths and
    // (millisecond) timestamps.
    let listing = |tool: &dyn Fn() -> Vec<Value>| {
        let mut blobs: Vec<(String, u64, chrono::DateTime<chrono::FixedOffset>)> = tool()
            .iter()
            .map(|b| {
                (
                    b["id"].as_str().unwrap().to_string(),
                    b["length"].as_u64().unwrap(),
                    // Parsed: kopia trims trailing zeros of the fraction, as Go does.
                    chrono::DateTime::parse_from_rfc3339(b["timestamp"].as_str().unwrap()).unwrap(),
                )
            })
            .collect();
        blobs.sort();
        blobs
    };
    let by_kopia = listing(&|| kopia.blob_list_json());
    let by_kmover = listing(&|| kmover.blob_list_json());
    assert_eq!(by_kopia, by_kmover);
    let by_kopia: Vec<String> = by_kopia.into_iter().map(|b| b.0).collect();
    assert!(by_kopia.contains(&"kopia.repository".to_string()));
    assert!(
        minio
            .data_dir()
            .join("interop/kmover-first/kopia.repository")
            .exists()
    );

    // A second kmover creation in the same place is refused, as kopia refuses it.
    let again = Kmover::new();
    let mut args: Vec<String> = vec!["repository".into(), "create".into(), "s3".into()];
    args.extend(s3_flags(&minio.endpoint(), "interop", "kmover-first/"));
    let out = again.runner().run_expecting_failure(args);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("found existing data"),
        "{}",
        clip(&out.stderr)
    );
}

#[test]
fn kopia_writes_an_s3_repository_that_kmover_verifies_restores_and_extends() {
    let test = "kopia_writes_an_s3_repository_that_kmover_verifies_restores_and_extends";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let Some(minio) = Minio::start(test) else {
        return;
    };
    minio.create_bucket("interop");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 300);

    kopia_s3(
        &kopia,
        "create",
        &minio.endpoint(),
        "interop",
        "kopia-first",
    );
    let theirs = kopia.snapshot_create(&tree);

    let kmover = Kmover::new();
    kmover_s3(
        &kmover,
        "connect",
        &minio.endpoint(),
        "interop",
        "kopia-first",
    );
    kmover.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let restored = dir.path().join("restored-by-kmover");
    kmover.run([
        "snapshot",
        "restore",
        &snapshot_id(&theirs),
        restored.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &restored, EXACT);

    // kmover adds a snapshot of a changed tree; kopia verifies and restores it.
    std::fs::write(tree.join("data/added-by-kmover.txt"), b"new file\n").unwrap();
    let ours = json(&kmover.run(["snapshot", "create", tree.to_str().unwrap(), "--json"]));
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let restored = dir.path().join("restored-by-kopia");
    kopia.run([
        "snapshot",
        "restore",
        &snapshot_id(&ours),
        restored.to_str().unwrap(),
    ]);
    assert_same_tree(&tree, &restored, EXACT);
}

/// What the proxy does to a share of requests, in percent; changeable while it runs.
struct Faults {
    server_errors: AtomicU32,
    broken_connections: AtomicU32,
    delays: AtomicU32,
    delay: Duration,
}

#[derive(Default)]
struct ProxyStats {
    requests: AtomicU64,
    server_errors: AtomicU64,
    broken_connections: AtomicU64,
    delays: AtomicU64,
    /// Every request head seen, for checks of what the client sends.
    heads: std::sync::Mutex<Vec<String>>,
}

/// A loopback HTTP/1.1 proxy in front of MinIO that injects faults: 503 SlowDown answers,
/// connections closed before the request is forwarded, after it is forwarded (the server acted
/// but the client never hears), or halfway through the response, and delays.
/// One request per connection: it asks the server to close after each response.
struct FaultProxy {
    port: u16,
    faults: Arc<Faults>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    listener: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream_port: u16, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(faults);
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, st) = (faults.clone(), stats.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut seed = 1u64;
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                seed += 1;
                let (f, s) = (f.clone(), s.clone());
                thread::spawn(move || handle_connection(conn, upstream_port, &f, &s, seed));
            }
        });
        FaultProxy {
            port,
            faults,
            stats,
            stop,
            listener: Some(handle),
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set(&self, server_errors: u32, broken_connections: u32, delays: u32) {
        self.faults
            .server_errors
            .store(server_errors, Ordering::SeqCst);
        self.faults
            .broken_connections
            .store(broken_connections, Ordering::SeqCst);
        self.faults.delays.store(delays, Ordering::SeqCst);
    }

    fn report(&self) -> String {
        let s = &self.stats;
        format!(
            "{} requests: {} answered 503, {} connections broken, {} delayed",
            s.requests.load(Ordering::SeqCst),
            s.server_errors.load(Ordering::SeqCst),
            s.broken_connections.load(Ordering::SeqCst),
            s.delays.load(Ordering::SeqCst)
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}

/// Reads one request: the head (with `Connection: close` forced) and its body.
fn read_request(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut length = 0usize;
    let mut rewritten = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    conn.read_exact(&mut body).ok()?;
    Some((rewritten.into_bytes(), body))
}

fn handle_connection(
    mut client: TcpStream,
    upstream_port: u16,
    faults: &Faults,
    stats: &ProxyStats,
    seed: u64,
) {
    let mut rng = TestRng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut heads) = stats.heads.lock() {
        heads.push(String::from_utf8_lossy(&head).into_owned());
    }
    if rng.below(100) < faults.delays.load(Ordering::SeqCst) as usize {
        stats.delays.fetch_add(1, Ordering::SeqCst);
        thread::sleep(faults.delay);
    }
    let roll = rng.below(100);
    let errors = faults.server_errors.load(Ordering::SeqCst) as usize;
    let broken = faults.broken_connections.load(Ordering::SeqCst) as usize;
    if roll < errors {
        stats.server_errors.fetch_add(1, Ordering::SeqCst);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
        return;
    }
    let break_how = (roll < errors + broken).then(|| rng.below(3));
    if break_how == Some(0) {
        stats.broken_connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    if upstream.write_all(&head).is_err() || upstream.write_all(&body).is_err() {
        return;
    }
    let mut response = Vec::new();
    if upstream.read_to_end(&mut response).is_err() {
        return;
    }
    match break_how {
        // The server acted on the request; the client never hears of it.
        Some(1) => {
            stats.broken_connections.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
        }
        // Half the response, then the connection drops: a short body.
        Some(_) => {
            stats.broken_connections.fetch_add(1, Ordering::SeqCst);
            let _ = client.write_all(&response[..response.len() / 2]);
            let _ = client.shutdown(Shutdown::Both);
        }
        None => {
            let _ = client.write_all(&response);
        }
    }
}

/// `kmover` with the test's connection file and extra environment, outside the common runner.
fn kmover_command(kmover: &Kmover, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmover"));
    cmd.arg("--config-file")
        .arg(kmover.runner().config_file())
        .arg("--cache-directory")
        .arg(kmover.runner().cache_dir())
        .current_dir(kmover.runner().home())
        .stdin(Stdio::null())
        .env("KOPIA_PASSWORD", PASSWORD)
        .env_remove("KOPIA_CONFIG_PATH")
        .env_remove("KOPIA_CACHE_DIRECTORY")
        .env_remove("KMOVER_LOG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.output().expect("cannot run kmover")
}

#[test]
fn kmover_backs_up_and_restores_through_a_faulty_connection() {
    let test = "kmover_backs_up_and_restores_through_a_faulty_connection";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let Some(minio) = Minio::start(test) else {
        return;
    };
    minio.create_bucket("faulty");
    let proxy = FaultProxy::start(
        minio.port(),
        Faults {
            server_errors: AtomicU32::new(10),
            broken_connections: AtomicU32::new(10),
            delays: AtomicU32::new(10),
            delay: Duration::from_millis(200),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 200);

    let kmover = Kmover::new();
    let started = Instant::now();
    kmover_s3(&kmover, "create", &proxy.endpoint(), "faulty", "repo/");
    let ours = json(&kmover.run(["snapshot", "create", tree.to_str().unwrap(), "--json"]));
    let backup_time = started.elapsed();
    let restored = dir.path().join("restored-by-kmover");
    let started = Instant::now();
    kmover.run([
        "snapshot",
        "restore",
        &snapshot_id(&ours),
        restored.to_str().unwrap(),
    ]);
    kmover.run(["snapshot", "verify", "--verify-files-percent=100"]);
    let restore_time = started.elapsed();
    assert_same_tree(&tree, &restored, EXACT);
    let report = proxy.report();
    eprintln!(
        "through the faulty proxy: create+backup {:.2}s, restore+verify {:.2}s; {report}",
        backup_time.as_secs_f64(),
        restore_time.as_secs_f64()
    );
    assert!(
        proxy.stats.server_errors.load(Ordering::SeqCst) > 0
            && proxy.stats.broken_connections.load(Ordering::SeqCst) > 0,
        "the proxy injected no faults: {report}"
    );

    // kopia, straight to MinIO, agrees.
    kopia_s3(&kopia, "connect", &minio.endpoint(), "faulty", "repo/");
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);

    // Everything fails: kmover gives up within its retry bound, naming endpoint and operation.
    proxy.set(50, 50, 0);
    std::fs::write(tree.join("data/never-stored.txt"), b"lost\n").unwrap();
    let mut cmd = kmover_command(&kmover, &[("KMOVER_RETRY_MAX_TIME", "5")]);
    cmd.args(["snapshot", "create", tree.to_str().unwrap()]);
    let started = Instant::now();
    let out = output(cmd);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "all requests failing: kmover exited with {} after {:.2}s: {}",
        out.status,
        elapsed.as_secs_f64(),
        stderr.trim()
    );
    assert!(!out.status.success(), "kmover succeeded: {stderr}");
    assert!(elapsed < Duration::from_secs(25), "took {elapsed:?}");
    assert!(
        stderr.contains(&format!("http://{}/faulty/repo/", proxy.endpoint()))
            && stderr.contains("gave up after"),
        "{stderr}"
    );
    assert!(
        ["get", "list", "put", "metadata"]
            .iter()
            .any(|op| stderr.contains(&format!("{op} \""))),
        "the operation is named: {stderr}"
    );
    kopia.run(["snapshot", "verify", "--verify-files-percent=100"]);
}

#[test]
fn secrets_never_reach_kmover_output_even_at_debug_level() {
    let test = "secrets_never_reach_kmover_output_even_at_debug_level";
    let Some(minio) = Minio::start(test) else {
        return;
    };
    minio.create_bucket("quiet");
    let proxy = FaultProxy::start(
        minio.port(),
        Faults {
            server_errors: AtomicU32::new(0),
            broken_connections: AtomicU32::new(0),
            delays: AtomicU32::new(0),
            delay: Duration::ZERO,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    hard_tree(&tree, false, 20);
    let kmover = Kmover::new();
    let secrets = [minio::ROOT_PASSWORD, PASSWORD];
    let check = |what: &str, out: &Output, extra: &[&str]| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in secrets.iter().chain(extra) {
            assert!(
                !all.contains(secret),
                "{what}: the output shows the secret {secret:?}:\n{}",
                clip(all.as_bytes())
            );
        }
        all
    };

    // Credentials from the standard AWS variables, at debug level through the flag.
    let env = [
        ("AWS_ACCESS_KEY_ID", minio::ROOT_USER),
        ("AWS_SECRET_ACCESS_KEY", minio::ROOT_PASSWORD),
    ];
    let mut cmd = kmover_command(&kmover, &env);
    cmd.args(["--log-level", "debug", "repository", "create", "s3"]);
    cmd.args(["--bucket", "quiet", "--endpoint", &minio.endpoint()]);
    cmd.args(["--disable-tls", "--prefix", "r/", FAST_KDF]);
    let out = output(cmd);
    assert!(out.status.success(), "{}", clip(&out.stderr));
    let logged = check("repository create", &out, &[]);
    assert!(
        logged.contains("DEBUG"),
        "debug logging is on: {}",
        clip(logged.as_bytes())
    );

    // Through KMOVER_LOG, every command that talks to S3.
    for args in [
        vec!["snapshot", "create", tree.to_str().unwrap()],
        vec!["snapshot", "list"],
        vec!["repository", "status"],
        vec!["repository", "status", "--json"],
        vec!["blob", "list"],
    ] {
        let mut cmd = kmover_command(&kmover, &[("KMOVER_LOG", "debug")]);
        cmd.args(&args);
        let out = output(cmd);
        assert!(out.status.success(), "{args:?}: {}", clip(&out.stderr));
        check(&args.join(" "), &out, &[]);
    }

    // A session token that MinIO refuses: the failure names neither it nor the secret.
    let token = "kmover-test-session-token-4f9a1c0b";
    let other = Kmover::new();
    let mut cmd = kmover_command(
        &other,
        &[("KMOVER_LOG", "trace"), ("AWS_SESSION_TOKEN", token)],
    );
    cmd.args(["repository", "connect", "s3", "--bucket", "quiet"]);
    cmd.args([
        "--endpoint",
        &proxy.endpoint(),
        "--disable-tls",
        "--prefix",
        "r/",
    ]);
    cmd.args(["--access-key", minio::ROOT_USER]);
    cmd.args(["--secret-access-key", minio::ROOT_PASSWORD]);
    let out = output(cmd);
    assert!(
        !out.status.success(),
        "MinIO accepted a made-up session token"
    );
    let shown = check("connect with a session token", &out, &[token]);
    assert!(
        shown.contains("403") || shown.contains("400"),
        "{}",
        clip(shown.as_bytes())
    );
    // The token did go to the server, as a signed header.
    let heads = proxy.stats.heads.lock().unwrap();
    let with_token = heads
        .iter()
        .find(|h| h.contains(&format!("x-amz-security-token: {token}")))
        .expect("a request carries the session token");
    assert!(
        with_token.contains("x-amz-security-token, Signature=")
            || with_token.contains("x-amz-security-token;"),
        "{with_token}"
    );
}
