//! kopia's test clock (a kopia built with `-tags testing`): when `KOPIA_FAKE_CLOCK_ENDPOINT` names
//! an HTTP URL, the time comes from there. A GET answers `{"time": <RFC 3339>, "validFor":
//! <nanoseconds>}`; the answer is trusted for `validFor` of real time, during which the clock runs
//! on from the served time at real speed; the first reading after that asks again. One fake-time
//! server thus drives kopia and kmover alike. Compiled only with the `testing` feature.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeDelta, Utc};
use kmover_repo::Clock;
use serde::Deserialize;

/// The variable kopia reads, with the same meaning.
pub const ENDPOINT_VAR: &str = "KOPIA_FAKE_CLOCK_ENDPOINT";

/// A request that gets no answer in this long fails instead of hanging the command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One answer of the fake-time server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerTime {
    #[serde(with = "kmover_format::gotime")]
    pub time: DateTime<Utc>,
    /// Go's `time.Duration` in JSON: whole nanoseconds; missing means zero (ask every time).
    #[serde(rename = "validFor", default)]
    pub valid_for_nanos: i64,
}

/// Decodes a server answer; unknown fields are ignored, as Go's decoder does.
pub fn parse_server_time(body: &[u8]) -> anyhow::Result<ServerTime> {
    serde_json::from_slice(body).context("invalid time received from fake time server")
}

/// The last answer and when (in real, monotonic time) it was received.
struct Fetched {
    server: ServerTime,
    at: Instant,
}

/// The caching rule: reuse the answer while the real time since it stays within `validFor`,
/// running the served time on by that real time; otherwise fetch again.
pub struct FakeClock<F> {
    fetch: F,
    last: Mutex<Option<Fetched>>,
}

impl<F: Fn() -> anyhow::Result<ServerTime>> FakeClock<F> {
    pub fn new(fetch: F) -> Self {
        FakeClock {
            fetch,
            last: Mutex::new(None),
        }
    }

    /// The fake time at real instant `local`. The lock is held while fetching, as kopia does, so
    /// concurrent readers wait for one answer instead of all asking.
    pub fn now_at(&self, local: Instant) -> anyhow::Result<DateTime<Utc>> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let stale = last
            .as_ref()
            .is_none_or(|f| elapsed_nanos(f.at, local) > i128::from(f.server.valid_for_nanos));
        if stale {
            *last = Some(Fetched {
                server: (self.fetch)()?,
                at: local,
            });
        }
        let fetched = last.as_ref().expect("filled above");
        let since = i64::try_from(elapsed_nanos(fetched.at, local)).unwrap_or(i64::MAX);
        Ok(fetched.server.time + TimeDelta::nanoseconds(since))
    }
}

/// Real nanoseconds from `earlier` to `later` (zero if `later` is not after it).
fn elapsed_nanos(earlier: Instant, later: Instant) -> i128 {
    later.saturating_duration_since(earlier).as_nanos() as i128
}

/// The clock of a binary built for tests: `None` when `KOPIA_FAKE_CLOCK_ENDPOINT` is unset or
/// empty (kopia then uses the real clock too). Asks the server once right away, so a bad endpoint
/// is reported before any command runs.
pub fn from_env() -> anyhow::Result<Option<Clock>> {
    let endpoint = match std::env::var(ENDPOINT_VAR) {
        Ok(e) if !e.is_empty() => e,
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{ENDPOINT_VAR} is not valid UTF-8"),
    };
    let describe = format!("unable to get fake time from {ENDPOINT_VAR}={endpoint}");
    let fetch_from = endpoint.clone();
    let clock = Arc::new(FakeClock::new(move || fetch(&fetch_from)));
    clock.now_at(Instant::now()).context(describe.clone())?;
    Ok(Some(Arc::new(move || match clock.now_at(Instant::now()) {
        Ok(t) => t,
        // The clock cannot fail its callers; a test server gone mid-run ends the process, as
        // kopia's `log.Fatalf` does. Repository writes are ordered to survive that.
        Err(e) => {
            eprintln!("ERROR {describe}: {e:#}");
            std::process::exit(1);
        }
    })))
}

