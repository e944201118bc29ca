//! The format blob `kopia.repository` (spec §2): outer JSON, password key, the encrypted
//! repository config; also `kopia.blobcfg` (§2.7), the checksummed replica embedded in packs of
//! legacy repositories (§2.9) and auxiliary key derivation (§3).

use std::fmt;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::encryption::{NONCE_LEN, open_aes256_gcm, seal_aes256_gcm};
use crate::error::{FormatError, Result};
use crate::gojson::{self, GoObject};
use crate::kdf::{KeyDerivationAlgorithm, hkdf_sha256};

pub const FORMAT_BLOB_ID: &str = "kopia.repository";
pub const BLOBCFG_BLOB_ID: &str = "kopia.blobcfg";
/// The only format-blob encryption (note the underscore, unlike content encryption names).
pub const FORMAT_ENCRYPTION: &str = "AES256_GCM";
pub const TOOL_URL: &str = "https://github.com/kopia/kopia";
/// Length of the unique ID of a new repository.
pub const UNIQUE_ID_LEN: usize = 32;
pub const DEFAULT_MAX_PACK_SIZE: usize = 20 << 20;
pub const DEFAULT_SPLITTER: &str = "DYNAMIC-4M-BUZHASH";
/// Required features kopia v0.21–v0.23 (and we) understand.
pub const SUPPORTED_FEATURES: &[&str] = &["index-v1", "index-v2"];

/// The outer JSON of `kopia.repository`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FormatBlob {
    pub tool: String,
    pub build_version: String,
    pub build_info: String,
    /// Salt of every key derivation; 32 random bytes in new repositories.
    pub unique_id: Vec<u8>,
    pub key_algo: String,
    pub encryption: String,
    /// `nonce || AES-256-GCM(config JSON) || tag`; empty means absent.
    pub encrypted_block_format: Vec<u8>,
}

const FORMAT_BLOB_FIELDS: &[&str] = &[
    "tool",
    "buildVersion",
    "buildInfo",
    "uniqueID",
    "keyAlgo",
    "encryption",
    "encryptedBlockFormat",
];

impl FormatBlob {
    /// Parses the blob as Go does (keys case-insensitive, unknown keys ignored). A blob without
    /// `keyAlgo` (kopia before v0.9) is refused, as kopia v0.21+ refuses it.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::malformed("format blob", e.to_string()))?;
        let mut blob = FormatBlob::default();
        if let Some(obj) = GoObject::new("format blob", &value)? {
            obj.visit(FORMAT_BLOB_FIELDS, |field, _, v| {
                let Some(field) = field else { return Ok(()) };
                let text = match field {
                    "tool" => &mut blob.tool,
                    "buildVersion" => &mut blob.build_version,
                    "buildInfo" => &mut blob.build_info,
                    "keyAlgo" => &mut blob.key_algo,
                    "encryption" => &mut blob.encryption,
                    "uniqueID" => {
                        blob.unique_id = obj.bytes(field, v)?.unwrap_or_default();
                        return Ok(());
                    }
                    _ => {
                        blob.encrypted_block_format = obj.bytes(field, v)?.unwrap_or_default();
                        return Ok(());
                    }
                };
                if let Some(s) = obj.string(field, v)? {
                    *text = s;
                }
                Ok(())
            })?;
        }
        if blob.key_algo.is_empty() {
            return Err(FormatError::malformed(
                "format blob",
                "no keyAlgo: repositories created before kopia v0.9 cannot be opened by kopia v0.21+",
            ));
        }
        Ok(blob)
    }

    /// Serialises exactly as kopia writes the blob (Go `json.Encoder`, two-space indent, `\n`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("tool".into(), self.tool.clone().into());
        m.insert("buildVersion".into(), self.build_version.clone().into());
        m.insert("buildInfo".into(), self.build_info.clone().into());
        // Go writes a nil []byte (what parsing an absent or null ID gives) as null.
        let unique_id = if self.unique_id.is_empty() {
            Value::Null
        } else {
            gojson::encode_bytes(&self.unique_id).into()
        };
        m.insert("uniqueID".into(), unique_id);
        m.insert("keyAlgo".into(), self.key_algo.clone().into());
        m.insert("encryption".into(), self.encryption.clone().into());
        if !self.encrypted_block_format.is_empty() {
            m.insert(
                "encryptedBlockFormat".into(),
                gojson::encode_bytes(&self.encrypted_block_format).into(),
            );
        }
        gojson::to_vec_indented(&Value::Object(m)).expect("a JSON value always serialises")
    }

    fn aead_keys(&self, format_key: &[u8; 32]) -> Result<([u8; 32], [u8; 32])> {
        if self.encryption != FORMAT_ENCRYPTION {
            return Err(FormatError::Unsupported {
                what: "format blob encryption",
                name: self.encryption.clone(),
            });
        }
        Ok(format_aead_keys(format_key, &self.unique_id))
    }

    /// Decrypts and parses the repository config. A tag mismatch means a wrong password. Fails
    /// with `Unsupported` if the config requires a feature we do not understand (unless the
    /// repository marks it as warn-only).
    pub fn decrypt_config(&self, format_key: &[u8; 32]) -> Result<RepositoryConfig> {
        let (key, aad) = self.aead_keys(format_key)?;
        let plaintext = open_aes256_gcm(&key, &aad, &self.encrypted_block_format)
            .ok_or(FormatError::InvalidPassword)?;
        let cfg = RepositoryConfig::parse_json(&plaintext)?;
        if let Some(hard) = cfg.unsupported_features()?.into_iter().find(|f| !f.warn) {
            return Err(FormatError::Unsupported {
                what: "required repository feature",
                name: hard.feature,
            });
        }
        Ok(cfg)
    }

    /// Encrypts `cfg` into `encrypted_block_format`. An empty `encryption` becomes `AES256_GCM`,
    /// as at kopia's repository creation.
    pub fn seal_config(
        &mut self,
        cfg: &RepositoryConfig,
        format_key: &[u8; 32],
        nonce: [u8; NONCE_LEN],
    ) -> Result<()> {
        if self.encryption.is_empty() {
            self.encryption = FORMAT_ENCRYPTION.to_string();
        }
        let (key, aad) = self.aead_keys(format_key)?;
        self.encrypted_block_format = seal_aes256_gcm(&key, nonce, &aad, &cfg.to_json());
        Ok(())
    }
}

