//! The opened format of a repository: its decrypted configuration and the hasher and encryptor
//! derived from it. Creating a repository writes `kopia.blobcfg` then `kopia.repository`.

use kmover_blob::DynBlobStore;
use kmover_format::encryption::{ContentEncryptor, EncryptionAlgorithm};
use kmover_format::format_blob::{self, BlobCfg, FormatBlob, RepositoryConfig};
use kmover_format::hashing::{HashAlgorithm, Hasher};
use kmover_format::kdf::KeyDerivationAlgorithm;
use kmover_format::{FormatError, index};

use crate::error::{RepoError, Result};

pub const FORMAT_BLOB_ID: &str = "kopia.repository";
pub const BLOBCFG_BLOB_ID: &str = "kopia.blobcfg";

/// Everything needed to hash, encrypt and decrypt contents and metadata blobs of one repository.
#[derive(Clone)]
pub struct RepoCrypto {
    pub format_blob: FormatBlob,
    /// `kopia.repository` exactly as stored: v1 packs embed it verbatim.
    pub format_blob_bytes: Vec<u8>,
    pub config: RepositoryConfig,
    pub format_key: [u8; 32],
    pub hasher: Hasher,
    pub encryptor: ContentEncryptor,
    pub blobcfg: BlobCfg,
}

impl std::fmt::Debug for RepoCrypto {
    // Keys stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCrypto")
            .field("hash", &self.config.hash)
            .field("encryption", &self.config.encryption)
            .field("version", &self.config.version)
            .finish_non_exhaustive()
    }
}

/// A format key derived on an earlier open of this repository. Deriving it (scrypt: ~150 ms and
/// 32 MiB) is most of what a small command costs; kopia derives it on every run.
#[derive(Clone, PartialEq, Eq)]
pub struct KnownFormatKey {
    pub unique_id: Vec<u8>,
    pub key_algo: String,
    pub key: [u8; 32],
}

impl std::fmt::Debug for KnownFormatKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownFormatKey")
            .field("key_algo", &self.key_algo)
            .finish_non_exhaustive()
    }
}

/// Options of `repository create`, defaulting to kopia's.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    pub hash: HashAlgorithm,
    pub encryption: EncryptionAlgorithm,
    pub key_algorithm: KeyDerivationAlgorithm,
    pub format_version: u8,
    pub splitter: String,
    pub max_pack_size: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            hash: HashAlgorithm::default(),
            encryption: EncryptionAlgorithm::default(),
            key_algorithm: KeyDerivationAlgorithm::Scrypt65536_8_1,
            format_version: 3,
            splitter: "DYNAMIC-4M-BUZHASH".into(),
            max_pack_size: 20 << 20,
        }
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b
}

