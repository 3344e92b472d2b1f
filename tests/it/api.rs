//! The REST contract of SPEC, route by route: success paths, every status
//! code with its exact trigger, field limits, auth, telemetry validation,
//! idempotency, the lease reaper, the daily route and retention.

use std::time::Duration;

use crate::common::*;
use freeagent::stats::NetworkStats;
use freeagent::wire::{BuildView, Snapshot, TelemetryAnswer};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LINUX: &str = "linux";

async fn linux_worker(app: &TestApp) -> Worker {
    app.register_worker(&[LINUX], 4, 8192).await
}

/// Polls `check` every 100 ms until it returns `Some`, at most `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- success paths

/// `GET /healthz` answers 200 `{"status":"ok"}` when the database answers.
#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::start().await;
    let body: Value = expect_json(app.get("/healthz", None).await, StatusCode::OK).await;
    assert_eq!(body, json!({"status": "ok"}));
}

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
        "generatedAt",
        "demo",
    ] {
        assert!(
            raw.get(key).is_some(),
            "NetworkStats JSON lacks {key}: {raw}"
        );
    }
}

/// The landing page at `/` renders through the Leptos app (200 HTML).
#[tokio::test]
async fn landing_page_renders() {
    let app = TestApp::start().await;
    let response = app.get("/", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = response.text().await.unwrap();
    assert!(html.contains("<html"), "{html}");
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

/// Registering answers 201 `{workerId, token}` and the worker counts as online.
#[tokio::test]
async fn register_returns_id_and_token_and_worker_is_online() {
    let app = TestApp::start().await;
    let response = app
        .post_json(
            "/api/workers/register",
            Some(ADMIN_KEY),
            &json!({"name": "mac-mini", "platforms": ["macos", "ios"], "cpuCores": 8, "memoryMb": 16384}),
        )
        .await;
    let body: Value = expect_json(response, StatusCode::CREATED).await;
    assert!(body["workerId"].is_i64(), "{body}");
    assert!(
        body["token"].as_str().is_some_and(|t| t.len() >= 16),
        "{body}"
    );
    let other = app.register_worker(&[LINUX], 2, 1024).await;
    assert_ne!(Some(other.id), body["workerId"].as_i64());
    assert_eq!(app.stats().await.nodes_online, 2);
}

/// Worker tokens, build tokens and the admin key never reach the database
/// in plain text; tokens are kept as their SHA-256.
#[tokio::test]
async fn secrets_are_stored_only_as_hashes() {
    use sha2::{Digest, Sha256};
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    let pool = app.db().await;
    let worker_hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM workers WHERE id = ?")
        .bind(worker.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        worker_hash,
        Sha256::digest(worker.token.as_bytes()).to_vec()
    );
    let build_hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM builds WHERE id = ?")
        .bind(build.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        build_hash,
        Sha256::digest(build.access_token.as_bytes()).to_vec()
    );
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(app.dir()).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    for secret in [
        worker.token.as_str(),
        build.access_token.as_str(),
        ADMIN_KEY,
    ] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is stored in plain text"
        );
    }
}

/// A heartbeat answers 200 `{serverTime}` from the controller's clock.
#[tokio::test]
async fn heartbeat_returns_server_time() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let before = now_ms();
    let body: Value = expect_json(
        app.post_empty("/api/workers/heartbeat", Some(&worker.token))
            .await,
        StatusCode::OK,
    )
    .await;
    let server_time = body["serverTime"].as_i64().expect("serverTime integer");
    assert!((before - 5..=now_ms() + 5).contains(&server_time), "{body}");
}

