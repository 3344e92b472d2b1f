//! What visitors download from the server itself: pages and JSON gzipped
//! when the client accepts it, and identical when decoded; plain
//! when it does not ask; pages' `Cache-Control`. The site's files need a
//! release site build, so their checks (precompressed twins, immutable
//! `/pkg/*`, TCP_NODELAY latency) are in bench/page.sh and
//! end2end/tests/wire.spec.ts.

use std::io::Read;

use crate::common::*;
use reqwest::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, VARY};
use reqwest::StatusCode;

/// The raw response to `GET path` with `accept_encoding` (none: no header):
/// its status, `Content-Encoding`, `Cache-Control`, `Vary`, and its body
/// decoded.
async fn fetch(app: &TestApp, path: &str, accept_encoding: Option<&str>) -> Fetched {
    let mut request = app.client.get(app.url(path));
    if let Some(accept) = accept_encoding {
        request = request.header(ACCEPT_ENCODING, accept);
    }
    let response = request.send().await.expect("GET");
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (encoding, cache, vary) = (
        header(CONTENT_ENCODING),
        header(CACHE_CONTROL),
        header(VARY),
    );
    let status = response.status();
    let raw = response.bytes().await.expect("body").to_vec();
    let mut body = Vec::new();
    match encoding.as_deref() {
        None => body = raw,
        Some("gzip") => {
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut body)
                .expect("gzip body");
        }
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
    Fetched {
        status,
        encoding,
        cache,
        vary,
        body: String::from_utf8(body).expect("utf-8"),
    }
}

struct Fetched {
    status: StatusCode,
    encoding: Option<String>,
    cache: Option<String>,
    vary: Option<String>,
    body: String,
}

/// `/` and `/api/stats` go out gzipped to a client that accepts gzip, with
/// `Vary: accept-encoding`, and decode to what a client that accepts none
/// receives; never brotli (too costly per response, see `site::compression`).
#[tokio::test]
async fn pages_and_json_are_compressed_when_asked() {
    let app = TestApp::start().await;
    for path in ["/", "/api/stats"] {
        let plain = fetch(&app, path, None).await;
        assert_eq!(plain.status, StatusCode::OK, "{path}");
        assert_eq!(plain.encoding, None, "{path} without Accept-Encoding");
        for (accept, expected) in [
            ("gzip", "gzip"),
            ("gzip, deflate, br, zstd", "gzip"),
            ("br;q=1, gzip;q=0.5", "gzip"),
        ] {
            let got = fetch(&app, path, Some(accept)).await;
            assert_eq!(got.status, StatusCode::OK, "{path} {accept}");
            assert_eq!(got.encoding.as_deref(), Some(expected), "{path} {accept}");
            assert_eq!(
                got.vary.as_deref(),
                Some("accept-encoding"),
                "{path} {accept}"
            );
            if path == "/api/stats" {
                // The figures may move between two requests; the shape may not.
                let plain: serde_json::Value = serde_json::from_str(&plain.body).unwrap();
                let got: serde_json::Value = serde_json::from_str(&got.body).unwrap();
                let keys = |v: &serde_json::Value| {
                    v.as_object().unwrap().keys().cloned().collect::<Vec<_>>()
                };
                assert_eq!(keys(&got), keys(&plain), "{path} {accept}");
            } else {
                assert!(
                    got.body.contains("<html") && got.body.contains("</html>"),
                    "{path} {accept}"
                );
            }
        }
        for accept in ["identity", "br"] {
            let got = fetch(&app, path, Some(accept)).await;
            assert_eq!(got.encoding, None, "{path} {accept}");
        }
    }
}

/// Pages may be reused for a few seconds; JSON keeps its own caching (none
/// added here), so clients' polling is unchanged.
#[tokio::test]
async fn pages_are_cached_briefly_and_json_is_not_touched() {
    let app = TestApp::start().await;
    let page = fetch(&app, "/", Some("gzip")).await;
    assert_eq!(page.cache.as_deref(), Some("public, max-age=5"));
    let stats = fetch(&app, "/api/stats", Some("gzip")).await;
    assert_eq!(stats.cache, None);
}

