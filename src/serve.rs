//! `serve`: the conditional-restore probe over HTTP, a drop-in for the pvc-plumber service.
//!
//! `GET /exists/{namespace}/{pvc}` names a snapshot source through the identity template
//! (default `{pvc}-backup@{namespace}:/data`) and answers pvc-plumber's JSON: 200 with
//! `decision` `restore` or `fresh` when the repository was read, 503 with `unknown` when it could
//! not be (fail closed: an admission policy must then refuse, never start the volume empty).
//! `/healthz`, `/readyz` (503 until the repository opens) and `/metrics` complete the set.
//!
//! The repository is opened anew for each reading of its snapshot list, which is then reused
//! for `--cache-ttl`; new snapshots, a changed password and a repaired storage are all picked up
//! without a restart.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::commands::exists::{Answer, Inventory, SourceQuery, backend_name};
use crate::metrics::text::{Exposition, Labels};
use crate::{connection, logging};

/// A slow or silent client cannot hold a connection open forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `{namespace}` and `{pvc}` placeholders in a `user@host:path` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityTemplate {
    text: String,
}

impl IdentityTemplate {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .with_context(|| format!("identity template {text:?}: unclosed '{{'"))?;
            let name = &rest[open + 1..open + close];
            if name != "namespace" && name != "pvc" {
                bail!(
                    "identity template {text:?}: unknown placeholder {{{name}}}; use {{namespace}} and {{pvc}}"
                );
            }
            rest = &rest[open + close + 1..];
        }
        let template = IdentityTemplate {
            text: text.to_string(),
        };
        SourceQuery::parse(&template.render("namespace", "pvc")).with_context(|| {
            format!("identity template {text:?} does not make a user@host[:path] source")
        })?;
        Ok(template)
    }

    pub fn render(&self, namespace: &str, pvc: &str) -> String {
        self.text
            .replace("{namespace}", namespace)
            .replace("{pvc}", pvc)
    }
}

/// A Kubernetes DNS-1123 label (namespaces) or subdomain (PVC names).
fn valid_k8s_name(name: &str, max: usize, dots: bool) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || (dots && *b == b'.')
        })
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Opens the repository and reads its snapshot list on a blocking thread: the repository's
/// index-loading future is not provably `Send` (a rustc limitation with closures in
/// `stream::iter(…).buffered`), so it cannot run in a spawned task of hyper's service.
async fn read_inventory(global: GlobalArgs) -> anyhow::Result<Inventory> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            let c = connection::open_connected(&global).await?;
            Inventory::load(&c.repo).await
        })
    })
    .await
    .context("the repository reader stopped")?
}

