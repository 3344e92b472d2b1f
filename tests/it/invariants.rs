//! SPEC's invariants under seeded random sequences of lifecycle calls and
//! telemetry (replays, out-of-order batches, lost samples, legacy and
//! current bodies, invalid samples mixed in, releases that requeue a build
//! as its next attempt, and late deliveries of an ended attempt's backlog).
//! After every step:
//! - every `NetworkStats` figure, every build's figures and today's daily
//!   entry equal a recomputation from the raw `builds` and `samples` rows
//!   (samples remembered as they were read before retention removed them);
//! - the stored samples are exactly the valid ones sent (nothing lost,
//!   nothing invented);
//! - totals never decrease, except when an attempt's first `cpuTimeS`
//!   replaces its percent-based estimate.
//!
//! Replays of earlier requests and purges are steps too, each checked to
//! change no figure. A failure prints the seed and step; rerun one seed with
//! `FREEAGENT_SEED=<n> cargo test --features ssr --test it invariants::`,
//! and add `FREEAGENT_TRACE=1 ... -- --nocapture` to see every step.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use freeagent::stats::NetworkStats;
use freeagent::wire::{BuildView, Snapshot};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Steps per seeded sequence.
const STEPS: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CounterMode {
    /// Never sends `cpuTimeS`.
    Never,
    /// Every sample carries `cpuTimeS`.
    Always,
    /// Samples from seq 10 on carry `cpuTimeS`.
    Later,
}

/// One run of a build: the worker that was handed it and what it sent.
#[derive(Clone, Debug)]
struct ModelAttempt {
    number: i64,
    worker: usize,
    assigned_at: i64,
    /// Sequence numbers never sent yet, in the order they will be sent.
    unsent: Vec<i64>,
    /// Whether an accepted sample of this attempt carried `cpuTimeS`.
    has_counter: bool,
    /// Whether its worker released it.
    released: bool,
}

#[derive(Clone, Debug)]
struct ModelBuild {
    id: i64,
    token: String,
    platform: &'static str,
    status: String,
    /// The worker holding the current attempt (kept once the build finished).
    worker: Option<usize>,
    attempts: Vec<ModelAttempt>,
    mode: CounterMode,
    counter_factor: f64,
    /// Outcome of the accepted `complete` (or failure by the last release).
    outcome: Option<bool>,
}

impl ModelBuild {
    /// Index of the last attempt `worker` was handed: the one its requests
    /// act on.
    fn held_by(&self, worker: usize) -> Option<usize> {
        self.attempts.iter().rposition(|a| a.worker == worker)
    }

    /// Whether attempt `k` takes telemetry from its worker: the current
    /// attempt while it runs and for the grace period (10 min, longer than
    /// a run) after the build finished or was cancelled; an attempt its
    /// worker released, for the grace period after.
    fn takes_telemetry(&self, k: usize) -> bool {
        let attempt = &self.attempts[k];
        if self.held_by(attempt.worker) != Some(k) {
            return false;
        }
        let is_current = k + 1 == self.attempts.len() && self.worker == Some(attempt.worker);
        !is_current || self.status != "pending"
    }
}

/// A request that can be replayed: path, bearer secret, JSON body, and for
/// a worker's request on a build, which attempt it acted on.
#[derive(Clone, Debug)]
struct Logged {
    path: String,
    secret: String,
    body: Option<Value>,
    /// (build index, worker, attempt index).
    held: Option<(usize, usize, usize)>,
}

struct Sim {
    app: TestApp,
    rng: StdRng,
    seed: u64,
    step: usize,
    workers: Vec<(Worker, Vec<&'static str>)>,
    builds: Vec<ModelBuild>,
    /// Samples the model expects stored, by (build, attempt, seq).
    expected: BTreeMap<SampleKey, RawSample>,
    /// Every sample row ever read from the database, by (build, attempt, seq).
    seen_rows: BTreeMap<SampleKey, RawSample>,
    log: Vec<Logged>,
    /// Keys of the samples expected when the last purge ran (they may be gone).
    purged: BTreeSet<SampleKey>,
    last: Option<NetworkStats>,
    next_invalid_seq: i64,
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let app = TestApp::builder()
            .with_args(|a| a.telemetry_rate = 100_000)
            .start()
            .await;
        let mut workers = Vec::new();
        for (platforms, cores, memory) in [
            (vec!["linux"], 4, 8192),
            (vec!["linux", "macos"], 16, 65_536),
            (vec!["macos"], 2, 4096),
        ] {
            let worker = app.register_worker(&platforms, cores, memory).await;
            workers.push((worker, platforms));
        }
        Sim {
            app,
            rng: StdRng::seed_from_u64(seed),
            seed,
            step: 0,
            workers,
            builds: Vec::new(),
            expected: BTreeMap::new(),
            seen_rows: BTreeMap::new(),
            log: Vec::new(),
            purged: BTreeSet::new(),
            last: None,
            next_invalid_seq: 1_000_000,
        }
    }