/// The AES key and the AAD of the format blob and `kopia.blobcfg`.
fn format_aead_keys(format_key: &[u8; 32], unique_id: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut key = [0u8; 32];
    let mut aad = [0u8; 32];
    hkdf_sha256(format_key, unique_id, b"AES", &mut key);
    hkdf_sha256(format_key, unique_id, b"CHECKSUM", &mut aad);
    (key, aad)
}

/// The format encryption key: the password stretched with `keyAlgo`, salted with the unique ID.
pub fn derive_format_key(key_algo: &str, password: &str, unique_id: &[u8]) -> Result<[u8; 32]> {
    KeyDerivationAlgorithm::parse(key_algo)?.derive(password.as_bytes(), unique_id)
}

/// Epoch manager parameters (spec §11.2). Durations are nanoseconds, as Go's `time.Duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochParameters {
    pub enabled: bool,
    pub epoch_refresh_frequency_ns: i64,
    pub full_checkpoint_frequency: i64,
    pub cleanup_safety_margin_ns: i64,
    pub min_epoch_duration_ns: i64,
    pub epoch_advance_on_count_threshold: i64,
    pub epoch_advance_on_total_size_bytes_threshold: i64,
    pub delete_parallelism: i64,
    /// Keys this version does not know, written back unchanged.
    pub unknown: Map<String, Value>,
}

const MINUTE_NS: i64 = 60 * 1_000_000_000;

impl Default for EpochParameters {
    /// Kopia's `epoch.DefaultParameters()`.
    fn default() -> Self {
        EpochParameters {
            enabled: true,
            epoch_refresh_frequency_ns: 20 * MINUTE_NS,
            full_checkpoint_frequency: 7,
            cleanup_safety_margin_ns: 4 * 60 * MINUTE_NS,
            min_epoch_duration_ns: 24 * 60 * MINUTE_NS,
            epoch_advance_on_count_threshold: 20,
            epoch_advance_on_total_size_bytes_threshold: 10 << 20,
            delete_parallelism: 4,
            unknown: Map::new(),
        }
    }
}

const EPOCH_FIELDS: &[&str] = &[
    "Enabled",
    "EpochRefreshFrequency",
    "FullCheckpointFrequency",
    "CleanupSafetyMargin",
    "MinEpochDuration",
    "EpochAdvanceOnCountThreshold",
    "EpochAdvanceOnTotalSizeBytesThreshold",
    "DeleteParallelism",
];

impl EpochParameters {
    /// All zero: what format version 1 stores (legacy index manager).
    pub fn disabled() -> Self {
        EpochParameters {
            enabled: false,
            epoch_refresh_frequency_ns: 0,
            full_checkpoint_frequency: 0,
            cleanup_safety_margin_ns: 0,
            min_epoch_duration_ns: 0,
            epoch_advance_on_count_threshold: 0,
            epoch_advance_on_total_size_bytes_threshold: 0,
            delete_parallelism: 0,
            unknown: Map::new(),
        }
    }

    /// Fields present in `obj` overwrite the corresponding values of `self` (Go semantics).
    fn merge_from(&mut self, obj: &GoObject<'_>) -> Result<()> {
        obj.visit(EPOCH_FIELDS, |field, key, v| {
            let Some(field) = field else {
                self.unknown.insert(key.to_string(), v.clone());
                return Ok(());
            };
            if field == "Enabled" {
                if let Some(b) = obj.bool(field, v)? {
                    self.enabled = b;
                }
                return Ok(());
            }
            let slot = match field {
                "EpochRefreshFrequency" => &mut self.epoch_refresh_frequency_ns,
                "FullCheckpointFrequency" => &mut self.full_checkpoint_frequency,
                "CleanupSafetyMargin" => &mut self.cleanup_safety_margin_ns,
                "MinEpochDuration" => &mut self.min_epoch_duration_ns,
                "EpochAdvanceOnCountThreshold" => &mut self.epoch_advance_on_count_threshold,
                "EpochAdvanceOnTotalSizeBytesThreshold" => {
                    &mut self.epoch_advance_on_total_size_bytes_threshold
                }
                _ => &mut self.delete_parallelism,
            };
            if let Some(n) = obj.int(field, v)? {
                *slot = n;
            }
            Ok(())
        })
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("Enabled".into(), self.enabled.into());
        m.insert(
            "EpochRefreshFrequency".into(),
            self.epoch_refresh_frequency_ns.into(),
        );
        m.insert(
            "FullCheckpointFrequency".into(),
            self.full_checkpoint_frequency.into(),
        );
        m.insert(
            "CleanupSafetyMargin".into(),
            self.cleanup_safety_margin_ns.into(),
        );
        m.insert("MinEpochDuration".into(), self.min_epoch_duration_ns.into());
        m.insert(
            "EpochAdvanceOnCountThreshold".into(),
            self.epoch_advance_on_count_threshold.into(),
        );
        m.insert(
            "EpochAdvanceOnTotalSizeBytesThreshold".into(),
            self.epoch_advance_on_total_size_bytes_threshold.into(),
        );
        m.insert("DeleteParallelism".into(), self.delete_parallelism.into());
        append_unknown(&mut m, &self.unknown);
        Value::Object(m)
    }
}

