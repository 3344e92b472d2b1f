//! `/builds/{id}`: one build's own page for its submitter (SPEC "Pages").
//!
//! The server renders only the shell (the build's number and the layout):
//! it has no secret, and the secret never reaches it, since it rides in the
//! URL fragment. The hydrated page reads it from `location.hash`, fetches
//! the build and its samples with it ([`fetch`]), and polls every poll
//! interval until the build is finished. Until then, and whenever the
//! secret does not open the build, the page shows no status, figure or
//! sample: only a notice.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_meta::Title;

use super::layout::{Footer, Masthead};
use super::polling::{backoff_ms, every_text};
use crate::format;
use crate::wire::{BuildView, StoredSnapshot};

mod chart;
mod fetch;

use chart::{memory, SampleChart};
use fetch::{build_and_samples, token_in, Failure};

/// Poll interval when the controller's cannot be read, ms (its default).
const DEFAULT_POLL_MS: u64 = 5_000;

/// Whether a build in `status` is over: its page stops polling.
pub fn finished(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// A status for people.
pub fn status_words(status: &str) -> &'static str {
    match status {
        "pending" => "Queued",
        "assigned" => "Claimed by a worker",
        "building" => "Building",
        "completed" => "Completed",
        "failed" => "Failed",
        "cancelled" => "Cancelled",
        _ => "Unknown",
    }
}

/// A moment for people, in UTC: `2026-12-02 14:03:27 UTC`.
pub fn moment(ms: i64) -> String {
    format!(
        "{} {}",
        format::iso_day(ms.div_euclid(86_400_000)),
        format::clock_utc(ms)
    )
}

/// What the page says instead of (or, when reconnecting, beside) the build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice {
    /// Before the hydrated page has read the fragment: the server's HTML.
    Opening,
    /// The build is on screen and nothing is wrong.
    None,
    /// The link has no secret.
    NoToken,
    /// The secret does not open this build.
    Denied,
    /// No such build.
    Missing,
    /// The controller did not answer; trying again.
    Unreachable,
}

/// The build page.
#[component]
pub fn BuildPage(id: i64) -> impl IntoView {
    let poll = Resource::new(|| (), |_| super::get_poll_interval());
    view! {
        <Title text=format!("Build {id} · Free Agent")/>
        <a class="skip" href="#content">"Skip to the build"</a>
        <Masthead/>
        <main id="content" class="page build-page">
            <p class="eyebrow">"Your build"</p>
            <h1 id="build-title">"Build " {id}</h1>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    let poll_ms = poll.await.unwrap_or(DEFAULT_POLL_MS);
                    view! { <Live id poll_ms/> }
                })}
            </Suspense>
        </main>
        <Footer/>
    }
}

