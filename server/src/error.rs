//! The one error type of the REST API and its mapping to HTTP.
//!
//! Every error leaves the server as `{"error":{"code":…,"message":…}}` with a fitting status.
//! Internal failures are logged with their cause and shown to the client only as a generic
//! message, so database details never reach a caller.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// An error answered by the REST API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 400 with a specific code (a refused agent frame: `bad_frame`).
    #[error("{message}")]
    Invalid {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason, naming the field.
        message: String,
    },
    /// 401: no or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 401 with a specific code: credentials that exist but do not work now
    /// (`key_disabled`).
    #[error("{message}")]
    Denied {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: nothing by that id in the caller's tenant.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route does not serve this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the request conflicts with the current state, with a specific code.
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// 413: the body is over a size limit, which the message names.
    #[error("{0}")]
    TooLarge(String),
    /// 422: well-formed, but nothing to act on (a target that matches no agent).
    #[error("{0}")]
    Unprocessable(String),
    /// 422 with a specific code: well-formed, but the agent would refuse it
    /// (`script_not_allowed`: a script its manifest does not list).
    #[error("{message}")]
    Refused {
        /// Machine-readable reason (the agent's own code for the refusal).
        code: &'static str,
        /// Human-readable reason, naming the agent and what it refuses.
        message: String,
    },
    /// 504: the agent did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// 503: the server cannot serve this now (shutting down, database unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an infrastructure failure; details are logged, not returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<StoreError> for ApiError {
    /// A failure that passes (a full disk, a busy or unreachable database) is a 503 that says
    /// nothing was stored, so that the caller retries; anything else is a 500.
    fn from(err: StoreError) -> Self {
        if err.is_transient() {
            tracing::warn!(error = %err, "a request failed on the database");
            return Self::Unavailable(format!(
                "the database cannot be written or read right now ({err}); nothing was stored, try again later"
            ));
        }
        Self::Internal(err.into())
    }
}

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

impl ApiError {
    fn parts(&self) -> (StatusCode, &str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Denied { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::Refused { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ApiError {
    /// The envelope this error is shown as (also used inside fan-out results).
    pub fn envelope(&self) -> ErrorEnvelope {
        if let Self::Internal(err) = self {
            tracing::error!(error = ?err, "internal error");
        }
        ErrorEnvelope {
            error: ErrorDetail {
                code: self.parts().1.to_owned(),
                message: self.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.parts().0;
        (status, Json(self.envelope())).into_response()
    }
}

/// An error envelope with any status (for rejections outside [`ApiError`]'s statuses, such as
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
pub fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    let text = rejection.body_text();
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!("body: {text}"));
    }
    let text = [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
    ]
    .iter()
    .find_map(|prefix| text.strip_prefix(prefix))
    .unwrap_or(&text);
    ApiError::BadRequest(format!("body: {text}"))
}
