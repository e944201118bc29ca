//! Pushing to a Prometheus Pushgateway: `POST /metrics/job/<job>/<label>@base64/<value>…`.
//! POST replaces only the metric names it carries, so a failed run, which carries no last-success
//! time, leaves the previous one in place.

use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;

const TIMEOUT: Duration = Duration::from_secs(30);

pub fn check_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("--metrics-push-url {url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("--metrics-push-url {url:?}: expected http://host:port or https://host:port");
    }
    Ok(())
}

/// The grouping-key path; every value is base64url-encoded, as the Pushgateway allows, so
/// slashes in source paths are safe.
pub fn group_path(job: &str, group: &[(&str, &str)]) -> String {
    let mut path = format!("/metrics/job/{job}");
    for (label, value) in group {
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(value.as_bytes());
        // An empty value must still be a path segment: the Pushgateway reads `=` as "".
        let encoded = if encoded.is_empty() {
            "=".to_string()
        } else {
            encoded
        };
        path.push_str(&format!("/{label}@base64/{encoded}"));
    }
    path
}

pub async fn push(
    base_url: &str,
    job: &str,
    group: &[(&str, &str)],
    body: String,
) -> anyhow::Result<()> {
    let url = format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        group_path(job, group)
    );
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot set up an HTTP client")?;
    let response = client
        .post(&url)
        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        .body(body)
        .send()
        .await
        .with_context(|| format!("push to {url} failed"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "push to {url} answered {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_key_is_base64url() {
        assert_eq!(
            group_path(
                "kmover",
                &[("operation", "backup"), ("source", "u@h:/a/b?")]
            ),
            "/metrics/job/kmover/operation@base64/YmFja3Vw/source@base64/dUBoOi9hL2I_"
        );
        assert_eq!(group_path("j", &[("x", "")]), "/metrics/job/j/x@base64/=");
    }
}
