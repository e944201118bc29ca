//! Connect-or-create (§3.1): open the repository the environment names with `KOPIA_PASSWORD`,
//! create one only where the storage holds nothing, and never re-initialise existing data. The
//! connection is rebuilt from the current environment on every run, so a changed repository URL
//! or credential is picked up even with a persistent cache; the client config is written
//! to `<cache>/kopia.config` for kopia users of the same cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kmover_blob::DynBlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};
use kmover_format::encryption::EncryptionAlgorithm;
use kmover_repo::local_config::{self, ConnectionInfo, LocalConfig};
use kmover_repo::{CreateOptions, OpenOptions, Repository};
use serde_json::Value;

use super::Ctx;
use super::backend::{self, Backend, SelectError};
use super::log::{Flow, Stop};
use super::policy_files;

/// The format blob: its presence is what makes a location a repository.
const FORMAT_BLOB: &str = "kopia.repository";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub host: String,
}

impl Identity {
    /// `KOPIA_OVERRIDE_USERNAME@KOPIA_OVERRIDE_HOSTNAME`, a missing half from the system.
    pub fn for_snapshots(ctx: &Ctx) -> Self {
        Identity {
            user: ctx
                .env
                .get("KOPIA_OVERRIDE_USERNAME")
                .map_or_else(crate::identity::username, str::to_string),
            host: ctx
                .env
                .get("KOPIA_OVERRIDE_HOSTNAME")
                .map_or_else(crate::identity::hostname, str::to_string),
        }
    }

    /// `KOPIA_OVERRIDE_MAINTENANCE_USERNAME` (`user` or `user@host`), default `maintenance@volsync`.
    pub fn for_maintenance(ctx: &Ctx) -> Self {
        let name = ctx
            .env
            .get("KOPIA_OVERRIDE_MAINTENANCE_USERNAME")
            .unwrap_or("maintenance");
        match name.rsplit_once('@') {
            Some((user, host)) => Identity {
                user: user.split('@').next().unwrap_or(user).to_string(),
                host: host.to_string(),
            },
            None => Identity {
                user: name.to_string(),
                host: "volsync".to_string(),
            },
        }
    }

