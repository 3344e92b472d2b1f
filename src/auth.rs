//! Who is calling: bearer secrets of the admin, workers and build submitters.
//! Secrets are compared and stored only as SHA-256 hashes; `X-Worker-Id` or
//! any other header authenticates nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::builds::BuildRow;
use crate::cache::lock;
use crate::clock::now_ms;
use crate::error::{AppError, Result};
use crate::storage::{Storage, WorkerIdentity};

/// What authentication owns: the admin key's hash, the worker identities
/// it has looked up, and when each worker was last seen. Cheap to clone.
#[derive(Clone)]
pub struct AuthState {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    storage: Storage,
    /// SHA-256 of the admin key; the key itself is not kept.
    admin_key_hash: [u8; 32],
    /// Worker identities by token hash (workers never change once registered).
    workers: Mutex<HashMap<[u8; 32], WorkerIdentity>>,
    /// Last authenticated call per worker, ms since the epoch, as last
    /// written through to the database.
    last_seen: Mutex<HashMap<i64, i64>>,
    /// How stale a worker's stored `last_seen_at` may get before a call
    /// refreshes it.
    last_seen_resolution_ms: i64,
}

impl AuthState {
    /// Authentication against `admin_key_hash` and the workers in
    /// `storage`. A worker's stored last-seen time is refreshed at most once
    /// per second, and per an eighth of `online_window` and `lease_timeout`
    /// when those are shorter, so the stored time never makes a live worker
    /// look silent while heartbeats and telemetry cost few writes.
    pub fn new(
        storage: Storage,
        admin_key_hash: [u8; 32],
        online_window: Duration,
        lease_timeout: Duration,
    ) -> AuthState {
        let window = online_window.min(lease_timeout).as_millis() as i64;
        AuthState {
            inner: Arc::new(AuthInner {
                storage,
                admin_key_hash,
                workers: Mutex::new(HashMap::new()),
                last_seen: Mutex::new(HashMap::new()),
                last_seen_resolution_ms: (window / 8).clamp(1, 1_000),
            }),
        }
    }

    /// The bearer secret of a request as the admin key or some other
    /// secret; 401 without one.
    fn reader(&self, parts: &Parts) -> Result<BuildReader> {
        match bearer_hash(parts) {
            Some(hash) if hash == self.inner.admin_key_hash => Ok(BuildReader::Admin),
            Some(hash) => Ok(BuildReader::Token(hash)),
            None => Err(AppError::Unauthorized),
        }
    }

    /// Remembers a newly registered worker, so its first call needs no look-up.
    pub fn remember_worker(&self, token_hash: [u8; 32], identity: WorkerIdentity) {
        lock(&self.inner.workers).insert(token_hash, identity);
    }

    /// Loads build `id` for `reader` and checks the reader may see it.
    pub async fn authorize_reader(&self, reader: &BuildReader, id: i64) -> Result<BuildRow> {
        let build = self.inner.storage.build(id).await;
        match (reader, build) {
            (BuildReader::Admin, build) => build,
            (BuildReader::Token(hash), Ok(build)) if build.token_hash == hash[..] => Ok(build),
            // Unknown secrets learn nothing, not even whether the build exists.
            (BuildReader::Token(hash), _) => Err(self.wrong_secret(*hash).await),
        }
    }

    async fn identify_worker(&self, hash: [u8; 32]) -> Result<WorkerIdentity> {
        if let Some(identity) = lock(&self.inner.workers).get(&hash) {
            return Ok(*identity);
        }
        let Some(identity) = self.inner.storage.worker_by_token(hash).await? else {
            return Err(self.wrong_secret(hash).await);
        };
        lock(&self.inner.workers).insert(hash, identity);
        Ok(identity)
    }

