//! Which repository the environment names, in the reference's precedence order: S3, Azure, GCS,
//! filesystem, B2, WebDAV, SFTP, Rclone, Google Drive. Filesystem and S3 are supported; the
//! others are recognised and refused with the variable that selected them.

use kmover_blob::s3::S3Config;

use super::env::{Env, Paths};
use super::log::Log;

#[derive(Debug)]
pub enum Backend {
    /// `filesystem:///abs/path`: the path as the pod sees it.
    Filesystem {
        path: String,
    },
    S3(Box<S3Config>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SelectError {
    /// Nothing in the environment names a repository.
    NoConfig,
    /// A backend kmover cannot open yet, and the variable that chose it.
    Unsupported {
        backend: &'static str,
        variable: &'static str,
    },
    /// The message of an `ERROR:` line.
    Invalid(String),
}

impl Backend {
    pub fn describe(&self) -> String {
        match self {
            Backend::Filesystem { path } => format!("filesystem repository at {path}"),
            Backend::S3(c) => format!(
                "S3 repository in bucket {} at {} (prefix {:?})",
                c.bucket, c.endpoint, c.prefix
            ),
        }
    }
}

/// The other backends, in precedence order after S3 (Azure and GCS come before filesystem).
const OTHER_BACKENDS: [(&str, &str); 7] = [
    ("KOPIA_AZURE_CONTAINER", "Azure"),
    ("KOPIA_GCS_BUCKET", "Google Cloud Storage"),
    ("KOPIA_B2_BUCKET", "Backblaze B2"),
    ("WEBDAV_URL", "WebDAV"),
    ("SFTP_HOST", "SFTP"),
    ("RCLONE_REMOTE_PATH", "Rclone"),
    ("GOOGLE_DRIVE_FOLDER_ID", "Google Drive"),
];

pub fn select(env: &Env, paths: &Paths, log: &Log) -> Result<Backend, SelectError> {
    let repository = env.get("KOPIA_REPOSITORY").unwrap_or("");
    if env.is_set("KOPIA_S3_BUCKET") || repository.starts_with("s3://") {
        return select_s3(env, paths, log).map(|c| Backend::S3(Box::new(c)));
    }
    for (variable, backend) in &OTHER_BACKENDS[..2] {
        if env.is_set(variable) {
            return Err(SelectError::Unsupported { backend, variable });
        }
    }
    if let Some(rest) = repository.strip_prefix("filesystem://") {
        if !rest.starts_with('/') {
            return Err(SelectError::Invalid(
                "Invalid filesystem URL format. Expected filesystem:///path".into(),
            ));
        }
        if rest.contains("../") || rest.ends_with("/..") {
            return Err(SelectError::Invalid(
                "Invalid filesystem path. Path must be absolute and cannot contain ..".into(),
            ));
        }
        return Ok(Backend::Filesystem {
            path: rest.to_string(),
        });
    }
    for (variable, backend) in &OTHER_BACKENDS[2..] {
        if env.is_set(variable) {
            return Err(SelectError::Unsupported { backend, variable });
        }
    }
    Err(SelectError::NoConfig)
}

fn select_s3(env: &Env, paths: &Paths, log: &Log) -> Result<S3Config, SelectError> {
    let repository = env.get("KOPIA_REPOSITORY").unwrap_or("");
    let url_prefix = s3_url_prefix(repository);
    let bucket = match env.get("KOPIA_S3_BUCKET") {
        Some(bucket) => {
            if let Some(prefix) = &url_prefix {
                warn_prefix_conflict(log, bucket, repository, prefix);
            }
            bucket.to_string()
        }
        None => {
            let bucket = s3_url_bucket(repository)?;
            log.plain(&format!(
                "Extracted S3 bucket from repository URL: {bucket}"
            ));
            bucket
        }
    };
    let endpoint = env
        .get("KOPIA_S3_ENDPOINT")
        .or_else(|| env.get("AWS_S3_ENDPOINT"))
        .unwrap_or("s3.amazonaws.com");
    // A scheme is dropped without changing TLS (Q-11, kept).
    let endpoint = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    log.plain(&format!("Resolved S3_ENDPOINT: {endpoint}"));
    let mut config = S3Config::new(&bucket, endpoint);
    match url_prefix {
        Some(raw) => {
            config.prefix = normalize_prefix(&raw)?;
            log.plain(&format!("Using S3 prefix: {}", config.prefix));
        }
        None => log.plain("No S3 prefix detected in KOPIA_REPOSITORY"),
    }
    config.disable_tls = env.is_true("KOPIA_S3_DISABLE_TLS") || env.is_true("AWS_S3_DISABLE_TLS");
    config.access_key_id = env.get_or("AWS_ACCESS_KEY_ID", "").to_string();
    config.secret_access_key = env.get_or("AWS_SECRET_ACCESS_KEY", "").to_string();
    config.session_token = env.get_or("AWS_SESSION_TOKEN", "").to_string();
    config.region = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
        .unwrap_or("")
        .to_string();
    if let Some((variable, logical)) = custom_ca(env) {
        let real = paths.real(logical);
        if real.is_file() {
            config.root_ca_pem = std::fs::read(&real).map_err(|e| {
                SelectError::Invalid(format!("Cannot read {variable} {logical}: {e}"))
            })?;
            log.plain(&format!(
                "Adding custom CA certificate for S3 connection: {logical}"
            ));
        } else {
            log.warn(&format!(
                "{variable}={logical} is not a file; using the system CA certificates"
            ));
        }
    }
    Ok(config)
}

/// `CUSTOM_CA` (mover jobs) first, then `KOPIA_CUSTOM_CA` (KopiaMaintenance jobs, Q-10).
pub fn custom_ca(env: &Env) -> Option<(&'static str, &str)> {
    ["CUSTOM_CA", "KOPIA_CUSTOM_CA"]
        .into_iter()
        .find_map(|v| env.get(v).map(|p| (v, p)))
}

/// The bucket of `s3://<bucket>[/...]`: 3–63 lower-case letters, digits, `.` and `-`, starting
/// and ending with a letter or digit, no `..`, not an IPv4 address.
fn s3_url_bucket(repository: &str) -> Result<String, SelectError> {
    let missing = || SelectError::Invalid("Could not determine S3 bucket name".into());
    let rest = repository.strip_prefix("s3://").ok_or_else(missing)?;
    let bucket = rest.split('/').next().unwrap_or("");
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|c| edge(c) || c == '.' || c == '-')
        && bucket.starts_with(edge)
        && bucket.ends_with(edge);
    if !valid {
        return Err(missing());
    }
    let ipv4 = bucket.split('.').count() == 4
        && bucket
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if bucket.contains("..") || ipv4 {
        return Err(SelectError::Invalid("Invalid S3 bucket name format".into()));
    }
    Ok(bucket.to_string())
}

/// What follows `s3://<host>/` in KOPIA_REPOSITORY, when anything does.
fn s3_url_prefix(repository: &str) -> Option<String> {
    let start = repository.find("s3://")? + "s3://".len();
    let rest = &repository[start..];
    let slash = rest.find('/')?;
    if slash == 0 {
        return None;
    }
    let prefix = &rest[slash + 1..];
    (!prefix.is_empty()).then(|| prefix.to_string())
}

/// Validates the prefix, collapses repeated `/` and makes it end in `/` (a directory).
fn normalize_prefix(raw: &str) -> Result<String, SelectError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
    if !raw.chars().all(allowed) || raw.contains("..") {
        return Err(SelectError::Invalid(
            "Invalid S3 prefix format. Only alphanumeric, dots, dashes, underscores and forward slashes allowed".into(),
        ));
    }
    let mut prefix = String::with_capacity(raw.len() + 1);
    for c in raw.chars() {
        if !(c == '/' && prefix.ends_with('/')) {
            prefix.push(c);
        }
    }
    if prefix == "/" {
        return Ok(String::new());
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok(prefix)
}

fn warn_prefix_conflict(log: &Log, bucket: &str, repository: &str, prefix: &str) {
    log.plain("=== S3 PREFIX CONFLICT WARNING ===");
    log.plain("KOPIA_S3_BUCKET and a KOPIA_REPOSITORY with a prefix are both set:");
    log.plain(&format!("  KOPIA_S3_BUCKET: {bucket}"));
    log.plain(&format!(
        "  KOPIA_REPOSITORY: {repository} (prefix: {prefix})"
    ));
    log.plain(&format!(
        "The bucket comes from KOPIA_S3_BUCKET and the prefix from KOPIA_REPOSITORY: s3://{bucket}/{prefix}"
    ));
    log.plain("Set only KOPIA_REPOSITORY with the full S3 URL to avoid surprises.");
    log.plain("===================================");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(pairs: &[(&str, &str)]) -> Result<Backend, SelectError> {
        let env = Env::from_pairs(pairs);
        select(&env, &Paths::default(), &Log::new(false, Vec::new()))
    }

    fn s3(pairs: &[(&str, &str)]) -> S3Config {
        match pick(pairs).unwrap() {
            Backend::S3(c) => *c,
            other => panic!("expected S3, got {other:?}"),
        }
    }

    #[test]
    fn s3_prefixes_follow_the_reference() {
        assert_eq!(s3(&[("KOPIA_REPOSITORY", "s3://bkt/app")]).prefix, "app/");
        assert_eq!(s3(&[("KOPIA_REPOSITORY", "s3://bkt/a//b")]).prefix, "a/b/");
        assert_eq!(s3(&[("KOPIA_REPOSITORY", "s3://bkt")]).prefix, "");
        assert_eq!(s3(&[("KOPIA_REPOSITORY", "s3://bkt/")]).prefix, "");
        let c = s3(&[
            ("KOPIA_REPOSITORY", "s3://bkt/app"),
            ("KOPIA_S3_BUCKET", "other"),
        ]);
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("other", "app/"));
    }

