//! The build lifecycle as pure code: the states a build and its attempts
//! go through, the one [`transition`] function every handler and the lease
//! reaper use (new state, ledger delta, or refusal), and which attempt's
//! telemetry is accepted when. No I/O: `storage` loads the rows, calls
//! these, and writes what they return, so every backend shares the rules.

use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::ledger::{day_of, DayDelta, LedgerDelta, TotalsDelta};
use crate::stats::accounting::{micros_to_seconds, AttemptCpu};
use crate::wire::BuildView;

/// Attempts a build gets before a lost or released last attempt fails it.
pub const MAX_ATTEMPTS: i64 = 3;
/// Error of a build failed by the lease reaper.
pub const LOST_CONTACT: &str = "worker lost contact";
/// Error of a build failed because its worker gave back its last attempt.
pub const RELEASED_BY_WORKER: &str = "released by its worker";

/// A build id from a path; anything that is not one names no build (404).
pub fn parse_build_id(raw: &str) -> Result<i64, AppError> {
    raw.parse::<i64>().map_err(|_| AppError::unknown_build())
}

/// A build's state, stored and sent as its lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "TEXT", rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Waiting for a worker.
    Pending,
    /// Claimed by a worker, not yet started.
    Assigned,
    /// Running on its worker.
    Building,
    /// Finished successfully.
    Completed,
    /// Finished unsuccessfully (or lost after its last attempt).
    Failed,
    /// Withdrawn by its submitter or the admin.
    Cancelled,
}

impl BuildStatus {
    /// Every state, for exhaustive tests.
    pub const ALL: [BuildStatus; 6] = [
        BuildStatus::Pending,
        BuildStatus::Assigned,
        BuildStatus::Building,
        BuildStatus::Completed,
        BuildStatus::Failed,
        BuildStatus::Cancelled,
    ];

    /// The name SPEC uses.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Pending => "pending",
            BuildStatus::Assigned => "assigned",
            BuildStatus::Building => "building",
            BuildStatus::Completed => "completed",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    /// Held by a worker: `assigned` or `building`.
    pub fn is_active(self) -> bool {
        matches!(self, BuildStatus::Assigned | BuildStatus::Building)
    }

    /// Counted as finished: `completed` or `failed`.
    pub fn is_finished(self) -> bool {
        matches!(self, BuildStatus::Completed | BuildStatus::Failed)
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt ended, stored as its lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "ssr", derive(sqlx::Type))]
#[cfg_attr(feature = "ssr", sqlx(type_name = "TEXT", rename_all = "lowercase"))]
pub enum AttemptOutcome {
    /// The build completed in it.
    Completed,
    /// The build failed in it.
    Failed,
    /// The build was cancelled during it.
    Cancelled,
    /// The lease reaper gave the build to the next attempt.
    Requeued,
    /// Its worker gave the build back.
    Released,
}

impl AttemptOutcome {
    /// Every outcome, for exhaustive tests.
    pub const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Completed,
        AttemptOutcome::Failed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::Requeued,
        AttemptOutcome::Released,
    ];

    /// The name it is stored as.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::Requeued => "requeued",
            AttemptOutcome::Released => "released",
        }
    }
}

/// A build row with the columns the lifecycle and telemetry need.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
pub struct BuildRow {
    pub id: i64,
    pub status: BuildStatus,
    pub platform: String,
    pub label: Option<String>,
    pub worker_id: Option<i64>,
    pub attempt: i64,
    pub submitted_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub error: Option<String>,
    pub token_hash: Vec<u8>,
    /// Sum over the build's attempts of their CPU time, µs.
    pub cpu_micros: i64,
    pub peak_memory_mb: Option<f64>,
    pub snapshot_count: i64,
    pub newest_sampled_at: Option<i64>,
    pub has_tombstones: bool,
}

impl BuildRow {
    /// The build as stored once `change` is written: only the columns a
    /// transition sets differ, so the writer need not read it back.
    pub fn after(&self, change: &BuildChange) -> BuildRow {
        BuildRow {
            status: change.status,
            attempt: change.attempt,
            worker_id: change.worker_id,
            assigned_at: change.assigned_at,
            started_at: change.started_at,
            completed_at: change.completed_at,
            error: change.error.clone(),
            ..self.clone()
        }
    }

    /// The build as `GET /api/builds/{id}` shows it.
    pub fn view(&self) -> BuildView {
        BuildView {
            id: self.id,
            status: self.status.as_str().to_string(),
            platform: self.platform.clone(),
            label: self.label.clone(),
            worker_id: self.worker_id,
            attempt: self.attempt,
            submitted_at: self.submitted_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            error: self.error.clone(),
            cpu_seconds: micros_to_seconds(self.cpu_micros),
            peak_memory_mb: self.peak_memory_mb,
            snapshot_count: self.snapshot_count,
        }
    }

