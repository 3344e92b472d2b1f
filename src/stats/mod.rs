//! Network statistics: the one `NetworkStats` type shared by the server, the
//! REST route, the Leptos server functions and the hydrated page; the pure
//! CPU-seconds accounting; the demo generator; and (server only) the
//! [`reader`] interface through which server functions reach the figures,
//! which the `figures` domain implements and the shell provides.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

pub mod accounting;
pub mod demo;
pub mod queue_wait;
#[cfg(feature = "ssr")]
pub mod reader;

/// The figures the landing page and `GET /api/stats` show. SPEC "The
/// statistics, exactly" defines each one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    /// Workers seen within the online window.
    pub nodes_online: u64,
    /// Builds `pending`.
    pub builds_queued: u64,
    /// Builds `assigned` or `building`.
    pub active_builds: u64,
    /// Builds that reached `completed` or `failed` since 00:00 UTC today.
    pub builds_today: u64,
    /// Builds `completed` or `failed`, ever.
    pub total_builds: u64,
    /// Sum of `completedAt - startedAt` over finished builds that started.
    pub total_build_time_ms: i64,
    /// Sum of every build's CPU seconds, running ones too.
    pub total_cpu_seconds: f64,
    /// Sum over active builds of their newest fresh sample's cores in use.
    pub cpu_cores_busy: f64,
    /// Median of `first assignment - submittedAt`, ms, over builds first
    /// assigned in the last 24 hours (exact to the minute); `None` when
    /// there were none. Within 2% of the exact value (see [`queue_wait`]).
    pub queue_wait_p50_ms: Option<i64>,
    /// The same waits' 95th percentile, ms.
    pub queue_wait_p95_ms: Option<i64>,
    /// When these figures were computed, ms since the epoch.
    pub generated_at: i64,
    /// True only in a build made with the `demo` feature.
    pub demo: bool,
}

/// One UTC day of `GET /api/stats/daily`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyBuilds {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Builds that finished that day (completed + failed).
    pub builds_finished: u64,
    /// Of those, the failed ones.
    pub builds_failed: u64,
    /// Their build time, ms.
    pub build_time_ms: i64,
    /// Their CPU seconds.
    pub cpu_seconds: f64,
}

/// Days of history the landing page's chart shows.
pub const CHART_DAYS: u32 = 30;

/// The network's figures, as the page polls them.
#[server(prefix = "/sfn", endpoint = "network_stats")]
pub async fn get_network_stats() -> Result<NetworkStats, ServerFnError> {
    reader::figures()?
        .current()
        .await
        .map_err(|_| reader::unavailable())
}

/// Builds per UTC day for the last `days` days (1..=365, default 30),
/// oldest first. Takes `days` as text so that a bad value is the client's
/// 400/422, never a decoding failure answered 500.
#[server(prefix = "/sfn", endpoint = "daily_builds")]
pub async fn get_daily_builds(days: Option<String>) -> Result<Vec<DailyBuilds>, ServerFnError> {
    let figures = reader::figures()?;
    let days = match reader::parse_days(days.as_deref()) {
        Ok(days) => days,
        Err(error) => {
            reader::set_server_fn_status(&error);
            return Err(ServerFnError::new(error.to_string()));
        }
    };
    figures.daily(days).await.map_err(|_| reader::unavailable())
}
