//! The VolSync mover's repository handling, checklist items 39–47 of spec §7: S3 locations
//! against MinIO (prefix, bucket override, endpoint, TLS with a custom CA), bad locations, a
//! wrong password, a persistent cache (also one written by real kopia), the manual config and
//! the policy files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::KopiaVersion;
use common::minio::{self, Minio};
use common::volsync::{PASSWORD, Pod, snapshots};

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn s3_env(minio: &Minio, repository: &str) -> Vec<(String, String)> {
    vec![
        ("KOPIA_REPOSITORY".into(), repository.into()),
        ("KOPIA_S3_ENDPOINT".into(), minio.endpoint()),
        ("KOPIA_S3_DISABLE_TLS".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), minio::ROOT_USER.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), minio::ROOT_PASSWORD.into()),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Object keys MinIO stores for `bucket` (its single-drive layout: one directory per object).
fn objects(minio: &Minio, bucket: &str) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.join("xl.meta").is_file() {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            } else if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let base = minio.data_dir().join(bucket);
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

/// Items 39, 40, 41: the URL's prefix (normalised), the bucket override, the endpoint variable
/// precedence, plain HTTP only with DISABLE_TLS; then a restore from S3.
#[test]
fn s3_locations() {
    let Some(minio) = Minio::start("s3_locations") else {
        return;
    };
    for bucket in ["bkt", "other"] {
        minio.create_bucket(bucket);
    }
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"s3 data");
    pod.backup(&as_refs(&s3_env(&minio, "s3://bkt/app")))
        .assert_code(0);
    assert!(objects(&minio, "bkt").contains(&"app/kopia.repository".to_string()));

    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"s3 data");
    pod.backup(&as_refs(&s3_env(&minio, "s3://bkt/a//b")))
        .assert_code(0);
    assert!(objects(&minio, "bkt").contains(&"a/b/kopia.repository".to_string()));

    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"s3 data");
    let mut env = s3_env(&minio, "s3://bkt/app");
    env.push(("KOPIA_S3_BUCKET".into(), "other".into()));
    // AWS_S3_ENDPOINT loses to KOPIA_S3_ENDPOINT; an unreachable one would fail the run.
    env.push(("AWS_S3_ENDPOINT".into(), "127.0.0.1:1".into()));
    pod.backup(&as_refs(&env))
        .assert_code(0)
        .assert_contains("=== S3 PREFIX CONFLICT WARNING ===");
    assert!(objects(&minio, "other").contains(&"app/kopia.repository".to_string()));
    pod.restore(&as_refs(&env)).assert_code(0);
    assert_eq!(
        std::fs::read(pod.path("/restore/data/a.txt")).unwrap(),
        b"s3 data"
    );

    // The other endpoint variable alone, with an http:// scheme (stripped, TLS kept off).
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let mut env: Vec<(String, String)> = s3_env(&minio, "s3://bkt")
        .into_iter()
        .filter(|(k, _)| k != "KOPIA_S3_ENDPOINT" && k != "KOPIA_S3_DISABLE_TLS")
        .collect();
    env.push((
        "AWS_S3_ENDPOINT".into(),
        format!("http://{}", minio.endpoint()),
    ));
    env.push(("AWS_S3_DISABLE_TLS".into(), "true".into()));
    pod.backup(&as_refs(&env)).assert_code(0);
    assert!(objects(&minio, "bkt").contains(&"kopia.repository".to_string()));
    // Without DISABLE_TLS the mover speaks TLS to a plain-HTTP server: it must fail.
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    env.retain(|(k, _)| k != "AWS_S3_DISABLE_TLS");
    env.push(("KOPIA_REPOSITORY".into(), "s3://bkt/tls-expected".into()));
    pod.backup(&as_refs(&env)).assert_code(1);
    assert!(
        !objects(&minio, "bkt")
            .iter()
            .any(|o| o.starts_with("tls-expected/"))
    );
}

fn private_pki() -> minio::TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kmover mover test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    minio::TlsFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    }
}

