//! `snapshot pin`: adds or removes the pins that keep a snapshot from expiring, as kopia does —
//! by snapshot ID or by root object ID (every snapshot with that root).

use anyhow::{Context, bail};
use clap::Args;
use kmover_format::object::ObjectId;
use kmover_format::snapshot::manifest::SnapshotManifest;
use kmover_repo::Repository;
use kmover_snapshot::error::SnapshotError;
use kmover_snapshot::snapshots;

use crate::cli::GlobalArgs;
use crate::connection;

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Snapshot ID or root object ID.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Add pins.
    #[arg(long)]
    pub add: Vec<String>,
    /// Remove pins.
    #[arg(long)]
    pub remove: Vec<String>,
}

pub async fn run_pin(global: &GlobalArgs, args: PinArgs) -> anyhow::Result<()> {
    if args.add.is_empty() && args.remove.is_empty() {
        bail!("must specify --add and/or --remove");
    }
    let c = connection::open_connected(global).await?;
    let repo = &c.repo;
    for id in &args.ids {
        match snapshots::load_snapshot(repo, id).await {
            Ok(m) => pin_snapshot(repo, m, &args)
                .await
                .with_context(|| format!("error pinning {id}"))?,
            Err(SnapshotError::SnapshotNotFound(_)) => {
                if repo.manifests().get(id).await?.is_some() {
                    bail!("error loading snapshot {id}: manifest is not a snapshot");
                }
                pin_by_root(repo, id, &args)
                    .await
                    .with_context(|| format!("error pinning snapshots by root ID {id}"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("error loading snapshot {id}")),
        }
    }
    repo.flush().await?;
    Ok(())
}

async fn pin_by_root(repo: &Repository, root: &str, args: &PinArgs) -> anyhow::Result<()> {
    let root_id = ObjectId::parse(root).context("unable to parse object ID")?;
    let matching: Vec<SnapshotManifest> = snapshots::list_snapshots(repo, None)
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| {
            m.root_entry
                .as_ref()
                .is_some_and(|e| e.object_id == root_id)
        })
        .collect();
    if matching.is_empty() {
        bail!("no snapshots matched {root}");
    }
    for m in matching {
        pin_snapshot(repo, m, args).await.context("error pinning")?;
    }
    Ok(())
}

/// Rewrites the snapshot under a new manifest ID with the new pins, then deletes the old one —
/// kopia's `UpdateSnapshot`. An unchanged set of pins writes nothing.
async fn pin_snapshot(
    repo: &Repository,
    mut m: SnapshotManifest,
    args: &PinArgs,
) -> anyhow::Result<()> {
    let start =
        chrono::DateTime::from_timestamp(m.start_time.unix_secs(), m.start_time.subsec_nanos())
            .unwrap_or_default();
    let when = crate::output::human_time(&start);
    if !update_pins(&mut m.pins, &args.add, &args.remove) {
        eprintln!("No change for snapshot at {when} of {}", m.source);
        return Ok(());
    }
    eprintln!("Updating snapshot at {when} of {}", m.source);
    let old_id = std::mem::take(&mut m.id);
    let new_id = snapshots::save_snapshot(repo, &m)
        .await
        .context("error saving snapshot")?;
    if new_id != old_id {
        repo.manifests()
            .delete(&old_id)
            .await
            .context("error deleting old manifest")?;
    }
    Ok(())
}

/// kopia's `UpdatePins`: the pins become a sorted set with `add` added and `remove` removed.
/// Returns whether anything was added or removed.
fn update_pins(pins: &mut Vec<String>, add: &[String], remove: &[String]) -> bool {
    let mut set: std::collections::BTreeSet<String> = pins.drain(..).collect();
    let mut changed = false;
    for p in add {
        changed |= set.insert(p.clone());
    }
    for p in remove {
        changed |= set.remove(p);
    }
    pins.extend(set);
    changed
}

#[cfg(test)]
mod tests {
    use super::update_pins;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pins_are_a_sorted_set() {
        let mut pins = strings(&["zeta", "alpha", "alpha"]);
        assert!(update_pins(&mut pins, &strings(&["mid"]), &[]));
        assert_eq!(pins, strings(&["alpha", "mid", "zeta"]));

        assert!(update_pins(&mut pins, &[], &strings(&["alpha", "absent"])));
        assert_eq!(pins, strings(&["mid", "zeta"]));

        // Adding and removing the same pin removes it (removal comes second).
        assert!(update_pins(
            &mut pins,
            &strings(&["new"]),
            &strings(&["new"])
        ));
        assert_eq!(pins, strings(&["mid", "zeta"]));
    }

    #[test]
    fn no_change_is_reported_as_such() {
        let mut pins = strings(&["keep"]);
        assert!(!update_pins(
            &mut pins,
            &strings(&["keep"]),
            &strings(&["gone"])
        ));
        assert_eq!(pins, strings(&["keep"]));
        let mut none = Vec::new();
        assert!(!update_pins(&mut none, &[], &strings(&["keep"])));
        assert!(none.is_empty());
    }
}