    /// 403 unless `worker_id` holds this build now.
    pub fn require_worker(&self, worker_id: i64) -> Result<(), AppError> {
        if self.worker_id == Some(worker_id) {
            Ok(())
        } else {
            Err(not_assigned())
        }
    }
}

fn not_assigned() -> AppError {
    AppError::Forbidden("this build is not assigned to this worker".into())
}

/// One attempt of a build: who held it, when, how it ended, and its CPU
/// accounting.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
pub struct AttemptRow {
    pub build_id: i64,
    pub attempt: i64,
    /// None only for attempts that ended before attempts were recorded.
    pub worker_id: Option<i64>,
    pub assigned_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// None while the attempt runs.
    pub outcome: Option<AttemptOutcome>,
    pub cpu_percent_micros: i64,
    pub cpu_counter_micros: Option<i64>,
}

impl AttemptRow {
    /// The attempt's CPU accounting.
    pub fn cpu(&self) -> AttemptCpu {
        AttemptCpu {
            percent_micros: self.cpu_percent_micros,
            counter_micros: self.cpu_counter_micros,
        }
    }

    /// Stores `cpu` as the attempt's accounting (in memory).
    pub fn set_cpu(&mut self, cpu: AttemptCpu) {
        self.cpu_percent_micros = cpu.percent_micros;
        self.cpu_counter_micros = cpu.counter_micros;
    }
}

/// What happens to a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker claims it (`/poll`).
    Claim { worker_id: i64 },
    /// Its worker starts it.
    Start,
    /// Its worker reports it finished.
    Complete {
        success: bool,
        error: Option<String>,
    },
    /// Its submitter or the admin withdraws it.
    Cancel,
    /// Its worker was silent for the lease timeout (the reaper).
    LeaseLost,
    /// Its worker gives it back (`/release`).
    Release,
}

/// A build's columns after a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildChange {
    pub status: BuildStatus,
    pub attempt: i64,
    pub worker_id: Option<i64>,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub error: Option<String>,
}

/// What a transition does: the build's new columns, the attempt it starts
/// or ends, and the ledger delta, all written in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The build after.
    pub build: BuildChange,
    /// A claim starts attempt `build.attempt` for `build.worker_id`.
    pub starts_attempt: bool,
    /// The attempt the build was at ends, this way.
    pub ends_attempt: Option<AttemptOutcome>,
    /// The change in the running totals and the finishing day.
    pub ledger: LedgerDelta,
}

/// Why a transition does not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The build is already where the event leads: 200, nothing changes.
    AlreadyThere,
    /// The state does not allow it: 409 with this sentence.
    NotAllowed(String),
}

/// The one lifecycle rule: what `event` does to `build` at time `now`.
pub fn transition(build: &BuildRow, event: &Event, now: i64) -> Result<Transition, Refusal> {
    use BuildStatus::*;
    let from = build.status;
    let mut after = BuildChange {
        status: from,
        attempt: build.attempt,
        worker_id: build.worker_id,
        assigned_at: build.assigned_at,
        started_at: build.started_at,
        completed_at: build.completed_at,
        error: build.error.clone(),
    };
    let mut totals = TotalsDelta::default();
    let mut starts_attempt = false;
    let mut ends_attempt = None;
    let refuse = |verb: &str| {
        Err(Refusal::NotAllowed(format!(
            "a {from} build cannot be {verb}"
        )))
    };
    match (event, from) {
        (Event::Claim { worker_id }, Pending) => {
            after.status = Assigned;
            after.worker_id = Some(*worker_id);
            after.assigned_at = Some(now);
            (totals.pending, totals.active) = (-1, 1);
            starts_attempt = true;
        }
        (Event::Claim { .. }, _) => return refuse("claimed"),
        (Event::Start, Building) => return Err(Refusal::AlreadyThere),
        (Event::Start, Assigned) => {
            after.status = Building;
            after.started_at = Some(now);
        }
        (Event::Start, _) => return refuse("started"),
        (Event::Complete { success, error }, _) => {
            let target = if *success { Completed } else { Failed };
            if from == target {
                return Err(Refusal::AlreadyThere);
            }
            if from != Building {
                return Err(Refusal::NotAllowed(format!(
                    "a {from} build cannot be completed as {target}"
                )));
            }
            return Ok(finish(build, after, target, error.clone(), now));
        }
        (Event::Cancel, Cancelled) => return Err(Refusal::AlreadyThere),
        (Event::Cancel, Pending) => {
            after.status = Cancelled;
            after.completed_at = Some(now);
            totals.pending = -1;
        }
        (Event::Cancel, Assigned | Building) => {
            after.status = Cancelled;
            after.completed_at = Some(now);
            totals.active = -1;
            ends_attempt = Some(AttemptOutcome::Cancelled);
        }
        (Event::Cancel, _) => return refuse("cancelled"),
        (Event::LeaseLost | Event::Release, Assigned | Building) => {
            let (how, last_error) = if *event == Event::Release {
                (AttemptOutcome::Released, RELEASED_BY_WORKER)
            } else {
                (AttemptOutcome::Requeued, LOST_CONTACT)
            };
            if build.attempt >= MAX_ATTEMPTS {
                let mut done = finish(build, after, Failed, Some(last_error.into()), now);
                if how == AttemptOutcome::Released {
                    done.ends_attempt = Some(how);
                }
                return Ok(done);
            }
            after = BuildChange {
                status: Pending,
                attempt: build.attempt + 1,
                worker_id: None,
                assigned_at: None,
                started_at: None,
                ..after
            };
            (totals.pending, totals.active) = (1, -1);
            ends_attempt = Some(how);
        }
        (Event::LeaseLost, _) => return refuse("requeued"),
        (Event::Release, _) => return refuse("released"),
    }
    Ok(Transition {
        build: after,
        starts_attempt,
        ends_attempt,
        ledger: LedgerDelta { totals, day: None },
    })
}

