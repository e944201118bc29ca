//! Command-line arguments, named as kopia names them so scripts written for kopia work unchanged.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kmover",
    version,
    about = "A fast backup mover for Kopia repositories"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Repository connection file (kopia's repository.config).
    #[arg(long, global = true, env = "KOPIA_CONFIG_PATH")]
    pub config_file: Option<PathBuf>,
    /// Repository password.
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "KOPIA_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Cache directory.
    #[arg(long, global = true, env = "KOPIA_CACHE_DIRECTORY")]
    pub cache_directory: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    /// Log format on stderr: `text`, or `json` (one JSON object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "KMOVER_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
    /// kopia's spelling of `--log-format=json`.
    #[arg(long, global = true, hide = true)]
    pub json_log_console: bool,
    /// Show no progress (neither the bar nor the periodic lines).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// How often progress is shown: redraws of the bar on a terminal (default 300ms), log lines
    /// otherwise (default 5s). E.g. `500ms`, `30s`.
    #[arg(long, global = true, value_parser = parse_duration)]
    pub progress_update_interval: Option<std::time::Duration>,
    /// Write run metrics to this node-exporter textfile (merged with the series already there).
    #[arg(long, global = true, env = "KMOVER_METRICS_TEXTFILE")]
    pub metrics_textfile: Option<PathBuf>,
    /// Push run metrics to this Prometheus Pushgateway, e.g. `http://pushgateway:9091`.
    #[arg(long, global = true, env = "KMOVER_METRICS_PUSH_URL")]
    pub metrics_push_url: Option<String>,
    /// The `job` label of pushed metrics.
    #[arg(long, global = true, default_value = "kmover")]
    pub metrics_job: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Commands to manipulate repository.
    #[command(subcommand, alias = "repo")]
    Repository(RepositoryCommand),
    /// Commands to manipulate content in repository.
    #[command(subcommand)]
    Content(ContentCommand),
    /// Commands to manipulate content index.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Commands to manipulate BLOBs.
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Commands to manipulate snapshots.
    #[command(subcommand, alias = "snap")]
    Snapshot(SnapshotCommand),
    /// Restore a directory or file from a snapshot.
    Restore(RestoreArgs),
    /// List a directory stored in repository object.
    Ls {
        /// `SNAPSHOT_ID[/path]` or object ID.
        path: String,
        /// Long output.
        #[arg(long, short = 'l')]
        long: bool,
    },
    /// Displays the contents of a repository object.
    Show {
        /// `SNAPSHOT_ID/path` or object ID.
        path: String,
    },
    /// Commands to manipulate snapshotting policies.
    #[command(subcommand, alias = "policies")]
    Policy(PolicyCommand),
    /// Maintenance commands.
    #[command(subcommand)]
    Maintenance(crate::commands::maintenance::MaintenanceCommand),
    /// Answer "is there a backup of {namespace}/{pvc}?" over HTTP (a pvc-plumber replacement).
    Serve(ServeArgs),
}

