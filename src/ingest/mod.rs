//! Telemetry: the route (rate limit, body, parse) and the [`batcher`]
//! that stores every request queued during the last commit as one storage
//! job. What a body means and which samples are valid is `telemetry`'s.

pub mod batcher;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    buckets: Arc<Mutex<HashMap<i64, Bucket>>>,
    /// Sustained telemetry requests per second per worker; bursts of twice that.
    rate: u32,
}

impl IngestState {
    /// Starts the batcher on `storage`; `grace_ms` and `rate` as the flags say.
    pub fn start(storage: Storage, grace_ms: i64, rate: u32) -> IngestState {
        IngestState {
            queue: TelemetryQueue::start(storage.clone(), grace_ms),
            storage,
            buckets: Arc::new(Mutex::new(HashMap::new())),
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
    let rate = f64::from(state.rate);
    let burst = 2.0 * rate;
    let now = Instant::now();
    let mut buckets = lock(&state.buckets);
    let bucket = buckets.entry(worker_id).or_insert(Bucket {
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
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
        Err(AppError::RateLimited {
            retry_after_s: wait as u64,
        })
    }
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
