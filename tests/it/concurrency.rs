//! Concurrency: workers polling at the same instant never share a build, and
//! concurrent telemetry writers (also replaying the same batch, also while a
//! retention pass runs) lose nothing and count nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::common::*;
use freeagent::wire::Snapshot;
use reqwest::StatusCode;
use tokio::sync::Barrier;

/// Many workers polling at once claim every build exactly once: no build
/// twice, none lost, each assigned to the worker that got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_polling_at_once_claim_each_build_exactly_once() {
    let app = Arc::new(TestApp::start().await);
    const WORKERS: usize = 16;
    const BUILDS: usize = 60;
    let mut submitted = BTreeSet::new();
    for _ in 0..BUILDS {
        submitted.insert(app.submit_build("linux").await.id);
    }
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(app.register_worker(&["linux"], 2, 2048).await);
    }
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut tasks = Vec::new();
    for worker in workers {
        let app = app.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut claimed = Vec::new();
            while let Some(build) = app.claim(&worker).await {
                claimed.push(build.id);
            }
            (worker.id, claimed)
        }));
    }
    let mut owner = BTreeMap::new();
    for task in tasks {
        let (worker, claimed) = task.await.unwrap();
        for id in claimed {
            if let Some(other) = owner.insert(id, worker) {
                panic!("build {id} claimed by worker {other} and worker {worker}");
            }
        }
    }
    assert_eq!(owner.keys().copied().collect::<BTreeSet<_>>(), submitted);
    for (id, worker) in &owner {
        let view = app.build(*id).await;
        assert_eq!(
            (view.status.as_str(), view.worker_id),
            ("assigned", Some(*worker))
        );
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats.builds_queued, stats.active_builds),
        (0, BUILDS as u64)
    );
}

/// Many writers posting telemetry at once (two writers per build, eight
/// builds, batches of 1..=8) lose nothing: every acknowledged sample is
/// stored and every figure equals the recomputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_telemetry_writers_lose_nothing() {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 1_000_000)
            .start()
            .await,
    );
    const BUILDS: usize = 8;
    const SAMPLES: i64 = 160;
    let mut running = Vec::new();
    for _ in 0..BUILDS {
        let worker = app.register_worker(&["linux"], 8, 16_384).await;
        let claimed = app.running_build(&worker, "linux").await;
        running.push((worker, claimed));
    }
    let barrier = Arc::new(Barrier::new(BUILDS * 2));
    let mut tasks = Vec::new();
    for (worker, claimed) in &running {
        for parity in 0..2 {
            let app = app.clone();
            let barrier = barrier.clone();
            let worker = worker.clone();
            let claimed = claimed.clone();
            tasks.push(tokio::spawn(async move {
                let mine: Vec<Snapshot> = (1..=SAMPLES)
                    .filter(|seq| seq % 2 == parity)
                    .map(|seq| {
                        sample(
                            seq,
                            claimed.assigned_at + seq * 100,
                            (seq % 700) as f64 + 0.25,
                            seq as f64 * 10.0,
                        )
                    })
                    .collect();
                barrier.wait().await;
                let mut size = 1;
                let mut acked = 0;
                for chunk_start in (0..mine.len()).step_by(8) {
                    let chunk = &mine[chunk_start..(chunk_start + size).min(mine.len())];
                    let rest = &mine
                        [(chunk_start + size).min(mine.len())..(chunk_start + 8).min(mine.len())];
                    for part in [chunk, rest] {
                        if part.is_empty() {
                            continue;
                        }
                        let (status, answer) = app.send(&worker, claimed.id, part).await;
                        assert_eq!(status, StatusCode::OK, "{answer:?}");
                        assert_eq!(answer.accepted as usize, part.len(), "{answer:?}");
                        acked += part.len();
                    }
                    size = size % 7 + 1;
                }
                acked
            }));
        }
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.unwrap();
    }
    assert_eq!(acked, BUILDS * SAMPLES as usize);

    let pool = app.db().await;
    let rows = samples_by_key(&pool).await;
    assert_eq!(rows.len(), acked, "every acknowledged sample is stored");
    let builds = raw_builds(&pool).await;
    let stats = app.stats().await;
    let r = recompute(&builds, &rows, stats.generated_at);
    assert_stats_match(&stats, &r, "after concurrent writers");
    for (_, claimed) in &running {
        let view = app.build(claimed.id).await;
        assert_build_matches(&view, &r.builds[&claimed.id], "after concurrent writers");
        assert_eq!(view.snapshot_count, SAMPLES);
        assert_eq!(app.snapshots(claimed.id).await.len(), SAMPLES as usize);
    }
}

