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

/// `text` safe inside HTML text and attribute values: the label, platform
/// and error come from the submitter and the worker.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How the page's updates stand, as the status line's `data-state` and text.
fn live_line(status: &str, unreachable: bool, poll_ms: u64) -> (&'static str, String) {
    if unreachable {
        ("reconnecting", "Reconnecting…".to_string())
    } else if finished(status) {
        (
            "paused",
            "Finished: this page no longer updates".to_string(),
        )
    } else {
        ("live", format!("Updating every {}", every_text(poll_ms)))
    }
}

/// The build's status, figures and facts as HTML (see [`chart`] for why
/// text rather than `view!`). Every string from the API is escaped.
pub fn build_html(
    b: &BuildView,
    newest: Option<&StoredSnapshot>,
    unreachable: bool,
    poll_ms: u64,
) -> String {
    let (state, line) = live_line(&b.status, unreachable, poll_ms);
    let label = b
        .label
        .as_deref()
        .map_or_else(|| "no label".to_string(), escape);
    let peak_value = b.peak_memory_mb.map(format::plain).unwrap_or_default();
    let peak_text = b.peak_memory_mb.map_or_else(|| "–".to_string(), memory);
    let cores_now = newest.map_or_else(|| "–".to_string(), |s| chart::cores_text(chart::cores(s)));
    let not_yet = |at: Option<i64>| at.map_or_else(|| "not yet".to_string(), moment);
    let build_time = match (b.started_at, b.completed_at) {
        (Some(start), Some(end)) => format::duration_ms(end - start),
        (Some(start), None) => format!("running since {}", format::clock_utc(start)),
        _ => "not started".to_string(),
    };
    let error = b.error.as_deref().map_or_else(String::new, |e| {
        format!(
            "<p class=\"build-error\"><strong>What went wrong: </strong>{}</p>",
            escape(e)
        )
    });
    let counter = |label: &str, id: &str, value: &str, text: &str, hint: &str| {
        format!(
            "<div class=\"counter\"><dt>{label}</dt><dd class=\"figure\"><data id=\"{id}\" value=\"{value}\">{text}</data></dd><dd class=\"hint\">{hint}</dd></div>"
        )
    };
    let fact = |label: &str, id: &str, value: &str| {
        format!("<div><dt>{label}</dt><dd id=\"{id}\">{value}</dd></div>")
    };
    [
        format!(
            "<div class=\"build-head\"><span class=\"pill\" id=\"build-status\" data-status=\"{status}\">{words}</span><span class=\"build-label\">{label}</span></div>",
            status = escape(&b.status),
            words = status_words(&b.status),
        ),
        format!(
            "<p class=\"status\" id=\"build-live\" data-state=\"{state}\"><span class=\"dot\" aria-hidden=\"true\"></span><span>{line}</span></p>"
        ),
        "<dl class=\"counters build-figures\">".to_string(),
        counter(
            "CPU time",
            "build-cpu-seconds",
            &format::plain(b.cpu_seconds),
            &format::duration_ms((b.cpu_seconds * 1000.0).round() as i64),
            "of all its processes",
        ),
        counter("Peak memory", "build-peak-memory", &peak_value, &peak_text, "resident, largest seen"),
        counter(
            "Samples",
            "build-samples",
            &b.snapshot_count.to_string(),
            &format::count(b.snapshot_count.max(0) as u64),
            "CPU and memory readings",
        ),
        counter("Cores now", "build-cores-now", &cores_now, &cores_now, "in the latest sample"),
        "</dl><dl class=\"facts\">".to_string(),
        fact("Platform", "build-platform", &escape(&b.platform)),
        fact("Attempt", "build-attempt", &b.attempt.to_string()),
        fact("Submitted", "build-submitted", &moment(b.submitted_at)),
        fact("Started", "build-started", &not_yet(b.started_at)),
        fact("Finished", "build-finished", &not_yet(b.completed_at)),
        fact("Build time", "build-time", &build_time),
        "</dl>".to_string(),
        error,
    ]
    .concat()
}

/// The build's facts, figures and samples, live.
#[component]
fn Shown(
    current: RwSignal<Option<BuildView>>,
    samples: RwSignal<Vec<StoredSnapshot>>,
    poll_ms: u64,
    notice: RwSignal<Notice>,
) -> impl IntoView {
    let html = move || {
        let unreachable = notice.get() == Notice::Unreachable;
        current.with(|b| {
            samples.with(|s| {
                b.as_ref()
                    .map(|b| build_html(b, s.last(), unreachable, poll_ms))
                    .unwrap_or_default()
            })
        })
    };
    view! {
        <section class="build" aria-labelledby="build-title">
            <div inner_html=html></div>
            <SampleChart samples/>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(status: &str) -> BuildView {
        BuildView {
            id: 7,
            status: status.into(),
            platform: "linux".into(),
            label: Some("<script>alert(1)</script> & \"x\"".into()),
            worker_id: Some(1),
            attempt: 1,
            submitted_at: 0,
            started_at: Some(1_000),
            completed_at: None,
            error: None,
            cpu_seconds: 12.5,
            peak_memory_mb: Some(2048.0),
            snapshot_count: 3,
        }
    }

    #[test]
    fn finished_statuses() {
        for s in ["completed", "failed", "cancelled"] {
            assert!(finished(s), "{s}");
        }
        for s in ["pending", "assigned", "building"] {
            assert!(!finished(s), "{s}");
        }
    }

    /// Text from the API never becomes markup.
    #[test]
    fn build_html_escapes_what_the_api_says() {
        let html = build_html(&build("building"), None, false, 1_000);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"),
            "{html}"
        );
        assert!(
            html.contains(r#"<data id="build-cpu-seconds" value="12.500000">12s</data>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<data id="build-peak-memory" value="2048.000000">2.00 GiB</data>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<data id="build-samples" value="3">3</data>"#),
            "{html}"
        );
        assert!(html.contains(r#"data-state="live""#), "{html}");
        assert!(html.contains("Updating every 1s"), "{html}");
        let done = build_html(&build("completed"), None, false, 1_000);
        assert!(done.contains(r#"data-state="paused""#), "{done}");
        assert!(build_html(&build("building"), None, true, 1_000).contains("Reconnecting"));
    }
}
