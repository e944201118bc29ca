//! `repository create|connect|disconnect|status`.

use std::sync::Arc;

use anyhow::Context;
use kmover_blob::DynBlobStore;
use kmover_blob::fs::{FilesystemStore, ShardingMode};
use kmover_format::encryption::EncryptionAlgorithm;
use kmover_format::hashing::HashAlgorithm;
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_repo::local_config::{self, LocalConfig};
use kmover_repo::{CreateOptions, OpenOptions, Repository};
use serde_json::json;

use crate::cli::{CreateFormatArgs, GlobalArgs, RepositoryCommand, StorageConnect, StorageCreate};
use crate::connection;

pub async fn run(global: &GlobalArgs, cmd: RepositoryCommand) -> anyhow::Result<()> {
    match cmd {
        RepositoryCommand::Create(StorageCreate::Filesystem { storage, format }) => {
            let path = connection::absolute(storage.path);
            let opts = create_options(&format)?;
            let password = connection::required_password(global)?;
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            // Never re-initialise: even writing `.shards` could make an existing repository unreadable.
            let has_data = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .next()
                .is_some();
            if has_data {
                anyhow::bail!(
                    "found existing data in storage location {}: refusing to create a repository there",
                    path.display()
                );
            }
            let mode = match (storage.flat, opts.format_version) {
                (true, _) => ShardingMode::Flat,
                (false, 1) => ShardingMode::Legacy33,
                _ => ShardingMode::Default,
            };
            let store: DynBlobStore = Arc::new(FilesystemStore::create(&path, mode).await?);
            Repository::create(store.clone(), &opts, &password).await?;
            let (_, mut cfg) = connection::new_filesystem_config(global, &path);
            storage.connect.apply(&mut cfg);
            let repo = Repository::open(store.clone(), &password, open_options(&cfg)).await?;
            let owner = format!("{}@{}", cfg.username, cfg.hostname);
            kmover_snapshot::repository_setup::initialize_manifests(&repo, &owner).await?;
            eprintln!("Initialized repository at {}", path.display());
            connect(global, &path, &storage.connect, store, &password).await
        }
        RepositoryCommand::Connect(StorageConnect::Filesystem { storage }) => {
            let path = connection::absolute(storage.path);
            let password = connection::required_password(global)?;
            let store: DynBlobStore = Arc::new(FilesystemStore::open(&path).await?);
            connect(global, &path, &storage.connect, store, &password).await
        }
        RepositoryCommand::Create(StorageCreate::S3 { storage, format }) => {
            let opts = create_options(&format)?;
            let password = connection::required_password(global)?;
            let s3 = connection::s3_config_from_args(&storage)?;
            let store = connection::s3_store(s3.clone())?;
            // kopia's rule: only an empty bucket prefix may receive a new repository.
            if !store.list("").await?.is_empty() {
                anyhow::bail!(
                    "found existing data in storage location {}: refusing to create a repository there",
                    store.describe()
                );
            }
            Repository::create(store.clone(), &opts, &password).await?;
            let (config_path, mut cfg) = connection::new_s3_config(global, &s3);
            storage.connect.apply(&mut cfg);
            let repo = Repository::open(store.clone(), &password, open_options(&cfg)).await?;
            let owner = format!("{}@{}", cfg.username, cfg.hostname);
            kmover_snapshot::repository_setup::initialize_manifests(&repo, &owner).await?;
            eprintln!("Initialized repository at {}", store.describe());
            let persist = storage.connect.persist_password();
            save_connection(&config_path, cfg, store, &password, persist).await
        }
        RepositoryCommand::Connect(StorageConnect::S3 { storage }) => {
            let password = connection::required_password(global)?;
            let s3 = connection::s3_config_from_args(&storage)?;
            let store = connection::s3_store(s3.clone())?;
            let (config_path, mut cfg) = connection::new_s3_config(global, &s3);
            storage.connect.apply(&mut cfg);
            let persist = storage.connect.persist_password();
            save_connection(&config_path, cfg, store, &password, persist).await
        }
        RepositoryCommand::Disconnect => {
            let config_path = connection::config_path(global);
            for p in [
                local_config::format_key_file_path(&config_path),
                local_config::password_file_path(&config_path),
                config_path,
            ] {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("cannot remove {}", p.display()));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        RepositoryCommand::Status { json } => status(global, json).await,
    }
}

fn create_options(f: &CreateFormatArgs) -> anyhow::Result<CreateOptions> {
    Ok(CreateOptions {
        hash: HashAlgorithm::parse(&f.block_hash)?,
        encryption: EncryptionAlgorithm::parse(&f.encryption)?,
        key_algorithm: KeyDerivationAlgorithm::parse(&f.format_block_key_derivation_algorithm)?,
        format_version: f.format_version,
        splitter: f.object_splitter.clone(),
        ..CreateOptions::default()
    })
}

/// Opens the repository once to check the password, then writes the connection file.
async fn connect(
    global: &GlobalArgs,
    path: &std::path::Path,
    options: &crate::cli::ConnectOptions,
    store: DynBlobStore,
    password: &str,
) -> anyhow::Result<()> {
    let (config_path, mut cfg) = connection::new_filesystem_config(global, path);
    options.apply(&mut cfg);
    save_connection(
        &config_path,
        cfg,
        store,
        password,
        options.persist_password(),
    )
    .await
}

/// Opens the repository once to check the password, then writes the connection file.
async fn save_connection(
    config_path: &std::path::Path,
    cfg: LocalConfig,
    store: DynBlobStore,
    password: &str,
    persist_password: bool,
) -> anyhow::Result<()> {
    let repo = Repository::open(store, password, open_options(&cfg)).await?;
    cfg.save(config_path)?;
    // A key or password left by an earlier connection must not outlive this one.
    let mut stale = vec![local_config::format_key_file_path(config_path)];
    if persist_password {
        local_config::save_password(config_path, password)?;
    } else {
        stale.push(local_config::password_file_path(config_path));
    }
    for path in stale {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()));
            }
            _ => {}
        }
    }
    connection::remember_format_key(config_path, password, &repo, None);
    eprintln!("Connected to repository.");
    Ok(())
}

