//! Filesystem operations of restore, all relative to directory descriptors: every name handed to
//! them is one validated component, and nothing below the restore target is ever resolved through
//! a symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `openat2(RESOLVE_NO_SYMLINKS)`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};

use kmover_format::snapshot::UtcTimestamp;
use kmover_format::snapshot::directory::mode;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};

/// Metadata restore applies to an entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attrs {
    /// Go `FileMode` bits as stored by kopia.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: UtcTimestamp,
}

/// Which of the attribute steps run, and whether permission errors are ignored.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttrPolicy {
    pub owners: bool,
    pub permissions: bool,
    pub times: bool,
    pub ignore_permission_errors: bool,
}

/// What the attributes are applied to: an open file or directory, or a symlink by name.
pub(super) enum AttrTarget<'a> {
    Fd(&'a OwnedFd),
    Symlink { parent: &'a OwnedFd, name: &'a [u8] },
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `lstat` of `name` in `parent`; `None` when nothing is there.
pub(super) fn lstat_at(parent: &OwnedFd, name: &[u8]) -> io::Result<Option<FileStat>> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Opens the directory `name` in `parent`, refusing a symlink.
pub(super) fn open_dir_at(parent: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(openat(parent, name, DIR_FLAGS, Mode::empty())?)
}

// 0: not tried yet, 1: openat2 works, 2: unavailable (old kernel or seccomp).
static OPENAT2_STATE: AtomicU8 = AtomicU8::new(0);

/// Opens the directory at the relative path `rel` (validated components joined by `/`) below
/// `root` without following any symlink on the way.
pub(super) fn open_dir_beneath(root: &OwnedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    if OPENAT2_STATE.load(Ordering::Relaxed) != 2 {
        let how = OpenHow::new().flags(DIR_FLAGS).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        for _ in 0..4 {
            match openat2(root, rel, how) {
                Ok(fd) => {
                    OPENAT2_STATE.store(1, Ordering::Relaxed);
                    return Ok(fd);
                }
                // The kernel asks for a retry when a rename raced the lookup.
                Err(Errno::EAGAIN) => continue,
                Err(Errno::ENOSYS | Errno::EPERM) => {
                    OPENAT2_STATE.store(2, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    open_dir_stepwise(root, rel)
}

/// The portable way: one component at a time, each opened without following symlinks.
fn open_dir_stepwise(root: &OwnedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut components = rel.split(|&b| b == b'/');
    let first = components.next().unwrap_or_default();
    let mut fd = open_dir_at(root, first)?;
    for component in components {
        fd = open_dir_at(&fd, component)?;
    }
    Ok(fd)
}

/// Outcome of [`create_dir_at`].
pub(super) enum DirCreation {
    Created(OwnedFd),
    Existing(OwnedFd),
}

/// Creates directory `name` in `parent` with mode 0700 (kopia's), or accepts an existing real
/// directory; a symlink or any other file in the way is an error.
pub(super) fn create_dir_at(parent: &OwnedFd, name: &[u8]) -> io::Result<DirCreation> {
    match mkdirat(parent, name, Mode::S_IRWXU) {
        Ok(()) => Ok(DirCreation::Created(open_dir_at(parent, name)?)),
        Err(Errno::EEXIST) => {
            let st = lstat_at(parent, name)?;
            if st.is_some_and(|st| file_type(&st) == SFlag::S_IFDIR) {
                Ok(DirCreation::Existing(open_dir_at(parent, name)?))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the regular files and symlinks of `dir` whose names `is_stale` picks; returns how
/// many went.
pub(super) fn remove_stale_files(
    dir: &OwnedFd,
    is_stale: impl Fn(&[u8]) -> bool,
) -> io::Result<usize> {
    let mut listing = Dir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    let mut stale = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if is_stale(&name) {
            stale.push(name);
        }
    }
    let mut removed = 0;
    for name in stale {
        let removable = |st: FileStat| matches!(file_type(&st), SFlag::S_IFREG | SFlag::S_IFLNK);
        if lstat_at(dir, &name)?.is_some_and(removable) {
            match unlinkat(dir, &name[..], UnlinkatFlags::NoRemoveDir) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Whether the open directory `dir` has no entries.
pub(super) fn dir_is_empty(dir: &OwnedFd) -> io::Result<bool> {
    // A fresh open file description, so the caller's descriptor keeps its own position.
    let mut listing = Dir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn timespec(t: UtcTimestamp) -> TimeSpec {
    TimeSpec::new(t.unix_secs(), i64::from(t.subsec_nanos()))
}

fn permitted(result: nix::Result<()>, policy: &AttrPolicy) -> nix::Result<()> {
    match result {
        Err(Errno::EPERM | Errno::EACCES) if policy.ignore_permission_errors => Ok(()),
        other => other,
    }
}

/// Applies owner, then permissions, then times — kopia's order, each step only when the current
/// value differs. Symlinks get no permissions (Linux has none) and are never followed. Returns
/// the failing step's name with the error.
pub(super) fn set_attributes(
    target: AttrTarget<'_>,
    want: &Attrs,
    policy: &AttrPolicy,
) -> Result<(), (&'static str, io::Error)> {
    let stat = || match &target {
        AttrTarget::Fd(fd) => fstat(fd),
        AttrTarget::Symlink { parent, name } => {
            fstatat(*parent, *name, AtFlags::AT_SYMLINK_NOFOLLOW)
        }
    };
    let fail = |op: &'static str| move |e: Errno| (op, io::Error::from(e));
    let mut st = stat().map_err(fail("stat"))?;

    if policy.owners && (st.st_uid != want.uid || st.st_gid != want.gid) {
        let (uid, gid) = (Some(Uid::from_raw(want.uid)), Some(Gid::from_raw(want.gid)));
        let changed = match &target {
            AttrTarget::Fd(fd) => fchown(fd, uid, gid),
            AttrTarget::Symlink { parent, name } => {
                fchownat(*parent, *name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
            }
        };
        permitted(changed, policy).map_err(fail("chown"))?;
        // chown clears setuid/setgid, so compare permissions against the new state.
        st = stat().map_err(fail("stat"))?;
    }

    if policy.permissions
        && let AttrTarget::Fd(fd) = &target
    {
        let bits = mode::to_unix(want.mode);
        if st.st_mode & 0o7777 != bits {
            let changed = fchmod(fd, Mode::from_bits_truncate(bits));
            permitted(changed, policy).map_err(fail("chmod"))?;
        }
    }

    if policy.times
        && (st.st_mtime, st.st_mtime_nsec)
            != (want.mtime.unix_secs(), i64::from(want.mtime.subsec_nanos()))
    {
        // Like kopia, atime is set to the modification time.
        let t = timespec(want.mtime);
        let changed = match &target {
            AttrTarget::Fd(fd) => futimens(fd, &t, &t),
            AttrTarget::Symlink { parent, name } => {
                utimensat(*parent, *name, &t, &t, UtimensatFlags::NoFollowSymlink)
            }
        };
        permitted(changed, policy).map_err(fail("set times"))?;
    }
    Ok(())
}

/// Writes `data` at `offset`. With `sparse_block`, blocks (aligned to the file, not to `data`)
/// that are all zero are skipped, leaving holes; the file must read as zeros there already
/// (freshly created or truncated). Returns whether `data` was all zeros.
pub(super) fn write_region(
    file: &File,
    offset: u64,
    data: &[u8],
    sparse_block: Option<u64>,
) -> io::Result<bool> {
    let Some(block) = sparse_block else {
        file.write_all_at(data, offset)?;
        return Ok(false);
    };
    let mut run_start: Option<usize> = None;
    let mut pos = 0usize;
    let mut all_zero = true;
    while pos < data.len() {
        let to_boundary = block - (offset + pos as u64) % block;
        let end = data.len().min(pos.saturating_add(to_boundary as usize));
        if is_zero(&data[pos..end]) {
            if let Some(start) = run_start.take() {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
            }
        } else {
            all_zero = false;
            run_start.get_or_insert(pos);
        }
        pos = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(all_zero)
}

pub(super) fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    let zero_words = words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().expect("16-byte chunk")) == 0);
    zero_words && words.remainder().iter().all(|&b| b == 0)
}

/// Block size of the filesystem holding `dir`, the granularity of holes (kopia uses statfs too).
pub(super) fn fs_block_size(dir: &impl AsFd) -> io::Result<u64> {
    let st = nix::sys::statvfs::fstatvfs(dir)?;
    #[allow(clippy::useless_conversion)] // c_ulong is 32 bits on some targets
    Ok(u64::from(st.block_size()).clamp(512, 1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_files_and_symlinks_go_directories_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("stale-file"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", p.join("stale-link")).unwrap();
        std::fs::create_dir(p.join("stale-dir")).unwrap();
        std::fs::write(p.join("kept"), b"y").unwrap();
        let fd = OwnedFd::from(File::open(p).unwrap());
        let removed = remove_stale_files(&fd, |name| name.starts_with(b"stale-")).unwrap();
        assert_eq!(removed, 2);
        let mut left: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["kept", "stale-dir"]);
    }

    #[test]
    fn zero_detection_covers_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 100]));
        for i in 0..100 {
            let mut b = [0u8; 100];
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
        }
    }

    #[test]
    fn sparse_writes_skip_zero_blocks_aligned_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        // Offset 10 with block 16: the first piece is 6 bytes, then whole blocks.
        let mut data = vec![0u8; 64];
        data[7] = 7; // second piece (file bytes 16..32)
        data[40] = 9; // file bytes 48..64
        assert!(!write_region(&file, 10, &data, Some(16)).unwrap());
        file.set_len(74).unwrap();
        let mut back = vec![0u8; 74];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back[10..], &data[..]);
        assert!(write_region(&file, 100, &[0; 32], Some(16)).unwrap());
        assert_eq!(
            file.metadata().unwrap().len(),
            74,
            "zeros are never written"
        );
    }

    #[test]
    fn symlinks_are_refused_on_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let root: OwnedFd = File::open(dir.path()).unwrap().into();
        assert!(open_dir_at(&root, b"link").is_err());
        assert!(open_dir_beneath(&root, b"link").is_err());
        assert!(open_dir_beneath(&root, b"real").is_ok());
        // A symlink in the middle of a path is refused too, by both lookups.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("real/inner")).unwrap();
        std::fs::create_dir(outside.path().join("x")).unwrap();
        assert!(open_dir_beneath(&root, b"real/inner/x").is_err());
        assert!(open_dir_stepwise(&root, b"real/inner/x").is_err());
        std::fs::remove_dir(outside.path().join("x")).unwrap();
        std::fs::create_dir_all(dir.path().join("real/a/b")).unwrap();
        assert!(open_dir_stepwise(&root, b"real/a/b").is_ok());
        assert!(
            matches!(create_dir_at(&root, b"link"), Err(e) if e.kind() == io::ErrorKind::AlreadyExists)
        );
        assert!(matches!(
            create_dir_at(&root, b"real"),
            Ok(DirCreation::Existing(_))
        ));
        assert!(matches!(
            create_dir_at(&root, b"new"),
            Ok(DirCreation::Created(_))
        ));
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
