//! The landing page: server-rendered with the current figures, hydrated in
//! WASM, then kept live by polling the `NetworkStats` server function.
//!
//! - this file: the HTML document ([`shell`]), the app and its routes,
//!   and the server functions that give the pages their first data.
//! - [`route`]: which page a path shows (a hand-written dispatch).
//! - [`layout`]: the masthead and footer every page shares.
//! - [`build`]: a build's own page, live for its submitter.
//! - [`missing`]: the 404 page.
//! - [`live`]: the counters and the polling loop (pause, back-off, reconnect).
//! - [`chart`]: builds per day as a server-rendered SVG with a table twin.
//! - [`sections`]: the static prose (what it is, lend a machine, submit a build).
//!
//! Every view renders the same HTML on server and browser: no branching on
//! target or feature, times shown in UTC, numbers through [`crate::format`].

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, HashedStylesheet, MetaTags, Title};
use serde::{Deserialize, Serialize};

use crate::stats::{DailyBuilds, NetworkStats};

mod build;
mod chart;
mod layout;
mod live;
mod missing;
mod polling;
pub mod route;
mod sections;

use layout::{Footer, Masthead};
use route::Page;

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
    let poll_interval_ms = poll_ms(figures.poll_interval());
    let online_window_ms = u64::try_from(figures.online_window().as_millis()).unwrap_or(u64::MAX);
    Ok(Landing {
        stats,
        daily,
        poll_interval_ms,
        online_window_ms,
    })
}

/// The controller's `--poll-interval` in ms, as the pages poll: never more
/// often than ten times a second.
#[cfg(feature = "ssr")]
fn poll_ms(interval: std::time::Duration) -> u64 {
    u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(100)
}

/// How often the build page polls, ms (the controller's `--poll-interval`).
/// A server function, so that the server-rendered page carries it to the
/// browser without a request of its own.
#[server(prefix = "/sfn", endpoint = "poll_interval")]
pub async fn get_poll_interval() -> Result<u64, ServerFnError> {
    Ok(poll_ms(crate::stats::reader::figures()?.poll_interval()))
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

/// The app: the page the path names (see [`route`] for why no router).
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    use leptos::either::EitherOf3;
    match route::current() {
        Page::Landing => EitherOf3::A(view! { <Landing/> }),
        Page::Build(id) => EitherOf3::B(view! { <build::BuildPage id/> }),
        Page::Missing => EitherOf3::C(view! { <missing::NotFound/> }),
    }
}

/// The pages' routes for `leptos_routes_with_context`, rendered
/// asynchronously, so the first HTML already holds what the server knows
/// (the landing page's figures, for visitors without JavaScript and for
/// search engines) instead of streaming it in by script.
/// `generate_route_list(App)` would give out-of-order streaming. Every
/// other path goes to the fallback, which renders the 404 page.
#[cfg(feature = "ssr")]
pub fn routes() -> Vec<leptos_axum::AxumRouteListing> {
    ["/", "/builds/{id}"]
        .into_iter()
        .map(|path| {
            leptos_axum::AxumRouteListing::new(
                path.to_string(),
                leptos_router::SsrMode::Async,
                [leptos_router::Method::Get],
                vec![],
            )
        })
        .collect()
}

/// The landing page.
#[component]
fn Landing() -> impl IntoView {
    let landing = Resource::new(|| (), |_| get_landing());
    view! {
        <Title text="Free Agent: a volunteer build network"/>
        <a class="skip" href="#network">"Skip to the network figures"</a>
        <Masthead home=true/>
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
        <Footer/>
    }
}
