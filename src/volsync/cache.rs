//! The `/cache` volume: its usage against `KOPIA_CACHE_CAPACITY_BYTES` (for the exhaustion
//! diagnostics), the per-run log directory with kopia's retention settings, and the guarded
//! clearing of rebuildable cache directories (`KOPIA_FORCE_CACHE_REBUILD`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::env::Env;
use super::log::Log;

pub const DEFAULT_CAPACITY_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Usage at or above this percentage counts as exhaustion.
pub const EXHAUSTION_PERCENT: u64 = 90;
/// Subdirectories kopia rebuilds on demand; nothing else is ever removed.
const REBUILDABLE: [&str; 4] = ["indexes", "index-blobs", "contents", "blob-list"];
const CLEAR_RATE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub capacity: u64,
    pub percent: u64,
}

impl Usage {
    pub fn exhausted(&self) -> bool {
        self.percent >= EXHAUSTION_PERCENT
    }
}

pub fn capacity(env: &Env) -> u64 {
    env.get("KOPIA_CACHE_CAPACITY_BYTES")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CAPACITY_BYTES)
}

/// `du -sb`: apparent sizes of everything below `dir`, directories included.
pub fn usage(dir: &Path, capacity: u64) -> Usage {
    let used = if dir.is_dir() { apparent_size(dir) } else { 0 };
    let percent = if capacity > 0 {
        (used as u128 * 100 / capacity as u128) as u64
    } else {
        0
    };
    Usage {
        used,
        capacity,
        percent,
    }
}

fn apparent_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.len();
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += apparent_size(&entry.path());
        }
    }
    total
}

/// `8589934592` → `8.0Gi`, `1536` → `1.5Ki`, `12` → `12B`.
pub fn format_bytes(n: u64) -> String {
    const KI: u64 = 1024;
    let scaled = |unit: u64, suffix: &str| format!("{:.1}{suffix}", n as f64 / unit as f64);
    if n >= KI * KI * KI {
        scaled(KI * KI * KI, "Gi")
    } else if n >= KI * KI {
        scaled(KI * KI, "Mi")
    } else if n >= KI {
        scaled(KI, "Ki")
    } else {
        format!("{n}B")
    }
}

/// Keeps at most `max_files` run logs, none older than `max_age`.
pub fn prune_logs(logs: &Path, max_files: usize, max_age: Option<Duration>) {
    let Ok(entries) = std::fs::read_dir(logs) else {
        return;
    };
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let now = SystemTime::now();
    let excess = files.len().saturating_sub(max_files);
    for (i, (modified, path)) in files.iter().enumerate() {
        let too_old = max_age.is_some_and(|age| {
            now.duration_since(*modified)
                .is_ok_and(|elapsed| elapsed > age)
        });
        if i < excess || too_old {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// kopia's duration flags as the Secret gives them: `4h`, `30m`, `90s`, `7d`.
pub fn parse_age(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = text[..split].parse().ok()?;
    let unit = match &text[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    Some(Duration::from_secs(n * unit))
}

/// Empties the rebuildable cache directories, refusing when kopia has unflushed own writes, when
/// one of them is a symlink, when another clear runs, or when the last clear is under 5 min old.
pub fn clear_rebuildable(cache: &Path, log: &Log) -> bool {
    let own_writes = cache.join("own-writes");
    if std::fs::read_dir(&own_writes).is_ok_and(|mut d| d.next().is_some()) {
        log.warn("Cache has pending own-writes; not clearing it");
        return false;
    }
    for name in REBUILDABLE {
        let dir = cache.join(name);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            log.warn(&format!(
                "Cache directory {} is a symlink; not clearing the cache",
                dir.display()
            ));
            return false;
        }
    }
    let stamp = cache.join(".last-cache-clear");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if let Some(last) = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        && now.saturating_sub(last) < CLEAR_RATE_LIMIT.as_secs()
    {
        log.warn("Cache was cleared less than 300 seconds ago; not clearing it again");
        return false;
    }
    let lock = cache.join(".cache-cleanup.lock");
    if std::fs::create_dir(&lock).is_err() {
        log.warn("Another cache cleanup is in progress; not clearing the cache");
        return false;
    }
    let mut cleared = 0;
    for name in REBUILDABLE {
        let dir = cache.join(name);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if removed.is_ok() {
                    cleared += 1;
                }
            }
        }
    }
    let _ = std::fs::write(&stamp, now.to_string());
    let _ = std::fs::remove_dir(&lock);
    log.info(&format!("Cleared {cleared} rebuildable cache entries"));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_formatted_like_the_reference() {
        assert_eq!(format_bytes(8_589_934_592), "8.0Gi");
        assert_eq!(format_bytes(1_073_741_824), "1.0Gi");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(5 * 1024 * 1024 + 512 * 1024), "5.5Mi");
        assert_eq!(format_bytes(12), "12B");
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("4h"), Some(Duration::from_secs(14400)));
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(604800)));
        assert_eq!(parse_age("soon"), None);
    }

    #[test]
    fn usage_counts_files_against_capacity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        let u = usage(dir.path(), 1000);
        assert!(u.used >= 1000);
        assert!(u.exhausted());
        assert_eq!(usage(&dir.path().join("missing"), 10).used, 0);
    }

    #[test]
    fn clearing_keeps_everything_but_rebuildable_directories() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path();
        std::fs::create_dir_all(c.join("contents/ab")).unwrap();
        std::fs::write(c.join("contents/ab/x"), b"x").unwrap();
        std::fs::write(c.join("kopia.config"), b"{}").unwrap();
        let log = Log::new(false, Vec::new());
        assert!(clear_rebuildable(c, &log));
        assert!(!c.join("contents/ab").exists());
        assert!(c.join("kopia.config").exists());
        // Rate limited on the second try.
        std::fs::create_dir_all(c.join("contents/cd")).unwrap();
        assert!(!clear_rebuildable(c, &log));
        assert!(c.join("contents/cd").exists());
    }
}
