//! The snapshot manifest's statistics, counted with atomics while many directories are walked at
//! once (a lock per file showed up in profiles of trees with a million small files).

use std::sync::atomic::{AtomicI64, Ordering};

use kmover_format::snapshot::manifest::SnapshotStats;

/// One counter per [`SnapshotStats`] field.
#[derive(Debug, Default)]
pub struct StatCounters {
    pub total_size: AtomicI64,
    pub excluded_total_size: AtomicI64,
    pub file_count: AtomicI64,
    pub cached_files: AtomicI64,
    pub non_cached_files: AtomicI64,
    pub dir_count: AtomicI64,
    pub excluded_file_count: AtomicI64,
    pub excluded_dir_count: AtomicI64,
    pub ignored_error_count: AtomicI64,
    pub error_count: AtomicI64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicI64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicI64, n: i64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl StatCounters {
    /// The counts so far added to `base`; the 32-bit fields wrap as kopia's `int32` would.
    pub fn added_to(&self, base: &SnapshotStats) -> SnapshotStats {
        let get = |c: &AtomicI64| c.load(Ordering::Relaxed);
        let narrow = |c: &AtomicI64| get(c) as i32;
        SnapshotStats {
            total_size: base.total_size.wrapping_add(get(&self.total_size)),
            excluded_total_size: base
                .excluded_total_size
                .wrapping_add(get(&self.excluded_total_size)),
            file_count: base.file_count.wrapping_add(narrow(&self.file_count)),
            cached_files: base.cached_files.wrapping_add(narrow(&self.cached_files)),
            non_cached_files: base
                .non_cached_files
                .wrapping_add(narrow(&self.non_cached_files)),
            dir_count: base.dir_count.wrapping_add(narrow(&self.dir_count)),
            excluded_file_count: base
                .excluded_file_count
                .wrapping_add(narrow(&self.excluded_file_count)),
            excluded_dir_count: base
                .excluded_dir_count
                .wrapping_add(narrow(&self.excluded_dir_count)),
            ignored_error_count: base
                .ignored_error_count
                .wrapping_add(narrow(&self.ignored_error_count)),
            error_count: base.error_count.wrapping_add(narrow(&self.error_count)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_to_the_base() {
        let c = StatCounters::default();
        bump(&c.file_count);
        bump(&c.file_count);
        add(&c.total_size, 300);
        bump(&c.error_count);
        let base = SnapshotStats {
            file_count: 5,
            total_size: 7,
            ..Default::default()
        };
        let s = c.added_to(&base);
        assert_eq!(s.file_count, 7);
        assert_eq!(s.total_size, 307);
        assert_eq!(s.error_count, 1);
        assert_eq!(s.dir_count, 0);
    }
}
