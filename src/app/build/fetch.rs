//! The build page's requests: `GET /api/builds/{id}` and its snapshots,
//! with the secret from the fragment as a Bearer header. The REST routes
//! rather than server functions, because they already speak the shared
//! [`BuildView`] and [`StoredSnapshot`] and check the build token; a
//! server function would need a second copy of that check.

use crate::wire::{BuildView, StoredSnapshot};

/// Why the build could not be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 401 or 403: the secret does not open this build.
    Denied,
    /// 404: no such build. (Only the browser's requests can answer it.)
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    Missing,
    /// No answer, or one that was not the build: try again later.
    Unreachable,
}

/// The secret in a location's fragment, `#token=<secret>` (other
/// `&`-separated parts are ignored); `None` when absent or empty.
pub fn token_in(hash: &str) -> Option<String> {
    hash.trim_start_matches('#')
        .split('&')
        .find_map(|part| part.strip_prefix("token="))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
}

/// The build, and its samples unless `known_count` says they have not
/// changed since the last fetch (the list is only fetched again when the
/// build's `snapshotCount` moved, so a long build's page does not fetch
/// every sample every few seconds for nothing).
pub async fn build_and_samples(
    id: i64,
    token: &str,
    known_count: Option<i64>,
) -> Result<(BuildView, Option<Vec<StoredSnapshot>>), Failure> {
    let build: BuildView = get(&format!("/api/builds/{id}"), token).await?;
    if known_count == Some(build.snapshot_count) {
        return Ok((build, None));
    }
    let samples = get(&format!("/api/builds/{id}/snapshots"), token).await?;
    Ok((build, Some(samples)))
}

#[cfg(feature = "hydrate")]
async fn get<T: serde::de::DeserializeOwned>(url: &str, token: &str) -> Result<T, Failure> {
    let response = gloo_net::http::Request::get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send()
        .await
        .map_err(|_| Failure::Unreachable)?;
    match response.status() {
        200 => {
            let text = response.text().await.map_err(|_| Failure::Unreachable)?;
            serde_json::from_str(&text).map_err(|_| Failure::Unreachable)
        }
        401 | 403 => Err(Failure::Denied),
        404 => Err(Failure::Missing),
        _ => Err(Failure::Unreachable),
    }
}

/// The server never fetches a build for the page: it has no secret.
#[cfg(not(feature = "hydrate"))]
async fn get<T>(_url: &str, _token: &str) -> Result<T, Failure> {
    Err(Failure::Unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_the_fragment() {
        assert_eq!(token_in("#token=abc123"), Some("abc123".into()));
        assert_eq!(token_in("token=abc123"), Some("abc123".into()));
        assert_eq!(token_in("#x=1&token=abc"), Some("abc".into()));
        assert_eq!(token_in("#token="), None);
        assert_eq!(token_in("#tokens=abc"), None);
        assert_eq!(token_in(""), None);
        assert_eq!(token_in("#"), None);
    }
}
