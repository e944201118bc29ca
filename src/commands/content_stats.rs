//! `content stats`: counts, sizes, compression and a size histogram of the live contents, in
//! kopia's layout (CronJob scripts print it after each snapshot).

use std::collections::BTreeMap;
use std::io::Write;

use kmover_format::compression::name_for_header_id;
use kmover_repo::content_manager::ContentManager;

#[derive(Default, Clone, Copy)]
struct Totals {
    original: i64,
    packed: i64,
    count: i64,
}

impl Totals {
    fn add(&mut self, original: i64, packed: i64) {
        self.original += original;
        self.packed += packed;
        self.count += 1;
    }
}

pub async fn run(contents: &ContentManager, raw: bool) -> anyhow::Result<()> {
    let entries = contents.list_contents(false).await;
    let buckets: Vec<i64> = (1..=8).map(|e| 10i64.pow(e)).collect();
    let mut total = Totals::default();
    let mut by_method: BTreeMap<u32, Totals> = BTreeMap::new();
    let mut under: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for e in &entries {
        let (original, packed) = (i64::from(e.original_length), i64::from(e.packed_length));
        total.add(original, packed);
        by_method
            .entry(e.compression_header_id)
            .or_default()
            .add(original, packed);
        for &limit in &buckets {
            if packed < limit {
                let slot = under.entry(limit).or_default();
                slot.0 += 1;
                slot.1 += packed;
            }
        }
    }
    let size = |n: i64| {
        if raw { n.to_string() } else { bytes_string(n) }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(out, "Count: {}", total.count)?;
    writeln!(out, "Total Bytes: {}", size(total.original))?;
    if total.packed < total.original {
        writeln!(
            out,
            "Total Packed: {} (compression {})",
            size(total.packed),
            compression_percentage(total.original, total.packed)
        )?;
    }
    if by_method.len() > 1 {
        writeln!(out, "By Method:")?;
        if let Some(t) = by_method.get(&0) {
            writeln!(
                out,
                "  {:<22} count: {} size: {}",
                "(uncompressed)",
                t.count,
                size(t.original)
            )?;
        }
        for (id, t) in by_method.iter().filter(|(id, _)| **id != 0) {
            let Some(name) = name_for_header_id(*id) else {
                continue;
            };
            writeln!(
                out,
                "  {:<22} count: {} size: {} packed: {} compression: {}",
                name,
                t.count,
                size(t.original),
                size(t.packed),
                compression_percentage(t.original, t.packed)
            )?;
        }
    }
    if total.count > 0 {
        writeln!(out, "Average: {}", size(total.original / total.count))?;
        writeln!(out, "Histogram:\n")?;
        let mut last = (0i64, (0i64, 0i64));
        for &limit in &buckets {
            let here = under.get(&limit).copied().unwrap_or_default();
            writeln!(
                out,
                "{:>9} between {} and {} (total {})",
                here.0 - last.1.0,
                size(last.0),
                size(limit),
                size(here.1 - last.1.1)
            )?;
            last = (limit, here);
        }
    }
    out.flush()?;
    Ok(())
}

/// kopia's `units.BytesString`: base 10, one decimal without trailing zeros, switching unit at 0.9.
fn bytes_string(n: i64) -> String {
    const PREFIXES: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut f = n as f64;
    for p in PREFIXES {
        if f < 900.0 {
            return format!("{} {p}B", nice_number(f));
        }
        f /= 1000.0;
    }
    format!("{} EB", nice_number(f))
}

fn nice_number(f: f64) -> String {
    let s = format!("{f:.1}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn compression_percentage(original: i64, packed: i64) -> String {
    if packed >= original || original == 0 {
        return "0%".into();
    }
    format!("{:.1}%", 100.0 * (1.0 - packed as f64 / original as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_kopia_prints_them() {
        assert_eq!(bytes_string(0), "0 B");
        assert_eq!(bytes_string(899), "899 B");
        assert_eq!(bytes_string(900), "0.9 KB");
        assert_eq!(bytes_string(10_000_000), "10 MB");
        assert_eq!(compression_percentage(100, 25), "75.0%");
        assert_eq!(compression_percentage(100, 100), "0%");
    }
}
