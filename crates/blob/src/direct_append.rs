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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Alignment of direct writes: the largest logical block size in common use.
const ALIGN: usize = 4096;
/// Bytes staged before they are written: large writes keep the device busy.
const STAGING: usize = 2 << 20;

/// `STAGING` block-aligned bytes inside an allocation of `STAGING + ALIGN`.
struct AlignedBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuffer {
    fn new() -> Self {
        let bytes = vec![0u8; STAGING + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        AlignedBuffer { bytes, start }
    }

    fn get(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.bytes[self.start + range.start..self.start + range.end]
    }

    fn get_mut(&mut self, range: std::ops::Range<usize>) -> &mut [u8] {
        &mut self.bytes[self.start + range.start..self.start + range.end]
    }
}

/// A full buffer on its way to the file, written by the appender's thread: the caller stages
/// the next one meanwhile instead of waiting for the device (a maintenance rewrite appends
/// under the pack writer's lock while it also reads).
struct InFlight {
    buffer: Arc<AlignedBuffer>,
    offset: u64,
}

struct WriterThread {
    jobs: SyncSender<(Arc<AlignedBuffer>, u64)>,
    /// In a mutex only because blob writers must be `Sync`; one thread uses it.
    results: std::sync::Mutex<Receiver<io::Result<()>>>,
    handle: JoinHandle<()>,
}

impl WriterThread {
    /// A thread writing the buffers it is sent at their offsets.
    fn start(file: &Arc<File>, direct: &Arc<AtomicBool>) -> io::Result<Self> {
        let (jobs, job_queue) = sync_channel::<(Arc<AlignedBuffer>, u64)>(1);
        let (result_sender, results) = sync_channel(1);
        let (file, direct) = (file.clone(), direct.clone());
        let handle = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || {
                for (buffer, offset) in job_queue {
                    let written = write_block(&file, &direct, buffer.get(0..STAGING), offset);
                    // The buffer goes back to the appender: it must hold the only reference.
                    drop(buffer);
                    if result_sender.send(written).is_err() {
                        break;
                    }
                }
            })?;
        Ok(WriterThread {
            jobs,
            results: std::sync::Mutex::new(results),
            handle,
        })
    }
}

pub(crate) struct DirectAppender {
    file: Arc<File>,
    direct: Arc<AtomicBool>,
    staging: AlignedBuffer,
    staged: usize,
    /// The next buffer to stage into, once the in-flight one is back.
    spare: Option<AlignedBuffer>,
    in_flight: Option<InFlight>,
    writer: Option<WriterThread>,
    /// Bytes written or being written to the file.
    on_disk: u64,
}

impl std::fmt::Debug for DirectAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectAppender")
            .field("direct", &self.direct.load(Ordering::Relaxed))
            .field("len", &self.len())
            .finish()
    }
}

