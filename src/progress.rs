//! Progress for long operations (backup, restore, verify, maintenance): a live, redrawn bar when
//! stderr is a terminal; otherwise plain newline-terminated lines at an interval — VolSync and CI
//! read logs line by line, so never a carriage return there. With `--log-format=json` the lines are
//! JSON log records.
//!
//! An operation hands the display something to read: either [`Counters`] it updates as it goes
//! (the simple way, meant for new operations such as maintenance):
//!
//! ```ignore
//! let counters = Arc::new(progress::Counters::default());
//! counters.set_totals(Some(files), Some(bytes)); // when known: enables the bar and the ETA
//! let shown = progress::Progress::show("Maintenance", counters.clone());
//! counters.set_phase("rewriting packs");
//! counters.add(1, pack_len);
//! drop(shown); // stops the display and clears the bar
//! ```
//!
//! or its own [`ProgressSource`] over counters it already keeps.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Between plain lines when stderr is not a terminal.
const DEFAULT_LINE_INTERVAL: Duration = Duration::from_secs(5);
/// Between redraws of the bar (kopia's `--progress-update-interval` default).
const DEFAULT_BAR_INTERVAL: Duration = Duration::from_millis(300);
/// Throughput is measured over this trailing window, so it follows changes in speed.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How progress is shown, from the global flags; set once at start-up.
#[derive(Clone, Debug)]
pub struct ProgressConfig {
    /// `--no-progress` turns every display off.
    pub enabled: bool,
    /// `--progress-update-interval`; `None` picks 300 ms for the bar and 5 s for plain lines.
    pub interval: Option<Duration>,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        ProgressConfig {
            enabled: true,
            interval: None,
        }
    }
}

static CONFIG: OnceLock<ProgressConfig> = OnceLock::new();

/// Progress is a bar redrawn in place (else plain lines).
fn draws_a_bar() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("KMOVER_PLAIN_PROGRESS").is_none()
        && crate::logging::format() == crate::logging::LogFormat::Text
}

/// Sets how progress is shown; the first call wins (main calls it once).
pub fn configure(config: ProgressConfig) {
    let _ = CONFIG.set(config);
}

fn config() -> ProgressConfig {
    CONFIG.get().cloned().unwrap_or_default()
}

/// What a display shows at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub files: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Expected totals, when known (they give the bar, the percentage and the ETA).
    pub total_files: Option<u64>,
    pub total_bytes: Option<u64>,
    /// The current step of a multi-step operation ("rewriting packs"); may be empty.
    pub phase: String,
    /// Operation-specific detail appended to the line ("cached 12 files").
    pub detail: String,
}

/// Anything a display can read while the operation runs.
pub trait ProgressSource: Send + Sync + 'static {
    fn read(&self) -> Reading;
}

/// Counters an operation updates as it goes; the plain way to feed a display.
#[derive(Debug, Default)]
pub struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// `u64::MAX` is "not known".
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    totals_set: AtomicBool,
    phase: Mutex<String>,
}

