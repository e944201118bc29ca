//! Appending to a new file around the page cache (`O_DIRECT`) where the filesystem allows it.
//!
//! A pack is written once and not read again by this process, so copying it into the page cache
//! only costs: on ext4 the buffered path runs at a third of the direct one (measured with dd on
//! the development machine: 1 GiB buffered 1.6–2.5 s, direct with fsync 0.6 s), and in a pod the
//! cached pages count against the container's memory limit. Direct writes need block-aligned
//! offsets, lengths and memory: bytes are staged in an aligned buffer and written in whole
//! blocks; the unaligned tail goes through the page cache when the file is finished. Filesystems
//! without direct I/O (or that refuse it later) get ordinary writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Alignment of direct writes: the largest logical block size in common use.
const ALIGN: usize = 4096;
/// Bytes staged before they are written: large writes keep the device busy.
const STAGING: usize = 2 << 20;

#[derive(Debug)]
pub(crate) struct DirectAppender {
    file: File,
    direct: bool,
    /// `STAGING + ALIGN` bytes, of which `STAGING` from `start` are block-aligned.
    staging: Vec<u8>,
    start: usize,
    staged: usize,
    on_disk: u64,
}

impl DirectAppender {
    /// Takes a new, empty file opened for writing and switches it to direct I/O if possible.
    pub(crate) fn new(file: File) -> Self {
        let direct = set_direct(&file, true).is_ok();
        let staging = vec![0u8; STAGING + ALIGN];
        let start = staging.as_ptr().align_offset(ALIGN);
        DirectAppender {
            file,
            direct,
            staging,
            start,
            staged: 0,
            on_disk: 0,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.on_disk + self.staged as u64
    }

    pub(crate) fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(STAGING - self.staged);
            let at = self.start + self.staged;
            self.staging[at..at + n].copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGING {
                self.write_staged()?;
            }
        }
        Ok(())
    }

    /// Copies bytes `offset..offset + out.len()` that are still staged into `out`, and returns how
    /// many leading bytes of the range are already in the file (read those from it).
    pub(crate) fn staged_part(&self, offset: u64, out: &mut [u8]) -> usize {
        let end = offset + out.len() as u64;
        if end <= self.on_disk {
            return out.len();
        }
        let from = offset.max(self.on_disk);
        let in_file = (from - offset) as usize;
        let staged_from = self.start + (from - self.on_disk) as usize;
        let staged_len = out.len() - in_file;
        out[in_file..].copy_from_slice(&self.staging[staged_from..staged_from + staged_len]);
        in_file
    }

    /// Writes what is staged and makes the file durable.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.staged % ALIGN != 0 && self.direct {
            set_direct(&self.file, false)?;
            self.direct = false;
        }
        self.write_staged()?;
        self.file.sync_all()
    }

    fn write_staged(&mut self) -> io::Result<()> {
        let bytes = &self.staging[self.start..self.start + self.staged];
        match self.file.write_all_at(bytes, self.on_disk) {
            Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                // The filesystem took the flag but refuses the write: write through the cache.
                set_direct(&self.file, false)?;
                self.direct = false;
                self.file.write_all_at(bytes, self.on_disk)?;
            }
            other => other?,
        }
        self.on_disk += self.staged as u64;
        self.staged = 0;
        Ok(())
    }
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_DIRECT
    } else {
        flags - OFlag::O_DIRECT
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn appends_of_any_size_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let file = File::create(&path).unwrap();
        let mut appender = DirectAppender::new(file);
        let mut expected = Vec::new();
        for (i, len) in [1, 4095, 4097, STAGING, 3 * STAGING + 17, 0, 12_345]
            .into_iter()
            .enumerate()
        {
            let piece = pattern(len, i as u8);
            appender.append(&piece).unwrap();
            expected.extend_from_slice(&piece);
            assert_eq!(appender.len(), expected.len() as u64);
        }
        appender.finish().unwrap();
        let mut written = Vec::new();
        File::open(&path)
            .unwrap()
            .read_to_end(&mut written)
            .unwrap();
        assert_eq!(written.len(), expected.len());
        assert!(written == expected, "file differs from what was appended");
    }

    #[test]
    fn writes_bypass_the_page_cache_where_the_filesystem_allows() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        let supported = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        let path = dir.path().join("blob");
        let mut appender = DirectAppender::new(File::create(&path).unwrap());
        assert_eq!(appender.direct, supported);
        appender.append(&pattern(STAGING + 5, 1)).unwrap();
        // Whole staged blocks went out in direct mode; the tail needs the cache.
        assert_eq!(appender.direct, supported);
        appender.finish().unwrap();
        assert!(!appender.direct);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), STAGING as u64 + 5);
    }

    #[test]
    fn staged_part_serves_bytes_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut appender = DirectAppender::new(File::create(&path).unwrap());
        let data = pattern(STAGING + 100, 7);
        appender.append(&data).unwrap();
        // The first STAGING bytes are in the file, the last 100 staged.
        let mut out = vec![0u8; 300];
        let in_file = appender.staged_part(STAGING as u64 - 200, &mut out);
        assert_eq!(in_file, 200);
        assert_eq!(&out[200..], &data[STAGING..]);
        let mut out = vec![0u8; 50];
        assert_eq!(appender.staged_part(STAGING as u64 + 10, &mut out), 0);
        assert_eq!(out, data[STAGING + 10..STAGING + 60]);
        let mut out = vec![0u8; 50];
        assert_eq!(appender.staged_part(0, &mut out), 50);
    }
}
