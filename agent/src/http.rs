//! The HTTP long-poll transport (CONTRACT.md §2), for networks whose proxies refuse WebSocket
//! upgrades.
//!
//! It gives [`crate::session`] what a WebSocket gives: frames go out (batched: everything the
//! session sends between two flushes travels in one `POST /agent/v1/frames`), and frames come
//! in (a background task keeps one `POST /agent/v1/poll` waiting at the server, so a command
//! arrives one request after it is sent, not a polling interval later).
//!
//! Some proxies cut requests that stay open. When a long poll fails but an immediate one
//! succeeds, twice in a row, the poller stops waiting at the server and asks every
//! `OUTPOST_HTTP_POLL_INTERVAL` seconds instead, trying long polls again every 5 minutes.
//!
//! Every answer the server sends is kept by it until the next poll's `cursor` acknowledges it,
//! so a poll answer lost on the way is sent again; any other failure ends the link, and the
//! session's usual reconnect (register again, resend from the journal) takes over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_protocol::poll::{
    DEFAULT_POLL_WAIT_S, FramesRequest, FramesResponse, PollRequest, PollResponse,
};
use outpost_protocol::{AgentFrame, AgentId, ServerFrame};
use reqwest::StatusCode;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use url::Url;

/// Bytes buffered before a batch is sent without waiting for the next flush.
const FLUSH_AT_BYTES: usize = 512 * 1024;
/// Frames buffered before a batch is sent without waiting for the next flush.
const FLUSH_AT_FRAMES: usize = 256;
/// Time allowed for a request beyond the time the server may wait.
const REQUEST_SLACK: Duration = Duration::from_secs(15);
/// After falling back to interval polling, how long until long polls are tried again.
const LONG_POLL_RETRY: Duration = Duration::from_secs(300);
/// Long polls failing (while short ones work) before the poller gives them up.
const LONG_POLL_FAILURES: u32 = 2;

/// Why a link could not be opened.
pub enum OpenError {
    /// The server refused the key.
    Unauthorized(String),
    /// Anything else; worth retrying.
    Failed(anyhow::Error),
}

/// What came in.
pub enum Incoming {
    /// A frame from the server.
    Frame(ServerFrame),
    /// The link is over, and why.
    Closed(anyhow::Error),
}

/// Endpoints and credentials for the long-poll routes.
#[derive(Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    frames: Url,
    poll: Url,
    health: Url,
    scripts: Url,
    bearer: String,
    /// Seconds between polls when long polls cannot be used.
    pub interval: Duration,
}

impl Endpoint {
    /// The long-poll endpoints under `server_url`, one node of `OUTPOST_SERVER_URL`.
    pub fn new(
        client: reqwest::Client,
        server_url: &str,
        api_key: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let base = http_base(server_url)?;
        let join = |path: &str| {
            base.join(path)
                .with_context(|| format!("building the {path} URL from {base}"))
        };
        Ok(Self {
            frames: join("agent/v1/frames")?,
            poll: join("agent/v1/poll")?,
            health: join("healthz")?,
            scripts: join("agent/v1/scripts/")?,
            client,
            bearer: format!("Bearer {api_key}"),
            interval,
        })
    }

    /// Whether plain HTTP(S) reaches the server (its `/healthz` answers).
    pub async fn reachable(&self) -> bool {
        let request = self
            .client
            .get(self.health.clone())
            .timeout(Duration::from_secs(10));
        matches!(request.send().await, Ok(r) if r.status().is_success())
    }

    /// `GET /agent/v1/scripts/{sha256}`: a library bundle's bytes (CONTRACT.md §15), asked with the
    /// agent key over the same client (TLS settings, CA) as the frames. `timeout` bounds the
    /// whole transfer; the caller reads the body and bounds its size.
    pub async fn get_bundle(
        &self,
        sha256: &str,
        timeout: Duration,
    ) -> reqwest::Result<reqwest::Response> {
        self.client
            .get(self.bundle_url(sha256))
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .timeout(timeout)
            .send()
            .await
    }

    /// Where bundle `sha256` is downloaded from, under the server URL's path.
    fn bundle_url(&self, sha256: &str) -> Url {
        // `sha256` was checked to be 64 hex digits, so it is one plain path segment.
        let mut url = self.scripts.clone();
        url.set_path(&format!("{}{sha256}", self.scripts.path()));
        url
    }

    async fn post_frames(&self, body: &FramesRequest) -> Result<FramesResponse, Refusal> {
        let response = self
            .client
            .post(self.frames.clone())
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .json(body)
            .timeout(REQUEST_SLACK * 2)
            .send()
            .await
            .map_err(|e| {
                Refusal::Transport(anyhow::Error::new(e).context("POST /agent/v1/frames"))
            })?;
        read(response, "/agent/v1/frames").await
    }

