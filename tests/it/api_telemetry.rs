//! `POST /api/builds/{id}/telemetry` as a request: its body limits (413),
//! the grace period after a build ended (409), the per-worker rate (429),
//! the Swift worker's legacy bodies; and `GET /api/builds/{id}/snapshots`,
//! which reads the stored samples back exactly.

use std::time::Duration;

use crate::common::*;
use freeagent::wire::Snapshot;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
        json!({"accepted": 1, "duplicates": 0, "rejected": [], "buildStatus": "building"})
    );
    let view = app.build(claimed.id).await;
    assert_eq!(build_figures(&view), (2.1, Some(1024.0), 1));
    let stats = figures(&app.stats().await);
    assert!((stats.cpu_cores_busy - 0.42).abs() < 1e-9);

    let (status, answer) = app.telemetry(&worker, claimed.id, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 0, "duplicates": 1, "rejected": [], "buildStatus": "building"})
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
        sqlx::query_as("SELECT build_id, type, CAST(data AS TEXT) FROM build_events")
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
