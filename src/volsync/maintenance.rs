//! `DIRECTION=maintenance` (§3.4): connect as the maintenance identity, take maintenance
//! ownership (claiming it from any other owner, as the reference does), keep the quick cycle
//! enabled, then run quick maintenance (a failure only warns) and full maintenance (a failure
//! fails the run, its error shown between the summary's KOPIA_ERROR_OUTPUT markers).

use std::time::Instant;

use kmover_repo::maintenance::{load_params, save_params};
use kmover_snapshot::maintenance::{
    MaintenanceOptions, MaintenanceOutcome, RequestedMode, run_maintenance,
};

use super::Ctx;
use super::connect::{self, Identity, Session};
use super::log::{Flow, Stop};

const OWNERSHIP_FAILURE: &str = "Could not establish maintenance ownership - another process/user owns maintenance for this repository";

pub async fn run(ctx: &Ctx) -> Flow {
    let log = &ctx.log;
    let identity = Identity::for_maintenance(ctx);
    let session = connect::ensure_connected(ctx, &identity).await?;
    log.info("=== Starting maintenance operation ====");
    let started = Instant::now();
    log.info(&format!(
        "Setting maintenance identity to '{}'",
        identity.owner()
    ));
    if let Err(e) = ensure_ownership(ctx, &session).await {
        log.plain(&e);
        fail(ctx, OWNERSHIP_FAILURE, Vec::new());
        return Err(Stop { code: 1 });
    }

    log.info("Running Kopia quick maintenance...");
    if let Err(e) = cycle(ctx, &session, RequestedMode::Quick).await {
        log.plain(&e);
        log.warn("Quick maintenance failed (exit code 1), continuing with full maintenance...");
    }
    log.info("Running Kopia full maintenance...");
    if let Err(e) = cycle(ctx, &session, RequestedMode::Full).await {
        log.plain(&e);
        let reason = "Kopia maintenance run --full failed with exit code 1";
        fail(ctx, reason, e.lines().map(str::to_string).collect());
        return Err(Stop { code: 1 });
    }
    let seconds = started.elapsed().as_secs();
    ctx.state
        .lock()
        .expect("state lock")
        .maintenance_duration_seconds = Some(seconds);
    log.info(&format!(
        "Maintenance operation completed successfully in {seconds} seconds"
    ));
    log.info("Maintenance operation completed");
    Ok(())
}

fn fail(ctx: &Ctx, reason: &str, error_output: Vec<String>) {
    {
        let mut state = ctx.state.lock().expect("state lock");
        state.failure_reason = Some(reason.to_string());
        state.error_output = error_output;
    }
    ctx.log.error(reason);
}

/// The maintenance owner becomes this identity, and the quick cycle stays enabled.
async fn ensure_ownership(ctx: &Ctx, session: &Session) -> Result<(), String> {
    let log = &ctx.log;
    let repo = &session.repo;
    let expected = session.identity.owner();
    log.info("=== Checking maintenance ownership ====");
    log.info(&format!("Expected maintenance owner: {expected}"));
    let mut params = load_params(repo)
        .await
        .map_err(|e| format!("cannot read the maintenance parameters: {e}"))?;
    if !params.owner.is_empty() {
        log.info(&format!("Current maintenance owner: {}", params.owner));
    }
    let mut changed = false;
    if params.owner == expected {
        log.info("Already maintenance owner");
    } else {
        if !params.owner.is_empty() {
            log.warn(&format!(
                "Repository has different maintenance owner: {}",
                params.owner
            ));
            log.warn(&format!("Expected: {expected}"));
        }
        log.info("Attempting to claim maintenance ownership...");
        params.owner = expected.clone();
        changed = true;
    }
    log.info("Enabling quick cycle scheduling...");
    if !params.quick.enabled {
        params.quick.enabled = true;
        changed = true;
    }
    if changed {
        save_params(repo, &params)
            .await
            .map_err(|e| format!("cannot set the maintenance owner: {e}"))?;
        repo.flush()
            .await
            .map_err(|e| format!("cannot set the maintenance owner: {e}"))?;
        log.info(&format!("Successfully set {expected} as maintenance owner"));
    }
    Ok(())
}

async fn cycle(ctx: &Ctx, session: &Session, mode: RequestedMode) -> Result<(), String> {
    let mut opts = MaintenanceOptions::new(mode, &session.identity.owner());
    let mut lock = session.config_path.clone().into_os_string();
    lock.push(".mlock");
    opts.lock_file = Some(lock.into());
    match run_maintenance(&session.repo, &opts).await {
        Ok(MaintenanceOutcome::Completed { mode, tasks }) => {
            for t in &tasks {
                ctx.log.plain(&format!(
                    "  {}: {}",
                    t.task,
                    if t.stats.is_some() {
                        "done"
                    } else {
                        "nothing to do"
                    }
                ));
            }
            ctx.log
                .plain(&format!("Finished {} maintenance.", mode.name()));
            Ok(())
        }
        Ok(MaintenanceOutcome::AlreadyRunning) => {
            Err("maintenance is already in progress on this connection".into())
        }
        Ok(MaintenanceOutcome::NotOwner { owner }) => {
            Err(format!("maintenance is owned by {owner}"))
        }
        Ok(MaintenanceOutcome::NotDue) => Ok(()),
        Err(e) => Err(format!("{e}")),
    }
}
