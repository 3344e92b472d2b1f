//! Attempts: a build that goes back to the queue (the lease reaper, or its
//! worker releasing it) runs again as its next attempt, whose worker numbers
//! its samples from 1 and whose `cpuTimeS` starts from its own zero. Every
//! attempt counts: (build, attempt, seq) is the idempotency key, a build's
//! CPU seconds are the sum of its attempts', and a worker whose attempt
//! ended delivers that attempt's backlog for the grace period.

use std::time::Duration;

use crate::common::*;
use freeagent::wire::{BuildView, Snapshot};
use reqwest::StatusCode;
use serde_json::json;

/// Counter samples `seq`, one second apart from `assigned_at`, with these
/// `cpuTimeS` readings (seqs from `first`).
fn counters(assigned_at: i64, first: i64, readings: &[f64]) -> Vec<Snapshot> {
    readings
        .iter()
        .enumerate()
        .map(|(i, &reading)| {
            let seq = first + i as i64;
            counter_sample(
                seq,
                assigned_at + seq * 1000,
                50.0,
                100.0 * seq as f64,
                reading,
            )
        })
        .collect()
}

/// Percent-only samples with these `cpuPercent` values (`intervalS` 5).
fn percents(assigned_at: i64, values: &[f64]) -> Vec<Snapshot> {
    values
        .iter()
        .enumerate()
        .map(|(i, &percent)| {
            sample(
                i as i64 + 1,
                assigned_at + (i as i64 + 1) * 1000,
                percent,
                64.0,
            )
        })
        .collect()
}

