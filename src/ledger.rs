//! The ledger: how one write changes the network's running totals and one
//! UTC day's figures. Every write that changes a figure applies its deltas
//! in its own transaction (see `storage`), so reading the figures is a
//! handful of indexed look-ups whatever the history size.

const MS_PER_DAY: i64 = 86_400_000;

/// UTC day number (days since the epoch) of a time in ms.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY)
}

/// Changes to the network-wide running totals made by one write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotalsDelta {
    /// Change in builds `pending`.
    pub pending: i64,
    /// Change in builds `assigned` or `building`.
    pub active: i64,
    /// Change in builds `completed` or `failed`.
    pub finished: i64,
    /// Change in total build time, ms.
    pub build_time_ms: i64,
    /// Change in total CPU time, microseconds.
    pub cpu_micros: i64,
}

/// Changes to one UTC day's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayDelta {
    /// Builds that finished that day.
    pub finished: i64,
    /// Of those, failed.
    pub failed: i64,
    /// Their build time, ms.
    pub build_time_ms: i64,
    /// Their CPU time, microseconds.
    pub cpu_micros: i64,
}

/// What one write changes in the ledger: the totals, and the figures of
/// the UTC day a build finished on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerDelta {
    /// Change in the running totals.
    pub totals: TotalsDelta,
    /// The day (days since the epoch) and its change, when a day changes.
    pub day: Option<(i64, DayDelta)>,
}
