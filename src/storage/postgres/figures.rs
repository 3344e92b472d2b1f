//! Reading the figures: the sum of the ledger's shard rows and a few
//! indexed counts, in one statement (one snapshot).

use super::Database;
use crate::error::Result;
use crate::storage::{DailyRow, FiguresRow, StoredFigures};

impl Database {
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