    fn context(&self, what: &str) -> String {
        format!("(seed {}, step {}: {what})", self.seed, self.step)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        items.choose(&mut self.rng).cloned()
    }

    fn builds_where(&self, keep: impl Fn(&ModelBuild) -> bool) -> Vec<usize> {
        (0..self.builds.len())
            .filter(|&i| keep(&self.builds[i]))
            .collect()
    }

    /// (build, attempt) pairs whose worker may send telemetry now.
    fn open_attempts(&self) -> Vec<(usize, usize)> {
        let mut open = Vec::new();
        for (i, build) in self.builds.iter().enumerate() {
            for k in 0..build.attempts.len() {
                if build.takes_telemetry(k) {
                    open.push((i, k));
                }
            }
        }
        open
    }

    /// Whether replaying `logged` repeats what it did: a worker's request
    /// acts on the worker's last attempt of the build, so once the worker
    /// was handed the build again, the same bytes mean something new.
    fn is_replay(&self, logged: &Logged) -> bool {
        logged
            .held
            .is_none_or(|(i, w, k)| self.builds[i].held_by(w) == Some(k))
    }

    async fn post(&self, logged: &Logged) -> (StatusCode, Value) {
        let response = match &logged.body {
            Some(body) => {
                self.app
                    .post_json(&logged.path, Some(&logged.secret), body)
                    .await
            }
            None => {
                self.app
                    .post_empty(&logged.path, Some(&logged.secret))
                    .await
            }
        };
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Runs one random step; returns what it did and whether it may lower
    /// totalCpuSeconds (a build's first counter replacing its estimate).
    async fn step(&mut self) -> (String, bool) {
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=7 => (self.submit().await, false),
            8..=18 => (self.poll().await, false),
            19..=32 => (self.transition().await, false),
            33..=35 => (self.release().await, false),
            36..=65 => self.telemetry().await,
            66..=71 => (self.legacy().await, false),
            72..=73 => (self.legacy_event().await, false),
            74..=88 => (self.replay().await, false),
            89..=90 => (self.purge().await, false),
            91..=94 => (self.wrong_worker().await, false),
            _ => (self.heartbeat().await, false),
        }
    }

    async fn submit(&mut self) -> String {
        let platform = if self.rng.gen_bool(0.6) {
            "linux"
        } else {
            "macos"
        };
        let build = self.app.submit_build(platform).await;
        let mode = match self.rng.gen_range(0..3) {
            0 => CounterMode::Never,
            1 => CounterMode::Always,
            _ => CounterMode::Later,
        };
        self.builds.push(ModelBuild {
            id: build.id,
            token: build.access_token,
            platform,
            status: "pending".into(),
            worker: None,
            attempts: Vec::new(),
            mode,
            counter_factor: self.rng.gen_range(0.05..1.0),
            outcome: None,
        });
        format!("submit {platform} build {}", build.id)
    }

    async fn poll(&mut self) -> String {
        let w = self.rng.gen_range(0..self.workers.len());
        let (worker, platforms) = self.workers[w].clone();
        let expected = self
            .builds
            .iter()
            .filter(|b| b.status == "pending" && platforms.contains(&b.platform))
            .map(|b| b.id)
            .min();
        let claimed = self.app.claim(&worker).await.map(|c| c.id);
        let context = self.context("poll");
        assert_eq!(
            claimed, expected,
            "poll claims the oldest matching build {context}"
        );
        if let Some(id) = claimed {
            let assigned_at = self.app.assigned_at(id).await;
            // Each run numbers its samples from 1. Mostly ascending, with
            // some disorder: each seq is sent up to a few places early or late.
            let mut keyed: Vec<(i64, i64)> = (1..=50)
                .map(|seq| (seq + self.rng.gen_range(0..6), seq))
                .collect();
            keyed.sort_unstable();
            let unsent = keyed.into_iter().map(|(_, seq)| seq).collect();
            let build = self.builds.iter_mut().find(|b| b.id == id).unwrap();
            build.status = "assigned".into();
            build.worker = Some(w);
            build.attempts.push(ModelAttempt {
                number: build.attempts.len() as i64 + 1,
                worker: w,
                assigned_at,
                unsent,
                has_counter: false,
                released: false,
            });
        }
        format!("worker {w} polls: {claimed:?}")
    }

