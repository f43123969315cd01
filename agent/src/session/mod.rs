//! One connection to the server at a time: connect, register, heartbeat, exchange frames, and
//! reconnect with backoff when it ends.
//!
//! `OUTPOST_SERVER_URL` may name several nodes of one cluster (CONTRACT.md §13); see [`rotation`] for
//! the order the agent tries them in. Everything below applies to whichever node it is on.
//!
//! A connection is a WebSocket, or the HTTP long-poll fallback ([`crate::http`]) when
//! `OUTPOST_HTTP_FALLBACK` says so or when WebSockets keep failing (3 attempts in a row) while
//! plain HTTP to the server works. On the fallback, a WebSocket is tried again every 5 minutes
//! and taken as soon as it works. Both carry the same frames through the same [`Session`], so
//! the delivery guarantees do not depend on the transport: a command that arrives over both
//! around a switch is run once (the journal knows its id), and answers and output not yet
//! acknowledged are sent again by the next connection, whichever it is.
//!
//! Backoff is exponential (1 s base, 60 s cap) with full jitter, so a fleet that lost its
//! server does not come back in lockstep; it resets once a connection has stayed up for 60 s.
//! A key the server refuses (401) is retried on a slower schedule (30 s base, 5 min cap): it
//! will not start working by itself, and a fleet holding a deleted key must not hammer the
//! server. So is an agent id the server says is bound to another key (`agent_id_taken`): it
//! works again once an admin forgets the agent; and a new agent refused by its tenant's
//! `max_agents` quota (`quota_exceeded`): it works once the quota is raised.
//!
//! A *disabled* key is the exception (the 401's code is `key_disabled`): an admin may enable it
//! again at any moment, and the server cannot tell agents it refuses. They ask again every
//! 5-15 s (uniformly drawn, so a fleet spreads out) for the first 10 minutes after the refusal,
//! then every 30-90 s ([`backoff::DisabledKey`]). A re-enabled key's agents are back within 15 s of
//! `outpost keys agent enable` (90 s after a long disable): it took minutes on the slow
//! schedule. The cost is bounded: 1,000 agents of a disabled key make about 100 refused
//! requests a second for 10 minutes, then about 17.

mod backoff;
mod link;
mod rotation;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outpost_protocol::{AgentFrame, CommandId, Output, ServerFrame, encode_output_data, limits};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::Agent;
use crate::endpoint::{http_client, ws_url};
use crate::spool::SpoolReader;
use backoff::{Backoff, DisabledKey};
use link::{Link, Socket};
use rotation::Rotation;

/// A connection that stayed up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Time to connect (TCP, TLS and upgrade) and to receive `connected`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a connection attempt or session ended.
enum Ended {
    /// Connected, then the connection dropped.
    Dropped(anyhow::Error),
    /// Could not connect at all.
    ConnectFailed(anyhow::Error),
    /// The server refused the key (or this agent id with this key: `agent_id_taken`, or a new
    /// agent past the tenant's quota: `quota_exceeded`).
    Unauthorized(String),
    /// The server refused the key because it is disabled (`key_disabled`): it may be enabled
    /// again at any time.
    KeyDisabled(String),
    /// Shut down on request.
    Shutdown,
    /// A control command asked for this exit code.
    Exit(i32),
    /// On the fallback, a WebSocket opened: carry on over it.
    Upgraded(Box<Link>, Duration),
}

/// Which transport the connector uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WebSocket,
    Http,
}

/// Whether a 401's body is the server's `key_disabled` refusal.
fn says_key_disabled(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| {
        v.pointer("/error/code").and_then(serde_json::Value::as_str)
            == Some(outpost_protocol::codes::KEY_DISABLED)
    })
}

/// A refused key: disabled (asked again soon) or anything else (asked again slowly).
fn refused(body: String) -> Ended {
    if says_key_disabled(&body) {
        Ended::KeyDisabled(body)
    } else {
        Ended::Unauthorized(body)
    }
}

/// WebSocket attempts failing in a row before the HTTP fallback is considered.
const WS_FAILURES_BEFORE_FALLBACK: u32 = 3;

