//! An S3 blob store laid out as kopia lays it out: the object key is `prefix + blobID`, with no
//! sharding, and `prefix + ".storageconfig"` is a hidden per-prefix storage-class file.
//!
//! It speaks signed HTTP itself (AWS Signature V4 over reqwest) because kopia lists blobs by any
//! string prefix (`xn0_`, `p1`, …), which `object_store`'s directory-style listing cannot do.
//! The store never retries: wrap it in [`crate::retry::RetryingStore`].
//!
//! ```no_run
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use kmover_blob::{BlobStore, s3::{S3Config, S3Store}};
//! let mut config = S3Config::new("my-bucket", "127.0.0.1:9000");
//! config.prefix = "backups/".into();
//! config.disable_tls = true;
//! let store = S3Store::new(config).unwrap();
//! let blobs = store.list("xn").await.unwrap();
//! # });
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use md5::Digest as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::{BlobBytes, BlobError, BlobMetadata, BlobStore, Result};

/// kopia's hidden storage-class file, never listed as a blob.
pub const STORAGE_CONFIG_BLOB: &str = ".storageconfig";
/// kopia's `--endpoint` default.
pub const DEFAULT_ENDPOINT: &str = "s3.amazonaws.com";
const FALLBACK_REGION: &str = "us-east-1";
const CONTENT_TYPE: &str = "application/x-kopia";
/// Error bodies are only read for their code and message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A listing page of 1000 keys is a few hundred KiB; anything far bigger is not S3 talking.
const MAX_XML_BODY: usize = 32 * 1024 * 1024;
/// Never pre-allocate more than this from a server-supplied length.
const MAX_PREALLOCATION: u64 = 64 * 1024 * 1024;
/// Parts of one multipart upload sent at once.
const MULTIPART_PARALLELISM: usize = 4;
/// S3 refuses parts below 5 MiB (except the last) and more than 10000 parts.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// Knobs that kopia's connection JSON does not carry.
#[derive(Debug, Clone)]
pub struct S3Tuning {
    /// Blobs longer than this are sent as multipart uploads (kopia never uses multipart; its
    /// blobs are far below the default).
    pub multipart_threshold: u64,
    pub multipart_part_size: u64,
    /// Keys per listing request (S3's maximum is 1000).
    pub list_page_size: u32,
    pub connect_timeout: Duration,
    /// Longest wait for any single read from the server.
    pub read_timeout: Duration,
}

impl Default for S3Tuning {
    fn default() -> Self {
        S3Tuning {
            multipart_threshold: 256 * 1024 * 1024,
            multipart_part_size: 64 * 1024 * 1024,
            list_page_size: 1000,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Where and how to reach a bucket: kopia's `s3.Options`, minus assume-role and point-in-time.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every blob ID as is; kopia users usually end it with `/`.
    pub prefix: String,
    /// `host[:port]`, without a scheme.
    pub endpoint: String,
    /// Empty: taken from an AWS endpoint name, else asked of the bucket (`?location`).
    pub region: String,
    /// Plain HTTP.
    pub disable_tls: bool,
    pub disable_tls_verification: bool,
    /// PEM bundle that replaces the system roots.
    pub root_ca_pem: Vec<u8>,
    pub access_key_id: String,
    /// Secret: never shown by `Debug`.
    pub secret_access_key: String,
    /// Secret: never shown by `Debug`.
    pub session_token: String,
    pub tuning: S3Tuning,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("disable_tls", &self.disable_tls)
            .field("disable_tls_verification", &self.disable_tls_verification)
            .field("root_ca_pem_bytes", &self.root_ca_pem.len())
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &Redacted(&self.secret_access_key))
            .field("session_token", &Redacted(&self.session_token))
            .field("tuning", &self.tuning)
            .finish()
    }
}

/// Shows whether a secret is set, never its value.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

fn config_error(message: impl Into<String>) -> BlobError {
    BlobError::Other(format!("S3 configuration: {}", message.into()))
}

/// The certificates of a PEM bundle; an unreadable bundle, or one without a certificate, is an
/// error saying why (the TLS library's own message is only "builder error").
fn root_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why = format!("{why}: {cause}");
            source = cause.source();
        }
        config_error(format!("cannot parse the root CA PEM: {why}"))
    })?;
    if certs.is_empty() {
        return Err(config_error("the root CA PEM holds no certificate"));
    }
    Ok(certs)
}

/// Checks a root CA bundle the way [`S3Store::new`] reads it, so a bad one can be reported
/// against the flag or file it came from before any request.
pub fn check_root_ca_pem(pem: &[u8]) -> Result<()> {
    root_certificates(pem).map(|_| ())
}

impl S3Config {
    pub fn new(bucket: impl Into<String>, endpoint: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: endpoint.into(),
            region: String::new(),
            disable_tls: false,
            disable_tls_verification: false,
            root_ca_pem: Vec::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: String::new(),
            tuning: S3Tuning::default(),
        }
    }

    /// Reads the `storage.config` object of a kopia connection file (storage type `s3`).
    pub fn from_kopia_json(value: &Value) -> Result<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| config_error("the storage config is not a JSON object"))?;
        let text = |key: &str| -> Result<String> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(config_error(format!(
                    "{key:?} must be a string, not {other}"
                ))),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(config_error(format!(
                    "{key:?} must be a boolean, not {other}"
                ))),
            }
        };
        if !text("roleARN")?.is_empty() {
            return Err(config_error(
                "assume-role credentials (roleARN) are not supported",
            ));
        }
        if map.get("pointInTime").is_some_and(|v| !v.is_null()) {
            return Err(config_error(
                "point-in-time views of versioned buckets are not supported",
            ));
        }
        let root_ca_pem = match text("rootCA")? {
            s if s.is_empty() => Vec::new(),
            s => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| config_error(format!("\"rootCA\" is not valid base64: {e}")))?,
        };
        Ok(S3Config {
            bucket: text("bucket")?,
            prefix: text("prefix")?,
            endpoint: text("endpoint")?,
            region: text("region")?,
            disable_tls: flag("doNotUseTLS")?,
            disable_tls_verification: flag("doNotVerifyTLS")?,
            root_ca_pem,
            access_key_id: text("accessKeyID")?,
            secret_access_key: text("secretAccessKey")?,
            session_token: text("sessionToken")?,
            tuning: S3Tuning::default(),
        })
    }

    /// The JSON kopia writes into its connection file, field for field and in its order.
    pub fn to_kopia_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("bucket".into(), self.bucket.clone().into());
        if !self.prefix.is_empty() {
            m.insert("prefix".into(), self.prefix.clone().into());
        }
        m.insert("endpoint".into(), self.endpoint.clone().into());
        if self.disable_tls {
            m.insert("doNotUseTLS".into(), true.into());
        }
        if self.disable_tls_verification {
            m.insert("doNotVerifyTLS".into(), true.into());
        }
        if !self.root_ca_pem.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&self.root_ca_pem);
            m.insert("rootCA".into(), encoded.into());
        }
        m.insert("accessKeyID".into(), self.access_key_id.clone().into());
        m.insert(
            "secretAccessKey".into(),
            self.secret_access_key.clone().into(),
        );
        m.insert("sessionToken".into(), self.session_token.clone().into());
        for key in ["roleARN", "sessionName"] {
            m.insert(key.into(), "".into());
        }
        m.insert("duration".into(), "0s".into());
        for key in ["roleEndpoint", "roleRegion"] {
            m.insert(key.into(), "".into());
        }
        if !self.region.is_empty() {
            m.insert("region".into(), self.region.clone().into());
        }
        Value::Object(m)
    }

    /// Fills missing credentials from the standard AWS variables, as kopia's credential chain
    /// does: only when neither the key ID nor the secret is configured.
    pub fn with_env_credentials(mut self) -> Self {
        if self.access_key_id.is_empty() && self.secret_access_key.is_empty() {
            let var = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
                    .unwrap_or_default()
            };
            self.access_key_id = var(&["AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY"]);
            self.secret_access_key = var(&["AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY"]);
            self.session_token = var(&["AWS_SESSION_TOKEN"]);
        }
        self
    }
}

