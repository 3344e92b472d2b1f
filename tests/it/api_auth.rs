//! Who may do what (SPEC "Auth"): 401 for a missing or unknown secret, 403
//! for a valid one on a resource it does not grant; `X-Worker-Id` alone
//! authenticates nothing; secrets are stored only as hashes.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Worker tokens, build tokens and the admin key never reach the database
/// in plain text; tokens are kept as their SHA-256.
#[tokio::test]
async fn secrets_are_stored_only_as_hashes() {
    use sha2::{Digest, Sha256};
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    let pool = app.db().await;
    let worker_hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM workers WHERE id = $1")
        .bind(worker.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        worker_hash,
        Sha256::digest(worker.token.as_bytes()).to_vec()
    );
    let build_hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM builds WHERE id = $1")
        .bind(build.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        build_hash,
        Sha256::digest(build.access_token.as_bytes()).to_vec()
    );
    // The SQLite file and its journal, or on Postgres every row of every table.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(app.dir()).unwrap() {
        stored.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    if backend() == Backend::Postgres {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
             WHERE table_schema = 'public'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(tables.iter().any(|t| t == "workers"), "{tables:?}");
        for table in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM \"{table}\" t"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            stored.extend(rows.concat().into_bytes());
        }
    }
    for secret in [
        worker.token.as_str(),
        build.access_token.as_str(),
        ADMIN_KEY,
    ] {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is stored in plain text"
        );
    }
}

/// Every authenticated route answers 401 without a secret and with an
/// unknown one.
#[tokio::test]
async fn missing_or_unknown_secret_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.running_build(&worker, LINUX).await;
    let id = claimed.id;
    let posts = [
        (
            "/api/workers/register".to_string(),
            json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
        ),
        ("/api/workers/heartbeat".to_string(), Value::Null),
        ("/api/workers/poll".to_string(), Value::Null),
        ("/api/builds".to_string(), json!({"platform": "linux"})),
        (format!("/api/builds/{id}/start"), Value::Null),
        (
            format!("/api/builds/{id}/complete"),
            json!({"success": true}),
        ),
        (format!("/api/builds/{id}/cancel"), Value::Null),
        (
            format!("/api/builds/{id}/telemetry"),
            batch(&[sample(1, now_ms(), 1.0, 1.0)]),
        ),
    ];
    for secret in [None, Some("not-a-known-secret"), Some("")] {
        for (path, body) in &posts {
            let response = if body.is_null() {
                app.post_empty(path, secret).await
            } else {
                app.post_json(path, secret, body).await
            };
            expect_error(response, StatusCode::UNAUTHORIZED).await;
        }
        for path in [
            format!("/api/builds/{id}"),
            format!("/api/builds/{id}/snapshots"),
        ] {
            expect_error(app.get(&path, secret).await, StatusCode::UNAUTHORIZED).await;
        }
    }
    let response = app
        .client
        .get(app.url(&format!("/api/builds/{id}")))
        .header("Authorization", format!("Basic {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("building", 0));
}

/// An `X-Worker-Id` header alone authenticates nothing: 401 on every worker
/// route, also next to an unknown bearer token.
#[tokio::test]
async fn x_worker_id_alone_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.assigned_build(&worker, LINUX).await;
    let id = claimed.id;
    let routes = [
        ("/api/workers/heartbeat".to_string(), None),
        ("/api/workers/poll".to_string(), None),
        (format!("/api/builds/{id}/start"), None),
        (
            format!("/api/builds/{id}/complete"),
            Some(json!({"success": true})),
        ),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(batch(&[sample(1, now_ms(), 1.0, 1.0)])),
        ),
        (
            format!("/api/builds/{id}/telemetry"),
            Some(legacy_cpu_body(now_ms() / 1000, 10.0, 10.0)),
        ),
    ];
    for bogus_bearer in [false, true] {
        for (path, body) in &routes {
            let mut request = app
                .client
                .post(app.url(path))
                .header("X-Worker-Id", worker.id.to_string());
            if bogus_bearer {
                request = request.bearer_auth("unknown-token");
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            expect_error(response, StatusCode::UNAUTHORIZED).await;
        }
    }
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("assigned", 0));
}

/// A worker token or build token does not open admin routes (register,
/// submit); SPEC leaves 401 vs 403 open for a known secret on the wrong kind
/// of route, so either refusal passes, and nothing is created.
#[tokio::test]
async fn worker_and_build_tokens_do_not_open_admin_routes() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    for secret in [worker.token.as_str(), build.access_token.as_str()] {
        let status = app
            .post_json("/api/builds", Some(secret), &json!({"platform": "linux"}))
            .await
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "submit with a non-admin secret: {status}"
        );
        let status = app
            .post_json(
                "/api/workers/register",
                Some(secret),
                &json!({"name": "n", "platforms": ["linux"], "cpuCores": 1, "memoryMb": 1}),
            )
            .await
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "register with a non-admin secret: {status}"
        );
    }
    let stats = app.stats().await;
    assert_eq!((stats.builds_queued, stats.nodes_online), (1, 1));
}