/// One server node of `OUTPOST_SERVER_URL`: its endpoints for both transports.
struct Node {
    /// The WebSocket endpoint.
    ws: Url,
    /// The long-poll endpoints.
    http: crate::http::Endpoint,
    /// The URL as logs show it (no credentials).
    name: String,
}

/// Owns the reconnect loop.
pub struct Connector {
    agent: Arc<Agent>,
    nodes: Vec<Node>,
    tls: Arc<rustls::ClientConfig>,
    ws_retry: Duration,
    /// The agent's certificate, when it enrolls (CONTRACT.md §19).
    identity: Option<Arc<crate::identity::Identity>>,
}

impl Connector {
    /// Prepares the endpoints of each server node (`servers`, as
    /// [`Config::server_urls`](crate::Config::server_urls) returns them) and the TLS
    /// configuration.
    pub fn new(
        agent: Arc<Agent>,
        servers: &[Url],
        tls: Arc<rustls::ClientConfig>,
        identity: Option<Arc<crate::identity::Identity>>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!servers.is_empty(), "no server URL");
        let client = http_client(&tls)?;
        let interval = Duration::from_secs(agent.config.http_poll_interval.max(1));
        let nodes = servers
            .iter()
            .map(|url| {
                Ok(Node {
                    ws: ws_url(url.as_str())?,
                    http: crate::http::Endpoint::new(
                        client.clone(),
                        url.as_str(),
                        agent.config.key(),
                        interval,
                    )?,
                    name: crate::config::url_for_logs(url),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ws_retry = Duration::from_secs(agent.config.ws_retry_interval.max(1));
        Ok(Self {
            agent,
            nodes,
            tls,
            ws_retry,
            identity,
        })
    }

    /// Connects and reconnects until shut down or asked to exit; returns the exit code.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<i32> {
        let first = self.agent.config.first_server.map(|n| usize::from(n) - 1);
        let mut rotation = Rotation::starting_at(self.nodes.len(), first);
        let mut network = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut refused = Backoff::new(Duration::from_secs(30), Duration::from_secs(300));
        let mut disabled = DisabledKey::default();
        let forced = self.agent.config.http_fallback;
        let mut mode = if forced { Mode::Http } else { Mode::WebSocket };
        if forced {
            tracing::info!("OUTPOST_HTTP_FALLBACK is set: using HTTP long-poll");
        }
        let mut ws_failures = 0;
        let mut next_ws_try = None;
        let mut opened = None;
        loop {
            let started = Instant::now();
            let node = &self.nodes[rotation.current()];
            let ws_retry_at = if mode == Mode::Http && !forced {
                next_ws_try
            } else {
                None
            };
            let ended = tokio::select! {
                ended = self.connect_and_serve(node, mode, opened.take(), ws_retry_at, &shutdown) => ended,
                () = shutdown.cancelled() => Ended::Shutdown,
            };
            let delay = match ended {
                Ended::Shutdown => return Ok(0),
                Ended::Exit(code) => return Ok(code),
                Ended::Upgraded(link, interval) => {
                    tracing::info!("WebSocket connections work again; leaving HTTP long-poll");
                    mode = Mode::WebSocket;
                    ws_failures = 0;
                    opened = Some((*link, interval));
                    continue;
                }
                Ended::Unauthorized(why) => {
                    network.reset();
                    disabled.reset();
                    rotation.refused();
                    let delay = refused.next();
                    tracing::error!(server = %node.name, reason = %why, retry_in = ?delay, "the server refused the agent key (or this agent id with it)");
                    // A revoked certificate is dropped: the agent enrolls again (refused until
                    // an admin clears it) and connects as soon as it has a new one; so does an
                    // agent refused while it waits for its (first) certificate.
                    if let Some(identity) = &self.identity
                        && (why.contains(outpost_protocol::codes::CERTIFICATE_REVOKED)
                            || !identity.is_enrolled())
                    {
                        if why.contains(outpost_protocol::codes::CERTIFICATE_REVOKED) {
                            identity.forget();
                        }
                        tokio::select! {
                            () = identity.enrolled() => continue,
                            () = tokio::time::sleep(delay) => continue,
                            () = shutdown.cancelled() => return Ok(0),
                        }
                    }
                    delay
                }
                Ended::KeyDisabled(why) => {
                    network.reset();
                    refused.reset();
                    rotation.refused();
                    let first = disabled.is_new();
                    let delay = disabled.next();
                    if first {
                        tracing::error!(server = %node.name, reason = %why, retry_in = ?delay, "the agent key is disabled on the server; asking again every 5-15 s (every 30-90 s after 10 minutes) until it is enabled");
                    } else {
                        tracing::warn!(retry_in = ?delay, "the agent key is still disabled");
                    }
                    delay
                }
                Ended::ConnectFailed(err) => {
                    refused.reset();
                    if mode == Mode::WebSocket {
                        ws_failures += 1;
                    }
                    // Asked of the node that just failed: it stays the one to use if it answers.
                    if mode == Mode::WebSocket
                        && !forced
                        && ws_failures >= WS_FAILURES_BEFORE_FALLBACK
                        && node.http.reachable().await
                    {
                        tracing::warn!(
                            server = %node.name,
                            error = format!("{err:#}"),
                            attempts = ws_failures,
                            "WebSocket connections fail but plain HTTP reaches the server: switching to HTTP long-poll"
                        );
                        mode = Mode::Http;
                        ws_failures = 0;
                        next_ws_try = Some(Instant::now() + self.ws_retry);
                        continue;
                    }
                    self.move_on(
                        &mut rotation,
                        &mut network,
                        node,
                        &err,
                        "could not connect to the server",
                    )
                }
                Ended::Dropped(err) => {
                    refused.reset();
                    disabled.reset();
                    ws_failures = 0;
                    // The key was disabled: the next attempt (soon) learns whether it still
                    // is, and [`DisabledKey`] paces the ones after.
                    let key_disabled =
                        format!("{err:#}").contains(outpost_protocol::codes::CLOSE_KEY_DISABLED);
                    if key_disabled {
                        network.reset();
                        rotation.refused();
                        let delay = network.next();
                        tracing::warn!(server = %node.name, error = format!("{err:#}"), retry_in = ?delay, "disconnected from the server");
                        delay
                    } else {
                        if started.elapsed() >= HEALTHY_AFTER {
                            network.reset();
                            rotation.healthy();
                        }
                        self.move_on(
                            &mut rotation,
                            &mut network,
                            node,
                            &err,
                            "disconnected from the server",
                        )
                    }
                }
            };
            if mode == Mode::Http && next_ws_try.is_some_and(|t| t <= Instant::now()) {
                next_ws_try = Some(Instant::now() + self.ws_retry);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(0),
            }
        }
    }

    /// After `node` failed (`what`, `err`): moves to the next node, and returns how long to
    /// wait before trying it (nothing while some node has not failed yet).
    fn move_on(
        &self,
        rotation: &mut Rotation,
        network: &mut Backoff,
        node: &Node,
        err: &anyhow::Error,
        what: &str,
    ) -> Duration {
        let error = format!("{err:#}");
        if rotation.failed() {
            let delay = network.next();
            tracing::warn!(server = %node.name, error, retry_in = ?delay, "{what}");
            delay
        } else {
            let next = &self.nodes[rotation.current()].name;
            tracing::warn!(server = %node.name, error, next = %next, "{what}; trying the next server");
            Duration::ZERO
        }
    }

    async fn connect_and_serve(
        &self,
        node: &Node,
        mode: Mode,
        opened: Option<(Link, Duration)>,
        ws_retry_at: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let (link, interval) = match opened {
            Some(opened) => opened,
            None => {
                let open = async {
                    match mode {
                        Mode::WebSocket => self.open_ws(node).await,
                        Mode::Http => self.open_http(node).await,
                    }
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, open).await {
                    Ok(Ok(opened)) => opened,
                    Ok(Err(ended)) => return ended,
                    Err(_) => return Ended::ConnectFailed(anyhow::anyhow!("connecting timed out")),
                }
            }
        };
        // Library bundles come from the node this connection reached (CONTRACT.md §15).
        self.agent.set_endpoint(node.http.clone());
        let mut session = Session {
            agent: self.agent.clone(),
            link,
            readers: HashMap::new(),
            answers_sent: HashSet::new(),
        };
        session
            .serve(self, node, interval, ws_retry_at, shutdown)
            .await
    }

    /// Opens a WebSocket: upgrade, `connected`, `register`.
    async fn open_ws(&self, node: &Node) -> Result<(Link, Duration), Ended> {
        let (mut socket, ip) = self.connect(node).await?;
        let interval = await_connected(&mut socket)
            .await
            .map_err(Ended::ConnectFailed)?;
        self.agent.set_ip(ip);
        let mut link = Link::Ws(Box::new(socket));
        let register = AgentFrame::Register {
            data: self.agent.register_data(),
        };
        link.send(&register).await.map_err(Ended::ConnectFailed)?;
        Ok((link, interval))
    }

    /// Opens a long-poll session: `register` through `/agent/v1/frames`, answered by
    /// `connected`.
    async fn open_http(&self, node: &Node) -> Result<(Link, Duration), Ended> {
        if let Some(ip) = self.local_ip(node).await {
            self.agent.set_ip(ip);
        }
        let register = AgentFrame::Register {
            data: self.agent.register_data(),
        };
        match crate::http::HttpLink::open(node.http.clone(), &register).await {
            Ok((link, interval)) => Ok((Link::Http(Box::new(link)), interval)),
            Err(crate::http::OpenError::Unauthorized(why)) => Err(refused(why)),
            Err(crate::http::OpenError::Failed(err)) => Err(Ended::ConnectFailed(err)),
        }
    }

    /// The address this host would use to reach the server (no packet is sent).
    async fn local_ip(&self, node: &Node) -> Option<String> {
        let host = node.ws.host_str()?.to_owned();
        let port = node.ws.port_or_known_default()?;
        let addr = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = std::net::UdpSocket::bind(bind).ok()?;
        socket.connect(addr).ok()?;
        Some(socket.local_addr().ok()?.ip().to_string())
    }

    async fn connect(&self, node: &Node) -> Result<(Socket, String), Ended> {
        let mut request = node
            .ws
            .as_str()
            .into_client_request()
            .map_err(|e| Ended::ConnectFailed(e.into()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.agent.config.key()))
            .map_err(|_| {
                Ended::Unauthorized("the agent key has characters not allowed in a header".into())
            })?;
        request.headers_mut().insert(header::AUTHORIZATION, bearer);
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(limits::MAX_FRAME_BYTES))
            .max_frame_size(Some(limits::MAX_FRAME_BYTES));
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let result = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(connector),
        )
        .await;
        let socket = match result {
            Ok((socket, _)) => socket,
            Err(tungstenite::Error::Http(response))
                if response.status() == StatusCode::UNAUTHORIZED =>
            {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                return Err(refused(body));
            }
            Err(err) => {
                return Err(Ended::ConnectFailed(anyhow::Error::new(err).context(
                    format!("connecting to {}", crate::config::url_for_logs(&node.ws)),
                )));
            }
        };
        let ip = local_ip(&socket).unwrap_or_default();
        Ok((socket, ip))
    }
}

