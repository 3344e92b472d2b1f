//! The ledger's rows (`totals`, `daily`): applying deltas in the writer's
//! transaction, and reading the figures in one snapshot.

use sqlx::SqliteConnection;

use super::script::Script;
use super::Database;
use crate::error::Result;
use crate::ledger::{DayDelta, LedgerDelta, TotalsDelta};
use crate::stats::queue_wait;
use crate::storage::{DailyRow, FiguresRow, StoredFigures};

/// Applies `delta` to the running totals and its day, inside the caller's
/// transaction on a sqlx connection (`verify --repair`).
pub(super) async fn apply_ledger(conn: &mut SqliteConnection, delta: &LedgerDelta) -> Result<()> {
    let mut script = Script::default();
    push_ledger(&mut script, delta);
    script.run_sqlx(conn).await
}

/// Adds to `script` what applies `delta` to the running totals and its day.
pub(super) fn push_ledger(script: &mut Script, delta: &LedgerDelta) {
    if delta.totals != TotalsDelta::default() {
        let t = delta.totals;
        script
            .push(
                "UPDATE totals SET builds_pending = builds_pending + ?,
                 builds_active = builds_active + ?, builds_finished = builds_finished + ?,
                 build_time_ms = build_time_ms + ?, cpu_micros = cpu_micros + ? WHERE id = 1",
            )
            .bind(t.pending)
            .bind(t.active)
            .bind(t.finished)
            .bind(t.build_time_ms)
            .bind(t.cpu_micros);
    }
    if let Some((day, change)) = delta.day {
        if change != DayDelta::default() {
            script
                .push(
                    "INSERT INTO daily (day, builds_finished, builds_failed, build_time_ms, cpu_micros)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (day) DO UPDATE SET
                       builds_finished = builds_finished + excluded.builds_finished,
                       builds_failed = builds_failed + excluded.builds_failed,
                       build_time_ms = build_time_ms + excluded.build_time_ms,
                       cpu_micros = cpu_micros + excluded.cpu_micros",
                )
                .bind(day)
                .bind(change.finished)
                .bind(change.failed)
                .bind(change.build_time_ms)
                .bind(change.cpu_micros);
        }
    }
}

/// Adds to `script` the count of one first assignment at `now` with queue
/// wait `wait_ms`, and the removal of the minutes that left the window.
pub(super) fn push_queue_wait(script: &mut Script, now: i64, wait_ms: i64) {
    script
        .push("DELETE FROM queue_wait_slots WHERE slot < ?")
        .bind(queue_wait::first_slot(now))
        .push(
            "INSERT INTO queue_wait_slots (slot, bucket, builds) VALUES (?, ?, 1)
             ON CONFLICT (slot, bucket) DO UPDATE SET builds = builds + 1",
        )
        .bind(queue_wait::slot_of(now))
        .bind(queue_wait::bucket_of(wait_ms));
}

impl Database {
    /// Builds first assigned from slot `first_slot` on, per queue-wait
    /// bucket: (bucket, builds).
    pub async fn queue_waits(&self, first_slot: i64) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT bucket, sum(builds) FROM queue_wait_slots WHERE slot >= ? GROUP BY bucket",
        )
        .bind(first_slot)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The stored figures, all from one read snapshot.
    pub async fn figures(
        &self,
        today: i64,
        online_since: i64,
        fresh_since: i64,
    ) -> Result<StoredFigures> {
        let mut conn = self.reads.acquire().await?;
        let row: FiguresRow = sqlx::query_as(
            "SELECT t.builds_pending, t.builds_active, t.builds_finished, t.build_time_ms, t.cpu_micros,
               COALESCE((SELECT builds_finished FROM daily WHERE day = ?1), 0),
               (SELECT count(*) FROM workers WHERE last_seen_at >= ?2),
               COALESCE((SELECT sum(newest_cpu_percent) FROM builds
                         WHERE status IN ('assigned', 'building') AND newest_sampled_at >= ?3), 0.0)
             FROM totals t WHERE t.id = 1",
        )
        .bind(today)
        .bind(online_since)
        .bind(fresh_since)
        .fetch_one(&mut *conn)
        .await?;
        Ok(row.into())
    }

    /// The `daily` rows of days `first..=last`, oldest first.
    pub async fn daily(&self, first: i64, last: i64) -> Result<Vec<DailyRow>> {
        let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT day, builds_finished, builds_failed, build_time_ms, cpu_micros
             FROM daily WHERE day BETWEEN ? AND ? ORDER BY day",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&self.reads)
        .await?;
        Ok(rows.into_iter().map(DailyRow::from).collect())
    }

    /// Whether the database answers.
    pub async fn health(&self) -> Result<()> {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&self.reads)
            .await?;
        Ok(())
    }
}
