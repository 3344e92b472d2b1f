//! The one error type of request handling, mapped to an HTTP answer in one
//! place. Database text never reaches a client: it is logged and the client
//! gets a sentence it can act on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::wire::ErrorBody;

/// Result of anything a request runs.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// Everything that can go wrong while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the body is not JSON or lacks a required field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no secret, or one the controller does not know.
    #[error("missing or unknown credentials: send `Authorization: Bearer <secret>`")]
    Unauthorized,
    /// 403: a valid secret that does not grant this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such build.
    #[error("{0}")]
    NotFound(String),
    /// 409: the build's state does not allow this change.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: a body that is not `application/json`.
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid values.
    #[error("{0}")]
    Invalid(String),
    /// 429: over the rate limit; retry after this many seconds.
    #[error("too many requests: retry after {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request will be accepted again.
        retry_after_s: u64,
    },
    /// 503: the database could not take the change.
    #[error("the controller's storage is unavailable; retry shortly")]
    Unavailable,
    /// 500: a fault of the controller, never of the client.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// 500: as `Database`, from the SQLite writer's own connection.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl AppError {
    /// The HTTP status and the `code` of this error's answer.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            AppError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Database(_) | AppError::Sqlite(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    /// A 404 for a build id that does not exist.
    pub fn unknown_build() -> Self {
        AppError::NotFound("no build with this id".into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let error = match &self {
            AppError::Database(_) | AppError::Sqlite(_) => {
                tracing::error!(error = %self, "database error");
                "the controller hit an internal error; retry, and report it if it persists"
                    .to_string()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error,
                code: code.to_string(),
            }),
        )
            .into_response();
        if let AppError::RateLimited { retry_after_s } = self {
            if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