/// Waits for `connected` and returns the heartbeat interval it announces.
async fn await_connected(socket: &mut Socket) -> anyhow::Result<Duration> {
    while let Some(msg) = socket.next().await {
        if let Message::Text(text) = msg? {
            match ServerFrame::decode(text.as_str()) {
                Ok(ServerFrame::Connected(c)) => {
                    if c.protocol != outpost_protocol::PROTOCOL_VERSION {
                        anyhow::bail!(
                            "the server speaks protocol {}, this agent {}: install a matching agent release",
                            c.protocol,
                            outpost_protocol::PROTOCOL_VERSION
                        );
                    }
                    return Ok(Duration::from_secs(u64::from(
                        c.heartbeat_interval_s.max(1),
                    )));
                }
                // Only its type: a command's data may hold secret parameters.
                Ok(other) => {
                    tracing::debug!(frame = other.kind(), "frame before `connected`; ignored")
                }
                Err(err) => tracing::warn!(error = %err, "unreadable frame before `connected`"),
            }
        }
    }
    anyhow::bail!("the server closed the connection before `connected`")
}

/// One connection. What it has sent lives only as long as it does: the next connection starts
/// again from the journal and the spools, and the server drops what it already has.
struct Session {
    agent: Arc<Agent>,
    link: Link,
    /// Output spools being sent, by command.
    readers: HashMap<CommandId, SpoolReader>,
    /// Answers sent on this connection (and not yet acknowledged).
    answers_sent: HashSet<CommandId>,
}

