//! The worker loop: heartbeat, poll, start, run the volunteer's command as
//! its own process group while sampling it, flush, complete. A build the
//! controller cancelled (a heartbeat's `cancelled`, a telemetry answer's
//! `buildStatus`) is ended and reported no further; on SIGINT/SIGTERM the
//! running build is ended, flushed and given back (`/release`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cgroup::{BuildCgroup, Cgroups};
use super::client::{CallError, Client, Tally};
use super::delivery::{backoff_delay, Delivery, DeliveryConfig, DeliveryStats};
use super::idle::{self, OwnBuild, Verdict};
use super::sampler::{self, CpuMeter, Units};
use super::{read_token, status, token_path, AgentError, RunArgs};
use crate::cache::lock;
use crate::wire::{ClaimedBuild, CompleteBuild, Snapshot};

/// Longest the agent keeps retrying `start` or `complete` of one build.
const REPORT_PATIENCE: Duration = Duration::from_secs(600);
use crate::wire::MAX_ERROR_CHARS as ERROR_MAX_CHARS;
/// Bytes of the build's output read for the tail.
const TAIL_BYTES: u64 = 16 * 1024;

pub use crate::clock::now_ms;

/// Set once SIGINT or SIGTERM arrived.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// What stopped us: `SIGTERM`, `SIGINT` or the simulator's duration.
    rx: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM (and fires after `deadline`, if any).
    pub fn install(deadline: Option<Duration>) -> Result<Self, AgentError> {
        use tokio::signal::unix::{signal, SignalKind};
        let io = |source| AgentError::Io {
            what: "installing signal handlers",
            source,
        };
        let mut term = signal(SignalKind::terminate()).map_err(io)?;
        let mut int = signal(SignalKind::interrupt()).map_err(io)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let limit = async {
                match deadline {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let reason = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = limit => "the end of --duration",
            };
            tracing::warn!(
                reason,
                "stopping: claiming no new builds, ending a running one"
            );
            let _ = tx.send(Some(reason));
            // Keep the receivers' view alive until the process ends.
            std::future::pending::<()>().await;
        });
        Ok(Shutdown { rx })
    }

    /// True once a signal arrived.
    pub fn is_set(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// What stopped us, once something did.
    pub fn reason(&self) -> Option<&'static str> {
        *self.rx.borrow()
    }

    /// Waits for the signal.
    pub async fn wait(&mut self) {
        // An error means the sender is gone: then no signal will ever come.
        if self.rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps `d`; returns false if the signal came first.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wait() => false,
        }
    }
}

/// Everything a build run needs.
struct Worker {
    client: Client,
    args: RunArgs,
    command: String,
    cores: u32,
    memory_mb: f64,
    units: Units,
    work_root: PathBuf,
    /// This agent's pid when it is the subreaper of its builds' orphans.
    adopter: Option<i32>,
    shutdown: Shutdown,
    /// Builds the controller cancelled.
    cancels: Cancels,
    /// Where builds' cgroups go, under `--cpu-limit`/`--memory-limit`.
    cgroups: Option<Cgroups>,
    /// The idle meter's verdicts, under `--only-when-idle`.
    idle: Option<watch::Receiver<Verdict>>,
    /// The running build, which the idle meter leaves out.
    own_build: OwnBuild,
    /// What the status file shows.
    board: status::Board,
    /// Deliveries still sending a finished build's backlog.
    backlog: Vec<(Delivery, JoinHandle<DeliveryStats>)>,
}

/// How a build ended, from the agent's side.
#[derive(Debug, Default)]
struct Ran {
    /// The signal cut it short and it could not be given back: the lease
    /// reaper will requeue it.
    unreleased: bool,
}

/// Builds the controller says were cancelled, as heartbeats list them.
/// Cheap to clone.
#[derive(Clone, Default)]
struct Cancels {
    ids: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    marked: Arc<tokio::sync::Notify>,
}

impl Cancels {
    fn mark(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        lock(&self.ids).extend(ids.iter().copied());
        self.marked.notify_waiters();
    }

    /// Resolves once build `id` is marked cancelled.
    async fn wait_for(&self, id: i64) {
        loop {
            let marked = self.marked.notified();
            tokio::pin!(marked);
            marked.as_mut().enable();
            if lock(&self.ids).contains(&id) {
                return;
            }
            marked.await;
        }
    }
}

/// Why the agent ended a build before its command exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndedBy {
    /// The controller cancelled it.
    Cancel,
    /// It ran past `--max-build-time`.
    TimeLimit,
    /// SIGINT or SIGTERM.
    Signal,
    /// The kernel killed a process of it for `--memory-limit`.
    MemoryLimit,
}

