//! `AppState`: what every request handler and server function shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRef;
use leptos::config::LeptosOptions;

use crate::db::Database;
use crate::stats::NetworkStats;

/// Controller settings that request handling reads (parsed once from the CLI).
#[derive(Clone, Debug)]
pub struct Settings {
    /// SHA-256 of the admin key; the key itself is not kept.
    pub admin_key_hash: [u8; 32],
    /// A worker seen within this window counts as online.
    pub online_window: Duration,
    /// A worker silent this long loses its build back to the queue.
    pub lease_timeout: Duration,
    /// How long after a build finished it still takes telemetry.
    pub telemetry_grace: Duration,
    /// Raw samples and events older than this many days are deleted.
    pub retention_days: u32,
    /// Longest `GET /api/stats` may serve the same figures.
    pub stats_ttl: Duration,
    /// Sustained telemetry requests per second per worker; bursts of twice that.
    pub telemetry_rate: u32,
    /// How often the landing page refreshes its counters.
    pub poll_interval: Duration,
}

/// Figures computed recently, reused for up to `stats_ttl`.
#[derive(Default)]
pub struct StatsCache {
    /// When and what was last computed.
    pub latest: Option<(Instant, NetworkStats)>,
}

/// A worker as authentication needs it, cached by token hash.
#[derive(Clone, Copy, Debug)]
pub struct WorkerIdentity {
    /// Worker id.
    pub id: i64,
    /// Declared cores: bound for `cpuPercent` and `cpuTimeS`.
    pub cpu_cores: i64,
    /// Declared memory: bound for `memoryMb`.
    pub memory_mb: i64,
}

/// Token bucket of one worker's telemetry requests.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Requests available now.
    pub tokens: f64,
    /// When `tokens` was last refilled.
    pub refilled: Instant,
}

/// In-memory state shared across requests.
#[derive(Default)]
pub struct Caches {
    /// Worker identities by token hash (workers never change once registered).
    pub workers: Mutex<HashMap<[u8; 32], WorkerIdentity>>,
    /// Last authenticated call per worker, ms since the epoch; flushed to the
    /// database periodically so that restarts keep it.
    pub last_seen: Mutex<HashMap<i64, i64>>,
    /// Telemetry rate limiter, per worker.
    pub buckets: Mutex<HashMap<i64, Bucket>>,
    /// Recently computed figures.
    pub stats: tokio::sync::Mutex<StatsCache>,
    /// The landing page chart's days as last read, reused for `stats_ttl`.
    pub chart_days: Mutex<Option<(Instant, Vec<crate::stats::DailyBuilds>)>>,
}

/// Everything handlers share. Cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// Read pool and writer.
    pub db: Database,
    /// Where telemetry requests queue to be stored together.
    pub telemetry: crate::ingest::store::TelemetryQueue,
    /// Parsed settings.
    pub settings: Arc<Settings>,
    /// In-memory caches.
    pub caches: Arc<Caches>,
    /// Where cargo-leptos put the site, for the page and its assets.
    pub leptos_options: LeptosOptions,
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it:
/// every value behind these locks stays valid between statements.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
