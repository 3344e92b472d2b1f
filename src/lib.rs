//! Free Agent: the controller of a volunteer build network, its landing
//! page, and the worker agent.
//!
//! # Layout
//!
//! Read from the bottom up; dependencies point down only.
//!
//! Shared by browser and server (compiled to WASM too):
//! - [`wire`]: JSON shapes of the REST API, spoken by the server and the agent.
//! - [`stats`]: the one `NetworkStats` type, its server functions, the pure
//!   CPU-seconds accounting and the demo generator; `stats::ssr` keeps the
//!   running totals (server only).
//! - [`format`]: how figures are written for people (pure).
//! - [`app`]: the Leptos landing page, rendered on the server and hydrated.
//!
//! Server only (feature `ssr`):
//! - bottom: [`db`] (pool, pragmas, the single group-commit writer),
//!   [`error`] (the error type and its HTTP mapping), [`state`] (`AppState`,
//!   settings, caches), [`auth`] (bearer extractors), [`body`] (JSON bodies
//!   with SPEC's status codes), [`config`] (flags).
//! - domains: [`fleet`] (workers, the build lifecycle, the lease reaper),
//!   [`ingest`] (telemetry validation; `ingest::store` batches requests
//!   into one writer job), [`retention`].
//! - top: [`server`] (assembles the router, starts background tasks, serves)
//!   and [`cli`] (subcommands).
//! - [`agent`]: the worker agent and simulator; shares only [`wire`].

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
pub mod cli;
#[cfg(feature = "ssr")]
pub mod config;
#[cfg(feature = "ssr")]
pub mod db;
#[cfg(feature = "ssr")]
pub mod error;
#[cfg(feature = "ssr")]
pub mod fleet;
#[cfg(feature = "ssr")]
pub mod ingest;
#[cfg(feature = "ssr")]
pub mod retention;
#[cfg(feature = "ssr")]
pub mod server;
#[cfg(feature = "ssr")]
pub mod state;

/// Browser entry point: hydrates the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
