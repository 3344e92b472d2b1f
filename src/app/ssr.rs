//! Server side of the page's first data.
//!
//! The figures come from `stats::ssr::current_stats`, cached for
//! `--stats-ttl`; the chart's days are cached here the same way, so that
//! serving `/` under load reads the database at most once per TTL instead
//! of once per page.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::CHART_DAYS;
use crate::error::Result;
use crate::state::{lock, AppState};
use crate::stats::DailyBuilds;

/// The chart's days as last read, and for which `AppState` (tests run
/// several controllers in one process).
struct Cached {
    owner: usize,
    at: Instant,
    days: Vec<DailyBuilds>,
}

static DAILY: Mutex<Option<Cached>> = Mutex::new(None);

/// Builds per day for the chart, at most `--stats-ttl` old.
pub async fn chart_days(state: &AppState) -> Result<Vec<DailyBuilds>> {
    let ttl = state.settings.stats_ttl;
    let owner = Arc::as_ptr(&state.caches) as usize;
    if !ttl.is_zero() {
        if let Some(cached) = lock(&DAILY).as_ref() {
            if cached.owner == owner && cached.at.elapsed() < ttl {
                return Ok(cached.days.clone());
            }
        }
    }
    let days = crate::stats::ssr::daily(state, CHART_DAYS).await?;
    if !ttl.is_zero() {
        *lock(&DAILY) = Some(Cached {
            owner,
            at: Instant::now(),
            days: days.clone(),
        });
    }
    Ok(days)
}
