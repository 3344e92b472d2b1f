//! What a batch of telemetry requests does, as pure code shared by every
//! storage backend: which attempt each request speaks for, which samples
//! are candidates for storing, and, once the backend says which of them
//! were new, each attempt's and build's new figures and the ledger delta.
//!
//! A backend loads the batch's builds and attempts, calls [`Plan::new`],
//! tells the plan which candidates are tombstoned ([`Plan::drop_tombstoned`]),
//! inserts the rest keyed by (build, attempt, seq) and gives the keys it
//! stored to [`Plan::settle`], then writes the [`Settled`] changes, all in
//! one transaction. The answers equal those of storing the requests one by
//! one in arrival order.

use std::collections::{HashMap, HashSet};

use super::{check_ranges, Bounds, TelemetryBody};
use crate::builds::{telemetry_attempt, AttemptRow, BuildRow};
use crate::error::{AppError, Result};
use crate::ledger::{day_of, DayDelta, LedgerDelta, TotalsDelta};
use crate::stats::accounting::AttemptCpu;
use crate::storage::TelemetryRequest;
use crate::wire::{Rejection, Snapshot, TelemetryAnswer};

/// A sample's idempotency key: (build, attempt, seq).
pub type SampleKey = (i64, i64, i64);

/// A sample that passed every check, waiting for the store's verdict.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Index of its request in the batch.
    pub request: usize,
    pub build_id: i64,
    pub attempt: i64,
    pub sample: Snapshot,
    /// When its request arrived, ms.
    pub received_at: i64,
    /// Its build holds tombstones: the backend must look this key up.
    pub check_tombstone: bool,
}

impl Candidate {
    /// Its idempotency key.
    pub fn key(&self) -> SampleKey {
        (self.build_id, self.attempt, self.sample.seq)
    }
}

/// A legacy event to store.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub build_id: i64,
    pub kind: String,
    pub at: i64,
    pub data: String,
    pub received_at: i64,
}

/// One build's changed figures.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildUpdate {
    pub id: i64,
    /// Change of its CPU time, µs.
    pub cpu_delta: i64,
    /// Its peak memory now.
    pub peak_memory_mb: Option<f64>,
    /// Samples this batch stored.
    pub accepted: i64,
    /// `sampledAt` and `cpuPercent` of its newest sample, when this batch
    /// stored one newer than any before.
    pub newest: Option<(i64, f64)>,
    /// When the first sample this batch stored arrived.
    pub first_received: Option<i64>,
}

/// One attempt's accounting after the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptUpdate {
    pub build_id: i64,
    pub attempt: i64,
    pub cpu: AttemptCpu,
}

/// What the backend writes once the samples are stored.
#[derive(Debug, Default)]
pub struct Settled {
    /// Each request's answer, in order.
    pub answers: Vec<Result<TelemetryAnswer>>,
    pub attempts: Vec<AttemptUpdate>,
    pub builds: Vec<BuildUpdate>,
    /// The totals' CPU change, and each finished build's day change.
    pub ledger: Vec<LedgerDelta>,
}

struct AttemptProgress {
    row: AttemptRow,
    cpu_before: i64,
    /// Seqs offered by this batch (the first offer wins).
    offered: HashSet<i64>,
    accepted: i64,
}

struct BuildProgress {
    row: BuildRow,
    attempts: Vec<AttemptProgress>,
    accepted: i64,
    newest: Option<(i64, f64)>,
    first_received: Option<i64>,
}

/// A batch between its checks and its store.
pub struct Plan {
    builds: HashMap<i64, BuildProgress>,
    answers: Vec<Result<TelemetryAnswer>>,
    /// Samples to store, in arrival order.
    pub candidates: Vec<Candidate>,
    /// Legacy events to store.
    pub events: Vec<EventRow>,
}