#[derive(Subcommand, Debug)]
pub enum RepositoryCommand {
    /// Create a new repository.
    #[command(subcommand)]
    Create(StorageCreate),
    /// Connect to a repository.
    #[command(subcommand)]
    Connect(StorageConnect),
    /// Disconnect from a repository.
    Disconnect,
    /// Display the status of connected repository.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StorageCreate {
    /// Create a repository in a filesystem directory.
    Filesystem {
        #[command(flatten)]
        storage: FilesystemArgs,
        #[command(flatten)]
        format: CreateFormatArgs,
    },
    /// Create a repository in an S3 bucket.
    S3 {
        #[command(flatten)]
        storage: Box<S3Args>,
        #[command(flatten)]
        format: CreateFormatArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum StorageConnect {
    /// Connect to a repository in a filesystem directory.
    Filesystem {
        #[command(flatten)]
        storage: FilesystemArgs,
    },
    /// Connect to a repository in an S3 bucket.
    S3 {
        #[command(flatten)]
        storage: Box<S3Args>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct FilesystemArgs {
    /// Path to the repository.
    #[arg(long)]
    pub path: PathBuf,
    /// Use a flat directory structure.
    #[arg(long)]
    pub flat: bool,
    #[command(flatten)]
    pub connect: ConnectOptions,
}

/// kopia's connect options; `repository create` takes them too, as it connects.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Hostname recorded for this client instead of the machine's.
    #[arg(long)]
    pub override_hostname: Option<String>,
    /// Username recorded for this client instead of the current user's.
    #[arg(long)]
    pub override_username: Option<String>,
    /// Do not store the password with the connection; later commands need KOPIA_PASSWORD.
    #[arg(long, overrides_with = "persist_credentials")]
    pub no_persist_credentials: bool,
    /// Store the password with the connection (default; KOPIA_PERSIST_CREDENTIALS_ON_CONNECT).
    #[arg(long, overrides_with = "no_persist_credentials")]
    pub persist_credentials: bool,
    /// Make the connection read-only.
    #[arg(long)]
    pub readonly: bool,
    /// Human-readable description of the repository.
    #[arg(long)]
    pub description: Option<String>,
}

impl ConnectOptions {
    /// The flags first, then `KOPIA_PERSIST_CREDENTIALS_ON_CONNECT`, then kopia's default (yes).
    pub fn persist_password(&self) -> bool {
        if self.no_persist_credentials || self.persist_credentials {
            return self.persist_credentials;
        }
        std::env::var("KOPIA_PERSIST_CREDENTIALS_ON_CONNECT")
            .map_or(true, |v| !matches!(v.trim(), "false" | "0" | "no"))
    }

    pub fn apply(&self, cfg: &mut kmover_repo::local_config::LocalConfig) {
        if let Some(h) = &self.override_hostname {
            cfg.hostname = h.clone();
        }
        if let Some(u) = &self.override_username {
            cfg.username = u.clone();
        }
        if let Some(d) = &self.description {
            cfg.description = d.clone();
        }
        cfg.readonly |= self.readonly;
    }
}

#[derive(Args, Debug, Clone)]
pub struct CreateFormatArgs {
    /// Content hash algorithm.
    #[arg(long, default_value = "BLAKE2B-256-128")]
    pub block_hash: String,
    /// Content encryption algorithm.
    #[arg(long, default_value = "AES256-GCM-HMAC-SHA256")]
    pub encryption: String,
    /// Object splitter.
    #[arg(long, default_value = "DYNAMIC-4M-BUZHASH")]
    pub object_splitter: String,
    /// Repository format version (1, 2 or 3).
    #[arg(long, default_value_t = 3)]
    pub format_version: u8,
    /// Password key derivation algorithm.
    #[arg(long, default_value = "scrypt-65536-8-1")]
    pub format_block_key_derivation_algorithm: String,
}

#[derive(Subcommand, Debug)]
pub enum ContentCommand {
    /// Content statistics.
    Stats {
        /// Raw numbers.
        #[arg(long, short = 'r')]
        raw: bool,
    },
    /// List contents.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
        /// Long output.
        #[arg(long, short = 'l')]
        long: bool,
        /// Include deleted content.
        #[arg(long)]
        deleted: bool,
        /// Only show deleted content.
        #[arg(long)]
        deleted_only: bool,
    },
    /// Show contents by ID.
    #[command(alias = "cat")]
    Show {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Verify that each content is backed by a valid blob.
    Verify {
        /// Full verification (including download).
        #[arg(long)]
        full: bool,
        /// Include deleted contents.
        #[arg(long)]
        include_deleted: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// List content indexes.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// List BLOBs.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
        /// Blob ID prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Creates a snapshot of a local directory or file.
    Create(SnapshotCreateArgs),
    /// List snapshots of files and directories.
    #[command(alias = "ls")]
    List(SnapshotListArgs),
    /// Restore a directory or file from a snapshot.
    Restore(RestoreArgs),
    /// Explicitly delete a snapshot by providing a snapshot ID.
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Confirm deletion.
        #[arg(long)]
        delete: bool,
    },
    /// Remove old snapshots according to defined expiration policies.
    Expire(crate::commands::snapshot_expire::ExpireArgs),
    /// Add or remove pins preventing snapshot deletion.
    Pin(crate::commands::snapshot_pin::PinArgs),
    /// Verify the contents of stored snapshots.
    Verify {
        /// Snapshot IDs (default: all).
        ids: Vec<String>,
        /// Randomly verify a percentage of files by reading them fully.
        #[arg(long, default_value_t = 0.0)]
        verify_files_percent: f64,
        /// Print the result as JSON (kopia's verifier result).
        #[arg(long)]
        json: bool,
    },
    /// Whether a source has a complete snapshot: exit 0 yes, 1 no, 3 cannot tell.
    Exists(ExistsArgs),
}

#[derive(Args, Debug)]
pub struct ExistsArgs {
    /// `user@host:/path`, or `user@host` for any path.
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080", env = "KMOVER_SERVE_LISTEN")]
    pub listen: String,
    /// The snapshot source checked for `/exists/{namespace}/{pvc}`.
    #[arg(
        long,
        default_value = "{pvc}-backup@{namespace}:/data",
        env = "KMOVER_IDENTITY_TEMPLATE"
    )]
    pub identity_template: String,
    /// How long one reading of the repository's snapshot list is reused (`0s`: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub cache_ttl: std::time::Duration,
    /// Longest a check may take before it answers `unknown`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct SnapshotCreateArgs {
    /// Files or directories to back up.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Free-form snapshot description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Upload N files in parallel.
    #[arg(long, default_value_t = 0)]
    pub parallel: usize,
    /// Tags applied on the snapshot, `key:value`.
    #[arg(long)]
    pub tags: Vec<String>,
    /// Create a pinned snapshot that will not expire automatically.
    #[arg(long)]
    pub pin: Vec<String>,
    /// Override the source of the snapshot (`user@host:/path`).
    #[arg(long)]
    pub override_source: Option<String>,
    /// Interval between periodic checkpoints (at most 45m), e.g. `30s`, `10m`.
    #[arg(long, hide = true, value_parser = parse_duration)]
    pub checkpoint_interval: Option<std::time::Duration>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotListArgs {
    /// File or directory to show history of.
    pub source: Option<String>,
    /// Show all snapshots (not just current username/host).
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Include incomplete.
    #[arg(long, short = 'i')]
    pub incomplete: bool,
    /// Include manifest item ID.
    #[arg(long, short = 'm')]
    pub manifest_id: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot ID (optionally `ID/sub/path`), object ID, or source path.
    pub source: String,
    /// Target directory (or file path for a file).
    pub target: PathBuf,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub overwrite_directories: bool,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub overwrite_files: bool,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub overwrite_symlinks: bool,
    #[arg(long)]
    pub write_sparse_files: bool,
    /// Restore parallelism.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    #[arg(long)]
    pub skip_owners: bool,
    #[arg(long)]
    pub skip_permissions: bool,
    #[arg(long)]
    pub skip_times: bool,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ignore_permission_errors: bool,
    #[arg(long)]
    pub write_files_atomically: bool,
    #[arg(long)]
    pub ignore_errors: bool,
    /// Skip files and symlinks that exist in the output.
    #[arg(long)]
    pub skip_existing: bool,
    /// With a source path: the latest snapshot at or before this time (`latest` by default).
    #[arg(long, default_value = "latest")]
    pub snapshot_time: String,
    /// Print the restore statistics as JSON (kopia's restore stats).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// List policies.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show snapshot policy.
    #[command(alias = "get")]
    Show {
        #[command(flatten)]
        targets: PolicyTargetArgs,
        #[arg(long)]
        json: bool,
    },
    /// Set policy.
    Set(Box<PolicySetArgs>),
    /// Remove policy.
    #[command(aliases = ["remove", "rm"])]
    Delete {
        #[command(flatten)]
        targets: PolicyTargetArgs,
        /// Do not remove.
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct PolicyTargetArgs {
    /// A per-host policy `@host`, a per-user policy `user@host`, a per-path policy
    /// `user@host:path`, a local path, or a policy's manifest ID.
    pub targets: Vec<String>,
    /// Select the global policy.
    #[arg(long)]
    pub global: bool,
}

const TRUE_FALSE_INHERIT: [&str; 3] = ["true", "false", "inherit"];

fn compression_choices() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&str> = kmover_format::compression::compressor_names()
        .filter(|n| *n != "none")
        .collect();
    names.sort_unstable();
    clap::builder::PossibleValuesParser::new(["inherit", "none"].into_iter().chain(names))
}

fn splitter_choices() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&str> = kmover_format::splitter::ALL_SPLITTERS.to_vec();
    names.push("inherit");
    names.sort_unstable();
    clap::builder::PossibleValuesParser::new(names)
}

/// Go's `strconv.ParseBool`, as kopia's boolean list flags read their values.
fn go_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("expected a boolean, got {v:?}")),
    }
}