/// The notice, the build and its samples, kept live.
#[component]
fn Live(id: i64, poll_ms: u64) -> impl IntoView {
    let notice = RwSignal::new(Notice::Opening);
    let build = RwSignal::new(None::<BuildView>);
    let samples = RwSignal::new(Vec::<StoredSnapshot>::new());
    let failures = RwSignal::new(0u32);
    let token = StoredValue::new(None::<String>);
    let busy = StoredValue::new(false);
    // Answers to a request sent before the secret changed are dropped.
    let generation = StoredValue::new(0u64);

    let load = move || {
        let Some(secret) = token.get_value() else {
            return;
        };
        if busy.get_value() {
            return;
        }
        busy.set_value(true);
        let sent = generation.get_value();
        let known = build.with_untracked(|b| b.as_ref().map(|b| b.snapshot_count));
        spawn_local(async move {
            let answer = build_and_samples(id, &secret, known).await;
            busy.set_value(false);
            if generation.get_value() != sent {
                return;
            }
            match answer {
                Ok((next, fresh)) => {
                    failures.set(0);
                    if let Some(fresh) = fresh {
                        samples.set(fresh);
                    }
                    build.set(Some(next));
                    notice.set(Notice::None);
                }
                Err(Failure::Unreachable) => {
                    failures.update(|f| *f = f.saturating_add(1));
                    notice.set(Notice::Unreachable);
                }
                Err(refused) => {
                    build.set(None);
                    samples.set(Vec::new());
                    notice.set(if refused == Failure::Denied {
                        Notice::Denied
                    } else {
                        Notice::Missing
                    });
                }
            }
        });
    };

    // Reads the secret from the fragment and starts over with it: once
    // hydrated (effects run only in the browser), and whenever the
    // fragment changes.
    let open = move || {
        let hash = window().location().hash().unwrap_or_default();
        generation.set_value(generation.get_value().wrapping_add(1));
        busy.set_value(false);
        build.set(None);
        samples.set(Vec::new());
        failures.set(0);
        match token_in(&hash) {
            Some(secret) => {
                token.set_value(Some(secret));
                load();
            }
            None => {
                token.set_value(None);
                notice.set(Notice::NoToken);
            }
        }
    };
    Effect::new(move |_| open());
    let listener = window_event_listener(leptos::ev::hashchange, move |_| open());
    on_cleanup(move || listener.remove());

    // Polls while the build runs (and while the controller is unreachable,
    // backing off); stops for good once the build is finished or refused.
    let polling = Memo::new(move |_| {
        let running = build.with(|b| b.as_ref().is_some_and(|b| !finished(&b.status)));
        running || notice.get() == Notice::Unreachable
    });
    let delay = Memo::new(move |_| backoff_ms(poll_ms, failures.get()));
    Effect::new(move |_| {
        if !polling.get() {
            return;
        }
        let every = Duration::from_millis(delay.get());
        if let Ok(handle) = set_interval_with_handle(load, every) {
            on_cleanup(move || handle.clear());
        }
    });

    view! {
        <div class="notice-slot" role="status">
            {move || notice_view(notice.get(), id)}
        </div>
        <Show when=move || build.with(Option::is_some)>
            <Shown current=build samples poll_ms notice/>
        </Show>
    }
}

/// What the page says for `notice`, without any figure of the build.
fn notice_view(notice: Notice, id: i64) -> AnyView {
    let (class, title, text): (&str, &str, String) = match notice {
        Notice::None => return ().into_any(),
        Notice::Opening => (
            "notice",
            "Opening the build",
            "This page reads the build's secret from its link, which never reaches the server, and then asks the controller for the build. That needs JavaScript.".into(),
        ),
        Notice::NoToken => (
            "notice",
            "This link has no secret",
            format!("Build {id} is shown only to whoever holds its secret. Open the link its submitter received: it ends in #token= followed by the secret (the pageUrl of the answer to POST /api/builds)."),
        ),
        Notice::Denied => (
            "notice refused",
            "This secret does not open this build",
            format!("The secret in this link is not the one of build {id}. Check that the whole link was copied, up to the end of the secret."),
        ),
        Notice::Missing => (
            "notice refused",
            "No such build",
            format!("This controller has no build {id}. Check the number in the link."),
        ),
        Notice::Unreachable => (
            "notice warn",
            "Reconnecting…",
            "The controller did not answer. Trying again; anything already shown stays.".into(),
        ),
    };
    view! {
        <div class=class id="build-notice" data-notice=format!("{notice:?}").to_lowercase()>
            <p class="notice-title">{title}</p>
            <p>{text}</p>
        </div>
    }
    .into_any()
}

