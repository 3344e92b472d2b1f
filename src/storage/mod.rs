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

pub mod sqlite;

use crate::builds::{AttemptRow, BuildRow, Event};
use crate::error::Result;
use crate::telemetry::TelemetryBody;
use crate::wire::{ClaimedBuild, StoredSnapshot, TelemetryAnswer};

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

/// Picks the lifecycle event for a build from the build and its attempts
/// as stored inside the change's transaction: `Ok(None)` changes nothing,
/// `Err` refuses.
pub type ChangeDecision =
    Box<dyn FnOnce(&BuildRow, &[AttemptRow]) -> Result<Option<Event>> + Send + 'static>;

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

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL names a database this controller does not serve. Only the
    /// scheme is shown: the rest of a URL may hold a password.
    #[error("`{scheme}:` database URLs are not served by this controller; use sqlite://PATH")]
    Unsupported {
        /// The URL's scheme.
        scheme: String,
    },
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Checks that `url` names a backend this controller serves, before anything
/// touches the disk (sqlx would read `postgres://host/db` as a file path).
pub fn check_url(url: &str) -> std::result::Result<(), OpenError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    if scheme.eq_ignore_ascii_case("sqlite") {
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

/// The controller's database. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Database),
}

impl Storage {
    /// Opens the database at `url`, creating and migrating it when needed.
    pub async fn open(url: &str) -> std::result::Result<Storage, OpenError> {
        check_url(url)?;
        Ok(Storage {
            backend: Backend::Sqlite(sqlite::open(url).await?),
        })
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.health().await,
        }
    }

    /// Stores a new worker; returns its id.
    pub async fn register_worker(&self, worker: NewWorker) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(db) => db.register_worker(worker).await,
        }
    }

    /// The worker whose token has this hash.
    pub async fn worker_by_token(&self, hash: [u8; 32]) -> Result<Option<WorkerIdentity>> {
        match &self.backend {
            Backend::Sqlite(db) => db.worker_by_token(hash).await,
        }
    }

    /// Whether some worker or build holds the secret with this hash.
    pub async fn secret_is_known(&self, hash: [u8; 32]) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(db) => db.secret_is_known(hash).await,
        }
    }

    /// Records that worker `id` made an authenticated call at `now`.
    pub async fn record_last_seen(&self, id: i64, now: i64) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(db) => db.record_last_seen(id, now).await,
        }
    }

    /// The builds assigned to `worker_id` that were cancelled at or after
    /// `since`, oldest first.
    pub async fn cancelled_builds(&self, worker_id: i64, since: i64) -> Result<Vec<i64>> {
        match &self.backend {
            Backend::Sqlite(db) => db.cancelled_builds(worker_id, since).await,
        }
    }

    /// Stores a new pending build; returns its id.
    pub async fn submit_build(&self, build: NewBuild) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(db) => db.submit_build(build).await,
        }
    }

    /// A build as stored now; 404 when there is none.
    pub async fn build(&self, id: i64) -> Result<BuildRow> {
        match &self.backend {
            Backend::Sqlite(db) => db.build(id).await,
        }
    }

    /// Hands the oldest pending build of the worker's platforms to it,
    /// atomically: two workers never get the same build.
    pub async fn claim(&self, worker_id: i64, now: i64) -> Result<Option<ClaimedBuild>> {
        match &self.backend {
            Backend::Sqlite(db) => db.claim(worker_id, now).await,
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
        }
    }

    /// Ends the attempt of every active build whose worker was silent
    /// since `silent_since`; returns those builds as they were.
    pub async fn reap_lost_leases(&self, silent_since: i64, now: i64) -> Result<Vec<BuildRow>> {
        match &self.backend {
            Backend::Sqlite(db) => db.reap_lost_leases(silent_since, now).await,
        }
    }

    /// Stores telemetry requests together, answering each as if they had
    /// been stored one by one in this order. `Err` fails them all.
    pub async fn store_telemetry(
        &self,
        requests: Vec<TelemetryRequest>,
        grace_ms: i64,
    ) -> Result<Vec<Result<TelemetryAnswer>>> {
        match &self.backend {
            Backend::Sqlite(db) => db.store_telemetry(requests, grace_ms).await,
        }
    }

    /// A build's stored samples, oldest first.
    pub async fn snapshots(&self, build_id: i64) -> Result<Vec<StoredSnapshot>> {
        match &self.backend {
            Backend::Sqlite(db) => db.snapshots(build_id).await,
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
        }
    }

    /// The stored days `first..=last` that have figures, oldest first.
    pub async fn daily(&self, first: i64, last: i64) -> Result<Vec<DailyRow>> {
        match &self.backend {
            Backend::Sqlite(db) => db.daily(first, last).await,
        }
    }

    /// One batch of retention: raw rows received before `cutoff`; returns
    /// how many went (0 once nothing is left).
    pub async fn purge_batch(&self, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
        match &self.backend {
            Backend::Sqlite(db) => db.purge_batch(cutoff, now, grace_ms).await,
        }
    }
}

/// `freeagent purge`: retention on the database at `url` without a
/// controller, batch by batch; `cutoff_at` gives the cutoff for a time.
pub async fn purge(url: &str, cutoff_at: impl Fn(i64) -> i64, grace_ms: i64) -> Result<u64> {
    check_url(url).map_err(|e| crate::error::AppError::BadRequest(e.to_string()))?;
    sqlite::purge_database(url, cutoff_at, grace_ms).await
}
