//! `KOPIA_ADDITIONAL_ARGS`: the CRD's `additionalArgs`, joined by the controller with the literal
//! `|VOLSYNC_ARG_SEP|`. Split on that literal (the reference split on any of its characters,
//! Q-6) and given only to snapshot create (source) or restore (destination), as the CRD documents.

use clap::Parser;

use crate::cli::{RestoreArgs, SnapshotCreateArgs};

pub const SEPARATOR: &str = "|VOLSYNC_ARG_SEP|";

pub fn split(raw: &str) -> Vec<String> {
    raw.split(SEPARATOR)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Parser)]
#[command(name = "snapshot create", no_binary_name = true)]
struct CreateFlags {
    #[command(flatten)]
    args: SnapshotCreateArgs,
}

#[derive(Parser)]
#[command(name = "snapshot restore", no_binary_name = true)]
struct RestoreFlags {
    #[command(flatten)]
    args: RestoreArgs,
}

/// `snapshot create <source> <extra...>` as the CLI would parse it.
pub fn snapshot_create(source: &str, extra: &[String]) -> Result<SnapshotCreateArgs, String> {
    let argv = std::iter::once(source.to_string()).chain(extra.iter().cloned());
    CreateFlags::try_parse_from(argv)
        .map(|f| f.args)
        .map_err(|e| first_line(&e.render().to_string()))
}

/// `snapshot restore <id> . --write-files-atomically <extra...>` as the CLI would parse it.
pub fn snapshot_restore(id: &str, extra: &[String]) -> Result<RestoreArgs, String> {
    let argv = [id, ".", "--write-files-atomically"]
        .into_iter()
        .map(str::to_string)
        .chain(extra.iter().cloned());
    RestoreFlags::try_parse_from(argv)
        .map(|f| f.args)
        .map_err(|e| first_line(&e.render().to_string()))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_the_literal_separator_only() {
        assert_eq!(
            split("--tags=env:PROD|VOLSYNC_ARG_SEP|--description=/data/my_dir"),
            vec!["--tags=env:PROD", "--description=/data/my_dir"]
        );
        assert_eq!(split("|VOLSYNC_ARG_SEP||VOLSYNC_ARG_SEP|-a"), vec!["-a"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn flags_are_parsed_as_the_cli_does() {
        let create = snapshot_create(
            "/data",
            &["--description=nightly".into(), "--tags=env:PROD".into()],
        )
        .unwrap();
        assert_eq!(create.description, "nightly");
        assert_eq!(create.tags, vec!["env:PROD"]);
        assert!(snapshot_create("/data", &["--bogus".into()]).is_err());
        let restore = snapshot_restore("abc", &["--skip-owners".into()]).unwrap();
        assert!(restore.skip_owners && restore.write_files_atomically);
    }
}
