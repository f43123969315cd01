//! The dashboard's forms: their fields, and the check of their token.
//!
//! Every POST under `/ui` (but the sign-in form, which has its own) passes through
//! [`checked`] in the session middleware: its body is read (at most [`MAX_FORM_BYTES`]), its
//! `_csrf` field must be `Access::form_token` of the session's nonce (HMAC, compared in
//! constant time), and only then does the handler see the fields, as [`Fields`].
//!
//! The two forms that send files (a library upload, the editor's draft, CONTRACT.md §20) post
//! `multipart/form-data` instead; [`checked_multipart`] reads them (at most
//! [`MAX_MULTIPART_BYTES`], enforced while the body streams), requires the `_csrf` part first
//! and checks it before keeping anything else, and hands the handler [`Parts`].

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

/// The largest `multipart/form-data` form: a library bundle (16 MiB) with room for its
/// signature and the framing.
pub const MAX_MULTIPART_BYTES: usize =
    outpost_protocol::bundle::limits::MAX_BUNDLE_BYTES as usize + 256 * 1024;
/// The most parts a `multipart/form-data` form may have (a bundle's entries, and a few).
const MAX_PARTS: usize = outpost_protocol::bundle::limits::MAX_BUNDLE_ENTRIES * 3 + 16;

/// A `multipart/form-data` form's parts, in order: name and bytes.
#[derive(Debug, Clone, Default)]
pub struct Parts(pub Vec<(String, Vec<u8>)>);

impl Parts {
    /// The bytes of the first part called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first part called `name`, as text (`None` when absent or not UTF-8).
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_owned)
    }

    /// The parts whose name starts with `prefix`: the rest of the name and the bytes.
    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.0
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_slice())))
    }
}

/// Reads a `multipart/form-data` form, refuses it (403) unless its first part is `_csrf`
/// holding the session's token, and returns the request with its [`Parts`] as an extension.
/// The body limit is the router's (`DefaultBodyLimit`, [`MAX_MULTIPART_BYTES`]).
pub async fn checked_multipart(
    request: Request,
    ui: &Ui,
    access: &Access,
) -> Result<Request, UiError> {
    use axum::extract::FromRequest as _;
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts.clone(), body);
    let too_large = || {
        UiError(DomainError::TooLarge(format!(
            "body: a form with files is at most {MAX_MULTIPART_BYTES} bytes"
        )))
    };
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            UiError(DomainError::BadRequest(format!("body: {}", e.body_text())))
        }
    };
    let mut form = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| UiError(DomainError::BadRequest(format!("body: {}", e.body_text()))))?;
    let refused = || {
        UiError(DomainError::Forbidden(
            "the form's token (_csrf) is missing or is not this session's: reload the page and \
             try again"
                .into(),
        ))
    };
    let Some(first) = form.next_field().await.map_err(bad)? else {
        return Err(refused());
    };
    if first.name() != Some(CSRF_FIELD) {
        return Err(refused());
    }
    let token = first.bytes().await.map_err(bad)?;
    let token = std::str::from_utf8(&token).unwrap_or("");
    if !access.check_form_token(SESSION_PURPOSE, &ui.nonce, token) {
        return Err(refused());
    }
    let mut kept = Vec::new();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if kept.len() >= MAX_PARTS {
            return Err(UiError(DomainError::BadRequest(format!(
                "body: more than {MAX_PARTS} parts"
            ))));
        }
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(bad)?;
        kept.push((name, bytes.to_vec()));
    }
    let mut parts = parts;
    parts.extensions.insert(Parts(kept));
    parts.extensions.insert(Fields::default());
    Ok(Request::from_parts(parts, axum::body::Body::empty()))
}

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
    parts.extensions.insert(Parts::default());
    Ok(Request::from_parts(parts, axum::body::Body::empty()))
}
