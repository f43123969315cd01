//! One connection to the server at a time: connect, register, heartbeat, exchange frames, and
//! reconnect with backoff when it ends.
//!
//! Backoff is exponential (1 s base, 60 s cap) with full jitter, so a fleet that lost its
//! server does not come back in lockstep; it resets once a connection has stayed up for 60 s.
//! A key the server refuses (401) is retried on a slower schedule (30 s base, 5 min cap): it
//! will not start working by itself, but it may be re-enabled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{AgentFrame, CommandId, Output, ServerFrame, encode_output_data, limits};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::Agent;
use crate::spool::SpoolReader;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection that stayed up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Time to connect (TCP, TLS and upgrade) and to receive `connected`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time one frame may take to be written.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection attempt or session ended.
enum Ended {
    /// Connected, then the connection dropped (or never completed).
    Dropped(anyhow::Error),
    /// The server refused the key.
    Unauthorized(String),
    /// Shut down on request.
    Shutdown,
    /// A control command asked for this exit code.
    Exit(i32),
}

/// Owns the reconnect loop.
pub struct Connector {
    agent: Arc<Agent>,
    url: Url,
    tls: Arc<rustls::ClientConfig>,
}

impl Connector {
    /// Prepares the WebSocket URL and TLS configuration.
    pub fn new(agent: Arc<Agent>) -> anyhow::Result<Self> {
        let url = ws_url(&agent.config.server_url)?;
        let tls = crate::tls::client_config(agent.config.ca_cert.as_deref())?;
        Ok(Self { agent, url, tls })
    }

    /// Connects and reconnects until shut down or asked to exit; returns the exit code.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<i32> {
        let mut network = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut refused = Backoff::new(Duration::from_secs(30), Duration::from_secs(300));
        loop {
            let started = Instant::now();
            let ended = tokio::select! {
                ended = self.connect_and_serve(&shutdown) => ended,
                () = shutdown.cancelled() => Ended::Shutdown,
            };
            let delay = match ended {
                Ended::Shutdown => return Ok(0),
                Ended::Exit(code) => return Ok(code),
                Ended::Unauthorized(why) => {
                    network.reset();
                    let delay = refused.next();
                    tracing::error!(reason = %why, retry_in = ?delay, "the server refused the agent key");
                    delay
                }
                Ended::Dropped(err) => {
                    refused.reset();
                    if started.elapsed() >= HEALTHY_AFTER {
                        network.reset();
                    }
                    let delay = network.next();
                    tracing::warn!(error = format!("{err:#}"), retry_in = ?delay, "disconnected from the server");
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Ok(0),
            }
        }
    }

    async fn connect_and_serve(&mut self, shutdown: &CancellationToken) -> Ended {
        let (socket, ip) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connect()).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(ended)) => return ended,
            Err(_) => return Ended::Dropped(anyhow::anyhow!("connecting timed out")),
        };
        let mut session = Session {
            agent: self.agent.clone(),
            socket,
            readers: HashMap::new(),
            answers_sent: HashSet::new(),
        };
        session.serve(ip, shutdown).await
    }

    async fn connect(&self) -> Result<(Socket, String), Ended> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Ended::Dropped(e.into()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.agent.config.api_key))
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
                return Err(Ended::Unauthorized(body));
            }
            Err(err) => {
                return Err(Ended::Dropped(
                    anyhow::Error::new(err).context(format!("connecting to {}", self.url)),
                ));
            }
        };
        let ip = local_ip(&socket).unwrap_or_default();
        Ok((socket, ip))
    }
}

/// One connection. What it has sent lives only as long as it does: the next connection starts
/// again from the journal and the spools, and the server drops what it already has.
struct Session {
    agent: Arc<Agent>,
    socket: Socket,
    /// Output spools being sent, by command.
    readers: HashMap<CommandId, SpoolReader>,
    /// Answers sent on this connection (and not yet acknowledged).
    answers_sent: HashSet<CommandId>,
}

/// Frames one [`Session::pump`] sends before letting incoming frames and heartbeats through.
const PUMP_BUDGET: usize = 32;

