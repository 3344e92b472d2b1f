//! Telemetry: the route (rate limit, body, parse) and the [`batcher`]
//! that stores every request queued during the last commit as one storage
//! job (Postgres; SQLite's writer gathers telemetry itself). What a body
//! means and which samples are valid is `telemetry`'s.

pub mod batcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{AuthState, BuildReader, Worker};
use crate::body::read_limited;
use crate::builds::parse_build_id;
use crate::cache::lock;
use crate::clock::now_ms;
use crate::error::{AppError, Result};
use crate::meters::Meters;
use crate::storage::{Storage, TelemetryRequest};
use crate::telemetry::{parse_body_bytes, TELEMETRY_BODY_LIMIT};
use crate::wire::StoredSnapshot;
use batcher::TelemetryQueue;

/// What ingest owns: where requests queue, and each worker's rate bucket.
/// Cheap to clone.
#[derive(Clone)]
pub struct IngestState {
    storage: Storage,
    queue: TelemetryQueue,
    buckets: Arc<Mutex<Buckets>>,
    /// Sustained telemetry requests per second per worker; bursts of twice that.
    rate: u32,
}

impl IngestState {
    /// Starts the batcher on `storage` when it needs one; `grace_ms` and
    /// `rate` as the flags say.
    pub fn start(storage: Storage, grace_ms: i64, rate: u32) -> IngestState {
        IngestState {
            queue: TelemetryQueue::start(&storage, grace_ms),
            storage,
            buckets: Arc::new(Mutex::new(Buckets::new(Instant::now()))),
            rate,
        }
    }
}

/// Token bucket of one worker's telemetry requests.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Requests available now.
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Instant,
}

/// How often full buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Every worker's bucket. A bucket that has refilled to its burst is the
/// same as none, so a sweep every [`SWEEP_EVERY`] drops those: the map holds
/// the workers that posted lately, not every worker that ever did.
#[derive(Debug)]
struct Buckets {
    by_worker: HashMap<i64, Bucket>,
    swept: Instant,
}

impl Buckets {
    fn new(now: Instant) -> Buckets {
        Buckets {
            by_worker: HashMap::new(),
            swept: now,
        }
    }

    /// Takes one request of worker `id` at `now` from its bucket (`rate`
    /// per second, bursts of twice that): Ok, or the whole seconds to wait.
    fn take(&mut self, id: i64, now: Instant, rate: f64) -> std::result::Result<(), u64> {
        let burst = 2.0 * rate;
        if now.duration_since(self.swept) >= SWEEP_EVERY {
            self.sweep(now, rate);
        }
        let bucket = self.by_worker.entry(id).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Drops the buckets that are full again by `now`.
    fn sweep(&mut self, now: Instant, rate: f64) {
        let burst = 2.0 * rate;
        self.by_worker
            .retain(|_, b| b.tokens + now.duration_since(b.refilled).as_secs_f64() * rate < burst);
        self.swept = now;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_worker.len()
    }
}

/// Routes of this domain.
pub fn router<S>() -> Router<S>
where
    IngestState: FromRef<S>,
    AuthState: FromRef<S>,
    Meters: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/builds/{id}/telemetry", post(telemetry))
        .route("/api/builds/{id}/snapshots", get(snapshots))
}

fn rate_limit(state: &IngestState, worker_id: i64) -> Result<()> {
    lock(&state.buckets)
        .take(worker_id, Instant::now(), f64::from(state.rate))
        .map_err(|retry_after_s| AppError::RateLimited { retry_after_s })
}

async fn telemetry(
    State(state): State<IngestState>,
    State(meters): State<Meters>,
    Worker(worker): Worker,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response> {
    let id = parse_build_id(&id)?;
    rate_limit(&state, worker.id).inspect_err(|_| meters.rate_limited())?;
    let bytes = read_limited(request.into_body(), TELEMETRY_BODY_LIMIT).await?;
    let now = now_ms();
    let body = parse_body_bytes(&bytes, now)?;
    let answer = state
        .queue
        .store(TelemetryRequest {
            worker,
            build_id: id,
            body,
            now,
        })
        .await?;
    meters.samples(
        answer.accepted,
        answer.duplicates,
        answer.rejected.len() as u64,
    );
    tracing::debug!(
        build_id = id,
        worker_id = worker.id,
        accepted = answer.accepted,
        duplicates = answer.duplicates,
        rejected = answer.rejected.len(),
        "telemetry"
    );
    let all_rejected =
        !answer.rejected.is_empty() && answer.accepted == 0 && answer.duplicates == 0;
    let code = if all_rejected {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((code, Json(answer)).into_response())
}

async fn snapshots(
    State(state): State<IngestState>,
    State(auth): State<AuthState>,
    reader: BuildReader,
    Path(id): Path<String>,
) -> Result<Json<Vec<StoredSnapshot>>> {
    let id = parse_build_id(&id)?;
    auth.authorize_reader(&reader, id).await?;
    Ok(Json(state.storage.snapshots(id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that posts within its rate keeps a bucket; once it went
    /// quiet long enough to refill, the next sweep drops it, and it starts
    /// again from a full burst.
    #[test]
    fn quiet_workers_buckets_are_evicted() {
        let t0 = Instant::now();
        let mut buckets = Buckets::new(t0);
        let rate = 10.0;
        for id in 1..=1000 {
            assert_eq!(buckets.take(id, t0, rate), Ok(()));
        }
        assert_eq!(buckets.len(), 1000);
        // Worker 1 empties its burst of 20 and is refused.
        for _ in 0..19 {
            assert_eq!(buckets.take(1, t0, rate), Ok(()));
        }
        assert_eq!(buckets.take(1, t0, rate), Err(1));
        // 1.5 s later: every other bucket is full again, worker 1's is not.
        let t1 = t0 + Duration::from_millis(1500);
        buckets.sweep(t1, rate);
        assert_eq!(buckets.len(), 1, "only the bucket still refilling stays");
        // The sweep runs by itself SWEEP_EVERY after the last one.
        let t2 = t1 + SWEEP_EVERY;
        assert_eq!(buckets.take(7, t2, rate), Ok(()));
        assert_eq!(buckets.len(), 1, "worker 1's refilled and went; 7 is new");
        for _ in 0..19 {
            assert_eq!(buckets.take(7, t2, rate), Ok(()), "a fresh full burst");
        }
        assert_eq!(buckets.take(7, t2, rate), Err(1));
    }
}
