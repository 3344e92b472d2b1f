//! Workers: registration, look-ups by token hash, last-seen times.

use super::Database;
use crate::error::Result;
use crate::storage::{NewWorker, WorkerIdentity};

/// Seen-times written by one statement.
const SEEN_TIMES_PER_STATEMENT: usize = 5_000;

impl Database {
    /// Stores a new worker; returns its id.
    pub async fn register_worker(&self, worker: NewWorker) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO workers (name, platforms, cpu_cores, memory_mb, token_hash,
             registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .bind(worker.name)
        .bind(worker.platforms_json)
        .bind(worker.cpu_cores)
        .bind(worker.memory_mb)
        .bind(&worker.token_hash[..])
        .bind(worker.registered_at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The worker whose token has this hash.
    pub async fn worker_by_token(&self, hash: [u8; 32]) -> Result<Option<WorkerIdentity>> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT id, cpu_cores, memory_mb FROM workers WHERE token_hash = $1")
                .bind(&hash[..])
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, cpu_cores, memory_mb)| WorkerIdentity {
            id,
            cpu_cores,
            memory_mb,
        }))
    }

    /// Whether some worker or build holds the secret with this hash.
    pub async fn secret_is_known(&self, hash: [u8; 32]) -> Result<bool> {
        let known: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM workers WHERE token_hash = $1
             UNION ALL SELECT 1 FROM builds WHERE token_hash = $1 LIMIT 1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(known.is_some())
    }

    /// Records that each worker `(id, at)` made an authenticated call at
    /// `at`, in one statement per chunk. Never moves backwards, whichever
    /// controller saw the later call first. Ids in ascending order, so two
    /// controllers flushing at once lock the rows in the same order.
    pub async fn record_seen_times(&self, mut times: Vec<(i64, i64)>) -> Result<()> {
        times.sort_unstable();
        for chunk in times.chunks(SEEN_TIMES_PER_STATEMENT) {
            let (ids, ats): (Vec<i64>, Vec<i64>) = chunk.iter().copied().unzip();
            sqlx::query(
                "UPDATE workers AS w SET last_seen_at = v.at
                 FROM unnest($1::bigint[], $2::bigint[]) AS v(id, at)
                 WHERE w.id = v.id AND w.last_seen_at < v.at",
            )
            .bind(ids)
            .bind(ats)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
