//! Storage: every statement the controller sends to its database lives
//! below this module, behind named operations (claim the next build, change
//! a build by a lifecycle event, store a batch of telemetry, read the
//! figures, purge a batch, ...). Domain code calls these and never writes
//! SQL or opens a transaction.
//!
//! The seam is an enum over backends rather than a trait: the operations
//! are async and called on hot paths, and an enum keeps them statically
//! dispatched, without boxing every future, while a second backend is one
//! more variant whose arms the compiler asks for everywhere. Each backend
//! keeps its own way of making writes atomic and durable (SQLite: the
//! single writer's group commit, see [`sqlite`]); the rules of what to
//! write (`builds::transition`, the ledger, per-attempt accounting) are
//! pure code that every backend calls.

pub mod postgres;
pub mod sqlite;
pub mod verify;

use crate::builds::{AttemptRow, BuildRow, Event};
use crate::error::Result;
use crate::telemetry::TelemetryBody;
use crate::wire::{ClaimedBuild, StoredSnapshot};

/// A worker as authentication needs it.
#[derive(Clone, Copy, Debug)]
pub struct WorkerIdentity {
    /// Worker id.
    pub id: i64,
    /// Declared cores: bound for `cpuPercent` and `cpuTimeS`.
    pub cpu_cores: i64,
    /// Declared memory: bound for `memoryMb`.
    pub memory_mb: i64,
}

/// A worker to register.
#[derive(Clone, Debug)]
pub struct NewWorker {
    pub name: String,
    /// Its platforms as a JSON array, sorted and without repeats.
    pub platforms_json: String,
    pub cpu_cores: i64,
    pub memory_mb: i64,
    pub token_hash: [u8; 32],
    pub registered_at: i64,
}

/// A build to submit.
#[derive(Clone, Debug)]
pub struct NewBuild {
    pub platform: String,
    pub label: Option<String>,
    pub submitted_at: i64,
    pub token_hash: [u8; 32],
}

/// A build just claimed: what the worker is told, and when the build was
/// submitted (its wait for a machine, for the metrics).
#[derive(Clone, Debug)]
pub struct Claim {
    pub build: ClaimedBuild,
    pub submitted_at: i64,
}

impl Claim {
    /// The claim of `build` (as stored before the claim) as its run
    /// number `attempt`.
    pub fn new(build: BuildRow, attempt: i64) -> Claim {
        Claim {
            submitted_at: build.submitted_at,
            build: ClaimedBuild {
                id: build.id,
                platform: build.platform,
                label: build.label,
                attempt,
            },
        }
    }
}

/// Picks the lifecycle event for a build from the build and its attempts
/// as stored inside the change's transaction: `Ok(None)` changes nothing,
/// `Err` refuses.
pub type ChangeDecision =
    Box<dyn FnOnce(&BuildRow, &[AttemptRow]) -> Result<Option<Event>> + Send + 'static>;

/// How a backend takes telemetry requests: the ingest route's one choice
/// by backend.
pub enum TelemetryIntake {
    /// SQLite: each request straight to the writer, which stores it in its
    /// next group together with the telemetry next to it there and the
    /// claims and transitions arriving meanwhile: one commit for all.
    Writer(sqlite::Writer),
    /// Postgres: batches that the caller gathers (the telemetry batcher),
    /// each stored in one transaction under its builds' locks, several at
    /// once ([`postgres::CONCURRENT_TELEMETRY_STORES`]).
    Batches(postgres::Database),
}

/// One telemetry request, parsed, for the build it names.
pub struct TelemetryRequest {
    /// The authenticated worker.
    pub worker: WorkerIdentity,
    /// The build in the path.
    pub build_id: i64,
    /// Samples or an event.
    pub body: TelemetryBody,
    /// When the request arrived, ms.
    pub now: i64,
}

impl TelemetryRequest {
    /// What the request weighs when requests are gathered into one commit:
    /// its samples (an event: one).
    pub fn weight(&self) -> usize {
        match &self.body {
            TelemetryBody::Samples(samples) => samples.len().max(1),
            TelemetryBody::Event { .. } => 1,
        }
    }
}

