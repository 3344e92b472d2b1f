//! What the agent is doing now, kept in a small JSON file beside its token
//! (`<token file>.status`) and read by `freeagent agent status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::client::Client;
use super::delivery::Delivery;
use super::{token_path, AgentError};
use crate::cache::lock;
use crate::clock::now_ms;

/// How often the running agent rewrites its status file.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// A status not rewritten for this long is an agent that is gone.
const STALE_AFTER_MS: i64 = 5_000;

/// The status file of the agent using `token_file`.
pub fn status_path(token_file: &Path) -> PathBuf {
    let mut name = token_file.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

/// The file's contents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent's process id.
    pub pid: u32,
    /// When this was written, ms since the epoch.
    pub updated_at: i64,
    /// False once the agent stopped.
    pub running: bool,
    /// The build it runs, if any.
    pub build: Option<RunningBuild>,
    /// Samples taken but not yet answered for by the controller.
    pub unsent_samples: u64,
    /// Whether telemetry is paused by the circuit breaker.
    pub breaker_open: bool,
    /// The controller's latest answer: call, status (0: none came), when.
    pub last_answer: Option<(String, u16, i64)>,
    /// The controller asked now (of those given, the one that last
    /// answered). Absent in files of older agents.
    #[serde(default)]
    pub controller: Option<String>,
    /// Why no build is claimed now (`--only-when-idle` on a busy machine).
    /// Absent in files of older agents.
    #[serde(default)]
    pub waiting: Option<String>,
}

/// A build the agent runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningBuild {
    pub id: i64,
    pub attempt: i64,
    /// When it started, ms since the epoch.
    pub started_at: i64,
}

/// What the runner tells the status writer. Cheap to clone.
#[derive(Clone, Default)]
pub struct Board {
    inner: Arc<Mutex<BoardInner>>,
}

#[derive(Default)]
struct BoardInner {
    build: Option<RunningBuild>,
    deliveries: Vec<Delivery>,
    waiting: Option<String>,
}

impl Board {
    fn with<T>(&self, f: impl FnOnce(&mut BoardInner) -> T) -> T {
        f(&mut lock(&self.inner))
    }

    /// The build now running, or none.
    pub fn set_build(&self, build: Option<RunningBuild>) {
        self.with(|b| b.build = build);
    }

    /// Why the agent claims nothing now, or none.
    pub fn set_waiting(&self, why: Option<String>) {
        self.with(|b| b.waiting = why);
    }

    /// The deliveries with samples still to send (the running build's and
    /// finished builds' backlogs).
    pub fn set_deliveries(&self, deliveries: Vec<Delivery>) {
        self.with(|b| b.deliveries = deliveries);
    }

    fn snapshot(&self, client: &Client, running: bool) -> AgentStatus {
        let tally = client.tally();
        self.with(|b| AgentStatus {
            pid: std::process::id(),
            updated_at: now_ms(),
            running,
            build: b.build.clone(),
            unsent_samples: b.deliveries.iter().map(|d| d.pending() as u64).sum(),
            breaker_open: b.deliveries.iter().any(Delivery::breaker_open),
            last_answer: tally
                .last()
                .map(|last| (last.route.to_string(), last.status, last.at)),
            controller: Some(client.controller().to_string()),
            waiting: b.waiting.clone(),
        })
    }
}

async fn write(path: &Path, status: &AgentStatus) {
    let Ok(text) = serde_json::to_string_pretty(status) else {
        return;
    };
    let (path, temp) = (path.to_path_buf(), {
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        PathBuf::from(temp)
    });
    // Written aside and renamed, so a reader never sees half a file.
    let written = tokio::task::spawn_blocking(move || {
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, &path)
    })
    .await;
    if let Ok(Err(error)) = written {
        tracing::debug!(%error, "could not write the status file");
    }
}

/// Rewrites the status file every second until aborted.
pub async fn keep_writing(path: PathBuf, board: Board, client: Client) {
    let mut ticks = tokio::time::interval(WRITE_EVERY);
    loop {
        ticks.tick().await;
        write(&path, &board.snapshot(&client, true)).await;
    }
}

