//! Retention against the real kopia under one fake clock: kopia (built with `-tags testing`) and
//! kmover (built with `--features testing`) take their time from the same fake-time server, take
//! turns creating several hundred snapshots of three sources spread irregularly over three years
//! (some incomplete, some pinned) into one repository, and then, for several policy combinations
//! and time zones, `snapshot expire --delete` by kopia on one copy and by kmover on another must
//! leave the same snapshots with the same retention reasons.
//!
//! Incomplete snapshots are made the way kopia makes them: `snapshot create --upload-limit-mb=1`
//! over more than 1 MiB of new data saves a snapshot whose `incomplete` is `limit reached`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use common::fake_clock::{FakeClock, ToolEnv};
use common::{Kmover, Kopia, KopiaVersion, RepositoryCli, TestRng, clip};
use serde_json::Value;

/// kopia's fast key derivation, to keep the many command starts cheap.
const FAST_KDF: &str = "--format-block-key-derivation-algorithm=pbkdf2-sha256-600000";

const ZONES: &[&str] = &["UTC", "America/New_York", "Asia/Kolkata"];

/// Snapshots planned per source before the trailing incomplete ones.
const PER_SOURCE: usize = 104;

const SOURCES: usize = 3;

/// Who writes a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Maker {
    Kopia,
    Kmover,
}

#[derive(Clone, Debug)]
struct Event {
    source: usize,
    at: DateTime<Utc>,
    maker: Maker,
    pin: Option<&'static str>,
    incomplete: bool,
}

fn start_of_history() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2021, 3, 1, 0, 0, 0).unwrap()
}

/// Three years of irregular snapshot times per source: bursts minutes apart, days, and gaps of
/// weeks, stretched to span the three years exactly. A few snapshots in the middle are incomplete
/// (pinned `hold` so that later snapshots' retention does not delete them), a few complete ones
/// are pinned `keep`, and two sources end with incomplete snapshots.
fn plan() -> Vec<Event> {
    let mut rng = TestRng::new(0x5eed_0005);
    let start = start_of_history();
    let span = (Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap() - start).num_seconds() as f64;
    let mut events = Vec::new();
    for source in 0..SOURCES {
        let mut offsets = Vec::with_capacity(PER_SOURCE);
        let mut t = 0.0f64;
        for _ in 0..PER_SOURCE {
            let gap_secs = match rng.below(100) {
                0..30 => 180 + rng.below(2 * 3600),
                30..55 => 2 * 3600 + rng.below(34 * 3600),
                55..80 => 86_400 + rng.below(19 * 86_400),
                _ => 10 * 86_400 + rng.below(30 * 86_400),
            };
            t += gap_secs as f64;
            offsets.push(t);
        }
        let scale = span / t;
        let first = start + TimeDelta::hours(7 * source as i64);
        for (i, offset) in offsets.iter().enumerate() {
            let at = first + TimeDelta::milliseconds((offset * scale * 1000.0) as i64)
                - TimeDelta::days(10);
            let incomplete = i + 1 < PER_SOURCE && rng.below(100) < 6;
            let pinned = !incomplete && rng.below(100) < 5;
            events.push(Event {
                source,
                at,
                maker: if incomplete || rng.below(2) == 0 {
                    Maker::Kopia
                } else {
                    Maker::Kmover
                },
                pin: if incomplete {
                    Some("hold")
                } else if pinned {
                    Some("keep")
                } else {
                    None
                },
                incomplete,
            });
        }
        // Trailing incomplete snapshots: five 70 minutes apart (some older than kopia's 4 hours),
        // or two 5 hours apart (old, but within the newest 3).
        let last = events.last().expect("planned above").at;
        let trailing: &[i64] = match source {
            0 => &[70, 140, 210, 280, 350],
            1 => &[300, 600],
            _ => &[],
        };
        for minutes in trailing {
            events.push(Event {
                source,
                at: last + TimeDelta::minutes(*minutes),
                maker: Maker::Kopia,
                pin: None,
                incomplete: true,
            });
        }
    }
    events.sort_by_key(|e| e.at);
    // Each command runs at real speed from its start; keep the next one clearly later.
    for i in 1..events.len() {
        let earliest = events[i - 1].at + TimeDelta::minutes(2);
        if events[i].at < earliest {
            events[i].at = earliest;
        }
    }
    events
}

/// One snapshot as `snapshot list --json` shows it, reduced to what retention decides.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    id: String,
    source: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    incomplete: String,
    pins: Vec<String>,
    reasons: Vec<String>,
}

