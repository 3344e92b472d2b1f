//! Getting samples to the controller: a bounded buffer (oldest dropped first,
//! and counted), batched posts, exponential backoff with jitter, a circuit
//! breaker that half-opens after a cool-down, `Retry-After` on 429, and no
//! retry of other 4xx answers.
//!
//! Every sample carries its `seq`, the controller's idempotency key, so a
//! batch resent after a lost answer is counted as duplicates, never twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::{CallError, Client, TelemetryOutcome};
use crate::wire::Snapshot;

// Most samples in one post: the controller's limit.
pub use crate::wire::MAX_BATCH;

/// Delivery settings.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryConfig {
    /// Most unsent samples kept; past it the oldest are dropped.
    pub buffer_samples: usize,
    /// Most samples per post, 1..=1000.
    pub batch_samples: usize,
    /// First retry delay; doubles per failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before its single probe.
    pub breaker_cooldown: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            buffer_samples: 10_000,
            batch_samples: MAX_BATCH,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// Unsent samples, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct SampleBuffer {
    samples: VecDeque<Snapshot>,
    capacity: usize,
    dropped: u64,
}

impl SampleBuffer {
    /// An empty buffer holding at most `capacity` (at least 1) samples.
    pub fn new(capacity: usize) -> Self {
        SampleBuffer {
            samples: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Adds a sample; returns true when the oldest had to be dropped.
    pub fn push(&mut self, sample: Snapshot) -> bool {
        let full = self.samples.len() >= self.capacity;
        if full {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(sample);
        full
    }

    /// Removes and returns up to `max` of the oldest samples.
    pub fn take(&mut self, max: usize) -> Vec<Snapshot> {
        let n = max.min(self.samples.len());
        self.samples.drain(..n).collect()
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No sample waiting.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples dropped because the buffer was full, ever.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The delay before retry number `failures` (1 for the first failure):
/// `base * 2^(failures-1)` capped at `max`, then scaled by `jitter` in
/// `0.5..=1.0` so that workers cut off together do not return together.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(max);
    raw.mul_f64(jitter.clamp(0.5, 1.0))
}

/// What the breaker lets a sender do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Send (closed, or the half-open probe).
    Send,
    /// Wait this long before asking again.
    Wait(Duration),
}

/// A state change worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Closed -> open after the threshold of consecutive failures.
    Opened,
    /// The half-open probe failed: open again for another cool-down.
    ProbeFailed,
    /// The probe (or any send while not closed) succeeded.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

/// A circuit breaker: opens after `threshold` consecutive failures, lets a
/// single probe through after `cooldown`, closes when a send succeeds.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: BreakerState,
    failures: u32,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            threshold: threshold.max(1),
            cooldown,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True unless closed.
    pub fn is_open(&self) -> bool {
        self.state != BreakerState::Closed
    }

    /// May a request go now? Past the cool-down an open breaker half-opens
    /// and lets exactly one probe through.
    pub fn gate(&mut self, now: Instant) -> Gate {
        match self.state {
            BreakerState::Closed => Gate::Send,
            BreakerState::HalfOpen => Gate::Send,
            BreakerState::Open { until } if now < until => Gate::Wait(until - now),
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen;
                Gate::Send
            }
        }
    }

    /// A request got an answer.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.failures = 0;
        let was_open = self.is_open();
        self.state = BreakerState::Closed;
        was_open.then_some(Transition::Closed)
    }

    /// A request failed in a way worth retrying.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open {
                    until: now + self.cooldown,
                };
                Some(Transition::ProbeFailed)
            }
            BreakerState::Closed if self.failures >= self.threshold => {
                self.state = BreakerState::Open {
                    until: now + self.cooldown,
                };
                Some(Transition::Opened)
            }
            _ => None,
        }
    }
}

/// Counts of one delivery, for logs and the simulator's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Samples handed to the delivery.
    pub queued: u64,
    /// Samples the controller stored.
    pub accepted: u64,
    /// Samples the controller already had.
    pub duplicates: u64,
    /// Samples the controller refused.
    pub rejected: u64,
    /// Samples dropped: buffer full.
    pub dropped_full: u64,
    /// Samples dropped: a 4xx answer that retrying cannot fix.
    pub dropped_refused: u64,
    /// Posts answered 429.
    pub rate_limited: u64,
    /// Posts that failed and were retried.
    pub failures: u64,
}

impl DeliveryStats {
    /// Samples acknowledged (stored or already there).
    pub fn acknowledged(&self) -> u64 {
        self.accepted + self.duplicates
    }

