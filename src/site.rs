//! What visitors download, and how: the site's files (cargo-leptos' output
//! under `site-root`) served precompressed, the caching headers of files and
//! pages, and compression of everything the server writes on the fly.
//!
//! - `/pkg/*` (JS, WASM, CSS) carry hashed names when cargo-leptos hashed
//!   them, so they are cached for a year and never revalidated.
//! - Other site files (the favicon) keep their names: cached for a day.
//! - Pages (HTML) are cached for [`HTML_MAX_AGE_S`] seconds.
//! - Files are compressed once, at build time (`scripts/compress-site.sh`
//!   writes `.br` and `.gz` next to each); pages and JSON on the fly (gzip).
//! - Every response carries the security headers ([`security_headers`]):
//!   a Content-Security-Policy that lets only this site's own files and the
//!   page's own inline scripts (by a per-response nonce) run, `nosniff` and
//!   no referrer.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{map_response_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use leptos::config::LeptosOptions;
use tower::{Layer, Service};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::services::ServeDir;

/// Files whose names change with their content: a changed file is a new URL,
/// so a browser may keep this one forever without asking again.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `/pkg/*` when names are not hashed (a debug build, `hash.txt` missing):
/// the same URL may hold a new file after a deploy, so browsers revalidate
/// (a cheap 304 thanks to `Last-Modified`) instead of running stale WASM.
pub const REVALIDATE: &str = "no-cache";
/// Other site files (the favicon): unhashed, rarely changed, and a stale one
/// for a day harms nobody.
pub const ASSET: &str = "public, max-age=86400";
/// How long a browser may reuse a page without asking: the landing page's
/// figures are at most `--stats-ttl` (1 s) old when rendered, and the
/// hydrated page polls them every `--poll-interval` (5 s), so a page up to
/// 5 s old shows nothing the first poll does not correct. Longer would show
/// stale figures before hydration; shorter saves nothing. `public` because
/// no page's HTML holds private data (SPEC: the build page fetches it).
pub const HTML_MAX_AGE_S: u32 = 5;

/// Compresses pages and JSON written on the fly with gzip when the client
/// accepts it. Not brotli: measured on `/` (15 KB, streamed by Leptos in
/// many small chunks) at 64 connections, gzip cost 9% of the pages/s (5,260
/// to 4,800) and brotli 74% (to 1,370), its encoder's large tables set up
/// per response, for a body no smaller (3,849 B gzip, 3,969 B br). Brotli is
/// for the site's files, compressed once at build time. Responses that
/// already carry `Content-Encoding` (those files) pass as they are, as do
/// bodies under 32 bytes, images and event streams (tower-http's default
/// predicate). Level 4 rather than 6: nearly the same size for less CPU.
pub fn compression() -> CompressionLayer {
    CompressionLayer::new().quality(CompressionLevel::Precise(4))
}

/// The `hash.txt` that cargo-leptos writes next to the server binary when
/// `hash-files` is on; Leptos reads it from there to name `/pkg/*` in pages.
fn hash_file(options: &LeptosOptions) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join(options.hash_file.as_ref()))
}

/// Decides whether pages name the hashed `/pkg/*` files, and so whether they
/// may be cached as immutable: one decision for both, since a page naming
/// unhashed files cached forever could never be updated. `LEPTOS_HASH_FILES`
/// is read at run time (cargo-leptos sets it only for `cargo leptos serve`),
/// so a binary started directly would otherwise name unhashed files that a
/// hashed build never wrote. Hence: on when the hash file is next to the
/// binary, unless `LEPTOS_HASH_FILES=false` says otherwise.
pub fn resolve_hashing(options: &mut LeptosOptions) {
    let asked = std::env::var("LEPTOS_HASH_FILES").ok();
    let present = hash_file(options).is_some_and(|path| path.is_file());
    if asked.as_deref() == Some("true") && !present {
        tracing::warn!(
            "LEPTOS_HASH_FILES=true but no hash file next to the binary; serving unhashed names"
        );
    }
    options.hash_files = present && asked.as_deref() != Some("false");
}

/// Sets `Cache-Control` (and `Vary`) on a successful or not-modified file
/// response that has none; a 404 is not cached (the file may appear with the next build).
async fn cache_control(State(value): State<HeaderValue>, mut response: Response) -> Response {
    let status = response.status();
    if (status.is_success() || status == StatusCode::NOT_MODIFIED)
        && !response.headers().contains_key(header::CACHE_CONTROL)
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
        // ServeDir picks the `.br`, the `.gz` or the file by Accept-Encoding
        // but does not say so; without Vary a shared cache could hand a
        // brotli body to a client that cannot read it.
        if !response.headers().contains_key(header::VARY) {
            let vary = HeaderValue::from_static("accept-encoding");
            response.headers_mut().insert(header::VARY, vary);
        }
    }
    response
}