/// Serialises with kopia's JSON keys (PascalCase, durations in nanoseconds).
impl serde::Serialize for EpochParameters {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

/// The decrypted repository configuration (`{"format": {…}}`, spec §2.4).
#[derive(Clone, PartialEq, Eq)]
pub struct RepositoryConfig {
    pub hash: String,
    pub encryption: String,
    pub ecc: String,
    pub ecc_overhead_percent: i64,
    /// The HMAC secret keying content hashes; empty when HMAC was disabled at creation.
    pub secret: Vec<u8>,
    pub master_key: Vec<u8>,
    pub version: i64,
    pub max_pack_size: i64,
    pub index_version: i64,
    pub epoch_parameters: EpochParameters,
    pub enable_password_change: bool,
    pub splitter: String,
    pub upgrade_lock: Option<Value>,
    pub required_features: Option<Value>,
    /// Keys of the `format` object this version does not know, written back unchanged.
    pub unknown: Map<String, Value>,
}

impl fmt::Debug for RepositoryConfig {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("hash", &self.hash)
            .field("encryption", &self.encryption)
            .field("ecc", &self.ecc)
            .field("ecc_overhead_percent", &self.ecc_overhead_percent)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field(
                "master_key",
                &format_args!("<{} bytes>", self.master_key.len()),
            )
            .field("version", &self.version)
            .field("max_pack_size", &self.max_pack_size)
            .field("index_version", &self.index_version)
            .field("epoch_parameters", &self.epoch_parameters)
            .field("enable_password_change", &self.enable_password_change)
            .field("splitter", &self.splitter)
            .field("upgrade_lock", &self.upgrade_lock)
            .field("required_features", &self.required_features)
            .field("unknown", &self.unknown)
            .finish()
    }
}

const CONFIG_FIELDS: &[&str] = &[
    "hash",
    "encryption",
    "ecc",
    "eccOverheadPercent",
    "secret",
    "masterKey",
    "version",
    "maxPackSize",
    "indexVersion",
    "epochParameters",
    "enablePasswordChange",
    "splitter",
    "upgradeLock",
    "requiredFeatures",
];

/// A required feature of the repository that this version does not implement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedFeature {
    pub feature: String,
    /// The repository allows clients that do not understand it to go on with a warning.
    pub warn: bool,
    pub message: String,
}

impl RepositoryConfig {
    /// What `kopia repository create` writes with default options (format version 3).
    pub fn new_default(secret: [u8; 32], master_key: [u8; 32]) -> Self {
        RepositoryConfig {
            hash: crate::hashing::HashAlgorithm::default().name().to_string(),
            encryption: crate::encryption::EncryptionAlgorithm::default()
                .name()
                .to_string(),
            // The CLI's default ECC has 0 % overhead, so creation clears it.
            ecc: String::new(),
            ecc_overhead_percent: 0,
            secret: secret.to_vec(),
            master_key: master_key.to_vec(),
            version: 3,
            max_pack_size: DEFAULT_MAX_PACK_SIZE as i64,
            index_version: 2,
            epoch_parameters: EpochParameters::default(),
            enable_password_change: true,
            splitter: DEFAULT_SPLITTER.to_string(),
            upgrade_lock: None,
            required_features: None,
            unknown: Map::new(),
        }
    }

    /// Index format version; absent or 0 means 1.
    pub fn effective_index_version(&self) -> i64 {
        if self.index_version == 0 {
            1
        } else {
            self.index_version
        }
    }

