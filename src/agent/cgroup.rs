//! `--cpu-limit` and `--memory-limit`: each build in a cgroup of its own.
//!
//! cgroup v2 where the agent's cgroup can hand the `cpu` and `memory`
//! controllers to children (root, or a delegated subtree such as
//! `systemd-run --user --scope -p Delegate=yes`); else the v1 `cpu` and
//! `memory` hierarchies, on hosts that mount those instead. The agent probes
//! at start, creating and removing a cgroup with the limits, so that a
//! machine that cannot honour them says so before any build is claimed.
//!
//! The build's first process joins its cgroup between fork and exec (it
//! writes `0`, "myself", to a `cgroup.procs` file the agent opened
//! beforehand), so nothing it starts ever runs outside the limits.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CFS period the CPU quota is a share of (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// The leaf a v2 agent moves itself into, so that its own cgroup may give
/// controllers to children (v2 allows no processes beside them).
const AGENT_LEAF: &str = "freeagent-agent";
/// Every cgroup of the agent's builds starts with this.
const PREFIX: &str = "freeagent-";
/// Longest the agent waits for a finished build's cgroup to empty.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// Why a cgroup could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy on this machine lets the agent create one; what was
    /// tried and what to do.
    #[error("{0}")]
    Unavailable(String),
    /// A cgroup file or folder refused.
    #[error("{what} {}", path.display())]
    Io {
        /// What the agent was doing.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// A memory size as the volunteer wrote it (`256M`, `4G`, `1.5G`), and its
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    text: String,
}

impl std::fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `--memory-limit`: a number with K, M, G or T (powers of 1024, an
/// optional trailing `B` or `iB`), or plain bytes; at least 4M, since a
/// build needs at least a shell.
pub fn parse_memory_limit(text: &str) -> Result<MemoryLimit, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let number_end = upper
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(upper.len());
    let (number, unit) = upper.split_at(number_end);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("`{text}` is not a size like 512M, 4G or 1.5G")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 512M, 4G or 1.5G"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < (4u64 << 20) as f64 || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` must be at least 4M"));
    }
    Ok(MemoryLimit {
        bytes: bytes as u64,
        text: trimmed.to_string(),
    })
}

/// Parses `--cpu-limit`: cores, fractions allowed, more than 0.01 (the
/// kernel's smallest quota is 1 ms a period) and at most this machine's.
pub fn parse_cpu_limit(text: &str) -> Result<f64, String> {
    let cores: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of cores like 1 or 2.5"))?;
    let have = super::sampler::cpu_cores();
    if !cores.is_finite() || cores < 0.01 {
        return Err(format!("`{text}` must be at least 0.01 cores"));
    }
    if cores > f64::from(have) {
        return Err(format!("`{text}` is more than this machine's {have} cores"));
    }
    Ok(cores)
}

/// The limits a build's cgroup gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Cores.
    pub cpu: Option<f64>,
    /// Memory (swap included where the kernel counts it).
    pub memory: Option<MemoryLimit>,
}

impl Limits {
    /// No limit asked for: no cgroup needed.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }

    fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.cpu.is_some() {
            c.push("cpu");
        }
        if self.memory.is_some() {
            c.push("memory");
        }
        c
    }
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup hierarchy.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// The cgroup of the hierarchy shown at the mount point.
    pub root: String,
    /// `cgroup2` or `cgroup`.
    pub fstype: String,
    /// Super options: a v1 hierarchy's controllers are among them.
    pub options: Vec<String>,
}

/// The cgroup mounts of a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let options = right.nth(1).unwrap_or("");
            Some(Mount {
                point: PathBuf::from(left.get(4)?.replace("\\040", " ")),
                root: (*left.get(3)?).to_string(),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// One line of `/proc/self/cgroup`: hierarchy id, its controllers, our
/// cgroup in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Membership {
    /// 0 for v2.
    pub hierarchy: u32,
    /// The v1 controllers of the hierarchy (empty for v2).
    pub controllers: Vec<String>,
    /// Our cgroup, from the hierarchy's root.
    pub path: String,
}

/// The lines of a `/proc/<pid>/cgroup` text.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            Some(Membership {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: parts.next()?.to_string(),
            })
        })
        .collect()
}

