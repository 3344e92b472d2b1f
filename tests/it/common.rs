//! `TestApp`: the real controller on `127.0.0.1:0` with a fresh database, and
//! helpers that read like the scenarios the tests prove (STYLE practice 8).
//!
//! The backend is `FREEAGENT_TEST_BACKEND`: `sqlite` (the default, a fresh
//! file a test) or `postgres` (a fresh database a test in the throwaway
//! cluster of [`crate::postgres`]). Raw rows are read through sqlx's `Any`
//! driver, so the same query serves both: write placeholders as `$1`, `$2`
//! (SQLite takes them too) and `CAST(... AS BIGINT)` around sums.
//!
//! Also the recomputation of every figure from raw rows (`builds` and
//! `samples`), which the invariant tests compare against `NetworkStats`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use freeagent::config::ServeArgs;
use freeagent::stats::accounting::{counter_micros, percent_sample_micros};
use freeagent::stats::{DailyBuilds, NetworkStats};
use freeagent::wire::{
    BuildSubmitted, BuildView, ClaimedBuild, PollAnswer, Snapshot, StoredSnapshot, TelemetryAnswer,
    WorkerRegistered,
};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Admin key every `TestApp` runs with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";
/// Longest any single request of a test may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const MS_PER_DAY: i64 = 86_400_000;

/// Milliseconds since the epoch on the test's clock (the controller's too:
/// same machine).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The database a test run stores into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `FREEAGENT_TEST_BACKEND`: `sqlite` (default) or `postgres`.
pub fn backend() -> Backend {
    match std::env::var("FREEAGENT_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("FREEAGENT_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// True, after saying why on stderr, when the tests run on Postgres and this
/// one proves something of SQLite alone: `if sqlite_only("...") { return; }`.
pub fn sqlite_only(why: &str) -> bool {
    let skip = backend() == Backend::Postgres;
    if skip {
        eprintln!("skipped on postgres: {why}");
    }
    skip
}

/// URL of a new, empty database of the backend under test: a file `name`
/// in `dir` on SQLite, a database of its own in the test cluster on Postgres.
pub async fn fresh_database_url(dir: &Path, name: &str) -> String {
    match backend() {
        Backend::Sqlite => format!("sqlite://{}", dir.join(name).display()),
        Backend::Postgres => crate::postgres::fresh_database().await,
    }
}

/// The platform most tests build for.
pub const LINUX: &str = "linux";

/// A `linux` worker with 4 cores and 8192 MiB.
pub async fn linux_worker(app: &TestApp) -> Worker {
    app.register_worker(&[LINUX], 4, 8192).await
}

/// Polls `check` every 100 ms until it returns `Some`, at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
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

/// An HTTP client for loopback only, with a timeout and no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// A registered worker and what it declared.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Worker id.
    pub id: i64,
    /// Bearer token.
    pub token: String,
    /// Declared cores.
    pub cores: u32,
    /// Declared memory, MiB.
    pub memory_mb: u64,
}

/// A submitted build and its access token.
#[derive(Clone, Debug)]
pub struct Build {
    /// Build id.
    pub id: i64,
    /// Bearer token that reads and cancels this build.
    pub access_token: String,
}

/// A build claimed by a worker, with the controller's assignment time
/// (read from the raw row, needed to make valid `cpuTimeS` values).
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Build id.
    pub id: i64,
    /// Bearer token of the build.
    pub access_token: String,
    /// `builds.assigned_at`, ms.
    pub assigned_at: i64,
}

/// A sample with `intervalS` 5 and no counter.
pub fn sample(seq: i64, sampled_at: i64, cpu_percent: f64, memory_mb: f64) -> Snapshot {
    Snapshot {
        seq,
        sampled_at,
        cpu_percent,
        memory_mb,
        cpu_time_s: None,
        interval_s: 5,
    }
}

