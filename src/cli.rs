//! The binary's edge: subcommands, logging, the runtime, shutdown signals.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::agent::{AgentCommand, SimulateArgs};
use crate::config::{BackupArgs, LogFormat, PurgeArgs, ServeArgs, VerifyArgs};

/// Free Agent: the controller of a volunteer build network, and its worker agent.
#[derive(Parser, Debug)]
#[command(name = "freeagent", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller: REST API, landing page, background tasks (default).
    Serve(ServeArgs),
    /// Delete raw samples and events older than the retention period, once.
    Purge(PurgeArgs),
    /// Recompute every stored figure and print each difference (exit 1 when
    /// any; 2 when the check could not run); `--repair` rewrites them.
    Verify(VerifyArgs),
    /// Copy a SQLite database, consistently, while it serves, into a new file.
    Backup(BackupArgs),
    /// Run the worker agent, or register this machine (`agent register`).
    Agent(Box<AgentCommand>),
    /// Drive a controller with a fleet of simulated workers.
    Simulate(SimulateArgs),
}

impl Cli {
    /// `--log-format` of `serve`; the other subcommands write text.
    fn log_format(&self) -> LogFormat {
        match &self.command {
            None => self.serve.log_format,
            Some(Command::Serve(args)) => args.log_format,
            Some(_) => LogFormat::Text,
        }
    }
}

/// Leptos reads its options from the environment, and where
/// `LEPTOS_OUTPUT_NAME` is missing (a binary that cargo-leptos did not
/// build) it writes a paragraph to stderr that no log shipper can parse.
/// The name is this crate's (`output-name` in Cargo.toml), so it is given.
/// Called before any thread starts: changing the environment while another
/// thread reads it is unsound.
fn name_the_site_output() {
    if option_env!("LEPTOS_OUTPUT_NAME").is_none()
        && std::env::var_os("LEPTOS_OUTPUT_NAME").is_none()
    {
        std::env::set_var("LEPTOS_OUTPUT_NAME", "freeagent");
    }
}

/// Logs to stderr at `RUST_LOG`'s levels (default `info`), as text (colored
/// on a terminal) or as one JSON object per line.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The span (request method and path) on each line, so a shipper
        // can filter by route without parsing messages.
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<ExitCode> {
    // Before anything allocates: pages faulted in before stay huge.
    if std::env::args_os()
        .nth(1)
        .is_none_or(|first| first != "agent")
    {
        keep_memory_small();
    }
    let cli = Cli::parse();
    if matches!(cli.command, None | Some(Command::Serve(_))) {
        name_the_site_output();
    }
    init_logging(cli.log_format());
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

/// mimalloc's `mi_option_purge_delay` (position 15 of `mi_option_e` in
/// mimalloc.h v3, which libmimalloc-sys 0.1.49 names no constant for; the
/// test below checks it against the option's default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The controller's memory is many small, short-lived allocations, and two
/// defaults of mimalloc made it look several times larger than it is:
/// - it asks the kernel for transparent huge pages, so an idle controller
///   held 10 MB of 2 MiB pages (`AnonHugePages` in smaps) for a few
///   hundred KB of data;
/// - it keeps freed memory for a second (ten for arenas) before returning
///   it, so under batch telemetry VmHWM reached 45 MB against 33 MB when
///   returned at once, at the same throughput (bench/controller.sh).
///
/// Not for `agent`: the THP flag is inherited, and the builds it starts
/// should keep the machine's own policy.
fn keep_memory_small() {
    // SAFETY: integer arguments only; changes nothing but this process's
    // page policy, and failing is harmless (the default stays).
    let declined = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if declined != 0 {
        eprintln!("note: could not decline transparent huge pages; memory use may be higher");
    }
    // An operator's own MIMALLOC_PURGE_DELAY (read by mimalloc) wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's integer options; mimalloc reads it
        // on every purge decision, so setting it at any time is sound.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Purge(args)) => {
            let rows = crate::retention::purge(&args.database_url, args.retention_days)
                .await
                .context("purging old raw rows")?;
            println!("removed {rows} rows");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify(args)) => Ok(verify(args).await),
        Some(Command::Backup(args)) => {
            crate::storage::verify::backup(&args.database_url, &args.file)
                .await
                .with_context(|| format!("backing up into {}", args.file.display()))?;
            println!("copied into {}", args.file.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Agent(command)) => Ok(crate::agent::run(*command).await?),
        Some(Command::Simulate(args)) => Ok(crate::agent::simulate(args).await?),
    }
}

/// `freeagent verify`: one line per difference on stdout, a summary on
/// stderr. Exit 0: none (or all repaired); 1: differences; 2: the check
/// could not run, as `diff` does.
async fn verify(args: VerifyArgs) -> ExitCode {
    let report = match crate::storage::verify::verify(&args.database_url, args.repair).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!(
                "error: verifying {}: {error}",
                crate::storage::redacted_url(&args.database_url)
            );
            return ExitCode::from(2);
        }
    };
    for difference in &report.differences {
        println!("{difference}");
    }
    let found = report.differences.len();
    eprintln!(
        "checked {} builds ({} with raw samples removed by retention): {found} differences{}",
        report.builds,
        report.builds_purged,
        if report.repaired { ", repaired" } else { "" }
    );
    if found == 0 || report.repaired {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    crate::server::serve(listener, args, shutdown_signal())
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Position 15 is the purge delay: its default is 1000 ms, and no other
    /// option near it defaults to that.
    #[test]
    fn purge_delay_option_is_the_one_we_set() {
        // SAFETY: reads one of mimalloc's integer options.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
    }
}