    /// Target pack size; absent or 0 (legacy) means 20 MiB, as does a nonsensical negative value.
    pub fn effective_max_pack_size(&self) -> usize {
        usize::try_from(self.max_pack_size)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_PACK_SIZE)
    }

    /// ECC is active only with a name and a positive overhead.
    pub fn ecc_enabled(&self) -> bool {
        !self.ecc.is_empty() && self.ecc_overhead_percent > 0
    }

    /// The checks kopia makes when opening a repository (spec §2.6): format version 1–3, index
    /// version 1–2, known hash and encryption.
    pub fn validate_for_open(&self) -> Result<()> {
        if !(1..=3).contains(&self.version) {
            return Err(FormatError::Unsupported {
                what: "format version",
                name: self.version.to_string(),
            });
        }
        let index = self.effective_index_version();
        if !(1..=2).contains(&index) {
            return Err(FormatError::Unsupported {
                what: "index version",
                name: index.to_string(),
            });
        }
        crate::hashing::HashAlgorithm::parse(&self.hash)?;
        crate::encryption::EncryptionAlgorithm::parse(&self.encryption)?;
        Ok(())
    }

    /// Required features we do not understand, with whether each is warn-only.
    pub fn unsupported_features(&self) -> Result<Vec<UnsupportedFeature>> {
        let Some(list) = &self.required_features else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = list else {
            return Err(FormatError::malformed(
                "repository config",
                "requiredFeatures is not an array",
            ));
        };
        let mut unsupported = Vec::new();
        for item in items {
            let mut feature = UnsupportedFeature {
                feature: String::new(),
                warn: false,
                message: String::new(),
            };
            if let Some(obj) = GoObject::new("required feature", item)? {
                obj.visit(&["feature", "ifNotUnderstood"], |field, _, v| {
                    match field {
                        Some("feature") => {
                            feature.feature = obj.string("feature", v)?.unwrap_or_default()
                        }
                        Some(_) => {
                            let Some(inner) = GoObject::new("required feature", v)? else {
                                return Ok(());
                            };
                            inner.visit(
                                &["warn", "message", "url", "upgradeToVersion"],
                                |f, _, v| {
                                    match f {
                                        Some("warn") => {
                                            feature.warn =
                                                inner.bool("warn", v)?.unwrap_or(feature.warn)
                                        }
                                        Some("message") => {
                                            feature.message =
                                                inner.string("message", v)?.unwrap_or_default()
                                        }
                                        Some(name) => {
                                            inner.string(name, v)?;
                                        }
                                        None => {}
                                    }
                                    Ok(())
                                },
                            )?;
                        }
                        None => {}
                    }
                    Ok(())
                })?;
            }
            if !SUPPORTED_FEATURES.contains(&feature.feature.as_str()) {
                unsupported.push(feature);
            }
        }
        Ok(unsupported)
    }

    /// Parses the decrypted JSON `{"format": {…}}` as Go does.
    pub fn parse_json(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::malformed("repository config", e.to_string()))?;
        let mut cfg = RepositoryConfig::zero();
        let Some(outer) = GoObject::new("repository config", &value)? else {
            return Ok(cfg);
        };
        let mut format = None;
        outer.visit(&["format"], |field, _, v| {
            if field.is_some() {
                format = Some(v);
            }
            Ok(())
        })?;
        if let Some(obj) = format
            .map(|v| GoObject::new("repository config", v))
            .transpose()?
            .flatten()
        {
            cfg.merge_from(&obj)?;
        }
        Ok(cfg)
    }

    /// Go's zero value of the config struct, the starting point of parsing.
    fn zero() -> Self {
        RepositoryConfig {
            hash: String::new(),
            encryption: String::new(),
            ecc: String::new(),
            ecc_overhead_percent: 0,
            secret: Vec::new(),
            master_key: Vec::new(),
            version: 0,
            max_pack_size: 0,
            index_version: 0,
            epoch_parameters: EpochParameters::disabled(),
            enable_password_change: false,
            splitter: String::new(),
            upgrade_lock: None,
            required_features: None,
            unknown: Map::new(),
        }
    }

    fn merge_from(&mut self, obj: &GoObject<'_>) -> Result<()> {
        obj.visit(CONFIG_FIELDS, |field, key, v| {
            let Some(field) = field else {
                self.unknown.insert(key.to_string(), v.clone());
                return Ok(());
            };
            match field {
                "hash" | "encryption" | "ecc" | "splitter" => {
                    let slot = match field {
                        "hash" => &mut self.hash,
                        "encryption" => &mut self.encryption,
                        "ecc" => &mut self.ecc,
                        _ => &mut self.splitter,
                    };
                    if let Some(s) = obj.string(field, v)? {
                        *slot = s;
                    }
                }
                "eccOverheadPercent" | "version" | "maxPackSize" | "indexVersion" => {
                    let slot = match field {
                        "eccOverheadPercent" => &mut self.ecc_overhead_percent,
                        "version" => &mut self.version,
                        "maxPackSize" => &mut self.max_pack_size,
                        _ => &mut self.index_version,
                    };
                    if let Some(n) = obj.int(field, v)? {
                        *slot = n;
                    }
                }
                "secret" => self.secret = obj.bytes(field, v)?.unwrap_or_default(),
                "masterKey" => self.master_key = obj.bytes(field, v)?.unwrap_or_default(),
                "epochParameters" => {
                    if let Some(inner) = GoObject::new("epoch parameters", v)? {
                        self.epoch_parameters.merge_from(&inner)?;
                    }
                }
                "enablePasswordChange" => {
                    if let Some(b) = obj.bool(field, v)? {
                        self.enable_password_change = b;
                    }
                }
                "upgradeLock" => {
                    GoObject::new("upgrade lock", v)?;
                    self.upgrade_lock = (!v.is_null()).then(|| v.clone());
                }
                _ => {
                    self.required_features = match v {
                        Value::Null => None,
                        Value::Array(items) if items.is_empty() => None,
                        Value::Array(_) => Some(v.clone()),
                        other => return Err(obj.type_error(field, "an array", other)),
                    }
                }
            }
            Ok(())
        })
    }

    /// Serialises like Go's `json.Marshal` of `{"format": cfg}` (kopia's omitempty rules).
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        let text = |m: &mut Map<String, Value>, key: &str, v: &str| {
            if !v.is_empty() {
                m.insert(key.into(), v.into());
            }
        };
        text(&mut m, "hash", &self.hash);
        text(&mut m, "encryption", &self.encryption);
        text(&mut m, "ecc", &self.ecc);
        if self.ecc_overhead_percent != 0 {
            m.insert(
                "eccOverheadPercent".into(),
                self.ecc_overhead_percent.into(),
            );
        }
        if !self.secret.is_empty() {
            m.insert("secret".into(), gojson::encode_bytes(&self.secret).into());
        }
        if !self.master_key.is_empty() {
            m.insert(
                "masterKey".into(),
                gojson::encode_bytes(&self.master_key).into(),
            );
        }
        for (key, n) in [
            ("version", self.version),
            ("maxPackSize", self.max_pack_size),
            ("indexVersion", self.index_version),
        ] {
            if n != 0 {
                m.insert(key.into(), n.into());
            }
        }
        m.insert("epochParameters".into(), self.epoch_parameters.to_value());
        m.insert(
            "enablePasswordChange".into(),
            self.enable_password_change.into(),
        );
        text(&mut m, "splitter", &self.splitter);
        if let Some(lock) = self.upgrade_lock.as_ref().filter(|v| !v.is_null()) {
            m.insert("upgradeLock".into(), lock.clone());
        }
        if let Some(features) = self
            .required_features
            .as_ref()
            .filter(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            m.insert("requiredFeatures".into(), features.clone());
        }
        append_unknown(&mut m, &self.unknown);
        let mut outer = Map::new();
        outer.insert("format".into(), Value::Object(m));
        gojson::to_vec(&Value::Object(outer)).expect("a JSON value always serialises")
    }
}

