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
    /// Worker identities by token hash (workers never change once
    /// registered), each with when it was last used, ms since the epoch:
    /// identities unused for the online window are evicted at a flush, so
    /// the cache holds the workers that call, not every worker ever known.
    workers: Mutex<HashMap<[u8; 32], (WorkerIdentity, i64)>>,
    /// When each worker was last seen, until it is written.
    seen: SeenTimes,
    /// How long an unused identity stays cached.
    identity_ttl_ms: i64,
}

/// Workers' latest authenticated calls that are not yet in the database,
/// ms since the epoch by worker id. Cheap to clone.
///
/// Recording that a worker was seen is a map insert; [`SeenTimes::flush`]
/// writes every pending time in one statement. Writing per request cost a
/// database job per authenticated call, most of the controller's work at
/// fleet-shaped load. Whatever reads `last_seen_at` on this controller
/// flushes first (the figures' `nodesOnline`, the lease reaper), and a
/// background task flushes every [`SeenTimes::every`], a small fraction of
/// the online window and the lease timeout, for the other controllers of a
/// Postgres database. The map is emptied at every flush, so it holds only
/// the workers seen since the last one.
#[derive(Clone)]
pub struct SeenTimes {
    inner: Arc<SeenInner>,
}

struct SeenInner {
    storage: Storage,
    pending: Mutex<HashMap<i64, i64>>,
    /// One flush at a time, so a time taken from the map is written before
    /// a later flush can report the map written.
    flushing: tokio::sync::Mutex<()>,
    every: Duration,
}

/// Longest time between flushes of the seen-times.
pub const SEEN_FLUSH_MAX: Duration = Duration::from_secs(5);

impl SeenTimes {
    /// Seen-times written to `storage` at least every eighth of the shorter
    /// of `online_window` and `lease_timeout`, and at most every
    /// [`SEEN_FLUSH_MAX`].
    pub fn new(storage: Storage, online_window: Duration, lease_timeout: Duration) -> SeenTimes {
        let every =
            (online_window.min(lease_timeout) / 8).clamp(Duration::from_millis(50), SEEN_FLUSH_MAX);
        SeenTimes {
            inner: Arc::new(SeenInner {
                storage,
                pending: Mutex::new(HashMap::new()),
                flushing: tokio::sync::Mutex::new(()),
                every,
            }),
        }
    }

    /// How often the background task flushes.
    pub fn every(&self) -> Duration {
        self.inner.every
    }

    /// Worker `id` made an authenticated call at `now`.
    pub fn record(&self, id: i64, now: i64) {
        lock(&self.inner.pending)
            .entry(id)
            .and_modify(|at| *at = (*at).max(now))
            .or_insert(now);
    }

    /// Workers seen since the last flush.
    pub fn pending(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    /// Writes every pending seen-time, in one database job; returns how
    /// many. When the write fails the times go back to the map for the next
    /// flush.
    pub async fn flush(&self) -> Result<usize> {
        let _one = self.inner.flushing.lock().await;
        let taken = std::mem::take(&mut *lock(&self.inner.pending));
        if taken.is_empty() {
            return Ok(0);
        }
        let times: Vec<(i64, i64)> = taken.iter().map(|(&id, &at)| (id, at)).collect();
        match self.inner.storage.record_seen_times(times).await {
            Ok(()) => Ok(taken.len()),
            Err(error) => {
                let mut pending = lock(&self.inner.pending);
                for (id, at) in taken {
                    let entry = pending.entry(id).or_insert(at);
                    *entry = (*entry).max(at);
                }
                Err(error)
            }
        }
    }
}

impl AuthState {
    /// Authentication against `admin_key_hash` and the workers in
    /// `storage`; authenticated calls are recorded in `seen`. A worker
    /// identity unused for `online_window` leaves the cache.
    pub fn new(
        storage: Storage,
        admin_key_hash: [u8; 32],
        seen: SeenTimes,
        online_window: Duration,
    ) -> AuthState {
        AuthState {
            inner: Arc::new(AuthInner {
                storage,
                admin_key_hash,
                workers: Mutex::new(HashMap::new()),
                seen,
                identity_ttl_ms: online_window.as_millis() as i64,
            }),
        }
    }

