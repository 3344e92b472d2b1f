//! How server functions reach the figures without knowing who computes
//! them: the `figures` domain implements [`FiguresReader`], the shell puts
//! it in the Leptos context, and [`figures`] finds it there (a
//! `ServerFnError` when it is missing, never a panic).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use leptos::prelude::{use_context, ServerFnError};

use super::{DailyBuilds, NetworkStats};
use crate::error::{AppError, Result};

/// The figures as the page and the REST routes read them.
pub trait FiguresReader: Send + Sync {
    /// `NetworkStats`, at most `--stats-ttl` old.
    fn current(&self) -> BoxFuture<'_, Result<NetworkStats>>;
    /// Builds per UTC day for the last `days` days, oldest first.
    fn daily(&self, days: u32) -> BoxFuture<'_, Result<Vec<DailyBuilds>>>;
    /// The chart's [`super::CHART_DAYS`] days, at most `--stats-ttl` old.
    fn chart_days(&self) -> BoxFuture<'_, Result<Vec<DailyBuilds>>>;
    /// How often the page refreshes its counters.
    fn poll_interval(&self) -> Duration;
    /// A worker seen within this window counts as online.
    fn online_window(&self) -> Duration;
}

/// The reader in the Leptos context. Cheap to clone.
#[derive(Clone)]
pub struct Figures(pub Arc<dyn FiguresReader>);

impl std::ops::Deref for Figures {
    type Target = dyn FiguresReader;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// The figures reader of this request's context.
pub fn figures() -> std::result::Result<Figures, ServerFnError> {
    use_context::<Figures>().ok_or_else(|| {
        tracing::error!("no figures reader in the server function's context");
        unavailable()
    })
}

/// What a visitor is told when the figures cannot be read.
pub fn unavailable() -> ServerFnError {
    ServerFnError::new("statistics are unavailable right now")
}

/// `days` of the daily figures: 30 when absent, text that is not a whole
/// number 400, outside 1..=365 422.
pub fn parse_days(text: Option<&str>) -> Result<u32> {
    let Some(text) = text else { return Ok(30) };
    let days = text
        .trim()
        .parse::<i64>()
        .map_err(|_| AppError::BadRequest("days must be a whole number".into()))?;
    if !(1..=365).contains(&days) {
        return Err(AppError::Invalid("days must be in 1..=365".into()));
    }
    Ok(days as u32)
}

/// Gives a server function's answer the status code of a client error.
pub fn set_server_fn_status(error: &AppError) {
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(error.status_and_code().0);
    }
}