/// The stored figures `NetworkStats` is made of, read in one snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoredFigures {
    pub pending: i64,
    pub active: i64,
    pub finished: i64,
    pub build_time_ms: i64,
    pub cpu_micros: i64,
    /// Builds that finished on the day asked for.
    pub finished_today: i64,
    /// Workers seen since the time asked for.
    pub workers_online: i64,
    /// Sum of the newest fresh sample's `cpuPercent` over active builds.
    pub busy_percent: f64,
}

/// One stored `daily` row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DailyRow {
    /// Days since the epoch, UTC.
    pub day: i64,
    pub finished: i64,
    pub failed: i64,
    pub build_time_ms: i64,
    pub cpu_micros: i64,
}

/// The row both backends read the figures as: pending, active, finished,
/// build time, CPU µs, finished today, workers online, busy percent.
pub(crate) type FiguresRow = (i64, i64, i64, i64, i64, i64, i64, f64);

impl From<FiguresRow> for StoredFigures {
    fn from(row: FiguresRow) -> StoredFigures {
        let (pending, active, finished, build_time_ms, cpu_micros, today, online, busy) = row;
        StoredFigures {
            pending,
            active,
            finished,
            build_time_ms,
            cpu_micros,
            finished_today: today,
            workers_online: online,
            busy_percent: busy,
        }
    }
}

impl From<(i64, i64, i64, i64, i64)> for DailyRow {
    fn from((day, finished, failed, build_time_ms, cpu_micros): (i64, i64, i64, i64, i64)) -> Self {
        DailyRow {
            day,
            finished,
            failed,
            build_time_ms,
            cpu_micros,
        }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names a database this controller does not serve. Only the
    /// scheme is shown: the rest of a URL may hold a password.
    #[error(
        "`{scheme}:` database URLs are not served by this controller; use sqlite://PATH or postgres://USER@HOST:PORT/DB"
    )]
    Unsupported {
        /// The URL's scheme.
        scheme: String,
    },
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite writer's own connection could not be opened.
    #[error("database writer: {0}")]
    Writer(#[from] rusqlite::Error),
}

/// Checks that `url` names a backend this controller serves, before anything
/// touches the disk (sqlx would read `postgres://host/db` as a file path).
pub fn check_url(url: &str) -> std::result::Result<(), OpenError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    if scheme.eq_ignore_ascii_case("sqlite") || postgres::is_postgres_url(url) {
        Ok(())
    } else {
        Err(OpenError::Unsupported {
            scheme: scheme
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
                .take(32)
                .collect(),
        })
    }
}

/// `url` with any password (in its user part or as a `password=` query
/// parameter) replaced by `***`, fit for a log line.
pub fn redacted_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut redacted = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}{path}")
                }
                _ => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_string(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&params.join("&"));
    }
    redacted
}

/// The controller's database. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Database),
    Postgres(postgres::Database),
}

