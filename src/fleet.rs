//! Workers and the build lifecycle: registration, heartbeats, the atomic
//! claim, start/complete/cancel, build views, and the lease reaper.
//!
//! Every change runs as one job of the single writer (see `db`), so a claim
//! and the state check before each transition see no concurrent change.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::SqliteConnection;

use crate::auth::{hash_secret, new_secret, Admin, BuildReader, Worker};
use crate::body::JsonBody;
use crate::db::now_ms;
use crate::error::{AppError, Result};
use crate::state::{lock, AppState, WorkerIdentity};
use crate::stats::accounting::{micros_to_seconds, AttemptCpu};
use crate::stats::ssr::{adjust_day, adjust_totals, day_of, DayDelta, TotalsDelta};
use crate::wire::{
    BuildSubmitted, BuildView, ClaimedBuild, CompleteBuild, Heartbeat, PollAnswer, RegisterWorker,
    SubmitBuild, WorkerRegistered,
};

/// Attempts a build gets before a lost worker fails it.
pub const MAX_ATTEMPTS: i64 = 3;
/// Error of a build failed by the lease reaper.
pub const LOST_CONTACT: &str = "worker lost contact";
/// Error of a build failed because its worker gave back its last attempt.
pub const RELEASED_BY_WORKER: &str = "released by its worker";

/// Routes of this domain.
pub fn router() -> Router<AppState> {
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

/// A build id from the path; anything that is not one names no build.
pub fn parse_build_id(raw: &str) -> Result<i64> {
    raw.parse::<i64>().map_err(|_| AppError::unknown_build())
}

/// Build states as stored.
pub mod status {
    /// Waiting for a worker.
    pub const PENDING: &str = "pending";
    /// Claimed by a worker, not yet started.
    pub const ASSIGNED: &str = "assigned";
    /// Running on its worker.
    pub const BUILDING: &str = "building";
    /// Finished successfully.
    pub const COMPLETED: &str = "completed";
    /// Finished unsuccessfully.
    pub const FAILED: &str = "failed";
    /// Withdrawn by its submitter or the admin.
    pub const CANCELLED: &str = "cancelled";
}

/// How an attempt ended, as stored. An attempt that ended with its build
/// takes the build's final status (`completed`, `failed`, `cancelled`).
pub mod outcome {
    /// The lease reaper gave the build to the next attempt.
    pub const REQUEUED: &str = "requeued";
    /// Its worker gave the build back (it was shutting down).
    pub const RELEASED: &str = "released";
}

/// A build row with the columns lifecycle and telemetry need.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct BuildRow {
    pub id: i64,
    pub status: String,
    pub platform: String,
    pub label: Option<String>,
    pub worker_id: Option<i64>,
    pub attempt: i64,
    pub submitted_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub error: Option<String>,
    pub token_hash: Vec<u8>,
    /// Sum over the build's attempts of their CPU time, µs.
    pub cpu_micros: i64,
    pub peak_memory_mb: Option<f64>,
    pub snapshot_count: i64,
    pub newest_sampled_at: Option<i64>,
    pub has_tombstones: bool,
}

impl BuildRow {
    /// True once the build reached `completed` or `failed`.
    pub fn is_finished(&self) -> bool {
        self.status == status::COMPLETED || self.status == status::FAILED
    }

    fn view(&self) -> BuildView {
        BuildView {
            id: self.id,
            status: self.status.clone(),
            platform: self.platform.clone(),
            label: self.label.clone(),
            worker_id: self.worker_id,
            attempt: self.attempt,
            submitted_at: self.submitted_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            error: self.error.clone(),
            cpu_seconds: micros_to_seconds(self.cpu_micros),
            peak_memory_mb: self.peak_memory_mb,
            snapshot_count: self.snapshot_count,
        }
    }

    /// 403 unless `worker` is the one this build is assigned to.
    pub fn require_worker(&self, worker: &WorkerIdentity) -> Result<()> {
        if self.worker_id == Some(worker.id) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "this build is not assigned to this worker".into(),
            ))
        }
    }
}

const BUILD_COLUMNS: &str = "id, status, platform, label, worker_id, attempt, submitted_at,
    assigned_at, started_at, completed_at, error, token_hash, cpu_micros,
    peak_memory_mb, snapshot_count, newest_sampled_at, has_tombstones";

