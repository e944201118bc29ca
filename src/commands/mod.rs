//! One module per command group; each turns parsed arguments into crate calls and renders results.

mod blob;
mod content;
mod index;
mod repository;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    match cli.command {
        Command::Repository(cmd) => repository::run(global, cmd).await,
        Command::Content(cmd) => content::run(global, cmd).await,
        Command::Index(cmd) => index::run(global, cmd).await,
        Command::Blob(cmd) => blob::run(global, cmd).await,
    }
}