/// Unknown keys go after the known ones, never replacing one.
fn append_unknown(m: &mut Map<String, Value>, unknown: &Map<String, Value>) {
    for (k, v) in unknown {
        if !m.contains_key(k) {
            m.insert(k.clone(), v.clone());
        }
    }
}

/// Key for auxiliary data such as `kopia.maintenance` (kopia's `DeriveKey`):
/// `HKDF(K, salt = uniqueID, info = purpose)`, K = masterKey if password change is enabled,
/// else the format (password) key. `enablePasswordChange`, not `version`, decides.
pub fn derive_aux_key(
    cfg: &RepositoryConfig,
    format_key: &[u8; 32],
    unique_id: &[u8],
    purpose: &[u8],
    out: &mut [u8],
) {
    let ikm: &[u8] = if cfg.enable_password_change {
        &cfg.master_key
    } else {
        format_key
    };
    hkdf_sha256(ikm, unique_id, purpose, out);
}

/// `kopia.blobcfg`: object-lock retention applied to new blobs (spec §2.7). Default = none.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BlobCfg {
    /// `GOVERNANCE`, `COMPLIANCE` or empty.
    pub retention_mode: String,
    pub retention_period_ns: i64,
}

impl BlobCfg {
    pub fn is_retention_enabled(&self) -> bool {
        !self.retention_mode.is_empty() && self.retention_period_ns != 0
    }

    fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        if !self.retention_mode.is_empty() {
            m.insert("retentionMode".into(), self.retention_mode.clone().into());
        }
        if self.retention_period_ns != 0 {
            m.insert("retentionPeriod".into(), self.retention_period_ns.into());
        }
        gojson::to_vec(&Value::Object(m)).expect("a JSON value always serialises")
    }

    fn parse_json(bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::malformed("kopia.blobcfg", e.to_string()))?;
        let mut cfg = BlobCfg::default();
        if let Some(obj) = GoObject::new("kopia.blobcfg", &value)? {
            obj.visit(&["retentionMode", "retentionPeriod"], |field, _, v| {
                match field {
                    Some("retentionMode") => {
                        if let Some(s) = obj.string("retentionMode", v)? {
                            cfg.retention_mode = s;
                        }
                    }
                    Some(f) => {
                        if let Some(n) = obj.int(f, v)? {
                            cfg.retention_period_ns = n;
                        }
                    }
                    None => {}
                }
                Ok(())
            })?;
        }
        Ok(cfg)
    }
}

/// Encrypts `kopia.blobcfg` with the format blob's key and AAD.
pub fn encrypt_blobcfg(
    cfg: &BlobCfg,
    format_key: &[u8; 32],
    unique_id: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let (key, aad) = format_aead_keys(format_key, unique_id);
    seal_aes256_gcm(&key, nonce, &aad, &cfg.to_json())
}

pub fn decrypt_blobcfg(bytes: &[u8], format_key: &[u8; 32], unique_id: &[u8]) -> Result<BlobCfg> {
    let (key, aad) = format_aead_keys(format_key, unique_id);
    let plaintext = open_aes256_gcm(&key, &aad, bytes)
        .ok_or_else(|| FormatError::Decrypt("unable to decrypt kopia.blobcfg".to_string()))?;
    BlobCfg::parse_json(&plaintext)
}

const REPLICA_HMAC_KEY: &[u8] = b"kopia-repository";
const REPLICA_CHECKSUM_LEN: usize = 32;
const REPLICA_MAX_LEN: usize = 65_000;
const REPLICA_SCAN_LEN: usize = 65_536;

fn replica_checksum(data: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(REPLICA_HMAC_KEY).expect("HMAC accepts any key length");
    mac.update(data);
    mac
}

/// `LE16(L) || format bytes || HMAC-SHA256("kopia-repository", format bytes) || LE16(L)` with
/// `L = len + 32`, which starts every pack of a repository without password change.
pub fn checksummed_replica(format_bytes: &[u8]) -> Result<Vec<u8>> {
    let len = format_bytes.len() + REPLICA_CHECKSUM_LEN;
    if len > REPLICA_MAX_LEN {
        return Err(FormatError::Limit(format!(
            "format blob too big for a pack replica: {len} bytes"
        )));
    }
    let len16 = (len as u16).to_le_bytes();
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(&len16);
    out.extend_from_slice(format_bytes);
    out.extend_from_slice(&replica_checksum(format_bytes).finalize().into_bytes());
    out.extend_from_slice(&len16);
    Ok(out)
}

/// Finds a checksummed replica at the start or the end of `blob` (a pack), as kopia's recovery
/// does, and returns the format blob bytes.
pub fn recover_replica(blob: &[u8]) -> Option<Vec<u8>> {
    let chunk_len = blob.len().min(REPLICA_SCAN_LEN);
    if chunk_len <= 4 {
        return None;
    }
    let prefix = &blob[..chunk_len];
    let len = usize::from(u16::from_le_bytes([prefix[0], prefix[1]]));
    if len <= REPLICA_MAX_LEN
        && len + 2 < prefix.len()
        && let Some(found) = verify_replica(&prefix[2..2 + len])
    {
        return Some(found);
    }
    let suffix = &blob[blob.len() - chunk_len..];
    let end = suffix.len() - 2;
    let len = usize::from(u16::from_le_bytes([suffix[end], suffix[end + 1]]));
    if len <= REPLICA_MAX_LEN && len + 2 < suffix.len() {
        return verify_replica(&suffix[end - len..end]);
    }
    None
}

