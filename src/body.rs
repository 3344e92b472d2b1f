//! Request bodies with SPEC's status codes: 415 for a body that is not JSON
//! by its `Content-Type`, 413 over the route's limit, 400 for text that is
//! not JSON or lacks a required field, 422 for well-formed invalid values.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::AppError;

/// Body limit of every route but telemetry.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

fn has_body(headers: &HeaderMap) -> bool {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) => length > 0,
        None => headers.contains_key(TRANSFER_ENCODING),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Middleware for the REST API: a body of any type but JSON is 415; a
/// request without a body needs no `Content-Type`.
pub async fn require_json(request: Request, next: Next) -> Response {
    if has_body(request.headers()) && !is_json(request.headers()) {
        return AppError::UnsupportedMediaType.into_response();
    }
    next.run(request).await
}

/// Reads at most `limit` bytes of body; more is 413.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, AppError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| AppError::TooLarge(format!("the body is over its limit of {limit} bytes")))
}

/// Parses JSON text; text that is not JSON is 400.
pub fn parse_json(bytes: &[u8]) -> Result<Value, AppError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::BadRequest(
            "the request needs a JSON body".to_string(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// Turns a parsed JSON value into `T`: a missing field is 400, a value of
/// the wrong type or range is 422.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, AppError> {
    if !value.is_object() {
        return Err(AppError::BadRequest(
            "the body must be a JSON object".to_string(),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("missing field") {
            AppError::BadRequest(format!("the body lacks a required field: {message}"))
        } else {
            AppError::Invalid(format!("a field has an invalid value: {message}"))
        }
    })
}

/// A JSON body of type `T`, at most [`DEFAULT_BODY_LIMIT`] bytes.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, AppError> {
        let bytes = read_limited(request.into_body(), DEFAULT_BODY_LIMIT).await?;
        from_value(parse_json(&bytes)?).map(JsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Needs {
        a: u32,
    }

    /// Missing fields are 400, wrong types and ranges 422, non-objects 400.
    #[test]
    fn classifies_deserialization_errors() {
        let missing = from_value::<Needs>(serde_json::json!({}));
        assert!(matches!(missing, Err(AppError::BadRequest(_))));
        let wrong = from_value::<Needs>(serde_json::json!({"a": "1"}));
        assert!(matches!(wrong, Err(AppError::Invalid(_))));
        let negative = from_value::<Needs>(serde_json::json!({"a": -1}));
        assert!(matches!(negative, Err(AppError::Invalid(_))));
        let list = from_value::<Needs>(serde_json::json!([1]));
        assert!(matches!(list, Err(AppError::BadRequest(_))));
        assert!(matches!(parse_json(b"{"), Err(AppError::BadRequest(_))));
        assert!(matches!(parse_json(b""), Err(AppError::BadRequest(_))));
    }
}