    pub fn owner(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

pub struct Session {
    pub repo: Repository,
    pub config: LocalConfig,
    pub config_path: PathBuf,
    pub identity: Identity,
    /// `false` only when the repository config file says `enableActions: false`.
    pub actions_enabled: bool,
}

/// Settings from `KOPIA_MANUAL_CONFIG` that kmover honours (§2.8).
#[derive(Debug, Default)]
struct ManualConfig {
    encryption: Option<String>,
    splitter: Option<String>,
    compression: Option<String>,
    compression_min_size: Option<String>,
    compression_max_size: Option<String>,
    max_cache_size: Option<u64>,
}

pub async fn ensure_connected(ctx: &Ctx, identity: &Identity) -> Flow<Session> {
    let log = &ctx.log;
    log.info("=== Starting repository connection process ===");
    let started = std::time::Instant::now();
    let structured = structured_config(ctx)?;
    let manual = manual_config(ctx)?;
    if ctx.env.is_true("KOPIA_FORCE_CACHE_REBUILD") {
        log.warn("KOPIA_FORCE_CACHE_REBUILD is set, clearing cache before connection...");
        super::cache::clear_rebuildable(&ctx.cache_dir, log);
        log.blank();
    }
    let password = ctx.env.get("KOPIA_PASSWORD").unwrap_or_default();
    let mut opened = None;
    if let Some(cfg) = structured {
        log.info("Attempting to connect using JSON configuration file...");
        match open_from_config(&cfg, password, identity).await {
            Ok(repo) => {
                log.plain("JSON config connection successful");
                opened = Some((repo, cfg));
            }
            Err(e) => {
                log.plain(&format!(
                    "JSON config connection failed ({e:#}), trying other methods..."
                ));
                log.blank();
            }
        }
    }
    let (repo, mut config) = match opened {
        Some(found) => found,
        None => connect_or_create(ctx, identity, password, &manual).await?,
    };
    config.hostname = identity.host.clone();
    config.username = identity.user.clone();
    let config_path = ctx.cache_dir.join("kopia.config");
    log.blank();
    log.info(&format!(
        "Setting client identity to '{}'",
        identity.owner()
    ));
    log.plain(&format!("Hostname:            {}", identity.host));
    log.plain(&format!("Username:            {}", identity.user));

    log.info("=== Configuring cache directory after connection ===");
    if let Err(e) = configure_cache(ctx, &mut config, &manual) {
        log.plain(&e);
        return Err(log.fatal(1, "Failed to set cache directory"));
    }
    if let Err(e) = config
        .save(&config_path)
        .and_then(|_| local_config::save_password(&config_path, password))
    {
        log.plain(&format!("cannot write {}: {e}", config_path.display()));
        return Err(log.fatal(1, "Failed to set cache directory"));
    }
    log.info(&format!("Cache directory ready at {}", ctx.cache_logical));
    log.timing(&format!(
        "Total repository connection process took {} seconds",
        started.elapsed().as_secs()
    ));
    log.blank();

    let mut session = Session {
        repo,
        config,
        config_path,
        identity: identity.clone(),
        actions_enabled: true,
    };
    if let Some(c) = manual
        .compression
        .as_deref()
        .filter(|_| ctx.repository_created())
    {
        apply_manual_compression(ctx, &session, c, &manual).await;
    }
    policy_files::apply(ctx, &mut session).await;
    Ok(session)
}

/// `KOPIA_STRUCTURED_REPOSITORY_CONFIG`: a kopia connection file; invalid JSON is fatal.
fn structured_config(ctx: &Ctx) -> Flow<Option<LocalConfig>> {
    let log = &ctx.log;
    let Some(text) = ctx.env.get("KOPIA_STRUCTURED_REPOSITORY_CONFIG") else {
        return Ok(None);
    };
    log.plain("=== Applying JSON repository configuration ===");
    let parsed: Result<LocalConfig, _> = serde_json::from_str(text);
    match parsed {
        Ok(cfg) => {
            log.plain("JSON configuration validated");
            Ok(Some(cfg))
        }
        Err(e) => {
            if serde_json::from_str::<Value>(text).is_err() {
                log.error_stdout("Invalid JSON in KOPIA_STRUCTURED_REPOSITORY_CONFIG");
                return Err(Stop { code: 1 });
            }
            log.warn(&format!(
                "KOPIA_STRUCTURED_REPOSITORY_CONFIG is not a kopia repository configuration ({e}); ignoring it"
            ));
            Ok(None)
        }
    }
}

/// `KOPIA_MANUAL_CONFIG`: invalid JSON exits 1 as in the reference; unusable keys only warn.
fn manual_config(ctx: &Ctx) -> Flow<ManualConfig> {
    let log = &ctx.log;
    let Some(text) = ctx.env.get("KOPIA_MANUAL_CONFIG") else {
        log.plain("No manual configuration provided, using automatic settings");
        return Ok(ManualConfig::default());
    };
    log.plain("=== Applying manual repository configuration ===");
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        log.plain("ERROR: Invalid JSON in KOPIA_MANUAL_CONFIG");
        log.plain("Falling back to automatic configuration");
        return Err(Stop { code: 1 });
    };
    let text_at = |a: &str, b: &str| json.get(a).and_then(|v| v.get(b)).and_then(scalar);
    let digits_at = |a: &str, b: &str| {
        let v = text_at(a, b)?;
        if v.bytes().all(|c| c.is_ascii_digit()) && !v.is_empty() {
            Some(v)
        } else {
            log.warn(&format!(
                "Invalid {a}.{b} '{v}' in KOPIA_MANUAL_CONFIG, must be numeric; ignored"
            ));
            None
        }
    };
    let manual = ManualConfig {
        encryption: text_at("encryption", "algorithm"),
        splitter: text_at("splitter", "algorithm"),
        compression: text_at("compression", "algorithm"),
        compression_min_size: digits_at("compression", "minSize"),
        compression_max_size: digits_at("compression", "maxSize"),
        max_cache_size: digits_at("caching", "maxCacheSize").and_then(|v| v.parse().ok()),
    };
    let shown = |o: bool| if o { "[SET]" } else { "[NOT SET]" };
    log.plain("Parsed configuration sections:");
    log.plain(&format!(
        "  Encryption: {}",
        shown(manual.encryption.is_some())
    ));
    log.plain(&format!(
        "  Compression: {}",
        shown(manual.compression.is_some())
    ));
    log.plain(&format!("  Splitter: {}", shown(manual.splitter.is_some())));
    log.plain(&format!(
        "  Caching: {}",
        shown(manual.max_cache_size.is_some())
    ));
    Ok(manual)
}

/// A JSON scalar as text: strings as they are, numbers and booleans printed.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn open_options(identity: &Identity, cache_dir: Option<PathBuf>) -> OpenOptions {
    OpenOptions {
        clock: crate::clock::clock(),
        username: identity.user.clone(),
        hostname: identity.host.clone(),
        known_format_key: None,
        scratch_directory: cache_dir,
    }
}

