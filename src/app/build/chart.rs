//! A build's samples over time: CPU in cores and memory, each an SVG line
//! with one dot per sample, and a table twin with one row per sample (the
//! landing page's chart pattern: drawn in integer units that the SVG
//! stretches to its box, the same numbers in text beside it).

use leptos::prelude::*;

use crate::format;
use crate::wire::StoredSnapshot;

/// Drawing units of a plot, which the SVG stretches to its box.
const WIDTH: u64 = 1000;
const HEIGHT: u64 = 1000;
const VIEW_BOX: &str = "0 0 1000 1000";
const MIB_PER_GIB: f64 = 1024.0;

/// The smallest "round" value at or above `x` (at least `floor`): 1, 1.5,
/// 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten, finer than the daily
/// chart's steps so that a build's line fills most of its plot.
pub fn round_top(x: f64, floor: f64) -> f64 {
    let x = if x.is_finite() { x.max(floor) } else { floor };
    let mut power = 10f64.powi(x.log10().floor() as i32);
    loop {
        for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0] {
            let candidate = m * power;
            if candidate >= x * (1.0 - 1e-9) {
                return candidate;
            }
        }
        power *= 10.0;
    }
}

/// Cores in use during a sample: `cpuPercent` 100 is one core.
pub fn cores(sample: &StoredSnapshot) -> f64 {
    sample.sample.cpu_percent / 100.0
}

/// Memory for people: `512 MiB`, `2.00 GiB`.
pub fn memory(mib: f64) -> String {
    if mib >= MIB_PER_GIB {
        format!("{} GiB", format::decimal(mib / MIB_PER_GIB, 2))
    } else {
        format!("{} MiB", format::decimal(mib, 0))
    }
}

/// Cores for people, with one decimal: `1.5`.
pub fn cores_text(cores: f64) -> String {
    format::decimal(cores, 1)
}

/// One series drawn: its line, its dots and its axis top.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// One `M`/`L` path through the samples; a new attempt starts a new
    /// piece (its run is a fresh process tree, not a continuation).
    pub line: String,
    /// One dot per sample, `(x, y)` in drawing units.
    pub dots: Vec<(u64, u64)>,
    /// The value at the top of the plot.
    pub top: f64,
}

/// Both series of `samples` (oldest first), spread over their time span.
pub fn plot(samples: &[StoredSnapshot]) -> (Series, Series) {
    let cpu_top = round_top(samples.iter().map(cores).fold(0.0, f64::max), 1.0);
    let mem_top = round_top(
        samples
            .iter()
            .map(|s| s.sample.memory_mb)
            .fold(0.0, f64::max),
        1.0,
    );
    let first = samples
        .iter()
        .map(|s| s.sample.sampled_at)
        .min()
        .unwrap_or(0);
    let last = samples
        .iter()
        .map(|s| s.sample.sampled_at)
        .max()
        .unwrap_or(0);
    let span = (last - first).max(0) as u64;
    let x = |at: i64| {
        if span == 0 {
            WIDTH / 2
        } else {
            let into = (at - first).max(0) as u64;
            ((u128::from(into) * u128::from(WIDTH) + u128::from(span) / 2) / u128::from(span))
                as u64
        }
    };
    let y = |value: f64, top: f64| {
        let share = if top > 0.0 {
            (value / top).clamp(0.0, 1.0)
        } else {
            0.0
        };
        HEIGHT - (share * HEIGHT as f64).round() as u64
    };
    let series = |value: &dyn Fn(&StoredSnapshot) -> f64, top: f64| {
        use std::fmt::Write;
        let mut out = Series {
            top,
            ..Series::default()
        };
        let mut attempt = None;
        for s in samples {
            let (px, py) = (x(s.sample.sampled_at), y(value(s), top));
            let verb = if attempt == Some(s.attempt) { 'L' } else { 'M' };
            attempt = Some(s.attempt);
            let _ = write!(out.line, "{verb}{px} {py}");
            out.dots.push((px, py));
        }
        out
    };
    (
        series(&cores, cpu_top),
        series(&|s| s.sample.memory_mb, mem_top),
    )
}

