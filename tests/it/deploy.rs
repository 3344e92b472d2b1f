//! The files of `deploy/` as an operator installs them: systemd accepts the
//! controller's unit, and the environment file names every flag of
//! `serve` and ships no admin key the controller would take.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_freeagent");

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify` accepts `deploy/freeagent.service`, run on a
/// copy whose `ExecStart` names the binary just built (verify checks that
/// the program exists). Debian's systemd ships systemd-analyze and
/// scripts/setup.sh installs it: its absence fails the test.
#[test]
fn systemd_accepts_the_controller_unit() {
    let unit = deploy_file("freeagent.service");
    let exec = unit
        .lines()
        .find(|line| line.starts_with("ExecStart="))
        .expect("an ExecStart line");
    let (_, args) = exec
        .trim_start_matches("ExecStart=")
        .split_once(' ')
        .expect("a program and its arguments");
    assert_eq!(args, "serve", "{exec}");
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("freeagent.service");
    std::fs::write(
        &copy,
        unit.replace(exec, &format!("ExecStart={BIN} {args}")),
    )
    .expect("copy");
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze is missing ({e}): scripts/setup.sh installs Debian's systemd")
        });
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify refused the unit ({}):\n{stderr}",
        verified.status
    );
    for hardening in [
        "DynamicUser=yes",
        "StateDirectory=freeagent",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening:?}");
    }
}

/// Every environment variable `serve --help` names is in
/// `deploy/freeagent.env.example`, and the example's admin key as shipped
/// is refused: an operator who forgets to set one gets told how to.
#[tokio::test]
async fn env_example_names_every_flag_and_ships_no_usable_key() {
    let example = deploy_file("freeagent.env.example");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let names: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    assert!(
        names.len() >= 10,
        "too few variables in serve --help:\n{help}"
    );
    for name in names {
        assert!(
            example.contains(&format!("\n{name}=")) || example.contains(&format!("\n#{name}=")),
            "deploy/freeagent.env.example lacks {name}"
        );
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut serve = tokio::process::Command::new(BIN);
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("FREEAGENT_")) {
        serve.env_remove(key);
    }
    for line in example
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (key, value) = line.split_once('=').expect("KEY=value");
        serve.env(key, value);
    }
    let refused = tokio::time::timeout(std::time::Duration::from_secs(30), serve.output())
        .await
        .expect("refuses at once, not serves")
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "served with the example's placeholder key"
    );
    assert!(stderr.contains("openssl rand -base64 32"), "{stderr}");
}
