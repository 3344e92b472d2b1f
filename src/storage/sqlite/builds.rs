//! Builds and their attempts: submission, the atomic claim, transitions
//! with their ledger delta, and the lease reaper's query.

use rusqlite::{params, OptionalExtension};

use super::figures::{push_ledger, push_queue_wait};
use super::rows::{attempt_row, build_row, ATTEMPT_COLUMNS, BUILD_COLUMNS};
use super::script::Script;
use super::Database;
use crate::builds::{transition, AttemptRow, BuildRow, BuildStatus, Event, Refusal, Transition};
use crate::error::{AppError, Result};
use crate::ledger::{LedgerDelta, TotalsDelta};
use crate::stats::queue_wait;
use crate::storage::{refusal_error, ChangeDecision, Claim, NewBuild};

/// The builds among `ids` that exist, read by the writer.
pub(super) fn load_builds(conn: &rusqlite::Connection, ids: &[i64]) -> Result<Vec<BuildRow>> {
    let ids = serde_json::to_string(ids).map_err(|_| AppError::Unavailable)?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE id IN (SELECT value FROM json_each(?))"
    ))?;
    let builds = statement
        .query_map([ids], build_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(builds)
}

/// Every attempt of the builds among `ids`, read by the writer.
pub(super) fn load_attempts(conn: &rusqlite::Connection, ids: &[i64]) -> Result<Vec<AttemptRow>> {
    let ids = serde_json::to_string(ids).map_err(|_| AppError::Unavailable)?;
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE build_id IN (SELECT value FROM json_each(?))"
    ))?;
    let attempts = statement
        .query_map([ids], attempt_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(attempts)
}

/// Adds to `script` what a transition of `build` writes: the build, its
/// attempts and the ledger, in the caller's transaction.
fn push_transition(script: &mut Script, build: &BuildRow, change: &Transition, now: i64) {
    let after = &change.build;
    script
        .push(
            "UPDATE builds SET status = ?, attempt = ?, worker_id = ?, assigned_at = ?,
             started_at = ?, completed_at = ?, error = ? WHERE id = ?",
        )
        .bind(after.status)
        .bind(after.attempt)
        .bind(after.worker_id)
        .bind(after.assigned_at)
        .bind(after.started_at)
        .bind(after.completed_at)
        .bind(after.error.clone())
        .bind(build.id);
    if let Some(how) = change.ends_attempt {
        script
            .push(
                "UPDATE attempts SET ended_at = ?, outcome = ?
                 WHERE build_id = ? AND attempt = ? AND ended_at IS NULL",
            )
            .bind(now)
            .bind(how)
            .bind(build.id)
            .bind(build.attempt);
    }
    if change.starts_attempt {
        script
            .push(
                "INSERT INTO attempts (build_id, attempt, worker_id, assigned_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (build_id, attempt) DO UPDATE
                 SET worker_id = excluded.worker_id, assigned_at = excluded.assigned_at",
            )
            .bind(build.id)
            .bind(after.attempt)
            .bind(after.worker_id)
            .bind(after.assigned_at);
    }
    push_ledger(script, &change.ledger);
}

impl Database {
    /// Stores a new pending build; returns its id.
    pub async fn submit_build(&self, build: NewBuild) -> Result<i64> {
        self.writer
            .write(move |conn| {
                let id: i64 = conn
                    .prepare_cached(
                        "INSERT INTO builds (status, platform, label, submitted_at, token_hash)
                         VALUES ('pending', ?, ?, ?, ?) RETURNING id",
                    )?
                    .query_row(
                        params![
                            build.platform,
                            build.label,
                            build.submitted_at,
                            &build.token_hash[..]
                        ],
                        |row| row.get(0),
                    )?;
                let totals = TotalsDelta {
                    pending: 1,
                    ..TotalsDelta::default()
                };
                let mut script = Script::default();
                push_ledger(&mut script, &LedgerDelta { totals, day: None });
                script.run(conn)?;
                Ok(id)
            })
            .await
    }

