//! JSON shapes of the REST API that both the controller and the worker agent
//! speak. Plain serde types with no I/O, so the agent shares only these with
//! the server (STYLE practice 1).

use serde::{Deserialize, Serialize};

/// Most characters of a build's `error` (SPEC "Field limits").
pub const MAX_ERROR_CHARS: usize = 4000;
/// Most characters of a build's `label`.
pub const MAX_LABEL_CHARS: usize = 200;
/// Most samples in one telemetry batch.
pub const MAX_BATCH: usize = 1000;
/// Largest telemetry body, bytes.
pub const TELEMETRY_BODY_LIMIT: usize = 256 * 1024;
/// The sampling intervals a sample may declare, seconds.
pub const INTERVAL_S: std::ops::RangeInclusive<i64> = 1..=300;

/// `POST /api/workers/register` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegisterWorker {
    /// Human-readable worker name, 1..=64 chars.
    pub name: String,
    /// Platforms this worker builds, 1..=8 of `[a-z0-9_-]{1,32}`.
    pub platforms: Vec<String>,
    /// CPU cores of the machine, 1..=1024.
    pub cpu_cores: u32,
    /// Memory of the machine in MiB, 1..=16777216.
    pub memory_mb: u64,
}

/// `POST /api/workers/register` answer. The token is shown only this once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRegistered {
    /// Id of the new worker.
    pub worker_id: i64,
    /// Bearer secret of the worker.
    pub token: String,
}

/// `POST /api/workers/heartbeat` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The controller's clock, ms since the epoch.
    pub server_time: i64,
    /// This worker's builds that were cancelled while assigned to it, for
    /// as long as they accept telemetry: stop them.
    #[serde(default)]
    pub cancelled: Vec<i64>,
}

/// A build handed to a worker by `POST /api/workers/poll`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedBuild {
    /// Build id.
    pub id: i64,
    /// Platform the build targets.
    pub platform: String,
    /// Submitter's label, if any.
    pub label: Option<String>,
    /// 1 for the first run, +1 each time a lost worker's lease expired.
    pub attempt: i64,
}

/// `POST /api/workers/poll` answer when a build was claimed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PollAnswer {
    /// The claimed build.
    pub build: ClaimedBuild,
}

/// `POST /api/builds` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubmitBuild {
    /// Platform the build targets.
    pub platform: String,
    /// Optional label, <= 200 chars.
    #[serde(default)]
    pub label: Option<String>,
}

/// `POST /api/builds` answer. The access token is shown only this once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildSubmitted {
    /// Build id.
    pub id: i64,
    /// Always `pending`.
    pub status: String,
    /// Controller clock, ms since the epoch.
    pub submitted_at: i64,
    /// Bearer secret granting read and cancel of this build.
    pub access_token: String,
    /// The build's own page, relative to the controller:
    /// `/builds/{id}#token=<accessToken>`. The secret rides in the fragment,
    /// which browsers never send to a server. Defaulted so that answers of
    /// controllers older than the page still parse.
    #[serde(default)]
    pub page_url: String,
}

/// The build page's link: the secret in the fragment (SPEC "Pages").
pub fn build_page_url(id: i64, access_token: &str) -> String {
    format!("/builds/{id}#token={access_token}")
}

/// `POST /api/builds/{id}/complete` body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompleteBuild {
    /// Whether the build succeeded.
    pub success: bool,
    /// What went wrong, <= 4000 chars.
    #[serde(default)]
    pub error: Option<String>,
}

/// A build as `GET /api/builds/{id}` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildView {
    pub id: i64,
    pub status: String,
    pub platform: String,
    pub label: Option<String>,
    pub worker_id: Option<i64>,
    pub attempt: i64,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub error: Option<String>,
    /// CPU seconds by SPEC's definition (counter if any sample carried one).
    pub cpu_seconds: f64,
    /// Largest `memoryMb` seen; `None` before the first sample.
    pub peak_memory_mb: Option<f64>,
    /// Distinct samples accepted, ever (outlives retention).
    pub snapshot_count: i64,
}

/// One telemetry sample as the agent sends it and the snapshots route shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Sample number within the worker's run (attempt) of the build, from
    /// 1; (build, attempt, seq) is the idempotency key.
    pub seq: i64,
    /// Worker clock when sampled, ms since the epoch.
    pub sampled_at: i64,
    /// CPU use of the process tree over the interval; 100 = one core.
    pub cpu_percent: f64,
    /// Resident memory of the process tree, MiB.
    pub memory_mb: f64,
    /// Cumulative CPU seconds of the process tree, reaped children included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_s: Option<f64>,
    /// Sampling interval in seconds.
    pub interval_s: i64,
}

/// A stored sample as `GET /api/builds/{id}/snapshots` lists it: the
/// telemetry shape plus the attempt whose run sent it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
#[serde(rename_all = "camelCase")]
pub struct StoredSnapshot {
    /// The attempt of the build that sent it, from 1.
    pub attempt: i64,
    /// The sample as it was sent.
    #[serde(flatten)]
    #[cfg_attr(feature = "ssr", sqlx(flatten))]
    pub sample: Snapshot,
}

/// `POST /api/builds/{id}/telemetry` body (current format).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TelemetryBatch {
    /// Samples, at most 1000.
    pub snapshots: Vec<Snapshot>,
}

/// A sample the controller refused, by its index in the batch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rejection {
    /// Index of the sample in the posted list.
    pub index: usize,
    /// Why it was refused.
    pub error: String,
}

/// Answer to a telemetry post.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryAnswer {
    /// Samples stored now.
    pub accepted: u64,
    /// Samples seen before; they changed nothing.
    pub duplicates: u64,
    /// Samples refused, each with its reason.
    pub rejected: Vec<Rejection>,
    /// The build's status now, on answers to samples: a worker whose build
    /// reads `cancelled` stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_status: Option<String>,
}

/// Every error body: a sentence a person can act on and a stable code.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
    /// snake_case machine-readable code.
    pub code: String,
}
