//! The REST client the agent and the simulator share: one method per route,
//! a timeout on every call, a tally of the answers by route and status, and
//! failover between several controllers of one database.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{header, Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::wire::{
    BuildSubmitted, BuildView, ClaimedBuild, CompleteBuild, ErrorBody, Heartbeat, PollAnswer,
    RegisterWorker, Snapshot, SubmitBuild, TelemetryAnswer, TelemetryBatch, WorkerRegistered,
};

/// Longest any single request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: connection refused, reset, timed out. (Its causes are in
    /// the message, so logs show why.)
    #[error("no answer from the controller: {}", chain(.0))]
    Transport(reqwest::Error),
    /// An answer with an unexpected status.
    #[error("controller answered {status}: {message}")]
    Status {
        /// The status code.
        status: StatusCode,
        /// The error sentence of the body, or the body itself.
        message: String,
        /// `Retry-After` in seconds, on 429 and 503.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not what the contract says.
    #[error("the controller's answer could not be read: {0}")]
    Decode(String),
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl CallError {
    /// The status, when there was an answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again later: no answer, a server error, 408 or 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            CallError::Decode(_) => false,
        }
    }

    /// The controller itself is down or cut off from its database: no
    /// answer, or a gateway's 502/504, or 503. Another controller of the
    /// same database may answer; any other status is an answer, which every
    /// controller would give alike.
    pub fn moves_on(&self) -> bool {
        match self {
            CallError::Transport(_) => true,
            CallError::Status { status, .. } => matches!(
                *status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            CallError::Decode(_) => false,
        }
    }
}

/// The controllers a client may ask, all serving one database, and the one
/// it asks now. Clones share which one that is, so that once any call
/// (a heartbeat, a poll, a telemetry post) finds a controller gone, the
/// others stop asking it too.
#[derive(Clone, Debug)]
pub struct Controllers {
    urls: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl Controllers {
    /// These controllers, in the order given; the first is asked first.
    /// None when there is none.
    pub fn new<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Option<Self> {
        let urls: Arc<[String]> = urls
            .into_iter()
            .map(|u| u.as_ref().trim_end_matches('/').to_string())
            .collect();
        (!urls.is_empty()).then(|| Controllers {
            urls,
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The one asked now: its position and URL.
    pub fn current(&self) -> (usize, &str) {
        let at = self.current.load(Ordering::SeqCst) % self.urls.len();
        (at, &self.urls[at])
    }

    /// The controller at `at` did not answer: the next one is asked from
    /// now on. Returns its URL, or None when there is no other one or when
    /// a concurrent call already moved on (so that two calls failing on
    /// the same controller move one step, not two).
    pub fn failed(&self, at: usize) -> Option<&str> {
        if self.urls.len() < 2 {
            return None;
        }
        let next = (at + 1) % self.urls.len();
        self.current
            .compare_exchange(at, next, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| self.urls[next].as_str())
    }
}

/// Answers counted by route and status (`0` for no answer), and the time
/// each answer took by route, for logs and the simulator's summary.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    counts: Arc<Mutex<BTreeMap<(&'static str, u16), u64>>>,
    latency: Arc<Mutex<BTreeMap<&'static str, Latencies>>>,
    last: Arc<Mutex<Option<LastAnswer>>>,
}

/// Answer times in log-scale buckets: each bucket is 4% wider than the one
/// before, from 10 µs up, so a percentile read from them is within 4% of the
/// exact one, and recording costs the same however many answers there are.
#[derive(Clone, Debug)]
pub struct Latencies {
    buckets: Vec<u64>,
    count: u64,
}

/// Bucket 0 holds answers under this; bucket k those under `FLOOR * GROWTH^k`.
const LATENCY_FLOOR_US: f64 = 10.0;
const LATENCY_GROWTH: f64 = 1.04;
/// Enough buckets for 10 µs * 1.04^480, about 30 minutes.
const LATENCY_BUCKETS: usize = 480;

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: vec![0; LATENCY_BUCKETS],
            count: 0,
        }
    }
}

