//! `freeagent simulate`: a build submitter and N synthetic workers in one
//! process, all through the agent's own client and delivery code, for demos
//! and load. Prints what it sent and what the controller answered.
//!
//! It scales to 100,000 workers in one process: every worker is a task on
//! one HTTP client (clones share its connection pool, and a semaphore bounds
//! the requests in flight), registration and pre-queued submissions run a
//! bounded number at a time, every timer starts at a random offset and is
//! jittered so the workers never fire in lockstep, and an idle worker waits
//! in a long poll (one request per `--poll-wait`) rather than polling.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use rand::Rng;
use tokio::time::Instant;

use super::client::{Client, Controllers, Pool, Tally};
use super::delivery::{Delivery, DeliveryConfig, DeliveryStats};
use super::runner::{hundredths, now_ms, Shutdown};
use super::{parse_duration, parse_interval, parse_poll_wait, AdminConnection, AgentError};
use crate::wire::{ClaimedBuild, CompleteBuild, RegisterWorker, Snapshot, SubmitBuild};

/// Flags of `freeagent simulate`.
#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    /// The controller; the admin key registers the workers and submits builds.
    #[command(flatten)]
    pub admin: AdminConnection,

    /// Simulated workers to register and run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub workers: u32,

    /// Builds submitted per minute (0 submits none: the workers take what is
    /// queued).
    #[arg(long, default_value_t = 30.0)]
    pub builds_per_minute: f64,

    /// Builds submitted before the workers start, so that the queue never
    /// runs dry (a bench's "builds always queued").
    #[arg(long, default_value_t = 0)]
    pub prequeue: u32,

    /// Stop after this long, like 2m [default: run until interrupted].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Platform of the submitted builds and the workers.
    #[arg(long, default_value = "linux")]
    pub platform: String,

    /// Sampling interval of the synthetic builds (whole seconds).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Shortest synthetic build.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub min_build: Duration,

    /// Longest synthetic build.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub max_build: Duration,

    /// How long an idle worker's poll waits for a build (the agent's
    /// default); 0s polls every 2 s instead.
    #[arg(long, default_value = "30s", value_parser = parse_poll_wait)]
    pub poll_wait: Duration,

    /// Heartbeat interval of each worker (the agent's default).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// The workers start at random moments over this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ramp: Duration,

    /// Most requests in flight at once over all workers (held long polls
    /// aside), and idle keep-alive connections kept.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
}

/// Cores each simulated worker declares.
const SIM_CORES: u32 = 8;
/// Memory each simulated worker declares, MiB.
const SIM_MEMORY_MB: u64 = 16_384;
/// Share of synthetic builds that fail.
const FAILURE_RATE: f64 = 0.1;
/// Registrations and pre-queued submissions in flight at once.
const SETUP_CONCURRENCY: usize = 64;
/// Idle wait between polls without `--poll-wait`, and after a failed poll.
const IDLE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Counts {
    submitted: AtomicU64,
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<DeliveryStats>,
}