/// An active build ends as `target`: it counts as finished, with its build
/// time and CPU seconds, on today's UTC day.
fn finish(
    build: &BuildRow,
    mut after: BuildChange,
    target: BuildStatus,
    error: Option<String>,
    now: i64,
) -> Transition {
    after.status = target;
    after.completed_at = Some(now);
    after.error = error;
    let build_time_ms = build.started_at.map_or(0, |started| now - started);
    let failed = target == BuildStatus::Failed;
    Transition {
        build: after,
        starts_attempt: false,
        ends_attempt: Some(if failed {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Completed
        }),
        ledger: LedgerDelta {
            totals: TotalsDelta {
                active: -1,
                finished: 1,
                build_time_ms,
                ..TotalsDelta::default()
            },
            day: Some((
                day_of(now),
                DayDelta {
                    finished: 1,
                    failed: i64::from(failed),
                    build_time_ms,
                    cpu_micros: build.cpu_micros,
                },
            )),
        },
    }
}

/// Whether a build takes telemetry from the worker of its current attempt:
/// while assigned or building, and for `grace_ms` after it finished or was
/// cancelled.
pub fn accepts_telemetry(
    status: BuildStatus,
    completed_at: Option<i64>,
    now: i64,
    grace_ms: i64,
) -> bool {
    status.is_active() || completed_at.is_some_and(|done| now - done <= grace_ms)
}

/// Whether retention must keep tombstones of a build's purged samples: some
/// worker may still send them. Besides [`accepts_telemetry`], a queued
/// build's last attempt may have ended by requeue or release, and that
/// attempt's worker may still deliver its backlog.
pub fn may_receive_telemetry(
    status: BuildStatus,
    completed_at: Option<i64>,
    now: i64,
    grace_ms: i64,
) -> bool {
    status == BuildStatus::Pending || accepts_telemetry(status, completed_at, now, grace_ms)
}

/// The attempt of `build` whose telemetry `worker_id` sends: the last one
/// it was handed. 403 when it never held the build; 409 when that attempt
/// no longer takes telemetry. The current attempt follows
/// [`accepts_telemetry`]; an attempt that ended by requeue or release takes
/// it for `grace_ms` after it ended.
pub fn telemetry_attempt<'a>(
    build: &BuildRow,
    attempts: impl IntoIterator<Item = &'a AttemptRow>,
    worker_id: i64,
    now: i64,
    grace_ms: i64,
) -> Result<&'a AttemptRow, AppError> {
    let held = last_attempt_of(build, attempts, worker_id).ok_or_else(not_assigned)?;
    let is_current = held.attempt == build.attempt && build.worker_id == Some(worker_id);
    if is_current {
        if accepts_telemetry(build.status, build.completed_at, now, grace_ms) {
            return Ok(held);
        }
        return Err(AppError::Conflict(format!(
            "this {} build no longer accepts telemetry",
            build.status
        )));
    }
    if held.ended_at.is_some_and(|ended| now - ended <= grace_ms) {
        return Ok(held);
    }
    Err(AppError::Conflict(format!(
        "attempt {} of this build ended more than the grace period ago",
        held.attempt
    )))
}

