//! Time to a machine (`queueWaitP50Ms`, `queueWaitP95Ms`): the pure bucket
//! and window math that both storage backends and the demo use.
//!
//! A build's queue wait is `first assignment - submittedAt`, counted once,
//! at its first claim (attempt 1): a requeued build's later claims add
//! nothing. Each wait adds 1 to a count keyed by (minute slot, bucket),
//! written in the claim's own transaction, so the figures are read by
//! summing the counts of the window's slots per bucket: at most
//! [`WINDOW_SLOTS`] x [`BUCKETS`] numbers, however many builds there were.
//!
//! **Buckets.** Waits under 64 ms have a bucket each (exact). Above, every
//! doubling is cut into 32 equal buckets (like HdrHistogram with 5
//! sub-bucket bits), so a bucket `[lo, hi]` spans at most `1/32` of `lo`.
//! A percentile is the value at its rank (nearest rank) among the waits;
//! the counts tell exactly which bucket holds that rank, and the answer is
//! the bucket's [`representative`], the integer that is relatively closest
//! to both ends: at most 1.5625% from any wait in the bucket (proven for
//! every bucket by the tests below), so within 2% of the exact percentile.
//!
//! **Window.** "The last 24 hours" is exact to the minute: slots are UTC
//! minutes, and the window is the current minute and the 1439 before it,
//! so a claim counts for at least 23 h 59 min and at most 24 h after it.
//! Slots before the window are deleted by the next claim (see
//! [`first_slot`]), so the counts never outgrow one day of claims.

/// Length of one slot, ms.
pub const SLOT_MS: i64 = 60_000;
/// Slots in the window: 24 hours of minutes.
pub const WINDOW_SLOTS: i64 = 1440;
/// Sub-buckets per doubling, as a power of two.
const SUB_BITS: u32 = 5;
/// Waits below this have a bucket each.
const EXACT_BELOW: i64 = 2 << SUB_BITS;
/// Number of buckets: the exact ones, then 32 per doubling up to `i64::MAX`.
pub const BUCKETS: i64 = EXACT_BELOW + (63 - (SUB_BITS as i64 + 1)) * (1 << SUB_BITS);

/// The bucket of a wait in ms (negative waits, a clock stepping back, are 0).
pub fn bucket_of(wait_ms: i64) -> i64 {
    let wait = wait_ms.max(0);
    if wait < EXACT_BELOW {
        return wait;
    }
    // floor(log2(wait)), at least SUB_BITS + 1.
    let exponent = 63 - i64::from(wait.leading_zeros());
    let shift = exponent - i64::from(SUB_BITS);
    let sub = (wait >> shift) - (1 << SUB_BITS);
    EXACT_BELOW + (exponent - i64::from(SUB_BITS) - 1) * (1 << SUB_BITS) + sub
}

/// The smallest and largest wait in `bucket` (inclusive).
pub fn bucket_bounds(bucket: i64) -> (i64, i64) {
    let bucket = bucket.clamp(0, BUCKETS - 1);
    if bucket < EXACT_BELOW {
        return (bucket, bucket);
    }
    let above = bucket - EXACT_BELOW;
    let shift = above / (1 << SUB_BITS) + 1;
    let sub = above % (1 << SUB_BITS);
    let lo = ((1 << SUB_BITS) + sub) << shift;
    let hi = lo + ((1i64 << shift) - 1);
    (lo, hi)
}

/// The value reported for a percentile that falls in `bucket`: the integer
/// in it whose larger relative distance to the bucket's two ends is least
/// (about the harmonic mean of the ends).
pub fn representative(bucket: i64) -> i64 {
    let (lo, hi) = bucket_bounds(bucket);
    if lo == hi {
        return lo;
    }
    let (l, h) = (i128::from(lo), i128::from(hi));
    let ideal = 2 * l * h / (l + h);
    // The best integer is next to the ideal real value; take the better.
    let error = |v: i128| -> f64 {
        let below = (v - l) as f64 / l as f64;
        let above = (h - v) as f64 / h as f64;
        below.max(above)
    };
    let best = if error(ideal + 1) < error(ideal) {
        ideal + 1
    } else {
        ideal
    };
    best.clamp(l, h) as i64
}