impl DirectAppender {
    /// Takes a new, empty file opened for writing and switches it to direct I/O if possible.
    pub(crate) fn new(file: File) -> Self {
        let direct = set_direct(&file, true).is_ok();
        DirectAppender {
            file: Arc::new(file),
            direct: Arc::new(AtomicBool::new(direct)),
            staging: AlignedBuffer::new(),
            staged: 0,
            spare: None,
            in_flight: None,
            writer: None,
            on_disk: 0,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.on_disk + self.staged as u64
    }

    pub(crate) fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(STAGING - self.staged);
            self.staging
                .get_mut(self.staged..self.staged + n)
                .copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGING {
                self.send_staged()?;
            }
        }
        Ok(())
    }

    /// Copies bytes `offset..offset + out.len()` that are not yet in the file (staged or being
    /// written) into `out`, and returns how many leading bytes of the range are in the file
    /// (read those from it).
    pub(crate) fn staged_part(&self, offset: u64, out: &mut [u8]) -> usize {
        let in_file_end = self.in_flight.as_ref().map_or(self.on_disk, |f| f.offset);
        let end = offset + out.len() as u64;
        // Copies the part of the range that `buffer` holds (its bytes start at `at_offset`).
        let mut copy = |buffer: &AlignedBuffer, at_offset: u64, len: u64| {
            let lo = offset.max(at_offset);
            let hi = end.min(at_offset + len);
            if lo < hi {
                let at = (lo - at_offset) as usize;
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(buffer.get(at..at + (hi - lo) as usize));
            }
        };
        if let Some(f) = &self.in_flight {
            copy(&f.buffer, f.offset, STAGING as u64);
        }
        copy(&self.staging, self.on_disk, self.staged as u64);
        (in_file_end.clamp(offset, end) - offset) as usize
    }

    /// Writes what is staged and makes the file durable.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        self.complete_in_flight()?;
        self.stop_writer();
        if !self.staged.is_multiple_of(ALIGN) && self.direct.load(Ordering::Relaxed) {
            set_direct(&self.file, false)?;
            self.direct.store(false, Ordering::Relaxed);
        }
        write_block(
            &self.file,
            &self.direct,
            self.staging.get(0..self.staged),
            self.on_disk,
        )?;
        self.on_disk += self.staged as u64;
        self.staged = 0;
        self.file.sync_all()
    }

    /// Hands the full staging buffer to the writer thread, after the previous one is written.
    fn send_staged(&mut self) -> io::Result<()> {
        self.complete_in_flight()?;
        let next = self.spare.take().unwrap_or_else(AlignedBuffer::new);
        let buffer = Arc::new(std::mem::replace(&mut self.staging, next));
        let writer = match &mut self.writer {
            Some(w) => w,
            empty => empty.insert(WriterThread::start(&self.file, &self.direct)?),
        };
        writer
            .jobs
            .send((buffer.clone(), self.on_disk))
            .map_err(|_| writer_gone())?;
        self.in_flight = Some(InFlight {
            buffer,
            offset: self.on_disk,
        });
        self.on_disk += STAGING as u64;
        self.staged = 0;
        Ok(())
    }

    /// Waits for the buffer being written, and keeps it for reuse.
    fn complete_in_flight(&mut self) -> io::Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let written = self
            .writer
            .as_ref()
            .ok_or_else(writer_gone)?
            .results
            .lock()
            .map_err(|_| writer_gone())?
            .recv()
            .map_err(|_| writer_gone())?;
        self.spare = Arc::into_inner(in_flight.buffer);
        written
    }

    fn stop_writer(&mut self) {
        if let Some(WriterThread {
            jobs,
            results,
            handle,
        }) = self.writer.take()
        {
            drop(jobs);
            drop(results);
            let _ = handle.join();
        }
    }
}

impl Drop for DirectAppender {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the pack writer thread stopped")
}

/// Writes `bytes` at `offset`; a filesystem that took the direct flag but refuses the write
/// gets it through the page cache from then on.
fn write_block(file: &File, direct: &AtomicBool, bytes: &[u8], offset: u64) -> io::Result<()> {
    match file.write_all_at(bytes, offset) {
        Err(e) if direct.load(Ordering::Relaxed) && e.raw_os_error() == Some(nix::libc::EINVAL) => {
            set_direct(file, false)?;
            direct.store(false, Ordering::Relaxed);
            file.write_all_at(bytes, offset)
        }
        other => other,
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
        assert_eq!(appender.direct.load(Ordering::Relaxed), supported);
        appender.append(&pattern(STAGING + 5, 1)).unwrap();
        // Whole staged blocks went out in direct mode; the tail needs the cache.
        assert_eq!(appender.direct.load(Ordering::Relaxed), supported);
        appender.finish().unwrap();
        assert!(!appender.direct.load(Ordering::Relaxed));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), STAGING as u64 + 5);
    }

    #[test]
    fn staged_part_serves_bytes_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut appender = DirectAppender::new(File::create(&path).unwrap());
        let data = pattern(2 * STAGING + 100, 7);
        appender.append(&data).unwrap();
        // The first STAGING bytes are in the file, the next STAGING on their way, 100 staged.
        let check = |offset: usize, len: usize, in_file: usize| {
            let mut out = vec![0u8; len];
            assert_eq!(appender.staged_part(offset as u64, &mut out), in_file);
            assert_eq!(out[in_file..], data[offset + in_file..offset + len]);
        };
        check(STAGING - 200, STAGING + 250, 200);
        check(2 * STAGING + 10, 50, 0);
        check(STAGING + 5, 10, 0);
        check(0, 50, 50);
        appender.finish().unwrap();
        let mut out = vec![0u8; 300];
        assert_eq!(appender.staged_part(STAGING as u64, &mut out), 300);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
