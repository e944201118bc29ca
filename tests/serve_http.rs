//! `kmover serve`: pvc-plumber's `GET /exists/{namespace}/{pvc}` over HTTP on loopback, for a
//! present snapshot, an absent one, a snapshot made after start-up, a wrong password and a
//! missing repository.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Kmover, PASSWORD, RepositoryCli};
use serde_json::Value;

/// A running `kmover serve`, stopped when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(kmover: &Kmover, password: &str, extra: &[&str]) -> Server {
        let runner = kmover.runner();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kmover"))
            .arg("--config-file")
            .arg(runner.config_file())
            .arg("--cache-directory")
            .arg(runner.cache_dir())
            .args(["serve", "--listen=127.0.0.1:0", "--cache-ttl=0s"])
            .args(extra)
            .env("KOPIA_PASSWORD", password)
            .env_remove("KOPIA_CONFIG_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kmover serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.split("http://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kmover serve printed its address");
        Server { child, address }
    }

    /// `GET path`: the status code and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path);
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, json)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backup_as(kmover: &Kmover, tree: &Path, source: &str) {
    kmover.run([
        "snapshot",
        "create",
        &format!("--override-source={source}"),
        tree.to_str().unwrap(),
    ]);
}

#[test]
fn exists_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello").unwrap();
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    backup_as(&kmover, &tree, "data-backup@ns1:/data");

    let server = Server::start(&kmover, PASSWORD, &[]);
    let (status, json) = server.get_json("/exists/ns1/data");
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["exists"], true);
    assert_eq!(json["decision"], "restore");
    assert_eq!(json["authoritative"], true);
    assert_eq!(json["namespace"], "ns1");
    assert_eq!(json["pvc"], "data");
    assert_eq!(json["source"], "data-backup@ns1:/data");
    assert_eq!(json["backend"], "kopia-fs");

    let (status, json) = server.get_json("/exists/ns1/cache");
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["exists"], false);
    assert_eq!(json["decision"], "fresh");
    assert_eq!(json["authoritative"], true);

    // A backup made while serving is seen (the cache TTL is 0 here).
    backup_as(&kmover, &tree, "cache-backup@ns1:/data");
    let (_, json) = server.get_json("/exists/ns1/cache");
    assert_eq!(json["exists"], true, "{json}");

    // Malformed requests.
    for bad in [
        "/exists/ns1",
        "/exists/ns1/data/extra",
        "/exists/NS/data",
        "/exists/ns1/a%40b",
    ] {
        let (status, json) = server.get_json(bad);
        assert_eq!(status, 400, "{bad}: {json}");
        assert_eq!(json["decision"], "unknown");
    }
    assert_eq!(server.get("/nowhere").0, 404);
    assert_eq!(
        server.get_json("/healthz"),
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(server.get_json("/readyz").0, 200);

    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse");
    let count = |name: &str, decision: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && decision.is_none_or(|d| s.labels.get("decision") == Some(d))
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{name} is not a counter: {other:?}"),
            })
    };
    assert_eq!(count("kmover_serve_requests_total", None), Some(7.0));
    assert_eq!(count("kmover_serve_request_errors_total", None), Some(4.0));
    assert_eq!(
        count("kmover_serve_checks_total", Some("restore")),
        Some(2.0)
    );
    assert_eq!(count("kmover_serve_checks_total", Some("fresh")), Some(1.0));

    // Another identity template.
    drop(server);
    let server = Server::start(
        &kmover,
        PASSWORD,
        &["--identity-template={namespace}-{pvc}@cluster:/data"],
    );
    backup_as(&kmover, &tree, "ns2-db@cluster:/data");
    assert_eq!(server.get_json("/exists/ns2/db").1["exists"], true);
    assert_eq!(server.get_json("/exists/ns1/data").1["exists"], false);
}

#[test]
fn wrong_password_and_missing_repository_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello").unwrap();
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    backup_as(&kmover, &tree, "data-backup@ns1:/data");

    let wrong = "wrong-password-0815";
    let server = Server::start(&kmover, wrong, &[]);
    let (status, json) = server.get_json("/exists/ns1/data");
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["exists"], false);
    assert_eq!(json["decision"], "unknown");
    assert_eq!(json["authoritative"], false);
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("invalid repository password"), "{error}");
    assert!(!error.contains(wrong));
    let (status, json) = server.get_json("/readyz");
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["status"], "not ready");
    assert_eq!(
        server.get_json("/healthz").0,
        200,
        "alive even when not ready"
    );

    // The repository's storage vanished.
    drop(server);
    std::fs::remove_dir_all(dir.path().join("repo")).unwrap();
    let server = Server::start(&kmover, PASSWORD, &[]);
    let (status, json) = server.get_json("/exists/ns1/data");
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["decision"], "unknown");

    // Bad settings fail at start-up.
    let out = kmover
        .runner()
        .run_expecting_failure(["serve", "--identity-template={pvc}@{cluster}:/data"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("{cluster}"));
}
