//! Which page a path shows, decided by hand rather than by leptos_router.
//!
//! Three pages, one of them with a single numeric parameter: a `match` on
//! the path does it. leptos_router cost the landing page's bundle about
//! 55 KB gzipped when it was measured; the whole site with this dispatch is
//! 243 KB gzipped (wasm-bindgen 0.2.130, wasm-opt 132 -Oz; the landing
//! page alone was 192 KB), inside the 250 KB budget only without it. The
//! match hands out `EitherOf3`, not `AnyView`: erasing the three pages cost
//! 15 KB more.
//!
//! The server reads the path from the request (leptos_axum provides its
//! `Parts`), the browser from `location.pathname`: the same path, so both
//! render the same page and hydration matches.

/// A page of the site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// `/`.
    Landing,
    /// `/builds/{id}`, a positive build id in decimal.
    Build(i64),
    /// Anything else: the 404 page.
    Missing,
}

/// The page at `path` (no query, no fragment).
pub fn parse(path: &str) -> Page {
    if path == "/" {
        return Page::Landing;
    }
    let id = path
        .strip_prefix("/builds/")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|&id| id > 0);
    match id {
        Some(id) => Page::Build(id),
        None => Page::Missing,
    }
}

/// The page being rendered: on the server the request's path, in the
/// browser the address bar's.
pub fn current() -> Page {
    parse(&current_path())
}

#[cfg(feature = "ssr")]
fn current_path() -> String {
    leptos::prelude::use_context::<axum::http::request::Parts>()
        .map(|parts| parts.uri.path().to_string())
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(all(feature = "hydrate", not(feature = "ssr")))]
fn current_path() -> String {
    leptos::prelude::window()
        .location()
        .pathname()
        .unwrap_or_else(|_| "/".to_string())
}

#[cfg(not(any(feature = "ssr", feature = "hydrate")))]
fn current_path() -> String {
    "/".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_to_pages() {
        assert_eq!(parse("/"), Page::Landing);
        assert_eq!(parse("/builds/1"), Page::Build(1));
        assert_eq!(parse("/builds/9223372036854775807"), Page::Build(i64::MAX));
        for missing in [
            "",
            "/does-not-exist",
            "/builds",
            "/builds/",
            "/builds/0",
            "/builds/-1",
            "/builds/+1",
            "/builds/1/",
            "/builds/1/x",
            "/builds/abc",
            "/builds/9223372036854775808",
            "/index.html",
        ] {
            assert_eq!(parse(missing), Page::Missing, "{missing}");
        }
    }
}
