//! `freeagent verify` and `freeagent backup` on either backend: the reads
//! verify folds into [`crate::verify::Audit`], chunk by chunk of builds in
//! one snapshot, and what `--repair` writes. Each backend brings its SQL
//! and its way of staying consistent with serving controllers.

use std::path::{Path, PathBuf};

use super::DailyRow;
use crate::ledger::{DayDelta, LedgerDelta, TotalsDelta};
use crate::verify::{
    AttemptFix, Audit, BuildFix, ChunkSamples, Fixes, Report, StoredAttempt, StoredBuild,
    StoredLedger,
};

/// Builds read and checked at a time: bounds verify's memory whatever the
/// history size.
const BUILDS_PER_CHUNK: i64 = 512;

/// The columns of [`StoredBuild`], after `WHERE id > $1`, `LIMIT $2`.
pub(super) const BUILDS_SQL: &str = "SELECT id, status, started_at, completed_at, cpu_micros,
    peak_memory_mb, snapshot_count, newest_sampled_at, newest_cpu_percent
    FROM builds WHERE id > $1 ORDER BY id LIMIT $2";
/// The columns of [`StoredAttempt`] of builds `$1..=$2`.
pub(super) const ATTEMPTS_SQL: &str =
    "SELECT build_id, attempt, cpu_percent_micros, cpu_counter_micros
    FROM attempts WHERE build_id BETWEEN $1 AND $2";
/// The columns of [`crate::verify::RawSample`] of builds `$1..=$2`, in key order.
pub(super) const SAMPLES_SQL: &str = "SELECT build_id, attempt, sampled_at, cpu_percent,
    memory_mb, cpu_time_s, interval_s
    FROM samples WHERE build_id BETWEEN $1 AND $2 ORDER BY build_id, attempt, seq";
/// Writes a [`BuildFix`]: `$1` is the build.
pub(super) const FIX_BUILD_SQL: &str = "UPDATE builds SET cpu_micros = $2, peak_memory_mb = $3,
    snapshot_count = $4, newest_sampled_at = $5, newest_cpu_percent = $6 WHERE id = $1";
/// Writes an [`AttemptFix`], inserting the attempt when it has no row.
pub(super) const FIX_ATTEMPT_SQL: &str = "INSERT INTO attempts
    (build_id, attempt, cpu_percent_micros, cpu_counter_micros) VALUES ($1, $2, $3, $4)
    ON CONFLICT (build_id, attempt) DO UPDATE SET
    cpu_percent_micros = excluded.cpu_percent_micros,
    cpu_counter_micros = excluded.cpu_counter_micros";

/// Why verify or backup could not run.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The URL names no backend this controller serves.
    #[error(transparent)]
    Url(#[from] super::OpenError),
    /// Verify and backup read an existing database only.
    #[error("no SQLite database at {0} (an existing database is read as it is, never created)")]
    Missing(PathBuf),
    /// Backup writes a new file only.
    #[error("{0} exists already; backup writes a new file and never overwrites one")]
    Exists(PathBuf),
    /// Backup copies SQLite files only.
    #[error(
        "backup copies SQLite databases; for Postgres use pg_dump, e.g. `pg_dump --format=custom --file=FILE URL`"
    )]
    Postgres,
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The copy could not be made durable.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result of verify and backup.
pub type OperationResult<T> = std::result::Result<T, OperationError>;