impl Storage {
    /// Opens the database at `url`, creating and migrating it when needed.
    pub async fn open(url: &str) -> std::result::Result<Storage, OpenError> {
        check_url(url)?;
        let backend = if postgres::is_postgres_url(url) {
            Backend::Postgres(postgres::open(url).await?)
        } else {
            Backend::Sqlite(sqlite::open(url).await?)
        };
        Ok(Storage { backend })
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.health().await,
            Backend::Postgres(db) => db.health().await,
        }
    }

    /// Stores a new worker; returns its id.
    pub async fn register_worker(&self, worker: NewWorker) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(db) => db.register_worker(worker).await,
            Backend::Postgres(db) => db.register_worker(worker).await,
        }
    }

    /// The worker whose token has this hash.
    pub async fn worker_by_token(&self, hash: [u8; 32]) -> Result<Option<WorkerIdentity>> {
        match &self.backend {
            Backend::Sqlite(db) => db.worker_by_token(hash).await,
            Backend::Postgres(db) => db.worker_by_token(hash).await,
        }
    }

    /// Whether some worker or build holds the secret with this hash.
    pub async fn secret_is_known(&self, hash: [u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(db) => db.secret_is_known(hash).await,
            Backend::Postgres(db) => db.secret_is_known(hash).await,
        }
    }

    /// Records that each worker `(id, at)` made an authenticated call at
    /// `at` (ms); a stored time never moves backwards.
    pub async fn record_seen_times(&self, times: Vec<(i64, i64)>) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.record_seen_times(times).await,
            Backend::Postgres(db) => db.record_seen_times(times).await,
        }
    }

    /// The builds assigned to `worker_id` that were cancelled at or after
    /// `since`, oldest first.
    pub async fn cancelled_builds(&self, worker_id: i64, since: i64) -> Result<Vec<i64>> {
        match &self.backend {
            Backend::Sqlite(db) => db.cancelled_builds(worker_id, since).await,
            Backend::Postgres(db) => db.cancelled_builds(worker_id, since).await,
        }
    }

    /// Stores a new pending build; returns its id.
    pub async fn submit_build(&self, build: NewBuild) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(db) => db.submit_build(build).await,
            Backend::Postgres(db) => db.submit_build(build).await,
        }
    }

    /// A build as stored now; 404 when there is none.
    pub async fn build(&self, id: i64) -> Result<BuildRow> {
        match &self.backend {
            Backend::Sqlite(db) => db.build(id).await,
            Backend::Postgres(db) => db.build(id).await,
        }
    }

    /// Hands the oldest pending build of the worker's platforms to it,
    /// atomically: two workers never get the same build.
    pub async fn claim(&self, worker_id: i64, now: i64) -> Result<Option<Claim>> {
        match &self.backend {
            Backend::Sqlite(db) => db.claim(worker_id, now).await,
            Backend::Postgres(db) => db.claim(worker_id, now).await,
        }
    }

    /// Changes build `id` by the event `decide` picks (see
    /// [`ChangeDecision`]) with its ledger delta, in one transaction;
    /// returns the build after.
    pub async fn change_build(
        &self,
        id: i64,
        now: i64,
        decide: ChangeDecision,
    ) -> Result<BuildRow> {
        match &self.backend {
            Backend::Sqlite(db) => db.change_build(id, now, decide).await,
            Backend::Postgres(db) => db.change_build(id, now, decide).await,
        }
    }

    /// Ends the attempt of every active build whose worker was silent
    /// since `silent_since`; returns those builds as they were.
    pub async fn reap_lost_leases(&self, silent_since: i64, now: i64) -> Result<Vec<BuildRow>> {
        match &self.backend {
            Backend::Sqlite(db) => db.reap_lost_leases(silent_since, now).await,
            Backend::Postgres(db) => db.reap_lost_leases(silent_since, now).await,
        }
    }

    /// How this backend takes telemetry requests (see [`TelemetryIntake`]).
    pub fn telemetry_intake(&self) -> TelemetryIntake {
        match &self.backend {
            Backend::Sqlite(db) => TelemetryIntake::Writer(db.writer.clone()),
            Backend::Postgres(db) => TelemetryIntake::Batches(db.clone()),
        }
    }

    /// A build's stored samples, oldest first.
    pub async fn snapshots(&self, build_id: i64) -> Result<Vec<StoredSnapshot>> {
        match &self.backend {
            Backend::Sqlite(db) => db.snapshots(build_id).await,
            Backend::Postgres(db) => db.snapshots(build_id).await,
        }
    }

    /// The stored figures for UTC day `today`, workers seen since
    /// `online_since` and samples taken since `fresh_since`.
    pub async fn figures(
        &self,
        today: i64,
        online_since: i64,
        fresh_since: i64,
    ) -> Result<StoredFigures> {
        match &self.backend {
            Backend::Sqlite(db) => db.figures(today, online_since, fresh_since).await,
            Backend::Postgres(db) => db.figures(today, online_since, fresh_since).await,
        }
    }

    /// Builds first assigned from queue-wait slot `first_slot` on, as
    /// (bucket, builds) per bucket (see [`crate::stats::queue_wait`]).
    pub async fn queue_waits(&self, first_slot: i64) -> Result<Vec<(i64, i64)>> {
        match &self.backend {
            Backend::Sqlite(db) => db.queue_waits(first_slot).await,
            Backend::Postgres(db) => db.queue_waits(first_slot).await,
        }
    }

    /// The stored days `first..=last` that have figures, oldest first.
    pub async fn daily(&self, first: i64, last: i64) -> Result<Vec<DailyRow>> {
        match &self.backend {
            Backend::Sqlite(db) => db.daily(first, last).await,
            Backend::Postgres(db) => db.daily(first, last).await,
        }
    }

    /// One batch of retention: raw rows received before `cutoff`; returns
    /// how many went (0 once nothing is left).
    pub async fn purge_batch(&self, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite(db) => db.purge_batch(cutoff, now, grace_ms).await,
            Backend::Postgres(db) => db.purge_batch(cutoff, now, grace_ms).await,
        }
    }

    /// Whether this controller should perform `duty` now: takes or renews
    /// its lease for `lease_ms` in the database. A lone SQLite controller
    /// always holds every duty.
    pub async fn hold_duty(&self, duty: Duty, now: i64, lease_ms: i64) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(db) => db.hold_duty(duty.name(), now, lease_ms).await,
        }
    }

    /// Gives up `duty` (a controller stopping), so another takes it at once.
    pub async fn give_up_duty(&self, duty: Duty) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.give_up_duty(duty.name()).await,
        }
    }

    /// Wakes `waiters` when another controller on the same database puts a
    /// build in the queue (this controller wakes them itself).
    pub fn forward_queue_changes(&self, waiters: std::sync::Arc<tokio::sync::Notify>) {
        match &self.backend {
            Backend::Sqlite(_) => {}
            Backend::Postgres(db) => db.forward_queue_changes(waiters),
        }
    }

    /// Reports each SQLite group commit to `meters` (Postgres has no
    /// single writer: nothing to report).
    pub fn attach_meters(&self, meters: crate::meters::Meters) {
        match &self.backend {
            Backend::Sqlite(db) => db.writer.attach_meters(meters),
            Backend::Postgres(_) => {}
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// Work that one controller at a time performs for the whole database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    /// The lease reaper.
    Reaper,
    /// Retention.
    Retention,
}

impl Duty {
    /// How often a controller takes or renews a duty's lease (the lease
    /// reaper's period), given the workers' lease timeout.
    pub fn renew_every(lease_timeout: std::time::Duration) -> std::time::Duration {
        (lease_timeout / 4).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        )
    }

    /// How long a duty's lease lasts: a third of the workers' lease
    /// timeout, so that when its holder dies another controller takes the
    /// duty over well within one lease timeout (a third for the lease to
    /// run out, then at most one renewal period, itself at most a quarter),
    /// while a live holder renews it at least once before it runs out.
    pub fn lease_ms(lease_timeout: std::time::Duration) -> i64 {
        (lease_timeout / 3).as_millis().max(1) as i64
    }

    fn name(self) -> &'static str {
        match self {
            Duty::Reaper => "reaper",
            Duty::Retention => "retention",
        }
    }
}