    async fn poll(&self, req: &PollRequest) -> Result<PollResponse, Refusal> {
        let response = self
            .client
            .post(self.poll.clone())
            .header(reqwest::header::AUTHORIZATION, &self.bearer)
            .json(req)
            .timeout(Duration::from_secs(u64::from(req.wait_s)) + REQUEST_SLACK)
            .send()
            .await
            .map_err(|e| {
                Refusal::Transport(anyhow::Error::new(e).context("POST /agent/v1/poll"))
            })?;
        read(response, "/agent/v1/poll").await
    }
}

/// How a request failed.
enum Refusal {
    /// The request did not complete, or a proxy answered 5xx: the route may be cut.
    Transport(anyhow::Error),
    /// The server said no (401, 409 not_registered, ...).
    Status(StatusCode, String),
}

impl Refusal {
    fn into_error(self) -> anyhow::Error {
        match self {
            Self::Transport(err) => err,
            Self::Status(status, body) => anyhow::anyhow!("the server answered {status}: {body}"),
        }
    }
}

async fn read<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> Result<T, Refusal> {
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|e| {
            Refusal::Transport(
                anyhow::Error::new(e).context(format!("reading the answer of {what}")),
            )
        });
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(512).collect();
    if status.is_server_error() {
        return Err(Refusal::Transport(anyhow::anyhow!(
            "{what} answered {status}: {body}"
        )));
    }
    Err(Refusal::Status(status, body))
}

/// An open long-poll session.
pub struct HttpLink {
    endpoint: Endpoint,
    agent_id: AgentId,
    session: String,
    pending: Vec<Box<RawValue>>,
    pending_bytes: usize,
    replies: VecDeque<ServerFrame>,
    incoming: mpsc::Receiver<Incoming>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl HttpLink {
    /// Registers (which opens the session at the server) and starts polling. Returns the link
    /// and the heartbeat interval the server announced.
    pub async fn open(
        endpoint: Endpoint,
        register: &AgentFrame,
    ) -> Result<(Self, Duration), OpenError> {
        let AgentFrame::Register { data } = register else {
            return Err(OpenError::Failed(anyhow::anyhow!(
                "a session opens with `register`"
            )));
        };
        let agent_id = data.agent_id;
        let body = FramesRequest {
            agent_id: Some(agent_id),
            session: None,
            frames: vec![raw(register)],
        };
        let answer = match endpoint.post_frames(&body).await {
            Ok(answer) => answer,
            Err(Refusal::Status(StatusCode::UNAUTHORIZED, body)) => {
                return Err(OpenError::Unauthorized(body));
            }
            // The agent id is bound to another key (CONTRACT.md §9): retried like a refused key.
            Err(Refusal::Status(StatusCode::CONFLICT, body))
                if body.contains(outpost_protocol::codes::AGENT_ID_TAKEN) =>
            {
                return Err(OpenError::Unauthorized(body));
            }
            // A new agent past its tenant's `max_agents` quota: retried like a refused key.
            Err(Refusal::Status(StatusCode::FORBIDDEN, body))
                if body.contains(outpost_protocol::codes::QUOTA_EXCEEDED) =>
            {
                return Err(OpenError::Unauthorized(body));
            }
            Err(refusal) => return Err(OpenError::Failed(refusal.into_error())),
        };
        let mut replies = VecDeque::from(answer.frames);
        let interval = match replies.pop_front() {
            Some(ServerFrame::Connected(c)) => {
                if c.protocol != outpost_protocol::PROTOCOL_VERSION {
                    return Err(OpenError::Failed(anyhow::anyhow!(
                        "the server speaks protocol {}, this agent {}: install a matching agent release",
                        c.protocol,
                        outpost_protocol::PROTOCOL_VERSION
                    )));
                }
                Duration::from_secs(u64::from(c.heartbeat_interval_s.max(1)))
            }
            other => {
                return Err(OpenError::Failed(anyhow::anyhow!(
                    "the server answered `register` without `connected`: {other:?}"
                )));
            }
        };
        let (tx, incoming) = mpsc::channel(16);
        let poller = tokio::spawn(poll_loop(
            endpoint.clone(),
            agent_id,
            answer.session.clone(),
            tx,
        ));
        Ok((
            Self {
                endpoint,
                agent_id,
                session: answer.session,
                pending: Vec::new(),
                pending_bytes: 0,
                replies,
                incoming,
                poller,
            },
            interval,
        ))
    }

    /// Queues a frame; sends the batch at once if it has grown large.
    pub async fn send(&mut self, frame: &AgentFrame) -> anyhow::Result<()> {
        let frame = raw(frame);
        self.pending_bytes += frame.get().len();
        self.pending.push(frame);
        if self.pending_bytes >= FLUSH_AT_BYTES || self.pending.len() >= FLUSH_AT_FRAMES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the queued frames as one batch; the server's immediate answers (acks, errors)
    /// come out of [`next`](Self::next).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let body = FramesRequest {
            agent_id: Some(self.agent_id),
            session: Some(self.session.clone()),
            frames: std::mem::take(&mut self.pending),
        };
        self.pending_bytes = 0;
        let answer = self
            .endpoint
            .post_frames(&body)
            .await
            .map_err(Refusal::into_error)?;
        self.replies.extend(answer.frames);
        Ok(())
    }

