//! Workers and builds over HTTP: registration, heartbeats, the claim,
//! submission, build views and every lifecycle call; the [`reaper`] of
//! silent workers' builds. What each call may do is `builds::transition`;
//! storage makes each change atomic with its ledger delta.

pub mod reaper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{hash_secret, new_secret, Admin, AuthState, BuildReader, Worker};
use crate::body::JsonBody;
use crate::builds::{is_repeated_release, parse_build_id, BuildStatus, Event};
use crate::clock::now_ms;
use crate::error::{AppError, Result};
use crate::meters::Meters;
use crate::stats::queue_wait;
use crate::storage::{ChangeDecision, Claim, NewBuild, NewWorker, Storage, WorkerIdentity};
use crate::wire::{
    BuildSubmitted, BuildView, CompleteBuild, Heartbeat, PollAnswer, RegisterWorker, SubmitBuild,
    WorkerRegistered, MAX_ERROR_CHARS, MAX_LABEL_CHARS,
};

/// What the fleet's routes and reaper share. Cheap to clone.
#[derive(Clone)]
pub struct FleetState {
    /// Where workers and builds live.
    pub storage: Storage,
    /// A worker silent this long loses its build back to the queue.
    pub lease_timeout: std::time::Duration,
    /// How long after a build ended it still takes telemetry (and a
    /// cancelled one is still listed in its worker's heartbeats).
    pub telemetry_grace: std::time::Duration,
    /// Wakes long polls: a build was submitted or went back to the queue.
    pub queue_changed: std::sync::Arc<tokio::sync::Notify>,
    /// Set when the controller begins to shut down: long polls end.
    pub stopping: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Workers seen and not yet written: the reaper writes them first.
    pub seen: crate::auth::SeenTimes,
}

/// Routes of this domain.
pub fn router<S>() -> Router<S>
where
    FleetState: FromRef<S>,
    AuthState: FromRef<S>,
    Meters: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/workers/register", post(register))
        .route("/api/workers/heartbeat", post(heartbeat))
        .route("/api/workers/poll", post(poll))
        .route("/api/builds", post(submit))
        .route("/api/builds/{id}", get(show))
        .route("/api/builds/{id}/start", post(start))
        .route("/api/builds/{id}/complete", post(complete))
        .route("/api/builds/{id}/cancel", post(cancel))
        .route("/api/builds/{id}/release", post(release))
}

