//! The landing page: server-rendered with the current figures, hydrated in
//! WASM, then kept live by polling the `NetworkStats` server function.
//!
//! - this file: the HTML document ([`shell`]), the app and its one route,
//!   and the server function that gives the page its first data.
//! - [`live`]: the counters and the polling loop (pause, back-off, reconnect).
//! - [`chart`]: builds per day as a server-rendered SVG with a table twin.
//! - [`sections`]: the static prose (what it is, lend a machine, submit a build).
//!
//! Every view renders the same HTML on server and browser: no branching on
//! target or feature, times shown in UTC, numbers through [`crate::format`].

use leptos::prelude::*;
use leptos_meta::{HashedStylesheet, MetaTags};
use serde::{Deserialize, Serialize};

use crate::stats::{DailyBuilds, NetworkStats};

mod chart;
mod live;
mod polling;
mod sections;

pub use crate::stats::CHART_DAYS;

/// What the page needs to render its first paint: the figures, the chart's
/// days and how often to poll.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Landing {
    /// The current figures.
    pub stats: NetworkStats,
    /// Builds per day for the last [`CHART_DAYS`] days, oldest first.
    pub daily: Vec<DailyBuilds>,
    /// The controller's `--poll-interval`, ms.
    pub poll_interval_ms: u64,
    /// The controller's `--online-window`, ms: what "online" means.
    pub online_window_ms: u64,
}

/// The first data of the landing page, in one round trip.
#[server(prefix = "/sfn", endpoint = "landing")]
pub async fn get_landing() -> Result<Landing, ServerFnError> {
    use crate::stats::reader::{figures, unavailable};
    let figures = figures()?;
    let stats = figures.current().await.map_err(|_| unavailable())?;
    let daily = figures.chart_days().await.map_err(|_| unavailable())?;
    let poll_interval_ms = u64::try_from(figures.poll_interval().as_millis())
        .unwrap_or(u64::MAX)
        .max(100);
    let online_window_ms = u64::try_from(figures.online_window().as_millis()).unwrap_or(u64::MAX);
    Ok(Landing {
        stats,
        daily,
        poll_interval_ms,
        online_window_ms,
    })
}

/// The HTML document around the app. Everything static lives here, outside
/// the hydrated body, so it costs the WASM bundle nothing.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <title>"Free Agent: a volunteer build network"</title>
                <meta
                    name="description"
                    content="Free Agent is a volunteer build network: people lend idle machines, the network sends them app builds, and the controller keeps exact, open books of every build and every CPU-second given."
                />
                <meta name="color-scheme" content="light dark"/>
                <meta name="theme-color" content="#f6f7fb" media="(prefers-color-scheme: light)"/>
                <meta name="theme-color" content="#0d1117" media="(prefers-color-scheme: dark)"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                // freeagent.<hash>.css when cargo-leptos hashed the files
                // (read from hash.txt, as HydrationScripts does for JS and WASM).
                <HashedStylesheet options=options.clone()/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The app: one page, the same at every path, so it needs no router (which
/// would cost the WASM bundle about 55 KB gzipped).
#[component]
pub fn App() -> impl IntoView {
    view! { <Landing/> }
}

/// The page's route for `leptos_routes_with_context`: rendered
/// asynchronously, so the first HTML already holds the figures (for visitors
/// without JavaScript and for search engines) instead of streaming them in
/// by script. `generate_route_list(App)` would give out-of-order streaming.
#[cfg(feature = "ssr")]
pub fn routes() -> Vec<leptos_axum::AxumRouteListing> {
    vec![leptos_axum::AxumRouteListing::new(
        "/".to_string(),
        leptos_router::SsrMode::Async,
        [leptos_router::Method::Get],
        vec![],
    )]
}

/// The landing page.
#[component]
fn Landing() -> impl IntoView {
    let landing = Resource::new(|| (), |_| get_landing());
    view! {
        <a class="skip" href="#network">"Skip to the network figures"</a>
        <header class="masthead">
            <div class="page masthead-row">
                <a class="brand" href="/">
                    <svg class="brand-mark" viewBox="0 0 32 32" aria-hidden="true">
                        <rect width="32" height="32" rx="8"/>
                        <path d="M10 22V10h12M10 16h8"/>
                    </svg>
                    "Free Agent"
                </a>
                <nav aria-label="Sections">
                    <a href="#network">"Network"</a>
                    <a href="#about">"About"</a>
                    <a href="#lend">"Lend a machine"</a>
                    <a href="#submit">"Submit a build"</a>
                </nav>
            </div>
        </header>
        <main>
            <section class="hero page" aria-labelledby="hero-title">
                <h1 id="hero-title">"Spare machines, building apps for everyone."</h1>
                <p class="lede">
                    "Free Agent is a volunteer build network. People lend idle computers, the network sends them app builds, and the controller keeps exact, open books of every build and every CPU-second given."
                </p>
            </section>
            <Suspense fallback=|| view! { <p class="page">"Loading the network figures."</p> }>
                {move || Suspend::new(async move {
                    match landing.await {
                        Ok(first) => view! { <live::Network first/> }.into_any(),
                        Err(_) => view! {
                            <section id="network" class="page network">
                                <h2>"The network right now"</h2>
                                <p class="unavailable">
                                    "The figures are unavailable right now. Reload the page in a minute."
                                </p>
                            </section>
                        }
                        .into_any(),
                    }
                })}
            </Suspense>
            <sections::About/>
            <sections::Lend/>
            <sections::Submit/>
        </main>
        <footer class="footer">
            <div class="page">
                <p>
                    "Free Agent. Figures are public: "
                    <a href="/api/stats"><code>"/api/stats"</code></a>
                    " and "
                    <a href="/api/stats/daily?days=30"><code>"/api/stats/daily"</code></a>
                    "."
                </p>
            </div>
        </footer>
    }
}
