//! `freeagent simulate`: a build submitter and N synthetic workers in one
//! process, all through the agent's own client and delivery code, for demos
//! and load. Prints what it sent and what the controller answered.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use rand::Rng;
use tokio::time::Instant;

use super::client::{Client, Tally};
use super::delivery::{Delivery, DeliveryConfig, DeliveryStats};
use super::runner::{hundredths, now_ms, Shutdown};
use super::{parse_duration, parse_interval, AdminConnection, AgentError};
use crate::wire::{ClaimedBuild, CompleteBuild, RegisterWorker, Snapshot, SubmitBuild};

/// Flags of `freeagent simulate`.
#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    /// The controller; the admin key registers the workers and submits builds.
    #[command(flatten)]
    pub admin: AdminConnection,

    /// Simulated workers to register and run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub workers: u32,

    /// Builds submitted per minute (0 submits none: the workers take what is
    /// queued).
    #[arg(long, default_value_t = 30.0)]
    pub builds_per_minute: f64,

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
}

/// Cores each simulated worker declares.
const SIM_CORES: u32 = 8;
/// Memory each simulated worker declares, MiB.
const SIM_MEMORY_MB: u64 = 16_384;
/// Share of synthetic builds that fail.
const FAILURE_RATE: f64 = 0.1;

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
    let admin = args.admin.client(tally.clone())?;
    let shutdown = Shutdown::install(args.duration)?;
    let began = Instant::now();

    let mut workers = Vec::new();
    for k in 1..=args.workers {
        let body = RegisterWorker {
            name: format!("sim-{k}"),
            platforms: vec![args.platform.clone()],
            cpu_cores: SIM_CORES,
            memory_mb: SIM_MEMORY_MB,
        };
        let registered = admin
            .first_answer(|| admin.register(&body))
            .await
            .map_err(|source| AgentError::Controller {
                what: "registering a simulated worker",
                source,
            })?;
        workers.push((k, admin.with_secret(&registered.token)));
    }
    tracing::info!(
        workers = workers.len(),
        builds_per_minute = args.builds_per_minute,
        "simulated workers registered"
    );

    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    if args.builds_per_minute > 0.0 {
        tasks.push(tokio::spawn(submit_loop(
            admin.clone(),
            args.clone(),
            counts.clone(),
            shutdown.clone(),
        )));
    }
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

    let clean = print_summary(&args, began.elapsed(), &counts, &tally);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

async fn worker_loop(
    k: u32,
    client: Client,
    args: SimulateArgs,
    counts: Arc<Counts>,
    mut shutdown: Shutdown,
) {
    // Spread the workers' polls so they do not arrive in lockstep.
    let idle = Duration::from_secs(2);
    if !shutdown.sleep(idle.mul_f64(jitter(0.0, 1.0))).await {
        return;
    }
    let mut last_heartbeat = Instant::now();
    while !shutdown.is_set() {
        if last_heartbeat.elapsed() > Duration::from_secs(30) {
            last_heartbeat = Instant::now();
            if let Err(e) = client.heartbeat().await {
                tracing::warn!(worker = k, error = %e, "heartbeat failed");
            }
        }
        match client.poll().await {
            Ok(Some(build)) => {
                counts.claimed.fetch_add(1, Ordering::Relaxed);
                synthetic_build(&client, build, &args, &counts, &mut shutdown).await;
                last_heartbeat = Instant::now();
            }
            Ok(None) => {
                shutdown.sleep(idle.mul_f64(jitter(0.75, 1.25))).await;
            }
            Err(e) => {
                tracing::warn!(worker = k, error = %e, "poll failed");
                shutdown.sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// One synthetic build: a random length and load, sampled every interval
/// through the agent's delivery, then flushed and completed. A signal ends
/// it early (completed, with what it sampled so far).
async fn synthetic_build(
    client: &Client,
    build: ClaimedBuild,
    args: &SimulateArgs,
    counts: &Counts,
    shutdown: &mut Shutdown,
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

/// Prints the summary; true when every request got a 2xx answer.
fn print_summary(args: &SimulateArgs, elapsed: Duration, counts: &Counts, tally: &Tally) -> bool {
    let samples = counts.samples.lock().map(|s| *s).unwrap_or_default();
    let answers = tally.snapshot();
    let mut bad = 0;
    println!(
        "simulated {} workers for {}",
        args.workers,
        humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
    );
    println!(
        "builds: submitted {}, claimed {}, completed {}, failed {}",
        counts.submitted.load(Ordering::Relaxed),
        counts.claimed.load(Ordering::Relaxed),
        counts.completed.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    println!(
        "samples: sent {}, accepted {}, duplicates {}, rejected {}, dropped {}, rate limited posts {}",
        samples.queued,
        samples.accepted,
        samples.duplicates,
        samples.rejected,
        samples.dropped_full + samples.dropped_refused,
        samples.rate_limited,
    );
    println!("answers by route and status:");
    for ((route, status), n) in &answers {
        let label = if *status == 0 {
            "no answer".to_string()
        } else {
            status.to_string()
        };
        println!("  {route:<10} {label:>9}  {n}");
        if !(200..300).contains(status) {
            bad += n;
        }
    }
    println!("answers other than 2xx: {bad}");
    bad == 0
}
