//! `freeagent verify`: every stored figure recomputed from what it is
//! derived from, as pure code. Each backend reads its rows in one snapshot
//! (see `storage`), a chunk of builds at a time, and folds them in here;
//! the result names each difference and what `--repair` writes.
//!
//! What is recomputed from what:
//! - each attempt's CPU accounting and each build's peak memory, sample
//!   count and newest sample, from its raw samples, while they all exist;
//! - each build's CPU seconds, the sum of its attempts' (from the raw
//!   samples, or from the stored attempts once retention removed some);
//! - the totals and each UTC day's row, from the builds.
//!
//! Retention removes raw samples and keeps every figure. A build has lost
//! samples exactly when fewer raw rows remain than its stored count: each
//! accepted sample adds one to both, and only retention removes rows. Such
//! a build's figures are not differences; only its CPU seconds are checked,
//! against its stored attempts.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::builds::BuildStatus;
use crate::format::iso_day;
use crate::ledger::{day_of, DayDelta, TotalsDelta};
use crate::stats::accounting::{micros_to_seconds, AttemptCpu};

/// A build's stored figures and what the ledger counts it by.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct StoredBuild {
    pub id: i64,
    pub status: BuildStatus,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// CPU time, µs.
    pub cpu_micros: i64,
    pub peak_memory_mb: Option<f64>,
    pub snapshot_count: i64,
    pub newest_sampled_at: Option<i64>,
    pub newest_cpu_percent: Option<f64>,
}

/// An attempt's stored CPU accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAttempt {
    pub build_id: i64,
    pub attempt: i64,
    pub cpu_percent_micros: i64,
    pub cpu_counter_micros: Option<i64>,
}

impl StoredAttempt {
    fn cpu(&self) -> AttemptCpu {
        AttemptCpu {
            percent_micros: self.cpu_percent_micros,
            counter_micros: self.cpu_counter_micros,
        }
    }
}

/// A raw sample, as far as any figure depends on it.
#[derive(Clone, Copy, Debug, PartialEq, sqlx::FromRow)]
pub struct RawSample {
    pub build_id: i64,
    pub attempt: i64,
    pub sampled_at: i64,
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub cpu_time_s: Option<f64>,
    pub interval_s: i64,
}

/// The ledger as stored: the totals and every day's row (on Postgres, the
/// sums of their shards). Totals and days are absolute values here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredLedger {
    pub totals: TotalsDelta,
    pub days: BTreeMap<i64, DayDelta>,
}

/// One figure whose stored value is not its recomputation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Which figure: `totals.cpu_seconds`, `daily 2026-12-01 builds_finished`,
    /// `build 7 cpu_seconds`, `build 7 attempt 2 cpu_counter_seconds`.
    pub figure: String,
    pub stored: String,
    pub recomputed: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} stored {} recomputed {}",
            self.figure, self.stored, self.recomputed
        )
    }
}

/// A build's figures as `--repair` writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildFix {
    pub id: i64,
    pub cpu_micros: i64,
    pub peak_memory_mb: Option<f64>,
    pub snapshot_count: i64,
    pub newest_sampled_at: Option<i64>,
    pub newest_cpu_percent: Option<f64>,
}

/// An attempt's accounting as `--repair` writes it (inserting the row
/// when samples name an attempt that has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptFix {
    pub build_id: i64,
    pub attempt: i64,
    pub cpu: AttemptCpu,
}

/// A ledger row's stored and recomputed values; a backend writes the
/// recomputation (or, with sharded rows, adds the difference to one shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerFix<T> {
    pub stored: T,
    pub recomputed: T,
}

/// What `--repair` writes, in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fixes {
    pub builds: Vec<BuildFix>,
    pub attempts: Vec<AttemptFix>,
    pub totals: Option<LedgerFix<TotalsDelta>>,
    /// By day; a recomputation of zero removes the day's rows.
    pub days: Vec<(i64, LedgerFix<DayDelta>)>,
}

impl Fixes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.builds.is_empty()
            && self.attempts.is_empty()
            && self.totals.is_none()
            && self.days.is_empty()
    }
}

