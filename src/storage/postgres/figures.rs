//! Reading the figures: the sum of the ledger's shard rows and a few
//! indexed counts, in one statement (one snapshot).

use sqlx::PgConnection;

use super::Database;
use crate::error::Result;
use crate::stats::queue_wait;
use crate::storage::{DailyRow, FiguresRow, StoredFigures};

/// Counts one first assignment at `now` with queue wait `wait_ms` in
/// `shard`'s row of its minute, inside the claim's transaction and after
/// its `totals` shard row (the module's lock order; only claims touch these
/// rows, and only the holder of a `totals` shard writes that shard's).
/// Also deletes the minutes that left the window, of every shard, skipping
/// rows another claim is deleting right now: it never waits for them, so
/// it adds no lock to the order, and the table keeps one day of claims.
pub(super) async fn record_queue_wait(
    conn: &mut PgConnection,
    shard: i16,
    now: i64,
    wait_ms: i64,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM queue_wait_slots WHERE (slot, shard, bucket) IN
           (SELECT slot, shard, bucket FROM queue_wait_slots WHERE slot < $1
            FOR UPDATE SKIP LOCKED)",
    )
    .bind(queue_wait::first_slot(now))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO queue_wait_slots (slot, shard, bucket, builds) VALUES ($1, $2, $3, 1)
         ON CONFLICT (slot, shard, bucket) DO UPDATE
         SET builds = queue_wait_slots.builds + 1",
    )
    .bind(queue_wait::slot_of(now))
    .bind(shard)
    .bind(queue_wait::bucket_of(wait_ms) as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Database {
    /// Builds first assigned from slot `first_slot` on, per queue-wait
    /// bucket: (bucket, builds), summed over the shards.
    pub async fn queue_waits(&self, first_slot: i64) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT bucket::BIGINT, sum(builds)::BIGINT FROM queue_wait_slots
             WHERE slot >= $1 GROUP BY bucket",
        )
        .bind(first_slot)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The stored figures, all from one read snapshot.
    pub async fn figures(
        &self,
        today: i64,
        online_since: i64,
        fresh_since: i64,
    ) -> Result<StoredFigures> {
        let row: FiguresRow = sqlx::query_as(
            "SELECT t.pending, t.active, t.finished, t.build_time_ms, t.cpu_micros,
               COALESCE((SELECT sum(builds_finished) FROM daily WHERE day = $1), 0)::BIGINT,
               (SELECT count(*) FROM workers WHERE last_seen_at >= $2),
               COALESCE((SELECT sum(newest_cpu_percent) FROM builds
                         WHERE status IN ('assigned', 'building') AND newest_sampled_at >= $3),
                        0.0)::DOUBLE PRECISION
             FROM (SELECT sum(builds_pending)::BIGINT AS pending,
                          sum(builds_active)::BIGINT AS active,
                          sum(builds_finished)::BIGINT AS finished,
                          sum(build_time_ms)::BIGINT AS build_time_ms,
                          sum(cpu_micros)::BIGINT AS cpu_micros FROM totals) t",
        )
        .bind(today)
        .bind(online_since)
        .bind(fresh_since)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    /// The days `first..=last` that have figures, oldest first.
    pub async fn daily(&self, first: i64, last: i64) -> Result<Vec<DailyRow>> {
        let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT day, sum(builds_finished)::BIGINT, sum(builds_failed)::BIGINT,
                    sum(build_time_ms)::BIGINT, sum(cpu_micros)::BIGINT
             FROM daily WHERE day BETWEEN $1 AND $2 GROUP BY day ORDER BY day",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(DailyRow::from).collect())
    }
}
