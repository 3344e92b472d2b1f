//! Demo figures: a deterministic function of the time, with no I/O.
//!
//! The demo network is a synthetic history that started at [`START_MS`]:
//! builds finish at a smooth rate that rises and falls once a UTC day, each
//! taking [`BUILD_MS`] and keeping [`BUILD_CORES`] cores busy. Every figure is
//! then what SPEC's definitions give for that history, computed in closed
//! form so any instant costs the same: totals are integrals of the rate (so
//! they only grow), a day's figures are differences of the totals at its
//! ends (so the days add up to the totals), and `cpuCoresBusy` is the rate at
//! which `totalCpuSeconds` grows.

use std::f64::consts::TAU;

use super::accounting::{counter_micros, micros_to_seconds};
use super::{DailyBuilds, NetworkStats};
use crate::format::iso_day;

/// When the demo network began: 2024-06-01 00:00 UTC.
pub const START_MS: i64 = 1_717_200_000_000;
/// Mean builds finished per second.
const RATE_PER_S: f64 = 0.25;
/// Relative swing of the rate over a day (peak at 15:00 UTC, trough at 03:00).
const DAILY_SWING: f64 = 0.45;
/// Seconds from midnight UTC to where the daily sine crosses zero upwards.
const PHASE_S: f64 = 9.0 * 3600.0;
/// Relative swing of a short ripple on top, so a visitor sees the figures move.
const RIPPLE_SWING: f64 = 0.12;
/// Period of the ripple, ms; it divides a day exactly, so days stay exact.
const RIPPLE_MS: i64 = 48_000;
/// How long each demo build takes.
pub const BUILD_MS: i64 = 300_000;
/// Cores each demo build keeps busy while it runs.
const BUILD_CORES: f64 = 1.6;
/// One build in this many fails.
const FAIL_EVERY: u64 = 23;
const DAY_MS: i64 = 86_400_000;
const DAY_S: f64 = 86_400.0;

/// Angle of the daily cycle at `ms`.
fn angle(ms: i64) -> f64 {
    let seconds_of_day = ms.rem_euclid(DAY_MS) as f64 / 1000.0;
    TAU * (seconds_of_day - PHASE_S) / DAY_S
}

/// Angle of the ripple at `ms`.
fn ripple_angle(ms: i64) -> f64 {
    TAU * ms.rem_euclid(RIPPLE_MS) as f64 / RIPPLE_MS as f64
}

/// Builds finished per second at `ms`.
fn rate(ms: i64) -> f64 {
    RATE_PER_S * (1.0 + DAILY_SWING * angle(ms).sin() + RIPPLE_SWING * ripple_angle(ms).sin())
}

/// Builds finished from [`START_MS`] to `ms` as a continuous amount: the
/// integral of [`rate`]. Whole periods of both sines integrate to zero, so
/// only the phase at either end matters, which keeps the value precise.
fn finished_amount(ms: i64) -> f64 {
    if ms <= START_MS {
        return 0.0;
    }
    let elapsed_s = (ms - START_MS) as f64 / 1000.0;
    let omega = TAU / DAY_S;
    let swing = RATE_PER_S * DAILY_SWING / omega * (angle(START_MS).cos() - angle(ms).cos());
    let ripple_omega = TAU / (RIPPLE_MS as f64 / 1000.0);
    let ripple = RATE_PER_S * RIPPLE_SWING / ripple_omega
        * (ripple_angle(START_MS).cos() - ripple_angle(ms).cos());
    RATE_PER_S * elapsed_s + swing + ripple
}

/// Builds that finished by `ms`.
fn finished(ms: i64) -> u64 {
    finished_amount(ms).floor().max(0.0) as u64
}

/// Of the first `n` builds, the failed ones.
fn failed(n: u64) -> u64 {
    n / FAIL_EVERY
}

/// Total CPU time by `ms`, microseconds: every build's CPU, running ones
/// included, is the busy cores integrated over time.
fn cpu_micros(ms: i64) -> i64 {
    counter_micros(finished_amount(ms) * BUILD_CORES * (BUILD_MS as f64 / 1000.0))
}

/// A gentle wobble in `-1..=1` with the given period, for figures that have
/// no history (nodes idle, builds waiting).
fn wobble(ms: i64, period_s: i64) -> f64 {
    let period_ms = period_s * 1000;
    (TAU * ms.rem_euclid(period_ms) as f64 / period_ms as f64).sin()
}

/// Demo `NetworkStats` at `now_ms`.
pub fn network_stats(now_ms: i64) -> NetworkStats {
    let rate = if now_ms > START_MS { rate(now_ms) } else { 0.0 };
    // Little's law: builds in progress = finishing rate * build time.
    let active = (rate * BUILD_MS as f64 / 1000.0).round() as u64;
    let idle = (12.0 + 3.0 * wobble(now_ms, 600)).round() as u64;
    let queued = (2.5 + 2.5 * wobble(now_ms, 137)).round() as u64;
    let total = finished(now_ms);
    let today_start = now_ms.div_euclid(DAY_MS) * DAY_MS;
    NetworkStats {
        nodes_online: active + idle,
        builds_queued: queued,
        active_builds: active,
        builds_today: total - finished(today_start),
        total_builds: total,
        total_build_time_ms: total as i64 * BUILD_MS,
        total_cpu_seconds: micros_to_seconds(cpu_micros(now_ms)),
        cpu_cores_busy: rate * BUILD_CORES * BUILD_MS as f64 / 1000.0,
        generated_at: now_ms,
        demo: true,
    }
}