/// What verify found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Every difference, builds in ascending id, then the totals, then the days.
    pub differences: Vec<Difference>,
    /// Builds read.
    pub builds: u64,
    /// Of those, builds some of whose raw samples retention removed.
    pub builds_purged: u64,
    /// What `--repair` writes to remove every difference.
    pub fixes: Fixes,
    /// Whether the fixes were written.
    pub repaired: bool,
}

/// One build's figures recomputed from its raw samples.
#[derive(Clone, Debug, Default)]
struct Recount {
    attempts: BTreeMap<i64, AttemptCpu>,
    count: i64,
    peak_memory_mb: Option<f64>,
    newest_sampled_at: Option<i64>,
    /// `cpuPercent` of every sample taken at `newest_sampled_at`, in key
    /// order: the stored one is whichever of them was stored first.
    newest_percents: Vec<f64>,
}

/// The raw samples of one chunk of builds, folded as they stream in.
#[derive(Default)]
pub struct ChunkSamples {
    builds: HashMap<i64, Recount>,
}

impl ChunkSamples {
    /// Folds in one distinct sample, by SPEC's rules (the same accounting
    /// the controller keeps as samples arrive).
    pub fn add(&mut self, sample: &RawSample) {
        let recount = self.builds.entry(sample.build_id).or_default();
        recount
            .attempts
            .entry(sample.attempt)
            .or_default()
            .add_sample(sample.cpu_percent, sample.interval_s, sample.cpu_time_s);
        recount.count += 1;
        recount.peak_memory_mb = Some(
            recount
                .peak_memory_mb
                .map_or(sample.memory_mb, |p| p.max(sample.memory_mb)),
        );
        match recount.newest_sampled_at {
            Some(at) if at > sample.sampled_at => {}
            Some(at) if at == sample.sampled_at => {
                recount.newest_percents.push(sample.cpu_percent);
            }
            _ => {
                recount.newest_sampled_at = Some(sample.sampled_at);
                recount.newest_percents = vec![sample.cpu_percent];
            }
        }
    }
}

/// The recomputation, fed chunk by chunk.
#[derive(Default)]
pub struct Audit {
    totals: TotalsDelta,
    days: BTreeMap<i64, DayDelta>,
    report: Report,
}

impl Audit {
    /// Checks a chunk of builds against their attempts and raw samples
    /// (every attempt and sample of those builds) and counts them into the
    /// recomputed ledger.
    pub fn add_builds(
        &mut self,
        builds: &[StoredBuild],
        attempts: &[StoredAttempt],
        mut samples: ChunkSamples,
    ) {
        let mut stored_attempts: HashMap<i64, BTreeMap<i64, AttemptCpu>> = HashMap::new();
        for a in attempts {
            stored_attempts
                .entry(a.build_id)
                .or_default()
                .insert(a.attempt, a.cpu());
        }
        for build in builds {
            let recount = samples.builds.remove(&build.id).unwrap_or_default();
            let stored = stored_attempts.remove(&build.id).unwrap_or_default();
            let cpu_micros = self.check_build(build, &stored, recount);
            self.count_in_ledger(build, cpu_micros);
        }
    }

