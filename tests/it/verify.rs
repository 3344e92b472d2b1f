//! `freeagent verify [--repair]` and `freeagent backup FILE`, as an
//! operator runs them: the real binary against a database a controller is
//! serving, with real writers posting at the same time.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use freeagent::wire::Snapshot;
use reqwest::StatusCode;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use tokio::task::JoinHandle;

use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_freeagent");

/// What a run of the binary printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `freeagent ARGS` with no database flag from the environment.
async fn freeagent(args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_remove("FREEAGENT_DATABASE_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("freeagent finishes within 120 s")
    .expect("run freeagent");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    /// Asserts the exit code, showing what the run printed otherwise.
    fn expect_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}{}", self.stdout, self.stderr);
    }
}

/// `freeagent verify --database-url URL [--repair]`.
async fn verify(database_url: &str, repair: bool) -> Run {
    let mut args = vec!["verify", "--database-url", database_url];
    if repair {
        args.push("--repair");
    }
    freeagent(&args).await
}

/// A pool that writes behind the controller's back.
async fn writable_pool(database_url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .expect("open the database for writing")
}

/// Asserts that every figure `/api/stats` and each build's view show
/// equals the recomputation from the raw rows, and from `purged`: the rows
/// retention removed before.
async fn assert_figures_match_raw_rows(app: &TestApp, purged: &Rows, context: &str) {
    let pool = app.db().await;
    let builds = raw_builds(&pool).await;
    let mut rows = purged.clone();
    rows.extend(samples_by_key(&pool).await);
    let stats = app.stats().await;
    let r = recompute(&builds, &rows, stats.generated_at);
    assert_stats_match(&stats, &r, context);
    for build in &builds {
        let view = app.build(build.id).await;
        assert_build_matches(&view, &r.builds[&build.id], context);
    }
}

/// Raw sample rows by key.
type Rows = std::collections::BTreeMap<SampleKey, RawSample>;

/// Samples `from..=to` of a run assigned at `assigned_at`, every third
/// carrying a `cpuTimeS` counter.
fn samples(assigned_at: i64, from: i64, to: i64) -> Vec<Snapshot> {
    (from..=to)
        .map(|seq| {
            let at = assigned_at + seq * 10;
            if seq % 3 == 0 {
                counter_sample(seq, at, 37.5, 100.0 + seq as f64, seq as f64 * 0.01)
            } else {
                sample(seq, at, 12.25 * (seq % 5) as f64, 64.0 + seq as f64)
            }
        })
        .collect()
}

/// A worker of its own platform that runs builds in a loop until `stop`:
/// claim, start, post samples in batches, now and then give the build
/// back (its next attempt runs again), then complete it (every fourth
/// failed). Returns how many builds it finished.
fn writer(app: Arc<TestApp>, index: usize, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let platform = format!("verify-{index}");
        let worker = app.register_worker(&[platform.as_str()], 4, 8192).await;
        let mut finished = 0;
        while !stop.load(Ordering::Relaxed) {
            let claimed = app.running_build(&worker, &platform).await;
            if finished % 3 == 1 {
                app.send_ok(&worker, claimed.id, &samples(claimed.assigned_at, 1, 4))
                    .await;
                assert_eq!(app.release(&worker, claimed.id).await, StatusCode::OK);
                let again = app.claim(&worker).await.expect("its build again");
                assert_eq!((again.id, again.attempt), (claimed.id, 2));
                assert_eq!(app.start_build(&worker, claimed.id).await, StatusCode::OK);
            }
            let assigned_at = app.assigned_at(claimed.id).await;
            for (from, to) in [(1, 5), (6, 6), (7, 12)] {
                app.send_ok(&worker, claimed.id, &samples(assigned_at, from, to))
                    .await;
            }
            let success = finished % 4 != 3;
            assert_eq!(
                app.complete(&worker, claimed.id, success).await,
                StatusCode::OK
            );
            finished += 1;
        }
        finished
    })
}

/// The writers on a controller: their flag and their tasks.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<usize>>,
}

/// A controller without a telemetry rate limit, and four writers on it
/// until the load is stopped.
async fn app_with_four_writers() -> (Arc<TestApp>, Load) {
    let app = Arc::new(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 1_000_000)
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers = (0..4)
        .map(|i| writer(app.clone(), i, stop.clone()))
        .collect();
    (app, Load { stop, writers })
}

/// Stops the writers; returns how many builds they finished.
async fn stop_writers(load: Load) -> usize {
    load.stop.store(true, Ordering::Relaxed);
    let mut finished = 0;
    for writer in load.writers {
        finished += tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("a writer stops within 60 s")
            .expect("a writer ran without a failed assertion");
    }
    finished
}