/// Loads a build inside the writer's transaction; 404 when there is none.
pub async fn load_build(conn: &mut SqliteConnection, id: i64) -> Result<BuildRow> {
    sqlx::query_as::<_, BuildRow>(&format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(AppError::unknown_build)
}

/// Loads the builds among `ids` that exist, inside the writer's transaction.
pub async fn load_builds(conn: &mut SqliteConnection, ids: &[i64]) -> Result<Vec<BuildRow>> {
    let ids = serde_json::to_string(ids).map_err(|_| AppError::Unavailable)?;
    Ok(sqlx::query_as::<_, BuildRow>(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE id IN (SELECT value FROM json_each(?))"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// One attempt of a build: who held it, when, how it ended, and its CPU
/// accounting.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub build_id: i64,
    pub attempt: i64,
    /// None only for attempts that ended before attempts were recorded.
    pub worker_id: Option<i64>,
    pub assigned_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// See [`outcome`]; None while the attempt runs.
    pub outcome: Option<String>,
    pub cpu_percent_micros: i64,
    pub cpu_counter_micros: Option<i64>,
}

impl AttemptRow {
    /// The attempt's CPU accounting.
    pub fn cpu(&self) -> AttemptCpu {
        AttemptCpu {
            percent_micros: self.cpu_percent_micros,
            counter_micros: self.cpu_counter_micros,
        }
    }

    /// Stores `cpu` as the attempt's accounting (in memory).
    pub fn set_cpu(&mut self, cpu: AttemptCpu) {
        self.cpu_percent_micros = cpu.percent_micros;
        self.cpu_counter_micros = cpu.counter_micros;
    }
}

/// Loads every attempt of the builds among `ids`, inside the writer's transaction.
pub async fn load_attempts(conn: &mut SqliteConnection, ids: &[i64]) -> Result<Vec<AttemptRow>> {
    let ids = serde_json::to_string(ids).map_err(|_| AppError::Unavailable)?;
    Ok(sqlx::query_as::<_, AttemptRow>(
        "SELECT build_id, attempt, worker_id, assigned_at, ended_at, outcome,
                cpu_percent_micros, cpu_counter_micros
         FROM attempts WHERE build_id IN (SELECT value FROM json_each(?))",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// The attempt of `build` whose telemetry `worker` sends: the last one it
/// was handed. 403 when it never held the build; 409 when that attempt no
/// longer takes telemetry. The build's current attempt takes it while
/// assigned or building and for `grace_ms` after the build finished; an
/// attempt that ended by requeue or release, for `grace_ms` after it ended.
pub fn telemetry_attempt<'a>(
    build: &BuildRow,
    attempts: impl IntoIterator<Item = &'a AttemptRow>,
    worker_id: i64,
    now: i64,
    grace_ms: i64,
) -> Result<&'a AttemptRow> {
    let held = attempts
        .into_iter()
        .filter(|a| a.build_id == build.id && a.worker_id == Some(worker_id))
        .max_by_key(|a| a.attempt)
        .ok_or_else(|| AppError::Forbidden("this build is not assigned to this worker".into()))?;
    let is_current = held.attempt == build.attempt && build.worker_id == Some(worker_id);
    let open = if is_current {
        match build.status.as_str() {
            status::ASSIGNED | status::BUILDING => true,
            _ => build
                .completed_at
                .is_some_and(|done| now - done <= grace_ms),
        }
    } else {
        held.ended_at.is_some_and(|ended| now - ended <= grace_ms)
    };
    if open {
        Ok(held)
    } else if is_current {
        Err(AppError::Conflict(format!(
            "this {} build no longer accepts telemetry",
            build.status
        )))
    } else {
        Err(AppError::Conflict(format!(
            "attempt {} of this build ended more than the grace period ago",
            held.attempt
        )))
    }
}

/// Records that attempt `attempt` of build `build_id` ended now, and how.
async fn end_attempt(
    conn: &mut SqliteConnection,
    build_id: i64,
    attempt: i64,
    how: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE attempts SET ended_at = ?, outcome = ?
         WHERE build_id = ? AND attempt = ? AND ended_at IS NULL",
    )
    .bind(now)
    .bind(how)
    .bind(build_id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Loads a build for a reader and checks the reader may see it.
pub async fn authorize_reader(state: &AppState, reader: &BuildReader, id: i64) -> Result<BuildRow> {
    let build = {
        let mut conn = state.db.reads.acquire().await?;
        load_build(&mut conn, id).await
    };
    match (reader, build) {
        (BuildReader::Admin, build) => build,
        (BuildReader::Token(hash), Ok(build)) if build.token_hash == hash[..] => Ok(build),
        // Unknown secrets learn nothing, not even whether the build exists.
        (BuildReader::Token(hash), _) => Err(crate::auth::wrong_secret(state, *hash).await),
    }
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
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<RegisterWorker>,
) -> Result<Response> {
    validate_registration(&body)?;
    let token = new_secret();
    let hash = hash_secret(&token);
    let now = now_ms();
    let mut platforms = body.platforms.clone();
    platforms.sort();
    platforms.dedup();
    let platforms_json = serde_json::to_string(&platforms).map_err(|_| AppError::Unavailable)?;
    let name = body.name.clone();
    let (cores, memory) = (i64::from(body.cpu_cores), body.memory_mb as i64);
    let worker_id = state
        .db
        .writer
        .write(move |conn| {
            async move {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO workers (name, platforms, cpu_cores, memory_mb, token_hash,
                     registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                )
                .bind(name)
                .bind(platforms_json)
                .bind(cores)
                .bind(memory)
                .bind(&hash[..])
                .bind(now)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
                Ok(id)
            }
            .boxed()
        })
        .await?;
    lock(&state.caches.workers).insert(
        hash,
        WorkerIdentity {
            id: worker_id,
            cpu_cores: cores,
            memory_mb: memory,
        },
    );
    tracing::info!(worker_id, name = %body.name, cpu_cores = cores, memory_mb = memory, "worker registered");
    Ok((
        StatusCode::CREATED,
        Json(WorkerRegistered { worker_id, token }),
    )
        .into_response())
}

async fn heartbeat(Worker(_worker): Worker) -> Json<Heartbeat> {
    Json(Heartbeat {
        server_time: now_ms(),
    })
}

async fn poll(State(state): State<AppState>, Worker(worker): Worker) -> Result<Response> {
    let now = now_ms();
    let claimed = state
        .db
        .writer
        .write(move |conn| claim(conn, worker.id, now).boxed())
        .await?;
    Ok(match claimed {
        Some(build) => {
            tracing::info!(
                build_id = build.id,
                worker_id = worker.id,
                attempt = build.attempt,
                "build claimed"
            );
            Json(PollAnswer { build }).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Hands the oldest pending build of one of the worker's platforms to it.
async fn claim(
    conn: &mut SqliteConnection,
    worker_id: i64,
    now: i64,
) -> Result<Option<ClaimedBuild>> {
    let platforms: String = sqlx::query_scalar("SELECT platforms FROM workers WHERE id = ?")
        .bind(worker_id)
        .fetch_one(&mut *conn)
        .await?;
    let row: Option<(i64, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, platform, label, attempt FROM builds
         WHERE status = 'pending' AND platform IN (SELECT value FROM json_each(?))
         ORDER BY id LIMIT 1",
    )
    .bind(platforms)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, platform, label, attempt)) = row else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE builds SET status = 'assigned', worker_id = ?, assigned_at = ? WHERE id = ?",
    )
    .bind(worker_id)
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO attempts (build_id, attempt, worker_id, assigned_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (build_id, attempt) DO UPDATE
         SET worker_id = excluded.worker_id, assigned_at = excluded.assigned_at",
    )
    .bind(id)
    .bind(attempt)
    .bind(worker_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    adjust_totals(
        conn,
        TotalsDelta {
            pending: -1,
            active: 1,
            ..TotalsDelta::default()
        },
    )
    .await?;
    Ok(Some(ClaimedBuild {
        id,
        platform,
        label,
        attempt,
    }))
}

async fn submit(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<SubmitBuild>,
) -> Result<Response> {
    if !platform_is_valid(&body.platform) {
        return Err(AppError::Invalid(
            "platform must be 1 to 32 characters of a-z, 0-9, _ and -".into(),
        ));
    }
    if body.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
        return Err(AppError::Invalid(
            "label must be at most 200 characters".into(),
        ));
    }
    let token = new_secret();
    let hash = hash_secret(&token);
    let now = now_ms();
    let SubmitBuild { platform, label } = body;
    let id = state
        .db
        .writer
        .write(move |conn| {
            async move {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO builds (status, platform, label, submitted_at, token_hash)
                     VALUES ('pending', ?, ?, ?, ?) RETURNING id",
                )
                .bind(platform)
                .bind(label)
                .bind(now)
                .bind(&hash[..])
                .fetch_one(&mut *conn)
                .await?;
                adjust_totals(
                    conn,
                    TotalsDelta {
                        pending: 1,
                        ..TotalsDelta::default()
                    },
                )
                .await?;
                Ok(id)
            }
            .boxed()
        })
        .await?;
    tracing::info!(build_id = id, "build submitted");
    Ok((
        StatusCode::CREATED,
        Json(BuildSubmitted {
            id,
            status: status::PENDING.into(),
            submitted_at: now,
            access_token: token,
        }),
    )
        .into_response())
}

async fn show(
    State(state): State<AppState>,
    reader: BuildReader,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    let build = authorize_reader(&state, &reader, id).await?;
    Ok(Json(build.view()))
}

/// Runs `change` on build `id` in the writer, after checking it exists (404)
/// and is assigned to `worker` (403); answers the build as it is after.
async fn change_assigned_build<F>(
    state: &AppState,
    worker: WorkerIdentity,
    id: i64,
    change: F,
) -> Result<BuildView>
where
    F: for<'c> FnOnce(&'c mut SqliteConnection, BuildRow) -> BoxFuture<'c, Result<()>>
        + Send
        + 'static,
{
    state
        .db
        .writer
        .write(move |conn| {
            async move {
                let build = load_build(conn, id).await?;
                build.require_worker(&worker)?;
                change(&mut *conn, build).await?;
                Ok(load_build(conn, id).await?.view())
            }
            .boxed()
        })
        .await
}

async fn start(
    State(state): State<AppState>,
    Worker(worker): Worker,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    let now = now_ms();
    let view = change_assigned_build(&state, worker, id, move |conn, build| {
        async move {
            match build.status.as_str() {
                status::BUILDING => Ok(()),
                status::ASSIGNED => {
                    sqlx::query(
                        "UPDATE builds SET status = 'building', started_at = ? WHERE id = ?",
                    )
                    .bind(now)
                    .bind(build.id)
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                }
                other => Err(AppError::Conflict(format!(
                    "a {other} build cannot be started"
                ))),
            }
        }
        .boxed()
    })
    .await?;
    Ok(Json(view))
}

async fn complete(
    State(state): State<AppState>,
    Worker(worker): Worker,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CompleteBuild>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    if body
        .error
        .as_ref()
        .is_some_and(|e| e.chars().count() > 4000)
    {
        return Err(AppError::Invalid(
            "error must be at most 4000 characters".into(),
        ));
    }
    let now = now_ms();
    let view = change_assigned_build(&state, worker, id, move |conn, build| {
        async move {
            let target = if body.success {
                status::COMPLETED
            } else {
                status::FAILED
            };
            if build.status == target {
                return Ok(());
            }
            if build.status != status::BUILDING {
                return Err(AppError::Conflict(format!(
                    "a {} build cannot be completed as {target}",
                    build.status
                )));
            }
            finish(conn, &build, target, body.error.as_deref(), now).await
        }
        .boxed()
    })
    .await?;
    tracing::info!(build_id = id, status = %view.status, cpu_seconds = view.cpu_seconds, "build finished");
    Ok(Json(view))
}

/// Moves an active build to `completed` or `failed` and counts it.
async fn finish(
    conn: &mut SqliteConnection,
    build: &BuildRow,
    target: &str,
    error: Option<&str>,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE builds SET status = ?, completed_at = ?, error = ? WHERE id = ?")
        .bind(target)
        .bind(now)
        .bind(error)
        .bind(build.id)
        .execute(&mut *conn)
        .await?;
    end_attempt(conn, build.id, build.attempt, target, now).await?;
    let build_time_ms = build.started_at.map_or(0, |started| now - started);
    adjust_totals(
        conn,
        TotalsDelta {
            active: -1,
            finished: 1,
            build_time_ms,
            ..TotalsDelta::default()
        },
    )
    .await?;
    adjust_day(
        conn,
        day_of(now),
        DayDelta {
            finished: 1,
            failed: i64::from(target == status::FAILED),
            build_time_ms,
            cpu_micros: build.cpu_micros,
        },
    )
    .await
}

async fn cancel(
    State(state): State<AppState>,
    reader: BuildReader,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    authorize_reader(&state, &reader, id).await?;
    let now = now_ms();
    let view = state
        .db
        .writer
        .write(move |conn| {
            async move {
                let build = load_build(conn, id).await?;
                let delta = match build.status.as_str() {
                    status::CANCELLED => return Ok(build.view()),
                    status::PENDING => TotalsDelta {
                        pending: -1,
                        ..TotalsDelta::default()
                    },
                    status::ASSIGNED | status::BUILDING => TotalsDelta {
                        active: -1,
                        ..TotalsDelta::default()
                    },
                    other => {
                        return Err(AppError::Conflict(format!(
                            "a {other} build cannot be cancelled"
                        )))
                    }
                };
                sqlx::query(
                    "UPDATE builds SET status = 'cancelled', completed_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
                if build.status != status::PENDING {
                    end_attempt(conn, id, build.attempt, status::CANCELLED, now).await?;
                }
                adjust_totals(conn, delta).await?;
                Ok(load_build(conn, id).await?.view())
            }
            .boxed()
        })
        .await?;
    tracing::info!(build_id = id, "build cancelled");
    Ok(Json(view))
}

/// One pass of the lease reaper: builds whose worker made no authenticated
/// call for `lease_timeout` go back to the queue, or fail after the last attempt.
pub async fn reap_lost_leases(
    conn: &mut SqliteConnection,
    lease_timeout: Duration,
    now: i64,
) -> Result<u64> {
    let silent_since = now - lease_timeout.as_millis() as i64;
    let lost: Vec<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds
         WHERE status IN ('assigned', 'building')
           AND worker_id IN (SELECT id FROM workers WHERE last_seen_at < ?)"
    ))
    .bind(silent_since)
    .fetch_all(&mut *conn)
    .await?;
    for build in &lost {
        give_back(conn, build, outcome::REQUEUED, LOST_CONTACT, now).await?;
        tracing::warn!(
            build_id = build.id,
            attempt = build.attempt,
            "lease expired: build {}",
            if build.attempt >= MAX_ATTEMPTS {
                "failed"
            } else {
                "requeued"
            }
        );
    }
    Ok(lost.len() as u64)
}

/// Ends the build's current attempt (`how`: requeued or released) and puts
/// the build back in the queue as its next attempt, keeping its CPU seconds
/// and samples; after the last attempt the build fails with `last_error`.
async fn give_back(
    conn: &mut SqliteConnection,
    build: &BuildRow,
    how: &str,
    last_error: &str,
    now: i64,
) -> Result<()> {
    if build.attempt >= MAX_ATTEMPTS {
        return finish(conn, build, status::FAILED, Some(last_error), now).await;
    }
    sqlx::query(
        "UPDATE builds SET status = 'pending', attempt = attempt + 1, worker_id = NULL,
         assigned_at = NULL, started_at = NULL WHERE id = ?",
    )
    .bind(build.id)
    .execute(&mut *conn)
    .await?;
    end_attempt(conn, build.id, build.attempt, how, now).await?;
    adjust_totals(
        conn,
        TotalsDelta {
            pending: 1,
            active: -1,
            ..TotalsDelta::default()
        },
    )
    .await
}

/// `POST /api/builds/{id}/release`: the worker gives its build back. A
/// repeat (its attempt already ended by its release) is 200 and changes nothing.
async fn release(
    State(state): State<AppState>,
    Worker(worker): Worker,
    Path(id): Path<String>,
) -> Result<Json<BuildView>> {
    let id = parse_build_id(&id)?;
    let now = now_ms();
    let view = state
        .db
        .writer
        .write(move |conn| {
            async move {
                let build = load_build(conn, id).await?;
                let active = matches!(build.status.as_str(), status::ASSIGNED | status::BUILDING);
                if active && build.worker_id == Some(worker.id) {
                    give_back(conn, &build, outcome::RELEASED, RELEASED_BY_WORKER, now).await?;
                    tracing::info!(
                        build_id = id,
                        worker_id = worker.id,
                        attempt = build.attempt,
                        "build released"
                    );
                } else {
                    let attempts = load_attempts(conn, &[id]).await?;
                    let held = attempts
                        .iter()
                        .filter(|a| a.worker_id == Some(worker.id))
                        .max_by_key(|a| a.attempt)
                        .ok_or_else(|| {
                            AppError::Forbidden("this build is not assigned to this worker".into())
                        })?;
                    let released_before = held.outcome.as_deref() == Some(outcome::RELEASED)
                        || (held.attempt == build.attempt
                            && build.error.as_deref() == Some(RELEASED_BY_WORKER));
                    if !released_before {
                        return Err(AppError::Conflict(format!(
                            "a {} build cannot be released",
                            build.status
                        )));
                    }
                }
                Ok(load_build(conn, id).await?.view())
            }
            .boxed()
        })
        .await?;
    Ok(Json(view))
}

/// Runs the lease reaper until the task is aborted.
pub async fn run_reaper(state: AppState) {
    let lease = state.settings.lease_timeout;
    let period = (lease / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = now_ms();
        let result = state
            .db
            .writer
            .write(move |conn| reap_lost_leases(conn, lease, now).boxed())
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "lease reaper pass failed");
        }
    }
}
