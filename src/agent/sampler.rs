//! Sampling a build's process tree from `/proc`: CPU time from the kernel's
//! accounting (reaped children included) and resident memory.
//!
//! A build's CPU time is the sum over the live processes of its tree of
//! `utime + stime + cutime + cstime`: when a process exits, the kernel adds
//! its time (and that of the children it reaped) to its parent's `cutime` and
//! `cstime`, so a compiler process that lived between two samples is still
//! counted by the shell that waited for it. Processes are read parents first
//! so that a child reaped during the scan is counted at most once.

use std::collections::{HashMap, HashSet, VecDeque};

/// The fields of `/proc/<pid>/stat` the sampler needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// User time of the process (all its threads), clock ticks.
    pub utime: u64,
    /// System time, clock ticks.
    pub stime: u64,
    /// User time of the children it waited for, clock ticks.
    pub cutime: u64,
    /// System time of the children it waited for, clock ticks.
    pub cstime: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
    /// Exited, not yet reaped: its times still count, it cannot be signalled.
    pub zombie: bool,
}

impl ProcStat {
    /// CPU time of this process and its reaped children, clock ticks.
    pub fn total_ticks(&self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

/// Parses one `/proc/<pid>/stat` line. `None` when it is not one.
///
/// The command name sits in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is the state (field 3 of proc(5)); field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    let int = |n: usize| field(n)?.parse::<i64>().ok();
    let ticks = |n: usize| field(n)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        ppid: i32::try_from(int(4)?).ok()?,
        pgrp: i32::try_from(int(5)?).ok()?,
        utime: ticks(14)?,
        stime: ticks(15)?,
        // cutime and cstime are signed in the kernel's format.
        cutime: u64::try_from(int(16)?).unwrap_or(0),
        cstime: u64::try_from(int(17)?).unwrap_or(0),
        rss_pages: u64::try_from(int(24)?).unwrap_or(0),
        zombie: field(3)? == "Z",
    })
}

/// The processes of a build, parents before children: the descendants of
/// `root`, every process still in its process group (`root` leads it), and
/// the children of `adopter` (the agent, when it is the build's subreaper:
/// orphans of the build are reparented to it, even those that left the
/// group).
pub fn tree_order(root: i32, adopter: Option<i32>, procs: &[ProcStat]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut starts: Vec<i32> = Vec::new();
    if procs.iter().any(|p| p.pid == root) {
        starts.push(root);
    }
    starts.extend(procs.iter().filter(|p| p.pgrp == root).map(|p| p.pid));
    if let Some(adopter) = adopter {
        starts.extend(procs.iter().filter(|p| p.ppid == adopter).map(|p| p.pid));
    }
    for start in starts {
        let mut queue = VecDeque::from([start]);
        while let Some(pid) = queue.pop_front() {
            if !seen.insert(pid) {
                continue;
            }
            order.push(pid);
            if let Some(kids) = children.get(&pid) {
                queue.extend(kids.iter().copied());
            }
        }
    }
    order
}

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TreeReading {
    /// CPU seconds of the live processes and the children they reaped.
    pub cpu_time_s: f64,
    /// Resident memory of the live processes, MiB.
    pub memory_mb: f64,
    /// Live processes counted.
    pub processes: usize,
}

/// Clock ticks per second and page size of this machine.
#[derive(Clone, Copy, Debug)]
pub struct Units {
    /// `sysconf(_SC_CLK_TCK)`.
    pub ticks_per_s: f64,
    /// `sysconf(_SC_PAGESIZE)`, bytes.
    pub page_bytes: f64,
}

