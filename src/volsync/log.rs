//! The mover's output: prefixed lines (`INFO: `, `WARN: `, `ERROR: `, `TIMING: `, `DEBUG: `) on
//! the streams the reference script uses, each a whole `\n`-terminated line without `\r`, short
//! enough for the controller's 64 KiB line scanner, and scrubbed of credential values. Every line
//! also goes to this run's file under `<cache>/logs`.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Well under the controller's `bufio.Scanner` limit of 64 KiB.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// A run stopped early: the message is already printed; the process exits with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub code: i32,
}

pub type Flow<T = ()> = Result<T, Stop>;

#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    file: Mutex<Option<File>>,
    debug: bool,
    secrets: Mutex<Vec<String>>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

impl Log {
    pub fn new(debug: bool, secrets: Vec<String>) -> Self {
        Log {
            inner: Arc::new(Inner {
                file: Mutex::new(None),
                debug,
                secrets: Mutex::new(secrets),
            }),
        }
    }

    pub fn attach_file(&self, file: File) {
        *self.inner.file.lock().expect("log lock") = Some(file);
    }

    pub fn plain(&self, text: &str) {
        self.emit(Stream::Out, "", text);
    }

    pub fn blank(&self) {
        self.emit(Stream::Out, "", "");
    }

    pub fn info(&self, text: &str) {
        self.emit(Stream::Out, "INFO: ", text);
    }

    pub fn warn(&self, text: &str) {
        self.emit(Stream::Out, "WARN: ", text);
    }

    /// The reference's `log_error`: on stderr.
    pub fn error(&self, text: &str) {
        self.emit(Stream::Err, "ERROR: ", text);
    }

    /// An `ERROR: ` line on stdout, as the script's inline messages print them.
    pub fn error_stdout(&self, text: &str) {
        self.emit(Stream::Out, "ERROR: ", text);
    }

    pub fn timing(&self, text: &str) {
        self.emit(Stream::Out, "TIMING: ", text);
    }

    /// Shown only with `KOPIA_FILE_LOG_LEVEL=debug`, as in the reference.
    pub fn debug(&self, text: &str) {
        if self.inner.debug {
            self.emit(Stream::Out, "DEBUG: ", text);
        }
    }

    /// The script's fatal `error` helper: a blank line, `ERROR: <msg>` on stdout, then exit.
    pub fn fatal(&self, code: i32, message: &str) -> Stop {
        self.blank();
        self.error_stdout(message);
        Stop { code }
    }

    fn emit(&self, stream: Stream, prefix: &str, text: &str) {
        let scrubbed = self.scrub(text);
        let mut block = String::new();
        // A `\r` (progress redraw) or an embedded newline starts a new line, as `tr '\r' '\n'`.
        let pieces: Vec<&str> = if scrubbed.is_empty() {
            vec![""]
        } else {
            scrubbed.split(['\r', '\n']).collect()
        };
        for piece in pieces {
            block.push_str(&clip_line(&format!("{prefix}{piece}")));
            block.push('\n');
        }
        // Write errors (a closed pipe) must not take the mover down with them.
        let _ = match stream {
            Stream::Out => {
                let mut out = std::io::stdout().lock();
                out.write_all(block.as_bytes()).and_then(|_| out.flush())
            }
            Stream::Err => {
                let mut err = std::io::stderr().lock();
                err.write_all(block.as_bytes()).and_then(|_| err.flush())
            }
        };
        if let Some(file) = self.inner.file.lock().expect("log lock").as_mut() {
            let _ = file.write_all(block.as_bytes());
        }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.inner.secrets.lock().expect("log lock").iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

fn clip_line(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [... {} bytes cut]", &line[..end], line.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let line = "é".repeat(MAX_LINE_BYTES);
        let clipped = clip_line(&line);
        assert!(clipped.len() < MAX_LINE_BYTES + 40);
        assert!(clipped.ends_with("bytes cut]"));
    }

    #[test]
    fn secrets_are_scrubbed() {
        let log = Log::new(false, vec!["hunter22".into()]);
        assert_eq!(log.scrub("password hunter22 wrong"), "password *** wrong");
    }
}
