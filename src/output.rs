//! Output in kopia's shapes: JSON lists as kopia's `jsonList` prints them, Go-style timestamps.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Prints `[`, then `\n ` + item separated by `,`, then `\n]` — kopia's compact JSON list.
pub fn print_json_list<T: Serialize>(items: impl IntoIterator<Item = T>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    out.write_all(b"[")?;
    let mut separator = "\n ";
    for item in items {
        out.write_all(separator.as_bytes())?;
        serde_json::to_writer(&mut out, &item)?;
        separator = ",\n ";
    }
    out.write_all(b"\n]")?;
    out.flush()?;
    Ok(())
}

/// Go's `time.Time` JSON form (RFC 3339, fraction with trailing zeros trimmed).
pub fn go_time(t: &DateTime<Utc>) -> String {
    kmover_format::gotime::format(t)
        .unwrap_or_else(|_| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

/// kopia's `formatTimestamp`: `2006-01-02 15:04:05 MST`.
pub fn human_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn human_time_precise(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}
