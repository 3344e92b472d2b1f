//! The figures: `GET /api/stats` (`NetworkStats`, its TTL, cpuCoresBusy,
//! nodesOnline and the online window), `GET /api/stats/daily`, and the
//! Leptos server functions that serve the same figures.

use std::time::Duration;

use crate::common::*;
use freeagent::wire::BuildView;
use reqwest::StatusCode;
use serde_json::Value;

/// A fresh network shows zeros, `demo` false and a current `generatedAt`.
#[tokio::test]
async fn empty_network_has_zero_figures() {
    let app = TestApp::start().await;
    let before = now_ms();
    let stats = app.stats().await;
    let after = now_ms();
    assert_eq!(
        figures(&stats),
        freeagent::stats::NetworkStats::default(),
        "every figure of an empty network is zero"
    );
    assert!(
        (before - 5..=after + 5).contains(&stats.generated_at),
        "generatedAt {} not between {before} and {after}",
        stats.generated_at
    );
    let raw: Value = expect_json(app.get("/api/stats", None).await, StatusCode::OK).await;
    for key in [
        "nodesOnline",
        "buildsQueued",
        "activeBuilds",
        "buildsToday",
        "totalBuilds",
        "totalBuildTimeMs",
        "totalCpuSeconds",
        "cpuCoresBusy",
        "queueWaitP50Ms",
        "queueWaitP95Ms",
        "generatedAt",
        "demo",
    ] {
        assert!(
            raw.get(key).is_some(),
            "NetworkStats JSON lacks {key}: {raw}"
        );
    }
}

/// The Leptos server functions are public endpoints serving the same one
/// `NetworkStats` type and daily list as the REST routes; a bad `days` is a
/// client error, never a 500.
#[tokio::test]
async fn server_functions_serve_the_same_figures() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    app.send_ok(&worker, claimed.id, &[sample(1, now_ms(), 120.0, 64.0)])
        .await;
    assert_eq!(
        app.complete(&worker, claimed.id, true).await,
        StatusCode::OK
    );
    let form = "application/x-www-form-urlencoded";
    let response = app
        .post_raw("/sfn/network_stats", None, Some(form), "")
        .await;
    let from_fn: freeagent::stats::NetworkStats = expect_json(response, StatusCode::OK).await;
    assert_eq!(figures(&from_fn), figures(&app.stats().await));
    let response = app
        .post_raw("/sfn/daily_builds", None, Some(form), "days=7")
        .await;
    let days: Vec<freeagent::stats::DailyBuilds> = expect_json(response, StatusCode::OK).await;
    assert_eq!(days, app.daily(7).await);
    let mut server_errors = Vec::new();
    for body in ["days=0", "days=366", "days=abc", "days=-1"] {
        let status = app
            .post_raw("/sfn/daily_builds", None, Some(form), body)
            .await
            .status();
        if !status.is_client_error() {
            server_errors.push(format!("daily_builds {body:?}: {status}"));
        }
    }
    assert!(server_errors.is_empty(), "{server_errors:#?}");
    // Like the REST route, no `days` means 30.
    let response = app
        .post_raw("/sfn/daily_builds", None, Some(form), "")
        .await;
    let days: Vec<freeagent::stats::DailyBuilds> = expect_json(response, StatusCode::OK).await;
    assert_eq!(days.len(), 30);
}

