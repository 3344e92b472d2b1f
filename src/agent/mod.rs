//! The worker agent and the fleet simulator (SPEC "The worker agent").
//! Shares only `crate::wire` (and `clock`, `files`) with the server.
//!
//! - [`client`]: the REST calls, with timeouts, a tally of answers, and
//!   failover between the controllers given.
//! - [`sampler`]: the build's process tree from `/proc` (pure parsing plus
//!   one blocking reader run off the async runtime).
//! - [`delivery`]: buffer, batches, backoff, circuit breaker.
//! - [`runner`]: the worker loop: heartbeat, long poll, start, run,
//!   complete; cancelled builds end, a stopped agent gives its build back.
//! - [`idle`]: `--only-when-idle`, the machine's own load over a minute.
//! - [`cgroup`]: `--cpu-limit` and `--memory-limit`, a cgroup a build.
//! - [`service`]: `install-service`, the systemd user unit.
//! - [`status`]: the status file the agent keeps and `agent status`.
//! - [`simulate`]: many synthetic workers through the same client and
//!   delivery code.

pub mod cgroup;
pub mod client;
pub mod delivery;
pub mod idle;
pub mod runner;
pub mod sampler;
pub mod service;
pub mod simulate;
pub mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::wire::RegisterWorker;
use client::{CallError, Client, Controllers, Tally};

pub use simulate::SimulateArgs;

pub use crate::clock::parse_duration;

fn parse_poll_wait(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.subsec_nanos() != 0 || d.as_secs() > 60 {
        return Err(format!("`{text}` must be whole seconds between 0s and 60s"));
    }
    Ok(d)
}

/// One controller URL: http or https with a host, and nothing the paths of
/// the routes could not be appended to.
fn parse_controller(text: &str) -> Result<String, String> {
    let text = text.trim();
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("`{text}` is not a URL like https://builds.example.org ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!(
            "`{text}` must be an http:// or https:// URL with a host"
        ));
    }
    // The agent speaks with its token; a password in the URL would end up
    // in logs, which show the controller.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` must not carry a user or password: the agent authenticates with its token"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// Whether talking to `url` would send secrets across a network
/// unencrypted: plain `http://` to a host other than this machine's
/// loopback (127.0.0.0/8, ::1, `localhost`). An unparseable URL counts as
/// such (it never gets that far: `--controller` is parsed first).
pub fn in_clear(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return true;
    };
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return true;
    };
    // An IPv6 host is written in brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        // `::ffff:127.0.0.1` is 127.0.0.1 too.
        return !ip.to_canonical().is_loopback();
    }
    // `localhost` and its subdomains resolve to loopback (RFC 6761).
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    !(name == "localhost" || name.ends_with(".localhost"))
}

/// Says, as loudly as the agent can, that `url` is plain HTTP across a
/// network: the log's warning, or stderr when the log filters warnings out.
fn warn_in_clear(url: &str) {
    let message = "tokens and the admin key would cross the network unencrypted: \
                   use https:// (a TLS reverse proxy in front of the controller)";
    if tracing::enabled!(tracing::Level::WARN) {
        tracing::warn!(
            controller = url,
            "plain http:// to another machine: {message}"
        );
    } else {
        eprintln!("WARNING: --controller {url} is plain http:// to another machine: {message}");
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    // The controller takes whole seconds in 1..=300 as `intervalS`.
    if d.subsec_nanos() != 0 || !crate::wire::INTERVAL_S.contains(&(d.as_secs() as i64)) {
        return Err(format!(
            "`{text}` must be whole seconds between 1s and 300s"
        ));
    }
    Ok(d)
}

/// `freeagent agent`: run this machine as a worker, or `register` it.
#[derive(Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentCommand {
    /// `register`, or nothing to run the worker loop.
    #[command(subcommand)]
    pub action: Option<AgentAction>,

    /// Flags of the worker loop.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `--controller`, for every command that talks to the network.
#[derive(Args, Clone, Debug)]
pub struct ControllerUrls {
    /// Controller URL, like https://builds.example.org; repeat or
    /// comma-separate for several controllers of one network: when one
    /// does not answer, the next one is asked.
    #[arg(
        long,
        env = "FREEAGENT_CONTROLLER",
        required = true,
        value_delimiter = ',',
        value_parser = parse_controller,
        value_name = "URL"
    )]
    pub controller: Vec<String>,
}

impl ControllerUrls {
    /// An HTTP client of all these controllers that sends `secret`,
    /// counting calls in `tally`.
    pub fn client(&self, secret: &str, tally: Tally) -> Result<Client, AgentError> {
        for url in self.controller.iter().filter(|url| in_clear(url)) {
            warn_in_clear(url);
        }
        let controllers = Controllers::new(&self.controller)
            .ok_or_else(|| AgentError::Usage("--controller is required".into()))?;
        Client::new(controllers, secret, tally).map_err(|source| AgentError::Controller {
            what: "setting up the HTTP client",
            source,
        })
    }
}

