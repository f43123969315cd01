//! Where the agent reaches a server node: the WebSocket and long-poll URLs derived from an
//! `OUTPOST_SERVER_URL` entry, and the HTTP client both the long-poll transport and library
//! downloads use. Apart from [`crate::session`] and [`crate::http`], which both need it.

use std::sync::Arc;

use anyhow::Context;
use url::Url;

/// The HTTP client of the long-poll transport and of library downloads: rustls with `tls`.
pub fn http_client(tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// `OUTPOST_SERVER_URL` as the WebSocket endpoint: http(s) becomes ws(s), path `/agent/v1/ws`.
pub fn ws_url(base: &str) -> anyhow::Result<Url> {
    let mut url = with_scheme(base, "ws", "wss")?;
    let path = format!("{}/agent/v1/ws", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// `OUTPOST_SERVER_URL` with its scheme mapped to `plain` (from ws/http) or `secure` (from
/// wss/https).
pub(crate) fn with_scheme(base: &str, plain: &str, secure: &str) -> anyhow::Result<Url> {
    let mut url =
        Url::parse(base).with_context(|| format!("OUTPOST_SERVER_URL {base:?} is not a URL"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => plain,
        "wss" | "https" => secure,
        other => anyhow::bail!(
            "OUTPOST_SERVER_URL must be ws://, wss://, http:// or https://, not {other}://"
        ),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot use {scheme}:// with {base}"))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_map_to_the_websocket_endpoint() {
        let cases = [
            ("http://h:8080", "ws://h:8080/agent/v1/ws"),
            ("https://h/", "wss://h/agent/v1/ws"),
            ("ws://h/base", "ws://h/base/agent/v1/ws"),
            ("wss://h", "wss://h/agent/v1/ws"),
        ];
        for (input, want) in cases {
            assert_eq!(ws_url(input).expect(input).as_str(), want);
        }
        assert!(ws_url("ftp://h").is_err());
        assert!(ws_url("not a url").is_err());
    }
}