impl Latencies {
    /// Counts one answer that took `took`.
    pub fn record(&mut self, took: Duration) {
        let us = took.as_secs_f64() * 1e6;
        let k = if us < LATENCY_FLOOR_US {
            0
        } else {
            ((us / LATENCY_FLOOR_US).ln() / LATENCY_GROWTH.ln()).ceil() as usize
        };
        self.buckets[k.min(LATENCY_BUCKETS - 1)] += 1;
        self.count += 1;
    }

    /// Answers counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1), as the upper edge of its bucket; None
    /// before any answer.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (k, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = LATENCY_FLOOR_US * LATENCY_GROWTH.powi(k as i32);
                return Some(Duration::from_secs_f64(us / 1e6));
            }
        }
        None
    }
}

/// The controller's latest answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastAnswer {
    /// Which call.
    pub route: &'static str,
    /// Its status, `0` when no answer came.
    pub status: u16,
    /// When, ms since the epoch.
    pub at: i64,
}

impl Tally {
    fn record_latency(&self, route: &'static str, took: Duration) {
        if let Ok(mut latency) = self.latency.lock() {
            latency.entry(route).or_default().record(took);
        }
    }

    /// A copy of the answer times by route.
    pub fn latencies(&self) -> BTreeMap<&'static str, Latencies> {
        self.latency.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Forgets the answer times so far (counts stay), so that a measured
    /// phase starts from nothing.
    pub fn reset_latencies(&self) {
        if let Ok(mut latency) = self.latency.lock() {
            latency.clear();
        }
    }

    fn record(&self, route: &'static str, status: u16) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((route, status)).or_default() += 1;
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some(LastAnswer {
                route,
                status,
                at: crate::clock::now_ms(),
            });
        }
    }

    /// The latest answer (or failure to get one).
    pub fn last(&self) -> Option<LastAnswer> {
        self.last.lock().ok().and_then(|last| *last)
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<(&'static str, u16), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Outcome of one telemetry post.
#[derive(Debug)]
pub enum TelemetryOutcome {
    /// 200: stored (or known); the answer says how many of each.
    Stored(TelemetryAnswer),
    /// 422: every sample refused, with the reasons.
    AllRejected(TelemetryAnswer),
}

/// A request on its way to one of the controllers.
struct Request {
    /// Which controller it goes to.
    at: usize,
    builder: RequestBuilder,
}

impl Request {
    fn json<B: Serialize + ?Sized>(self, body: &B) -> Self {
        Request {
            builder: self.builder.json(body),
            ..self
        }
    }

    fn timeout(self, timeout: Duration) -> Self {
        Request {
            builder: self.builder.timeout(timeout),
            ..self
        }
    }
}

/// A client for some controllers of one database and one bearer secret.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    controllers: Controllers,
    secret: String,
    tally: Tally,
    /// Most requests in flight at once over all clones (long polls aside),
    /// when set: the simulator's thousands of workers share one pool.
    in_flight: Option<Arc<Semaphore>>,
}

/// How a client's connections are pooled.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    /// Idle keep-alive connections kept per controller.
    pub max_idle: usize,
    /// Most requests in flight at once, long polls aside (each of those
    /// holds its own connection, as each volunteer's would).
    pub max_in_flight: usize,
}

impl Client {
    /// A client for `controllers` (URLs like `http://127.0.0.1:3000`)
    /// speaking with `secret`, counting answers into `tally`.
    pub fn new(controllers: Controllers, secret: &str, tally: Tally) -> Result<Self, CallError> {
        let http = Self::builder().build().map_err(CallError::Transport)?;
        Ok(Client {
            http,
            controllers,
            secret: secret.trim().to_string(),
            tally,
            in_flight: None,
        })
    }