/// Submitting answers 201 `{id, status:"pending", submittedAt, accessToken}`
/// (unknown fields ignored); the build is queued and readable with the admin
/// key and its own token.
#[tokio::test]
async fn submit_returns_pending_build_readable_by_admin_and_token() {
    let app = TestApp::start().await;
    let before = now_ms();
    let response = app
        .post_json(
            "/api/builds",
            Some(ADMIN_KEY),
            &json!({"platform": "linux", "label": "release 1.2", "priority": "ignored"}),
        )
        .await;
    let body: Value = expect_json(response, StatusCode::CREATED).await;
    let id = body["id"].as_i64().expect("id");
    assert_eq!(body["status"], "pending");
    let submitted_at = body["submittedAt"].as_i64().expect("submittedAt");
    assert!((before - 5..=now_ms() + 5).contains(&submitted_at));
    let token = body["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_string();
    assert_eq!(app.stats().await.builds_queued, 1);

    for secret in [ADMIN_KEY, token.as_str()] {
        let view: BuildView = expect_json(
            app.get(&format!("/api/builds/{id}"), Some(secret)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(view.id, id);
        assert_eq!(view.status, "pending");
        assert_eq!(view.platform, "linux");
        assert_eq!(view.label.as_deref(), Some("release 1.2"));
        assert_eq!(view.worker_id, None);
        assert_eq!(view.attempt, 1);
        assert_eq!(view.submitted_at, submitted_at);
        assert_eq!(
            (view.started_at, view.completed_at, view.error.clone()),
            (None, None, None)
        );
        assert_eq!(build_figures(&view), (0.0, None, 0));
    }
    let raw: Value = expect_json(
        app.get(&format!("/api/builds/{id}"), Some(ADMIN_KEY)).await,
        StatusCode::OK,
    )
    .await;
    for key in [
        "id",
        "status",
        "platform",
        "label",
        "workerId",
        "attempt",
        "submittedAt",
        "startedAt",
        "completedAt",
        "error",
        "cpuSeconds",
        "peakMemoryMb",
        "snapshotCount",
    ] {
        assert!(raw.get(key).is_some(), "build JSON lacks {key}: {raw}");
    }
}

/// Poll claims the oldest pending build of a platform the worker declared,
/// then 204 when none is left; other platforms stay queued.
#[tokio::test]
async fn poll_claims_oldest_matching_build_then_204() {
    let app = TestApp::start().await;
    let worker = app.register_worker(&[LINUX, "android"], 4, 8192).await;
    let mac = app.submit_build("macos").await;
    let first = app.submit_labelled(LINUX, "first").await;
    let second = app.submit_build("android").await;

    let claimed = app.claim(&worker).await.expect("a build");
    assert_eq!(claimed.id, first.id);
    assert_eq!(claimed.platform, LINUX);
    assert_eq!(claimed.label.as_deref(), Some("first"));
    assert_eq!(claimed.attempt, 1);
    let claimed = app.claim(&worker).await.expect("a build");
    assert_eq!(claimed.id, second.id);
    assert_eq!(claimed.label, None);
    assert!(app.claim(&worker).await.is_none(), "204 when none is left");

    let view = app.build(first.id).await;
    assert_eq!(view.status, "assigned");
    assert_eq!(view.worker_id, Some(worker.id));
    assert_eq!(app.build(mac.id).await.status, "pending");
    let stats = app.stats().await;
    assert_eq!((stats.builds_queued, stats.active_builds), (1, 2));
}

/// The whole lifecycle with telemetry: each step stamps its time, and the
/// finished build counts in totalBuilds, totalBuildTimeMs, buildsToday, daily.
#[tokio::test]
async fn full_lifecycle_updates_every_figure() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.assigned_build(&worker, LINUX).await;
    assert_eq!(app.build(claimed.id).await.status, "assigned");

    let before_start = now_ms();
    assert_eq!(app.start_build(&worker, claimed.id).await, StatusCode::OK);
    let view = app.build(claimed.id).await;
    assert_eq!(view.status, "building");
    let started_at = view.started_at.expect("startedAt");
    assert!(started_at >= before_start - 5);
    assert_eq!(app.stats().await.active_builds, 1);

    let now = now_ms();
    app.send_ok(
        &worker,
        claimed.id,
        &[
            sample(1, now - 2000, 150.0, 900.0),
            sample(2, now, 50.0, 1200.0),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        app.complete(&worker, claimed.id, true).await,
        StatusCode::OK
    );
    let view = app.build(claimed.id).await;
    assert_eq!(view.status, "completed");
    assert_eq!(view.error, None);
    let completed_at = view.completed_at.expect("completedAt");
    assert!(completed_at >= started_at);
    assert_eq!(build_figures(&view), (10.0, Some(1200.0), 2));

    let stats = app.stats().await;
    assert_eq!(stats.total_builds, 1);
    assert_eq!(stats.builds_today, 1);
    assert_eq!(stats.active_builds, 0);
    assert_eq!(stats.total_build_time_ms, completed_at - started_at);
    assert_eq!(stats.total_cpu_seconds, 10.0);
    assert_eq!(stats.cpu_cores_busy, 0.0, "a finished build is not busy");
    let today = app.daily(1).await;
    assert_eq!(today.len(), 1);
    assert_eq!(today[0].builds_finished, 1);
    assert_eq!(today[0].builds_failed, 0);
    assert_eq!(today[0].build_time_ms, completed_at - started_at);
    assert_eq!(today[0].cpu_seconds, 10.0);
}

/// `complete` with `success:false` fails the build with its error; it counts
/// as finished and as failed on the day.
#[tokio::test]
async fn failed_build_keeps_its_error_and_counts() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let response = app
        .post_json(
            &format!("/api/builds/{}/complete", claimed.id),
            Some(&worker.token),
            &json!({"success": false, "error": "linker ran out of memory"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let view = app.build(claimed.id).await;
    assert_eq!(view.status, "failed");
    assert_eq!(view.error.as_deref(), Some("linker ran out of memory"));
    let stats = app.stats().await;
    assert_eq!((stats.total_builds, stats.builds_today), (1, 1));
    let today = app.daily(1).await;
    assert_eq!((today[0].builds_finished, today[0].builds_failed), (1, 1));
}

/// Repeating start, complete or cancel in the state it leads to is 200 and
/// changes nothing (times and figures stay).
#[tokio::test]
async fn repeated_transitions_are_noops() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let started = app.build(claimed.id).await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(app.start_build(&worker, claimed.id).await, StatusCode::OK);
    assert_eq!(
        app.build(claimed.id).await,
        started,
        "repeated start changes nothing"
    );

    assert_eq!(
        app.complete(&worker, claimed.id, true).await,
        StatusCode::OK
    );
    let completed = app.build(claimed.id).await;
    let stats = figures(&app.stats().await);
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(
        app.complete(&worker, claimed.id, true).await,
        StatusCode::OK
    );
    assert_eq!(
        app.build(claimed.id).await,
        completed,
        "repeated complete changes nothing"
    );
    assert_eq!(figures(&app.stats().await), stats);

    let pending = app.submit_build(LINUX).await;
    assert_eq!(app.cancel(pending.id, ADMIN_KEY).await, StatusCode::OK);
    let cancelled = app.build(pending.id).await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    assert_eq!(
        app.cancel(pending.id, &pending.access_token).await,
        StatusCode::OK
    );
    assert_eq!(
        app.build(pending.id).await,
        cancelled,
        "repeated cancel changes nothing"
    );
}

/// Transitions the state does not allow are 409 with an error body, and
/// change nothing: start or cancel a completed build, complete it with the
/// other outcome, complete a build that was never started, start or complete
/// a cancelled build.
#[tokio::test]
async fn disallowed_transitions_are_409() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let done = app.running_build(&worker, LINUX).await;
    assert_eq!(app.complete(&worker, done.id, true).await, StatusCode::OK);
    let done_view = app.build(done.id).await;
    let stats = figures(&app.stats().await);

    let start = app
        .post_empty(
            &format!("/api/builds/{}/start", done.id),
            Some(&worker.token),
        )
        .await;
    expect_error(start, StatusCode::CONFLICT).await;
    let fail = app
        .post_json(
            &format!("/api/builds/{}/complete", done.id),
            Some(&worker.token),
            &json!({"success": false, "error": "late"}),
        )
        .await;
    expect_error(fail, StatusCode::CONFLICT).await;
    let cancel = app
        .post_empty(&format!("/api/builds/{}/cancel", done.id), Some(ADMIN_KEY))
        .await;
    expect_error(cancel, StatusCode::CONFLICT).await;
    assert_eq!(app.build(done.id).await, done_view);
    assert_eq!(figures(&app.stats().await), stats);

    let not_started = app.assigned_build(&worker, LINUX).await;
    assert_eq!(
        app.complete(&worker, not_started.id, true).await,
        StatusCode::CONFLICT,
        "assigned -> completed skips `building`"
    );
    assert_eq!(app.build(not_started.id).await.status, "assigned");

    let cancelled = app.running_build(&worker, LINUX).await;
    assert_eq!(app.cancel(cancelled.id, ADMIN_KEY).await, StatusCode::OK);
    assert_eq!(
        app.start_build(&worker, cancelled.id).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.complete(&worker, cancelled.id, true).await,
        StatusCode::CONFLICT
    );
    assert_eq!(app.build(cancelled.id).await.status, "cancelled");
}

/// Cancel works from pending, assigned and building, with the admin key or
/// the build's token; a cancelled build is stamped, never claimed, and not
/// counted as finished.
#[tokio::test]
async fn cancel_from_each_open_state() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let assigned = app.assigned_build(&worker, LINUX).await;
    let building = app.running_build(&worker, LINUX).await;
    let pending = app.submit_build(LINUX).await;
    assert_eq!(
        figures(&app.stats().await),
        freeagent::stats::NetworkStats {
            nodes_online: 1,
            builds_queued: 1,
            active_builds: 2,
            ..Default::default()
        }
    );

    let before = now_ms();
    assert_eq!(
        app.cancel(pending.id, &pending.access_token).await,
        StatusCode::OK
    );
    assert_eq!(
        app.cancel(assigned.id, &assigned.access_token).await,
        StatusCode::OK
    );
    assert_eq!(app.cancel(building.id, ADMIN_KEY).await, StatusCode::OK);
    for id in [pending.id, assigned.id, building.id] {
        let view = app.build(id).await;
        assert_eq!(view.status, "cancelled");
        assert!(
            view.completed_at.is_some_and(|at| at >= before - 5),
            "{view:?}"
        );
    }
    assert!(
        app.claim(&worker).await.is_none(),
        "a cancelled build is never claimed"
    );
    let stats = app.stats().await;
    assert_eq!(
        (
            stats.builds_queued,
            stats.active_builds,
            stats.total_builds,
            stats.builds_today
        ),
        (0, 0, 0, 0)
    );
}

/// The snapshots route lists stored samples oldest first in the telemetry
/// shape, with `cpuTimeS` only when it was sent; admin key or build token.
#[tokio::test]
async fn snapshots_route_lists_samples_oldest_first() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let third = counter_sample(3, a + 3000, 120.0, 700.0, 4.5);
    let first = sample(1, a + 1000, 100.0, 500.0);
    let second = Snapshot {
        interval_s: 1,
        ..sample(2, a + 2000, 110.0, 600.0)
    };
    app.send_ok(&worker, claimed.id, &[third.clone(), first.clone()])
        .await;
    app.send_ok(&worker, claimed.id, std::slice::from_ref(&second))
        .await;

    for secret in [ADMIN_KEY, claimed.access_token.as_str()] {
        let raw: Value = expect_json(
            app.get(
                &format!("/api/builds/{}/snapshots", claimed.id),
                Some(secret),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let list: Vec<Snapshot> = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(list, vec![first.clone(), second.clone(), third.clone()]);
        assert!(
            raw[0].get("cpuTimeS").is_none(),
            "cpuTimeS only when sent: {raw}"
        );
        assert_eq!(raw[2]["cpuTimeS"], json!(4.5));
    }
}

/// Samples are stored compactly (small integers where exact), yet every
/// value reads back as the very number sent, the odd ones included.
#[tokio::test]
async fn stored_samples_read_back_exactly() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let odd = [
        (0.1 + 0.2, 257.0 * 4096.0 / 1_048_576.0, Some(4.56)),
        (1.0 / 3.0, 2048.5, Some(0.001)),
        (153.2, 100.3, None),
        (0.0, 0.0, Some(0.0)),
        (399.99, 4_095.999_999_999_9, Some(std::f64::consts::PI)),
    ];
    let sent: Vec<Snapshot> = odd
        .iter()
        .enumerate()
        .map(|(i, &(cpu, memory, cpu_time))| Snapshot {
            cpu_time_s: cpu_time,
            interval_s: [5, 7][i % 2],
            ..sample(i as i64 + 1, a + 1000 * (i as i64 + 1), cpu, memory)
        })
        .collect();
    app.send_ok(&worker, claimed.id, &sent).await;
    let listed: Vec<Snapshot> = serde_json::from_value(
        expect_json(
            app.get(
                &format!("/api/builds/{}/snapshots", claimed.id),
                Some(ADMIN_KEY),
            )
            .await,
            StatusCode::OK,
        )
        .await,
    )
    .unwrap();
    assert_eq!(listed, sent);
}

// ---------------------------------------------------------------- 400

/// A body that is not JSON is 400 with an error body, on every JSON route.
#[tokio::test]
async fn body_that_is_not_json_is_400() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let routes = [
        ("/api/workers/register".to_string(), ADMIN_KEY.to_string()),
        ("/api/builds".to_string(), ADMIN_KEY.to_string()),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.clone(),
        ),
        (
            format!("/api/builds/{}/telemetry", claimed.id),
            worker.token.clone(),
        ),
    ];
    for (path, secret) in &routes {
        for body in ["{not json", "", "{\"snapshots\": [", "\u{1}"] {
            let response = app
                .post_raw(
                    path,
                    Some(secret),
                    Some("application/json"),
                    body.to_string(),
                )
                .await;
            expect_error(response, StatusCode::BAD_REQUEST).await;
        }
    }
    assert_eq!(app.build(claimed.id).await.status, "building");
}

/// A body lacking a required field is 400: register without `name`, submit
/// without `platform`, complete without `success`.
#[tokio::test]
async fn missing_required_field_is_400() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let cases = [
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"platforms": ["linux"], "cpuCores": 4, "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "cpuCores": 4, "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "platforms": ["linux"], "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 4}),
        ),
        ("/api/builds".to_string(), ADMIN_KEY, json!({"label": "x"})),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.as_str(),
            json!({"error": "x"}),
        ),
    ];
    for (path, secret, body) in &cases {
        let response = app.post_json(path, Some(secret), body).await;
        expect_error(response, StatusCode::BAD_REQUEST).await;
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats.nodes_online, stats.active_builds, stats.builds_queued),
        (1, 1, 0)
    );
}

/// A telemetry body with neither a `snapshots` list nor a legacy `type` is 400.
#[tokio::test]
async fn telemetry_without_snapshots_or_type_is_400() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    for body in [
        json!({}),
        json!({"samples": [{"seq": 1}]}),
        json!({"snapshots": 5}),
        json!({"snapshots": {"seq": 1}}),
        json!([{"seq": 1}]),
        json!(null),
    ] {
        let response = app
            .post_json(
                &format!("/api/builds/{}/telemetry", claimed.id),
                Some(&worker.token),
                &body,
            )
            .await;
        expect_error(response, StatusCode::BAD_REQUEST).await;
    }
}

