//! Telemetry samples one by one: every invalid class is rejected alone and
//! the bounds themselves are valid; (build, attempt, seq) makes a replay a
//! duplicate that changes nothing; a build's CPU seconds come from the
//! percent estimate until a `cpuTimeS` counter arrives.

use crate::common::*;
use freeagent::wire::TelemetryAnswer;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
    assert_eq!(
        answer,
        TelemetryAnswer {
            build_status: Some("building".into()),
            ..TelemetryAnswer::default()
        }
    );
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
