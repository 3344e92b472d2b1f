//! Builds per day as an SVG bar chart, server-rendered and updated in place,
//! with a sentence and a table that say the same in text.

use leptos::prelude::*;

use super::CHART_DAYS;
use crate::format;
use crate::stats::DailyBuilds;

/// Drawing units of the plot: the SVG stretches these to its box.
const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 100.0;

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

/// One bar: its day and the two stacked parts in drawing units.
#[derive(Debug, PartialEq)]
struct Bar {
    x: f64,
    width: f64,
    ok_y: f64,
    ok_height: f64,
    failed_y: f64,
    failed_height: f64,
    title: String,
}

fn bars(days: &[DailyBuilds], top: u64) -> Vec<Bar> {
    let slot = WIDTH / days.len().max(1) as f64;
    let scale = HEIGHT / top.max(1) as f64;
    days.iter()
        .enumerate()
        .map(|(i, d)| {
            let failed = d.builds_failed.min(d.builds_finished);
            let ok_height = (d.builds_finished - failed) as f64 * scale;
            let failed_height = failed as f64 * scale;
            Bar {
                x: i as f64 * slot + slot * 0.15,
                width: slot * 0.7,
                ok_y: HEIGHT - ok_height,
                ok_height,
                failed_y: HEIGHT - ok_height - failed_height,
                failed_height,
                title: format!(
                    "{}: {} builds, {} failed",
                    format::short_day(&d.day),
                    format::count(d.builds_finished),
                    format::count(failed)
                ),
            }
        })
        .collect()
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
                    viewBox="0 0 300 100"
                    preserveAspectRatio="none"
                    role="img"
                    aria-labelledby="chart-svg-title chart-svg-desc"
                >
                    <title id="chart-svg-title">"Builds per day, last 30 days (UTC)"</title>
                    <desc id="chart-svg-desc">{move || days.with(|d| describe(d))}</desc>
                    <g class="grid">
                        <line x1="0" x2="300" y1="0.5" y2="0.5" vector-effect="non-scaling-stroke"/>
                        <line x1="0" x2="300" y1="50" y2="50" vector-effect="non-scaling-stroke"/>
                        <line x1="0" x2="300" y1="99.5" y2="99.5" vector-effect="non-scaling-stroke"/>
                    </g>
                    <g class="bars">
                        {move || {
                            days.with(|d| {
                                bars(d, top.get())
                                    .into_iter()
                                    .map(|b| {
                                        view! {
                                            <g>
                                                <title>{b.title}</title>
                                                <rect class="ok" x=format!("{:.2}", b.x) y=format!("{:.2}", b.ok_y) width=format!("{:.2}", b.width) height=format!("{:.2}", b.ok_height)/>
                                                <rect class="failed" x=format!("{:.2}", b.x) y=format!("{:.2}", b.failed_y) width=format!("{:.2}", b.width) height=format!("{:.2}", b.failed_height)/>
                                            </g>
                                        }
                                    })
                                    .collect_view()
                            })
                        }}
                    </g>
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

    /// Bars stand on the baseline, failed builds stacked on top, never taller than the plot.
    #[test]
    fn bars_stack_within_the_plot() {
        let b = bars(&[day("2025-11-28", 10, 2), day("2025-11-29", 0, 0)], 10);
        assert_eq!(b[0].ok_height, 80.0);
        assert_eq!(b[0].failed_y, 0.0);
        assert_eq!(b[1].ok_height, 0.0);
        assert_eq!(b[0].title, "Nov 28: 10 builds, 2 failed");
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