/// Flags of `freeagent agent` (the worker loop).
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub controllers: ControllerUrls,

    /// Platform this machine builds (repeat or comma-separate for several);
    /// a claimed build of another platform is reported failed.
    #[arg(long, required = true, value_delimiter = ',', value_name = "P")]
    pub platform: Vec<String>,

    /// Your build command, one shell line run with `sh -c` in a fresh work
    /// directory with FREEAGENT_BUILD_ID, FREEAGENT_PLATFORM and
    /// FREEAGENT_WORK_DIR set; exit status 0 is success.
    #[arg(
        long,
        env = "FREEAGENT_BUILD_COMMAND",
        required = true,
        value_name = "CMD"
    )]
    pub build_command: Option<String>,

    /// File holding this worker's token, written by `agent register`
    /// [default: $XDG_CONFIG_HOME/freeagent/worker.token, else
    /// ~/.config/freeagent/worker.token].
    #[arg(long, env = "FREEAGENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// How often a running build's process tree is sampled (whole seconds,
    /// 1s..=300s).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Send no samples (for metered connections); everything else is unchanged.
    #[arg(long)]
    pub no_telemetry: bool,

    /// How long to wait between polls when no build is waiting (after a
    /// long poll that the controller did not hold open).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How long the controller may hold each poll open until a build is
    /// queued (long polling, whole seconds up to 60; 0s polls without
    /// waiting): an idle machine then costs about one request per wait.
    #[arg(long, default_value = "30s", value_parser = parse_poll_wait)]
    pub poll_wait: Duration,

    /// How often the worker tells the controller it is alive, during builds
    /// too (keep it well under the controller's lease timeout, 5m by default).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Folder under which each build gets a fresh work directory
    /// [default: the system's temporary folder].
    #[arg(long, value_name = "DIR")]
    pub work_root: Option<PathBuf>,

    /// Most unsent samples kept while the controller is unreachable; past it
    /// the oldest are dropped (and counted).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub buffer_samples: u32,

    /// Most samples in one telemetry post (1..=1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_samples: u32,

    /// How long the circuit breaker stays open (after 5 failed sends in a
    /// row) before one probe tries again.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,

    /// Longest wait for unsent samples before reporting a build complete
    /// (what is left keeps being sent afterwards).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub flush_timeout: Duration,

    /// On SIGINT/SIGTERM, how long the build's processes get to exit after
    /// SIGTERM before they are killed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: Duration,

    /// A build running longer is ended and reported failed ("timed out
    /// after D") [default: no limit].
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub max_build_time: Option<Duration>,

    /// Niceness the build runs at (0..=19): the higher, the more the
    /// machine's own work comes first.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,

    /// Claim a build only when this machine's own load (everything but the
    /// agent and its builds) has stayed under one busy core for the last
    /// minute; until then the agent heartbeats and waits.
    #[arg(long)]
    pub only_when_idle: bool,

    /// The window `--only-when-idle` looks back over. For tests, which
    /// cannot wait a minute; volunteers keep the minute.
    #[arg(long, hide = true, default_value = "60s", value_parser = parse_duration)]
    pub idle_window: Duration,

    /// Most cores a build may use, like 2 or 2.5 (its own cgroup; the agent
    /// exits at start when it cannot create one).
    #[arg(long, value_name = "C", value_parser = cgroup::parse_cpu_limit)]
    pub cpu_limit: Option<f64>,

    /// Most memory a build may use, like 512M or 4G (its own cgroup); a
    /// build past it is ended and reported failed, naming the limit.
    #[arg(long, value_name = "M", value_parser = cgroup::parse_memory_limit)]
    pub memory_limit: Option<cgroup::MemoryLimit>,
}

impl RunArgs {
    /// The limits each build's cgroup gets (none: no cgroup).
    pub fn limits(&self) -> cgroup::Limits {
        cgroup::Limits {
            cpu: self.cpu_limit,
            memory: self.memory_limit.clone(),
        }
    }
}

/// Subcommands of `freeagent agent`.
#[derive(Subcommand, Clone, Debug)]
pub enum AgentAction {
    /// Register this machine (its cores and memory) with a controller and
    /// store the worker token in a file readable only by you.
    Register(RegisterArgs),
    /// Write a systemd user unit that runs the agent with these flags and
    /// starts it with your session (`--print` shows it instead).
    InstallService(Box<service::InstallServiceArgs>),
    /// Print what the agent is doing now: its build, unsent samples,
    /// whether telemetry is paused, the controller's last answer.
    Status(status::StatusArgs),
}