/// The folder of cgroup `path` under `mount`: the mount shows the hierarchy
/// from its `root`, so that much of the path is not in the folder's name.
pub fn folder_of(mount: &Mount, path: &str) -> PathBuf {
    let rest = path.strip_prefix(mount.root.as_str()).unwrap_or(path);
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rest)
    }
}

/// Where the builds' cgroups go.
#[derive(Clone, Debug, PartialEq)]
enum Tree {
    /// One folder in the unified hierarchy.
    V2(PathBuf),
    /// A folder in the `cpu` hierarchy and one in the `memory` hierarchy
    /// (for the limits asked for).
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

fn read(path: &Path) -> Result<String, std::io::Error> {
    std::fs::read_to_string(path)
}

fn write(path: &Path, text: &str, what: &'static str) -> Result<(), CgroupError> {
    std::fs::write(path, text).map_err(io(what, path))
}

/// Writes `text` to `path` where the kernel offers that file.
fn write_if_there(path: &Path, text: &str, what: &'static str) -> Result<(), CgroupError> {
    match std::fs::write(path, text) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other.map_err(io(what, path)),
    }
}

/// The v2 folder the builds' cgroups can go under, with the controllers
/// enabled for its children; moves the agent into a leaf when that is what
/// it takes. Blocking.
fn try_v2(mounts: &[Mount], member: &[Membership], needed: &[&str]) -> Result<Tree, String> {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("not mounted")?;
    let own = member
        .iter()
        .find(|m| m.hierarchy == 0)
        .ok_or("this process is in no v2 cgroup")?;
    let dir = folder_of(mount, &own.path);
    let controllers =
        read(&dir.join("cgroup.controllers")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !has_word(&controllers, c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} is not given the {} controller{}",
            dir.display(),
            missing.join(" and "),
            if missing.len() > 1 { "s" } else { "" }
        ));
    }
    let subtree_file = dir.join("cgroup.subtree_control");
    let enabled = read(&subtree_file).map_err(|e| format!("{}: {e}", subtree_file.display()))?;
    if needed.iter().all(|c| has_word(&enabled, c)) {
        return Ok(Tree::V2(dir));
    }
    // v2 lets a cgroup hand controllers to children only while it holds no
    // process itself: the agent moves into a leaf first (as systemd's
    // delegation expects of whoever it delegates to).
    let leaf = dir.join(AGENT_LEAF);
    let moved = std::fs::create_dir(&leaf)
        .or_else(|e| match e.kind() {
            ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), "0"));
    if let Err(e) = moved {
        return Err(format!(
            "cannot move the agent into {}: {e}",
            leaf.display()
        ));
    }
    let plus: Vec<String> = needed.iter().map(|c| format!("+{c}")).collect();
    if let Err(e) = std::fs::write(&subtree_file, plus.join(" ")) {
        // Back where it was, so that a failed probe changes nothing.
        let _ = std::fs::write(dir.join("cgroup.procs"), "0");
        let _ = std::fs::remove_dir(&leaf);
        let why = if e.raw_os_error() == Some(libc::EBUSY) {
            "other processes share it".to_string()
        } else {
            e.to_string()
        };
        return Err(format!(
            "cannot enable {} for the children of {}: {why}",
            needed.join(" and "),
            dir.display()
        ));
    }
    Ok(Tree::V2(dir))
}

/// The v1 folders, one a controller asked for. Blocking.
fn try_v1(mounts: &[Mount], member: &[Membership], needed: &[&str]) -> Result<Tree, String> {
    let mut found = Vec::new();
    for &controller in needed {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))
            .ok_or_else(|| format!("no {controller} hierarchy is mounted"))?;
        let own = member
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .ok_or_else(|| format!("this process is in no {controller} cgroup"))?;
        found.push((controller, folder_of(mount, &own.path)));
    }
    let pick = |name: &str| {
        found
            .iter()
            .find(|(c, _)| *c == name)
            .map(|(_, dir)| dir.clone())
    };
    Ok(Tree::V1 {
        cpu: pick("cpu"),
        memory: pick("memory"),
    })
}

