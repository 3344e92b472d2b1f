//! Retention: raw samples and events go (`freeagent purge`, the background
//! pass), every figure stays, and replays of removed samples stay
//! duplicates.

use std::time::Duration;

use crate::common::*;
use freeagent::stats::NetworkStats;
use reqwest::StatusCode;
use serde_json::json;

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