// ---------------------------------------------------------------- 401 / 403 / 404

/// Every authenticated route answers 401 without a secret and with an
/// unknown one.
#[tokio::test]
async fn missing_or_unknown_secret_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let id = claimed.id;
    let posts = [
        (
            "/api/workers/register".to_string(),
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
        ),
        ("/api/workers/heartbeat".to_string(), Value::Null),
        ("/api/workers/poll".to_string(), Value::Null),
        ("/api/builds".to_string(), json!({"platform": "linux"})),
        (format!("/api/builds/{id}/start"), Value::Null),
        (
            format!("/api/builds/{id}/complete"),
            json!({"success": true}),
        ),
        (format!("/api/builds/{id}/cancel"), Value::Null),
        (
            format!("/api/builds/{id}/telemetry"),
            batch(&[sample(1, now_ms(), 1.0, 1.0)]),
        ),
    ];
    for secret in [None, Some("not-a-known-secret"), Some("")] {
        for (path, body) in &posts {
            let response = if body.is_null() {
                app.post_empty(path, secret).await
            } else {
                app.post_json(path, secret, body).await
            };
            expect_error(response, StatusCode::UNAUTHORIZED).await;
        }
        for path in [
            format!("/api/builds/{id}"),
            format!("/api/builds/{id}/snapshots"),
        ] {
            expect_error(app.get(&path, secret).await, StatusCode::UNAUTHORIZED).await;
        }
    }
    let response = app
        .client
        .get(app.url(&format!("/api/builds/{id}")))
        .header("Authorization", format!("Basic {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("building", 0));
}

/// An `X-Worker-Id` header alone authenticates nothing: 401 on every worker
/// route, also next to an unknown bearer token.
#[tokio::test]
async fn x_worker_id_alone_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.assigned_build(&worker, LINUX).await;
    let id = claimed.id;
    let routes = [
        ("/api/workers/heartbeat".to_string(), None),
        ("/api/workers/poll".to_string(), None),
        (format!("/api/builds/{id}/start"), None),
        (
            format!("/api/builds/{id}/complete"),
            Some(json!({"success": true})),
        ),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(batch(&[sample(1, now_ms(), 1.0, 1.0)])),
        ),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(legacy_cpu_body(now_ms() / 1000, 10.0, 10.0)),
        ),
    ];
    for bogus_bearer in [false, true] {
        for (path, body) in &routes {
            let mut request = app
                .client
                .post(app.url(path))
                .header("X-Worker-Id", worker.id.to_string());
            if bogus_bearer {
                request = request.bearer_auth("unknown-token");
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            expect_error(response, StatusCode::UNAUTHORIZED).await;
        }
    }
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("assigned", 0));
}

/// A worker token or build token does not open admin routes (register,
/// submit); SPEC leaves 401 vs 403 open for a known secret on the wrong kind
/// of route, so either refusal passes, and nothing is created.
#[tokio::test]
async fn worker_and_build_tokens_do_not_open_admin_routes() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    for secret in [worker.token.as_str(), build.access_token.as_str()] {
        let status = app
            .post_json("/api/builds", Some(secret), &json!({"platform": "linux"}))
            .await
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "submit with a non-admin secret: {status}"
        );
        let status = app
            .post_json(
                "/api/workers/register",
                Some(secret),
                &json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
            )
            .await
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "register with a non-admin secret: {status}"
        );
    }
    let stats = app.stats().await;
    assert_eq!((stats.builds_queued, stats.nodes_online), (1, 1));
}

/// Only a worker token acts as a worker: the admin key and build tokens are
/// refused (401 or 403, SPEC leaves which open) on heartbeat, poll, start,
/// complete and telemetry (current and legacy bodies), and a worker token
/// cannot read or cancel builds; nothing changes.
#[tokio::test]
async fn only_worker_tokens_act_as_workers() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.assigned_build(&worker, LINUX).await;
    let id = claimed.id;
    let queued = app.submit_build(LINUX).await;
    let refused =
        |status: StatusCode| status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    for secret in [ADMIN_KEY, claimed.access_token.as_str()] {
        for path in [
            "/api/workers/heartbeat".to_string(),
            "/api/workers/poll".to_string(),
            format!("/api/builds/{id}/start"),
        ] {
            let status = app.post_empty(&path, Some(secret)).await.status();
            assert!(refused(status), "{path}: {status}");
        }
        for (path, body) in [
            (
                format!("/api/builds/{id}/complete"),
                json!({"success": true}),
            ),
            (
                format!("/api/builds/{id}/telemetry"),
                batch(&[sample(1, now_ms(), 10.0, 10.0)]),
            ),
            (
                format!("/api/builds/{id}/telemetry"),
                legacy_cpu_body(now_ms() / 1000, 10.0, 10.0),
            ),
        ] {
            let status = app.post_json(&path, Some(secret), &body).await.status();
            assert!(refused(status), "{path}: {status}");
        }
    }
    for path in [
        format!("/api/builds/{id}"),
        format!("/api/builds/{id}/snapshots"),
    ] {
        let status = app.get(&path, Some(&worker.token)).await.status();
        assert!(refused(status), "GET {path} with a worker token: {status}");
    }
    let status = app.cancel(queued.id, &worker.token).await;
    assert!(refused(status), "cancel with a worker token: {status}");
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("assigned", 0));
    assert_eq!(app.build(queued.id).await.status, "pending");
}

/// A worker acting on a build assigned to another worker gets 403 for start,
/// complete and telemetry, and the build does not change.
#[tokio::test]
async fn other_workers_build_is_403() {
    let app = TestApp::start().await;
    let owner = linux_worker(&app).await;
    let intruder = linux_worker(&app).await;
    let claimed = app.assigned_build(&owner, LINUX).await;
    expect_error(
        app.post_empty(
            &format!("/api/builds/{}/start", claimed.id),
            Some(&intruder.token),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(app.start_build(&owner, claimed.id).await, StatusCode::OK);
    let telemetry = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&intruder.token),
            &batch(&[sample(1, now_ms(), 10.0, 10.0)]),
        )
        .await;
    expect_error(telemetry, StatusCode::FORBIDDEN).await;
    let legacy = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&intruder.token),
            &legacy_cpu_body(now_ms() / 1000, 10.0, 10.0),
        )
        .await;
    expect_error(legacy, StatusCode::FORBIDDEN).await;
    let complete = app
        .post_json(
            &format!("/api/builds/{}/complete", claimed.id),
            Some(&intruder.token),
            &json!({"success": true}),
        )
        .await;
    expect_error(complete, StatusCode::FORBIDDEN).await;
    let view = app.build(claimed.id).await;
    assert_eq!(view.status, "building");
    assert_eq!(view.worker_id, Some(owner.id));
    assert_eq!(view.snapshot_count, 0);
}

/// A build's token reads and cancels that build only: 403 on another build.
#[tokio::test]
async fn build_token_on_another_build_is_403() {
    let app = TestApp::start().await;
    let mine = app.submit_build(LINUX).await;
    let theirs = app.submit_build(LINUX).await;
    for path in [
        format!("/api/builds/{}", theirs.id),
        format!("/api/builds/{}/snapshots", theirs.id),
    ] {
        expect_error(
            app.get(&path, Some(&mine.access_token)).await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    expect_error(
        app.post_empty(
            &format!("/api/builds/{}/cancel", theirs.id),
            Some(&mine.access_token),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(app.build(theirs.id).await.status, "pending");
}

/// An unknown build id is 404 on every build route (admin or worker).
#[tokio::test]
async fn unknown_build_is_404() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let missing = 987_654;
    for path in [
        format!("/api/builds/{missing}"),
        format!("/api/builds/{missing}/snapshots"),
    ] {
        expect_error(app.get(&path, Some(ADMIN_KEY)).await, StatusCode::NOT_FOUND).await;
    }
    expect_error(
        app.post_empty(&format!("/api/builds/{missing}/cancel"), Some(ADMIN_KEY))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(
        app.post_empty(&format!("/api/builds/{missing}/start"), Some(&worker.token))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(
        app.post_json(
            &format!("/api/builds/{missing}/complete"),
            Some(&worker.token),
            &json!({"success": true}),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    expect_error(
        app.post_json(
            &format!("/api/builds/{missing}/telemetry"),
            Some(&worker.token),
            &batch(&[sample(1, now_ms(), 1.0, 1.0)]),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

// ---------------------------------------------------------------- 409 grace

/// Telemetry is accepted after the build finished, within the grace period
/// (a cut-off worker delivers its backlog), and 409 after it.
#[tokio::test]
async fn telemetry_after_grace_is_409() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_grace = Duration::from_secs(1))
        .start()
        .await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let now = now_ms();
    app.send_ok(&worker, claimed.id, &[sample(1, now, 100.0, 100.0)])
        .await;
    assert_eq!(
        app.complete(&worker, claimed.id, true).await,
        StatusCode::OK
    );
    app.send_ok(&worker, claimed.id, &[sample(2, now + 1, 100.0, 100.0)])
        .await;
    let view = app.build(claimed.id).await;
    assert_eq!(build_figures(&view), (10.0, Some(100.0), 2));
    let stats = figures(&app.stats().await);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let late = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &batch(&[sample(3, now + 2, 100.0, 100.0)]),
        )
        .await;
    expect_error(late, StatusCode::CONFLICT).await;
    let legacy = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &legacy_cpu_body(now / 1000, 50.0, 100.0),
        )
        .await;
    expect_error(legacy, StatusCode::CONFLICT).await;
    assert_eq!(app.build(claimed.id).await, view);
    assert_eq!(figures(&app.stats().await), stats);
}

/// A cancelled build, like a finished one, takes its worker's backlog for
/// the grace period (the CPU was spent and counts in totalCpuSeconds), then
/// 409. SPEC says "after it finished"; cancel stamps completedAt, so an
/// operator expects the same grace.
#[tokio::test]
async fn cancelled_build_takes_backlog_within_grace() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_grace = Duration::from_secs(1))
        .start()
        .await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    assert_eq!(app.cancel(claimed.id, ADMIN_KEY).await, StatusCode::OK);
    let now = now_ms();
    app.send_ok(&worker, claimed.id, &[sample(1, now, 200.0, 10.0)])
        .await;
    let stats = app.stats().await;
    assert_eq!(stats.total_cpu_seconds, 10.0);
    assert_eq!((stats.total_builds, stats.cpu_cores_busy), (0, 0.0));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let late = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &batch(&[sample(2, now, 200.0, 10.0)]),
        )
        .await;
    expect_error(late, StatusCode::CONFLICT).await;
    assert_eq!(app.build(claimed.id).await.snapshot_count, 1);
}

// ---------------------------------------------------------------- 413

/// A telemetry body over 256 KiB is 413 and stores nothing.
#[tokio::test]
async fn telemetry_over_256_kib_is_413() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let mut body = batch(&[sample(1, now_ms(), 10.0, 10.0)]);
    body["padding"] = json!("x".repeat(257 * 1024));
    let response = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &body,
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.build(claimed.id).await.snapshot_count, 0);
    // Just under the limit is fine.
    body["padding"] = json!("x".repeat(250 * 1024));
    let (status, _) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.build(claimed.id).await.snapshot_count, 1);
}