/// Only a worker token acts as a worker: the admin key and build tokens are
/// refused (401 or 403, SPEC leaves which open) on heartbeat, poll, start,
/// complete and telemetry (current and legacy bodies), and a worker token
/// cannot read or cancel builds; nothing changes.
#[tokio::test]
async fn only_worker_tokens_act_as_workers() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let claimed = app.assigned_build(&worker, LINUX).await;
    let id = claimed.id;
    let queued = app.submit_build(LINUX).await;
    let refused =
        |status: StatusCode| status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    for secret in [ADMIN_KEY, claimed.access_token.as_str()] {
        for path in [
            "/api/workers/heartbeat".to_string(),
            "/api/workers/poll".to_string(),
            format!("/api/builds/{id}/start"),
        ] {
            let status = app.post_empty(&path, Some(secret)).await.status();
            assert!(refused(status), "{path}: {status}");
        }
        for (path, body) in [
            (
                format!("/api/builds/{id}/complete"),
                json!({"success": true}),
            ),
            (
                format!("/api/builds/{id}/telemetry"),
                batch(&[sample(1, now_ms(), 10.0, 10.0)]),
            ),
            (
                format!("/api/builds/{id}/telemetry"),
                legacy_cpu_body(now_ms() / 1000, 10.0, 10.0),
            ),
        ] {
            let status = app.post_json(&path, Some(secret), &body).await.status();
            assert!(refused(status), "{path}: {status}");
        }
    }
    for path in [
        format!("/api/builds/{id}"),
        format!("/api/builds/{id}/snapshots"),
    ] {
        let status = app.get(&path, Some(&worker.token)).await.status();
        assert!(refused(status), "GET {path} with a worker token: {status}");
    }
    let status = app.cancel(queued.id, &worker.token).await;
    assert!(refused(status), "cancel with a worker token: {status}");
    let view = app.build(id).await;
    assert_eq!((view.status.as_str(), view.snapshot_count), ("assigned", 0));
    assert_eq!(app.build(queued.id).await.status, "pending");
}

/// A worker acting on a build assigned to another worker gets 403 for start,
/// complete and telemetry, and the build does not change.
#[tokio::test]
async fn other_workers_build_is_403() {
    let app = TestApp::start().await;
    let owner = linux_worker(&app).await;
    let intruder = linux_worker(&app).await;
    let claimed = app.assigned_build(&owner, LINUX).await;
    expect_error(
        app.post_empty(
            &format!("/api/builds/{}/start", claimed.id),
            Some(&intruder.token),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(app.start_build(&owner, claimed.id).await, StatusCode::OK);
    let telemetry = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&intruder.token),
            &batch(&[sample(1, now_ms(), 10.0, 10.0)]),
        )
        .await;
    expect_error(telemetry, StatusCode::FORBIDDEN).await;
    let legacy = app
        .post_json(
            &format!("/api/builds/{}/telemetry", claimed.id),
            Some(&intruder.token),
            &legacy_cpu_body(now_ms() / 1000, 10.0, 10.0),
        )
        .await;
    expect_error(legacy, StatusCode::FORBIDDEN).await;
    let complete = app
        .post_json(
            &format!("/api/builds/{}/complete", claimed.id),
            Some(&intruder.token),
            &json!({"success": true}),
        )
        .await;
    expect_error(complete, StatusCode::FORBIDDEN).await;
    let view = app.build(claimed.id).await;
    assert_eq!(view.status, "building");
    assert_eq!(view.worker_id, Some(owner.id));
    assert_eq!(view.snapshot_count, 0);
}

/// A build's token reads and cancels that build only: 403 on another build.
#[tokio::test]
async fn build_token_on_another_build_is_403() {
    let app = TestApp::start().await;
    let mine = app.submit_build(LINUX).await;
    let theirs = app.submit_build(LINUX).await;
    for path in [
        format!("/api/builds/{}", theirs.id),
        format!("/api/builds/{}/snapshots", theirs.id),
    ] {
        expect_error(
            app.get(&path, Some(&mine.access_token)).await,
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    expect_error(
        app.post_empty(
            &format!("/api/builds/{}/cancel", theirs.id),
            Some(&mine.access_token),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(app.build(theirs.id).await.status, "pending");
}

/// A valid secret on a resource it does not grant is 403 (a worker token
/// reading a build, on an admin route; an admin key on a worker route); a
/// secret nobody holds is 401 and learns nothing about which builds exist.
#[tokio::test]
async fn valid_secret_on_wrong_resource_is_403_unknown_is_401() {
    let app = TestApp::start().await;
    let worker = linux_worker(&app).await;
    let build = app.submit_build(LINUX).await;
    let path = format!("/api/builds/{}", build.id);
    let status = app.get(&path, Some(&worker.token)).await.status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = app
        .post_json(
            "/api/builds",
            Some(&worker.token),
            &json!({"platform": "linux"}),
        )
        .await
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = app
        .post_json("/api/workers/heartbeat", Some(ADMIN_KEY), &json!({}))
        .await
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    for missing in [path.as_str(), "/api/builds/999999"] {
        let status = app.get(missing, Some("nobody-holds-this")).await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{missing}");
    }
    assert_eq!(app.stats().await.builds_queued, 1);
}