impl Units {
    /// This machine's units (100 ticks/s and 4 KiB pages if sysconf fails).
    pub fn of_this_machine() -> Self {
        // SAFETY: sysconf has no preconditions; it only reads constants.
        let (tck, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Units {
            ticks_per_s: if tck > 0 { tck as f64 } else { 100.0 },
            page_bytes: if page > 0 { page as f64 } else { 4096.0 },
        }
    }
}

/// Sums CPU time and memory of `stats` (already in tree order).
pub fn sum_tree(stats: &[ProcStat], units: Units) -> TreeReading {
    let ticks: u64 = stats.iter().map(ProcStat::total_ticks).sum();
    let pages: u64 = stats.iter().map(|p| p.rss_pages).sum();
    TreeReading {
        cpu_time_s: ticks as f64 / units.ticks_per_s,
        memory_mb: pages as f64 * units.page_bytes / (1024.0 * 1024.0),
        processes: stats.len(),
    }
}

fn read_stat(pid: i32) -> Option<ProcStat> {
    // A process may exit between listing and reading: then it is skipped.
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn all_processes() -> std::io::Result<Vec<ProcStat>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            procs.push(stat);
        }
    }
    Ok(procs)
}

/// Reads the tree of `root` from `/proc`. Blocking: call it from
/// `spawn_blocking`.
///
/// The first pass finds the tree; the second rereads its members parents
/// first, so a child reaped in between is counted at most once (an
/// undercount is corrected by the next sample, an overcount never would be).
pub fn read_tree(root: i32, adopter: Option<i32>, units: Units) -> std::io::Result<TreeReading> {
    let procs = all_processes()?;
    let order = tree_order(root, adopter, &procs);
    let stats: Vec<ProcStat> = order.into_iter().filter_map(read_stat).collect();
    Ok(sum_tree(&stats, units))
}

/// Every live (not zombie) pid in the tree of `root`, for ending the
/// build. Blocking.
pub fn tree_pids(root: i32, adopter: Option<i32>) -> Vec<i32> {
    let Ok(procs) = all_processes() else {
        return Vec::new();
    };
    let zombies: HashSet<i32> = procs.iter().filter(|p| p.zombie).map(|p| p.pid).collect();
    tree_order(root, adopter, &procs)
        .into_iter()
        .filter(|pid| !zombies.contains(pid))
        .collect()
}

/// Keeps the reported counter monotone and derives CPU percent from it.
#[derive(Clone, Debug)]
pub struct CpuMeter {
    last_cpu_s: f64,
    max_percent: f64,
}

impl CpuMeter {
    /// A meter for a machine of `cores` cores (CPU percent is capped at
    /// `100 * cores`, which the controller requires).
    pub fn new(cores: u32) -> Self {
        CpuMeter {
            last_cpu_s: 0.0,
            max_percent: 100.0 * f64::from(cores.max(1)),
        }
    }

    /// Records a reading of the counter taken `wall_s` seconds after the
    /// previous one; returns the counter to report (never below an earlier
    /// one) and the CPU percent over the interval.
    pub fn observe(&mut self, cpu_s: f64, wall_s: f64) -> (f64, f64) {
        let counter = if cpu_s.is_finite() {
            cpu_s.max(self.last_cpu_s)
        } else {
            self.last_cpu_s
        };
        let delta = counter - self.last_cpu_s;
        self.last_cpu_s = counter;
        let percent = if wall_s > 0.0 {
            (delta / wall_s * 100.0).clamp(0.0, self.max_percent)
        } else {
            0.0
        };
        (counter, percent)
    }

    /// The counter reported so far.
    pub fn counter(&self) -> f64 {
        self.last_cpu_s
    }
}

/// This machine's logical cores.
pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .clamp(1, 1024)
}

