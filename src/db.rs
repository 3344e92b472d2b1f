//! The SQLite database: connection settings, migrations, the read pool, and
//! the single writer that groups concurrent changes into one transaction.
//!
//! Every change goes through [`Writer::write`]. The writer task takes whatever
//! jobs are queued, runs each inside its own savepoint of one `BEGIN
//! IMMEDIATE` transaction, commits once (WAL, `synchronous=FULL`: one fsync
//! for the whole group) and only then answers each caller. So a 2xx answer
//! means the change is on disk, and durability does not cost throughput.
//! Because one task applies every change in order, claims and state
//! transitions are atomic without row locks.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AppError, Result};

/// Most jobs grouped into one transaction.
const MAX_JOBS_PER_COMMIT: usize = 512;
/// Queued jobs before callers wait: bounds memory under overload.
const QUEUE_DEPTH: usize = 8192;

/// The database handles the app shares: a pool for reads and the writer.
#[derive(Clone)]
pub struct Database {
    /// Read-only work: stats, build views, auth look-ups.
    pub reads: SqlitePool,
    /// The only path that changes the database.
    pub writer: Writer,
}

fn connect_options(url: &str) -> std::result::Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .pragma("cache_size", "-16000"))
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

/// One connection to the database, created and migrated when needed.
pub async fn connect(url: &str) -> std::result::Result<SqliteConnection, sqlx::Error> {
    ensure_parent_dir(url).map_err(sqlx::Error::Io)?;
    let options = connect_options(url)?;
    // Migrating through a one-connection pool rather than `&mut conn`
    // keeps callers' futures `Send` (sqlx's `Acquire` on `&mut` is not
    // general enough for spawned tasks).
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!().run(&pool).await?;
    pool.close().await;
    SqliteConnection::connect_with(&options).await
}

/// Opens (creating and migrating when needed) the database and starts the writer.
pub async fn open(url: &str) -> std::result::Result<Database, sqlx::Error> {
    let write_conn = connect(url).await?;
    let options = connect_options(url)?;
    let reads = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .connect_with(options.read_only(true))
        .await?;
    Ok(Database {
        reads,
        writer: Writer::start(write_conn),
    })
}

/// What a job hands back to the writer: whether it succeeded (else its
/// savepoint is rolled back) and how to answer its caller once the
/// transaction's fate is known.
type Outcome = (bool, Box<dyn FnOnce(bool) + Send>);
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Outcome> + Send>;

/// Handle to the single writer task.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    fn start(conn: SqliteConnection) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(conn, queue));
        Writer { jobs }
    }

    /// Runs `change` in the next group transaction and returns its result once
    /// that transaction is committed. An `Err` from `change` undoes its own
    /// writes and nothing else.
    pub async fn write<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = change(conn).await;
                let ok = result.is_ok();
                let deliver: Box<dyn FnOnce(bool) + Send> = Box::new(move |committed| {
                    let _ = answer.send(if committed {
                        result
                    } else {
                        Err(AppError::Unavailable)
                    });
                });
                (ok, deliver)
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| AppError::Unavailable)?;
        answered.await.map_err(|_| AppError::Unavailable)?
    }
}

async fn run_writer(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while queue.recv_many(&mut batch, MAX_JOBS_PER_COMMIT).await > 0 {
        let jobs = batch.len();
        let started = std::time::Instant::now();
        let mut deliveries = Vec::with_capacity(jobs);
        let committed = match run_group(&mut conn, &mut batch, &mut deliveries).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, jobs, "group transaction failed");
                let _ = conn.execute("ROLLBACK").await;
                false
            }
        };
        for deliver in deliveries {
            deliver(committed);
        }
        tracing::trace!(
            jobs,
            duration_us = started.elapsed().as_micros() as u64,
            "group committed"
        );
    }
    tracing::debug!("writer stopped: every handle dropped");
}

async fn run_group(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Job>,
    deliveries: &mut Vec<Box<dyn FnOnce(bool) + Send>>,
) -> std::result::Result<(), sqlx::Error> {
    conn.execute("BEGIN IMMEDIATE").await?;
    for job in batch.drain(..) {
        conn.execute("SAVEPOINT job").await?;
        let (ok, deliver) = job(&mut *conn).await;
        deliveries.push(deliver);
        if !ok {
            conn.execute("ROLLBACK TO job").await?;
        }
        conn.execute("RELEASE job").await?;
    }
    conn.execute("COMMIT").await?;
    Ok(())
}

/// Milliseconds since the Unix epoch on the controller's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
