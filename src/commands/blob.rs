//! `blob list`.

use serde_json::json;

use crate::cli::{BlobCommand, GlobalArgs};
use crate::connection;
use crate::output::{go_time, human_time, print_json_list};

pub async fn run(global: &GlobalArgs, cmd: BlobCommand) -> anyhow::Result<()> {
    let BlobCommand::List { json, prefix } = cmd;
    let config_path = connection::config_path(global);
    let config = kmover_repo::local_config::LocalConfig::load(&config_path)?;
    let store = connection::open_store(&config).await?;
    let mut blobs = store.list(&prefix).await?;
    blobs.sort_by(|a, b| a.id.cmp(&b.id));
    if json {
        return print_json_list(
            blobs.iter().map(
                |m| json!({"id": m.id, "length": m.length, "timestamp": go_time(&m.timestamp)}),
            ),
        );
    }
    for m in &blobs {
        println!("{:<70} {:>10} {}", m.id, m.length, human_time(&m.timestamp));
    }
    Ok(())
}