/// Item 42: a private-CA MinIO works with CUSTOM_CA (and KOPIA_CUSTOM_CA, Q-10), not without.
#[test]
fn s3_with_a_custom_ca() {
    let pki = private_pki();
    let Some(minio) = Minio::start_tls("s3_with_a_custom_ca", &pki) else {
        return;
    };
    minio.create_bucket("secure");
    let env: Vec<(String, String)> = s3_env(&minio, "s3://secure/tls")
        .into_iter()
        .filter(|(k, _)| k != "KOPIA_S3_DISABLE_TLS")
        .collect();
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"tls");
    pod.backup(&as_refs(&env)).assert_code(1);
    write(&pod.path("/customCA/ca.crt"), pki.ca_pem.as_bytes());
    let mut with_ca = env.clone();
    with_ca.push(("CUSTOM_CA".into(), "/customCA/ca.crt".into()));
    pod.backup(&as_refs(&with_ca)).assert_code(0);
    let mut maintenance_style = env.clone();
    maintenance_style.push(("KOPIA_CUSTOM_CA".into(), "/customCA/ca.crt".into()));
    pod.restore(&as_refs(&maintenance_style)).assert_code(0);
    assert_eq!(
        std::fs::read(pod.path("/restore/data/a.txt")).unwrap(),
        b"tls"
    );
}

/// Item 43: bad locations fail before anything is written.
#[test]
fn bad_locations() {
    let Some(minio) = Minio::start("bad_locations") else {
        return;
    };
    minio.create_bucket("bkt");
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&as_refs(&s3_env(&minio, "s3://bkt/bad prefix")))
        .assert_code(1)
        .assert_contains("ERROR: Invalid S3 prefix format");
    assert!(objects(&minio, "bkt").is_empty());
    pod.backup(&[("KOPIA_REPOSITORY", "filesystem://relative")])
        .assert_code(1)
        .assert_contains("Invalid filesystem URL format");
    pod.backup(&[("KOPIA_REPOSITORY", "gcs://x")])
        .assert_code(1)
        .assert_contains("ERROR: No repository configuration found")
        .assert_summary("FAILURE");
    pod.backup(&[("KOPIA_REPOSITORY", "gcs://x"), ("KOPIA_GCS_BUCKET", "g")])
        .assert_code(1)
        .assert_contains("not supported yet")
        .assert_contains("KOPIA_GCS_BUCKET");
    // A directory with foreign data is not turned into a repository.
    write(&pod.path("/mnt/repo/precious.txt"), b"not a repository");
    pod.backup(&[])
        .assert_code(1)
        .assert_contains("not a Kopia repository");
    assert_eq!(std::fs::read_dir(pod.path("/mnt/repo")).unwrap().count(), 1);
}

fn repository_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            } else {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Item 44: a wrong password fails and leaves every repository file as it was.
#[test]
fn wrong_password_never_reinitialises() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[]).assert_code(0);
    let before = repository_bytes(&pod.path("/mnt/repo"));
    pod.backup(&[("KOPIA_PASSWORD", "not-the-password")])
        .assert_code(1)
        .assert_summary("FAILURE");
    pod.restore(&[("KOPIA_PASSWORD", "not-the-password")])
        .assert_code(1);
    assert_eq!(repository_bytes(&pod.path("/mnt/repo")), before);
    assert_eq!(snapshots(&pod).len(), 1);
}

/// Item 45 and Q-15: a persistent cache from a previous run, or from real kopia 0.22.3, is
/// fine; and a changed repository URL is followed, not the cached connection.
#[test]
fn persistent_cache_from_a_previous_run_or_from_kopia() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[]).assert_code(0);
    pod.backup(&[]).assert_code(0);
    // The repository moves; the cache still names the old one.
    pod.backup(&[("KOPIA_REPOSITORY", "filesystem:///mnt/moved")])
        .assert_code(0);
    assert!(pod.path("/mnt/moved/kopia.repository.f").is_file());

    let kopia = match common::locate_kopia(KopiaVersion::V0_22) {
        Ok(kopia) => kopia,
        Err(reason) => {
            common::skip_or_fail("persistent_cache_from_kopia", &reason);
            return;
        }
    };
    let config = pod.path("/cache/kopia.config");
    std::fs::remove_file(&config).unwrap();
    let out = std::process::Command::new(kopia)
        .arg("--config-file")
        .arg(&config)
        .args(["repository", "connect", "filesystem", "--path"])
        .arg(pod.path("/mnt/repo"))
        .arg("--cache-directory")
        .arg(pod.path("/cache"))
        .env("KOPIA_PASSWORD", PASSWORD)
        .env("KOPIA_CHECK_FOR_UPDATES", "false")
        .env("KOPIA_LOG_DIR", pod.path("/cache/logs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(config.is_file());
    pod.backup(&[]).assert_code(0);
    assert_eq!(
        snapshots(&pod)
            .iter()
            .filter(|s| common::volsync::source_of(s) == "app@ns1:/data")
            .count(),
        3,
        "two runs before the move, one after kopia's connect"
    );
}

/// Item 46: KOPIA_MANUAL_CONFIG: invalid JSON exits 1 (Q-14); the encryption algorithm is used.
#[test]
fn manual_config() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[("KOPIA_MANUAL_CONFIG", "{not json")])
        .assert_code(1)
        .assert_contains("ERROR: Invalid JSON in KOPIA_MANUAL_CONFIG")
        .assert_summary("FAILURE");
    assert!(!pod.path("/mnt/repo").exists());
    let manual = r#"{"encryption":{"algorithm":"CHACHA20-POLY1305-HMAC-SHA256"},"splitter":{"algorithm":"DYNAMIC-1M-BUZHASH"},"compression":{"algorithm":"zstd","minSize":"x"},"caching":{"maxCacheSize":1048576}}"#;
    pod.backup(&[("KOPIA_MANUAL_CONFIG", manual)])
        .assert_code(0);
    let status = std::process::Command::new(common::volsync::kmover_binary())
        .arg("--config-file")
        .arg(pod.path("/cache/kopia.config"))
        .args(["repository", "status", "--json"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        json["contentFormat"]["encryption"],
        "CHACHA20-POLY1305-HMAC-SHA256"
    );
    assert_eq!(json["objectFormat"]["splitter"], "DYNAMIC-1M-BUZHASH");
}

