//! Builds cancelled while a worker held them, kept in memory for the
//! heartbeats' `cancelled` lists.
//!
//! Every heartbeat asks for its worker's recent cancellations, and at fleet
//! rates a read per heartbeat (a round trip to a read connection's thread)
//! was a sizeable share of the controller's wake-ups. One controller serves
//! a SQLite file and every cancellation goes through its writer, so once it
//! has read the cancellations from before it started, its memory knows
//! them all.

use std::collections::HashMap;
use std::sync::Mutex;

/// A cancelled build: its id and when it was cancelled, ms.
type Cancelled = (i64, i64);

#[derive(Default)]
pub(super) struct Cancellations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Whether the cancellations stored before this controller started
    /// have been read.
    loaded: bool,
    /// The latest `since` asked for: nothing older is asked for again.
    horizon: i64,
    by_worker: HashMap<i64, Vec<Cancelled>>,
}

impl State {
    fn add(&mut self, worker_id: i64, build_id: i64, at: i64) {
        let builds = self.by_worker.entry(worker_id).or_default();
        if !builds.iter().any(|&(id, _)| id == build_id) {
            builds.push((build_id, at));
        }
    }
}

impl Cancellations {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `build_id`, held by `worker_id`, was cancelled at `at`
    /// (once its transaction committed).
    pub fn record(&self, worker_id: i64, build_id: i64, at: i64) {
        let mut state = self.state();
        let horizon = state.horizon;
        state.by_worker.retain(|_, builds| {
            builds.retain(|&(_, at)| at >= horizon);
            !builds.is_empty()
        });
        state.add(worker_id, build_id, at);
    }

    /// The builds of `worker_id` cancelled at `since` or later, by id; None
    /// until [`Cancellations::load`] ran.
    pub fn of(&self, worker_id: i64, since: i64) -> Option<Vec<i64>> {
        let mut state = self.state();
        if !state.loaded {
            return None;
        }
        state.horizon = state.horizon.max(since);
        let mut ids: Vec<i64> = state
            .by_worker
            .get(&worker_id)
            .into_iter()
            .flatten()
            .filter(|&&(_, at)| at >= since)
            .map(|&(id, _)| id)
            .collect();
        ids.sort_unstable();
        Some(ids)
    }

    /// Adds the stored cancellations `(worker, build, at)` of every worker
    /// since some time, read once, and answers from memory from then on.
    pub fn load(&self, stored: Vec<(i64, i64, i64)>) {
        let mut state = self.state();
        for (worker_id, build_id, at) in stored {
            state.add(worker_id, build_id, at);
        }
        state.loaded = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_once_loaded_and_by_worker_and_time() {
        let cancellations = Cancellations::default();
        cancellations.record(1, 10, 1_000);
        assert_eq!(cancellations.of(1, 0), None, "not loaded yet");
        // A build recorded before the load and read by it counts once.
        cancellations.load(vec![(1, 10, 1_000), (1, 7, 500), (2, 20, 900)]);
        assert_eq!(cancellations.of(1, 0), Some(vec![7, 10]));
        assert_eq!(cancellations.of(1, 600), Some(vec![10]));
        assert_eq!(cancellations.of(2, 600), Some(vec![20]));
        assert_eq!(cancellations.of(3, 0), Some(vec![]));
    }

    #[test]
    fn cancellations_older_than_every_question_are_dropped() {
        let cancellations = Cancellations::default();
        cancellations.load(vec![(1, 10, 1_000), (2, 20, 5_000)]);
        assert_eq!(cancellations.of(2, 2_000), Some(vec![20]));
        cancellations.record(3, 30, 6_000);
        let state = cancellations.state();
        assert!(!state.by_worker.contains_key(&1), "older than 2,000");
        assert_eq!(state.by_worker.len(), 2);
    }
}
