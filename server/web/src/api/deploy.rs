//! `GET /deploy.sh`: the agent installer, public like `/downloads`, so that one line
//! (`curl -fsSL URL/deploy.sh | bash -s -- --key opa_…`) installs an agent.
//!
//! The script is the repository's `deploy.sh`, compiled in, with two values filled in: the URL
//! agents reach this server at (`--public-url`, else the scheme served and the request's `Host`)
//! and the public key of the latest release (or, before any is published, of the server's own
//! release key that signs the builds it ships with: `outpost_core::builtin`), which a native install
//! pins for its updates (trust on first use, over the same channel that delivers the script). Both are spliced between
//! single quotes in a script someone pipes to bash, so each is checked against a strict
//! character set first: a hostile `Host` header or a mistyped `--public-url` gives an error,
//! never shell syntax.

use crate::http_error::HttpError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use outpost_store::domain::DomainError;

/// The installer as it is in the repository.
pub const SCRIPT: &str = include_str!("../../../../deploy.sh");

const URL_SLOT: &str = "served_url=''";
const KEY_SLOT: &str = "served_pubkey=''";

/// The installer, with this server's URL and release key filled in.
#[utoipa::path(get, operation_id = "deployScript", path = "/deploy.sh", tag = "install",
    responses(
        (status = 200, description = "The installer (text/x-shellscript)", content_type = "text/x-shellscript"),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "The Host header or --public-url cannot be used in a script")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn script(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let base = base_url(
        state.services.releases.files().public_url.as_deref(),
        state.services.releases.files().tls,
        &headers,
    )?;
    // The key of what `/downloads` serves: the latest published release's, else (nothing
    // published) the server's own when it has the builds it ships with (`outpost_core::builtin`).
    let builtin = &state.services.releases.files().builtin;
    let pubkey = match state.services.releases.latest_public_key().await? {
        Some(key) => Some(key),
        None if builtin.has_agent() => Some(builtin.public_key().to_owned()),
        None => None,
    };
    let body = render(&base, pubkey.as_deref()).map_err(DomainError::BadRequest)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// `--public-url` when set, else `http(s)://<Host>`. A missing or odd `Host` is an error here
/// (rather than a guess): the script would send agents to the wrong place.
fn base_url(
    public_url: Option<&str>,
    tls: bool,
    headers: &HeaderMap,
) -> Result<String, DomainError> {
    if let Some(url) = public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .ok_or_else(|| {
            DomainError::BadRequest(
                "no usable Host header: set --public-url so /deploy.sh knows this server's URL"
                    .into(),
            )
        })?;
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}"))
}

/// Fills the two slots of [`SCRIPT`]. `base_url` must be `http(s)://` followed by URL
/// characters that mean nothing to a shell inside single quotes (no quote, space, `$`, `;`,
/// backtick…); `pubkey` must be standard base64.
pub fn render(base_url: &str, pubkey: Option<&str>) -> Result<String, String> {
    let rest = base_url
        .strip_prefix("https://")
        .or_else(|| base_url.strip_prefix("http://"))
        .ok_or_else(|| format!("server URL {base_url:.200} must start with http:// or https://"))?;
    if rest.is_empty()
        || base_url.len() > 2048
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]/_~%+@".contains(&b))
    {
        return Err(format!(
            "server URL {base_url:.200} has characters deploy.sh cannot take (letters, digits and . - : [ ] / _ ~ % + @ only): set --public-url"
        ));
    }
    let mut script = fill(SCRIPT, URL_SLOT, &format!("served_url='{base_url}'"))?;
    if let Some(key) = pubkey {
        if key.is_empty()
            || key.len() > 128
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err("the release public key is not base64".into());
        }
        script = fill(&script, KEY_SLOT, &format!("served_pubkey='{key}'"))?;
    }
    Ok(script)
}

/// Replaces the one line that is exactly `slot`.
fn fill(script: &str, slot: &str, line: &str) -> Result<String, String> {
    let mut out = String::with_capacity(script.len() + line.len());
    let mut found = 0;
    for l in script.split_inclusive('\n') {
        if l.trim_end() == slot {
            found += 1;
            out.push_str(line);
            out.push('\n');
        } else {
            out.push_str(l);
        }
    }
    match found {
        1 => Ok(out),
        n => Err(format!("deploy.sh has {n} lines `{slot}`, expected one")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_url_and_key() {
        let key = "MCowBQYDK2VwAyEAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let s = render("https://outpost.example.com:8443", Some(key)).expect("render");
        assert!(s.contains("\nserved_url='https://outpost.example.com:8443'\n"));
        assert!(s.contains(&format!("\nserved_pubkey='{key}'\n")));
        assert!(!s.contains(URL_SLOT) && !s.contains(KEY_SLOT));
        assert!(s.starts_with("#!/usr/bin/env bash\n"));
    }

    #[test]
    fn without_key_the_slot_stays_empty() {
        let s = render("http://[::1]:8080", None).expect("render");
        assert!(s.contains("\nserved_url='http://[::1]:8080'\n"));
        assert!(s.contains(&format!("\n{KEY_SLOT}\n")));
    }

    #[test]
    fn refuses_anything_a_shell_could_read() {
        for url in [
            "http://x'; rm -rf ~; '",
            "http://x$(id)",
            "http://x`id`",
            "http://a b",
            "http://x\nrm",
            "http://x\"",
            "http://x;id",
            "http://x&id",
            "http://x|id",
            "ftp://x",
            "http://",
            "x",
        ] {
            assert!(render(url, None).is_err(), "{url:?} accepted");
        }
        assert!(render("http://x", Some("a'b")).is_err());
        assert!(render("http://x", Some("")).is_err());
    }

    #[test]
    fn host_header_or_public_url() {
        let mut headers = HeaderMap::new();
        assert!(base_url(None, false, &headers).is_err());
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.5:8080"));
        assert_eq!(
            base_url(None, true, &headers).expect("host"),
            "https://10.0.0.5:8080"
        );
        assert_eq!(
            base_url(Some("https://o.example/"), false, &headers).expect("public"),
            "https://o.example"
        );
    }
}