// `add`, `add_errors` and `set_phase` are the API maintenance reports through.
#[allow(dead_code)]
impl Counters {
    /// Counts `files` more files (or items) done, covering `bytes` bytes.
    pub fn add(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_errors(&self, n: u64) {
        self.errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Replaces the counts, for operations that report running totals.
    pub fn set(&self, files: u64, bytes: u64, errors: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.errors.store(errors, Ordering::Relaxed);
    }

    /// The expected totals; `None` for one that is not known.
    pub fn set_totals(&self, files: Option<u64>, bytes: Option<u64>) {
        self.total_files
            .store(files.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.total_bytes
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.totals_set.store(true, Ordering::Release);
    }

    /// Names the current step and restarts the counts (each step has its own totals).
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().expect("progress phase lock") = phase.to_string();
        self.files.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.totals_set.store(false, Ordering::Release);
    }

    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl ProgressSource for Counters {
    fn read(&self) -> Reading {
        let known = |v: u64| (v != u64::MAX).then_some(v);
        let totals_set = self.totals_set.load(Ordering::Acquire);
        Reading {
            files: self.files(),
            bytes: self.bytes(),
            errors: self.errors(),
            total_files: totals_set
                .then(|| known(self.total_files.load(Ordering::Relaxed)))
                .flatten(),
            total_bytes: totals_set
                .then(|| known(self.total_bytes.load(Ordering::Relaxed)))
                .flatten(),
            phase: self.phase.lock().expect("progress phase lock").clone(),
            detail: String::new(),
        }
    }
}

/// Renders a [`ProgressSource`] until dropped.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Shows `source` as "`label`: files, bytes, throughput, ETA".
    pub fn show(label: &str, source: Arc<dyn ProgressSource>) -> Self {
        let config = config();
        if !config.enabled {
            return Progress {
                task: None,
                bar: None,
            };
        }
        let terminal = draws_a_bar();
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.set_prefix(format!("{label}:"));
            bar
        });
        let interval = config.interval.unwrap_or(if terminal {
            DEFAULT_BAR_INTERVAL
        } else {
            DEFAULT_LINE_INTERVAL
        });
        let shown = bar.clone();
        let label = label.to_string();
        let task = tokio::spawn(async move {
            let mut rate = RateMeter::new(Instant::now());
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            let mut with_bar = false;
            loop {
                tick.tick().await;
                let reading = source.read();
                let per_second = rate.sample(Instant::now(), reading.bytes);
                let line = render_line(&reading, per_second);
                match &shown {
                    Some(bar) => {
                        match reading.total_bytes.filter(|t| *t > 0) {
                            Some(total) => {
                                if !with_bar {
                                    bar.set_style(bar_style());
                                    with_bar = true;
                                }
                                bar.set_length(total);
                                bar.set_position(reading.bytes.min(total));
                            }
                            None => {
                                if with_bar {
                                    bar.set_style(spinner_style());
                                    with_bar = false;
                                }
                            }
                        }
                        bar.set_message(line);
                        bar.tick();
                    }
                    None => crate::logging::progress_line(&label, &line, &reading, per_second),
                }
            }
        });
        Progress {
            task: Some(task),
            bar,
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

// Two lines, so the numbers keep the width of the terminal to themselves.
fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise}\n  {wide_msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} [{bar:40}]\n  {wide_msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// Bytes per second over the trailing [`RATE_WINDOW`].
struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn new(start: Instant) -> Self {
        RateMeter {
            samples: VecDeque::from([(start, 0)]),
        }
    }

    fn sample(&mut self, now: Instant, bytes: u64) -> Option<f64> {
        // A phase change restarts the count: start measuring again.
        if self.samples.back().is_some_and(|(_, b)| bytes < *b) {
            self.samples.clear();
        }
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = *self.samples.front()?;
        let elapsed = now.duration_since(t0).as_secs_f64();
        (elapsed > 0.0 && self.samples.len() > 1).then(|| (bytes - b0) as f64 / elapsed)
    }
}

/// One progress line: "3/10 files, 1.2 MB of 4.0 MB (30%), 2.0 MB/s, ETA 1s, 0 errors".
pub fn render_line(r: &Reading, per_second: Option<f64>) -> String {
    let mut parts = Vec::new();
    if !r.phase.is_empty() {
        parts.push(r.phase.clone());
    }
    let has_counts =
        r.files > 0 || r.bytes > 0 || r.total_files.is_some() || r.total_bytes.is_some();
    if has_counts {
        parts.push(match r.total_files {
            Some(total) => format!("{}/{} files", r.files, total),
            None => format!("{} files", r.files),
        });
        parts.push(match r.total_bytes {
            Some(total) if total > 0 => format!(
                "{} of {} ({:.0}%)",
                human_bytes(r.bytes),
                human_bytes(total),
                (r.bytes as f64 * 100.0 / total as f64).min(100.0)
            ),
            _ => human_bytes(r.bytes),
        });
        if let Some(rate) = per_second {
            parts.push(format!("{}/s", human_bytes(rate as u64)));
            if let (Some(total), true) = (r.total_bytes, rate > 0.0) {
                let left = total.saturating_sub(r.bytes) as f64 / rate;
                parts.push(format!("ETA {}", human_duration(left)));
            }
        }
        parts.push(format!("{} errors", r.errors));
    }
    if !r.detail.is_empty() {
        parts.push(r.detail.clone());
    }
    parts.join(", ")
}

/// `1h02m03s`, `4m05s`, `6s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Counts the files and bytes under a path in the background, as kopia's upload estimate does,
/// so a backup's progress can show a total and an ETA. Ignore rules are not applied: it is an
/// estimate. Stops early when dropped.
pub struct TreeEstimate {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

/// When the estimate's walk starts: at once under a bar, which shows a total from the start;
/// halfway to the first plain line otherwise; never without progress. The walk stats every file
/// a second time (a tenth of a short incremental backup's CPU), and a backup finished before
/// its first line needs no total.
fn estimate_delay() -> Option<Duration> {
    let config = config();
    if !config.enabled {
        return None;
    }
    if draws_a_bar() {
        return Some(Duration::ZERO);
    }
    Some(config.interval.unwrap_or(DEFAULT_LINE_INTERVAL) / 2)
}

impl TreeEstimate {
    pub fn start(root: &Path) -> Self {
        match estimate_delay() {
            Some(delay) => Self::start_after(root, delay),
            None => TreeEstimate {
                counters: Arc::new(Counters::default()),
                stop: Arc::new(AtomicBool::new(true)),
            },
        }
    }

    fn start_after(root: &Path, delay: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, root) = (counters.clone(), stop.clone(), root.to_path_buf());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if s.load(Ordering::Relaxed) {
                return;
            }
            tokio::task::spawn_blocking(move || {
                if let Some((files, bytes)) = walk(&root, &s) {
                    c.set_totals(Some(files), Some(bytes));
                }
            });
        });
        TreeEstimate { counters, stop }
    }

