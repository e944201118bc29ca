//! Policies and retention against the real kopia: a policy written by either tool is listed and
//! shown byte-for-byte the same by both, and kmover's retention keeps exactly the snapshots (and
//! gives exactly the reasons) kopia does, in several time zones.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Kmover, Kopia, KopiaVersion, PASSWORD, RepositoryCli, clip, locate_kopia};
use kmover_blob::DynBlobStore;
use kmover_blob::fs::FilesystemStore;
use kmover_repo::{OpenOptions, Repository};
use kmover_snapshot::retention::{LocalZone, expire, judge_snapshots, snapshot_sources};
use kmover_snapshot::snapshots::list_snapshots;
use serde_json::Value;

const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both tools' `policy list --json`, `policy show --json` and `policy show` for every target must
/// be byte-identical.
#[track_caller]
fn assert_same_view(kopia: &Kopia, kmover: &Kmover, targets: &[&[&str]]) {
    let list = |tool: &dyn Fn(&[&str]) -> Output| stdout(&tool(&["policy", "list", "--json"]));
    let k = |args: &[&str]| kopia.run(args);
    let m = |args: &[&str]| kmover.run(args);
    assert_eq!(list(&m), list(&k), "policy list --json");
    for target in targets {
        for json in [true, false] {
            let mut args = vec!["policy", "show"];
            args.extend_from_slice(target);
            if json {
                args.push("--json");
            }
            assert_eq!(stdout(&m(&args)), stdout(&k(&args)), "{}", args.join(" "));
        }
    }
}

#[track_caller]
fn set(tool: &impl RepositoryCli, target: &str, flags: &[&str]) {
    let mut args = vec!["policy", "set", target];
    args.extend_from_slice(flags);
    tool.run(args);
}

#[test]
fn policies_written_by_either_tool_read_the_same_in_both() {
    let test = "policies_written_by_either_tool_read_the_same_in_both";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    let kmover = Kmover::new();
    kmover.connect_filesystem(&repo);

    let docs = "alice@laptop:/home/alice/docs";
    let home = "alice@laptop:/home/alice";
    let targets: [&[&str]; 5] = [
        &["--global"],
        &["@laptop"],
        &["alice@laptop"],
        &[home],
        &[docs],
    ];

    // kmover writes, kopia reads.
    set(
        &kmover,
        "--global",
        &[
            "--keep-latest",
            "5",
            "--compression",
            "zstd",
            "--add-never-compress",
            ".zip",
        ],
    );
    set(
        &kmover,
        "@laptop",
        &["--keep-daily", "3", "--max-parallel-snapshots", "2"],
    );
    set(
        &kmover,
        docs,
        &[
            "--add-ignore",
            "*.tmp",
            "--add-ignore",
            "a&<b>",
            "--snapshot-time",
            "9:30,17:05",
            "--snapshot-time-crontab",
            "0 3 * * mon-fri # weekdays",
            "--before-snapshot-root-action",
            "/bin/echo \"a b\" c",
            "--action-command-timeout",
            "90s",
            "--inherit=true",
        ],
    );
    set(
        &kmover,
        home,
        &[
            "--keep-weekly=-1",
            "--one-file-system",
            "true",
            "--inherit=false",
        ],
    );
    assert_same_view(&kopia, &kmover, &targets);

    // kopia writes, kmover reads; then each edits the other's policy.
    set(
        &kopia,
        "alice@laptop",
        &[
            "--keep-monthly",
            "2",
            "--log-entry-ignored",
            "10",
            "--splitter",
            "FIXED-1M",
        ],
    );
    set(
        &kopia,
        docs,
        &[
            "--snapshot-interval",
            "90m",
            "--remove-ignore",
            "*.tmp",
            "--parallel-upload-above-size-mib",
            "64",
        ],
    );
    assert_same_view(&kopia, &kmover, &targets);
    set(
        &kmover,
        "alice@laptop",
        &[
            "--keep-monthly",
            "inherit",
            "--manual",
            "--ignore-file-errors",
            "true",
        ],
    );
    set(
        &kopia,
        home,
        &[
            "--inherit=true",
            "--keep-annual",
            "7",
            "--compression-min-size",
            "4096",
        ],
    );
    assert_same_view(&kopia, &kmover, &targets);

    // Both resolve a policy's manifest ID as its target.
    let listed: Value =
        serde_json::from_slice(&kopia.run(["policy", "list", "--json"]).stdout).unwrap();
    let id = listed.as_array().unwrap()[1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        stdout(&kmover.run(["policy", "show", id.as_str()])),
        stdout(&kopia.run(["policy", "show", id.as_str()]))
    );

    // Deletions by either tool are seen by the other.
    kmover.run(["policy", "delete", "@laptop"]);
    assert_same_view(&kopia, &kmover, &targets);
    kopia.run(["policy", "delete", docs]);
    assert_same_view(&kopia, &kmover, &targets);

    // Both refuse the same mistakes.
    for args in [
        &["policy", "set", home, "--snapshot-time", "09:30"][..],
        &["policy", "set", home, "--max-parallel-snapshots", "2"],
        &[
            "policy",
            "set",
            home,
            "--snapshot-time-crontab",
            "61 * * * *",
        ],
        &["policy", "set", home],
        &["policy", "show"],
    ] {
        kopia.runner().run_expecting_failure(args);
        kmover.runner().run_expecting_failure(args);
    }
}

