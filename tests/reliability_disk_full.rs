//! Full disk: a filesystem repository on a small tmpfs fills up during a backup, at a seeded
//! point (a filler file leaves a seeded amount of space). The backup must exit non-zero with an
//! error naming the path; no index entry may point to a pack that was not stored; every earlier
//! snapshot must still verify with kmover and kopia; once space is freed, the next backup works.

mod common;

use common::crash::{Backend, SharedRepo, TmpfsMount, rounds, say, seed};
use common::{Kopia, KopiaVersion, RepositoryCli, TestRng, clip};

const CI_ROUNDS: usize = 3;
const DISK: u64 = 48 << 20;

/// Temporary files a failed write left behind (`<blob>.tmp.<random>`).
fn leftover_temp_files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(".tmp.") {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

fn free_space(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}

#[test]
fn backup_onto_a_full_disk_fails_cleanly_and_loses_nothing() {
    let test = "backup_onto_a_full_disk_fails_cleanly_and_loses_nothing";
    let mut rng = TestRng::new(seed() ^ 0xd15c);
    let mut survived = 0;
    for round in 0..rounds(CI_ROUNDS) {
        let Some(disk) = TmpfsMount::new(test, DISK) else {
            return;
        };
        let repo_path = disk.path().join("repo");
        let repo = SharedRepo::create(
            &Backend::Filesystem(repo_path.clone()),
            Kopia::find(KopiaVersion::V0_22, test),
        );
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("data")).unwrap();
        common::write_random_file(&tree.join("data"), "first.bin", 1, 6 << 20);
        std::fs::write(tree.join("data/text.txt"), common::text_bytes(2, 100_000)).unwrap();
        let first = repo.kmover_snapshot(&tree);

        // Leave a seeded amount of room (0–6 MiB), then back up 12 MiB more.
        let room = rng.below(6 << 20) as u64;
        let filler = disk.path().join("filler");
        let fill = free_space(disk.path()).saturating_sub(room);
        std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
        common::write_random_file(
            &tree.join("data"),
            "second.bin",
            10 + round as u64,
            12 << 20,
        );
        let out =
            repo.kmover
                .runner()
                .run_unchecked(["snapshot", "create", tree.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let context = format!("round {round} ({} KiB free)", room >> 10);
        assert!(
            !out.status.success(),
            "{context}: backup succeeded on a full disk"
        );
        assert!(
            out.status.code() == Some(1) && !text.contains("panicked"),
            "{context}: {}\n{}",
            out.status,
            clip(&out.stderr)
        );
        assert!(
            text.contains(&repo_path.display().to_string())
                && text.contains("No space left on device"),
            "{context}: the error names neither the path nor the cause:\n{}",
            clip(&out.stderr)
        );
        let left = leftover_temp_files(&repo_path);
        assert!(left.is_empty(), "{context}: temporary files left: {left:?}");
        repo.assert_intact(std::slice::from_ref(&first), &context);

        std::fs::remove_file(&filler).unwrap();
        let second = repo.kmover_snapshot(&tree);
        repo.assert_intact(&[first, second], &format!("{context}, space freed"));
        survived += 1;
        say(&format!(
            "{context}: failed cleanly: {}",
            text.lines().last().unwrap_or("")
        ));
    }
    say(&format!(
        "{test}: {survived} full-disk backups failed cleanly, nothing lost"
    ));
}