/// Decodes kopia's `--root-ca-pem-base64` value.
pub fn decode_root_ca_base64(encoded: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim().as_bytes())
        .map_err(|e| config_error(format!("the root CA is not valid base64: {e}")))
}

/// Replaces kopia's sensitive fields (secret key, session token) in a storage config with
/// asterisks, as `kopia repository status` shows them.
pub fn redact_kopia_json(config: &Value) -> Value {
    let mut copy = config.clone();
    if let Some(map) = copy.as_object_mut() {
        for key in ["secretAccessKey", "sessionToken"] {
            if let Some(Value::String(s)) = map.get_mut(key) {
                *s = "*".repeat(s.len());
            }
        }
    }
    copy
}

/// Settled on first use, so that the lookups run inside the caller's retries.
#[derive(Debug)]
struct Resolved {
    region: String,
    /// `.storageconfig`: (blob ID prefix, storage class), first match wins.
    storage_classes: Vec<(String, String)>,
}

pub struct S3Store {
    client: reqwest::Client,
    config: S3Config,
    scheme: &'static str,
    /// `host[:port]` of the endpoint, without a default port.
    host: String,
    virtual_host: bool,
    /// For messages: `http://host:port/bucket/prefix`.
    location: String,
    resolved: OnceCell<Resolved>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location)
            .field("virtual_host", &self.virtual_host)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where a request goes: the bucket itself or one object.
enum Target<'a> {
    Bucket,
    Object(&'a str),
}