/// One GET of `endpoint`. It runs on a thread of its own with its own small runtime: the clock
/// is read from inside the command's async runtime, where blocking on another future is refused.
fn fetch(endpoint: &str) -> anyhow::Result<ServerTime> {
    let url = endpoint.to_owned();
    std::thread::spawn(move || -> anyhow::Result<ServerTime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime for the fake clock")?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .context("cannot build an HTTP client")?;
            let response = client.get(&url).send().await?;
            let status = response.status();
            if !status.is_success() {
                bail!("fake time server answered {status}");
            }
            parse_server_time(&response.bytes().await?)
        })
    })
    .join()
    .unwrap_or_else(|_| bail!("the fake clock request thread panicked"))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn parses_go_json() {
        let got = parse_server_time(
            br#"{"time":"2021-03-04T05:06:07.123456789+05:30","validFor":2000000000}"#,
        )
        .unwrap();
        assert_eq!(
            got.time,
            at(2021, 3, 4, 5, 6, 7) - TimeDelta::minutes(330) + TimeDelta::nanoseconds(123_456_789)
        );
        assert_eq!(got.valid_for_nanos, 2_000_000_000);

        // Unknown fields are ignored and a missing validFor is zero, as in Go.
        let got = parse_server_time(br#"{"time":"2024-01-01T00:00:00Z","extra":[1]}"#).unwrap();
        assert_eq!(got.time, at(2024, 1, 1, 0, 0, 0));
        assert_eq!(got.valid_for_nanos, 0);
    }

    #[test]
    fn rejects_bad_answers() {
        for body in [
            &br#"{"validFor":1}"#[..],
            br#"{"time":"yesterday","validFor":1}"#,
            br#"{"time":"2024-01-01T00:00:00Z","validFor":1.5}"#,
            br#"{"time":"2024-01-01T00:00:00Z","validFor":"2s"}"#,
            b"<html>not json</html>",
        ] {
            let err = parse_server_time(body).unwrap_err();
            assert!(
                format!("{err:#}").contains("invalid time received from fake time server"),
                "{err:#}"
            );
        }
    }

    /// A clock over scripted answers, counting the fetches.
    fn scripted(answers: Vec<ServerTime>) -> FakeClock<impl Fn() -> anyhow::Result<ServerTime>> {
        let answers = RefCell::new(answers.into_iter());
        FakeClock::new(move || {
            answers
                .borrow_mut()
                .next()
                .context("fetched more often than expected")
        })
    }

    #[test]
    fn runs_on_from_the_served_time_while_valid_then_asks_again() {
        let first = at(2021, 1, 1, 0, 0, 0);
        let second = at(2023, 6, 1, 12, 0, 0);
        let clock = scripted(vec![
            ServerTime {
                time: first,
                valid_for_nanos: 2_000_000_000,
            },
            ServerTime {
                time: second,
                valid_for_nanos: 2_000_000_000,
            },
        ]);
        let t0 = Instant::now();
        assert_eq!(clock.now_at(t0).unwrap(), first);
        // Within validFor (inclusive, as kopia asks only once it is strictly past): no request.
        let half = t0 + Duration::from_millis(1500);
        assert_eq!(
            clock.now_at(half).unwrap(),
            first + TimeDelta::milliseconds(1500)
        );
        let edge = t0 + Duration::from_secs(2);
        assert_eq!(clock.now_at(edge).unwrap(), first + TimeDelta::seconds(2));
        // Past it: the next answer, which then runs on from its own receipt.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(clock.now_at(later).unwrap(), second);
        assert_eq!(
            clock.now_at(later + Duration::from_millis(250)).unwrap(),
            second + TimeDelta::milliseconds(250)
        );
    }

    #[test]
    fn zero_or_negative_validity_asks_on_every_later_reading() {
        let clock = scripted(vec![
            ServerTime {
                time: at(2022, 1, 1, 0, 0, 0),
                valid_for_nanos: 0,
            },
            ServerTime {
                time: at(2022, 2, 1, 0, 0, 0),
                valid_for_nanos: -5,
            },
            ServerTime {
                time: at(2022, 3, 1, 0, 0, 0),
                valid_for_nanos: 0,
            },
        ]);
        let t0 = Instant::now();
        assert_eq!(clock.now_at(t0).unwrap(), at(2022, 1, 1, 0, 0, 0));
        // Same instant, validFor 0: still valid (not strictly past).
        assert_eq!(clock.now_at(t0).unwrap(), at(2022, 1, 1, 0, 0, 0));
        let t1 = t0 + Duration::from_nanos(1);
        assert_eq!(clock.now_at(t1).unwrap(), at(2022, 2, 1, 0, 0, 0));
        // A negative validity is stale even at the same instant.
        assert_eq!(clock.now_at(t1).unwrap(), at(2022, 3, 1, 0, 0, 0));
    }

    #[test]
    fn a_failed_fetch_is_an_error_and_a_later_one_may_succeed() {
        let calls = RefCell::new(0);
        let clock = FakeClock::new(|| {
            *calls.borrow_mut() += 1;
            if *calls.borrow() == 1 {
                bail!("connection refused")
            }
            Ok(ServerTime {
                time: at(2020, 5, 5, 5, 5, 5),
                valid_for_nanos: 1_000_000_000,
            })
        });
        let t0 = Instant::now();
        assert!(format!("{:#}", clock.now_at(t0).unwrap_err()).contains("connection refused"));
        assert_eq!(clock.now_at(t0).unwrap(), at(2020, 5, 5, 5, 5, 5));
    }

    /// Serves one connection with `response` on a fresh loopback port; returns the URL.
    fn serve_once(response: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/clock", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /clock "), "{request:?}");
            conn.write_all(response.as_bytes()).unwrap();
        });
        url
    }

    #[test]
    fn fetches_over_http() {
        let url = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 55\r\nConnection: close\r\n\r\n\
             {\"time\":\"2022-07-08T09:10:11.5Z\",\"validFor\":2000000000}",
        );
        let got = fetch(&url).unwrap();
        assert_eq!(
            got.time,
            at(2022, 7, 8, 9, 10, 11) + TimeDelta::milliseconds(500)
        );
        assert_eq!(got.valid_for_nanos, 2_000_000_000);
    }

    #[test]
    fn an_error_status_or_no_server_is_an_error() {
        let url = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let err = format!("{:#}", fetch(&url).unwrap_err());
        assert!(err.contains("fake time server answered 503"), "{err}");

        // A port that was just free: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        assert!(fetch(&url).is_err());
        assert!(fetch("not a url").is_err());
    }
}
