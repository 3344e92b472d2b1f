//! Retention: deletes raw samples and events received more than
//! `--retention-days` ago, in small batches so that ingestion never waits
//! long. Per-build figures and every total live in other rows and stay.
//!
//! Samples of builds that may still receive telemetry leave a tombstone
//! (build, attempt, seq) behind, so that a replay of a purged sample is
//! still a duplicate.

use std::time::Duration;

use futures::FutureExt;
use sqlx::{Executor, SqliteConnection};

use crate::db::now_ms;
use crate::error::Result;
use crate::state::AppState;

const MS_PER_DAY: i64 = 86_400_000;
/// Most rows one batch removes, so a batch holds the writer only briefly.
const BATCH_ROWS: i64 = 2_000;
/// How often the background task runs a pass.
const PASS_PERIOD: Duration = Duration::from_secs(60);
/// Telemetry grace assumed by `freeagent purge`, which does not know the
/// serving controller's setting: the longest of SPEC's default and a day.
const PURGE_GRACE_MS: i64 = MS_PER_DAY;

/// Rows received before this time are removed (`0` days removes them all).
pub fn cutoff(now: i64, retention_days: u32) -> i64 {
    if retention_days == 0 {
        i64::MAX
    } else {
        now - i64::from(retention_days) * MS_PER_DAY
    }
}

/// Removes at most about [`BATCH_ROWS`] old rows; returns how many went.
/// Runs inside the caller's transaction.
pub async fn purge_batch(
    conn: &mut SqliteConnection,
    cutoff: i64,
    now: i64,
    grace_ms: i64,
) -> Result<u64> {
    let mut removed = 0u64;
    let builds: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
        "SELECT id, status, completed_at FROM builds
         WHERE oldest_raw_received_at < ? ORDER BY oldest_raw_received_at LIMIT 16",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await?;
    for (id, status, completed_at) in builds {
        // A queued build may be one whose last attempt was requeued or
        // released, and that attempt's worker may still deliver its backlog.
        let accepting = matches!(status.as_str(), "pending" | "assigned" | "building")
            || completed_at.is_some_and(|done| now - done <= grace_ms);
        if accepting {
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
pub async fn drop_expired_tombstones(
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

/// One full pass through the server's writer, batch by batch.
pub async fn run_pass(state: &AppState) -> Result<u64> {
    let grace_ms = state.settings.telemetry_grace.as_millis() as i64;
    let days = state.settings.retention_days;
    let mut total = 0;
    loop {
        let now = now_ms();
        let limit = cutoff(now, days);
        let removed = state
            .db
            .writer
            .write(move |conn| purge_batch(conn, limit, now, grace_ms).boxed())
            .await?;
        total += removed;
        if removed == 0 {
            state
                .db
                .writer
                .write(move |conn| drop_expired_tombstones(conn, now, grace_ms).boxed())
                .await?;
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Runs retention passes until the task is aborted.
pub async fn run_retention(state: AppState) {
    let mut ticker = tokio::time::interval(PASS_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match run_pass(&state).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "retention removed old raw rows"),
            Err(error) => tracing::error!(%error, "retention pass failed"),
        }
    }
}

/// `freeagent purge`: one pass over the database at `database_url`, safe
/// while a controller serves it (each batch is its own short transaction and
/// waits on SQLite's busy timeout). Returns the rows removed.
pub async fn purge(database_url: &str, retention_days: u32) -> Result<u64> {
    let mut conn = crate::db::connect(database_url).await?;
    let mut total = 0;
    loop {
        let now = now_ms();
        // IMMEDIATE: take the write lock up front (waiting on the busy
        // timeout) rather than fail upgrading a read snapshot.
        conn.execute("BEGIN IMMEDIATE").await?;
        let removed =
            match purge_batch(&mut conn, cutoff(now, retention_days), now, PURGE_GRACE_MS).await {
                Ok(removed) => removed,
                Err(error) => {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err(error);
                }
            };
        if removed == 0 {
            if let Err(error) = drop_expired_tombstones(&mut conn, now, PURGE_GRACE_MS).await {
                let _ = conn.execute("ROLLBACK").await;
                return Err(error);
            }
        }
        conn.execute("COMMIT").await?;
        total += removed;
        if removed == 0 {
            return Ok(total);
        }
    }
}