/// Sets the pages' `Cache-Control` ([`HTML_MAX_AGE_S`]) on a 200 HTML
/// response that has none. Other statuses (the 404 page) are left uncached.
pub async fn html_cache_control(mut response: Response) -> Response {
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if response.status() == StatusCode::OK
        && is_html
        && !response.headers().contains_key(header::CACHE_CONTROL)
    {
        let value = format!("public, max-age={HTML_MAX_AGE_S}");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
    }
    response
}

/// A directory served with its `.br` and `.gz` twins when the client accepts
/// them, `Cache-Control` set to `cache`, and `not_found` (the site's 404
/// page) for every path that is no file there, whatever the method.
fn files<S, F>(dir: &Path, cache: &'static str, not_found: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    F::Response: IntoResponse,
    F::Future: Send + 'static,
{
    let not_found =
        tower::util::MapResponseLayer::new(IntoResponse::into_response).layer(not_found);
    let serve = ServeDir::new(dir)
        .precompressed_br()
        .precompressed_gzip()
        .append_index_html_on_directories(false)
        .call_fallback_on_method_not_allowed(true)
        .fallback(not_found);
    Router::new()
        .fallback_service(serve)
        .layer(map_response_with_state(
            HeaderValue::from_static(cache),
            cache_control,
        ))
}

/// The site's files: `/<site-pkg-dir>/*` and everything else under
/// `site-root`, with `not_found` for any other path. Merge it last: it is
/// the router's fallback.
pub fn site_files<S, F>(options: &LeptosOptions, not_found: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    F::Response: IntoResponse,
    F::Future: Send + 'static,
{
    let root = Path::new(options.site_root.as_ref());
    let pkg_cache = if options.hash_files {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let pkg: Router = files(
        &root.join(options.site_pkg_dir.as_ref()),
        pkg_cache,
        not_found.clone(),
    );
    Router::new()
        .nest_service(&format!("/{}", options.site_pkg_dir), pkg)
        .merge(files(root, ASSET, not_found))
}

/// The nonce of one response's inline scripts, put into the request's
/// extensions by [`security_headers`] and adopted by the page renderer
/// ([`adopt_nonce`]), so the page's scripts and the policy that allows them
/// carry the same value.
#[derive(Clone, Debug)]
pub struct ScriptNonce(Arc<str>);

/// The Content-Security-Policy of a response whose inline scripts carry
/// `nonce`:
/// - `default-src 'self'`: styles, images, fetches and the WASM come from
///   this site only (the page has no inline style and no `data:` image);
/// - `script-src`: this site's JS, the inline scripts Leptos writes (the
///   hydration loader and the resources' data) by nonce, and
///   `'wasm-unsafe-eval'`, which compiling the WASM needs and which allows
///   no `eval` of JavaScript;
/// - no plugins, no `<base>` rewriting, forms post only here, and no other
///   site may frame the pages (clickjacking).
pub fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// A fresh nonce: 128 random bits, hex (CSP's nonce grammar takes base64
/// characters, of which hex digits are some).
fn new_nonce() -> Arc<str> {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes).into()
}

/// Sets the security headers on every response, pages and the rest alike
/// (harmless on JSON and files, and one place keeps them from being
/// forgotten on a new route): the Content-Security-Policy with a nonce
/// made for this request, `X-Content-Type-Options: nosniff` (a file is
/// run only as the type it is served as) and `Referrer-Policy: no-referrer`
/// (a build page's URL names the build; nothing of it leaves with a link).
pub async fn security_headers(mut request: Request, next: Next) -> Response {
    let nonce = new_nonce();
    request.extensions_mut().insert(ScriptNonce(nonce.clone()));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&content_security_policy(&nonce)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Makes the page being rendered use this request's [`ScriptNonce`] on its
/// inline scripts (Leptos writes `use_nonce()` on them), in place of the
/// one Leptos generated, which no header names. Call it in the rendering
/// context of every page, the 404 page included.
pub fn adopt_nonce() {
    use leptos::prelude::{provide_context, use_context};
    let nonce = use_context::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<ScriptNonce>().cloned());
    if let Some(ScriptNonce(nonce)) = nonce {
        provide_context(leptos::nonce::Nonce::from_value(nonce));
    }
}
