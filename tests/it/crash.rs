//! The real `freeagent` binary: a 2xx answer means the samples are durable
//! (they survive SIGKILL at any moment after the answer), the admin key is
//! generated when none is given, SIGTERM stops the controller cleanly, and
//! the configuration comes from flags or their environment fallbacks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use freeagent::wire::{BuildView, Snapshot, TelemetryAnswer};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};

/// A `freeagent serve` process on a loopback port.
struct Controller {
    child: Child,
    base: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `freeagent` with none of the environment fallbacks of the test's caller.
fn freeagent(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freeagent"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FREEAGENT_") || key == "LEPTOS_SITE_ADDR" {
            command.env_remove(key);
        }
    }
    command.current_dir(dir).kill_on_drop(true);
    command
}

impl Controller {
    /// Starts `freeagent serve` with `extra` flags and waits for /healthz.
    async fn start(dir: &Path, extra: &[&str]) -> Controller {
        Self::start_logging(dir, extra, "info").await
    }

    /// Starts `freeagent serve` logging at `level` (`RUST_LOG`).
    async fn start_logging(dir: &Path, extra: &[&str], level: &str) -> Controller {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let log = dir.join(format!("serve-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = freeagent(dir)
            .arg("serve")
            .args(["--listen", &listen])
            .args(extra)
            .env("RUST_LOG", level)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start freeagent serve");
        let mut controller = Controller {
            child,
            base: format!("http://{listen}"),
            log,
        };
        let http = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = http.get(controller.url("/healthz")).send().await {
                if response.status() == StatusCode::OK {
                    return controller;
                }
            }
            if let Ok(Some(status)) = controller.child.try_wait() {
                panic!(
                    "freeagent serve exited with {status} before answering; log:\n{}",
                    std::fs::read_to_string(&controller.log).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "freeagent serve did not answer within 30 s; log:\n{}",
                std::fs::read_to_string(&controller.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL, no chance to flush anything.
    async fn kill9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap");
    }
}

fn serve_flags(database_url: &str) -> Vec<String> {
    vec![
        "--database-url".into(),
        database_url.into(),
        "--admin-key".into(),
        ADMIN_KEY.into(),
        "--telemetry-rate".into(),
        "1000000".into(),
        "--stats-ttl".into(),
        "0s".into(),
    ]
}

async fn start_db(dir: &Path, database_url: &str) -> Controller {
    let flags = serve_flags(database_url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Controller::start(dir, &flags).await
}

/// Posts samples from several connections until told to stop or the
/// controller dies; returns every sample that got a 2xx.
async fn post_until_killed(
    http: reqwest::Client,
    url: String,
    token: String,
    assigned_at: i64,
    first_seq: i64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked_count: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<Snapshot> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for lane in 0..4i64 {
        let acked_count = acked_count.clone();
        let (http, url, token, acked, stop) = (
            http.clone(),
            url.clone(),
            token.clone(),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut seq = first_seq + lane;
            let mut round = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let size = round % 3 + 1;
                let batch: Vec<Snapshot> = (0..size)
                    .map(|k| {
                        let s = seq + k * 4;
                        sample(
                            s,
                            assigned_at + s % 30_000,
                            (s % 400) as f64,
                            (s % 4000) as f64,
                        )
                    })
                    .collect();
                seq += size * 4;
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&batch_json(&batch))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        // The status line is the acknowledgement; the body
                        // may be cut short by the kill.
                        if let Ok(answer) = response.json::<TelemetryAnswer>().await {
                            assert_eq!(answer.accepted as usize, batch.len(), "{answer:?}");
                        }
                        acked_count.fetch_add(batch.len(), std::sync::atomic::Ordering::Relaxed);
                        acked.lock().unwrap().extend(batch);
                    }
                    Ok(response) => panic!("telemetry answered {}", response.status()),
                    Err(_) => break, // the controller is gone
                }
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

fn batch_json(samples: &[Snapshot]) -> serde_json::Value {
    json!({ "snapshots": samples })
}

/// Every sample that had a 2xx answer survives SIGKILL of the controller
/// at arbitrary moments under load, four times in a row; the restarted controller
/// counts them exactly once and its figures match the stored rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_samples_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path(), "crash.db").await;
    let http = client();

    let controller = start_db(dir.path(), &database_url).await;
    let register = http
        .post(controller.url("/api/workers/register"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "crash", "platforms": ["linux"], "cpuCores": 4, "memoryMb": 8192}))
        .send()
        .await
        .unwrap();
    let worker: freeagent::wire::WorkerRegistered =
        expect_json(register, StatusCode::CREATED).await;
    let submit = http
        .post(controller.url("/api/builds"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"platform": "linux"}))
        .send()
        .await
        .unwrap();
    let build: freeagent::wire::BuildSubmitted = expect_json(submit, StatusCode::CREATED).await;
    let poll = http
        .post(controller.url("/api/workers/poll"))
        .bearer_auth(&worker.token)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), StatusCode::OK);
    let started = http
        .post(controller.url(&format!("/api/builds/{}/start", build.id)))
        .bearer_auth(&worker.token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let assigned_at = {
        let pool = read_only_pool(&database_url).await;
        let at: i64 = sqlx::query_scalar("SELECT assigned_at FROM builds WHERE id = $1")
            .bind(build.id)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        at
    };

    let mut acked: BTreeMap<i64, Snapshot> = BTreeMap::new();
    let mut controller = controller;
    for (round, kill_after_ms) in [(0i64, 300u64), (1, 537), (2, 111), (3, 790)] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let url = controller.url(&format!("/api/builds/{}/telemetry", build.id));
        let load = tokio::spawn(post_until_killed(
            http.clone(),
            url,
            worker.token.clone(),
            assigned_at,
            1 + round * 1_000_000,
            stop.clone(),
            acked_count.clone(),
        ));
        // Under load first (however slow the machine), then kill at a moment
        // unrelated to any request.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while acked_count.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: no load after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        controller.kill9().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = load.await.unwrap();
        eprintln!(
            "round {round}: {} samples acknowledged before SIGKILL",
            got.len()
        );
        assert!(
            !got.is_empty(),
            "round {round}: some samples were acknowledged before the kill"
        );
        for s in got {
            acked.insert(s.seq, s);
        }

        controller = start_db(dir.path(), &database_url).await;
        let stored: Vec<Snapshot> = expect_json(
            http.get(controller.url(&format!("/api/builds/{}/snapshots", build.id)))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let stored: BTreeMap<i64, Snapshot> = stored.into_iter().map(|s| (s.seq, s)).collect();
        let lost: Vec<i64> = acked
            .keys()
            .filter(|seq| !stored.contains_key(seq))
            .copied()
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged samples lost after SIGKILL: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(20)]
        );
        for (seq, sample) in &acked {
            assert_eq!(&stored[seq], sample, "stored sample {seq} differs");
        }

        let view: BuildView = expect_json(
            http.get(controller.url(&format!("/api/builds/{}", build.id)))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let raw = raw_rows(build.id, stored.values());
        let figures = build_figures_from(&raw);
        assert_build_matches(&view, &figures, &format!("after SIGKILL round {round}"));
        let stats: freeagent::stats::NetworkStats = expect_json(
            http.get(controller.url("/api/stats")).send().await.unwrap(),
            StatusCode::OK,
        )
        .await;
        assert!(
            (stats.total_cpu_seconds - figures.cpu_micros as f64 / 1e6).abs() <= 1e-6,
            "totalCpuSeconds {} vs stored rows {}",
            stats.total_cpu_seconds,
            figures.cpu_micros as f64 / 1e6
        );
        assert_eq!(stats.active_builds, 1);
    }
    controller.kill9().await;
}

/// With no admin key given, `serve` generates one into `data/admin.key`
/// (mode 0600), logs the path but never the key, the key works, and a
/// restart keeps the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_generates_admin_key_when_none_is_given() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::start(dir.path(), &[]).await;
    let key_path = dir.path().join("data/admin.key");
    let key = std::fs::read_to_string(&key_path)
        .expect("data/admin.key written")
        .trim()
        .to_string();
    assert!(key.len() >= 16, "a key of some strength");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.key is readable by its owner only");
    assert!(
        dir.path().join("data/freeagent.db").exists(),
        "default database created"
    );