    /// start, complete or cancel a random build, allowed or not.
    async fn transition(&mut self) -> String {
        // Mostly builds that a worker holds; now and then a queued one (cancel).
        let with_worker = self.rng.gen_bool(0.85);
        let candidates = self.builds_where(|b| {
            if with_worker {
                b.worker.is_some()
            } else {
                b.status == "pending"
            }
        });
        let Some(i) = self.pick(&candidates) else {
            return "no build to move".into();
        };
        let build = self.builds[i].clone();
        let action = if build.worker.is_none() {
            2
        } else {
            // Favour the transition the state leads to.
            match (build.status.as_str(), self.rng.gen_range(0..10)) {
                ("assigned", 0..=6) => 0,
                ("building", 0..=6) => 1,
                (_, roll) => roll % 3,
            }
        };
        let status = build.status.as_str();
        let (logged, expected, next) = match action {
            0 => {
                let expected = match status {
                    "assigned" | "building" => StatusCode::OK,
                    _ => StatusCode::CONFLICT,
                };
                let next = if expected == StatusCode::OK {
                    "building"
                } else {
                    status
                };
                (
                    Logged {
                        path: format!("/api/builds/{}/start", build.id),
                        secret: self.workers[build.worker.unwrap()].0.token.clone(),
                        body: None,
                        held: Some((i, build.worker.unwrap(), build.attempts.len() - 1)),
                    },
                    expected,
                    next.to_string(),
                )
            }
            1 => {
                let success = match build.outcome {
                    Some(previous) if self.rng.gen_bool(0.7) => previous,
                    _ => self.rng.gen_bool(0.7),
                };
                let (expected, next) = match (status, build.outcome) {
                    ("building", _) => {
                        (StatusCode::OK, if success { "completed" } else { "failed" })
                    }
                    ("completed" | "failed", Some(previous)) if previous == success => {
                        (StatusCode::OK, status)
                    }
                    _ => (StatusCode::CONFLICT, status),
                };
                let body = if success {
                    json!({"success": true})
                } else {
                    json!({"success": false, "error": "exit status 2"})
                };
                (
                    Logged {
                        path: format!("/api/builds/{}/complete", build.id),
                        secret: self.workers[build.worker.unwrap()].0.token.clone(),
                        body: Some(body),
                        held: Some((i, build.worker.unwrap(), build.attempts.len() - 1)),
                    },
                    expected,
                    next.to_string(),
                )
            }
            _ => {
                let (expected, next) = match status {
                    "completed" | "failed" => (StatusCode::CONFLICT, status),
                    _ => (StatusCode::OK, "cancelled"),
                };
                let secret = if self.rng.gen_bool(0.5) {
                    ADMIN_KEY.to_string()
                } else {
                    build.token.clone()
                };
                (
                    Logged {
                        path: format!("/api/builds/{}/cancel", build.id),
                        secret,
                        body: None,
                        held: None,
                    },
                    expected,
                    next.to_string(),
                )
            }
        };
        let (got, body) = self.post(&logged).await;
        let context = self.context(&format!("{} on a {status} build", logged.path));
        assert_eq!(got, expected, "{context}: {body}");
        let model = &mut self.builds[i];
        if expected == StatusCode::OK && action == 1 && status == "building" {
            model.outcome = Some(next == "completed");
        }
        model.status = next;
        // A refused request is no replay candidate: once the state allows
        // it, sending it again is a new request, not a replay.
        if got == StatusCode::OK {
            self.log.push(logged.clone());
        }
        format!("{} on a {status} build -> {got}", logged.path)
    }