/// The controller and its admin key, for `agent register` and `simulate`.
#[derive(Args, Clone, Debug)]
pub struct AdminConnection {
    #[command(flatten)]
    pub controllers: ControllerUrls,

    /// The controller's admin key (ask the network's operator).
    #[arg(
        long,
        env = "FREEAGENT_ADMIN_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub admin_key: String,
}

impl AdminConnection {
    /// An HTTP client that sends the admin key, counting calls in `tally`.
    pub fn client(&self, tally: Tally) -> Result<Client, AgentError> {
        self.controllers.client(&self.admin_key, tally)
    }
}

/// Flags of `freeagent agent register`.
#[derive(Args, Clone, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub admin: AdminConnection,

    /// Name this worker shows under (1 to 64 characters).
    #[arg(long, value_name = "N")]
    pub name: String,

    /// Platforms this machine builds, like linux or android (repeat or
    /// comma-separate; up to 8).
    #[arg(long, required = true, value_delimiter = ',', value_name = "P")]
    pub platform: Vec<String>,

    /// Where to write the token [default: $XDG_CONFIG_HOME/freeagent/worker.token,
    /// else ~/.config/freeagent/worker.token].
    #[arg(long, env = "FREEAGENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// Why the agent or the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is missing or contradicts another.
    #[error("{0}")]
    Usage(String),
    /// The token file could not be read or written.
    #[error("token file {}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The controller refused or could not be reached for a call the agent
    /// cannot do without.
    #[error("{what}")]
    Controller {
        /// The call.
        what: &'static str,
        /// Its failure.
        #[source]
        source: CallError,
    },
    /// `--cpu-limit`/`--memory-limit` asked for a cgroup this machine
    /// does not let the agent create.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The operating system refused something the agent needs.
    #[error("{what}")]
    Io {
        /// What the agent was doing.
        what: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Where the token lives when `--token-file` is not given.
pub fn default_token_file() -> Result<PathBuf, AgentError> {
    Ok(config_dir()?.join("freeagent").join("worker.token"))
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_dir() -> Result<PathBuf, AgentError> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            AgentError::Usage("neither XDG_CONFIG_HOME nor HOME is set; pass --token-file".into())
        })
}

fn token_path(given: Option<PathBuf>) -> Result<PathBuf, AgentError> {
    match given {
        Some(p) => Ok(p),
        None => default_token_file(),
    }
}

