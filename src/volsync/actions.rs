//! `KOPIA_BEFORE_SNAPSHOT` / `KOPIA_AFTER_SNAPSHOT`: user commands run inside the mover through
//! `/bin/sh -c`, killed (with everything they started) after the time limit. The default image
//! has no shell; there an action fails with a message pointing to the image variant that has one.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use super::env::{Env, TEST_ACTION_TIMEOUT_VAR};
use super::log::Log;

pub const SHELL: &str = "/bin/sh";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Process group of the running action, so that SIGTERM can stop it too (0: none).
pub static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

pub fn timeout(env: &Env) -> Duration {
    env.get(TEST_ACTION_TIMEOUT_VAR)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Runs `command` as the `kind` action (`before-snapshot`, `after-snapshot`); true on success.
pub async fn run(log: &Log, kind: &str, command: &str, limit: Duration) -> bool {
    log.plain(&format!("Running {kind} action: {command}"));
    if !Path::new(SHELL).exists() {
        log.error_stdout(&format!(
            "{kind} action needs {SHELL}, which this image does not have; use the image variant with a shell (kmover-shell) for actions"
        ));
        return false;
    }
    let mut child = match tokio::process::Command::new(SHELL)
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            log.error_stdout(&format!("{kind} action could not start {SHELL}: {e}"));
            return false;
        }
    };
    let group = child.id().map_or(0, |id| id as i32);
    RUNNING_GROUP.store(group, Ordering::SeqCst);
    let outcome = tokio::time::timeout(limit, child.wait()).await;
    RUNNING_GROUP.store(0, Ordering::SeqCst);
    let ok = match outcome {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            kill_group(group);
            let _ = child.wait().await;
            false
        }
    };
    if ok {
        log.plain(&format!("{kind} action completed successfully"));
    } else {
        log.error_stdout(&format!(
            "{kind} action failed or timed out after {} seconds",
            limit.as_secs()
        ));
    }
    ok
}

/// Kills an action and every process it started.
pub fn kill_group(group: i32) {
    if group > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