fn platform_is_valid(platform: &str) -> bool {
    (1..=32).contains(&platform.len())
        && platform
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks a registration against SPEC's field limits.
pub fn validate_registration(body: &RegisterWorker) -> Result<()> {
    let name_chars = body.name.chars().count();
    if !(1..=64).contains(&name_chars) || body.name.trim().is_empty() {
        return Err(AppError::Invalid("name must be 1 to 64 characters".into()));
    }
    if !(1..=8).contains(&body.platforms.len()) {
        return Err(AppError::Invalid(
            "platforms must list 1 to 8 platforms".into(),
        ));
    }
    if let Some(bad) = body.platforms.iter().find(|p| !platform_is_valid(p)) {
        return Err(AppError::Invalid(format!(
            "platform `{bad}` must be 1 to 32 characters of a-z, 0-9, _ and -"
        )));
    }
    if !(1..=1024).contains(&body.cpu_cores) {
        return Err(AppError::Invalid("cpuCores must be in 1..=1024".into()));
    }
    if !(1..=16_777_216).contains(&body.memory_mb) {
        return Err(AppError::Invalid("memoryMb must be in 1..=16777216".into()));
    }
    Ok(())
}

async fn register(
    State(fleet): State<FleetState>,
    State(auth): State<AuthState>,
    _admin: Admin,
    JsonBody(body): JsonBody<RegisterWorker>,
) -> Result<Response> {
    validate_registration(&body)?;
    let token = new_secret();
    let token_hash = hash_secret(&token);
    let mut platforms = body.platforms.clone();
    platforms.sort();
    platforms.dedup();
    let (cpu_cores, memory_mb) = (i64::from(body.cpu_cores), body.memory_mb as i64);
    let worker_id = fleet
        .storage
        .register_worker(NewWorker {
            name: body.name.clone(),
            platforms_json: serde_json::to_string(&platforms).map_err(|_| AppError::Unavailable)?,
            cpu_cores,
            memory_mb,
            token_hash,
            registered_at: now_ms(),
        })
        .await?;
    auth.remember_worker(
        token_hash,
        WorkerIdentity {
            id: worker_id,
            cpu_cores,
            memory_mb,
        },
    );
    tracing::info!(worker_id, name = %body.name, cpu_cores, memory_mb, "worker registered");
    Ok((
        StatusCode::CREATED,
        Json(WorkerRegistered { worker_id, token }),
    )
        .into_response())
}

async fn heartbeat(
    State(fleet): State<FleetState>,
    Worker(worker): Worker,
) -> Result<Json<Heartbeat>> {
    let now = now_ms();
    let since = now - fleet.telemetry_grace.as_millis() as i64;
    Ok(Json(Heartbeat {
        server_time: now,
        cancelled: fleet.storage.cancelled_builds(worker.id, since).await?,
    }))
}

/// Query of `POST /api/workers/poll`.
#[derive(serde::Deserialize)]
struct PollQuery {
    #[serde(rename = "waitS")]
    wait_s: Option<String>,
}

/// Longest `waitS` a poll may hold the request open, seconds.
pub const MAX_POLL_WAIT_S: u64 = 60;

/// `waitS`: 0 when absent; text that is not a whole number 400; outside
/// 0..=60 422.
fn parse_wait(text: Option<&str>) -> Result<std::time::Duration> {
    let Some(text) = text else {
        return Ok(std::time::Duration::ZERO);
    };
    let seconds = text
        .trim()
        .parse::<i64>()
        .map_err(|_| AppError::BadRequest("waitS must be a whole number of seconds".into()))?;
    match u64::try_from(seconds) {
        Ok(s) if s <= MAX_POLL_WAIT_S => Ok(std::time::Duration::from_secs(s)),
        _ => Err(AppError::Invalid(format!(
            "waitS must be in 0..={MAX_POLL_WAIT_S}"
        ))),
    }
}

/// Claims the oldest matching build; with `waitS`, holds the request open
/// until one is submitted or requeued (woken at once) or the wait ends.
async fn poll(
    State(fleet): State<FleetState>,
    State(meters): State<Meters>,
    Worker(worker): Worker,
    axum::extract::Query(query): axum::extract::Query<PollQuery>,
) -> Result<Response> {
    let wait = parse_wait(query.wait_s.as_deref())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut stopping = fleet.stopping.subscribe();
    loop {
        // Registered before the claim, so a build queued in between wakes it.
        let queued = fleet.queue_changed.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let now = now_ms();
        if let Some(Claim {
            build,
            submitted_at,
        }) = fleet.storage.claim(worker.id, now).await?
        {
            // The same rule as the stored queue-wait figures: a requeued
            // build's later attempts do not wait for a machine again.
            if let Some(wait) = queue_wait::first_wait(build.attempt, submitted_at, now) {
                meters.first_assignment(wait);
            }
            tracing::info!(
                build_id = build.id,
                worker_id = worker.id,
                attempt = build.attempt,
                "build claimed"
            );
            return Ok(Json(PollAnswer { build }).into_response());
        }
        if tokio::time::Instant::now() >= deadline || *stopping.borrow() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
}

async fn submit(
    State(fleet): State<FleetState>,
    _admin: Admin,
    JsonBody(body): JsonBody<SubmitBuild>,
) -> Result<Response> {
    if !platform_is_valid(&body.platform) {
        return Err(AppError::Invalid(
            "platform must be 1 to 32 characters of a-z, 0-9, _ and -".into(),
        ));
    }
    if body
        .label
        .as_ref()
        .is_some_and(|l| l.chars().count() > MAX_LABEL_CHARS)
    {
        return Err(AppError::Invalid(format!(
            "label must be at most {MAX_LABEL_CHARS} characters"
        )));
    }
    let token = new_secret();
    let submitted_at = now_ms();
    let id = fleet
        .storage
        .submit_build(NewBuild {
            platform: body.platform,
            label: body.label,
            submitted_at,
            token_hash: hash_secret(&token),
        })
        .await?;
    fleet.queue_changed.notify_waiters();
    tracing::info!(build_id = id, "build submitted");
    Ok((
        StatusCode::CREATED,
        Json(BuildSubmitted {
            id,
            status: BuildStatus::Pending.as_str().into(),
            submitted_at,
            page_url: crate::wire::build_page_url(id, &token),
            access_token: token,
        }),
    )
        .into_response())
}

async fn show(
    State(auth): State<AuthState>,
    reader: BuildReader,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    Ok(Json(auth.authorize_reader(&reader, id).await?.view()))
}

/// Changes build `id` by `decide` (see [`ChangeDecision`]); answers the
/// build as it is after.
async fn change(fleet: &FleetState, id: &str, decide: ChangeDecision) -> Result<Json<BuildView>> {
    let id = parse_build_id(id)?;
    let build = fleet.storage.change_build(id, now_ms(), decide).await?;
    Ok(Json(build.view()))
}

/// The event `event` by the worker that holds the build (403 otherwise).
fn by_holder(worker: WorkerIdentity, event: Event) -> ChangeDecision {
    Box::new(move |build, _| {
        build.require_worker(worker.id)?;
        Ok(Some(event))
    })
}

async fn start(
    State(fleet): State<FleetState>,
    Worker(worker): Worker,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    change(&fleet, &id, by_holder(worker, Event::Start)).await
}

async fn complete(
    State(fleet): State<FleetState>,
    State(meters): State<Meters>,
    Worker(worker): Worker,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CompleteBuild>,
) -> Result<Json<BuildView>> {
    if body
        .error
        .as_ref()
        .is_some_and(|e| e.chars().count() > MAX_ERROR_CHARS)
    {
        return Err(AppError::Invalid(format!(
            "error must be at most {MAX_ERROR_CHARS} characters"
        )));
    }
    let event = Event::Complete {
        success: body.success,
        error: body.error,
    };
    // Only a build that is running when its change applies finishes by
    // this call; a repeated complete changes nothing and is not counted.
    let was_running = Arc::new(AtomicBool::new(false));
    let running = was_running.clone();
    let decide: ChangeDecision = Box::new(move |build, _| {
        build.require_worker(worker.id)?;
        running.store(build.status == BuildStatus::Building, Ordering::Relaxed);
        Ok(Some(event))
    });
    let view = change(&fleet, &id, decide).await?;
    if let (true, Some(started), Some(completed)) = (
        was_running.load(Ordering::Relaxed),
        view.started_at,
        view.completed_at,
    ) {
        meters.build_finished(completed - started);
    }
    tracing::info!(build_id = view.id, status = %view.status, cpu_seconds = view.cpu_seconds, "build finished");
    Ok(view)
}

async fn cancel(
    State(fleet): State<FleetState>,
    State(auth): State<AuthState>,
    reader: BuildReader,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    auth.authorize_reader(&reader, parse_build_id(&id)?).await?;
    let view = change(&fleet, &id, Box::new(|_, _| Ok(Some(Event::Cancel)))).await?;
    tracing::info!(build_id = view.id, "build cancelled");
    Ok(view)
}

/// `POST /api/builds/{id}/release`: the worker gives its build back. A
/// repeat (its last attempt ended by its release) is 200 and changes nothing.
async fn release(
    State(fleet): State<FleetState>,
    Worker(worker): Worker,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let decide: ChangeDecision = Box::new(move |build, attempts| {
        if build.status.is_active() && build.worker_id == Some(worker.id) {
            return Ok(Some(Event::Release));
        }
        if is_repeated_release(build, attempts, worker.id)? {
            return Ok(None);
        }
        Err(AppError::Conflict(format!(
            "a {} build cannot be released",
            build.status
        )))
    });
    let view = change(&fleet, &id, decide).await?;
    if view.status == BuildStatus::Pending.as_str() {
        fleet.queue_changed.notify_waiters();
    }
    tracing::info!(build_id = view.id, worker_id = worker.id, "build released");
    Ok(view)
}
