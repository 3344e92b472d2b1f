//! The SQLite backend: connection settings, migrations, the read pool, the
//! single writer that groups concurrent changes into one transaction, and
//! (in the files beside this one) every SQL statement of the controller.
//!
//! Every change goes through [`Writer::write`] or [`Writer::write_checked`].
//! The writer, on a thread of its own, takes whatever jobs are queued, runs
//! them in one `BEGIN IMMEDIATE` transaction, commits once (WAL,
//! `synchronous=FULL`: one fsync for the whole group) and only then answers
//! each caller. So a 2xx answer means the change is on disk, and durability
//! does not cost throughput.
//!
//! The writer's connection is synchronous (rusqlite) on that thread: a
//! group costs one hand-off to the thread and one back per caller. Through
//! sqlx every statement was a round trip to the connection's own thread,
//! and at fleet-shaped load those hand-offs, not SQLite, were most of the
//! controller's CPU. Reads (stats, build views, auth look-ups) stay on
//! sqlx's pool, off the writer.
//!
//! The hot path (telemetry) runs without a savepoint of its own: it checks
//! everything before its first write, and a database error after that fails
//! its whole group, which then answers 503 to every caller in it.
//! Because one thread applies every change in order, claims and state
//! transitions are atomic without row locks.
//!
//! Jobs that arrive spread out (a fleet's claims, starts and completes) wait
//! a few ms for company before BEGIN, but only while company is coming
//! (see [`crate::gather`]): a fixed window cut closed-loop throughput (64
//! connections waiting on one group) to about a third, since nothing more
//! can arrive while every client waits on the group being held open.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AppError, Result};
use crate::gather::{Arrivals, FLEET};
use crate::storage::{OpenError, TelemetryRequest};
use crate::wire::TelemetryAnswer;

mod builds;
mod cancellations;
mod figures;
mod retention;
mod rows;
mod script;
mod telemetry;
mod verify;
mod workers;

pub use retention::purge_database;
pub use verify::{backup_database, verify_database};

/// Most jobs grouped into one transaction.
const MAX_JOBS_PER_COMMIT: usize = 512;
/// Queued jobs before callers wait: bounds memory under overload.
const QUEUE_DEPTH: usize = 8192;
/// How long a statement waits for another connection's write lock (an
/// operator's `freeagent purge` or `verify --repair`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// KiB of page cache per connection. The writer touches little but the
/// right edge of each build's samples, and every connection's cache counts
/// in the server's RSS.
const CACHE_KIB: i64 = 2048;

/// The database handles the app shares: a pool for reads and the writer.
#[derive(Clone)]
pub struct Database {
    /// Read-only work: stats, build views, auth look-ups.
    pub reads: SqlitePool,
    /// The only path that changes the database.
    pub writer: Writer,
    /// Builds cancelled while a worker held them (see [`cancellations`]).
    cancellations: Arc<cancellations::Cancellations>,
}

fn connect_options(url: &str) -> std::result::Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .pragma("cache_size", format!("-{CACHE_KIB}")))
}

/// Creates the database file's folder when the URL names a file that is missing.
pub fn ensure_parent_dir(url: &str) -> std::io::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// Creates the database file when missing and brings its schema up to date.
async fn migrate(url: &str) -> std::result::Result<SqliteConnectOptions, sqlx::Error> {
    ensure_parent_dir(url).map_err(sqlx::Error::Io)?;
    let options = connect_options(url)?;
    // Migrating through a one-connection pool rather than `&mut conn`
    // keeps callers' futures `Send` (sqlx's `Acquire` on `&mut` is not
    // general enough for spawned tasks).
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("migrations/sqlite").run(&pool).await?;
    pool.close().await;
    Ok(options)
}

/// One connection to the database, created and migrated when needed.
pub async fn connect(url: &str) -> std::result::Result<SqliteConnection, sqlx::Error> {
    let options = migrate(url).await?;
    SqliteConnection::connect_with(&options).await
}

/// A synchronous connection to the migrated database file at `path`, set
/// up as [`connect_options`] sets up sqlx's: for a thread of its own.
fn connect_blocking(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Telemetry's statements differ by their batch's size; sqlx's default.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -{CACHE_KIB};"
    ))?;
    Ok(conn)
}

