//! Finding the connection file and password, and opening the repository it points to.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use kmover_blob::DynBlobStore;
use kmover_blob::fs::FilesystemStore;
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
    let store = open_store(&config).await?;
    let opts = OpenOptions {
        username: config.username.clone(),
        hostname: config.hostname.clone(),
        ..Default::default()
    };
    let repo = Repository::open(store, &password, opts).await?;
    Ok(Connected {
        config_path,
        config,
        repo,
    })
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