    /// A worker that was handed a build gives its last attempt of it back:
    /// 200 and the next attempt (the third fails the build) while it holds
    /// the build, 200 and no change when it released that attempt before,
    /// 409 otherwise.
    async fn release(&mut self) -> String {
        let candidates = self.builds_where(|b| !b.attempts.is_empty());
        let Some(i) = self.pick(&candidates) else {
            return "no build to release".into();
        };
        let holders: Vec<usize> = self.builds[i].attempts.iter().map(|a| a.worker).collect();
        let w = self.pick(&holders).expect("an attempt has a worker");
        let build = &self.builds[i];
        let k = build.held_by(w).expect("a holder");
        let status = build.status.clone();
        let holds_now = build.worker == Some(w)
            && k + 1 == build.attempts.len()
            && matches!(status.as_str(), "assigned" | "building");
        let expected = if holds_now || build.attempts[k].released {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        let logged = Logged {
            path: format!("/api/builds/{}/release", build.id),
            secret: self.workers[w].0.token.clone(),
            body: None,
            held: Some((i, w, k)),
        };
        let (got, body) = self.post(&logged).await;
        let context = self.context(&format!("release of a {status} build by worker {w}"));
        assert_eq!(got, expected, "{context}: {body}");
        if holds_now {
            let build = &mut self.builds[i];
            build.attempts[k].released = true;
            if build.attempts.len() >= 3 {
                build.status = "failed".into();
                build.outcome = Some(false);
            } else {
                build.status = "pending".into();
                build.worker = None;
            }
            assert_eq!(body["status"], json!(build.status), "{context}");
        }
        if got == StatusCode::OK {
            self.log.push(logged);
        }
        format!("worker {w} releases a {status} build -> {got}")
    }

    fn valid_sample(
        &mut self,
        build: &ModelBuild,
        attempt: &ModelAttempt,
        worker: &Worker,
        seq: i64,
    ) -> RawSample {
        let mut sampled_at = attempt.assigned_at + seq * 1000 + self.rng.gen_range(1..999);
        if sampled_at % 1000 == 0 {
            // Legacy samples sit on whole seconds; never tie with them.
            sampled_at += 1;
        }
        let cores = f64::from(worker.cores);
        let cpu_time_s = match build.mode {
            CounterMode::Never => None,
            CounterMode::Always => Some(()),
            CounterMode::Later => (seq >= 10).then_some(()),
        }
        .map(|()| ((seq as f64) * cores * 0.9 * build.counter_factor * 1000.0).round() / 1000.0);
        RawSample {
            build_id: build.id,
            attempt: attempt.number,
            seq,
            sampled_at,
            cpu_percent: f64::from(self.rng.gen_range(0..=worker.cores * 1000)) / 10.0,
            memory_mb: self.rng.gen_range(0..=worker.memory_mb * 10) as f64 / 10.0,
            cpu_time_s,
            interval_s: if self.rng.gen_bool(0.1) {
                300
            } else {
                self.rng.gen_range(1..=10)
            },
        }
    }

    fn invalid_sample(&mut self, attempt: &ModelAttempt, worker: &Worker) -> Value {
        self.next_invalid_seq += 1;
        let seq = self.next_invalid_seq;
        let at = attempt.assigned_at + 1000;
        let good = json!({"seq": seq, "sampledAt": at, "cpuPercent": 10.0, "memoryMb": 10.0, "intervalS": 5});
        let mut bad = good.clone();
        let cores = f64::from(worker.cores);
        match self.rng.gen_range(0..11) {
            0 => bad["cpuPercent"] = json!(cores * 100.0 + 0.5),
            1 => bad["memoryMb"] = json!(worker.memory_mb as f64 + 1.0),
            2 => bad["cpuPercent"] = json!(-1.0),
            3 => bad["cpuPercent"] = json!("10"),
            4 => bad["memoryMb"] = Value::Null,
            5 => {
                bad.as_object_mut().unwrap().remove("cpuPercent");
            }
            6 => bad["cpuTimeS"] = json!(1.1 * cores + 1.0 + 5.0),
            7 => bad["intervalS"] = json!(0),
            8 => bad["sampledAt"] = json!(attempt.assigned_at - 120_000),
            // Far enough ahead that a replay later in the run stays invalid.
            9 => bad["sampledAt"] = json!(now_ms() + 3_600_000),
            _ => bad["memoryMb"] = json!(1e308),
        }
        bad
    }

    fn to_json(sample: &RawSample) -> Value {
        serde_json::to_value(Snapshot {
            seq: sample.seq,
            sampled_at: sample.sampled_at,
            cpu_percent: sample.cpu_percent,
            memory_mb: sample.memory_mb,
            cpu_time_s: sample.cpu_time_s,
            interval_s: sample.interval_s,
        })
        .unwrap()
    }

    /// A current-format batch: new samples (some lost for good), replays
    /// (some with other values), invalid samples, in random order.
    async fn telemetry(&mut self) -> (String, bool) {
        let candidates = self.open_attempts();
        let Some((i, k)) = self.pick(&candidates) else {
            return ("no build takes telemetry".into(), false);
        };
        let build = self.builds[i].clone();
        let attempt = build.attempts[k].clone();
        let worker = self.workers[attempt.worker].0.clone();
        let mut items: Vec<(Value, Option<RawSample>, bool)> = Vec::new(); // (json, valid sample, invalid)
        for _ in 0..self.rng.gen_range(0..=6) {
            let Some(seq) = self.builds[i].attempts[k].unsent.first().copied() else {
                break;
            };
            self.builds[i].attempts[k].unsent.remove(0);
            if self.rng.gen_bool(0.15) {
                continue; // lost: never sent
            }
            let sample = self.valid_sample(&build, &attempt, &worker, seq);
            items.push((Self::to_json(&sample), Some(sample.clone()), false));
            if self.rng.gen_bool(0.1) {
                items.push((Self::to_json(&sample), Some(sample), false));
            }
        }
        let sent: Vec<SampleKey> = self
            .expected
            .keys()
            .filter(|(b, a, _)| (*b, *a) == (build.id, attempt.number))
            .copied()
            .collect();
        for _ in 0..self.rng.gen_range(0..=2) {
            if let Some(key) = self.pick(&sent) {
                let sample = if self.rng.gen_bool(0.5) && key.2 <= 50 {
                    self.valid_sample(&build, &attempt, &worker, key.2)
                } else {
                    self.expected[&key].clone()
                };
                items.push((Self::to_json(&sample), Some(sample), false));
            }
        }
        if self.rng.gen_bool(0.4) {
            for _ in 0..self.rng.gen_range(1..=2) {
                items.push((self.invalid_sample(&attempt, &worker), None, true));
            }
        }
        items.shuffle(&mut self.rng);

        // What the controller must answer.
        let mut accepted = 0u64;
        let mut duplicates = 0u64;
        let mut rejected = Vec::new();
        let mut new_samples = Vec::new();
        let mut keys_now: BTreeSet<SampleKey> = sent.iter().copied().collect();
        for (index, (_, sample, invalid)) in items.iter().enumerate() {
            if *invalid {
                rejected.push(index);
            } else if let Some(sample) = sample {
                if keys_now.insert((sample.build_id, sample.attempt, sample.seq)) {
                    accepted += 1;
                    new_samples.push(sample.clone());
                } else {
                    duplicates += 1;
                }
            }
        }
        let logged = Logged {
            path: format!("/api/builds/{}/telemetry", build.id),
            secret: worker.token.clone(),
            body: Some(
                json!({"snapshots": items.iter().map(|(v, _, _)| v.clone()).collect::<Vec<_>>()}),
            ),
            held: Some((i, attempt.worker, k)),
        };
        let (status, body) = self.post(&logged).await;
        let context = self.context(&format!(
            "telemetry of {} samples to attempt {} of build {}",
            items.len(),
            attempt.number,
            build.id
        ));
        let expected_status = if !items.is_empty() && rejected.len() == items.len() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected_status, "{context}: {body}");
        assert_eq!(
            body["buildStatus"],
            json!(build.status),
            "the answer tells the build's status {context}: {body}"
        );
        assert_eq!(
            body["accepted"],
            json!(accepted),
            "accepted {context}: {body}"
        );
        assert_eq!(
            body["duplicates"],
            json!(duplicates),
            "duplicates {context}: {body}"
        );
        let got_rejected: Vec<u64> = body["rejected"]
            .as_array()
            .unwrap_or_else(|| panic!("rejected list {context}: {body}"))
            .iter()
            .map(|r| r["index"].as_u64().expect("index"))
            .collect();
        assert_eq!(
            got_rejected,
            rejected.iter().map(|&i| i as u64).collect::<Vec<_>>(),
            "rejected indexes {context}: {body}"
        );
        let first_counter =
            !attempt.has_counter && new_samples.iter().any(|s| s.cpu_time_s.is_some());
        if first_counter {
            self.builds[i].attempts[k].has_counter = true;
        }
        for sample in new_samples {
            self.expected
                .insert((sample.build_id, sample.attempt, sample.seq), sample);
        }
        self.log.push(logged);
        (
            format!(
                "telemetry {accepted} new, {duplicates} dup, {} bad -> build {} attempt {}",
                rejected.len(),
                build.id,
                attempt.number
            ),
            first_counter,
        )
    }