/// The chart's text equivalent in one sentence.
pub fn describe(samples: &[StoredSnapshot]) -> String {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return "No samples yet.".to_string();
    };
    let peak_cores = samples.iter().map(cores).fold(0.0, f64::max);
    let peak_memory = samples
        .iter()
        .map(|s| s.sample.memory_mb)
        .fold(0.0, f64::max);
    let n = samples.len();
    format!(
        "{} sample{} from {} to {}; at most {} cores and {} of memory, now {} cores and {}.",
        format::count(n as u64),
        if n == 1 { "" } else { "s" },
        format::clock_utc(first.sample.sampled_at),
        format::clock_utc(last.sample.sampled_at),
        cores_text(peak_cores),
        memory(peak_memory),
        cores_text(cores(last)),
        memory(last.sample.memory_mb),
    )
}

/// One plot as HTML: its axis, its line and its dots.
///
/// The build's part of the page is drawn only in the browser (the server
/// never has the build), so it needs no hydration, and markup written as
/// text costs the WASM bundle a fraction of what `view!` costs per element
/// and reactive attribute (measured: the build page went from about 84 KB
/// gzipped to what `bench/page.sh` reports now). Only numbers we format go
/// in; no text from the API.
fn panel_html(class: &str, title: &str, series: &Series, axis: fn(f64) -> String) -> String {
    use std::fmt::Write;
    let mut dots = String::new();
    for (x, y) in &series.dots {
        let _ = write!(
            dots,
            "<path class=\"pt\" d=\"M{x} {y}h0\" vector-effect=\"non-scaling-stroke\"/>"
        );
    }
    format!(
        "<div class=\"panel {class}\"><h3 id=\"panel-{class}\">{title}</h3><div class=\"plot\">\
         <div class=\"y-axis\" aria-hidden=\"true\"><span>{}</span><span>{}</span><span>{}</span></div>\
         <svg viewBox=\"{VIEW_BOX}\" preserveAspectRatio=\"none\" role=\"img\" aria-labelledby=\"panel-{class}\" aria-describedby=\"samples-desc\">\
         <g class=\"grid\"><line x1=\"0\" x2=\"1000\" y1=\"1\" y2=\"1\" vector-effect=\"non-scaling-stroke\"/>\
         <line x1=\"0\" x2=\"1000\" y1=\"500\" y2=\"500\" vector-effect=\"non-scaling-stroke\"/>\
         <line x1=\"0\" x2=\"1000\" y1=\"999\" y2=\"999\" vector-effect=\"non-scaling-stroke\"/></g>\
         <path class=\"line\" d=\"{}\" vector-effect=\"non-scaling-stroke\"/><g class=\"dots\">{dots}</g></svg></div></div>",
        axis(series.top),
        axis(series.top / 2.0),
        axis(0.0),
        series.line,
    )
}

/// Both plots and their time axis as HTML.
pub fn panels_html(samples: &[StoredSnapshot]) -> String {
    let (cpu, mem) = plot(samples);
    let at = |s: Option<&StoredSnapshot>| {
        s.map(|s| format::clock_utc(s.sample.sampled_at))
            .unwrap_or_default()
    };
    format!(
        "{}{}<div class=\"x-axis\" aria-hidden=\"true\"><span>{}</span><span>{}</span></div>",
        panel_html("cpu", "CPU in cores", &cpu, cores_text),
        panel_html("mem", "Memory", &mem, memory),
        at(samples.first()),
        at(samples.last()),
    )
}

/// The table's rows as HTML, newest first, one per sample.
pub fn rows_html(samples: &[StoredSnapshot]) -> String {
    use std::fmt::Write;
    let mut rows = String::new();
    for s in samples.iter().rev() {
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            format::clock_utc(s.sample.sampled_at),
            s.attempt,
            s.sample.seq,
            cores_text(cores(s)),
            memory(s.sample.memory_mb),
        );
    }
    rows
}

