//! Retention's deletes: raw samples and events received before a cutoff,
//! in small batches, leaving tombstones (build, attempt, seq) for builds
//! that may still receive telemetry, so that a replay stays a duplicate.

use futures::FutureExt;
use sqlx::{Executor, SqliteConnection};

use super::{connect, Database};
use crate::builds::{may_receive_telemetry, BuildStatus};
use crate::error::Result;

/// Most rows one batch removes, so a batch holds the writer only briefly.
pub const BATCH_ROWS: i64 = 2_000;

/// Removes at most about [`BATCH_ROWS`] old rows; returns how many went.
/// Runs inside the caller's transaction.
async fn purge_batch(
    conn: &mut SqliteConnection,
    cutoff: i64,
    now: i64,
    grace_ms: i64,
) -> Result<u64> {
    let mut removed = 0u64;
    let builds: Vec<(i64, BuildStatus, Option<i64>)> = sqlx::query_as(
        "SELECT id, status, completed_at FROM builds
         WHERE oldest_raw_received_at < ? ORDER BY oldest_raw_received_at LIMIT 16",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await?;
    for (id, status, completed_at) in builds {
        if may_receive_telemetry(status, completed_at, now, grace_ms) {
            sqlx::query(
                "INSERT OR IGNORE INTO sample_tombstones (build_id, attempt, seq)
                 SELECT build_id, attempt, seq FROM samples
                 WHERE build_id = ? AND received_at < ? LIMIT ?",
            )
            .bind(id)
            .bind(cutoff)
            .bind(BATCH_ROWS)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE builds SET has_tombstones = 1 WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        removed += sqlx::query(
            "DELETE FROM sample_rows WHERE build_id = ?1 AND (attempt, seq) IN
             (SELECT attempt, seq FROM samples WHERE build_id = ?1 AND received_at < ?2 LIMIT ?3)",
        )
        .bind(id)
        .bind(cutoff)
        .bind(BATCH_ROWS)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE builds SET oldest_raw_received_at =
             (SELECT min(received_at) FROM samples WHERE build_id = ?1) WHERE id = ?1",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        if removed as i64 >= BATCH_ROWS {
            return Ok(removed);
        }
    }
    removed += sqlx::query(
        "DELETE FROM build_events WHERE id IN
         (SELECT id FROM build_events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
    )
    .bind(cutoff)
    .bind(BATCH_ROWS)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(removed)
}

/// Drops the tombstones of builds that no longer accept telemetry: they
/// matter only while a replay could still arrive.
async fn drop_expired_tombstones(
    conn: &mut SqliteConnection,
    now: i64,
    grace_ms: i64,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM sample_tombstones WHERE build_id IN
         (SELECT id FROM builds WHERE has_tombstones = 1 AND completed_at < ?)",
    )
    .bind(now - grace_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE builds SET has_tombstones = 0 WHERE has_tombstones = 1 AND completed_at < ?",
    )
    .bind(now - grace_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Database {
    /// One batch of retention through the writer; returns the rows removed.
    /// A batch that removes nothing also drops expired tombstones.
    pub async fn purge_batch(&self, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
        self.writer
            .write(move |conn| {
                async move {
                    let removed = purge_batch(conn, cutoff, now, grace_ms).await?;
                    if removed == 0 {
                        drop_expired_tombstones(conn, now, grace_ms).await?;
                    }
                    Ok(removed)
                }
                .boxed()
            })
            .await
    }
}

/// `freeagent purge` on a SQLite file: batches until one removes nothing,
/// safe while a controller serves the file (each batch is its own short
/// transaction and waits on SQLite's busy timeout). `cutoff_at` gives the
/// cutoff for a time. Returns the rows removed.
pub async fn purge_database(
    database_url: &str,
    cutoff_at: impl Fn(i64) -> i64,
    grace_ms: i64,
) -> Result<u64> {
    let mut conn = connect(database_url).await?;
    let mut total = 0;
    loop {
        let now = crate::clock::now_ms();
        // IMMEDIATE: take the write lock up front (waiting on the busy
        // timeout) rather than fail upgrading a read snapshot.
        conn.execute("BEGIN IMMEDIATE").await?;
        let mut batch = purge_batch(&mut conn, cutoff_at(now), now, grace_ms).await;
        if let Ok(0) = batch {
            batch = drop_expired_tombstones(&mut conn, now, grace_ms)
                .await
                .map(|()| 0);
        }
        let removed = match batch {
            Ok(removed) => removed,
            Err(error) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(error);
            }
        };
        conn.execute("COMMIT").await?;
        total += removed;
        if removed == 0 {
            return Ok(total);
        }
    }
}