    /// The Swift worker's `cpu_snapshot` body; a second on an earlier
    /// second is a replay.
    async fn legacy(&mut self) -> String {
        let candidates = self.open_attempts();
        let Some((i, k)) = self.pick(&candidates) else {
            return "no build takes telemetry".into();
        };
        let build = self.builds[i].clone();
        let attempt = build.attempts[k].clone();
        let worker = self.workers[attempt.worker].0.clone();
        let seconds = now_ms() / 1000 - self.rng.gen_range(0..20);
        let cpu = f64::from(self.rng.gen_range(0..=worker.cores * 100));
        let memory = self.rng.gen_range(0..=worker.memory_mb) as f64;
        let key = (build.id, attempt.number, seconds);
        let duplicate = self.expected.contains_key(&key);
        let logged = Logged {
            path: format!("/api/builds/{}/telemetry", build.id),
            secret: worker.token.clone(),
            body: Some(legacy_cpu_body(seconds, cpu, memory)),
            held: Some((i, attempt.worker, k)),
        };
        let (status, body) = self.post(&logged).await;
        let context = self.context("legacy cpu_snapshot");
        assert_eq!(status, StatusCode::OK, "{context}: {body}");
        let (accepted, duplicates) = if duplicate { (0, 1) } else { (1, 0) };
        let expected = json!({"accepted": accepted, "duplicates": duplicates, "rejected": [],
                              "buildStatus": build.status});
        assert_eq!(body, expected, "{context}");
        if !duplicate {
            self.expected.insert(
                key,
                RawSample {
                    build_id: build.id,
                    attempt: attempt.number,
                    seq: seconds,
                    sampled_at: seconds * 1000,
                    cpu_percent: cpu,
                    memory_mb: memory,
                    cpu_time_s: None,
                    interval_s: 5,
                },
            );
        }
        self.log.push(logged);
        format!(
            "legacy sample on build {} (duplicate: {duplicate})",
            build.id
        )
    }

