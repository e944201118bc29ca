//! Prometheus text exposition format (version 0.0.4): a small writer, and a reader for the files
//! kmover itself writes (to merge a node-exporter textfile with the previous run's series).
//!
//! Own code rather than the `prometheus-client` crate: the format is a few lines of text, a
//! one-shot CLI needs no registry, and reading our own file back is something that crate does not
//! do.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Label names to values, sorted (so output is stable).
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub help: String,
    /// `gauge`, `counter`, `untyped`, …
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// Metric families by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Adds one sample, creating its family with `help` and `kind` if needed.
    pub fn add(&mut self, name: &str, help: &str, kind: &str, labels: Labels, value: f64) {
        debug_assert!(valid_metric_name(name), "{name}");
        let family = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind: kind.to_string(),
                samples: Vec::new(),
            });
        family.samples.retain(|s| s.labels != labels);
        family.samples.push(Sample { labels, value });
    }

    /// Drops families left without samples.
    pub fn prune(&mut self) {
        self.families.retain(|_, f| !f.samples.is_empty());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            if family.samples.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            let mut samples: Vec<&Sample> = family.samples.iter().collect();
            samples.sort_by(|a, b| a.labels.cmp(&b.labels));
            for s in samples {
                out.push_str(name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(s.value));
            }
        }
        out
    }

    /// Reads text in the exposition format. Errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut exposition = Exposition::default();
        for (number, line) in text.lines().enumerate() {
            let where_ = || format!("line {}", number + 1);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                let keyword = words.next().unwrap_or_default();
                let (Some(name), rest) = (words.next(), words.next().unwrap_or_default()) else {
                    continue;
                };
                let family = exposition
                    .families
                    .entry(name.to_string())
                    .or_insert_with(|| Family {
                        help: String::new(),
                        kind: "untyped".into(),
                        samples: Vec::new(),
                    });
                match keyword {
                    "HELP" => family.help = unescape(rest, false),
                    "TYPE" => family.kind = rest.trim().to_string(),
                    _ => {}
                }
                continue;
            }
            let (name, labels, value) =
                parse_sample(line).map_err(|e| format!("{}: {e}: {line:?}", where_()))?;
            let family = exposition.families.entry(name).or_insert_with(|| Family {
                help: String::new(),
                kind: "untyped".into(),
                samples: Vec::new(),
            });
            family.samples.push(Sample { labels, value });
        }
        Ok(exposition)
    }
}

pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` spirit: shortest round-trip form, Prometheus'
/// spellings of the special values.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("invalid value {s:?}")),
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn unescape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut s = inner;
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=').ok_or("label without '='")?;
            let label = s[..eq].trim();
            if !valid_label_name(label) {
                return Err(format!("invalid label name {label:?}"));
            }
            s = s[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value without quotes")?;
            let mut end = None;
            let mut escaped = false;
            for (i, c) in s.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            labels.insert(label.to_string(), unescape(&s[..end], true));
            s = s[end + 1..].trim_start();
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    Ok((name.to_string(), labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_and_reads_back_escapes() {
        let mut e = Exposition::default();
        let tricky = labels(&[("source", "u@h:/a \"b\"\\c\nd"), ("operation", "backup")]);
        e.add(
            "kmover_x_bytes",
            "Help with \\ and\nnewline",
            "gauge",
            tricky.clone(),
            12.5,
        );
        e.add("kmover_y", "y", "gauge", Labels::new(), f64::INFINITY);
        let text = e.render();
        assert!(text.contains(
            "kmover_x_bytes{operation=\"backup\",source=\"u@h:/a \\\"b\\\"\\\\c\\nd\"} 12.5\n"
        ));
        assert!(text.contains("# HELP kmover_x_bytes Help with \\\\ and\\nnewline\n"));
        assert!(text.contains("kmover_y +Inf\n"));
        assert_eq!(Exposition::parse(&text).unwrap(), e);
    }

    #[test]
    fn adding_the_same_series_replaces_it() {
        let mut e = Exposition::default();
        e.add("m", "h", "gauge", labels(&[("a", "1")]), 1.0);
        e.add("m", "h", "gauge", labels(&[("a", "1")]), 2.0);
        e.add("m", "h", "gauge", labels(&[("a", "2")]), 3.0);
        assert_eq!(
            e.render(),
            "# HELP m h\n# TYPE m gauge\nm{a=\"1\"} 2\nm{a=\"2\"} 3\n"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let err = Exposition::parse("ok 1\nbad{a=\"x} 2\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(Exposition::parse("9bad 1").is_err());
        assert!(Exposition::parse("m{a=\"1\"}").is_err());
        let with_timestamp = Exposition::parse("m{a=\"1\",} 4 1700000000000").unwrap();
        assert_eq!(with_timestamp.families["m"].samples[0].value, 4.0);
    }
}