/// The 256 KiB limit is exact: a body of 262144 bytes is accepted, one of
/// 262145 bytes is 413.
#[tokio::test]
async fn telemetry_body_limit_is_exactly_256_kib() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let path = format!("/api/builds/{}/telemetry", claimed.id);
    let body_of = |len: usize, seq: i64| {
        let head = format!(
            r#"{{"snapshots":[{{"seq":{seq},"sampledAt":{},"cpuPercent":1,"memoryMb":1}}],"pad":""#,
            claimed.assigned_at
        );
        let tail = r#""}"#;
        let body = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
        assert_eq!(body.len(), len);
        body
    };
    let response = app
        .post_raw(
            &path,
            Some(&worker.token),
            Some("application/json"),
            body_of(262_145, 1),
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let response = app
        .post_raw(
            &path,
            Some(&worker.token),
            Some("application/json"),
            body_of(262_144, 1),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.build(claimed.id).await.snapshot_count, 1);
}

/// The 4 KiB limit on a legacy event's `data` (its JSON text) is exact:
/// 4096 bytes are stored, 4097 are 413.
#[tokio::test]
async fn legacy_event_data_limit_is_exactly_4_kib() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let data_of = |len: usize| {
        // {"t":"xxx"} is 8 bytes around the x's.
        let data = json!({"t": "x".repeat(len - 8)});
        assert_eq!(data.to_string().len(), len);
        json!({"type": "log", "timestamp": rfc3339(now_ms() / 1000), "data": data})
    };
    let (status, answer) = app.telemetry(&worker, claimed.id, &data_of(4097)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let (status, answer) = app.telemetry(&worker, claimed.id, &data_of(4096)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM build_events")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

/// A batch of 1001 samples is 413 and stores nothing; 1000 are accepted.
#[tokio::test]
async fn telemetry_over_1000_samples_is_413() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let at = claimed.assigned_at;
    let samples: Vec<Snapshot> = (1..=1001)
        .map(|seq| Snapshot {
            interval_s: 1,
            ..sample(seq, at + seq, 1.0, 1.0)
        })
        .collect();
    let response = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &batch(&samples),
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.build(claimed.id).await.snapshot_count, 0);
    app.send_ok(&worker, claimed.id, &samples[..1000]).await;
    let view = app.build(claimed.id).await;
    assert_eq!(view.snapshot_count, 1000);
    assert_eq!(view.cpu_seconds, 10.0);
}

/// A legacy event whose `data` is over 4 KiB is 413 and stores nothing.
#[tokio::test]
async fn legacy_event_data_over_4_kib_is_413() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let body = json!({
        "type": "log",
        "timestamp": rfc3339(now_ms() / 1000),
        "data": {"line": "x".repeat(5000)}
    });
    let response = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&worker.token),
            &body,
        )
        .await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM build_events")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(events, 0);
}

// ---------------------------------------------------------------- 415