/// The machine's cgroups, probed, and the limits each build gets.
#[derive(Clone, Debug)]
pub struct Cgroups {
    tree: Tree,
    limits: Limits,
}

/// What the volunteer can do when no cgroup can be made.
const ADVICE: &str = "run the agent as root, or in a cgroup delegated to you: \
`systemd-run --user --scope -p Delegate=yes freeagent agent ...`, or Delegate=yes \
in its systemd unit (`freeagent agent install-service` writes it with these flags); \
or leave out --cpu-limit and --memory-limit";

impl Cgroups {
    /// Finds where builds' cgroups can go and proves it by creating one
    /// with `limits` and removing it. Blocking.
    pub fn probe(limits: Limits) -> Result<Self, CgroupError> {
        let unavailable = |why: String| {
            CgroupError::Unavailable(format!(
                "cannot give builds a cgroup of their own for --cpu-limit/--memory-limit ({why}); {ADVICE}"
            ))
        };
        let mountinfo = read(Path::new("/proc/self/mountinfo"))
            .map_err(|e| unavailable(format!("/proc/self/mountinfo: {e}")))?;
        let membership = read(Path::new("/proc/self/cgroup"))
            .map_err(|e| unavailable(format!("/proc/self/cgroup: {e}")))?;
        let mounts = parse_mountinfo(&mountinfo);
        let member = parse_proc_cgroup(&membership);
        let needed = limits.controllers();
        let mut tried = Vec::new();
        let mut candidates = Vec::new();
        match try_v2(&mounts, &member, &needed) {
            Ok(tree) => candidates.push(tree),
            Err(why) => tried.push(format!("cgroup v2: {why}")),
        }
        match try_v1(&mounts, &member, &needed) {
            Ok(tree) => candidates.push(tree),
            Err(why) => tried.push(format!("cgroup v1: {why}")),
        }
        for tree in candidates {
            let cgroups = Cgroups {
                tree,
                limits: limits.clone(),
            };
            cgroups.remove_stale();
            match cgroups.create(&format!("{PREFIX}{}-probe", std::process::id())) {
                Ok(probe) => {
                    probe.remove();
                    return Ok(cgroups);
                }
                Err(e) => tried.push(format!("{}: {}", cgroups.kind(), error_chain(&e))),
            }
        }
        Err(unavailable(tried.join("; ")))
    }