fn verify_replica(checksummed: &[u8]) -> Option<Vec<u8>> {
    let data_len = checksummed.len().checked_sub(REPLICA_CHECKSUM_LEN)?;
    let (data, checksum) = checksummed.split_at(data_len);
    replica_checksum(data).verify_slice(checksum).ok()?;
    Some(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::KeyDerivationAlgorithm;

    fn seq(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start + i as u8)
    }

    /// §16.3's fek (scrypt, password123, uniqueID 0x00..0x1f); asserted in the kdf tests.
    const FEK: &str = "f72c249029ffcaea3a9ac347046f3ad8186660db3bf1abdd22e96bb68bd85c8c";

    fn fek() -> [u8; 32] {
        hex::decode(FEK).unwrap().try_into().unwrap()
    }

    const SPEC_CONFIG_JSON: &str = concat!(
        r#"{"format":{"hash":"BLAKE2B-256-128","encryption":"AES256-GCM-HMAC-SHA256","#,
        r#""secret":"QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=","masterKey":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=","#,
        r#""version":3,"maxPackSize":20971520,"indexVersion":2,"epochParameters":{"Enabled":true,"#,
        r#""EpochRefreshFrequency":1200000000000,"FullCheckpointFrequency":7,"CleanupSafetyMargin":14400000000000,"#,
        r#""MinEpochDuration":86400000000000,"EpochAdvanceOnCountThreshold":20,"#,
        r#""EpochAdvanceOnTotalSizeBytesThreshold":10485760,"DeleteParallelism":4},"#,
        r#""enablePasswordChange":true,"splitter":"DYNAMIC-4M-BUZHASH"}}"#
    );

    const SPEC_ENCRYPTED_BLOCK_FORMAT: &str = "AAECAwQFBgcICQoLYl30K1HrcrgZmEAaSrZCHYV9YMufENX/Bn4+/iOkCVBqNnfOiXOpQ1Ic6sddgOLUv/opN7NqicD8niNk1U4Q+BoqTw891yQqqEMmwW+kioNKPe9Ht2081IpF4dOv5ru6snMA8zysi3bMLbiMKjbR1SstgHkiyok2lSSEGjvmmxswO6r1j90rh1rZq2bcx25b0LCBa5oJFbp5Jrr5ckUagW0FPLnfg5XOHVm4bTGJp+XAqK4zkScvO1PJZ9/sptbLPscBBSdLyOsNJALJP1CIWXNbpYnJzhWa2gYxIHOSQclsFkFd7UBNT1jdlJ9NnN0ztES46inkWASkFe2bf7RHfiAsQwMz/0DUa0x+oLkcVAIwYJxJH9XqniC5PS+YJReWClAoX94maqdB97QzafUrxZWU/lCt9d2Yxv34vHrKu3de5MyFtmC3R8HuvjsVmx0bczA7toQJI0QTEJrZ799VCjkzuZnB8LL1tXiBBuzcxa+9NF/bidsCjpRr4B3T+lAK4dZytOJ5+WsCdHv12W/vAn1h3Xp/sm8qGHZySr/37uh9pv14IeYhZ/KiJBEd7PtnaJ0hKdKwgu0ZXFrmrdfcMnnIzXxwBwlF4Xs5o49Kc+uAsoPhTxxVxEexLJR6JMr9/BmxAN9eUtnYp8W3oqg3jTAd88C2jWFZp1J0d5aVbpAPFozmIdrVkQu2s7mK/11MZh0Er0V/bGfBIPkLCDCvvKjowMnk0u1TkVU7Tlr+AKI8XKv8Y4czIEBtxAAGgo9xkWAMBV6VfXTt1hq/DM7qHZd1SQ==";

    fn spec_blob() -> FormatBlob {
        FormatBlob {
            tool: TOOL_URL.into(),
            build_version: "v0.21.1".into(),
            build_info: "<git revision>".into(),
            unique_id: seq(0).to_vec(),
            key_algo: KeyDerivationAlgorithm::Scrypt65536_8_1.name().into(),
            encryption: FORMAT_ENCRYPTION.into(),
            encrypted_block_format: Vec::new(),
        }
    }

    #[test]
    fn format_aead_keys_match_spec() {
        let (key, aad) = format_aead_keys(&fek(), &seq(0));
        assert_eq!(
            hex::encode(key),
            "6e4e6b0f96a1f54365b3ac07403f0f790bd66ca604cfc0b221dbf703cc382e5b"
        );
        assert_eq!(
            hex::encode(aad),
            "30bb74a3989ede41685e2e06421c780a11132af8b25947463083ed3d88852a69"
        );
    }

    #[test]
    fn default_config_json_and_sealed_vector() {
        let cfg = RepositoryConfig::new_default(seq(0x40), seq(0x20));
        let json = cfg.to_json();
        assert_eq!(std::str::from_utf8(&json).unwrap(), SPEC_CONFIG_JSON);
        assert_eq!(json.len(), 579);

        let mut blob = spec_blob();
        blob.seal_config(&cfg, &fek(), std::array::from_fn(|i| i as u8))
            .unwrap();
        assert_eq!(blob.encrypted_block_format.len(), 607);
        assert_eq!(
            gojson::encode_bytes(&blob.encrypted_block_format),
            SPEC_ENCRYPTED_BLOCK_FORMAT
        );

        let parsed = FormatBlob::parse(&blob.to_bytes()).unwrap();
        assert_eq!(parsed, blob);
        assert_eq!(parsed.decrypt_config(&fek()).unwrap(), cfg);
        let mut wrong = fek();
        wrong[0] ^= 1;
        assert_eq!(
            parsed.decrypt_config(&wrong),
            Err(FormatError::InvalidPassword)
        );
    }

    #[test]
    fn outer_json_layout() {
        let mut blob = spec_blob();
        blob.encrypted_block_format = vec![1, 2, 3];
        let text = String::from_utf8(blob.to_bytes()).unwrap();
        assert_eq!(
            text,
            "{\n  \"tool\": \"https://github.com/kopia/kopia\",\n  \"buildVersion\": \"v0.21.1\",\n  \
             \"buildInfo\": \"\\u003cgit revision\\u003e\",\n  \
             \"uniqueID\": \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\",\n  \
             \"keyAlgo\": \"scrypt-65536-8-1\",\n  \"encryption\": \"AES256_GCM\",\n  \
             \"encryptedBlockFormat\": \"AQID\"\n}\n"
        );
        blob.encrypted_block_format.clear();
        assert!(
            !String::from_utf8(blob.to_bytes())
                .unwrap()
                .contains("encryptedBlockFormat")
        );
    }

    #[test]
    fn parse_is_go_lenient() {
        let blob = FormatBlob::parse(
            br#"{"TOOL":"t","keyalgo":"pbkdf2-sha256-600000","UniqueId":"AAEC","extra":[1,{}],"buildInfo":null,"encryption":"AES256_GCM"}"#,
        )
        .unwrap();
        assert_eq!(blob.tool, "t");
        assert_eq!(blob.key_algo, "pbkdf2-sha256-600000");
        assert_eq!(blob.unique_id, [0, 1, 2]);
        assert_eq!(blob.build_info, "");
        for bad in [
            &br#"{"tool":"t"}"#[..],
            br#"{"keyAlgo":""}"#,
            br#"{"keyAlgo":"scrypt-65536-8-1","uniqueID":"!!"}"#,
            br#"{"keyAlgo":"scrypt-65536-8-1","tool":5}"#,
            br#"[]"#,
            b"",
            b"{",
            b"\xff",
        ] {
            assert!(
                FormatBlob::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unsupported_format_encryption() {
        let mut blob = spec_blob();
        blob.encryption = "NONE".into();
        let cfg = RepositoryConfig::new_default(seq(0x40), seq(0x20));
        assert!(matches!(
            blob.seal_config(&cfg, &fek(), [0; 12]),
            Err(FormatError::Unsupported { .. })
        ));
        assert!(matches!(
            blob.decrypt_config(&fek()),
            Err(FormatError::Unsupported { .. })
        ));
        blob.encryption.clear();
        blob.seal_config(&cfg, &fek(), [0; 12]).unwrap();
        assert_eq!(blob.encryption, FORMAT_ENCRYPTION);
    }

    #[test]
    fn config_round_trips_unknown_fields_and_go_rules() {
        let json = br#"{"format":{"Hash":"HMAC-SHA256","version":1,"epochParameters":{"enabled":false,"Future":1},"enablePasswordChange":false,"upgradeLock":{"ownerID":"o<x>"},"requiredFeatures":[],"newThing":{"a":[1,2]},"secret":null}}"#;
        let cfg = RepositoryConfig::parse_json(json).unwrap();
        assert_eq!(cfg.hash, "HMAC-SHA256");
        assert_eq!(cfg.effective_index_version(), 1);
        assert_eq!(cfg.effective_max_pack_size(), DEFAULT_MAX_PACK_SIZE);
        assert_eq!(cfg.required_features, None);
        assert!(cfg.secret.is_empty());
        assert_eq!(
            std::str::from_utf8(&cfg.to_json()).unwrap(),
            concat!(
                r#"{"format":{"hash":"HMAC-SHA256","version":1,"epochParameters":{"Enabled":false,"#,
                r#""EpochRefreshFrequency":0,"FullCheckpointFrequency":0,"CleanupSafetyMargin":0,"MinEpochDuration":0,"#,
                r#""EpochAdvanceOnCountThreshold":0,"EpochAdvanceOnTotalSizeBytesThreshold":0,"DeleteParallelism":0,"#,
                r#""Future":1},"enablePasswordChange":false,"upgradeLock":{"ownerID":"o\u003cx\u003e"},"#,
                r#""newThing":{"a":[1,2]}}}"#
            )
        );
        assert_eq!(RepositoryConfig::parse_json(&cfg.to_json()).unwrap(), cfg);
        assert!(
            cfg.validate_for_open().is_err(),
            "no content encryption is named"
        );
        assert!(
            RepositoryConfig::new_default(seq(0), seq(0))
                .validate_for_open()
                .is_ok()
        );

        for bad in [
            &br#"{"format":{"version":"3"}}"#[..],
            br#"{"format":{"version":3.5}}"#,
            br#"{"format":{"maxPackSize":1e7}}"#,
            br#"{"format":{"enablePasswordChange":1}}"#,
            br#"{"format":{"requiredFeatures":{}}}"#,
            br#"{"format":{"upgradeLock":[]}}"#,
            br#"{"format":{"epochParameters":{"DeleteParallelism":true}}}"#,
            br#"{"format":[]}"#,
        ] {
            assert!(
                RepositoryConfig::parse_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut cfg = RepositoryConfig::new_default(seq(0), seq(0));
        cfg.version = 4;
        assert!(cfg.validate_for_open().is_err());
        cfg.version = 3;
        cfg.index_version = 3;
        assert!(cfg.validate_for_open().is_err());
    }

    #[test]
    fn required_features() {
        let with = |features: &str| {
            let json = format!(r#"{{"format":{{"version":3,"requiredFeatures":{features}}}}}"#);
            let cfg = RepositoryConfig::parse_json(json.as_bytes()).unwrap();
            let mut blob = spec_blob();
            blob.seal_config(&cfg, &fek(), [0; 12]).unwrap();
            blob.decrypt_config(&fek())
        };
        assert!(with(r#"[{"feature":"index-v2","ifNotUnderstood":{"warn":false}}]"#).is_ok());
        assert!(
            with(r#"[{"feature":"x-new","ifNotUnderstood":{"warn":true,"message":"m"}}]"#).is_ok()
        );
        assert_eq!(
            with(
                r#"[{"feature":"index-v1"},{"feature":"x-new","ifNotUnderstood":{"warn":false}}]"#
            ),
            Err(FormatError::Unsupported {
                what: "required repository feature",
                name: "x-new".into()
            })
        );
        assert!(with(r#"[{"feature":5}]"#).is_err());
        let cfg = RepositoryConfig::parse_json(
            br#"{"format":{"requiredFeatures":[{"Feature":"x","ifNotUnderstood":{"Warn":true,"message":"msg"}}]}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.unsupported_features().unwrap(),
            [UnsupportedFeature {
                feature: "x".into(),
                warn: true,
                message: "msg".into()
            }]
        );
    }

    #[test]
    fn blobcfg_vector_and_round_trip() {
        let nonce: [u8; 12] = std::array::from_fn(|i| 0x64 + i as u8);
        let sealed = encrypt_blobcfg(&BlobCfg::default(), &fek(), &seq(0), nonce);
        assert_eq!(
            hex::encode(&sealed),
            "6465666768696a6b6c6d6e6f389c8ef74a2abc7117ad79f4a496f0e8912b"
        );
        assert_eq!(
            decrypt_blobcfg(&sealed, &fek(), &seq(0)).unwrap(),
            BlobCfg::default()
        );

        let cfg = BlobCfg {
            retention_mode: "COMPLIANCE".into(),
            retention_period_ns: 86_400_000_000_000,
        };
        assert!(cfg.is_retention_enabled());
        assert_eq!(
            cfg.to_json(),
            br#"{"retentionMode":"COMPLIANCE","retentionPeriod":86400000000000}"#
        );
        let sealed = encrypt_blobcfg(&cfg, &fek(), &seq(0), nonce);
        assert_eq!(decrypt_blobcfg(&sealed, &fek(), &seq(0)).unwrap(), cfg);
        assert!(matches!(
            decrypt_blobcfg(&sealed, &fek(), &seq(1)),
            Err(FormatError::Decrypt(_))
        ));
        assert!(decrypt_blobcfg(&sealed[..20], &fek(), &seq(0)).is_err());
    }

    #[test]
    fn aux_keys() {
        // §16.3: kopia.maintenance key for masterKey 0x20..0x3f, uniqueID 0x00..0x1f.
        let cfg = RepositoryConfig::new_default(seq(0x40), seq(0x20));
        let mut key = [0u8; 32];
        derive_aux_key(
            &cfg,
            &fek(),
            &seq(0),
            crate::maintenance::MAINTENANCE_KEY_PURPOSE,
            &mut key,
        );
        assert_eq!(
            hex::encode(key),
            "327e5ba0d7687c8a777e26dddaccb1fc6bdcf0e21a7f753928633d8186db741f"
        );

        // §16.3: the inputs of kopia's TestDeriveKey, v2/v3 case.
        let mut cfg = RepositoryConfig::new_default([0; 32], *b"01234567890123456789012345678901");
        let mut short = [0u8; 8];
        derive_aux_key(
            &cfg,
            &[9; 32],
            b"a5ba5d2da4b14b518b9501b64b5d87ca",
            b"test purpose",
            &mut short,
        );
        assert_eq!(hex::encode(short), "0ca1973f3529ba9a");

        // Without password change the format key is used instead.
        cfg.enable_password_change = false;
        let mut legacy = [0u8; 8];
        derive_aux_key(
            &cfg,
            &[9; 32],
            b"a5ba5d2da4b14b518b9501b64b5d87ca",
            b"test purpose",
            &mut legacy,
        );
        let mut want = [0u8; 8];
        hkdf_sha256(
            &[9; 32],
            b"a5ba5d2da4b14b518b9501b64b5d87ca",
            b"test purpose",
            &mut want,
        );
        assert_eq!(legacy, want);
    }

    #[test]
    fn replica_vector_and_recovery() {
        let data = b"aadsdasdas";
        let replica = checksummed_replica(data).unwrap();
        assert_eq!(
            hex::encode(&replica),
            "2a00616164736461736461735d248ba07bde060f500ae9b489ff46358544ada66b4737a879ec5f0c9cc257ef2a00"
        );
        assert_eq!(replica.len(), 2 + 2 + 32 + data.len());
        assert_eq!(recover_replica(&replica).unwrap(), data);
        let mut prefixed = b"junk".to_vec()[..3].to_vec();
        prefixed.extend_from_slice(&replica);
        assert_eq!(recover_replica(&prefixed).unwrap(), data);
        let mut suffixed = replica.clone();
        suffixed.extend_from_slice(b"xyz");
        assert_eq!(recover_replica(&suffixed).unwrap(), data);
        for n in 0..=5 {
            assert_eq!(recover_replica(&replica[..n]), None);
        }
        let mut flipped = replica.clone();
        flipped[20] ^= 1;
        assert_eq!(recover_replica(&flipped), None);
        // A pack: replica, then 70 000 bytes of other data.
        let mut pack = replica.clone();
        pack.extend(std::iter::repeat_n(0xAB, 70_000));
        assert_eq!(recover_replica(&pack).unwrap(), data);
        assert!(checksummed_replica(&vec![0; REPLICA_MAX_LEN - 32]).is_ok());
        assert!(checksummed_replica(&vec![0; REPLICA_MAX_LEN - 31]).is_err());
    }

    #[test]
    fn recover_never_panics_on_garbage() {
        let mut x: u32 = 1;
        for len in 0..600 {
            let blob: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert_eq!(recover_replica(&blob), None);
            let mut small_len = blob.clone();
            if len >= 2 {
                small_len[0] = (len as u8).wrapping_sub(3);
                small_len[1] = 0;
                let last = len - 1;
                small_len[last] = 0;
                small_len[last - 1] = (len as u8).wrapping_sub(3);
            }
            assert_eq!(recover_replica(&small_len), None);
        }
    }
}