/// Accepts what kopia's size flags accept: a 64-bit decimal, `inherit` or `default`.
fn size_or_inherit(v: &str) -> Result<String, String> {
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    let number = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && v.parse::<i64>().is_ok();
    if number || v == "inherit" || v == "default" {
        Ok(v.to_string())
    } else {
        Err(format!(
            "can't parse {v:?}: expected a number, 'inherit' or 'default'"
        ))
    }
}

/// `kopia policy set` flags; values are kept as typed and interpreted as kopia does ("inherit").
#[derive(Args, Debug, Clone)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub targets: PolicyTargetArgs,
    /// Enable or disable inheriting policies from the parent (`--inherit=false`); the last wins.
    #[arg(long, value_parser = go_bool)]
    pub inherit: Vec<bool>,

    /// Path to before-folder action command ('' to remove).
    #[arg(long, value_name = "COMMAND")]
    pub before_folder_action: Option<String>,
    /// Path to after-folder action command ('' to remove).
    #[arg(long, value_name = "COMMAND")]
    pub after_folder_action: Option<String>,
    /// Path to before-snapshot-root action command ('' to remove).
    #[arg(long, value_name = "COMMAND")]
    pub before_snapshot_root_action: Option<String>,
    /// Path to after-snapshot-root action command ('' to remove).
    #[arg(long, value_name = "COMMAND")]
    pub after_snapshot_root_action: Option<String>,
    /// Max time allowed for an action to run.
    #[arg(long, default_value = "5m")]
    pub action_command_timeout: String,
    /// Action command mode.
    #[arg(long, default_value = "essential", value_parser = ["essential", "optional", "async"])]
    pub action_command_mode: String,
    /// Persist action script.
    #[arg(long)]
    pub persist_action_script: bool,

    /// Compression algorithm.
    #[arg(long, value_parser = compression_choices())]
    pub compression: Option<String>,
    /// Min size of file to attempt compression for.
    #[arg(long, value_parser = size_or_inherit)]
    pub compression_min_size: Option<String>,
    /// Max size of file to attempt compression for.
    #[arg(long, value_parser = size_or_inherit)]
    pub compression_max_size: Option<String>,
    /// Extensions to add to the only-compress list.
    #[arg(long, value_name = "PATTERN")]
    pub add_only_compress: Vec<String>,
    /// Extensions to remove from the only-compress list.
    #[arg(long, value_name = "PATTERN")]
    pub remove_only_compress: Vec<String>,
    /// Clear the only-compress list.
    #[arg(long)]
    pub clear_only_compress: bool,
    /// Extensions to add to the never-compress list.
    #[arg(long, value_name = "PATTERN")]
    pub add_never_compress: Vec<String>,
    /// Extensions to remove from the never-compress list.
    #[arg(long, value_name = "PATTERN")]
    pub remove_never_compress: Vec<String>,
    /// Clear the never-compress list.
    #[arg(long)]
    pub clear_never_compress: bool,
    /// Metadata compression algorithm.
    #[arg(long, value_parser = compression_choices())]
    pub metadata_compression: Option<String>,

    /// Splitter algorithm override.
    #[arg(long, value_parser = splitter_choices())]
    pub splitter: Option<String>,

    /// Ignore errors reading files while traversing ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub ignore_file_errors: Option<String>,
    /// Ignore errors reading directories while traversing ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub ignore_dir_errors: Option<String>,
    /// Ignore unknown entry types in directories ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub ignore_unknown_types: Option<String>,

    /// Paths to add to the ignore list.
    #[arg(long, value_name = "PATTERN")]
    pub add_ignore: Vec<String>,
    /// Paths to remove from the ignore list.
    #[arg(long, value_name = "PATTERN")]
    pub remove_ignore: Vec<String>,
    /// Clear the ignore list.
    #[arg(long)]
    pub clear_ignore: bool,
    /// File names to add to the dot-ignore list.
    #[arg(long, value_name = "FILENAME")]
    pub add_dot_ignore: Vec<String>,
    /// File names to remove from the dot-ignore list.
    #[arg(long, value_name = "FILENAME")]
    pub remove_dot_ignore: Vec<String>,
    /// Clear the dot-ignore list.
    #[arg(long)]
    pub clear_dot_ignore: bool,
    /// Exclude files above given size.
    #[arg(long, value_name = "N")]
    pub max_file_size: Option<String>,
    /// Stay in parent filesystem when finding files ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub one_file_system: Option<String>,
    /// Ignore cache directories ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub ignore_cache_dirs: Option<String>,

    /// Log detail when a directory is snapshotted (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_dir_snapshotted: Option<String>,
    /// Log detail when a directory is ignored (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_dir_ignored: Option<String>,
    /// Log detail when an entry is snapshotted (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_entry_snapshotted: Option<String>,
    /// Log detail when an entry is ignored (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_entry_ignored: Option<String>,
    /// Log detail on entry cache hit (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_entry_cache_hit: Option<String>,
    /// Log detail on entry cache miss (or 'inherit').
    #[arg(long, value_name = "N")]
    pub log_entry_cache_miss: Option<String>,

    /// Number of most recent backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_latest: Option<String>,
    /// Number of most-recent hourly backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<String>,
    /// Number of most-recent daily backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<String>,
    /// Number of most-recent weekly backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<String>,
    /// Number of most-recent monthly backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<String>,
    /// Number of most-recent annual backups to keep per source (or 'inherit').
    #[arg(long, value_name = "N")]
    pub keep_annual: Option<String>,
    /// Do not save identical snapshots (or 'inherit').
    #[arg(long)]
    pub ignore_identical_snapshots: Option<String>,

    /// Interval between snapshots (Go duration, e.g. 1h30m).
    #[arg(long)]
    pub snapshot_interval: Vec<String>,
    /// Comma-separated times of day when to take snapshot (HH:mm,HH:mm,...) or 'inherit'.
    #[arg(long)]
    pub snapshot_time: Vec<String>,
    /// Semicolon-separated crontab-compatible expressions (or 'inherit').
    #[arg(long)]
    pub snapshot_time_crontab: Option<String>,
    /// Run missed time-of-day or cron snapshots ('true', 'false', 'inherit').
    #[arg(long, value_parser = TRUE_FALSE_INHERIT)]
    pub run_missed: Option<String>,
    /// Only create snapshots manually.
    #[arg(long)]
    pub manual: bool,

    /// Enable Volume Shadow Copy snapshots ('never', 'always', 'when-available', 'inherit').
    #[arg(long, value_name = "MODE", value_parser = ["never", "always", "when-available", "inherit"])]
    pub enable_volume_shadow_copy: Option<String>,

    /// Maximum number of parallel file reads.
    #[arg(long)]
    pub max_parallel_file_reads: Option<String>,
    /// Maximum number of parallel snapshots (server, KopiaUI only).
    #[arg(long)]
    pub max_parallel_snapshots: Option<String>,
    /// Use parallel uploads above size (MiB).
    #[arg(long)]
    pub parallel_upload_above_size_mib: Option<String>,
}

