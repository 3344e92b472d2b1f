//! Time to a machine: `queueWaitP50Ms` and `queueWaitP95Ms` against the
//! exact percentiles of the raw rows, requeued builds counted once, and the
//! 24-hour window.
//!
//! The controller reads the real clock, so the tests move time through the
//! database instead: a build's wait is made known by moving its
//! `submittedAt` back before it is claimed, and a day passes by moving the
//! stored claim times (the raw attempts and the queue-wait counts) back by
//! a day, which is what the clock moving forward by a day looks like to
//! every query.

use std::time::Duration;

use freeagent::stats::queue_wait::{exact_percentile, first_slot, SLOT_MS, WINDOW_SLOTS};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::common::*;

/// A writable pool on the controller's database, for moving times.
async fn writable_db(app: &TestApp) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(&app.database_url)
        .await
        .expect("open the database")
}

/// Claims the oldest pending build with `worker`, starts and completes it.
async fn claim_and_finish(app: &TestApp, worker: &Worker) -> i64 {
    let claimed = app.claim(worker).await.expect("a pending build");
    assert_eq!(app.start_build(worker, claimed.id).await, StatusCode::OK);
    assert_eq!(app.complete(worker, claimed.id, true).await, StatusCode::OK);
    claimed.id
}

/// Builds submitted, then claimed after waits the test chose, some of them
/// requeued by the lease reaper and claimed again: both percentiles are
/// within 2% of the exact ones over first assignments, and the second
/// claims, which would move them far, count for nothing.
#[tokio::test]
async fn percentiles_are_within_two_percent_and_requeues_count_once() {
    let app = TestApp::builder()
        .with_args(|a| a.lease_timeout = Duration::from_secs(1))
        .start()
        .await;
    let before = app.stats().await;
    assert_eq!(
        (before.queue_wait_p50_ms, before.queue_wait_p95_ms),
        (None, None)
    );
    let db = writable_db(&app).await;

    // Ten builds claimed at once by a worker that then falls silent: the
    // reaper puts them back in the queue as their second attempt.
    let silent = linux_worker(&app).await;
    let mut requeued = Vec::new();
    for _ in 0..10 {
        let build = app.submit_build(LINUX).await;
        let claimed = app.claim(&silent).await.expect("the build just submitted");
        assert_eq!(claimed.id, build.id);
        requeued.push(build.id);
    }
    for &id in &requeued {
        wait_for(Duration::from_secs(20), "the reaper to requeue", || async {
            let view = app.build(id).await;
            (view.status == "pending" && view.attempt == 2).then_some(())
        })
        .await;
    }

    // Twenty builds with waits from 1 s to about 3 h, chosen here: each is
    // submitted, then its submittedAt is moved back by its wait.
    let chosen: Vec<i64> = (1..=20i64).map(|i| i * i * 27_000 + i * 1_300).collect();
    let mut fresh = Vec::new();
    for &wait in &chosen {
        let build = app.submit_build(LINUX).await;
        sqlx::query("UPDATE builds SET submitted_at = submitted_at - $1 WHERE id = $2")
            .bind(wait)
            .bind(build.id)
            .execute(&db)
            .await
            .expect("move submittedAt back");
        fresh.push(build.id);
    }
    // One worker claims them all, oldest first: the requeued ones (their
    // second claim, seconds after submission), then the twenty.
    let worker = linux_worker(&app).await;
    for &id in requeued.iter().chain(&fresh) {
        assert_eq!(claim_and_finish(&app, &worker).await, id);
    }

    let pool = app.db().await;
    let firsts = raw_first_waits(&pool, i64::MIN).await;
    assert_eq!(firsts.len(), 30, "every build was first assigned once");
    for (&id, &wait) in fresh.iter().zip(&chosen) {
        let measured = firsts
            .iter()
            .find(|(b, _)| *b == id)
            .expect("first claim")
            .1;
        assert!(
            (wait..wait + 10_000).contains(&measured),
            "build {id} waited {measured} ms, chosen {wait} ms"
        );
    }
    let waits: Vec<i64> = firsts.iter().map(|&(_, w)| w).collect();
    let stats = app.stats().await;
    assert_queue_wait_matches(&stats, &waits, "over first assignments");
    assert!(stats.queue_wait_p95_ms > stats.queue_wait_p50_ms);

    // Counting the second claims too would have moved the median by far
    // more than 2%: the test tells the two apart.
    let seconds: Vec<i64> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT a.assigned_at, b.submitted_at FROM attempts a JOIN builds b ON b.id = a.build_id
         WHERE a.attempt = 2",
    )
    .fetch_all(&pool)
    .await
    .expect("second attempts")
    .into_iter()
    .map(|(assigned, submitted)| assigned - submitted)
    .collect();
    assert_eq!(seconds.len(), 10);
    let mut with_seconds = [waits.clone(), seconds].concat();
    let wrong = exact_percentile(&mut with_seconds, 50).expect("values");
    let shown = stats.queue_wait_p50_ms.expect("a median");
    assert!(
        (shown - wrong).abs() as f64 > 0.1 * wrong as f64,
        "the median {shown} ms cannot tell first claims from all claims ({wrong} ms)"
    );
}

