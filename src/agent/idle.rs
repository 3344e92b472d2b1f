//! `--only-when-idle`: the machine's own load, leaving out the agent and its
//! builds, over a rolling window (a minute unless a test shortens it).
//!
//! The machine's busy time comes from the first line of `/proc/stat` (all
//! CPUs, clock ticks). The agent's share is its own user + system time plus,
//! while a build runs, the build's process tree as the sampler reads it
//! (children it reaped included). When the agent reaps a build, the build's
//! time moves from the tree into the agent's `cutime`/`cstime`, so "agent
//! with its reaped children + live tree" is one counter that only grows:
//! that is the figure subtracted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::sampler::{self, Units};
use crate::cache::lock;

/// The window `--only-when-idle` looks back over, unless `--idle-window`
/// (hidden, for tests) shortens it.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// "Under one busy core", with a margin: a process that keeps one core busy
/// reads 0.97 to 1.0 core from `/proc/stat`'s ticks (less when the agent's
/// own ticks, subtracted, preempted it), so a threshold of exactly 1.0 would
/// let such a machine pass for idle now and then.
pub const IDLE_BELOW_CORES: f64 = 0.9;

/// How often the load is read for a window: a twelfth of it, between a
/// quarter second and five seconds (five for the default minute).
pub fn step_for(window: Duration) -> Duration {
    (window / 12).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Busy clock ticks of all CPUs from the text of `/proc/stat`: user, nice,
/// system, irq and softirq. Idle and iowait are not load; steal is time the
/// hypervisor gave to other machines; guest time is already in user.
pub fn parse_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq ...
    let at = |i: usize| fields.get(i).copied();
    Some(at(0)? + at(1)? + at(2)? + at(5).unwrap_or(0) + at(6).unwrap_or(0))
}

/// One reading: when (since the meter started), the machine's busy ticks,
/// the agent's and its builds' ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Time since the meter started.
    pub at: Duration,
    /// Busy ticks of the whole machine.
    pub machine_ticks: u64,
    /// Ticks of the agent and its builds.
    pub own_ticks: u64,
}

/// Readings over the last window, and the verdict.
#[derive(Clone, Debug)]
pub struct IdleWindow {
    window: Duration,
    ticks_per_s: f64,
    readings: VecDeque<Reading>,
}

impl IdleWindow {
    /// An empty window of `window` length on a machine counting
    /// `ticks_per_s` ticks a second.
    pub fn new(window: Duration, ticks_per_s: f64) -> Self {
        IdleWindow {
            window,
            ticks_per_s,
            readings: VecDeque::new(),
        }
    }

    /// Adds a reading (in time order) and forgets those no longer needed:
    /// the oldest kept is the newest one at least a window old, so the span
    /// always covers the window once there is enough history.
    pub fn push(&mut self, reading: Reading) {
        self.readings.push_back(reading);
        while self.readings.len() > 2
            && reading.at.saturating_sub(self.readings[1].at) >= self.window
        {
            self.readings.pop_front();
        }
    }

    /// The machine's own load over the window, in cores; `None` until the
    /// readings span a whole window (an agent that just started knows
    /// nothing of the last minute).
    pub fn foreign_cores(&self) -> Option<f64> {
        let (first, last) = (self.readings.front()?, self.readings.back()?);
        let span = last.at.checked_sub(first.at)?;
        if span < self.window || span.is_zero() {
            return None;
        }
        let machine = last.machine_ticks.saturating_sub(first.machine_ticks) as f64;
        let own = last.own_ticks.saturating_sub(first.own_ticks) as f64;
        // The two counters are read a moment apart and rounded differently
        // by the kernel: a foreign load a hair below zero is none.
        Some(((machine - own) / self.ticks_per_s / span.as_secs_f64()).max(0.0))
    }

    /// Whether a build may be claimed now.
    pub fn is_idle(&self) -> bool {
        self.foreign_cores()
            .is_some_and(|cores| cores < IDLE_BELOW_CORES)
    }
}

/// What the runner learns from the meter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Not a whole window read yet.
    Learning,
    /// The machine's own load over the window, in cores, and whether it is
    /// under the threshold.
    Load { cores: f64, idle: bool },
}

/// The running build's root pid, which the meter leaves out. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct OwnBuild {
    pid: Arc<Mutex<Option<i32>>>,
}

impl OwnBuild {
    /// The build now running (its process group leader), or none.
    pub fn set(&self, pid: Option<i32>) {
        *lock(&self.pid) = pid;
    }

    fn get(&self) -> Option<i32> {
        *lock(&self.pid)
    }
}

/// The agent's own user + system time and that of the children it reaped.
fn agent_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    sampler::parse_stat(&text).map(|s| s.total_ticks())
}