/// Snapshot start times (UTC) chosen around local-midnight, week, month, year and DST edges of
/// New York and Kolkata; `true` pins the snapshot.
const SNAPSHOTS_A: &[(&str, bool)] = &[
    ("2023-12-31 23:30:00", false),
    ("2024-01-01 00:30:00", false),
    ("2024-01-01 04:30:00", false),
    ("2024-01-01 05:30:00", false),
    ("2024-01-31 23:50:00", false),
    ("2024-02-01 00:10:00", false),
    ("2024-02-29 22:00:00", true),
    ("2024-03-03 18:15:00", false),
    ("2024-03-03 18:45:00", false),
    ("2024-03-09 04:30:00", false),
    ("2024-03-10 04:45:00", false),
    ("2024-03-10 05:15:00", false),
    ("2024-03-10 06:30:00", false),
    ("2024-03-10 07:30:00", false),
    ("2024-03-11 03:00:00", false),
    ("2024-03-17 18:20:00", false),
    ("2024-03-17 18:40:00", false),
    ("2024-03-18 03:50:00", false),
    ("2024-03-18 04:10:00", false),
    ("2024-04-30 23:00:00", false),
    ("2024-05-01 02:00:00", false),
    ("2024-09-01 12:00:00", false),
    ("2024-09-02 00:30:00", false),
    ("2024-09-15 23:00:00", true),
    ("2024-10-06 12:00:00", false),
    ("2024-10-20 12:00:00", false),
    ("2024-11-02 12:00:00", false),
    ("2024-11-03 05:30:00", false),
    ("2024-11-03 06:30:00", false),
    ("2024-12-01 12:00:00", false),
    ("2024-12-29 23:59:00", false),
    ("2024-12-30 00:30:00", false),
    ("2024-12-31 20:00:00", false),
    ("2025-01-05 10:00:00", false),
    ("2025-01-05 10:30:00", true),
    ("2025-01-05 11:00:00", false),
    ("2025-01-05 11:45:00", false),
    ("2025-01-05 12:00:00", false),
];

const SNAPSHOTS_B: &[(&str, bool)] = &[
    ("2024-06-01 10:00:00", false),
    ("2024-06-08 10:00:00", false),
    ("2024-12-30 00:30:00", false),
    ("2025-01-04 22:00:00", false),
    ("2025-01-05 09:00:00", false),
];

/// Global retention flags, and the path policy of source B, per case.
const POLICIES: &[(&[&str], &[&str])] = &[
    (
        &[
            "--keep-latest",
            "3",
            "--keep-hourly",
            "0",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "6",
            "--keep-monthly",
            "4",
            "--keep-annual",
            "0",
        ],
        &["--keep-latest", "inherit"],
    ),
    (
        &[
            "--keep-latest",
            "0",
            "--keep-hourly",
            "5",
            "--keep-daily",
            "10",
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
            "--keep-annual",
            "2",
        ],
        &["--keep-latest", "1"],
    ),
    (
        &[
            "--keep-latest",
            "10",
            "--keep-hourly",
            "48",
            "--keep-daily",
            "7",
            "--keep-weekly",
            "4",
            "--keep-monthly",
            "24",
            "--keep-annual",
            "3",
        ],
        &["--keep-latest", "inherit"],
    ),
    (
        &[
            "--keep-latest",
            "0",
            "--keep-hourly",
            "0",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "20",
            "--keep-monthly",
            "0",
            "--keep-annual",
            "0",
        ],
        &["--keep-weekly", "2"],
    ),
];

const ZONES: &[&str] = &["UTC", "America/New_York", "Asia/Kolkata"];

/// Runs kopia with `TZ` set (the harness's runner does not take extra environment).
#[track_caller]
fn kopia_in_zone(kopia: &Kopia, tz: &str, args: &[&str]) -> Output {
    let program = locate_kopia(KopiaVersion::V0_22).expect("kopia was found before");
    let out = Command::new(program)
        .arg("--config-file")
        .arg(kopia.runner().config_file())
        .arg("--log-dir")
        .arg(kopia.runner().home().join("logs"))
        .args(args)
        .current_dir(kopia.runner().home())
        .stdin(Stdio::null())
        .env("TZ", tz)
        .env("KOPIA_PASSWORD", PASSWORD)
        .env("KOPIA_CHECK_FOR_UPDATES", "false")
        .env_remove("KOPIA_CONFIG_PATH")
        .env_remove("KOPIA_CACHE_DIRECTORY")
        .output()
        .expect("kopia runs");
    assert!(
        out.status.success(),
        "kopia {} (TZ={tz}) failed:\n{}\n{}",
        args.join(" "),
        clip(&out.stdout),
        clip(&out.stderr)
    );
    out
}