impl RepoCrypto {
    /// Opens the format with `password`, or with `known` when it is this repository's key and
    /// decrypts the configuration (a stale one, e.g. after a password change, is ignored).
    pub async fn load(
        store: &DynBlobStore,
        password: &str,
        known: Option<&KnownFormatKey>,
    ) -> Result<Self> {
        let bytes = match store.get(FORMAT_BLOB_ID).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(RepoError::NotInitialized(store.describe())),
            Err(e) => return Err(e.into()),
        };
        let format_blob =
            FormatBlob::parse(&bytes).map_err(|e| RepoError::corrupt_blob(FORMAT_BLOB_ID, e))?;
        let known = known
            .filter(|k| k.unique_id == format_blob.unique_id && k.key_algo == format_blob.key_algo)
            .and_then(|k| Some((k.key, format_blob.decrypt_config(&k.key).ok()?)));
        let (format_key, config) = match known {
            Some(opened) => {
                tracing::debug!("format key: the one derived on an earlier open");
                opened
            }
            None => {
                let format_key = format_blob::derive_format_key(
                    &format_blob.key_algo,
                    password,
                    &format_blob.unique_id,
                )
                .map_err(|e| RepoError::corrupt_blob(FORMAT_BLOB_ID, e))?;
                match format_blob.decrypt_config(&format_key) {
                    Ok(c) => (format_key, c),
                    Err(FormatError::InvalidPassword) => return Err(RepoError::InvalidPassword),
                    Err(e) => return Err(RepoError::corrupt_blob(FORMAT_BLOB_ID, e)),
                }
            }
        };
        let blobcfg = match store.get(BLOBCFG_BLOB_ID).await {
            Ok(b) => format_blob::decrypt_blobcfg(&b, &format_key, &format_blob.unique_id)
                .map_err(|e| RepoError::corrupt_blob(BLOBCFG_BLOB_ID, e))?,
            Err(e) if e.is_not_found() => BlobCfg::default(),
            Err(e) => return Err(e.into()),
        };
        Self::from_parts(format_blob, bytes, config, format_key, blobcfg)
    }

    fn from_parts(
        format_blob: FormatBlob,
        format_blob_bytes: Vec<u8>,
        config: RepositoryConfig,
        format_key: [u8; 32],
        blobcfg: BlobCfg,
    ) -> Result<Self> {
        if !(1..=3).contains(&config.version) {
            return Err(RepoError::corrupt_blob(
                FORMAT_BLOB_ID,
                format!("unsupported repository format version {}", config.version),
            ));
        }
        if !config.ecc.is_empty() && config.ecc_overhead_percent > 0 {
            return Err(RepoError::Other(format!(
                "repository uses error correction ({} {}%), which kmover does not support yet",
                config.ecc, config.ecc_overhead_percent
            )));
        }
        let hasher = HashAlgorithm::parse(&config.hash)?.hasher(&config.secret)?;
        let encryptor = ContentEncryptor::new(
            EncryptionAlgorithm::parse(&config.encryption)?,
            &config.master_key,
        )?;
        Ok(RepoCrypto {
            format_blob,
            format_blob_bytes,
            config,
            format_key,
            hasher,
            encryptor,
            blobcfg,
        })
    }

    /// Writes a new repository's `kopia.blobcfg` and `kopia.repository`; refuses if either exists.
    pub async fn initialize(
        store: &DynBlobStore,
        opts: &FormatOptions,
        password: &str,
    ) -> Result<Self> {
        for id in [FORMAT_BLOB_ID, BLOBCFG_BLOB_ID] {
            match store.metadata(id).await {
                Ok(_) => return Err(RepoError::AlreadyExists(store.describe())),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let unique_id = random_bytes::<32>().to_vec();
        let mut config = RepositoryConfig::new_default(random_bytes::<32>(), random_bytes::<32>());
        config.hash = opts.hash.name().into();
        config.encryption = opts.encryption.name().into();
        config.splitter = opts.splitter.clone();
        config.max_pack_size = opts.max_pack_size as i64;
        match opts.format_version {
            2 | 3 => config.version = opts.format_version as i64,
            1 => {
                config.version = 1;
                config.index_version = 1;
                config.enable_password_change = false;
                config.epoch_parameters = format_blob::EpochParameters::disabled();
            }
            v => {
                return Err(RepoError::Config(format!(
                    "unsupported format version {v} (must be 1, 2 or 3)"
                )));
            }
        }
        let format_key = opts.key_algorithm.derive(password.as_bytes(), &unique_id)?;
        let mut blob = FormatBlob {
            tool: "https://github.com/kopia/kopia".into(),
            build_version: concat!("kmover-v", env!("CARGO_PKG_VERSION")).into(),
            build_info: "kmover".into(),
            unique_id: unique_id.clone(),
            key_algo: opts.key_algorithm.name().into(),
            encryption: "AES256_GCM".into(),
            encrypted_block_format: Vec::new(),
        };
        blob.seal_config(&config, &format_key, random_bytes())?;
        let blobcfg = BlobCfg::default();
        let blobcfg_bytes =
            format_blob::encrypt_blobcfg(&blobcfg, &format_key, &unique_id, random_bytes());
        store.put(BLOBCFG_BLOB_ID, blobcfg_bytes).await?;
        let bytes = blob.to_bytes();
        store.put(FORMAT_BLOB_ID, bytes.clone()).await?;
        Self::from_parts(blob, bytes, config, format_key, blobcfg)
    }

    pub fn known_format_key(&self) -> KnownFormatKey {
        KnownFormatKey {
            unique_id: self.format_blob.unique_id.clone(),
            key_algo: self.format_blob.key_algo.clone(),
            key: self.format_key,
        }
    }

    pub fn index_version(&self) -> u8 {
        self.config.effective_index_version() as u8
    }

    pub fn format_version(&self) -> u8 {
        self.config.version as u8
    }

    pub fn max_pack_size(&self) -> usize {
        self.config.effective_max_pack_size()
    }

    pub fn epoch_enabled(&self) -> bool {
        self.config.epoch_parameters.enabled
    }

    pub fn parse_index(&self, blob_id: &str, plaintext: Vec<u8>) -> Result<index::Index> {
        index::Index::parse(plaintext, kmover_format::encryption::OVERHEAD as u32)
            .map_err(|e| RepoError::corrupt_blob(blob_id, e))
    }

    pub fn decrypt_blob(&self, blob_id: &str, data: &[u8]) -> Result<Vec<u8>> {
        kmover_format::blobcrypto::decrypt_blob(&self.encryptor, blob_id, data)
            .map_err(|e| RepoError::corrupt_blob(blob_id, e))
    }

    /// Encrypts a metadata blob; returns its ID (`prefix || hex(hash) || -suffix`) and bytes.
    pub fn encrypt_blob(&self, prefix: &str, suffix: &str, data: &[u8]) -> (String, Vec<u8>) {
        kmover_format::blobcrypto::encrypt_blob(
            &self.hasher,
            &self.encryptor,
            prefix,
            suffix,
            data,
            random_bytes(),
        )
    }
}