impl From<crate::error::AppError> for OperationError {
    /// The storage code verify shares with the controller fails only in
    /// the database.
    fn from(error: crate::error::AppError) -> OperationError {
        match error {
            crate::error::AppError::Database(cause) => OperationError::Database(cause),
            other => OperationError::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }
}

/// The rows verify reads and `--repair` writes, the same SQL on both
/// backends (see [`audit_rows`]).
pub(super) trait AuditRows {
    /// Up to `limit` builds with ids above `after`, ascending.
    async fn builds_after(&mut self, after: i64, limit: i64) -> OperationResult<Vec<StoredBuild>>;
    /// Every attempt of builds `first..=last`.
    async fn attempts(&mut self, first: i64, last: i64) -> OperationResult<Vec<StoredAttempt>>;
    /// Folds every raw sample of builds `first..=last` into `into`.
    async fn samples(
        &mut self,
        first: i64,
        last: i64,
        into: &mut ChunkSamples,
    ) -> OperationResult<()>;
    async fn fix_build(&mut self, fix: &BuildFix) -> OperationResult<()>;
    async fn fix_attempt(&mut self, fix: &AttemptFix) -> OperationResult<()>;
    /// Removes every row of a day.
    async fn remove_day(&mut self, day: i64) -> OperationResult<()>;
    /// Commits (or rolls back) the transaction [`AuditBackend::begin`] began.
    async fn end(&mut self, commit: bool) -> OperationResult<()>;
}

/// What each backend does its own way: the transaction and the ledger's rows.
pub(super) trait AuditBackend: AuditRows {
    /// Starts the transaction: a read snapshot, or with `fix` one that
    /// nothing else changes the figures during.
    async fn begin(&mut self, fix: bool) -> OperationResult<()>;
    /// The totals and daily rows (sums over shards).
    async fn ledger(&mut self) -> OperationResult<StoredLedger>;
    /// Adds `delta` to the stored totals and its day's row.
    async fn add_to_ledger(&mut self, delta: &LedgerDelta) -> OperationResult<()>;
}

/// Implements [`AuditRows`] for a backend's connection type.
macro_rules! audit_rows {
    ($connection:ty) => {
        impl $crate::storage::verify::AuditRows for $connection {
            async fn builds_after(
                &mut self,
                after: i64,
                limit: i64,
            ) -> $crate::storage::verify::OperationResult<Vec<$crate::verify::StoredBuild>> {
                Ok(sqlx::query_as($crate::storage::verify::BUILDS_SQL)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&mut *self)
                    .await?)
            }

            async fn attempts(
                &mut self,
                first: i64,
                last: i64,
            ) -> $crate::storage::verify::OperationResult<Vec<$crate::verify::StoredAttempt>> {
                Ok(sqlx::query_as($crate::storage::verify::ATTEMPTS_SQL)
                    .bind(first)
                    .bind(last)
                    .fetch_all(&mut *self)
                    .await?)
            }

            async fn samples(
                &mut self,
                first: i64,
                last: i64,
                into: &mut $crate::verify::ChunkSamples,
            ) -> $crate::storage::verify::OperationResult<()> {
                use futures::TryStreamExt;
                let mut rows = sqlx::query_as::<_, $crate::verify::RawSample>(
                    $crate::storage::verify::SAMPLES_SQL,
                )
                .bind(first)
                .bind(last)
                .fetch(&mut *self);
                while let Some(sample) = rows.try_next().await? {
                    into.add(&sample);
                }
                Ok(())
            }

            async fn fix_build(
                &mut self,
                fix: &$crate::verify::BuildFix,
            ) -> $crate::storage::verify::OperationResult<()> {
                sqlx::query($crate::storage::verify::FIX_BUILD_SQL)
                    .bind(fix.id)
                    .bind(fix.cpu_micros)
                    .bind(fix.peak_memory_mb)
                    .bind(fix.snapshot_count)
                    .bind(fix.newest_sampled_at)
                    .bind(fix.newest_cpu_percent)
                    .execute(&mut *self)
                    .await?;
                Ok(())
            }

            async fn fix_attempt(
                &mut self,
                fix: &$crate::verify::AttemptFix,
            ) -> $crate::storage::verify::OperationResult<()> {
                sqlx::query($crate::storage::verify::FIX_ATTEMPT_SQL)
                    .bind(fix.build_id)
                    .bind(fix.attempt)
                    .bind(fix.cpu.percent_micros)
                    .bind(fix.cpu.counter_micros)
                    .execute(&mut *self)
                    .await?;
                Ok(())
            }

            async fn end(&mut self, commit: bool) -> $crate::storage::verify::OperationResult<()> {
                sqlx::Executor::execute(&mut *self, if commit { "COMMIT" } else { "ROLLBACK" })
                    .await?;
                Ok(())
            }

            async fn remove_day(
                &mut self,
                day: i64,
            ) -> $crate::storage::verify::OperationResult<()> {
                sqlx::query("DELETE FROM daily WHERE day = $1")
                    .bind(day)
                    .execute(&mut *self)
                    .await?;
                Ok(())
            }
        }
    };
}
pub(super) use audit_rows;