/// Prepared statements the writer keeps.
const STATEMENT_CACHE: usize = 100;

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Opens (creating and migrating when needed) the database and starts the
/// writer and the checkpointer.
pub async fn open(url: &str) -> std::result::Result<Database, OpenError> {
    let options = migrate(url).await?;
    let path: PathBuf = options.get_filename().to_path_buf();
    let write_conn = tokio::task::spawn_blocking(move || {
        let conn = connect_blocking(&path)?;
        // SQLite's automatic checkpoint would run inside the writer's
        // COMMIT, stalling every caller of that group; the checkpointer's
        // own connection does it beside the writer instead.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        Ok::<_, rusqlite::Error>(conn)
    })
    .await
    .map_err(|joined| sqlx::Error::Io(std::io::Error::other(joined)))??;
    let checkpoint_conn = SqliteConnection::connect_with(&options).await?;
    tokio::spawn(run_checkpointer(checkpoint_conn));
    let reads = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        // A local file's connection does not go stale, and the ping before
        // each acquire was one more round trip to the connection's thread
        // per read (a heartbeat's read cost two).
        .test_before_acquire(false)
        .connect_with(options.read_only(true))
        .await?;
    let writer = Writer::start(write_conn).map_err(sqlx::Error::Io)?;
    Ok(Database {
        reads,
        writer,
        cancellations: Arc::default(),
    })
}

async fn run_checkpointer(mut conn: SqliteConnection) {
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // PASSIVE never waits for readers or the writer: whatever it cannot
        // copy now, the next tick will.
        if let Err(error) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
            tracing::warn!(%error, "WAL checkpoint failed");
        }
    }
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Its writes stay.
    Done,
    /// It refused with a client-facing error.
    Refused,
    /// The database failed under it.
    Broken,
}

/// How a job's failed writes are undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Undo {
    /// Each job runs in its own savepoint, rolled back when it does not end `Done`.
    Savepoint,
    /// The job writes nothing before it could refuse, so a refusal needs no
    /// undo; a broken job fails the whole group.
    FailGroup,
}

/// What a job hands back to the writer: how it ended and how to answer its
/// caller once the transaction's fate is known.
type Outcome = (Ending, Box<dyn FnOnce(bool) + Send>);
type Run = Box<dyn FnOnce(&rusqlite::Connection) -> Outcome + Send>;

/// What the writer is asked to do.
enum Job {
    /// A change, run as it comes.
    Change { undo: Undo, run: Run },
    /// One telemetry request. Requests next to each other in a group are
    /// stored together (see [`telemetry::store_batch`]), with the same
    /// answers as one by one in this order.
    Telemetry(QueuedTelemetry),
}

struct QueuedTelemetry {
    request: TelemetryRequest,
    grace_ms: i64,
    answer: oneshot::Sender<Result<TelemetryAnswer>>,
}

impl Job {
    /// What the job weighs when the writer gathers a group.
    fn work(&self) -> usize {
        match self {
            Job::Change { .. } => 1,
            Job::Telemetry(queued) => queued.request.weight(),
        }
    }
}

/// An answer the writer delivers once it knows whether its group committed.
type Delivery = Box<dyn FnOnce(bool) + Send>;

/// Where the writer reports its groups, once the controller attached it.
type MetersSlot = Arc<OnceLock<crate::meters::Meters>>;

/// Handle to the single writer thread; it stops once every handle is dropped.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    meters: MetersSlot,
}

