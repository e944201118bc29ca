//! Log output on stderr, as text (the default) or as JSON lines (`--log-format=json`, or kopia's
//! `--json-log-console`).
//!
//! A JSON line carries kopia's console keys — `t` (RFC 3339 time), `n` (logger name), `m`
//! (message) — plus `level` and the event's own fields, so pipelines set up for kopia's JSON logs
//! read ours unchanged. Status messages of the long operations, progress lines and the final
//! error go through here too, so a JSON log stream holds nothing but JSON lines.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start-up (text until [`init`] runs).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Installs the tracing subscriber. `KMOVER_LOG` (an env-filter directive) overrides `level`. A
/// malformed one is an error naming it, rather than a silent fallback to the default level.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let _ = FORMAT.set(format);
    let filter = match std::env::var("KMOVER_LOG") {
        Ok(directives) if !directives.trim().is_empty() => tracing_subscriber::EnvFilter::builder()
            .parse(&directives)
            .map_err(|e| format!("KMOVER_LOG={directives:?} is not a valid log filter: {e}"))?,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("KMOVER_LOG is not valid UTF-8".into());
        }
        _ => {
            // kopia's names (`warning`) and tracing's (`warn`, `trace`) alike.
            let lowered = level.trim().to_ascii_lowercase();
            let level = match lowered.as_str() {
                "warning" | "warn" => "warn",
                l @ ("error" | "info" | "debug" | "trace") => l,
                _ => {
                    return Err(format!(
                        "--log-level {level:?} is not a log level: use error, warning, info, \
                         debug or trace"
                    ));
                }
            };
            tracing_subscriber::EnvFilter::new(level)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
    Ok(())
}

/// A status message of a command ("Snapshotting …"): the text as is, or a JSON record at level
/// info. Printed whatever `--log-level` is, like the rest of a command's own output.
pub fn status(message: &str) {
    match format() {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => emit("INFO", message, Map::new()),
    }
}

/// The error that ends the program.
pub fn fatal(message: &str) {
    match format() {
        LogFormat::Text => eprintln!("ERROR {message}"),
        LogFormat::Json => emit("ERROR", message, Map::new()),
    }
}

/// One plain progress line (not on a terminal): ` * label: line`, or a JSON record whose fields
/// hold the numbers.
pub fn progress_line(
    label: &str,
    line: &str,
    reading: &crate::progress::Reading,
    per_second: Option<f64>,
) {
    match format() {
        LogFormat::Text => eprintln!(" * {label}: {line}"),
        LogFormat::Json => {
            let mut fields = Map::new();
            fields.insert("operation".into(), json!(label));
            fields.insert("files".into(), json!(reading.files));
            fields.insert("bytes".into(), json!(reading.bytes));
            fields.insert("errors".into(), json!(reading.errors));
            if let Some(t) = reading.total_files {
                fields.insert("totalFiles".into(), json!(t));
            }
            if let Some(t) = reading.total_bytes {
                fields.insert("totalBytes".into(), json!(t));
            }
            if let Some(rate) = per_second {
                fields.insert("bytesPerSecond".into(), json!(rate.round() as u64));
            }
            if !reading.phase.is_empty() {
                fields.insert("phase".into(), json!(reading.phase));
            }
            emit("INFO", &format!("{label}: {line}"), fields);
        }
    }
}

fn emit(level: &str, message: &str, fields: Map<String, Value>) {
    let record = record(level, "kmover", message, fields);
    // One write per line, so lines of concurrent writers never interleave.
    let _ = std::io::stderr().lock().write_all(record.as_bytes());
}

/// `{"t":…,"level":…,"n":…,"m":…,<fields>}` and a newline.
fn record(level: &str, name: &str, message: &str, fields: Map<String, Value>) -> String {
    let mut object = Map::new();
    object.insert(
        "t".into(),
        json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
    );
    object.insert("level".into(), json!(level));
    object.insert("n".into(), json!(name));
    object.insert("m".into(), json!(message));
    for (k, v) in fields {
        object.entry(k).or_insert(v);
    }
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

/// tracing events as [`record`]s.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = FieldsToJson::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let message = fields.message.take().unwrap_or_default();
        writer.write_str(&record(
            meta.level().as_str(),
            meta.target(),
            &message,
            fields.fields,
        ))
    }
}

#[derive(Default)]
struct FieldsToJson {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, json!(text));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, json!(value));
    }
}

impl FieldsToJson {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_kopia_keys_then_fields() {
        let mut fields = Map::new();
        fields.insert("files".into(), json!(3));
        fields.insert("m".into(), json!("cannot override the message"));
        let line = record("INFO", "kmover", "a \"quoted\"\nmessage", fields);
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["m"], "a \"quoted\"\nmessage");
        assert_eq!(v["n"], "kmover");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["files"], 3);
        assert!(chrono::DateTime::parse_from_rfc3339(v["t"].as_str().unwrap()).is_ok());
    }
}
