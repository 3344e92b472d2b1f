//! Rows as the writer's own connection (rusqlite) reads them: builds,
//! attempts, and the stored names of their states. The read pool (sqlx)
//! reads the same columns through `sqlx::FromRow`; a test holds the two
//! to the same values.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::Row;

use crate::builds::{AttemptOutcome, AttemptRow, BuildRow, BuildStatus};

/// The build columns both readers select, in [`build_row`]'s order.
pub(super) const BUILD_COLUMNS: &str = "id, status, platform, label, worker_id, attempt,
    submitted_at, assigned_at, started_at, completed_at, error, token_hash, cpu_micros,
    peak_memory_mb, snapshot_count, newest_sampled_at, has_tombstones";

/// The attempt columns, in [`attempt_row`]'s order.
pub(super) const ATTEMPT_COLUMNS: &str = "build_id, attempt, worker_id, assigned_at, ended_at,
    outcome, cpu_percent_micros, cpu_counter_micros";

/// The one of `names` stored as `value`.
fn named<T: Copy>(
    value: ValueRef<'_>,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> FromSqlResult<T> {
    let text = value.as_str()?;
    all.iter()
        .copied()
        .find(|&each| name(each) == text)
        .ok_or_else(|| FromSqlError::Other(format!("unknown stored name {text:?}").into()))
}

impl FromSql for BuildStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        named(value, &BuildStatus::ALL, BuildStatus::as_str)
    }
}

impl FromSql for AttemptOutcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        named(value, &AttemptOutcome::ALL, AttemptOutcome::as_str)
    }
}

/// A build from a row of [`BUILD_COLUMNS`].
pub(super) fn build_row(row: &Row<'_>) -> rusqlite::Result<BuildRow> {
    Ok(BuildRow {
        id: row.get(0)?,
        status: row.get(1)?,
        platform: row.get(2)?,
        label: row.get(3)?,
        worker_id: row.get(4)?,
        attempt: row.get(5)?,
        submitted_at: row.get(6)?,
        assigned_at: row.get(7)?,
        started_at: row.get(8)?,
        completed_at: row.get(9)?,
        error: row.get(10)?,
        token_hash: row.get(11)?,
        cpu_micros: row.get(12)?,
        peak_memory_mb: row.get(13)?,
        snapshot_count: row.get(14)?,
        newest_sampled_at: row.get(15)?,
        has_tombstones: row.get(16)?,
    })
}

/// An attempt from a row of [`ATTEMPT_COLUMNS`].
pub(super) fn attempt_row(row: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        build_id: row.get(0)?,
        attempt: row.get(1)?,
        worker_id: row.get(2)?,
        assigned_at: row.get(3)?,
        ended_at: row.get(4)?,
        outcome: row.get(5)?,
        cpu_percent_micros: row.get(6)?,
        cpu_counter_micros: row.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::script::Value;
    use super::*;

    #[test]
    fn every_stored_name_reads_back() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        for status in BuildStatus::ALL {
            let back: BuildStatus = conn
                .query_row("SELECT ?", [Value::from(status)], |row| row.get(0))
                .expect("status");
            assert_eq!(back, status);
        }
        for outcome in AttemptOutcome::ALL {
            let back: AttemptOutcome = conn
                .query_row("SELECT ?", [Value::from(outcome)], |row| row.get(0))
                .expect("outcome");
            assert_eq!(back, outcome);
        }
        let unknown: rusqlite::Result<BuildStatus> =
            conn.query_row("SELECT 'lost'", [], |row| row.get(0));
        assert!(unknown.is_err());
    }

    /// The writer and the read pool read a stored build and attempt alike.
    #[tokio::test]
    async fn both_readers_read_the_same_build() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.db");
        let url = format!("sqlite://{}", path.display());
        let mut pool_conn = super::super::connect(&url).await.expect("migrate");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "INSERT INTO builds (id, status, platform, label, worker_id, attempt, submitted_at,
               assigned_at, started_at, completed_at, error, token_hash, cpu_micros,
               peak_memory_mb, snapshot_count, newest_sampled_at, has_tombstones)
             VALUES (9, 'failed', 'linux', 'x', NULL, 2, 1000, 2000, 3000, 4000, 'oom',
               X'0102', 5000000, 512.25, 7, 3500, 1);
             INSERT INTO attempts (build_id, attempt, worker_id, assigned_at, ended_at, outcome,
               cpu_percent_micros, cpu_counter_micros)
             VALUES (9, 2, NULL, 2000, 4000, 'failed', 700, NULL);",
        )
        .expect("rows");
        let written = conn
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = 9"),
                [],
                build_row,
            )
            .expect("writer's build");
        let attempt = conn
            .query_row(
                &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE build_id = 9"),
                [],
                attempt_row,
            )
            .expect("writer's attempt");
        let read: BuildRow =
            sqlx::query_as(&format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = 9"))
                .fetch_one(&mut pool_conn)
                .await
                .expect("pool's build");
        let read_attempt: AttemptRow = sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE build_id = 9"
        ))
        .fetch_one(&mut pool_conn)
        .await
        .expect("pool's attempt");
        assert_eq!(format!("{written:?}"), format!("{read:?}"));
        assert_eq!(format!("{attempt:?}"), format!("{read_attempt:?}"));
        assert_eq!(written.status, BuildStatus::Failed);
        assert_eq!(attempt.outcome, Some(AttemptOutcome::Failed));
    }
}