/// A served database with every kind of figure: finished, failed,
/// requeued, cancelled and running builds, counters and percent samples,
/// and a build whose samples retention removed. Returns a finished build
/// whose samples are all there, and the rows retention removed.
async fn rich_database(app: &TestApp) -> (i64, Rows) {
    let worker = linux_worker(app).await;
    let purged = app.running_build(&worker, LINUX).await;
    app.send_ok(&worker, purged.id, &samples(purged.assigned_at, 1, 4))
        .await;
    assert_eq!(
        app.complete(&worker, purged.id, false).await,
        StatusCode::OK
    );
    let removed = samples_by_key(&app.db().await).await;
    assert!(app.purge(0).await > 0);
    let done = app.running_build(&worker, LINUX).await;
    app.send_ok(&worker, done.id, &samples(done.assigned_at, 1, 9))
        .await;
    assert_eq!(app.complete(&worker, done.id, true).await, StatusCode::OK);
    let requeued = app.running_build(&worker, LINUX).await;
    app.send_ok(&worker, requeued.id, &samples(requeued.assigned_at, 1, 3))
        .await;
    assert_eq!(app.release(&worker, requeued.id).await, StatusCode::OK);
    let cancelled = app.submit_build(LINUX).await;
    assert_eq!(
        app.cancel(cancelled.id, &cancelled.access_token).await,
        StatusCode::OK
    );
    let again = app.claim(&worker).await.expect("the requeued build");
    assert_eq!((again.id, again.attempt), (requeued.id, 2));
    assert_eq!(app.start_build(&worker, requeued.id).await, StatusCode::OK);
    let assigned_at = app.assigned_at(requeued.id).await;
    app.send_ok(&worker, requeued.id, &samples(assigned_at, 1, 2))
        .await;
    (done.id, removed)
}

/// `verify` passes on a served database of every kind of figure; after SQL
/// behind the controller's back changes a total, a day's row and one
/// build's CPU seconds, it exits 1 naming exactly those three with both
/// values; `--repair` fixes them, after which `verify` exits 0 and every
/// figure the API shows equals the recomputation from the raw rows.
#[tokio::test]
async fn verify_names_changed_figures_and_repair_restores_them() {
    let app = TestApp::start().await;
    let (done, removed) = rich_database(&app).await;
    let clean = verify(&app.database_url, false).await;
    clean.expect_code(0);
    assert_eq!(clean.stdout, "", "no difference, no line");
    assert!(clean.stderr.contains("0 differences"), "{}", clean.stderr);

    let view = app.build(done).await;
    let day = now_ms().div_euclid(86_400_000);
    let date = freeagent::format::iso_day(day);
    let stats = app.stats().await;
    let pool = writable_pool(&app.database_url).await;
    for (statement, id) in [
        (
            "UPDATE totals SET builds_finished = builds_finished + 5",
            None,
        ),
        (
            "UPDATE builds SET cpu_micros = cpu_micros + 2500000 WHERE id = $1",
            Some(done),
        ),
        (
            "UPDATE daily SET build_time_ms = build_time_ms + 1000 WHERE day = $1",
            Some(day),
        ),
    ] {
        let mut query = sqlx::query(statement);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let changed = query.execute(&pool).await.expect("change behind the back");
        assert!(changed.rows_affected() > 0, "{statement}");
    }
    // On Postgres every shard row took the change: the sums moved by 16 times.
    let totals_changed_by = if backend() == Backend::Postgres {
        80
    } else {
        5
    };
    let days_changed_by = if backend() == Backend::Postgres {
        let shards: i64 = sqlx::query_scalar("SELECT count(*) FROM daily WHERE day = $1")
            .bind(day)
            .fetch_one(&pool)
            .await
            .expect("daily shards");
        shards * 1000
    } else {
        1000
    };
    pool.close().await;
    let daily = app.daily(1).await;
    let found = verify(&app.database_url, false).await;
    found.expect_code(1);
    let mut lines: Vec<&str> = found.stdout.lines().collect();
    lines.sort_unstable();
    let mut expected = vec![
        format!(
            "build {done} cpu_seconds stored {} recomputed {}",
            (micros(view.cpu_seconds) + 2_500_000) as f64 / 1e6,
            view.cpu_seconds
        ),
        format!(
            "daily {date} build_time_ms stored {} recomputed {}",
            daily[0].build_time_ms,
            daily[0].build_time_ms - days_changed_by
        ),
        format!(
            "totals.builds_finished stored {} recomputed {}",
            stats.total_builds + totals_changed_by,
            stats.total_builds
        ),
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected, "{}", found.stderr);

    let repaired = verify(&app.database_url, true).await;
    repaired.expect_code(0);
    assert!(repaired.stderr.contains("repaired"), "{}", repaired.stderr);
    let after = verify(&app.database_url, false).await;
    after.expect_code(0);
    assert_figures_match_raw_rows(&app, &removed, "after --repair").await;
    assert_eq!(app.build(done).await.cpu_seconds, view.cpu_seconds);
    assert_eq!(
        app.daily(1).await,
        daily_before_change(&daily, days_changed_by)
    );
}

