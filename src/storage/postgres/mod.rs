//! The Postgres backend: several controllers on one database.
//!
//! Every operation is one transaction on a pooled connection, committed
//! before its caller hears back (`synchronous_commit` stays on: a 2xx means
//! committed). Postgres itself groups the commits of concurrent connections
//! into one WAL flush, which is what the SQLite backend's single writer has
//! to do by hand.
//!
//! Correctness across controllers rests on row locks taken in one global
//! order, so that transactions wait on each other but never deadlock:
//! first the builds a change touches (`FOR UPDATE`, ascending id; a claim
//! takes one with `SKIP LOCKED`), then their attempts and samples (only
//! ever written under their build's lock), then one `totals` shard, then
//! that shard's `daily` rows in ascending day. Per-build figures are
//! computed from rows read under that lock, so no update is lost between
//! controllers; the running totals are sharded (see the migration) so that
//! no single row serialises them.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};

use crate::error::{AppError, Result};
use crate::ledger::{DayDelta, LedgerDelta, TotalsDelta};

mod builds;
mod figures;
mod retention;
mod telemetry;
mod verify;
mod workers;

pub use verify::verify_database;

/// Shard rows of `totals` and `daily` (see the migration).
const SHARDS: u64 = 16;
/// The channel that tells every controller the queue has a new candidate.
const QUEUE_CHANNEL: &str = "freeagent_queue";
/// Connections per controller. Postgres' default `max_connections` is 100,
/// and a few controllers must fit under it with room for `psql`.
const POOL_SIZE: u32 = 16;

/// Telemetry batches one controller stores at once: enough to keep both
/// the controller and Postgres busy while others commit, few enough to
/// leave most of the pool to claims, transitions and reads.
pub const CONCURRENT_TELEMETRY_STORES: usize = 4;

/// The database handles of one controller.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    /// Who this controller is in `duty_leases`.
    holder: Arc<str>,
    /// Spreads this controller's transactions over the shards.
    next_shard: Arc<AtomicU64>,
}

/// Whether `url` names a Postgres database.
pub fn is_postgres_url(url: &str) -> bool {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

/// Connects, migrates and returns the controller's handles.
pub async fn open(url: &str) -> std::result::Result<Database, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("freeagent");
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    // Several controllers starting at once: sqlx takes an advisory lock
    // around the migrations, so exactly one applies them.
    sqlx::migrate!("migrations/postgres").run(&pool).await?;
    let secret = crate::auth::new_secret();
    let holder = format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        &secret[..8.min(secret.len())]
    );
    let seed = u64::from_str_radix(&secret[..8.min(secret.len())], 16).unwrap_or(0);
    Ok(Database {
        pool,
        holder: holder.into(),
        next_shard: Arc::new(AtomicU64::new(seed)),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}

/// Whether a database error is worth the client's retry: lock conflicts
/// between controllers and a lost or busy connection. These answer 503,
/// not 500.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // serialization_failure, deadlock_detected, lock_not_available,
            // admin/crash shutdown, cannot_connect_now
            Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03")
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        _ => false,
    }
}

impl Database {
    /// The next shard for a transaction's ledger delta.
    fn shard(&self) -> i16 {
        (self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS) as i16
    }

    /// Runs `work` in one transaction and commits it when it returns `Ok`.
    async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T>>,
    {
        let outcome = async {
            let mut tx = self.pool.begin().await?;
            match work(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(value)
                }
                Err(error) => {
                    // Dropping the transaction rolls it back; saying so
                    // explicitly returns the connection clean at once.
                    let _ = tx.rollback().await;
                    Err(error)
                }
            }
        }
        .await;
        outcome.map_err(|error| match error {
            AppError::Database(cause) if is_transient(&cause) => {
                tracing::warn!(error = %cause, "a transaction met a passing database failure");
                AppError::Unavailable
            }
            other => other,
        })
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<()> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes or renews the lease on `duty` for `lease_ms` when it is free,
    /// expired or already ours; returns whether this controller holds it.
    pub async fn hold_duty(&self, duty: &str, now: i64, lease_ms: i64) -> Result<bool> {
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO duty_leases (duty, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE duty_leases.holder = excluded.holder OR duty_leases.expires_at < $4
             RETURNING holder",
        )
        .bind(duty)
        .bind(&*self.holder)
        .bind(now + lease_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.is_some())
    }

