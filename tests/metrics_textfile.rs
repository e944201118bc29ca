//! Run metrics: `--metrics-textfile` output parses as Prometheus text format (checked with the
//! `prometheus-parse` crate), and `--metrics-push-url` pushes the same series to a
//! Pushgateway-compatible loopback server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use common::{Kmover, RepositoryCli};

type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// A request the fake Pushgateway received.
#[derive(Clone, Debug)]
struct Pushed {
    method: String,
    path: String,
    body: String,
}

/// Accepts pushes on 127.0.0.1 until the test ends, answering 200 like a Pushgateway.
fn fake_pushgateway() -> (String, Arc<Mutex<Vec<Pushed>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut parts = request_line.split_whitespace();
            log.lock().unwrap().push(Pushed {
                method: parts.next().unwrap_or_default().to_string(),
                path: parts.next().unwrap_or_default().to_string(),
                body: String::from_utf8(body).unwrap(),
            });
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (url, received)
}

/// Every sample of a text exposition, parsed by `prometheus-parse`; also checks that it read
/// every sample line (it skips lines it cannot parse).
fn parse(text: &str, extra_labels: &BTreeMap<String, String>) -> Series {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let sample_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every sample parsed:\n{text}"
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(line.ends_with(" gauge"), "{line}");
    }
    let mut series = Series::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            other => panic!("{} is not a gauge: {other:?}", s.metric),
        };
        assert!(scrape.docs.contains_key(&s.metric), "{} has HELP", s.metric);
        let mut labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(extra_labels.clone());
        series.insert((s.metric, labels), value);
    }
    series
}

/// The grouping labels of a push path `/metrics/job/<job>/<label>@base64/<value>…`.
fn grouping_labels(path: &str) -> BTreeMap<String, String> {
    let rest = path.strip_prefix("/metrics/job/").expect("a push path");
    let mut parts = rest.split('/');
    let job = parts.next().unwrap();
    assert_eq!(job, "kmover");
    let mut labels = BTreeMap::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let name = name.strip_suffix("@base64").expect("base64-encoded values");
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(value)
            .expect("base64url");
        labels.insert(name.to_string(), String::from_utf8(decoded).unwrap());
    }
    labels
}

fn value(series: &Series, name: &str, operation: &str, source: &str) -> Option<f64> {
    series.iter().find_map(|((n, labels), v)| {
        (n == name
            && labels.get("operation").map(String::as_str) == Some(operation)
            && labels.get("source").map(String::as_str) == Some(source))
        .then_some(*v)
    })
}

fn textfile(path: &Path) -> Series {
    parse(&std::fs::read_to_string(path).unwrap(), &BTreeMap::new())
}

