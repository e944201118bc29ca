//! What `repository create` stores besides the format blobs, as kopia does: the default global
//! policy and the maintenance parameters naming the creating client as maintenance owner.

use std::collections::BTreeMap;

use kmover_format::snapshot::manifest::SourceInfo;
use kmover_format::snapshot::policy::{Policy, encode_policy, policy_labels};
use kmover_repo::Repository;

use crate::error::Result;

pub const MAINTENANCE_TYPE: &str = "maintenance";

/// kopia's default maintenance parameters with `owner` (`user@host`), as `json.Marshal` writes them.
pub fn default_maintenance_params(owner: &str) -> Vec<u8> {
    let owner = serde_json::to_string(owner).expect("a string serialises");
    format!(
        "{{\"owner\":{owner},\"quick\":{{\"enabled\":true,\"interval\":3600000000000}},\"full\":{{\"enabled\":true,\"interval\":86400000000000}},\"logRetention\":{{\"maxTotalSize\":1073741824,\"maxCount\":10000,\"maxAge\":2592000000000000}},\"extendObjectLocks\":false,\"listParallelism\":0}}"
    )
    .into_bytes()
}

/// Stores the global policy and maintenance parameters of a new repository, then flushes.
pub async fn initialize_manifests(repo: &Repository, owner: &str) -> Result<()> {
    let global = policy_labels(&SourceInfo::default());
    repo.manifests()
        .replace(global, encode_policy(&Policy::kopia_default()))
        .await?;
    let labels: BTreeMap<String, String> =
        [("type".to_string(), MAINTENANCE_TYPE.to_string())].into();
    repo.manifests()
        .replace(labels, default_maintenance_params(owner))
        .await?;
    Ok(repo.flush().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_params_match_kopia_default_document() {
        assert_eq!(
            String::from_utf8(default_maintenance_params("alice@laptop")).unwrap(),
            r#"{"owner":"alice@laptop","quick":{"enabled":true,"interval":3600000000000},"full":{"enabled":true,"interval":86400000000000},"logRetention":{"maxTotalSize":1073741824,"maxCount":10000,"maxAge":2592000000000000},"extendObjectLocks":false,"listParallelism":0}"#
        );
    }
}