/// The last attempt of `build` that `worker_id` was handed.
pub fn last_attempt_of<'a>(
    build: &BuildRow,
    attempts: impl IntoIterator<Item = &'a AttemptRow>,
    worker_id: i64,
) -> Option<&'a AttemptRow> {
    attempts
        .into_iter()
        .filter(|a| a.build_id == build.id && a.worker_id == Some(worker_id))
        .max_by_key(|a| a.attempt)
}

/// Whether `worker_id`'s call to `/release` repeats a release it made:
/// its last attempt of the build ended by its release (the third one
/// failed the build "released by its worker"). 403 when it never held the
/// build.
pub fn is_repeated_release<'a>(
    build: &BuildRow,
    attempts: impl IntoIterator<Item = &'a AttemptRow>,
    worker_id: i64,
) -> Result<bool, AppError> {
    let held = last_attempt_of(build, attempts, worker_id).ok_or_else(not_assigned)?;
    Ok(held.outcome == Some(AttemptOutcome::Released))
}

#[cfg(test)]
mod tests {
    use super::BuildStatus::*;
    use super::*;

    const NOW: i64 = 1_000_000;

    fn build(status: BuildStatus, attempt: i64) -> BuildRow {
        let active_or_done = status != Pending;
        BuildRow {
            id: 7,
            status,
            platform: "linux".into(),
            label: None,
            worker_id: active_or_done.then_some(3),
            attempt,
            submitted_at: 100,
            assigned_at: active_or_done.then_some(200),
            started_at: matches!(status, Building | Completed | Failed).then_some(300),
            completed_at: matches!(status, Completed | Failed | Cancelled).then_some(900),
            error: None,
            token_hash: vec![0; 32],
            cpu_micros: 5_000_000,
            peak_memory_mb: None,
            snapshot_count: 0,
            newest_sampled_at: None,
            has_tombstones: false,
        }
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Claim { worker_id: 4 },
            Event::Start,
            Event::Complete {
                success: true,
                error: None,
            },
            Event::Complete {
                success: false,
                error: Some("exit 1".into()),
            },
            Event::Cancel,
            Event::LeaseLost,
            Event::Release,
        ]
    }

    /// The whole table of (state, event) pairs at attempt 1: where each
    /// pair leads, or that it is a repeat (200, no change) or refused (409).
    #[test]
    fn every_state_and_event() {
        use Outcome::*;
        #[derive(Debug, PartialEq)]
        enum Outcome {
            To(BuildStatus),
            Same,
            No,
        }
        let table = [
            (Pending, [To(Assigned), No, No, No, To(Cancelled), No, No]),
            (
                Assigned,
                [
                    No,
                    To(Building),
                    No,
                    No,
                    To(Cancelled),
                    To(Pending),
                    To(Pending),
                ],
            ),
            (
                Building,
                [
                    No,
                    Same,
                    To(Completed),
                    To(Failed),
                    To(Cancelled),
                    To(Pending),
                    To(Pending),
                ],
            ),
            (Completed, [No, No, Same, No, No, No, No]),
            (Failed, [No, No, No, Same, No, No, No]),
            (Cancelled, [No, No, No, No, Same, No, No]),
        ];
        for (from, expected) in table {
            for (event, want) in events().iter().zip(expected) {
                let got = match transition(&build(from, 1), event, NOW) {
                    Ok(t) => To(t.build.status),
                    Err(Refusal::AlreadyThere) => Same,
                    Err(Refusal::NotAllowed(_)) => No,
                };
                assert_eq!(got, want, "{from} on {event:?}");
            }
        }
    }

    /// Every accepted transition keeps the ledger's counts in step with the
    /// states: the pending/active/finished deltas are the states' own change.
    #[test]
    fn ledger_counts_follow_the_states() {
        let count = |s: BuildStatus| {
            (
                i64::from(s == Pending),
                i64::from(s.is_active()),
                i64::from(s.is_finished()),
            )
        };
        for from in BuildStatus::ALL {
            for attempt in 1..=MAX_ATTEMPTS {
                for event in events() {
                    if let Ok(t) = transition(&build(from, attempt), &event, NOW) {
                        let (p0, a0, f0) = count(from);
                        let (p1, a1, f1) = count(t.build.status);
                        let totals = t.ledger.totals;
                        assert_eq!(
                            (totals.pending, totals.active, totals.finished),
                            (p1 - p0, a1 - a0, f1 - f0),
                            "{from} attempt {attempt} on {event:?}"
                        );
                        assert_eq!(
                            t.ledger.day.is_some(),
                            t.build.status.is_finished(),
                            "a day changes exactly when a build finishes"
                        );
                    }
                }
            }
        }
    }

    /// Completing counts the build's time and CPU seconds on today's day.
    #[test]
    fn finishing_counts_time_and_cpu() {
        let event = Event::Complete {
            success: false,
            error: Some("exit 1".into()),
        };
        let t = transition(&build(Building, 1), &event, NOW).expect("completes");
        assert_eq!(t.build.error.as_deref(), Some("exit 1"));
        assert_eq!(t.build.completed_at, Some(NOW));
        assert_eq!(t.ends_attempt, Some(AttemptOutcome::Failed));
        assert_eq!(t.ledger.totals.build_time_ms, NOW - 300);
        let (day, delta) = t.ledger.day.expect("a day");
        assert_eq!(day, day_of(NOW));
        assert_eq!(
            delta,
            DayDelta {
                finished: 1,
                failed: 1,
                build_time_ms: NOW - 300,
                cpu_micros: 5_000_000
            }
        );
    }

    /// A lost or released attempt requeues the build as its next attempt,
    /// keeping nothing of its worker; the last attempt fails it instead.
    #[test]
    fn lost_and_released_attempts() {
        for (event, how, error) in [
            (Event::LeaseLost, AttemptOutcome::Requeued, LOST_CONTACT),
            (Event::Release, AttemptOutcome::Released, RELEASED_BY_WORKER),
        ] {
            let t = transition(&build(Building, 2), &event, NOW).expect("requeues");
            assert_eq!(
                (t.build.status, t.build.attempt, t.build.worker_id),
                (Pending, 3, None)
            );
            assert_eq!((t.build.assigned_at, t.build.started_at), (None, None));
            assert_eq!(t.ends_attempt, Some(how));
            let t = transition(&build(Building, MAX_ATTEMPTS), &event, NOW).expect("fails");
            assert_eq!((t.build.status, t.build.attempt), (Failed, MAX_ATTEMPTS));
            assert_eq!(t.build.error.as_deref(), Some(error));
            let expected_end = if how == AttemptOutcome::Released {
                how
            } else {
                AttemptOutcome::Failed
            };
            assert_eq!(t.ends_attempt, Some(expected_end));
        }
    }

    fn attempt(
        n: i64,
        worker: i64,
        ended_at: Option<i64>,
        outcome: Option<AttemptOutcome>,
    ) -> AttemptRow {
        AttemptRow {
            build_id: 7,
            attempt: n,
            worker_id: Some(worker),
            assigned_at: Some(200),
            ended_at,
            outcome,
            cpu_percent_micros: 0,
            cpu_counter_micros: None,
        }
    }

    /// The current attempt takes telemetry while active and for the grace
    /// period after the build finished; an ended attempt for the grace
    /// period after it ended; a stranger never.
    #[test]
    fn which_attempt_takes_telemetry() {
        let grace = 600;
        let mut running = build(Building, 2);
        running.worker_id = Some(4);
        let attempts = [
            attempt(1, 3, Some(NOW - 100), Some(AttemptOutcome::Requeued)),
            attempt(2, 4, None, None),
        ];
        let held = |build: &BuildRow, worker, now| {
            telemetry_attempt(build, &attempts, worker, now, grace).map(|a| a.attempt)
        };
        assert_eq!(held(&running, 4, NOW).ok(), Some(2));
        assert_eq!(
            held(&running, 3, NOW).ok(),
            Some(1),
            "the backlog of an ended attempt"
        );
        assert!(
            matches!(held(&running, 3, NOW + 600), Err(AppError::Conflict(_))),
            "past its grace"
        );
        assert!(matches!(
            held(&running, 9, NOW),
            Err(AppError::Forbidden(_))
        ));
        let mut done = running.clone();
        done.status = Completed;
        done.completed_at = Some(NOW);
        assert_eq!(held(&done, 4, NOW + grace).ok(), Some(2));
        assert!(matches!(
            held(&done, 4, NOW + grace + 1),
            Err(AppError::Conflict(_))
        ));
        assert!(may_receive_telemetry(Pending, None, NOW, grace));
        assert!(!accepts_telemetry(Pending, None, NOW, grace));
        assert!(!may_receive_telemetry(
            Cancelled,
            Some(NOW - grace - 1),
            NOW,
            grace
        ));
        assert!(is_repeated_release(&done, &attempts, 4).is_ok_and(|r| !r));
    }
}
