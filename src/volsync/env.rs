//! The mover's view of its environment: a snapshot of the process environment taken once, with
//! the two ways VolSync leaves a variable out (missing, or present but empty) treated alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Runs the mover inside a directory that stands in for `/` (tests only; see docs/volsync.md).
pub const TEST_ROOT_VAR: &str = "KMOVER_VOLSYNC_TEST_ROOT";
/// Shortens the 300 s action timeout so the test suite can exercise it (tests only).
pub const TEST_ACTION_TIMEOUT_VAR: &str = "KMOVER_VOLSYNC_TEST_ACTION_TIMEOUT_SECONDS";

#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        let vars = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        Env { vars }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value when set and not empty: the script tests every variable with `-n`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// True only for the exact string `true`, as the reference compares.
    pub fn is_true(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// Every value that must never be printed, for scrubbing library error texts.
    pub fn secret_values(&self) -> Vec<String> {
        SECRET_VARS
            .iter()
            .filter_map(|name| self.get(name))
            .filter(|v| v.len() >= 4)
            .map(str::to_string)
            .collect()
    }
}

/// Variables whose values are credentials.
pub const SECRET_VARS: &[&str] = &[
    "KOPIA_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "WEBDAV_PASSWORD",
    "SFTP_PASSWORD",
    "B2_APPLICATION_KEY",
    "KOPIA_AZURE_STORAGE_KEY",
    "AZURE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_ACCOUNT_SAS",
    "AZURE_STORAGE_SAS_TOKEN",
];

/// Where the pod's fixed paths really are: themselves, or below the test root.
#[derive(Clone, Debug, Default)]
pub struct Paths {
    root: Option<PathBuf>,
}

impl Paths {
    pub fn from_env(env: &Env) -> Self {
        Paths {
            root: env.get(TEST_ROOT_VAR).map(PathBuf::from),
        }
    }

    pub fn test_root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The file system location of `logical`, an absolute path as the pod sees it. Relative
    /// paths are left alone (the caller rejects them where they matter).
    pub fn real(&self, logical: &str) -> PathBuf {
        match (&self.root, logical.strip_prefix('/')) {
            (Some(root), Some(rest)) => root.join(rest),
            _ => PathBuf::from(logical),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::from_pairs(&[("A", ""), ("B", "x"), ("T", "true"), ("U", "True")]);
        assert_eq!(env.get("A"), None);
        assert_eq!(env.get("B"), Some("x"));
        assert!(env.is_true("T"));
        assert!(!env.is_true("U"));
        assert_eq!(env.get_or("A", "d"), "d");
    }

    #[test]
    fn test_root_maps_absolute_paths_only() {
        let plain = Paths::default();
        assert_eq!(plain.real("/data"), PathBuf::from("/data"));
        let rooted = Paths::from_env(&Env::from_pairs(&[(TEST_ROOT_VAR, "/tmp/r")]));
        assert_eq!(rooted.real("/data"), PathBuf::from("/tmp/r/data"));
        assert_eq!(rooted.real("/"), PathBuf::from("/tmp/r/"));
        assert_eq!(rooted.real("rel"), PathBuf::from("rel"));
    }
}
