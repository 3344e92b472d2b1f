//! Retention's deletes: raw samples and events received before a cutoff,
//! in small batches, leaving tombstones (build, attempt, seq) for builds
//! that may still receive telemetry, so that a replay stays a duplicate.

use futures::FutureExt;
use sqlx::PgConnection;

use super::builds::BUILD_COLUMNS;
use super::Database;
use crate::builds::{may_receive_telemetry, BuildRow};
use crate::error::Result;

/// Most rows one batch removes, so a batch holds its builds' locks briefly.
const BATCH_ROWS: i64 = 2_000;
/// Builds one batch works through.
const BUILDS_PER_BATCH: i64 = 16;

/// Removes at most about [`BATCH_ROWS`] old rows; returns how many went.
async fn purge_batch(conn: &mut PgConnection, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
    let mut removed = 0u64;
    // The builds are locked in ascending id, the order every writer keeps.
    let builds: Vec<BuildRow> = sqlx::query_as(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE id IN
           (SELECT id FROM builds WHERE oldest_raw_received_at < $1
            ORDER BY oldest_raw_received_at LIMIT $2)
         ORDER BY id FOR UPDATE"
    ))
    .bind(cutoff)
    .bind(BUILDS_PER_BATCH)
    .fetch_all(&mut *conn)
    .await?;
    for build in builds {
        let id = build.id;
        let keep_tombstones =
            may_receive_telemetry(build.status, build.completed_at, now, grace_ms);
        let gone: Vec<(i64, i64)> = sqlx::query_as(
            "DELETE FROM samples WHERE build_id = $1 AND (attempt, seq) IN
               (SELECT attempt, seq FROM samples WHERE build_id = $1 AND received_at < $2
                LIMIT $3)
             RETURNING attempt, seq",
        )
        .bind(id)
        .bind(cutoff)
        .bind(BATCH_ROWS)
        .fetch_all(&mut *conn)
        .await?;
        if keep_tombstones && !gone.is_empty() {
            sqlx::query(
                "INSERT INTO sample_tombstones (build_id, attempt, seq)
                 SELECT $1, k.attempt, k.seq FROM UNNEST($2::BIGINT[], $3::BIGINT[]) AS k (attempt, seq)
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(gone.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(gone.iter().map(|k| k.1).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE builds SET has_tombstones = TRUE WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        removed += gone.len() as u64;
        sqlx::query(
            "UPDATE builds SET oldest_raw_received_at =
             (SELECT min(received_at) FROM samples WHERE build_id = $1) WHERE id = $1",
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
         (SELECT id FROM build_events WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
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
async fn drop_expired_tombstones(conn: &mut PgConnection, now: i64, grace_ms: i64) -> Result<()> {
    let expired: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM builds WHERE has_tombstones AND completed_at < $1
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(now - grace_ms)
    .fetch_all(&mut *conn)
    .await?;
    if expired.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM sample_tombstones WHERE build_id = ANY($1)")
        .bind(&expired)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE builds SET has_tombstones = FALSE WHERE id = ANY($1)")
        .bind(&expired)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Database {
    /// One batch of retention in its own transaction; returns the rows
    /// removed. A batch that removes nothing also drops expired tombstones.
    pub async fn purge_batch(&self, cutoff: i64, now: i64, grace_ms: i64) -> Result<u64> {
        self.transaction(move |conn| {
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