/// The daily entries as they were before `changed_by` ms were added to today's.
fn daily_before_change(
    daily: &[freeagent::stats::DailyBuilds],
    changed_by: i64,
) -> Vec<freeagent::stats::DailyBuilds> {
    let mut before = daily.to_vec();
    before[0].build_time_ms -= changed_by;
    before
}

/// `verify` over and over while four workers post telemetry, requeue and
/// finish builds finds no difference that is not there; `--repair` of a
/// changed figure in the middle of that traffic fixes it without losing
/// any of the writers' changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_repair_while_serving_writes() {
    let (app, load) = app_with_four_writers().await;
    let mut passes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while passes < 3 || tokio::time::Instant::now() < deadline {
        let report = freeagent::storage::verify::verify(&app.database_url, false)
            .await
            .expect("verify runs while serving");
        assert_eq!(report.differences, vec![], "pass {passes}");
        passes += 1;
    }
    let pool = writable_pool(&app.database_url).await;
    sqlx::query("UPDATE totals SET build_time_ms = build_time_ms + 777")
        .execute(&pool)
        .await
        .expect("change behind the back");
    pool.close().await;
    let repaired = verify(&app.database_url, true).await;
    repaired.expect_code(0);
    assert!(
        repaired.stdout.contains("totals.build_time_ms stored"),
        "{}",
        repaired.stdout
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let finished = stop_writers(load).await;
    assert!(finished >= 4, "the writers finished {finished} builds");
    let after = verify(&app.database_url, false).await;
    after.expect_code(0);
    assert_figures_match_raw_rows(&app, &Rows::new(), "after verify and repair under load").await;
}

/// A backup taken while four writers post telemetry is a database that
/// `serve` opens as it is; `verify` passes on it, and its figures equal the
/// recomputation from its own raw rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_opens_with_serve_and_verifies() {
    if sqlite_only("backup copies SQLite files; Postgres has pg_dump") {
        return;
    }
    let (app, load) = app_with_four_writers().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let copies = tempfile::tempdir().expect("temp dir");
    let copy = copies.path().join("copy.db");
    let copy_text = copy.display().to_string();
    let backup = freeagent(&["backup", &copy_text, "--database-url", &app.database_url]).await;
    backup.expect_code(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished = stop_writers(load).await;
    assert!(finished >= 4, "the writers finished {finished} builds");

    let copy_url = format!("sqlite://{copy_text}");
    let verified = verify(&copy_url, false).await;
    verified.expect_code(0);
    let served = TestApp::builder().existing_database(&copy).start().await;
    let stats = served.stats().await;
    assert!(stats.total_builds > 0, "the copy holds finished builds");
    assert_figures_match_raw_rows(&served, &Rows::new(), "on the backup").await;
    let original = app.stats().await;
    assert!(
        stats.total_builds <= original.total_builds,
        "the copy is a snapshot taken before the writers stopped"
    );
}

/// Backup refuses to overwrite a file, and to copy a Postgres database
/// (it says to use pg_dump); verify refuses a SQLite file that does not
/// exist and creates nothing. Each says why and exits non-zero.
#[tokio::test]
async fn backup_and_verify_refuse_bad_arguments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let existing = dir.path().join("existing.db");
    std::fs::write(&existing, b"keep me").expect("write a file");
    let source = format!("sqlite://{}", dir.path().join("source.db").display());
    let existing_text = existing.display().to_string();
    let refused = freeagent(&["backup", &existing_text, "--database-url", &source]).await;
    assert_ne!(refused.code, Some(0));
    assert!(
        refused.stderr.contains("exists already"),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read(&existing).expect("still there"), b"keep me");

    let target = dir.path().join("new.db").display().to_string();
    let postgres = "postgres://nobody@127.0.0.1:1/none";
    let refused = freeagent(&["backup", &target, "--database-url", postgres]).await;
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("pg_dump"), "{}", refused.stderr);
    assert!(!Path::new(&target).exists());

    let missing_dir = dir.path().join("nothing-here");
    let missing = missing_dir.join("freeagent.db");
    let url = format!("sqlite://{}", missing.display());
    let refused = verify(&url, false).await;
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("no SQLite database at"),
        "{}",
        refused.stderr
    );
    assert!(!missing_dir.exists(), "verify created nothing");
    let refused = freeagent(&["backup", &target, "--database-url", &url]).await;
    assert_ne!(refused.code, Some(0));
    assert!(!missing_dir.exists() && !Path::new(&target).exists());
}
