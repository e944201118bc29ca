//! Test-only crash points (compiled with the `testing` feature only): with
//! `KMOVER_TEST_CRASH_AT=<point>:<n>` the process kills itself with SIGKILL — no destructors, no
//! flushing, exactly `kill -9` — the `n`th time it reaches `point`. The crash tests use this to
//! land a crash inside a flush or an index write instead of wherever a timer happens to fire.
//!
//! Points are storage operations of the opened repository, named `<when>-<op>-<class>`:
//! `before-put-p`, `during-put-x`, `after-put-q`, `before-delete-s`, `get-p`, ... where `class`
//! is the blob ID's first letter (`p`/`q` packs, `x` index, `s` session, `k` for `kopia.*`).
//! `during-put` starts the write and crashes while it is in flight; a blob the store takes in
//! pieces (a filesystem pack) crashes after its first piece, `before-put`/`after-put` surround
//! its commit.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kmover_blob::{BlobBytes, BlobMetadata, BlobStore, BlobWriter, DynBlobStore, Result};

pub const CRASH_AT_VAR: &str = "KMOVER_TEST_CRASH_AT";

struct Armed {
    point: String,
    n: u32,
    hits: AtomicU32,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Reads `KMOVER_TEST_CRASH_AT`; says so on stderr when armed (the tests probe for it).
pub fn arm_from_env() -> anyhow::Result<()> {
    let armed = match std::env::var(CRASH_AT_VAR) {
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{CRASH_AT_VAR} is not valid UTF-8")
        }
        Ok(text) => {
            let parsed = text
                .rsplit_once(':')
                .and_then(|(point, n)| Some((point, n.parse::<u32>().ok()?)))
                .filter(|(point, _)| !point.is_empty());
            let Some((point, n)) = parsed else {
                anyhow::bail!("{CRASH_AT_VAR}={text:?}: expected <point>:<occurrence>");
            };
            eprintln!("kmover: crash hook armed at {point}:{n}");
            Some(Armed {
                point: point.to_string(),
                n,
                hits: AtomicU32::new(0),
            })
        }
    };
    let _ = ARMED.set(armed);
    Ok(())
}

fn armed() -> Option<&'static Armed> {
    ARMED.get().and_then(Option::as_ref)
}

/// Whether reaching `point` now is the armed occurrence.
fn is_crash_point(point: &str) -> bool {
    armed().is_some_and(|a| {
        a.point == point && a.n > 0 && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.n
    })
}

fn crash(point: &str) -> ! {
    let n = armed().map_or(0, |a| a.n);
    eprintln!("kmover: crashing at {point}:{n}");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

fn reach(point: &str) {
    if is_crash_point(point) {
        crash(point);
    }
}

fn class(id: &str) -> &str {
    if id.starts_with("kopia.") {
        "k"
    } else {
        id.get(..1).unwrap_or("")
    }
}

/// `store` with the crash points, when a crash is armed; `store` itself otherwise.
pub fn wrap(store: DynBlobStore) -> DynBlobStore {
    match armed() {
        Some(_) => std::sync::Arc::new(CrashingStore { inner: store }),
        None => store,
    }
}

#[derive(Debug)]
struct CrashingStore {
    inner: DynBlobStore,
}

#[async_trait]
impl BlobStore for CrashingStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        reach(&format!("get-{}", class(id)));
        self.inner.get(id).await
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        reach(&format!("get-{}", class(id)));
        self.inner.get_range(id, offset, length).await
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        self.inner.metadata(id).await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        let c = class(id);
        reach(&format!("before-put-{c}"));
        let during = format!("during-put-{c}");
        if is_crash_point(&during) {
            let inner = self.inner.clone();
            let blob = id.to_string();
            tokio::spawn(async move { inner.put(&blob, data).await });
            // Long enough for the write to be under way, short of a pack's full upload.
            tokio::time::sleep(Duration::from_millis(2)).await;
            crash(&during);
        }
        self.inner.put(id, data).await?;
        reach(&format!("after-put-{c}"));
        Ok(())
    }

    async fn start_blob(&self, id: &str) -> Result<Option<Box<dyn BlobWriter>>> {
        let class = class(id).to_string();
        Ok(self.inner.start_blob(id).await?.map(|inner| {
            Box::new(CrashingWriter {
                inner,
                class,
                started: false,
            }) as Box<dyn BlobWriter>
        }))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let c = class(id);
        reach(&format!("before-delete-{c}"));
        self.inner.delete(id).await?;
        reach(&format!("after-delete-{c}"));
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        self.inner.list(prefix).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A blob written in pieces, with the put crash points: `during-put` once its first piece is
/// written (the partial blob is on disk under its temporary name), `before-put` and `after-put`
/// around its commit.
#[derive(Debug)]
struct CrashingWriter {
    inner: Box<dyn BlobWriter>,
    class: String,
    started: bool,
}

impl BlobWriter for CrashingWriter {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.inner.append(data)?;
        if !self.started {
            self.started = true;
            reach(&format!("during-put-{}", self.class));
        }
        Ok(())
    }

    fn read_at(&self, offset: u64, length: u64) -> Result<BlobBytes> {
        self.inner.read_at(offset, length)
    }

    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let class = self.class.clone();
        reach(&format!("before-put-{class}"));
        self.inner.commit()?;
        reach(&format!("after-put-{class}"));
        Ok(())
    }
}