/// `MemTotal` of a `/proc/meminfo` text, in MiB.
pub fn parse_mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// This machine's memory in MiB, from `/proc/meminfo`.
pub async fn memory_mb() -> Option<u64> {
    let text = tokio::fs::read_to_string("/proc/meminfo").await.ok()?;
    parse_mem_total_mb(&text).map(|mb| mb.clamp(1, 16_777_216))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, pgrp: i32, ticks: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgrp,
            utime: ticks,
            stime: 0,
            cutime: 0,
            cstime: 0,
            rss_pages: 1,
            zombie: false,
        }
    }

    /// A real stat line, with a command name holding spaces and parentheses.
    #[test]
    fn parses_stat_line_with_awkward_name() {
        let line = "4242 (my (odd) cmd) R 4000 4242 4000 34816 4242 4194304 120 300 0 0 \
                    150 25 1000 200 20 0 3 0 123456 10485760 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(line).expect("parses");
        assert_eq!(p.pid, 4242);
        assert_eq!(p.ppid, 4000);
        assert_eq!(p.pgrp, 4242);
        assert_eq!((p.utime, p.stime, p.cutime, p.cstime), (150, 25, 1000, 200));
        assert_eq!(p.rss_pages, 2560);
        assert!(!p.zombie);
        assert_eq!(p.total_ticks(), 1375);
    }

    /// Truncated or garbage lines are not processes.
    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (sh) S 1 12"), None);
        assert_eq!(
            parse_stat("x (sh) S 1 12 1 0 0 0 0 0 0 0 1 2 3 4 5 6 7 8 9 10 11"),
            None
        );
    }

    /// Our own stat line parses and names us.
    #[test]
    fn parses_own_proc_entry() {
        let text = std::fs::read_to_string("/proc/self/stat").expect("procfs");
        let p = parse_stat(&text).expect("parses");
        assert_eq!(p.pid, std::process::id() as i32);
    }

    /// Descendants and group members are in the tree, parents first;
    /// strangers are not.
    #[test]
    fn tree_is_descendants_and_group_parents_first() {
        let procs = vec![
            stat(30, 20, 10, 0), // grandchild, listed first
            stat(1, 0, 1, 0),
            stat(10, 1, 10, 0), // root
            stat(20, 10, 10, 0),
            stat(40, 1, 10, 0),  // orphan still in the group
            stat(41, 40, 41, 0), // its child in another group
            stat(50, 1, 50, 0),  // stranger
            stat(60, 10, 60, 0), // child that left the group
        ];
        let order = tree_order(10, None, &procs);
        assert_eq!(order, vec![10, 20, 60, 30, 40, 41]);
        // An orphan that left the group, adopted by the agent (pid 5).
        let mut adopted = procs.clone();
        adopted.push(stat(70, 5, 70, 0));
        adopted.push(stat(71, 70, 70, 0));
        assert_eq!(
            tree_order(10, Some(5), &adopted),
            vec![10, 20, 60, 30, 40, 41, 70, 71]
        );
        assert_eq!(tree_order(10, None, &adopted), order);
    }

    /// Nothing is counted for a root that is gone and left no group.
    #[test]
    fn empty_tree() {
        assert!(tree_order(99, None, &[stat(1, 0, 1, 5)]).is_empty());
    }

    /// Ticks and pages convert to seconds and MiB.
    #[test]
    fn sums_in_units() {
        let units = Units {
            ticks_per_s: 100.0,
            page_bytes: 4096.0,
        };
        let mut a = stat(1, 0, 1, 150);
        a.cutime = 50;
        a.rss_pages = 256;
        let r = sum_tree(&[a, stat(2, 1, 1, 100)], units);
        assert!((r.cpu_time_s - 3.0).abs() < 1e-9);
        assert!((r.memory_mb - 257.0 * 4096.0 / 1048576.0).abs() < 1e-9);
        assert_eq!(r.processes, 2);
    }

    /// The counter never goes down and the percent follows its deltas,
    /// capped at the machine's cores.
    #[test]
    fn meter_is_monotone_and_capped() {
        let mut m = CpuMeter::new(2);
        assert_eq!(m.observe(1.0, 1.0), (1.0, 100.0));
        assert_eq!(m.observe(0.5, 1.0), (1.0, 0.0));
        assert_eq!(m.observe(2.5, 1.0), (2.5, 150.0));
        assert_eq!(m.observe(10.0, 1.0), (10.0, 200.0));
        assert_eq!(m.observe(f64::NAN, 1.0), (10.0, 0.0));
        assert_eq!(m.observe(11.0, 0.0), (11.0, 0.0));
        assert_eq!(m.counter(), 11.0);
    }

    /// MemTotal in KiB becomes MiB.
    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       16303912 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total_mb(text), Some(15921));
        assert_eq!(parse_mem_total_mb("MemFree: 1 kB"), None);
    }

    /// Reading our own tree finds at least this process and some memory.
    #[test]
    fn reads_own_tree() {
        let me = std::process::id() as i32;
        let r = read_tree(me, None, Units::of_this_machine()).expect("procfs");
        assert!(r.processes >= 1);
        assert!(r.memory_mb > 0.0);
    }
}