    /// Compares one build's figures; returns its recomputed CPU time, µs.
    fn check_build(
        &mut self,
        build: &StoredBuild,
        stored_attempts: &BTreeMap<i64, AttemptCpu>,
        recount: Recount,
    ) -> i64 {
        self.report.builds += 1;
        let id = build.id;
        let mut fix = BuildFix {
            id,
            cpu_micros: build.cpu_micros,
            peak_memory_mb: build.peak_memory_mb,
            snapshot_count: build.snapshot_count,
            newest_sampled_at: build.newest_sampled_at,
            newest_cpu_percent: build.newest_cpu_percent,
        };
        let differences_before = self.report.differences.len();
        let complete = recount.count >= build.snapshot_count;
        let cpu_micros = if complete {
            let numbers: BTreeSet<i64> = stored_attempts
                .keys()
                .chain(recount.attempts.keys())
                .copied()
                .collect();
            for attempt in numbers {
                let recomputed = recount.attempts.get(&attempt).copied().unwrap_or_default();
                let stored = stored_attempts.get(&attempt).copied();
                self.check_attempt(id, attempt, stored, recomputed);
            }
            recount.attempts.values().map(AttemptCpu::micros).sum()
        } else {
            self.report.builds_purged += 1;
            stored_attempts.values().map(AttemptCpu::micros).sum()
        };
        let figure = |name: &str| format!("build {id} {name}");
        self.compare(
            figure("cpu_seconds"),
            seconds(build.cpu_micros),
            seconds(cpu_micros),
        );
        fix.cpu_micros = cpu_micros;
        if complete {
            let newest_cpu_percent =
                match (recount.newest_percents.first(), build.newest_cpu_percent) {
                    (None, _) => None,
                    (Some(_), Some(stored)) if recount.newest_percents.contains(&stored) => {
                        Some(stored)
                    }
                    (Some(first), _) => Some(*first),
                };
            self.compare(
                figure("peak_memory_mb"),
                optional(build.peak_memory_mb),
                optional(recount.peak_memory_mb),
            );
            self.compare(
                figure("snapshot_count"),
                build.snapshot_count.to_string(),
                recount.count.to_string(),
            );
            self.compare(
                figure("newest_sampled_at"),
                optional(build.newest_sampled_at),
                optional(recount.newest_sampled_at),
            );
            self.compare(
                figure("newest_cpu_percent"),
                optional(build.newest_cpu_percent),
                optional(newest_cpu_percent),
            );
            fix.peak_memory_mb = recount.peak_memory_mb;
            fix.snapshot_count = recount.count;
            fix.newest_sampled_at = recount.newest_sampled_at;
            fix.newest_cpu_percent = newest_cpu_percent;
        }
        if self.report.differences.len() > differences_before && fix_changes_build(build, &fix) {
            self.report.fixes.builds.push(fix);
        }
        cpu_micros
    }

    fn check_attempt(
        &mut self,
        build_id: i64,
        attempt: i64,
        stored: Option<AttemptCpu>,
        recomputed: AttemptCpu,
    ) {
        if stored == Some(recomputed) {
            return;
        }
        let figure = |name: &str| format!("build {build_id} attempt {attempt} {name}");
        let missing = || "missing".to_string();
        self.compare(
            figure("cpu_percent_seconds"),
            stored.map_or_else(missing, |s| seconds(s.percent_micros)),
            seconds(recomputed.percent_micros),
        );
        self.compare(
            figure("cpu_counter_seconds"),
            stored.map_or_else(missing, |s| {
                optional(s.counter_micros.map(micros_to_seconds))
            }),
            optional(recomputed.counter_micros.map(micros_to_seconds)),
        );
        self.report.fixes.attempts.push(AttemptFix {
            build_id,
            attempt,
            cpu: recomputed,
        });
    }

    /// What `build` adds to the totals and to the day it finished on, by
    /// the lifecycle's rules (`builds::transition`).
    fn count_in_ledger(&mut self, build: &StoredBuild, cpu_micros: i64) {
        let t = &mut self.totals;
        t.cpu_micros += cpu_micros;
        match build.status {
            BuildStatus::Pending => t.pending += 1,
            BuildStatus::Assigned | BuildStatus::Building => t.active += 1,
            BuildStatus::Cancelled => {}
            BuildStatus::Completed | BuildStatus::Failed => {
                let completed_at = build.completed_at.unwrap_or_default();
                let build_time_ms = build.started_at.map_or(0, |started| completed_at - started);
                t.finished += 1;
                t.build_time_ms += build_time_ms;
                let day = self.days.entry(day_of(completed_at)).or_default();
                day.finished += 1;
                day.failed += i64::from(build.status == BuildStatus::Failed);
                day.build_time_ms += build_time_ms;
                day.cpu_micros += cpu_micros;
            }
        }
    }

    fn compare(&mut self, figure: String, stored: String, recomputed: String) {
        if stored != recomputed {
            self.report.differences.push(Difference {
                figure,
                stored,
                recomputed,
            });
        }
    }

