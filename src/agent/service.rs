//! `freeagent agent install-service`: a systemd user unit that starts the
//! agent with the volunteer's session, with the same flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{config_dir, AgentError, RunArgs};

/// The unit's file name.
pub const UNIT_NAME: &str = "freeagent-agent.service";

/// Flags of `freeagent agent install-service`: the agent's own flags, and
/// where the unit goes.
#[derive(Args, Clone, Debug)]
pub struct InstallServiceArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Print the unit instead of writing it.
    #[arg(long)]
    pub print: bool,
}

/// Quotes one argument for `ExecStart=`: systemd splits on whitespace,
/// reads C escapes inside double quotes, and expands `%` specifiers and
/// `$` variables, so each is written so that it stays itself.
pub fn exec_quote(arg: &str) -> String {
    let mut quoted = String::with_capacity(arg.len() + 2);
    quoted.push('"');
    for c in arg.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The unit that runs `exe agent ARGS...`.
/// With `delegate` (the agent was given `--cpu-limit`/`--memory-limit`),
/// systemd hands the service's cgroup to the agent, which creates its
/// builds' cgroups there.
pub fn unit(exe: &str, agent_args: &[String], stop_timeout_s: u64, delegate: bool) -> String {
    let mut exec = vec![exec_quote(exe), exec_quote("agent")];
    exec.extend(agent_args.iter().map(|a| exec_quote(a)));
    let delegate = if delegate {
        "# The agent puts each build in a cgroup with the volunteer's limits.\n\
         Delegate=yes\n"
    } else {
        ""
    };
    format!(
        "[Unit]\n\
         Description=Free Agent worker (lends this machine to the build network)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={}\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # SIGTERM: the agent ends its build, flushes and gives it back.\n\
         KillSignal=SIGTERM\n\
         KillMode=mixed\n\
         TimeoutStopSec={stop_timeout_s}\n\
         {delegate}\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exec.join(" ")
    )
}

/// The agent's flags as given after `install-service`, without this
/// command's own.
fn agent_args() -> Vec<String> {
    std::env::args()
        .skip_while(|a| a != "install-service")
        .skip(1)
        .filter(|a| a != "--print")
        .collect()
}

/// Writes (or prints) the unit.
pub async fn install(args: InstallServiceArgs) -> Result<ExitCode, AgentError> {
    let exe = std::env::current_exe().map_err(|source| AgentError::Io {
        what: "finding this program's own path",
        source,
    })?;
    let exe = exe
        .to_str()
        .ok_or_else(|| AgentError::Usage("this program's path is not UTF-8".into()))?
        .to_string();
    // Stopping may take the build's kill grace, the flush and a release.
    let stop_timeout_s = (args.run.kill_grace + args.run.flush_timeout).as_secs() + 30;
    let delegate = !args.run.limits().is_empty();
    let text = unit(&exe, &agent_args(), stop_timeout_s, delegate);
    if args.print {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let path: PathBuf = config_dir()?.join("systemd").join("user").join(UNIT_NAME);
    let target = path.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&target, text)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(|source| AgentError::Io {
        what: "writing the systemd user unit",
        source,
    })?;
    println!("{}", path.display());
    println!("start it now and with every session: systemctl --user enable --now {UNIT_NAME}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spaces, quotes, backslashes, `%` and `$` survive systemd's parsing.
    #[test]
    fn exec_arguments_are_quoted() {
        assert_eq!(exec_quote("make -j4"), "\"make -j4\"");
        assert_eq!(exec_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(exec_quote("100% $HOME"), "\"100%% $$HOME\"");
    }

    /// Limits ask systemd to delegate the cgroup; without them nothing does.
    #[test]
    fn limits_delegate_the_cgroup() {
        let args = ["--cpu-limit".to_string(), "1".to_string()];
        assert!(unit("/bin/freeagent", &args, 60, true).contains("\nDelegate=yes\n"));
        assert!(!unit("/bin/freeagent", &[], 60, false).contains("Delegate"));
    }
}