    async fn legacy_event(&mut self) -> String {
        let candidates = self.open_attempts();
        let Some((i, k)) = self.pick(&candidates) else {
            return "no build takes telemetry".into();
        };
        let build = self.builds[i].clone();
        let holder = build.attempts[k].worker;
        let worker = self.workers[holder].0.clone();
        let logged = Logged {
            path: format!("/api/builds/{}/telemetry", build.id),
            secret: worker.token.clone(),
            body: Some(json!({
                "type": "stage",
                "timestamp": rfc3339(now_ms() / 1000),
                "data": {"stage": "link", "step": self.step}
            })),
            held: Some((i, holder, k)),
        };
        let (status, body) = self.post(&logged).await;
        let context = self.context("legacy event");
        assert_eq!(status, StatusCode::OK, "{context}: {body}");
        assert_eq!(
            body,
            json!({"accepted": 0, "duplicates": 0, "rejected": []}),
            "{context}"
        );
        self.log.push(logged);
        format!("legacy event on build {}", build.id)
    }

    async fn heartbeat(&mut self) -> String {
        let w = self.rng.gen_range(0..self.workers.len());
        let logged = Logged {
            path: "/api/workers/heartbeat".into(),
            secret: self.workers[w].0.token.clone(),
            body: None,
            held: None,
        };
        let (status, _) = self.post(&logged).await;
        assert_eq!(status, StatusCode::OK, "{}", self.context("heartbeat"));
        self.log.push(logged);
        format!("worker {w} heartbeat")
    }