    #[test]
    fn s3_endpoint_and_tls() {
        let c = s3(&[("KOPIA_REPOSITORY", "s3://bkt")]);
        assert_eq!(c.endpoint, "s3.amazonaws.com");
        assert!(!c.disable_tls);
        let c = s3(&[
            ("KOPIA_REPOSITORY", "s3://bkt"),
            ("AWS_S3_ENDPOINT", "https://aws.example:9000"),
            ("KOPIA_S3_ENDPOINT", "http://minio:9000"),
            ("AWS_S3_DISABLE_TLS", "True"),
        ]);
        assert_eq!(c.endpoint, "minio:9000");
        assert!(!c.disable_tls);
        let c = s3(&[
            ("KOPIA_REPOSITORY", "s3://bkt"),
            ("AWS_S3_ENDPOINT", "aws.example"),
            ("KOPIA_S3_DISABLE_TLS", "true"),
        ]);
        assert_eq!(c.endpoint, "aws.example");
        assert!(c.disable_tls);
    }

    #[test]
    fn bad_locations_are_refused() {
        let invalid = |pairs: &[(&str, &str)]| match pick(pairs) {
            Err(SelectError::Invalid(m)) => m,
            other => panic!("expected an invalid-location error, got {other:?}"),
        };
        assert!(invalid(&[("KOPIA_REPOSITORY", "s3://bkt/bad prefix")]).contains("prefix"));
        assert!(invalid(&[("KOPIA_REPOSITORY", "s3://bkt/a/../b")]).contains("prefix"));
        assert!(invalid(&[("KOPIA_REPOSITORY", "s3://Upper/x")]).contains("bucket"));
        assert!(invalid(&[("KOPIA_REPOSITORY", "s3://10.0.0.1/x")]).contains("bucket"));
        assert!(invalid(&[("KOPIA_REPOSITORY", "filesystem://relative")]).contains("URL"));
        assert!(invalid(&[("KOPIA_REPOSITORY", "filesystem:///a/../b")]).contains(".."));
    }

    #[test]
    fn precedence_and_unsupported_backends() {
        assert_eq!(
            pick(&[("KOPIA_REPOSITORY", "gcs://x")]).unwrap_err(),
            SelectError::NoConfig
        );
        assert_eq!(
            pick(&[
                ("KOPIA_REPOSITORY", "filesystem:///repo"),
                ("KOPIA_GCS_BUCKET", "g"),
            ])
            .unwrap_err(),
            SelectError::Unsupported {
                backend: "Google Cloud Storage",
                variable: "KOPIA_GCS_BUCKET"
            }
        );
        assert!(matches!(
            pick(&[("KOPIA_REPOSITORY", "filesystem:///repo"), ("SFTP_HOST", "h")]).unwrap(),
            Backend::Filesystem { path } if path == "/repo"
        ));
        assert!(matches!(
            pick(&[
                ("KOPIA_REPOSITORY", "filesystem:///repo"),
                ("KOPIA_S3_BUCKET", "b")
            ])
            .unwrap(),
            Backend::S3(_)
        ));
    }
}