/// The same batch posted by many requests at the same instant is stored
/// once: across all answers each sample is accepted exactly once and a
/// duplicate everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_replays_count_each_sample_once() {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 1_000_000)
            .start()
            .await,
    );
    let worker = app.register_worker(&["linux"], 8, 16_384).await;
    let claimed = app.running_build(&worker, "linux").await;
    const COPIES: usize = 12;
    for round in 0..5i64 {
        let batch: Vec<Snapshot> = (1..=20)
            .map(|i| {
                let seq = round * 20 + i;
                sample(seq, claimed.assigned_at + seq * 10, 100.0, 100.0)
            })
            .collect();
        let barrier = Arc::new(Barrier::new(COPIES));
        let mut tasks = Vec::new();
        for _ in 0..COPIES {
            let (app, worker, batch, barrier) =
                (app.clone(), worker.clone(), batch.clone(), barrier.clone());
            let id = claimed.id;
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                app.send(&worker, id, &batch).await
            }));
        }
        let (mut accepted, mut duplicates) = (0, 0);
        for task in tasks {
            let (status, answer) = task.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{answer:?}");
            accepted += answer.accepted;
            duplicates += answer.duplicates;
        }
        assert_eq!(accepted, 20, "round {round}");
        assert_eq!(duplicates, 20 * (COPIES as u64 - 1), "round {round}");
    }
    let view = app.build(claimed.id).await;
    assert_eq!(view.snapshot_count, 100);
    assert_eq!(view.cpu_seconds, 500.0);
    assert_eq!(app.stats().await.total_cpu_seconds, 500.0);
}

/// Retention passes running while telemetry arrives and the build finishes
/// change no figure: the build's figures equal those of everything
/// acknowledged, and replaying it all afterwards stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_during_ingestion_loses_nothing() {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 1_000_000)
            .start()
            .await,
    );
    let worker = app.register_worker(&["linux"], 8, 16_384).await;
    let claimed = app.running_build(&worker, "linux").await;
    let all: Vec<Snapshot> = (1..=300)
        .map(|seq| {
            counter_sample(
                seq,
                claimed.assigned_at + seq * 100,
                (seq % 800) as f64,
                (seq * 3 % 16_000) as f64,
                seq as f64 * 0.5,
            )
        })
        .collect();
    let writer = {
        let (app, worker, all) = (app.clone(), worker.clone(), all.clone());
        let id = claimed.id;
        tokio::spawn(async move {
            for chunk in all.chunks(5) {
                app.send_ok(&worker, id, chunk).await;
            }
            assert_eq!(app.complete(&worker, id, true).await, StatusCode::OK);
        })
    };
    let purger = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut removed = 0;
            for _ in 0..20 {
                removed += app.purge(0).await;
                tokio::time::sleep(std::time::Duration::from_millis(15)).await;
            }
            removed
        })
    };
    writer.await.unwrap();
    let removed = purger.await.unwrap();
    let left = app.snapshots(claimed.id).await.len() as u64;
    assert_eq!(
        removed + left,
        300,
        "every sample was stored once, then some purged"
    );

    let raw = raw_rows(claimed.id, all.iter());
    let expected = build_figures_from(&raw);
    let view = app.build(claimed.id).await;
    assert_build_matches(&view, &expected, "after purges during ingestion");
    let stats = figures(&app.stats().await);
    assert_eq!(stats.total_cpu_seconds, 150.0);
    assert_eq!(stats.total_builds, 1);
    for chunk in all.chunks(100) {
        let (status, answer) = app.send(&worker, claimed.id, chunk).await;
        assert_eq!(
            (status, answer.accepted, answer.duplicates),
            (StatusCode::OK, 0, 100)
        );
    }
    assert_eq!(app.build(claimed.id).await, view);
    assert_eq!(figures(&app.stats().await), stats);
}