    /// `cgroup v2` or `cgroup v1`, for logs.
    pub fn kind(&self) -> &'static str {
        match self.tree {
            Tree::V2(_) => "cgroup v2",
            Tree::V1 { .. } => "cgroup v1",
        }
    }

    /// The limits each build gets.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn parents(&self) -> Vec<&Path> {
        match &self.tree {
            Tree::V2(dir) => vec![dir.as_path()],
            Tree::V1 { cpu, memory } => {
                let mut dirs: Vec<&Path> = cpu.iter().chain(memory).map(PathBuf::as_path).collect();
                // A host may mount cpu and memory as one hierarchy.
                dirs.dedup();
                dirs
            }
        }
    }

    /// Removes empty cgroups left by agents that died (their pid is gone).
    fn remove_stale(&self) {
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(PREFIX))
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<i32>().ok())
                else {
                    continue;
                };
                // SAFETY: signal 0 only asks whether the process exists.
                let gone = unsafe { libc::kill(pid, 0) } != 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
                if gone && std::fs::remove_dir(entry.path()).is_ok() {
                    tracing::info!(cgroup = %entry.path().display(), "removed a cgroup left by an agent that is gone");
                }
            }
        }
    }

    /// Creates cgroup `name` with the limits, ready for a process to join.
    /// Blocking.
    pub fn create(&self, name: &str) -> Result<BuildCgroup, CgroupError> {
        let mut group = BuildCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
            v2: matches!(self.tree, Tree::V2(_)),
        };
        let made = self.fill(&mut group, name);
        // Half made: what exists is removed.
        match made {
            Ok(()) => Ok(group),
            Err(e) => {
                group.remove();
                Err(e)
            }
        }
    }

    fn fill(&self, group: &mut BuildCgroup, name: &str) -> Result<(), CgroupError> {
        for parent in self.parents() {
            let dir = parent.join(name);
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Left by an earlier run of this pid: it must be empty
                    // to be reused as new.
                    std::fs::remove_dir(&dir).map_err(io("removing the old cgroup", &dir))?;
                    std::fs::create_dir(&dir).map_err(io("creating the cgroup", &dir))?;
                }
                other => other.map_err(io("creating the cgroup", &dir))?,
            }
            group.dirs.push(dir);
        }
        let quota = self
            .limits
            .cpu
            .map(|cores| ((cores * CPU_PERIOD_US as f64).round() as u64).max(1_000));
        match &self.tree {
            Tree::V2(_) => {
                let dir = group.dirs[0].clone();
                if let Some(quota) = quota {
                    write(
                        &dir.join("cpu.max"),
                        &format!("{quota} {CPU_PERIOD_US}"),
                        "setting the CPU limit in",
                    )?;
                }
                if let Some(memory) = &self.limits.memory {
                    let bytes = memory.bytes.to_string();
                    write(
                        &dir.join("memory.max"),
                        &bytes,
                        "setting the memory limit in",
                    )?;
                    // The limit is on memory, not on memory the build may
                    // push to swap instead; and it ends the whole build,
                    // not one process of it.
                    write_if_there(&dir.join("memory.swap.max"), "0", "turning off swap in")?;
                    write_if_there(
                        &dir.join("memory.oom.group"),
                        "1",
                        "setting memory.oom.group in",
                    )?;
                    group.memory = Some(dir.clone());
                }
            }
            Tree::V1 { cpu, memory } => {
                let child = |parent: &PathBuf| parent.join(name);
                if let (Some(cpu), Some(quota)) = (cpu, quota) {
                    let dir = child(cpu);
                    write(
                        &dir.join("cpu.cfs_period_us"),
                        &CPU_PERIOD_US.to_string(),
                        "setting the CPU period in",
                    )?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &quota.to_string(),
                        "setting the CPU limit in",
                    )?;
                }
                if let (Some(memory), Some(limit)) = (memory, &self.limits.memory) {
                    let dir = child(memory);
                    let bytes = limit.bytes.to_string();
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &bytes,
                        "setting the memory limit in",
                    )?;
                    // With swap accounting the same figure for memory + swap,
                    // so that swapping does not get round the limit.
                    write_if_there(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &bytes,
                        "setting the memory + swap limit in",
                    )?;
                    group.memory = Some(dir);
                }
            }
        }
        for dir in &group.dirs {
            let path = dir.join("cgroup.procs");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("opening", &path))?;
            group.procs.push(file);
        }
        Ok(())
    }
}

