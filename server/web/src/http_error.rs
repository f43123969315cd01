//! HTTP plumbing shared by the REST API and the agents' HTTP routes: the one mapping of
//! [`DomainError`] to statuses, and the bearer token of a request.
//!
//! Every error leaves the server as `{"error":{"code":…,"message":…}}` with a fitting status.
//! Internal failures are logged with their cause and shown to the client only as a generic
//! message, so database details never reach a caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub use outpost_store::domain::DomainError;

/// The error envelope of every failed request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `bad_request`, `agent_offline`.
    pub code: String,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

/// The status each kind of failure is answered with.
pub fn status(err: &DomainError) -> StatusCode {
    match err {
        DomainError::BadRequest(_) | DomainError::Invalid { .. } => StatusCode::BAD_REQUEST,
        DomainError::Unauthorized(_) | DomainError::Denied { .. } => StatusCode::UNAUTHORIZED,
        DomainError::Forbidden(_) | DomainError::NotAllowed { .. } => StatusCode::FORBIDDEN,
        DomainError::NotFound(_) => StatusCode::NOT_FOUND,
        DomainError::Conflict { .. } => StatusCode::CONFLICT,
        DomainError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        DomainError::Unprocessable(_) | DomainError::Refused { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DomainError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        DomainError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        DomainError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DomainError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The envelope an error is shown as (also inside fan-out results). An internal error is
/// logged here with its cause, which the envelope leaves out.
pub fn envelope_of(err: &DomainError) -> ErrorEnvelope {
    if let DomainError::Internal(cause) = err {
        tracing::error!(error = ?cause, "internal error");
    }
    ErrorEnvelope {
        error: ErrorDetail {
            code: err.code().to_owned(),
            message: err.to_string(),
        },
    }
}

/// A [`DomainError`] on its way out as an HTTP answer: handlers return it, and `?` makes one
/// of any `DomainError` (the error is the services'; its HTTP form is this crate's).
#[derive(Debug)]
pub struct HttpError(pub DomainError);

impl From<DomainError> for HttpError {
    fn from(err: DomainError) -> Self {
        Self(err)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let Self(err) = self;
        let mut response = (status(&err), Json(envelope_of(&err))).into_response();
        if let DomainError::RateLimited { retry_after_s, .. } = err {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_s),
            );
        }
        response
    }
}

/// An error envelope with any status (for rejections outside [`DomainError`]'s statuses, such as
/// a refused WebSocket upgrade's 426).
pub fn envelope(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorEnvelope {
        error: ErrorDetail {
            code: code.to_owned(),
            message,
        },
    };
    (status, Json(body)).into_response()
}

/// Turns axum's JSON body rejections into our error shape, naming what was wrong: the field
/// (`body: target.agents: invalid type: …`), or the body as a whole (not JSON, no
/// `Content-Type: application/json`, too large: 413).
pub fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> DomainError {
    let text = rejection.body_text();
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return DomainError::TooLarge(format!("body: {text}"));
    }
    let text = [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
    ]
    .iter()
    .find_map(|prefix| text.strip_prefix(prefix))
    .unwrap_or(&text);
    DomainError::BadRequest(format!("body: {text}"))
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Adds `Connection: close` to a 413: the server answered before reading the body, so the
/// connection holds the rest of it and cannot carry another request. Without the header a
/// client pooled the connection and sent its next request into one the server was closing,
/// which failed with an incomplete message (seen with long-poll clients after an oversized
/// batch).
pub async fn close_after_too_large(
    mut response: axum::response::Response,
) -> axum::response::Response {
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}
