//! Run metrics for backup, restore, verify and maintenance: written to a node-exporter textfile
//! (`--metrics-textfile`) and/or pushed to a Prometheus Pushgateway (`--metrics-push-url`).
//! docs/metrics.md lists the series.
//!
//! Any operation reports the same way — build one [`RunReport`] per source and call [`report`]:
//!
//! ```ignore
//! let started = chrono::Utc::now();
//! let io = metrics::IoTotals::now();
//! // … the work …
//! let moved = metrics::IoTotals::now().since(io);
//! metrics::report(&[metrics::RunReport {
//!     operation: metrics::Operation::Maintenance,
//!     source: "maintenance@volsync".into(),
//!     success: true,
//!     started,
//!     finished: chrono::Utc::now(),
//!     read_bytes: moved.read_bytes,
//!     written_bytes: moved.written_bytes,
//!     deduplicated_bytes: None,
//!     files: 0,
//!     errors: 0,
//! }]).await;
//! ```
//!
//! Every series is a gauge describing the latest run of one (operation, source) pair; a failed
//! run keeps the previous `kmover_last_success_timestamp_seconds`, so "time since the last good
//! backup" alerts keep working.

mod io;
mod push;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

pub use io::{IoTotals, count_io, take_data_packs};
use text::{Exposition, Labels};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Backup,
    Restore,
    Verify,
    #[allow(dead_code)] // reported by maintenance
    Maintenance,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Restore => "restore",
            Operation::Verify => "verify",
            Operation::Maintenance => "maintenance",
        }
    }
}

/// The outcome of one operation on one source.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    pub operation: Operation,
    /// `user@host:/path` (kopia's source form); for maintenance, the maintenance identity.
    pub source: String,
    pub success: bool,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Backup: bytes read from the source files. Restore, verify: bytes read from the repository.
    pub read_bytes: u64,
    /// Backup, maintenance: bytes written to the repository. Restore: file bytes written.
    pub written_bytes: u64,
    /// Backup only: source bytes that did not have to be uploaded (already in the repository).
    pub deduplicated_bytes: Option<u64>,
    /// Files backed up, restored or verified.
    pub files: u64,
    pub errors: u64,
}

/// Where metrics go; from the global flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub textfile: Option<PathBuf>,
    /// Base URL of a Pushgateway (`http://pushgateway:9091`).
    pub push_url: Option<String>,
    /// The `job` label of pushed series.
    pub job: String,
}