/// A sample carrying a `cpuTimeS` counter.
pub fn counter_sample(
    seq: i64,
    sampled_at: i64,
    cpu_percent: f64,
    memory_mb: f64,
    cpu_time_s: f64,
) -> Snapshot {
    Snapshot {
        cpu_time_s: Some(cpu_time_s),
        ..sample(seq, sampled_at, cpu_percent, memory_mb)
    }
}

/// `{"snapshots": [...]}` of these samples.
pub fn batch(samples: &[Snapshot]) -> Value {
    json!({ "snapshots": samples })
}

/// RFC 3339 of a whole second, as the Swift worker writes `timestamp`.
pub fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .expect("valid timestamp")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The Swift worker's single-sample body, sampled `seconds` since the epoch.
pub fn legacy_cpu_body(seconds: i64, cpu_percent: f64, memory_mb: f64) -> Value {
    json!({
        "type": "cpu_snapshot",
        "timestamp": rfc3339(seconds),
        "data": {"cpu_percent": cpu_percent, "memory_mb": memory_mb}
    })
}

/// The figures of `NetworkStats` that do not depend on when they were read.
pub fn figures(stats: &NetworkStats) -> NetworkStats {
    NetworkStats {
        generated_at: 0,
        ..stats.clone()
    }
}

/// A build's telemetry figures as `GET /api/builds/{id}` shows them.
pub fn build_figures(view: &BuildView) -> (f64, Option<f64>, i64) {
    (view.cpu_seconds, view.peak_memory_mb, view.snapshot_count)
}

/// A change to the controller's flags before it starts.
type ArgsEdit = Box<dyn FnOnce(&mut ServeArgs)>;

/// Options of a `TestApp`, SPEC defaults except `stats_ttl` 0.
pub struct TestAppBuilder {
    args_edit: Vec<ArgsEdit>,
    existing_database: Option<PathBuf>,
}

impl TestAppBuilder {
    /// Changes the controller's flags before it starts, on top of the
    /// defaults (and of earlier `with_args`):
    /// `.with_args(|a| a.lease_timeout = Duration::from_secs(1))`.
    pub fn with_args(mut self, edit: impl FnOnce(&mut ServeArgs) + 'static) -> Self {
        self.args_edit.push(Box::new(edit));
        self
    }

    /// Starts on a copy of this SQLite file instead of a fresh database
    /// (SQLite only: such a test checks `sqlite_only` first).
    pub fn existing_database(mut self, path: &Path) -> Self {
        self.existing_database = Some(path.to_path_buf());
        self
    }

    /// Starts the controller on a fresh database (or the existing one's copy).
    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(existing) = &self.existing_database {
            assert_eq!(
                backend(),
                Backend::Sqlite,
                "an existing SQLite file cannot start a Postgres test"
            );
            std::fs::copy(existing, dir.path().join("freeagent.db"))
                .expect("copy the existing database");
        }
        let database_url = fresh_database_url(dir.path(), "freeagent.db").await;
        let mut args = ServeArgs::new(database_url.clone(), ADMIN_KEY);
        args.stats_ttl = Duration::ZERO;
        for edit in self.args_edit {
            edit(&mut args);
        }
        let mut app = TestApp {
            base: String::new(),
            client: client(),
            args,
            database_url,
            dir,
            server: None,
            pool: tokio::sync::OnceCell::new(),
        };
        app.launch().await;
        app
    }
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The real controller serving a fresh database of the backend under test.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Client with a timeout; replaced on restart.
    pub client: reqwest::Client,
    /// What the controller was started with.
    pub args: ServeArgs,
    /// `sqlite://...` or `postgres://...` of the database.
    pub database_url: String,
    dir: tempfile::TempDir,
    server: Option<Running>,
    pool: tokio::sync::OnceCell<AnyPool>,
}