#[test]
fn textfile_parses_and_push_carries_the_same_series() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let stats = common::sample_tree(&tree);
    let prom = dir.path().join("kmover.prom");
    let (push_url, pushed) = fake_pushgateway();
    let kmover = Kmover::new();
    kmover.create_filesystem_repo(
        &dir.path().join("repo"),
        &["--format-block-key-derivation-algorithm=pbkdf2-sha256-600000"],
    );
    let source = "web-backup@shop:/data";
    let metrics_flags = [
        format!("--metrics-textfile={}", prom.display()),
        format!("--metrics-push-url={push_url}"),
    ];
    let backup = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["snapshot".into(), "create".into()];
        args.extend(metrics_flags.iter().cloned());
        args.push(format!("--override-source={source}"));
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    let started = chrono::Utc::now().timestamp() as f64;
    kmover.run(backup(&[tree.to_str().unwrap()]));
    let first = textfile(&prom);
    let files = stats.files as f64;
    assert_eq!(
        value(&first, "kmover_run_success", "backup", source),
        Some(1.0)
    );
    assert_eq!(
        value(&first, "kmover_run_files", "backup", source),
        Some(files)
    );
    assert_eq!(
        value(&first, "kmover_run_errors", "backup", source),
        Some(0.0)
    );
    let read = value(&first, "kmover_run_read_bytes", "backup", source).unwrap();
    assert_eq!(read, stats.bytes as f64, "a first backup reads every byte");
    let written = value(&first, "kmover_run_written_bytes", "backup", source).unwrap();
    assert!(
        written > 0.0 && written < read,
        "compressed and deduplicated: {written}"
    );
    // sample_tree holds one duplicated 300 KiB file, and a symlink whose 13-byte target is
    // stored as new data without being a source byte read.
    let dedup = value(&first, "kmover_run_deduplicated_bytes", "backup", source).unwrap();
    assert_eq!(dedup, (300 * 1024 - "../README.txt".len()) as f64);
    let success_at = value(
        &first,
        "kmover_last_success_timestamp_seconds",
        "backup",
        source,
    )
    .unwrap();
    assert!(
        success_at >= started && success_at <= started + 600.0,
        "{success_at}"
    );

    // Unchanged data again: nothing new to upload, everything deduplicated (cached files).
    std::fs::write(tree.join("new.txt"), common::text_bytes(9, 50_000)).unwrap();
    kmover.run(backup(&[tree.to_str().unwrap()]));
    let second = textfile(&prom);
    let dedup = value(&second, "kmover_run_deduplicated_bytes", "backup", source).unwrap();
    // Unchanged entries are reused whole, the symlink's 13 bytes included.
    let unchanged = stats.bytes + "../README.txt".len() as u64;
    assert_eq!(dedup, unchanged as f64, "all old bytes were already stored");
    assert_eq!(
        value(&second, "kmover_run_read_bytes", "backup", source),
        Some(50_000.0),
        "only the new file is read"
    );

    // A failed backup of the same source: success 0, the last success time is kept.
    let failed = kmover.runner().run_expecting_failure(backup(&[dir
        .path()
        .join("missing")
        .to_str()
        .unwrap()]));
    assert_eq!(failed.status.code(), Some(1));
    let third = textfile(&prom);
    assert_eq!(
        value(&third, "kmover_run_success", "backup", source),
        Some(0.0)
    );
    assert_eq!(
        value(
            &third,
            "kmover_last_success_timestamp_seconds",
            "backup",
            source
        ),
        value(
            &second,
            "kmover_last_success_timestamp_seconds",
            "backup",
            source
        )
    );

    // A restore adds its own series beside the backup's.
    let target = dir.path().join("restored");
    let mut restore: Vec<String> = vec!["snapshot".into(), "restore".into()];
    restore.extend(metrics_flags.iter().cloned());
    let latest = kmover.run(["snapshot", "list", "--all", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&latest.stdout).unwrap();
    let id = listed.last().unwrap()["id"].as_str().unwrap().to_string();
    restore.push(id);
    restore.push(target.to_str().unwrap().into());
    kmover.run(restore);
    let last = textfile(&prom);
    assert_eq!(
        value(&last, "kmover_run_success", "restore", source),
        Some(1.0)
    );
    assert_eq!(
        value(&last, "kmover_run_written_bytes", "restore", source),
        Some((stats.bytes + 50_000) as f64)
    );
    assert!(value(&last, "kmover_run_read_bytes", "restore", source).unwrap() > 0.0);
    assert_eq!(
        value(&last, "kmover_run_success", "backup", source),
        Some(0.0)
    );

    // Each run pushed its group; the latest push of each group equals the textfile's series.
    let pushes = pushed.lock().unwrap().clone();
    assert_eq!(pushes.len(), 4, "{pushes:#?}");
    assert!(pushes.iter().all(|p| p.method == "POST"));
    let mut latest_push: BTreeMap<BTreeMap<String, String>, Series> = BTreeMap::new();
    for p in &pushes {
        let group = grouping_labels(&p.path);
        latest_push.insert(group.clone(), parse(&p.body, &group));
    }
    let groups: BTreeSet<String> = latest_push.keys().map(|g| g["operation"].clone()).collect();
    assert_eq!(groups, BTreeSet::from(["backup".into(), "restore".into()]));
    for (group, series) in &latest_push {
        let mut from_file: Series = last
            .iter()
            .filter(|((_, labels), _)| {
                labels.get("operation") == group.get("operation")
                    && labels.get("source") == group.get("source")
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        // A failed run does not push a last-success time (the Pushgateway keeps the old one).
        if series
            .keys()
            .all(|(n, _)| n != "kmover_last_success_timestamp_seconds")
        {
            from_file.retain(|(n, _), _| n != "kmover_last_success_timestamp_seconds");
        }
        assert_eq!(series, &from_file, "push of {group:?}");
    }
}

#[test]
fn bad_metrics_settings_fail_before_any_work() {
    let kmover = Kmover::new();
    let out = kmover.runner().run_expecting_failure([
        "--metrics-textfile=/nonexistent-kmover-dir/x.prom",
        "snapshot",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent-kmover-dir") && err.contains("does not exist"),
        "{err}"
    );
    let out = kmover.runner().run_expecting_failure([
        "--metrics-push-url=pushgateway:9091",
        "snapshot",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-push-url"));
}