    /// The next frame from the server. Cancel-safe: nothing is lost if the caller stops
    /// waiting.
    pub async fn next(&mut self) -> Incoming {
        if let Some(frame) = self.replies.pop_front() {
            return Incoming::Frame(frame);
        }
        match self.incoming.recv().await {
            Some(incoming) => incoming,
            None => Incoming::Closed(anyhow::anyhow!("the poller stopped")),
        }
    }
}

/// Keeps a poll waiting at the server and hands what arrives to the link.
async fn poll_loop(
    endpoint: Endpoint,
    agent_id: AgentId,
    session: String,
    tx: mpsc::Sender<Incoming>,
) {
    let mut req = PollRequest {
        agent_id,
        session,
        wait_s: DEFAULT_POLL_WAIT_S,
        cursor: 0,
    };
    let mut long_failures = 0;
    let mut short_since: Option<Instant> = None;
    loop {
        if short_since.is_some_and(|t| t.elapsed() >= LONG_POLL_RETRY) {
            tracing::info!("trying long polls again");
            short_since = None;
        }
        req.wait_s = if short_since.is_some() {
            0
        } else {
            DEFAULT_POLL_WAIT_S
        };
        let answer = match endpoint.poll(&req).await {
            Ok(answer) => {
                if short_since.is_none() {
                    long_failures = 0;
                }
                answer
            }
            Err(Refusal::Transport(err)) if short_since.is_none() => {
                // Maybe only long requests are cut: see whether an immediate poll gets through.
                req.wait_s = 0;
                match endpoint.poll(&req).await {
                    Ok(answer) => {
                        long_failures += 1;
                        if long_failures >= LONG_POLL_FAILURES {
                            tracing::warn!(
                                error = format!("{err:#}"),
                                interval_s = endpoint.interval.as_secs(),
                                "long-poll requests are being cut on the way to the server; polling every interval instead"
                            );
                            short_since = Some(Instant::now());
                        }
                        answer
                    }
                    Err(refusal) => {
                        let _ = tx.send(Incoming::Closed(refusal.into_error())).await;
                        return;
                    }
                }
            }
            Err(refusal) => {
                let _ = tx.send(Incoming::Closed(refusal.into_error())).await;
                return;
            }
        };
        req.cursor = answer.cursor;
        for frame in answer.frames {
            if tx.send(Incoming::Frame(frame)).await.is_err() {
                return;
            }
        }
        if short_since.is_some() {
            tokio::time::sleep(endpoint.interval).await;
        }
    }
}

fn raw(frame: &AgentFrame) -> Box<RawValue> {
    // An encoded frame is always one valid JSON object.
    RawValue::from_string(frame.encode()).expect("frames encode to valid JSON")
}

/// A server URL (one node of `OUTPOST_SERVER_URL`) as the base of the HTTP routes: ws(s) becomes http(s), and the path
/// ends with `/` so that relative joins stay under it.
pub fn http_base(base: &str) -> anyhow::Result<Url> {
    let mut url = crate::endpoint::with_scheme(base, "http", "https")?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_map_to_the_http_base() {
        let cases = [
            ("ws://h:8080", "http://h:8080/"),
            ("wss://h/", "https://h/"),
            ("http://h/base", "http://h/base/"),
            ("https://h/base/", "https://h/base/"),
        ];
        for (input, want) in cases {
            assert_eq!(http_base(input).expect(input).as_str(), want);
        }
        assert!(http_base("ftp://h").is_err());
    }

    #[test]
    fn bundles_are_fetched_beside_the_other_agent_routes() {
        let tls = crate::tls::client_config(None).expect("tls");
        let client = crate::endpoint::http_client(&tls).expect("client");
        let sha = "ab".repeat(32);
        for (server, want) in [
            (
                "wss://h:8443",
                format!("https://h:8443/agent/v1/scripts/{sha}"),
            ),
            (
                "http://h/base",
                format!("http://h/base/agent/v1/scripts/{sha}"),
            ),
        ] {
            let endpoint = Endpoint::new(client.clone(), server, "opa_x", Duration::from_secs(5))
                .expect(server);
            assert_eq!(endpoint.bundle_url(&sha).as_str(), want);
        }
    }
}
