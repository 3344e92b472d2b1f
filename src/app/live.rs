//! The live network figures: server-rendered with the first data, then
//! refreshed every poll interval by the hydrated page.
//!
//! Every decision (when to poll, back-off, what the status line says, which
//! answers are adopted, what is announced) is [`Poller`]'s, pure and tested
//! in [`super::polling`]; this component only wires signals, the timer and
//! the server functions to it. The timer lives in an `Effect` (effects run
//! only in the browser) and is cleared on cleanup; the effect re-runs,
//! replacing the timer, whenever the delay changes (back-off after failures)
//! or the visitor pauses.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::chart::DailyChart;
use super::polling::{Poller, Step};
use super::{Landing, CHART_DAYS};
use crate::format;
use crate::stats::{get_daily_builds, get_network_stats, DailyBuilds, NetworkStats};

/// The signals a [`Poller`] step acts on.
#[derive(Clone, Copy)]
struct Wiring {
    poller: RwSignal<Poller>,
    stats: RwSignal<NetworkStats>,
    daily: RwSignal<Vec<DailyBuilds>>,
    announcement: RwSignal<String>,
}

impl Wiring {
    /// Hands `event` to the poller and does what it answers.
    fn event(self, event: impl FnOnce(&mut Poller) -> Step) {
        if let Some(step) = self.poller.try_update(event) {
            self.run(step);
        }
    }

    /// Does what a step asks: say, show, refresh the chart, send a poll
    /// whose answer goes back to the poller.
    fn run(self, step: Step) {
        if let Some(text) = step.announce {
            self.announcement.set(text);
        }
        if let Some(next) = step.show {
            self.stats.set(next);
        }
        if step.refresh_chart {
            spawn_local(async move {
                if let Ok(days) = get_daily_builds(Some(CHART_DAYS.to_string())).await {
                    self.daily.set(days);
                }
            });
        }
        if let Some(ticket) = step.send {
            spawn_local(async move {
                let result = get_network_stats().await;
                self.event(|poller| match result {
                    Ok(next) => poller.answered(ticket, next),
                    Err(_) => poller.failed(ticket),
                });
            });
        }
    }
}