    let http = client();
    let submit = |key: String, url: String| {
        let http = http.clone();
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"platform": "linux"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        submit(key.clone(), controller.url("/api/builds")).await,
        StatusCode::CREATED
    );
    let log_path = controller.log.clone();
    controller.kill9().await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains(&key), "the log shows the admin key:\n{log}");
    assert!(
        log.contains("admin.key"),
        "the log names where the key is:\n{log}"
    );

    let controller = Controller::start(dir.path(), &[]).await;
    let again = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(again, key, "a restart keeps the generated key");
    assert_eq!(
        submit(key.clone(), controller.url("/api/builds")).await,
        StatusCode::CREATED
    );
    controller.kill9().await;
}

/// SIGTERM and SIGINT stop the controller gracefully: it exits with
/// success within a few seconds, and what it acknowledged is there after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_stop_the_controller_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path(), "term.db").await;
    let mut submitted = Vec::new();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut controller = start_db(dir.path(), &database_url).await;
        let submit = client()
            .post(controller.url("/api/builds"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"platform": "linux"}))
            .send()
            .await
            .unwrap();
        let build: freeagent::wire::BuildSubmitted = expect_json(submit, StatusCode::CREATED).await;
        submitted.push(build.id);
        let pid = controller.child.id().expect("running") as i32;
        // SAFETY: sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(10), controller.child.wait())
            .await
            .expect("exits within 10 s of the signal")
            .unwrap();
        assert!(status.success(), "signal {signal}: exit status {status}");
    }
    let controller = start_db(dir.path(), &database_url).await;
    for id in submitted {
        let view: BuildView = expect_json(
            client()
                .get(controller.url(&format!("/api/builds/{id}")))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(view.status, "pending");
    }
    controller.kill9().await;
}

