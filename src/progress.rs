//! Progress for long operations: a live, redrawn bar when stderr is a terminal; otherwise plain
//! newline-terminated lines at an interval (VolSync and CI read logs line by line, so never `\r`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

const LINE_INTERVAL: Duration = Duration::from_secs(5);
const BAR_INTERVAL: Duration = Duration::from_millis(200);

/// Renders `status()` until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn start(status: Arc<dyn Fn() -> String + Send + Sync>) -> Self {
        let terminal =
            std::io::stderr().is_terminal() && std::env::var_os("KMOVER_PLAIN_PROGRESS").is_none();
        let bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .expect("valid template"),
            );
            bar
        });
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(if shown.is_some() {
                BAR_INTERVAL
            } else {
                LINE_INTERVAL
            });
            tick.tick().await;
            loop {
                tick.tick().await;
                match &shown {
                    Some(bar) => {
                        bar.set_message(status());
                        bar.tick();
                    }
                    None => eprintln!(" * {}", status()),
                }
            }
        });
        Progress { task, bar }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
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