impl Writer {
    fn start(conn: rusqlite::Connection) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let meters = MetersSlot::default();
        let reported = meters.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_writer(conn, queue, reported))?;
        Ok(Writer { jobs, meters })
    }

    /// Reports each group commit (its jobs, its time) to `meters` from now
    /// on; a second call changes nothing.
    pub fn attach_meters(&self, meters: crate::meters::Meters) {
        let _ = self.meters.set(meters);
    }

    /// Runs `change` in the next group transaction and returns its result once
    /// that transaction is committed. An `Err` from `change` undoes its own
    /// writes and nothing else.
    pub async fn write<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        self.submit(Undo::Savepoint, change).await
    }

    /// Like [`Writer::write`] without the savepoint's two statements, for a
    /// `change` that returns every error other than a database error before
    /// its first write. A database error fails the whole group.
    pub async fn write_checked<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        self.submit(Undo::FailGroup, change).await
    }

    /// Stores one telemetry request in the next group, together with the
    /// telemetry requests next to it there.
    pub async fn store_telemetry(
        &self,
        request: TelemetryRequest,
        grace_ms: i64,
    ) -> Result<TelemetryAnswer> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job::Telemetry(QueuedTelemetry {
                request,
                grace_ms,
                answer,
            }))
            .await
            .map_err(|_| AppError::Unavailable)?;
        answered.await.map_err(|_| AppError::Unavailable)?
    }

    async fn submit<T, F>(&self, undo: Undo, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let run: Run = Box::new(move |conn| {
            let result = change(conn);
            let ending = match &result {
                Ok(_) => Ending::Done,
                Err(error @ (AppError::Database(_) | AppError::Sqlite(_))) => {
                    tracing::error!(%error, "a write failed in the database");
                    Ending::Broken
                }
                Err(_) => Ending::Refused,
            };
            let deliver: Delivery = Box::new(move |committed| {
                let _ = answer.send(if committed {
                    result
                } else {
                    Err(AppError::Unavailable)
                });
            });
            (ending, deliver)
        });
        self.jobs
            .send(Job::Change { undo, run })
            .await
            .map_err(|_| AppError::Unavailable)?;
        answered.await.map_err(|_| AppError::Unavailable)?
    }
}

fn run_writer(conn: rusqlite::Connection, mut queue: mpsc::Receiver<Job>, meters: MetersSlot) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut seen = Arrivals::new();
    while FLEET.take_blocking(
        &mut queue,
        &mut batch,
        MAX_JOBS_PER_COMMIT,
        &mut seen,
        Job::work,
    ) {
        let jobs = batch.len();
        report_clients(&batch, &mut seen);
        let started = std::time::Instant::now();
        let mut deliveries = Vec::with_capacity(jobs);
        let committed = match run_group(&conn, &mut batch, &mut deliveries) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, jobs, "group transaction failed");
                let _ = conn.execute_batch("ROLLBACK");
                false
            }
        };
        for deliver in deliveries {
            deliver(committed);
        }
        seen.stored(started.elapsed());
        if let Some(meters) = meters.get() {
            meters.writer_group(jobs, started.elapsed());
        }
        tracing::trace!(
            jobs,
            duration_us = started.elapsed().as_micros() as u64,
            "group committed"
        );
    }
    tracing::debug!("writer stopped: every handle dropped");
}