    /// Compares the recomputed ledger with the stored one; the report.
    pub fn finish(mut self, stored: &StoredLedger) -> Report {
        let (s, r) = (stored.totals, self.totals);
        for (name, stored_value, recomputed) in [
            ("builds_pending", s.pending, r.pending),
            ("builds_active", s.active, r.active),
            ("builds_finished", s.finished, r.finished),
            ("build_time_ms", s.build_time_ms, r.build_time_ms),
        ] {
            self.compare(
                format!("totals.{name}"),
                stored_value.to_string(),
                recomputed.to_string(),
            );
        }
        self.compare(
            "totals.cpu_seconds".into(),
            seconds(s.cpu_micros),
            seconds(r.cpu_micros),
        );
        if s != r {
            self.report.fixes.totals = Some(LedgerFix {
                stored: s,
                recomputed: r,
            });
        }
        let days: BTreeSet<i64> = stored
            .days
            .keys()
            .chain(self.days.keys())
            .copied()
            .collect();
        for day in days {
            let s = stored.days.get(&day).copied().unwrap_or_default();
            let r = self.days.get(&day).copied().unwrap_or_default();
            if s == r {
                continue;
            }
            let date = iso_day(day);
            for (name, stored_value, recomputed) in [
                ("builds_finished", s.finished, r.finished),
                ("builds_failed", s.failed, r.failed),
                ("build_time_ms", s.build_time_ms, r.build_time_ms),
            ] {
                self.compare(
                    format!("daily {date} {name}"),
                    stored_value.to_string(),
                    recomputed.to_string(),
                );
            }
            self.compare(
                format!("daily {date} cpu_seconds"),
                seconds(s.cpu_micros),
                seconds(r.cpu_micros),
            );
            self.report.fixes.days.push((
                day,
                LedgerFix {
                    stored: s,
                    recomputed: r,
                },
            ));
        }
        self.report
    }
}

/// Whether writing `fix` changes any column of `build`.
fn fix_changes_build(build: &StoredBuild, fix: &BuildFix) -> bool {
    build.cpu_micros != fix.cpu_micros
        || build.peak_memory_mb != fix.peak_memory_mb
        || build.snapshot_count != fix.snapshot_count
        || build.newest_sampled_at != fix.newest_sampled_at
        || build.newest_cpu_percent != fix.newest_cpu_percent
}

