//! The lease reaper: builds whose worker made no authenticated call for the
//! lease timeout go back to the queue as their next attempt, or fail after
//! the last one (`builds::transition` on `LeaseLost`).

use super::FleetState;
use crate::builds::MAX_ATTEMPTS;
use crate::clock::now_ms;
use crate::storage::Duty;

/// Runs the lease reaper until the task is aborted.
pub async fn run_reaper(fleet: FleetState) {
    let lease = fleet.lease_timeout;
    let mut ticker = tokio::time::interval(Duty::renew_every(lease));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding = false;
    loop {
        ticker.tick().await;
        let now = now_ms();
        match fleet
            .storage
            .hold_duty(Duty::Reaper, now, Duty::lease_ms(lease))
            .await
        {
            Ok(held) => {
                if held != holding {
                    tracing::info!(
                        held,
                        "lease reaper duty {}",
                        if held { "taken" } else { "held elsewhere" }
                    );
                    holding = held;
                }
                if !held {
                    continue;
                }
            }
            Err(error) => {
                tracing::error!(%error, "could not renew the lease reaper duty");
                continue;
            }
        }
        // This controller's own seen-times are written first. Another
        // controller of a Postgres database writes its own at least every
        // flush interval, so a worker it saw may look that much more silent
        // here: the margin keeps the reaper from taking its build early.
        if let Err(error) = fleet.seen.flush().await {
            tracing::error!(%error, "could not write the seen-times before reaping");
            continue;
        }
        let margin = match fleet.storage.backend_name() {
            "postgres" => fleet.seen.every(),
            _ => std::time::Duration::ZERO,
        };
        let silent_since = now - (lease + margin).as_millis() as i64;
        match fleet.storage.reap_lost_leases(silent_since, now).await {
            Ok(lost) => {
                if lost.iter().any(|b| b.attempt < MAX_ATTEMPTS) {
                    fleet.queue_changed.notify_waiters();
                }
                for build in lost {
                    tracing::warn!(
                        build_id = build.id,
                        attempt = build.attempt,
                        "lease expired: build {}",
                        if build.attempt >= MAX_ATTEMPTS {
                            "failed"
                        } else {
                            "requeued"
                        }
                    );
                }
            }
            Err(error) => tracing::error!(%error, "lease reaper pass failed"),
        }
    }
}
