//! The dashboard's forms: their fields, and the check of their token.
//!
//! Every POST under `/ui` (but the sign-in form, which has its own) passes through
//! [`checked`] in the session middleware: its body is read (at most [`MAX_FORM_BYTES`]), its
//! `_csrf` field must be `Access::form_token` of the session's nonce (HMAC, compared in
//! constant time), and only then does the handler see the fields, as [`Fields`].

use axum::extract::Request;

use super::{Ui, UiError};
use outpost_core::service::access::Access;
use outpost_store::domain::DomainError;

/// The purpose of a session's form tokens (`Access::form_token`): the session middleware
/// makes them, [`checked`] checks them.
pub const SESSION_PURPOSE: &str = "session";
/// The form field holding the token.
pub const CSRF_FIELD: &str = "_csrf";
/// The largest form accepted.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// The most fields a form may have.
const MAX_FIELDS: usize = 256;

/// A form's fields, in order (`application/x-www-form-urlencoded`).
#[derive(Debug, Clone, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// Parses a form body; fields past [`MAX_FIELDS`] are dropped.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .take(MAX_FIELDS)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, trimmed, or `None` when absent or empty.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Reads the form of `request`, refuses it (403) unless its token is the session's, and
/// returns the request with its [`Fields`] as an extension.
pub async fn checked(request: Request, ui: &Ui, access: &Access) -> Result<Request, UiError> {
    let (mut parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            DomainError::TooLarge(format!("body: a form is at most {MAX_FORM_BYTES} bytes"))
        })?;
    let fields = Fields::parse(&bytes);
    let token = fields.get(CSRF_FIELD).unwrap_or("");
    if !access.check_form_token(SESSION_PURPOSE, &ui.nonce, token) {
        return Err(DomainError::Forbidden(
            "the form's token (_csrf) is missing or is not this session's: reload the page and \
             try again"
                .into(),
        )
        .into());
    }
    parts.extensions.insert(fields);
    Ok(Request::from_parts(parts, axum::body::Body::empty()))
}