impl Row {
    fn kept(&self) -> bool {
        !self.reasons.is_empty() || !self.pins.is_empty()
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn time(v: &Value, what: &str) -> DateTime<Utc> {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{what} {text:?}: {e}"))
        .with_timezone(&Utc)
}

fn row(m: &Value) -> Row {
    let src = &m["source"];
    Row {
        id: m["id"].as_str().expect("a snapshot ID").to_string(),
        source: format!(
            "{}@{}:{}",
            src["userName"].as_str().unwrap_or_default(),
            src["host"].as_str().unwrap_or_default(),
            src["path"].as_str().unwrap_or_default()
        ),
        start: time(&m["startTime"], "startTime"),
        end: time(&m["endTime"], "endTime"),
        incomplete: m["incomplete"].as_str().unwrap_or_default().to_string(),
        pins: strings(&m["pins"]),
        reasons: strings(&m["retentionReason"]),
    }
}

/// `snapshot list --all --json`, in the tool's order.
#[track_caller]
fn rows(tool: &impl RepositoryCli) -> Vec<Row> {
    let out = tool.run(["snapshot", "list", "--all", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "snapshot list printed invalid JSON ({e}):\n{}",
            clip(&out.stdout)
        )
    });
    list.as_array()
        .expect("snapshot list prints a JSON list")
        .iter()
        .map(row)
        .collect()
}

/// What differs between two listings (empty when they are identical, order included).
fn difference(left_name: &str, left: &[Row], right_name: &str, right: &[Row]) -> String {
    if left == right {
        return String::new();
    }
    let ids = |rows: &[Row]| rows.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>();
    let (l, r) = (ids(left), ids(right));
    let mut out = String::new();
    for id in l.difference(&r) {
        out.push_str(&format!("  only in {left_name}: {id}\n"));
    }
    for id in r.difference(&l) {
        out.push_str(&format!("  only in {right_name}: {id}\n"));
    }
    for a in left {
        if let Some(b) = right.iter().find(|b| b.id == a.id)
            && a != b
        {
            out.push_str(&format!(
                "  {}: {left_name}={a:?}\n    {right_name}={b:?}\n",
                a.id
            ));
        }
    }
    if out.is_empty() {
        out.push_str("  same snapshots, listed in a different order\n");
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Maintenance would refuse to run anyway (the repository's blobs carry real times, years after
/// the fake ones), failing the command that triggers it.
fn disable_maintenance(kopia: &Kopia) {
    kopia.run([
        "maintenance",
        "set",
        "--enable-quick=false",
        "--enable-full=false",
    ]);
}

fn kopia_on(test: &str, clock: &FakeClock, tz: &str) -> Kopia {
    let mut kopia = Kopia::find(KopiaVersion::V0_22Testing, test).expect("found before");
    kopia.follow_clock(clock);
    kopia.set_time_zone(tz);
    kopia
}

fn kmover_on(clock: &FakeClock, tz: &str) -> Kmover {
    let mut kmover = Kmover::new();
    kmover.follow_clock(clock);
    kmover.set_time_zone(tz);
    kmover
}

/// `policy set` flags for the six retention counts (latest, hourly, daily, weekly, monthly,
/// annual); `None` is `inherit`.
fn retention_flags(counts: [Option<u32>; 6]) -> Vec<String> {
    const FLAGS: [&str; 6] = [
        "--keep-latest",
        "--keep-hourly",
        "--keep-daily",
        "--keep-weekly",
        "--keep-monthly",
        "--keep-annual",
    ];
    FLAGS
        .iter()
        .zip(counts)
        .map(|(flag, n)| {
            format!(
                "{flag}={}",
                n.map_or("inherit".to_string(), |n| n.to_string())
            )
        })
        .collect()
}

const I: Option<u32> = None;

/// Policy combinations: the global counts, then each source's own (all `inherit` when `None`).
type Combination = (&'static str, [u32; 6], [Option<[Option<u32>; 6]>; SOURCES]);

fn combinations() -> Vec<Combination> {
    vec![
        (
            "kopia's defaults",
            [10, 48, 7, 4, 24, 3],
            [None, None, None],
        ),
        ("latest only", [5, 0, 0, 0, 0, 0], [None, None, None]),
        (
            "all zero (keeps everything) with per-source overrides",
            [0, 0, 0, 0, 0, 0],
            [
                None,
                Some([I, I, Some(14), I, I, I]),
                Some([Some(0), Some(0), Some(0), Some(3), Some(0), Some(0)]),
            ],
        ),
        (
            "large values",
            [1000, 10000, 3000, 500, 100, 50],
            [None, None, None],
        ),
        (
            "weekly and monthly IDs colliding",
            [0, 0, 0, 60, 12, 0],
            [None, None, Some([Some(1), Some(0), Some(0), I, I, Some(2)])],
        ),
        (
            "mixed per source",
            [3, 24, 7, 0, 6, 1],
            [
                Some([I, Some(100), Some(0), Some(8), I, I]),
                Some([Some(0), Some(0), Some(30), Some(0), Some(0), Some(0)]),
                Some([Some(2), I, I, Some(52), Some(36), Some(0)]),
            ],
        ),
        (
            "hourly and daily heavy",
            [0, 500, 90, 0, 0, 0],
            [Some([Some(1), Some(72), Some(10), I, I, I]), None, None],
        ),
    ]
}

/// The incomplete snapshot needs more than `--upload-limit-mb=1` of data to hash.
const INCOMING: &str = "incoming.bin";
const INCOMING_LEN: usize = 1_300_000;

/// Creates one planned snapshot and returns the manifest the tool printed.
#[track_caller]
fn create(kopia: &Kopia, kmover: &Kmover, dir: &Path, event: &Event, index: usize) -> Value {
    std::fs::write(dir.join("counter.txt"), format!("event {index}\n")).unwrap();
    if event.incomplete {
        std::fs::write(dir.join(INCOMING), vec![0u8; INCOMING_LEN]).unwrap();
    }
    let mut args: Vec<String> = vec![
        "snapshot".into(),
        "create".into(),
        dir.display().to_string(),
        "--json".into(),
    ];
    if let Some(pin) = event.pin {
        args.extend(["--pin".into(), pin.into()]);
    }
    if event.incomplete {
        args.push("--upload-limit-mb=1".into());
    }
    let out = match event.maker {
        Maker::Kopia => kopia.run(&args),
        Maker::Kmover => kmover.run(&args),
    };
    if event.incomplete {
        std::fs::remove_file(dir.join(INCOMING)).unwrap();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{:?} printed no manifest ({e}):\n{}",
            event.maker,
            clip(&out.stdout)
        )
    })
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs --features testing (kmover's fake clock)"
)]
fn expire_leaves_what_kopia_leaves_for_three_years_of_snapshots() {
    let test = "expire_leaves_what_kopia_leaves_for_three_years_of_snapshots";
    if Kopia::find(KopiaVersion::V0_22Testing, test).is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    let clock = FakeClock::start(start_of_history() - TimeDelta::days(30));
    let kopia = kopia_on(test, &clock, "UTC");
    let kmover = kmover_on(&clock, "UTC");
    kopia.create_filesystem_repo(&base, &[FAST_KDF]);
    disable_maintenance(&kopia);
    // Keep everything while building (retention runs after every snapshot).
    kopia.set_global_policy(&["--keep-latest=1000000"]);
    kmover.connect_filesystem(&base);

    let dirs: Vec<PathBuf> = (0..SOURCES)
        .map(|s| {
            let dir = work.path().join(format!("source-{s}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("data.txt"), format!("source {s}\n")).unwrap();
            dir
        })
        .collect();

    // Build the history: every snapshot's times come from the fake clock.
    let events = plan();
    let mut made_by = [0usize; 2];
    for (index, event) in events.iter().enumerate() {
        clock.set(event.at);
        let m = create(&kopia, &kmover, &dirs[event.source], event, index);
        made_by[usize::from(event.maker == Maker::Kmover)] += 1;
        let start = time(&m["startTime"], "startTime");
        let drift = start - event.at;
        assert!(
            drift >= TimeDelta::zero() && drift < TimeDelta::minutes(2),
            "{:?} started snapshot {index} at {start}, not at the fake time {}",
            event.maker,
            event.at
        );
        let incomplete = m["incomplete"].as_str().unwrap_or_default();
        let want = if event.incomplete {
            "limit reached"
        } else {
            ""
        };
        assert_eq!(incomplete, want, "snapshot {index} by {:?}", event.maker);
    }
    let created = events.len();
    let last = events.last().expect("a plan").at;

    // Pins changed later, by both tools: half of the held incomplete snapshots are let go, and a
    // few complete ones are pinned by ID and one by its root object ID.
    clock.set(last + TimeDelta::days(1));
    let before = rows(&kopia);
    let held: Vec<&Row> = before
        .iter()
        .filter(|r| r.pins.contains(&"hold".to_string()))
        .collect();
    for (i, r) in held.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let args = ["snapshot", "pin", r.id.as_str(), "--remove", "hold"];
        if i % 4 == 0 {
            kopia.run(args);
        } else {
            kmover.run(args);
        }
    }
    let unpinned: Vec<&Row> = before
        .iter()
        .filter(|r| r.pins.is_empty() && r.incomplete.is_empty())
        .collect();
    let pick = |n: usize| unpinned[n * unpinned.len() / 8].id.as_str();
    kopia.run(["snapshot", "pin", pick(1), pick(2), "--add", "keep"]);
    kmover.run(["snapshot", "pin", pick(3), pick(4), "--add", "keep"]);
    kmover.run([
        "snapshot",
        "pin",
        pick(5),
        "--add",
        "keep",
        "--add",
        "audit",
    ]);
    let by_root = {
        let out = kopia.run(["snapshot", "list", "--all", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = pick(6);
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .and_then(|m| m["rootEntry"]["obj"].as_str())
            .expect("the picked snapshot has a root")
            .to_string()
    };
    kmover.run(["snapshot", "pin", by_root.as_str(), "--add", "root"]);

    let base_rows = rows(&kopia);
    let total = base_rows.len();
    let incomplete = base_rows
        .iter()
        .filter(|r| !r.incomplete.is_empty())
        .count();
    let pinned = base_rows.iter().filter(|r| !r.pins.is_empty()).count();
    let unpinned_incomplete = base_rows
        .iter()
        .filter(|r| !r.incomplete.is_empty() && r.pins.is_empty())
        .count();
    assert!(total >= 300, "only {total} snapshots in the repository");
    assert!(
        incomplete >= 10 && pinned >= 15 && unpinned_incomplete >= 5,
        "{incomplete} incomplete ({unpinned_incomplete} unpinned), {pinned} pinned"
    );
    assert_eq!(
        difference("kopia", &base_rows, "kmover", &rows(&kmover)),
        "",
        "both tools list the built repository alike"
    );

    // Each combination: policies set (by either tool) in the base, then per zone two copies.
    let mut mismatches: Vec<String> = Vec::new();
    let mut compared = 0usize;
    let mut expired_total = 0usize;
    // Combinations whose reasons differ between zones: the zones are really exercised.
    let mut zone_dependent = 0usize;
    // Each zone's view of the base repository, by both tools.
    let base_views: Vec<(Kopia, Kmover)> = ZONES
        .iter()
        .map(|tz| {
            let kopia = kopia_on(test, &clock, tz);
            kopia.connect_filesystem(&base);
            let kmover = kmover_on(&clock, tz);
            kmover.connect_filesystem(&base);
            (kopia, kmover)
        })
        .collect();
    let mut now = last + TimeDelta::days(2);
    for (case, (name, global, per_source)) in combinations().into_iter().enumerate() {
        clock.set(now);
        let setter: &dyn Fn(&[String]) = if case % 2 == 0 {
            &|args: &[String]| {
                kopia.run(args);
            }
        } else {
            &|args: &[String]| {
                kmover.run(args);
            }
        };
        let mut args: Vec<String> = vec!["policy".into(), "set".into(), "--global".into()];
        args.extend(retention_flags(global.map(Some)));
        setter(&args);
        for (dir, counts) in dirs.iter().zip(per_source) {
            let mut args: Vec<String> =
                vec!["policy".into(), "set".into(), dir.display().to_string()];
            args.extend(retention_flags(counts.unwrap_or([I; 6])));
            setter(&args);
        }
        let expire_at = now + TimeDelta::hours(1);
        let mut judged_by_zone: Vec<Vec<Row>> = Vec::new();

        for (tz, (base_kopia, base_kmover)) in ZONES.iter().zip(&base_views) {
            let what = format!("case {case} ({name}) in {tz}");
            let judged = rows(base_kopia);
            let diff = difference("kopia", &judged, "kmover", &rows(base_kmover));
            if !diff.is_empty() {
                mismatches.push(format!("{what}: reasons before expiring differ:\n{diff}"));
            }
            let want_kept: BTreeSet<String> = judged
                .iter()
                .filter(|r| r.kept())
                .map(|r| r.id.clone())
                .collect();
            expired_total += judged.len() - want_kept.len();

            let slot = |tool: &str| {
                work.path()
                    .join(format!("{tool}-{case}-{}", tz.replace('/', "-")))
            };
            let (by_kopia, by_kmover) = (slot("kopia"), slot("kmover"));
            copy_dir(&base, &by_kopia);
            copy_dir(&base, &by_kmover);
            let kopia_k = kopia_on(test, &clock, tz);
            kopia_k.connect_filesystem(&by_kopia);
            let kmover_k = kmover_on(&clock, tz);
            kmover_k.connect_filesystem(&by_kopia);
            let kopia_m = kopia_on(test, &clock, tz);
            kopia_m.connect_filesystem(&by_kmover);
            let kmover_m = kmover_on(&clock, tz);
            kmover_m.connect_filesystem(&by_kmover);

            clock.set(expire_at);
            kopia_k.run(["snapshot", "expire", "--all", "--delete"]);
            clock.set(expire_at);
            kmover_m.run(["snapshot", "expire", "--all", "--delete"]);

            let views = [
                ("kopia reading kopia's copy", rows(&kopia_k)),
                ("kmover reading kopia's copy", rows(&kmover_k)),
                ("kopia reading kmover's copy", rows(&kopia_m)),
                ("kmover reading kmover's copy", rows(&kmover_m)),
            ];
            let (reference_name, reference) = &views[0];
            for (view_name, view) in &views[1..] {
                let diff = difference(reference_name, reference, view_name, view);
                if !diff.is_empty() {
                    mismatches.push(format!("{what}: after expiring:\n{diff}"));
                }
            }
            let left: BTreeSet<String> = reference.iter().map(|r| r.id.clone()).collect();
            if left != want_kept {
                mismatches.push(format!(
                    "{what}: kopia kept {} snapshots, but {} had a reason or a pin",
                    left.len(),
                    want_kept.len()
                ));
            }
            compared += 1;
            eprintln!(
                "{what}: {} of {} snapshots kept",
                want_kept.len(),
                judged.len()
            );
            judged_by_zone.push(judged);
            std::fs::remove_dir_all(&by_kopia).unwrap();
            std::fs::remove_dir_all(&by_kmover).unwrap();
        }
        if judged_by_zone.windows(2).any(|w| w[0] != w[1]) {
            zone_dependent += 1;
        }
        now += TimeDelta::days(1);
    }

    eprintln!(
        "retention oracle: {created} snapshots created ({} by kopia, {} by kmover), {total} in the \
         repository ({incomplete} incomplete, {pinned} pinned); {} combinations x {} zones = \
         {compared} comparisons ({zone_dependent} combinations decide differently by zone); \
         {expired_total} expirations; {} mismatches; {} clock requests",
        made_by[0],
        made_by[1],
        combinations().len(),
        ZONES.len(),
        mismatches.len(),
        clock.requests()
    );
    assert!(
        zone_dependent > 0,
        "no combination depends on the time zone: the zones would be vacuous"
    );
    assert!(
        expired_total > 0,
        "no combination expired anything: the comparison would be vacuous"
    );
    assert!(
        made_by[0] > 50 && made_by[1] > 50,
        "both tools made snapshots: {made_by:?}"
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs --features testing (kmover's fake clock)"
)]
fn kmover_takes_its_time_from_the_fake_clock() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    let clock = FakeClock::start(Utc.with_ymd_and_hms(2019, 12, 31, 23, 0, 0).unwrap());
    let mut kmover = Kmover::new();
    kmover.follow_clock(&clock);
    kmover.create_filesystem_repo(&repo, &[]);

    let mut starts = Vec::new();
    for jump in [
        TimeDelta::zero(),
        TimeDelta::days(400),
        -TimeDelta::days(30),
    ] {
        clock.advance(jump);
        let expected = clock.now();
        let out = kmover.run(["snapshot", "create", data.to_str().unwrap(), "--json"]);
        let m: Value = serde_json::from_slice(&out.stdout).unwrap();
        let start = time(&m["startTime"], "startTime");
        let end = time(&m["endTime"], "endTime");
        assert!(
            start >= expected && start - expected < TimeDelta::minutes(2) && end >= start,
            "snapshot times {start}..{end}, fake time {expected}"
        );
        starts.push(start);
    }
    assert!(starts[1] - starts[0] > TimeDelta::days(399));
    assert!(clock.requests() >= 4, "{} requests", clock.requests());

    // A bad endpoint stops the command before it touches the repository.
    for endpoint in ["http://127.0.0.1:1/", "not-a-url"] {
        kmover
            .runner_mut()
            .set_env(common::fake_clock::ENDPOINT_VAR, endpoint);
        let out = kmover.runner().run_expecting_failure(["snapshot", "list"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unable to get fake time from KOPIA_FAKE_CLOCK_ENDPOINT")
                && stderr.contains(endpoint),
            "{stderr}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs --features testing (kmover's fake clock)"
)]
fn pins_and_json_listing_match_kopia() {
    let test = "pins_and_json_listing_match_kopia";
    if Kopia::find(KopiaVersion::V0_22Testing, test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    let clock = FakeClock::start(Utc.with_ymd_and_hms(2022, 5, 1, 8, 0, 0).unwrap());
    let kopia = kopia_on(test, &clock, "UTC");
    let kmover = kmover_on(&clock, "UTC");
    kopia.create_filesystem_repo(&repo, &[FAST_KDF]);
    disable_maintenance(&kopia);
    kmover.connect_filesystem(&repo);
    let path = data.to_str().unwrap();

    let complete = kmover.run(["snapshot", "create", path, "--json", "--pin", "b"]);
    let complete: Value = serde_json::from_slice(&complete.stdout).unwrap();
    clock.advance(TimeDelta::hours(1));
    std::fs::write(data.join(INCOMING), vec![0u8; INCOMING_LEN]).unwrap();
    kopia.run(["snapshot", "create", path, "--upload-limit-mb=1"]);
    std::fs::remove_file(data.join(INCOMING)).unwrap();
    clock.advance(TimeDelta::hours(1));
    // Same files as the first snapshot: the same root object.
    kopia.run([
        "snapshot",
        "create",
        path,
        "--override-source",
        "other@elsewhere:/x",
    ]);

    // kopia's JSON lists other hosts and incomplete snapshots even without --all / -i.
    let k = list_json(&kopia);
    assert_eq!(k.len(), 3, "{k:?}");
    assert_eq!(difference("kopia", &k, "kmover", &list_json(&kmover)), "");

    // Pins: by ID (which gives the snapshot a new ID), by root object ID, and the errors.
    clock.advance(TimeDelta::hours(1));
    let id = complete["id"].as_str().unwrap();
    kmover.run([
        "snapshot", "pin", id, "--add", "a", "--add", "c", "--remove", "b",
    ]);
    let root = complete["rootEntry"]["obj"].as_str().unwrap();
    kopia.run(["snapshot", "pin", root, "--add", "z"]);
    let k = list_json(&kopia);
    assert_eq!(difference("kopia", &k, "kmover", &list_json(&kmover)), "");
    let pinned: Vec<&Row> = k.iter().filter(|r| !r.pins.is_empty()).collect();
    assert_eq!(pinned.len(), 2, "{k:?}");
    assert!(
        pinned.iter().all(|r| r.id != id),
        "the pinned snapshot got a new ID"
    );
    let ours = pinned
        .iter()
        .find(|r| r.source.ends_with(path))
        .expect("our snapshot is pinned");
    assert_eq!(ours.pins, ["a", "c", "z"]);
    let other = pinned
        .iter()
        .find(|r| r.source == "other@elsewhere:/x")
        .expect("the other source's snapshot has the same root");
    assert_eq!(other.pins, ["z"]);

    for args in [
        vec!["snapshot", "pin", id, "--add", "x"],
        vec!["snapshot", "pin", "zzz", "--add", "x"],
        vec!["snapshot", "pin", root],
    ] {
        let k = kopia.runner().run_expecting_failure(&args);
        let m = kmover.runner().run_expecting_failure(&args);
        let first_line = |out: &std::process::Output| {
            let text = String::from_utf8_lossy(&out.stderr);
            let line = text.lines().last().unwrap_or_default().to_string();
            // kmover prefixes "ERROR "; kopia's message is the rest.
            let line = line.strip_prefix("ERROR ").unwrap_or(&line).to_string();
            line.split(": ").take(2).collect::<Vec<_>>().join(": ")
        };
        assert_eq!(first_line(&m), first_line(&k), "{}", args.join(" "));
    }
}

/// `snapshot list --json` (no other flags).
#[track_caller]
fn list_json(tool: &impl RepositoryCli) -> Vec<Row> {
    let out = tool.run(["snapshot", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "snapshot list printed invalid JSON ({e}):\n{}",
            clip(&out.stdout)
        )
    });
    list.as_array()
        .expect("a JSON list")
        .iter()
        .map(row)
        .collect()
}