/// Every cause of an error, for a one-line message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One build's cgroup: its folders (one a hierarchy) and their
/// `cgroup.procs`, open for the build's first process to join through.
#[derive(Debug)]
pub struct BuildCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
    /// The folder with the memory controller's files, when limited.
    memory: Option<PathBuf>,
    v2: bool,
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl BuildCgroup {
    /// The open `cgroup.procs` files: writing `0` to each moves the writer
    /// into the cgroup. For a `pre_exec` hook, which may not allocate.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The folders, for logs.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Processes the kernel killed for the memory limit, so far. Blocking.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read(&dir.join(file))
            .ok()
            .and_then(|text| keyed(&text, "oom_kill"))
            .unwrap_or(0)
    }

    /// Whether the build ever reached its memory limit (older v1 kernels
    /// count kills nowhere; a SIGKILL after this is the limit's). Blocking.
    pub fn hit_memory_limit(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        if self.v2 {
            read(&dir.join("memory.events"))
                .ok()
                .and_then(|text| keyed(&text, "max"))
                .is_some_and(|n| n > 0)
        } else {
            read(&dir.join("memory.failcnt"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        }
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|dir| read(&dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills what is left in the cgroup and removes it. Blocking.
    pub fn remove(&self) {
        let deadline = std::time::Instant::now() + REMOVE_PATIENCE;
        let mut dirs = self.dirs.clone();
        loop {
            let pids = self.pids();
            for &pid in &pids {
                // SAFETY: a plain kill(2); ESRCH (gone meanwhile) is fine.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if pids.is_empty() {
                dirs.retain(|dir| match std::fs::remove_dir(dir) {
                    Ok(()) => false,
                    Err(e) => e.kind() != ErrorKind::NotFound,
                });
                if dirs.is_empty() {
                    return;
                }
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(cgroups = ?dirs, processes = pids.len(), "could not remove the build's cgroup");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes as volunteers write them; nonsense and tiny sizes refused.
    #[test]
    fn memory_limits_parse() {
        let ok = |t: &str| parse_memory_limit(t).expect(t).bytes;
        assert_eq!(ok("256M"), 256 << 20);
        assert_eq!(ok("4G"), 4 << 30);
        assert_eq!(ok("1.5G"), 3 << 29);
        assert_eq!(ok("512mib"), 512 << 20);
        assert_eq!(ok("8388608"), 8 << 20);
        assert_eq!(ok(" 2GB "), 2 << 30);
        assert_eq!(
            parse_memory_limit("256M").expect("parses").to_string(),
            "256M"
        );
        for bad in ["", "G", "4X", "1M", "-1G", "1.2.3G", "4 G G", "nanG"] {
            assert!(parse_memory_limit(bad).is_err(), "{bad:?}");
        }
    }

    /// Cores: fractions, within this machine.
    #[test]
    fn cpu_limits_parse() {
        assert_eq!(parse_cpu_limit("1"), Ok(1.0));
        assert_eq!(parse_cpu_limit("0.5"), Ok(0.5));
        let cores = super::super::sampler::cpu_cores();
        assert!(parse_cpu_limit(&cores.to_string()).is_ok());
        assert!(parse_cpu_limit(&(cores + 1).to_string()).is_err());
        for bad in ["0", "-1", "0.001", "x", "inf", "NaN"] {
            assert!(parse_cpu_limit(bad).is_err(), "{bad:?}");
        }
    }

    /// A host with v1 cpu/memory and an empty v2 tree, as mountinfo and
    /// /proc/self/cgroup show it.
    #[test]
    fn hierarchies_are_found() {
        let mountinfo = "\
25 22 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";
        let mounts = parse_mountinfo(mountinfo);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert_eq!(mounts[1].options, vec!["rw", "cpu", "cpuacct"]);
        let member = parse_proc_cgroup("4:memory:/docker/abc/x\n2:cpu,cpuacct:/\n0::/\n");
        assert_eq!(member[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(
            folder_of(&mounts[2], &member[0].path),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
        assert_eq!(
            try_v1(&mounts, &member, &["cpu", "memory"]),
            Ok(Tree::V1 {
                cpu: Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                memory: Some(PathBuf::from("/sys/fs/cgroup/memory/x")),
            })
        );
        assert_eq!(
            try_v1(&mounts, &member, &["cpu"]),
            Ok(Tree::V1 {
                cpu: Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                memory: None,
            })
        );
        let no_memory = &mounts[..2];
        assert!(try_v1(no_memory, &member, &["memory"])
            .unwrap_err()
            .contains("no memory hierarchy"));
    }

    /// `oom_kill` and `max` from memory.events / memory.oom_control.
    #[test]
    fn keyed_files_read() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(2));
        assert_eq!(keyed("low 0\nhigh 0\nmax 5\noom 1\n", "max"), Some(5));
        assert_eq!(keyed(oom_control, "oom"), None);
    }
}