/// The window is the last 24 hours, exact to the minute: claims 23 h 58
/// min old still count; a day after the last claim both figures are null;
/// and the next claim removes the counts that left the window.
#[tokio::test]
async fn figures_are_null_a_day_after_the_last_claim() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    for _ in 0..5 {
        app.submit_build(LINUX).await;
    }
    for _ in 0..5 {
        claim_and_finish(&app, &worker).await;
    }
    let db = writable_db(&app).await;
    let pool = app.db().await;
    let waits: Vec<i64> = raw_first_waits(&pool, now_ms())
        .await
        .iter()
        .map(|&(_, w)| w)
        .collect();
    let stats = app.stats().await;
    assert_queue_wait_matches(&stats, &waits, "just after the claims");
    assert!(stats.queue_wait_p50_ms.is_some());

    // 23 h 58 min later.
    pass_time(&db, (WINDOW_SLOTS - 2) * SLOT_MS).await;
    let later = app.stats().await;
    assert_eq!(
        (later.queue_wait_p50_ms, later.queue_wait_p95_ms),
        (stats.queue_wait_p50_ms, stats.queue_wait_p95_ms),
        "claims 23 h 58 min old are in the window"
    );
    // A day and more after the claims.
    pass_time(&db, 2 * SLOT_MS).await;
    let day_later = app.stats().await;
    assert_eq!(
        (day_later.queue_wait_p50_ms, day_later.queue_wait_p95_ms),
        (None, None),
        "no build first assigned in the last 24 h"
    );
    let raw = raw_first_waits(&pool, now_ms()).await;
    assert!(raw.is_empty(), "the raw rows agree: {raw:?}");
    let raw: Value = expect_json(app.get("/api/stats", None).await, StatusCode::OK).await;
    assert!(
        raw["queueWaitP50Ms"].is_null() && raw["queueWaitP95Ms"].is_null(),
        "{raw}"
    );

    // The next claim counts alone, and the old counts are gone.
    app.submit_build(LINUX).await;
    claim_and_finish(&app, &worker).await;
    let recent: Vec<i64> = raw_first_waits(&pool, now_ms())
        .await
        .iter()
        .map(|&(_, w)| w)
        .collect();
    assert_eq!(recent.len(), 1);
    assert_queue_wait_matches(&app.stats().await, &recent, "after one new claim");
    let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_wait_slots WHERE slot < $1")
        .bind(first_slot(now_ms()))
        .fetch_one(&pool)
        .await
        .expect("count slots");
    assert_eq!(stale, 0, "counts that left the window are removed");
}

/// Moves every stored claim time back by `ms`: to every query, the clock
/// moved forward by `ms`.
async fn pass_time(db: &AnyPool, ms: i64) {
    assert_eq!(ms % SLOT_MS, 0, "whole minutes");
    for statement in [
        "UPDATE attempts SET assigned_at = assigned_at - $1",
        "UPDATE builds SET submitted_at = submitted_at - $1",
    ] {
        sqlx::query(statement)
            .bind(ms)
            .execute(db)
            .await
            .expect("move times back");
    }
    sqlx::query("UPDATE queue_wait_slots SET slot = slot - $1")
        .bind(ms / SLOT_MS)
        .execute(db)
        .await
        .expect("move the counts back");
}
