//! Process-wide allocator tuning, set before anything allocates much.
//!
//! glibc's adaptive mmap threshold grows to the size of the buffers we free (chunks and pack
//! ranges of a few MiB), after which those buffers come from per-thread arenas that keep freed
//! memory resident: peak RSS then grows with fragmentation across threads (measured: ~90 MiB
//! retained on a backup, ~40 MiB on a restore) instead of with the bytes in flight. A fixed
//! threshold hands every large buffer back to the OS when it is freed. musl (the container
//! image) already behaves this way.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: std::ffi::c_int = 1 << 20;

pub fn return_freed_buffers_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; any value is valid for this one, and
    // glibc takes its own lock.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
