//! Command-line flags of the controller's subcommands, each with an
//! environment fallback (SPEC "Configuration").

use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::Args;

pub use crate::clock::parse_duration;

/// Default database: a SQLite file under `data/`, created when missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/freeagent.db";

/// SPEC's defaults of `freeagent serve`, written once for clap and for
/// [`ServeArgs::new`].
mod defaults {
    pub const LISTEN: &str = "127.0.0.1:3000";
    pub const ONLINE_WINDOW: &str = "120s";
    pub const LEASE_TIMEOUT: &str = "5m";
    pub const TELEMETRY_GRACE: &str = "10m";
    pub const RETENTION_DAYS: u32 = 30;
    pub const STATS_TTL: &str = "1s";
    pub const TELEMETRY_RATE: u32 = 10;
    pub const POLL_INTERVAL: &str = "5s";
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const HEAD_TIMEOUT: &str = "10s";
    pub const BODY_TIMEOUT: &str = "30s";
    pub const IDLE_TIMEOUT: &str = "60s";
}

/// Flags of `freeagent serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Database URL; the file and its folder are created when missing.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Address to listen on.
    #[arg(long, env = "LEPTOS_SITE_ADDR", default_value = defaults::LISTEN)]
    pub listen: std::net::SocketAddr,

    /// Admin key. When none is given, the one in `data/admin.key` is used,
    /// generated there (mode 0600) when missing.
    #[arg(long, env = "FREEAGENT_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// A worker seen within this window counts as online.
    #[arg(long, env = "FREEAGENT_ONLINE_WINDOW", default_value = defaults::ONLINE_WINDOW, value_parser = parse_duration)]
    pub online_window: Duration,

    /// A worker silent this long loses its build back to the queue.
    #[arg(long, env = "FREEAGENT_LEASE_TIMEOUT", default_value = defaults::LEASE_TIMEOUT, value_parser = parse_duration)]
    pub lease_timeout: Duration,

    /// How long after a build finished it still accepts telemetry.
    #[arg(long, env = "FREEAGENT_TELEMETRY_GRACE", default_value = defaults::TELEMETRY_GRACE, value_parser = parse_duration)]
    pub telemetry_grace: Duration,

    /// Raw samples and events older than this many days are deleted.
    #[arg(long, env = "FREEAGENT_RETENTION_DAYS", default_value_t = defaults::RETENTION_DAYS)]
    pub retention_days: u32,

    /// Longest `GET /api/stats` serves the same figures (`0s`: fresh on every request).
    #[arg(long, env = "FREEAGENT_STATS_TTL", default_value = defaults::STATS_TTL, value_parser = parse_duration)]
    pub stats_ttl: Duration,

    /// Telemetry requests per second per worker, sustained; bursts of twice that.
    #[arg(long, env = "FREEAGENT_TELEMETRY_RATE", default_value_t = defaults::TELEMETRY_RATE, value_parser = clap::value_parser!(u32).range(1..))]
    pub telemetry_rate: u32,

    /// How often the landing page refreshes its counters.
    #[arg(long, env = "FREEAGENT_POLL_INTERVAL", default_value = defaults::POLL_INTERVAL, value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Open client connections at most; past it new ones wait until one closes.
    #[arg(long, env = "FREEAGENT_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    pub max_connections: usize,

    /// Longest a client may take to send a whole request head (SPEC
    /// "Connections": 10 s; hidden, for tests).
    #[arg(long, hide = true, default_value = defaults::HEAD_TIMEOUT, value_parser = parse_duration)]
    pub head_timeout: Duration,

    /// Longest a client may take to send a request's body once its head
    /// arrived (SPEC: 30 s; hidden, for tests).
    #[arg(long, hide = true, default_value = defaults::BODY_TIMEOUT, value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Longest a keep-alive connection may sit idle between requests (SPEC:
    /// 60 s; hidden, for tests).
    #[arg(long, hide = true, default_value = defaults::IDLE_TIMEOUT, value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Bearer token that `GET /metrics` (Prometheus) requires. Without one,
    /// `/metrics` answers 404.
    #[arg(long, env = "FREEAGENT_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log shippers.
    #[arg(long, env = "FREEAGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the controller writes its log lines (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target` and the request's span.
    Json,
}

impl ServeArgs {
    /// SPEC's defaults, for a database and an admin key.
    pub fn new(database_url: impl Into<String>, admin_key: impl Into<String>) -> ServeArgs {
        let duration = |text: &str| parse_duration(text).expect("SPEC's defaults parse");
        ServeArgs {
            database_url: database_url.into(),
            listen: defaults::LISTEN
                .parse()
                .expect("SPEC's default address parses"),
            admin_key: Some(admin_key.into()),
            online_window: duration(defaults::ONLINE_WINDOW),
            lease_timeout: duration(defaults::LEASE_TIMEOUT),
            telemetry_grace: duration(defaults::TELEMETRY_GRACE),
            retention_days: defaults::RETENTION_DAYS,
            stats_ttl: duration(defaults::STATS_TTL),
            telemetry_rate: defaults::TELEMETRY_RATE,
            poll_interval: duration(defaults::POLL_INTERVAL),
            max_connections: defaults::MAX_CONNECTIONS,
            head_timeout: duration(defaults::HEAD_TIMEOUT),
            body_timeout: duration(defaults::BODY_TIMEOUT),
            idle_timeout: duration(defaults::IDLE_TIMEOUT),
            metrics_token: None,
            log_format: LogFormat::Text,
        }
    }
}

/// Flags of `freeagent purge`.
#[derive(Args, Clone, Debug)]
pub struct PurgeArgs {
    /// Database URL.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Remove raw samples and events received more than this many days ago
    /// (0 removes all of them).
    #[arg(long, env = "FREEAGENT_RETENTION_DAYS", default_value_t = defaults::RETENTION_DAYS)]
    pub retention_days: u32,
}

/// Flags of `freeagent verify`.
#[derive(Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Database URL (an existing SQLite file, or Postgres); never created.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Rewrite every differing figure from its recomputation, in one
    /// transaction, then exit 0.
    #[arg(long)]
    pub repair: bool,
}

/// Flags of `freeagent backup`.
#[derive(Args, Clone, Debug)]
pub struct BackupArgs {
    /// The copy to write: a new file (an existing one is refused).
    pub file: std::path::PathBuf,

    /// Database URL of the SQLite database to copy.
    #[arg(long, env = "FREEAGENT_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// `ServeArgs::new` and the flags with nothing given agree on every default.
    #[test]
    fn defaults_are_the_same_for_clap_and_new() {
        let parsed = Serve::try_parse_from(["serve", "--admin-key", "k"])
            .map(|s| s.args)
            .expect("defaults parse");
        let built = ServeArgs::new(DEFAULT_DATABASE_URL, "k");
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        assert_eq!(built.online_window, std::time::Duration::from_secs(120));
        // SPEC "Connections".
        assert_eq!(built.max_connections, 10_000);
        assert_eq!(built.head_timeout, std::time::Duration::from_secs(10));
        assert_eq!(built.body_timeout, std::time::Duration::from_secs(30));
        assert_eq!(built.idle_timeout, std::time::Duration::from_secs(60));
    }
}
