//! Demo figures: a deterministic function of the time, with no I/O.
//!
//! The demo network is a synthetic history that started at [`START_MS`]:
//! builds finish at a smooth rate that grows slowly and rises and falls over
//! the day, the week and a short ripple ([`CYCLES`]), each
//! taking [`BUILD_MS`] and keeping [`BUILD_CORES`] cores busy. Every figure is
//! then what SPEC's definitions give for that history, computed in closed
//! form so any instant costs the same: totals are integrals of the rate (so
//! they only grow), a day's figures are differences of the totals at its
//! ends (so the days add up to the totals), and `cpuCoresBusy` is the rate at
//! which `totalCpuSeconds` grows.
//!
//! Queue waits: each build is first assigned [`BUILD_MS`] before it
//! finishes, and the builds first assigned in one minute waited like an
//! exponential distribution whose median grows with how busy the network
//! was then ([`median_wait_ms`]). Those waits go through the same buckets,
//! window and percentiles as the real figures ([`super::queue_wait`]).

use std::f64::consts::TAU;

use super::accounting::{counter_micros, micros_to_seconds};
use super::queue_wait;
use super::{DailyBuilds, NetworkStats};
use crate::format::iso_day;

/// When the demo network began: 2024-06-01 00:00 UTC.
pub const START_MS: i64 = 1_717_200_000_000;
/// Builds finished per second when the demo network began.
const RATE_PER_S: f64 = 0.2;
/// Relative growth of the base rate per year (more volunteers join).
const GROWTH_PER_YEAR: f64 = 0.4;
const YEAR_S: f64 = 365.0 * 86_400.0;
/// How long each demo build takes.
pub const BUILD_MS: i64 = 300_000;
/// Cores each demo build keeps busy while it runs.
const BUILD_CORES: f64 = 1.6;
/// One build in this many fails.
const FAIL_EVERY: u64 = 23;
const DAY_MS: i64 = 86_400_000;

/// A periodic swing of the rate: `swing * sin(angle)`, relative to the base rate.
struct Cycle {
    /// Amplitude, relative to the base rate.
    swing: f64,
    /// Period, ms.
    period_ms: i64,
    /// Where (ms since the epoch, modulo the period) the sine crosses zero upwards.
    offset_ms: i64,
}

impl Cycle {
    fn angle(&self, ms: i64) -> f64 {
        TAU * (ms - self.offset_ms).rem_euclid(self.period_ms) as f64 / self.period_ms as f64
    }

    /// Its share of the rate at `ms`, builds per second.
    fn rate(&self, ms: i64) -> f64 {
        RATE_PER_S * self.swing * self.angle(ms).sin()
    }

    /// Its share of the builds finished from [`START_MS`] to `ms`: the
    /// integral of [`Cycle::rate`], which only depends on the phase at the ends.
    fn integral(&self, ms: i64) -> f64 {
        let period_s = self.period_ms as f64 / 1000.0;
        RATE_PER_S * self.swing * period_s / TAU
            * (self.angle(START_MS).cos() - self.angle(ms).cos())
    }
}

/// Busy afternoons (peak 15:00 UTC), quiet weekends (peak Wednesday noon,
/// trough Sunday 00:00 UTC), and a 48 s ripple so a visitor sees the figures move.
const CYCLES: [Cycle; 3] = [
    Cycle {
        swing: 0.45,
        period_ms: DAY_MS,
        offset_ms: 9 * 3_600_000,
    },
    // The epoch was a Thursday: Wednesday noon is 6.5 days on; the sine
    // peaks a quarter period after its zero.
    Cycle {
        swing: 0.25,
        period_ms: 7 * DAY_MS,
        offset_ms: 4 * DAY_MS + 18 * 3_600_000,
    },
    Cycle {
        swing: 0.12,
        period_ms: 48_000,
        offset_ms: 0,
    },
];

/// Seconds since the demo network began (0 before).
fn elapsed_s(ms: i64) -> f64 {
    (ms - START_MS).max(0) as f64 / 1000.0
}

/// Builds finished per second at `ms`.
fn rate(ms: i64) -> f64 {
    if ms <= START_MS {
        return 0.0;
    }
    let base = RATE_PER_S * (1.0 + GROWTH_PER_YEAR * elapsed_s(ms) / YEAR_S);
    base + CYCLES.iter().map(|c| c.rate(ms)).sum::<f64>()
}