impl Targets {
    /// Checks the settings before any work starts, so a typo fails fast instead of after a
    /// long backup.
    pub fn new(
        textfile: Option<PathBuf>,
        push_url: Option<String>,
        job: &str,
    ) -> anyhow::Result<Self> {
        if let Some(path) = &textfile {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                bail!(
                    "--metrics-textfile {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                );
            }
            if path.is_dir() {
                bail!("--metrics-textfile {} is a directory", path.display());
            }
        }
        if let Some(url) = &push_url {
            push::check_url(url)?;
        }
        if job.is_empty()
            || !job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            bail!("--metrics-job {job:?}: use letters, digits, '_', '.' and '-'");
        }
        Ok(Targets {
            textfile,
            push_url,
            job: job.to_string(),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.textfile.is_some() || self.push_url.is_some()
    }
}

static TARGETS: OnceLock<Targets> = OnceLock::new();

/// Sets the targets [`report`] uses; the first call wins (main calls it once).
pub fn configure(targets: Targets) {
    let _ = TARGETS.set(targets);
}

/// Publishes `reports` to the configured targets. Failing to publish is reported on stderr and
/// does not change the outcome of the operation, which is already done.
pub async fn report(reports: &[RunReport]) {
    let Some(targets) = TARGETS.get().filter(|t| t.is_enabled()) else {
        return;
    };
    if let Err(e) = publish(targets, reports).await {
        crate::logging::status(&format!("WARNING could not publish metrics: {e:#}"));
    }
}

/// Writes and pushes `reports` to `targets`.
pub async fn publish(targets: &Targets, reports: &[RunReport]) -> anyhow::Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let mut errors = Vec::new();
    if let Some(path) = &targets.textfile
        && let Err(e) = write_textfile(path, reports)
    {
        errors.push(format!("{e:#}"));
    }
    if let Some(url) = &targets.push_url {
        for r in reports {
            let group = [
                ("operation", r.operation.as_str()),
                ("source", r.source.as_str()),
            ];
            let body = series(std::slice::from_ref(r), false).render();
            if let Err(e) = push::push(url, &targets.job, &group, body).await {
                errors.push(format!("{e:#}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

pub const RUN_SUCCESS: &str = "kmover_run_success";
pub const RUN_DURATION: &str = "kmover_run_duration_seconds";
pub const RUN_READ: &str = "kmover_run_read_bytes";
pub const RUN_WRITTEN: &str = "kmover_run_written_bytes";
pub const RUN_DEDUPLICATED: &str = "kmover_run_deduplicated_bytes";
pub const RUN_FILES: &str = "kmover_run_files";
pub const RUN_ERRORS: &str = "kmover_run_errors";
pub const RUN_END: &str = "kmover_run_end_timestamp_seconds";
pub const LAST_SUCCESS: &str = "kmover_last_success_timestamp_seconds";

/// The series of `reports`; `with_identity` adds the `operation` and `source` labels (a push
/// carries them in its grouping key instead).
pub fn series(reports: &[RunReport], with_identity: bool) -> Exposition {
    let mut e = Exposition::default();
    for r in reports {
        let labels: Labels = if with_identity {
            identity(r.operation.as_str(), &r.source)
        } else {
            Labels::new()
        };
        let mut add = |name: &str, help: &str, value: f64| {
            e.add(name, help, "gauge", labels.clone(), value);
        };
        let seconds = |t: DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;
        add(
            RUN_SUCCESS,
            "Whether the latest run succeeded (1) or failed (0).",
            if r.success { 1.0 } else { 0.0 },
        );
        add(
            RUN_DURATION,
            "Duration of the latest run.",
            ((r.finished - r.started).num_milliseconds().max(0) as f64) / 1000.0,
        );
        add(
            RUN_READ,
            "Bytes the latest run read: source files for a backup, repository data otherwise.",
            r.read_bytes as f64,
        );
        add(
            RUN_WRITTEN,
            "Bytes the latest run wrote: to the repository, or restored file data.",
            r.written_bytes as f64,
        );
        if let Some(d) = r.deduplicated_bytes {
            add(
                RUN_DEDUPLICATED,
                "Source bytes the latest backup did not upload because the repository had them.",
                d as f64,
            );
        }
        add(
            RUN_FILES,
            "Files the latest run backed up, restored or verified.",
            r.files as f64,
        );
        add(RUN_ERRORS, "Errors in the latest run.", r.errors as f64);
        add(
            RUN_END,
            "When the latest run ended (Unix time).",
            seconds(r.finished),
        );
        if r.success {
            add(
                LAST_SUCCESS,
                "When the latest successful run ended (Unix time).",
                seconds(r.finished),
            );
        }
    }
    e
}

fn identity(operation: &str, source: &str) -> Labels {
    Labels::from([
        ("operation".to_string(), operation.to_string()),
        ("source".to_string(), source.to_string()),
    ])
}

/// Merges `reports` into the textfile: series of other sources stay; a failed run keeps its
/// source's previous last-success time. Written to a temporary file and renamed, so
/// node-exporter never reads half a file.
fn write_textfile(path: &Path, reports: &[RunReport]) -> anyhow::Result<()> {
    let mut merged = match std::fs::read_to_string(path) {
        Ok(text) => Exposition::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a metrics file kmover can update ({e}); remove it or choose another path",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Exposition::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for r in reports {
        let id = identity(r.operation.as_str(), &r.source);
        for (name, family) in merged.families.iter_mut() {
            if name == LAST_SUCCESS && !r.success {
                continue;
            }
            family.samples.retain(|s| s.labels != id);
        }
    }
    for (name, family) in series(reports, true).families {
        for s in family.samples {
            merged.add(&name, &family.help, &family.kind, s.labels, s.value);
        }
    }
    merged.prune();
    let file_name = path
        .file_name()
        .context("the metrics textfile path has no file name")?;
    let mut temporary = file_name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    std::fs::write(&temporary, merged.render())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| {
        let _ = std::fs::remove_file(&temporary);
        format!("cannot replace {}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(source: &str, success: bool, finished_secs: i64) -> RunReport {
        RunReport {
            operation: Operation::Backup,
            source: source.into(),
            success,
            started: DateTime::from_timestamp(finished_secs - 90, 0).unwrap(),
            finished: DateTime::from_timestamp(finished_secs, 500_000_000).unwrap(),
            read_bytes: 1000,
            written_bytes: 400,
            deduplicated_bytes: Some(600),
            files: 7,
            errors: u64::from(!success),
        }
    }

    fn value(e: &Exposition, name: &str, source: &str) -> Option<f64> {
        e.families.get(name).and_then(|f| {
            f.samples
                .iter()
                .find(|s| s.labels.get("source").map(String::as_str) == Some(source))
                .map(|s| s.value)
        })
    }

    #[test]
    fn failed_run_keeps_the_last_success_and_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmover.prom");
        write_textfile(
            &path,
            &[report("a@h:/x", true, 1000), report("b@h:/y", true, 1100)],
        )
        .unwrap();
        write_textfile(&path, &[report("a@h:/x", false, 2000)]).unwrap();
        let e = Exposition::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value(&e, LAST_SUCCESS, "a@h:/x"), Some(1000.5));
        assert_eq!(value(&e, RUN_END, "a@h:/x"), Some(2000.5));
        assert_eq!(value(&e, RUN_SUCCESS, "a@h:/x"), Some(0.0));
        assert_eq!(value(&e, RUN_ERRORS, "a@h:/x"), Some(1.0));
        assert_eq!(value(&e, RUN_DURATION, "a@h:/x"), Some(90.5));
        assert_eq!(value(&e, LAST_SUCCESS, "b@h:/y"), Some(1100.5));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_foreign_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.prom");
        std::fs::write(&path, "this is not { metrics\n").unwrap();
        let err = write_textfile(&path, &[report("a@h:/x", true, 1)]).unwrap_err();
        assert!(format!("{err:#}").contains("not a metrics file"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "this is not { metrics\n"
        );
    }

    #[test]
    fn targets_are_checked_up_front() {
        let missing = Targets::new(Some("/nonexistent-dir/k.prom".into()), None, "kmover");
        assert!(format!("{:#}", missing.unwrap_err()).contains("does not exist"));
        assert!(Targets::new(None, Some("ftp://x".into()), "kmover").is_err());
        assert!(Targets::new(None, None, "bad/job").is_err());
        let ok = Targets::new(None, Some("http://127.0.0.1:9091".into()), "kmover").unwrap();
        assert!(ok.is_enabled());
    }
}
