//! Gathering requests that arrive spread out into one commit.
//!
//! A fleet does not send traffic like a benchmark: thousands of workers post
//! one at a time, a few hundred microseconds apart, so a queue taken "as is"
//! holds one or two requests, and each pays a whole transaction (its
//! statements, its commit, the thread hand-offs around them). Waiting a few
//! milliseconds for company lets those requests share one.
//!
//! Waiting is only worth it when company is coming and would not come
//! anyway. A closed loop (64 connections each waiting for its answer before
//! it sends again) brings nothing new while its requests wait, and a busy
//! queue fills while the previous commit runs. So the gatherer waits only
//! when
//! - the queue held less than [`Gather::enough`] work when it was taken (a
//!   1000-sample batch is enough on its own);
//! - the arrival rate over the last second promises at least two more
//!   requests within the window;
//! - the same rate fills less than [`Gather::natural`] requests into the
//!   queue during one store (measured): past that, commits are shared
//!   without waiting;
//! - the requests come from different clients (a caller that knows who sent
//!   them reports how often the same one came back within one batch): a
//!   client that is back before its neighbours is one waiting on its last
//!   answer, a closed loop, which every ms of waiting slows down;
//!
//! and it stops waiting at the window's end, once [`Gather::enough`] work
//! has gathered, or when no request arrived during a quiet gap.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// How a queue's requests are gathered; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    /// Longest a request waits for others.
    pub window: Duration,
    /// Work (in the caller's units) that is worth a commit of its own.
    pub enough: usize,
    /// Requests arriving during one store above which commits are shared
    /// without waiting.
    pub natural: f64,
    /// No arrival during this long ends the wait; it is also how often the
    /// waiting batch looks at its queue.
    pub quiet_gap: Duration,
}

/// Requests gathered per commit at fleet-shaped load: 10 ms keeps a request's
/// added latency far below the fleet's 100 ms target, and at 2,000 requests/s
/// gathers about twenty.
pub const FLEET: Gather = Gather {
    window: Duration::from_millis(10),
    enough: 32,
    natural: 8.0,
    quiet_gap: Duration::from_millis(3),
};

/// Requests per client in a batch below which its clients are taken to be
/// independent of each other (a fleet), not a closed loop.
const MOSTLY_DISTINCT: f64 = 1.5;

/// The telemetry batcher's gathering (Postgres; SQLite's writer gathers
/// telemetry with [`FLEET`]): without the store-time rule, which was
/// dropped while the batcher also fed SQLite's writer, whose queue made a
/// 10,000 worker fleet look busy (66% of a core against 40%). Closed loops
/// are told apart by their repeating builds.
pub const TELEMETRY: Gather = Gather {
    natural: f64::INFINITY,
    ..FLEET
};

/// What the gatherer has seen of its queue: the arrival rate of the last
/// whole second, and how long a store takes (moving average).
#[derive(Debug)]
pub struct Arrivals {
    since: Instant,
    arrivals: u64,
    per_second: f64,
    store_seconds: f64,
    /// Requests per distinct client in recent batches (moving average); 1
    /// when the caller does not know its clients.
    repeats: f64,
}

impl Arrivals {
    pub fn new() -> Arrivals {
        Arrivals {
            since: Instant::now(),
            arrivals: 0,
            per_second: 0.0,
            store_seconds: 0.0,
            repeats: 1.0,
        }
    }

    fn record(&mut self, arrivals: usize, now: Instant) {
        self.arrivals += arrivals as u64;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= Duration::from_secs(1) {
            self.per_second = self.arrivals as f64 / elapsed.as_secs_f64();
            self.since = now;
            self.arrivals = 0;
        }
    }

    /// Reports how long one store (a commit of what was taken) took.
    pub fn stored(&mut self, took: Duration) {
        ease(&mut self.store_seconds, took.as_secs_f64());
    }

    /// Reports how many requests a batch held and from how many clients.
    pub fn clients(&mut self, requests: usize, clients: usize) {
        if requests > 0 && clients > 0 {
            ease(&mut self.repeats, requests as f64 / clients as f64);
        }
    }
}