    /// Gives up `duty` if this controller holds it, so that another takes
    /// it at once rather than after the lease runs out.
    pub async fn give_up_duty(&self, duty: &str) -> Result<()> {
        sqlx::query("DELETE FROM duty_leases WHERE duty = $1 AND holder = $2")
            .bind(duty)
            .bind(&*self.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Wakes `waiters` whenever any controller on this database puts a
    /// build in the queue, until the pool closes. A wake-up lost while the
    /// listener reconnects costs a long poll at most its wait.
    pub fn forward_queue_changes(&self, waiters: Arc<tokio::sync::Notify>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                match listen(&pool, &waiters).await {
                    Ok(()) => return,
                    Err(error) => {
                        if pool.is_closed() {
                            return;
                        }
                        tracing::warn!(%error, "queue listener lost its connection; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

async fn listen(
    pool: &PgPool,
    waiters: &tokio::sync::Notify,
) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(QUEUE_CHANNEL).await?;
    loop {
        // `None` means the connection dropped and the next call reconnects:
        // anything sent meanwhile is lost, so that too wakes everyone to look.
        listener.try_recv().await?;
        waiters.notify_waiters();
    }
}

/// Tells every controller, once this transaction commits, that the queue
/// changed.
async fn announce_queue_change(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(QUEUE_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The ledger deltas of one transaction, written together at its end, after
/// every other row lock it takes (see the module's lock order).
#[derive(Default)]
struct Ledger {
    totals: TotalsDelta,
    days: BTreeMap<i64, DayDelta>,
}

impl Ledger {
    fn add(&mut self, delta: &LedgerDelta) {
        let (t, d) = (&mut self.totals, delta.totals);
        t.pending += d.pending;
        t.active += d.active;
        t.finished += d.finished;
        t.build_time_ms += d.build_time_ms;
        t.cpu_micros += d.cpu_micros;
        if let Some((day, change)) = delta.day {
            let row = self.days.entry(day).or_default();
            row.finished += change.finished;
            row.failed += change.failed;
            row.build_time_ms += change.build_time_ms;
            row.cpu_micros += change.cpu_micros;
        }
    }

    async fn write(&self, conn: &mut PgConnection, shard: i16) -> Result<()> {
        let t = self.totals;
        if t != TotalsDelta::default() {
            sqlx::query(
                "UPDATE totals SET builds_pending = builds_pending + $2,
                     builds_active = builds_active + $3, builds_finished = builds_finished + $4,
                     build_time_ms = build_time_ms + $5, cpu_micros = cpu_micros + $6
                 WHERE shard = $1",
            )
            .bind(shard)
            .bind(t.pending)
            .bind(t.active)
            .bind(t.finished)
            .bind(t.build_time_ms)
            .bind(t.cpu_micros)
            .execute(&mut *conn)
            .await?;
        }
        let days: Vec<(&i64, &DayDelta)> = self
            .days
            .iter()
            .filter(|(_, change)| **change != DayDelta::default())
            .collect();
        if days.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO daily (day, shard, builds_finished, builds_failed, build_time_ms, cpu_micros)
             SELECT d.day, $1, d.finished, d.failed, d.build_time_ms, d.cpu_micros
             FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[])
                  AS d (day, finished, failed, build_time_ms, cpu_micros)
             ORDER BY d.day
             ON CONFLICT (day, shard) DO UPDATE SET
                 builds_finished = daily.builds_finished + excluded.builds_finished,
                 builds_failed = daily.builds_failed + excluded.builds_failed,
                 build_time_ms = daily.build_time_ms + excluded.build_time_ms,
                 cpu_micros = daily.cpu_micros + excluded.cpu_micros",
        )
        .bind(shard)
        .bind(days.iter().map(|(day, _)| **day).collect::<Vec<i64>>())
        .bind(days.iter().map(|(_, c)| c.finished).collect::<Vec<i64>>())
        .bind(days.iter().map(|(_, c)| c.failed).collect::<Vec<i64>>())
        .bind(days.iter().map(|(_, c)| c.build_time_ms).collect::<Vec<i64>>())
        .bind(days.iter().map(|(_, c)| c.cpu_micros).collect::<Vec<i64>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// `freeagent purge` on a Postgres database: batches until one removes
/// nothing, safe while controllers serve it (row locks keep each batch
/// consistent with their writes). Returns the rows removed.
pub async fn purge_database(
    database_url: &str,
    cutoff_at: impl Fn(i64) -> i64,
    grace_ms: i64,
) -> Result<u64> {
    let db = open(database_url).await?;
    let mut total = 0;
    loop {
        let now = crate::clock::now_ms();
        let removed = db.purge_batch(cutoff_at(now), now, grace_ms).await?;
        total += removed;
        if removed == 0 {
            db.pool.close().await;
            return Ok(total);
        }
    }
}
