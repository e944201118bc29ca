//! The operation summary printed as the last lines of every run (the reference's EXIT trap):
//! the controller shows the tail of the log, so this is what users see in the CR status.

use std::sync::{Arc, Mutex};

use super::cache::Usage;
use super::log::Log;

#[derive(Clone, Debug, Default)]
pub struct RunState {
    /// `DIRECTION`, or `unknown` when unset (VolSync source and destination jobs, Q-1).
    pub operation_type: String,
    /// Set only by an explicit success mark; any other exit reports FAILURE.
    pub succeeded: bool,
    pub failure_reason: Option<String>,
    /// Output of the failed step, shown between the KOPIA_ERROR_OUTPUT markers (maintenance).
    pub error_output: Vec<String>,
    pub maintenance_duration_seconds: Option<u64>,
}

pub type SharedState = Arc<Mutex<RunState>>;

impl RunState {
    pub fn is_maintenance(&self) -> bool {
        self.operation_type == "maintenance"
    }
}

/// Prints the summary; `usage` is measured only when a failed maintenance run needs it.
pub fn print(log: &Log, state: &RunState, exit_code: i32, usage: impl FnOnce() -> Usage) {
    log.info("=== OPERATION SUMMARY ===");
    log.info(&format!("OPERATION_TYPE: {}", state.operation_type));
    log.info(&format!(
        "OPERATION_RESULT: {}",
        if state.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    ));
    if state.is_maintenance() {
        if state.succeeded {
            log.info("MAINTENANCE_STATUS: SUCCESS");
            log.info(&format!(
                "MAINTENANCE_DURATION: {}",
                state.maintenance_duration_seconds.unwrap_or(0)
            ));
        } else {
            log.info("MAINTENANCE_STATUS: FAILURE");
            let reason = state
                .failure_reason
                .clone()
                .unwrap_or_else(|| format!("Unexpected exit with code {exit_code}"));
            log.info(&format!("MAINTENANCE_FAILURE_REASON: {reason}"));
            if !state.error_output.is_empty() {
                log.info("KOPIA_ERROR_OUTPUT_START:");
                for line in &state.error_output {
                    log.info(&format!("  {line}"));
                }
                log.info("KOPIA_ERROR_OUTPUT_END");
            }
            let usage = usage();
            log.info("=== Diagnostic Information ===");
            log.info(&format!("CACHE_USAGE_BYTES: {}", usage.used));
            log.info(&format!("CACHE_CAPACITY_BYTES: {}", usage.capacity));
            log.info(&format!("CACHE_USAGE_PERCENT: {}", usage.percent));
            if usage.exhausted() {
                log.warn(&format!(
                    "CACHE_EXHAUSTION_WARNING: Cache usage at {}%",
                    usage.percent
                ));
            }
        }
    }
    log.info(&format!("EXIT_CODE: {exit_code}"));
    log.info("=== Done ===");
}
