//! One module per command group; each turns parsed arguments into crate calls and renders results.

mod blob;
mod content;
mod index;
mod policy;
mod repository;
mod snapshot;
pub mod snapshot_expire;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Repository(cmd) => repository::run(global, cmd).await,
        Command::Content(cmd) => content::run(global, cmd).await,
        Command::Index(cmd) => index::run(global, cmd).await,
        Command::Blob(cmd) => blob::run(global, cmd).await,
        Command::Snapshot(cmd) => snapshot::run(global, cmd).await,
        Command::Restore(args) => snapshot::restore(global, args).await,
        Command::Ls { path, long } => snapshot::ls(global, &path, long).await,
        Command::Show { path } => snapshot::show(global, &path).await,
        Command::Policy(cmd) => policy::run(global, cmd).await,
    }
}
