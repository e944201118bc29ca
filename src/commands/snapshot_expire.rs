//! `snapshot expire`: applies each source's retention policy, deleting expired snapshots only
//! with `--delete`, as kopia does.

use anyhow::Context;
use clap::Args;
use kmover_snapshot::retention::{LocalZone, expire, snapshot_sources};

use crate::cli::GlobalArgs;
use crate::commands::policy::parse_source_info;
use crate::connection;

#[derive(Args, Debug, Clone)]
pub struct ExpireArgs {
    /// Expire snapshots for given paths only (`user@host:path`, `user@host`, `@host` or a local path).
    pub paths: Vec<String>,
    /// Expire all snapshots.
    #[arg(long)]
    pub all: bool,
    /// Whether to actually delete snapshots.
    #[arg(long)]
    pub delete: bool,
}

/// Kopia's `snapshot expire`: sources in `user@host:path` order; without `--all` or paths it
/// does nothing. Weekly buckets use the local time zone (`TZ`), as kopia's do.
pub async fn run_expire(global: &GlobalArgs, args: ExpireArgs) -> anyhow::Result<()> {
    let conn = connection::open_connected(global).await?;
    let repo = &conn.repo;
    let mut sources = if args.all {
        snapshot_sources(repo).await?
    } else {
        args.paths
            .iter()
            .map(|p| {
                parse_source_info(p, &conn.config.hostname, &conn.config.username)
                    .with_context(|| format!("unable to parse {p:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    sources.sort_by_cached_key(|s| s.to_string());

    let zone = LocalZone::from_env();
    for source in &sources {
        let decisions = expire(repo, source, args.delete, &zone)
            .await
            .with_context(|| format!("error applying retention policy to {source}"))?;
        let expired = decisions.iter().filter(|d| d.expired()).count();
        if expired == 0 {
            eprintln!("Nothing to delete for {source}.");
        } else if args.delete {
            eprintln!("Deleted {expired} snapshots of {source}...");
        } else {
            eprintln!(
                "{expired} snapshot(s) of {source} would be deleted. Pass --delete to do it."
            );
        }
    }
    repo.flush().await?;
    Ok(())
}