/// The distinct builds a batch names, sorted: what the backend loads.
pub fn build_ids(requests: &[TelemetryRequest]) -> Vec<i64> {
    let mut ids: Vec<i64> = requests.iter().map(|r| r.build_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Plan {
    /// Checks each request against its build as loaded (404, 403, 409, each
    /// sample's ranges and repeats within the batch), in arrival order.
    pub fn new(
        requests: Vec<TelemetryRequest>,
        builds: Vec<BuildRow>,
        attempts: Vec<AttemptRow>,
        grace_ms: i64,
    ) -> Plan {
        let mut by_build: HashMap<i64, Vec<AttemptProgress>> = HashMap::new();
        for row in attempts {
            by_build
                .entry(row.build_id)
                .or_default()
                .push(AttemptProgress {
                    cpu_before: row.cpu().micros(),
                    offered: HashSet::new(),
                    accepted: 0,
                    row,
                });
        }
        let builds = builds
            .into_iter()
            .map(|row| {
                let progress = BuildProgress {
                    attempts: by_build.remove(&row.id).unwrap_or_default(),
                    accepted: 0,
                    newest: None,
                    first_received: None,
                    row,
                };
                (progress.row.id, progress)
            })
            .collect();
        let mut plan = Plan {
            builds,
            answers: Vec::with_capacity(requests.len()),
            candidates: Vec::new(),
            events: Vec::new(),
        };
        for (index, request) in requests.into_iter().enumerate() {
            let answer = plan.check(index, request, grace_ms);
            plan.answers.push(answer);
        }
        plan
    }

    fn check(
        &mut self,
        request_index: usize,
        request: TelemetryRequest,
        grace_ms: i64,
    ) -> Result<TelemetryAnswer> {
        let build = self
            .builds
            .get_mut(&request.build_id)
            .ok_or_else(AppError::unknown_build)?;
        let held = telemetry_attempt(
            &build.row,
            build.attempts.iter().map(|a| &a.row),
            request.worker.id,
            request.now,
            grace_ms,
        )?;
        let (number, assigned_at) = (held.attempt, held.assigned_at);
        let samples = match request.body {
            TelemetryBody::Event { kind, at, data } => {
                self.events.push(EventRow {
                    build_id: request.build_id,
                    kind,
                    at,
                    data,
                    received_at: request.now,
                });
                return Ok(TelemetryAnswer::default());
            }
            TelemetryBody::Samples(samples) => samples,
        };
        let bounds = Bounds {
            cpu_cores: request.worker.cpu_cores,
            memory_mb: request.worker.memory_mb,
            assigned_at: assigned_at.unwrap_or(build.row.submitted_at),
            now: request.now,
        };
        let check_tombstone = build.row.has_tombstones;
        let attempt = build
            .attempts
            .iter_mut()
            .find(|a| a.row.attempt == number)
            .ok_or(AppError::Unavailable)?;
        let mut answer = TelemetryAnswer {
            build_status: Some(build.row.status.as_str().to_string()),
            ..TelemetryAnswer::default()
        };
        for (index, sample) in samples.into_iter().enumerate() {
            match sample.and_then(|s| check_ranges(&s, &bounds).map(|()| s)) {
                Ok(sample) if !attempt.offered.insert(sample.seq) => answer.duplicates += 1,
                Ok(sample) => self.candidates.push(Candidate {
                    request: request_index,
                    build_id: request.build_id,
                    attempt: number,
                    sample,
                    received_at: request.now,
                    check_tombstone,
                }),
                Err(error) => answer.rejected.push(Rejection { index, error }),
            }
        }
        Ok(answer)
    }

    /// Candidates whose key retention tombstoned are duplicates, not samples.
    pub fn drop_tombstoned(&mut self, tombstoned: &HashSet<SampleKey>) {
        if tombstoned.is_empty() {
            return;
        }
        let answers = &mut self.answers;
        self.candidates.retain(|candidate| {
            let keep = !tombstoned.contains(&candidate.key());
            if !keep {
                if let Some(Ok(answer)) = answers.get_mut(candidate.request) {
                    answer.duplicates += 1;
                }
            }
            keep
        });
    }

    /// Folds in the store's verdict: `stored` holds the keys that were new.
    pub fn settle(mut self, stored: &HashSet<SampleKey>) -> Settled {
        for candidate in std::mem::take(&mut self.candidates) {
            let Some(Ok(answer)) = self.answers.get_mut(candidate.request) else {
                continue;
            };
            let Some(build) = self.builds.get_mut(&candidate.build_id) else {
                continue;
            };
            if stored.contains(&candidate.key()) {
                answer.accepted += 1;
                build.accept(candidate.attempt, &candidate.sample, candidate.received_at);
            } else {
                answer.duplicates += 1;
            }
        }
        let mut settled = Settled {
            answers: self.answers,
            ..Settled::default()
        };
        let mut ids: Vec<i64> = self.builds.keys().copied().collect();
        ids.sort_unstable();
        let mut cpu_total = 0;
        for id in ids {
            let Some(build) = self.builds.get(&id).filter(|b| b.accepted > 0) else {
                continue;
            };
            let cpu_delta = build.cpu_delta();
            cpu_total += cpu_delta;
            settled
                .attempts
                .extend(
                    build
                        .attempts
                        .iter()
                        .filter(|a| a.accepted > 0)
                        .map(|a| AttemptUpdate {
                            build_id: id,
                            attempt: a.row.attempt,
                            cpu: a.row.cpu(),
                        }),
                );
            settled.builds.push(BuildUpdate {
                id,
                cpu_delta,
                peak_memory_mb: build.row.peak_memory_mb,
                accepted: build.accepted,
                newest: build.newest,
                first_received: build.first_received,
            });
            // A finished build's CPU seconds count on the day it finished.
            if let (true, Some(done)) = (build.row.status.is_finished(), build.row.completed_at) {
                let day = DayDelta {
                    cpu_micros: cpu_delta,
                    ..DayDelta::default()
                };
                settled.ledger.push(LedgerDelta {
                    day: Some((day_of(done), day)),
                    ..LedgerDelta::default()
                });
            }
        }
        if cpu_total != 0 {
            settled.ledger.push(LedgerDelta {
                totals: TotalsDelta {
                    cpu_micros: cpu_total,
                    ..TotalsDelta::default()
                },
                day: None,
            });
        }
        settled
    }
}

impl BuildProgress {
    /// How much this batch changed the build's CPU time, µs: the sum of
    /// its attempts' changes.
    fn cpu_delta(&self) -> i64 {
        self.attempts
            .iter()
            .map(|a| a.row.cpu().micros() - a.cpu_before)
            .sum()
    }

    /// Folds a newly stored sample of `attempt` into the attempt's and the
    /// build's figures, as SPEC defines them.
    fn accept(&mut self, attempt: i64, sample: &Snapshot, received_at: i64) {
        if let Some(progress) = self.attempts.iter_mut().find(|a| a.row.attempt == attempt) {
            let mut cpu = progress.row.cpu();
            cpu.add_sample(sample.cpu_percent, sample.interval_s, sample.cpu_time_s);
            progress.row.set_cpu(cpu);
            progress.accepted += 1;
        }
        let row = &mut self.row;
        self.accepted += 1;
        row.peak_memory_mb = Some(
            row.peak_memory_mb
                .map_or(sample.memory_mb, |p| p.max(sample.memory_mb)),
        );
        // "Newest" is the largest sampledAt; of equal ones, the first stored.
        let newest_at = self.newest.map(|(at, _)| at).or(row.newest_sampled_at);
        if newest_at.is_none_or(|at| sample.sampled_at > at) {
            self.newest = Some((sample.sampled_at, sample.cpu_percent));
        }
        self.first_received.get_or_insert(received_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::{AttemptOutcome, BuildStatus};
    use crate::storage::WorkerIdentity;

    const NOW: i64 = 10_000_000;

    fn build(id: i64, attempt: i64, worker: i64) -> BuildRow {
        BuildRow {
            id,
            status: BuildStatus::Building,
            platform: "linux".into(),
            label: None,
            worker_id: Some(worker),
            attempt,
            submitted_at: NOW - 100_000,
            assigned_at: Some(NOW - 50_000),
            started_at: Some(NOW - 50_000),
            completed_at: None,
            error: None,
            token_hash: vec![],
            cpu_micros: 1_000_000,
            peak_memory_mb: Some(10.0),
            snapshot_count: 2,
            newest_sampled_at: Some(NOW - 40_000),
            has_tombstones: false,
        }
    }

    fn attempt(build_id: i64, n: i64, worker: i64, ended: bool) -> AttemptRow {
        AttemptRow {
            build_id,
            attempt: n,
            worker_id: Some(worker),
            assigned_at: Some(NOW - 90_000),
            ended_at: ended.then_some(NOW - 30_000),
            outcome: ended.then_some(AttemptOutcome::Requeued),
            cpu_percent_micros: 0,
            cpu_counter_micros: if n == 1 { Some(1_000_000) } else { None },
        }
    }

    fn request(build_id: i64, worker: i64, samples: Vec<Snapshot>) -> TelemetryRequest {
        TelemetryRequest {
            worker: WorkerIdentity {
                id: worker,
                cpu_cores: 4,
                memory_mb: 8192,
            },
            build_id,
            body: TelemetryBody::Samples(samples.into_iter().map(Ok).collect()),
            now: NOW,
        }
    }

    fn counter(seq: i64, seconds: f64) -> Snapshot {
        Snapshot {
            seq,
            sampled_at: NOW - 20_000 + seq,
            cpu_percent: 50.0,
            memory_mb: 20.0 * seq as f64,
            cpu_time_s: Some(seconds),
            interval_s: 5,
        }
    }

    /// Two workers on one build in one batch: the ended attempt's backlog
    /// and the current attempt's run each count toward their own attempt,
    /// a repeat within the batch is a duplicate, a stranger is 403, and the
    /// build's CPU change is the sum of its attempts' changes.
    #[test]
    fn a_batch_accounts_each_attempt_apart() {
        let plan = Plan::new(
            vec![
                request(1, 7, vec![counter(3, 1.5), counter(3, 1.5)]),
                request(1, 8, vec![counter(1, 0.4), counter(2, 0.8)]),
                request(1, 9, vec![counter(1, 0.1)]),
                request(2, 8, vec![counter(1, 0.1)]),
            ],
            vec![build(1, 2, 8)],
            vec![attempt(1, 1, 7, true), attempt(1, 2, 8, false)],
            600_000,
        );
        assert_eq!(plan.candidates.len(), 3);
        let stored: HashSet<SampleKey> = plan.candidates.iter().map(Candidate::key).collect();
        let settled = plan.settle(&stored);
        let answers: Vec<_> = settled
            .answers
            .iter()
            .map(|a| {
                a.as_ref()
                    .map(|a| (a.accepted, a.duplicates))
                    .map_err(|e| e.status_and_code().0.as_u16())
            })
            .collect();
        assert_eq!(answers, vec![Ok((1, 1)), Ok((2, 0)), Err(403), Err(404)]);
        let cpu: Vec<_> = settled
            .attempts
            .iter()
            .map(|a| (a.attempt, a.cpu.micros()))
            .collect();
        assert_eq!(cpu, vec![(1, 1_500_000), (2, 800_000)]);
        assert_eq!(settled.builds[0].cpu_delta, 500_000 + 800_000);
        assert_eq!(settled.builds[0].peak_memory_mb, Some(60.0));
        assert_eq!(
            settled.ledger.len(),
            1,
            "the totals; the build is not finished"
        );
        assert_eq!(settled.ledger[0].totals.cpu_micros, 1_300_000);
    }

    /// A tombstoned or already stored key is a duplicate and changes nothing.
    #[test]
    fn tombstoned_and_stored_keys_are_duplicates() {
        let mut tombstoned_build = build(1, 1, 8);
        tombstoned_build.has_tombstones = true;
        let mut plan = Plan::new(
            vec![request(
                1,
                8,
                vec![counter(1, 0.4), counter(2, 0.8), counter(3, 0.9)],
            )],
            vec![tombstoned_build],
            vec![attempt(1, 1, 8, false)],
            600_000,
        );
        assert!(plan.candidates.iter().all(|c| c.check_tombstone));
        plan.drop_tombstoned(&HashSet::from([(1, 1, 1)]));
        let settled = plan.settle(&HashSet::from([(1, 1, 3)]));
        let answer = settled.answers[0]
            .as_ref()
            .map(|a| (a.accepted, a.duplicates));
        assert_eq!(answer.ok(), Some((1, 2)));
        assert_eq!(settled.builds[0].accepted, 1);
    }
}