/// Moves a moving average a tenth of the way to `value`.
fn ease(average: &mut f64, value: f64) {
    const WEIGHT: f64 = 0.1;
    *average += WEIGHT * (value - *average);
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals::new()
    }
}

impl Gather {
    /// Whether a queue taken with `work` should wait for company.
    pub fn worth_waiting(&self, work: usize, seen: &Arrivals) -> bool {
        work < self.enough
            && seen.per_second * self.window.as_secs_f64() >= 2.0
            && seen.per_second * seen.store_seconds < self.natural
            && seen.repeats < MOSTLY_DISTINCT
    }

    /// Takes the next requests into `batch`, at most `limit`. Returns false
    /// once the queue is closed and drained.
    ///
    /// Takes at least one request (waiting for it), then, when
    /// [`Gather::worth_waiting`], more as they come, until their `work`
    /// adds up to [`Gather::enough`].
    pub async fn take<T>(
        &self,
        queue: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        limit: usize,
        seen: &mut Arrivals,
        work: impl Fn(&T) -> usize,
    ) -> bool {
        if queue.recv_many(batch, limit).await == 0 {
            return false;
        }
        let mut round = Round::start(self, batch, seen, &work);
        while let Some(until) = round.next_look(self, batch.len(), limit) {
            tokio::time::sleep_until(until).await;
            if !round.look(queue, batch, limit, seen, &work) {
                break;
            }
        }
        true
    }

    /// [`Gather::take`] for a thread of its own, outside the runtime: it
    /// blocks that thread while it waits.
    pub fn take_blocking<T>(
        &self,
        queue: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        limit: usize,
        seen: &mut Arrivals,
        work: impl Fn(&T) -> usize,
    ) -> bool {
        let Some(first) = queue.blocking_recv() else {
            return false;
        };
        batch.push(first);
        drain(queue, batch, limit, &work);
        let mut round = Round::start(self, batch, seen, &work);
        while let Some(until) = round.next_look(self, batch.len(), limit) {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            if !round.look(queue, batch, limit, seen, &work) {
                break;
            }
        }
        true
    }
}

