//! The one place where blob operations are retried: exponential backoff with jitter for
//! transient failures ([`BlobError::is_transient`]), within a bounded total time, and at most
//! `max_concurrency` operations in flight against the inner store.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use kmover_blob::{BlobStore, memory::MemoryStore, retry::{RetryPolicy, RetryingStore}};
//! let store = RetryingStore::new(Arc::new(MemoryStore::new()), RetryPolicy::default());
//! store.put("kopia.repository", b"{}".to_vec()).await.unwrap();
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::{BlobBytes, BlobError, BlobMetadata, BlobStore, DynBlobStore, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff before the second attempt; it doubles per attempt up to `max_delay`.
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// No attempt starts later than this after the first one.
    pub max_elapsed: Duration,
    /// Operations in flight against the inner store at once.
    pub max_concurrency: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(15),
            max_elapsed: Duration::from_secs(120),
            max_concurrency: 32,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` >= 1): "equal jitter", i.e. uniformly
    /// between half and all of the exponential step, so that clients failing together spread out.
    pub fn delay_after(&self, attempt: u32, random: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let step = self
            .initial_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        let half = step / 2;
        let spread = (step - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }
}

#[derive(Debug)]
pub struct RetryingStore {
    inner: DynBlobStore,
    policy: RetryPolicy,
    permits: Semaphore,
}

impl RetryingStore {
    pub fn new(inner: DynBlobStore, policy: RetryPolicy) -> Self {
        let permits = Semaphore::new(policy.max_concurrency.max(1));
        RetryingStore {
            inner,
            policy,
            permits,
        }
    }

    pub fn inner(&self) -> &DynBlobStore {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn run<T, F, Fut>(&self, op: &'static str, id: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| BlobError::Other("the retrying store was shut down".into()))?;
                attempt().await
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) if err.is_transient() => err,
                Err(err) => return Err(err),
            };
            let elapsed = started.elapsed();
            let remaining = self.policy.max_elapsed.saturating_sub(elapsed);
            if remaining.is_zero() {
                return Err(gave_up(err, attempts, elapsed));
            }
            // The last attempt starts when the time is up rather than giving the time away.
            let delay = self
                .policy
                .delay_after(attempts, random_u64())
                .min(remaining);
            tracing::debug!(op, id, attempts, delay_ms = delay.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

fn random_u64() -> u64 {
    // Jitter only needs to differ between clients; a failed read of randomness is no reason to fail.
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
    })
}

/// The last error, with how long and how often it was tried.
fn gave_up(err: BlobError, attempts: u32, elapsed: Duration) -> BlobError {
    match err {
        BlobError::Remote {
            op,
            id,
            endpoint,
            status,
            transient,
            message,
        } => BlobError::Remote {
            op,
            id,
            endpoint,
            status,
            transient,
            message: format!(
                "{message} (gave up after {attempts} attempts in {:.1}s)",
                elapsed.as_secs_f64()
            ),
        },
        other => other,
    }
}

#[async_trait]
impl BlobStore for RetryingStore {
    async fn get(&self, id: &str) -> Result<BlobBytes> {
        self.run("get", id, || self.inner.get(id)).await
    }

    async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
        self.run("get range", id, || self.inner.get_range(id, offset, length))
            .await
    }

    async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
        self.run("metadata", id, || self.inner.metadata(id)).await
    }

    async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
        // Each attempt consumes its bytes; the copy is cheap next to a network round trip.
        self.run("put", id, || self.inner.put(id, data.clone()))
            .await
    }

    async fn put_shared(&self, id: &str, data: Arc<BlobBytes>) -> Result<()> {
        // Every attempt shares the caller's bytes.
        self.run("put", id, || self.inner.put_shared(id, data.clone()))
            .await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.run("delete", id, || self.inner.delete(id)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::memory::MemoryStore;

    /// Fails the first `failures` calls of every operation with `error`, counting calls and the
    /// most calls ever in flight at once.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryStore,
        failures: usize,
        calls: AtomicUsize,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        error: fn() -> BlobError,
    }

    impl Flaky {
        fn new(failures: usize, error: fn() -> BlobError) -> Self {
            Flaky {
                inner: MemoryStore::new(),
                failures,
                calls: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                error,
            }
        }

        async fn call<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let result = if n < self.failures {
                Err((self.error)())
            } else {
                f.await
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        }
    }

    #[async_trait]
    impl BlobStore for Flaky {
        async fn get(&self, id: &str) -> Result<BlobBytes> {
            self.call(self.inner.get(id)).await
        }
        async fn get_range(&self, id: &str, offset: u64, length: u64) -> Result<BlobBytes> {
            self.call(self.inner.get_range(id, offset, length)).await
        }
        async fn metadata(&self, id: &str) -> Result<BlobMetadata> {
            self.call(self.inner.metadata(id)).await
        }
        async fn put(&self, id: &str, data: BlobBytes) -> Result<()> {
            self.call(self.inner.put(id, data)).await
        }
        async fn delete(&self, id: &str) -> Result<()> {
            self.call(self.inner.delete(id)).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<BlobMetadata>> {
            self.call(self.inner.list(prefix)).await
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    fn unavailable() -> BlobError {
        BlobError::Remote {
            op: "put",
            id: "p1".into(),
            endpoint: "http://127.0.0.1:1/b/".into(),
            status: Some(503),
            transient: true,
            message: "HTTP 503 Service Unavailable: SlowDown".into(),
        }
    }

    fn forbidden() -> BlobError {
        BlobError::Remote {
            op: "put",
            id: "p1".into(),
            endpoint: "http://127.0.0.1:1/b/".into(),
            status: Some(403),
            transient: false,
            message: "HTTP 403 Forbidden: AccessDenied".into(),
        }
    }

    fn quick_policy(max_elapsed_ms: u64) -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            max_elapsed: Duration::from_millis(max_elapsed_ms),
            max_concurrency: 4,
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let flaky = Arc::new(Flaky::new(5, unavailable));
        let store = RetryingStore::new(flaky.clone(), quick_policy(10_000));
        store.put("p1", b"data".to_vec()).await.unwrap();
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 6);
        assert_eq!(store.get("p1").await.unwrap(), b"data");
    }

    #[tokio::test]
    async fn permanent_failures_and_not_found_are_not_retried() {
        let flaky = Arc::new(Flaky::new(1, forbidden));
        let store = RetryingStore::new(flaky.clone(), quick_policy(10_000));
        let err = store.put("p1", vec![1]).await.unwrap_err();
        assert!(matches!(
            err,
            BlobError::Remote {
                status: Some(403),
                ..
            }
        ));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);

        let before = flaky.calls.load(Ordering::SeqCst);
        assert!(store.get("missing").await.unwrap_err().is_not_found());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn retrying_stops_within_the_time_bound_and_says_so() {
        let flaky = Arc::new(Flaky::new(usize::MAX, unavailable));
        let store = RetryingStore::new(flaky.clone(), quick_policy(150));
        let started = Instant::now();
        let err = store.put("p1", vec![1]).await.unwrap_err();
        let elapsed = started.elapsed();
        // The whole budget is used, and little more.
        assert!(
            elapsed >= Duration::from_millis(150) && elapsed < Duration::from_millis(400),
            "{elapsed:?}"
        );
        let attempts = flaky.calls.load(Ordering::SeqCst);
        assert!(attempts > 3, "only {attempts} attempts");
        let text = err.to_string();
        assert!(
            text.contains("put \"p1\" at http://127.0.0.1:1/b/")
                && text.contains("HTTP 503")
                && text.contains(&format!("gave up after {attempts} attempts")),
            "{text}"
        );
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let flaky = Arc::new(Flaky::new(0, unavailable));
        let store = RetryingStore::new(flaky.clone(), quick_policy(1000));
        let puts = (0..40).map(|i| store.put_owned(format!("p{i}")));
        for result in futures::future::join_all(puts).await {
            result.unwrap();
        }
        let max = flaky.max_in_flight.load(Ordering::SeqCst);
        assert!((2..=4).contains(&max), "{max} in flight at once");
        assert_eq!(store.list("p").await.unwrap().len(), 40);
    }

    impl RetryingStore {
        async fn put_owned(&self, id: String) -> Result<()> {
            self.put(&id, id.as_bytes().to_vec()).await
        }
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let policy = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_after(1, 0), Duration::from_millis(50));
        assert_eq!(
            policy.delay_after(1, u64::MAX),
            Duration::from_millis(50) + Duration::from_nanos(u64::MAX % 50_000_001)
        );
        assert!(policy.delay_after(1, 49_999_999) <= Duration::from_millis(100));
        assert_eq!(policy.delay_after(2, 0), Duration::from_millis(100));
        assert_eq!(policy.delay_after(4, 0), Duration::from_millis(400));
        assert_eq!(policy.delay_after(10, 0), Duration::from_secs(1));
        assert_eq!(policy.delay_after(1000, 0), Duration::from_secs(1));
        assert!(policy.delay_after(1000, u64::MAX) <= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn conformance_through_the_wrapper() {
        let store = RetryingStore::new(Arc::new(Flaky::new(3, unavailable)), quick_policy(10_000));
        crate::conformance::run_conformance_suite(&store).await;
    }
}