/// Why a group transaction was rolled back.
#[derive(Debug, thiserror::Error)]
enum GroupFailed {
    #[error(transparent)]
    Database(#[from] rusqlite::Error),
    #[error("a job without a savepoint failed after it may have written")]
    BrokenJob,
}

/// Tells the gatherer how often a build's telemetry came back within one
/// group: a build that is back before the group commits is a client
/// waiting on its last answer, a closed loop, which waiting only slows.
fn report_clients(batch: &[Job], seen: &mut Arrivals) {
    let builds: Vec<i64> = batch
        .iter()
        .filter_map(|job| match job {
            Job::Telemetry(queued) => Some(queued.request.build_id),
            Job::Change { .. } => None,
        })
        .collect();
    let distinct: std::collections::HashSet<&i64> = builds.iter().collect();
    seen.clients(builds.len(), distinct.len());
}

fn run_group(
    conn: &rusqlite::Connection,
    batch: &mut Vec<Job>,
    deliveries: &mut Vec<Delivery>,
) -> std::result::Result<(), GroupFailed> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut jobs = batch.drain(..).peekable();
    while let Some(job) = jobs.next() {
        let (undo, run) = match job {
            Job::Change { undo, run } => (undo, run),
            Job::Telemetry(first) => {
                let mut run = vec![first];
                while let Some(Job::Telemetry(_)) = jobs.peek() {
                    if let Some(Job::Telemetry(next)) = jobs.next() {
                        run.push(next);
                    }
                }
                store_telemetry_run(conn, run, deliveries)?;
                continue;
            }
        };
        if undo == Undo::Savepoint {
            conn.execute_batch("SAVEPOINT job")?;
        }
        let (ending, deliver) = run(conn);
        deliveries.push(deliver);
        match (undo, ending) {
            (Undo::Savepoint, Ending::Done) => conn.execute_batch("RELEASE job")?,
            (Undo::Savepoint, _) => conn.execute_batch("ROLLBACK TO job; RELEASE job")?,
            (Undo::FailGroup, Ending::Broken) => return Err(GroupFailed::BrokenJob),
            (Undo::FailGroup, _) => continue,
        };
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Stores telemetry requests that are next to each other in a group. Every
/// refusal is decided before the first write, so any error fails the group.
fn store_telemetry_run(
    conn: &rusqlite::Connection,
    run: Vec<QueuedTelemetry>,
    deliveries: &mut Vec<Delivery>,
) -> std::result::Result<(), GroupFailed> {
    let grace_ms = run.first().map_or(0, |queued| queued.grace_ms);
    let (requests, answers): (Vec<_>, Vec<_>) = run
        .into_iter()
        .map(|queued| (queued.request, queued.answer))
        .unzip();
    match telemetry::store_batch(conn, requests, grace_ms) {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                deliveries.push(Box::new(move |committed| {
                    let _ = answer.send(if committed {
                        result
                    } else {
                        Err(AppError::Unavailable)
                    });
                }));
            }
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, requests = answers.len(), "a telemetry run was not stored");
            Err(GroupFailed::BrokenJob)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scratch() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let db = open(&url).await.expect("open");
        db.writer
            .write(|conn| Ok(conn.execute_batch("CREATE TABLE scratch (x INTEGER)")?))
            .await
            .expect("create");
        (dir, db)
    }

