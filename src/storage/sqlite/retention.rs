//! Retention's deletes: raw samples and events received before a cutoff,
//! in small batches, leaving tombstones (build, attempt, seq) for builds
//! that may still receive telemetry, so that a replay stays a duplicate.

use rusqlite::params;

use super::{connect_blocking, migrate, Database};
use crate::builds::{may_receive_telemetry, BuildStatus};
use crate::error::{AppError, Result};

/// Most rows one batch removes, so a batch holds the writer only briefly.
pub const BATCH_ROWS: i64 = 2_000;

/// Removes at most about [`BATCH_ROWS`] old rows; returns how many went.
/// Runs inside the caller's transaction.
fn purge_batch(conn: &rusqlite::Connection, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
    let mut removed = 0u64;
    let builds: Vec<(i64, BuildStatus, Option<i64>)> = conn
        .prepare_cached(
            "SELECT id, status, completed_at FROM builds
             WHERE oldest_raw_received_at < ? ORDER BY oldest_raw_received_at LIMIT 16",
        )?
        .query_map([cutoff], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, status, completed_at) in builds {
        if may_receive_telemetry(status, completed_at, now, grace_ms) {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO sample_tombstones (build_id, attempt, seq)
                 SELECT build_id, attempt, seq FROM samples
                 WHERE build_id = ? AND received_at < ? LIMIT ?",
            )?
            .execute([id, cutoff, BATCH_ROWS])?;
            conn.prepare_cached("UPDATE builds SET has_tombstones = 1 WHERE id = ?")?
                .execute([id])?;
        }
        removed += conn
            .prepare_cached(
                "DELETE FROM sample_rows WHERE build_id = ?1 AND (attempt, seq) IN
                 (SELECT attempt, seq FROM samples WHERE build_id = ?1 AND received_at < ?2 LIMIT ?3)",
            )?
            .execute([id, cutoff, BATCH_ROWS])? as u64;
        conn.prepare_cached(
            "UPDATE builds SET oldest_raw_received_at =
             (SELECT min(received_at) FROM samples WHERE build_id = ?1) WHERE id = ?1",
        )?
        .execute([id])?;
        if removed as i64 >= BATCH_ROWS {
            return Ok(removed);
        }
    }
    removed += conn
        .prepare_cached(
            "DELETE FROM build_events WHERE id IN
             (SELECT id FROM build_events WHERE received_at < ? ORDER BY received_at LIMIT ?)",
        )?
        .execute([cutoff, BATCH_ROWS])? as u64;
    Ok(removed)
}

/// Drops the tombstones of builds that no longer accept telemetry: they
/// matter only while a replay could still arrive.
fn drop_expired_tombstones(conn: &rusqlite::Connection, now: i64, grace_ms: i64) -> Result<()> {
    conn.prepare_cached(
        "DELETE FROM sample_tombstones WHERE build_id IN
         (SELECT id FROM builds WHERE has_tombstones = 1 AND completed_at < ?)",
    )?
    .execute(params![now - grace_ms])?;
    conn.prepare_cached(
        "UPDATE builds SET has_tombstones = 0 WHERE has_tombstones = 1 AND completed_at < ?",
    )?
    .execute(params![now - grace_ms])?;
    Ok(())
}

/// One batch and, when it removed nothing, the expired tombstones.
fn purge_step(conn: &rusqlite::Connection, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
    let removed = purge_batch(conn, cutoff, now, grace_ms)?;
    if removed == 0 {
        drop_expired_tombstones(conn, now, grace_ms)?;
    }
    Ok(removed)
}

impl Database {
    /// One batch of retention through the writer; returns the rows removed.
    /// A batch that removes nothing also drops expired tombstones.
    pub async fn purge_batch(&self, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
        self.writer
            .write(move |conn| purge_step(conn, cutoff, now, grace_ms))
            .await
    }
}

/// `freeagent purge` on a SQLite file: batches until one removes nothing,
/// safe while a controller serves the file (each batch is its own short
/// transaction and waits on SQLite's busy timeout). `cutoff_at` gives the
/// cutoff for a time. Returns the rows removed.
pub async fn purge_database(
    database_url: &str,
    cutoff_at: impl Fn(i64) -> i64 + Send + 'static,
    grace_ms: i64,
) -> Result<u64> {
    let options = migrate(database_url).await?;
    let path = options.get_filename().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let conn = connect_blocking(&path)?;
        let mut total = 0;
        loop {
            let now = crate::clock::now_ms();
            // IMMEDIATE: take the write lock up front (waiting on the busy
            // timeout) rather than fail upgrading a read snapshot.
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let removed = match purge_step(&conn, cutoff_at(now), now, grace_ms) {
                Ok(removed) => removed,
                Err(error) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(error);
                }
            };
            conn.execute_batch("COMMIT")?;
            total += removed;
            if removed == 0 {
                return Ok(total);
            }
        }
    })
    .await
    .map_err(|_| AppError::Unavailable)?
}