/// The slot (UTC minute number) of a time in ms.
pub fn slot_of(ms: i64) -> i64 {
    ms.div_euclid(SLOT_MS)
}

/// The oldest slot in the window at `now`: the window is every slot from
/// this one on. Slots before it count no more, and may be deleted.
pub fn first_slot(now: i64) -> i64 {
    slot_of(now) - (WINDOW_SLOTS - 1)
}

/// The queue wait a claim records: `Some(assigned_at - submitted_at)` when
/// the claim starts a build's first attempt, `None` for a requeued build's
/// later attempts (SPEC: builds *first* assigned).
pub fn first_wait(attempt: i64, submitted_at: i64, assigned_at: i64) -> Option<i64> {
    (attempt == 1).then(|| (assigned_at - submitted_at).max(0))
}

/// The rank (1-based, nearest rank) of percentile `percent` among `n` values.
fn rank(n: i64, percent: i64) -> i64 {
    ((n * percent + 99) / 100).max(1)
}

/// Median and 95th percentile, in ms, of the waits counted in `counts`
/// (bucket, how many waits), in any order and with repeated buckets;
/// `(None, None)` when there are none.
pub fn percentiles(counts: impl IntoIterator<Item = (i64, i64)>) -> (Option<i64>, Option<i64>) {
    let mut by_bucket = std::collections::BTreeMap::<i64, i64>::new();
    for (bucket, count) in counts {
        if count > 0 {
            *by_bucket.entry(bucket.clamp(0, BUCKETS - 1)).or_default() += count;
        }
    }
    let n: i64 = by_bucket.values().sum();
    if n == 0 {
        return (None, None);
    }
    let at_rank = |wanted: i64| {
        let mut seen = 0;
        for (&bucket, &count) in &by_bucket {
            seen += count;
            if seen >= wanted {
                return Some(representative(bucket));
            }
        }
        None
    };
    (at_rank(rank(n, 50)), at_rank(rank(n, 95)))
}