    async fn rows(db: &Database) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM scratch")
            .fetch_one(&db.reads)
            .await
            .expect("count")
    }

    /// A refusal after a write is undone by the job's savepoint alone.
    #[tokio::test]
    async fn refused_job_undoes_its_own_writes() {
        let (_dir, db) = scratch().await;
        let kept: Result<()> = db
            .writer
            .write(|conn| Ok(conn.execute_batch("INSERT INTO scratch VALUES (0)")?))
            .await;
        assert!(kept.is_ok());
        let refused: Result<()> = db
            .writer
            .write(|conn| {
                conn.execute_batch("INSERT INTO scratch VALUES (1)")?;
                Err(AppError::Conflict("no".into()))
            })
            .await;
        assert!(matches!(refused, Err(AppError::Conflict(_))));
        assert_eq!(rows(&db).await, 1);
    }

    /// A checked job that breaks after writing fails its group: its caller
    /// gets 503, and nothing it wrote is committed.
    #[tokio::test]
    async fn broken_checked_job_fails_its_group() {
        let (_dir, db) = scratch().await;
        let broken: Result<()> = db
            .writer
            .write_checked(|conn| {
                conn.execute_batch("INSERT INTO scratch VALUES (1)")?;
                conn.execute_batch("INSERT INTO no_such_table VALUES (1)")?;
                Ok(())
            })
            .await;
        assert!(matches!(broken, Err(AppError::Unavailable)));
        assert_eq!(rows(&db).await, 0);
        // The writer goes on with the next group.
        let next: Result<()> = db
            .writer
            .write_checked(|conn| Ok(conn.execute_batch("INSERT INTO scratch VALUES (2)")?))
            .await;
        assert!(next.is_ok());
        assert_eq!(rows(&db).await, 1);
    }

    /// Jobs sent together share a group, and each caller gets its own answer.
    #[tokio::test]
    async fn concurrent_jobs_each_get_their_answer() {
        let (_dir, db) = scratch().await;
        let answers = futures::future::join_all((0..50_i64).map(|i| {
            let writer = db.writer.clone();
            async move {
                writer
                    .write(move |conn| {
                        conn.execute("INSERT INTO scratch VALUES (?)", [i])?;
                        Ok(i * 2)
                    })
                    .await
            }
        }))
        .await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.expect("committed"), i as i64 * 2);
        }
        assert_eq!(rows(&db).await, 50);
    }

    /// A worker's heartbeats list a build cancelled before the controller
    /// restarted (read from the database) and one cancelled after (from
    /// memory), and no other worker's.
    #[tokio::test]
    async fn cancellations_survive_a_restart() {
        use crate::builds::Event;
        use crate::storage::{NewBuild, NewWorker};
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let now = crate::clock::now_ms();
        let worker = |name: &str, token: u8| NewWorker {
            name: name.into(),
            platforms_json: r#"["linux"]"#.into(),
            cpu_cores: 2,
            memory_mb: 1024,
            token_hash: [token; 32],
            registered_at: now,
        };
        let build = |token: u8| NewBuild {
            platform: "linux".into(),
            label: None,
            submitted_at: now,
            token_hash: [token; 32],
        };
        let cancel =
            || -> crate::storage::ChangeDecision { Box::new(|_, _| Ok(Some(Event::Cancel))) };
        let db = open(&url).await.expect("open");
        let holder = db
            .register_worker(worker("holder", 1))
            .await
            .expect("worker");
        let other = db
            .register_worker(worker("other", 2))
            .await
            .expect("worker");
        let before = db.submit_build(build(3)).await.expect("build");
        assert!(db.claim(holder, now).await.expect("claim").is_some());
        db.change_build(before, now + 1, cancel())
            .await
            .expect("cancel");
        drop(db);

        let db = open(&url).await.expect("reopen");
        let since = now - 1_000;
        assert_eq!(
            db.cancelled_builds(holder, since).await.expect("list"),
            vec![before]
        );
        let after = db.submit_build(build(4)).await.expect("build");
        assert!(db.claim(holder, now + 2).await.expect("claim").is_some());
        db.change_build(after, now + 3, cancel())
            .await
            .expect("cancel");
        assert_eq!(
            db.cancelled_builds(holder, since).await.expect("list"),
            vec![before, after]
        );
        assert_eq!(
            db.cancelled_builds(other, since).await.expect("list"),
            Vec::<i64>::new()
        );
        assert_eq!(
            db.cancelled_builds(holder, now + 2).await.expect("list"),
            vec![after],
            "only those cancelled since"
        );
    }

    /// Samples stored before the compact layout read back unchanged after
    /// its migration, odd values included.
    #[tokio::test]
    async fn compact_samples_migration_keeps_every_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        ensure_parent_dir(&url).expect("dir");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options(&url).expect("options"))
            .await
            .expect("pool");
        let full = sqlx::migrate!("migrations/sqlite");
        let mut before = sqlx::migrate!("migrations/sqlite");
        before.migrations = full
            .migrations
            .iter()
            .filter(|m| m.version < 20261129000003)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.expect("older schema");
        type Row = (i64, i64, i64, f64, f64, Option<f64>, i64, i64);
        let rows: Vec<Row> = vec![
            (1, 1, 1_000, 153.2, 2048.5, Some(312.75), 5, 1_100),
            (1, 2, 2_000, 0.1 + 0.2, 100.3, None, 7, 1_900),
            (
                2,
                1,
                3_000,
                1.0 / 3.0,
                257.0 / 256.0,
                Some(0.001),
                300,
                9_000,
            ),
        ];
        for row in &rows {
            sqlx::query("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(row.0)
                .bind(row.1)
                .bind(row.2)
                .bind(row.3)
                .bind(row.4)
                .bind(row.5)
                .bind(row.6)
                .bind(row.7)
                .execute(&pool)
                .await
                .expect("old row");
        }
        full.run(&pool).await.expect("migrate");
        let read: Vec<Row> = sqlx::query_as(
            "SELECT build_id, seq, sampled_at, cpu_percent, memory_mb, cpu_time_s, interval_s,
             received_at FROM samples ORDER BY build_id, seq",
        )
        .fetch_all(&pool)
        .await
        .expect("read");
        assert_eq!(read, rows);
        let integers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sample_rows WHERE typeof(cpu_percent) = 'integer'",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(integers, 1, "only 153.2 is exact in hundredths");
    }
}
