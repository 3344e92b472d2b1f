//! Who is calling: bearer secrets of the admin, workers and build submitters.
//! Secrets are compared and stored only as SHA-256 hashes; `X-Worker-Id` or
//! any other header authenticates nothing.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use futures::FutureExt;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::now_ms;
use crate::error::{AppError, Result};
use crate::state::{lock, AppState, WorkerIdentity};

/// How stale a worker's stored `last_seen_at` may get before a call refreshes
/// it: bounds the writes that heartbeats and telemetry cause to one per
/// second, and to an eighth of the online window and lease when those are
/// shorter, so the stored time never makes a live worker look silent.
fn last_seen_resolution_ms(state: &AppState) -> i64 {
    let window = state
        .settings
        .online_window
        .min(state.settings.lease_timeout)
        .as_millis() as i64;
    (window / 8).clamp(1, 1_000)
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new random secret: 32 bytes from the OS generator, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Hash of the bearer secret in the `Authorization` header, if any.
pub fn bearer_hash(parts: &Parts) -> Option<[u8; 32]> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.trim().split_once(' ')?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return None;
    }
    Some(hash_secret(secret))
}

/// The caller holds the admin key.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match bearer_hash(parts) {
            Some(hash) if hash == state.settings.admin_key_hash => Ok(Admin),
            Some(hash) => Err(wrong_secret(state, hash).await),
            None => Err(AppError::Unauthorized),
        }
    }
}

/// Who may read or cancel a build: the admin, or that build's token holder.
pub enum BuildReader {
    /// The admin key.
    Admin,
    /// Some build token (checked against the build by the handler).
    Token([u8; 32]),
}

impl FromRequestParts<AppState> for BuildReader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        match bearer_hash(parts) {
            Some(hash) if hash == state.settings.admin_key_hash => Ok(BuildReader::Admin),
            Some(hash) => Ok(BuildReader::Token(hash)),
            None => Err(AppError::Unauthorized),
        }
    }
}

/// The caller is a registered worker. Extracting this also records the call
/// as the worker's latest sign of life.
pub struct Worker(pub WorkerIdentity);

impl FromRequestParts<AppState> for Worker {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let hash = bearer_hash(parts).ok_or(AppError::Unauthorized)?;
        let identity = identify_worker(state, hash).await?;
        touch_worker(state, identity.id).await?;
        Ok(Worker(identity))
    }
}

async fn identify_worker(state: &AppState, hash: [u8; 32]) -> Result<WorkerIdentity> {
    if let Some(identity) = lock(&state.caches.workers).get(&hash) {
        return Ok(*identity);
    }
    let row: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, cpu_cores, memory_mb FROM workers WHERE token_hash = ?")
            .bind(&hash[..])
            .fetch_optional(&state.db.reads)
            .await?;
    let Some((id, cpu_cores, memory_mb)) = row else {
        return Err(wrong_secret(state, hash).await);
    };
    let identity = WorkerIdentity {
        id,
        cpu_cores,
        memory_mb,
    };
    lock(&state.caches.workers).insert(hash, identity);
    Ok(identity)
}

/// The error for a secret that does not grant the resource: 403 when it is
/// some identity's valid secret, 401 when nobody holds it (SPEC "Identities
/// and auth").
pub async fn wrong_secret(state: &AppState, hash: [u8; 32]) -> AppError {
    if hash == state.settings.admin_key_hash || lock(&state.caches.workers).contains_key(&hash) {
        return AppError::Forbidden("this secret does not grant this resource".into());
    }
    let known: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
        "SELECT 1 FROM workers WHERE token_hash = ?1 UNION ALL SELECT 1 FROM builds WHERE token_hash = ?1 LIMIT 1",
    )
    .bind(&hash[..])
    .fetch_optional(&state.db.reads)
    .await;
    match known {
        Ok(Some(_)) => AppError::Forbidden("this secret does not grant this resource".into()),
        Ok(None) => AppError::Unauthorized,
        Err(error) => AppError::Database(error),
    }
}

/// Records an authenticated call of worker `id` now, writing it through at
/// most once per [`last_seen_resolution_ms`].
async fn touch_worker(state: &AppState, id: i64) -> Result<()> {
    let now = now_ms();
    {
        let mut seen = lock(&state.caches.last_seen);
        match seen.get(&id) {
            Some(&at) if now - at < last_seen_resolution_ms(state) => return Ok(()),
            _ => {
                seen.insert(id, now);
            }
        }
    }
    state
        .db
        .writer
        .write_checked(move |conn| {
            async move {
                sqlx::query("UPDATE workers SET last_seen_at = max(last_seen_at, ?) WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            .boxed()
        })
        .await
}
