#![cfg(feature = "ssr")]
//! Every integration test, in one binary (as crates.io does): one link
//! instead of one per file, and the slow tests of one domain overlap with
//! the others'. Run one file's tests with its module path, e.g.
//! `cargo test --features ssr --test it attempts::`.
//!
//! - `common`: `TestApp`, the real controller on `127.0.0.1:0` with a fresh
//!   SQLite file, its builder and the scenario helpers; the recomputation
//!   of every figure from raw rows.
//! - `api`: the REST contract of SPEC, route by route.
//! - `attempts`: a requeued or released build runs again as its next attempt.
//! - `concurrency`: simultaneous polls and telemetry writers.
//! - `invariants`: seeded random sequences checked against a recomputation.
//! - `crash`: the real binary: durability under SIGKILL, SIGTERM, flags.
//! - `agent`: the real binary as controller and as worker agent.

mod common;

mod agent;
mod api;
mod attempts;
mod concurrency;
mod crash;
mod invariants;