/// Moves queued requests into `batch` up to `limit`; returns their work.
fn drain<T>(
    queue: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    limit: usize,
    work: impl Fn(&T) -> usize,
) -> usize {
    let mut gathered = 0;
    while batch.len() < limit {
        match queue.try_recv() {
            Ok(item) => {
                gathered += work(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    gathered
}

/// One batch's wait for company, once its first requests are taken.
struct Round {
    deadline: Instant,
    gathered: usize,
    waiting: bool,
}

impl Round {
    fn start<T>(
        gather: &Gather,
        batch: &[T],
        seen: &mut Arrivals,
        work: impl Fn(&T) -> usize,
    ) -> Round {
        let start = Instant::now();
        seen.record(batch.len(), start);
        let gathered = batch.iter().map(work).sum();
        Round {
            deadline: start + gather.window,
            gathered,
            waiting: gather.worth_waiting(gathered, seen),
        }
    }

    /// When to look at the queue next; None once the batch should go.
    ///
    /// The wait looks at the queue once per quiet gap instead of being
    /// woken by every arrival: at fleet rates those wake-ups (a parked
    /// thread each) cost more than the requests' own work.
    fn next_look(&self, gather: &Gather, taken: usize, limit: usize) -> Option<Instant> {
        let now = Instant::now();
        (self.waiting && self.gathered < gather.enough && taken < limit && now < self.deadline)
            .then(|| self.deadline.min(now + gather.quiet_gap))
    }

    /// Takes what arrived since the last look; false when nothing did.
    fn look<T>(
        &mut self,
        queue: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        limit: usize,
        seen: &mut Arrivals,
        work: impl Fn(&T) -> usize,
    ) -> bool {
        let before = batch.len();
        self.gathered += drain(queue, batch, limit, work);
        seen.record(batch.len() - before, Instant::now());
        batch.len() > before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(per_second: f64, store: Duration) -> Arrivals {
        Arrivals {
            since: Instant::now(),
            arrivals: 0,
            per_second,
            store_seconds: store.as_secs_f64(),
            repeats: 1.0,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_only_for_company_that_would_not_come_anyway() {
        // A fleet: 2,000/s, 1 ms stores: 20 expected in 10 ms, 2 per store.
        assert!(FLEET.worth_waiting(1, &seen(2_000.0, MS)));
        // Enough work already (a 1000-sample batch).
        assert!(!FLEET.worth_waiting(32, &seen(2_000.0, MS)));
        // One lonely worker should not wait for nobody.
        assert!(!FLEET.worth_waiting(1, &seen(10.0, MS)));
        // A closed loop of 64 connections: 14,000/s, 4 ms stores: 56 arrive
        // during each store, so commits are shared without waiting.
        assert!(!FLEET.worth_waiting(3, &seen(14_000.0, 4 * MS)));
        // A closed loop of 64 connections on 8 builds, with short stores:
        // each build is back eight times per batch.
        let mut closed = seen(12_000.0, Duration::from_micros(300));
        assert!(FLEET.worth_waiting(3, &closed));
        for _ in 0..30 {
            closed.clients(64, 8);
        }
        assert!(!FLEET.worth_waiting(3, &closed));
    }

    #[test]
    fn the_store_time_is_a_moving_average() {
        let mut seen = seen(0.0, Duration::ZERO);
        for _ in 0..100 {
            seen.stored(4 * MS);
        }
        assert!((seen.store_seconds - 0.004).abs() < 0.0001);
    }

    async fn take_all(queue: &mut mpsc::Receiver<usize>, seen: &mut Arrivals) -> Vec<usize> {
        let mut batch = Vec::new();
        assert!(FLEET.take(queue, &mut batch, 64, seen, |_| 1).await);
        batch
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_out_stream_shares_one_take() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut seen = seen(2_000.0, MS);
        tokio::spawn(async move {
            for i in 0..10 {
                let _ = sender.send(i).await;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        });
        assert_eq!(
            take_all(&mut queue, &mut seen).await,
            (0..10).collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_gap_ends_the_wait() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut seen = seen(2_000.0, MS);
        sender.send(1).await.expect("send");
        let started = Instant::now();
        assert_eq!(take_all(&mut queue, &mut seen).await, vec![1]);
        assert!(started.elapsed() <= FLEET.quiet_gap + MS);
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn enough_work_does_not_wait() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut seen = seen(2_000.0, MS);
        sender.send(7).await.expect("send");
        let started = Instant::now();
        let mut batch = Vec::new();
        let work = |item: &usize| if *item == 7 { FLEET.enough } else { 1 };
        assert!(
            FLEET
                .take(&mut queue, &mut batch, 64, &mut seen, work)
                .await
        );
        assert_eq!(batch, vec![7]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(sender);
    }

    /// The blocking take (the SQLite writer's thread) shares the round's
    /// rules with the async one above; what is its own: it takes what is
    /// queued up to the limit, and reports a closed, drained queue.
    #[test]
    fn the_blocking_take_drains_up_to_the_limit_then_sees_the_end() {
        let (sender, mut queue) = mpsc::channel(64);
        for i in 0..5 {
            sender.try_send(i).expect("room");
        }
        drop(sender);
        // Nobody else is coming: one lonely stream does not wait.
        let mut seen = seen(10.0, MS);
        let mut batch = Vec::new();
        assert!(FLEET.take_blocking(&mut queue, &mut batch, 3, &mut seen, |_| 1));
        assert_eq!(batch, vec![0, 1, 2]);
        batch.clear();
        assert!(FLEET.take_blocking(&mut queue, &mut batch, 3, &mut seen, |_| 1));
        assert_eq!(batch, vec![3, 4]);
        batch.clear();
        assert!(!FLEET.take_blocking(&mut queue, &mut batch, 3, &mut seen, |_| 1));
        assert!(batch.is_empty());
    }
}
