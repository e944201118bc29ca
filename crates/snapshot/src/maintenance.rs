//! Running maintenance the way `kopia maintenance run` (and kopia's automatic maintenance) does:
//! only the owner runs it, one process at a time per connection (`<config>.mlock`), full runs
//! start with snapshot GC. This is the library entry point behind `kmover maintenance run`.
//!
//! ```no_run
//! # async fn demo(repo: &kmover_repo::Repository) -> kmover_snapshot::Result<()> {
//! use kmover_snapshot::maintenance::{MaintenanceOptions, RequestedMode, run_maintenance};
//! let opts = MaintenanceOptions::new(RequestedMode::Auto, "alice@laptop");
//! let outcome = run_maintenance(repo, &opts).await?;
//! println!("{outcome:?}");
//! # Ok(()) }
//! ```

use std::fs::File;
use std::path::PathBuf;

use kmover_repo::Repository;
use kmover_repo::maintenance::{
    self, MaintenanceRun, Mode, SafetyParameters, TaskOutcome, TaskStats, load_params, task,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Result, SnapshotError};
use crate::snapshot_gc::run_snapshot_gc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedMode {
    /// Whatever cycle is due by the schedule, if any (kopia's automatic maintenance).
    Auto,
    Quick,
    Full,
}

#[derive(Clone, Debug)]
pub struct MaintenanceOptions {
    pub mode: RequestedMode,
    /// Run even if another client owns maintenance (unsafe: two owners race).
    pub force: bool,
    pub safety: SafetyParameters,
    /// This client as `user@host`, compared with the owner.
    pub client: String,
    /// kopia's local lock, `<config file>.mlock`: a second maintenance on the same connection
    /// returns at once.
    pub lock_file: Option<PathBuf>,
}

impl MaintenanceOptions {
    pub fn new(mode: RequestedMode, client: &str) -> Self {
        MaintenanceOptions {
            mode,
            force: false,
            safety: SafetyParameters::full(),
            client: client.to_string(),
            lock_file: None,
        }
    }
}

#[derive(Clone, Debug)]
pub enum MaintenanceOutcome {
    /// Automatic maintenance owned by someone else: nothing done.
    NotOwner {
        owner: String,
    },
    /// Automatic maintenance with nothing due.
    NotDue,
    /// Another maintenance holds the local lock.
    AlreadyRunning,
    Completed {
        mode: Mode,
        tasks: Vec<TaskOutcome>,
    },
}

/// Runs maintenance per `opts`. An explicit quick or full run by a non-owner is an error
/// (unless forced); automatic maintenance then quietly does nothing, as in kopia.
pub async fn run_maintenance(
    repo: &Repository,
    opts: &MaintenanceOptions,
) -> Result<MaintenanceOutcome> {
    let params = load_params(repo).await?;
    if !opts.force && params.owner != opts.client {
        if opts.mode == RequestedMode::Auto {
            return Ok(MaintenanceOutcome::NotOwner {
                owner: params.owner,
            });
        }
        return Err(maintenance::not_owned(&params.owner).into());
    }
    let mode = match opts.mode {
        RequestedMode::Quick => Mode::Quick,
        RequestedMode::Full => Mode::Full,
        RequestedMode::Auto => {
            let schedule = maintenance::load_schedule(repo).await?;
            match maintenance::due_mode(repo.now(), &params, &schedule) {
                Some(m) => m,
                None => return Ok(MaintenanceOutcome::NotDue),
            }
        }
    };
    let _lock = match &opts.lock_file {
        Some(path) => match lock(path)? {
            Some(l) => Some(l),
            None => return Ok(MaintenanceOutcome::AlreadyRunning),
        },
        None => None,
    };
    tracing::info!("Running {} maintenance...", mode.name());
    let mut run = MaintenanceRun::begin(repo, mode, params, opts.safety).await?;
    if mode == Mode::Full {
        let (safety, start) = (run.safety, run.start_time);
        let gc = async move {
            run_snapshot_gc(repo, &safety, start, true)
                .await
                .map(|s| Some(TaskStats::SnapshotGc(s)))
                .map_err(|e| kmover_repo::RepoError::Other(format!("snapshot GC failure: {e}")))
        };
        run.record(task::SNAPSHOT_GC, gc).await?;
    }
    run.run_tasks().await?;
    tracing::info!("Finished {} maintenance.", mode.name());
    Ok(MaintenanceOutcome::Completed {
        mode,
        tasks: run.outcomes,
    })
}

/// Takes the non-blocking exclusive lock; `None` when another process holds it.
fn lock(path: &PathBuf) -> Result<Option<Flock<File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| SnapshotError::io(path, "open maintenance lock", e))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(SnapshotError::io(
            path,
            "lock maintenance lock",
            std::io::Error::from(errno),
        )),
    }
}
