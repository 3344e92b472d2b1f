#![cfg(feature = "ssr")]
//! Every integration test, in one binary (as crates.io does): one link
//! instead of one per file, and the slow tests of one domain overlap with
//! the others'. Run one file's tests with its module path, e.g.
//! `cargo test --features ssr --test it attempts::`.
//!
//! - `common`: `TestApp`, the real controller on `127.0.0.1:0` with a fresh
//!   database, its builder and the scenario helpers; the recomputation
//!   of every figure from raw rows.
//! - `postgres`: the throwaway Postgres cluster behind
//!   `FREEAGENT_TEST_BACKEND=postgres` (default `sqlite`), which runs every
//!   test that is not about SQLite alone against Postgres instead.
//! - `api_*`: the REST contract of SPEC, one domain a file:
//!   - `api_server`: health, the page, restart, bad bodies, never a 500;
//!   - `api_auth`: 401 and 403, secrets stored as hashes;
//!   - `api_workers`: register, heartbeat, poll;
//!   - `api_builds`: the build lifecycle and the lease reaper;
//!   - `api_telemetry`: the telemetry route's limits, grace, rate, legacy
//!     bodies, and the snapshots route;
//!   - `api_samples`: sample validation, replays, CPU seconds;
//!   - `api_stats`: `/api/stats`, `/api/stats/daily`, the server functions;
//!   - `api_retention`: purge and the background retention pass.
//! - `attempts`: a requeued or released build runs again as its next attempt.
//! - `concurrency`: simultaneous polls and telemetry writers.
//! - `connections`: slow, idle and half-open clients are disconnected in
//!   time, the connection cap makes new ones wait, others are served.
//! - `queue_wait`: `queueWaitP50Ms`/`queueWaitP95Ms` against the raw rows,
//!   requeues counted once, the 24-hour window.
//! - `invariants`: seeded random sequences checked against a recomputation.
//! - `crash`: the real binary: durability under SIGKILL, SIGTERM, flags.
//! - `agent`: the real binary as controller and as worker agent.
//! - `layers`: the crate's imports point one way (reads `src/`).
//! - `metrics`: `GET /metrics`, its token, and its agreement with
//!   `/api/stats`; `prometheus`: a real Prometheus scrapes it (Debian's
//!   `prometheus` package, started by the test) and `promtool` lints it.
//! - `site`: pages and JSON compressed when asked, pages' caching.
//! - `verify`: `freeagent verify [--repair]` and `freeagent backup` on a
//!   served database, under load.
//! - `deploy`: the files of `deploy/`: systemd accepts the unit, the
//!   environment file names every flag.
//! - `multi`: three controller processes on one Postgres database (runs in
//!   the Postgres pass).

mod common;
mod postgres;

mod agent;
mod api_auth;
mod api_builds;
mod api_retention;
mod api_samples;
mod api_server;
mod api_stats;
mod api_telemetry;
mod api_workers;
mod attempts;
mod concurrency;
mod connections;
mod crash;
mod deploy;
mod invariants;
mod layers;
mod metrics;
mod multi;
mod prometheus;
mod queue_wait;
mod site;
mod verify;
