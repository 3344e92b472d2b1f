//! Shared in-memory state helpers: a poison-tolerant lock and the TTL cache
//! of recently computed figures.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Locks a std mutex, recovering the data if a panicking thread poisoned it:
/// every value behind these locks stays valid between statements.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value recomputed at most once per `ttl` (`0`: on every read).
///
/// Callers that arrive while it is being recomputed wait for that result
/// instead of each recomputing it: under load, one expiry costs one query,
/// not one per waiting request.
pub struct TtlCache<T> {
    ttl: Duration,
    latest: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> TtlCache<T> {
    /// An empty cache whose values live `ttl`.
    pub fn new(ttl: Duration) -> TtlCache<T> {
        TtlCache {
            ttl,
            latest: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached value while fresh, else what `compute` gives (kept when Ok).
    pub async fn get_or_compute<E, F, Fut>(&self, compute: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.ttl.is_zero() {
            return compute().await;
        }
        let mut latest = self.latest.lock().await;
        if let Some((at, value)) = latest.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        // Aged from when the computation began: the figures are as of then.
        let began = Instant::now();
        let value = compute().await?;
        *latest = Some((began, value.clone()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Within the TTL the value is computed once, also for callers that
    /// arrive together; a zero TTL computes on every read; errors are not kept.
    #[tokio::test]
    async fn computes_once_per_ttl() {
        let cache = Arc::new(TtlCache::new(Duration::from_secs(60)));
        let computed = Arc::new(AtomicU32::new(0));
        let mut readers = Vec::new();
        for _ in 0..8 {
            let (cache, computed) = (cache.clone(), computed.clone());
            readers.push(tokio::spawn(async move {
                cache
                    .get_or_compute(|| async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(computed.fetch_add(1, Ordering::SeqCst))
                    })
                    .await
            }));
        }
        for reader in readers {
            assert_eq!(reader.await.ok(), Some(Ok(0)));
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);

        let fresh = TtlCache::new(Duration::ZERO);
        for expected in 0..3 {
            assert_eq!(
                fresh
                    .get_or_compute(|| async { Ok::<_, ()>(expected) })
                    .await,
                Ok(expected)
            );
        }
        let failing: TtlCache<u32> = TtlCache::new(Duration::from_secs(60));
        assert_eq!(
            failing.get_or_compute(|| async { Err("down") }).await,
            Err("down")
        );
        assert_eq!(
            failing.get_or_compute(|| async { Ok::<_, &str>(5) }).await,
            Ok(5)
        );
    }
}