/// kopia's S3 flags and their environment fallbacks.
#[derive(Args, Clone)]
pub struct S3Args {
    /// Name of the S3 bucket.
    #[arg(long)]
    pub bucket: String,
    /// Endpoint to use (host[:port]).
    #[arg(long, default_value = kmover_blob::s3::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// S3 region.
    #[arg(long, default_value = "")]
    pub region: String,
    /// Access key ID (overrides AWS_ACCESS_KEY_ID environment variable).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub access_key: String,
    /// Secret access key (overrides AWS_SECRET_ACCESS_KEY environment variable).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub secret_access_key: String,
    /// Session token (overrides AWS_SESSION_TOKEN environment variable).
    #[arg(
        long,
        env = "AWS_SESSION_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub session_token: String,
    /// Prefix to use for objects in the bucket; end it with `/` to use it as a directory.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Disable TLS security (HTTPS).
    #[arg(long)]
    pub disable_tls: bool,
    /// Disable TLS (HTTPS) certificate verification.
    #[arg(long)]
    pub disable_tls_verification: bool,
    /// Certificate authority in-line (base64 enc.).
    #[arg(
        long,
        env = "ROOT_CA_PEM_BASE64",
        hide_env_values = true,
        conflicts_with = "root_ca_pem_path"
    )]
    pub root_ca_pem_base64: Option<String>,
    /// Certificate authority file path.
    #[arg(long)]
    pub root_ca_pem_path: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectOptions,
}

/// By hand, so that the secret key and session token never reach a debug print.
impl std::fmt::Debug for S3Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Args")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("prefix", &self.prefix)
            .field("disable_tls", &self.disable_tls)
            .field("disable_tls_verification", &self.disable_tls_verification)
            .field("root_ca_pem_path", &self.root_ca_pem_path)
            .finish_non_exhaustive()
    }
}

/// Durations as Go writes them for these flags: `500ms`, `30s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = |k: u64| std::time::Duration::from_secs(n * k);
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        _ => Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    }
}