/// Runs the simulation until its duration ends or a signal arrives.
pub async fn run(args: SimulateArgs) -> Result<ExitCode, AgentError> {
    if args.min_build > args.max_build {
        return Err(AgentError::Usage(
            "--min-build must not exceed --max-build".into(),
        ));
    }
    if !args.builds_per_minute.is_finite() || args.builds_per_minute < 0.0 {
        return Err(AgentError::Usage(
            "--builds-per-minute must be 0 or more".into(),
        ));
    }
    let tally = Tally::default();
    let controllers = Controllers::new(&args.admin.controllers.controller)
        .ok_or_else(|| AgentError::Usage("--controller is required".into()))?;
    let pool = Pool {
        max_idle: args.connections as usize,
        max_in_flight: args.connections as usize,
    };
    // One client, one pool: every worker's client is a clone with its own
    // secret.
    let admin = Client::pooled(controllers, &args.admin.admin_key, tally.clone(), pool).map_err(
        |source| AgentError::Controller {
            what: "setting up the HTTP client",
            source,
        },
    )?;
    let counts = Arc::new(Counts::default());

    let began = Instant::now();
    let workers = register_all(&admin, &args).await?;
    let registered_in = began.elapsed();
    tracing::info!(
        workers = workers.len(),
        seconds = registered_in.as_secs_f64(),
        "simulated workers registered"
    );
    let prequeue_began = Instant::now();
    prequeue(&admin, &args, &counts).await;
    let prequeued_in = prequeue_began.elapsed();

    // The measured phase starts now: the duration, the answer times and the
    // rates count from here.
    let shutdown = Shutdown::install(args.duration)?;
    tally.reset_latencies();
    let before = tally.snapshot();
    println!(
        "running {} workers (registered in {:.1} s, {} builds pre-queued in {:.1} s)",
        workers.len(),
        registered_in.as_secs_f64(),
        args.prequeue,
        prequeued_in.as_secs_f64()
    );
    let running = Instant::now();
    let mut tasks = Vec::with_capacity(workers.len() + 1);
    if args.builds_per_minute > 0.0 {
        tasks.push(tokio::spawn(submit_loop(
            admin.clone(),
            args.clone(),
            counts.clone(),
            shutdown.clone(),
        )));
    }
    let args = Arc::new(args);
    for (k, client) in workers {
        tasks.push(tokio::spawn(worker_loop(
            k,
            client,
            args.clone(),
            counts.clone(),
            shutdown.clone(),
        )));
    }
    futures::future::join_all(tasks).await;
    let ran = running.elapsed();

    let clean = print_summary(&args, ran, &counts, &tally, &before);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Registers `--workers` workers, a bounded number at a time; each gets a
/// clone of `admin` (the same pool) with its own token.
async fn register_all(
    admin: &Client,
    args: &SimulateArgs,
) -> Result<Vec<(u32, Client)>, AgentError> {
    let registered: Vec<Result<(u32, Client), AgentError>> =
        futures::stream::iter(1..=args.workers)
            .map(|k| async move {
                let body = RegisterWorker {
                    name: format!("sim-{k}"),
                    platforms: vec![args.platform.clone()],
                    cpu_cores: SIM_CORES,
                    memory_mb: SIM_MEMORY_MB,
                };
                let registered =
                    admin
                        .first_answer(|| admin.register(&body))
                        .await
                        .map_err(|source| AgentError::Controller {
                            what: "registering a simulated worker",
                            source,
                        })?;
                Ok((k, admin.with_secret(&registered.token)))
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
    registered.into_iter().collect()
}

/// Submits `--prequeue` builds, a bounded number at a time.
async fn prequeue(admin: &Client, args: &SimulateArgs, counts: &Counts) {
    futures::stream::iter(1..=args.prequeue)
        .for_each_concurrent(SETUP_CONCURRENCY, |n| async move {
            let body = SubmitBuild {
                platform: args.platform.clone(),
                label: Some(format!("pre-queued build {n}")),
            };
            match admin.submit_build(&body).await {
                Ok(_) => {
                    counts.submitted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "submitting a build failed"),
            }
        })
        .await;
}

async fn submit_loop(
    admin: Client,
    args: SimulateArgs,
    counts: Arc<Counts>,
    mut shutdown: Shutdown,
) {
    let every = Duration::from_secs_f64(60.0 / args.builds_per_minute);
    let mut ticker = tokio::time::interval(every);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        n += 1;
        let body = SubmitBuild {
            platform: args.platform.clone(),
            label: Some(format!("simulated build {n}")),
        };
        match admin.submit_build(&body).await {
            Ok(_) => {
                counts.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "submitting a build failed"),
        }
    }
}

/// When the next heartbeat is due: `every`, give or take 10%, from now.
fn next_beat(every: Duration) -> Instant {
    Instant::now() + every.mul_f64(jitter(0.9, 1.1))
}

async fn worker_loop(
    k: u32,
    client: Client,
    args: Arc<SimulateArgs>,
    counts: Arc<Counts>,
    mut shutdown: Shutdown,
) {
    // Spread the workers' start so they do not arrive in lockstep.
    if !shutdown.sleep(args.ramp.mul_f64(jitter(0.0, 1.0))).await {
        return;
    }
    // The first heartbeat anywhere in the first interval, as agents that
    // started at different times would send theirs.
    let mut heartbeat_due = Instant::now() + args.heartbeat.mul_f64(jitter(0.0, 1.0));
    while !shutdown.is_set() {
        if Instant::now() >= heartbeat_due {
            heartbeat_due = next_beat(args.heartbeat);
            if let Err(e) = client.heartbeat().await {
                tracing::warn!(worker = k, error = %e, "heartbeat failed");
            }
        }
        let asked = Instant::now();
        // A long poll returns at the latest by the next heartbeat.
        let wait = args
            .poll_wait
            .min(heartbeat_due.saturating_duration_since(asked))
            .max(Duration::from_secs(1));
        let polled = tokio::select! {
            polled = poll(&client, &args, wait) => polled,
            _ = shutdown.wait() => break,
        };
        match polled {
            Ok(Some(build)) => {
                counts.claimed.fetch_add(1, Ordering::Relaxed);
                synthetic_build(
                    &client,
                    build,
                    &args,
                    &counts,
                    &mut shutdown,
                    &mut heartbeat_due,
                )
                .await;
            }
            Ok(None) => {
                // A poll that was not held (no long polls here, or the
                // controller answered early) is asked again after a pause.
                let held = asked.elapsed() + Duration::from_millis(500) >= wait;
                if args.poll_wait.is_zero() || !held {
                    shutdown.sleep(IDLE_POLL.mul_f64(jitter(0.75, 1.25))).await;
                }
            }
            Err(e) => {
                tracing::warn!(worker = k, error = %e, "poll failed");
                shutdown.sleep(IDLE_POLL.mul_f64(jitter(1.5, 3.0))).await;
            }
        }
    }
}

async fn poll(
    client: &Client,
    args: &SimulateArgs,
    wait: Duration,
) -> Result<Option<ClaimedBuild>, super::client::CallError> {
    if args.poll_wait.is_zero() {
        client.poll().await
    } else {
        client.poll_wait(wait).await
    }
}

/// One synthetic build: a random length and load, sampled every interval
/// through the agent's delivery, then flushed and completed. A signal ends
/// it early (completed, with what it sampled so far) at a random moment of
/// the next interval, so that a whole fleet does not finish at once.
async fn synthetic_build(
    client: &Client,
    build: ClaimedBuild,
    args: &SimulateArgs,
    counts: &Counts,
    shutdown: &mut Shutdown,
    heartbeat_due: &mut Instant,
) {
    let id = build.id;
    if let Err(e) = client.start(id).await {
        tracing::warn!(build_id = id, error = %e, "start failed");
        return;
    }
    let length = {
        let mut rng = rand::thread_rng();
        let (lo, hi) = (args.min_build.as_secs_f64(), args.max_build.as_secs_f64());
        Duration::from_secs_f64(if hi > lo { rng.gen_range(lo..=hi) } else { lo })
    };
    let (delivery, task) = Delivery::start(client.clone(), id, DeliveryConfig::default());
    let interval_s = args.interval.as_secs() as i64;
    let ends = Instant::now() + length;
    let mut cpu_time_s = 0.0;
    let mut percent: f64 = 200.0;
    let mut seq = 0;
    let mut last = Instant::now();
    loop {
        let wait = args
            .interval
            .min(ends.saturating_duration_since(Instant::now()));
        let cut = !shutdown.sleep(wait).await;
        if cut {
            tokio::time::sleep(
                args.interval
                    .min(ends.saturating_duration_since(Instant::now()))
                    .mul_f64(jitter(0.0, 1.0)),
            )
            .await;
        }
        let now = Instant::now();
        let (memory_mb, step) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_range(300.0..6000.0f64),
                rng.gen_range(-150.0..150.0),
            )
        };
        percent = (percent + step).clamp(20.0, 100.0 * f64::from(SIM_CORES) * 0.9);
        cpu_time_s += percent / 100.0 * now.duration_since(last).as_secs_f64();
        last = now;
        seq += 1;
        delivery.push(Snapshot {
            seq,
            sampled_at: now_ms(),
            cpu_percent: hundredths(percent),
            memory_mb: memory_mb.round(),
            cpu_time_s: Some(hundredths(cpu_time_s)),
            interval_s,
        });
        if cut || now >= ends {
            break;
        }
        // The agent heartbeats while it builds too.
        if now >= *heartbeat_due {
            *heartbeat_due = next_beat(args.heartbeat);
            if let Err(e) = client.heartbeat().await {
                tracing::warn!(build_id = id, error = %e, "heartbeat failed");
            }
        }
    }
    delivery.close();
    delivery.flush(Duration::from_secs(10)).await;
    task.abort();
    if let Ok(mut samples) = counts.samples.lock() {
        samples.add(&delivery.stats());
    }
    let success = jitter(0.0, 1.0) >= FAILURE_RATE;
    let body = CompleteBuild {
        success,
        error: (!success).then(|| "simulated failure: exit status 1".to_string()),
    };
    match client.complete(id, &body).await {
        Ok(()) if success => {
            counts.completed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(()) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(build_id = id, error = %e, "complete failed"),
    }
}

/// A random factor in `lo..hi` (the generator is not held across awaits).
fn jitter(lo: f64, hi: f64) -> f64 {
    rand::thread_rng().gen_range(lo..hi)
}

/// This process's resident memory now and at its peak, KiB (Linux).
fn own_rss_kib() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Prints the summary, and last a JSON line of the same figures; true when
/// every request got a 2xx answer.
fn print_summary(
    args: &SimulateArgs,
    elapsed: Duration,
    counts: &Counts,
    tally: &Tally,
    before: &BTreeMap<(&'static str, u16), u64>,
) -> bool {
    let samples = counts.samples.lock().map(|s| *s).unwrap_or_default();
    let answers = tally.snapshot();
    let latencies = tally.latencies();
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let mut bad = 0;
    println!(
        "simulated {} workers for {}",
        args.workers,
        humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
    );
    let (submitted, claimed, completed, failed) = (
        counts.submitted.load(Ordering::Relaxed),
        counts.claimed.load(Ordering::Relaxed),
        counts.completed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "builds: submitted {submitted}, claimed {claimed}, completed {completed}, failed {failed}"
    );
    let dropped = samples.dropped_full + samples.dropped_refused;
    println!(
        "samples: sent {}, accepted {}, duplicates {}, rejected {}, dropped {}, rate limited posts {}",
        samples.queued,
        samples.accepted,
        samples.duplicates,
        samples.rejected,
        dropped,
        samples.rate_limited,
    );
    println!("answers by route and status:");
    let mut by_route: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    for ((route, status), n) in &answers {
        let label = if *status == 0 {
            "no answer".to_string()
        } else {
            status.to_string()
        };
        println!("  {route:<10} {label:>9}  {n}");
        by_route
            .entry(route)
            .or_default()
            .insert(status.to_string(), *n);
        if !(200..300).contains(status) {
            bad += n;
        }
    }
    println!("answers other than 2xx: {bad}");
    println!("while running ({seconds:.1} s): requests/s, p50 and p99 of the answer by route");
    let mut routes = serde_json::Map::new();
    for (route, times) in &latencies {
        // Requests of this route in the measured phase (registration and
        // pre-queueing aside); held polls are timed apart as "poll-wait".
        let sent: u64 = answers
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(key, n)| n - before.get(key).copied().unwrap_or(0))
            .sum();
        // A poll is timed as "poll" when it claimed a build and as
        // "poll-wait" when held to the end of its wait: counted apart.
        let n = match *route {
            "poll" | "poll-wait" => times.count(),
            _ => sent.max(times.count()),
        };
        let ms = |q: f64| times.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        let rate = n as f64 / seconds;
        println!(
            "  {route:<10} {rate:>9.1}/s  p50 {:>8.2} ms  p99 {:>8.2} ms",
            ms(0.5).unwrap_or(0.0),
            ms(0.99).unwrap_or(0.0)
        );
        routes.insert(
            route.to_string(),
            serde_json::json!({
                "requests": n,
                "perSecond": rate,
                "p50Ms": ms(0.5),
                "p99Ms": ms(0.99),
            }),
        );
    }
    let (rss, hwm) = own_rss_kib();
    if let Some(rss) = rss {
        println!(
            "simulator memory: RSS {} KiB (peak {} KiB), {:.1} KiB per worker",
            rss,
            hwm.unwrap_or(rss),
            rss as f64 / f64::from(args.workers)
        );
    }
    let summary = serde_json::json!({
        "workers": args.workers,
        "seconds": seconds,
        "builds": {
            "submitted": submitted,
            "claimed": claimed,
            "completed": completed,
            "failed": failed,
            "finished": completed + failed,
        },
        "samples": {
            "sent": samples.queued,
            "accepted": samples.accepted,
            "duplicates": samples.duplicates,
            "acknowledged": samples.acknowledged(),
            "rejected": samples.rejected,
            "dropped": dropped,
            "rateLimitedPosts": samples.rate_limited,
        },
        "answers": by_route,
        "non2xx": bad,
        "routes": routes,
        "rssKib": rss,
        "peakRssKib": hwm,
    });
    println!("simulate-json: {summary}");
    bad == 0
}
