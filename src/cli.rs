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
}

#[derive(Subcommand, Debug)]
pub enum StorageConnect {
    /// Connect to a repository in a filesystem directory.
    Filesystem {
        #[command(flatten)]
        storage: FilesystemArgs,
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