/// An unknown API route is the same JSON 404, compressed or not.
#[tokio::test]
async fn unknown_api_route_is_unchanged() {
    let app = TestApp::start().await;
    let plain = fetch(&app, "/api/no-such-route", None).await;
    assert_eq!(plain.status, StatusCode::NOT_FOUND);
    assert_eq!(plain.encoding, None);
    assert_eq!(plain.cache, None);
    let body: serde_json::Value = serde_json::from_str(&plain.body).unwrap();
    assert!(body["error"].is_string(), "{body}");
    for accept in ["br", "gzip"] {
        let got = fetch(&app, "/api/no-such-route", Some(accept)).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{accept}");
        assert_eq!(got.body, plain.body, "{accept}");
    }
}

/// A path that is neither a page, a route nor a file is a 404 that no
/// cache keeps: the file may exist after the next deploy.
#[tokio::test]
async fn missing_file_is_an_uncached_404() {
    let app = TestApp::start().await;
    for path in ["/pkg/no-such-file.wasm", "/no-such-file.svg"] {
        let got = fetch(&app, path, Some("gzip")).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(got.cache, None, "{path}");
    }
}

/// The nonce a Content-Security-Policy allows inline scripts by.
fn policy_nonce(policy: &str) -> Option<&str> {
    let (_, rest) = policy.split_once("'nonce-")?;
    rest.split_once('\'').map(|(nonce, _)| nonce)
}

/// Pages (the landing page, a build's page, the 404 page), JSON and a
/// missing file all carry the security headers: a Content-Security-Policy
/// of this site alone, `nosniff` and no referrer. Every inline script of a
/// page carries the nonce its own response's policy names (so the page
/// still hydrates), and no two responses share a nonce.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = TestApp::start().await;
    let build = app.submit_build(LINUX).await;
    let pages = [
        "/".to_string(),
        format!("/builds/{}", build.id),
        "/no-such-page".to_string(),
    ];
    let others = ["/api/stats", "/api/no-such-route", "/pkg/no-such-file.wasm"];
    let mut nonces = std::collections::BTreeSet::new();
    for path in pages.iter().map(String::as_str).chain(others) {
        let response = app.get(path, None).await;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{path}: no {name}"))
                .to_string()
        };
        let policy = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "'wasm-unsafe-eval'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                policy.contains(directive),
                "{path}: {directive} missing from {policy}"
            );
        }
        for loose in [
            "unsafe-inline",
            "'unsafe-eval'",
            "*",
            "http:",
            "https:",
            "data:",
        ] {
            assert!(!policy.contains(loose), "{path}: {loose} in {policy}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        let nonce = policy_nonce(&policy)
            .unwrap_or_else(|| panic!("{path}: no nonce in {policy}"))
            .to_string();
        assert!(
            nonce.len() >= 22,
            "{path}: a nonce of 128 bits at least: {nonce}"
        );
        assert!(
            nonces.insert(nonce.clone()),
            "{path}: nonce {nonce} used twice"
        );
        if !pages.iter().any(|page| page == path) {
            continue;
        }
        let html = response.text().await.expect("page body");
        let scripts: Vec<&str> = html
            .split("<script")
            .skip(1)
            .map(|rest| rest.split_once('>').map_or(rest, |(tag, _)| tag))
            .collect();
        assert!(!scripts.is_empty(), "{path}: no hydration script");
        for tag in scripts {
            assert!(
                tag.contains(&format!("nonce=\"{nonce}\"")),
                "{path}: <script{tag}> lacks this response's nonce {nonce}"
            );
        }
        assert!(
            !html.contains(" style=\""),
            "{path}: an inline style the policy would block"
        );
    }
}