async fn open_from_config(
    cfg: &LocalConfig,
    password: &str,
    identity: &Identity,
) -> anyhow::Result<Repository> {
    let store = crate::connection::open_store(cfg).await?;
    Ok(Repository::open(
        store,
        password,
        open_options(identity, cfg.cache_directory()),
    )
    .await?)
}

async fn connect_or_create(
    ctx: &Ctx,
    identity: &Identity,
    password: &str,
    manual: &ManualConfig,
) -> Flow<(Repository, LocalConfig)> {
    let log = &ctx.log;
    let backend = match backend::select(&ctx.env, &ctx.paths, log) {
        Ok(b) => b,
        Err(SelectError::NoConfig) => {
            log.plain("No repository configuration found for connecting");
            return Err(log.fatal(1, "No repository configuration found"));
        }
        Err(SelectError::Unsupported { backend, variable }) => {
            return Err(log.fatal(
                1,
                &format!(
                    "{backend} repositories are not supported yet by kmover (selected because {variable} is set); use a filesystem or S3 repository"
                ),
            ));
        }
        Err(SelectError::Invalid(message)) => {
            log.error_stdout(&message);
            return Err(log.fatal(1, "Failed to create repository"));
        }
    };
    log.plain(&format!("Connecting to {}", backend.describe()));
    let (store, exists) = match locate(ctx, &backend).await {
        Ok(found) => found,
        Err(e) => {
            log.error_stdout(&format!("Cannot reach the repository storage: {e:#}"));
            return Err(log.fatal(1, "Failed to connect to repository"));
        }
    };
    if !exists {
        log.plain("No repository found in the storage location, creating new repository...");
        if let Err(e) = create(ctx, &store, password, identity, manual).await {
            log.error_stdout(&format!("{e:#}"));
            return Err(log.fatal(1, "Failed to create repository"));
        }
        ctx.mark_repository_created();
    }
    let opts = open_options(identity, Some(ctx.cache_dir.clone()));
    let repo = match Repository::open(store, password, opts).await {
        Ok(repo) => repo,
        Err(e) => {
            log.error_stdout(&format!("error connecting to repository: {e}"));
            // An existing repository stays untouched: no create is attempted over it.
            return Err(log.fatal(1, "Failed to connect to repository"));
        }
    };
    log.plain("Connected to repository.");
    Ok((repo, client_config(ctx, &backend, identity)))
}