/// µs as seconds, exactly as many digits as they need.
fn seconds(micros: i64) -> String {
    micros_to_seconds(micros).to_string()
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(id: i64, status: BuildStatus, cpu_micros: i64, count: i64) -> StoredBuild {
        StoredBuild {
            id,
            status,
            started_at: Some(1_000),
            completed_at: status.is_finished().then_some(86_400_000 + 5_000),
            cpu_micros,
            peak_memory_mb: (count > 0).then_some(100.0),
            snapshot_count: count,
            newest_sampled_at: (count > 0).then_some(2_000),
            newest_cpu_percent: (count > 0).then_some(50.0),
        }
    }

    fn sample(build_id: i64, attempt: i64, cpu_time_s: Option<f64>) -> RawSample {
        RawSample {
            build_id,
            attempt,
            sampled_at: 2_000,
            cpu_percent: 50.0,
            memory_mb: 100.0,
            cpu_time_s,
            interval_s: 5,
        }
    }

    fn attempt(build_id: i64, attempt: i64, percent: i64, counter: Option<i64>) -> StoredAttempt {
        StoredAttempt {
            build_id,
            attempt,
            cpu_percent_micros: percent,
            cpu_counter_micros: counter,
        }
    }

    fn audit(
        builds: &[StoredBuild],
        attempts: &[StoredAttempt],
        samples: &[RawSample],
        ledger: &StoredLedger,
    ) -> Report {
        let mut chunk = ChunkSamples::default();
        for s in samples {
            chunk.add(s);
        }
        let mut audit = Audit::default();
        audit.add_builds(builds, attempts, chunk);
        audit.finish(ledger)
    }

    fn ledger(finished: i64, cpu_micros: i64) -> StoredLedger {
        StoredLedger {
            totals: TotalsDelta {
                finished,
                build_time_ms: 86_400_000 + 4_000,
                cpu_micros,
                ..TotalsDelta::default()
            },
            days: BTreeMap::from([(
                1,
                DayDelta {
                    finished,
                    failed: 0,
                    build_time_ms: 86_400_000 + 4_000,
                    cpu_micros,
                },
            )]),
        }
    }

    /// Two attempts, one with a counter: every figure agrees, so nothing
    /// differs and nothing is to be written.
    #[test]
    fn agreeing_figures_have_no_difference() {
        let report = audit(
            &[build(1, BuildStatus::Completed, 2_500_000 + 3_000_000, 2)],
            &[
                attempt(1, 1, 2_500_000, None),
                attempt(1, 2, 2_500_000, Some(3_000_000)),
            ],
            &[sample(1, 1, None), sample(1, 2, Some(3.0))],
            &ledger(1, 5_500_000),
        );
        assert_eq!(report.differences, vec![]);
        assert!(report.fixes.is_empty());
        assert_eq!((report.builds, report.builds_purged), (1, 0));
    }

    /// A build whose samples retention removed is no difference; its CPU
    /// seconds are still checked against its attempts.
    #[test]
    fn purged_samples_are_no_difference() {
        let report = audit(
            &[build(1, BuildStatus::Completed, 2_500_000, 2)],
            &[attempt(1, 1, 2_500_000, None)],
            &[],
            &ledger(1, 2_500_000),
        );
        assert_eq!(report.differences, vec![]);
        assert_eq!(report.builds_purged, 1);
        let report = audit(
            &[build(1, BuildStatus::Completed, 9_000_000, 2)],
            &[attempt(1, 1, 2_500_000, None)],
            &[sample(1, 1, None)],
            &ledger(1, 9_000_000),
        );
        let lines: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "build 1 cpu_seconds stored 9 recomputed 2.5",
                "totals.cpu_seconds stored 9 recomputed 2.5",
                "daily 1970-01-02 cpu_seconds stored 9 recomputed 2.5",
            ]
        );
    }

    /// Each changed figure is named with both values, and the fixes hold
    /// the recomputation.
    #[test]
    fn differences_name_the_figure_and_both_values() {
        let mut stored = build(1, BuildStatus::Completed, 7_000_000, 1);
        stored.peak_memory_mb = Some(90.0);
        let mut stored_ledger = ledger(2, 2_500_000);
        stored_ledger.days.insert(3, DayDelta::default());
        let report = audit(
            &[stored],
            &[attempt(1, 1, 2_000_000, None)],
            &[sample(1, 1, None), sample(1, 2, None)],
            &stored_ledger,
        );
        let lines: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "build 1 attempt 1 cpu_percent_seconds stored 2 recomputed 2.5",
                "build 1 attempt 2 cpu_percent_seconds stored missing recomputed 2.5",
                "build 1 attempt 2 cpu_counter_seconds stored missing recomputed none",
                "build 1 cpu_seconds stored 7 recomputed 5",
                "build 1 peak_memory_mb stored 90 recomputed 100",
                "build 1 snapshot_count stored 1 recomputed 2",
                "totals.builds_finished stored 2 recomputed 1",
                "totals.cpu_seconds stored 2.5 recomputed 5",
                "daily 1970-01-02 builds_finished stored 2 recomputed 1",
                "daily 1970-01-02 cpu_seconds stored 2.5 recomputed 5",
            ]
        );
        let fixes = &report.fixes;
        assert_eq!(fixes.attempts.len(), 2);
        assert_eq!(fixes.builds[0].cpu_micros, 5_000_000);
        assert_eq!(fixes.builds[0].snapshot_count, 2);
        assert_eq!(
            fixes.totals.map(|t| t.recomputed.cpu_micros),
            Some(5_000_000)
        );
        assert_eq!(fixes.days.len(), 1, "an all-zero stored day equals no day");
    }

    /// Of samples taken at the same newest time, any one is the stored
    /// newest; another value is a difference.
    #[test]
    fn newest_sample_ties_accept_any_of_them() {
        let mut other = sample(1, 1, None);
        other.cpu_percent = 70.0;
        let samples = [sample(1, 1, None), other];
        let mut stored = build(1, BuildStatus::Building, 2_500_000 + 3_500_000, 2);
        stored.newest_cpu_percent = Some(70.0);
        let attempts = [attempt(1, 1, 6_000_000, None)];
        let active = StoredLedger {
            totals: TotalsDelta {
                active: 1,
                cpu_micros: 6_000_000,
                ..TotalsDelta::default()
            },
            days: BTreeMap::new(),
        };
        assert_eq!(
            audit(&[stored.clone()], &attempts, &samples, &active).differences,
            vec![]
        );
        stored.newest_cpu_percent = Some(10.0);
        let report = audit(&[stored], &attempts, &samples, &active);
        assert_eq!(
            report.differences[0].to_string(),
            "build 1 newest_cpu_percent stored 10 recomputed 50"
        );
    }
}