/// The log, even at debug level, never shows a secret: not the admin key,
/// a worker token, a build token, nor an unknown secret someone tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path(), "log.db").await;
    let flags = serve_flags(&database_url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = Controller::start_logging(dir.path(), &flags, "debug").await;
    let http = client();
    let url = |path: &str| controller.url(path);
    let registered: freeagent::wire::WorkerRegistered = expect_json(
        http.post(url("/api/workers/register"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "w", "platforms": ["linux"], "cpuCores": 2, "memoryMb": 512}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let build: freeagent::wire::BuildSubmitted = expect_json(
        http.post(url("/api/builds"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"platform": "linux"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let token = registered.token.as_str();
    let id = build.id;
    let worker_calls = [
        ("/api/workers/poll".to_string(), None),
        (format!("/api/builds/{id}/start"), None),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(json!({"snapshots": [sample(1, now_ms(), 10.0, 10.0)]})),
        ),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(json!({"snapshots": [sample(2, now_ms(), 9999.0, 10.0)]})),
        ),
        (
            format!("/api/builds/{id}/complete"),
            Some(json!({"success": true})),
        ),
    ];
    for (path, body) in worker_calls {
        let mut request = http.post(url(&path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        assert!(!request.send().await.unwrap().status().is_server_error());
    }
    let unknown = "wrong-secret-7f3a9c";
    let status = http
        .post(url("/api/workers/heartbeat"))
        .bearer_auth(unknown)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = http
        .get(url(&format!("/api/builds/{id}")))
        .bearer_auth(&build.access_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let log_path = controller.log.clone();
    controller.kill9().await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.len() > 100, "the controller logged something:\n{log}");
    for (what, secret) in [
        ("admin key", ADMIN_KEY),
        ("worker token", token),
        ("build token", build.access_token.as_str()),
        ("unknown secret", unknown),
    ] {
        assert!(!log.contains(secret), "the log shows the {what}:\n{log}");
    }
}

/// `serve --help` and `purge --help` show every flag of SPEC's
/// configuration table with its environment fallback.
#[tokio::test]
async fn help_lists_every_flag_with_its_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let help = |args: &'static [&'static str]| {
        let mut command = freeagent(dir.path());
        command.args(args);
        async move {
            let output = command.output().await.expect("run freeagent --help");
            assert!(output.status.success());
            String::from_utf8_lossy(&output.stdout).to_string()
        }
    };
    let serve = help(&["serve", "--help"]).await;
    for (flag, env) in [
        ("--database-url", "FREEAGENT_DATABASE_URL"),
        ("--listen", "LEPTOS_SITE_ADDR"),
        ("--admin-key", "FREEAGENT_ADMIN_KEY"),
        ("--online-window", "FREEAGENT_ONLINE_WINDOW"),
        ("--lease-timeout", "FREEAGENT_LEASE_TIMEOUT"),
        ("--telemetry-grace", "FREEAGENT_TELEMETRY_GRACE"),
        ("--retention-days", "FREEAGENT_RETENTION_DAYS"),
        ("--stats-ttl", "FREEAGENT_STATS_TTL"),
        ("--telemetry-rate", "FREEAGENT_TELEMETRY_RATE"),
        ("--poll-interval", "FREEAGENT_POLL_INTERVAL"),
        ("--log-format", "FREEAGENT_LOG_FORMAT"),
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
        assert!(serve.contains(env), "serve --help lacks {env}:\n{serve}");
    }
    let purge = help(&["purge", "--help"]).await;
    for text in [
        "--database-url",
        "FREEAGENT_DATABASE_URL",
        "--retention-days",
        "FREEAGENT_RETENTION_DAYS",
    ] {
        assert!(purge.contains(text), "purge --help lacks {text}:\n{purge}");
    }
}

/// With no subcommand the binary serves, configured from the environment
/// alone: address, database, admin key, and a duration and a rate
/// (`FREEAGENT_TELEMETRY_RATE=1`: the third request at once is 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subcommand_serves_configured_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let database_url = format!("sqlite://{}", dir.path().join("env.db").display());
    let log = std::fs::File::create(dir.path().join("env.log")).unwrap();
    let mut child = freeagent(dir.path())
        .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
        .env("FREEAGENT_DATABASE_URL", &database_url)
        .env("FREEAGENT_ADMIN_KEY", "from-the-environment-0123456789")
        .env("FREEAGENT_TELEMETRY_RATE", "1")
        .env("FREEAGENT_LEASE_TIMEOUT", "90s")
        .env("FREEAGENT_STATS_TTL", "0s")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start freeagent");
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status() == StatusCode::OK)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no controller on LEPTOS_SITE_ADDR; log:\n{}",
            std::fs::read_to_string(dir.path().join("env.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dir.path().join("env.db").exists(),
        "FREEAGENT_DATABASE_URL is used"
    );
    let post = |path: &str, secret: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(secret)
            .json(&body)
            .send()
    };
    let registered: freeagent::wire::WorkerRegistered = expect_json(
        post(
            "/api/workers/register",
            "from-the-environment-0123456789",
            json!({"name": "env", "platforms": ["linux"], "cpuCores": 2, "memoryMb": 512}),
        )
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let build: freeagent::wire::BuildSubmitted = expect_json(
        post(
            "/api/builds",
            "from-the-environment-0123456789",
            json!({"platform": "linux"}),
        )
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let poll = http
        .post(format!("{base}/api/workers/poll"))
        .bearer_auth(&registered.token)
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), StatusCode::OK);
    let mut statuses = Vec::new();
    for seq in 1..=3 {
        let response = post(
            &format!("/api/builds/{}/telemetry", build.id),
            &registered.token,
            json!({"snapshots": [sample(seq, now_ms(), 1.0, 1.0)]}),
        )
        .await
        .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "FREEAGENT_TELEMETRY_RATE=1 allows bursts of 2"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A database URL the controller cannot serve (here MySQL) stops `serve`
/// and `purge` at once with an error naming the scheme; a Postgres URL where
/// no server answers stops them too. Neither error shows the password, and
/// neither leaves a SQLite file or folder behind in the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unservable_database_url_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("postgres://ops:hunter2@127.0.0.1:{}/freeagent", free_port());
    let cases = [
        (
            "mysql://ops:hunter2@127.0.0.1:3306/freeagent",
            Some("`mysql:` database URLs"),
        ),
        (nobody.as_str(), None),
    ];
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    for (url, says) in cases {
        for args in [
            vec![
                "serve",
                "--database-url",
                url,
                "--admin-key",
                ADMIN_KEY,
                "--listen",
                &listen,
            ],
            vec!["purge", "--database-url", url],
        ] {
            let output = tokio::time::timeout(
                Duration::from_secs(60),
                freeagent(dir.path()).args(&args).output(),
            )
            .await
            .expect("exits, not waits forever")
            .expect("runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} succeeded");
            if let Some(says) = says {
                assert!(stderr.contains(says), "{args:?}: {stderr}");
            }
            assert!(
                !stderr.contains("hunter2"),
                "the password was printed: {stderr}"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "{args:?} left {left:?} behind");
        }
    }
}

/// `serve` refuses an admin key shorter than 24 characters, whether given
/// by flag, by environment or found in `data/admin.key`: it exits non-zero
/// at once, says why and how to generate a good key, never prints the key,
/// and opens no database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_short_admin_key() {
    let short = "q7Z";
    for how in ["flag", "environment", "file"] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = freeagent(dir.path());
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        match how {
            "flag" => {
                command.args(["--admin-key", short]);
            }
            "environment" => {
                command.env("FREEAGENT_ADMIN_KEY", short);
            }
            _ => {
                std::fs::create_dir(dir.path().join("data")).unwrap();
                std::fs::write(dir.path().join("data/admin.key"), format!("{short}\n")).unwrap();
            }
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("exits at once, not serves")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{how}: served with a 3-character key"
        );
        for says in [
            "admin key",
            "3 characters",
            "at least 24",
            "openssl rand -base64 32",
        ] {
            assert!(
                stderr.contains(says),
                "{how}: stderr lacks {says:?}:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains(short),
            "{how}: the key was printed:\n{stderr}"
        );
        assert!(
            !dir.path().join("data/freeagent.db").exists(),
            "{how}: a database was opened"
        );
    }
}

/// `--log-format json` writes every log line as one JSON object with a
/// timestamp, a level and the event's fields (its message among them), so
/// a log shipper reads them without parsing text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(dir.path(), "json.db").await;
    let mut flags = serve_flags(&database_url);
    flags.extend(["--log-format".into(), "json".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut controller = Controller::start(dir.path(), &flags).await;
    let pid = controller.child.id().expect("running") as i32;
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(10), controller.child.wait())
        .await
        .expect("stops within 10 s of SIGTERM")
        .unwrap();
    let log = std::fs::read_to_string(&controller.log).unwrap();
    let mut messages = Vec::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nlog:\n{log}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&event["level"].as_str().unwrap_or("")),
            "{line}"
        );
        let message = event["fields"]["message"].as_str();
        messages.push(
            message
                .unwrap_or_else(|| panic!("no fields.message: {line}"))
                .to_string(),
        );
        if message == Some("controller listening") {
            assert_eq!(
                event["fields"]["addr"].as_str(),
                Some(controller.base.trim_start_matches("http://")),
                "{line}"
            );
        }
    }
    for expected in ["controller listening", "controller stopped"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in:\n{log}"
        );
    }
}
