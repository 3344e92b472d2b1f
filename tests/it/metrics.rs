//! `GET /metrics` (SPEC "Operations"): the token gates it, the exposition
//! names every metric SPEC lists, and where a metric and `/api/stats` say
//! the same thing, they agree. A real Prometheus scraping it is
//! `prometheus.rs`.

use std::collections::BTreeMap;

use reqwest::StatusCode;

use crate::common::*;

/// A metrics token as long as the controller asks for.
pub const METRICS_TOKEN: &str = "metrics-token-for-the-tests-0123456789";

/// A controller with the metrics token set, and a telemetry rate of 1
/// request/s per worker (bursts of 2), so that going over it does not
/// depend on how fast the machine is.
pub async fn metered_app() -> TestApp {
    TestApp::builder()
        .with_args(|a| {
            a.metrics_token = Some(METRICS_TOKEN.to_string());
            a.telemetry_rate = 1;
        })
        .start()
        .await
}

/// `GET /metrics` with the token: the exposition's text.
pub async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics", Some(METRICS_TOKEN)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = content_type(&response);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "the text format's content type, got {content_type}"
    );
    response.text().await.expect("exposition")
}

/// Every sample of an exposition by its series (`name{labels}`).
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line is `series value`: {line}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("a sample's value is a number: {line}"));
            (series.to_string(), value)
        })
        .collect()
}

/// The value of one series; panics naming it when it is missing.
pub fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no `{series}` in the exposition: {samples:#?}"))
}

/// What [`traffic`] did, as the metrics must count it.
#[derive(Debug)]
pub struct Traffic {
    /// Builds assigned for the first time (a requeued build counts once).
    pub first_assignments: u64,
    /// Builds finished through `/complete` (repeats not counted).
    pub completed_by_workers: u64,
    pub samples_accepted: u64,
    pub samples_duplicate: u64,
    pub samples_rejected: u64,
    /// Telemetry posts answered 429.
    pub rate_limited: u64,
    /// A worker and its build left running, for more traffic.
    pub runner: (Worker, i64),
}

/// A bit of everything: builds completed, failed, released and claimed
/// again, running and queued; samples accepted, replayed and rejected;
/// telemetry over the rate limit.
pub async fn traffic(app: &TestApp) -> Traffic {
    let (a, b) = (linux_worker(app).await, linux_worker(app).await);
    let now = now_ms();

    let ok = app.running_build(&a, LINUX).await;
    let first = [
        sample(1, now, 150.0, 512.0),
        sample(2, now + 1, 200.0, 600.0),
    ];
    app.send_ok(&a, ok.id, &first).await;
    // A replay of seq 2 and a sample over the worker's 4 cores.
    let (status, answer) = app
        .send(
            &a,
            ok.id,
            &[first[1].clone(), sample(3, now + 2, 1000.0, 1.0)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        (answer.accepted, answer.duplicates, answer.rejected.len()),
        (0, 1, 1)
    );
    assert_eq!(app.complete(&a, ok.id, true).await, StatusCode::OK);
    assert_eq!(
        app.complete(&a, ok.id, true).await,
        StatusCode::OK,
        "a repeated complete is 200 and changes nothing"
    );

    let failing = app.running_build(&b, LINUX).await;
    app.send_ok(&b, failing.id, &[sample(1, now, 50.0, 100.0)])
        .await;
    assert_eq!(app.complete(&b, failing.id, false).await, StatusCode::OK);

    // Released by one worker and claimed again by the other: attempt 2 is
    // not a first assignment.
    let handed = app.assigned_build(&a, LINUX).await;
    assert_eq!(app.release(&a, handed.id).await, StatusCode::OK);
    let again = app.claim(&b).await.expect("the released build");
    assert_eq!((again.id, again.attempt), (handed.id, 2));
    assert_eq!(app.start_build(&b, handed.id).await, StatusCode::OK);
    app.send_ok(&b, handed.id, &[sample(1, now_ms(), 120.0, 300.0)])
        .await;

    app.submit_build(LINUX).await;

    // A third worker posts faster than its rate (1/s, bursts of 2): all
    // but 2 of its 10 posts are answered 429, less one for each second
    // they took. (Each other worker posts at most twice.)
    let eager = linux_worker(app).await;
    let mut rate_limited = 0;
    for _ in 0..10 {
        let (status, _) = app
            .telemetry(&eager, ok.id, &batch(&[sample(1, now, 1.0, 1.0)]))
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            rate_limited += 1;
        }
    }
    assert!(rate_limited > 0, "10 posts at once go over a rate of 1/s");

    Traffic {
        first_assignments: 3,
        completed_by_workers: 2,
        samples_accepted: 4,
        samples_duplicate: 1,
        samples_rejected: 1,
        rate_limited,
        runner: (b, handed.id),
    }
}