impl TestApp {
    /// A controller with SPEC defaults and fresh figures on every request.
    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    /// Options before starting.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            args_edit: Vec::new(),
            existing_database: None,
        }
    }

    /// Temporary folder of the test (holding the database on SQLite),
    /// removed when the app is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn launch(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, signal) = oneshot::channel::<()>();
        let args = self.args.clone();
        let task = tokio::spawn(async move {
            let outcome = freeagent::server::serve(listener, args, async move {
                let _ = signal.await;
            })
            .await;
            if let Err(error) = outcome {
                panic!("controller stopped with an error: {error:#}");
            }
        });
        self.server = Some(Running { shutdown, task });
        self.base = format!("http://{addr}");
        self.client = client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = self.client.get(self.url("/healthz")).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            let running = self.server.as_mut().expect("just started");
            if running.task.is_finished() {
                let error = (&mut running.task).await.expect_err("it stopped unasked");
                panic!("controller stopped before answering /healthz: {error}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller did not answer /healthz within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the controller gracefully (bounded wait) and starts it again
    /// on the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// Stops the controller gracefully, waiting at most 10 s.
    pub async fn stop(&mut self) {
        // Drop pooled keep-alive connections so that graceful shutdown has
        // nothing to wait for.
        self.client = client();
        if let Some(running) = self.server.take() {
            let _ = running.shutdown.send(());
            let mut task = running.task;
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                task.abort();
                panic!("controller did not shut down within 10 s of its signal");
            }
        }
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn with_auth(builder: reqwest::RequestBuilder, auth: Option<&str>) -> reqwest::RequestBuilder {
        match auth {
            Some(secret) => builder.bearer_auth(secret),
            None => builder,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, auth: Option<&str>) -> Response {
        Self::with_auth(self.client.get(self.url(path)), auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, auth: Option<&str>, body: &Value) -> Response {
        Self::with_auth(self.client.post(self.url(path)), auth)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST path` without a body (and without a Content-Type).
    pub async fn post_empty(&self, path: &str, auth: Option<&str>) -> Response {
        Self::with_auth(self.client.post(self.url(path)), auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `POST path` with raw bytes and an optional Content-Type.
    pub async fn post_raw(
        &self,
        path: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut builder = Self::with_auth(self.client.post(self.url(path)), auth).body(body);
        if let Some(content_type) = content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        builder
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// Registers a worker with the admin key.
    pub async fn register_worker(&self, platforms: &[&str], cores: u32, memory_mb: u64) -> Worker {
        let body = json!({
            "name": format!("worker-{}", platforms.join("-")),
            "platforms": platforms,
            "cpuCores": cores,
            "memoryMb": memory_mb,
        });
        let response = self
            .post_json("/api/workers/register", Some(ADMIN_KEY), &body)
            .await;
        let registered: WorkerRegistered = expect_json(response, StatusCode::CREATED).await;
        Worker {
            id: registered.worker_id,
            token: registered.token,
            cores,
            memory_mb,
        }
    }

    /// Submits a build with the admin key.
    pub async fn submit_build(&self, platform: &str) -> Build {
        self.submit_body(json!({ "platform": platform })).await
    }

    /// Submits a build with a label.
    pub async fn submit_labelled(&self, platform: &str, label: &str) -> Build {
        self.submit_body(json!({ "platform": platform, "label": label }))
            .await
    }

    async fn submit_body(&self, body: Value) -> Build {
        let response = self.post_json("/api/builds", Some(ADMIN_KEY), &body).await;
        let submitted: BuildSubmitted = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(submitted.status, "pending");
        assert_eq!(
            submitted.page_url,
            format!("/builds/{}#token={}", submitted.id, submitted.access_token),
            "the answer links the build's own page, the secret in the fragment"
        );
        Build {
            id: submitted.id,
            access_token: submitted.access_token,
        }
    }

    /// The worker polls: `Some` build claimed, `None` on 204.
    pub async fn claim(&self, worker: &Worker) -> Option<ClaimedBuild> {
        let response = self
            .post_empty("/api/workers/poll", Some(&worker.token))
            .await;
        match response.status() {
            StatusCode::NO_CONTENT => None,
            StatusCode::OK => Some(
                response
                    .json::<PollAnswer>()
                    .await
                    .expect("poll body")
                    .build,
            ),
            other => panic!(
                "poll answered {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    /// Submits a build for the worker's first platform and has the worker
    /// claim it (the queue must hold nothing older for that platform).
    pub async fn assigned_build(&self, worker: &Worker, platform: &str) -> Claimed {
        let build = self.submit_build(platform).await;
        let claimed = self.claim(worker).await.expect("a build to claim");
        assert_eq!(
            claimed.id, build.id,
            "the worker claims the oldest pending build"
        );
        Claimed {
            id: build.id,
            access_token: build.access_token,
            assigned_at: self.assigned_at(build.id).await,
        }
    }

    /// A build claimed and started by the worker.
    pub async fn running_build(&self, worker: &Worker, platform: &str) -> Claimed {
        let claimed = self.assigned_build(worker, platform).await;
        assert_eq!(self.start_build(worker, claimed.id).await, StatusCode::OK);
        claimed
    }

    /// `POST /api/builds/{id}/start` as the worker.
    pub async fn start_build(&self, worker: &Worker, build: i64) -> StatusCode {
        self.post_empty(&format!("/api/builds/{build}/start"), Some(&worker.token))
            .await
            .status()
    }

    /// `POST /api/builds/{id}/complete` as the worker.
    pub async fn complete(&self, worker: &Worker, build: i64, success: bool) -> StatusCode {
        let body = if success {
            json!({ "success": true })
        } else {
            json!({ "success": false, "error": "the build script exited with 1" })
        };
        self.post_json(
            &format!("/api/builds/{build}/complete"),
            Some(&worker.token),
            &body,
        )
        .await
        .status()
    }

    /// `POST /api/builds/{id}/cancel` with the given secret.
    pub async fn cancel(&self, build: i64, secret: &str) -> StatusCode {
        self.post_empty(&format!("/api/builds/{build}/cancel"), Some(secret))
            .await
            .status()
    }

    /// `POST /api/builds/{id}/release` as the worker.
    pub async fn release(&self, worker: &Worker, build: i64) -> StatusCode {
        self.post_empty(&format!("/api/builds/{build}/release"), Some(&worker.token))
            .await
            .status()
    }

    /// `POST /api/workers/heartbeat`.
    pub async fn heartbeat(&self, worker: &Worker) -> StatusCode {
        self.post_empty("/api/workers/heartbeat", Some(&worker.token))
            .await
            .status()
    }

    /// Posts any telemetry body as the worker; status and JSON answer.
    pub async fn telemetry(
        &self,
        worker: &Worker,
        build: i64,
        body: &Value,
    ) -> (StatusCode, Value) {
        let response = self
            .post_json(
                &format!("/api/builds/{build}/telemetry"),
                Some(&worker.token),
                body,
            )
            .await;
        let status = response.status();
        let text = response.text().await.expect("telemetry answer");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("telemetry answered {status} with non-JSON: {text}"));
        (status, value)
    }

    /// Posts samples; status and the parsed `TelemetryAnswer` (also for 422).
    pub async fn send(
        &self,
        worker: &Worker,
        build: i64,
        samples: &[Snapshot],
    ) -> (StatusCode, TelemetryAnswer) {
        let (status, value) = self.telemetry(worker, build, &batch(samples)).await;
        let answer = serde_json::from_value(value.clone())
            .unwrap_or_else(|_| panic!("telemetry answered {status} with {value}"));
        (status, answer)
    }

    /// Posts samples; status and the raw JSON answer (whatever the status).
    pub async fn send_raw(
        &self,
        worker: &Worker,
        build: i64,
        samples: &[Snapshot],
    ) -> (StatusCode, Value) {
        self.telemetry(worker, build, &batch(samples)).await
    }

    /// Posts samples that must all be accepted.
    pub async fn send_ok(&self, worker: &Worker, build: i64, samples: &[Snapshot]) {
        let (status, answer) = self.send(worker, build, samples).await;
        assert_eq!(status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.accepted as usize, samples.len(), "{answer:?}");
    }

    /// `GET /api/stats`.
    pub async fn stats(&self) -> NetworkStats {
        expect_json(self.get("/api/stats", None).await, StatusCode::OK).await
    }

    /// `GET /api/stats/daily?days=N`.
    pub async fn daily(&self, days: u32) -> Vec<DailyBuilds> {
        expect_json(
            self.get(&format!("/api/stats/daily?days={days}"), None)
                .await,
            StatusCode::OK,
        )
        .await
    }

    /// `GET /api/builds/{id}` with the admin key.
    pub async fn build(&self, id: i64) -> BuildView {
        expect_json(
            self.get(&format!("/api/builds/{id}"), Some(ADMIN_KEY))
                .await,
            StatusCode::OK,
        )
        .await
    }

    /// `GET /api/builds/{id}/snapshots` with the admin key.
    pub async fn snapshots(&self, id: i64) -> Vec<Snapshot> {
        self.stored_snapshots(id)
            .await
            .into_iter()
            .map(|s| s.sample)
            .collect()
    }

    /// `GET /api/builds/{id}/snapshots` with the admin key, attempts included.
    pub async fn stored_snapshots(&self, id: i64) -> Vec<StoredSnapshot> {
        expect_json(
            self.get(&format!("/api/builds/{id}/snapshots"), Some(ADMIN_KEY))
                .await,
            StatusCode::OK,
        )
        .await
    }

    /// A read-only connection pool on the database, for raw rows.
    pub async fn db(&self) -> AnyPool {
        self.pool
            .get_or_init(|| read_only_pool(&self.database_url))
            .await
            .clone()
    }

    /// `builds.assigned_at` of a build.
    pub async fn assigned_at(&self, build: i64) -> i64 {
        let at: Option<i64> = sqlx::query_scalar("SELECT assigned_at FROM builds WHERE id = $1")
            .bind(build)
            .fetch_one(&self.db().await)
            .await
            .expect("build row");
        at.expect("an assigned build has assigned_at")
    }

    /// One retention pass, as `freeagent purge --retention-days N`.
    pub async fn purge(&self, retention_days: u32) -> u64 {
        freeagent::retention::purge(&self.database_url, retention_days)
            .await
            .expect("purge")
    }
}

/// Opens a read-only pool on a controller's database, of either backend.
pub async fn read_only_pool(database_url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    let read_only = if database_url.starts_with("sqlite:") {
        "mode=ro"
    } else {
        "options=-c%20default_transaction_read_only%3Don"
    };
    let separator = if database_url.contains('?') { '&' } else { '?' };
    AnyPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{database_url}{separator}{read_only}"))
        .await
        .expect("open database read-only")
}

/// A response's `Content-Type`, empty when it has none.
pub fn content_type(response: &Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Asserts the status and parses the JSON body.
pub async fn expect_json<T: serde::de::DeserializeOwned>(
    response: Response,
    status: StatusCode,
) -> T {
    let got = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "{url} answered {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"))
}

/// Asserts the status and that the body is SPEC's error shape.
pub async fn expect_error(response: Response, status: StatusCode) -> freeagent::wire::ErrorBody {
    let got = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("body");
    assert_eq!(got, status, "{url} answered {got}: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: error body not JSON ({e}): {text}"));
    let error = body["error"].as_str().unwrap_or_default();
    let code = body["code"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "{url}: error body lacks `error`: {text}");
    assert!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{url}: `code` is not snake_case: {text}"
    );
    serde_json::from_value(body).expect("error body")
}

/// A raw `builds` row.
#[derive(Clone, Debug)]
pub struct RawBuild {
    pub id: i64,
    pub status: String,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
}

/// A raw `samples` row.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSample {
    pub build_id: i64,
    pub attempt: i64,
    pub seq: i64,
    pub sampled_at: i64,
    pub cpu_percent: f64,
    pub memory_mb: f64,
    pub cpu_time_s: Option<f64>,
    pub interval_s: i64,
}

/// The rows `samples` of attempt 1 of build `build_id` as they were sent.
pub fn raw_rows<'a>(
    build_id: i64,
    samples: impl IntoIterator<Item = &'a Snapshot>,
) -> Vec<RawSample> {
    attempt_rows(build_id, 1, samples)
}

/// The rows `samples` of attempt `attempt` of build `build_id` as they were sent.
pub fn attempt_rows<'a>(
    build_id: i64,
    attempt: i64,
    samples: impl IntoIterator<Item = &'a Snapshot>,
) -> Vec<RawSample> {
    samples
        .into_iter()
        .map(|s| RawSample {
            build_id,
            attempt,
            seq: s.seq,
            sampled_at: s.sampled_at,
            cpu_percent: s.cpu_percent,
            memory_mb: s.memory_mb,
            cpu_time_s: s.cpu_time_s,
            interval_s: s.interval_s,
        })
        .collect()
}

/// Every build row.
pub async fn raw_builds(pool: &AnyPool) -> Vec<RawBuild> {
    let rows: Vec<(i64, String, Option<i64>, Option<i64>)> =
        sqlx::query_as("SELECT id, status, started_at, completed_at FROM builds ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("read builds");
    rows.into_iter()
        .map(|(id, status, started_at, completed_at)| RawBuild {
            id,
            status,
            started_at,
            completed_at,
        })
        .collect()
}

/// Every sample row.
pub async fn raw_samples(pool: &AnyPool) -> Vec<RawSample> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, i64, i64, i64, f64, f64, Option<f64>, i64)> = sqlx::query_as(
        "SELECT build_id, attempt, seq, sampled_at, cpu_percent, memory_mb, cpu_time_s, interval_s
         FROM samples ORDER BY build_id, attempt, seq",
    )
    .fetch_all(pool)
    .await
    .expect("read samples");
    rows.into_iter()
        .map(
            |(
                build_id,
                attempt,
                seq,
                sampled_at,
                cpu_percent,
                memory_mb,
                cpu_time_s,
                interval_s,
            )| {
                RawSample {
                    build_id,
                    attempt,
                    seq,
                    sampled_at,
                    cpu_percent,
                    memory_mb,
                    cpu_time_s,
                    interval_s,
                }
            },
        )
        .collect()
}

/// One build's telemetry figures recomputed from its samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildFigures {
    /// CPU time by SPEC, integer microseconds.
    pub cpu_micros: i64,
    /// Largest `memoryMb`.
    pub peak_memory_mb: Option<f64>,
    /// Distinct samples.
    pub snapshot_count: i64,
    /// `cpuPercent` of the sample with the largest `sampledAt`, and that time.
    pub newest: Option<(i64, f64)>,
}

/// Figures of one build from its distinct samples, straight from SPEC's
/// words: each attempt's CPU time is its largest counter, or the sum of its
/// percent-based samples when it sent none; the build's is their sum.
pub fn build_figures_from<'a>(samples: impl IntoIterator<Item = &'a RawSample>) -> BuildFigures {
    // attempt -> (percent sum, largest counter)
    let mut attempts: BTreeMap<i64, (i64, Option<i64>)> = BTreeMap::new();
    let mut figures = BuildFigures::default();
    for s in samples {
        let (percent_micros, counter) = attempts.entry(s.attempt).or_default();
        *percent_micros += percent_sample_micros(s.cpu_percent, s.interval_s);
        if let Some(t) = s.cpu_time_s {
            let micros = counter_micros(t);
            *counter = Some(counter.map_or(micros, |c| c.max(micros)));
        }
        figures.peak_memory_mb = Some(
            figures
                .peak_memory_mb
                .map_or(s.memory_mb, |p| p.max(s.memory_mb)),
        );
        figures.snapshot_count += 1;
        if figures.newest.is_none_or(|(at, _)| s.sampled_at > at) {
            figures.newest = Some((s.sampled_at, s.cpu_percent));
        }
    }
    figures.cpu_micros = attempts
        .values()
        .map(|(percent_micros, counter)| counter.unwrap_or(*percent_micros))
        .sum();
    figures
}

/// Every figure recomputed from raw rows.
#[derive(Clone, Debug, Default)]
pub struct Recomputed {
    pub builds_queued: u64,
    pub active_builds: u64,
    pub builds_today: u64,
    pub total_builds: u64,
    pub total_build_time_ms: i64,
    pub total_cpu_micros: i64,
    pub cpu_cores_busy: f64,
    /// Per build.
    pub builds: BTreeMap<i64, BuildFigures>,
    /// Today's `daily` entry: finished, failed, build time, CPU micros.
    pub today: (u64, u64, i64, i64),
}

/// A sample's idempotency key: (build, attempt, seq).
pub type SampleKey = (i64, i64, i64);

/// Every stored sample, keyed as [`recompute`] takes them.
pub async fn samples_by_key(pool: &AnyPool) -> BTreeMap<SampleKey, RawSample> {
    raw_samples(pool)
        .await
        .into_iter()
        .map(|r| ((r.build_id, r.attempt, r.seq), r))
        .collect()
}

/// Recomputes the figures at time `now` from build rows and every sample
/// ever stored.
pub fn recompute(
    builds: &[RawBuild],
    samples: &BTreeMap<SampleKey, RawSample>,
    now: i64,
) -> Recomputed {
    let mut by_build: HashMap<i64, Vec<&RawSample>> = HashMap::new();
    for s in samples.values() {
        by_build.entry(s.build_id).or_default().push(s);
    }
    let today_start = now.div_euclid(MS_PER_DAY) * MS_PER_DAY;
    let mut r = Recomputed::default();
    for b in builds {
        let figures = build_figures_from(by_build.get(&b.id).into_iter().flatten().copied());
        r.total_cpu_micros += figures.cpu_micros;
        let finished = b.status == "completed" || b.status == "failed";
        match b.status.as_str() {
            "pending" => r.builds_queued += 1,
            "assigned" | "building" => {
                r.active_builds += 1;
                if let Some((at, percent)) = figures.newest {
                    if at >= now - 30_000 {
                        r.cpu_cores_busy += percent / 100.0;
                    }
                }
            }
            _ => {}
        }
        if finished {
            r.total_builds += 1;
            let time = match (b.started_at, b.completed_at) {
                (Some(s), Some(c)) => c - s,
                _ => 0,
            };
            r.total_build_time_ms += time;
            let completed_at = b.completed_at.expect("a finished build has completedAt");
            if completed_at >= today_start {
                r.builds_today += 1;
                r.today.0 += 1;
                if b.status == "failed" {
                    r.today.1 += 1;
                }
                r.today.2 += time;
                r.today.3 += figures.cpu_micros;
            }
        }
        r.builds.insert(b.id, figures);
    }
    r
}

/// (build, first assignment - submittedAt) of every build whose first
/// assignment is in the queue-wait window at `now` (the current UTC minute
/// and the 1439 before it; `i64::MIN`: every build ever assigned), by id.
pub async fn raw_first_waits(pool: &AnyPool, now: i64) -> Vec<(i64, i64)> {
    use freeagent::stats::queue_wait::{first_slot, SLOT_MS};
    let since = if now == i64::MIN {
        i64::MIN
    } else {
        first_slot(now) * SLOT_MS
    };
    sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT b.id, a.assigned_at, b.submitted_at FROM attempts a
         JOIN builds b ON b.id = a.build_id
         WHERE a.attempt = 1 AND a.assigned_at >= $1 ORDER BY b.id",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .expect("first attempts")
    .into_iter()
    .map(|(id, assigned, submitted)| (id, assigned - submitted))
    .collect()
}

/// Asserts that `queueWaitP50Ms` and `queueWaitP95Ms` are within 2% of the
/// exact (nearest-rank) percentiles of `waits`, or null when it is empty.
pub fn assert_queue_wait_matches(stats: &NetworkStats, waits: &[i64], context: &str) {
    use freeagent::stats::queue_wait::exact_percentile;
    let mut sorted = waits.to_vec();
    for (shown, percent) in [(stats.queue_wait_p50_ms, 50), (stats.queue_wait_p95_ms, 95)] {
        let exact = exact_percentile(&mut sorted, percent);
        match (shown, exact) {
            (None, None) => {}
            (Some(shown), Some(exact)) => assert!(
                (shown - exact).abs() as f64 <= 0.02 * exact as f64,
                "queueWaitP{percent}Ms {context}: {shown} ms, exact {exact} ms of {waits:?}"
            ),
            _ => panic!("queueWaitP{percent}Ms {context}: {shown:?}, exact {exact:?} of {waits:?}"),
        }
    }
}

/// Seconds as integer microseconds, as the controller rounds them.
pub fn micros(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

/// Asserts that `NetworkStats` equal the recomputation (`nodesOnline` is
/// checked by the caller, which knows which workers it registered).
pub fn assert_stats_match(stats: &NetworkStats, r: &Recomputed, context: &str) {
    assert_eq!(
        stats.builds_queued, r.builds_queued,
        "buildsQueued {context}"
    );
    assert_eq!(
        stats.active_builds, r.active_builds,
        "activeBuilds {context}"
    );
    assert_eq!(stats.builds_today, r.builds_today, "buildsToday {context}");
    assert_eq!(stats.total_builds, r.total_builds, "totalBuilds {context}");
    assert_eq!(
        stats.total_build_time_ms, r.total_build_time_ms,
        "totalBuildTimeMs {context}"
    );
    let tolerance = 1e-6 * (r.builds.len() as f64 + 1.0);
    assert!(
        (stats.total_cpu_seconds - r.total_cpu_micros as f64 / 1e6).abs() <= tolerance,
        "totalCpuSeconds {context}: got {}, recomputed {}",
        stats.total_cpu_seconds,
        r.total_cpu_micros as f64 / 1e6
    );
    assert!(
        (stats.cpu_cores_busy - r.cpu_cores_busy).abs() <= 1e-9,
        "cpuCoresBusy {context}: got {}, recomputed {}",
        stats.cpu_cores_busy,
        r.cpu_cores_busy
    );
    assert!(!stats.demo, "demo is false in a real build");
}

/// Asserts that a build's view matches its recomputed figures.
pub fn assert_build_matches(view: &BuildView, f: &BuildFigures, context: &str) {
    assert!(
        (view.cpu_seconds - f.cpu_micros as f64 / 1e6).abs() <= 1e-6,
        "build {} cpuSeconds {context}: got {}, recomputed {}",
        view.id,
        view.cpu_seconds,
        f.cpu_micros as f64 / 1e6
    );
    assert_eq!(
        view.peak_memory_mb, f.peak_memory_mb,
        "build {} peakMemoryMb {context}",
        view.id
    );
    assert_eq!(
        view.snapshot_count, f.snapshot_count,
        "build {} snapshotCount {context}",
        view.id
    );
}

/// Asserts that `freeagent verify` finds every stored figure equal to its
/// recomputation (retention's removals are no difference).
pub async fn assert_verified(database_url: &str, context: &str) {
    let report = freeagent::storage::verify::verify(database_url, false)
        .await
        .unwrap_or_else(|e| panic!("verify could not run {context}: {e}"));
    let lines: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    assert!(
        lines.is_empty(),
        "verify found differences {context}:\n{}",
        lines.join("\n")
    );
}