struct Outgoing<'a> {
    method: Method,
    target: Target<'a>,
    query: Vec<(&'static str, String)>,
    /// Lower-case names; all of them are signed.
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl<'a> Outgoing<'a> {
    fn new(method: Method, target: Target<'a>) -> Self {
        Outgoing {
            method,
            target,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// A shared upload buffer as a request body.
struct SharedBody(Arc<BlobBytes>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl S3Store {
    /// Checks the configuration and builds the HTTP client; no request is made yet.
    pub fn new(config: S3Config) -> Result<Self> {
        let config = config.with_env_credentials();
        if config.bucket.is_empty() {
            return Err(config_error("the bucket name must be specified"));
        }
        if config.endpoint.is_empty() {
            return Err(config_error("the endpoint must be specified"));
        }
        if config.endpoint.contains('/') {
            return Err(config_error(format!(
                "the endpoint {:?} must be host[:port], without a scheme or path",
                config.endpoint
            )));
        }
        if config
            .prefix
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(config_error(format!(
                "the prefix {:?} has a \".\" or \"..\" path segment",
                config.prefix
            )));
        }
        if config.tuning.list_page_size == 0 || config.tuning.list_page_size > 1000 {
            return Err(config_error("the listing page size must be 1..=1000"));
        }
        if config.tuning.multipart_part_size < MIN_PART_SIZE {
            return Err(config_error("multipart parts must be at least 5 MiB"));
        }
        let scheme = if config.disable_tls { "http" } else { "https" };
        let host = strip_default_port(&config.endpoint, scheme);
        let virtual_host = uses_virtual_host(&host, &config.bucket, scheme);

        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // RetryingStore is the one place that retries.
            .retry(reqwest::retry::never())
            .connect_timeout(config.tuning.connect_timeout)
            .read_timeout(config.tuning.read_timeout)
            .user_agent(concat!("kmover/", env!("CARGO_PKG_VERSION")));
        if config.disable_tls_verification {
            builder = builder
                .tls_danger_accept_invalid_certs(true)
                .tls_danger_accept_invalid_hostnames(true);
        } else if !config.root_ca_pem.is_empty() {
            builder = builder.tls_certs_only(root_certificates(&config.root_ca_pem)?);
        }
        let client = builder
            .build()
            .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))?;
        let location = format!(
            "{scheme}://{}/{}/{}",
            config.endpoint, config.bucket, config.prefix
        );
        Ok(S3Store {
            client,
            config,
            scheme,
            host,
            virtual_host,
            location,
            resolved: OnceCell::new(),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// Creates the bucket; an existing bucket of ours is fine. kopia never creates buckets; this
    /// is for tests and setup scripts.
    pub async fn create_bucket(&self) -> Result<()> {
        let region = match self.config.region.as_str() {
            "" => region_from_endpoint(&self.host).unwrap_or_else(|| FALLBACK_REGION.into()),
            r => r.to_string(),
        };
        let mut req = Outgoing::new(Method::PUT, Target::Bucket);
        if region != FALLBACK_REGION {
            req.body = Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            ));
        }
        let resp = self.send("create bucket", "", &region, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let err = self.error_from_response("create bucket", "", resp).await;
        match &err {
            BlobError::Remote { message, .. } if message.contains("BucketAlreadyOwnedByYou") => {
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn check_id(id: &str) -> Result<()> {
        if id.is_empty() {
            return Err(BlobError::InvalidId {
                id: id.into(),
                reason: "it is empty",
            });
        }
        if id.contains('/') {
            // kopia lists with delimiter "/", so such a blob could never be listed.
            return Err(BlobError::InvalidId {
                id: id.into(),
                reason: "it contains '/'",
            });
        }
        Ok(())
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.config.prefix)
    }

    /// The settled region and storage classes; a failure to settle them is reported as a
    /// failure of the operation that needed them.
    async fn resolved(&self, op: &'static str, id: &str) -> Result<&Resolved> {
        self.resolved
            .get_or_try_init(|| self.resolve())
            .await
            .map_err(|err| match err {
                BlobError::Remote {
                    op: step,
                    endpoint,
                    status,
                    transient,
                    message,
                    ..
                } => BlobError::Remote {
                    op,
                    id: id.into(),
                    endpoint,
                    status,
                    transient,
                    message: format!("{step}: {message}"),
                },
                other => other,
            })
    }

    async fn resolve(&self) -> Result<Resolved> {
        let region = if !self.config.region.is_empty() {
            self.config.region.clone()
        } else if let Some(region) = region_from_endpoint(&self.host) {
            region
        } else {
            self.bucket_location().await?
        };
        let storage_classes = self.load_storage_config(&region).await?;
        tracing::debug!(location = %self.location, %region, "S3 bucket settled");
        Ok(Resolved {
            region,
            storage_classes,
        })
    }

    /// The bucket's region, as minio-go finds it: `GET ?location`, where access denied means
    /// the default region.
    async fn bucket_location(&self) -> Result<String> {
        let op = "find bucket region";
        let mut req = Outgoing::new(Method::GET, Target::Bucket);
        req.query.push(("location", String::new()));
        let mut resp = self.send(op, "", FALLBACK_REGION, req).await?;
        if !resp.status().is_success() {
            let err = self.error_from_response(op, "", resp).await;
            return match &err {
                BlobError::Remote {
                    status: Some(403), ..
                } => Ok(FALLBACK_REGION.into()),
                _ => Err(err),
            };
        }
        let body = self.read_body(op, "", &mut resp, MAX_XML_BODY).await?;
        #[derive(Deserialize)]
        struct LocationConstraint {
            #[serde(rename = "$text", default)]
            region: String,
        }
        let parsed: LocationConstraint = self.parse_xml(op, "", &body)?;
        Ok(match parsed.region.trim() {
            "" => FALLBACK_REGION.into(),
            "EU" => "eu-west-1".into(),
            region => region.into(),
        })
    }

    async fn load_storage_config(&self, region: &str) -> Result<Vec<(String, String)>> {
        let op = "read storage config";
        let key = self.key(STORAGE_CONFIG_BLOB);
        let req = Outgoing::new(Method::GET, Target::Object(&key));
        let mut resp = self.send(op, STORAGE_CONFIG_BLOB, region, req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            let err = self
                .error_from_response(op, STORAGE_CONFIG_BLOB, resp)
                .await;
            return if err.to_string().contains("NoSuchBucket") {
                Err(err)
            } else {
                Ok(Vec::new())
            };
        }
        if !resp.status().is_success() {
            return Err(self
                .error_from_response(op, STORAGE_CONFIG_BLOB, resp)
                .await);
        }
        let body = self
            .read_body(op, STORAGE_CONFIG_BLOB, &mut resp, MAX_XML_BODY)
            .await?;
        #[derive(Deserialize)]
        struct StorageConfig {
            #[serde(rename = "blobOptions", default)]
            blob_options: Vec<BlobOption>,
        }
        #[derive(Deserialize)]
        struct BlobOption {
            #[serde(default)]
            prefix: String,
            #[serde(rename = "storageClass", default)]
            storage_class: String,
        }
        let parsed: StorageConfig = serde_json::from_slice(&body).map_err(|e| {
            self.remote_error(
                op,
                STORAGE_CONFIG_BLOB,
                None,
                false,
                format!("not valid JSON: {e}"),
            )
        })?;
        Ok(parsed
            .blob_options
            .into_iter()
            .map(|o| (o.prefix, o.storage_class))
            .collect())
    }

    fn remote_error(
        &self,
        op: &'static str,
        id: &str,
        status: Option<u16>,
        transient: bool,
        message: String,
    ) -> BlobError {
        BlobError::Remote {
            op,
            id: id.into(),
            endpoint: self.location.clone(),
            status,
            transient,
            message: self.scrub(message),
        }
    }

    /// Belt and braces: no message built from a server's or library's words may carry a secret.
    fn scrub(&self, mut text: String) -> String {
        for secret in [&self.config.secret_access_key, &self.config.session_token] {
            if secret.len() >= 8 && text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        text
    }

    /// Signs and sends one request; any HTTP status is returned, transport failures are errors.
    async fn send(
        &self,
        op: &'static str,
        id: &str,
        region: &str,
        req: Outgoing<'_>,
    ) -> Result<reqwest::Response> {
        let (host, path) = match (&req.target, self.virtual_host) {
            (Target::Bucket, false) => (self.host.clone(), format!("/{}/", self.config.bucket)),
            (Target::Bucket, true) => (format!("{}.{}", self.config.bucket, self.host), "/".into()),
            (Target::Object(key), false) => (
                self.host.clone(),
                format!("/{}/{}", self.config.bucket, uri_encode(key, false)),
            ),
            (Target::Object(key), true) => (
                format!("{}.{}", self.config.bucket, self.host),
                format!("/{}", uri_encode(key, false)),
            ),
        };
        let mut query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let payload_hash = hex::encode(digest::digest(&digest::SHA256, &req.body));
        let now = Utc::now();
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), host.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
            (
                "x-amz-date".into(),
                now.format("%Y%m%dT%H%M%SZ").to_string(),
            ),
        ];
        if !self.config.session_token.is_empty() {
            headers.push((
                "x-amz-security-token".into(),
                self.config.session_token.clone(),
            ));
        }
        headers.extend(req.headers.iter().map(|(k, v)| (k.to_string(), v.clone())));
        headers.sort();

        let mut url = format!("{}://{host}{path}", self.scheme);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        let mut builder = self.client.request(req.method.clone(), &url);
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !self.config.access_key_id.is_empty() || !self.config.secret_access_key.is_empty() {
            let authorization = authorization_header(
                &self.config.access_key_id,
                &self.config.secret_access_key,
                region,
                now,
                &CanonicalRequest {
                    method: req.method.as_str(),
                    uri: &path,
                    query: &query,
                    headers: &headers,
                    payload_hash: &payload_hash,
                },
            );
            builder = builder.header("authorization", authorization);
        }
        let started = Instant::now();
        let sent = builder.body(req.body).send().await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match sent {
            Ok(resp) => {
                tracing::debug!(
                    op,
                    id,
                    method = %req.method,
                    status = resp.status().as_u16(),
                    elapsed_ms,
                    "S3 request"
                );
                Ok(resp)
            }
            Err(e) => {
                tracing::debug!(op, id, method = %req.method, elapsed_ms, error = %error_chain(&e), "S3 request failed");
                Err(self.transport_error(op, id, &e))
            }
        }
    }

    fn transport_error(&self, op: &'static str, id: &str, e: &reqwest::Error) -> BlobError {
        let chain = error_chain(e);
        // A certificate that does not verify will not verify next time either; everything else
        // but a request we could not even build is the network.
        let transient = !e.is_builder() && !chain.contains("certificate");
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        self.remote_error(op, id, None, transient, format!("{kind}: {chain}"))
    }

    /// Turns a non-success response into an error, reading S3's XML code and message.
    async fn error_from_response(
        &self,
        op: &'static str,
        id: &str,
        mut resp: reqwest::Response,
    ) -> BlobError {
        let status = resp.status();
        let body = self
            .read_body(op, id, &mut resp, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let (code, message) = parse_error_body(&body);
        let transient = is_transient_status(status, &code);
        let reason = status.canonical_reason().unwrap_or("");
        let mut text = format!("HTTP {} {reason}", status.as_u16());
        if !code.is_empty() {
            text.push_str(&format!(": {code}"));
        }
        if !message.is_empty() {
            text.push_str(&format!(": {message}"));
        }
        self.remote_error(op, id, Some(status.as_u16()), transient, text)
    }

    /// Reads a whole body, refusing more than `cap` bytes; a broken stream is transient.
    async fn read_body(
        &self,
        op: &'static str,
        id: &str,
        resp: &mut reqwest::Response,
        cap: usize,
    ) -> Result<Vec<u8>> {
        let declared = content_length(resp.headers());
        if let Some(n) = declared
            && n > cap as u64
        {
            return Err(self.remote_error(
                op,
                id,
                Some(resp.status().as_u16()),
                false,
                format!("the response body of {n} bytes is larger than the {cap} expected"),
            ));
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(MAX_PREALLOCATION) as usize);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > cap {
                        return Err(self.remote_error(
                            op,
                            id,
                            Some(resp.status().as_u16()),
                            false,
                            format!("the response body is larger than the {cap} bytes expected"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(self.remote_error(
                        op,
                        id,
                        Some(resp.status().as_u16()),
                        true,
                        format!(
                            "the connection broke after {} bytes of the response body: {}",
                            body.len(),
                            error_chain(&e)
                        ),
                    ));
                }
            }
        }
        if let Some(n) = declared
            && n != body.len() as u64
        {
            return Err(self.remote_error(
                op,
                id,
                Some(resp.status().as_u16()),
                true,
                format!(
                    "short body: {} of the {n} bytes announced arrived",
                    body.len()
                ),
            ));
        }
        Ok(body)
    }

    fn parse_xml<T: for<'de> Deserialize<'de>>(
        &self,
        op: &'static str,
        id: &str,
        body: &[u8],
    ) -> Result<T> {
        let text = std::str::from_utf8(body).map_err(|_| {
            self.remote_error(op, id, None, false, "the XML response is not UTF-8".into())
        })?;
        quick_xml::de::from_str(text).map_err(|e| {
            self.remote_error(
                op,
                id,
                None,
                false,
                format!("cannot parse the XML response: {e}"),
            )
        })
    }

    /// A 404 is "not found" unless the bucket itself is missing.
    async fn not_found_or_error(
        &self,
        op: &'static str,
        id: &str,
        resp: reqwest::Response,
    ) -> BlobError {
        let err = self.error_from_response(op, id, resp).await;
        match &err {
            BlobError::Remote {
                status: Some(404),
                message,
                ..
            } if !message.contains("NoSuchBucket") => BlobError::NotFound(id.into()),
            _ => err,
        }
    }

    async fn get_object(
        &self,
        id: &str,
        range: Option<(u64, u64)>,
    ) -> Result<std::result::Result<BlobBytes, u64>> {
        let op = if range.is_some() { "get range" } else { "get" };
        let region = &self.resolved(op, id).await?.region;
        let key = self.key(id);
        let mut req = Outgoing::new(Method::GET, Target::Object(&key));
        if let Some((offset, length)) = range {
            req.headers
                .push(("range", format!("bytes={offset}-{}", offset + length - 1)));
        }
        let mut resp = self.send(op, id, region, req).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.not_found_or_error(op, id, resp).await);
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // `bytes */<total>` names the real length.
            let total = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|v| v.parse::<u64>().ok());
            return match total {
                Some(total) => Ok(Err(total)),
                None => Ok(Err(self.metadata_of(id).await?.length)),
            };
        }
        let Some((offset, length)) = range else {
            if status != StatusCode::OK {
                return Err(self.error_from_response(op, id, resp).await);
            }
            return self.read_body(op, id, &mut resp, usize::MAX).await.map(Ok);
        };
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let Some((start, end, total)) = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                else {
                    return Err(self.remote_error(
                        op,
                        id,
                        Some(206),
                        false,
                        "a partial response without a valid Content-Range".into(),
                    ));
                };
                if start != offset || end < start {
                    return Err(self.remote_error(
                        op,
                        id,
                        Some(206),
                        false,
                        format!("asked for bytes from {offset}, got {start}-{end}"),
                    ));
                }
                if end - start + 1 != length {
                    return Ok(Err(total));
                }
                let body = self.read_body(op, id, &mut resp, length as usize).await?;
                if body.len() as u64 != length {
                    return Err(self.remote_error(
                        op,
                        id,
                        Some(206),
                        true,
                        format!("short body: {} of {length} bytes", body.len()),
                    ));
                }
                Ok(Ok(body))
            }
            // The server ignored the range and sent the whole blob.
            StatusCode::OK => {
                let total = content_length(resp.headers());
                if let Some(total) = total
                    && total < offset + length
                {
                    return Ok(Err(total));
                }
                let body = self.read_body(op, id, &mut resp, usize::MAX).await?;
                let total = body.len() as u64;
                if total < offset + length {
                    return Ok(Err(total));
                }
                Ok(Ok(
                    body[offset as usize..(offset + length) as usize].to_vec()
                ))
            }
            _ => Err(self.error_from_response(op, id, resp).await),
        }
    }

    /// Metadata from a one-key listing rather than HEAD: HEAD's Last-Modified has whole seconds
    /// while listings have milliseconds, and kopia's view of time comes from listings.
    async fn metadata_of(&self, id: &str) -> Result<BlobMetadata> {
        let page = self
            .list_page("metadata", id, &self.key(id), None, 1)
            .await?;
        match page.blobs.into_iter().next() {
            Some(meta) if meta.id == id => Ok(meta),
            _ => Err(BlobError::NotFound(id.into())),
        }
    }

    async fn list_page(
        &self,
        op: &'static str,
        id: &str,
        key_prefix: &str,
        token: Option<&str>,
        max_keys: u32,
    ) -> Result<ListPage> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct ListBucketResult {
            #[serde(default)]
            is_truncated: bool,
            #[serde(default)]
            next_continuation_token: Option<String>,
            #[serde(default)]
            contents: Vec<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            key: String,
            last_modified: String,
            size: u64,
        }
        let region = &self.resolved(op, id).await?.region;
        let mut req = Outgoing::new(Method::GET, Target::Bucket);
        req.query.push(("list-type", "2".into()));
        req.query.push(("prefix", key_prefix.into()));
        req.query.push(("delimiter", "/".into()));
        req.query.push(("encoding-type", "url".into()));
        req.query.push(("max-keys", max_keys.to_string()));
        if let Some(token) = token {
            req.query.push(("continuation-token", token.into()));
        }
        let mut resp = self.send(op, id, region, req).await?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(op, id, resp).await);
        }
        let body = self.read_body(op, id, &mut resp, MAX_XML_BODY).await?;
        let parsed: ListBucketResult = self.parse_xml(op, id, &body)?;
        let mut blobs = Vec::with_capacity(parsed.contents.len());
        for entry in parsed.contents {
            let key = url_decode(&entry.key).ok_or_else(|| {
                self.remote_error(
                    op,
                    id,
                    None,
                    false,
                    format!("listed key {:?} is not valid URL encoding", entry.key),
                )
            })?;
            let Some(blob_id) = key.strip_prefix(self.config.prefix.as_str()) else {
                return Err(self.remote_error(
                    op,
                    id,
                    None,
                    false,
                    format!("listed key {key:?} lies outside the prefix"),
                ));
            };
            if blob_id == STORAGE_CONFIG_BLOB {
                continue;
            }
            let timestamp = DateTime::parse_from_rfc3339(&entry.last_modified)
                .map_err(|e| {
                    self.remote_error(
                        op,
                        id,
                        None,
                        false,
                        format!(
                            "listed key {key:?} has an invalid LastModified {:?}: {e}",
                            entry.last_modified
                        ),
                    )
                })?
                .with_timezone(&Utc);
            blobs.push(BlobMetadata {
                id: blob_id.to_string(),
                length: entry.size,
                timestamp,
            });
        }
        let next = match (parsed.is_truncated, parsed.next_continuation_token) {
            (false, _) => None,
            (true, Some(token)) if !token.is_empty() => Some(token),
            (true, _) => {
                return Err(self.remote_error(
                    op,
                    id,
                    None,
                    false,
                    "a truncated listing without a continuation token".into(),
                ));
            }
        };
        Ok(ListPage { blobs, next })
    }

    async fn put_bytes(&self, id: &str, data: Bytes) -> Result<()> {
        Self::check_id(id)?;
        let region = self.resolved("put", id).await?.region.clone();
        let key = self.key(id);
        if data.len() as u64 > self.config.tuning.multipart_threshold {
            self.put_multipart(id, &region, &key, data).await
        } else {
            self.put_single(id, &region, &key, data).await
        }
    }

    async fn put_single(&self, id: &str, region: &str, key: &str, data: Bytes) -> Result<()> {
        let mut req = Outgoing::new(Method::PUT, Target::Object(key));
        req.headers.push(("content-type", CONTENT_TYPE.into()));
        req.headers.push(("content-md5", content_md5(&data)));
        if let Some(class) = self.storage_class(id).await? {
            req.headers.push(("x-amz-storage-class", class));
        }
        req.body = data;
        let resp = self.send("put", id, region, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.error_from_response("put", id, resp).await)
    }

    async fn storage_class(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .resolved("put", id)
            .await?
            .storage_classes
            .iter()
            .find(|(prefix, _)| id.starts_with(prefix.as_str()))
            .map(|(_, class)| class.clone())
            .filter(|class| !class.is_empty()))
    }

    async fn put_multipart(&self, id: &str, region: &str, key: &str, data: Bytes) -> Result<()> {
        let op = "put (multipart)";
        let mut part_size = self.config.tuning.multipart_part_size;
        // S3 allows at most 10000 parts: grow the parts for huge blobs.
        let needed = (data.len() as u64).div_ceil(MAX_PARTS);
        part_size = part_size.max(needed);

        let mut req = Outgoing::new(Method::POST, Target::Object(key));
        req.query.push(("uploads", String::new()));
        req.headers.push(("content-type", CONTENT_TYPE.into()));
        if let Some(class) = self.storage_class(id).await? {
            req.headers.push(("x-amz-storage-class", class));
        }
        let mut resp = self.send(op, id, region, req).await?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(op, id, resp).await);
        }
        let body = self.read_body(op, id, &mut resp, MAX_XML_BODY).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Initiated {
            upload_id: String,
        }
        let upload_id = self.parse_xml::<Initiated>(op, id, &body)?.upload_id;

        let result = self
            .upload_parts_and_complete(id, region, key, &upload_id, data, part_size)
            .await;
        if result.is_err() {
            // Best effort: an unfinished upload only costs storage until the bucket's cleanup.
            let mut abort = Outgoing::new(Method::DELETE, Target::Object(key));
            abort.query.push(("uploadId", upload_id.clone()));
            if let Err(e) = self.send("abort multipart upload", id, region, abort).await {
                tracing::debug!(id, error = %e, "cannot abort a multipart upload");
            }
        }
        result
    }

    async fn upload_parts_and_complete(
        &self,
        id: &str,
        region: &str,
        key: &str,
        upload_id: &str,
        data: Bytes,
        part_size: u64,
    ) -> Result<()> {
        let op = "put (multipart)";
        let parts: Vec<(usize, Bytes)> = (0..data.len())
            .step_by(part_size as usize)
            .enumerate()
            .map(|(i, start)| {
                let end = (start + part_size as usize).min(data.len());
                (i + 1, data.slice(start..end))
            })
            .collect();
        let etags: Vec<(usize, String)> = stream::iter(parts)
            .map(|(number, part)| async move {
                let mut req = Outgoing::new(Method::PUT, Target::Object(key));
                req.query.push(("partNumber", number.to_string()));
                req.query.push(("uploadId", upload_id.to_string()));
                req.headers.push(("content-md5", content_md5(&part)));
                req.body = part;
                let resp = self.send(op, id, region, req).await?;
                if !resp.status().is_success() {
                    return Err(self.error_from_response(op, id, resp).await);
                }
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        self.remote_error(
                            op,
                            id,
                            None,
                            false,
                            format!("part {number} was stored without an ETag"),
                        )
                    })?;
                Ok((number, etag))
            })
            .buffered(MULTIPART_PARALLELISM)
            .try_collect()
            .await?;

        let mut xml = String::from("<CompleteMultipartUpload>");
        for (number, etag) in &etags {
            xml.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let mut req = Outgoing::new(Method::POST, Target::Object(key));
        req.query.push(("uploadId", upload_id.to_string()));
        req.headers.push(("content-type", "application/xml".into()));
        req.body = Bytes::from(xml);
        let mut resp = self.send(op, id, region, req).await?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(op, id, resp).await);
        }
        // S3 may answer 200 and still report an error in the body.
        let body = self.read_body(op, id, &mut resp, MAX_XML_BODY).await?;
        let (code, message) = parse_error_body(&body);
        if !code.is_empty() {
            let transient = is_transient_status(StatusCode::INTERNAL_SERVER_ERROR, &code)
                && code != "InvalidPart";
            return Err(self.remote_error(
                op,
                id,
                Some(200),
                transient,
                format!("completing the upload failed: {code}: {message}"),
            ));
        }
        Ok(())
    }
}