/// A body sent as `text/plain` (or without a Content-Type) is 415 on every
/// JSON route, even when the text is valid JSON; nothing changes.
#[tokio::test]
async fn body_of_another_type_is_415() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let routes = [
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY.to_string(),
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
        ),
        (
            "/api/builds".to_string(),
            ADMIN_KEY.to_string(),
            json!({"platform": "linux"}),
        ),
        (
            format!("/api/builds/{}/telemetry", claimed.id),
            worker.token.clone(),
            batch(&[sample(1, now_ms(), 10.0, 10.0)]),
        ),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.clone(),
            json!({"success": true}),
        ),
    ];
    for (path, secret, body) in &routes {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let response = app
                .post_raw(path, Some(secret), content_type, body.to_string())
                .await;
            expect_error(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        }
    }
    let view = app.build(claimed.id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("building", 0));
    let stats = app.stats().await;
    assert_eq!((stats.nodes_online, stats.builds_queued), (1, 0));
    // `application/json; charset=utf-8` is JSON.
    let response = app
        .post_raw(
            "/api/builds",
            Some(ADMIN_KEY),
            Some("application/json; charset=utf-8"),
            json!({"platform": "linux"}).to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

// ---------------------------------------------------------------- 422 and limits

/// Registration values outside SPEC's field limits are 422 and register
/// nothing; the limits themselves are accepted.
#[tokio::test]
async fn invalid_registration_values_are_422() {
    let app = TestApp::start().await;
    let ok = json!({"name": "n", "platforms": ["linux"], "cpuCores": 4, "memoryMb": 1024});
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };
    let invalid = [
        with("name", json!("")),
        with("name", json!("x".repeat(65))),
        with("platforms", json!([])),
        with(
            "platforms",
            json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
        ),
        with("platforms", json!(["Linux"])),
        with("platforms", json!(["mac os"])),
        with("platforms", json!(["ios!"])),
        with("platforms", json!([""])),
        with("platforms", json!(["x".repeat(33)])),
        with("cpuCores", json!(0)),
        with("cpuCores", json!(1025)),
        with("cpuCores", json!(-1)),
        with("cpuCores", json!("4")),
        with("memoryMb", json!(0)),
        with("memoryMb", json!(16_777_217)),
        with("memoryMb", json!(-1024)),
    ];
    let mut deviations = Vec::new();
    for body in &invalid {
        let response = app
            .post_json("/api/workers/register", Some(ADMIN_KEY), body)
            .await;
        let status = response.status();
        if status != StatusCode::UNPROCESSABLE_ENTITY {
            deviations.push(format!("{body} -> {status}"));
        } else {
            expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    }
    assert!(deviations.is_empty(), "expected 422: {deviations:#?}");
    assert_eq!(app.stats().await.nodes_online, 0, "nothing registered");

    let limits = json!({
        "name": "x".repeat(64),
        "platforms": ["a", "b", "c", "d", "e", "f", "g", "x".repeat(32)],
        "cpuCores": 1024,
        "memoryMb": 16_777_216,
    });
    let response = app
        .post_json("/api/workers/register", Some(ADMIN_KEY), &limits)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app
        .post_json(
            "/api/workers/register",
            Some(ADMIN_KEY),
            &json!({"name": "é", "platforms": ["a_b-9"], "cpuCores": 1, "memoryMb": 1}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Submit and complete values outside the limits are 422 and change
/// nothing: bad platform, label over 200 chars, error over 4000 chars.
#[tokio::test]
async fn invalid_submit_and_complete_values_are_422() {
    let app = TestApp::start().await;
    for body in [
        json!({"platform": "Linux"}),
        json!({"platform": ""}),
        json!({"platform": "x".repeat(33)}),
        json!({"platform": "a/b"}),
        json!({"platform": "linux", "label": "x".repeat(201)}),
    ] {
        let response = app.post_json("/api/builds", Some(ADMIN_KEY), &body).await;
        expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    assert_eq!(app.stats().await.builds_queued, 0);
    let response = app
        .post_json(
            "/api/builds",
            Some(ADMIN_KEY),
            &json!({"platform": "linux", "label": "é".repeat(200)}),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "200 chars, not bytes"
    );

    let worker = linux_worker(&app).await;
    let claimed = app.claim(&worker).await.unwrap();
    assert_eq!(app.start_build(&worker, claimed.id).await, StatusCode::OK);
    let response = app
        .post_json(
            &format!("/api/builds/{}/complete", claimed.id),
            Some(&worker.token),
            &json!({"success": false, "error": "e".repeat(4001)}),
        )
        .await;
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.build(claimed.id).await.status, "building");
    let response = app
        .post_json(
            &format!("/api/builds/{}/complete", claimed.id),
            Some(&worker.token),
            &json!({"success": false, "error": "e".repeat(4000)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.build(claimed.id).await.error.map(|e| e.len()),
        Some(4000)
    );
}

// ---------------------------------------------------------------- 429

/// Past the per-worker rate (burst of twice the rate) telemetry is 429 with
/// an integer `Retry-After`; the refused batch stored nothing, it is
/// accepted after waiting, and another worker is not limited.
#[tokio::test]
async fn telemetry_rate_limit_is_429_with_retry_after() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_rate = 1)
        .start()
        .await;
    let worker = linux_worker(&app).await;
    let other = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let theirs = app.running_build(&other, LINUX).await;
    let now = now_ms();
    let mut limited = None;
    for seq in 1..=8 {
        let response = app
            .post_json(
                &format!("/api/builds/{}/telemetry", claimed.id),
                Some(&worker.token),
                &batch(&[sample(seq, now + seq, 10.0, 10.0)]),
            )
            .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .expect("429 carries Retry-After in whole seconds");
            assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            expect_error(response, StatusCode::TOO_MANY_REQUESTS).await;
            limited = Some((seq, retry_after));
            break;
        }
        assert_eq!(response.status(), StatusCode::OK, "seq {seq}");
    }
    let (seq, retry_after) = limited.expect("8 requests at once exceed a burst of 2");
    assert!(
        seq >= 3,
        "the burst of twice the rate passes: limited at {seq}"
    );
    assert_eq!(app.build(claimed.id).await.snapshot_count, seq - 1);

    app.send_ok(&other, theirs.id, &[sample(1, now, 10.0, 10.0)])
        .await;

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, answer) = app
        .send(&worker, claimed.id, &[sample(seq, now + seq, 10.0, 10.0)])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (answer.accepted, answer.duplicates),
        (1, 0),
        "the refused sample was not stored"
    );
}

/// With the default rate (10/s, bursts of 20) a worker's first 20 requests
/// in a burst pass and the burst is then limited; what passes stays within
/// 20 + 10 per elapsed second.
#[tokio::test]
async fn default_rate_allows_bursts_of_twenty() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let started = std::time::Instant::now();
    let mut passed = 0;
    let mut first_limited = None;
    for seq in 1..=40 {
        let (status, _) = app
            .telemetry(
                &worker,
                claimed.id,
                &batch(&[sample(seq, now_ms(), 1.0, 1.0)]),
            )
            .await;
        match status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                first_limited.get_or_insert(seq);
            }
            other => panic!("telemetry answered {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let first_limited = first_limited.expect("40 requests at once are limited");
    assert!(
        first_limited > 20,
        "limited at request {first_limited}: a burst of 20 passes"
    );
    assert!(
        f64::from(passed) <= 20.0 + 10.0 * elapsed + 1.0,
        "{passed} passed in {elapsed:.2} s"
    );
}

// ---------------------------------------------------------------- samples

/// A JSON sample object: `cpuPercent` 50, `memoryMb` 512, `intervalS` 5.
fn good_json(seq: i64, sampled_at: i64) -> Value {
    json!({"seq": seq, "sampledAt": sampled_at, "cpuPercent": 50.0, "memoryMb": 512.0, "intervalS": 5})
}

fn with(mut sample: Value, key: &str, value: Value) -> Value {
    sample[key] = value;
    sample
}

fn without(mut sample: Value, key: &str) -> Value {
    sample.as_object_mut().unwrap().remove(key);
    sample
}

/// How an invalid sample is made from a good one.
enum Bad {
    /// A good sample (seq 2, sampled now) with this field set to this value.
    Set(&'static str, Value),
    /// A good sample without this field.
    Remove(&'static str),
    /// Anything else, from (seq, assignedAt, now).
    Make(fn(i64, i64, i64) -> Value),
}

/// Every invalid-sample class SPEC lists is rejected alone (422 with the
/// answer body when it is the only sample; 200 with its index next to a
/// good sample), and changes no figure: the stats and the build's
/// cpuSeconds, peakMemoryMb and snapshotCount move by the good sample only.
/// Worker: 4 cores, 8192 MiB.
#[tokio::test]
async fn each_invalid_sample_class_is_rejected_alone() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_rate = 10_000)
        .start()
        .await;
    let worker = linux_worker(&app).await;
    use Bad::{Make, Remove, Set};
    let classes: Vec<(&str, Bad)> = vec![
        ("cpuPercent as string", Set("cpuPercent", json!("50"))),
        ("cpuPercent \"NaN\"", Set("cpuPercent", json!("NaN"))),
        (
            "cpuPercent \"Infinity\"",
            Set("cpuPercent", json!("Infinity")),
        ),
        ("cpuPercent 1e308", Set("cpuPercent", json!(1e308))),
        ("cpuPercent negative", Set("cpuPercent", json!(-0.5))),
        (
            "cpuPercent above cores*100",
            Set("cpuPercent", json!(400.5)),
        ),
        ("cpuPercent null", Set("cpuPercent", Value::Null)),
        ("cpuPercent missing", Remove("cpuPercent")),
        ("cpuPercent array", Set("cpuPercent", json!([77]))),
        ("memoryMb as string", Set("memoryMb", json!("1024"))),
        (
            "memoryMb \"-Infinity\"",
            Set("memoryMb", json!("-Infinity")),
        ),
        ("memoryMb 1e308", Set("memoryMb", json!(1e308))),
        ("memoryMb negative", Set("memoryMb", json!(-1.0))),
        ("memoryMb above declared", Set("memoryMb", json!(8192.5))),
        ("memoryMb null", Set("memoryMb", Value::Null)),
        ("memoryMb missing", Remove("memoryMb")),
        ("cpuTimeS as string", Set("cpuTimeS", json!("12"))),
        ("cpuTimeS \"NaN\"", Set("cpuTimeS", json!("NaN"))),
        ("cpuTimeS 1e308", Set("cpuTimeS", json!(1e308))),
        ("cpuTimeS negative", Set("cpuTimeS", json!(-0.5))),
        // 10 s after assignment on 4 cores: at most 1.1*4*10+1 = 45 s.
        (
            "cpuTimeS impossible",
            Make(|s, a, _| with(good_json(s, a + 10_000), "cpuTimeS", json!(45.5))),
        ),
        ("intervalS 0", Set("intervalS", json!(0))),
        ("intervalS 301", Set("intervalS", json!(301))),
        ("intervalS negative", Set("intervalS", json!(-5))),
        ("intervalS as string", Set("intervalS", json!("5"))),
        ("intervalS null", Set("intervalS", Value::Null)),
        (
            "sampledAt > 60 s before assignment",
            Make(|s, a, _| good_json(s, a - 60_001)),
        ),
        (
            "sampledAt > 60 s ahead",
            Make(|s, _, n| good_json(s, n + 120_000)),
        ),
        (
            "sampledAt as string",
            Make(|s, _, n| with(good_json(s, n), "sampledAt", json!(n.to_string()))),
        ),
        ("sampledAt null", Set("sampledAt", Value::Null)),
        ("sampledAt missing", Remove("sampledAt")),
        (
            "sampledAt fractional",
            Make(|s, _, n| with(good_json(s, n), "sampledAt", json!(n as f64 + 0.5))),
        ),
        ("seq missing", Remove("seq")),
        ("seq null", Set("seq", Value::Null)),
        ("seq as string", Set("seq", json!("2"))),
        ("seq 0 (seq counts from 1)", Make(|_, _, n| good_json(0, n))),
        ("seq negative", Make(|_, _, n| good_json(-3, n))),
        ("sample not an object", Make(|_, _, _| json!(42))),
        ("sample null", Make(|_, _, _| Value::Null)),
    ];
    let mut deviations = Vec::new();
    for (name, edit) in classes {
        let claimed = app.assigned_build(&worker, LINUX).await;
        let path = format!("/api/builds/{}/telemetry", claimed.id);
        let now = now_ms();
        let bad = match edit {
            Set(field, value) => with(good_json(2, now), field, value),
            Remove(field) => without(good_json(2, now), field),
            Make(make) => make(2, claimed.assigned_at, now),
        };
        let before_stats = figures(&app.stats().await);
        let before_view = app.build(claimed.id).await;

        // Alone: 422 with the answer body.
        let response = app
            .post_json(
                &path,
                Some(&worker.token),
                &json!({"snapshots": [bad.clone()]}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let shape_ok = body["accepted"] == json!(0)
            && body["duplicates"] == json!(0)
            && body["rejected"][0]["index"] == json!(0)
            && body["rejected"][0]["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
            && body["rejected"].as_array().map(Vec::len) == Some(1);
        if status != StatusCode::UNPROCESSABLE_ENTITY || !shape_ok {
            deviations.push(format!("{name}: alone answered {status} {body}"));
        }
        if figures(&app.stats().await) != before_stats || app.build(claimed.id).await != before_view
        {
            deviations.push(format!("{name}: a rejected sample changed a figure"));
        }

        // Next to a good sample: 200, the good one counted alone.
        let good = good_json(1, now);
        let response = app
            .post_json(
                &path,
                Some(&worker.token),
                &json!({"snapshots": [good, bad]}),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let shape_ok = body["accepted"] == json!(1)
            && body["duplicates"] == json!(0)
            && body["rejected"].as_array().map(Vec::len) == Some(1)
            && body["rejected"][0]["index"] == json!(1);
        if status != StatusCode::OK || !shape_ok {
            deviations.push(format!(
                "{name}: with a good sample answered {status} {body}"
            ));
        }
        let view = app.build(claimed.id).await;
        if build_figures(&view) != (2.5, Some(512.0), 1) {
            deviations.push(format!(
                "{name}: build figures {:?}, expected (2.5, Some(512.0), 1)",
                build_figures(&view)
            ));
        }
        let stats = figures(&app.stats().await);
        let expected_cpu = before_stats.total_cpu_seconds + 2.5;
        if (stats.total_cpu_seconds - expected_cpu).abs() > 1e-6 {
            deviations.push(format!(
                "{name}: totalCpuSeconds {} expected {expected_cpu}",
                stats.total_cpu_seconds
            ));
        }
    }
    assert!(
        deviations.is_empty(),
        "deviations from SPEC:\n{}",
        deviations.join("\n")
    );
}

/// A sample carrying a bare `NaN`, `Infinity` or overflowing number (as
/// Python's json.dumps writes them) is rejected alone; the rest of its
/// batch is stored.
#[tokio::test]
async fn bare_nan_and_infinity_tokens_reject_their_sample_alone() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let now = now_ms();
    for token in ["NaN", "Infinity", "-Infinity", "1e400"] {
        let body = format!(
            r#"{{"snapshots":[{{"seq":1,"sampledAt":{now},"cpuPercent":10,"memoryMb":10}},{{"seq":2,"sampledAt":{now},"cpuPercent":{token},"memoryMb":10}}]}}"#
        );
        let response = app
            .post_raw(
                &format!("/api/builds/{}/telemetry", claimed.id),
                Some(&worker.token),
                Some("application/json"),
                body,
            )
            .await;
        let status = response.status();
        let text = response.text().await.unwrap();
        // SPEC lists NaN, Infinity and 1e308 among invalid *samples*,
        // rejected alone: the first sample of each batch is accepted once.
        assert_eq!(status, StatusCode::OK, "bare {token}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["rejected"][0]["index"], 1, "bare {token}: {text}");
        assert_eq!(
            answer["rejected"].as_array().map(Vec::len),
            Some(1),
            "bare {token}: {text}"
        );
    }
    assert_eq!(app.build(claimed.id).await.snapshot_count, 1);
}

/// Values exactly at each bound are valid: cpuPercent = 100*cores, memoryMb
/// = declared, cpuTimeS just under its bound, intervalS 1 and 300, sampledAt
/// 59 s and exactly 60 s before assignment and 50 s ahead, cpuTimeS 0, cpuPercent 0.
#[tokio::test]
async fn boundary_values_are_accepted() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let now = now_ms();
    let samples = [
        with(good_json(1, now), "cpuPercent", json!(400.0)),
        with(good_json(2, now), "memoryMb", json!(8192.0)),
        with(good_json(3, a + 10_000), "cpuTimeS", json!(44.9)),
        with(good_json(4, now), "intervalS", json!(1)),
        with(good_json(5, now), "intervalS", json!(300)),
        good_json(6, a - 59_000),
        good_json(7, now + 50_000),
        with(
            with(good_json(8, now), "cpuTimeS", json!(0.0)),
            "cpuPercent",
            json!(0.0),
        ),
        without(good_json(9, now), "intervalS"),
        with(good_json(10, now), "unknownField", json!({"ignored": true})),
        good_json(11, a - 60_000),
    ];
    let (status, answer) = app
        .telemetry(&worker, claimed.id, &json!({ "snapshots": samples }))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], json!(11), "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    let view = app.build(claimed.id).await;
    assert_eq!(view.snapshot_count, 11);
    assert_eq!(view.peak_memory_mb, Some(8192.0));
    assert_eq!(view.cpu_seconds, 44.9, "the counter replaces the estimate");
    let stored = app.snapshots(claimed.id).await;
    assert_eq!(
        stored.iter().find(|s| s.seq == 9).map(|s| s.interval_s),
        Some(5),
        "intervalS defaults to 5"
    );
}

/// An empty batch changes nothing and is a 200 with nothing counted
/// (there is no sample to reject).
#[tokio::test]
async fn empty_batch_is_200_noop() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let (status, answer) = app.send(&worker, claimed.id, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, TelemetryAnswer::default());
}

/// A rejected sample does not use up its `seq`: the same seq sent valid
/// later (or later in the same batch) is accepted, not a duplicate; a
/// duplicate next to a rejected sample makes a 200, not a 422.
#[tokio::test]
async fn rejected_sample_does_not_use_up_its_seq() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let now = now_ms();
    let (status, _) = app
        .send(&worker, claimed.id, &[sample(1, now, 9999.0, 10.0)])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, answer) = app
        .send(&worker, claimed.id, &[sample(1, now, 99.0, 10.0)])
        .await;
    assert_eq!(
        (status, answer.accepted, answer.duplicates),
        (StatusCode::OK, 1, 0)
    );
    // Within one batch too: an invalid seq 2 then a valid seq 2.
    let (status, answer) = app
        .send(
            &worker,
            claimed.id,
            &[sample(2, now, -5.0, 10.0), sample(2, now, 5.0, 10.0)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer.accepted, answer.duplicates), (1, 0), "{answer:?}");
    assert_eq!(
        answer.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0]
    );
    // A replay next to an invalid sample: not every sample was rejected, so 200.
    let (status, answer) = app
        .send(
            &worker,
            claimed.id,
            &[sample(1, now, 99.0, 10.0), sample(3, now, 1.0, 1e9)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    assert_eq!((answer.accepted, answer.duplicates), (0, 1), "{answer:?}");
    assert_eq!(
        answer.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![1]
    );
    let view = app.build(claimed.id).await;
    assert_eq!(build_figures(&view), (5.2, Some(10.0), 2));
}

/// Replaying a batch counts every sample as a duplicate and changes no
/// figure, also when the replay carries different values for the same seq
/// or repeats a seq inside one batch; a batch of only replays is a 200.
#[tokio::test]
async fn replayed_batches_are_duplicates_and_change_nothing() {
    let app = TestApp::start().await;
    let worker = app.register_worker(&[LINUX], 8, 16_384).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let first = vec![
        sample(1, a + 1000, 100.0, 1000.0),
        sample(2, a + 2000, 300.0, 3000.0),
        sample(2, a + 2000, 300.0, 3000.0),
    ];
    let (status, answer) = app.send(&worker, claimed.id, &first).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer.accepted, answer.duplicates), (2, 1), "{answer:?}");
    assert!(answer.rejected.is_empty());
    let view = app.build(claimed.id).await;
    assert_eq!(build_figures(&view), (20.0, Some(3000.0), 2));
    let stats = figures(&app.stats().await);

    let (status, answer) = app.send(&worker, claimed.id, &first).await;
    assert_eq!(
        (status, answer.accepted, answer.duplicates),
        (StatusCode::OK, 0, 3)
    );
    let changed = [
        sample(1, a + 1500, 700.0, 9000.0),
        counter_sample(2, a + 2000, 1.0, 1.0, 5.0),
    ];
    let (status, answer) = app.send(&worker, claimed.id, &changed).await;
    assert_eq!(
        (status, answer.accepted, answer.duplicates),
        (StatusCode::OK, 0, 2)
    );
    assert_eq!(app.build(claimed.id).await, view);
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(app.snapshots(claimed.id).await, first[..2].to_vec());
}

