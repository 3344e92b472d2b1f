//! A throwaway Postgres cluster for the tests that run on Postgres
//! (`FREEAGENT_TEST_BACKEND=postgres`): `initdb` in a temporary folder, a
//! port of its own on 127.0.0.1, run as the `postgres` user when the tests
//! run as root. No test depends on a system service.
//!
//! One cluster serves the whole test process, started by the first test
//! that asks; every `TestApp` gets a fresh database in it. A detached
//! watchdog stops the cluster and removes its folder once the test process
//! has gone, however it ended (success, panic, abort, SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::{Connection, Executor};

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Folder holding the data directory, socket and log.
    pub dir: PathBuf,
    /// `postgres` when the tests run as root, else nobody (run directly).
    run_as: Option<&'static str>,
    bin: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| Cluster::start(std::process::id()))
        .as_ref()
        .unwrap_or_else(|error| panic!("no throwaway Postgres cluster: {error}"))
}

/// `postgres://` URL of a new, empty database in the test process's cluster.
pub async fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!(
        "t_{}_{}",
        DATABASES.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    );
    cluster.create_database(&name).await;
    cluster.url(&name)
}

/// The folder of Postgres' programs: the newest `/usr/lib/postgresql/*/bin`
/// (Debian), else what `pg_config --bindir` says, else the one on `PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_initdb(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_initdb(&bin) {
            return Ok(bin);
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .find(|dir| has_initdb(dir))
        .ok_or_else(|| {
            "initdb not found (in /usr/lib/postgresql/*/bin, pg_config --bindir or PATH); \
             scripts/setup.sh installs Debian's postgresql"
                .to_string()
        })
}

/// Runs `script` with `sh` in a session of its own, detached from the test
/// process so that it outlives it (the watchdogs of what the tests start).
pub fn spawn_detached_shell(script: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// Starts a cluster that stops itself once process `watched` is gone.
    pub fn start(watched: u32) -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("freeagent-pg-")
            .tempdir()
            .map_err(|e| format!("temporary folder: {e}"))?
            .keep();
        let run_as = running_as_root().then_some("postgres");
        let mut cluster = Cluster {
            port: 0,
            dir,
            run_as,
            bin,
        };
        if let Some(user) = run_as {
            cluster.run(Command::new("chown").args([user, cluster.dir_str()]), false)?;
        }
        // From here on the folder is the watchdog's to remove, whatever fails.
        cluster.spawn_watchdog(watched)?;
        cluster.run(
            cluster
                .command("initdb")
                .args(["-D", &cluster.data_str(), "-A", "trust", "-U", "postgres"])
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
            true,
        )?;
        let mut last_error = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            // fsync stays on: a 2xx answer means committed to disk, and the
            // crash tests prove it on Postgres too.
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on \
                 -c max_connections=500",
                cluster.port,
                cluster.dir_str()
            );
            let started = cluster.run(
                cluster.command("pg_ctl").args([
                    "-D",
                    &cluster.data_str(),
                    "-l",
                    &cluster.dir.join("postgres.log").display().to_string(),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]),
                true,
            );
            match started {
                Ok(()) => return Ok(cluster),
                Err(error) => last_error = error,
            }
        }
        Err(format!(
            "{last_error}\n{}",
            std::fs::read_to_string(cluster.dir.join("postgres.log")).unwrap_or_default()
        ))
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("a UTF-8 temporary folder")
    }

    fn data_str(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Postgres' program `name`, as the cluster's owner.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut command = match self.run_as {
            Some(user) => {
                let mut runuser = Command::new("runuser");
                runuser.args(["-u", user, "--"]).arg(program);
                runuser
            }
            None => Command::new(program),
        };
        command.current_dir(&self.dir);
        command
    }

    /// Runs to completion; the error holds its output.
    fn run(&self, command: &mut Command, quiet: bool) -> Result<(), String> {
        if quiet {
            command.stdin(Stdio::null());
        }
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{command:?} exited with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A shell of its own session that outlives this process: once
    /// `watched` is gone it stops the cluster (immediate mode: nothing of
    /// it is worth keeping) and removes the folder.
    fn spawn_watchdog(&self, watched: u32) -> Result<(), String> {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let as_owner = match self.run_as {
            Some(user) => format!("runuser -u {user} -- "),
            None => String::new(),
        };
        let script = format!(
            "while kill -0 {watched} 2>/dev/null; do sleep 0.5; done; \
             if [ -f '{data}/postmaster.pid' ]; then \
             {as_owner}'{pg_ctl}' -D '{data}' -m immediate -w stop; fi; \
             rm -rf '{dir}'",
            data = self.data_str(),
            dir = self.dir_str(),
        );
        spawn_detached_shell(&script).map_err(|e| format!("watchdog: {e}"))
    }

    /// `postgres://` URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) {
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
    }

    /// Pid of the postmaster, from its pid file.
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// Whether process `pid` runs (a zombie waiting for its parent does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// The cluster answers SQL over sqlx in a fresh database of its own.
#[tokio::test]
async fn throwaway_cluster_serves_a_fresh_database() {
    let url = fresh_database().await;
    assert!(
        url.starts_with(&format!(
            "postgres://postgres@127.0.0.1:{}/t_",
            cluster().port
        )),
        "{url}"
    );
    let mut connection = sqlx::PgConnection::connect(&url).await.expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!(tables, 0, "a fresh database is empty");
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(fsync, "on", "commits reach the disk");
}

/// When the process a cluster watches ends, the cluster stops and its
/// folder is removed: nothing is left behind. (Here the watched process is
/// a `sleep` this test kills, standing in for the test process.)
#[tokio::test]
async fn cluster_stops_and_is_removed_when_its_process_ends() {
    let mut stand_in = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("start sleep");
    let cluster = Cluster::start(stand_in.id()).expect("start a cluster");
    let postmaster = cluster.postmaster_pid().expect("postmaster.pid");
    assert!(alive(postmaster));
    cluster.create_database("watched").await;
    let mut connection = sqlx::PgConnection::connect(&cluster.url("watched"))
        .await
        .expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(one, 1);
    drop(connection);

    stand_in.kill().expect("kill the stand-in");
    stand_in.wait().expect("reap the stand-in");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while alive(postmaster) || cluster.dir.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "30 s after its process ended, the postmaster runs ({}) or {} exists ({})",
            alive(postmaster),
            cluster.dir.display(),
            cluster.dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