/// No metrics token configured: `/metrics` does not exist (404, the usual
/// error body), with or without a bearer secret.
#[tokio::test]
async fn metrics_answer_404_without_a_token_configured() {
    let app = TestApp::start().await;
    let body = expect_error(app.get("/metrics", None).await, StatusCode::NOT_FOUND).await;
    assert_eq!(body.code, "not_found");
    expect_error(
        app.get("/metrics", Some(METRICS_TOKEN)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

/// A missing or wrong token is 401 with the usual error body, the admin key
/// included; the token itself gets the exposition with every metric SPEC
/// lists, each with its HELP and TYPE.
#[tokio::test]
async fn metrics_need_the_metrics_token() {
    let app = metered_app().await;
    for secret in [
        None,
        Some("wrong-token-of-the-same-length-0123456"),
        Some(ADMIN_KEY),
    ] {
        let body = expect_error(app.get("/metrics", secret).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body.code, "unauthorized");
    }
    let text = scrape(&app).await;
    for name in [
        "freeagent_workers_online",
        "freeagent_builds",
        "freeagent_cpu_cores_busy",
        "freeagent_builds_finished_total",
        "freeagent_builds_failed_total",
        "freeagent_cpu_seconds_total",
        "freeagent_samples_total",
        "freeagent_telemetry_rate_limited_total",
        "freeagent_queue_wait_seconds",
        "freeagent_build_duration_seconds",
        "freeagent_http_request_duration_seconds",
        "freeagent_sqlite_writer_group_jobs",
        "freeagent_sqlite_writer_commit_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} ")),
            "`{name}` with HELP and TYPE in:\n{text}"
        );
    }
}

/// After traffic of every kind, each metric that `/api/stats` also shows
/// has its value, and this controller's counters and histograms count
/// exactly what happened. Request latency is labelled by route template,
/// never by a raw path.
#[tokio::test]
async fn metrics_agree_with_api_stats_after_traffic() {
    let app = metered_app().await;
    let done = traffic(&app).await;
    let stats = app.stats().await;
    let text = scrape(&app).await;
    let got = samples(&text);
    let figures = [
        ("freeagent_workers_online", stats.nodes_online as f64),
        (
            "freeagent_builds{status=\"pending\"}",
            stats.builds_queued as f64,
        ),
        (
            "freeagent_builds{status=\"active\"}",
            stats.active_builds as f64,
        ),
        ("freeagent_builds{status=\"completed\"}", 1.0),
        ("freeagent_builds{status=\"failed\"}", 1.0),
        ("freeagent_builds_finished_total", stats.total_builds as f64),
        ("freeagent_builds_failed_total", 1.0),
        ("freeagent_builds_finished_today", stats.builds_today as f64),
        ("freeagent_cpu_cores_busy", stats.cpu_cores_busy),
        ("freeagent_cpu_seconds_total", stats.total_cpu_seconds),
        (
            "freeagent_build_time_seconds_total",
            stats.total_build_time_ms as f64 / 1000.0,
        ),
    ];
    for (series, expected) in figures {
        assert_eq!(
            value(&got, series),
            expected,
            "{series} vs /api/stats {stats:?}"
        );
    }
    assert_eq!(
        (
            stats.total_builds,
            stats.builds_queued,
            stats.active_builds,
            stats.nodes_online
        ),
        (2, 1, 1, 3),
        "the traffic left 2 finished, 1 queued, 1 running, 3 workers"
    );
    let counted = [
        (
            "freeagent_samples_total{outcome=\"accepted\"}",
            done.samples_accepted,
        ),
        (
            "freeagent_samples_total{outcome=\"duplicate\"}",
            done.samples_duplicate,
        ),
        (
            "freeagent_samples_total{outcome=\"rejected\"}",
            done.samples_rejected,
        ),
        ("freeagent_telemetry_rate_limited_total", done.rate_limited),
        ("freeagent_queue_wait_seconds_count", done.first_assignments),
        (
            "freeagent_build_duration_seconds_count",
            done.completed_by_workers,
        ),
    ];
    for (series, expected) in counted {
        assert_eq!(value(&got, series), expected as f64, "{series}");
    }
    let telemetry_route =
        "freeagent_http_request_duration_seconds_count{route=\"/api/builds/{id}/telemetry\"}";
    assert!(value(&got, telemetry_route) >= 10.0);
    assert!(
        !text.contains("route=\"/api/builds/1"),
        "no raw path becomes a label:\n{text}"
    );
    if backend() == Backend::Sqlite {
        assert!(value(&got, "freeagent_sqlite_writer_group_jobs_count") > 0.0);
        assert!(value(&got, "freeagent_sqlite_writer_commit_seconds_count") > 0.0);
    }
}