/// Marks the status file stopped.
pub async fn write_stopped(path: &Path, board: &Board, client: &Client) {
    let mut status = board.snapshot(client, false);
    status.build = None;
    write(path, &status).await;
}

/// Flags of `freeagent agent status`.
#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// The running agent's token file [default: as `agent` uses].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// What a person reads: one fact a line.
pub fn describe(status: &AgentStatus, now: i64) -> String {
    let age = |at: i64| crate::format::duration_ms(now - at);
    let alive = status.running && now - status.updated_at <= STALE_AFTER_MS;
    let mut lines = vec![if alive {
        format!("agent {} running", status.pid)
    } else {
        format!(
            "agent not running (last seen {} ago)",
            age(status.updated_at)
        )
    }];
    if alive {
        lines.push(match &status.build {
            Some(build) => format!(
                "build {} (attempt {}), running for {}",
                build.id,
                build.attempt,
                age(build.started_at)
            ),
            None => match &status.waiting {
                Some(why) => format!("no build: {why}"),
                None => "no build: waiting for one".into(),
            },
        });
    }
    if let Some(controller) = &status.controller {
        lines.push(format!("controller: {controller}"));
    }
    lines.push(format!("unsent samples: {}", status.unsent_samples));
    lines.push(format!(
        "telemetry: {}",
        if status.breaker_open {
            "paused (circuit breaker open, the controller is not answering)"
        } else {
            "flowing"
        }
    ));
    if let Some((route, code, at)) = &status.last_answer {
        let answer = if *code == 0 {
            "no answer".to_string()
        } else {
            format!("status {code}")
        };
        lines.push(format!(
            "last controller answer: {route} {answer}, {} ago",
            age(*at)
        ));
    }
    lines.join("\n") + "\n"
}

/// `freeagent agent status`: prints the status; exits 1 when no agent runs.
pub async fn show(args: StatusArgs) -> Result<ExitCode, AgentError> {
    let path = status_path(&token_path(args.token_file)?);
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|source| AgentError::Io {
            what: "reading the agent's status file (is an agent running with this token?)",
            source,
        })?;
    let status: AgentStatus = serde_json::from_str(&text).map_err(|e| {
        AgentError::Usage(format!(
            "the status file {} is unreadable: {e}",
            path.display()
        ))
    })?;
    let now = now_ms();
    print!("{}", describe(&status, now));
    Ok(
        if status.running && now - status.updated_at <= STALE_AFTER_MS {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running agent mid-outage shows its build, its unsent samples and
    /// the paused telemetry; a stale file reads as not running.
    #[test]
    fn status_reads_for_people() {
        let status = AgentStatus {
            pid: 42,
            updated_at: 100_000,
            running: true,
            build: Some(RunningBuild {
                id: 7,
                attempt: 2,
                started_at: 40_000,
            }),
            unsent_samples: 12,
            breaker_open: true,
            last_answer: Some(("telemetry".into(), 0, 99_000)),
            controller: Some("http://b.example:3000".into()),
            waiting: None,
        };
        let text = describe(&status, 101_000);
        assert!(text.contains("agent 42 running"), "{text}");
        assert!(
            text.contains("build 7 (attempt 2), running for 1m 1s"),
            "{text}"
        );
        assert!(text.contains("unsent samples: 12"), "{text}");
        assert!(text.contains("controller: http://b.example:3000"), "{text}");
        assert!(text.contains("paused"), "{text}");
        assert!(
            text.contains("last controller answer: telemetry no answer, 2s ago"),
            "{text}"
        );
        assert!(describe(&status, 110_000).contains("not running"));
        let idle = AgentStatus {
            build: None,
            waiting: Some("waiting for the machine to be idle".into()),
            ..status.clone()
        };
        assert!(describe(&idle, 101_000).contains("no build: waiting for the machine to be idle"));
        assert_eq!(
            status_path(Path::new("/x/worker.token")),
            PathBuf::from("/x/worker.token.status")
        );
    }
}