/// Builds finished from [`START_MS`] to `ms` as a continuous amount: the
/// integral of [`rate`], in closed form.
fn finished_amount(ms: i64) -> f64 {
    if ms <= START_MS {
        return 0.0;
    }
    let e = elapsed_s(ms);
    let base = RATE_PER_S * (e + GROWTH_PER_YEAR * e * e / (2.0 * YEAR_S));
    base + CYCLES.iter().map(|c| c.integral(ms)).sum::<f64>()
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

/// Median queue wait of the builds first assigned at `ms`: 4 s when the
/// rate is at its base, up to about 13 s at the busiest hour and a few
/// hundred ms at the quietest.
fn median_wait_ms(ms: i64) -> f64 {
    let base = RATE_PER_S * (1.0 + GROWTH_PER_YEAR * elapsed_s(ms) / YEAR_S);
    let load = rate(ms) / base;
    4_000.0 * load * load
}

/// How a minute's waits spread around their median: an exponential
/// distribution, as eight equal shares at its quantiles `(j + 0.5) / 8`,
/// each `-ln(1 - (j + 0.5) / 8) / ln 2` times the median.
const WAIT_SHARES: [f64; 8] = [
    0.093_109_404,
    0.299_560_282,
    0.540_568_381,
    0.830_074_999,
    1.192_645_078,
    1.678_071_905,
    2.415_037_499,
    4.0,
];

/// Builds first assigned by `ms` (each is assigned [`BUILD_MS`] before it
/// finishes; none before the demo network began).
fn assigned(ms: i64) -> u64 {
    if ms <= START_MS {
        0
    } else {
        finished(ms + BUILD_MS)
    }
}

/// The demo's first assignments in the queue-wait window at `now_ms`, as
/// (wait, builds) pairs, minute by minute.
fn first_waits(now_ms: i64) -> impl Iterator<Item = (i64, i64)> {
    let first = queue_wait::first_slot(now_ms);
    (first..=queue_wait::slot_of(now_ms)).flat_map(move |slot| {
        let start = slot * queue_wait::SLOT_MS;
        let end = (start + queue_wait::SLOT_MS).min(now_ms + 1);
        let builds = assigned(end).saturating_sub(assigned(start)) as i64;
        let median = median_wait_ms(start);
        let shares = WAIT_SHARES.len() as i64;
        WAIT_SHARES.iter().enumerate().map(move |(j, factor)| {
            let j = j as i64;
            let count = builds * (j + 1) / shares - builds * j / shares;
            ((median * factor).round() as i64, count)
        })
    })
}

/// `queueWaitP50Ms` and `queueWaitP95Ms` at `now_ms`, by SPEC's definition
/// over the demo history, through the same buckets and percentiles as the
/// real figures.
fn queue_waits(now_ms: i64) -> (Option<i64>, Option<i64>) {
    let mut counts = [0i64; queue_wait::BUCKETS as usize];
    for (wait, builds) in first_waits(now_ms) {
        counts[queue_wait::bucket_of(wait) as usize] += builds;
    }
    queue_wait::percentiles(
        counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(bucket, &n)| (bucket as i64, n)),
    )
}

/// Demo `NetworkStats` at `now_ms`.
pub fn network_stats(now_ms: i64) -> NetworkStats {
    let (queue_wait_p50_ms, queue_wait_p95_ms) = queue_waits(now_ms);
    NetworkStats {
        queue_wait_p50_ms,
        queue_wait_p95_ms,
        ..running_figures(now_ms)
    }
}

/// Every demo figure at `now_ms` but the queue waits (which are `None`).
fn running_figures(now_ms: i64) -> NetworkStats {
    let rate = rate(now_ms);
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
        queue_wait_p50_ms: None,
        queue_wait_p95_ms: None,
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

    /// Totals never decrease, second by second over a whole day (the
    /// queue waits, which are no totals, left out: they sum a day of
    /// minutes, too slow to do 86,400 times in a debug build).
    #[test]
    fn totals_never_decrease() {
        let mut last = running_figures(NOW);
        for s in 1..=86_400 {
            let next = running_figures(NOW + s * 1000);
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
        assert_eq!((s.queue_wait_p50_ms, s.queue_wait_p95_ms), (None, None));
    }

    /// The demo's queue waits are what the bucket math gives for its
    /// history: a median of seconds, the 95th percentile well above it,
    /// both within 2% of the exact percentiles of the same waits, and
    /// moving with the time of day.
    #[test]
    fn queue_waits_follow_the_real_formulas() {
        let s = network_stats(NOW);
        let (p50, p95) = (s.queue_wait_p50_ms.unwrap(), s.queue_wait_p95_ms.unwrap());
        assert!((500..=15_000).contains(&p50), "{s:?}");
        assert!(p95 > 2 * p50, "{s:?}");
        // The exact percentiles of the same history, wait by wait.
        let mut waits = Vec::new();
        for (wait, builds) in first_waits(NOW) {
            waits.extend(std::iter::repeat_n(wait, builds as usize));
        }
        assert!(waits.len() > 10_000, "a day of builds: {}", waits.len());
        for (estimate, percent) in [(p50, 50), (p95, 95)] {
            let exact = queue_wait::exact_percentile(&mut waits, percent).unwrap();
            assert!(
                (estimate - exact).abs() as f64 <= 0.02 * exact as f64,
                "p{percent} {estimate} vs {exact}"
            );
        }
        // They move with the time of day.
        let evening = network_stats(NOW + 8 * 3_600_000);
        assert_ne!(evening.queue_wait_p50_ms, s.queue_wait_p50_ms);
    }
}
