//! The REST client the agent and the simulator share: one method per route,
//! a timeout on every call, and a tally of the answers by route and status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{header, Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
}

/// Answers counted by route and status (`0` for no answer), for logs and the
/// simulator's summary.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    counts: Arc<Mutex<BTreeMap<(&'static str, u16), u64>>>,
    last: Arc<Mutex<Option<LastAnswer>>>,
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

/// A client for one controller and one bearer secret.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    secret: String,
    tally: Tally,
}

impl Client {
    /// A client for the controller at `base` (like `http://127.0.0.1:3000`)
    /// speaking with `secret`, counting answers into `tally`.
    pub fn new(base: &str, secret: &str, tally: Tally) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("freeagent-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(CallError::Transport)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            secret: secret.trim().to_string(),
            tally,
        })
    }

    /// The same controller with another secret (and the same tally).
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

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.secret)
    }

    async fn send(
        &self,
        route: &'static str,
        request: RequestBuilder,
    ) -> Result<reqwest::Response, CallError> {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.tally.record(route, 0);
                return Err(CallError::Transport(e));
            }
        };
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
        let response = self.send("poll", request).await?;
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
