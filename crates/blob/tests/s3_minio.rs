//! The S3 store against a real S3 server (MinIO): the shared conformance suite with and without
//! the retrying wrapper, and the S3-specific behaviour kopia relies on.

#[path = "../../../tests/common/minio.rs"]
mod minio;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kmover_blob::conformance::run_conformance_suite;
use kmover_blob::retry::{RetryPolicy, RetryingStore};
use kmover_blob::s3::{S3Config, S3Store};
use kmover_blob::{BlobError, BlobStore};
use minio::Minio;

fn store(config: S3Config) -> S3Store {
    S3Store::new(config).expect("valid S3 config")
}

async fn timed_suite(label: &str, store: &dyn BlobStore) {
    let started = Instant::now();
    run_conformance_suite(store).await;
    eprintln!(
        "conformance suite against MinIO ({label}): {:.2}s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_and_without_the_retry_wrapper() {
    let Some(minio) = Minio::start("conformance_with_and_without_the_retry_wrapper") else {
        return;
    };
    minio.create_bucket("conformance");

    timed_suite(
        "bare, prefix repo/",
        &store(minio.s3_config("conformance", "repo/")),
    )
    .await;

    let wrapped = RetryingStore::new(
        Arc::new(store(minio.s3_config("conformance", "wrapped/"))),
        RetryPolicy {
            max_elapsed: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
    );
    timed_suite("retrying wrapper, prefix wrapped/", &wrapped).await;

    // No prefix at all, small listing pages (continuation tokens) and multipart uploads for the
    // suite's 5 MiB blob.
    let mut config = minio.s3_config("conformance", "");
    config.tuning.list_page_size = 7;
    config.tuning.multipart_threshold = 1024 * 1024;
    config.tuning.multipart_part_size = 5 * 1024 * 1024;
    // The other runs' keys lie under "repo/" and "wrapped/", which a "/"-delimited listing
    // does not show, so the store looks empty as the suite requires.
    let bare = store(config);
    timed_suite("no prefix, 7-key pages, multipart", &bare).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_are_plain_strings_as_in_kopia() {
    let Some(minio) = Minio::start("prefixes_are_plain_strings_as_in_kopia") else {
        return;
    };
    minio.create_bucket("prefixes");
    // kopia prepends the prefix as is: "kmover-" is not a directory.
    let dashed = store(minio.s3_config("prefixes", "kmover-"));
    let slashed = store(minio.s3_config("prefixes", "kmover/"));
    let whole = store(minio.s3_config("prefixes", ""));
    dashed.put("p1", b"dashed".to_vec()).await.unwrap();
    slashed.put("p1", b"slashed".to_vec()).await.unwrap();

    let mut keys: Vec<String> = whole
        .list("kmover-")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    keys.sort();
    assert_eq!(keys, ["kmover-p1"]);
    // Listing uses "/" as delimiter, as kopia does: blobs under a deeper prefix stay hidden.
    let top: Vec<String> = whole
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(top, ["kmover-p1"]);
    assert_eq!(slashed.get("p1").await.unwrap(), b"slashed");
    assert_eq!(dashed.get("p1").await.unwrap(), b"dashed");
    assert_eq!(whole.get("kmover-p1").await.unwrap(), b"dashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_config_is_hidden_and_picks_storage_classes() {
    let Some(minio) = Minio::start("storage_config_is_hidden_and_picks_storage_classes") else {
        return;
    };
    minio.create_bucket("classes");
    let writer = store(minio.s3_config("classes", "r/"));
    writer
        .put(
            ".storageconfig",
            br#"{"blobOptions":[{"prefix":"p","storageClass":"REDUCED_REDUNDANCY"},{"prefix":"q","storageClass":"NO_SUCH_CLASS"}]}"#
                .to_vec(),
        )
        .await
        .unwrap();

    // A fresh store reads `.storageconfig` on first use.
    let s = store(minio.s3_config("classes", "r/"));
    assert!(
        s.list("").await.unwrap().is_empty(),
        ".storageconfig must not be listed"
    );
    s.put("p1", b"reduced redundancy".to_vec()).await.unwrap();
    s.put("x1", b"default class".to_vec()).await.unwrap();
    // MinIO refuses unknown storage classes: proof that the header is sent.
    let err = s.put("q1", b"bad class".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("InvalidStorageClass"), "{err}");
    assert!(!err.is_transient());
    let ids: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_precisely() {
    let Some(minio) = Minio::start("failures_are_reported_precisely") else {
        return;
    };
    minio.create_bucket("present");

    // A missing bucket is an error, never "blob not found".
    let missing = store(minio.s3_config("no-such-bucket", "p/"));
    let err = missing.get("kopia.repository").await.unwrap_err();
    assert!(!err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");

    // Wrong credentials: permanent, and the secret stays out of the message.
    let mut config = minio.s3_config("present", "p/");
    config.secret_access_key = "wrong-secret-key-0123456789".into();
    let err = store(config).list("").await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("403") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-key-0123456789"), "{text}");

    let mut config = minio.s3_config("present", "p/");
    config.session_token = "not-a-real-session-token-abcdef".into();
    let err = store(config).list("").await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("not-a-real-session-token-abcdef"), "{text}");
    assert!(!text.contains(minio::ROOT_PASSWORD), "{text}");

    // Nothing listens on the port any more: a transient error naming the endpoint; through the
    // wrapper it gives up within its bound.
    let port = minio.port();
    let config = minio.s3_config("present", "p/");
    drop(minio);
    let wrapped = RetryingStore::new(
        Arc::new(store(config)),
        RetryPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(2),
            max_concurrency: 4,
        },
    );
    let started = Instant::now();
    let err = wrapped.put("p1", b"x".to_vec()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let text = err.to_string();
    assert!(
        err.is_transient()
            && text.contains(&format!("http://127.0.0.1:{port}/present/p/"))
            && text.contains("gave up after"),
        "{text}"
    );
    eprintln!("unreachable endpoint: gave up after {elapsed:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_creation_is_idempotent_and_missing_blobs_are_not_found() {
    let Some(minio) = Minio::start("bucket_creation_is_idempotent") else {
        return;
    };
    minio.create_bucket("twice");
    minio.create_bucket("twice");
    let s = store(minio.s3_config("twice", ""));
    assert!(matches!(s.get("nothing").await, Err(BlobError::NotFound(id)) if id == "nothing"));
    s.delete("nothing").await.unwrap();
    assert_eq!(s.describe(), "s3://twice/");
}

/// A private CA and a certificate it issued for 127.0.0.1.
fn private_pki() -> minio::TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kmover test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    minio::TlsFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_without_verification() {
    let pki = private_pki();
    let Some(minio) = Minio::start_tls("tls_with_a_private_ca", &pki) else {
        return;
    };
    minio.create_bucket("secure");
    let trusted = store(minio.s3_config("secure", "tls/"));
    trusted.put("p1", b"over TLS".to_vec()).await.unwrap();
    assert_eq!(trusted.get("p1").await.unwrap(), b"over TLS");
    assert_eq!(trusted.list("p").await.unwrap().len(), 1);

    // The system roots do not know the private CA: a permanent error about the certificate.
    let mut config = minio.s3_config("secure", "tls/");
    config.root_ca_pem.clear();
    let err = store(config.clone()).get("p1").await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // --disable-tls-verification accepts any certificate.
    config.disable_tls_verification = true;
    assert_eq!(store(config).get("p1").await.unwrap(), b"over TLS");

    // Plain HTTP to a TLS port fails rather than talking past it.
    let mut config = minio.s3_config("secure", "tls/");
    config.disable_tls = true;
    config.root_ca_pem.clear();
    assert!(store(config).get("p1").await.is_err());
}