/// Opens the storage; `true` when it already holds a repository. Data that is not a repository
/// is an error: a repository is only ever created in an empty location.
async fn locate(ctx: &Ctx, backend: &Backend) -> anyhow::Result<(DynBlobStore, bool)> {
    match backend {
        Backend::Filesystem { path } => {
            let real = ctx.paths.real(path);
            if real.join(format!("{FORMAT_BLOB}.f")).is_file() {
                let store: DynBlobStore = Arc::new(FilesystemStore::open(&real).await?);
                return Ok((store, true));
            }
            if std::fs::read_dir(&real).is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!(
                    "found existing data in {path} that is not a Kopia repository; refusing to create one there"
                );
            }
            let store: DynBlobStore =
                Arc::new(FilesystemStore::create(&real, ShardingMode::Default).await?);
            Ok((store, false))
        }
        Backend::S3(config) => {
            let store = crate::connection::s3_store((**config).clone())?;
            match store.metadata(FORMAT_BLOB).await {
                Ok(_) => Ok((store, true)),
                Err(e) if e.is_not_found() => {
                    if !store.list("").await?.is_empty() {
                        anyhow::bail!(
                            "found existing data in {} that is not a Kopia repository; refusing to create one there",
                            store.describe()
                        );
                    }
                    Ok((store, false))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn create(
    ctx: &Ctx,
    store: &DynBlobStore,
    password: &str,
    identity: &Identity,
    manual: &ManualConfig,
) -> anyhow::Result<()> {
    let log = &ctx.log;
    let mut opts = CreateOptions::default();
    if let Some(name) = &manual.encryption {
        match EncryptionAlgorithm::parse(name) {
            Ok(alg) => {
                log.plain(&format!("  Using encryption algorithm: {name}"));
                opts.encryption = alg;
            }
            Err(e) => log.warn(&format!(
                "KOPIA_MANUAL_CONFIG encryption.algorithm {name:?} is not usable ({e}); using the default"
            )),
        }
    }
    if let Some(name) = &manual.splitter {
        if kmover_format::splitter::ALL_SPLITTERS.contains(&name.as_str()) {
            log.plain(&format!("  Using splitter algorithm: {name}"));
            opts.splitter = name.clone();
        } else {
            log.warn(&format!(
                "KOPIA_MANUAL_CONFIG splitter.algorithm {name:?} is unknown; using the default"
            ));
        }
    }
    Repository::create(store.clone(), &opts, password).await?;
    let opts = open_options(identity, Some(ctx.cache_dir.clone()));
    let repo = Repository::open(store.clone(), password, opts).await?;
    kmover_snapshot::repository_setup::initialize_manifests(&repo, &identity.owner()).await?;
    log.plain(&format!("Initialized repository at {}", store.describe()));
    Ok(())
}

/// The manual config's compression becomes the global compression policy of a new repository
/// (kopia has no repository-level compression flag, Q-12).
async fn apply_manual_compression(ctx: &Ctx, session: &Session, alg: &str, m: &ManualConfig) {
    let mut flags = vec!["--global".to_string(), format!("--compression={alg}")];
    if let Some(v) = &m.compression_min_size {
        flags.push(format!("--compression-min-size={v}"));
    }
    if let Some(v) = &m.compression_max_size {
        flags.push(format!("--compression-max-size={v}"));
    }
    let global = kmover_format::snapshot::manifest::SourceInfo::default();
    match policy_files::set_policy(&session.repo, &global, &flags).await {
        Ok(()) => ctx
            .log
            .plain(&format!("  Using compression algorithm: {alg}")),
        Err(e) => ctx.log.warn(&format!(
            "KOPIA_MANUAL_CONFIG compression could not be applied: {e:#}"
        )),
    }
}

fn client_config(ctx: &Ctx, backend: &Backend, identity: &Identity) -> LocalConfig {
    match backend {
        Backend::Filesystem { path } => LocalConfig::new_filesystem(
            &ctx.paths.real(path),
            &ctx.cache_dir,
            &identity.host,
            &identity.user,
        ),
        Backend::S3(s3) => {
            let mut cfg = LocalConfig::new_filesystem(
                Path::new(""),
                &ctx.cache_dir,
                &identity.host,
                &identity.user,
            );
            cfg.storage = Some(ConnectionInfo {
                kind: "s3".into(),
                config: s3.to_kopia_json(),
            });
            cfg.description = format!("Repository in S3: {} {}", s3.endpoint, s3.bucket);
            cfg
        }
    }
}

/// `cache set`: the directory and the size limits (§2.6), recorded in the client config.
fn configure_cache(ctx: &Ctx, cfg: &mut LocalConfig, manual: &ManualConfig) -> Result<(), String> {
    let log = &ctx.log;
    let caching = cfg
        .caching
        .get_or_insert_with(|| local_config::CachingOptions {
            cache_directory: String::new(),
            rest: Default::default(),
        });
    caching.cache_directory = ctx.cache_dir.to_string_lossy().into_owned();
    if ctx.env.is_true("KOPIA_SKIP_CACHE_CONFIG") {
        log.info("Cache limits unchanged from previous run, skipping kopia cache set");
        return Ok(());
    }
    log.info("Configuring cache limits (first run or limits changed)");
    for (var, key, what) in [
        (
            "KOPIA_METADATA_CACHE_SIZE_LIMIT_MB",
            "metadataCacheSizeLimitBytes",
            "metadata",
        ),
        (
            "KOPIA_CONTENT_CACHE_SIZE_LIMIT_MB",
            "contentCacheSizeLimitBytes",
            "content",
        ),
    ] {
        let Some(v) = ctx.env.get(var) else { continue };
        match v.parse::<u64>() {
            Ok(mb) if v.bytes().all(|c| c.is_ascii_digit()) => {
                log.info(&format!("Setting {what} cache size limit: {mb} MB"));
                caching.rest.insert(key.into(), Value::from(mb << 20));
            }
            _ => log.warn(&format!(
                "WARNING: Invalid {what} cache size limit '{v}', must be numeric"
            )),
        }
    }
    if let Some(bytes) = manual.max_cache_size {
        log.plain(&format!("  Using maximum cache size: {bytes} bytes"));
        caching
            .rest
            .insert("maxCacheSize".into(), Value::from(bytes));
    }
    let dir = &ctx.cache_dir;
    if !dir.is_dir() {
        return Err(format!(
            "cache directory {} does not exist",
            ctx.cache_logical
        ));
    }
    Ok(())
}
