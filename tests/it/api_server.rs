//! The controller as a whole: `/healthz`, the landing page, a restart on
//! the same database, and what every JSON route does with a body it cannot
//! take (400 not JSON or a required field missing, 415 another type) and
//! with any input at all (never a 500).

use crate::common::*;
use freeagent::wire::BuildView;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `GET /healthz` answers 200 `{"status":"ok"}` when the database answers.
#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::start().await;
    let body: Value = expect_json(app.get("/healthz", None).await, StatusCode::OK).await;
    assert_eq!(body, json!({"status": "ok"}));
}

/// The landing page at `/` renders through the Leptos app (200 HTML).
#[tokio::test]
async fn landing_page_renders() {
    let app = TestApp::start().await;
    let (status, html) = page(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<html"), "{html}");
}

/// The page's HTML for `path`, with its status.
async fn page(app: &TestApp, path: &str) -> (StatusCode, String) {
    let response = app.get(path, None).await;
    let status = response.status();
    let content_type = content_type(&response);
    assert!(
        content_type.starts_with("text/html"),
        "{path}: {content_type}"
    );
    (status, response.text().await.unwrap())
}

/// A path that is no page, API route or file answers 404 with the site's
/// own 404 page, not the landing page and its figures; so does a build
/// page path whose id is not a build id.
#[tokio::test]
async fn unknown_paths_get_the_404_page() {
    let app = TestApp::start().await;
    for path in [
        "/does-not-exist",
        "/builds/abc",
        "/builds/0",
        "/builds/1/more",
    ] {
        let (status, html) = page(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(html.contains("There is no page here"), "{path}: {html}");
        assert!(html.contains("href=\"/\""), "a link home: {html}");
        assert!(html.contains("<title>Page not found"), "{html}");
        assert!(
            !html.contains("id=\"nodes-online\""),
            "no landing counters: {html}"
        );
        assert!(!html.contains("hero-title"), "not the landing page: {html}");
    }
    // The API keeps its JSON 404; the landing page its 200.
    expect_error(app.get("/api/nope", None).await, StatusCode::NOT_FOUND).await;
    assert_eq!(page(&app, "/").await.0, StatusCode::OK);
}

/// `/builds/{id}` is the build's page: 200 with its number, but the
/// server's HTML holds nothing private (it never has the secret): no status,
/// platform, label, figure or sample of the build.
#[tokio::test]
async fn build_page_html_holds_no_figure() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_labelled("linux", "secret-label-7f3a").await;
    let claimed = app.claim(&worker).await.expect("claimed");
    assert_eq!(claimed.id, build.id);
    assert_eq!(app.start_build(&worker, build.id).await, StatusCode::OK);
    app.send_ok(&worker, build.id, &[sample(1, now_ms(), 321.0, 4321.0)])
        .await;
    let view = app.build(build.id).await;
    assert_eq!(view.snapshot_count, 1);

    let (status, html) = page(&app, &format!("/builds/{}", build.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(&format!("<title>Build {} · Free Agent", build.id)),
        "{html}"
    );
    for private in [
        "secret-label-7f3a",
        "Building",
        "building",
        "4,321",
        "4321",
        "4.22 GiB",
        "build-cpu-seconds",
        "build-samples",
        build.access_token.as_str(),
    ] {
        assert!(
            !html.contains(private),
            "{private} in the server's HTML: {html}"
        );
    }
    // A build that does not exist gets the same shell: the server's answer
    // does not tell which builds exist.
    let (status, other) = page(&app, "/builds/999999").await;
    assert_eq!(status, StatusCode::OK);
    assert!(other.contains("Build 999999"), "{other}");
}

/// A body that is not JSON is 400 with an error body, on every JSON route.
#[tokio::test]
async fn body_that_is_not_json_is_400() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let routes = [
        ("/api/workers/register".to_string(), ADMIN_KEY.to_string()),
        ("/api/builds".to_string(), ADMIN_KEY.to_string()),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.clone(),
        ),
        (
            format!("/api/builds/{}/telemetry", claimed.id),
            worker.token.clone(),
        ),
    ];
    for (path, secret) in &routes {
        for body in ["{not json", "", "{\"snapshots\": [", "\u{1}"] {
            let response = app
                .post_raw(
                    path,
                    Some(secret),
                    Some("application/json"),
                    body.to_string(),
                )
                .await;
            expect_error(response, StatusCode::BAD_REQUEST).await;
        }
    }
    assert_eq!(app.build(claimed.id).await.status, "building");
}

