//! What `GET /metrics` shows (SPEC "Operations"): this controller's own
//! counters and histograms, and the network's figures.
//!
//! The counters and histograms live in a `metrics-exporter-prometheus`
//! recorder that each controller owns. No recorder is installed globally:
//! the handles are taken from this one, so two controllers in one process
//! (as the integration tests run them) keep separate books.
//!
//! The network's figures are not counted here at all. The scrape renders
//! them from the `NetworkStats` that `/api/stats` serves, so the two always
//! agree, and so do several controllers on one database.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::auth::{bearer_hash, hash_secret};
use crate::error::{AppError, Result};
use crate::stats::NetworkStats;

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between
/// scrapes, so that memory stays bounded when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

const SAMPLES: &str = "freeagent_samples_total";
const RATE_LIMITED: &str = "freeagent_telemetry_rate_limited_total";
const QUEUE_WAIT: &str = "freeagent_queue_wait_seconds";
const BUILD_DURATION: &str = "freeagent_build_duration_seconds";
const REQUEST_DURATION: &str = "freeagent_http_request_duration_seconds";
const WRITER_GROUP_JOBS: &str = "freeagent_sqlite_writer_group_jobs";
const WRITER_COMMIT: &str = "freeagent_sqlite_writer_commit_seconds";

/// HELP of each counter and histogram.
const COUNTERS: [(&str, &str); 2] = [
    (
        SAMPLES,
        "Telemetry samples this controller answered, by outcome (accepted, duplicate, rejected). Per controller.",
    ),
    (
        RATE_LIMITED,
        "Telemetry posts this controller answered 429 (over the worker's rate). Per controller.",
    ),
];
const HISTOGRAMS: [(&str, &str); 5] = [
    (
        QUEUE_WAIT,
        "Time from a build's submission to its first assignment, observed by the controller that assigned it. Per controller.",
    ),
    (
        BUILD_DURATION,
        "completedAt - startedAt of the builds finished through /complete on this controller. Per controller.",
    ),
    (
        REQUEST_DURATION,
        "Time to answer a request, by route template (long polls include their wait). Per controller.",
    ),
    (
        WRITER_GROUP_JOBS,
        "Jobs in each group transaction of the SQLite writer. Per controller.",
    ),
    (
        WRITER_COMMIT,
        "Time of each group transaction of the SQLite writer, from BEGIN to the end of COMMIT. Per controller.",
    ),
];

/// Upper bounds of the histograms' buckets. Queue waits and builds run
/// from seconds to a day; requests and commits from a millisecond or less.
const WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0, 86400.0,
];
const BUILD_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
    43200.0, 86400.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The route label of a request that matched no route (the site's files
/// and the 404 page): one value, so that no path a client makes up adds a
/// series.
const UNMATCHED_ROUTE: &str = "unmatched";

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// This controller's meters and the metrics token. Cheap to clone.
#[derive(Clone)]
pub struct Meters {
    inner: Arc<MetersInner>,
}

struct MetersInner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// SHA-256 of the metrics token; `None`: `/metrics` answers 404.
    token_hash: Option<[u8; 32]>,
    samples_accepted: Counter,
    samples_duplicate: Counter,
    samples_rejected: Counter,
    rate_limited: Counter,
    queue_wait: Histogram,
    build_duration: Histogram,
    writer_group_jobs: Histogram,
    writer_commit: Histogram,
    /// Each route's request-duration histogram, taken from the recorder
    /// once: asking the recorder builds and hashes a labelled key, which
    /// cost three allocations on every request.
    request_durations: RwLock<HashMap<Box<str>, Histogram>>,
}