    /// Where authenticated calls are recorded.
    pub fn seen(&self) -> &SeenTimes {
        &self.inner.seen
    }

    /// Flushes the seen-times, then evicts the identities nobody used for
    /// the online window; returns how many stay cached.
    pub async fn flush_seen(&self) -> Result<usize> {
        self.inner.seen.flush().await?;
        let unused_since = now_ms() - self.inner.identity_ttl_ms;
        let mut workers = lock(&self.inner.workers);
        workers.retain(|_, (_, used)| *used >= unused_since);
        Ok(workers.len())
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
        lock(&self.inner.workers).insert(token_hash, (identity, now_ms()));
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

    /// The worker holding this secret; the call counts as a sign of life.
    async fn identify_worker(&self, hash: [u8; 32]) -> Result<WorkerIdentity> {
        let now = now_ms();
        let cached = lock(&self.inner.workers)
            .get_mut(&hash)
            .map(|(identity, used)| {
                *used = now;
                *identity
            });
        let identity = match cached {
            Some(identity) => identity,
            None => {
                let Some(identity) = self.inner.storage.worker_by_token(hash).await? else {
                    return Err(self.wrong_secret(hash).await);
                };
                lock(&self.inner.workers).insert(hash, (identity, now));
                identity
            }
        };
        self.inner.seen.record(identity.id, now);
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
}

/// Flushes the seen-times (and evicts unused identities) every
/// [`SeenTimes::every`] until the task is aborted.
pub async fn run_seen_flusher(auth: AuthState) {
    let mut ticker = tokio::time::interval(auth.seen().every());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match auth.flush_seen().await {
            Ok(cached) => tracing::trace!(cached, "seen-times written"),
            Err(error) => {
                tracing::warn!(%error, "could not write the seen-times; kept for the next flush")
            }
        }
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
/// as the worker's latest sign of life (in memory; see [`SeenTimes`]).
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
        Ok(Worker(auth.identify_worker(hash).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::NewWorker;

    /// A worker's calls are recorded in memory and written by a flush,
    /// which empties the map; an identity nobody used for the online window
    /// leaves the cache, and the worker's next call finds it again.
    #[tokio::test]
    async fn seen_times_flush_and_quiet_identities_leave() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let storage = Storage::open(&url).await.expect("open");
        let token = new_secret();
        let hash = hash_secret(&token);
        let id = storage
            .register_worker(NewWorker {
                name: "w".into(),
                platforms_json: r#"["linux"]"#.into(),
                cpu_cores: 4,
                memory_mb: 8192,
                token_hash: hash,
                registered_at: 1,
            })
            .await
            .expect("register");
        let window = Duration::from_millis(200);
        let seen = SeenTimes::new(storage.clone(), window, Duration::from_secs(300));
        assert_eq!(seen.every(), Duration::from_millis(50));
        let auth = AuthState::new(storage.clone(), hash_secret("admin"), seen.clone(), window);
        assert_eq!(auth.identify_worker(hash).await.expect("known").id, id);
        assert_eq!(auth.identify_worker(hash).await.expect("cached").id, id);
        assert_eq!(
            seen.pending(),
            1,
            "one entry per worker, however many calls"
        );
        let online = |since| {
            let storage = storage.clone();
            async move {
                let figures = storage.figures(0, since, 0).await.expect("figures");
                figures.workers_online
            }
        };
        assert_eq!(online(2).await, 0, "not written yet");
        assert_eq!(auth.flush_seen().await.expect("flush"), 1, "still cached");
        assert_eq!(online(2).await, 1, "written");
        assert_eq!(seen.pending(), 0);
        assert_eq!(seen.flush().await.expect("flush"), 0, "nothing new");
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert_eq!(auth.flush_seen().await.expect("flush"), 0, "evicted");
        assert_eq!(auth.identify_worker(hash).await.expect("looked up").id, id);
        assert_eq!(seen.pending(), 1);
    }

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