/// The ledger as read: the totals' five sums and each day's row.
pub(super) fn stored_ledger(
    totals: (i64, i64, i64, i64, i64),
    days: Vec<(i64, i64, i64, i64, i64)>,
) -> StoredLedger {
    let (pending, active, finished, build_time_ms, cpu_micros) = totals;
    StoredLedger {
        totals: TotalsDelta {
            pending,
            active,
            finished,
            build_time_ms,
            cpu_micros,
        },
        days: days
            .into_iter()
            .map(|row| {
                let row = DailyRow::from(row);
                let change = DayDelta {
                    finished: row.finished,
                    failed: row.failed,
                    build_time_ms: row.build_time_ms,
                    cpu_micros: row.cpu_micros,
                };
                (row.day, change)
            })
            .collect(),
    }
}

/// Verify (and with `fix`, repair) in one transaction of `conn`.
pub(super) async fn run(conn: &mut impl AuditBackend, fix: bool) -> OperationResult<Report> {
    conn.begin(fix).await?;
    let outcome = async {
        let mut report = audit(conn).await?;
        if fix && !report.fixes.is_empty() {
            repair(conn, &report.fixes).await?;
            report.repaired = true;
        }
        Ok(report)
    }
    .await;
    match outcome {
        Ok(report) => {
            conn.end(report.repaired).await?;
            Ok(report)
        }
        Err(error) => {
            let _ = conn.end(false).await;
            Err(error)
        }
    }
}

/// Reads every build, its attempts and samples, and the ledger, a chunk at
/// a time, and compares them.
async fn audit(read: &mut impl AuditBackend) -> OperationResult<Report> {
    let mut audit = Audit::default();
    let mut after = i64::MIN;
    loop {
        let builds = read.builds_after(after, BUILDS_PER_CHUNK).await?;
        let (Some(first), Some(last)) = (builds.first(), builds.last()) else {
            break;
        };
        let (first, last) = (first.id, last.id);
        let attempts = read.attempts(first, last).await?;
        let mut samples = ChunkSamples::default();
        read.samples(first, last, &mut samples).await?;
        audit.add_builds(&builds, &attempts, samples);
        after = last;
    }
    let ledger = read.ledger().await?;
    Ok(audit.finish(&ledger))
}

/// Writes `fixes`: each ledger row changes by the difference between its
/// recomputation and what was stored, so a sharded row stays the sum of
/// its shards.
async fn repair(write: &mut impl AuditBackend, fixes: &Fixes) -> OperationResult<()> {
    for fix in &fixes.builds {
        write.fix_build(fix).await?;
    }
    for fix in &fixes.attempts {
        write.fix_attempt(fix).await?;
    }
    if let Some(totals) = fixes.totals {
        let (s, r) = (totals.stored, totals.recomputed);
        let totals = TotalsDelta {
            pending: r.pending - s.pending,
            active: r.active - s.active,
            finished: r.finished - s.finished,
            build_time_ms: r.build_time_ms - s.build_time_ms,
            cpu_micros: r.cpu_micros - s.cpu_micros,
        };
        write
            .add_to_ledger(&LedgerDelta { totals, day: None })
            .await?;
    }
    for (day, fix) in &fixes.days {
        let (s, r) = (fix.stored, fix.recomputed);
        if r == DayDelta::default() {
            write.remove_day(*day).await?;
        } else {
            let change = DayDelta {
                finished: r.finished - s.finished,
                failed: r.failed - s.failed,
                build_time_ms: r.build_time_ms - s.build_time_ms,
                cpu_micros: r.cpu_micros - s.cpu_micros,
            };
            let delta = LedgerDelta {
                totals: TotalsDelta::default(),
                day: Some((*day, change)),
            };
            write.add_to_ledger(&delta).await?;
        }
    }
    Ok(())
}

/// `freeagent verify [--repair]` on the database at `url`, safe while
/// controllers serve it: compares every stored figure with its
/// recomputation in one snapshot, and with `repair` writes the fixes in
/// the same transaction.
pub async fn verify(url: &str, repair: bool) -> OperationResult<Report> {
    super::check_url(url)?;
    if super::postgres::is_postgres_url(url) {
        super::postgres::verify_database(url, repair).await
    } else {
        super::sqlite::verify_database(url, repair).await
    }
}

/// `freeagent backup FILE`: a consistent copy of the SQLite database at
/// `url`, taken while it serves, into the new file `file`.
pub async fn backup(url: &str, file: &Path) -> OperationResult<()> {
    super::check_url(url)?;
    if super::postgres::is_postgres_url(url) {
        return Err(OperationError::Postgres);
    }
    if file.exists() {
        return Err(OperationError::Exists(file.to_path_buf()));
    }
    super::sqlite::backup_database(url, file).await
}
