//! Which entries a backup leaves out: gitignore-style rules from the policy and from ignore files
//! (`.kopiaignore` by default) found while walking, evaluated parent first with the last matching
//! rule winning, as kopia's ignorefs does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use kmover_format::snapshot::policy::FilesPolicy;

/// A virtual root under which snapshot-relative paths are matched (rules need an absolute base).
const MATCH_ROOT: &str = "/kmover-snapshot-root";

pub const DEFAULT_IGNORE_FILE: &str = ".kopiaignore";

#[derive(Clone)]
pub struct IgnoreContext {
    matchers: Vec<Arc<Gitignore>>,
    ignore_file_names: Arc<Vec<String>>,
}

fn match_path(rel: &str) -> PathBuf {
    Path::new(MATCH_ROOT).join(rel.trim_start_matches('/'))
}

impl IgnoreContext {
    /// The context of the snapshot root: the policy's rules, anchored at the root.
    pub fn root(files: &FilesPolicy) -> Result<Self, String> {
        let mut builder = GitignoreBuilder::new(MATCH_ROOT);
        for rule in &files.ignore_rules {
            builder
                .add_line(None, rule)
                .map_err(|e| format!("invalid ignore rule {rule:?} in policy: {e}"))?;
        }
        let policy_rules = builder
            .build()
            .map_err(|e| format!("invalid ignore rules in policy: {e}"))?;
        let names = if files.dot_ignore_files.is_empty() {
            vec![DEFAULT_IGNORE_FILE.to_string()]
        } else {
            files.dot_ignore_files.clone()
        };
        Ok(IgnoreContext {
            matchers: vec![Arc::new(policy_rules)],
            ignore_file_names: Arc::new(names),
        })
    }

    /// The context inside directory `dir` (snapshot-relative `rel`, e.g. `a/b`): the parent's rules
    /// plus those of the ignore files `dir` contains.
    pub fn child(&self, dir: &Path, rel: &str) -> Result<Self, String> {
        let mut builder = GitignoreBuilder::new(match_path(rel));
        let mut found = false;
        for name in self.ignore_file_names.iter() {
            let file = dir.join(name);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(format!(
                        "unable to read ignore file {}: {e}",
                        file.display()
                    ));
                }
            };
            for line in text.lines() {
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                builder
                    .add_line(None, trimmed)
                    .map_err(|e| format!("{}: invalid rule {trimmed:?}: {e}", file.display()))?;
                found = true;
            }
        }
        if !found {
            return Ok(self.clone());
        }
        let own = builder
            .build()
            .map_err(|e| format!("ignore rules in {}: {e}", dir.display()))?;
        let mut ctx = self.clone();
        ctx.matchers.push(Arc::new(own));
        Ok(ctx)
    }

    /// Whether any rule applies here; without one, nothing is left out.
    pub fn has_rules(&self) -> bool {
        self.matchers.iter().any(|m| !m.is_empty())
    }

    /// Whether the entry at snapshot-relative `rel` is left out.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        let path = match_path(rel);
        let mut ignored = false;
        for m in &self.matchers {
            match m.matched(&path, is_dir) {
                Match::Ignore(_) => ignored = true,
                Match::Whitelist(_) => ignored = false,
                Match::None => {}
            }
        }
        ignored
    }

    pub fn is_ignore_file(&self, name: &[u8]) -> bool {
        self.ignore_file_names.iter().any(|n| n.as_bytes() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_nested_ignore_files_combine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join(".kopiaignore"),
            "# comment\n*.log\n!keep.log\nbuild/\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sub/.kopiaignore"), "/only-here.txt\n").unwrap();
        let files = FilesPolicy {
            ignore_rules: vec!["*.tmp".into()],
            ..Default::default()
        };
        let root = IgnoreContext::root(&files)
            .unwrap()
            .child(dir.path(), "")
            .unwrap();
        assert!(root.is_ignored("a.tmp", false));
        assert!(root.is_ignored("x/y/a.log", false));
        assert!(!root.is_ignored("keep.log", false));
        assert!(root.is_ignored("build", true));
        assert!(
            !root.is_ignored("build", false),
            "trailing slash means directories only"
        );
        let sub = root.child(&dir.path().join("sub"), "sub").unwrap();
        assert!(sub.is_ignored("sub/only-here.txt", false));
        assert!(
            !sub.is_ignored("sub/deeper/only-here.txt", false),
            "a leading slash anchors the rule"
        );
        assert!(
            sub.is_ignored("sub/z.log", false),
            "parent rules still apply"
        );
        assert!(!root.is_ignored("only-here.txt", false));
        assert!(sub.has_rules());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let no_rules = IgnoreContext::root(&FilesPolicy::default()).unwrap();
        assert!(!no_rules.child(&empty, "empty").unwrap().has_rules());
    }
}