impl Session {
    async fn serve(&mut self, ip: String, shutdown: &CancellationToken) -> Ended {
        let interval = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.await_connected()).await {
            Ok(Ok(interval)) => interval,
            Ok(Err(err)) => return Ended::Dropped(err),
            Err(_) => {
                return Ended::Dropped(anyhow::anyhow!("no `connected` frame from the server"));
            }
        };
        self.agent.set_ip(ip);
        let register = AgentFrame::Register {
            data: self.agent.register_data(),
        };
        if let Err(err) = self.send(&register).await {
            return Ended::Dropped(err);
        }
        // Output and answers produced while cut off, or before a crash (delivery guarantee 4).
        if let Err(err) = self.pump().await {
            return Ended::Dropped(err);
        }
        tracing::info!(heartbeat_s = interval.as_secs(), "connected and registered");

        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                msg = self.socket.next() => match msg {
                    Some(Ok(msg)) => self.on_message(msg).await,
                    Some(Err(err)) => Err(Ended::Dropped(err.into())),
                    None => Err(Ended::Dropped(anyhow::anyhow!("the server closed the connection"))),
                },
                () = self.agent.activity.notified() => self.pump().await.map_err(Ended::Dropped),
                () = self.agent.manifest_changed.notified() => {
                    let register = AgentFrame::Register { data: self.agent.register_data() };
                    self.send(&register).await.map_err(Ended::Dropped)
                }
                _ = heartbeat.tick() => {
                    let frame = AgentFrame::Heartbeat { status: self.agent.heartbeat() };
                    self.send(&frame).await.map_err(Ended::Dropped)
                }
                code = self.agent.exit_requested() => Err(Ended::Exit(code)),
                () = shutdown.cancelled() => Err(Ended::Shutdown),
            };
            if let Err(ended) = result {
                if matches!(ended, Ended::Shutdown | Ended::Exit(_)) {
                    let close = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "agent stopping".into(),
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        self.socket.close(Some(close)),
                    )
                    .await;
                }
                return ended;
            }
        }
    }

    /// Waits for `connected` and returns the heartbeat interval it announces.
    async fn await_connected(&mut self) -> anyhow::Result<Duration> {
        while let Some(msg) = self.socket.next().await {
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
                    Ok(other) => tracing::debug!(?other, "frame before `connected`; ignored"),
                    Err(err) => tracing::warn!(error = %err, "unreadable frame before `connected`"),
                }
            }
        }
        anyhow::bail!("the server closed the connection before `connected`")
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), Ended> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let why = frame
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_default();
                return Err(Ended::Dropped(anyhow::anyhow!(
                    "the server closed the connection: {why}"
                )));
            }
            _ => return Ok(()),
        };
        let frame = match ServerFrame::decode(text.as_str()) {
            Ok(frame) => frame,
            Err(err) => {
                // Newer servers may send frames this agent does not know; skip them.
                tracing::warn!(error = %err, "ignoring a frame from the server");
                return Ok(());
            }
        };
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
        let text = frame.encode();
        tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::text(text)))
            .await
            .context("sending to the server timed out")?
            .context("sending to the server")
    }
}

/// Exponential backoff with full jitter: backon supplies the exponential sequence, each delay
/// is then drawn uniformly between zero and that value.
struct Backoff {
    builder: ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(base)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self.delays.next().unwrap_or(Duration::from_secs(60));
        ceiling.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// `OUTPOST_SERVER_URL` as the WebSocket endpoint: http(s) becomes ws(s), path `/agent/v1/ws`.
pub fn ws_url(base: &str) -> anyhow::Result<Url> {
    let mut url =
        Url::parse(base).with_context(|| format!("OUTPOST_SERVER_URL {base:?} is not a URL"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => anyhow::bail!(
            "OUTPOST_SERVER_URL must be ws://, wss://, http:// or https://, not {other}://"
        ),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot use {scheme}:// with {base}"))?;
    let path = format!("{}/agent/v1/ws", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

fn local_ip(socket: &Socket) -> Option<String> {
    let addr = match socket.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().ok()?,
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr().ok()?,
        _ => return None,
    };
    Some(addr.ip().to_string())
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

    #[test]
    fn backoff_is_jittered_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<_> = (0..12).map(|_| b.next()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[0] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