/// The build's facts, figures and samples, live.
#[component]
fn Shown(
    current: RwSignal<Option<BuildView>>,
    samples: RwSignal<Vec<StoredSnapshot>>,
    poll_ms: u64,
    notice: RwSignal<Notice>,
) -> AnyView {
    let build = current;
    // Read only inside `Show`, where the build is there.
    let get = move |read: fn(&BuildView) -> String| {
        move || build.with(|b| b.as_ref().map(read).unwrap_or_default())
    };
    let status = move || build.with(|b| b.as_ref().map(|b| b.status.clone()).unwrap_or_default());
    let live_text = move || {
        let status = status();
        if notice.get() == Notice::Unreachable {
            "Reconnecting…".to_string()
        } else if finished(&status) {
            "Finished: this page no longer updates".to_string()
        } else {
            format!("Updating every {}", every_text(poll_ms))
        }
    };
    let live_state = move || {
        if notice.get() == Notice::Unreachable {
            "reconnecting"
        } else if finished(&status()) {
            "paused"
        } else {
            "live"
        }
    };
    let cpu_seconds = move || build.with(|b| b.as_ref().map_or(0.0, |b| b.cpu_seconds));
    let peak = move || build.with(|b| b.as_ref().and_then(|b| b.peak_memory_mb));
    let count = move || build.with(|b| b.as_ref().map_or(0, |b| b.snapshot_count));
    let cores_now = move || {
        samples.with(|s| {
            s.last()
                .map(|s| chart::cores_text(chart::cores(s)))
                .unwrap_or_else(|| "–".into())
        })
    };
    let figures = view! {
            <dl class="counters build-figures">
                <div class="counter">
                    <dt>"CPU time"</dt>
                    <dd class="figure">
                        <data id="build-cpu-seconds" value=move || cpu_seconds().to_string()>
                            {move || format::duration_ms((cpu_seconds() * 1000.0).round() as i64)}
                        </data>
                    </dd>
                    <dd class="hint">"of all its processes"</dd>
                </div>
                <div class="counter">
                    <dt>"Peak memory"</dt>
                    <dd class="figure">
                        <data id="build-peak-memory" value=move || peak().map(|m| m.to_string()).unwrap_or_default()>
                            {move || peak().map(memory).unwrap_or_else(|| "–".into())}
                        </data>
                    </dd>
                    <dd class="hint">"resident, largest seen"</dd>
                </div>
                <div class="counter">
                    <dt>"Samples"</dt>
                    <dd class="figure">
                        <data id="build-samples" value=move || count().to_string()>
                            {move || format::count(count().max(0) as u64)}
                        </data>
                    </dd>
                    <dd class="hint">"CPU and memory readings"</dd>
                </div>
                <div class="counter">
                    <dt>"Cores now"</dt>
                    <dd class="figure" id="build-cores-now">{cores_now}</dd>
                    <dd class="hint">"in the latest sample"</dd>
                </div>
            </dl>
    }
    .into_any();
    let facts = view! {
            <dl class="facts">
                <div><dt>"Platform"</dt><dd id="build-platform">{get(|b| b.platform.clone())}</dd></div>
                <div><dt>"Attempt"</dt><dd id="build-attempt">{get(|b| b.attempt.to_string())}</dd></div>
                <div><dt>"Submitted"</dt><dd>{get(|b| moment(b.submitted_at))}</dd></div>
                <div><dt>"Started"</dt><dd>{get(|b| b.started_at.map(moment).unwrap_or_else(|| "not yet".into()))}</dd></div>
                <div>
                    <dt>"Finished"</dt>
                    <dd>{get(|b| b.completed_at.map(moment).unwrap_or_else(|| "not yet".into()))}</dd>
                </div>
                <div>
                    <dt>"Build time"</dt>
                    <dd>
                        {get(|b| match (b.started_at, b.completed_at) {
                            (Some(start), Some(end)) => format::duration_ms(end - start),
                            (Some(start), None) => format!("running since {}", format::clock_utc(start)),
                            _ => "not started".into(),
                        })}
                    </dd>
                </div>
            </dl>
    }
    .into_any();
    view! {
        <section class="build" aria-labelledby="build-title">
            <div class="build-head">
                <span class="pill" id="build-status" data-status=status>
                    {move || status_words(&status())}
                </span>
                <span class="build-label">{get(|b| b.label.clone().unwrap_or_else(|| "no label".into()))}</span>
            </div>
            <p class="status" id="build-live" data-state=live_state>
                <span class="dot" aria-hidden="true"></span>
                <span>{live_text}</span>
            </p>
            {figures}
            {facts}
            <Show when=move || build.with(|b| b.as_ref().is_some_and(|b| b.error.is_some()))>
                <p class="build-error"><strong>"What went wrong: "</strong>{get(|b| b.error.clone().unwrap_or_default())}</p>
            </Show>
            <SampleChart samples/>
        </section>
    }
    .into_any()
}
