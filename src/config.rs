//! Command-line flags of the controller's subcommands, each with an
//! environment fallback (SPEC "Configuration").

use std::time::Duration;

use clap::Args;

/// Parses durations written like `90s`, `5m`, `1h`, `0s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 90s, 5m or 1h: {e}"))
}

/// Default database: a SQLite file under `data/`, created when missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/freeagent.db";

/// Flags of `freeagent serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Database URL; the file and its folder are created when missing.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Address to listen on.
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = "127.0.0.1:3000")]
    pub listen: std::net::SocketAddr,

    /// Admin key. When none is given, the one in `data/admin.key` is used,
    /// generated there (mode 0600) when missing.
    #[arg(long, env = "FREEAGENT_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// A worker seen within this window counts as online.
    #[arg(long, env = "FREEAGENT_ONLINE_WINDOW", default_value = "120s", value_parser = parse_duration)]
    pub online_window: Duration,

    /// A worker silent this long loses its build back to the queue.
    #[arg(long, env = "FREEAGENT_LEASE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub lease_timeout: Duration,

    /// How long after a build finished it still accepts telemetry.
    #[arg(long, env = "FREEAGENT_TELEMETRY_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub telemetry_grace: Duration,

    /// Raw samples and events older than this many days are deleted.
    #[arg(long, env = "FREEAGENT_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// Longest `GET /api/stats` serves the same figures (`0s`: fresh on every request).
    #[arg(long, env = "FREEAGENT_STATS_TTL", default_value = "1s", value_parser = parse_duration)]
    pub stats_ttl: Duration,

    /// Telemetry requests per second per worker, sustained; bursts of twice that.
    #[arg(long, env = "FREEAGENT_TELEMETRY_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub telemetry_rate: u32,

    /// How often the landing page refreshes its counters.
    #[arg(long, env = "FREEAGENT_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,
}

/// Flags of `freeagent purge`.
#[derive(Args, Clone, Debug)]
pub struct PurgeArgs {
    /// Database URL.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Remove raw samples and events received more than this many days ago
    /// (0 removes all of them).
    #[arg(long, env = "FREEAGENT_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
}
