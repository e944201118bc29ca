//! A throwaway MinIO server for the S3 tests: 127.0.0.1 on a free port, a temporary data
//! directory, known root credentials; killed when dropped.
//!
//! Self-contained (it is also compiled into kmover-blob's tests through `#[path]`). A missing
//! MinIO binary skips the test loudly, or fails it when `CI=true`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmover_blob::s3::S3Config;
use tempfile::TempDir;

pub const ROOT_USER: &str = "kmover-minio-admin";
pub const ROOT_PASSWORD: &str = "kmover-minio-root-secret-5e1f0c";
/// Keep in step with MINIO_VERSION in scripts/install-tools.sh.
pub const MINIO_VERSION: &str = "v0.0.0-20260212201848-7aac2a2c5b7c";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// MinIO refuses every write once its drive is 99% full: on a big shared disk that can be with
/// gigabytes still free. Its data goes to tmpfs when that has this much room.
const MIN_TMPFS_FREE: u64 = 4 << 30;

pub struct Minio {
    child: Child,
    port: u16,
    /// With TLS: the CA that signed the server's certificate.
    tls_ca_pem: Option<Vec<u8>>,
    /// Holds the data directory, MinIO's home and its log.
    dir: TempDir,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KMOVER_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache").join("kmover-tools")
}

/// `$KMOVER_MINIO`, else the pinned build in the tools cache.
pub fn locate_minio() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("KMOVER_MINIO") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("$KMOVER_MINIO={} is not a file", path.display()))
        };
    }
    let path = tools_dir()
        .join(format!("minio-{MINIO_VERSION}"))
        .join("minio");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("MinIO not found at {}", path.display()))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

impl Minio {
    /// Starts MinIO, or returns `None` after a loud skip message (a panic under CI).
    #[track_caller]
    pub fn start(test: &str) -> Option<Minio> {
        Minio::start_with(test, None)
    }

    /// Starts MinIO serving HTTPS with `tls.cert_pem`/`tls.key_pem`, issued by `tls.ca_pem`.
    #[track_caller]
    pub fn start_tls(test: &str, tls: &TlsFiles) -> Option<Minio> {
        Minio::start_with(test, Some(tls))
    }

    #[track_caller]
    fn start_with(test: &str, tls: Option<&TlsFiles>) -> Option<Minio> {
        let binary = match locate_minio() {
            Ok(binary) => binary,
            Err(reason) => {
                let banner = "!".repeat(78);
                let message = format!(
                    "{banner}\n!! SKIPPING {test}: {reason}\n!! Run scripts/install-tools.sh minio (or scripts/test.sh) to install it.\n{banner}"
                );
                if in_ci() {
                    panic!("{message}\n(CI=true: a missing MinIO fails the test)");
                }
                let _ = writeln!(std::io::stderr().lock(), "{message}");
                return None;
            }
        };
        // The port is free when probed but may be taken before MinIO binds it: try again.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Minio::spawn(&binary, tls) {
                Ok(minio) => return Some(minio),
                Err(e) => last_error = e,
            }
        }
        panic!("MinIO did not start: {last_error}");
    }

    fn spawn(binary: &Path, tls: Option<&TlsFiles>) -> Result<Minio, String> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("kmover-minio-");
        let dir = match tmpfs_with_room() {
            Some(tmpfs) => builder.tempdir_in(tmpfs),
            None => builder.tempdir(),
        }
        .map_err(|e| e.to_string())?;
        warn_if_minio_would_refuse_writes(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("minio.log")).map_err(|e| e.to_string())?;
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).map_err(|e| e.to_string())?;
        if let Some(tls) = tls {
            std::fs::write(certs.join("public.crt"), &tls.cert_pem).map_err(|e| e.to_string())?;
            std::fs::write(certs.join("private.key"), &tls.key_pem).map_err(|e| e.to_string())?;
        }
        let port = free_port();
        let console_port = free_port();
        let child = Command::new(binary)
            .arg("server")
            .arg("--certs-dir")
            .arg(&certs)
            .arg(&data)
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--console-address", &format!("127.0.0.1:{console_port}")])
            .arg("--quiet")
            .env("HOME", dir.path())
            .env("MINIO_ROOT_USER", ROOT_USER)
            .env("MINIO_ROOT_PASSWORD", ROOT_PASSWORD)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut minio = Minio {
            child,
            port,
            tls_ca_pem: tls.map(|t| t.ca_pem.clone().into_bytes()),
            dir,
        };
        minio.wait_until_ready()?;
        Ok(minio)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("minio.log")).unwrap_or_default()
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("MinIO exited with {status}:\n{}", self.log()));
            }
            // Over TLS the plain-HTTP probe only shows that MinIO listens (it answers 400);
            // bucket creation then waits out the rest of the start.
            match health_status(self.port) {
                Some(200) => return Ok(()),
                Some(_) if self.tls_ca_pem.is_some() => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "MinIO was not ready within {STARTUP_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as kopia's `--endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A config with the root credentials: plain HTTP, or HTTPS trusting only the test CA.
    pub fn s3_config(&self, bucket: &str, prefix: &str) -> S3Config {
        let mut config = S3Config::new(bucket, self.endpoint());
        config.prefix = prefix.into();
        match &self.tls_ca_pem {
            Some(ca) => config.root_ca_pem = ca.clone(),
            None => config.disable_tls = true,
        }
        config.access_key_id = ROOT_USER.into();
        config.secret_access_key = ROOT_PASSWORD.into();
        config
    }

    /// Creates `bucket` through the S3 API; usable from async and plain tests alike.
    pub fn create_bucket(&self, bucket: &str) {
        let config = self.s3_config(bucket, "");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("cannot start a runtime");
                    runtime.block_on(async {
                        let store = kmover_blob::s3::S3Store::new(config).expect("S3 config");
                        // "Ready" MinIO may still answer 503 (not initialized) for a moment.
                        let deadline = Instant::now() + STARTUP_TIMEOUT;
                        loop {
                            match store.create_bucket().await {
                                Ok(()) => break,
                                Err(e) if e.is_transient() && Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(e) => panic!("cannot create bucket {bucket}: {e}"),
                            }
                        }
                    });
                })
                .join()
                .expect("bucket creation panicked");
        });
    }

    /// The objects MinIO holds for `bucket`, as files under its data directory (`xl.meta`
    /// directories in MinIO's single-drive layout).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn free_and_total_bytes(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size() as u64;
    Some((
        stat.blocks_available() as u64 * block,
        stat.blocks() as u64 * block,
    ))
}

fn tmpfs_with_room() -> Option<&'static Path> {
    let shm = Path::new("/dev/shm");
    let (free, _) = free_and_total_bytes(shm)?;
    (free >= MIN_TMPFS_FREE && tempfile::tempfile_in(shm).is_ok()).then_some(shm)
}

/// MinIO's own rule (hasSpaceFor): at least 1% of the drive must stay free after a write.
fn warn_if_minio_would_refuse_writes(dir: &Path) {
    if let Some((free, total)) = free_and_total_bytes(dir)
        && free < total / 100 + (256 << 20)
    {
        let _ = writeln!(
            std::io::stderr().lock(),
            "!! MinIO's data is on {} with {} MiB free of {} MiB: MinIO refuses writes \
             (507 XMinioStorageFull) when under 1% is free",
            dir.display(),
            free >> 20,
            total >> 20
        );
    }
}

/// PEM files for a TLS server: its certificate and key, and the CA that issued it.
pub struct TlsFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status of `GET /minio/health/ready`, or `None` while nothing answers.
fn health_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(
            format!("GET /minio/health/ready HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}
