//! A real Prometheus scrapes the controller (issue 11's acceptance): Debian's
//! `prometheus`, started by the test on 127.0.0.1 with a port, a config and
//! a storage folder of its own, scraping every second with the metrics
//! token, while the controller carries traffic. Also `promtool check
//! metrics` on the exposition. `scripts/setup.sh` installs both programs;
//! without them these tests fail saying so.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::*;
use crate::metrics::{metered_app, scrape, traffic, METRICS_TOKEN};
use crate::postgres::{free_port, spawn_detached_shell};

/// Longest the test waits for Prometheus to start or to show a value.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

/// A program of Debian's `prometheus` package, or a failure that says how
/// to install it.
fn program(name: &str) -> &str {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{name}` is not installed: run scripts/setup.sh (it installs Debian's `prometheus` package, as CI does)"
    );
    name
}

/// A Prometheus server of the test's own; stopped (by its pid) when
/// dropped, also when the test panics.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second with
    /// the metrics token, and waits until it is ready.
    async fn start(target: &str) -> Prometheus {
        let program = program("prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: freeagent\n    metrics_path: /metrics\n\
                 \x20   authorization:\n      credentials: {METRICS_TOKEN}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        spawn_watchdog(child.id(), dir.path());
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        let http = client();
        wait_for(PROMETHEUS_WAIT, "Prometheus to be ready", || {
            let request = http.get(&ready).send();
            async move { request.await.ok().filter(|r| r.status() == StatusCode::OK) }
        })
        .await;
        prometheus
    }

    /// The value of an instant query's single series, if it has one yet.
    async fn query(&self, expr: &str) -> Option<f64> {
        let response = client()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "query {expr}: {body}");
        let result = body["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "query {expr}: one series, got {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// `expr` is valid PromQL that Prometheus evaluates without an error.
    async fn assert_query_runs(&self, expr: &str) {
        let response = client()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "query {expr}: {body}");
    }

    /// Waits (bounded) until `expr` has the value `expected`.
    async fn wait_for_value(&self, expr: &str, expected: f64) {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + PROMETHEUS_WAIT;
        while tokio::time::Instant::now() < deadline {
            last = self.query(expr).await;
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let targets = client()
            .get(format!("{}/api/v1/targets", self.base))
            .send()
            .await
            .ok();
        let targets = match targets {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        panic!(
            "Prometheus did not show {expr} = {expected} within {PROMETHEUS_WAIT:?} (last {last:?})\n\
             targets: {targets}\nlog:\n{log}"
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill signals this child's pid, and only it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell of its own session that stops Prometheus and removes its folder
/// once the test process has gone without doing so itself (SIGKILL, abort).
fn spawn_watchdog(prometheus: u32, dir: &std::path::Path) {
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do kill -0 {prometheus} 2>/dev/null || exit 0; \
         sleep 0.5; done; kill {prometheus} 2>/dev/null; rm -rf '{dir}'",
        test = std::process::id(),
        dir = dir.display(),
    );
    spawn_detached_shell(&script).expect("start the watchdog of the test's Prometheus");
}

/// Prometheus, scraping every second while the controller carries traffic,
/// stores `freeagent_builds_finished_total` equal to `/api/stats`
/// `totalBuilds`, and a queue-wait histogram that counted each first
/// assignment once.
#[tokio::test]
async fn prometheus_scrapes_the_controller() {
    let app = metered_app().await;
    let target = app.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await;
    let done = traffic(&app).await;
    let total_builds = app.stats().await.total_builds;

    // More traffic while Prometheus scrapes: the running build's samples
    // (they change no count the test reads), within the worker's rate.
    let (worker, build) = done.runner.clone();
    let mut seq = 2;
    let busy = async {
        loop {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let sent = app
                .send(&worker, build, &[sample(seq, now_ms(), 100.0, 200.0)])
                .await;
            assert_eq!(sent.0, StatusCode::OK, "{sent:?}");
            seq += 1;
        }
    };
    let checks = async {
        prometheus
            .wait_for_value("freeagent_builds_finished_total", total_builds as f64)
            .await;
        prometheus
            .wait_for_value(
                "freeagent_queue_wait_seconds_count",
                done.first_assignments as f64,
            )
            .await;
        prometheus
            .wait_for_value("up{job=\"freeagent\"}", 1.0)
            .await;
        for expr in dashboard_queries() {
            prometheus.assert_query_runs(&expr).await;
        }
    };
    tokio::select! {
        () = checks => {}
        () = busy => unreachable!("the traffic loop never ends"),
    }
    assert_eq!(total_builds, 2);
    assert_eq!(app.stats().await.total_builds, total_builds);
}

/// `promtool check metrics` (Prometheus' own linter) passes on the
/// exposition after traffic of every kind.
#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let app = metered_app().await;
    traffic(&app).await;
    let text = scrape(&app).await;
    let output = check_metrics(&text);
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dashboard's panel queries, with Grafana's variables filled in as a
/// dashboard would (every job, a 1 minute rate window).
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|panel| {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            panel["targets"].as_array().expect("targets").clone()
        })
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("expr")
                .replace("$job", ".+")
                .replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

/// Every metric the dashboard plots is one the controller exposes, and
/// the dashboard plots what the README lists.
#[tokio::test]
async fn the_dashboard_plots_exposed_metrics() {
    let app = metered_app().await;
    let text = scrape(&app).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let queries = dashboard_queries().join("\n");
    let mut plotted: Vec<&str> = queries
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("freeagent_"))
        .collect();
    plotted.sort_unstable();
    plotted.dedup();
    for name in &plotted {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| families.contains(base))
            .unwrap_or(name);
        assert!(
            families.contains(&family),
            "the dashboard plots {name}, not exposed:\n{text}"
        );
    }
    for needed in [
        "freeagent_builds_finished_total",
        "freeagent_queue_wait_seconds_bucket",
        "freeagent_cpu_cores_busy",
        "freeagent_samples_total",
        "freeagent_telemetry_rate_limited_total",
        "freeagent_http_request_duration_seconds_bucket",
        "freeagent_sqlite_writer_group_jobs_bucket",
        "freeagent_sqlite_writer_commit_seconds_bucket",
    ] {
        assert!(plotted.contains(&needed), "the dashboard plots {needed}");
    }
}

/// Runs `promtool check metrics` with `text` on its stdin.
fn check_metrics(text: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    child.wait_with_output().expect("promtool's answer")
}

/// `check_metrics` fails on what Prometheus' linter rejects, so a pass
/// above means something.
#[test]
fn promtool_rejects_a_counter_without_total() {
    let bad =
        "# HELP freeagent_things Things.\n# TYPE freeagent_things counter\nfreeagent_things 1\n";
    assert!(!check_metrics(bad).status.success());
}
