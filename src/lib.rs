//! Free Agent: the controller of a volunteer build network, its landing
//! page, and the worker agent.
//!
//! # Layout
//!
//! Three layers; imports point down only, and no domain imports another.
//! `tests/it/layers.rs` reads every `crate::` path in `src/` and fails on one
//! that does not.
//!
//! **Shell** (assembles everything; server only):
//! - [`server`]: the composition root `AppState` (each domain's own state,
//!   `FromRef`), the router, background tasks, serving (its
//!   `connections`: head, body and idle timeouts, the connection cap).
//! - [`site`]: the site's files served precompressed, caching headers,
//!   compression of pages and JSON.
//! - [`cli`]: subcommands; [`config`]: flags.
//!
//! **Domains** (one feature each):
//! - [`fleet`]: workers and builds over HTTP, and the lease [`fleet::reaper`].
//! - [`ingest`]: the telemetry route, rate limits, and the batcher (Postgres).
//! - [`figures`]: `NetworkStats` and the daily figures, cached, with their
//!   routes; implements the server functions' `stats::reader`.
//! - [`retention`]: deletes old raw rows.
//! - [`app`]: the Leptos landing page (also compiled to WASM).
//! - [`agent`]: the worker agent and simulator; shares only [`wire`] (and
//!   [`clock`], [`files`]) with the server.
//!
//! **Foundations** (what every domain stands on):
//! - [`storage`]: every SQL statement, behind named operations; the SQLite
//!   backend and its single group-commit writer.
//! - [`builds`]: the lifecycle as pure code (`BuildStatus`, `transition`,
//!   which attempt takes telemetry).
//! - [`ledger`]: how a write changes the totals and a day's figures.
//! - [`telemetry`]: what a telemetry body means, and each sample's checks.
//! - [`stats`]: the `NetworkStats` type, server functions, CPU-seconds
//!   accounting, demo generator (shared with the browser).
//! - [`verify`]: every stored figure recomputed from the rows it derives
//!   from (`freeagent verify`), as pure code.
//! - [`auth`] (bearer extractors and their state), [`body`] (JSON bodies),
//!   [`error`] (one error type, mapped to HTTP once), [`gather`] (requests
//!   that arrive spread out, gathered into one commit), [`cache`], [`clock`]
//!   (time and durations), [`files`] (owner-only files), [`meters`] (this
//!   controller's counters and histograms, and the `/metrics` text),
//!   [`wire`] (JSON shapes and limits, shared with the agent and browser),
//!   [`format`] (figures for people, shared with the browser).

pub mod app;
pub mod format;
pub mod stats;
pub mod wire;

#[cfg(feature = "ssr")]
pub mod agent;
#[cfg(feature = "ssr")]
pub mod auth;
#[cfg(feature = "ssr")]
pub mod body;
#[cfg(feature = "ssr")]
pub mod builds;
#[cfg(feature = "ssr")]
pub mod cache;
#[cfg(feature = "ssr")]
pub mod cli;
#[cfg(feature = "ssr")]
pub mod clock;
#[cfg(feature = "ssr")]
pub mod config;
#[cfg(feature = "ssr")]
pub mod error;
#[cfg(feature = "ssr")]
pub mod figures;
#[cfg(feature = "ssr")]
pub mod files;
#[cfg(feature = "ssr")]
pub mod fleet;
#[cfg(feature = "ssr")]
pub mod gather;
#[cfg(feature = "ssr")]
pub mod ingest;
#[cfg(feature = "ssr")]
pub mod ledger;
#[cfg(feature = "ssr")]
pub mod meters;
#[cfg(feature = "ssr")]
pub mod retention;
#[cfg(feature = "ssr")]
pub mod server;
#[cfg(feature = "ssr")]
pub mod site;
#[cfg(feature = "ssr")]
pub mod storage;
#[cfg(feature = "ssr")]
pub mod telemetry;
#[cfg(feature = "ssr")]
pub mod verify;

/// Browser entry point: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