/// The exact nearest-rank percentile `percent` of `waits` (which it sorts),
/// the definition [`percentiles`] approximates; for tests and checks.
pub fn exact_percentile(waits: &mut [i64], percent: i64) -> Option<i64> {
    if waits.is_empty() {
        return None;
    }
    waits.sort_unstable();
    let at = rank(waits.len() as i64, percent) as usize - 1;
    waits.get(at).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Largest relative distance between `value` and any wait in `bucket`.
    fn worst_error(bucket: i64, value: i64) -> f64 {
        let (lo, hi) = bucket_bounds(bucket);
        if lo == 0 {
            return if value == 0 { 0.0 } else { f64::INFINITY };
        }
        let below = (value as f64 - lo as f64).abs() / lo as f64;
        let above = (hi as f64 - value as f64).abs() / hi as f64;
        below.max(above)
    }

    /// Buckets tile 0..=i64::MAX without gap or overlap, and every wait
    /// lands in the bucket whose bounds hold it.
    #[test]
    fn buckets_tile_the_waits() {
        assert_eq!(bucket_bounds(0), (0, 0));
        for bucket in 1..BUCKETS {
            let (lo, _) = bucket_bounds(bucket);
            let (_, previous_hi) = bucket_bounds(bucket - 1);
            assert_eq!(
                lo,
                previous_hi + 1,
                "bucket {bucket} starts after {previous_hi}"
            );
            let (lo, hi) = bucket_bounds(bucket);
            assert!(lo <= hi);
            assert_eq!(bucket_of(lo), bucket);
            assert_eq!(bucket_of(hi), bucket);
            assert_eq!(bucket_of(lo + (hi - lo) / 2), bucket);
        }
        assert_eq!(bucket_bounds(BUCKETS - 1).1, i64::MAX);
        assert_eq!(bucket_of(i64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(-5), 0);
        assert_eq!(BUCKETS, 1888);
    }

    /// The bound the figures rest on, for every bucket there is: the
    /// representative is within 1.5625% (< 2%) of every wait in its bucket.
    #[test]
    fn every_representative_is_within_two_percent() {
        let mut worst: f64 = 0.0;
        for bucket in 0..BUCKETS {
            let value = representative(bucket);
            let (lo, hi) = bucket_bounds(bucket);
            assert!((lo..=hi).contains(&value), "bucket {bucket}");
            worst = worst.max(worst_error(bucket, value));
        }
        assert!(worst <= 1.0 / 64.0 + 1e-12, "worst error {worst}");
        assert!(worst < 0.02);
    }

    /// Waits under 64 ms come back exact.
    #[test]
    fn small_waits_are_exact() {
        for wait in 0..64 {
            assert_eq!(
                percentiles([(bucket_of(wait), 1)]),
                (Some(wait), Some(wait))
            );
        }
    }

    /// No waits: no figures. Nearest rank: the median of 1..=4 is 2, the
    /// 95th percentile of 1..=100 is 95.
    #[test]
    fn percentile_ranks() {
        assert_eq!(percentiles([]), (None, None));
        assert_eq!(percentiles([(3, 0)]), (None, None));
        let four: Vec<(i64, i64)> = (1..=4).map(|w| (bucket_of(w), 1)).collect();
        assert_eq!(percentiles(four), (Some(2), Some(4)));
        let hundred: Vec<(i64, i64)> = (1..=100).map(|w| (bucket_of(w), 1)).collect();
        let (p50, p95) = percentiles(hundred);
        assert!((p50.unwrap() - 50).abs() <= 1 && (p95.unwrap() - 95).abs() <= 1);
        assert_eq!(
            exact_percentile(&mut (1..=100).rev().collect::<Vec<_>>(), 95),
            Some(95)
        );
        assert_eq!(exact_percentile(&mut [7, 1, 4, 2], 50), Some(2));
    }

    /// Only a first attempt's claim counts, never negative.
    #[test]
    fn only_first_assignments_count() {
        assert_eq!(first_wait(1, 1_000, 4_500), Some(3_500));
        assert_eq!(first_wait(2, 1_000, 9_000), None);
        assert_eq!(first_wait(1, 5_000, 4_000), Some(0));
    }

    /// The window is the current minute and the 1439 before it.
    #[test]
    fn window_is_exact_to_the_minute() {
        let now = 1_764_380_012_345;
        let first = first_slot(now);
        assert_eq!(slot_of(now) - first + 1, WINDOW_SLOTS);
        let day_ago = now - 86_400_000;
        assert!(slot_of(day_ago) < first, "a claim 24 h ago has left");
        assert!(
            slot_of(day_ago + SLOT_MS) >= first,
            "one 23 h 59 min ago counts"
        );
        assert_eq!(slot_of(-1), -1);
    }

    fn wait() -> impl Strategy<Value = i64> {
        prop_oneof![
            0i64..200,
            0i64..10_000,
            0i64..3_600_000,
            0i64..200_000_000,
            0i64..i64::MAX / 2,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Over random waits, both figures are within 2% of the exact
        /// percentiles (1.5625% by the bucket bound).
        #[test]
        fn percentiles_within_two_percent_of_exact(waits in prop::collection::vec(wait(), 1..400)) {
            let (p50, p95) = percentiles(waits.iter().map(|&w| (bucket_of(w), 1)));
            let mut sorted = waits.clone();
            for (estimate, percent) in [(p50, 50), (p95, 95)] {
                let exact = exact_percentile(&mut sorted, percent).unwrap();
                let estimate = estimate.unwrap();
                let error = (estimate - exact).abs() as f64 / (exact.max(1)) as f64;
                prop_assert!(error <= 1.0 / 64.0 + 1e-12, "p{percent}: {estimate} vs exact {exact}");
            }
        }

        /// Counting per slot and summing the slots gives what counting once does.
        #[test]
        fn slots_add_up(waits in prop::collection::vec((0i64..WINDOW_SLOTS, wait()), 1..200)) {
            let mut per_slot = std::collections::BTreeMap::<(i64, i64), i64>::new();
            for &(slot, w) in &waits {
                *per_slot.entry((slot, bucket_of(w))).or_default() += 1;
            }
            let summed = percentiles(per_slot.iter().map(|(&(_, b), &c)| (b, c)));
            let once = percentiles(waits.iter().map(|&(_, w)| (bucket_of(w), 1)));
            prop_assert_eq!(summed, once);
        }
    }
}
