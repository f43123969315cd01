//! A connection's transport: a WebSocket or the HTTP long-poll fallback, carrying the same
//! frames, so that [`super::Session`] does not depend on which one it has.

use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::{AgentFrame, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket to the server.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time one frame may take to be written.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's transport.
pub enum Link {
    /// A WebSocket.
    Ws(Box<Socket>),
    /// The HTTP long-poll fallback.
    Http(Box<crate::http::HttpLink>),
}

impl Link {
    /// The transport's name, for logs.
    pub fn transport(&self) -> &'static str {
        match self {
            Self::Ws(_) => "websocket",
            Self::Http(_) => "http",
        }
    }

    /// Sends a frame (over HTTP: queues it for the next batch).
    pub async fn send(&mut self, frame: &AgentFrame) -> anyhow::Result<()> {
        match self {
            Self::Ws(socket) => {
                let text = frame.encode();
                tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::text(text)))
                    .await
                    .context("sending to the server timed out")?
                    .context("sending to the server")
            }
            Self::Http(link) => link.send(frame).await,
        }
    }

    /// Whether this is a WebSocket (which answers pings; long polls have their own deadline).
    pub fn is_ws(&self) -> bool {
        matches!(self, Self::Ws(_))
    }

    /// Over a WebSocket, a ping: the server's pong shows it is still there. Nothing over HTTP.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Ws(socket) => {
                tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default())))
                    .await
                    .context("sending to the server timed out")?
                    .context("sending a ping to the server")
            }
            Self::Http(_) => Ok(()),
        }
    }

    /// Sends whatever is queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Ws(_) => Ok(()),
            Self::Http(link) => link.flush().await,
        }
    }

    /// The next frame from the server; `Ok(None)` for something to ignore. Cancel-safe.
    pub async fn next(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        let text = match self {
            Self::Http(link) => {
                return match link.next().await {
                    crate::http::Incoming::Frame(frame) => Ok(Some(frame)),
                    crate::http::Incoming::Closed(err) => Err(err),
                };
            }
            Self::Ws(socket) => match socket.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    let why = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    anyhow::bail!("the server closed the connection: {why}");
                }
                Some(Ok(_)) => return Ok(None),
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("the server closed the connection"),
            },
        };
        match ServerFrame::decode(text.as_str()) {
            Ok(frame) => Ok(Some(frame)),
            Err(err) => {
                // Newer servers may send frames this agent does not know; skip them.
                tracing::warn!(error = %err, "ignoring a frame from the server");
                Ok(None)
            }
        }
    }

    /// Ends the connection politely.
    pub async fn close(&mut self) {
        match self {
            Self::Ws(socket) => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "agent stopping".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    WebSocketStream::close(socket, Some(close)),
                )
                .await;
            }
            Self::Http(link) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), link.flush()).await;
            }
        }
    }
}
