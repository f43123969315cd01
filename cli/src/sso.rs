//! `outpost login --sso`: single sign-on in a browser, handed back to the CLI on loopback
//! (CONTRACT.md §18, RFC 8252's loopback redirect).
//!
//! The CLI listens on `127.0.0.1:0` under a random path, and has the browser open the
//! server's `/api/auth/oidc/start?cli=<that address>`: the browser goes to the provider and
//! back to the server, which sends it on to the CLI's address with a one-time code. The CLI
//! exchanges that code (`POST /api/auth/oidc/exchange`) for a session. The session's tokens
//! never pass through the browser; the code is single-use and lives two minutes; the random
//! path keeps another local program from feeding the CLI a code of its own choosing by luck.

use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::Client;
use crate::error::CliError;

/// How long the CLI waits for the browser.
const WAIT: Duration = Duration::from_secs(300);
/// The longest request line read from the browser.
const MAX_REQUEST: usize = 8 * 1024;

fn random_path() -> Result<String, CliError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CliError::Other("the operating system's random source failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Signs in through the browser; the server's session answer.
pub async fn login(url: &str) -> Result<serde_json::Value, CliError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on 127.0.0.1 for the browser: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CliError::Other(e.to_string()))?
        .port();
    let path = format!("/outpost-sso/{}", random_path()?);
    let loopback = format!("http://127.0.0.1:{port}{path}");
    let start = format!(
        "{}/api/auth/oidc/start?cli={}",
        url.trim_end_matches('/'),
        url::form_urlencoded::byte_serialize(loopback.as_bytes()).collect::<String>()
    );
    eprintln!("Open this URL in a browser to sign in:\n\n  {start}\n");
    open_browser(&start);
    eprintln!(
        "Waiting for the browser (up to {} minutes; Ctrl-C to stop)…",
        WAIT.as_secs() / 60
    );
    let code = tokio::time::timeout(WAIT, wait_for_code(&listener, &path))
        .await
        .map_err(|_| {
            CliError::Other(
                "the browser did not come back within 5 minutes: run `outpost login --sso` again"
                    .into(),
            )
        })??;
    let client = Client::new(url, "")?;
    client
        .anonymous(
            "/api/auth/oidc/exchange",
            &serde_json::json!({"code": code}),
        )
        .await
}

/// Opens `url` with `xdg-open` (or `open` on macOS) when there is one, unless
/// `OUTPOST_NO_BROWSER` is set; the URL is printed either way.
fn open_browser(url: &str) {
    if std::env::var_os("OUTPOST_NO_BROWSER").is_some() {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Answers the browser's requests until one to `path` carries `code`.
async fn wait_for_code(listener: &TcpListener, path: &str) -> Result<String, CliError> {
    loop {
        let (mut socket, _) = listener
            .accept()
            .await
            .map_err(|e| CliError::Other(format!("waiting for the browser: {e}")))?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 1024];
        // The request line and headers; the body (there is none) is not read.
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !buffer.windows(4).any(|w| w == b"\r\n\r\n") && buffer.len() < MAX_REQUEST {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        if read.is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&buffer);
        let target = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("GET "))
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("");
        let code = url::Url::parse(&format!("http://127.0.0.1{target}"))
            .ok()
            .filter(|u| u.path() == path)
            .and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
            });
        let (status, body) = match &code {
            Some(_) => (
                "200 OK",
                "<!doctype html><title>Outpost</title><p>Signed in: the CLI has your session. You may close this tab.</p>",
            ),
            None => (
                "404 Not Found",
                "<!doctype html><title>Outpost</title><p>Not here.</p>",
            ),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(answer.as_bytes()).await;
        let _ = socket.shutdown().await;
        if let Some(code) = code {
            return Ok(code);
        }
    }
}
