//! Policies stored in the manifest store, and the effective policy of a source (its own, its
//! parents', user@host, @host and global, merged over kopia's defaults).

use std::fmt;

use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::manifest_store::{ManifestEntry, pick_latest};
use kmover_format::snapshot::policy::{
    Definition, POLICY_MANIFEST_TYPE, Policy, decode_policy, effective_policy, encode_policy,
    policy_labels, policy_lookup_order,
};
use kmover_repo::Repository;

use crate::error::{Result, SnapshotError};

/// A policy as stored: its manifest ID and the source it is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    pub id: String,
    pub target: SourceInfo,
    pub policy: Policy,
}

impl StoredPolicy {
    fn from_entry(e: &ManifestEntry) -> Result<Self> {
        Ok(StoredPolicy {
            id: e.id.clone(),
            target: SourceInfo::from_labels(&e.labels),
            policy: decode_policy(&e.data)?,
        })
    }
}

/// The policy stored for exactly `target`, if any (the newest when several raced).
pub async fn defined_policy(repo: &Repository, target: &SourceInfo) -> Result<Option<Policy>> {
    let found = repo.manifests().find(&policy_labels(target)).await?;
    match pick_latest(found.iter()) {
        Some(e) => Ok(Some(decode_policy(&e.data)?)),
        None => Ok(None),
    }
}

/// Kopia's `GetEffectivePolicy`: every policy stored at each level of the hierarchy (all of them
/// when several raced at one level, oldest first, as kopia includes them) merged over the defaults.
pub async fn effective_policy_for(
    repo: &Repository,
    source: &SourceInfo,
) -> Result<(Policy, Definition)> {
    let mut found = Vec::new();
    for target in policy_lookup_order(source) {
        for e in repo.manifests().find(&policy_labels(&target)).await? {
            found.push((target.clone(), decode_policy(&e.data)?));
        }
    }
    Ok(effective_policy(source, &found))
}

/// Every stored policy, sorted by target text (`(global)`, `@host`, `user@host`, …) as
/// `kopia policy list` shows them.
pub async fn list_policies(repo: &Repository) -> Result<Vec<StoredPolicy>> {
    let query = [("type".to_string(), POLICY_MANIFEST_TYPE.to_string())].into();
    let mut out = repo
        .manifests()
        .find(&query)
        .await?
        .iter()
        .map(StoredPolicy::from_entry)
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_cached_key(|p| p.target.to_string());
    Ok(out)
}

/// The policy stored under manifest ID `id`, if that manifest is a policy.
pub async fn policy_by_id(repo: &Repository, id: &str) -> Result<Option<StoredPolicy>> {
    match repo.manifests().get(id).await? {
        Some(e) if e.labels.get("type").map(String::as_str) == Some(POLICY_MANIFEST_TYPE) => {
            StoredPolicy::from_entry(&e).map(Some)
        }
        _ => Ok(None),
    }
}

/// Why kopia's `SetPolicy` refuses a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidPolicy {
    /// `manual` scheduling together with an interval, times, cron or run-missed setting.
    ManualWithSchedule,
    /// `maxParallelSnapshots` is only meaningful for global, host and user policies.
    ParallelSnapshotsOnPath,
    /// A path target ending in `/` or `\` that is not a root.
    TrailingSeparator(String),
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidPolicy::ManualWithSchedule => f.write_str(
                "invalid scheduling policy: manual cannot be combined with other scheduling policies",
            ),
            InvalidPolicy::ParallelSnapshotsOnPath => f.write_str(
                "max parallel snapshots cannot be specified for paths, only global, username@hostname or @hostname",
            ),
            InvalidPolicy::TrailingSeparator(p) => {
                write!(f, "invalid policy path {p:?}: path cannot end with a slash or a backslash")
            }
        }
    }
}

impl std::error::Error for InvalidPolicy {}

/// Kopia's `ValidatePolicy` plus `SetPolicy`'s path check.
pub fn validate_policy(target: &SourceInfo, policy: &Policy) -> Result<(), InvalidPolicy> {
    let s = &policy.scheduling;
    if s.manual
        && (s.interval_seconds != 0
            || !s.times_of_day.is_empty()
            || s.no_parent_time_of_day
            || !s.cron.is_empty()
            || s.run_missed.is_some())
    {
        return Err(InvalidPolicy::ManualWithSchedule);
    }
    if !target.path.is_empty() && policy.upload.max_parallel_snapshots.is_some() {
        return Err(InvalidPolicy::ParallelSnapshotsOnPath);
    }
    let p = &target.path;
    if p.ends_with(['/', '\\']) && !is_root_path(p) {
        return Err(InvalidPolicy::TrailingSeparator(p.clone()));
    }
    Ok(())
}

/// `/`, or a Windows volume root such as `C:`, `C:\` or `C:/`.
fn is_root_path(p: &str) -> bool {
    let b = p.as_bytes();
    if b.len() >= 3 && b[1] == b':' && matches!(b[2], b'/' | b'\\') {
        return matches!(&p[2..], "/" | "\\" | "");
    }
    p == "/"
}

/// Kopia's `SetPolicy`: validates, then replaces every policy stored for `target` with `policy`.
/// Returns the new manifest ID; the caller flushes the repository.
pub async fn set_policy(repo: &Repository, target: &SourceInfo, policy: &Policy) -> Result<String> {
    validate_policy(target, policy)
        .map_err(|e| SnapshotError::Other(format!("policy for {target}: {e}")))?;
    Ok(repo
        .manifests()
        .replace(policy_labels(target), encode_policy(policy))
        .await?)
}

/// Kopia's `RemovePolicy`: deletes every policy stored for `target`; returns how many.
pub async fn remove_policy(repo: &Repository, target: &SourceInfo) -> Result<usize> {
    let found = repo.manifests().find(&policy_labels(target)).await?;
    for e in &found {
        repo.manifests().delete(&e.id).await?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use kmover_format::snapshot::policy::TimeOfDay;

    use super::*;

    fn path_target(p: &str) -> SourceInfo {
        SourceInfo {
            host: "h".into(),
            user_name: "u".into(),
            path: p.into(),
        }
    }

    #[test]
    fn validation_follows_kopia() {
        let mut p = Policy::default();
        assert_eq!(validate_policy(&path_target("/a"), &p), Ok(()));
        p.scheduling.manual = true;
        assert_eq!(validate_policy(&path_target("/a"), &p), Ok(()));
        p.scheduling
            .times_of_day
            .push(TimeOfDay { hour: 1, minute: 2 });
        assert_eq!(
            validate_policy(&path_target("/a"), &p),
            Err(InvalidPolicy::ManualWithSchedule)
        );

        let mut p = Policy::default();
        p.upload.max_parallel_snapshots = Some(2);
        assert_eq!(
            validate_policy(&path_target("/a"), &p),
            Err(InvalidPolicy::ParallelSnapshotsOnPath)
        );
        let user = SourceInfo {
            path: String::new(),
            ..path_target("")
        };
        assert_eq!(validate_policy(&user, &p), Ok(()));

        let p = Policy::default();
        for ok in ["/", "C:\\", "C:/", "/a/b", "a"] {
            assert_eq!(validate_policy(&path_target(ok), &p), Ok(()), "{ok}");
        }
        for bad in ["/a/", "/a\\", "C:\\x\\", "a/"] {
            assert!(validate_policy(&path_target(bad), &p).is_err(), "{bad}");
        }
    }
}