    /// `(files, bytes)` once the walk has finished.
    pub fn totals(&self) -> (Option<u64>, Option<u64>) {
        let r = self.counters.read();
        (r.total_files, r.total_bytes)
    }
}

impl Drop for TreeEstimate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Files and their bytes under `root` (symlinks are not followed); `None` when stopped.
fn walk(root: &Path, stop: &AtomicBool) -> Option<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return Some((0, 0));
    };
    if meta.is_file() {
        return Some((1, meta.len()));
    }
    if !meta.is_dir() {
        return Some((0, 0));
    }
    // Directories only; the listing's entry types spare a stat of anything but files, and
    // files are stat-ed relative to their open directory.
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => pending.push(e.path()),
                Ok(t) if t.is_file() => {
                    if let Ok(meta) = e.metadata() {
                        files += 1;
                        bytes += meta.len();
                    }
                }
                _ => {}
            }
        }
    }
    Some((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_totals_rate_and_eta() {
        let r = Reading {
            files: 3,
            bytes: 1_000_000,
            errors: 1,
            total_files: Some(10),
            total_bytes: Some(4_000_000),
            phase: String::new(),
            detail: "cached 2 files".into(),
        };
        assert_eq!(
            render_line(&r, Some(1_000_000.0)),
            "3/10 files, 1.0 MB of 4.0 MB (25%), 1.0 MB/s, ETA 3s, 1 errors, cached 2 files"
        );
        let unknown = Reading {
            files: 2,
            bytes: 500,
            ..Reading::default()
        };
        assert_eq!(render_line(&unknown, None), "2 files, 500 B, 0 errors");
    }

    #[test]
    fn rate_follows_the_trailing_window() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(t0);
        assert_eq!(meter.sample(t0 + Duration::from_secs(1), 100), Some(100.0));
        // 30 s later at a faster pace: the early slow second no longer counts.
        let mut bytes = 100;
        for s in 2..=30 {
            bytes += 1000;
            meter.sample(t0 + Duration::from_secs(s), bytes);
        }
        let rate = meter
            .sample(t0 + Duration::from_secs(31), bytes + 1000)
            .unwrap();
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        // A new phase restarts from zero without a negative rate.
        assert_eq!(meter.sample(t0 + Duration::from_secs(32), 10), None);
    }

    #[test]
    fn durations_read_like_kopia() {
        assert_eq!(human_duration(5.4), "5s");
        assert_eq!(human_duration(65.0), "1m05s");
        assert_eq!(human_duration(3723.0), "1h02m03s");
    }

    #[test]
    fn counters_phase_restarts_counts() {
        let c = Counters::default();
        c.set_totals(Some(4), None);
        c.add(2, 100);
        assert_eq!(c.read().total_files, Some(4));
        c.set_phase("compacting");
        let r = c.read();
        assert_eq!((r.files, r.bytes, r.total_files), (0, 0, None));
        assert_eq!(r.phase, "compacting");
    }

    #[tokio::test]
    async fn estimate_walks_only_once_its_delay_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"12345").unwrap();
        let delay = Duration::from_millis(300);
        let dropped_early = TreeEstimate::start_after(dir.path(), delay);
        let counters = dropped_early.counters.clone();
        drop(dropped_early);
        let estimate = TreeEstimate::start_after(dir.path(), delay);
        tokio::time::sleep(delay / 3).await;
        assert_eq!(estimate.totals(), (None, None));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while estimate.totals() == (None, None) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(estimate.totals(), (Some(1), Some(5)));
        // The one dropped before its delay never walked.
        let r = counters.read();
        assert_eq!((r.total_files, r.total_bytes), (None, None));
    }

    #[test]
    fn walk_counts_files_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), b"12345").unwrap();
        std::fs::write(dir.path().join("sub/b"), b"123").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        let stop = AtomicBool::new(false);
        assert_eq!(walk(dir.path(), &stop), Some((2, 8)));
        stop.store(true, Ordering::Relaxed);
        assert_eq!(walk(dir.path(), &stop), None);
    }
}