/// A refused transition as the client sees it.
pub(crate) fn refusal_error(refusal: crate::builds::Refusal) -> crate::error::AppError {
    use crate::builds::Refusal;
    use crate::error::AppError;
    match refusal {
        Refusal::AlreadyThere => AppError::Conflict("the build is already in that state".into()),
        Refusal::NotAllowed(why) => AppError::Conflict(why),
    }
}

/// `freeagent purge`: retention on the database at `url` without a
/// controller, batch by batch; `cutoff_at` gives the cutoff for a time.
pub async fn purge(
    url: &str,
    cutoff_at: impl Fn(i64) -> i64 + Send + 'static,
    grace_ms: i64,
) -> Result<u64> {
    check_url(url).map_err(|e| crate::error::AppError::BadRequest(e.to_string()))?;
    if postgres::is_postgres_url(url) {
        postgres::purge_database(url, cutoff_at, grace_ms).await
    } else {
        sqlite::purge_database(url, cutoff_at, grace_ms).await
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    /// A password never reaches a log line, wherever the URL carries it;
    /// everything else stays readable.
    #[test]
    fn passwords_are_redacted_and_nothing_else() {
        assert_eq!(
            redacted_url("postgres://fa:s3cret@db:5432/fa"),
            "postgres://fa:***@db:5432/fa"
        );
        assert_eq!(
            redacted_url("postgres://fa@db/fa?sslmode=require&password=s3cret"),
            "postgres://fa@db/fa?sslmode=require&password=***"
        );
        assert_eq!(redacted_url("postgres://fa@db/fa"), "postgres://fa@db/fa");
        assert_eq!(
            redacted_url("sqlite://data/freeagent.db"),
            "sqlite://data/freeagent.db"
        );
    }
}