/// CPU and memory of the build over time, with the same numbers as a table.
#[component]
pub fn SampleChart(samples: RwSignal<Vec<StoredSnapshot>>) -> impl IntoView {
    view! {
        <figure class="chart samples-chart" aria-labelledby="samples-title">
            <figcaption id="samples-title">
                <h2>"CPU and memory over time"</h2>
                <span class="chart-sub">"one dot per sample, UTC"</span>
            </figcaption>
            <p class="visually-hidden" id="samples-desc">{move || samples.with(|s| describe(s))}</p>
            <div class="panels" inner_html=move || samples.with(|s| panels_html(s))></div>
            <details class="chart-table">
                <summary>"Show the samples as a table"</summary>
                <div class="table-scroll" tabindex="0" role="region" aria-label="Samples table">
                    <table id="samples-table">
                        <caption>"Samples of this build, newest first (UTC)"</caption>
                        <thead>
                            <tr>
                                <th scope="col">"Time (UTC)"</th>
                                <th scope="col">"Attempt"</th>
                                <th scope="col">"Sample"</th>
                                <th scope="col">"CPU, cores"</th>
                                <th scope="col">"Memory"</th>
                            </tr>
                        </thead>
                        <tbody inner_html=move || samples.with(|s| rows_html(s))></tbody>
                    </table>
                </div>
            </details>
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Snapshot;

    fn sample(attempt: i64, seq: i64, at: i64, cpu_percent: f64, memory_mb: f64) -> StoredSnapshot {
        StoredSnapshot {
            attempt,
            sample: Snapshot {
                seq,
                sampled_at: at,
                cpu_percent,
                memory_mb,
                cpu_time_s: None,
                interval_s: 5,
            },
        }
    }

    #[test]
    fn round_tops() {
        assert_eq!(round_top(0.0, 1.0), 1.0);
        assert_eq!(round_top(1.2, 1.0), 1.5);
        assert_eq!(round_top(3.5, 1.0), 4.0);
        assert_eq!(round_top(16.0, 1.0), 20.0);
        assert_eq!(round_top(2048.0, 1.0), 2500.0);
        assert_eq!(round_top(100.0, 1.0), 100.0);
        assert_eq!(round_top(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn memory_for_people() {
        assert_eq!(memory(512.4), "512 MiB");
        assert_eq!(memory(2048.0), "2.00 GiB");
    }

    /// Each sample is one dot; the line spans the time; a new attempt
    /// starts a new piece.
    #[test]
    fn one_dot_per_sample() {
        let samples = [
            sample(1, 1, 0, 100.0, 500.0),
            sample(1, 2, 5_000, 200.0, 1000.0),
            sample(2, 1, 10_000, 0.0, 0.0),
        ];
        let (cpu, mem) = plot(&samples);
        assert_eq!(cpu.top, 2.0);
        assert_eq!(cpu.dots, vec![(0, 500), (500, 0), (1000, 1000)]);
        assert_eq!(cpu.line, "M0 500L500 0M1000 1000");
        assert_eq!(mem.top, 1000.0);
        assert_eq!(mem.dots.len(), 3);
        let (cpu, _) = plot(&[sample(1, 1, 7, 50.0, 1.0)]);
        assert_eq!(cpu.dots, vec![(500, 500)]);
        assert_eq!(plot(&[]).0.dots, vec![]);
    }

    #[test]
    fn text_equivalent() {
        assert_eq!(describe(&[]), "No samples yet.");
        let samples = [
            sample(1, 1, 0, 150.0, 512.0),
            sample(1, 2, 5_000, 50.0, 2048.0),
        ];
        assert_eq!(
            describe(&samples),
            "2 samples from 00:00:00 UTC to 00:00:05 UTC; at most 1.5 cores and 2.00 GiB of memory, now 0.5 cores and 2.00 GiB."
        );
    }
}
