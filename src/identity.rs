//! The client identity kopia records (user@host), taken from the system as kopia does.

/// kopia's default: the OS hostname, lowercased, up to the first `.`.
pub fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    raw.split('.').next().unwrap_or_default().to_lowercase()
}

/// The account name of the effective user (from /etc/passwd), falling back to $USER.
pub fn username() -> String {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the effective user: no unsafe libc call needed.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid-{uid}"))
}