    /// The error for a secret that does not grant the resource: 403 when
    /// it is some identity's valid secret, 401 when nobody holds it (SPEC
    /// "Identities and auth").
    async fn wrong_secret(&self, hash: [u8; 32]) -> AppError {
        let forbidden = || AppError::Forbidden("this secret does not grant this resource".into());
        if hash == self.inner.admin_key_hash || lock(&self.inner.workers).contains_key(&hash) {
            return forbidden();
        }
        match self.inner.storage.secret_is_known(hash).await {
            Ok(true) => forbidden(),
            Ok(false) => AppError::Unauthorized,
            Err(error) => error,
        }
    }

    /// Records an authenticated call of worker `id` now, writing it through
    /// at most once per resolution.
    async fn touch_worker(&self, id: i64) -> Result<()> {
        let now = now_ms();
        {
            let mut seen = lock(&self.inner.last_seen);
            match seen.get(&id) {
                Some(&at) if now - at < self.inner.last_seen_resolution_ms => return Ok(()),
                _ => {
                    seen.insert(id, now);
                }
            }
        }
        self.inner.storage.record_last_seen(id, now).await
    }
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

/// Fewest characters an operator's secret (admin key, metrics token) may
/// have: 24 characters of base64 are 144 bits, beyond any guessing over the
/// network, while `abc` or `changeme` fall to the first dictionary tried.
pub const MIN_SECRET_CHARS: usize = 24;

/// An operator's secret too short to keep the controller safe.
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} is {chars} characters long; at least {MIN_SECRET_CHARS} are required. \
     Generate one with `openssl rand -base64 32` or `head -c 32 /dev/urandom | base64`"
)]
pub struct WeakSecret {
    /// Which secret, as the operator sets it (`--admin-key` / `FREEAGENT_ADMIN_KEY`).
    pub name: &'static str,
    /// How many characters it has (never the secret itself).
    pub chars: usize,
}

/// Refuses a secret `name` shorter than [`MIN_SECRET_CHARS`] characters
/// (surrounding whitespace not counted); the error says how to generate a
/// good one and never holds the secret.
pub fn check_secret_strength(name: &'static str, secret: &str) -> Result<(), WeakSecret> {
    let chars = secret.trim().chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(WeakSecret { name, chars });
    }
    Ok(())
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

impl<S> FromRequestParts<S> for Admin
where
    AuthState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let auth = AuthState::from_ref(state);
        match auth.reader(parts)? {
            BuildReader::Admin => Ok(Admin),
            BuildReader::Token(hash) => Err(auth.wrong_secret(hash).await),
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

impl<S> FromRequestParts<S> for BuildReader
where
    AuthState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        AuthState::from_ref(state).reader(parts)
    }
}

/// The caller is a registered worker. Extracting this also records the call
/// as the worker's latest sign of life.
pub struct Worker(pub WorkerIdentity);

impl<S> FromRequestParts<S> for Worker
where
    AuthState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let auth = AuthState::from_ref(state);
        let hash = bearer_hash(parts).ok_or(AppError::Unauthorized)?;
        let identity = auth.identify_worker(hash).await?;
        auth.touch_worker(identity.id).await?;
        Ok(Worker(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 24 characters pass, 23 and blank padding do not, and the error
    /// names the secret, says how to make one and never shows it.
    #[test]
    fn short_secrets_are_refused_with_how_to_generate_one() {
        assert!(check_secret_strength("the admin key", &"k".repeat(24)).is_ok());
        assert!(check_secret_strength("the admin key", &new_secret()).is_ok());
        for short in [
            "",
            "abc",
            &"k".repeat(23),
            &format!("  {}  ", "k".repeat(23)),
        ] {
            let error = check_secret_strength("the admin key", short).expect_err(short);
            let text = error.to_string();
            assert!(text.starts_with("the admin key is "), "{text}");
            assert!(text.contains("openssl rand -base64 32"), "{text}");
        }
        let text = check_secret_strength("x", "hunter2")
            .unwrap_err()
            .to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(" 7 characters"), "{text}");
    }
}