impl Meters {
    /// Fresh meters; `token` is the metrics token, if one is configured.
    pub fn new(token: Option<&str>) -> Meters {
        let recorder = recorder();
        for (name, help) in COUNTERS {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            recorder.describe_counter(name, None, help);
        }
        for (name, help) in HISTOGRAMS {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            recorder.describe_histogram(name, None, help);
        }
        let samples = |outcome: &'static str| {
            recorder.register_counter(
                &Key::from_parts(SAMPLES, vec![Label::new("outcome", outcome)]),
                &METADATA,
            )
        };
        let histogram = |name: &'static str| {
            recorder.register_histogram(&Key::from_static_name(name), &METADATA)
        };
        let inner = MetersInner {
            samples_accepted: samples("accepted"),
            samples_duplicate: samples("duplicate"),
            samples_rejected: samples("rejected"),
            rate_limited: recorder
                .register_counter(&Key::from_static_name(RATE_LIMITED), &METADATA),
            queue_wait: histogram(QUEUE_WAIT),
            build_duration: histogram(BUILD_DURATION),
            writer_group_jobs: histogram(WRITER_GROUP_JOBS),
            writer_commit: histogram(WRITER_COMMIT),
            request_durations: RwLock::default(),
            token_hash: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(hash_secret),
            handle: recorder.handle(),
            recorder,
        };
        Meters {
            inner: Arc::new(inner),
        }
    }

    /// One telemetry answer's samples.
    pub fn samples(&self, accepted: u64, duplicates: u64, rejected: u64) {
        self.inner.samples_accepted.increment(accepted);
        self.inner.samples_duplicate.increment(duplicates);
        self.inner.samples_rejected.increment(rejected);
    }

    /// A telemetry post answered 429.
    pub fn rate_limited(&self) {
        self.inner.rate_limited.increment(1);
    }

    /// A build's first assignment, `wait_ms` after its submission.
    pub fn first_assignment(&self, wait_ms: i64) {
        self.inner.queue_wait.record(ms_to_seconds(wait_ms));
    }

    /// A build finished after running `duration_ms`.
    pub fn build_finished(&self, duration_ms: i64) {
        self.inner.build_duration.record(ms_to_seconds(duration_ms));
    }

    /// A group transaction of the SQLite writer: how many jobs, how long.
    pub fn writer_group(&self, jobs: usize, took: Duration) {
        self.inner.writer_group_jobs.record(jobs as f64);
        self.inner.writer_commit.record(took.as_secs_f64());
    }

    /// A request answered: its route template (`None`: it matched none).
    pub fn request(&self, route: Option<&str>, took: Duration) {
        let route = route.unwrap_or(UNMATCHED_ROUTE);
        let durations = &self.inner.request_durations;
        let known = durations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
            .cloned();
        let histogram = known.unwrap_or_else(|| {
            let key = Key::from_parts(
                REQUEST_DURATION,
                vec![Label::new("route", route.to_string())],
            );
            let histogram = self.inner.recorder.register_histogram(&key, &METADATA);
            durations
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(route.into(), histogram.clone());
            histogram
        });
        histogram.record(took.as_secs_f64());
    }

    /// Folds recorded histogram samples into their buckets.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Whether the request carries the metrics token: 404 when none is
    /// configured, 401 when it is missing or wrong.
    pub fn authorize(&self, request: &Parts) -> Result<()> {
        let Some(expected) = &self.inner.token_hash else {
            return Err(AppError::NotFound(
                "metrics are off: start the controller with --metrics-token".into(),
            ));
        };
        match bearer_hash(request) {
            Some(given) if same_hash(&given, expected) => Ok(()),
            _ => Err(AppError::Unauthorized),
        }
    }

    /// The exposition: the network's figures (`stats`, and `failed`
    /// builds when known), then this controller's meters.
    pub fn render(&self, stats: &NetworkStats, failed: Option<u64>) -> String {
        let mut out = render_figures(stats, failed);
        out.push_str(&self.inner.handle.render());
        out
    }
}

fn recorder() -> PrometheusRecorder {
    let buckets = [
        (QUEUE_WAIT, WAIT_BUCKETS),
        (BUILD_DURATION, BUILD_BUCKETS),
        (REQUEST_DURATION, REQUEST_BUCKETS),
        (WRITER_GROUP_JOBS, GROUP_BUCKETS),
        (WRITER_COMMIT, COMMIT_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), bounds)
            .expect("every bucket list above has bounds");
    }
    builder.build_recorder()
}