    /// See [`crate::storage::Storage::cancelled_builds`]. From memory once
    /// the cancellations stored before this controller started were read.
    pub async fn cancelled_builds(&self, worker_id: i64, since: i64) -> Result<Vec<i64>> {
        if let Some(ids) = self.cancellations.of(worker_id, since) {
            return Ok(ids);
        }
        let stored: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT worker_id, id, completed_at FROM builds
             WHERE status = 'cancelled' AND worker_id IS NOT NULL AND completed_at >= ?",
        )
        .bind(since)
        .fetch_all(&self.reads)
        .await?;
        self.cancellations.load(stored);
        Ok(self.cancellations.of(worker_id, since).unwrap_or_default())
    }

    /// A build as stored now; 404 when there is none.
    pub async fn build(&self, id: i64) -> Result<BuildRow> {
        sqlx::query_as::<_, BuildRow>(&format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reads)
            .await?
            .ok_or_else(AppError::unknown_build)
    }

    /// Hands the oldest pending build of one of the worker's platforms to
    /// it, counting its queue wait when this is its first assignment. The
    /// single writer makes the claim atomic.
    pub async fn claim(&self, worker_id: i64, now: i64) -> Result<Option<Claim>> {
        // Everything that can refuse happens before the first write.
        self.writer
            .write_checked(move |conn| {
                let build = conn
                    .prepare_cached(&format!(
                        "SELECT {BUILD_COLUMNS} FROM builds WHERE id =
                           (SELECT id FROM builds
                            WHERE status = 'pending' AND platform IN
                              (SELECT value FROM json_each(
                                 (SELECT platforms FROM workers WHERE id = ?)))
                            ORDER BY id LIMIT 1)"
                    ))?
                    .query_row([worker_id], build_row)
                    .optional()?;
                let Some(build) = build else { return Ok(None) };
                let change =
                    transition(&build, &Event::Claim { worker_id }, now).map_err(refusal_error)?;
                let mut script = Script::default();
                push_transition(&mut script, &build, &change, now);
                if let Some(wait) =
                    queue_wait::first_wait(change.build.attempt, build.submitted_at, now)
                {
                    push_queue_wait(&mut script, now, wait);
                }
                script.run(conn)?;
                Ok(Some(Claim::new(build, change.build.attempt)))
            })
            .await
    }

    /// Changes build `id` by the event `decide` picks from the build and
    /// its attempts as stored now (or refuses); returns the build after.
    pub async fn change_build(
        &self,
        id: i64,
        now: i64,
        decide: ChangeDecision,
    ) -> Result<BuildRow> {
        // `decide` and the transition refuse before the first write.
        let after = self
            .writer
            .write_checked(move |conn| {
                let build = load_builds(conn, &[id])?
                    .pop()
                    .ok_or_else(AppError::unknown_build)?;
                let attempts = load_attempts(conn, &[id])?;
                let Some(event) = decide(&build, &attempts)? else {
                    return Ok(build);
                };
                match transition(&build, &event, now) {
                    Ok(change) => {
                        let mut script = Script::default();
                        push_transition(&mut script, &build, &change, now);
                        script.run(conn)?;
                        Ok(build.after(&change.build))
                    }
                    Err(Refusal::AlreadyThere) => Ok(build),
                    Err(refusal) => Err(refusal_error(refusal)),
                }
            })
            .await?;
        if let (BuildStatus::Cancelled, Some(worker_id), Some(at)) =
            (after.status, after.worker_id, after.completed_at)
        {
            self.cancellations.record(worker_id, after.id, at);
        }
        Ok(after)
    }

    /// One pass of the lease reaper: every active build whose worker made
    /// no authenticated call since `silent_since` loses its attempt.
    /// Returns the builds as they were before.
    pub async fn reap_lost_leases(&self, silent_since: i64, now: i64) -> Result<Vec<BuildRow>> {
        self.writer
            .write(move |conn| {
                let lost: Vec<BuildRow> = conn
                    .prepare_cached(&format!(
                        "SELECT {BUILD_COLUMNS} FROM builds
                         WHERE status IN ('assigned', 'building')
                           AND worker_id IN (SELECT id FROM workers WHERE last_seen_at < ?)"
                    ))?
                    .query_map([silent_since], build_row)?
                    .collect::<rusqlite::Result<_>>()?;
                let mut script = Script::default();
                for build in &lost {
                    let change =
                        transition(build, &Event::LeaseLost, now).map_err(refusal_error)?;
                    push_transition(&mut script, build, &change, now);
                }
                script.run(conn)?;
                Ok(lost)
            })
            .await
    }
}
