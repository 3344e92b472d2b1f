//! Builds per day as an SVG bar chart, server-rendered and updated in place,
//! with a sentence and a table that say the same in text.

use leptos::prelude::*;

use super::CHART_DAYS;
use crate::format;
use crate::stats::DailyBuilds;

/// Drawing units of the plot, which the SVG stretches to its box. Integers,
/// so rendering writes no floating-point numbers (that was a tenth of the
/// time spent serving `/`).
const SLOT: u64 = 20;
const BAR: u64 = 14;
const HEIGHT: u64 = 1000;
const VIEW_BOX: &str = "0 0 600 1000";

/// The smallest "round" number (1, 2 or 5 times a power of ten) at or above
/// `n`, so the axis reads `0 / 250 / 500` rather than `0 / 237 / 474`.
pub fn nice_ceiling(n: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let candidate = step.saturating_mul(m);
            if candidate >= n || candidate == u64::MAX {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

/// `n` of `top` in drawing units, rounded.
fn scaled(n: u64, top: u64) -> u64 {
    let top = u128::from(top.max(1));
    let units = (u128::from(n) * u128::from(HEIGHT) + top / 2) / top;
    units.min(u128::from(HEIGHT)) as u64
}

/// The bars as two SVG paths, finished builds standing on the baseline and
/// failed ones stacked on top: two elements instead of sixty, which keeps
/// rendering `/` cheap. The numbers per day are in the table below.
pub fn bar_paths(days: &[DailyBuilds], top: u64) -> (String, String) {
    use std::fmt::Write;
    let (mut ok, mut failed_path) = (String::new(), String::new());
    for (i, d) in days.iter().enumerate() {
        let x = i as u64 * SLOT + (SLOT - BAR) / 2;
        let failed = d.builds_failed.min(d.builds_finished);
        let ok_top = HEIGHT - scaled(d.builds_finished - failed, top);
        // Scale the stack's top, not the failed part alone, so the whole
        // bar is exactly as tall as its total.
        let stack_top = HEIGHT - scaled(d.builds_finished, top);
        if ok_top < HEIGHT {
            let _ = write!(ok, "M{x} {HEIGHT}V{ok_top}h{BAR}V{HEIGHT}z");
        }
        if stack_top < ok_top {
            let _ = write!(failed_path, "M{x} {ok_top}V{stack_top}h{BAR}V{ok_top}z");
        }
    }
    (ok, failed_path)
}

/// The chart's text equivalent in one sentence.
pub fn describe(days: &[DailyBuilds]) -> String {
    let total: u64 = days.iter().map(|d| d.builds_finished).sum();
    let failed: u64 = days.iter().map(|d| d.builds_failed).sum();
    let busiest = days
        .iter()
        .filter(|d| d.builds_finished > 0)
        .max_by_key(|d| d.builds_finished);
    match (days.first(), days.last(), busiest) {
        (Some(first), Some(last), Some(busiest)) => format!(
            "{} builds finished from {} to {} (UTC), {} of them failed. The busiest day was {} with {} builds.",
            format::count(total),
            format::short_day(&first.day),
            format::short_day(&last.day),
            format::count(failed),
            format::short_day(&busiest.day),
            format::count(busiest.builds_finished),
        ),
        _ => format!("No builds finished in the last {CHART_DAYS} days."),
    }
}

/// Builds per day for the last [`CHART_DAYS`] days.
#[component]
pub fn DailyChart(days: RwSignal<Vec<DailyBuilds>>) -> AnyView {
    let top = Memo::new(move |_| {
        nice_ceiling(
            days.with(|d| d.iter().map(|d| d.builds_finished).max().unwrap_or(0))
                .max(10),
        )
    });
    let paths = Memo::new(move |_| days.with(|d| bar_paths(d, top.get())));
    let label = move |i: usize| {
        move || {
            days.with(|d| {
                d.get(i.min(d.len().saturating_sub(1)))
                    .map(|d| format::short_day(&d.day))
                    .unwrap_or_default()
            })
        }
    };
    let middle = CHART_DAYS as usize / 2;
    let last = CHART_DAYS as usize - 1;
    view! {
        <figure class="chart" aria-labelledby="chart-title">
            <figcaption id="chart-title">
                <h3>"Builds per day"</h3>
                <span class="chart-sub">"last " {CHART_DAYS} " days, UTC"</span>
                <span class="legend" aria-hidden="true">
                    <span class="key ok"></span>"finished"
                    <span class="key failed"></span>"failed"
                </span>
            </figcaption>
            <div class="plot">
                <div class="y-axis" aria-hidden="true">
                    <span>{move || format::count(top.get())}</span>
                    <span>{move || format::count(top.get() / 2)}</span>
                    <span>"0"</span>
                </div>
                <svg
                    viewBox=VIEW_BOX
                    preserveAspectRatio="none"
                    role="img"
                    aria-labelledby="chart-svg-title chart-svg-desc"
                >
                    <title id="chart-svg-title">"Builds per day, last 30 days (UTC)"</title>
                    <desc id="chart-svg-desc">{move || days.with(|d| describe(d))}</desc>
                    <g class="grid">
                        <line x1="0" x2="600" y1="1" y2="1" vector-effect="non-scaling-stroke"/>
                        <line x1="0" x2="600" y1="500" y2="500" vector-effect="non-scaling-stroke"/>
                        <line x1="0" x2="600" y1="999" y2="999" vector-effect="non-scaling-stroke"/>
                    </g>
                    <path class="ok" d=move || paths.with(|p| p.0.clone())/>
                    <path class="failed" d=move || paths.with(|p| p.1.clone())/>
                </svg>
                <div class="x-axis" aria-hidden="true">
                    <span>{label(0)}</span>
                    <span>{label(middle)}</span>
                    <span>{label(last)}</span>
                </div>
            </div>
            <details class="chart-table">
                <summary>"Show these numbers as a table"</summary>
                <table>
                    <caption>"Builds per day, last 30 days (UTC)"</caption>
                    <thead>
                        <tr>
                            <th scope="col">"Day (UTC)"</th>
                            <th scope="col">"Builds finished"</th>
                            <th scope="col">"Failed"</th>
                            <th scope="col">"Build time"</th>
                            <th scope="col">"CPU time"</th>
                        </tr>
                    </thead>
                    <tbody>
                        {move || {
                            days.with(|d| {
                                d.iter()
                                    .rev()
                                    .map(|day| {
                                        view! {
                                            <tr>
                                                <th scope="row">{day.day.clone()}</th>
                                                <td>{format::count(day.builds_finished)}</td>
                                                <td>{format::count(day.builds_failed)}</td>
                                                <td>{format::duration_ms(day.build_time_ms)}</td>
                                                <td>{format::cpu_time_text(day.cpu_seconds)}</td>
                                            </tr>
                                        }
                                    })
                                    .collect_view()
                            })
                        }}
                    </tbody>
                </table>
            </details>
        </figure>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(day: &str, finished: u64, failed: u64) -> DailyBuilds {
        DailyBuilds {
            day: day.to_string(),
            builds_finished: finished,
            builds_failed: failed,
            ..DailyBuilds::default()
        }
    }

    /// Axis tops are round numbers at or above the data.
    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(237), 500);
        assert_eq!(nice_ceiling(1000), 1000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    /// Bars stand on the baseline, failed builds stacked on top, never taller
    /// than the plot; empty days draw nothing.
    #[test]
    fn bars_stack_within_the_plot() {
        let (ok, failed) = bar_paths(&[day("2025-11-28", 10, 2), day("2025-11-29", 0, 0)], 10);
        assert_eq!(ok, "M3 1000V200h14V1000z");
        assert_eq!(failed, "M3 200V0h14V200z");
        let (ok, failed) = bar_paths(&[day("a", 0, 0), day("b", u64::MAX, 0)], u64::MAX);
        assert_eq!(ok, "M23 1000V0h14V1000z");
        assert_eq!(failed, "");
    }

    /// The text equivalent names totals and the busiest day, or says there is nothing.
    #[test]
    fn text_equivalent() {
        let days = [day("2025-11-28", 1200, 3), day("2025-11-29", 5, 0)];
        assert_eq!(
            describe(&days),
            "1,205 builds finished from Nov 28 to Nov 29 (UTC), 3 of them failed. The busiest day was Nov 28 with 1,200 builds."
        );
        assert_eq!(
            describe(&[day("2025-11-29", 0, 0)]),
            "No builds finished in the last 30 days."
        );
    }
}