struct ListPage {
    blobs: Vec<BlobMetadata>,
    next: Option<String>,
}

#[async_trait]
impl BlobStore for S3Store {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        Self::check_id(id)?;
        match self.get_object(id, None).await? {
            Ok(data) => Ok(data),
            Err(actual) => Err(BlobError::InvalidRange {
                id: id.into(),
                offset: 0,
                length: 0,
                actual,
            }),
        }
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        Self::check_id(id)?;
        let invalid = |actual| BlobError::InvalidRange {
            id: id.into(),
            offset,
            length,
            actual,
        };
        // S3 cannot express an empty range, and an overflowing one is never valid.
        if length == 0 || offset.checked_add(length).is_none() {
            let meta = self.metadata_of(id).await?;
            return if length == 0 && offset <= meta.length {
                Ok(Vec::new())
            } else {
                Err(invalid(meta.length))
            };
        }
        self.get_object(id, Some((offset, length)))
            .await?
            .map_err(invalid)
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        Self::check_id(id)?;
        self.metadata_of(id).await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        self.put_bytes(id, Bytes::from(data)).await
    }

    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        // The body borrows the caller's buffer: no copy of a whole pack per upload.
        self.put_bytes(id, Bytes::from_owner(SharedBody(data)))
            .await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        Self::check_id(id)?;
        let region = &self.resolved("delete", id).await?.region;
        let key = self.key(id);
        let req = Outgoing::new(Method::DELETE, Target::Object(&key));
        let resp = self.send("delete", id, region, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        match self.not_found_or_error("delete", id, resp).await {
            BlobError::NotFound(_) => Ok(()),
            err => Err(err),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        let key_prefix = self.key(prefix);
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_page(
                    "list",
                    prefix,
                    &key_prefix,
                    token.as_deref(),
                    self.config.tuning.list_page_size,
                )
                .await?;
            all.extend(page.blobs);
            match page.next {
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(self.remote_error(
                        "list",
                        prefix,
                        None,
                        false,
                        "the listing returned the same continuation token twice".into(),
                    ));
                }
                Some(next) => token = Some(next),
                None => return Ok(all),
            }
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// 5xx (except 501, "not implemented"), 408 and 429 are worth retrying; so are S3's throttling
/// and timeout codes whatever status they come with.
fn is_transient_status(status: StatusCode, code: &str) -> bool {
    matches!(
        code,
        "SlowDown"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "Throttling"
            | "ThrottlingException"
            | "RequestThrottled"
            | "OperationAborted"
            | "XMinioServerNotInitialized"
    ) || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Code and message of an S3 `<Error>` body; empty strings when there is none.
fn parse_error_body(body: &[u8]) -> (String, String) {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorBody {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let parsed = std::str::from_utf8(body)
        .ok()
        .filter(|text| text.contains("<Error"))
        .and_then(|text| quick_xml::de::from_str::<ErrorBody>(text).ok())
        .unwrap_or_default();
    let clip = |s: String| s.chars().take(500).collect::<String>();
    (clip(parsed.code), clip(parsed.message))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `bytes <start>-<end>/<total>`.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((
        start.trim().parse().ok()?,
        end.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

fn content_md5(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// SigV4's URI encoding: everything but `A-Za-z0-9-_.~` is percent-encoded; `/` too when
/// `encode_slash` (query strings), not in paths.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes S3's `encoding-type=url` keys (form encoding: `+` is a space).
fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn strip_default_port(endpoint: &str, scheme: &str) -> String {
    let default = if scheme == "https" { ":443" } else { ":80" };
    endpoint
        .strip_suffix(default)
        .unwrap_or(endpoint)
        .to_string()
}

fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(']') => {
            name
        }
        _ => host,
    }
}

/// minio-go's rule, which kopia inherits: virtual-host addressing for Amazon, Google and Aliyun
/// endpoints, unless a dotted bucket name would break the TLS certificate; path style elsewhere.
fn uses_virtual_host(host: &str, bucket: &str, scheme: &str) -> bool {
    if scheme == "https" && bucket.contains('.') {
        return false;
    }
    let name = host_without_port(host).to_ascii_lowercase();
    name.ends_with(".amazonaws.com")
        || name.ends_with(".amazonaws.com.cn")
        || name == "storage.googleapis.com"
        || name.ends_with(".aliyuncs.com")
}

/// The region an AWS endpoint name carries (`s3.eu-west-1.amazonaws.com`,
/// `s3-eu-west-1.amazonaws.com`, `s3.dualstack.eu-west-1.amazonaws.com`).
fn region_from_endpoint(host: &str) -> Option<String> {
    let name = host_without_port(host).to_ascii_lowercase();
    let stem = name
        .strip_suffix(".amazonaws.com.cn")
        .or_else(|| name.strip_suffix(".amazonaws.com"))?;
    let labels: Vec<&str> = stem.split('.').collect();
    let region = match labels.as_slice() {
        ["s3-external-1"] => "us-east-1",
        [single] => single
            .strip_prefix("s3-fips-")
            .or_else(|| single.strip_prefix("s3-"))?,
        [.., "s3" | "s3-fips", "dualstack", region] => region,
        [.., "s3" | "s3-fips", region] => region,
        _ => return None,
    };
    (!region.is_empty()).then(|| region.to_string())
}

/// What SigV4 signs of one request. `headers` are lower-case, sorted and all signed.
struct CanonicalRequest<'a> {
    method: &'a str,
    uri: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    payload_hash: &'a str,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The `Authorization` header value (AWS Signature Version 4, service `s3`).
fn authorization_header(
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    time: DateTime<Utc>,
    req: &CanonicalRequest<'_>,
) -> String {
    let date = time.format("%Y%m%d").to_string();
    let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{date}/{region}/s3/aws4_request");
    let mut canonical_headers = String::new();
    for (name, value) in req.headers {
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let signed_headers = req
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method, req.uri, req.query, req.payload_hash
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{secret_access_key}").as_bytes(),
        date.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const EXAMPLE_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn example_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    fn signature_of(authorization: &str) -> &str {
        authorization.rsplit("Signature=").next().unwrap()
    }

    // AWS's published SigV4 examples for S3 ("Signature Calculations for the Authorization
    // Header: Transferring Payload in a Single Chunk").
    #[test]
    fn sigv4_get_object_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let auth = authorization_header(
            EXAMPLE_KEY_ID,
            EXAMPLE_SECRET,
            "us-east-1",
            example_time(),
            &CanonicalRequest {
                method: "GET",
                uri: "/test.txt",
                query: "",
                headers: &h,
                payload_hash: EMPTY_SHA256,
            },
        );
        assert_eq!(
            signature_of(&auth),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        ));
    }

    #[test]
    fn sigv4_put_object_example() {
        let payload = b"Welcome to Amazon S3.";
        let hash = hex::encode(digest::digest(&digest::SHA256, payload));
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let h = headers(&[
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", &hash),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ]);
        let uri = format!("/{}", uri_encode("test$file.text", false));
        assert_eq!(uri, "/test%24file.text");
        let auth = authorization_header(
            EXAMPLE_KEY_ID,
            EXAMPLE_SECRET,
            "us-east-1",
            example_time(),
            &CanonicalRequest {
                method: "PUT",
                uri: &uri,
                query: "",
                headers: &h,
                payload_hash: &hash,
            },
        );
        assert_eq!(
            signature_of(&auth),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn sigv4_list_objects_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let auth = authorization_header(
            EXAMPLE_KEY_ID,
            EXAMPLE_SECRET,
            "us-east-1",
            example_time(),
            &CanonicalRequest {
                method: "GET",
                uri: "/",
                query: "max-keys=2&prefix=J",
                headers: &h,
                payload_hash: EMPTY_SHA256,
            },
        );
        assert_eq!(
            signature_of(&auth),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn uri_encoding_follows_sigv4() {
        assert_eq!(uri_encode("a-Z_0.9~", true), "a-Z_0.9~");
        assert_eq!(uri_encode("p/x y+@=", false), "p/x%20y%2B%40%3D");
        assert_eq!(uri_encode("p/x", true), "p%2Fx");
        assert_eq!(uri_encode("é", true), "%C3%A9");
    }

    #[test]
    fn url_decoding_of_listed_keys() {
        assert_eq!(url_decode("pre%2Fx+y%40").as_deref(), Some("pre/x y@"));
        assert_eq!(url_decode("plain").as_deref(), Some("plain"));
        assert_eq!(url_decode("%C3%A9").as_deref(), Some("é"));
        for bad in ["%", "%4", "%zz", "%FF"] {
            assert_eq!(url_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn addressing_style_matches_minio_go() {
        assert!(uses_virtual_host("s3.amazonaws.com", "bucket", "https"));
        assert!(uses_virtual_host(
            "s3.eu-west-1.amazonaws.com",
            "bucket",
            "https"
        ));
        assert!(!uses_virtual_host("s3.amazonaws.com", "my.bucket", "https"));
        assert!(uses_virtual_host("s3.amazonaws.com", "my.bucket", "http"));
        assert!(!uses_virtual_host("127.0.0.1:9000", "bucket", "http"));
        assert!(!uses_virtual_host("minio.example.com", "bucket", "https"));
        assert!(uses_virtual_host("storage.googleapis.com", "b", "https"));
    }

    #[test]
    fn regions_from_aws_endpoint_names() {
        for (host, region) in [
            ("s3.amazonaws.com", None),
            ("s3.eu-west-1.amazonaws.com", Some("eu-west-1")),
            ("s3-eu-west-1.amazonaws.com", Some("eu-west-1")),
            ("s3.dualstack.ap-south-1.amazonaws.com", Some("ap-south-1")),
            ("s3-external-1.amazonaws.com", Some("us-east-1")),
            ("s3.cn-north-1.amazonaws.com.cn", Some("cn-north-1")),
            ("bucket.s3.us-west-2.amazonaws.com", Some("us-west-2")),
            ("s3.us-west-2.amazonaws.com:443", Some("us-west-2")),
            ("127.0.0.1:9000", None),
            ("minio.example.com", None),
        ] {
            assert_eq!(region_from_endpoint(host).as_deref(), region, "{host}");
        }
    }

    #[test]
    fn default_ports_are_dropped_from_the_host() {
        assert_eq!(
            strip_default_port("s3.amazonaws.com:443", "https"),
            "s3.amazonaws.com"
        );
        assert_eq!(strip_default_port("h:443", "http"), "h:443");
        assert_eq!(strip_default_port("h:80", "http"), "h");
        assert_eq!(
            strip_default_port("127.0.0.1:9000", "http"),
            "127.0.0.1:9000"
        );
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
        assert_eq!(parse_content_range("bytes 5-x/100"), None);
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><StringToSign>secret-ish</StringToSign></Error>"#;
        assert_eq!(
            parse_error_body(body),
            (
                "SlowDown".to_string(),
                "Please reduce your request rate.".to_string()
            )
        );
        assert_eq!(parse_error_body(b""), (String::new(), String::new()));
        assert_eq!(
            parse_error_body(b"<html>bad gateway</html>"),
            (String::new(), String::new())
        );
        assert_eq!(
            parse_error_body(b"<Error><Code>unterminated"),
            (String::new(), String::new())
        );
    }

    #[test]
    fn transient_statuses() {
        for (status, code, transient) in [
            (500, "", true),
            (502, "", true),
            (503, "SlowDown", true),
            (504, "", true),
            (501, "NotImplemented", false),
            (429, "", true),
            (408, "", true),
            (400, "RequestTimeout", true),
            (400, "InvalidArgument", false),
            (403, "AccessDenied", false),
            (403, "RequestTimeTooSkewed", false),
            (404, "NoSuchKey", false),
            (416, "InvalidRange", false),
        ] {
            assert_eq!(
                is_transient_status(StatusCode::from_u16(status).unwrap(), code),
                transient,
                "{status} {code}"
            );
        }
    }

    fn full_config() -> S3Config {
        let mut c = S3Config::new("bkt", "127.0.0.1:9000");
        c.prefix = "pre/".into();
        c.disable_tls = true;
        c.access_key_id = "AKIDEXAMPLE".into();
        c.secret_access_key = "very-secret-key-value".into();
        c.session_token = "session-token-value".into();
        c
    }

    #[test]
    fn kopia_json_matches_what_kopia_writes() {
        // Written by kopia 0.22.3 `repository create s3 --disable-tls --prefix pre/`.
        let kopia = serde_json::json!({
            "bucket": "bkt",
            "prefix": "pre/",
            "endpoint": "127.0.0.1:9000",
            "doNotUseTLS": true,
            "accessKeyID": "AKIDEXAMPLE",
            "secretAccessKey": "very-secret-key-value",
            "sessionToken": "session-token-value",
            "roleARN": "",
            "sessionName": "",
            "duration": "0s",
            "roleEndpoint": "",
            "roleRegion": ""
        });
        let ours = full_config().to_kopia_json();
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&kopia).unwrap()
        );
        let back = S3Config::from_kopia_json(&kopia).unwrap();
        assert_eq!(
            serde_json::to_string(&back.to_kopia_json()).unwrap(),
            serde_json::to_string(&kopia).unwrap()
        );
    }

    #[test]
    fn kopia_json_optional_fields_round_trip() {
        let mut c = full_config();
        c.region = "eu-central-1".into();
        c.disable_tls = false;
        c.disable_tls_verification = true;
        c.root_ca_pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        let json = c.to_kopia_json();
        assert_eq!(json["rootCA"], "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==");
        assert_eq!(json["region"], "eu-central-1");
        assert!(json.get("doNotUseTLS").is_none());
        let back = S3Config::from_kopia_json(&json).unwrap();
        assert_eq!(back.root_ca_pem, c.root_ca_pem);
        assert!(back.disable_tls_verification && !back.disable_tls);
        assert_eq!(back.region, "eu-central-1");
    }

    #[test]
    fn kopia_json_errors() {
        for (json, needle) in [
            (serde_json::json!([]), "not a JSON object"),
            (
                serde_json::json!({"bucket": 3}),
                "\"bucket\" must be a string",
            ),
            (
                serde_json::json!({"bucket": "b", "doNotUseTLS": "yes"}),
                "must be a boolean",
            ),
            (
                serde_json::json!({"bucket": "b", "roleARN": "arn:aws:iam::1:role/x"}),
                "roleARN",
            ),
            (
                serde_json::json!({"bucket": "b", "pointInTime": "2024-01-01T00:00:00Z"}),
                "point-in-time",
            ),
            (serde_json::json!({"bucket": "b", "rootCA": "!!"}), "base64"),
        ] {
            let err = S3Config::from_kopia_json(&json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn redaction_for_status_output() {
        let redacted = redact_kopia_json(&full_config().to_kopia_json());
        assert_eq!(redacted["secretAccessKey"], "*".repeat(21));
        assert_eq!(redacted["sessionToken"], "*".repeat(19));
        assert_eq!(redacted["accessKeyID"], "AKIDEXAMPLE");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let config = full_config();
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("very-secret-key-value"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
        assert!(shown.contains("AKIDEXAMPLE") && shown.contains("<redacted>"));

        let store = S3Store::new(config).unwrap();
        let shown = format!("{store:?} {store:#?}");
        assert!(!shown.contains("very-secret-key-value"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");

        let err = store.remote_error(
            "get",
            "x",
            Some(403),
            false,
            "server echoed very-secret-key-value and session-token-value".into(),
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("very-secret-key-value"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
    }

    #[test]
    fn invalid_configurations_are_refused() {
        for (change, needle) in [
            (
                (|c: &mut S3Config| c.bucket.clear()) as fn(&mut S3Config),
                "bucket",
            ),
            (
                |c| c.endpoint = "http://127.0.0.1:9000".into(),
                "host[:port]",
            ),
            (|c| c.endpoint.clear(), "endpoint"),
            (|c| c.prefix = "a/../b/".into(), "segment"),
            (|c| c.tuning.list_page_size = 0, "page size"),
            (|c| c.tuning.multipart_part_size = 1024, "5 MiB"),
            (
                |c| {
                    c.disable_tls = false;
                    c.root_ca_pem = b"not a certificate".to_vec();
                },
                "certificate",
            ),
        ] {
            let mut config = full_config();
            change(&mut config);
            let err = S3Store::new(config).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[tokio::test]
    async fn ids_the_listing_could_not_show_are_refused() {
        let store = S3Store::new(full_config()).unwrap();
        for id in ["", "a/b"] {
            assert!(matches!(
                store.put(id, vec![]).await,
                Err(BlobError::InvalidId { .. })
            ));
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_transient_error_naming_it() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = full_config();
        config.endpoint = format!("127.0.0.1:{port}");
        config.region = "us-east-1".into();
        let store = S3Store::new(config).unwrap();
        let err = store.get("kopia.repository").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("http://127.0.0.1:{port}/bkt/pre/"))
                && text.contains("get \"kopia.repository\"")
                && text.contains("read storage config: cannot connect"),
            "{text}"
        );
    }
}
