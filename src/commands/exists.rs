//! `snapshot exists --source user@host[:path]`: does a source have a complete snapshot? The
//! conditional-restore probe (restore if there is a backup, start empty if there is none), also
//! answered over HTTP by `serve`.
//!
//! Exit codes: 0 it has one, 1 it has none, 3 the repository could not tell (unreachable, wrong
//! password, …) — a caller must never read 3 as "start empty".

use std::collections::HashMap;

use anyhow::bail;
use kmover_format::snapshot::manifest::SourceInfo;
use kmover_repo::Repository;
use kmover_snapshot::snapshots;
use serde::Serialize;

use crate::cli::{ExistsArgs, GlobalArgs};
use crate::exit_code::{self, Exit};
use crate::{connection, logging};

/// The answer, in pvc-plumber's shape (`GET /exists/{namespace}/{pvc}`), so admission policies
/// written for it work unchanged; `snapshots` and `latestSnapshotTime` are additions.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Answer {
    pub exists: bool,
    /// `restore` (a backup exists), `fresh` (an authoritative check found none) or `unknown`.
    pub decision: &'static str,
    /// True only when the repository was read: `fresh` can be trusted.
    pub authoritative: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    pub backend: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<usize>,
    #[serde(rename = "latestSnapshotTime", skip_serializing_if = "Option::is_none")]
    pub latest_snapshot_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    pub fn decided(backend: &str, source: &SourceQuery, found: Option<&Found>) -> Self {
        Answer {
            exists: found.is_some(),
            decision: if found.is_some() { "restore" } else { "fresh" },
            authoritative: true,
            namespace: None,
            pvc: None,
            backend: backend.to_string(),
            source: source.to_string(),
            snapshots: Some(found.map_or(0, |f| f.count)),
            latest_snapshot_time: found.map(|f| f.latest_start.clone()),
            error: None,
        }
    }

    pub fn unknown(backend: &str, source: &str, error: String) -> Self {
        Answer {
            exists: false,
            decision: "unknown",
            authoritative: false,
            namespace: None,
            pvc: None,
            backend: backend.to_string(),
            source: source.to_string(),
            snapshots: None,
            latest_snapshot_time: None,
            error: Some(error),
        }
    }
}

/// `user@host:path`, or `user@host` for any path of that identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceQuery {
    pub user_name: String,
    pub host: String,
    pub path: Option<String>,
}

impl SourceQuery {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let (identity, path) = match text.split_once(':') {
            Some((identity, path)) => (identity, Some(path)),
            None => (text, None),
        };
        let Some((user, host)) = identity.split_once('@') else {
            bail!("invalid source {text:?}: expected user@host:/path or user@host");
        };
        if user.is_empty() || host.is_empty() || path.is_some_and(str::is_empty) {
            bail!("invalid source {text:?}: user, host and path must not be empty");
        }
        Ok(SourceQuery {
            user_name: user.to_string(),
            host: host.to_string(),
            path: path.map(str::to_string),
        })
    }

    fn matches(&self, s: &SourceInfo) -> bool {
        s.user_name == self.user_name
            && s.host == self.host
            && self.path.as_ref().is_none_or(|p| *p == s.path)
    }
}

impl std::fmt::Display for SourceQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user_name, self.host)?;
        if let Some(p) = &self.path {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// The complete snapshots of one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub count: usize,
    /// RFC 3339 start time of the newest one.
    pub latest_start: String,
}

/// Every source with at least one complete snapshot (incomplete checkpoints do not count: they
/// cannot be restored as a whole, and `snapshot list` hides them too).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    sources: HashMap<SourceInfo, (usize, i64)>,
}

impl Inventory {
    pub async fn load(repo: &Repository) -> anyhow::Result<Self> {
        let mut sources: HashMap<SourceInfo, (usize, i64)> = HashMap::new();
        for (_, m) in snapshots::list_snapshots(repo, None).await? {
            if !m.incomplete.is_empty() {
                continue;
            }
            let entry = sources.entry(m.source.clone()).or_insert((0, i64::MIN));
            entry.0 += 1;
            entry.1 = entry.1.max(m.start_time.0);
        }
        Ok(Inventory { sources })
    }

