//! How the figures are kept and read on the server.
//!
//! Every write that changes a figure adjusts the `totals` row and the
//! finishing day's `daily` row in the same transaction, so reading the
//! figures is a handful of indexed look-ups whatever the history size.

use std::time::Instant;

use sqlx::SqliteConnection;

use super::accounting::micros_to_seconds;
use super::{demo, DailyBuilds, NetworkStats};
use crate::db::now_ms;
use crate::error::Result;
use crate::state::AppState;

const MS_PER_DAY: i64 = 86_400_000;
/// A sample older than this no longer counts towards `cpuCoresBusy`.
const FRESH_SAMPLE_MS: i64 = 30_000;

/// Where `NetworkStats` come from. Chosen in exactly one place,
/// [`stats_source`]; nothing else checks for demo mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSource {
    /// Figures from the database.
    Real,
    /// Deterministic figures from the demo generator.
    Demo,
}

/// The source this build was made with.
pub fn stats_source() -> StatsSource {
    if cfg!(feature = "demo") {
        StatsSource::Demo
    } else {
        StatsSource::Real
    }
}

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

/// Applies `delta` to the running totals, inside the caller's transaction.
pub async fn adjust_totals(conn: &mut SqliteConnection, delta: TotalsDelta) -> Result<()> {
    if delta == TotalsDelta::default() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE totals SET builds_pending = builds_pending + ?, builds_active = builds_active + ?,
         builds_finished = builds_finished + ?, build_time_ms = build_time_ms + ?,
         cpu_micros = cpu_micros + ? WHERE id = 1",
    )
    .bind(delta.pending)
    .bind(delta.active)
    .bind(delta.finished)
    .bind(delta.build_time_ms)
    .bind(delta.cpu_micros)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Applies `delta` to the figures of UTC day `day`, inside the caller's transaction.
pub async fn adjust_day(conn: &mut SqliteConnection, day: i64, delta: DayDelta) -> Result<()> {
    if delta == DayDelta::default() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO daily (day, builds_finished, builds_failed, build_time_ms, cpu_micros)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (day) DO UPDATE SET builds_finished = builds_finished + ?2,
         builds_failed = builds_failed + ?3, build_time_ms = build_time_ms + ?4,
         cpu_micros = cpu_micros + ?5",
    )
    .bind(day)
    .bind(delta.finished)
    .bind(delta.failed)
    .bind(delta.build_time_ms)
    .bind(delta.cpu_micros)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The figures `GET /api/stats` and the page show: cached for `--stats-ttl`.
pub async fn current_stats(state: &AppState) -> Result<NetworkStats> {
    let ttl = state.settings.stats_ttl;
    if ttl.is_zero() {
        return compute(state).await;
    }
    let mut cache = state.caches.stats.lock().await;
    if let Some((at, figures)) = &cache.latest {
        if at.elapsed() < ttl {
            return Ok(figures.clone());
        }
    }
    let figures = compute(state).await?;
    cache.latest = Some((Instant::now(), figures.clone()));
    Ok(figures)
}

async fn compute(state: &AppState) -> Result<NetworkStats> {
    let now = now_ms();
    match stats_source() {
        StatsSource::Demo => Ok(demo::network_stats(now)),
        StatsSource::Real => real_stats(state, now).await,
    }
}

async fn real_stats(state: &AppState, now: i64) -> Result<NetworkStats> {
    let mut conn = state.db.reads.acquire().await?;
    // One read transaction so that every figure comes from the same snapshot.
    let (pending, active, finished, build_time_ms, cpu_micros, today, online, busy_percent): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f64,
    ) = sqlx::query_as(
        "SELECT t.builds_pending, t.builds_active, t.builds_finished, t.build_time_ms, t.cpu_micros,
           COALESCE((SELECT builds_finished FROM daily WHERE day = ?1), 0),
           (SELECT count(*) FROM workers WHERE last_seen_at >= ?2),
           COALESCE((SELECT sum(newest_cpu_percent) FROM builds
                     WHERE status IN ('assigned', 'building') AND newest_sampled_at >= ?3), 0.0)
         FROM totals t WHERE t.id = 1",
    )
    .bind(day_of(now))
    .bind(now - state.settings.online_window.as_millis() as i64)
    .bind(now - FRESH_SAMPLE_MS)
    .fetch_one(&mut *conn)
    .await?;
    Ok(NetworkStats {
        nodes_online: online.max(0) as u64,
        builds_queued: pending.max(0) as u64,
        active_builds: active.max(0) as u64,
        builds_today: today.max(0) as u64,
        total_builds: finished.max(0) as u64,
        total_build_time_ms: build_time_ms,
        total_cpu_seconds: micros_to_seconds(cpu_micros),
        cpu_cores_busy: busy_percent / 100.0,
        generated_at: now,
        demo: false,
    })
}