/// The Swift worker's `cpu_snapshot` body is one sample (seq = timestamp in
/// seconds, intervalS 5, sampledAt from timestamp), accepted once and a
/// duplicate when replayed.
#[tokio::test]
async fn legacy_cpu_snapshot_is_accepted_once_then_duplicate() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let seconds = now_ms() / 1000;
    let body = legacy_cpu_body(seconds, 42.0, 1024.0);
    let (status, answer) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 1, "duplicates": 0, "rejected": []})
    );
    let view = app.build(claimed.id).await;
    assert_eq!(build_figures(&view), (2.1, Some(1024.0), 1));
    let stats = figures(&app.stats().await);
    assert!((stats.cpu_cores_busy - 0.42).abs() < 1e-9);

    let (status, answer) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 0, "duplicates": 1, "rejected": []})
    );
    assert_eq!(app.build(claimed.id).await, view);
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(
        app.snapshots(claimed.id).await,
        vec![sample(seconds, seconds * 1000, 42.0, 1024.0)]
    );

    // Invalid legacy values are a rejected sample too.
    let (status, answer) = app
        .telemetry(
            &worker,
            claimed.id,
            &legacy_cpu_body(seconds - 1, 401.0, 1024.0),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], json!(0));
    assert_eq!(app.build(claimed.id).await, view);
}

/// A legacy timestamp with a UTC offset names the same instant: seq is its
/// UTC epoch second, so the same sample sent with `Z` is a duplicate.
#[tokio::test]
async fn legacy_timestamp_with_offset_is_the_same_instant() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let seconds = now_ms() / 1000 - 3;
    let with_offset = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap()
        .to_offset(time::macros::offset!(+2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(with_offset.ends_with("+02:00"), "{with_offset}");
    let body = json!({
        "type": "cpu_snapshot",
        "timestamp": with_offset,
        "data": {"cpu_percent": 20.0, "memory_mb": 64}
    });
    let (status, answer) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (StatusCode::OK, json!(1)),
        "{answer}"
    );
    let (status, answer) = app
        .telemetry(&worker, claimed.id, &legacy_cpu_body(seconds, 20.0, 64.0))
        .await;
    assert_eq!(
        (status, answer["duplicates"].clone()),
        (StatusCode::OK, json!(1)),
        "{answer}"
    );
    assert_eq!(
        app.snapshots(claimed.id).await,
        vec![sample(seconds, seconds * 1000, 20.0, 64.0)]
    );
}