/// A body lacking a required field is 400: register without `name`, submit
/// without `platform`, complete without `success`.
#[tokio::test]
async fn missing_required_field_is_400() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let cases = [
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"platforms": ["linux"], "cpuCores": 4, "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "cpuCores": 4, "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "platforms": ["linux"], "memoryMb": 1024}),
        ),
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY,
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 4}),
        ),
        ("/api/builds".to_string(), ADMIN_KEY, json!({"label": "x"})),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.as_str(),
            json!({"error": "x"}),
        ),
    ];
    for (path, secret, body) in &cases {
        let response = app.post_json(path, Some(secret), body).await;
        expect_error(response, StatusCode::BAD_REQUEST).await;
    }
    let stats = app.stats().await;
    assert_eq!(
        (stats.nodes_online, stats.active_builds, stats.builds_queued),
        (1, 1, 0)
    );
}

/// A body sent as `text/plain` (or without a Content-Type) is 415 on every
/// JSON route, even when the text is valid JSON; nothing changes.
#[tokio::test]
async fn body_of_another_type_is_415() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let routes = [
        (
            "/api/workers/register".to_string(),
            ADMIN_KEY.to_string(),
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
        ),
        (
            "/api/builds".to_string(),
            ADMIN_KEY.to_string(),
            json!({"platform": "linux"}),
        ),
        (
            format!("/api/builds/{}/telemetry", claimed.id),
            worker.token.clone(),
            batch(&[sample(1, now_ms(), 10.0, 10.0)]),
        ),
        (
            format!("/api/builds/{}/complete", claimed.id),
            worker.token.clone(),
            json!({"success": true}),
        ),
    ];
    for (path, secret, body) in &routes {
        for content_type in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let response = app
                .post_raw(path, Some(secret), content_type, body.to_string())
                .await;
            expect_error(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        }
    }
    let view = app.build(claimed.id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("building", 0));
    let stats = app.stats().await;
    assert_eq!((stats.nodes_online, stats.builds_queued), (1, 0));
    // `application/json; charset=utf-8` is JSON.
    let response = app
        .post_raw(
            "/api/builds",
            Some(ADMIN_KEY),
            Some("application/json; charset=utf-8"),
            json!({"platform": "linux"}).to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// Figures, builds and idempotency keys survive a controller restart on the
/// same database; worker and build tokens keep working.
#[tokio::test]
async fn figures_survive_restart() {
    let mut app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let a = claimed.assigned_at;
    let samples = vec![
        sample(1, a + 1000, 100.0, 100.0),
        counter_sample(2, a + 2000, 100.0, 100.0, 1.5),
    ];
    app.send_ok(&worker, claimed.id, &samples).await;
    let done = app.running_build(&worker, LINUX).await;
    assert_eq!(app.complete(&worker, done.id, true).await, StatusCode::OK);
    let pending = app.submit_build("macos").await;
    let stats = figures(&app.stats().await);
    let view = app.build(claimed.id).await;

    app.restart().await;
    assert_eq!(figures(&app.stats().await), stats);
    assert_eq!(app.build(claimed.id).await, view);
    let (status, answer) = app.send(&worker, claimed.id, &samples).await;
    assert_eq!((status, answer.duplicates), (StatusCode::OK, 2));
    assert_eq!(app.heartbeat(&worker).await, StatusCode::OK);
    let by_token: BuildView = expect_json(
        app.get(
            &format!("/api/builds/{}", pending.id),
            Some(&pending.access_token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_token.status, "pending");
}

/// No client input produces a 500: malformed ids, wrong JSON types,
/// nesting bombs, odd headers and legacy bodies with bad fields.
#[tokio::test]
async fn no_client_input_produces_500() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let telemetry = format!("/api/builds/{}/telemetry", claimed.id);
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let posts: Vec<(String, String, String)> = vec![
        ("/api/builds/abc/start".into(), worker.token.clone(), String::new()),
        ("/api/builds/-1/start".into(), worker.token.clone(), String::new()),
        ("/api/builds/99999999999999999999999/cancel".into(), ADMIN_KEY.into(), String::new()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": 5}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": null}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#"{"platform": "linux", "label": 5}"#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), "null".into()),
        ("/api/builds".into(), ADMIN_KEY.into(), r#""linux""#.into()),
        ("/api/builds".into(), ADMIN_KEY.into(), nested.clone()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":"linux","cpuCores":1,"memoryMb":1}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":[5],"cpuCores":1,"memoryMb":1}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":["linux"],"cpuCores":1e30,"memoryMb":1e400}"#.into()),
        ("/api/workers/register".into(), ADMIN_KEY.into(), r#"{"name":"n","platforms":["linux"],"cpuCores":99999999999999999999,"memoryMb":1}"#.into()),
        (format!("/api/builds/{}/complete", claimed.id), worker.token.clone(), r#"{"success":"yes"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[1,"x",null,[],{}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[{"seq":9223372036854775807,"sampledAt":9223372036854775807,"cpuPercent":1,"memoryMb":1,"cpuTimeS":1e300,"intervalS":9223372036854775807}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"snapshots":[{"seq":1,"sampledAt":-9223372036854775808,"cpuPercent":1,"memoryMb":1}]}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":5}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"yesterday","data":{}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"2026-01-28T16:13:27Z","data":{"cpu_percent":"42","memory_mb":1}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"cpu_snapshot","timestamp":"99999-01-28T16:13:27Z","data":{"cpu_percent":1,"memory_mb":1}}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"x","timestamp":"2026-01-28T16:13:27Z","data":"just a string"}"#.into()),
        (telemetry.clone(), worker.token.clone(), r#"{"type":"x"}"#.into()),
        (telemetry.clone(), worker.token.clone(), nested),
        (
            "/api/workers/register".into(),
            ADMIN_KEY.into(),
            json!({"name": "x".repeat(3 << 20), "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}).to_string(),
        ),
    ];
    for (path, secret, body) in posts {
        let response = app
            .post_raw(&path, Some(&secret), Some("application/json"), body.clone())
            .await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_client_error() || status.is_success(),
            "POST {path} {}: {status} {text}",
            body.chars().take(200).collect::<String>()
        );
    }
    for path in [
        "/api/builds/abc",
        "/api/builds/1.5/snapshots",
        "/api/stats/daily?days=-1",
        "/api/stats/daily?days=99999999999999999999",
    ] {
        let status = app.get(path, Some(ADMIN_KEY)).await.status();
        assert!(status.is_client_error(), "GET {path}: {status}");
    }
    for (method, path) in [
        (reqwest::Method::GET, "/api/workers/poll"),
        (reqwest::Method::PUT, "/api/builds"),
        (reqwest::Method::DELETE, "/api/builds/1"),
        (reqwest::Method::POST, "/api/stats"),
    ] {
        let status = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{method} {path}: {status}");
    }
    let not_utf8 = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    let status = app
        .client
        .post(app.url("/api/workers/heartbeat"))
        .header("Authorization", not_utf8)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "non-UTF-8 Authorization");
    for header in ["Bearer", "Bearer ", "bearer x", "Bearer a b", "Token x"] {
        let status = app
            .client
            .post(app.url("/api/workers/heartbeat"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "Authorization: {header}");
    }
    assert_eq!(app.build(claimed.id).await.status, "building");
}