    pub fn find(&self, query: &SourceQuery) -> Option<Found> {
        let (count, latest) = self
            .sources
            .iter()
            .filter(|(s, _)| query.matches(s))
            .fold((0, i64::MIN), |(c, l), (_, (n, t))| (c + n, l.max(*t)));
        (count > 0).then(|| Found {
            count,
            latest_start: kmover_format::snapshot::UtcTimestamp(latest).to_rfc3339(),
        })
    }
}

/// pvc-plumber's backend names: `kopia-fs`, `kopia-s3` (`kopia` when the config is unreadable).
pub fn backend_name(global: &GlobalArgs) -> String {
    let path = connection::config_path(global);
    let kind = kmover_repo::local_config::LocalConfig::load(&path)
        .ok()
        .and_then(|c| c.storage.map(|s| s.kind));
    match kind.as_deref() {
        Some("filesystem") => "kopia-fs".into(),
        Some(other) => format!("kopia-{other}"),
        None => "kopia".into(),
    }
}

pub async fn run(global: &GlobalArgs, args: ExistsArgs) -> anyhow::Result<()> {
    // Exit code 1 means "no snapshot" here, so bad input must not end with it.
    let query = SourceQuery::parse(&args.source).map_err(|e| {
        logging::fatal(&format!("{e:#}"));
        Exit(exit_code::USAGE)
    })?;
    let backend = backend_name(global);
    let answer = match check(global, &query).await {
        Ok(found) => Answer::decided(&backend, &query, found.as_ref()),
        Err(e) => Answer::unknown(&backend, &query.to_string(), format!("{e:#}")),
    };
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else if answer.authoritative {
        match (&answer.snapshots, &answer.latest_snapshot_time) {
            (Some(n), Some(t)) if answer.exists => {
                println!("{query}: {n} snapshot(s), the latest started at {t}")
            }
            _ => println!("{query}: no snapshots"),
        }
    }
    match (answer.exists, answer.authoritative) {
        (true, _) => Ok(()),
        (false, true) => Err(Exit(exit_code::FAILURE).into()),
        (false, false) => {
            logging::fatal(&format!(
                "cannot tell whether {query} has snapshots: {}",
                answer.error.as_deref().unwrap_or_default()
            ));
            Err(Exit(exit_code::UNDECIDED).into())
        }
    }
}

async fn check(global: &GlobalArgs, query: &SourceQuery) -> anyhow::Result<Option<Found>> {
    let c = connection::open_connected(global).await?;
    Ok(Inventory::load(&c.repo).await?.find(query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_queries() {
        let q = SourceQuery::parse("data-backup@ns:/data").unwrap();
        assert_eq!(q.path.as_deref(), Some("/data"));
        assert_eq!(q.to_string(), "data-backup@ns:/data");
        let any_path = SourceQuery::parse("u@h").unwrap();
        assert!(any_path.matches(&SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: "/x".into(),
        }));
        assert!(!q.matches(&SourceInfo {
            host: "ns".into(),
            user_name: "data-backup".into(),
            path: "/other".into(),
        }));
        for bad in ["nouser", "@h:/p", "u@:/p", "u@h:"] {
            assert!(SourceQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_serialize_like_pvc_plumber() {
        let q = SourceQuery::parse("p-backup@ns:/data").unwrap();
        let mut a = Answer::decided("kopia-fs", &q, None);
        a.namespace = Some("ns".into());
        a.pvc = Some("p".into());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"exists":false,"decision":"fresh","authoritative":true,"namespace":"ns","pvc":"p","backend":"kopia-fs","source":"p-backup@ns:/data","snapshots":0}"#
        );
        let u = Answer::unknown("kopia", "u@h:/p", "invalid repository password".into());
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"exists":false,"decision":"unknown","authoritative":false,"backend":"kopia","source":"u@h:/p","error":"invalid repository password"}"#
        );
    }
}
