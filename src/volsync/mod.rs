//! The VolSync mover and the kopia drop-in. One binary, three entry points chosen by the name it
//! is run under: `/mover-kopia/entry.sh` runs the VolSync Kopia mover contract (environment in,
//! prefixed log lines and exit codes out; see docs/volsync.md), `kopia` runs the kopia-compatible
//! CLI with kopia's exit codes, and any other name is the plain `kmover` CLI.

mod actions;
mod additional_args;
mod backend;
mod cache;
mod connect;
mod destination;
mod env;
mod kopia_cli;
mod log;
mod maintenance;
mod policy_files;
mod source;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kmover_format::snapshot::manifest::SourceInfo;

pub use kopia_cli::parse_kopia_args;

use self::connect::Session;
use self::env::{Env, Paths};
use self::log::{Flow, Log, Stop};
use self::summary::{RunState, SharedState};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    Mover,
    Kopia,
    Kmover,
}

/// Chosen by the program name, so the image needs no shell: `entry.sh` and `kopia` are links.
pub fn entry_point() -> EntryPoint {
    let program = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "entry.sh" => EntryPoint::Mover,
        "kopia" => EntryPoint::Kopia,
        _ => EntryPoint::Kmover,
    }
}

/// Everything a mover step needs: the environment, where its paths really are, and the log.
pub struct Ctx {
    pub env: Env,
    pub paths: Paths,
    pub log: Log,
    /// `DATA_DIR` as the pod sees it (it names the snapshot source) and where it really is.
    pub data_dir: String,
    pub data_dir_real: PathBuf,
    pub cache_logical: String,
    pub cache_dir: PathBuf,
    pub state: SharedState,
    created: AtomicBool,
}

impl Ctx {
    pub fn mark_repository_created(&self) {
        self.created.store(true, Ordering::SeqCst);
    }