fn ms_to_seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Equality of two hashes in time that does not depend on where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The network's figures in the text format, from the same `NetworkStats`
/// that `/api/stats` serves.
fn render_figures(stats: &NetworkStats, failed: Option<u64>) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        out.push('\n');
    };
    family(
        "freeagent_workers_online",
        "gauge",
        "Workers seen within the online window (nodesOnline of /api/stats).",
        &[("", stats.nodes_online as f64)],
    );
    let mut by_status = vec![
        ("{status=\"pending\"}", stats.builds_queued as f64),
        ("{status=\"active\"}", stats.active_builds as f64),
    ];
    if let Some(failed) = failed {
        let completed = stats.total_builds.saturating_sub(failed);
        by_status.push(("{status=\"completed\"}", completed as f64));
        by_status.push(("{status=\"failed\"}", failed as f64));
    }
    family(
        "freeagent_builds",
        "gauge",
        "Builds by status: pending (buildsQueued), active (assigned or building: activeBuilds), completed and failed.",
        &by_status,
    );
    family(
        "freeagent_cpu_cores_busy",
        "gauge",
        "Cores busy with active builds, from their newest fresh sample (cpuCoresBusy of /api/stats).",
        &[("", stats.cpu_cores_busy)],
    );
    family(
        "freeagent_builds_finished_total",
        "counter",
        "Builds completed or failed, ever (totalBuilds of /api/stats).",
        &[("", stats.total_builds as f64)],
    );
    if let Some(failed) = failed {
        family(
            "freeagent_builds_failed_total",
            "counter",
            "Builds failed, ever (the sum of /api/stats/daily buildsFailed).",
            &[("", failed as f64)],
        );
    }
    family(
        "freeagent_builds_finished_today",
        "gauge",
        "Builds finished since 00:00 UTC today (buildsToday of /api/stats).",
        &[("", stats.builds_today as f64)],
    );
    family(
        "freeagent_build_time_seconds_total",
        "counter",
        "Sum of completedAt - startedAt over finished builds (totalBuildTimeMs of /api/stats, in seconds).",
        &[("", ms_to_seconds(stats.total_build_time_ms))],
    );
    family(
        "freeagent_cpu_seconds_total",
        "counter",
        "CPU seconds of every build, running ones too (totalCpuSeconds of /api/stats); an attempt's first cpuTimeS sample may lower it.",
        &[("", stats.total_cpu_seconds)],
    );
    out
}

/// Middleware: times each request under its route template (axum's
/// `MatchedPath`, never the raw path, so the series stay few).
pub async fn time_requests(State(meters): State<Meters>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    meters.request(route.as_ref().map(MatchedPath::as_str), started.elapsed());
    response
}

/// Folds histogram samples into buckets every [`UPKEEP_EVERY`], for as long
/// as the controller runs.
pub async fn run_upkeep(meters: Meters) {
    let mut ticks = tokio::time::interval(UPKEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        meters.upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::AUTHORIZATION;

    /// A request's head with this `Authorization` header, if any.
    fn request(authorization: Option<&str>) -> Parts {
        let mut builder = axum::http::Request::builder().uri("/metrics");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    /// No token configured: 404; a wrong or missing one: 401.
    #[test]
    fn the_token_gates_the_exposition() {
        let off = Meters::new(None);
        assert!(matches!(
            off.authorize(&request(None)),
            Err(AppError::NotFound(_))
        ));
        let token = "a-metrics-token-of-enough-length";
        let on = Meters::new(Some(token));
        assert!(on
            .authorize(&request(Some(&format!("Bearer {token}"))))
            .is_ok());
        assert!(matches!(
            on.authorize(&request(Some("Bearer nope"))),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            on.authorize(&request(None)),
            Err(AppError::Unauthorized)
        ));
        assert!(!same_hash(&hash_secret("a"), &hash_secret("b")));
    }

    /// Each meter shows under its name; histograms count what they saw.
    #[test]
    fn meters_render_with_their_names() {
        let meters = Meters::new(None);
        meters.samples(3, 1, 2);
        meters.rate_limited();
        meters.first_assignment(1_500);
        meters.build_finished(60_000);
        meters.writer_group(4, Duration::from_millis(2));
        meters.request(Some("/api/stats"), Duration::from_millis(1));
        let text = meters.render(&NetworkStats::default(), Some(0));
        for line in [
            "freeagent_samples_total{outcome=\"accepted\"} 3",
            "freeagent_samples_total{outcome=\"duplicate\"} 1",
            "freeagent_samples_total{outcome=\"rejected\"} 2",
            "freeagent_telemetry_rate_limited_total 1",
            "freeagent_queue_wait_seconds_count 1",
            "freeagent_build_duration_seconds_count 1",
            "freeagent_sqlite_writer_group_jobs_count 1",
            "freeagent_sqlite_writer_commit_seconds_count 1",
            "freeagent_http_request_duration_seconds_count{route=\"/api/stats\"} 1",
            "freeagent_builds_finished_total 0",
            "# TYPE freeagent_queue_wait_seconds histogram",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }
}