/// `GET /api/stats` serves figures at most `--stats-ttl` old: every answer's
/// generatedAt is within the TTL of the request, and a change shows once the
/// TTL has passed.
#[tokio::test]
async fn stats_are_at_most_stats_ttl_old() {
    let app = TestApp::builder()
        .with_args(|a| a.stats_ttl = Duration::from_millis(500))
        .start()
        .await;
    assert_eq!(app.stats().await.builds_queued, 0);
    app.submit_build(LINUX).await;
    let deadline = now_ms() + 1200;
    while now_ms() < deadline {
        let asked = now_ms();
        let stats = app.stats().await;
        assert!(
            stats.generated_at >= asked - 500 - 5,
            "figures {} ms old with a 500 ms TTL",
            asked - stats.generated_at
        );
        if stats.generated_at > asked {
            assert_eq!(stats.builds_queued, 1, "fresh figures show the build");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.stats().await.builds_queued, 1);
}

/// cpuCoresBusy sums, over active builds, the newest (largest sampledAt)
/// sample's cpuPercent/100 when under 30 s old; finished builds and stale
/// samples do not count.
#[tokio::test]
async fn cpu_cores_busy_uses_newest_fresh_sample() {
    let app = TestApp::start().await;
    let worker = app.register_worker(&[LINUX], 8, 16_384).await;
    let busy = app.running_build(&worker, LINUX).await;
    let stale = app.running_build(&worker, LINUX).await;
    let finished = app.running_build(&worker, LINUX).await;
    let now = now_ms();
    app.send_ok(&worker, busy.id, &[sample(1, now - 1000, 250.0, 10.0)])
        .await;
    app.send_ok(&worker, busy.id, &[sample(2, now - 5000, 50.0, 10.0)])
        .await;
    app.send_ok(&worker, stale.id, &[sample(1, now - 35_000, 100.0, 10.0)])
        .await;
    app.send_ok(&worker, finished.id, &[sample(1, now, 300.0, 10.0)])
        .await;
    assert!((app.stats().await.cpu_cores_busy - 5.5).abs() < 1e-9);
    assert_eq!(
        app.complete(&worker, finished.id, true).await,
        StatusCode::OK
    );
    assert!((app.stats().await.cpu_cores_busy - 2.5).abs() < 1e-9);
}

/// nodesOnline counts from a worker's *last* call: a worker that called
/// 1.6 s ago is online in a 2 s window even if it also called 0.5 s before
/// that.
#[tokio::test]
async fn nodes_online_counts_from_the_last_call() {
    let app = TestApp::builder()
        .with_args(|a| a.online_window = Duration::from_secs(2))
        .start()
        .await;
    let worker = linux_worker(&app).await;
    assert_eq!(app.heartbeat(&worker).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.heartbeat(&worker).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        app.stats().await.nodes_online,
        1,
        "the last call was 1.6 s ago, inside the 2 s window"
    );
}

/// nodesOnline counts workers registered or seen (any authenticated call)
/// within the online window, on every request when stats-ttl is 0.
#[tokio::test]
async fn nodes_online_follows_the_online_window() {
    let app = TestApp::builder()
        .with_args(|a| a.online_window = Duration::from_secs(1))
        .start()
        .await;
    let first = linux_worker(&app).await;
    let second = linux_worker(&app).await;
    assert_eq!(app.stats().await.nodes_online, 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(app.stats().await.nodes_online, 0);
    assert_eq!(app.heartbeat(&first).await, StatusCode::OK);
    assert_eq!(app.stats().await.nodes_online, 1);
    assert!(app.claim(&second).await.is_none());
    assert_eq!(app.stats().await.nodes_online, 2);
}

/// `days` must be 1..=365: 0 and 366 are 422, a non-number is 400; the
/// default is 30 consecutive days ending today, oldest first, zeros included.
#[tokio::test]
async fn daily_days_bounds_and_zeros() {
    let app = TestApp::start().await;
    for days in ["0", "366", "100000", "-1"] {
        expect_error(
            app.get(&format!("/api/stats/daily?days={days}"), None)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    for days in ["abc", "1.5"] {
        expect_error(
            app.get(&format!("/api/stats/daily?days={days}"), None)
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let default: Vec<freeagent::stats::DailyBuilds> =
        expect_json(app.get("/api/stats/daily", None).await, StatusCode::OK).await;
    assert_eq!(default.len(), 30);
    let year = app.daily(365).await;
    assert_eq!(year.len(), 365);
    let today_label = rfc3339(now_ms() / 1000)[..10].to_string();
    assert_eq!(year.last().unwrap().day, today_label);
    assert_eq!(default.last().unwrap().day, today_label);
    let days: Vec<time::Date> = year
        .iter()
        .map(|d| {
            time::Date::parse(
                &d.day,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .unwrap()
        })
        .collect();
    for pair in days.windows(2) {
        assert_eq!(pair[0].next_day(), Some(pair[1]), "consecutive days");
    }
    assert!(year.iter().all(|d| d.builds_finished == 0
        && d.builds_failed == 0
        && d.build_time_ms == 0
        && d.cpu_seconds == 0.0));
    assert_eq!(app.daily(1).await.len(), 1);
}

/// Builds count on the UTC day they finished, with their build time and
/// CPU seconds (telemetry arriving in the grace period included); cancelled
/// builds do not count.
#[tokio::test]
async fn daily_counts_finished_builds_on_their_day() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let ok = app.running_build(&worker, LINUX).await;
    let bad = app.running_build(&worker, LINUX).await;
    let cancelled = app.running_build(&worker, LINUX).await;
    let now = now_ms();
    app.send_ok(&worker, ok.id, &[sample(1, now, 100.0, 10.0)])
        .await;
    app.send_ok(&worker, cancelled.id, &[sample(1, now, 100.0, 10.0)])
        .await;
    assert_eq!(app.complete(&worker, ok.id, true).await, StatusCode::OK);
    assert_eq!(app.complete(&worker, bad.id, false).await, StatusCode::OK);
    assert_eq!(app.cancel(cancelled.id, ADMIN_KEY).await, StatusCode::OK);
    app.send_ok(&worker, bad.id, &[sample(1, now, 200.0, 10.0)])
        .await;

    let time_of = |v: &BuildView| v.completed_at.unwrap() - v.started_at.unwrap();
    let build_time = time_of(&app.build(ok.id).await) + time_of(&app.build(bad.id).await);
    let week = app.daily(7).await;
    assert_eq!(week.len(), 7);
    let today = week.last().unwrap();
    assert_eq!(today.builds_finished, 2);
    assert_eq!(today.builds_failed, 1);
    assert_eq!(today.build_time_ms, build_time);
    assert_eq!(today.cpu_seconds, 15.0, "5 s + 10 s of late telemetry");
    let stats = app.stats().await;
    assert_eq!(
        stats.total_cpu_seconds, 20.0,
        "the cancelled build's CPU counts in the total"
    );
    assert_eq!(stats.total_build_time_ms, build_time);
}
