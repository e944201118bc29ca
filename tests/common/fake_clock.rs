//! A fake-time server for kopia built with `-tags testing` and kmover built with `--features
//! testing`: both ask `KOPIA_FAKE_CLOCK_ENDPOINT` for `{"time": ..., "validFor": ...}`, so one
//! server set by the test drives the clocks of both tools.
//!
//! The served time runs on at real speed from the last `set`/`advance` (like kopia's own test
//! server, whose time is real time plus an offset), so a command's readings stay in order even
//! when it asks again after `validFor`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use super::{Kmover, Kopia, Runner};

/// The variable both tools read.
pub const ENDPOINT_VAR: &str = "KOPIA_FAKE_CLOCK_ENDPOINT";

/// How long a tool may trust one answer (what kopia's test server sends).
const VALID_FOR: Duration = Duration::from_secs(2);

/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

struct Setting {
    time: DateTime<Utc>,
    set_at: Instant,
}

impl Setting {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = TimeDelta::from_std(self.set_at.elapsed()).unwrap_or(TimeDelta::MAX);
        self.time + elapsed
    }
}

struct Shared {
    setting: Mutex<Setting>,
    requests: AtomicU64,
    stopping: AtomicBool,
}

/// The server, listening on 127.0.0.1 until dropped.
pub struct FakeClock {
    shared: Arc<Shared>,
    endpoint: String,
    addr: std::net::SocketAddr,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeClock {
    /// Starts serving `start` (then running on from it).
    pub fn start(start: DateTime<Utc>) -> FakeClock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake clock server");
        let addr = listener.local_addr().expect("fake clock address");
        let shared = Arc::new(Shared {
            setting: Mutex::new(Setting {
                time: start,
                set_at: Instant::now(),
            }),
            requests: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let serving = shared.clone();
        let thread = thread::Builder::new()
            .name("fake-clock".into())
            .spawn(move || serve(&listener, &serving))
            .expect("start the fake clock thread");
        FakeClock {
            shared,
            endpoint: format!("http://{addr}/"),
            addr,
            thread: Some(thread),
        }
    }

    /// The URL to put into `KOPIA_FAKE_CLOCK_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The time the server would answer now.
    pub fn now(&self) -> DateTime<Utc> {
        self.setting().now()
    }

    /// Jumps (forward or back) to `time`, from which the clock runs on.
    pub fn set(&self, time: DateTime<Utc>) {
        *self.setting() = Setting {
            time,
            set_at: Instant::now(),
        };
    }

    /// Moves the clock forward by `by` (back when negative).
    pub fn advance(&self, by: TimeDelta) {
        let mut setting = self.setting();
        let now = setting.now();
        *setting = Setting {
            time: now + by,
            set_at: Instant::now(),
        };
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    fn setting(&self) -> std::sync::MutexGuard<'_, Setting> {
        self.shared
            .setting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeClock {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer body: Go's `time.Time` JSON (RFC 3339, nanoseconds) and `time.Duration` JSON
/// (integer nanoseconds).
pub fn answer_json(time: DateTime<Utc>, valid_for: Duration) -> String {
    format!(
        r#"{{"time":"{}","validFor":{}}}"#,
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        valid_for.as_nanos()
    )
}

fn serve(listener: &TcpListener, shared: &Shared) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // A broken client must not stop the clock for the others.
        if let Ok(conn) = conn {
            let _ = answer(conn, shared);
        }
    }
}

/// Reads one request (any method and path) and answers it; one request per connection.
fn answer(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let time = shared
        .setting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .now();
    let body = answer_json(time, VALID_FOR);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

impl Runner {
    /// Sets (or replaces) an environment variable for every later run of this tool.
    pub fn set_env(&mut self, key: &'static str, value: impl Into<String>) {
        let value = value.into();
        match self.extra_env.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.extra_env.push((key, value)),
        }
    }
}

/// A tool whose runs can be given environment, e.g. a fake clock or a time zone.
pub trait ToolEnv {
    fn runner_mut(&mut self) -> &mut Runner;

    /// Every later run takes its time from `clock` (the tool must be a testing build).
    fn follow_clock(&mut self, clock: &FakeClock) {
        self.runner_mut()
            .set_env(ENDPOINT_VAR, clock.endpoint().to_owned());
    }

    /// Every later run works in time zone `tz` (an IANA name such as `Asia/Kolkata`).
    fn set_time_zone(&mut self, tz: &str) {
        self.runner_mut().set_env("TZ", tz.to_owned());
    }
}

impl ToolEnv for Kopia {
    fn runner_mut(&mut self) -> &mut Runner {
        &mut self.runner
    }
}

impl ToolEnv for Kmover {
    fn runner_mut(&mut self) -> &mut Runner {
        &mut self.runner
    }
}
