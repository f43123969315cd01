//! The one error of domain operations.
//!
//! Services, the hub and the store's callers fail with [`DomainError`]; its variants say what
//! kind of failure it is (the caller's input, its rights, the state of things, the server),
//! never how a transport shows it. `api::error` maps each to an HTTP status and the JSON error
//! envelope, in that one place; the hub maps the few it meets to protocol frames.

/// Why an operation failed. Messages name the field or the thing, and what to do where it
/// helps; `Internal` carries its cause for the log only.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// Malformed, with a specific code (a refused agent frame: `bad_frame`).
    #[error("{message}")]
    Invalid {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason, naming the field.
        message: String,
    },
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that exist but do not work now (`key_disabled`).
    #[error("{message}")]
    Denied {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Refused by the server's settings whoever asks, with a specific code: a tenant's quota
    /// (`quota_exceeded`), signup switched off (`signup_disabled`).
    #[error("{message}")]
    NotAllowed {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason, naming the setting and its value.
        message: String,
    },
    /// Nothing by that id in the caller's tenant.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, with a specific code.
    #[error("{message}")]
    Conflict {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// Over a size limit, which the message names.
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed, but nothing to act on (a target that matches no agent).
    #[error("{0}")]
    Unprocessable(String),
    /// Well-formed, but the agent would refuse it (`script_not_allowed`: a script its
    /// manifest does not list).
    #[error("{message}")]
    Refused {
        /// Machine-readable reason (the agent's own code for the refusal).
        code: &'static str,
        /// Human-readable reason, naming the agent and what it refuses.
        message: String,
    },
    /// The agent did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// Too many requests for a rate limit, which the message names (`rate_limited`).
    #[error("{message}")]
    RateLimited {
        /// Which limit, how many a minute, and when to try again.
        message: String,
        /// Whole seconds until a request is allowed again (`Retry-After`).
        retry_after_s: u64,
    },
    /// The server cannot serve this now (shutting down, database unwritable).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an infrastructure failure; details are logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl DomainError {
    /// The machine-readable code shown with the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Invalid { code, .. }
            | Self::Denied { code, .. }
            | Self::Conflict { code, .. }
            | Self::Refused { code, .. }
            | Self::NotAllowed { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::TooLarge(_) => "too_large",
            Self::Unprocessable(_) => "unprocessable",
            Self::Timeout(_) => "timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// The refusal of a creation past a quota: 403 `quota_exceeded`, naming it and its value.
pub fn quota_exceeded(quota: &str, max: i64, things: &str) -> DomainError {
    DomainError::NotAllowed {
        code: "quota_exceeded",
        message: format!(
            "quota exceeded: this tenant's {quota} is {max} and it has {max} {things} or more; \
             the server's admin may raise it (PATCH /api/tenants/{{id}} or outpost-server \
             tenant set-quota)"
        ),
    }
}