/// Writes `token` to `path` with mode 0600 (its folder 0700 when created).
async fn write_token(path: &Path, token: &str) -> Result<(), AgentError> {
    let path_buf = path.to_path_buf();
    let token = token.to_string();
    let result = tokio::task::spawn_blocking(move || {
        crate::files::write_private(&path_buf, &format!("{token}\n"))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    result.map_err(|source| AgentError::TokenFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the worker token from `path`.
pub async fn read_token(path: &Path) -> Result<String, AgentError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => AgentError::Usage(format!(
                "no token file at {}: register this machine first with `freeagent agent register` (or pass --token-file)",
                path.display()
            )),
            _ => AgentError::TokenFile {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(AgentError::Usage(format!(
            "token file {} is empty; run `freeagent agent register`",
            path.display()
        )));
    }
    Ok(token)
}

/// Runs `freeagent agent`.
pub async fn run(command: AgentCommand) -> Result<ExitCode, AgentError> {
    match command.action {
        Some(AgentAction::Register(args)) => register(args).await,
        Some(AgentAction::InstallService(args)) => service::install(*args).await,
        Some(AgentAction::Status(args)) => status::show(args).await,
        None => runner::run(command.run).await,
    }
}

/// `freeagent agent register`: declares this machine and stores the token.
async fn register(args: RegisterArgs) -> Result<ExitCode, AgentError> {
    let path = token_path(args.token_file)?;
    let cpu_cores = sampler::cpu_cores();
    let memory_mb = sampler::memory_mb().await.ok_or_else(|| AgentError::Io {
        what: "reading this machine's memory from /proc/meminfo",
        source: std::io::Error::other("MemTotal not found"),
    })?;
    let client = args.admin.client(Tally::default())?;
    let body = RegisterWorker {
        name: args.name,
        platforms: args.platform,
        cpu_cores,
        memory_mb,
    };
    let registered = client
        .first_answer(|| client.register(&body))
        .await
        .map_err(|source| AgentError::Controller {
            what: "registering this worker",
            source,
        })?;
    write_token(&path, &registered.token).await?;
    tracing::info!(
        worker_id = registered.worker_id,
        controller = client.controller(),
        cpu_cores,
        memory_mb,
        "worker registered"
    );
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `freeagent simulate`.
pub async fn simulate(args: SimulateArgs) -> Result<ExitCode, AgentError> {
    simulate::run(args).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand, Debug)]
    enum Top {
        Agent(Box<AgentCommand>),
        Simulate(SimulateArgs),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        Cli::try_parse_from(std::iter::once("freeagent").chain(args.iter().copied())).map(|c| c.cmd)
    }

    /// `agent register` needs none of the run flags; the run needs them.
    #[test]
    fn register_and_run_parse() {
        let Top::Agent(cmd) = parse(&[
            "agent",
            "register",
            "--controller",
            "http://x",
            "--admin-key",
            "k",
            "--name",
            "n",
            "--platform",
            "linux,android",
            "--platform",
            "ios",
        ])
        .expect("parses") else {
            panic!("agent")
        };
        let Some(AgentAction::Register(r)) = cmd.action else {
            panic!("register")
        };
        assert_eq!(r.platform, vec!["linux", "android", "ios"]);

        let run = |interval: &'static str| {
            let mut args = vec!["agent", "--controller", "http://x", "--platform", "linux"];
            args.extend(["--build-command", "make", "--interval", interval]);
            args
        };
        let mut quiet = run("1m");
        quiet.push("--no-telemetry");
        let Top::Agent(cmd) = parse(&quiet).expect("parses") else {
            panic!("agent")
        };
        assert!(cmd.action.is_none());
        assert_eq!(cmd.run.interval, Duration::from_secs(60));
        assert!(cmd.run.no_telemetry);

        assert!(parse(&["agent", "--platform", "linux"]).is_err());
        assert!(parse(&run("500ms")).is_err());
    }

    /// `--controller` takes several URLs, repeated and comma-separated, in
    /// order; each must be an http(s) URL the routes can be appended to.
    #[test]
    fn several_controllers_parse() {
        let run = |controllers: &[&'static str]| {
            let mut args = vec!["agent"];
            for &c in controllers {
                args.extend(["--controller", c]);
            }
            args.extend(["--platform", "linux", "--build-command", "make"]);
            parse(&args)
        };
        let Top::Agent(cmd) =
            run(&["http://a:1,https://b.example/", "http://c:3/sub"]).expect("parses")
        else {
            panic!("agent")
        };
        assert_eq!(
            cmd.run.controllers.controller,
            vec!["http://a:1", "https://b.example", "http://c:3/sub"]
        );
        for bad in [
            "builds.example.org",
            "ftp://a",
            "http://a,",
            "http://user:pw@a",
            "http://a/?x=1",
            "",
        ] {
            assert!(run(&[bad]).is_err(), "{bad:?}");
        }
        assert!(run(&[]).is_err(), "at least one");

        let Top::Agent(cmd) = parse(&[
            "agent",
            "register",
            "--controller",
            "http://a,http://b",
            "--controller",
            "http://c",
            "--admin-key",
            "k",
            "--name",
            "n",
            "--platform",
            "linux",
        ])
        .expect("parses") else {
            panic!("agent")
        };
        let Some(AgentAction::Register(r)) = cmd.action else {
            panic!("register")
        };
        assert_eq!(
            r.admin.controllers.controller,
            vec!["http://a", "http://b", "http://c"]
        );
        assert!(parse(&[
            "simulate",
            "--controller",
            "http://a,nope",
            "--admin-key",
            "k"
        ])
        .is_err());
    }

    /// Plain http:// counts as in the clear unless it goes to this
    /// machine's loopback; https:// never does.
    #[test]
    fn plain_http_beyond_loopback_is_in_the_clear() {
        for clear in [
            "http://builds.example.org",
            "http://192.168.1.10:3000",
            "http://10.0.0.1",
            "http://[2001:db8::1]:3000",
            "http://[::ffff:10.0.0.1]",
            "http://localhost.example.org",
            "http://128.0.0.1",
        ] {
            assert!(in_clear(clear), "{clear}");
        }
        for safe in [
            "https://builds.example.org",
            "https://192.168.1.10",
            "http://127.0.0.1:3000",
            "http://127.1.2.3",
            "http://[::1]:3000",
            "http://[::ffff:127.0.0.1]",
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://localhost.",
            "http://ci.localhost/sub",
        ] {
            assert!(!in_clear(safe), "{safe}");
        }
    }

    /// Every flag has help text.
    #[test]
    fn every_flag_is_documented() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{:?}",
                    sub.get_name(),
                    arg.get_long()
                );
            }
            for subsub in sub.get_subcommands() {
                for arg in subsub.get_arguments() {
                    assert!(arg.get_help().is_some(), "{:?}", arg.get_long());
                }
            }
        }
    }

    /// The token file is written 0600 and read back.
    #[tokio::test]
    async fn token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("worker.token");
        write_token(&path, "secret").await.expect("writes");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_token(&path).await.expect("reads"), "secret");
    }
}