fn open_options(cfg: &LocalConfig) -> OpenOptions {
    OpenOptions {
        clock: crate::clock::clock(),
        username: cfg.username.clone(),
        hostname: cfg.hostname.clone(),
        known_format_key: None,
        scratch_directory: cfg.cache_directory(),
    }
}

async fn status(global: &GlobalArgs, json: bool) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let crypto = c.repo.crypto();
    let cfg = &crypto.config;
    let unique_id = hex::encode(&crypto.format_blob.unique_id);
    if json {
        let mut content_format = serde_json::Map::new();
        content_format.insert("hash".into(), json!(cfg.hash));
        content_format.insert("encryption".into(), json!(cfg.encryption));
        if !cfg.ecc.is_empty() {
            content_format.insert("ecc".into(), json!(cfg.ecc));
        }
        content_format.insert("version".into(), json!(cfg.version));
        content_format.insert("maxPackSize".into(), json!(cfg.max_pack_size));
        content_format.insert("indexVersion".into(), json!(cfg.index_version));
        content_format.insert(
            "epochParameters".into(),
            serde_json::to_value(&cfg.epoch_parameters)?,
        );
        content_format.insert(
            "enablePasswordChange".into(),
            json!(cfg.enable_password_change),
        );
        let status = json!({
            "configFile": c.config_path.to_string_lossy(),
            "uniqueIDHex": unique_id,
            "clientOptions": client_options(&c.config),
            // Secrets are starred out, as kopia shows them.
            "storage": c.config.storage.as_ref().map(|s| json!({
                "type": s.kind,
                "config": kmover_blob::s3::redact_kopia_json(&s.config),
            })),
            "contentFormat": content_format,
            "objectFormat": {"splitter": cfg.splitter},
            "blobRetention": blob_retention(crypto),
        });
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    println!("Config file:         {}", c.config_path.display());
    println!();
    println!("Description:         {}", c.config.description);
    println!("Hostname:            {}", c.config.hostname);
    println!("Username:            {}", c.config.username);
    println!("Read-only:           {}", c.config.readonly);
    println!();
    println!(
        "Storage type:        {}",
        c.config.storage.as_ref().map_or("", |s| s.kind.as_str())
    );
    println!();
    println!("Unique ID:           {unique_id}");
    println!("Hash:                {}", cfg.hash);
    println!("Encryption:          {}", cfg.encryption);
    println!("Splitter:            {}", cfg.splitter);
    println!("Format version:      {}", cfg.version);
    println!("Content compression: {}", crypto.index_version() >= 2);
    println!("Password changes:    {}", cfg.enable_password_change);
    println!("Max pack length:     {}", crypto.max_pack_size());
    println!("Index Format:        v{}", crypto.index_version());
    println!(
        "Epoch Manager:       {}",
        if crypto.epoch_enabled() {
            "enabled"
        } else {
            "disabled"
        }
    );
    Ok(())
}

fn client_options(cfg: &LocalConfig) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("hostname".into(), json!(cfg.hostname));
    m.insert("username".into(), json!(cfg.username));
    if cfg.readonly {
        m.insert("readonly".into(), json!(true));
    }
    if !cfg.description.is_empty() {
        m.insert("description".into(), json!(cfg.description));
    }
    m.insert("enableActions".into(), json!(cfg.enable_actions));
    if cfg.format_blob_cache_duration != 0 {
        m.insert(
            "formatBlobCacheDuration".into(),
            json!(cfg.format_blob_cache_duration),
        );
    }
    serde_json::Value::Object(m)
}

fn blob_retention(crypto: &kmover_repo::crypto::RepoCrypto) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if !crypto.blobcfg.retention_mode.is_empty() {
        m.insert("retentionMode".into(), json!(crypto.blobcfg.retention_mode));
    }
    if crypto.blobcfg.retention_period_ns != 0 {
        m.insert(
            "retentionPeriod".into(),
            json!(crypto.blobcfg.retention_period_ns),
        );
    }
    serde_json::Value::Object(m)
}