    /// Adds another delivery's counts.
    pub fn add(&mut self, other: &DeliveryStats) {
        self.queued += other.queued;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.dropped_full += other.dropped_full;
        self.dropped_refused += other.dropped_refused;
        self.rate_limited += other.rate_limited;
        self.failures += other.failures;
    }
}

#[derive(Debug)]
struct State {
    buffer: SampleBuffer,
    /// The batch being sent (taken from the buffer, not yet answered).
    in_flight: usize,
    closed: bool,
    stats: DeliveryStats,
    /// A telemetry answer said the build was cancelled.
    build_cancelled: bool,
    /// The circuit breaker is open: sends are paused.
    breaker_open: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sender: samples arrived or the delivery was closed.
    wake: Notify,
    /// Wakes flushers: the buffer drained.
    drained: Notify,
    /// Wakes [`Delivery::cancelled`]: an answer said the build was cancelled.
    cancelled: Notify,
}

/// The samples of one build on their way to the controller: `push` from the
/// sampler; a background task sends them.
#[derive(Clone, Debug)]
pub struct Delivery {
    shared: Arc<Shared>,
    build: i64,
}

impl Delivery {
    /// Starts delivering build `build`'s samples through `client`.
    pub fn start(
        client: Client,
        build: i64,
        config: DeliveryConfig,
    ) -> (Self, tokio::task::JoinHandle<DeliveryStats>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: SampleBuffer::new(config.buffer_samples),
                in_flight: 0,
                closed: false,
                stats: DeliveryStats::default(),
                build_cancelled: false,
                breaker_open: false,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            cancelled: Notify::new(),
        });
        let delivery = Delivery { shared, build };
        let task = tokio::spawn(delivery.clone().send_loop(client, config));
        (delivery, task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves counters only; keep going.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a sample (dropping the oldest when the buffer is full).
    pub fn push(&self, sample: Snapshot) {
        let dropped = {
            let mut state = self.lock();
            state.stats.queued += 1;
            let dropped = state.buffer.push(sample);
            if dropped {
                state.stats.dropped_full += 1;
            }
            dropped.then_some(state.stats.dropped_full)
        };
        if let Some(total) = dropped {
            // Logged on powers of two so a long outage does not flood the log.
            if total.is_power_of_two() {
                tracing::warn!(
                    build_id = self.build,
                    dropped = total,
                    "sample buffer full; dropped the oldest samples"
                );
            }
        }
        self.shared.wake.notify_one();
    }

    /// Resolves once a telemetry answer said the build reads `cancelled`.
    pub async fn cancelled(&self) {
        loop {
            let cancelled = self.shared.cancelled.notified();
            tokio::pin!(cancelled);
            cancelled.as_mut().enable();
            if self.lock().build_cancelled {
                return;
            }
            cancelled.await;
        }
    }

    /// Whether the circuit breaker is open (sends paused).
    pub fn breaker_open(&self) -> bool {
        self.lock().breaker_open
    }

    /// Samples not yet answered for.
    pub fn pending(&self) -> usize {
        let state = self.lock();
        state.buffer.len() + state.in_flight
    }

    /// Counts so far.
    pub fn stats(&self) -> DeliveryStats {
        self.lock().stats
    }

    /// No more samples will come: the task ends once the buffer is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Waits until every queued sample was answered for, at most `limit`.
    /// Returns the samples still waiting.
    pub async fn flush(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let pending = self.pending();
            if pending == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return self.pending();
            }
        }
    }

    async fn send_loop(self, client: Client, config: DeliveryConfig) -> DeliveryStats {
        let mut breaker = Breaker::new(config.breaker_threshold, config.breaker_cooldown);
        let batch_max = config.batch_samples.clamp(1, MAX_BATCH);
        let mut batch: Vec<Snapshot> = Vec::new();
        loop {
            if batch.is_empty() {
                let wake = self.shared.wake.notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                {
                    let mut state = self.lock();
                    batch = state.buffer.take(batch_max);
                    state.in_flight = batch.len();
                    if batch.is_empty() {
                        self.shared.drained.notify_waiters();
                        if state.closed {
                            return state.stats;
                        }
                    }
                }
                if batch.is_empty() {
                    wake.await;
                    continue;
                }
            }
            if let Gate::Wait(wait) = breaker.gate(Instant::now()) {
                tokio::time::sleep(wait).await;
                continue;
            }
            let first_seq = batch.first().map(|s| s.seq).unwrap_or(0);
            let last_seq = batch.last().map(|s| s.seq).unwrap_or(0);
            match client.telemetry(self.build, &batch).await {
                Ok(outcome) => {
                    self.lock().breaker_open = false;
                    if breaker.on_success() == Some(Transition::Closed) {
                        tracing::info!(
                            build_id = self.build,
                            samples = batch.len(),
                            backlog = self.pending(),
                            "circuit breaker closed; telemetry resumes"
                        );
                    }
                    let (answer, all) = match outcome {
                        TelemetryOutcome::Stored(a) => (a, false),
                        TelemetryOutcome::AllRejected(a) => (a, true),
                    };
                    if let Some(first) = answer.rejected.first() {
                        tracing::warn!(
                            build_id = self.build,
                            rejected = answer.rejected.len(),
                            all_rejected = all,
                            reason = %first.error,
                            "controller refused samples"
                        );
                    }
                    tracing::debug!(
                        build_id = self.build,
                        samples = batch.len(),
                        first_seq,
                        last_seq,
                        accepted = answer.accepted,
                        duplicates = answer.duplicates,
                        "telemetry delivered"
                    );
                    let cancelled = answer.build_status.as_deref() == Some("cancelled");
                    let mut state = self.lock();
                    if cancelled && !state.build_cancelled {
                        state.build_cancelled = true;
                        self.shared.cancelled.notify_waiters();
                    }
                    state.stats.accepted += answer.accepted;
                    state.stats.duplicates += answer.duplicates;
                    state.stats.rejected += answer.rejected.len() as u64;
                    state.in_flight = 0;
                    batch.clear();
                }
                Err(CallError::Status {
                    status,
                    retry_after,
                    ..
                }) if status == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    // The controller is alive and asked us to slow down: not
                    // a failure for the breaker.
                    breaker.on_success();
                    let wait = retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_millis(100));
                    self.lock().stats.rate_limited += 1;
                    tracing::info!(
                        build_id = self.build,
                        samples = batch.len(),
                        retry_after_ms = wait.as_millis() as u64,
                        "telemetry rate limited; waiting as asked"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) if e.is_retryable() => {
                    self.lock().stats.failures += 1;
                    let now = Instant::now();
                    let transition = breaker.on_failure(now);
                    if transition.is_some() {
                        self.lock().breaker_open = true;
                    }
                    match transition {
                        Some(Transition::Opened) => tracing::warn!(
                            build_id = self.build,
                            failures = breaker.failures(),
                            cooldown_ms = config.breaker_cooldown.as_millis() as u64,
                            error = %e,
                            "circuit breaker opened; telemetry paused"
                        ),
                        Some(Transition::ProbeFailed) => tracing::warn!(
                            build_id = self.build,
                            failures = breaker.failures(),
                            error = %e,
                            "circuit breaker probe failed; staying open"
                        ),
                        _ => {
                            let delay = backoff_delay(
                                breaker.failures(),
                                config.backoff_base,
                                config.backoff_max,
                                rand::thread_rng().gen_range(0.5..=1.0),
                            );
                            tracing::info!(
                                build_id = self.build,
                                failures = breaker.failures(),
                                delay_ms = delay.as_millis() as u64,
                                error = %e,
                                "telemetry send failed; retrying"
                            );
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                Err(e) => {
                    // 4xx other than 429: resending the same batch cannot
                    // succeed, so drop it and say why.
                    breaker.on_success();
                    tracing::warn!(
                        build_id = self.build,
                        samples = batch.len(),
                        first_seq,
                        last_seq,
                        status = e.status().map(|s| s.as_u16()).unwrap_or(0),
                        error = %e,
                        "controller refused a telemetry batch; dropped it"
                    );
                    let mut state = self.lock();
                    state.stats.dropped_refused += batch.len() as u64;
                    state.in_flight = 0;
                    batch.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: i64) -> Snapshot {
        Snapshot {
            seq,
            sampled_at: 0,
            cpu_percent: 0.0,
            memory_mb: 0.0,
            cpu_time_s: None,
            interval_s: 5,
        }
    }

    /// A full buffer drops the oldest sample and counts it.
    #[test]
    fn buffer_drops_oldest_and_counts() {
        let mut b = SampleBuffer::new(3);
        for seq in 1..=5 {
            b.push(sample(seq));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped(), 2);
        let taken: Vec<i64> = b.take(2).iter().map(|s| s.seq).collect();
        assert_eq!(taken, vec![3, 4]);
        assert_eq!(b.take(10).len(), 1);
        assert!(b.is_empty());
    }

    /// Delays double per failure, stop at the cap, and jitter only shortens.
    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff_delay(1, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(2, base, max, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(4, base, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(10, base, max, 1.0), max);
        assert_eq!(backoff_delay(1000, base, max, 1.0), max);
        assert_eq!(backoff_delay(2, base, max, 0.5), Duration::from_millis(100));
        assert_eq!(backoff_delay(2, base, max, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(0, base, max, 1.0), base);
    }

    /// Five failures open the breaker; it waits the cool-down, lets one probe
    /// through, reopens if that fails and closes when one succeeds.
    #[test]
    fn breaker_opens_probes_and_closes() {
        let cooldown = Duration::from_secs(10);
        let mut b = Breaker::new(5, cooldown);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(b.on_failure(t0), None);
            assert_eq!(b.gate(t0), Gate::Send);
        }
        assert_eq!(b.on_failure(t0), Some(Transition::Opened));
        assert!(b.is_open());
        assert_eq!(b.gate(t0), Gate::Wait(cooldown));
        assert_eq!(
            b.gate(t0 + Duration::from_secs(4)),
            Gate::Wait(Duration::from_secs(6))
        );
        let t1 = t0 + cooldown;
        assert_eq!(b.gate(t1), Gate::Send, "probe after the cool-down");
        assert_eq!(b.on_failure(t1), Some(Transition::ProbeFailed));
        assert_eq!(b.gate(t1), Gate::Wait(cooldown));
        let t2 = t1 + cooldown;
        assert_eq!(b.gate(t2), Gate::Send);
        assert_eq!(b.on_success(), Some(Transition::Closed));
        assert!(!b.is_open());
        assert_eq!(b.failures(), 0);
        assert_eq!(b.on_success(), None, "closing is reported once");
    }

    /// A success resets the count of consecutive failures.
    #[test]
    fn breaker_needs_consecutive_failures() {
        let mut b = Breaker::new(5, Duration::from_secs(1));
        let t = Instant::now();
        for _ in 0..4 {
            b.on_failure(t);
        }
        b.on_success();
        for _ in 0..4 {
            assert_eq!(b.on_failure(t), None);
        }
        assert!(!b.is_open());
    }

    /// Retryable means no answer, 5xx, 408 or 429; other 4xx are final.
    #[test]
    fn which_errors_are_retried() {
        let status = |code: u16| CallError::Status {
            status: reqwest::StatusCode::from_u16(code).expect("valid"),
            message: String::new(),
            retry_after: None,
        };
        for code in [500, 502, 503, 408, 429] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 415, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
    }

    /// A client of a loopback port where nothing listens.
    fn unreachable_client() -> Client {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let controllers =
            super::super::client::Controllers::new([format!("http://127.0.0.1:{port}")])
                .expect("one controller");
        Client::new(controllers, "t", Default::default()).expect("client")
    }

    /// Against a port where nothing listens, samples are kept (not dropped),
    /// flush gives up at its limit, and the breaker opens.
    #[tokio::test]
    async fn unreachable_controller_keeps_samples() {
        let client = unreachable_client();
        let config = DeliveryConfig {
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            breaker_cooldown: Duration::from_secs(60),
            ..DeliveryConfig::default()
        };
        let (delivery, task) = Delivery::start(client, 1, config);
        for seq in 1..=3 {
            delivery.push(sample(seq));
        }
        assert_eq!(delivery.flush(Duration::from_millis(500)).await, 3);
        let stats = delivery.stats();
        assert_eq!(stats.queued, 3);
        assert_eq!(stats.failures, 5, "stops trying once the breaker opened");
        assert_eq!(stats.dropped_full + stats.dropped_refused, 0);
        task.abort();
    }

    /// While the controller is away a full buffer drops its oldest samples
    /// and counts them; what is kept is the newest.
    #[tokio::test]
    async fn full_buffer_counts_drops() {
        let client = unreachable_client();
        let config = DeliveryConfig {
            buffer_samples: 3,
            batch_samples: 2,
            breaker_cooldown: Duration::from_secs(60),
            ..DeliveryConfig::default()
        };
        let (delivery, task) = Delivery::start(client, 1, config);
        delivery.push(sample(1));
        // Let the sender take its first batch (seq 1) into flight.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for seq in 2..=10 {
            delivery.push(sample(seq));
        }
        let stats = delivery.stats();
        assert_eq!(stats.queued, 10);
        assert_eq!(stats.dropped_full, 6, "9 pushed into a buffer of 3");
        assert_eq!(delivery.pending(), 4, "3 buffered and 1 in flight");
        task.abort();
    }
}
