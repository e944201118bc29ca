//! One module per command group; each turns parsed arguments into crate calls and renders results.

mod blob;
mod content;
mod content_stats;
pub mod exists;
mod index;
pub mod maintenance;
pub(crate) mod policy;
mod repository;
mod snapshot;
pub mod snapshot_expire;
pub mod snapshot_pin;

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
        Command::Maintenance(cmd) => maintenance::run(global, cmd).await,
        Command::Serve(args) => crate::serve::run(global, args).await,
    }
}
