//! Assembles the controller: the router (REST API, server functions, the
//! landing page and its files), the background tasks, and serving with
//! graceful shutdown (connections and their limits: `connections`). [`serve`] takes its listener and its shutdown signal
//! from the caller, so tests run the real thing on `127.0.0.1:0`.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::handler::Handler;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::LeptosRoutes;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::shell;
use crate::auth::{check_secret_strength, hash_secret, AuthState, SeenTimes};
use crate::config::ServeArgs;
use crate::error::AppError;
use crate::figures::FiguresState;
use crate::fleet::FleetState;
use crate::ingest::IngestState;
use crate::meters::Meters;
use crate::retention::RetentionState;
use crate::stats::reader::Figures;
use crate::storage::{Duty, Storage};

mod connections;

/// The composition root: every domain's own state, assembled once. Each
/// handler and extractor takes only the part it needs (`FromRef`).
///
/// axum clones the router's state for every request, so the parts live
/// behind one `Arc`: a clone is one count, not a dozen counts and the
/// Leptos options' strings.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// Each part a handler may take from [`AppState`].
macro_rules! parts_from_ref {
    ($($field:ident: $part:ty),* $(,)?) => {
        $(impl FromRef<AppState> for $part {
            fn from_ref(state: &AppState) -> $part {
                state.0.$field.clone()
            }
        })*
    };
}

parts_from_ref!(
    storage: Storage,
    auth: AuthState,
    fleet: FleetState,
    ingest: IngestState,
    figures: FiguresState,
    retention: RetentionState,
    meters: Meters,
    leptos_options: LeptosOptions,
);

/// What [`AppState`] holds.
pub struct AppParts {
    /// The database.
    pub storage: Storage,
    /// Secrets, worker identities, last-seen times.
    pub auth: AuthState,
    /// Workers and builds: lease timeout.
    pub fleet: FleetState,
    /// Telemetry: its queue and rate buckets.
    pub ingest: IngestState,
    /// The figures' read side and its caches.
    pub figures: FiguresState,
    /// Retention's settings.
    pub retention: RetentionState,
    /// This controller's meters and the metrics token (`GET /metrics`).
    pub meters: Meters,
    /// Where cargo-leptos put the site, for the page and its assets.
    pub leptos_options: LeptosOptions,
}

/// Where a generated admin key is written.
pub const ADMIN_KEY_FILE: &str = "data/admin.key";
/// Longest a request may take before the controller gives up on it: above
/// the longest long poll (`waitS` 60).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// Why the controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] crate::storage::OpenError),
    /// Listening, serving or the admin key file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// An admin key (or metrics token) anyone could guess.
    #[error(transparent)]
    WeakSecret(#[from] crate::auth::WeakSecret),
}

/// The admin key given, or the one in `data/admin.key`, generated when
/// missing. A key too short to be safe stops the controller, wherever it
/// came from.
fn admin_key(given: Option<&str>) -> Result<String, ServeError> {
    if let Some(key) = given.filter(|k| !k.trim().is_empty()) {
        check_secret_strength("the admin key (--admin-key or FREEAGENT_ADMIN_KEY)", key)?;
        return Ok(key.trim().to_string());
    }
    let path = Path::new(ADMIN_KEY_FILE);
    if let Ok(existing) = std::fs::read_to_string(path) {
        if !existing.trim().is_empty() {
            check_secret_strength("the admin key in data/admin.key", &existing)?;
            tracing::info!(path = %path.display(), "admin key read from file");
            return Ok(existing.trim().to_string());
        }
    }
    let key = crate::auth::new_secret();
    crate::files::write_private(path, &key)?;
    tracing::info!(path = %path.display(), "generated an admin key; read it from this file");
    Ok(key)
}

fn leptos_options(listen: std::net::SocketAddr) -> LeptosOptions {
    let mut options = leptos::config::get_configuration(None)
        .map(|conf| conf.leptos_options)
        .unwrap_or_else(|_| LeptosOptions::builder().output_name("freeagent").build());
    if options.output_name.is_empty() {
        options.output_name = Arc::from("freeagent");
    }
    options.site_addr = listen;
    crate::site::resolve_hashing(&mut options);
    options
}

