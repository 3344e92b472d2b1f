//! Several controllers on one Postgres database (SPEC "Several controllers
//! on Postgres"): three real `freeagent serve` processes on one throwaway
//! database are one controller to the outside. No build is handed out
//! twice, every figure equals the recomputation from the raw rows whichever
//! controller answers, a replay is a duplicate wherever it lands, queue
//! wake-ups cross controllers, `kill -9` of one loses no acknowledged
//! sample and moves its duties to a survivor within one lease timeout, and
//! a rolling restart under real agents loses nothing.
//!
//! These run in the Postgres pass (`FREEAGENT_TEST_BACKEND=postgres`) and
//! skip themselves on SQLite, whose file serves one controller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use freeagent::stats::NetworkStats;
use freeagent::wire::{BuildView, Snapshot, TelemetryAnswer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::AnyPool;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_freeagent");

/// Whether this pass runs the multi-controller tests.
fn on_postgres(test: &str) -> bool {
    if backend() == Backend::Postgres {
        return true;
    }
    eprintln!("{test}: several controllers need Postgres; runs in the Postgres pass");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `freeagent serve` process on a fixed loopback port, so that it can be
/// restarted where agents expect it.
struct Controller {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    database_url: String,
    extra: Vec<String>,
    starts: u32,
}

impl Controller {
    async fn start(dir: &Path, database_url: &str, extra: &[&str]) -> Controller {
        let mut controller = Controller {
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
            database_url: database_url.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            starts: 0,
        };
        controller.launch().await;
        controller
    }

    async fn launch(&mut self) {
        self.starts += 1;
        let log = self
            .dir
            .join(format!("serve-{}-{}.log", self.port, self.starts));
        let out = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(BIN);
        for (key, _) in std::env::vars() {
            if key.starts_with("FREEAGENT_") || key == "LEPTOS_SITE_ADDR" {
                command.env_remove(key);
            }
        }
        let child = command
            .current_dir(&self.dir)
            .kill_on_drop(true)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--database-url", &self.database_url])
            .args(["--admin-key", ADMIN_KEY, "--stats-ttl", "0s"])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("start freeagent serve");
        self.child = Some(child);
        let health = self.url("/healthz");
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(answer) = http.get(&health).send().await {
                if answer.status() == StatusCode::OK {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "controller exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller did not start in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base(), path)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("controller running")
    }

    /// SIGKILL: no graceful anything.
    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill -9");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then the same port again once it has exited.
    async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().expect("pid") as i32;
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .expect("controller stops within 20 s of SIGTERM")
                .expect("wait");
        }
        self.launch().await;
    }
}

/// Three controllers on one fresh Postgres database.
struct Network {
    dir: tempfile::TempDir,
    controllers: Vec<Controller>,
    http: reqwest::Client,
    pool: AnyPool,
}

impl Network {
    async fn start(extra: &[&str]) -> Network {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = crate::postgres::fresh_database().await;
        let mut controllers = Vec::new();
        for _ in 0..3 {
            controllers.push(Controller::start(dir.path(), &database_url, extra).await);
        }
        let pool = read_only_pool(&database_url).await;
        Network {
            dir,
            controllers,
            http: client(),
            pool,
        }
    }

    fn base(&self, i: usize) -> String {
        self.controllers[i % self.controllers.len()].base()
    }

    /// Every controller's URL, comma-separated, for agents.
    fn all_urls(&self) -> String {
        self.controllers
            .iter()
            .map(Controller::base)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn post(
        &self,
        i: usize,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let request = self
            .http
            .post(format!("{}{path}", self.base(i)))
            .bearer_auth(auth);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.expect("controller answers")
    }

    async fn register(&self, i: usize, name: &str) -> Worker {
        let body = json!({"name": name, "platforms": ["linux"], "cpuCores": 4, "memoryMb": 8192});
        let answer: Value = expect_json(
            self.post(i, "/api/workers/register", ADMIN_KEY, Some(body))
                .await,
            StatusCode::CREATED,
        )
        .await;
        Worker {
            id: answer["workerId"].as_i64().expect("workerId"),
            token: answer["token"].as_str().expect("token").to_string(),
            cores: 4,
            memory_mb: 8192,
        }
    }

    async fn submit(&self, i: usize) -> i64 {
        let answer: Value = expect_json(
            self.post(
                i,
                "/api/builds",
                ADMIN_KEY,
                Some(json!({"platform": "linux"})),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        answer["id"].as_i64().expect("id")
    }

    /// `None` on 204.
    async fn poll(&self, i: usize, worker: &Worker, wait_s: u32) -> Option<i64> {
        let answer = self
            .post(
                i,
                &format!("/api/workers/poll?waitS={wait_s}"),
                &worker.token,
                None,
            )
            .await;
        match answer.status() {
            StatusCode::NO_CONTENT => None,
            StatusCode::OK => {
                let body: Value = answer.json().await.expect("poll body");
                body["build"]["id"].as_i64()
            }
            other => panic!("poll answered {other}"),
        }
    }

    async fn expect_ok(&self, i: usize, path: &str, auth: &str, body: Option<Value>) {
        let answer = self.post(i, path, auth, body).await;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "{path} on controller {i}: {text}");
    }

    async fn telemetry(
        &self,
        i: usize,
        worker: &Worker,
        build: i64,
        samples: &[Snapshot],
    ) -> Result<TelemetryAnswer, String> {
        let path = format!("/api/builds/{build}/telemetry");
        let request = self
            .http
            .post(format!("{}{path}", self.base(i)))
            .bearer_auth(&worker.token)
            .json(&batch(samples));
        match request.send().await {
            Ok(answer) if answer.status() == StatusCode::OK => {
                answer.json().await.map_err(|e| e.to_string())
            }
            Ok(answer) => Err(format!("answered {}", answer.status())),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn stats(&self, i: usize) -> NetworkStats {
        expect_json(
            self.http
                .get(format!("{}/api/stats", self.base(i)))
                .send()
                .await
                .expect("stats"),
            StatusCode::OK,
        )
        .await
    }

    async fn build(&self, i: usize, id: i64) -> BuildView {
        expect_json(
            self.http
                .get(format!("{}/api/builds/{id}", self.base(i)))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .expect("build"),
            StatusCode::OK,
        )
        .await
    }

    /// Asserts that every running controller's figures, and each build's,
    /// equal the recomputation from the raw rows.
    async fn assert_figures_exact(&self, context: &str) {
        let builds = raw_builds(&self.pool).await;
        let samples = samples_by_key(&self.pool).await;
        let recomputed = recompute(&builds, &samples, now_ms());
        for (i, controller) in self.controllers.iter().enumerate() {
            if controller.child.is_none() {
                continue;
            }
            let stats = self.stats(i).await;
            assert_stats_match(&stats, &recomputed, &format!("{context}, controller {i}"));
            let waits: Vec<i64> = raw_first_waits(&self.pool, stats.generated_at)
                .await
                .into_iter()
                .map(|(_, wait)| wait)
                .collect();
            assert_queue_wait_matches(&stats, &waits, &format!("{context}, controller {i}"));
            for build in &builds {
                let view = self.build(i, build.id).await;
                let figures = &recomputed.builds[&build.id];
                assert_build_matches(&view, figures, &format!("{context}, build {}", build.id));
            }
        }
        if let Some(controller) = self.controllers.first() {
            assert_verified(&controller.database_url, context).await;
        }
    }

    /// Who holds `duty` now: the holder's process id, and when its lease ends.
    async fn duty_holder(&self, duty: &str) -> Option<(u32, i64)> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT holder, expires_at FROM duty_leases WHERE duty = $1")
                .bind(duty)
                .fetch_optional(&self.pool)
                .await
                .expect("duty_leases");
        row.map(|(holder, expires_at)| {
            let pid = holder
                .split(':')
                .nth(1)
                .and_then(|pid| pid.parse().ok())
                .expect("holder names its process");
            (pid, expires_at)
        })
    }
}

/// Samples `seqs` of a build, 10 ms apart, ending now.
fn samples(seqs: std::ops::RangeInclusive<i64>) -> Vec<Snapshot> {
    let now = now_ms();
    let last = *seqs.end();
    seqs.map(|seq| {
        let spread = (seq % 50) as f64;
        sample(seq, now - (last - seq) * 10, 10.0 + spread, 256.0 + spread)
    })
    .collect()
}

/// Workers spread over three controllers run builds through all three in
/// turn (claim on one, start on the next, telemetry and its replays across
/// all, complete, cancel and release on others); every controller's
/// figures equal the recomputation from the raw rows, and each replay
/// counted as a duplicate wherever it landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_controllers_keep_every_figure_exact() {
    if !on_postgres("three_controllers_keep_every_figure_exact") {
        return;
    }
    let net = Arc::new(Network::start(&[]).await);
    let mut workers = Vec::new();
    for i in 0..9 {
        workers.push(net.register(i, &format!("w{i}")).await);
    }
    for i in 0..21 {
        net.submit(i).await;
    }
    let mut tasks = Vec::new();
    for (w, worker) in workers.into_iter().enumerate() {
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0usize;
            let mut duplicates = 0u64;
            while let Some(build) = net.poll(w + round, &worker, 0).await {
                round += 1;
                let start = format!("/api/builds/{build}/start");
                net.expect_ok(w + round, &start, &worker.token, None).await;
                for part in 0..3i64 {
                    let batch = samples(part * 5 + 1..=part * 5 + 5);
                    let first = net
                        .telemetry(w + round + part as usize, &worker, build, &batch)
                        .await
                        .expect("batch stored");
                    assert_eq!(first.accepted, 5, "build {build}: {first:?}");
                    // The same batch again, through the next controller.
                    let replay = net
                        .telemetry(w + round + part as usize + 1, &worker, build, &batch)
                        .await
                        .expect("replay answered");
                    assert_eq!(
                        (replay.accepted, replay.duplicates),
                        (0, 5),
                        "a replay is a duplicate on any controller"
                    );
                    duplicates += replay.duplicates;
                }
                let path = format!("/api/builds/{build}/complete");
                let outcome = match build % 7 {
                    0 => json!({"success": false, "error": "tests failed"}),
                    _ => json!({"success": true}),
                };
                if build % 5 == 0 {
                    net.expect_ok(
                        w + round + 2,
                        &format!("/api/builds/{build}/release"),
                        &worker.token,
                        None,
                    )
                    .await;
                } else {
                    net.expect_ok(w + round + 2, &path, &worker.token, Some(outcome))
                        .await;
                }
            }
            duplicates
        }));
    }
    let mut duplicates = 0;
    for task in tasks {
        duplicates += task.await.expect("worker task");
    }
    assert!(duplicates > 0);
    net.assert_figures_exact("after the builds").await;
    let stats = net.stats(0).await;
    assert!(stats.total_builds > 0, "builds finished: {stats:?}");
}

/// Fifty workers polling at once across the three controllers never get
/// the same build, and none is told "no build" while one is waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_workers_polling_at_once_never_share_a_build() {
    if !on_postgres("fifty_workers_polling_at_once_never_share_a_build") {
        return;
    }
    let net = Arc::new(Network::start(&[]).await);
    let mut workers = Vec::new();
    for i in 0..50 {
        workers.push(net.register(i, &format!("w{i}")).await);
    }
    let mut submitted = BTreeSet::new();
    for i in 0..30 {
        submitted.insert(net.submit(i).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(workers.len()));
    let mut tasks = Vec::new();
    for (i, worker) in workers.into_iter().enumerate() {
        let (net, barrier) = (net.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            net.poll(i, &worker, 0).await
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        if let Some(id) = task.await.expect("poll task") {
            claimed.push(id);
        }
    }
    let distinct: BTreeSet<i64> = claimed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a build was handed out twice: {claimed:?}"
    );
    assert_eq!(distinct, submitted, "every waiting build was handed out");
    net.assert_figures_exact("after the claims").await;
}

/// A worker long-polling one controller is handed a build submitted on
/// another within a second or so (LISTEN/NOTIFY), not when its wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_wakes_for_a_build_submitted_elsewhere() {
    if !on_postgres("long_poll_wakes_for_a_build_submitted_elsewhere") {
        return;
    }
    let net = Arc::new(Network::start(&[]).await);
    let worker = net.register(2, "waiter").await;
    let waiting = {
        let net = net.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let build = net.poll(2, &worker, 30).await;
            (build, asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted_at = Instant::now();
    let id = net.submit(0).await;
    let (build, _) = waiting.await.expect("poll task");
    let handed_after = submitted_at.elapsed();
    assert_eq!(build, Some(id));
    // SPEC: within 1 s of its arrival. The bound here is loose for a busy
    // machine, and still far below the 30 s the wait would otherwise take.
    assert!(
        handed_after < Duration::from_secs(5),
        "handed out {handed_after:?} after submission"
    );
}

/// Telemetry posted round-robin to three controllers (moving on, like the
/// agent, when one does not answer); one is killed with SIGKILL mid-load.
/// Every acknowledged sample is stored, every figure is exact, and the
/// reaper and retention duties of the killed controller move to a survivor
/// within one lease timeout, where the reaper requeues a silent worker's
/// build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_sample_and_duties_move() {
    if !on_postgres("kill_9_loses_no_acknowledged_sample_and_duties_move") {
        return;
    }
    const LEASE: Duration = Duration::from_secs(3);
    let mut net = Network::start(&["--lease-timeout", "3s"]).await;
    // The duties settle on one controller; that one dies.
    let (holder_pid, _) = wait_for(Duration::from_secs(10), "a reaper duty holder", || async {
        net.duty_holder("reaper").await
    })
    .await;
    let victim = net
        .controllers
        .iter()
        .position(|c| c.pid() == holder_pid)
        .expect("the holder is one of the three");
    let silent = net.register(0, "silent").await;
    let mut workers = Vec::new();
    for i in 0..6 {
        let worker = net.register(i, &format!("busy{i}")).await;
        net.submit(i).await;
        let build = net.poll(i, &worker, 0).await.expect("a build to run");
        workers.push((worker, build));
    }
    let acknowledged: Arc<Mutex<BTreeMap<(i64, i64), Snapshot>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let bases: Vec<String> = (0..3).map(|i| net.base(i)).collect();
    let mut load = Vec::new();
    for (w, (worker, build)) in workers.into_iter().enumerate() {
        let (acknowledged, stop, bases) = (acknowledged.clone(), stop.clone(), bases.clone());
        load.push(tokio::spawn(async move {
            let http = client();
            let mut at = w;
            let mut seq = 0;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let batch_samples = samples(seq + 1..=seq + 10);
                // Like the agent: the same batch, to the next controller,
                // until one acknowledges it.
                loop {
                    let answer = http
                        .post(format!("{}/api/builds/{build}/telemetry", bases[at % 3]))
                        .bearer_auth(&worker.token)
                        .json(&batch(&batch_samples))
                        .send()
                        .await;
                    match answer {
                        Ok(answer) if answer.status() == StatusCode::OK => break,
                        Ok(answer) if answer.status() == StatusCode::TOO_MANY_REQUESTS => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        _ => at += 1,
                    }
                }
                {
                    let mut acked = acknowledged.lock().expect("lock");
                    for s in &batch_samples {
                        acked.insert((build, s.seq), s.clone());
                    }
                }
                seq += 10;
                at += 1;
                tokio::select! {
                    _ = &mut stopped => return seq,
                    _ = tokio::time::sleep(Duration::from_millis(120)) => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A worker that goes silent holding a build just before the kill: only
    // a survivor's reaper can requeue it.
    let silent_build = net.submit(0).await;
    assert_eq!(net.poll(victim, &silent, 0).await, Some(silent_build));
    let killed_at = Instant::now();
    net.controllers[victim].kill9().await;
    let survivors: Vec<u32> = net
        .controllers
        .iter()
        .filter(|c| c.child.is_some())
        .map(Controller::pid)
        .collect();
    let mut moved = BTreeMap::new();
    while moved.len() < 2 {
        for duty in ["reaper", "retention"] {
            if moved.contains_key(duty) {
                continue;
            }
            if let Some((pid, _)) = net.duty_holder(duty).await {
                if survivors.contains(&pid) {
                    moved.insert(duty, killed_at.elapsed());
                }
            }
        }
        assert!(
            killed_at.elapsed() < LEASE * 3,
            "duties did not move to a survivor: {moved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (duty, after) in &moved {
        assert!(
            *after <= LEASE,
            "the {duty} duty moved {after:?} after the kill, more than one lease timeout"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.notify_waiters();
    for task in load {
        task.await.expect("load task");
    }
    // The silent worker's build goes back to the queue as attempt 2.
    let survivor = (victim + 1) % 3;
    wait_for(LEASE * 4, "the silent worker's build requeued", || async {
        let view = net.build(survivor, silent_build).await;
        (view.attempt == 2 && view.status == "pending").then_some(())
    })
    .await;

    let stored = samples_by_key(&net.pool).await;
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() >= 60,
        "load ran: {} samples",
        acknowledged.len()
    );
    for ((build, seq), sent) in &acknowledged {
        let row = stored
            .get(&(*build, 1, *seq))
            .unwrap_or_else(|| panic!("acknowledged sample {seq} of build {build} is gone"));
        assert_eq!(row.cpu_percent, sent.cpu_percent);
        assert_eq!(row.memory_mb, sent.memory_mb);
    }
    net.assert_figures_exact("after the kill").await;
}

/// Real agents, each given all three controllers, run builds while the
/// controllers restart one after another. Every build completes, none is
/// left stuck, each attempt's samples arrive without a gap, and the
/// figures stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_real_agents_loses_nothing() {
    if !on_postgres("rolling_restart_under_real_agents_loses_nothing") {
        return;
    }
    let mut net = Network::start(&[]).await;
    let controllers = net.all_urls();
    let mut agents = Vec::new();
    for i in 0..3 {
        let token_file = net.dir.path().join(format!("agent{i}.token"));
        let registered = std::process::Command::new(BIN)
            .args(["agent", "register", "--controller", &controllers])
            .args(["--admin-key", ADMIN_KEY, "--name", &format!("agent{i}")])
            .args(["--platform", "linux", "--token-file"])
            .arg(&token_file)
            .output()
            .expect("agent register");
        assert!(registered.status.success(), "{registered:?}");
        let log = net.dir.path().join(format!("agent{i}.log"));
        let out = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(BIN)
            .args(["agent", "--controller", &controllers, "--platform", "linux"])
            .args(["--build-command", "sleep 4", "--interval", "1s"])
            .args(["--poll-interval", "200ms", "--nice", "0", "--token-file"])
            .arg(&token_file)
            .arg("--work-root")
            .arg(net.dir.path().join(format!("agent{i}-work")))
            .env("RUST_LOG", "info")
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("start an agent");
        agents.push((child, log));
    }
    let mut builds = Vec::new();
    for i in 0..9 {
        builds.push(net.submit(i).await);
    }
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        net.controllers[i].restart().await;
    }
    let logs: Vec<PathBuf> = agents.iter().map(|(_, log)| log.clone()).collect();
    let agent_logs = || {
        logs.iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let finished: HashMap<i64, BuildView> = wait_for(
        Duration::from_secs(120),
        "every build completed",
        || async {
            let mut views = HashMap::new();
            for &id in &builds {
                let view = net.build(id as usize, id).await;
                if view.status != "completed" {
                    return None;
                }
                views.insert(id, view);
            }
            Some(views)
        },
    )
    .await;
    let stats = net.stats(1).await;
    assert_eq!(
        (stats.builds_queued, stats.active_builds),
        (0, 0),
        "nothing stuck"
    );
    let stored = samples_by_key(&net.pool).await;
    for (id, view) in &finished {
        let seqs: Vec<i64> = stored
            .keys()
            .filter(|(build, attempt, _)| build == id && *attempt == view.attempt)
            .map(|(_, _, seq)| *seq)
            .collect();
        let last_seq = finished_last_seq(&agent_logs(), *id)
            .unwrap_or_else(|| panic!("no agent reported build {id} finished:\n{}", agent_logs()));
        let expected: Vec<i64> = (1..=last_seq).collect();
        assert!(last_seq > 0, "build {id} sent samples");
        assert_eq!(
            seqs, expected,
            "build {id}: every sample the agent sent is stored"
        );
    }
    net.assert_figures_exact("after the rolling restart").await;
}

/// The `last_seq` an agent logged when build `id` finished.
fn finished_last_seq(logs: &str, id: i64) -> Option<i64> {
    let mut plain = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let line = plain
        .lines()
        .rev()
        .find(|l| l.contains("build finished") && l.contains(&format!("build_id={id} ")))?;
    let value = line.split("last_seq=").nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}