/// The network section: counters, their status line, the pause control and
/// the history chart.
#[component]
pub fn Network(first: Landing) -> AnyView {
    let Landing {
        stats,
        daily,
        poll_interval_ms,
        online_window_ms,
    } = first;
    let poller = RwSignal::new(Poller::new(stats.clone(), poll_interval_ms));
    let stats = RwSignal::new(stats);
    let daily = RwSignal::new(daily);
    let announcement = RwSignal::new(String::new());
    let wiring = Wiring {
        poller,
        stats,
        daily,
        announcement,
    };
    // Memos, so that the timer is replaced only when these actually change.
    let paused = Memo::new(move |_| poller.with(Poller::paused));
    let delay = Memo::new(move |_| poller.with(Poller::delay_ms));
    let connection = Memo::new(move |_| poller.with(Poller::connection));

    Effect::new(move |_| {
        if paused.get() {
            return;
        }
        let every = Duration::from_millis(delay.get());
        if let Ok(handle) = set_interval_with_handle(move || wiring.event(Poller::tick), every) {
            on_cleanup(move || handle.clear());
        }
    });

    let toggle = move |_| wiring.event(Poller::toggle_pause);

    let f = move |read: fn(&NetworkStats) -> String| move || stats.with(read);

    view! {
        <section id="network" class="network page" aria-labelledby="network-title">
            <div class="network-head">
                <h2 id="network-title">"The network right now"</h2>
                <p class="source">
                    <span
                        class="badge"
                        class:demo=move || stats.with(|s| s.demo)
                        id="data-source"
                    >
                        {move || if stats.with(|s| s.demo) { "Demo data" } else { "Live" }}
                    </span>
                </p>
            </div>
            <div class="status-bar">
                <p class="status" id="connection" data-state=move || connection.get().key()>
                    <span class="dot" aria-hidden="true"></span>
                    <span class="status-text">
                        {move || connection.get().text(poll_interval_ms)}
                    </span>
                    <span class="as-of">
                        "as of "
                        <time id="as-of" datetime=move || format::rfc3339_utc(stats.with(|s| s.generated_at))>{move || format::clock_utc(stats.with(|s| s.generated_at))}</time>
                    </span>
                </p>
                <button
                    type="button"
                    class="pause"
                    id="pause"
                    aria-pressed=move || if paused.get() { "true" } else { "false" }
                    on:click=toggle
                >
                    {move || if paused.get() { "Resume updates" } else { "Pause updates" }}
                </button>
            </div>
            <div class="figures" role="status" aria-live="polite">
                <dl class="counters" aria-live="off">
                    <Counter id="nodes-online" label="Nodes online" hint=format!("seen in the last {}", format::window_words(online_window_ms)) value=f(|s| format::count(s.nodes_online))/>
                    <Counter id="builds-queued" label="Builds queued" hint="waiting for a machine" value=f(|s| format::count(s.builds_queued))/>
                    <div class="counter">
                        <dt>"Typical wait for a machine"</dt>
                        <dd class="figure" id="queue-wait">
                            {move || stats.with(|s| queue_wait_figure(s.queue_wait_p50_ms))}
                        </dd>
                        // Two lines are kept for the hint whichever text it
                        // shows, so the card never changes height.
                        <dd class="hint two-lines" id="queue-wait-hint">
                            {move || stats.with(|s| queue_wait_hint(s.queue_wait_p95_ms))}
                        </dd>
                    </div>
                    <Counter id="active-builds" label="Building now" hint="claimed or running" value=f(|s| format::count(s.active_builds))/>
                    <Counter id="cores-busy" label="Cores busy now" hint="working on builds" value=f(|s| format::cores(s.cpu_cores_busy))/>
                    <Counter id="builds-today" label="Builds today (UTC)" hint="finished since 00:00 UTC" value=f(|s| format::count(s.builds_today))/>
                    <Counter id="total-builds" label="Total builds" hint="finished, ever" value=f(|s| format::count(s.total_builds))/>
                    <Counter id="total-build-time" label="Total build time" hint="of finished builds" value=f(|s| format::duration_ms(s.total_build_time_ms))/>
                    <div class="counter">
                        <dt>"Total CPU time"</dt>
                        // The unit sits on its own line: next to the amount it
                        // would move whenever the amount's width changes.
                        <dd class="figure" id="total-cpu-time">
                            {move || stats.with(|s| format::cpu_time(s.total_cpu_seconds).0)}
                        </dd>
                        <dd class="hint">
                            <span class="unit" id="total-cpu-unit">
                                {move || stats.with(|s| format::cpu_time(s.total_cpu_seconds).1)}
                            </span>
                            " given by volunteers"
                        </dd>
                    </div>
                </dl>
                <p class="visually-hidden" id="announcement">{move || announcement.get()}</p>
            </div>
            <DailyChart days=daily/>
        </section>
    }
    // Erased: the page's full view type is deeper than the compiler's default
    // recursion limit when hydrating.
    .into_any()
}

/// The median queue wait as the card shows it.
fn queue_wait_figure(p50_ms: Option<i64>) -> String {
    p50_ms.map_or_else(|| "none".to_string(), format::wait_ms)
}

/// The queue wait card's hint: the 95th percentile, or why there is none.
fn queue_wait_hint(p95_ms: Option<i64>) -> String {
    match p95_ms {
        Some(ms) => format!("last 24 h; 95% within {}", format::wait_ms(ms)),
        None => "no builds in the last 24 h".to_string(),
    }
}

/// One figure with its label and a short explanation.
#[component]
fn Counter(
    id: &'static str,
    label: &'static str,
    #[prop(into)] hint: String,
    value: impl Fn() -> String + Send + Sync + 'static,
) -> impl IntoView {
    view! {
        <div class="counter">
            <dt>{label}</dt>
            <dd class="figure" id=id>{value}</dd>
            <dd class="hint">{hint}</dd>
        </div>
    }
}