/// One reading from `/proc`. Blocking.
fn read(at: Duration, build: Option<i32>, adopter: Option<i32>, units: Units) -> Option<Reading> {
    // The agent first, then the tree: a build reaped in between is then
    // missed once (and found in the agent's figure next time) rather than
    // counted twice.
    let agent = agent_ticks()?;
    let tree = match build {
        Some(pid) => sampler::read_tree(pid, adopter, units).ok()?.cpu_time_s,
        None => 0.0,
    };
    let machine = parse_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
    Some(Reading {
        at,
        machine_ticks: machine,
        own_ticks: agent + (tree * units.ticks_per_s).round() as u64,
    })
}

/// Reads the load every step of `window` and publishes the verdict until
/// the receivers are gone.
pub fn start(
    window: Duration,
    build: OwnBuild,
    adopter: Option<i32>,
    units: Units,
) -> watch::Receiver<Verdict> {
    let (tx, rx) = watch::channel(Verdict::Learning);
    let step = step_for(window);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut meter = IdleWindow::new(window, units.ticks_per_s);
        let mut ticks = tokio::time::interval(step);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreadable = false;
        loop {
            ticks.tick().await;
            let at = started.elapsed();
            let pid = build.get();
            let reading = tokio::task::spawn_blocking(move || read(at, pid, adopter, units))
                .await
                .ok()
                .flatten();
            match reading {
                Some(reading) => meter.push(reading),
                None if !unreadable => {
                    // Without a reading the verdict stays as it was: a
                    // machine never read is never idle.
                    unreadable = true;
                    tracing::warn!("could not read the machine's load from /proc");
                }
                None => {}
            }
            let verdict = match meter.foreign_cores() {
                None => Verdict::Learning,
                Some(cores) => Verdict::Load {
                    cores,
                    idle: cores < IDLE_BELOW_CORES,
                },
            };
            if tx.send(verdict).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64, machine: u64, own: u64) -> Reading {
        Reading {
            at: Duration::from_secs(s),
            machine_ticks: machine,
            own_ticks: own,
        }
    }

    /// Busy ticks are user + nice + system + irq + softirq of the `cpu` line.
    #[test]
    fn busy_ticks_from_proc_stat() {
        let text =
            "cpu  253045 60494 93320 143622 4721 0 8868 321 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_busy_ticks(text), Some(253045 + 60494 + 93320 + 8868));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(parse_busy_ticks("cpu  1 x 3 4\n"), None);
    }

    /// No verdict before a whole window; then the machine's load minus the
    /// agent's and its builds', over the window, in cores.
    #[test]
    fn load_leaves_out_the_agents_own_time() {
        let mut w = IdleWindow::new(Duration::from_secs(60), 100.0);
        w.push(at(0, 0, 0));
        w.push(at(30, 6_000, 3_000));
        assert_eq!(w.foreign_cores(), None, "half a window");
        assert!(!w.is_idle(), "unknown is not idle");
        // Two cores busy for a minute, one of them the agent's build.
        w.push(at(60, 12_000, 6_000));
        assert_eq!(w.foreign_cores(), Some(1.0));
        assert!(!w.is_idle());
        // The build alone kept the machine busy: nothing foreign.
        let mut w = IdleWindow::new(Duration::from_secs(60), 100.0);
        w.push(at(0, 1_000, 500));
        w.push(at(60, 13_000, 12_500));
        assert_eq!(w.foreign_cores(), Some(0.0));
        assert!(w.is_idle());
        // Own ticks read a hair above the machine's: none, not negative.
        w.push(at(65, 13_100, 12_700));
        assert_eq!(w.foreign_cores(), Some(0.0));
    }

    /// The window rolls: a busy minute followed by idle seconds stays busy
    /// until the busy stretch has left the window.
    #[test]
    fn window_rolls_off_old_load() {
        let mut w = IdleWindow::new(Duration::from_secs(60), 100.0);
        // One core busy (100 ticks a second) for 60 s, read every 5 s.
        for s in (0..=60).step_by(5) {
            w.push(at(s, s * 100, 0));
        }
        assert_eq!(w.foreign_cores(), Some(1.0));
        // Then idle: after 10 s the minute holds 50 busy seconds.
        let busy_end = 6_000;
        for s in (65..=70).step_by(5) {
            w.push(at(s, busy_end, 0));
        }
        let cores = w.foreign_cores().expect("a whole window");
        assert!((cores - 50.0 / 60.0).abs() < 1e-9, "{cores}");
        assert!(w.is_idle(), "50/60 of a core is under the threshold");
        assert!(w.readings.len() <= 14, "old readings are dropped");
        // The span stays at least a window long.
        let span = w.readings.back().unwrap().at - w.readings.front().unwrap().at;
        assert!(span >= Duration::from_secs(60), "{span:?}");
    }

    /// A minute sampled every 5 s; short test windows every quarter second
    /// at the least.
    #[test]
    fn steps_follow_the_window() {
        assert_eq!(step_for(DEFAULT_WINDOW), Duration::from_secs(5));
        assert_eq!(step_for(Duration::from_secs(6)), Duration::from_millis(500));
        assert_eq!(step_for(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(step_for(Duration::from_secs(600)), Duration::from_secs(5));
    }
}