/// Opens the database and builds the state every handler shares.
pub async fn build_state(args: &ServeArgs) -> Result<AppState, ServeError> {
    let key = admin_key(args.admin_key.as_deref())?;
    if let Some(token) = args.metrics_token.as_deref() {
        check_secret_strength(
            "the metrics token (--metrics-token or FREEAGENT_METRICS_TOKEN)",
            token,
        )?;
    }
    let storage = Storage::open(&args.database_url).await?;
    let meters = Meters::new(args.metrics_token.as_deref());
    storage.attach_meters(meters.clone());
    let grace_ms = args.telemetry_grace.as_millis() as i64;
    let seen = SeenTimes::new(storage.clone(), args.online_window, args.lease_timeout);
    Ok(AppState(Arc::new(AppParts {
        auth: AuthState::new(
            storage.clone(),
            hash_secret(&key),
            seen.clone(),
            args.online_window,
        ),
        fleet: FleetState {
            storage: storage.clone(),
            lease_timeout: args.lease_timeout,
            telemetry_grace: args.telemetry_grace,
            queue_changed: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            seen: seen.clone(),
        },
        ingest: IngestState::start(storage.clone(), grace_ms, args.telemetry_rate),
        figures: FiguresState::new(
            storage.clone(),
            args.stats_ttl,
            args.online_window,
            args.poll_interval,
            seen,
        ),
        retention: RetentionState {
            storage: storage.clone(),
            retention_days: args.retention_days,
            telemetry_grace: args.telemetry_grace,
            lease_timeout: args.lease_timeout,
        },
        meters,
        storage,
        leptos_options: leptos_options(args.listen),
    })))
}

async fn healthz(State(storage): State<Storage>) -> Response {
    match storage.health().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(error) => {
            tracing::error!(%error, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

async fn unknown_api_route() -> AppError {
    AppError::NotFound("no such API route; see the README for the routes".into())
}

/// The whole controller as one service: the router (REST API, server
/// functions, the page and its files) inside the layers every answer goes
/// through.
///
/// Those layers wrap the router once rather than through `Router::layer`,
/// which wraps each route separately, so that each layer costs a boxed
/// clone of the service under it and a boxed future on every request.
/// Only `time_requests` stays a router layer: it needs the matched route.
fn router(state: AppState) -> impl connections::Controller {
    let meters = state.meters.clone();
    let api = Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::fleet::router())
        .merge(crate::ingest::router())
        .merge(crate::figures::router())
        .route("/api/{*rest}", axum::routing::any(unknown_api_route))
        .layer(middleware::from_fn(crate::body::require_json));
    let figures = Figures(Arc::new(state.figures.clone()));
    let page_figures = figures.clone();
    let options = state.leptos_options.clone();
    let not_found = leptos_axum::file_and_error_handler_with_context::<AppState, _>(
        move || {
            provide_context(page_figures.clone());
            crate::site::adopt_nonce();
        },
        shell,
    )
    .with_state(state.clone());
    let router = Router::new()
        .merge(api)
        .leptos_routes_with_context(
            &state,
            crate::app::routes(),
            move || {
                provide_context(figures.clone());
                crate::site::adopt_nonce();
            },
            move || shell(options.clone()),
        )
        // Every other path: a file of the site, or the 404 page.
        .merge(crate::site::site_files(&state.leptos_options, not_found))
        .layer(middleware::from_fn_with_state(
            meters,
            crate::meters::time_requests,
        ))
        .with_state(state);
    ServiceBuilder::new()
        // Outermost, so that every answer carries them, a timeout's included.
        .layer(middleware::from_fn(crate::site::security_headers))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(crate::site::compression())
        .layer(middleware::map_response(crate::site::html_cache_control))
        .service(router)
}

/// Serves the controller on `listener` until `shutdown` resolves, with the
/// background tasks (lease reaper, retention) running alongside.
pub async fn serve<F>(listener: TcpListener, args: ServeArgs, shutdown: F) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut args = args;
    args.listen = listener.local_addr()?;
    let state = build_state(&args).await?;
    let storage = state.storage.clone();
    storage.forward_queue_changes(state.fleet.queue_changed.clone());
    let background = [
        tokio::spawn(crate::fleet::reaper::run_reaper(state.fleet.clone())),
        tokio::spawn(crate::retention::run_retention(state.retention.clone())),
        tokio::spawn(crate::auth::run_seen_flusher(state.auth.clone())),
        tokio::spawn(crate::meters::run_upkeep(state.meters.clone())),
    ];
    let auth = state.auth.clone();
    tracing::info!(
        addr = %args.listen,
        database = %crate::storage::redacted_url(&args.database_url),
        backend = storage.backend_name(),
        "controller listening"
    );
    let stopping = state.fleet.stopping.clone();
    let limits = connections::Limits {
        head: args.head_timeout,
        body: args.body_timeout,
        idle: args.idle_timeout,
        max_connections: args.max_connections,
    };
    connections::raise_open_files_limit(args.max_connections);
    connections::serve_connections(listener, router(state), limits, async move {
        shutdown.await;
        // Held long polls answer 204 now instead of holding the
        // shutdown for up to a minute.
        let _ = stopping.send(true);
    })
    .await;
    for task in background {
        task.abort();
    }
    // The last calls seen are written before the controller goes.
    if let Err(error) = auth.flush_seen().await {
        tracing::warn!(%error, "could not write the workers' last seen-times");
    }
    // Another controller on the same database takes these over at once
    // rather than when their leases run out.
    for duty in [Duty::Reaper, Duty::Retention] {
        if let Err(error) = storage.give_up_duty(duty).await {
            tracing::warn!(%error, ?duty, "could not hand a duty over");
        }
    }
    tracing::info!("controller stopped");
    Ok(())
}