    pub fn repository_created(&self) -> bool {
        self.created.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Backup,
    Restore,
    Maintenance,
}

/// `/mover-kopia/entry.sh`: runs the mover and returns its exit code.
pub fn mover_main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env = Env::from_process();
    let log = Log::new(
        env.get("KOPIA_FILE_LOG_LEVEL") == Some("debug"),
        env.secret_values(),
    );
    init_tracing(&env);
    if let Err(e) = crate::clock::install() {
        log.error(&format!("{e:#}"));
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log.error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(env, log, args));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Library messages go to stderr without colour; `KOPIA_LOG_LEVEL=debug` shows kmover's own.
fn init_tracing(env: &Env) {
    let level = match env.get("KOPIA_LOG_LEVEL") {
        Some("debug") => "debug",
        Some("error") => "error",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}

async fn run(env: Env, log: Log, args: Vec<String>) -> i32 {
    let paths = Paths::from_env(&env);
    let direction = env.get("DIRECTION").map(str::to_string);
    let data_dir = env.get("DATA_DIR").unwrap_or_default().to_string();
    let cache_logical = env.get_or("KOPIA_CACHE_DIR", "/cache").to_string();
    let ctx = Ctx {
        data_dir_real: paths.real(&data_dir),
        cache_dir: paths.real(&cache_logical),
        data_dir,
        cache_logical,
        state: Arc::new(Mutex::new(RunState {
            operation_type: direction.clone().unwrap_or_else(|| "unknown".into()),
            ..RunState::default()
        })),
        created: AtomicBool::new(false),
        paths,
        log,
        env,
    };
    spawn_sigterm_handler(&ctx);
    let code = match preamble_and_dispatch(&ctx, direction.as_deref(), &args).await {
        Ok(()) => {
            ctx.state.lock().expect("state lock").succeeded = true;
            0
        }
        Err(Stop { code }) => code,
    };
    print_summary(&ctx, code);
    code
}

fn print_summary(ctx: &Ctx, code: i32) {
    let state = ctx.state.lock().expect("state lock").clone();
    let capacity = cache::capacity(&ctx.env);
    summary::print(&ctx.log, &state, code, || {
        cache::usage(&ctx.cache_dir, capacity)
    });
}

async fn preamble_and_dispatch(ctx: &Ctx, direction: Option<&str>, args: &[String]) -> Flow {
    let log = &ctx.log;
    log.plain("Starting kopia mover container");
    log.blank();
    log.info(&format!(
        "VolSync kopia container version: {}",
        ctx.env.get_or("version", "unknown")
    ));
    log.info(&format!("Arguments: {}", args.join(" ")));
    log.blank();
    if let Some(root) = ctx.paths.test_root() {
        log.warn(&format!(
            "{} is set: pod paths are resolved under {} (test harness only)",
            env::TEST_ROOT_VAR,
            root.display()
        ));
    }
    if ctx.env.get("DEBUG_MOVER") == Some("1") {
        debug_wait(ctx).await;
        return Err(Stop { code: 0 });
    }
    prepare_cache(ctx);
    print_diagnostics(ctx);
    validate(ctx, direction == Some("maintenance"))?;
    log.info("=== Starting kopia operations ===");
    log.info(&format!(
        "Operation start time: {}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    ));
    log.info(&format!(
        "Operation mode: {}",
        direction.unwrap_or("command-based")
    ));
    let operations: Vec<Operation> = match direction {
        Some("source") => vec![Operation::Backup],
        Some("destination") => vec![Operation::Restore],
        Some("maintenance") => vec![Operation::Maintenance],
        _ => {
            let mut ops = Vec::new();
            for arg in args {
                match arg.as_str() {
                    "backup" => ops.push(Operation::Backup),
                    "restore" => ops.push(Operation::Restore),
                    "maintenance" => {
                        log.error("Command-based maintenance no longer supported. Use KopiaMaintenance CRD.");
                        return Err(Stop { code: 1 });
                    }
                    other => return Err(log.fatal(2, &format!("unknown operation: {other}"))),
                }
            }
            ops
        }
    };
    for op in operations {
        match op {
            Operation::Backup => {
                log.info("=== Running as SOURCE ====");
                source::run(ctx).await?
            }
            Operation::Restore => {
                log.info("=== Running as DESTINATION ====");
                destination::run(ctx).await?
            }
            Operation::Maintenance => {
                log.info("=== Running MAINTENANCE ONLY ====");
                maintenance::run(ctx).await?
            }
        }
    }
    Ok(())
}

/// `DEBUG_MOVER=1`: do nothing until `/tmp/exit-debug-if-removed` is deleted, then exit 0.
async fn debug_wait(ctx: &Ctx) {
    let log = &ctx.log;
    let marker_logical = "/tmp/exit-debug-if-removed";
    let marker = ctx.paths.real(marker_logical);
    if let Err(e) = std::fs::write(&marker, b"") {
        log.warn(&format!("cannot create {marker_logical}: {e}"));
        return;
    }
    let rule = "#".repeat(66);
    log.blank();
    log.plain(&rule);
    log.plain("DEBUG_MOVER is enabled, this pod will sleep indefinitely.");
    log.blank();
    log.plain("The mover does nothing until you exit. Inspect the pod, then delete the");
    log.plain(&format!("file {marker_logical} to let it exit."));
    log.plain(&rule);
    while marker.exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    log.blank();
    log.plain(&rule);
    log.plain("Debug done, exiting.");
    log.plain(&rule);
}

/// `<cache>/logs` on every run (0755), this run's log file there, and kopia's log retention.
fn prepare_cache(ctx: &Ctx) {
    let log = &ctx.log;
    log.info(&format!("Setting cache directory: {}", ctx.cache_logical));
    log.info("Creating cache and log directories...");
    let logs = ctx.cache_dir.join("logs");
    let created = std::fs::create_dir_all(&logs).and_then(|_| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755))
    });
    match created {
        Ok(()) => {
            let max_files = ctx
                .env
                .get("KOPIA_LOG_DIR_MAX_FILES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3usize);
            let max_age = cache::parse_age(ctx.env.get_or("KOPIA_LOG_DIR_MAX_AGE", "4h"));
            // Room for this run's file.
            cache::prune_logs(&logs, max_files.saturating_sub(1), max_age);
            let name = format!(
                "kmover-{}-{}.log",
                chrono::Utc::now().format("%Y%m%d-%H%M%S"),
                std::process::id()
            );
            if let Ok(file) = std::fs::File::create(logs.join(name)) {
                log.attach_file(file);
            }
            log.info("Cache and log directories created successfully");
        }
        Err(e) => log.warn(&format!("Cannot create {}/logs: {e}", ctx.cache_logical)),
    }
}

/// Which settings arrived, never their values (source logs end up in the CR status).
fn print_diagnostics(ctx: &Ctx) {
    let log = &ctx.log;
    let capacity = cache::capacity(&ctx.env);
    let usage = cache::usage(&ctx.cache_dir, capacity);
    log.plain("=== DEBUG: Environment Setup ===");
    log.plain(&format!("HOME: {}", ctx.env.get_or("HOME", "")));
    log.plain(&format!("KOPIA_CACHE_DIR: {}", ctx.cache_logical));
    log.plain(&format!(
        "KOPIA_CACHE_CAPACITY_BYTES: {capacity} ({})",
        cache::format_bytes(capacity)
    ));
    log.plain(&format!(
        "Current user: uid {} gid {}",
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    ));
    log.plain(&format!(
        "Cache directory writable: {}",
        if writable(&ctx.cache_dir) {
            "Yes"
        } else {
            "No"
        }
    ));
    log.plain(&format!(
        "Cache usage: {} / {} ({}%)",
        cache::format_bytes(usage.used),
        cache::format_bytes(usage.capacity),
        usage.percent
    ));
    log.blank();
    log.plain("=== ENVIRONMENT VARIABLES STATUS ===");
    for var in DIAGNOSED_VARS {
        let shown = if ctx.env.is_set(var) {
            "[SET]"
        } else {
            "[NOT SET]"
        };
        log.plain(&format!("{var}: {shown}"));
    }
    log.blank();
    log.plain("=== Log Configuration ===");
    for (var, default) in [
        ("KOPIA_LOG_LEVEL", "info"),
        ("KOPIA_FILE_LOG_LEVEL", "info"),
        ("KOPIA_LOG_DIR_MAX_FILES", "3"),
        ("KOPIA_LOG_DIR_MAX_AGE", "4h"),
    ] {
        log.plain(&format!("{var}: {}", ctx.env.get_or(var, default)));
    }
    log.plain("=== END DEBUG ===");
    log.blank();
    if let Some((var, path)) = backend::custom_ca(&ctx.env) {
        log.plain(&format!("Using custom CA certificate at: {path} ({var})"));
    }
    log.info("=== Checking Kopia Version ===");
    log.plain(&format!(
        "kmover {} (reads and writes Kopia repositories)",
        env!("CARGO_PKG_VERSION")
    ));
    log.plain("=====================");
}

const DIAGNOSED_VARS: &[&str] = &[
    "KOPIA_REPOSITORY",
    "KOPIA_PASSWORD",
    "KOPIA_S3_BUCKET",
    "KOPIA_S3_ENDPOINT",
    "AWS_S3_ENDPOINT",
    "KOPIA_S3_DISABLE_TLS",
    "AWS_S3_DISABLE_TLS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "KOPIA_OVERRIDE_USERNAME",
    "KOPIA_OVERRIDE_HOSTNAME",
    "KOPIA_SOURCE_PATH_OVERRIDE",
    "KOPIA_MANUAL_CONFIG",
    "KOPIA_STRUCTURED_REPOSITORY_CONFIG",
    "KOPIA_COMPRESSION",
    "KOPIA_PARALLELISM",
    "KOPIA_RESTORE_AS_OF",
    "KOPIA_SHALLOW",
    "KOPIA_PREVIOUS",
    "KOPIA_ENABLE_FILE_DELETION",
    "KOPIA_DISCOVER_SNAPSHOTS",
    "KOPIA_ADDITIONAL_ARGS",
    "KOPIA_BEFORE_SNAPSHOT",
    "KOPIA_AFTER_SNAPSHOT",
    "KOPIA_CACHE_CAPACITY_BYTES",
    "KOPIA_METADATA_CACHE_SIZE_LIMIT_MB",
    "KOPIA_CONTENT_CACHE_SIZE_LIMIT_MB",
    "CUSTOM_CA",
    "KOPIA_CUSTOM_CA",
    "KOPIA_AZURE_CONTAINER",
    "KOPIA_AZURE_STORAGE_KEY",
    "KOPIA_GCS_BUCKET",
    "KOPIA_B2_BUCKET",
    "B2_APPLICATION_KEY",
    "WEBDAV_URL",
    "WEBDAV_PASSWORD",
    "SFTP_HOST",
    "SFTP_PASSWORD",
    "RCLONE_REMOTE_PATH",
    "GOOGLE_DRIVE_FOLDER_ID",
];

fn writable(dir: &std::path::Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// §3.0 step 4, in the reference's order and words.
fn validate(ctx: &Ctx, maintenance: bool) -> Flow {
    let log = &ctx.log;
    log.plain("Testing mandatory env variables");
    if !ctx.env.is_set("KOPIA_PASSWORD") {
        return Err(log.fatal(1, "KOPIA_PASSWORD must be defined"));
    }
    if !maintenance && ctx.data_dir.is_empty() {
        return Err(log.fatal(1, "DATA_DIR must be defined"));
    }
    if !writable(&ctx.cache_dir) {
        return Err(log.fatal(
            1,
            &format!("Cache directory {} is not writable", ctx.cache_logical),
        ));
    }
    log.info("Cache directory validation passed");
    if !maintenance {
        if !ctx.data_dir_real.is_dir() {
            return Err(log.fatal(
                1,
                &format!("Data directory {} does not exist", ctx.data_dir),
            ));
        }
        log.info("Data directory validation passed");
    }
    log.blank();
    Ok(())
}

/// `KOPIA_COMPRESSION` as the compression policy of the snapshot's path; fatal when refused.
async fn apply_compression_policy(ctx: &Ctx, session: &Session, source: &SourceInfo) -> Flow {
    let log = &ctx.log;
    let Some(alg) = ctx.env.get("KOPIA_COMPRESSION") else {
        return Ok(());
    };
    log.plain("=== Applying compression policy ===");
    log.plain(&format!(
        "Setting compression algorithm '{alg}' for path '{}'",
        source.path
    ));
    let flags = [format!("--compression={alg}")];
    if let Err(e) = policy_files::set_policy(&session.repo, source, &flags).await {
        log.plain(&format!("{e:#}"));
        log.error_stdout("Failed to set compression policy");
        return Err(log.fatal(1, "Failed to apply compression policy"));
    }
    log.plain("Compression policy applied successfully");
    Ok(())
}

/// SIGTERM (pod deletion or eviction): say whether the cache filled up, stop a running action,
/// print the summary and exit 137 on exhaustion, 143 otherwise.
fn spawn_sigterm_handler(ctx: &Ctx) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        ctx.log.warn("cannot watch for SIGTERM");
        return;
    };
    let log = ctx.log.clone();
    let state = ctx.state.clone();
    let cache_dir = ctx.cache_dir.clone();
    let capacity = cache::capacity(&ctx.env);
    tokio::spawn(async move {
        term.recv().await;
        actions::kill_group(actions::RUNNING_GROUP.load(Ordering::SeqCst));
        log.blank();
        log.warn("Received SIGTERM signal - pod is being terminated");
        let usage = cache::usage(&cache_dir, capacity);
        let (code, reason) = if usage.exhausted() {
            print_exhaustion_banner(&log, &usage);
            (137, "Pod terminated due to cache exhaustion (SIGTERM)")
        } else {
            log.plain("Pod termination not due to cache exhaustion");
            (143, "Pod terminated (SIGTERM)")
        };
        let mut s = state.lock().expect("state lock").clone();
        s.succeeded = false;
        s.failure_reason = Some(reason.to_string());
        summary::print(&log, &s, code, || usage);
        std::process::exit(code);
    });
}

fn print_exhaustion_banner(log: &Log, usage: &cache::Usage) {
    let rule = "=".repeat(72);
    log.blank();
    log.plain(&rule);
    log.plain("ERROR: CACHE EXHAUSTION DETECTED");
    log.plain(&rule);
    log.plain(&format!(
        "Cache usage: {} / {} ({}%)",
        cache::format_bytes(usage.used),
        cache::format_bytes(usage.capacity),
        usage.percent
    ));
    log.blank();
    log.plain("The cache volume is (nearly) full, which is why the pod is being stopped.");
    log.plain("Give the mover more cache: raise spec.kopia.cacheCapacity (e.g. \"20Gi\"),");
    log.plain("or back the cache with a PVC via spec.kopia.cacheStorageClassName.");
    log.plain(&rule);
}