/// Any other legacy `type` is stored as a build event and answered 200
/// `{"accepted":0,"duplicates":0,"rejected":[]}`; no figure changes.
#[tokio::test]
async fn legacy_other_type_is_stored_as_event() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let stats = figures(&app.stats().await);
    let body = json!({
        "type": "build_log",
        "timestamp": rfc3339(now_ms() / 1000),
        "data": {"line": "Compiling freeagent v0.1.0", "level": "info"}
    });
    let (status, answer) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"accepted": 0, "duplicates": 0, "rejected": []})
    );
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT build_id, type, data FROM build_events")
            .fetch_all(&app.db().await)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0, rows[0].1.as_str()), (claimed.id, "build_log"));
    let data: Value = serde_json::from_str(&rows[0].2).unwrap();
    assert_eq!(data, body["data"]);
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(app.build(claimed.id).await.snapshot_count, 0);
}

/// A build's CPU seconds: the sum of cpuPercent/100*intervalS until a
/// counter arrives, then the largest cpuTimeS seen (lower or higher than
/// the estimate; a lost or late sample costs nothing).
#[tokio::test]
async fn counter_replaces_percent_estimate() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    app.send_ok(&worker, claimed.id, &[sample(1, a + 10_000, 100.0, 10.0)])
        .await;
    assert_eq!(app.build(claimed.id).await.cpu_seconds, 5.0);
    assert_eq!(app.stats().await.total_cpu_seconds, 5.0);
    app.send_ok(
        &worker,
        claimed.id,
        &[counter_sample(2, a + 20_000, 100.0, 10.0, 30.0)],
    )
    .await;
    assert_eq!(app.build(claimed.id).await.cpu_seconds, 30.0);
    // seq 3 is lost; seq 4 carries the counter.
    app.send_ok(
        &worker,
        claimed.id,
        &[counter_sample(4, a + 40_000, 100.0, 10.0, 70.0)],
    )
    .await;
    app.send_ok(
        &worker,
        claimed.id,
        &[counter_sample(5, a + 30_000, 100.0, 10.0, 50.0)],
    )
    .await;
    assert_eq!(app.build(claimed.id).await.cpu_seconds, 70.0);
    assert_eq!(app.stats().await.total_cpu_seconds, 70.0);

    // A counter lower than the estimate replaces it too.
    let low = app.running_build(&worker, LINUX).await;
    let b = low.assigned_at;
    app.send_ok(
        &worker,
        low.id,
        &[
            sample(1, b + 1000, 400.0, 10.0),
            sample(2, b + 2000, 400.0, 10.0),
        ],
    )
    .await;
    assert_eq!(app.stats().await.total_cpu_seconds, 110.0);
    app.send_ok(
        &worker,
        low.id,
        &[counter_sample(3, b + 3000, 400.0, 10.0, 2.0)],
    )
    .await;
    assert_eq!(app.build(low.id).await.cpu_seconds, 2.0);
    assert_eq!(app.stats().await.total_cpu_seconds, 72.0);
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

// ---------------------------------------------------------------- lease reaper

/// A worker silent for the lease timeout loses its build: back to pending
/// with attempt+1 (its old worker then gets 403); after the third attempt the
/// build fails with "worker lost contact" and counts as a finished build.
#[tokio::test]
async fn lost_worker_build_is_requeued_then_failed() {
    let app = TestApp::builder()
        .with_args(|a| a.lease_timeout = Duration::from_secs(1))
        .start()
        .await;
    let build = app.submit_build(LINUX).await;
    let mut previous: Option<Worker> = None;
    for attempt in 1..=3 {
        let worker = linux_worker(&app).await;
        let claimed = app.claim(&worker).await.expect("the requeued build");
        assert_eq!((claimed.id, claimed.attempt), (build.id, attempt));
        if let Some(lost) = &previous {
            expect_error(
                app.post_empty(
                    &format!("/api/builds/{}/start", build.id),
                    Some(&lost.token),
                )
                .await,
                StatusCode::FORBIDDEN,
            )
            .await;
        }
        if attempt == 1 {
            assert_eq!(app.start_build(&worker, build.id).await, StatusCode::OK);
            app.send_ok(&worker, build.id, &[sample(1, now_ms(), 150.0, 700.0)])
                .await;
        }
        let view = wait_for(Duration::from_secs(20), "the lease to expire", || async {
            let view = app.build(build.id).await;
            (view.status != "assigned" && view.status != "building").then_some(view)
        })
        .await;
        if attempt < 3 {
            assert_eq!(view.status, "pending", "{view:?}");
            assert_eq!(view.attempt, attempt + 1, "{view:?}");
            assert_eq!(view.worker_id, None, "{view:?}");
            let stats = app.stats().await;
            assert_eq!((stats.builds_queued, stats.active_builds), (1, 0));
            assert_eq!(stats.cpu_cores_busy, 0.0, "a requeued build is not busy");
            assert_eq!(stats.total_cpu_seconds, 7.5, "its CPU still counts");
        } else {
            assert_eq!(view.status, "failed", "{view:?}");
            assert_eq!(view.attempt, 3);
            assert_eq!(view.error.as_deref(), Some("worker lost contact"));
            assert!(view.completed_at.is_some());
        }
        previous = Some(worker);
    }
    let stats = app.stats().await;
    assert_eq!(
        (
            stats.builds_queued,
            stats.active_builds,
            stats.total_builds,
            stats.builds_today
        ),
        (0, 0, 1, 1)
    );
    let today = app.daily(1).await;
    assert_eq!((today[0].builds_finished, today[0].builds_failed), (1, 1));
    // The first attempt's samples still count, and every figure matches the rows.
    assert_eq!(
        build_figures(&app.build(build.id).await),
        (7.5, Some(700.0), 1)
    );
    let pool = app.db().await;
    let rows = samples_by_key(&pool).await;
    let stats = app.stats().await;
    let recomputed = recompute(&raw_builds(&pool).await, &rows, stats.generated_at);
    assert_stats_match(&stats, &recomputed, "after the reaper failed the build");
    assert_eq!(today[0].build_time_ms, recomputed.today.2);
}

/// A worker that keeps making authenticated calls (heartbeats, or only
/// telemetry) keeps its build past the lease timeout: it is never silent
/// for the lease timeout, so nothing is requeued.
#[tokio::test]
async fn authenticated_calls_keep_the_lease() {
    let app = TestApp::builder()
        .with_args(|a| a.lease_timeout = Duration::from_secs(1))
        .start()
        .await;
    let worker = linux_worker(&app).await;
    let chatty = linux_worker(&app).await;
    let by_heartbeat = app.running_build(&worker, LINUX).await;
    let by_telemetry = app.running_build(&chatty, LINUX).await;
    for seq in 1..=8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(app.heartbeat(&worker).await, StatusCode::OK);
        app.send_ok(
            &chatty,
            by_telemetry.id,
            &[sample(seq, now_ms(), 10.0, 10.0)],
        )
        .await;
    }
    for id in [by_heartbeat.id, by_telemetry.id] {
        let view = app.build(id).await;
        assert_eq!(
            (view.status.as_str(), view.attempt),
            ("building", 1),
            "a worker calling every 400 ms lost its build to a 1 s lease"
        );
    }
}

// ---------------------------------------------------------------- daily

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

// ---------------------------------------------------------------- retention

/// A purge with 0 days removes every raw sample and event but changes no
/// figure (stats, daily, build figures), and replays stay duplicates while
/// new samples still count.
#[tokio::test]
async fn purge_changes_no_figure_and_replays_stay_duplicates() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let running = app.running_build(&worker, LINUX).await;
    let done = app.running_build(&worker, LINUX).await;
    let a = running.assigned_at;
    let running_batch = vec![
        sample(1, a + 1000, 100.0, 100.0),
        sample(2, a + 2000, 200.0, 300.0),
    ];
    let done_batch = vec![
        sample(1, a + 1000, 50.0, 100.0),
        counter_sample(2, a + 2000, 50.0, 100.0, 3.25),
    ];
    let legacy = legacy_cpu_body(now_ms() / 1000, 30.0, 50.0);
    app.send_ok(&worker, running.id, &running_batch).await;
    app.send_ok(&worker, done.id, &done_batch).await;
    assert_eq!(
        app.telemetry(&worker, running.id, &legacy).await.0,
        StatusCode::OK
    );
    let event = json!({"type": "note", "timestamp": rfc3339(now_ms() / 1000), "data": {"x": 1}});
    assert_eq!(
        app.telemetry(&worker, running.id, &event).await.0,
        StatusCode::OK
    );
    assert_eq!(app.complete(&worker, done.id, true).await, StatusCode::OK);

    let stats = figures(&app.stats().await);
    let daily = app.daily(3).await;
    let views = (app.build(running.id).await, app.build(done.id).await);

    assert_eq!(app.purge(30).await, 0, "nothing is 30 days old");
    let removed = app.purge(0).await;
    assert_eq!(removed, 6, "5 samples and 1 event");
    let pool = app.db().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM build_events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    assert!(app.snapshots(running.id).await.is_empty());

    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(app.daily(3).await, daily);
    assert_eq!(
        (app.build(running.id).await, app.build(done.id).await),
        views
    );

    let (status, answer) = app.send(&worker, running.id, &running_batch).await;
    assert_eq!(
        (status, answer.accepted, answer.duplicates),
        (StatusCode::OK, 0, 2)
    );
    let (status, answer) = app.send(&worker, done.id, &done_batch).await;
    assert_eq!(
        (status, answer.accepted, answer.duplicates),
        (StatusCode::OK, 0, 2)
    );
    let (status, answer) = app.telemetry(&worker, running.id, &legacy).await;
    assert_eq!(
        (status, answer["duplicates"].clone()),
        (StatusCode::OK, json!(1))
    );
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(
        (app.build(running.id).await, app.build(done.id).await),
        views
    );

    app.send_ok(&worker, running.id, &[sample(3, a + 3000, 100.0, 900.0)])
        .await;
    let view = app.build(running.id).await;
    assert_eq!(view.snapshot_count, views.0.snapshot_count + 1);
    assert_eq!(view.peak_memory_mb, Some(900.0));
    assert!((view.cpu_seconds - (views.0.cpu_seconds + 5.0)).abs() < 1e-9);
}

