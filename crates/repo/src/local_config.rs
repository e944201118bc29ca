//! The client connection file kopia keeps at `--config-file` (default `repository.config`): which
//! storage to open, the cache directory and the client identity. Both tools read each other's.
//! The password sits beside it in `<config>.kopia-password` (base64), as kopia's file-based keyring,
//! and, only while that file holds the password, the key derived from it in
//! `<config>.kmover-format-key` (kopia ignores the file).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::crypto::KnownFormatKey;
use crate::error::{RepoError, Result};

/// kopia's `formatBlobCacheDuration` default: 15 minutes, in nanoseconds.
const DEFAULT_FORMAT_BLOB_CACHE_DURATION_NS: i64 = 900_000_000_000;
const DEFAULT_MAX_CACHE_SIZE: i64 = 5_242_880_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachingOptions {
    #[serde(
        rename = "cacheDirectory",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cache_directory: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Field order follows kopia's `LocalConfig` so files we write diff cleanly against kopia's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LocalConfig {
    #[serde(rename = "apiServer", default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ConnectionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caching: Option<CachingOptions>,
    pub hostname: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(rename = "enableActions", default)]
    pub enable_actions: bool,
    #[serde(
        rename = "formatBlobCacheDuration",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub format_blob_cache_duration: i64,
    /// Fields of newer kopia versions survive a rewrite by us.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl LocalConfig {
    pub fn new_filesystem(
        path: &Path,
        cache_directory: &Path,
        hostname: &str,
        username: &str,
    ) -> Self {
        let mut storage_cfg = Map::new();
        storage_cfg.insert(
            "path".into(),
            Value::String(path.to_string_lossy().into_owned()),
        );
        storage_cfg.insert("fileMode".into(), Value::from(0o600));
        storage_cfg.insert("dirMode".into(), Value::from(0o700));
        storage_cfg.insert("dirShards".into(), Value::Null);
        let mut caching = Map::new();
        caching.insert("maxCacheSize".into(), Value::from(DEFAULT_MAX_CACHE_SIZE));
        caching.insert(
            "maxMetadataCacheSize".into(),
            Value::from(DEFAULT_MAX_CACHE_SIZE),
        );
        caching.insert("maxListCacheDuration".into(), Value::from(30));
        LocalConfig {
            api_server: None,
            storage: Some(ConnectionInfo {
                kind: "filesystem".into(),
                config: Value::Object(storage_cfg),
            }),
            caching: Some(CachingOptions {
                cache_directory: cache_directory.to_string_lossy().into_owned(),
                rest: caching,
            }),
            hostname: hostname.into(),
            username: username.into(),
            readonly: false,
            description: format!("Repository in Filesystem: {}", path.display()),
            enable_actions: false,
            format_blob_cache_duration: DEFAULT_FORMAT_BLOB_CACHE_DURATION_NS,
            unknown: Map::new(),
        }
    }

    /// Loads a config file; a relative cache directory is relative to the file, as in kopia, and an
    /// absolute KOPIA_CACHE_DIRECTORY overrides it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            RepoError::Config(format!(
                "cannot read config file {}: {e} (is the repository connected?)",
                path.display()
            ))
        })?;
        let mut cfg: LocalConfig = serde_json::from_slice(&bytes).map_err(|e| {
            RepoError::Config(format!("config file {} is not valid: {e}", path.display()))
        })?;
        if let Some(c) = cfg.caching.as_mut() {
            let dir = Path::new(&c.cache_directory);
            if !c.cache_directory.is_empty() && dir.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                c.cache_directory = base.join(dir).to_string_lossy().into_owned();
            }
            if let Ok(env_dir) = std::env::var("KOPIA_CACHE_DIRECTORY")
                && Path::new(&env_dir).is_absolute()
            {
                c.cache_directory = env_dir;
            }
        }
        Ok(cfg)
    }

    /// Writes atomically with 0600 permissions; the cache directory is stored relative to the file
    /// when possible, as kopia does.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut copy = self.clone();
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(c) = copy.caching.as_mut()
            && let Ok(rel) = Path::new(&c.cache_directory).strip_prefix(base)
        {
            c.cache_directory = rel.to_string_lossy().into_owned();
        }
        // Go's json.MarshalIndent: the encoder's form without its trailing newline.
        let mut json = kmover_format::gojson::to_vec_indented(&copy)
            .map_err(|e| RepoError::Config(e.to_string()))?;
        json.pop();
        write_private_file(path, &json)
    }

    pub fn cache_directory(&self) -> Option<PathBuf> {
        self.caching
            .as_ref()
            .filter(|c| !c.cache_directory.is_empty())
            .map(|c| PathBuf::from(&c.cache_directory))
    }

    pub fn filesystem_path(&self) -> Option<PathBuf> {
        let s = self.storage.as_ref()?;
        (s.kind == "filesystem").then(|| s.config.get("path")?.as_str().map(PathBuf::from))?
    }
}