/// id → (retention reasons, pins) from kopia's `snapshot list --all --json`.
fn kopia_reasons(kopia: &Kopia, tz: &str) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let out = kopia_in_zone(kopia, tz, &["snapshot", "list", "--all", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("snapshot list is JSON");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    list.as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            let id = m["id"].as_str().expect("an id").to_string();
            (id, (strings(&m["retentionReason"]), strings(&m["pins"])))
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn open_repo(path: &Path) -> Repository {
    let store: DynBlobStore = std::sync::Arc::new(FilesystemStore::open(path).await.unwrap());
    Repository::open(store, PASSWORD, OpenOptions::default())
        .await
        .unwrap()
}

fn start_and_end(start: &str) -> (String, String) {
    let t = chrono::NaiveDateTime::parse_from_str(start, "%Y-%m-%d %H:%M:%S").unwrap();
    let end = t + chrono::TimeDelta::seconds(1);
    (
        format!("{start} UTC"),
        format!("{} UTC", end.format("%Y-%m-%d %H:%M:%S")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_kopia_keeps_in_every_zone() {
    let test = "retention_keeps_what_kopia_keeps_in_every_zone";
    let Some(kopia) = Kopia::find(KopiaVersion::V0_22, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    kopia.create_filesystem_repo(&base, &[FAST_KDF]);
    // Keep everything while building; no maintenance runs in the copies.
    kopia.set_global_policy(&["--keep-latest", "1000000"]);
    kopia.run([
        "maintenance",
        "set",
        "--enable-quick=false",
        "--enable-full=false",
    ]);

    let sources = [("a", SNAPSHOTS_A), ("b", SNAPSHOTS_B)];
    for (name, times) in sources {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("file.txt"), name).unwrap();
        for (start, pin) in times {
            let (start, end) = start_and_end(start);
            let mut args = vec![
                "snapshot",
                "create",
                data.to_str().unwrap(),
                "--start-time",
                &start,
                "--end-time",
                &end,
            ];
            if *pin {
                args.extend(["--pin", "keep"]);
            }
            kopia.run(args);
        }
    }
    let source_b = dir.path().join("b");
    let source_b = source_b.to_str().unwrap();

    for (case, (global, for_b)) in POLICIES.iter().enumerate() {
        kopia.set_global_policy(global);
        let mut args = vec!["policy", "set", source_b];
        args.extend_from_slice(for_b);
        kopia.run(args);

        for tz in ZONES {
            let zone = LocalZone::named(tz)
                .unwrap_or_else(|| panic!("zoneinfo for {tz} is not installed"));
            let what = format!("policy case {case} in {tz}");

            // Same reasons, snapshot by snapshot.
            let want = kopia_reasons(&kopia, tz);
            assert_eq!(want.len(), SNAPSHOTS_A.len() + SNAPSHOTS_B.len());
            let repo = open_repo(&base).await;
            let all = list_snapshots(&repo, None)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, m)| m)
                .collect();
            let got: BTreeMap<String, (Vec<String>, Vec<String>)> =
                judge_snapshots(&repo, all, &zone)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.id, (d.reasons, d.pins)))
                    .collect();
            assert_eq!(got, want, "{what}");
            let kept: BTreeSet<String> = want
                .iter()
                .filter(|(_, (reasons, pins))| !reasons.is_empty() || !pins.is_empty())
                .map(|(id, _)| id.clone())
                .collect();
            assert!(
                kept.len() < want.len(),
                "{what}: the case should expire something"
            );

            // kopia deletes in one copy, kmover in another; kopia lists what is left of both.
            let by_kopia = dir
                .path()
                .join(format!("k-{case}-{}", tz.replace('/', "_")));
            let by_kmover = dir
                .path()
                .join(format!("m-{case}-{}", tz.replace('/', "_")));
            copy_dir(&base, &by_kopia);
            copy_dir(&base, &by_kmover);

            let kopia_copy = Kopia::find(KopiaVersion::V0_22, test).expect("found before");
            kopia_copy.connect_filesystem(&by_kopia);
            kopia_in_zone(
                &kopia_copy,
                tz,
                &["snapshot", "expire", "--all", "--delete"],
            );
            let left_by_kopia: BTreeSet<String> =
                kopia_reasons(&kopia_copy, tz).into_keys().collect();

            let repo = open_repo(&by_kmover).await;
            for source in snapshot_sources(&repo).await.unwrap() {
                expire(&repo, &source, true, &zone).await.unwrap();
            }
            repo.flush().await.unwrap();
            drop(repo);
            let reader = Kopia::find(KopiaVersion::V0_22, test).expect("found before");
            reader.connect_filesystem(&by_kmover);
            let left_by_kmover: BTreeSet<String> = kopia_reasons(&reader, tz).into_keys().collect();

            assert_eq!(
                left_by_kopia, kept,
                "{what}: kopia keeps the snapshots with reasons or pins"
            );
            assert_eq!(
                left_by_kmover, left_by_kopia,
                "{what}: survivors after kmover's expire"
            );
        }
    }
}
