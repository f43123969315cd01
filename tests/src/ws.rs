//! A raw protocol peer: speaks to the server's WebSocket endpoint directly, to send what a
//! well-behaved agent never would (malformed frames, silence, stolen ids) and to play an
//! agent that crashes at a chosen moment.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_protocol::ServerFrame;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the peer saw next.
#[derive(Debug)]
pub enum Seen {
    /// A frame.
    Frame(ServerFrame),
    /// The server closed the socket, with code and reason.
    Closed(Option<(u16, String)>),
}

/// A raw WebSocket peer.
pub struct Peer {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Opens a WebSocket to `server_url` (http://…) with `key`; the HTTP error on refusal.
pub async fn connect(server_url: &str, key: &str) -> Result<Peer, tungstenite::Error> {
    let url = format!("{}/agent/v1/ws", server_url.replacen("http", "ws", 1));
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Peer { socket })
}

/// The HTTP status of a refused upgrade.
pub async fn refused_status(server_url: &str, key: &str) -> u16 {
    match connect(server_url, key).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

/// A `register` frame for `agent_id`.
pub fn register(agent_id: &str) -> Value {
    json!({"type": "register", "data": {
        "agent_id": agent_id, "hostname": "raw-peer", "ip": "127.0.0.1", "version": "0.0.0-test",
        "os": "test", "arch": "test", "protocol": 1, "capabilities": ["ping","info","echo"],
        "tags": ["raw"], "scripts": []
    }})
}

impl Peer {
    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Sends several JSON values as text frames in one write, as an agent does when it has
    /// more than one frame ready.
    pub async fn send_together(&mut self, values: &[Value]) {
        for value in values {
            self.socket
                .feed(Message::text(value.to_string()))
                .await
                .expect("send");
        }
        self.socket.flush().await.expect("flush");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::binary(bytes))
            .await
            .expect("send");
    }

    /// Next frame or close, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Seen {
        loop {
            let msg = tokio::time::timeout(timeout, self.socket.next())
                .await
                .expect("nothing from the server in time");
            match msg {
                Some(Ok(Message::Text(text))) => {
                    return Seen::Frame(ServerFrame::decode(text.as_str()).expect("server frame"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Seen::Closed(
                        frame.map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string())),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    /// Next frame; panics on close.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.next(Duration::from_secs(30)).await {
            Seen::Frame(frame) => frame,
            Seen::Closed(why) => panic!("closed: {why:?}"),
        }
    }

    /// Waits for the close, skipping frames; returns code and reason.
    pub async fn closed(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Seen::Closed(why) => return why,
                Seen::Frame(_) => continue,
            }
        }
    }

    /// Reads `connected`, sends `register`, returns the heartbeat interval.
    pub async fn handshake(&mut self, agent_id: &str) -> u32 {
        self.handshake_with_scripts(agent_id, &[]).await
    }

    /// [`Peer::handshake`], announcing these script names in `register` (the server answers a
    /// run of a script the agent did not announce itself, without sending it).
    pub async fn handshake_with_scripts(&mut self, agent_id: &str, scripts: &[&str]) -> u32 {
        let interval = match self.frame().await {
            ServerFrame::Connected(c) => c.heartbeat_interval_s,
            other => panic!("expected connected, got {other:?}"),
        };
        let mut frame = register(agent_id);
        frame["data"]["scripts"] = scripts.iter().map(|name| json!({"name": name})).collect();
        self.send_json(&frame).await;
        interval
    }

    /// Drops the connection without a close frame, as a crashed process would.
    pub fn crash(self) {
        drop(self.socket);
    }
}
