//! Gathering requests that arrive spread out into one commit.
//!
//! A fleet does not send traffic like a benchmark: thousands of workers post
//! one at a time, a few hundred microseconds apart, so a queue taken "as is"
//! holds one or two requests, and each pays a whole transaction (its
//! statements, its commit, the thread hand-offs around them). Waiting a few
//! milliseconds for company lets those requests share one.
//!
//! Waiting is only worth it when company is coming. A closed loop (64
//! connections each waiting for its answer before it sends again) brings
//! nothing new while its requests wait, so a fixed window would only slow it
//! down. So the gatherer waits only when
//! - the queue held fewer than [`Gather::enough`] requests when it was taken
//!   (a busy queue already shares its commits);
//! - the arrival rate over the last second promises at least two more
//!   requests within the window;
//!
//! and it stops waiting at the window's end, once [`Gather::enough`] have
//! gathered, or when no request arrived during a quiet gap (the closed
//! loop's burst is over).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// How a queue's requests are gathered; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    /// Longest a request waits for others.
    pub window: Duration,
    /// Requests that are worth a commit of their own.
    pub enough: usize,
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
    quiet_gap: Duration::from_millis(3),
};

/// Counts arrivals to estimate the rate of the last whole second.
#[derive(Debug)]
pub struct ArrivalRate {
    since: Instant,
    arrivals: u64,
    per_second: f64,
}

impl ArrivalRate {
    pub fn new() -> ArrivalRate {
        ArrivalRate {
            since: Instant::now(),
            arrivals: 0,
            per_second: 0.0,
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

    /// Arrivals per second over the last whole second (or more) measured.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

impl Default for ArrivalRate {
    fn default() -> Self {
        ArrivalRate::new()
    }
}

impl Gather {
    /// Whether a queue that held `taken` requests should wait for company.
    pub fn worth_waiting(&self, taken: usize, rate: &ArrivalRate) -> bool {
        taken < self.enough && rate.per_second() * self.window.as_secs_f64() >= 2.0
    }

    /// Waits for the next requests until `batch` holds `limit` (or more).
    /// Returns false once the queue is closed and drained.
    ///
    /// Takes at least one request (waiting for it), then, when
    /// [`Gather::worth_waiting`], more as they come, while `keep_waiting`
    /// says the batch so far may wait (a job that was itself gathered
    /// elsewhere should not wait twice).
    pub async fn take<T>(
        &self,
        queue: &mut mpsc::Receiver<T>,
        batch: &mut Vec<T>,
        limit: usize,
        rate: &mut ArrivalRate,
        keep_waiting: impl Fn(&[T]) -> bool,
    ) -> bool {
        if queue.recv_many(batch, limit).await == 0 {
            return false;
        }
        let start = Instant::now();
        rate.record(batch.len(), start);
        if !self.worth_waiting(batch.len(), rate) || !keep_waiting(batch) {
            return true;
        }
        // The wait looks at the queue once per quiet gap instead of being
        // woken by every arrival: at fleet rates those wake-ups (a parked
        // thread each) cost more than the requests' own work.
        let deadline = start + self.window;
        let limit = limit.max(1);
        while batch.len() < self.enough.min(limit) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + self.quiet_gap)).await;
            let before = batch.len();
            while batch.len() < limit {
                match queue.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let arrived = batch.len() - before;
            rate.record(arrived, Instant::now());
            if arrived == 0 || !keep_waiting(&batch[before..]) {
                break;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_rate(per_second: f64) -> ArrivalRate {
        ArrivalRate {
            since: Instant::now(),
            arrivals: 0,
            per_second,
        }
    }

    #[test]
    fn waits_only_for_company_that_is_coming() {
        // 2,000/s: 20 expected in 10 ms.
        assert!(FLEET.worth_waiting(1, &busy_rate(2_000.0)));
        // A busy queue already shares its commits.
        assert!(!FLEET.worth_waiting(32, &busy_rate(2_000.0)));
        // One lonely worker should not wait for nobody.
        assert!(!FLEET.worth_waiting(1, &busy_rate(10.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_out_stream_shares_one_take() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut rate = busy_rate(2_000.0);
        tokio::spawn(async move {
            for i in 0..10 {
                let _ = sender.send(i).await;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        });
        let mut batch = Vec::new();
        assert!(
            FLEET
                .take(&mut queue, &mut batch, 64, &mut rate, |_| true)
                .await
        );
        assert_eq!(batch, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_gap_ends_the_wait() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut rate = busy_rate(2_000.0);
        sender.send(1).await.expect("send");
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(
            FLEET
                .take(&mut queue, &mut batch, 64, &mut rate, |_| true)
                .await
        );
        assert_eq!(batch, vec![1]);
        assert!(started.elapsed() <= FLEET.quiet_gap + Duration::from_millis(1));
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_gathered_elsewhere_does_not_wait() {
        let (sender, mut queue) = mpsc::channel(64);
        let mut rate = busy_rate(2_000.0);
        sender.send(7).await.expect("send");
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(
            FLEET
                .take(&mut queue, &mut batch, 64, &mut rate, |b| !b.contains(&7))
                .await
        );
        assert_eq!(batch, vec![7]);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(sender);
    }
}
