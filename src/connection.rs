//! Finding the connection file and password, and opening the repository it points to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use kmover_blob::DynBlobStore;
use kmover_blob::fs::FilesystemStore;
use kmover_repo::crypto::KnownFormatKey;
use kmover_repo::local_config::{self, LocalConfig};
use kmover_repo::{OpenOptions, Repository};

use crate::cli::GlobalArgs;
use crate::identity;

/// kopia's default: `<user config dir>/kopia/repository.config`.
pub fn config_path(global: &GlobalArgs) -> PathBuf {
    if let Some(p) = &global.config_file {
        return absolute(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("kopia").join("repository.config")
}

pub fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

pub fn cache_directory(global: &GlobalArgs, config: &std::path::Path) -> PathBuf {
    match &global.cache_directory {
        Some(d) => absolute(d.clone()),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("."));
            let stem = config
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            base.join("kopia").join(stem.trim_end_matches(".config"))
        }
    }
}

/// `--cache-directory`, else the connection's, else the default location.
pub fn effective_cache_directory(
    global: &GlobalArgs,
    config_path: &Path,
    config: &LocalConfig,
) -> PathBuf {
    match (&global.cache_directory, config.cache_directory()) {
        (None, Some(dir)) => dir,
        _ => cache_directory(global, config_path),
    }
}

/// The password from the flag or KOPIA_PASSWORD; else the one saved at connect time.
pub fn password(global: &GlobalArgs, config: &std::path::Path) -> anyhow::Result<String> {
    if let Some(p) = &global.password {
        return Ok(p.clone());
    }
    if let Some(p) = local_config::load_password(config) {
        return Ok(p);
    }
    bail!("no repository password: pass --password or set KOPIA_PASSWORD")
}

pub fn required_password(global: &GlobalArgs) -> anyhow::Result<String> {
    global
        .password
        .clone()
        .context("no repository password: pass --password or set KOPIA_PASSWORD")
}

pub async fn open_store(cfg: &LocalConfig) -> anyhow::Result<DynBlobStore> {
    let storage = cfg
        .storage
        .as_ref()
        .context("the connection file names no storage")?;
    match storage.kind.as_str() {
        "filesystem" => {
            let path = cfg
                .filesystem_path()
                .context("filesystem storage without a path")?;
            let store = FilesystemStore::open(&path).await.with_context(|| {
                format!("cannot open filesystem repository at {}", path.display())
            })?;
            Ok(Arc::new(store))
        }
        "s3" => s3_store(kmover_blob::s3::S3Config::from_kopia_json(&storage.config)?),
        other => bail!("storage type {other:?} is not supported yet"),
    }
}

pub struct Connected {
    pub config_path: PathBuf,
    pub config: LocalConfig,
    pub repo: Repository,
}

pub async fn open_connected(global: &GlobalArgs) -> anyhow::Result<Connected> {
    let config_path = config_path(global);
    let config = LocalConfig::load(&config_path)?;
    let password = password(global, &config_path)?;
    // Counted for the read/written metrics of backup, restore, verify and maintenance.
    let store = open_store(&config)
        .await
        .with_context(|| format!("the storage of connection file {}", config_path.display()))?;
    #[cfg(feature = "testing")]
    let store = crate::storage_clock::wrap(store, &config, crate::clock::clock()).await;
    let store = crate::metrics::count_io(store);
    #[cfg(feature = "testing")]
    let store = crate::crash_hook::wrap(store);
    let known_format_key = local_config::load_format_key(&config_path, &password);
    let opts = OpenOptions {
        clock: crate::clock::clock(),
        username: config.username.clone(),
        hostname: config.hostname.clone(),
        known_format_key: known_format_key.clone(),
        scratch_directory: Some(effective_cache_directory(global, &config_path, &config)),
    };
    let repo = Repository::open(store, &password, opts).await?;
    remember_format_key(&config_path, &password, &repo, known_format_key.as_ref());
    Ok(Connected {
        config_path,
        config,
        repo,
    })
}

/// Saves the key this open derived for the next run, when the password is the persisted one. A
/// failure only costs the next run a derivation.
pub fn remember_format_key(
    config_path: &Path,
    password: &str,
    repo: &Repository,
    known: Option<&KnownFormatKey>,
) {
    let key = repo.crypto().known_format_key();
    if known == Some(&key) {
        return;
    }
    if let Err(e) = local_config::save_format_key(config_path, password, &key) {
        tracing::debug!("the derived format key was not saved: {e}");
    }
}

