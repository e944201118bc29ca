//! `content list|show|verify`.

use std::io::Write;

use anyhow::Context;
use kmover_format::ContentId;
use kmover_format::compression::name_for_header_id;
use kmover_format::index::IndexEntry;
use serde::Serialize;

use crate::cli::{ContentCommand, GlobalArgs};
use crate::connection;

/// kopia's `content.Info` JSON, fields in kopia's order.
#[derive(Serialize)]
struct ContentInfoJson<'a> {
    #[serde(rename = "packFile", skip_serializing_if = "str::is_empty")]
    pack_file: &'a str,
    time: i64,
    #[serde(rename = "originalLength")]
    original_length: u32,
    length: u32,
    #[serde(rename = "packOffset", skip_serializing_if = "is_zero")]
    pack_offset: u32,
    #[serde(skip_serializing_if = "is_zero")]
    compression: u32,
    #[serde(rename = "contentID")]
    content_id: String,
    deleted: bool,
    #[serde(rename = "formatVersion")]
    format_version: u8,
    #[serde(rename = "encryptionKeyID", skip_serializing_if = "is_zero_u8")]
    encryption_key_id: u8,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

impl<'a> From<&'a IndexEntry> for ContentInfoJson<'a> {
    fn from(e: &'a IndexEntry) -> Self {
        ContentInfoJson {
            pack_file: &e.pack_blob_id,
            time: e.timestamp_seconds,
            original_length: e.original_length,
            length: e.packed_length,
            pack_offset: e.pack_offset,
            compression: e.compression_header_id,
            content_id: e.content_id.to_string(),
            deleted: e.deleted,
            format_version: e.format_version,
            encryption_key_id: e.encryption_key_id,
        }
    }
}

pub async fn run(global: &GlobalArgs, cmd: ContentCommand) -> anyhow::Result<()> {
    let c = connection::open_connected(global).await?;
    let contents = c.repo.contents();
    match cmd {
        ContentCommand::Stats { raw } => super::content_stats::run(contents, raw).await,
        ContentCommand::List {
            json,
            long,
            deleted,
            deleted_only,
        } => {
            let mut entries = contents.list_contents(deleted || deleted_only).await;
            if deleted_only {
                entries.retain(|e| e.deleted);
            }
            if json {
                return crate::output::print_json_list(entries.iter().map(ContentInfoJson::from));
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for e in &entries {
                if long {
                    let ts = chrono::DateTime::from_timestamp(e.timestamp_seconds, 0)
                        .unwrap_or_default();
                    let compression = match name_for_header_id(e.compression_header_id) {
                        _ if e.compression_header_id == 0 => "-".to_string(),
                        Some(name) => name.to_string(),
                        None => format!("compression-{:x}", e.compression_header_id),
                    };
                    writeln!(
                        out,
                        "{} {} {} {} {}+{}{} {}",
                        e.content_id,
                        e.original_length,
                        crate::output::human_time(&ts),
                        e.pack_blob_id,
                        e.pack_offset,
                        e.packed_length,
                        if e.deleted { " (deleted)" } else { "" },
                        compression
                    )?;
                } else {
                    writeln!(out, "{}", e.content_id)?;
                }
            }
            out.flush()?;
            Ok(())
        }
        ContentCommand::Show { ids } => {
            let mut out = std::io::stdout().lock();
            for id in ids {
                let cid =
                    ContentId::parse(&id).with_context(|| format!("invalid content ID {id:?}"))?;
                let data = contents.read_content(&cid).await?;
                out.write_all(&data)?;
            }
            out.flush()?;
            Ok(())
        }
        ContentCommand::Verify {
            full,
            include_deleted,
        } => {
            let entries = contents.list_contents(include_deleted).await;
            let mut errors = 0usize;
            for e in &entries {
                if let Err(err) = contents.verify_content(e, full).await {
                    errors += 1;
                    eprintln!("ERROR {err}");
                }
            }
            eprintln!(
                "Finished verifying {} contents, found {} errors.",
                entries.len(),
                errors
            );
            if errors > 0 {
                anyhow::bail!("encountered {errors} errors");
            }
            Ok(())
        }
    }
}