/// Demo builds per UTC day for the `days` days up to `now_ms`, oldest first.
pub fn daily_builds(now_ms: i64, days: u32) -> Vec<DailyBuilds> {
    let today = now_ms.div_euclid(DAY_MS);
    let first = today - i64::from(days) + 1;
    (first..=today)
        .map(|day| {
            let start = day * DAY_MS;
            let end = ((day + 1) * DAY_MS).min(now_ms);
            let (n0, n1) = (finished(start), finished(end));
            DailyBuilds {
                day: iso_day(day),
                builds_finished: n1 - n0,
                builds_failed: failed(n1) - failed(n0),
                build_time_ms: (n1 - n0) as i64 * BUILD_MS,
                cpu_seconds: micros_to_seconds(cpu_micros(end) - cpu_micros(start)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_380_000_000;

    /// The same instant always gives the same figures.
    #[test]
    fn deterministic() {
        assert_eq!(network_stats(NOW), network_stats(NOW));
        assert_eq!(daily_builds(NOW, 30), daily_builds(NOW, 30));
        assert!(network_stats(NOW).demo);
    }

    /// Totals never decrease, second by second over a whole day.
    #[test]
    fn totals_never_decrease() {
        let mut last = network_stats(NOW);
        for s in 1..=86_400 {
            let next = network_stats(NOW + s * 1000);
            assert!(next.total_builds >= last.total_builds);
            assert!(next.total_build_time_ms >= last.total_build_time_ms);
            assert!(next.total_cpu_seconds >= last.total_cpu_seconds);
            last = next;
        }
    }

    /// CPU time grows every second and cores busy move within seconds,
    /// so a visitor sees the demo live.
    #[test]
    fn figures_move() {
        let a = network_stats(NOW);
        let b = network_stats(NOW + 1000);
        assert!(b.total_cpu_seconds > a.total_cpu_seconds);
        let c = network_stats(NOW + 3000);
        assert!(
            (c.cpu_cores_busy - a.cpu_cores_busy).abs() >= 0.1,
            "{a:?} {c:?}"
        );
    }

    /// The days add up to the totals, and today's day is `buildsToday`.
    #[test]
    fn days_add_up_to_totals() {
        let days = (NOW.div_euclid(DAY_MS) - START_MS / DAY_MS + 1) as u32;
        let history = daily_builds(NOW, days);
        let stats = network_stats(NOW);
        let sum: u64 = history.iter().map(|d| d.builds_finished).sum();
        assert_eq!(sum, stats.total_builds);
        let time: i64 = history.iter().map(|d| d.build_time_ms).sum();
        assert_eq!(time, stats.total_build_time_ms);
        let cpu: f64 = history.iter().map(|d| d.cpu_seconds).sum();
        assert!((cpu - stats.total_cpu_seconds).abs() < 1e-3 * stats.total_cpu_seconds.max(1.0));
        assert_eq!(history.last().unwrap().builds_finished, stats.builds_today);
        assert!(history.iter().all(|d| d.builds_failed <= d.builds_finished));
    }

    /// Thirty days, oldest first, ending today, labelled as UTC dates.
    #[test]
    fn thirty_labelled_days() {
        let history = daily_builds(NOW, 30);
        assert_eq!(history.len(), 30);
        assert_eq!(history.last().unwrap().day, "2025-11-29");
        assert_eq!(history.first().unwrap().day, "2025-10-31");
        // Every whole day is busy; today has only just begun.
        assert!(history[..29].iter().all(|d| d.builds_finished > 5_000));
    }

    /// The figures look like a plausible network and agree with each other.
    #[test]
    fn plausible_and_consistent() {
        let s = network_stats(NOW);
        assert!(s.nodes_online >= s.active_builds);
        assert!((20..=150).contains(&s.active_builds), "{s:?}");
        assert!(s.cpu_cores_busy > 0.0 && s.cpu_cores_busy.is_finite());
        assert!(s.total_cpu_seconds.is_finite());
        // cpuCoresBusy is the growth rate of totalCpuSeconds.
        let next = network_stats(NOW + 1_000);
        let grown = next.total_cpu_seconds - s.total_cpu_seconds;
        let mean_busy = (s.cpu_cores_busy + next.cpu_cores_busy) / 2.0;
        assert!((grown - mean_busy).abs() < 0.05, "{grown} vs {mean_busy}");
    }

    /// Before the demo network began there is nothing.
    #[test]
    fn nothing_before_start() {
        let s = network_stats(START_MS - 1);
        assert_eq!(s.total_builds, 0);
        assert_eq!(s.total_cpu_seconds, 0.0);
        assert_eq!(s.active_builds, 0);
    }
}