/// Resolves `limit` after `started`; never without a limit.
async fn sleep_past(started: Instant, limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep_until(started + limit).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the controller said build `id` was cancelled: in a
/// heartbeat answer, or in a telemetry answer of its delivery.
async fn cancelled_on_controller(cancels: &Cancels, id: i64, delivery: Option<&Delivery>) {
    match delivery {
        Some(delivery) => {
            tokio::select! {
                _ = cancels.wait_for(id) => {}
                _ = delivery.cancelled() => {}
            }
        }
        None => cancels.wait_for(id).await,
    }
}

/// Runs the worker loop until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> Result<ExitCode, AgentError> {
    let command = args
        .build_command
        .clone()
        .ok_or_else(|| AgentError::Usage("--build-command is required".into()))?;
    if args.platform.is_empty() {
        return Err(AgentError::Usage("--platform is required".into()));
    }
    // Before anything is claimed: a volunteer who asked for limits the
    // machine cannot enforce hears so at once, not after the first build.
    let limits = args.limits();
    let cgroups = if limits.is_empty() {
        None
    } else {
        let probed = tokio::task::spawn_blocking(move || Cgroups::probe(limits))
            .await
            .map_err(|e| AgentError::Io {
                what: "probing cgroups",
                source: std::io::Error::other(e),
            })??;
        tracing::info!(kind = probed.kind(), cpu_limit = ?probed.limits().cpu, memory_limit = ?probed.limits().memory.as_ref().map(ToString::to_string), "builds run in cgroups of their own");
        Some(probed)
    };
    let token_file = token_path(args.token_file.clone())?;
    let token = read_token(&token_file).await?;
    let client = args.controllers.client(&token, Tally::default())?;
    let shutdown = Shutdown::install(None)?;

    // A refused token is fatal and better said at once than on every poll.
    match client.first_answer(|| client.heartbeat()).await {
        Err(e @ CallError::Status { status, .. })
            if status.is_client_error() && status.as_u16() != 429 =>
        {
            return Err(AgentError::Controller {
                what: "the controller refused this worker's token (register again?)",
                source: e,
            });
        }
        Err(e) => tracing::warn!(error = %e, "controller not reachable yet; will keep trying"),
        Ok(_) => {}
    }
    let cancels = Cancels::default();
    let heartbeat = tokio::spawn(heartbeat_loop(
        client.clone(),
        args.heartbeat_interval.max(Duration::from_millis(100)),
        shutdown.clone(),
        cancels.clone(),
    ));

    let work_root = match &args.work_root {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("freeagent-work-{}", std::process::id())),
    };
    let board = status::Board::default();
    let status_file = status::status_path(&token_file);
    let status_writer = tokio::spawn(status::keep_writing(
        status_file.clone(),
        board.clone(),
        client.clone(),
    ));
    let memory_mb = sampler::memory_mb().await.unwrap_or(16_777_216) as f64;
    let adopter = become_subreaper();
    let units = Units::of_this_machine();
    let own_build = OwnBuild::default();
    let idle = args
        .only_when_idle
        .then(|| idle::start(args.idle_window, own_build.clone(), adopter, units));
    let mut worker = Worker {
        client,
        command,
        cores: sampler::cpu_cores(),
        memory_mb,
        units,
        work_root,
        adopter,
        shutdown,
        cancels,
        cgroups,
        idle,
        own_build,
        board,
        backlog: Vec::new(),
        args,
    };
    tracing::info!(
        controllers = ?worker.args.controllers.controller,
        platforms = ?worker.args.platform,
        interval_s = worker.args.interval.as_secs(),
        telemetry = !worker.args.no_telemetry,
        cpu_cores = worker.cores,
        only_when_idle = worker.args.only_when_idle,
        "worker started"
    );
    let result = worker.poll_loop().await;
    heartbeat.abort();
    worker.drain_backlog().await;
    status_writer.abort();
    status::write_stopped(&status_file, &worker.board, &worker.client).await;
    if worker.args.work_root.is_none() {
        // Only the folder the agent made up itself; a given one may hold
        // the volunteer's own files.
        let _ = remove_dir(worker.work_root.clone()).await;
    }
    let unreleased = result?;
    tracing::info!(unreleased, "worker stopped");
    Ok(if unreleased {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn heartbeat_loop(client: Client, every: Duration, mut shutdown: Shutdown, cancels: Cancels) {
    let mut failing = false;
    loop {
        if !shutdown.sleep(every).await {
            return;
        }
        match client.first_answer(|| client.heartbeat()).await {
            Ok(beat) => {
                cancels.mark(&beat.cancelled);
                if failing {
                    failing = false;
                    tracing::info!("heartbeat answered again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "heartbeat failed");
            }
            Err(_) => {}
        }
    }
}

impl Worker {
    fn delivery_config(&self) -> DeliveryConfig {
        DeliveryConfig {
            buffer_samples: self.args.buffer_samples as usize,
            batch_samples: self.args.batch_samples as usize,
            breaker_cooldown: self.args.breaker_cooldown,
            ..DeliveryConfig::default()
        }
    }

    /// Polls and runs builds until the signal; returns whether a build cut
    /// short by it could not be given back.
    async fn poll_loop(&mut self) -> Result<bool, AgentError> {
        let mut failures = 0u32;
        let mut shutdown = self.shutdown.clone();
        while !self.shutdown.is_set() {
            self.backlog.retain(|(_, task)| !task.is_finished());
            self.show_deliveries(None);
            if !self.wait_for_idle().await {
                break;
            }
            let asked = Instant::now();
            let polled = tokio::select! {
                polled = self.client.poll_wait(self.args.poll_wait) => polled,
                // A held poll must not keep a stopping agent waiting.
                _ = shutdown.wait() => break,
            };
            match polled {
                Ok(Some(build)) => {
                    failures = 0;
                    if self.run_build(build).await.unreleased {
                        return Ok(true);
                    }
                }
                Ok(None) => {
                    failures = 0;
                    // A controller that held the poll for its wait may be
                    // asked again at once; one that answered early (no long
                    // polling) is asked again after the poll interval.
                    let held = asked.elapsed() + Duration::from_millis(500) >= self.args.poll_wait;
                    if !held || self.args.poll_wait.is_zero() {
                        let wait = self.args.poll_interval;
                        self.shutdown.sleep(wait).await;
                    }
                }
                Err(e) if !e.is_retryable() => {
                    return Err(AgentError::Controller {
                        what: "polling for builds",
                        source: e,
                    });
                }
                Err(e) => {
                    failures += 1;
                    let delay = retry_delay(failures)
                        .max(self.args.poll_interval.min(Duration::from_secs(1)));
                    tracing::warn!(error = %e, failures, delay_ms = delay.as_millis() as u64, "poll failed");
                    self.shutdown.sleep(delay).await;
                }
            }
        }
        Ok(false)
    }

    /// Under `--only-when-idle`, waits (heartbeats go on) until the
    /// machine's own load has stayed under one busy core for the window;
    /// false when the signal came first.
    async fn wait_for_idle(&mut self) -> bool {
        let Some(mut verdicts) = self.idle.clone() else {
            return true;
        };
        let mut shutdown = self.shutdown.clone();
        let window = humantime::format_duration(self.args.idle_window);
        let mut waited = false;
        loop {
            let verdict = *verdicts.borrow_and_update();
            let why = match verdict {
                Verdict::Load { idle: true, cores } => {
                    if waited {
                        tracing::info!(load_cores = cores, "the machine is idle; claiming builds again");
                    }
                    self.board.set_waiting(None);
                    return true;
                }
                Verdict::Learning => format!(
                    "waiting for the machine to be idle (reading its load over the first {window})"
                ),
                Verdict::Load { cores, .. } => format!(
                    "waiting for the machine to be idle (its own load was {cores:.2} cores over the last {window}; builds are claimed under {})",
                    idle::IDLE_BELOW_CORES
                ),
            };
            if !waited {
                waited = true;
                tracing::info!(window = %window, verdict = ?verdict, "waiting for the machine to be idle before claiming a build");
            }
            self.board.set_waiting(Some(why));
            tokio::select! {
                changed = verdicts.changed() => {
                    if changed.is_err() {
                        // The meter is gone (it never stops on its own):
                        // never claim on a machine no longer watched.
                        tracing::error!("the idle meter stopped; claiming nothing more");
                        shutdown.wait().await;
                        return false;
                    }
                }
                _ = shutdown.wait() => return false,
            }
        }
    }

    async fn drain_backlog(&mut self) {
        let limit = self.args.flush_timeout;
        let flushes = self.backlog.iter().map(|(d, _)| d.flush(limit));
        let left: usize = futures::future::join_all(flushes).await.into_iter().sum();
        if left > 0 {
            tracing::warn!(
                samples = left,
                "exiting with samples the controller never acknowledged"
            );
        }
        for (_, task) in self.backlog.drain(..) {
            task.abort();
        }
    }

    /// Retries `call` while it fails in a retryable way, up to
    /// `REPORT_PATIENCE`; on the signal gives up at once, or with
    /// `through_signal` after at most `--flush-timeout` more.
    async fn report<F, Fut>(
        &mut self,
        what: &'static str,
        build: i64,
        through_signal: bool,
        mut call: F,
    ) -> Result<(), CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), CallError>>,
    {
        let mut deadline = Instant::now() + REPORT_PATIENCE;
        let mut hurried = false;
        let mut failures = 0;
        loop {
            if through_signal && !hurried && self.shutdown.is_set() {
                // Stopping: keep trying, but no longer than a flush may take.
                hurried = true;
                deadline = deadline.min(Instant::now() + self.args.flush_timeout);
            }
            match call().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    failures += 1;
                    let delay = match &e {
                        CallError::Status {
                            retry_after: Some(d),
                            ..
                        } => *d,
                        _ => retry_delay(failures),
                    }
                    .min(deadline.saturating_duration_since(Instant::now()));
                    tracing::warn!(build_id = build, call = what, error = %e, delay_ms = delay.as_millis() as u64, "call failed; retrying");
                    if through_signal {
                        tokio::time::sleep(delay).await;
                    } else if !self.shutdown.sleep(delay).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_build(&mut self, build: ClaimedBuild) -> Ran {
        let id = build.id;
        tracing::info!(build_id = id, platform = %build.platform, attempt = build.attempt, "claimed a build");
        if !self.args.platform.contains(&build.platform) {
            let error = format!(
                "this worker's agent was started for platforms {:?}, not {}; register it with the platforms its build command builds",
                self.args.platform, build.platform
            );
            tracing::warn!(build_id = id, platform = %build.platform, "claimed a build of a platform this agent does not run");
            let client = self.client.clone();
            let _ = self.report("start", id, false, || client.start(id)).await;
            return self.fail(id, error).await;
        }
        let client = self.client.clone();
        if let Err(e) = self.report("start", id, false, || client.start(id)).await {
            tracing::warn!(build_id = id, error = %e, "could not start the build; skipping it");
            if self.shutdown.is_set() {
                return self.give_back(id).await;
            }
            return Ran::default();
        }

        self.board.set_build(Some(status::RunningBuild {
            id,
            attempt: build.attempt,
            started_at: now_ms(),
        }));
        let name = format!("build-{id}-{}", build.attempt);
        let work_dir = self.work_root.join(&name);
        let log_path = self.work_root.join(format!("{name}.log"));
        let cgroup = match &self.cgroups {
            None => None,
            Some(cgroups) => {
                let cgroups = cgroups.clone();
                let cgroup_name = format!("freeagent-{}-{name}", std::process::id());
                let made = tokio::task::spawn_blocking(move || cgroups.create(&cgroup_name))
                    .await
                    .unwrap_or_else(|e| {
                        Err(super::cgroup::CgroupError::Unavailable(format!(
                            "creating the cgroup failed: {e}"
                        )))
                    });
                match made {
                    Ok(cgroup) => Some(Arc::new(cgroup)),
                    Err(e) => {
                        tracing::error!(build_id = id, error = %e, "could not create the build's cgroup");
                        let error = format!(
                            "the worker could not put the build in a cgroup with its limits: {e}"
                        );
                        return self.fail(id, error).await;
                    }
                }
            }
        };
        let spawn = {
            let (cmd, work_dir, log_path) =
                (self.command.clone(), work_dir.clone(), log_path.clone());
            let platform = build.platform.clone();
            let nice = self.args.nice;
            let join = cgroup.as_ref().map(|c| c.join_fds()).unwrap_or_default();
            tokio::task::spawn_blocking(move || {
                spawn_build(&cmd, id, &platform, &work_dir, &log_path, nice, join)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let pid = match spawn {
            Ok(pid) => pid,
            Err(e) => {
                tracing::error!(build_id = id, error = %e, "could not start the build command");
                if let Some(cgroup) = cgroup {
                    let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                }
                let error = format!("the worker could not start its build command: {e}");
                return self.fail(id, error).await;
            }
        };
        self.own_build.set(Some(pid));
        tracing::info!(build_id = id, pid, work_dir = %work_dir.display(), cgroup = ?cgroup.as_ref().map(|c| c.dirs()), "build command started");

        let delivery = if self.args.no_telemetry {
            None
        } else {
            Some(Delivery::start(
                self.client.clone(),
                id,
                self.delivery_config(),
            ))
        };
        self.show_deliveries(delivery.as_ref().map(|(d, _)| d));
        let (ended, meter, seq, ended_by) = self
            .watch_build(id, pid, delivery.as_ref().map(|(d, _)| d), cgroup.clone())
            .await;
        self.board.set_build(None);
        // Whether the memory limit ended it: the kernel's kill counter, or
        // (kernels that count kills nowhere) a SIGKILL after the limit was
        // reached. Read before the cgroup goes.
        let by_memory = match cgroup {
            Some(cgroup) => {
                let status = ended.status.clone();
                let watched = ended_by == Some(EndedBy::MemoryLimit);
                tokio::task::spawn_blocking(move || {
                    let by_memory = watched
                        || (!status.success()
                            && (cgroup.oom_kills() > 0
                                || (status == ExitStatus::Signal(libc::SIGKILL)
                                    && cgroup.hit_memory_limit())));
                    cgroup.remove();
                    by_memory
                })
                .await
                .unwrap_or(false)
            }
            None => false,
        };
        self.own_build.set(None);
        if ended_by == Some(EndedBy::Cancel) {
            // The controller has thrown the build away: nothing more is
            // reported for it, not even its unsent samples.
            if let Some((delivery, task)) = delivery {
                delivery.close();
                task.abort();
            }
            tracing::info!(build_id = id, status = %ended.status, "build cancelled on the controller; its processes ended");
            let _ = remove_dir(work_dir).await;
            let _ = tokio::fs::remove_file(&log_path).await;
            return Ran::default();
        }
        let cut_short = ended_by == Some(EndedBy::Signal);

        let mut stats = DeliveryStats::default();
        if let Some((delivery, task)) = delivery {
            delivery.close();
            let left = delivery.flush(self.args.flush_timeout).await;
            if left > 0 {
                tracing::warn!(
                    build_id = id,
                    samples = left,
                    "flush timed out; delivering the rest in the background"
                );
                stats = delivery.stats();
                self.backlog.push((delivery, task));
            } else {
                stats = task.await.unwrap_or_else(|_| delivery.stats());
            }
        }

        if cut_short {
            // Nothing was wrong with the build: it goes back to the queue,
            // its samples so far delivered, for another machine to run.
            let ran = self.give_back(id).await;
            let _ = remove_dir(work_dir).await;
            let _ = tokio::fs::remove_file(&log_path).await;
            return ran;
        }
        let timed_out = ended_by == Some(EndedBy::TimeLimit);
        let success = !timed_out && !by_memory && ended.status.success();
        let memory_limit = self
            .cgroups
            .as_ref()
            .and_then(|c| c.limits().memory.clone());
        let error = match (success, self.args.max_build_time, memory_limit) {
            (true, _, _) => None,
            (false, Some(limit), _) if timed_out => Some(format!(
                "timed out after {}",
                humantime::format_duration(limit)
            )),
            (false, _, Some(limit)) if by_memory => {
                let status = failure_text(&ended.status, &read_tail(&log_path).await);
                let text = format!("ended by its memory limit ({limit}): {status}");
                Some(text.chars().take(ERROR_MAX_CHARS).collect())
            }
            _ => Some(failure_text(&ended.status, &read_tail(&log_path).await)),
        };
        self.complete(id, CompleteBuild { success, error }).await;
        tracing::info!(
            build_id = id,
            success,
            status = %ended.status,
            last_seq = seq,
            cpu_time_s = meter.counter(),
            kernel_cpu_time_s = ended.cpu_time_s,
            accepted = stats.accepted,
            duplicates = stats.duplicates,
            rejected = stats.rejected,
            dropped = stats.dropped_full + stats.dropped_refused,
            rate_limited = stats.rate_limited,
            "build finished"
        );
        let _ = remove_dir(work_dir).await;
        let _ = tokio::fs::remove_file(&log_path).await;
        Ran::default()
    }

    /// Tells the status file which deliveries still hold samples: the
    /// running build's and the finished builds' backlogs.
    fn show_deliveries(&self, running: Option<&Delivery>) {
        let mut deliveries: Vec<Delivery> = self.backlog.iter().map(|(d, _)| d.clone()).collect();
        deliveries.extend(running.cloned());
        self.board.set_deliveries(deliveries);
    }

    /// Gives build `id` back to the queue (`/release`) as the agent stops.
    async fn give_back(&mut self, id: i64) -> Ran {
        let client = self.client.clone();
        match self
            .report("release", id, true, || client.release(id))
            .await
        {
            Ok(()) => {
                tracing::info!(
                    build_id = id,
                    reason = self.shutdown.reason().unwrap_or("stop"),
                    "build given back to the queue"
                );
                Ran::default()
            }
            Err(e) => {
                tracing::error!(build_id = id, error = %e, "could not give the build back; the lease reaper will requeue it");
                Ran { unreleased: true }
            }
        }
    }

    /// Samples the build until its command exits (ending it on the signal);
    /// returns how it ended, the meter and the last `seq`.
    async fn watch_build(
        &mut self,
        id: i64,
        pid: i32,
        delivery: Option<&Delivery>,
        cgroup: Option<Arc<BuildCgroup>>,
    ) -> (Ended, CpuMeter, i64, Option<EndedBy>) {
        let interval = self.args.interval;
        let adopter = self.adopter;
        // CPU time of the build's orphans that this agent reaped, µs.
        let reaped = Arc::new(AtomicU64::new(0));
        let mut waiter = {
            let reaped = reaped.clone();
            tokio::task::spawn_blocking(move || wait_child(pid, adopter.is_some(), &reaped))
        };
        let mut meter = CpuMeter::new(self.cores);
        let mut seq = 0i64;
        let mut last = Instant::now();
        let mut memory_mb = 0.0;
        let mut ticker = tokio::time::interval_at(last + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        let mut stopping: Option<JoinHandle<()>> = None;
        let mut ended_by = None;
        let cancels = self.cancels.clone();
        let time_limit = self.args.max_build_time;
        let started = Instant::now();
        let units = self.units;
        // The kernel's kill counter is read often: a build whose process it
        // killed is ended before it goes on half broken.
        let memory_watch = cgroup.filter(|_| {
            self.cgroups
                .as_ref()
                .is_some_and(|c| c.limits().memory.is_some())
        });
        let mut oom_ticker = tokio::time::interval(Duration::from_millis(500));
        oom_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ended = loop {
            tokio::select! {
                result = &mut waiter => {
                    break result.unwrap_or_else(|e| Ended::unknown(format!("waiting for the build failed: {e}")));
                }
                _ = ticker.tick() => {
                    // Read before the tree: an orphan reaped in between is
                    // then missed once rather than counted twice.
                    let reaped_s = micros_to_s(reaped.load(Ordering::SeqCst));
                    let reading = tokio::task::spawn_blocking(move || sampler::read_tree(pid, adopter, units)).await;
                    let now = Instant::now();
                    match reading {
                        Ok(Ok(reading)) => {
                            let wall = now.duration_since(last).as_secs_f64();
                            last = now;
                            let (counter, percent) = meter.observe(reaped_s + reading.cpu_time_s, wall);
                            memory_mb = reading.memory_mb.min(self.memory_mb);
                            seq += 1;
                            tracing::debug!(build_id = id, seq, processes = reading.processes, cpu_time_s = counter, cpu_percent = percent, memory_mb, "sampled");
                            if let Some(d) = delivery {
                                d.push(sample(seq, counter, percent, memory_mb, interval));
                            }
                        }
                        Ok(Err(e)) => tracing::warn!(build_id = id, error = %e, "could not read /proc; sample skipped"),
                        Err(e) => tracing::warn!(build_id = id, error = %e, "sampler task failed; sample skipped"),
                    }
                }
                _ = cancelled_on_controller(&cancels, id, delivery), if stopping.is_none() => {
                    tracing::warn!(build_id = id, pid, "the build was cancelled on the controller; ending its process group");
                    ended_by = Some(EndedBy::Cancel);
                    stopping = Some(tokio::spawn(end_group(pid, adopter, self.args.kill_grace)));
                }
                _ = oom_ticker.tick(), if stopping.is_none() && memory_watch.is_some() => {
                    let kills = match memory_watch.clone() {
                        Some(cgroup) => tokio::task::spawn_blocking(move || cgroup.oom_kills()).await.unwrap_or(0),
                        None => 0,
                    };
                    if kills > 0 {
                        tracing::warn!(build_id = id, pid, oom_kills = kills, "the build reached its memory limit; ending its process group");
                        ended_by = Some(EndedBy::MemoryLimit);
                        stopping = Some(tokio::spawn(end_group(pid, adopter, self.args.kill_grace)));
                    }
                }
                _ = sleep_past(started, time_limit), if stopping.is_none() => {
                    tracing::warn!(build_id = id, pid, "the build ran past --max-build-time; ending its process group");
                    ended_by = Some(EndedBy::TimeLimit);
                    stopping = Some(tokio::spawn(end_group(pid, adopter, self.args.kill_grace)));
                }
                _ = shutdown.wait(), if stopping.is_none() => {
                    tracing::warn!(build_id = id, pid, "ending the build's process group");
                    ended_by = Some(EndedBy::Signal);
                    stopping = Some(tokio::spawn(end_group(pid, adopter, self.args.kill_grace)));
                }
            }
        };
        ended.cut = stopping.is_some();
        if let Some(task) = stopping {
            let _ = task.await;
        }
        // Leftovers of a finished command (daemons it started) end with it;
        // then the orphans among them are reaped so their time is counted
        // here and not in the next build.
        end_group(pid, adopter, self.args.kill_grace).await;
        if adopter.is_some() {
            let reaped = reaped.clone();
            let limit = self.args.kill_grace + Duration::from_secs(1);
            let _ = tokio::task::spawn_blocking(move || reap_orphans(&reaped, limit)).await;
        }
        // The command was reaped: its rusage holds the CPU time of
        // everything it waited for, and the orphans' rusage the rest.
        let total = ended.cpu_time_s + micros_to_s(reaped.load(Ordering::SeqCst));
        // The last stretch may be milliseconds long; over at least a second
        // the rounding of /proc's clock ticks does not read as a spike.
        let wall = Instant::now().duration_since(last).as_secs_f64().max(1.0);
        let (counter, percent) = meter.observe(total, wall);
        seq += 1;
        if let Some(d) = delivery {
            d.push(sample(seq, counter, percent, memory_mb, interval));
        }
        (ended, meter, seq, ended_by)
    }

    /// Reports build `id` failed with `error` before it ran.
    async fn fail(&mut self, id: i64, error: String) -> Ran {
        let body = CompleteBuild {
            success: false,
            error: Some(error),
        };
        self.complete(id, body).await;
        Ran::default()
    }

    async fn complete(&mut self, id: i64, body: CompleteBuild) {
        let client = self.client.clone();
        let result = self
            .report("complete", id, true, || {
                let (client, body) = (client.clone(), body.clone());
                async move { client.complete(id, &body).await }
            })
            .await;
        if let Err(e) = result {
            tracing::error!(build_id = id, error = %e, "could not report the build complete");
        }
    }
}

fn sample(
    seq: i64,
    cpu_time_s: f64,
    cpu_percent: f64,
    memory_mb: f64,
    interval: Duration,
) -> Snapshot {
    Snapshot {
        seq,
        sampled_at: now_ms(),
        cpu_percent: hundredths(cpu_percent),
        memory_mb,
        cpu_time_s: Some(hundredths(cpu_time_s)),
        interval_s: i64::try_from(interval.as_secs())
            .unwrap_or(300)
            .clamp(1, 300),
    }
}

/// `x` to two decimals. The kernel accounts CPU time in 10 ms ticks, so
/// finer digits measure nothing, and the controller stores a figure in
/// hundredths in 2 to 4 bytes where an arbitrary double takes 8. Rounding is
/// monotonic: the counter still never decreases.
pub fn hundredths(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn retry_delay(failures: u32) -> Duration {
    backoff_delay(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(30),
        rand::thread_rng().gen_range(0.5..=1.0),
    )
}

/// How the build command ended.
#[derive(Debug)]
struct Ended {
    status: ExitStatus,
    /// User + system seconds of the command and everything it waited for.
    cpu_time_s: f64,
    /// Ended by the agent's signal handling.
    cut: bool,
}

impl Ended {
    fn unknown(why: String) -> Self {
        Ended {
            status: ExitStatus::Unknown(why),
            cpu_time_s: 0.0,
            cut: false,
        }
    }
}

/// Exit status of the build command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Could not be learned.
    Unknown(String),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown(why) => write!(f, "unknown exit status ({why})"),
        }
    }
}

/// The `error` of a failed build: its status, then as much of the end of
/// its output as fits in the controller's 4000 characters.
pub fn failure_text(status: &ExitStatus, output: &str) -> String {
    let head = format!("{status}");
    let output = output.trim_end();
    if output.is_empty() {
        return head;
    }
    let head = format!("{head}; last output:\n");
    let room = ERROR_MAX_CHARS.saturating_sub(head.chars().count());
    let count = output.chars().count();
    let tail: String = output.chars().skip(count.saturating_sub(room)).collect();
    format!("{head}{tail}")
}

async fn read_tail(path: &Path) -> String {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default()
}

async fn remove_dir(dir: PathBuf) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(&dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates a fresh work directory and starts `sh -c cmd` in it as the leader
/// of its own process group, output to `log`. Blocking.
fn spawn_build(
    cmd: &str,
    id: i64,
    platform: &str,
    work_dir: &Path,
    log: &Path,
    nice: i32,
    join: Vec<std::os::fd::RawFd>,
) -> std::io::Result<i32> {
    use std::os::unix::process::CommandExt;
    if work_dir.exists() {
        std::fs::remove_dir_all(work_dir)?;
    }
    std::fs::create_dir_all(work_dir)?;
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut command = std::process::Command::new("sh");
    // SAFETY: write(2) and setpriority(2) are async-signal-safe, allocate
    // nothing (`join` was built before the fork) and touch only the child,
    // between fork and exec. Writing "0" to an open `cgroup.procs` moves
    // the writer: the build is in its cgroup before its first instruction,
    // and every process it starts inherits the cgroup and the niceness.
    unsafe {
        command.pre_exec(move || {
            for &fd in &join {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = command
        .arg("-c")
        .arg(cmd)
        .current_dir(work_dir)
        .env("FREEAGENT_BUILD_ID", id.to_string())
        .env("FREEAGENT_PLATFORM", platform)
        .env("FREEAGENT_WORK_DIR", work_dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?;
    // The child is waited for with wait4 (for its rusage), not through std.
    i32::try_from(child.id()).map_err(std::io::Error::other)
}

fn micros_to_s(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn rusage_micros(usage: &libc::rusage) -> u64 {
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Makes this process the subreaper of its descendants, so a build's
/// orphans (daemons, double forks, `setsid`) are reparented to the agent:
/// they stay visible, countable and killable. Returns our pid when it
/// worked.
fn become_subreaper() -> Option<i32> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on us.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        i32::try_from(std::process::id()).ok()
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot adopt the builds' orphans; their CPU time after they leave the tree is not counted");
        None
    }
}

/// Waits for `pid` with `wait4`, returning its status and the CPU time of
/// it and every descendant it waited for. As subreaper (`adopted`) it also
/// reaps the build's orphans as they exit, adding their CPU time to
/// `reaped` (µs). Blocking.
fn wait_child(pid: i32, adopted: bool, reaped: &AtomicU64) -> Ended {
    let target = if adopted { -1 } else { pid };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; zeroed is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: the pointers are to live locals.
        let r = unsafe { libc::wait4(target, &mut status, 0, &mut usage) };
        if r == pid {
            return Ended {
                status: exit_status(status),
                cpu_time_s: micros_to_s(rusage_micros(&usage)),
                cut: false,
            };
        }
        if r > 0 {
            reaped.fetch_add(rusage_micros(&usage), Ordering::SeqCst);
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Ended::unknown(err.to_string());
        }
    }
}

/// Reaps the build's remaining orphans (already signalled), adding their
/// CPU time to `reaped`, until none is left or `limit` passed. Blocking.
fn reap_orphans(reaped: &AtomicU64, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: as in wait_child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
        if r > 0 {
            reaped.fetch_add(rusage_micros(&usage), Ordering::SeqCst);
            continue;
        }
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return; // ECHILD: no child left.
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Unknown(format!("wait status {status}"))
    }
}

fn signal_all(pgid: i32, pids: &[i32], signal: libc::c_int) {
    // SAFETY: plain syscalls; ESRCH (already gone) is expected and ignored.
    unsafe {
        libc::killpg(pgid, signal);
        for &pid in pids {
            libc::kill(pid, signal);
        }
    }
}

/// Ends every process of the build: SIGTERM to its group and tree, then
/// SIGKILL to whatever is left after `grace`.
async fn end_group(pgid: i32, adopter: Option<i32>, grace: Duration) {
    let scan = move || tokio::task::spawn_blocking(move || sampler::tree_pids(pgid, adopter));
    let pids = scan().await.unwrap_or_default();
    if pids.is_empty() {
        return;
    }
    tracing::info!(
        pgid,
        processes = pids.len(),
        "sending SIGTERM to the build's processes"
    );
    signal_all(pgid, &pids, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if scan().await.map(|p| p.is_empty()).unwrap_or(false) {
            return;
        }
    }
    let left = scan().await.unwrap_or_default();
    tracing::warn!(
        pgid,
        processes = left.len(),
        "build processes outlived SIGTERM; sending SIGKILL"
    );
    signal_all(pgid, &pids, libc::SIGKILL);
    signal_all(pgid, &left, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure's text starts with its status and keeps the end of the
    /// output within 4000 characters, counting characters, not bytes.
    #[test]
    fn failure_text_keeps_the_tail() {
        assert_eq!(failure_text(&ExitStatus::Code(2), ""), "exit status 2");
        assert_eq!(
            failure_text(&ExitStatus::Signal(9), "boom\n"),
            "killed by signal 9; last output:\nboom"
        );
        let long = format!("{}END", "é".repeat(10_000));
        let text = failure_text(&ExitStatus::Code(1), &long);
        assert_eq!(text.chars().count(), ERROR_MAX_CHARS);
        assert!(text.starts_with("exit status 1; last output:\n"));
        assert!(text.ends_with("éEND"));
    }

    /// A command's exit code, its CPU time (children included) and its
    /// output come back through wait4.
    #[tokio::test]
    async fn spawns_and_waits_with_rusage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("w");
        let log = dir.path().join("w.log");
        let cmd = "echo \"$FREEAGENT_BUILD_ID $FREEAGENT_PLATFORM\"; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sh -c 'exit 3'";
        let pid = spawn_build(cmd, 7, "linux", &work, &log, 10, Vec::new()).expect("spawns");
        let ended = tokio::task::spawn_blocking(move || wait_child(pid, false, &AtomicU64::new(0)))
            .await
            .expect("joins");
        assert_eq!(ended.status, ExitStatus::Code(3));
        assert!(ended.cpu_time_s > 0.05, "{}", ended.cpu_time_s);
        assert_eq!(read_tail(&log).await, "7 linux\n");
    }
}