/// The background retention task (its pass at start, here with
/// `--retention-days 0`) removes raw rows and changes no figure; replays
/// stay duplicates.
#[tokio::test]
async fn background_retention_changes_no_figure() {
    let mut app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let running = app.running_build(&worker, LINUX).await;
    let done = app.running_build(&worker, LINUX).await;
    let a = running.assigned_at;
    let samples = vec![
        sample(1, a + 1000, 120.0, 300.0),
        counter_sample(2, a + 2000, 80.0, 200.0, 1.75),
    ];
    app.send_ok(&worker, running.id, &samples).await;
    app.send_ok(&worker, done.id, &samples[..1]).await;
    let event = json!({"type": "note", "timestamp": rfc3339(now_ms() / 1000), "data": {}});
    assert_eq!(
        app.telemetry(&worker, done.id, &event).await.0,
        StatusCode::OK
    );
    assert_eq!(app.complete(&worker, done.id, false).await, StatusCode::OK);
    let views = (app.build(running.id).await, app.build(done.id).await);
    let daily = app.daily(2).await;
    let stats = NetworkStats {
        nodes_online: 0,
        ..figures(&app.stats().await)
    };

    app.args.retention_days = 0;
    app.restart().await;
    let pool = app.db().await;
    wait_for(Duration::from_secs(15), "the retention pass", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM samples) + (SELECT count(*) FROM build_events)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(
        (app.build(running.id).await, app.build(done.id).await),
        views
    );
    assert_eq!(app.daily(2).await, daily);
    let after = NetworkStats {
        nodes_online: 0,
        ..figures(&app.stats().await)
    };
    assert_eq!(after, stats);
    let (status, answer) = app.send(&worker, running.id, &samples).await;
    assert_eq!((status, answer.duplicates), (StatusCode::OK, 2));
    let (status, answer) = app.send(&worker, done.id, &samples[..1]).await;
    assert_eq!((status, answer.duplicates), (StatusCode::OK, 1));
}

/// `freeagent purge --retention-days 0` runs against a database that a
/// controller is serving and prints how many rows it removed.
#[tokio::test]
async fn purge_command_prints_rows_removed() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    app.send_ok(
        &worker,
        claimed.id,
        &(1..=7)
            .map(|s| sample(s, a + s, 10.0, 10.0))
            .collect::<Vec<_>>(),
    )
    .await;
    let stats = figures(&app.stats().await);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_freeagent"))
        .args([
            "purge",
            "--database-url",
            &app.database_url,
            "--retention-days",
            "0",
        ])
        .env_remove("FREEAGENT_DATABASE_URL")
        .env_remove("FREEAGENT_RETENTION_DAYS")
        .output()
        .await
        .expect("run freeagent purge");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let numbers: Vec<u64> = stdout
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.contains(&7), "prints the 7 rows removed: {stdout}");
    assert!(app.snapshots(claimed.id).await.is_empty());
    assert_eq!(figures(&app.stats().await), stats);
    let (status, answer) = app
        .send(&worker, claimed.id, &[sample(3, a + 3, 10.0, 10.0)])
        .await;
    assert_eq!((status, answer.duplicates), (StatusCode::OK, 1));
}

// ---------------------------------------------------------------- restart and robustness

/// Figures, builds and idempotency keys survive a controller restart on the
/// same database; worker and build tokens keep working.
#[tokio::test]
async fn figures_survive_restart() {
    let mut app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let samples = vec![
        sample(1, a + 1000, 100.0, 100.0),
        counter_sample(2, a + 2000, 100.0, 100.0, 1.5),
    ];
    app.send_ok(&worker, claimed.id, &samples).await;
    let done = app.running_build(&worker, LINUX).await;
    assert_eq!(app.complete(&worker, done.id, true).await, StatusCode::OK);
    let pending = app.submit_build("macos").await;
    let stats = figures(&app.stats().await);
    let view = app.build(claimed.id).await;

    app.restart().await;
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(app.build(claimed.id).await, view);
    let (status, answer) = app.send(&worker, claimed.id, &samples).await;
    assert_eq!((status, answer.duplicates), (StatusCode::OK, 2));
    assert_eq!(app.heartbeat(&worker).await, StatusCode::OK);
    let by_token: BuildView = expect_json(
        app.get(
            &format!("/api/builds/{}", pending.id),
            Some(&pending.access_token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_token.status, "pending");
}

/// No client input produces a 500: malformed ids, wrong JSON types,
/// nesting bombs, odd headers and legacy bodies with bad fields.
#[tokio::test]
async fn no_client_input_produces_500() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let telemetry = format!("/api/builds/{}/telemetry", claimed.id);
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let posts: Vec<(String, String, String)> = vec![
        ("/api/builds/abc/start".into(), worker.token.clone(), String::new()),
        ("/api/builds/-1/start".into(), worker.token.clone(), String::new()),
        ("/api/builds/99999999999999999999999/cancel".into(), ADMIN_KEY.into(), String::new()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": 5}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": null}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": "linux", "label": 5}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), "null".into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#""linux""#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), nested.clone()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":"linux","cpuCores":1,"memoryMb":1}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":[5],"cpuCores":1,"memoryMb":1}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":["linux"],"cpuCores":1e30,"memoryMb":1e400}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":["linux"],"cpuCores":99999999999999999999,"memoryMb":1}"#.into()),
        (format!("/api/builds/{}/complete", claimed.id), worker.token.clone(), r#"{"success":"yes"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[1,"x",null,[],{}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[{"seq":9223372036854775807,"sampledAt":9223372036854775807,"cpuPercent":1,"memoryMb":1,"cpuTimeS":1e300,"intervalS":9223372036854775807}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[{"seq":1,"sampledAt":-9223372036854775808,"cpuPercent":1,"memoryMb":1}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":5}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"yesterday","data":{}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"2026-01-28T16:13:27Z","data":{"cpu_percent":"42","memory_mb":1}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"99999-01-28T16:13:27Z","data":{"cpu_percent":1,"memory_mb":1}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"x","timestamp":"2026-01-28T16:13:27Z","data":"just a string"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"x"}"#.into()),
        (telemetry.clone(), worker.token.clone(), nested),
        (
            "/api/workers/register".into(),
            ADMIN_KEY.into(),
            json!({"name": "x".repeat(3 << 20), "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}).to_string(),
        ),
    ];
    for (path, secret, body) in posts {
        let response = app
            .post_raw(&path, Some(&secret), Some("application/json"), body.clone())
            .await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_client_error() || status.is_success(),
            "POST {path} {}: {status} {text}",
            body.chars().take(200).collect::<String>()
        );
    }
    for path in [
        "/api/builds/abc",
        "/api/builds/1.5/snapshots",
        "/api/stats/daily?days=-1",
        "/api/stats/daily?days=99999999999999999999",
    ] {
        let status = app.get(path, Some(ADMIN_KEY)).await.status();
        assert!(status.is_client_error(), "GET {path}: {status}");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/api/workers/poll"),
        (reqwest::Method::PUT, "/api/builds"),
        (reqwest::Method::DELETE, "/api/builds/1"),
        (reqwest::Method::POST, "/api/stats"),
    ] {
        let status = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{method} {path}: {status}");
    }
    let not_utf8 = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    let status = app
        .client
        .post(app.url("/api/workers/heartbeat"))
        .header("Authorization", not_utf8)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "non-UTF-8 Authorization");
    for header in ["Bearer", "Bearer ", "bearer x", "Bearer a b", "Token x"] {
        let status = app
            .client
            .post(app.url("/api/workers/heartbeat"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "Authorization: {header}");
    }
    assert_eq!(app.build(claimed.id).await.status, "building");
}

/// A valid secret on a resource it does not grant is 403 (a worker token
/// reading a build, on an admin route; an admin key on a worker route); a
/// secret nobody holds is 401 and learns nothing about which builds exist.
#[tokio::test]
async fn valid_secret_on_wrong_resource_is_403_unknown_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    let path = format!("/api/builds/{}", build.id);
    let status = app.get(&path, Some(&worker.token)).await.status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = app
        .post_json(
            "/api/builds",
            Some(&worker.token),
            &json!({"platform": "linux"}),
        )
        .await
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = app
        .post_json("/api/workers/heartbeat", Some(ADMIN_KEY), &json!({}))
        .await
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    for missing in [path.as_str(), "/api/builds/999999"] {
        let status = app.get(missing, Some("nobody-holds-this")).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{missing}");
    }
    assert_eq!(app.stats().await.builds_queued, 1);
}