    /// A worker that never held the build posts to it: 403.
    async fn wrong_worker(&mut self) -> String {
        let candidates = self.open_attempts();
        let Some((i, k)) = self.pick(&candidates) else {
            return "no build takes telemetry".into();
        };
        let build = self.builds[i].clone();
        let attempt = build.attempts[k].clone();
        let owner = attempt.worker;
        let Some(intruder) =
            (0..self.workers.len()).find(|&w| build.attempts.iter().all(|a| a.worker != w))
        else {
            return "every worker held the build".into();
        };
        let (worker, _) = self.workers[intruder].clone();
        let owner_worker = self.workers[owner].0.clone();
        let sample = self.valid_sample(&build, &attempt, &owner_worker, 50);
        let (status, body) = self
            .app
            .telemetry(
                &worker,
                build.id,
                &json!({"snapshots": [Self::to_json(&sample)]}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{}: {body}",
            self.context("wrong worker")
        );
        format!(
            "worker {intruder} posts to build {} of worker {owner}",
            build.id
        )
    }

    /// Everything the figures depend on, minus what moves with the clock
    /// (`generatedAt`, and `cpuCoresBusy`, which ages samples out and is
    /// checked against the recomputation at every step).
    async fn observable(
        &self,
    ) -> (
        NetworkStats,
        Vec<BuildView>,
        Vec<freeagent::stats::DailyBuilds>,
    ) {
        let stats = NetworkStats {
            cpu_cores_busy: 0.0,
            ..figures(&self.app.stats().await)
        };
        let mut views = Vec::new();
        for b in &self.builds {
            views.push(self.app.build(b.id).await);
        }
        (stats, views, self.app.daily(2).await)
    }

    /// Replays a random earlier request: it must change nothing.
    async fn replay(&mut self) -> String {
        let replays: Vec<Logged> = self
            .log
            .iter()
            .filter(|l| self.is_replay(l))
            .cloned()
            .collect();
        let Some(logged) = self.pick(&replays) else {
            return "nothing to replay".into();
        };
        let before = self.observable().await;
        let (status, body) = self.post(&logged).await;
        let context = self.context(&format!("replay of {} {:?}", logged.path, logged.body));
        assert!(!status.is_server_error(), "{context}: {status} {body}");
        if logged.path.ends_with("/telemetry") && status.is_success() {
            assert_eq!(
                body["accepted"],
                json!(0),
                "a replay stores nothing {context}: {body}"
            );
        }
        let after = self.observable().await;
        assert_eq!(after.0, before.0, "stats changed by a {context}");
        assert_eq!(after.1, before.1, "a build changed by a {context}");
        assert_eq!(after.2, before.2, "daily changed by a {context}");
        format!("replay {} -> {status}", logged.path)
    }

    /// A retention pass removing every raw row: no figure changes.
    async fn purge(&mut self) -> String {
        let before = self.observable().await;
        let removed = self.app.purge(0).await;
        self.purged = self.expected.keys().copied().collect();
        let after = self.observable().await;
        let context = self.context("purge");
        assert_eq!(after.0, before.0, "stats changed by a {context}");
        assert_eq!(after.1, before.1, "a build changed by a {context}");
        assert_eq!(after.2, before.2, "daily changed by a {context}");
        format!("purge removed {removed} rows")
    }

    /// Compares every figure with the recomputation from raw rows.
    async fn check(&mut self, did: &str, may_lower_cpu: bool) {
        let context = self.context(did);
        let pool = self.app.db().await;
        let builds = raw_builds(&pool).await;
        let rows = raw_samples(&pool).await;
        let stored: BTreeSet<SampleKey> = rows
            .iter()
            .map(|r| (r.build_id, r.attempt, r.seq))
            .collect();
        for row in rows {
            let key = (row.build_id, row.attempt, row.seq);
            let expected = self
                .expected
                .get(&key)
                .unwrap_or_else(|| panic!("stored sample {key:?} was never sent valid {context}"));
            assert_eq!(
                &row, expected,
                "stored sample differs from the one sent {context}"
            );
            if let Some(previous) = self.seen_rows.insert(key, row.clone()) {
                assert_eq!(previous, row, "a stored sample changed {context}");
            }
        }
        let missing: Vec<_> = self
            .expected
            .keys()
            .filter(|k| !stored.contains(k) && !self.purged.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "accepted samples missing {missing:?} {context}"
        );
        for b in &builds {
            let model = self
                .builds
                .iter()
                .find(|m| m.id == b.id)
                .expect("known build");
            assert_eq!(b.status, model.status, "build {} status {context}", b.id);
        }

        let stats = self.app.stats().await;
        let r = recompute(&builds, &self.seen_rows, stats.generated_at);
        assert_stats_match(&stats, &r, &context);
        let waits: Vec<i64> = raw_first_waits(&pool, stats.generated_at)
            .await
            .into_iter()
            .map(|(_, wait)| wait)
            .collect();
        assert_queue_wait_matches(&stats, &waits, &context);
        assert_eq!(
            stats.nodes_online,
            self.workers.len() as u64,
            "nodesOnline {context}"
        );
        for b in &self.builds {
            let view = self.app.build(b.id).await;
            assert_build_matches(&view, &r.builds[&b.id], &context);
            assert_eq!(view.status, b.status, "build {} status {context}", b.id);
        }
        let daily = self.app.daily(1).await;
        let today = &daily[0];
        assert_eq!(
            (
                today.builds_finished,
                today.builds_failed,
                today.build_time_ms
            ),
            (r.today.0, r.today.1, r.today.2),
            "today's daily entry {context}"
        );
        assert!(
            (today.cpu_seconds - r.today.3 as f64 / 1e6).abs()
                <= 1e-6 * (r.builds.len() as f64 + 1.0),
            "today's cpuSeconds {} vs {} {context}",
            today.cpu_seconds,
            r.today.3 as f64 / 1e6
        );

        assert_verified(&self.app.database_url, &context).await;

        if let Some(last) = &self.last {
            assert!(
                stats.total_builds >= last.total_builds,
                "totalBuilds decreased {context}"
            );
            assert!(
                stats.total_build_time_ms >= last.total_build_time_ms,
                "totalBuildTimeMs decreased {context}"
            );
            if !may_lower_cpu {
                assert!(
                    stats.total_cpu_seconds >= last.total_cpu_seconds - 1e-9,
                    "totalCpuSeconds decreased from {} to {} {context}",
                    last.total_cpu_seconds,
                    stats.total_cpu_seconds
                );
            }
        }
        self.last = Some(stats);
    }
}

async fn run_seed(seed: u64) {
    let mut sim = Sim::new(seed).await;
    // Start with some work in flight so that every kind of step has a target.
    for _ in 0..4 {
        sim.submit().await;
    }
    for _ in 0..3 {
        sim.poll().await;
    }
    for step in 1..=STEPS {
        sim.step = step;
        let (did, may_lower_cpu) = sim.step().await;
        if std::env::var_os("FREEAGENT_TRACE").is_some() {
            eprintln!("seed {seed} step {step}: {did}");
        }
        sim.check(&did, may_lower_cpu).await;
    }
    // Finish: every build still takes replays, and a final purge changes nothing.
    sim.step = STEPS + 1;
    let did = sim.purge().await;
    sim.check(&did, false).await;
    for logged in sim.log.clone() {
        if sim.is_replay(&logged) {
            sim.post(&logged).await;
        }
    }
    sim.check("replaying every request after the final purge", false)
        .await;
}

fn seeds(default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    match std::env::var("FREEAGENT_SEED") {
        Ok(seed) => vec![seed.parse().expect("FREEAGENT_SEED is a number")],
        Err(_) => default.collect(),
    }
}

/// After every step of seeded random sequences (lifecycle, telemetry with
/// replays, lost and out-of-order samples, legacy bodies, invalid samples,
/// purges), every figure equals the recomputation from raw rows, replays
/// and purges change nothing, and totals never decrease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_keep_every_figure_exact() {
    for seed in seeds(1..=4) {
        run_seed(seed).await;
    }
}

