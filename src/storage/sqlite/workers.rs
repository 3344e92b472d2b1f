//! Workers: registration, look-ups by token hash, last-seen times.

use rusqlite::params;

use super::Database;
use crate::error::Result;
use crate::storage::{NewWorker, WorkerIdentity};

/// Seen-times written by one statement.
const SEEN_TIMES_PER_STATEMENT: usize = 5_000;

impl Database {
    /// Stores a new worker; returns its id.
    pub async fn register_worker(&self, worker: NewWorker) -> Result<i64> {
        self.writer
            .write(move |conn| {
                let id: i64 = conn
                    .prepare_cached(
                        "INSERT INTO workers (name, platforms, cpu_cores, memory_mb, token_hash,
                         registered_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    )?
                    .query_row(
                        params![
                            worker.name,
                            worker.platforms_json,
                            worker.cpu_cores,
                            worker.memory_mb,
                            &worker.token_hash[..],
                            worker.registered_at,
                            worker.registered_at
                        ],
                        |row| row.get(0),
                    )?;
                Ok(id)
            })
            .await
    }

    /// The worker whose token has this hash.
    pub async fn worker_by_token(&self, hash: [u8; 32]) -> Result<Option<WorkerIdentity>> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT id, cpu_cores, memory_mb FROM workers WHERE token_hash = ?")
                .bind(&hash[..])
                .fetch_optional(&self.reads)
                .await?;
        Ok(row.map(|(id, cpu_cores, memory_mb)| WorkerIdentity {
            id,
            cpu_cores,
            memory_mb,
        }))
    }

    /// Whether some worker or build holds the secret with this hash.
    pub async fn secret_is_known(&self, hash: [u8; 32]) -> Result<bool> {
        let known: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM workers WHERE token_hash = ?1
             UNION ALL SELECT 1 FROM builds WHERE token_hash = ?1 LIMIT 1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.reads)
        .await?;
        Ok(known.is_some())
    }

    /// Records that each worker `(id, at)` made an authenticated call at
    /// `at`: one job, one statement per chunk (a JSON array of pairs), so a
    /// flush of thousands of workers costs a few statements.
    pub async fn record_seen_times(&self, times: Vec<(i64, i64)>) -> Result<()> {
        let chunks: Vec<String> = times
            .chunks(SEEN_TIMES_PER_STATEMENT)
            .map(|chunk| {
                let pairs: Vec<[i64; 2]> = chunk.iter().map(|&(id, at)| [id, at]).collect();
                serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
            })
            .collect();
        self.writer
            .write_checked(move |conn| {
                let mut statement = conn.prepare_cached(
                    "UPDATE workers SET last_seen_at = max(last_seen_at, j.value ->> 1)
                     FROM json_each(?) AS j WHERE workers.id = j.value ->> 0",
                )?;
                for json in chunks {
                    statement.execute([json])?;
                }
                Ok(())
            })
            .await
    }
}