struct State {
    global: GlobalArgs,
    template: IdentityTemplate,
    backend: String,
    cache_ttl: Duration,
    request_timeout: Duration,
    /// The latest reading; the lock also makes concurrent requests share one reading.
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Inventory>)>>,
    requests: AtomicU64,
    request_errors: AtomicU64,
    decisions: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl State {
    async fn inventory(&self) -> Result<Arc<Inventory>, String> {
        let mut cached = self.cache.lock().await;
        if let Some((at, inventory)) = cached.as_ref()
            && at.elapsed() < self.cache_ttl
        {
            return Ok(inventory.clone());
        }
        let inventory = Arc::new(
            read_inventory(self.global.clone())
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
        *cached = Some((Instant::now(), inventory.clone()));
        Ok(inventory)
    }

    async fn inventory_in_time(&self) -> Result<Arc<Inventory>, String> {
        match tokio::time::timeout(self.request_timeout, self.inventory()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "reading the repository took longer than {:?}",
                self.request_timeout
            )),
        }
    }

    async fn exists(&self, namespace: &str, pvc: &str) -> (StatusCode, Answer) {
        let source = self.template.render(namespace, pvc);
        let mut answer = match SourceQuery::parse(&source) {
            Err(e) => Answer::unknown(&self.backend, &source, format!("{e:#}")),
            Ok(query) => match self.inventory_in_time().await {
                Ok(inventory) => {
                    Answer::decided(&self.backend, &query, inventory.find(&query).as_ref())
                }
                Err(e) => Answer::unknown(&self.backend, &source, e),
            },
        };
        answer.namespace = Some(namespace.to_string());
        answer.pvc = Some(pvc.to_string());
        *self
            .decisions
            .lock()
            .expect("decision counts lock")
            .entry(answer.decision)
            .or_default() += 1;
        tracing::info!(
            namespace,
            pvc,
            source = answer.source.as_str(),
            decision = answer.decision,
            error = answer.error.as_deref().unwrap_or_default(),
            "backup check"
        );
        let status = if answer.authoritative {
            StatusCode::OK
        } else {
            self.request_errors.fetch_add(1, Ordering::Relaxed);
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, answer)
    }

    fn metrics(&self) -> String {
        let mut e = Exposition::default();
        e.add(
            "kmover_serve_requests_total",
            "Backup check requests received.",
            "counter",
            Labels::new(),
            self.requests.load(Ordering::Relaxed) as f64,
        );
        e.add(
            "kmover_serve_request_errors_total",
            "Backup check requests that were malformed or could not be decided.",
            "counter",
            Labels::new(),
            self.request_errors.load(Ordering::Relaxed) as f64,
        );
        for decision in ["restore", "fresh", "unknown"] {
            let count = self
                .decisions
                .lock()
                .expect("decision counts lock")
                .get(decision)
                .copied()
                .unwrap_or(0);
            e.add(
                "kmover_serve_checks_total",
                "Backup check results by decision.",
                "counter",
                Labels::from([("decision".to_string(), decision.to_string())]),
                count as f64,
            );
        }
        e.render()
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn respond_json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    respond(status, "application/json", text)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is supported"}),
        );
    }
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/exists/") {
        state.requests.fetch_add(1, Ordering::Relaxed);
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, pvc) = match parts.as_slice() {
            [ns, pvc] if valid_k8s_name(ns, 63, false) && valid_k8s_name(pvc, 253, true) => {
                (*ns, *pvc)
            }
            _ => {
                state.request_errors.fetch_add(1, Ordering::Relaxed);
                return respond_json(
                    StatusCode::BAD_REQUEST,
                    &Answer::unknown(
                        &state.backend,
                        "",
                        "invalid path: expected /exists/{namespace}/{pvc} with Kubernetes names"
                            .into(),
                    ),
                );
            }
        };
        let (status, answer) = state.exists(namespace, pvc).await;
        return respond_json(status, &answer);
    }
    match path {
        "/healthz" => respond_json(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => match state.inventory_in_time().await {
            Ok(_) => respond_json(StatusCode::OK, &json!({"status": "ok"})),
            Err(e) => respond_json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready", "error": e}),
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics(),
        ),
        _ => respond_json(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

pub async fn run(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let template = IdentityTemplate::parse(&args.identity_template)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let state = Arc::new(State {
        global: global.clone(),
        template,
        backend: backend_name(global),
        cache_ttl: args.cache_ttl,
        request_timeout: args.request_timeout,
        cache: tokio::sync::Mutex::new(None),
        requests: AtomicU64::new(0),
        request_errors: AtomicU64::new(0),
        decisions: std::sync::Mutex::new(BTreeMap::new()),
    });
    logging::status(&format!(
        "Serving backup checks on http://{address}/exists/{{namespace}}/{{pvc}} for {}",
        args.identity_template
    ));
    if let Err(e) = state.inventory_in_time().await {
        logging::status(&format!(
            "WARNING the repository cannot be read yet (answering \"unknown\" until it can): {e}"
        ));
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    logging::status("Stopped serving");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = IdentityTemplate::parse("{pvc}-backup@{namespace}:/data").unwrap();
        assert_eq!(t.render("ns", "data"), "data-backup@ns:/data");
        assert!(IdentityTemplate::parse("{pvc}@{cluster}:/data").is_err());
        assert!(IdentityTemplate::parse("{pvc}@{namespace").is_err());
        assert!(IdentityTemplate::parse("{pvc}-backup").is_err(), "no host");
        assert!(
            IdentityTemplate::parse("{pvc}@{namespace}").is_ok(),
            "any path"
        );
    }

    #[test]
    fn kubernetes_names() {
        assert!(valid_k8s_name("my-ns", 63, false));
        assert!(valid_k8s_name("data.pvc-1", 253, true));
        for bad in ["", "-a", "a-", "A", "a_b", "a:b", "a@b", "a%2f", "a.b"] {
            assert!(!valid_k8s_name(bad, 63, false), "{bad}");
        }
        assert!(!valid_k8s_name(&"a".repeat(64), 63, false));
    }
}
