//! Retention: deletes raw samples and events received more than
//! `--retention-days` ago, in small batches so that ingestion never waits
//! long. Per-build figures and every total live in other rows and stay.
//! Samples of builds that may still receive telemetry leave a tombstone
//! behind (see `storage`), so that a replay of a purged sample is still a
//! duplicate.

use std::time::Duration;

use crate::clock::now_ms;
use crate::error::Result;
use crate::storage::{Duty, Storage};

const MS_PER_DAY: i64 = 86_400_000;
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

/// What retention needs. Cheap to clone.
#[derive(Clone)]
pub struct RetentionState {
    /// The database it purges.
    pub storage: Storage,
    /// Raw rows older than this many days go.
    pub retention_days: u32,
    /// How long after a build (or attempt) ended it still takes telemetry.
    pub telemetry_grace: Duration,
    /// The workers' lease timeout, which also bounds how long retention
    /// stays without a controller when its holder dies (see [`Duty`]).
    pub lease_timeout: Duration,
}

/// One full pass, batch by batch; returns the rows removed.
pub async fn run_pass(state: &RetentionState) -> Result<u64> {
    let grace_ms = state.telemetry_grace.as_millis() as i64;
    let mut total = 0;
    loop {
        let now = now_ms();
        let removed = state
            .storage
            .purge_batch(cutoff(now, state.retention_days), now, grace_ms)
            .await?;
        total += removed;
        if removed == 0 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Runs retention passes until the task is aborted, every [`PASS_PERIOD`]
/// while this controller holds the retention duty. The duty is renewed
/// more often than that, so that it moves to another controller within
/// one lease timeout when this one dies.
pub async fn run_retention(state: RetentionState) {
    let lease = state.lease_timeout;
    let mut ticker = tokio::time::interval(Duty::renew_every(lease).min(PASS_PERIOD));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        ticker.tick().await;
        let held = state
            .storage
            .hold_duty(Duty::Retention, now_ms(), Duty::lease_ms(lease))
            .await;
        match held {
            Ok(true) => {}
            Ok(false) => {
                // Whoever holds it now runs the passes; taking it back later
                // starts with a pass.
                last_pass = None;
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "could not renew the retention duty");
                continue;
            }
        }
        if last_pass.is_some_and(|at| at.elapsed() < PASS_PERIOD) {
            continue;
        }
        last_pass = Some(tokio::time::Instant::now());
        match run_pass(&state).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "retention removed old raw rows"),
            Err(error) => tracing::error!(%error, "retention pass failed"),
        }
    }
}

/// `freeagent purge`: one pass over the database at `database_url`, safe
/// while a controller serves it. Returns the rows removed.
pub async fn purge(database_url: &str, retention_days: u32) -> Result<u64> {
    crate::storage::purge(
        database_url,
        move |now| cutoff(now, retention_days),
        PURGE_GRACE_MS,
    )
    .await
}
