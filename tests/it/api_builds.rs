//! The build lifecycle: submit, start, complete, cancel, which transitions
//! are 409 and which repeats change nothing, 404 for an unknown build, the
//! submit and complete field limits, and the lease reaper that requeues the
//! build of a silent worker.

use std::time::Duration;

use crate::common::*;
use freeagent::wire::BuildView;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
    let stats = figures(&app.stats().await);
    assert!(stats.queue_wait_p50_ms.is_some(), "two builds were claimed");
    assert_eq!(
        freeagent::stats::NetworkStats {
            queue_wait_p50_ms: None,
            queue_wait_p95_ms: None,
            ..stats
        },
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

/// A build cancelled while a worker holds it reaches that worker: its
/// heartbeats list the build for the telemetry grace period (other workers'
/// do not), and every telemetry answer carries the build's status.
#[tokio::test]
async fn cancellation_reaches_the_worker() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_grace = Duration::from_millis(1500))
        .start()
        .await;
    let worker = linux_worker(&app).await;
    let other = linux_worker(&app).await;
    let build = app.running_build(&worker, LINUX).await;
    let cancelled = |w: &Worker| {
        let token = w.token.clone();
        let app = &app;
        async move {
            let beat: freeagent::wire::Heartbeat = expect_json(
                app.post_empty("/api/workers/heartbeat", Some(&token)).await,
                StatusCode::OK,
            )
            .await;
            beat.cancelled
        }
    };
    assert_eq!(cancelled(&worker).await, Vec::<i64>::new());
    let (_, answer) = app
        .send(
            &worker,
            build.id,
            &[sample(1, build.assigned_at + 1000, 50.0, 10.0)],
        )
        .await;
    assert_eq!(answer.build_status.as_deref(), Some("building"));

    assert_eq!(app.cancel(build.id, ADMIN_KEY).await, StatusCode::OK);
    assert_eq!(cancelled(&worker).await, vec![build.id]);
    assert_eq!(cancelled(&other).await, Vec::<i64>::new());
    let (status, answer) = app
        .send(
            &worker,
            build.id,
            &[sample(2, build.assigned_at + 2000, 50.0, 10.0)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer.build_status.as_deref(), Some("cancelled"));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        cancelled(&worker).await,
        Vec::<i64>::new(),
        "listed only while it takes telemetry"
    );
}
