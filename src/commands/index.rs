//! `index list`.

use futures::future::try_join_all;
use serde_json::json;

use crate::cli::{GlobalArgs, IndexCommand};
use crate::connection;
use crate::output::{go_time, human_time_precise, print_json_list};

pub async fn run(global: &GlobalArgs, cmd: IndexCommand) -> anyhow::Result<()> {
    let IndexCommand::List { json } = cmd;
    let c = connection::open_connected(global).await?;
    let store = c.repo.store();
    let ids = c.repo.contents().index_blob_ids();
    let mut metas = try_join_all(ids.iter().map(|id| store.metadata(id))).await?;
    metas.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
    if json {
        return print_json_list(metas.iter().map(|m| {
            json!({"id": m.id, "length": m.length, "timestamp": go_time(&m.timestamp), "Superseded": null})
        }));
    }
    for m in &metas {
        println!(
            "{:<60} {:>10} {} []",
            m.id,
            m.length,
            human_time_precise(&m.timestamp)
        );
    }
    Ok(())
}
