//! The figures' read side: `NetworkStats` and the daily figures from the
//! ledger's rows (or the demo generator), cached for `--stats-ttl`, their
//! REST routes, and the [`FiguresReader`] the page's server functions use.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::auth::SeenTimes;
use crate::cache::TtlCache;
use crate::clock::now_ms;
use crate::error::Result;
use crate::ledger::day_of;
use crate::meters::Meters;
use crate::stats::accounting::micros_to_seconds;
use crate::stats::queue_wait;
use crate::stats::reader::{parse_days, FiguresReader};
use crate::stats::{demo, DailyBuilds, NetworkStats, CHART_DAYS};
use crate::storage::Storage;

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

/// What the read side owns: its caches and settings. Cheap to clone.
#[derive(Clone)]
pub struct FiguresState {
    inner: Arc<FiguresInner>,
}

struct FiguresInner {
    storage: Storage,
    /// A worker seen within this window counts as online.
    online_window: Duration,
    /// How often the landing page refreshes its counters.
    poll_interval: Duration,
    /// Figures computed recently, reused for `--stats-ttl`.
    stats: TtlCache<NetworkStats>,
    /// The chart's days as last read, reused for `--stats-ttl`.
    chart: TtlCache<Vec<DailyBuilds>>,
    /// Workers seen since the last flush: written before `nodesOnline` is
    /// counted, so the count is exact on this controller.
    seen: SeenTimes,
}

impl FiguresState {
    /// The read side over `storage`, caching for `ttl`.
    pub fn new(
        storage: Storage,
        ttl: Duration,
        online_window: Duration,
        poll_interval: Duration,
        seen: SeenTimes,
    ) -> FiguresState {
        FiguresState {
            inner: Arc::new(FiguresInner {
                storage,
                online_window,
                poll_interval,
                stats: TtlCache::new(ttl),
                chart: TtlCache::new(ttl),
                seen,
            }),
        }
    }

    /// The figures `GET /api/stats` and the page show: at most `--stats-ttl` old.
    pub async fn current_stats(&self) -> Result<NetworkStats> {
        self.inner.stats.get_or_compute(|| self.compute()).await
    }

    async fn compute(&self) -> Result<NetworkStats> {
        let now = now_ms();
        match stats_source() {
            StatsSource::Demo => Ok(demo::network_stats(now)),
            StatsSource::Real => self.real_stats(now).await,
        }
    }

    async fn real_stats(&self, now: i64) -> Result<NetworkStats> {
        let online_since = now - self.inner.online_window.as_millis() as i64;
        self.inner.seen.flush().await?;
        let storage = &self.inner.storage;
        let (stored, waits) = futures::try_join!(
            storage.figures(day_of(now), online_since, now - FRESH_SAMPLE_MS),
            storage.queue_waits(queue_wait::first_slot(now)),
        )?;
        let (queue_wait_p50_ms, queue_wait_p95_ms) = queue_wait::percentiles(waits);
        Ok(NetworkStats {
            nodes_online: stored.workers_online.max(0) as u64,
            builds_queued: stored.pending.max(0) as u64,
            active_builds: stored.active.max(0) as u64,
            builds_today: stored.finished_today.max(0) as u64,
            total_builds: stored.finished.max(0) as u64,
            total_build_time_ms: stored.build_time_ms,
            total_cpu_seconds: micros_to_seconds(stored.cpu_micros),
            cpu_cores_busy: stored.busy_percent / 100.0,
            queue_wait_p50_ms,
            queue_wait_p95_ms,
            generated_at: now,
            demo: false,
        })
    }

    /// Builds per UTC day for the last `days` days, oldest first, zeros included.
    pub async fn daily(&self, days: u32) -> Result<Vec<DailyBuilds>> {
        let now = now_ms();
        match stats_source() {
            StatsSource::Demo => Ok(demo::daily_builds(now, days)),
            StatsSource::Real => self.real_daily(now, days).await,
        }
    }

    /// Builds failed, ever: the sum of every day's failed builds (a row a
    /// day, so the cost grows by one row a day, not with the builds). The
    /// demo source has no such history: `None`.
    pub async fn failed_total(&self) -> Result<Option<u64>> {
        match stats_source() {
            StatsSource::Demo => Ok(None),
            StatsSource::Real => {
                let today = day_of(now_ms());
                let rows = self.inner.storage.daily(0, today).await?;
                Ok(Some(rows.iter().map(|row| row.failed.max(0) as u64).sum()))
            }
        }
    }

    async fn real_daily(&self, now: i64, days: u32) -> Result<Vec<DailyBuilds>> {
        let today = day_of(now);
        let first = today - i64::from(days) + 1;
        let mut rows = self
            .inner
            .storage
            .daily(first, today)
            .await?
            .into_iter()
            .peekable();
        Ok((first..=today)
            .map(|day| {
                let mut entry = DailyBuilds {
                    day: day_label(day),
                    ..DailyBuilds::default()
                };
                if let Some(row) = rows.next_if(|row| row.day == day) {
                    entry.builds_finished = row.finished.max(0) as u64;
                    entry.builds_failed = row.failed.max(0) as u64;
                    entry.build_time_ms = row.build_time_ms;
                    entry.cpu_seconds = micros_to_seconds(row.cpu_micros);
                }
                entry
            })
            .collect())
    }
}

impl FiguresReader for FiguresState {
    fn current(&self) -> BoxFuture<'_, Result<NetworkStats>> {
        self.current_stats().boxed()
    }

    fn daily(&self, days: u32) -> BoxFuture<'_, Result<Vec<DailyBuilds>>> {
        FiguresState::daily(self, days).boxed()
    }

    fn chart_days(&self) -> BoxFuture<'_, Result<Vec<DailyBuilds>>> {
        async move {
            self.inner
                .chart
                .get_or_compute(|| FiguresState::daily(self, CHART_DAYS))
                .await
        }
        .boxed()
    }

    fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    fn online_window(&self) -> Duration {
        self.inner.online_window
    }
}

/// `YYYY-MM-DD` of a UTC day number.
pub fn day_label(day: i64) -> String {
    let (y, m, d) = crate::format::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// REST routes of the figures, and `GET /metrics`.
pub fn router<S>() -> Router<S>
where
    FiguresState: FromRef<S>,
    Meters: FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/stats", get(stats_route))
        .route("/api/stats/daily", get(daily_route))
        .route("/metrics", get(metrics_route))
}

/// `GET /metrics`: the figures `/api/stats` serves, and this controller's
/// meters, for Prometheus.
async fn metrics_route(
    State(figures): State<FiguresState>,
    State(meters): State<Meters>,
    request: Parts,
) -> Result<Response> {
    meters.authorize(&request)?;
    let stats = figures.current_stats().await?;
    let failed = figures.failed_total().await?;
    let body = meters.render(&stats, failed);
    Ok(([(header::CONTENT_TYPE, crate::meters::CONTENT_TYPE)], body).into_response())
}

async fn stats_route(State(figures): State<FiguresState>) -> Result<Json<NetworkStats>> {
    Ok(Json(figures.current_stats().await?))
}

/// Query of `GET /api/stats/daily`.
#[derive(serde::Deserialize)]
struct DailyQuery {
    days: Option<String>,
}

async fn daily_route(
    State(figures): State<FiguresState>,
    Query(query): Query<DailyQuery>,
) -> Result<Json<Vec<DailyBuilds>>> {
    let days = parse_days(query.days.as_deref())?;
    Ok(Json(figures.daily(days).await?))
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