/// `YYYY-MM-DD` of a UTC day number.
pub fn day_label(day: i64) -> String {
    let (y, m, d) = crate::format::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Builds per UTC day for the last `days` days, oldest first, zeros included.
pub async fn daily(state: &AppState, days: u32) -> Result<Vec<DailyBuilds>> {
    let now = now_ms();
    match stats_source() {
        StatsSource::Demo => Ok(demo::daily_builds(now, days)),
        StatsSource::Real => real_daily(state, now, days).await,
    }
}

async fn real_daily(state: &AppState, now: i64, days: u32) -> Result<Vec<DailyBuilds>> {
    let today = day_of(now);
    let first = today - i64::from(days) + 1;
    let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT day, builds_finished, builds_failed, build_time_ms, cpu_micros
         FROM daily WHERE day BETWEEN ? AND ? ORDER BY day",
    )
    .bind(first)
    .bind(today)
    .fetch_all(&state.db.reads)
    .await?;
    let mut rows = rows.into_iter().peekable();
    Ok((first..=today)
        .map(|day| {
            let mut entry = DailyBuilds {
                day: day_label(day),
                ..DailyBuilds::default()
            };
            if let Some((_, finished, failed, time_ms, cpu)) = rows.next_if(|row| row.0 == day) {
                entry.builds_finished = finished.max(0) as u64;
                entry.builds_failed = failed.max(0) as u64;
                entry.build_time_ms = time_ms;
                entry.cpu_seconds = micros_to_seconds(cpu);
            }
            entry
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Day labels match the calendar across epochs, leap days and years.
    #[test]
    fn day_labels() {
        assert_eq!(day_label(0), "1970-01-01");
        assert_eq!(day_label(day_of(1_764_380_000_000)), "2025-11-29");
        assert_eq!(day_label(day_of(951_782_400_000)), "2000-02-29");
        assert_eq!(day_label(-1), "1969-12-31");
    }
}

/// REST routes of the statistics.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/api/stats", get(stats_route))
        .route("/api/stats/daily", get(daily_route))
}

async fn stats_route(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<NetworkStats>> {
    Ok(axum::Json(current_stats(&state).await?))
}

/// Query of `GET /api/stats/daily`.
#[derive(serde::Deserialize)]
struct DailyQuery {
    days: Option<String>,
}

async fn daily_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Query(query): axum::extract::Query<DailyQuery>,
) -> Result<axum::Json<Vec<DailyBuilds>>> {
    let days = parse_days(query.days.as_deref())?;
    Ok(axum::Json(daily(&state, days).await?))
}

/// `days` of the daily figures: 30 when absent, text that is not a whole
/// number 400, outside 1..=365 422.
pub fn parse_days(text: Option<&str>) -> Result<u32> {
    use crate::error::AppError;
    let Some(text) = text else { return Ok(30) };
    let days = text
        .trim()
        .parse::<i64>()
        .map_err(|_| AppError::BadRequest("days must be a whole number".into()))?;
    if !(1..=365).contains(&days) {
        return Err(AppError::Invalid("days must be in 1..=365".into()));
    }
    Ok(days as u32)
}

/// Gives a server function's answer the status code of a client error.
pub fn set_server_fn_status(error: &crate::error::AppError) {
    if let Some(response) = leptos::prelude::use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(error.status_and_code().0);
    }
}
