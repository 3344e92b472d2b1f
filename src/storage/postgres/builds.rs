//! Builds and their attempts: submission, the claim (`FOR UPDATE SKIP
//! LOCKED`), transitions with their ledger delta, and the lease reaper.

use futures::FutureExt;
use sqlx::PgConnection;

use super::figures::record_queue_wait;
use super::{announce_queue_change, Database, Ledger};
use crate::builds::{transition, AttemptRow, BuildRow, BuildStatus, Event, Refusal, Transition};
use crate::error::{AppError, Result};
use crate::ledger::{LedgerDelta, TotalsDelta};
use crate::stats::queue_wait;
use crate::storage::{refusal_error, ChangeDecision, Claim, NewBuild};

pub(super) const BUILD_COLUMNS: &str = "id, status, platform, label, worker_id, attempt,
    submitted_at, assigned_at, started_at, completed_at, error, token_hash, cpu_micros,
    peak_memory_mb, snapshot_count, newest_sampled_at, has_tombstones";

/// Loads a build and locks it for this transaction; 404 when there is none.
pub(super) async fn lock_build(conn: &mut PgConnection, id: i64) -> Result<BuildRow> {
    sqlx::query_as::<_, BuildRow>(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(AppError::unknown_build)
}

/// Loads and locks the builds among `ids` that exist, in ascending id: the
/// lock order every transaction keeps.
pub(super) async fn lock_builds(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<BuildRow>> {
    Ok(sqlx::query_as::<_, BuildRow>(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Loads every attempt of the builds among `ids` (locked by the caller).
pub(super) async fn load_attempts(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<AttemptRow>> {
    Ok(sqlx::query_as::<_, AttemptRow>(
        "SELECT build_id, attempt, worker_id, assigned_at, ended_at, outcome,
                cpu_percent_micros, cpu_counter_micros
         FROM attempts WHERE build_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?)
}

/// Writes what a transition of `build` (locked) does; its ledger delta goes
/// to `ledger`, written at the transaction's end.
async fn apply_transition(
    conn: &mut PgConnection,
    build: &BuildRow,
    change: &Transition,
    now: i64,
    ledger: &mut Ledger,
) -> Result<()> {
    let after = &change.build;
    sqlx::query(
        "UPDATE builds SET status = $1, attempt = $2, worker_id = $3, assigned_at = $4,
         started_at = $5, completed_at = $6, error = $7 WHERE id = $8",
    )
    .bind(after.status.as_str())
    .bind(after.attempt)
    .bind(after.worker_id)
    .bind(after.assigned_at)
    .bind(after.started_at)
    .bind(after.completed_at)
    .bind(&after.error)
    .bind(build.id)
    .execute(&mut *conn)
    .await?;
    if let Some(how) = change.ends_attempt {
        sqlx::query(
            "UPDATE attempts SET ended_at = $1, outcome = $2
             WHERE build_id = $3 AND attempt = $4 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(how)
        .bind(build.id)
        .bind(build.attempt)
        .execute(&mut *conn)
        .await?;
    }
    if change.starts_attempt {
        sqlx::query(
            "INSERT INTO attempts (build_id, attempt, worker_id, assigned_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (build_id, attempt) DO UPDATE
             SET worker_id = excluded.worker_id, assigned_at = excluded.assigned_at",
        )
        .bind(build.id)
        .bind(after.attempt)
        .bind(after.worker_id)
        .bind(after.assigned_at)
        .execute(&mut *conn)
        .await?;
    }
    if after.status == BuildStatus::Pending && build.status != BuildStatus::Pending {
        announce_queue_change(conn).await?;
    }
    ledger.add(&change.ledger);
    Ok(())
}

impl Database {
    /// Stores a new pending build; returns its id.
    pub async fn submit_build(&self, build: NewBuild) -> Result<i64> {
        let shard = self.shard();
        self.transaction(move |conn| {
            async move {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO builds (status, platform, label, submitted_at, token_hash)
                     VALUES ('pending', $1, $2, $3, $4) RETURNING id",
                )
                .bind(build.platform)
                .bind(build.label)
                .bind(build.submitted_at)
                .bind(&build.token_hash[..])
                .fetch_one(&mut *conn)
                .await?;
                announce_queue_change(conn).await?;
                let mut ledger = Ledger::default();
                ledger.add(&LedgerDelta {
                    totals: TotalsDelta {
                        pending: 1,
                        ..TotalsDelta::default()
                    },
                    day: None,
                });
                ledger.write(conn, shard).await?;
                Ok(id)
            }
            .boxed()
        })
        .await
    }

    /// See [`crate::storage::Storage::cancelled_builds`].
    pub async fn cancelled_builds(&self, worker_id: i64, since: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM builds
             WHERE worker_id = $1 AND status = 'cancelled' AND completed_at >= $2 ORDER BY id",
        )
        .bind(worker_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    /// A build as stored now; 404 when there is none.
    pub async fn build(&self, id: i64) -> Result<BuildRow> {
        sqlx::query_as::<_, BuildRow>(&format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(AppError::unknown_build)
    }

    /// Hands the oldest pending build of one of the worker's platforms to
    /// it, counting its queue wait when this is its first assignment. A build another controller is claiming right now is skipped, not
    /// waited for: this worker gets the next candidate, never a false "no
    /// build".
    pub async fn claim(&self, worker_id: i64, now: i64) -> Result<Option<Claim>> {
        let shard = self.shard();
        self.transaction(move |conn| {
            async move {
                let build: Option<BuildRow> = sqlx::query_as(&format!(
                    "SELECT {BUILD_COLUMNS} FROM builds
                     WHERE status = 'pending' AND platform IN
                       (SELECT jsonb_array_elements_text(platforms::jsonb)
                        FROM workers WHERE id = $1)
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ))
                .bind(worker_id)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(build) = build else { return Ok(None) };
                let change =
                    transition(&build, &Event::Claim { worker_id }, now).map_err(refusal_error)?;
                let mut ledger = Ledger::default();
                apply_transition(conn, &build, &change, now, &mut ledger).await?;
                ledger.write(conn, shard).await?;
                // Last in the lock order: the queue-wait rows of this shard.
                if let Some(wait) =
                    queue_wait::first_wait(change.build.attempt, build.submitted_at, now)
                {
                    record_queue_wait(conn, shard, now, wait).await?;
                }
                Ok(Some(Claim::new(build, change.build.attempt)))
            }
            .boxed()
        })
        .await
    }

    /// Changes build `id` by the event `decide` picks from the build and
    /// its attempts as stored now, under the build's lock (or refuses);
    /// returns the build after.
    pub async fn change_build(
        &self,
        id: i64,
        now: i64,
        decide: ChangeDecision,
    ) -> Result<BuildRow> {
        let shard = self.shard();
        self.transaction(move |conn| {
            async move {
                let build = lock_build(conn, id).await?;
                let attempts = load_attempts(conn, &[id]).await?;
                let Some(event) = decide(&build, &attempts)? else {
                    return Ok(build);
                };
                match transition(&build, &event, now) {
                    Ok(change) => {
                        let mut ledger = Ledger::default();
                        apply_transition(conn, &build, &change, now, &mut ledger).await?;
                        ledger.write(conn, shard).await?;
                        lock_build(conn, id).await
                    }
                    Err(Refusal::AlreadyThere) => Ok(build),
                    Err(refusal) => Err(refusal_error(refusal)),
                }
            }
            .boxed()
        })
        .await
    }

    /// One pass of the lease reaper: every active build whose worker made
    /// no authenticated call since `silent_since` loses its attempt. A
    /// build locked by a change in flight is left to the next pass.
    /// Returns the builds as they were before.
    pub async fn reap_lost_leases(&self, silent_since: i64, now: i64) -> Result<Vec<BuildRow>> {
        let shard = self.shard();
        self.transaction(move |conn| {
            async move {
                let lost: Vec<BuildRow> = sqlx::query_as(&format!(
                    "SELECT {BUILD_COLUMNS} FROM builds
                     WHERE status IN ('assigned', 'building')
                       AND worker_id IN (SELECT id FROM workers WHERE last_seen_at < $1)
                     ORDER BY id FOR UPDATE SKIP LOCKED"
                ))
                .bind(silent_since)
                .fetch_all(&mut *conn)
                .await?;
                let mut ledger = Ledger::default();
                for build in &lost {
                    let change =
                        transition(build, &Event::LeaseLost, now).map_err(refusal_error)?;
                    apply_transition(conn, build, &change, now, &mut ledger).await?;
                }
                ledger.write(conn, shard).await?;
                Ok(lost)
            }
            .boxed()
        })
        .await
    }
}