/// A second batch of seeds, run in parallel with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_random_sequences_keep_every_figure_exact() {
    if std::env::var("FREEAGENT_SEED").is_ok() {
        return;
    }
    for seed in 101..=104 {
        run_seed(seed).await;
    }
}

/// Arrival order and batching never change a build's figures: the same
/// samples sent in order to one build and shuffled, in random batches, with
/// replays, to another give identical figures, equal to the recomputation.
#[test]
fn arrival_order_and_batching_do_not_change_figures() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(
        TestApp::builder()
            .with_args(|a| a.telemetry_rate = 100_000)
            .start(),
    );
    let worker = runtime.block_on(app.register_worker(&["linux"], 8, 16_384));
    // (offset s, cpuPercent, memoryMb, counter share or none, intervalS)
    let sample_values = prop::collection::vec(
        (
            1i64..50,
            0.0f64..=800.0,
            0.0f64..=16_384.0,
            prop::option::of(0.0f64..=1.0),
            1i64..=300,
        ),
        1..30,
    );
    let mut runner = TestRunner::new(Config {
        cases: 20,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(sample_values, any::<u64>(), 1usize..8),
            |(values, order_seed, batch_size)| {
                runtime.block_on(async {
                    let in_order = app.running_build(&worker, "linux").await;
                    let shuffled = app.running_build(&worker, "linux").await;
                    let make = |claimed: &Claimed| -> Vec<Snapshot> {
                        values
                            .iter()
                            .enumerate()
                            .map(
                                |(i, &(offset_s, cpu, memory, share, interval_s))| Snapshot {
                                    seq: i as i64 + 1,
                                    sampled_at: claimed.assigned_at + offset_s * 1000 + i as i64,
                                    cpu_percent: cpu,
                                    memory_mb: memory,
                                    // At most the bound: 1.1 * cores * elapsed + 1.
                                    cpu_time_s: share.map(|f| (f * 8.8 * offset_s as f64).floor()),
                                    interval_s,
                                },
                            )
                            .collect()
                    };
                    let ordered = make(&in_order);
                    app.send_ok(&worker, in_order.id, &ordered).await;

                    let mut rng = StdRng::seed_from_u64(order_seed);
                    let mut mixed = make(&shuffled);
                    mixed.shuffle(&mut rng);
                    let replays: Vec<Snapshot> = mixed.iter().take(3).cloned().collect();
                    mixed.extend(replays);
                    for chunk in mixed.chunks(batch_size) {
                        let (status, _) = app.send(&worker, shuffled.id, chunk).await;
                        assert_eq!(status, StatusCode::OK);
                    }
                    let a = app.build(in_order.id).await;
                    let b = app.build(shuffled.id).await;
                    assert_eq!(build_figures(&a), build_figures(&b));
                    let raw = raw_rows(in_order.id, ordered.iter());
                    assert_build_matches(&a, &build_figures_from(&raw), "in order");
                    for id in [in_order.id, shuffled.id] {
                        assert_eq!(app.complete(&worker, id, true).await, StatusCode::OK);
                    }
                });
                Ok(())
            },
        )
        .unwrap();
}
