//! The live network figures: server-rendered with the first data, then
//! refreshed every poll interval by the hydrated page.
//!
//! The timer lives in an `Effect` (effects run only in the browser) and is
//! cleared on cleanup; the effect re-runs, replacing the timer, whenever the
//! delay changes (back-off after failures) or the visitor pauses. A failed
//! poll keeps the last figures on screen and says the page is reconnecting.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::chart::DailyChart;
use super::{Landing, CHART_DAYS};
use crate::format;
use crate::stats::{get_daily_builds, get_network_stats, NetworkStats};

/// Screen-reader summaries are announced at most this often.
const ANNOUNCE_EVERY_MS: i64 = 30_000;
/// Longest wait between polls while reconnecting.
const MAX_BACKOFF_MS: u64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// Timer ticks a poll may stay unanswered before it counts as failed.
const STALLED_TICKS: u32 = 3;

/// Wait before the next poll after `failures` failed polls in a row: the
/// poll interval, doubling per failure up to eight times it (at most a
/// minute, never less than the interval).
pub fn backoff_ms(poll_ms: u64, failures: u32) -> u64 {
    if failures == 0 {
        return poll_ms;
    }
    let cap = poll_ms.saturating_mul(8).min(MAX_BACKOFF_MS).max(poll_ms);
    poll_ms.saturating_mul(1 << failures.min(16)).min(cap)
}

/// How often the page refreshes, for people: `5s`, `500ms`, `1m`.
pub fn every_text(poll_ms: u64) -> String {
    if poll_ms < 1000 {
        format!("{poll_ms}ms")
    } else {
        format::duration_ms(i64::try_from(poll_ms).unwrap_or(i64::MAX))
    }
}

/// What a screen reader hears about the figures, now and then.
fn summary(s: &NetworkStats) -> String {
    format!(
        "{} nodes online, {} builds running, {} queued; {} builds finished in total.",
        format::count(s.nodes_online),
        format::count(s.active_builds),
        format::count(s.builds_queued),
        format::count(s.total_builds),
    )
}

/// Where the live updates stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    Live,
    Paused,
    Reconnecting,
}

impl Connection {
    fn key(self) -> &'static str {
        match self {
            Connection::Live => "live",
            Connection::Paused => "paused",
            Connection::Reconnecting => "reconnecting",
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
    } = first;
    let last_announced = StoredValue::new(stats.generated_at);
    let stats = RwSignal::new(stats);
    let daily = RwSignal::new(daily);
    let paused = RwSignal::new(false);
    let failures = RwSignal::new(0u32);
    let announcement = RwSignal::new(String::new());
    let in_flight = StoredValue::new(false);
    let waited_ticks = StoredValue::new(0u32);
    let generation = StoredValue::new(0u64);
    let delay = Memo::new(move |_| backoff_ms(poll_interval_ms, failures.get()));

    let connection = Memo::new(move |_| {
        if paused.get() {
            Connection::Paused
        } else if failures.get() > 0 {
            Connection::Reconnecting
        } else {
            Connection::Live
        }
    });

    let lost_contact = move || {
        if failures.get_untracked() == 0 {
            announcement.set(
                "Lost contact with the controller. Showing the last figures while reconnecting."
                    .to_string(),
            );
        }
        failures.update(|f| *f = f.saturating_add(1));
    };

    let poll = move || {
        if in_flight.get_value() {
            // A request that never answers (a dropped connection) must not
            // stop the page for good: after a few ticks give up on it.
            let waited = waited_ticks.get_value() + 1;
            waited_ticks.set_value(waited);
            if waited < STALLED_TICKS {
                return;
            }
            lost_contact();
        }
        let mine = generation.get_value().wrapping_add(1);
        generation.set_value(mine);
        in_flight.set_value(true);
        waited_ticks.set_value(0);
        spawn_local(async move {
            let result = get_network_stats().await;
            if generation.get_value() != mine {
                return; // abandoned as stalled; a newer request is under way
            }
            in_flight.set_value(false);
            if paused.get_untracked() {
                return;
            }
            match result {
                Ok(next) => {
                    let previous = stats.get_untracked();
                    let chart_stale = next.total_builds != previous.total_builds
                        || next.generated_at.div_euclid(DAY_MS)
                            != previous.generated_at.div_euclid(DAY_MS);
                    if failures.get_untracked() > 0 {
                        failures.set(0);
                        announcement.set(format!("Reconnected. {}", summary(&next)));
                        last_announced.set_value(next.generated_at);
                    } else if next.generated_at - last_announced.get_value() >= ANNOUNCE_EVERY_MS
                        && summary(&next) != summary(&previous)
                    {
                        announcement.set(summary(&next));
                        last_announced.set_value(next.generated_at);
                    }
                    stats.set(next);
                    if chart_stale {
                        if let Ok(days) = get_daily_builds(Some(CHART_DAYS.to_string())).await {
                            daily.set(days);
                        }
                    }
                }
                Err(_) => lost_contact(),
            }
        });
    };

    Effect::new(move |_| {
        if paused.get() {
            return;
        }
        let every = Duration::from_millis(delay.get());
        if let Ok(handle) = set_interval_with_handle(poll, every) {
            on_cleanup(move || handle.clear());
        }
    });

    let toggle = move |_| {
        let now_paused = !paused.get_untracked();
        paused.set(now_paused);
        announcement.set(if now_paused {
            "Live updates paused.".to_string()
        } else {
            "Live updates resumed.".to_string()
        });
        if !now_paused {
            poll();
        }
    };

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
                        {move || match connection.get() {
                            Connection::Live => format!("Updating every {}", every_text(poll_interval_ms)),
                            Connection::Paused => "Updates paused".to_string(),
                            Connection::Reconnecting => "Reconnecting…".to_string(),
                        }}
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
                    <Counter id="nodes-online" label="Nodes online" hint="seen in the last 2 minutes" value=f(|s| format::count(s.nodes_online))/>
                    <Counter id="builds-queued" label="Builds queued" hint="waiting for a machine" value=f(|s| format::count(s.builds_queued))/>
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

/// One figure with its label and a short explanation.
#[component]
fn Counter(
    id: &'static str,
    label: &'static str,
    hint: &'static str,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Back-off doubles per failure and stops at eight intervals.
    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(5_000, 0), 5_000);
        assert_eq!(backoff_ms(5_000, 1), 10_000);
        assert_eq!(backoff_ms(5_000, 2), 20_000);
        assert_eq!(backoff_ms(5_000, 3), 40_000);
        assert_eq!(backoff_ms(5_000, 9), 40_000);
        assert_eq!(backoff_ms(1_000, 30), 8_000);
        assert_eq!(backoff_ms(30_000, 5), 60_000);
        assert_eq!(backoff_ms(120_000, 5), 120_000);
    }

    /// Intervals read naturally, sub-second ones too.
    #[test]
    fn every_reads_naturally() {
        assert_eq!(every_text(5_000), "5s");
        assert_eq!(every_text(500), "500ms");
        assert_eq!(every_text(90_000), "1m 30s");
    }
}