    /// Like [`Client::new`] with a bounded pool: at most `pool.max_idle`
    /// idle connections and `pool.max_in_flight` requests at once over this
    /// client and every clone of it (see [`Client::with_secret`]).
    pub fn pooled(
        controllers: Controllers,
        secret: &str,
        tally: Tally,
        pool: Pool,
    ) -> Result<Self, CallError> {
        let http = Self::builder()
            .pool_max_idle_per_host(pool.max_idle)
            .build()
            .map_err(CallError::Transport)?;
        Ok(Client {
            http,
            controllers,
            secret: secret.trim().to_string(),
            tally,
            in_flight: Some(Arc::new(Semaphore::new(pool.max_in_flight.max(1)))),
        })
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("freeagent-agent/", env!("CARGO_PKG_VERSION")))
    }

    /// The same controllers with another secret (and the same tally).
    pub fn with_secret(&self, secret: &str) -> Self {
        Client {
            secret: secret.trim().to_string(),
            ..self.clone()
        }
    }

    /// The tally this client counts into.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The URL of the controller asked now.
    pub fn controller(&self) -> &str {
        self.controllers.current().1
    }

    /// Makes `call` on each controller in turn, from the one asked now,
    /// until one answers: for calls made once (registering, the first
    /// heartbeat), where a dead first controller would otherwise decide.
    pub async fn first_answer<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut left = self.controllers.len();
        loop {
            match call().await {
                Err(e) if e.moves_on() && left > 1 => left -= 1,
                answer => return answer,
            }
        }
    }

    fn request(&self, method: Method, path: &str) -> Request {
        let (at, base) = self.controllers.current();
        Request {
            at,
            builder: self
                .http
                .request(method, format!("{base}{path}"))
                .bearer_auth(&self.secret),
        }
    }

    async fn send(
        &self,
        route: &'static str,
        request: Request,
    ) -> Result<reqwest::Response, CallError> {
        let _permit = match &self.in_flight {
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        };
        self.send_unlimited(route, request, |_| route).await
    }

    /// Sends without taking a place among the requests in flight; the
    /// answer's time is counted under the name `timed_as` gives its status.
    async fn send_unlimited(
        &self,
        route: &'static str,
        request: Request,
        timed_as: impl FnOnce(StatusCode) -> &'static str,
    ) -> Result<reqwest::Response, CallError> {
        let began = std::time::Instant::now();
        let failed = match request.builder.send().await {
            Ok(response) => {
                self.tally
                    .record_latency(timed_as(response.status()), began.elapsed());
                self.answer(route, response).await
            }
            Err(e) => {
                self.tally.record(route, 0);
                Err(CallError::Transport(e))
            }
        };
        if let Err(error) = &failed {
            if error.moves_on() {
                self.move_on(route, request.at, error);
            }
        }
        failed
    }

    /// The next call goes to the next controller; the failed one is retried
    /// there by the caller's own backoff, like any failure.
    fn move_on(&self, route: &'static str, at: usize, error: &CallError) {
        let gone = self.controllers.urls.get(at).map_or("", String::as_str);
        if let Some(next) = self.controllers.failed(at) {
            tracing::warn!(
                route,
                controller = gone,
                next,
                %error,
                "controller did not answer; moving to the next one"
            );
        }
    }

    async fn answer(
        &self,
        route: &'static str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, CallError> {
        let status = response.status();
        self.tally.record(route, status.as_u16());
        if status.is_success() || status == StatusCode::UNPROCESSABLE_ENTITY && route == "telemetry"
        {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) => text.chars().take(200).collect(),
        };
        Err(CallError::Status {
            status,
            message,
            retry_after,
        })
    }

    async fn json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, CallError> {
        let bytes = response.bytes().await.map_err(CallError::Transport)?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        route: &'static str,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let response = self
            .send(route, self.request(Method::POST, path).json(body))
            .await?;
        Self::json(response).await
    }

    /// `POST /api/workers/register` (admin secret).
    pub async fn register(&self, body: &RegisterWorker) -> Result<WorkerRegistered, CallError> {
        self.post("register", "/api/workers/register", body).await
    }

    /// `POST /api/workers/heartbeat`.
    pub async fn heartbeat(&self) -> Result<Heartbeat, CallError> {
        let response = self
            .send(
                "heartbeat",
                self.request(Method::POST, "/api/workers/heartbeat"),
            )
            .await?;
        Self::json(response).await
    }

    /// `POST /api/workers/poll`: a claimed build, or `None` (204).
    pub async fn poll(&self) -> Result<Option<ClaimedBuild>, CallError> {
        let response = self
            .send("poll", self.request(Method::POST, "/api/workers/poll"))
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let answer: PollAnswer = Self::json(response).await?;
        Ok(Some(answer.build))
    }

    /// `POST /api/workers/poll?waitS=N`: a long poll the controller holds
    /// open until a build is queued or `wait` (whole seconds, at most 60)
    /// passes.
    pub async fn poll_wait(&self, wait: Duration) -> Result<Option<ClaimedBuild>, CallError> {
        let seconds = wait.as_secs().min(60);
        let request = self
            .request(Method::POST, &format!("/api/workers/poll?waitS={seconds}"))
            .timeout(Duration::from_secs(seconds) + REQUEST_TIMEOUT);
        // A poll held to the end of its wait (204) took the wait, not the
        // controller's time: it is timed apart, as "poll-wait". It takes no
        // place among the requests in flight (it may be held for a minute),
        // as a volunteer's own would not.
        let response = if seconds == 0 {
            self.send("poll", request).await?
        } else {
            self.send_unlimited("poll", request, |status| {
                if status == StatusCode::NO_CONTENT {
                    "poll-wait"
                } else {
                    "poll"
                }
            })
            .await?
        };
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let answer: PollAnswer = Self::json(response).await?;
        Ok(Some(answer.build))
    }

    /// `POST /api/builds/{id}/start`.
    pub async fn start(&self, build: i64) -> Result<(), CallError> {
        self.send(
            "start",
            self.request(Method::POST, &format!("/api/builds/{build}/start")),
        )
        .await
        .map(drop)
    }

    /// `POST /api/builds/{id}/complete`.
    pub async fn complete(&self, build: i64, body: &CompleteBuild) -> Result<(), CallError> {
        self.send(
            "complete",
            self.request(Method::POST, &format!("/api/builds/{build}/complete"))
                .json(body),
        )
        .await
        .map(drop)
    }

    /// `POST /api/builds/{id}/release`: give the build back to the queue.
    pub async fn release(&self, build: i64) -> Result<(), CallError> {
        self.send(
            "release",
            self.request(Method::POST, &format!("/api/builds/{build}/release")),
        )
        .await
        .map(drop)
    }

    /// `POST /api/builds/{id}/telemetry` with these samples.
    pub async fn telemetry(
        &self,
        build: i64,
        snapshots: &[Snapshot],
    ) -> Result<TelemetryOutcome, CallError> {
        let body = TelemetryBatch {
            snapshots: snapshots.to_vec(),
        };
        let response = self
            .send(
                "telemetry",
                self.request(Method::POST, &format!("/api/builds/{build}/telemetry"))
                    .json(&body),
            )
            .await?;
        let all_rejected = response.status() == StatusCode::UNPROCESSABLE_ENTITY;
        let answer: TelemetryAnswer = Self::json(response).await?;
        Ok(if all_rejected {
            TelemetryOutcome::AllRejected(answer)
        } else {
            TelemetryOutcome::Stored(answer)
        })
    }

    /// `POST /api/builds` (admin secret).
    pub async fn submit_build(&self, body: &SubmitBuild) -> Result<BuildSubmitted, CallError> {
        self.post("submit", "/api/builds", body).await
    }

    /// `GET /api/builds/{id}` (admin or build secret).
    pub async fn build(&self, build: i64) -> Result<BuildView, CallError> {
        let response = self
            .send(
                "build",
                self.request(Method::GET, &format!("/api/builds/{build}")),
            )
            .await?;
        Self::json(response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A failure moves every clone to the next controller, round the list;
    /// a second failure of the same controller (a concurrent call) moves
    /// nothing more; one controller stays itself.
    #[test]
    fn controllers_rotate_once_per_failure() {
        let list = Controllers::new(["http://a/", "http://b", "http://c"]).expect("three");
        let other = list.clone();
        assert_eq!(list.current(), (0, "http://a"));
        assert_eq!(list.failed(0), Some("http://b"));
        assert_eq!(other.current(), (1, "http://b"), "clones share the move");
        assert_eq!(other.failed(0), None, "a stale failure moves nothing");
        assert_eq!(list.current(), (1, "http://b"));
        assert_eq!(list.failed(1), Some("http://c"));
        assert_eq!(list.failed(2), Some("http://a"), "round the list");

        let one = Controllers::new(["http://a"]).expect("one");
        assert_eq!(one.failed(0), None);
        assert_eq!(one.current(), (0, "http://a"));
        assert!(Controllers::new(Vec::<String>::new()).is_none());
    }

    /// Percentiles read from the log buckets are within their 4% of the
    /// exact ones, and none is claimed before any answer.
    #[test]
    fn latency_percentiles_are_within_a_bucket() {
        let mut times = Latencies::default();
        assert_eq!(times.quantile(0.5), None);
        // 1..=1000 ms: p50 is 500 ms, p99 990 ms.
        for ms in 1..=1000u64 {
            times.record(Duration::from_millis(ms));
        }
        assert_eq!(times.count(), 1000);
        for (q, exact) in [(0.5, 500.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = times.quantile(q).expect("answers").as_secs_f64() * 1e3;
            assert!(
                got >= exact && got <= exact * 1.04 + 1e-9,
                "q {q}: {got} ms for {exact} ms"
            );
        }
        times.record(Duration::from_secs(100_000));
        assert!(times.quantile(1.0).expect("answers") > Duration::from_secs(1000));
    }

    /// No answer and 502/503/504 move on; any other answer, 4xx and 500
    /// included, is the database's word and would be the same elsewhere.
    #[test]
    fn which_errors_move_on() {
        let status = |code: u16| CallError::Status {
            status: StatusCode::from_u16(code).expect("valid"),
            message: String::new(),
            retry_after: None,
        };
        for code in [502, 503, 504] {
            assert!(status(code).moves_on(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422, 429, 500] {
            assert!(!status(code).moves_on(), "{code}");
        }
        assert!(!CallError::Decode("x".into()).moves_on());
    }

    /// A loopback URL where nothing listens.
    fn dead_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    /// A controller that answers every request with `status` and `body`.
    async fn answering(status: &'static str, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        url
    }

    const BEAT: &str = r#"{"serverTime":1,"cancelled":[]}"#;

    /// A dead controller, then one answering 503, then a live one: each
    /// failed call sends the next to the next controller, and
    /// `first_answer` gets through in one go.
    #[tokio::test]
    async fn calls_fail_over_to_the_next_controller() {
        let dead = dead_url();
        let unavailable = answering("503 Service Unavailable", "{}").await;
        let live = answering("200 OK", BEAT).await;
        let list = Controllers::new([&dead, &unavailable, &live]).expect("three");
        let client = Client::new(list, "t", Tally::default()).expect("client");

        let first = client.heartbeat().await.expect_err("nothing listens");
        assert!(matches!(first, CallError::Transport(_)), "{first}");
        assert_eq!(client.controller(), unavailable);
        let second = client.heartbeat().await.expect_err("503");
        assert_eq!(second.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(client.controller(), live);
        assert_eq!(client.heartbeat().await.expect("answers").server_time, 1);
        assert_eq!(client.controller(), live, "stays with the one that answers");

        let again = Controllers::new([&dead, &unavailable, &live]).expect("three");
        let client = Client::new(again, "t", Tally::default()).expect("client");
        let beat = client
            .first_answer(|| client.heartbeat())
            .await
            .expect("the third answers");
        assert_eq!(beat.server_time, 1);
    }

    /// A 4xx is an answer: the client stays, and `first_answer` returns it
    /// without asking the others.
    #[tokio::test]
    async fn a_refusal_does_not_move_on() {
        let refusing = answering("401 Unauthorized", r#"{"error":"no","code":"x"}"#).await;
        let live = answering("200 OK", BEAT).await;
        let list = Controllers::new([&refusing, &live]).expect("two");
        let client = Client::new(list, "t", Tally::default()).expect("client");
        let refused = client
            .first_answer(|| client.heartbeat())
            .await
            .expect_err("401");
        assert_eq!(refused.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(client.controller(), refusing);
    }
}