/// Waits until the reaper took the build from its silent worker.
async fn wait_for_requeue(app: &TestApp, id: i64, attempt: i64) -> BuildView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = app.build(id).await;
        if view.attempt == attempt {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper did not requeue build {id}: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A controller with a 1 s lease and a build whose worker A sent seqs 1 and
/// 2 (`cpuTimeS` 0.5 and 1.0) and went silent until the reaper requeued it.
/// Also returns A's whole run, seqs 1 to 4 (up to 2.0).
async fn requeued_by_reaper() -> (TestApp, Worker, Claimed, Vec<Snapshot>) {
    let app = TestApp::builder()
        .with_args(|a| a.lease_timeout = Duration::from_secs(1))
        .start()
        .await;
    let a = linux_worker(&app).await;
    let build = app.running_build(&a, LINUX).await;
    let run = counters(build.assigned_at, 1, &[0.5, 1.0, 1.5, 2.0]);
    app.send_ok(&a, build.id, &run[..2]).await;
    assert_eq!(app.build(build.id).await.cpu_seconds, 1.0);
    let requeued = wait_for_requeue(&app, build.id, 2).await;
    assert_eq!(requeued.status, "pending");
    assert_eq!(
        requeued.cpu_seconds, 1.0,
        "a requeued build keeps its CPU seconds"
    );
    (app, a, build, run)
}

/// `holder` releases build `id` and `next` claims it as attempt 2; returns
/// attempt 2's assignment time.
async fn hand_over(app: &TestApp, holder: &Worker, next: &Worker, id: i64) -> i64 {
    assert_eq!(app.release(holder, id).await, StatusCode::OK);
    let claimed = app.claim(next).await.expect("the released build");
    assert_eq!((claimed.id, claimed.attempt), (id, 2));
    app.assigned_at(id).await
}

/// Every figure equals the recomputation from the raw rows.
async fn assert_books_exact(app: &TestApp, context: &str) {
    let pool = app.db().await;
    let rows = samples_by_key(&pool).await;
    let stats = app.stats().await;
    let recomputed = recompute(&raw_builds(&pool).await, &rows, stats.generated_at);
    assert_stats_match(&stats, &recomputed, context);
    for (id, figures) in &recomputed.builds {
        assert_build_matches(&app.build(*id).await, figures, context);
    }
    let today = &app.daily(1).await[0];
    assert_eq!(
        (
            today.builds_finished,
            today.builds_failed,
            today.build_time_ms
        ),
        (recomputed.today.0, recomputed.today.1, recomputed.today.2),
        "today's daily entry {context}"
    );
    assert_eq!(
        micros(today.cpu_seconds),
        recomputed.today.3,
        "today's cpuSeconds {context}"
    );
    assert_verified(&app.database_url, context).await;
}

/// The story: A runs attempt 1 to 1.0 CPU-seconds and goes silent;
/// the reaper requeues the build; B runs attempt 2 from seq 1 to 0.8 and
/// completes. The build used 1.8 CPU-seconds in 4 samples, and the books
/// say so.
#[tokio::test]
async fn requeued_build_counts_both_runs() {
    let (app, _a, first, _) = requeued_by_reaper().await;
    let b = linux_worker(&app).await;
    let claimed = app.claim(&b).await.expect("the requeued build");
    assert_eq!((claimed.id, claimed.attempt), (first.id, 2));
    assert_eq!(app.start_build(&b, first.id).await, StatusCode::OK);
    let second_at = app.assigned_at(first.id).await;
    let (status, answer) = app
        .send(&b, first.id, &counters(second_at, 1, &[0.4, 0.8]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        (answer.accepted, answer.duplicates),
        (2, 0),
        "attempt 2's seq 1 and 2 are new"
    );
    assert_eq!(app.complete(&b, first.id, true).await, StatusCode::OK);

    let view = app.build(first.id).await;
    assert_eq!((view.status.as_str(), view.attempt), ("completed", 2));
    assert_eq!(micros(view.cpu_seconds), 1_800_000, "1.0 + 0.8 CPU-seconds");
    assert_eq!(view.snapshot_count, 4);
    assert_eq!(view.peak_memory_mb, Some(200.0));
    assert_eq!(micros(app.stats().await.total_cpu_seconds), 1_800_000);
    assert_eq!(micros(app.daily(1).await[0].cpu_seconds), 1_800_000);
    let listed: Vec<(i64, i64)> = app
        .stored_snapshots(first.id)
        .await
        .iter()
        .map(|s| (s.attempt, s.sample.seq))
        .collect();
    assert_eq!(
        listed,
        vec![(1, 1), (1, 2), (2, 1), (2, 2)],
        "each sample lists its attempt, oldest first"
    );
    assert_books_exact(&app, "after the story").await;
}

/// The same worker is handed its own build back after a requeue and runs it
/// again from seq 1: both runs count, and A's requests now act on attempt 2.
#[tokio::test]
async fn same_worker_runs_its_build_again() {
    let (app, a, build, _) = requeued_by_reaper().await;
    let again = app.claim(&a).await.expect("its own build back");
    assert_eq!((again.id, again.attempt), (build.id, 2));
    assert_eq!(app.start_build(&a, build.id).await, StatusCode::OK);
    let second_at = app.assigned_at(build.id).await;
    app.send_ok(&a, build.id, &counters(second_at, 1, &[0.4, 0.8]))
        .await;
    assert_eq!(app.complete(&a, build.id, true).await, StatusCode::OK);
    let view = app.build(build.id).await;
    assert_eq!(micros(view.cpu_seconds), 1_800_000);
    assert_eq!(view.snapshot_count, 4);
    assert_books_exact(&app, "after the same worker ran it twice").await;
}

/// After the requeue, A delivers seqs 3 and 4 of attempt 1 (its backlog)
/// while B runs attempt 2: they count toward attempt 1, whose maximum
/// rises to 2.0, so the build shows 2.0 + B's 0.8. Replays of either
/// attempt's samples are duplicates and change nothing; a worker that never
/// held the build gets 403.
#[tokio::test]
async fn ended_attempt_delivers_its_backlog() {
    let (app, a, build, first_run) = requeued_by_reaper().await;
    let b = linux_worker(&app).await;
    assert_eq!(app.claim(&b).await.map(|c| c.attempt), Some(2));
    assert_eq!(app.start_build(&b, build.id).await, StatusCode::OK);
    let second_at = app.assigned_at(build.id).await;
    let second_run = counters(second_at, 1, &[0.4, 0.8]);
    app.send_ok(&b, build.id, &second_run).await;

    // A's backlog, after its attempt ended.
    app.send_ok(&a, build.id, &first_run[2..]).await;
    let view = app.build(build.id).await;
    assert_eq!(
        micros(view.cpu_seconds),
        2_800_000,
        "attempt 1's 2.0 + attempt 2's 0.8"
    );
    assert_eq!(view.snapshot_count, 6);
    assert_eq!(
        view.status, "building",
        "the backlog does not disturb attempt 2"
    );
    assert_books_exact(&app, "after A's backlog").await;

    let stranger = linux_worker(&app).await;
    let before = (figures(&app.stats().await), app.build(build.id).await);
    for (worker, samples) in [(&a, &first_run), (&b, &second_run)] {
        let (status, answer) = app.send(worker, build.id, samples).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (answer.accepted, answer.duplicates),
            (0, samples.len() as u64),
            "a replay of an attempt's samples is a duplicate"
        );
    }
    let after = (figures(&app.stats().await), app.build(build.id).await);
    assert_eq!(after, before, "replays change no figure");

    let error = expect_error(
        app.post_json(
            &format!("/api/builds/{}/telemetry", build.id),
            Some(&stranger.token),
            &batch(&first_run[..1]),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(error.code, "forbidden");
    assert_eq!(
        (figures(&app.stats().await), app.build(build.id).await),
        before,
        "a stranger's samples change nothing"
    );

    assert_eq!(app.complete(&b, build.id, false).await, StatusCode::OK);
    // After the build finished, A's backlog still counts within the grace
    // period: the finishing day's CPU seconds follow.
    let late = counters(build.assigned_at, 5, &[2.5]);
    app.send_ok(&a, build.id, &late).await;
    assert_eq!(micros(app.build(build.id).await.cpu_seconds), 3_300_000);
    assert_books_exact(&app, "after a late sample of a finished build").await;
}

/// Past the grace period after its attempt ended, the old worker's samples
/// are 409 and change nothing.
#[tokio::test]
async fn ended_attempt_closes_after_the_grace_period() {
    let app = TestApp::builder()
        .with_args(|a| a.telemetry_grace = Duration::from_millis(800))
        .start()
        .await;
    let a = linux_worker(&app).await;
    let build = app.running_build(&a, LINUX).await;
    app.send_ok(&a, build.id, &percents(build.assigned_at, &[100.0]))
        .await;
    assert_eq!(app.release(&a, build.id).await, StatusCode::OK);
    app.send_ok(
        &a,
        build.id,
        &percents(build.assigned_at, &[100.0, 50.0])[1..],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = (figures(&app.stats().await), app.build(build.id).await);
    let late = vec![sample(3, build.assigned_at + 3000, 10.0, 64.0)];
    let error = expect_error(
        app.post_json(
            &format!("/api/builds/{}/telemetry", build.id),
            Some(&a.token),
            &batch(&late),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error.code, "conflict");
    assert_eq!(
        (figures(&app.stats().await), app.build(build.id).await),
        before
    );
    assert_eq!(micros(before.1.cpu_seconds), 7_500_000, "5 s + 2.5 s");
}

/// Two percent-only attempts: the build's CPU seconds are their sum.
#[tokio::test]
async fn percent_only_attempts_sum() {
    let app = TestApp::start().await;
    let a = linux_worker(&app).await;
    let b = linux_worker(&app).await;
    let build = app.running_build(&a, LINUX).await;
    // 100 % and 100 % for 5 s each: 10 s.
    app.send_ok(&a, build.id, &percents(build.assigned_at, &[100.0, 100.0]))
        .await;
    let second_at = hand_over(&app, &a, &b, build.id).await;
    // 50 % and 30 % for 5 s each: 4 s, same seqs as attempt 1.
    app.send_ok(&b, build.id, &percents(second_at, &[50.0, 30.0]))
        .await;
    let view = app.build(build.id).await;
    assert_eq!(micros(view.cpu_seconds), 14_000_000);
    assert_eq!(view.snapshot_count, 4);
    assert_books_exact(&app, "after two percent-only attempts").await;
}

/// A percent-only attempt next to one with counters: each is accounted on
/// its own, and the counter replaces only its own attempt's estimate.
#[tokio::test]
async fn counter_in_one_attempt_only() {
    let app = TestApp::start().await;
    let a = linux_worker(&app).await;
    let b = linux_worker(&app).await;
    let build = app.running_build(&a, LINUX).await;
    app.send_ok(&a, build.id, &percents(build.assigned_at, &[100.0, 100.0]))
        .await;
    let second_at = hand_over(&app, &a, &b, build.id).await;
    // Its first sample carries no counter (a 5 s estimate), the next do.
    let mut second = percents(second_at, &[100.0]);
    second.extend(counters(second_at, 2, &[1.5, 3.0]));
    app.send_ok(&b, build.id, &second[..1]).await;
    assert_eq!(micros(app.build(build.id).await.cpu_seconds), 15_000_000);
    app.send_ok(&b, build.id, &second[1..]).await;
    let view = app.build(build.id).await;
    assert_eq!(
        micros(view.cpu_seconds),
        13_000_000,
        "attempt 1's 10 s estimate + attempt 2's counter 3.0"
    );
    // A late percent-only sample of attempt 1 still adds to attempt 1.
    app.send_ok(
        &a,
        build.id,
        &[sample(3, build.assigned_at + 3000, 20.0, 64.0)],
    )
    .await;
    assert_eq!(micros(app.build(build.id).await.cpu_seconds), 14_000_000);
    assert_books_exact(&app, "after a counter in one attempt only").await;
}

/// Three attempts: the third release fails the build ("released by its
/// worker"), all three count, and it is one finished, failed build.
#[tokio::test]
async fn third_attempt_fails_and_all_three_count() {
    let app = TestApp::start().await;
    let workers = [
        linux_worker(&app).await,
        linux_worker(&app).await,
        linux_worker(&app).await,
    ];
    let build = app.submit_build(LINUX).await;
    for (attempt, worker) in (1..).zip(&workers) {
        let claimed = app.claim(worker).await.expect("the build");
        assert_eq!((claimed.id, claimed.attempt), (build.id, attempt));
        assert_eq!(app.start_build(worker, build.id).await, StatusCode::OK);
        let at = app.assigned_at(build.id).await;
        app.send_ok(worker, build.id, &counters(at, 1, &[attempt as f64]))
            .await;
        assert_eq!(app.release(worker, build.id).await, StatusCode::OK);
        let view = app.build(build.id).await;
        if attempt < 3 {
            assert_eq!(
                (view.status.as_str(), view.attempt),
                ("pending", attempt + 1)
            );
            assert_eq!(view.worker_id, None);
            assert_eq!(view.started_at, None);
        } else {
            assert_eq!((view.status.as_str(), view.attempt), ("failed", 3));
            assert_eq!(view.error.as_deref(), Some("released by its worker"));
            assert!(view.completed_at.is_some());
        }
    }
    let view = app.build(build.id).await;
    assert_eq!(micros(view.cpu_seconds), 6_000_000, "1 + 2 + 3 CPU-seconds");
    assert_eq!(view.snapshot_count, 3);
    let stats = app.stats().await;
    assert_eq!(
        (stats.builds_queued, stats.active_builds, stats.total_builds),
        (0, 0, 1)
    );
    let today = &app.daily(1).await[0];
    assert_eq!((today.builds_finished, today.builds_failed), (1, 1));
    assert_eq!(micros(today.cpu_seconds), 6_000_000);
    assert_books_exact(&app, "after three attempts").await;
}

/// `/release`: 401 without a worker token, 404 for an unknown build, 403
/// for a worker that never held the build, 409 for a build its worker
/// finished; a repeat of an accepted release is 200 and changes nothing.
#[tokio::test]
async fn release_refusals_change_nothing() {
    let app = TestApp::start().await;
    let a = linux_worker(&app).await;
    let b = linux_worker(&app).await;
    let running = app.running_build(&a, LINUX).await;
    app.send_ok(&a, running.id, &percents(running.assigned_at, &[80.0]))
        .await;
    let finished = app.running_build(&b, LINUX).await;
    assert_eq!(app.complete(&b, finished.id, true).await, StatusCode::OK);

    let snapshot = || async {
        (
            figures(&app.stats().await),
            app.build(running.id).await,
            app.build(finished.id).await,
        )
    };
    let before = snapshot().await;
    let path = format!("/api/builds/{}/release", running.id);
    for (secret, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("not-a-token"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Some(b.token.as_str()), StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let error = expect_error(app.post_empty(&path, secret).await, status).await;
        assert_eq!(error.code, code, "{secret:?}");
    }
    let error = expect_error(
        app.post_empty("/api/builds/999999/release", Some(&a.token))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(error.code, "not_found");
    let error = expect_error(
        app.post_empty(
            &format!("/api/builds/{}/release", finished.id),
            Some(&b.token),
        )
        .await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(error.code, "conflict");
    assert_eq!(snapshot().await, before, "refused releases change nothing");

    assert_eq!(app.release(&a, running.id).await, StatusCode::OK);
    let released = snapshot().await;
    assert_eq!(released.1.status, "pending");
    assert_eq!(
        released.1.cpu_seconds, before.1.cpu_seconds,
        "CPU seconds kept"
    );
    assert_eq!(
        app.release(&a, running.id).await,
        StatusCode::OK,
        "a repeat"
    );
    assert_eq!(
        snapshot().await,
        released,
        "a repeated release changes nothing"
    );
    // Once another worker holds it, the old worker still cannot act on it.
    assert_eq!(app.claim(&b).await.map(|c| c.id), Some(running.id));
    assert_eq!(app.start_build(&a, running.id).await, StatusCode::FORBIDDEN);
    assert_eq!(
        app.release(&a, running.id).await,
        StatusCode::OK,
        "still a repeat"
    );
    assert_eq!(app.build(running.id).await.worker_id, Some(b.id));
    let body = json!({"success": true});
    let response = app
        .post_json(
            &format!("/api/builds/{}/complete", running.id),
            Some(&a.token),
            &body,
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// Builds a database at the schema before attempts existed, holding what
/// the controller of that schema wrote: a finished build, a running one with
/// a purged (tombstoned) sample, a requeued one waiting in the queue, and a
/// running second attempt whose samples mix both runs. Returns the sample
/// that retention removed, keyed as the recomputation takes it.
async fn database_before_attempts(path: &std::path::Path, now: i64) -> RawSample {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open");
    let mut before = sqlx::migrate!("migrations/sqlite");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < 20261202000001)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.expect("the schema before attempts");
    for id in 1..=3 {
        sqlx::query(
            "INSERT INTO workers (id, name, platforms, cpu_cores, memory_mb, token_hash,
             registered_at, last_seen_at) VALUES (?, ?, '[\"linux\"]', 4, 8192, ?, ?, ?)",
        )
        .bind(id)
        .bind(format!("old-{id}"))
        .bind(&freeagent::auth::hash_secret(&format!("old-token-{id}"))[..])
        .bind(now - 100_000)
        .bind(now - 1_000)
        .execute(&pool)
        .await
        .expect("worker");
    }
    // id, status, worker, attempt, assigned, started, completed,
    // percent µs, counter µs, peak, count, has tombstones
    type Build = (
        i64,
        &'static str,
        Option<i64>,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        i64,
        Option<i64>,
        f64,
        i64,
        bool,
    );
    let builds: [Build; 4] = [
        (
            1,
            "completed",
            Some(1),
            1,
            Some(now - 89_000),
            Some(now - 88_000),
            Some(now - 60_000),
            5_000_000,
            Some(4_000_000),
            300.0,
            2,
            false,
        ),
        (
            2,
            "building",
            Some(2),
            1,
            Some(now - 50_000),
            Some(now - 49_000),
            None,
            12_500_000,
            None,
            700.0,
            3,
            true,
        ),
        (
            3, "pending", None, 2, None, None, None, 4_000_000, None, 64.0, 1, false,
        ),
        (
            4,
            "building",
            Some(3),
            2,
            Some(now - 20_000),
            Some(now - 19_000),
            None,
            5_000_000,
            Some(1_000_000),
            128.0,
            2,
            false,
        ),
    ];
    for (
        id,
        status,
        worker,
        attempt,
        assigned,
        started,
        completed,
        percent,
        counter,
        peak,
        count,
        tombstones,
    ) in builds
    {
        sqlx::query(
            "INSERT INTO builds (id, status, platform, worker_id, attempt, submitted_at, assigned_at,
             started_at, completed_at, token_hash, cpu_percent_micros, cpu_counter_micros,
             peak_memory_mb, snapshot_count, has_tombstones, oldest_raw_received_at)
             VALUES (?, ?, 'linux', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(status)
        .bind(worker)
        .bind(attempt)
        .bind(now - 95_000)
        .bind(assigned)
        .bind(started)
        .bind(completed)
        .bind(&freeagent::auth::hash_secret(&format!("build-token-{id}"))[..])
        .bind(percent)
        .bind(counter)
        .bind(peak)
        .bind(count)
        .bind(tombstones)
        .bind(now - 90_000)
        .execute(&pool)
        .await
        .expect("build");
    }
    // build, seq, sampled_at, cpu %, memory, cpuTimeS
    let samples: [(i64, i64, i64, f64, f64, Option<f64>); 7] = [
        (1, 1, now - 87_000, 50.0, 200.0, Some(2.0)),
        (1, 2, now - 86_000, 50.0, 300.0, Some(4.0)),
        (2, 1, now - 48_000, 100.0, 700.0, None),
        (2, 3, now - 46_000, 50.0, 600.0, None),
        (3, 1, now - 70_000, 80.0, 64.0, None),
        // Build 4: seq 1 from its first run, seq 5 from its second.
        (4, 1, now - 40_000, 50.0, 100.0, Some(1.0)),
        (4, 5, now - 15_000, 50.0, 128.0, Some(0.5)),
    ];
    for (build, seq, at, percent, memory, counter) in samples {
        sqlx::query(
            "INSERT INTO sample_rows (build_id, seq, sampled_at, cpu_percent, memory_mb,
             cpu_time_s, interval_s, received_after_ms) VALUES (?, ?, ?, ?, ?, ?, NULL, 10)",
        )
        .bind(build)
        .bind(seq)
        .bind(at)
        .bind(percent)
        .bind(memory)
        .bind(counter)
        .execute(&pool)
        .await
        .expect("sample");
    }
    sqlx::query("INSERT INTO sample_tombstones (build_id, seq) VALUES (2, 2)")
        .execute(&pool)
        .await
        .expect("tombstone");
    sqlx::query(
        "UPDATE totals SET builds_pending = 1, builds_active = 2, builds_finished = 1,
         build_time_ms = 28000, cpu_micros = 4000000 + 12500000 + 4000000 + 1000000",
    )
    .execute(&pool)
    .await
    .expect("totals");
    sqlx::query("INSERT INTO daily VALUES (?, 1, 0, 28000, 4000000)")
        .bind((now - 60_000).div_euclid(86_400_000))
        .execute(&pool)
        .await
        .expect("daily");
    pool.close().await;
    RawSample {
        build_id: 2,
        attempt: 1,
        seq: 2,
        sampled_at: now - 47_000,
        cpu_percent: 100.0,
        memory_mb: 650.0,
        cpu_time_s: None,
        interval_s: 5,
    }
}

/// A database at the schema before attempts migrates on start: existing
/// samples become attempt 1 and every figure stays what it was; then replays
/// of old samples (a purged one too) are duplicates, running workers go on,
/// a requeued build's next attempt counts from seq 1, and every figure
/// equals the recomputation from the raw rows.
#[tokio::test]
async fn database_before_attempts_migrates_with_unchanged_figures() {
    if sqlite_only("migrates a SQLite file written at an older schema") {
        return;
    }
    let old = tempfile::tempdir().expect("temp dir");
    let old_path = old.path().join("old.db");
    let now = now_ms();
    let purged = database_before_attempts(&old_path, now).await;
    let app = TestApp::builder()
        .existing_database(&old_path)
        .start()
        .await;

    let stats = app.stats().await;
    assert_eq!(
        (
            stats.builds_queued,
            stats.active_builds,
            stats.total_builds,
            stats.total_build_time_ms
        ),
        (1, 2, 1, 28_000)
    );
    assert_eq!(micros(stats.total_cpu_seconds), 21_500_000);
    let old_figures = [
        (1, 4_000_000, 300.0, 2, 1),
        (2, 12_500_000, 700.0, 3, 1),
        (3, 4_000_000, 64.0, 1, 2),
        (4, 1_000_000, 128.0, 2, 2),
    ];
    for (id, cpu, peak, count, attempt) in old_figures {
        let view = app.build(id).await;
        assert_eq!(
            (
                micros(view.cpu_seconds),
                view.peak_memory_mb,
                view.snapshot_count,
                view.attempt
            ),
            (cpu, Some(peak), count, attempt),
            "build {id} after the migration"
        );
    }
    assert!(app.stored_snapshots(4).await.iter().all(|s| s.attempt == 1));

    let worker = |id: i64| Worker {
        id,
        token: format!("old-token-{id}"),
        cores: 4,
        memory_mb: 8192,
    };
    // Build 2's worker goes on: its old seqs (seq 2 purged) are duplicates.
    let replays = [
        sample(2, purged.sampled_at, 100.0, 650.0),
        sample(3, now - 46_000, 50.0, 600.0),
    ];
    let (status, answer) = app.send(&worker(2), 2, &replays).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((answer.accepted, answer.duplicates), (0, 2));
    app.send_ok(&worker(2), 2, &[sample(4, now, 20.0, 500.0)])
        .await;
    // Build 4's worker, on attempt 2, goes on with its own counter.
    app.send_ok(&worker(3), 4, &[counter_sample(6, now, 50.0, 128.0, 0.7)])
        .await;
    // The requeued build 3 runs as attempt 2 from seq 1.
    let claimed = app.claim(&worker(1)).await.expect("the requeued build");
    assert_eq!((claimed.id, claimed.attempt), (3, 2));
    app.send_ok(&worker(1), 3, &[sample(1, now_ms(), 40.0, 64.0)])
        .await;
    let view = app.build(3).await;
    assert_eq!(
        (micros(view.cpu_seconds), view.snapshot_count),
        (6_000_000, 2)
    );

    let pool = app.db().await;
    let mut rows = samples_by_key(&pool).await;
    rows.insert((purged.build_id, purged.attempt, purged.seq), purged);
    let stats = app.stats().await;
    let recomputed = recompute(&raw_builds(&pool).await, &rows, stats.generated_at);
    assert_stats_match(&stats, &recomputed, "after the migration");
    for (id, figures) in &recomputed.builds {
        assert_build_matches(&app.build(*id).await, figures, "after the migration");
    }
}
