//! Server side of the page's first data.
//!
//! The figures come from `stats::ssr::current_stats`, cached for
//! `--stats-ttl`; the chart's days are cached in `AppState` the same way, so that
//! serving `/` under load reads the database at most once per TTL instead
//! of once per page.

use std::time::Instant;

use super::CHART_DAYS;
use crate::error::Result;
use crate::state::{lock, AppState};
use crate::stats::DailyBuilds;

/// Builds per day for the chart, at most `--stats-ttl` old.
pub async fn chart_days(state: &AppState) -> Result<Vec<DailyBuilds>> {
    let ttl = state.settings.stats_ttl;
    if !ttl.is_zero() {
        if let Some((at, days)) = lock(&state.caches.chart_days).as_ref() {
            if at.elapsed() < ttl {
                return Ok(days.clone());
            }
        }
    }
    let days = crate::stats::ssr::daily(state, CHART_DAYS).await?;
    if !ttl.is_zero() {
        *lock(&state.caches.chart_days) = Some((Instant::now(), days.clone()));
    }
    Ok(days)
}