/// Item 47: policy files: a broken global policy only warns; a good one is applied; the
/// repository config's `enableActions: false` is honoured (Q-13).
#[test]
fn policy_files() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    let files = [
        ("KOPIA_CONFIG_PATH", "/kopia-config"),
        (
            "KOPIA_GLOBAL_POLICY_FILE",
            "/kopia-config/global-policy.json",
        ),
        (
            "KOPIA_REPOSITORY_CONFIG_FILE",
            "/kopia-config/repository.config",
        ),
    ];
    write(&pod.path("/kopia-config/global-policy.json"), b"{broken");
    pod.backup(&files)
        .assert_code(0)
        .assert_contains("ERROR: Invalid JSON in global policy file")
        .assert_contains("Warning: Policy configuration had issues but continuing")
        .assert_summary("SUCCESS");
    write(
        &pod.path("/kopia-config/global-policy.json"),
        br#"{"retention":{"keepDaily":3},"compression":{"compressor":"zstd"},"files":{"ignore":["*.tmp"],"ignoreCacheDirs":false}}"#,
    );
    write(
        &pod.path("/kopia-config/repository.config"),
        br#"{"enableActions":false}"#,
    );
    let marker = pod.path("/tmp/action-ran");
    let action = format!("touch {}", marker.display());
    let mut env = files.to_vec();
    env.push(("KOPIA_BEFORE_SNAPSHOT", &action));
    pod.backup(&env)
        .assert_code(0)
        .assert_contains("Global policy applied successfully")
        .assert_contains("Actions disabled in repository configuration");
    assert!(!marker.exists(), "actions were disabled");
    let shown = std::process::Command::new(common::volsync::kmover_binary())
        .arg("--config-file")
        .arg(pod.path("/cache/kopia.config"))
        .args(["policy", "show", "--global", "--json"])
        .env("KOPIA_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let policy: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(policy["retention"]["keepDaily"], 3, "{policy}");
    assert_eq!(policy["compression"]["compressorName"], "zstd", "{policy}");
}

/// KOPIA_STRUCTURED_REPOSITORY_CONFIG (§2.9): a kopia connection file tried before the
/// repository variables; invalid JSON fails the run.
#[test]
fn structured_repository_config() {
    let pod = Pod::new();
    write(&pod.path("/data/a.txt"), b"x");
    pod.backup(&[("KOPIA_REPOSITORY", "filesystem:///mnt/real")])
        .assert_code(0);
    let config = std::fs::read_to_string(pod.path("/cache/kopia.config")).unwrap();
    std::fs::remove_dir_all(pod.path("/cache")).unwrap();
    std::fs::create_dir_all(pod.path("/cache")).unwrap();
    // The variable names another (absent) location: the structured config wins.
    pod.backup(&[
        ("KOPIA_REPOSITORY", "filesystem:///mnt/elsewhere"),
        ("KOPIA_STRUCTURED_REPOSITORY_CONFIG", &config),
    ])
    .assert_code(0)
    .assert_contains("JSON config connection successful");
    assert!(!pod.path("/mnt/elsewhere").exists());
    assert_eq!(snapshots(&pod).len(), 2);
    pod.backup(&[("KOPIA_STRUCTURED_REPOSITORY_CONFIG", "{oops")])
        .assert_code(1)
        .assert_contains("ERROR: Invalid JSON in KOPIA_STRUCTURED_REPOSITORY_CONFIG");
}