pub fn password_file_path(config_path: &Path) -> PathBuf {
    let mut s = config_path.as_os_str().to_owned();
    s.push(".kopia-password");
    PathBuf::from(s)
}

pub fn save_password(config_path: &Path, password: &str) -> Result<()> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(password.as_bytes());
    write_private_file(&password_file_path(config_path), encoded.as_bytes())
}

pub fn load_password(config_path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(password_file_path(config_path)).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

pub fn format_key_file_path(config_path: &Path) -> PathBuf {
    let mut s = config_path.as_os_str().to_owned();
    s.push(".kmover-format-key");
    PathBuf::from(s)
}

#[derive(Serialize, Deserialize)]
struct FormatKeyFile {
    #[serde(rename = "uniqueID")]
    unique_id: String,
    #[serde(rename = "keyAlgo")]
    key_algo: String,
    key: String,
}

/// The key saved by [`save_format_key`], when `password` is the persisted one: the file is no
/// more secret than the password beside it, and a password given for one run (flag or
/// environment) that differs from it never picks up its key.
pub fn load_format_key(config_path: &Path, password: &str) -> Option<KnownFormatKey> {
    if load_password(config_path).as_deref() != Some(password) {
        return None;
    }
    let text = std::fs::read(format_key_file_path(config_path)).ok()?;
    let file: FormatKeyFile = serde_json::from_slice(&text).ok()?;
    let engine = base64::engine::general_purpose::STANDARD;
    Some(KnownFormatKey {
        unique_id: hex::decode(&file.unique_id).ok()?,
        key_algo: file.key_algo,
        key: engine.decode(&file.key).ok()?.try_into().ok()?,
    })
}

/// Saves `key` (mode 0600) when `password` is the persisted one; returns whether it did.
pub fn save_format_key(config_path: &Path, password: &str, key: &KnownFormatKey) -> Result<bool> {
    if load_password(config_path).as_deref() != Some(password) {
        return Ok(false);
    }
    let file = FormatKeyFile {
        unique_id: hex::encode(&key.unique_id),
        key_algo: key.key_algo.clone(),
        key: base64::engine::general_purpose::STANDARD.encode(key.key),
    };
    let json = serde_json::to_vec(&file).map_err(|e| RepoError::Config(e.to_string()))?;
    write_private_file(&format_key_file_path(config_path), &json)?;
    Ok(true)
}

fn write_private_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| {
        RepoError::Config(format!("cannot create directory {}: {e}", parent.display()))
    })?;
    let tmp = parent.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RepoError::Config(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KOPIA_WRITTEN: &str = r#"{
  "storage": {
    "type": "filesystem",
    "config": {
      "path": "/tmp/kt/r",
      "fileMode": 384,
      "dirMode": 448,
      "dirShards": null
    }
  },
  "caching": {
    "cacheDirectory": "c",
    "maxCacheSize": 5242880000,
    "maxMetadataCacheSize": 5242880000,
    "maxListCacheDuration": 30
  },
  "hostname": "vm",
  "username": "root",
  "description": "Repository in Filesystem: /tmp/kt/r",
  "enableActions": false,
  "formatBlobCacheDuration": 900000000000
}"#;

    #[test]
    fn kopia_config_round_trips_byte_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg");
        std::fs::write(&path, KOPIA_WRITTEN).unwrap();
        let cfg = LocalConfig::load(&path).unwrap();
        assert_eq!(cfg.cache_directory().unwrap(), dir.path().join("c"));
        assert_eq!(cfg.filesystem_path().unwrap(), PathBuf::from("/tmp/kt/r"));
        cfg.save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), KOPIA_WRITTEN);
    }

    #[test]
    fn new_filesystem_config_matches_kopia_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg");
        let cfg = LocalConfig::new_filesystem(
            Path::new("/tmp/kt/r"),
            &dir.path().join("c"),
            "vm",
            "root",
        );
        cfg.save(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), KOPIA_WRITTEN);
    }

    #[test]
    fn password_file_is_kopia_base64() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg");
        save_password(&path, "pw").unwrap();
        assert_eq!(
            std::fs::read_to_string(password_file_path(&path)).unwrap(),
            "cHc="
        );
        assert_eq!(load_password(&path).unwrap(), "pw");
    }
}