pub fn new_filesystem_config(
    global: &GlobalArgs,
    path: &std::path::Path,
) -> (PathBuf, LocalConfig) {
    let config_path = config_path(global);
    let cache = cache_directory(global, &config_path);
    let cfg =
        LocalConfig::new_filesystem(path, &cache, &identity::hostname(), &identity::username());
    (config_path, cfg)
}

/// kopia's S3 flags as the storage config kopia saves in its connection file.
pub fn s3_config_from_args(args: &crate::cli::S3Args) -> anyhow::Result<kmover_blob::s3::S3Config> {
    let mut config = kmover_blob::s3::S3Config::new(&args.bucket, &args.endpoint);
    config.prefix = args.prefix.clone();
    config.region = args.region.clone();
    config.disable_tls = args.disable_tls;
    config.disable_tls_verification = args.disable_tls_verification;
    config.access_key_id = args.access_key.clone();
    config.secret_access_key = args.secret_access_key.clone();
    config.session_token = args.session_token.clone();
    if let Some(path) = &args.root_ca_pem_path {
        config.root_ca_pem = std::fs::read(path)
            .with_context(|| format!("error opening root-ca-pem-path {}", path.display()))?;
        kmover_blob::s3::check_root_ca_pem(&config.root_ca_pem).with_context(|| {
            format!("invalid CA bundle in --root-ca-pem-path {}", path.display())
        })?;
    } else if let Some(encoded) = &args.root_ca_pem_base64 {
        config.root_ca_pem = kmover_blob::s3::decode_root_ca_base64(encoded)
            .context("unable to decode CA (--root-ca-pem-base64 or ROOT_CA_PEM_BASE64)")?;
        kmover_blob::s3::check_root_ca_pem(&config.root_ca_pem)
            .context("invalid CA bundle in --root-ca-pem-base64 (or ROOT_CA_PEM_BASE64)")?;
    }
    Ok(config)
}

/// An S3 store behind the retrying wrapper. `KMOVER_RETRY_MAX_TIME` (seconds, default 120)
/// bounds the retries of one operation; `KMOVER_STORAGE_CONCURRENCY` (default 32) bounds the
/// requests in flight.
pub fn s3_store(config: kmover_blob::s3::S3Config) -> anyhow::Result<DynBlobStore> {
    use kmover_blob::retry::{RetryPolicy, RetryingStore};
    let mut policy = RetryPolicy::default();
    if let Ok(text) = std::env::var("KMOVER_RETRY_MAX_TIME") {
        let seconds: f64 = text
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .with_context(|| {
                format!("KMOVER_RETRY_MAX_TIME={text:?} is not a number of seconds")
            })?;
        policy.max_elapsed = std::time::Duration::from_secs_f64(seconds);
    }
    if let Ok(text) = std::env::var("KMOVER_STORAGE_CONCURRENCY") {
        policy.max_concurrency = text
            .trim()
            .parse()
            .ok()
            .filter(|n: &usize| *n > 0)
            .with_context(|| {
                format!("KMOVER_STORAGE_CONCURRENCY={text:?} is not a positive number")
            })?;
    }
    let store = kmover_blob::s3::S3Store::new(config)?;
    Ok(Arc::new(RetryingStore::new(Arc::new(store), policy)))
}

/// A connection file for an S3 repository, as kopia writes it.
pub fn new_s3_config(
    global: &GlobalArgs,
    s3: &kmover_blob::s3::S3Config,
) -> (PathBuf, LocalConfig) {
    let config_path = config_path(global);
    let cache = cache_directory(global, &config_path);
    let mut cfg = LocalConfig::new_filesystem(
        std::path::Path::new(""),
        &cache,
        &identity::hostname(),
        &identity::username(),
    );
    cfg.storage = Some(kmover_repo::local_config::ConnectionInfo {
        kind: "s3".into(),
        config: s3.to_kopia_json(),
    });
    cfg.description = format!("Repository in S3: {} {}", s3.endpoint, s3.bucket);
    (config_path, cfg)
}