/// Heartbeat intervals without a word from the server (over a WebSocket, where each heartbeat
/// also sends a ping the server answers) after which the connection is taken for dead.
const SILENT_INTERVALS: u32 = 3;

/// Frames one [`Session::pump`] sends before letting incoming frames and heartbeats through.
const PUMP_BUDGET: usize = 32;

impl Session {
    async fn serve(
        &mut self,
        connector: &Connector,
        node: &Node,
        interval: Duration,
        ws_retry_at: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Output and answers produced while cut off, or before a crash (delivery guarantee 4).
        if let Err(err) = self.pump().await {
            return Ended::Dropped(err);
        }
        if let Err(err) = self.link.flush().await {
            return Ended::Dropped(err);
        }
        tracing::info!(
            server = %node.name,
            heartbeat_s = interval.as_secs(),
            transport = self.link.transport(),
            "connected and registered"
        );
        // What setting the connection up took (TLS roots, the handshake, `register`) is free now.
        self.agent.release_free_memory();

        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the server last sent anything (a frame, or the pong to the ping each heartbeat
        // sends over a WebSocket). A node frozen (SIGSTOP, a hung hypervisor) or cut off
        // without a reset leaves the TCP connection open and writes succeeding into the
        // kernel's buffer for many minutes: silence is the only sign, and the server's own
        // rule for agents (three intervals) is the agent's too (CONTRACT.md §2).
        let mut heard_at = tokio::time::Instant::now();
        let silence_limit = interval * SILENT_INTERVALS;
        let mut ws_retry_at = ws_retry_at.map(tokio::time::Instant::from_std);
        loop {
            let at = ws_retry_at;
            let retry = async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                frame = self.link.next() => match frame {
                    Ok(Some(frame)) => {
                        heard_at = tokio::time::Instant::now();
                        self.on_frame(frame).await
                    }
                    Ok(None) => {
                        heard_at = tokio::time::Instant::now();
                        Ok(())
                    }
                    Err(err) => Err(Ended::Dropped(err)),
                },
                () = self.agent.activity.notified() => self.pump().await.map_err(Ended::Dropped),
                () = self.agent.manifest_changed.notified() => {
                    let register = AgentFrame::Register { data: self.agent.register_data() };
                    self.link.send(&register).await.map_err(Ended::Dropped)
                }
                _ = heartbeat.tick() => {
                    if self.link.is_ws() && heard_at.elapsed() > silence_limit {
                        return Ended::Dropped(anyhow::anyhow!(
                            "the server sent nothing for {} s (not even a pong): taking the connection for dead",
                            heard_at.elapsed().as_secs()
                        ));
                    }
                    let frame = AgentFrame::Heartbeat { status: self.agent.heartbeat() };
                    let sent = match self.link.send(&frame).await {
                        Ok(()) => self.link.ping().await.map_err(Ended::Dropped),
                        Err(err) => Err(Ended::Dropped(err)),
                    };
                    self.agent.release_free_memory();
                    sent
                }
                () = retry => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.open_ws(node)).await {
                        Ok(Ok((link, interval))) => {
                            // What this link still holds goes first; anything unacknowledged
                            // is sent again over the new one.
                            let _ = self.link.flush().await;
                            return Ended::Upgraded(Box::new(link), interval);
                        }
                        Ok(Err(_)) | Err(_) => {
                            tracing::debug!("WebSocket still unavailable; staying on HTTP long-poll");
                            ws_retry_at = Some(tokio::time::Instant::now() + connector.ws_retry);
                            Ok(())
                        }
                    }
                }
                code = self.agent.exit_requested() => Err(Ended::Exit(code)),
                () = shutdown.cancelled() => Err(Ended::Shutdown),
            };
            let result = match result {
                Ok(()) => self.link.flush().await.map_err(Ended::Dropped),
                Err(ended) => Err(ended),
            };
            if let Err(ended) = result {
                if matches!(ended, Ended::Shutdown | Ended::Exit(_)) {
                    self.link.close().await;
                }
                return ended;
            }
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), Ended> {
        match frame {
            ServerFrame::Command(cmd) => {
                let command_id = cmd.command_id;
                let frame = match self.agent.accept(cmd) {
                    Ok(()) => AgentFrame::Ack { command_id },
                    Err(refusal) => AgentFrame::Response(refusal),
                };
                self.send(&frame).await.map_err(Ended::Dropped)?;
            }
            ServerFrame::Ack { command_id } => {
                self.readers.remove(&command_id);
                self.answers_sent.remove(&command_id);
                if let Some(code) = self.agent.acked(command_id) {
                    return Err(Ended::Exit(code));
                }
            }
            ServerFrame::Cancel { command_id } => {
                if self.agent.cancel(command_id) {
                    tracing::info!(%command_id, "cancelling on request");
                } else {
                    tracing::info!(%command_id, "cancel for a command that is not running");
                }
            }
            // This agent's id is bound to another key, or is new to a tenant at its
            // `max_agents` quota: nothing will work until an admin forgets an agent (or
            // raises the quota), so it is retried as slowly as a refused key.
            ServerFrame::Error(err)
                if err.code == outpost_protocol::codes::AGENT_ID_TAKEN
                    || err.code == outpost_protocol::codes::QUOTA_EXCEEDED =>
            {
                return Err(Ended::Unauthorized(format!(
                    "{}: {}",
                    err.code, err.message
                )));
            }
            ServerFrame::Error(err) => {
                tracing::warn!(code = %err.code, message = %err.message, "the server refused a frame");
            }
            ServerFrame::Connected(_) => {}
        }
        Ok(())
    }

    /// Sends what the server may still need, oldest command first: each command's output from
    /// its spool, then its answer once it has one. Stops after [`PUMP_BUDGET`] frames and asks
    /// to be called again, so a large output does not starve heartbeats or incoming commands.
    async fn pump(&mut self) -> anyhow::Result<()> {
        let mut budget = PUMP_BUDGET;
        for (id, answer) in self.agent.unfinished() {
            if !self.readers.contains_key(&id)
                && let Some(reader) = SpoolReader::open(&self.agent.spool_path(id))
            {
                self.readers.insert(id, reader);
            }
            while budget > 0 {
                let chunk = match self.readers.get_mut(&id) {
                    Some(reader) => reader.next_chunk()?,
                    None => None,
                };
                let Some(chunk) = chunk else { break };
                let (data, data_b64) = encode_output_data(&chunk.bytes);
                let frame = AgentFrame::Output(Output {
                    command_id: id,
                    stream: chunk.stream,
                    seq: chunk.seq,
                    data,
                    data_b64,
                });
                self.send(&frame).await?;
                budget -= 1;
            }
            if budget == 0 {
                self.agent.activity.notify_one();
                return Ok(());
            }
            if let Some(response) = answer
                && self.answers_sent.insert(id)
            {
                self.send(&AgentFrame::Response(response)).await?;
                budget -= 1;
            }
        }
        Ok(())
    }

    async fn send(&mut self, frame: &AgentFrame) -> anyhow::Result<()> {
        self.link.send(frame).await
    }
}

fn local_ip(socket: &Socket) -> Option<String> {
    let addr = match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().ok()?,
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr().ok()?,
        _ => return None,
    };
    Some(addr.ip().to_string())
}