/// Cancels racing polls, starts and completes keep every count exact: each
/// build ends in exactly one state, no build is claimed twice, a cancel is
/// 200 exactly when it won (409 once the build finished), and every figure
/// equals the recomputation from raw rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_claims_keep_counts_exact() {
    let app = Arc::new(TestApp::start().await);
    const WORKERS: usize = 8;
    const BUILDS: usize = 60;
    let mut ids = Vec::new();
    for _ in 0..BUILDS {
        ids.push(app.submit_build("linux").await.id);
    }
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(app.register_worker(&["linux"], 2, 2048).await);
    }
    let barrier = Arc::new(Barrier::new(WORKERS + 1));
    let mut tasks = Vec::new();
    for (n, worker) in workers.into_iter().enumerate() {
        let (app, barrier) = (app.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut claimed = Vec::new();
            while let Some(build) = app.claim(&worker).await {
                claimed.push(build.id);
                let started = app.start_build(&worker, build.id).await;
                assert!(
                    started == StatusCode::OK || started == StatusCode::CONFLICT,
                    "start: {started}"
                );
                if started == StatusCode::OK {
                    let success = (build.id + n as i64) % 3 != 0;
                    let done = app.complete(&worker, build.id, success).await;
                    assert!(
                        done == StatusCode::OK || done == StatusCode::CONFLICT,
                        "complete: {done}"
                    );
                }
            }
            claimed
        }));
    }
    let canceller = {
        let (app, barrier) = (app.clone(), barrier.clone());
        let mut order = ids.clone();
        order.reverse();
        order.rotate_left(BUILDS / 3);
        tokio::spawn(async move {
            barrier.wait().await;
            let mut outcomes = Vec::new();
            for id in order.into_iter().step_by(2) {
                outcomes.push((id, app.cancel(id, ADMIN_KEY).await));
            }
            outcomes
        })
    };
    let mut claimed = BTreeSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(claimed.insert(id), "build {id} claimed twice");
        }
    }
    let cancels = canceller.await.unwrap();
    for (id, status) in &cancels {
        let view = app.build(*id).await;
        match *status {
            StatusCode::OK => assert_eq!(view.status, "cancelled", "build {id}"),
            StatusCode::CONFLICT => assert!(
                view.status == "completed" || view.status == "failed",
                "build {id}: cancel refused but status {}",
                view.status
            ),
            other => panic!("cancel of build {id}: {other}"),
        }
    }
    for id in &ids {
        let view = app.build(*id).await;
        assert!(
            ["cancelled", "completed", "failed"].contains(&view.status.as_str()),
            "build {id} ended {}",
            view.status
        );
        if view.status != "cancelled" {
            assert!(claimed.contains(id), "build {id} finished unclaimed");
        }
    }
    let pool = app.db().await;
    let stats = app.stats().await;
    let r = recompute(
        &raw_builds(&pool).await,
        &BTreeMap::new(),
        stats.generated_at,
    );
    assert_stats_match(&stats, &r, "after cancels raced claims");
    assert_eq!((stats.builds_queued, stats.active_builds), (0, 0));
    let today = &app.daily(1).await[0];
    assert_eq!(
        (
            today.builds_finished,
            today.builds_failed,
            today.build_time_ms
        ),
        (r.today.0, r.today.1, r.today.2)
    );
}

/// Telemetry racing `complete` on many builds keeps every figure exact:
/// whichever lands first, a finished build's CPU seconds count on its day
/// and in the totals, as the recomputation from raw rows says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_racing_complete_keeps_daily_exact() {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 1_000_000)
            .start()
            .await,
    );
    const BUILDS: usize = 10;
    let mut tasks = Vec::new();
    let barrier = Arc::new(Barrier::new(BUILDS * 2));
    for b in 0..BUILDS {
        let worker = app.register_worker(&["linux"], 8, 16_384).await;
        let claimed = app.running_build(&worker, "linux").await;
        let with_counter = b % 2 == 0;
        let samples: Vec<Snapshot> = (1..=40)
            .map(|seq| {
                let mut s = sample(
                    seq,
                    claimed.assigned_at + seq * 200,
                    (seq * 13 % 800) as f64,
                    (seq * 100) as f64,
                );
                if with_counter && seq > 5 {
                    s.cpu_time_s = Some(seq as f64 * 1.25);
                }
                s
            })
            .collect();
        let (app1, worker1, barrier1, id) =
            (app.clone(), worker.clone(), barrier.clone(), claimed.id);
        tasks.push(tokio::spawn(async move {
            barrier1.wait().await;
            for chunk in samples.chunks(4) {
                app1.send_ok(&worker1, id, chunk).await;
            }
        }));
        let (app2, barrier2) = (app.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier2.wait().await;
            tokio::time::sleep(std::time::Duration::from_millis(3 * b as u64)).await;
            assert_eq!(app2.complete(&worker, id, b % 3 != 0).await, StatusCode::OK);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let pool = app.db().await;
    let rows = samples_by_key(&pool).await;
    assert_eq!(rows.len(), BUILDS * 40);
    let stats = app.stats().await;
    let r = recompute(&raw_builds(&pool).await, &rows, stats.generated_at);
    assert_stats_match(&stats, &r, "after telemetry raced complete");
    assert_eq!(stats.total_builds, BUILDS as u64);
    let today = &app.daily(1).await[0];
    assert_eq!(
        (
            today.builds_finished,
            today.builds_failed,
            today.build_time_ms
        ),
        (r.today.0, r.today.1, r.today.2)
    );
    assert!(
        (today.cpu_seconds - r.today.3 as f64 / 1e6).abs() < 1e-6 * BUILDS as f64,
        "daily cpuSeconds {} vs recomputed {}",
        today.cpu_seconds,
        r.today.3 as f64 / 1e6
    );
}

/// Telemetry arriving at the same instant is stored together, yet every
/// request gets its own answer: refusals (another worker's build, an
/// unknown build, a finished build, all samples invalid) change nothing
/// for the requests stored beside them, and the figures equal the
/// recomputation from raw rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_stored_beside_accepted_telemetry_change_nothing_else() {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| {
                a.telemetry_rate = 1_000_000;
                a.telemetry_grace = std::time::Duration::ZERO;
            })
            .start()
            .await,
    );
    let alice = app.register_worker(&["linux"], 8, 16_384).await;
    let bob = app.register_worker(&["linux"], 8, 16_384).await;
    let mine = app.running_build(&alice, "linux").await;
    let finished = app.running_build(&bob, "linux").await;
    assert_eq!(app.complete(&bob, finished.id, true).await, StatusCode::OK);
    let before = app.stats().await;

    const ROUNDS: i64 = 6;
    for round in 0..ROUNDS {
        let good: Vec<Snapshot> = (1..=5)
            .map(|i| {
                let seq = round * 5 + i;
                sample(seq, mine.assigned_at + seq * 10, 50.0 + i as f64, 100.0)
            })
            .collect();
        let invalid = vec![sample(999, mine.assigned_at + 10, -5.0, 100.0)];
        let barrier = Arc::new(Barrier::new(6));
        let spawn = |worker: Worker, build: i64, samples: Vec<Snapshot>| {
            let (app, barrier) = (app.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                app.send_raw(&worker, build, &samples).await
            })
        };
        let accepted = spawn(alice.clone(), mine.id, good.clone());
        let replay = spawn(alice.clone(), mine.id, good.clone());
        let foreign = spawn(bob.clone(), mine.id, good.clone());
        let unknown = spawn(alice.clone(), mine.id + 1000, good.clone());
        let rejected = spawn(alice.clone(), mine.id, invalid);
        let late = spawn(bob.clone(), finished.id, good.clone());

        let (s1, a1) = accepted.await.unwrap();
        let (s2, a2) = replay.await.unwrap();
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        let a1: freeagent::wire::TelemetryAnswer = serde_json::from_value(a1).unwrap();
        let a2: freeagent::wire::TelemetryAnswer = serde_json::from_value(a2).unwrap();
        assert_eq!(a1.accepted + a2.accepted, 5, "round {round}: {a1:?} {a2:?}");
        assert_eq!(a1.duplicates + a2.duplicates, 5, "round {round}");
        assert_eq!(foreign.await.unwrap().0, StatusCode::FORBIDDEN);
        assert_eq!(unknown.await.unwrap().0, StatusCode::NOT_FOUND);
        let (status, body) = rejected.await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["rejected"][0]["index"], 0);
        assert_eq!(late.await.unwrap().0, StatusCode::CONFLICT);
    }

    let view = app.build(mine.id).await;
    assert_eq!(view.snapshot_count, ROUNDS * 5);
    let pool = app.db().await;
    let rows = samples_by_key(&pool).await;
    assert_eq!(rows.len() as i64, ROUNDS * 5);
    let stats = app.stats().await;
    let r = recompute(&raw_builds(&pool).await, &rows, stats.generated_at);
    assert_stats_match(&stats, &r, "after mixed batches");
    assert_build_matches(&view, &r.builds[&mine.id], "after mixed batches");
    assert_eq!(app.build(finished.id).await.snapshot_count, 0);
    assert!(stats.total_cpu_seconds > before.total_cpu_seconds);
}
