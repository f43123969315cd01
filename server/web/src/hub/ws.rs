//! `GET /agent/v1/ws`: one task per agent connection, owning its socket.
//!
//! The task lives through two phases. Before `register` it only waits (10 s at most) for the
//! agent to say who it is; after it, the connection is in the hub and the task `select!`s over
//! incoming frames, outgoing frames from its queue, its writes' commits and a close request (key
//! disabled or expired, agent replaced or silent for three heartbeat intervals, server
//! shutdown; the hub's sweep watches silence and expiry for every connection at once). When the
//! socket ends, the task removes its own entry from the hub, unless a newer connection already
//! replaced it.
//!
//! Everything an agent sends is untrusted: frames are size-capped by the WebSocket layer,
//! decoded by the protocol crate, and a peer that keeps sending garbage is cut off. What a
//! frame does is decided by [`Link`], shared with the HTTP long-poll transport.

use crate::http_error::HttpError;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response as HttpResponse};
use chrono::Utc;
use futures_util::SinkExt;
use outpost_protocol::{
    AgentFrame, AgentId, DecodeError, RegisterData, ServerFrame, codes, limits,
};
use tokio::sync::mpsc;

use super::Context;
use super::link::{End, Link, Pending, refused_register, too_big};
use super::{CloseSignal, OUTBOUND_QUEUE, Resent, Session, Transport};
use outpost_store::metrics::Direction;

/// How long one frame may take to reach the agent's TCP buffer before the peer counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message read at all. Between the protocol's limit and this the peer gets a clean
/// 1009 close; beyond it the connection is simply dropped mid-frame.
const HARD_FRAME_CAP: usize = 2 * limits::MAX_FRAME_BYTES;
/// How long a closing connection waits for the peer's close reply. Dropping a socket with
/// unread data makes the kernel reset it, which can destroy the close frame in flight.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Bytes tungstenite reads at a time, allocated per connection up front. Its default (128 KiB)
/// would cost over a gigabyte at 10,000 idle agents; 1 KiB costs 10 MB. Agents' frames are
/// mostly far smaller (an ack ~70 bytes, a heartbeat ~200, a ping's response ~150); a larger
/// one (`register`, output) simply takes several reads. 2 KiB cost measurably more per idle
/// connection, and relaying a large output was no faster with it (figures: docs/BENCHMARKS.md,
/// "Design notes behind the figures").
const READ_BUFFER: usize = 1024;
/// Bytes of frames fed to the socket before tungstenite writes them out without waiting for
/// the flush at the end of the burst.
const WRITE_BUFFER: usize = 64 * 1024;
/// Queued frames sent in one burst (one `write`), so that one busy connection cannot keep its
/// task from reading for long.
const MAX_BURST: usize = 32;
/// Frames read ahead of their commits. The connection hands each frame's write to the writer
/// and reads on, so an agent's ack and result usually share one batch; past this many
/// uncommitted writes it stops reading until the oldest is committed.
const MAX_IN_FLIGHT: usize = 32;

/// A message read and decoded: a frame to act on, nothing (see [`Connection::decode`]), or the
/// end of the connection.
type Decoded = Result<Option<AgentFrame>, End>;

/// Authenticates the agent key, then upgrades. A bad key never gets a WebSocket.
pub async fn handler(
    State(state): State<Context>,
    headers: HeaderMap,
    peer_cert: Option<axum::Extension<crate::listen::PeerCert>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> HttpResponse {
    let key = match state
        .authenticate(&headers, peer_cert.as_ref().map(|c| &c.0))
        .await
    {
        Ok(key) => key,
        Err(err) => return HttpError(err).into_response(),
    };
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return crate::http_error::envelope(
                rejection.status(),
                "bad_request",
                format!("upgrade: {}", rejection.body_text()),
            );
        }
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        // Frames are fed into the write buffer and flushed once per burst (see `flush`), so
        // that frames queued together leave in one `write`; the buffer grows only as far as
        // one burst needs.
        .write_buffer_size(WRITE_BUFFER)
        // The 1 MiB limit is enforced on each message after it is read, so the socket can
        // still be closed cleanly with 1009; this cap only stops a peer from making us buffer
        // more than twice that.
        .max_message_size(HARD_FRAME_CAP)
        .max_frame_size(HARD_FRAME_CAP)
        .on_upgrade(move |socket| async move {
            let (link, hello) = Link::new(state, key, Transport::Websocket);
            let mut conn = Connection {
                socket,
                link,
                out: Vec::new(),
            };
            conn.serve(hello).await;
        })
}

struct Connection {
    socket: WebSocket,
    link: Link,
    /// Frames to answer with, filled by the link and flushed after each incoming frame.
    out: Vec<ServerFrame>,
}

impl Connection {
    async fn serve(&mut self, hello: ServerFrame) {
        if Box::pin(self.send(&hello)).await.is_err() {
            return;
        }
        // The awaits here and in `run` are boxed. A future is as large as its largest await
        // point, and a connection's is kept for as long as its agent stays connected: inline,
        // the store's query futures (kilobytes), a frame's handling and a burst's flush would
        // be paid by every idle connection, a large part of what each one costs (figures:
        // docs/BENCHMARKS.md, "Design notes behind the figures"). In `run` this costs an
        // allocation per message and per burst, which did not show in a fan-out's CPU.
        let register = match Box::pin(self.await_register()).await {
            Ok(data) => data,
            Err(end) => return Box::pin(self.finish(end)).await,
        };
        let agent_id = register.agent_id;
        let tenant_id = self.link.tenant_id().to_owned();
        let state = self.link.state.clone();

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let close = Arc::new(CloseSignal::new(&state.shutdown));
        let conn_id = state.hub.next_conn_id();
        if let Err(end) = Box::pin(self.link.on_register(&register, &mut self.out)).await {
            // The `error` frame saying why goes out before the close.
            let _ = Box::pin(self.flush()).await;
            return Box::pin(self.finish(end)).await;
        }
        // Into the hub first, then resend what is open: a command stored in between is then
        // either in the scan or pushed through the hub, never missed; one in both is sent once
        // (see `Resent`).
        state.hub.insert(
            &tenant_id,
            agent_id,
            Session {
                conn_id,
                key_id: self.link.key.id.clone(),
                tx,
                close: close.clone(),
                connected_at: Utc::now(),
                key_expires_at: self.link.key.expires_at,
                transport: Transport::Websocket,
            },
        );
        tracing::info!(%agent_id, hostname = %register.hostname, version = %register.version, transport = "websocket", "agent connected");
        drop(register);

        let end = match Box::pin(self.resend_open(agent_id)).await {
            Ok(resent) => Box::pin(self.run(agent_id, rx, &close, resent)).await,
            Err(end) => end,
        };
        if state.hub.remove(&tenant_id, agent_id, conn_id)
            && let Err(err) = Box::pin(state.store.record_disconnect(
                &tenant_id,
                &agent_id.to_string(),
                state.hub.node_id(),
            ))
            .await
        {
            tracing::warn!(error = %err, "could not record disconnect");
        }
        tracing::info!(%agent_id, "agent disconnected");
        Box::pin(self.finish(end)).await;
    }

    /// Phase 1: nothing but `register` is accepted, within the deadline.
    async fn await_register(&mut self) -> Result<RegisterData, End> {
        let deadline = tokio::time::sleep(limits::REGISTER_DEADLINE);
        tokio::pin!(deadline);
        loop {
            let shutdown = self.link.state.shutdown.clone();
            let msg = tokio::select! {
                () = &mut deadline => {
                    return Err(End::Close(limits::CLOSE_POLICY, "no register frame within 10 s".into()));
                }
                () = shutdown.cancelled() => {
                    return Err(End::Close(limits::CLOSE_GOING_AWAY, "server shutting down".into()));
                }
                msg = self.socket.recv() => msg,
            };
            let decoded = self.decode(msg);
            self.flush().await?;
            match decoded? {
                Some(AgentFrame::Register { data }) => {
                    if let Err(err) = Link::check_register(&data) {
                        let end = refused_register(&err);
                        let _ = self.send(&ServerFrame::Error(err)).await;
                        return Err(end);
                    }
                    return Ok(data);
                }
                Some(other) => {
                    let message = format!("`{}` before `register`", other.kind());
                    let refused = self
                        .link
                        .refuse(codes::NOT_REGISTERED, message, &mut self.out);
                    self.flush().await?;
                    refused?;
                }
                None => {}
            }
        }
    }

    /// Sends every command the agent still owes an answer to; returns what it sent.
    async fn resend_open(&mut self, agent_id: AgentId) -> Result<Resent, End> {
        let frames = self.link.open_frames(agent_id).await?;
        for frame in &frames {
            self.send(frame).await?;
        }
        Ok(Resent::new(&frames))
    }

    /// Phase 2: the registered connection.
    async fn run(
        &mut self,
        agent_id: AgentId,
        mut rx: mpsc::Receiver<Box<ServerFrame>>,
        close: &CloseSignal,
        mut resent: Resent,
    ) -> End {
        // Frames whose writes are queued but not committed yet, oldest first (the writer
        // commits in queue order).
        let mut in_flight: VecDeque<Pending> = VecDeque::new();
        // Made once, not per turn of the loop: a new `cancelled()` future registers with the
        // token and deregisters when dropped. It also fires on shutdown (see `CloseSignal`).
        let closed = close.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                msg = self.socket.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                    // Silence and key expiry are watched by the hub's sweep, which closes the
                    // connection through `close`.
                    close.heard();
                    let (first, then) = self.read_on(msg);
                    if let Err(end) = Box::pin(self.take(agent_id, first, &mut in_flight)).await {
                        return end;
                    }
                    if let Some(then) = then
                        && let Err(end) = Box::pin(self.take(agent_id, *then, &mut in_flight)).await
                    {
                        return end;
                    }
                }
                written = oldest(&mut in_flight), if !in_flight.is_empty() => {
                    // Writes committed in the same batch are done too: answer all of them in
                    // one burst.
                    let mut written = written;
                    let completed = loop {
                        let about = in_flight
                            .pop_front()
                            .map_or(super::link::About::Other, |p| p.about);
                        let completed = self.link.complete(about, written, &mut self.out);
                        match in_flight.front_mut().and_then(Pending::written_now) {
                            Some(next) if completed.is_ok() => written = next,
                            _ => break completed,
                        }
                    };
                    if let Err(end) = Box::pin(self.flush()).await {
                        return end;
                    }
                    if let Err(end) = completed {
                        return end;
                    }
                }
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        if !resent.already_sent(&frame) {
                            self.out.push(*frame);
                        }
                        while self.out.len() < MAX_BURST {
                            match rx.try_recv() {
                                Ok(frame) if resent.already_sent(&frame) => {}
                                Ok(frame) => self.out.push(*frame),
                                Err(_) => break,
                            }
                        }
                        if let Err(end) = Box::pin(self.flush()).await {
                            return end;
                        }
                    }
                    // The hub dropped our sender: we were replaced or removed, and the close
                    // signal says why.
                    None => {
                        let (code, reason) = close.reason();
                        return End::Close(code, reason);
                    }
                },
                () = &mut closed => {
                    let (code, reason) = close.reason();
                    return End::Close(code, reason);
                }
            }
        }
    }

    /// Decodes `msg` and, when it is an `ack`, looks at the message after it if that one has
    /// arrived already (without waiting for it). An agent acknowledges a command as it starts
    /// it, and a quick command's `response` follows at once, usually in the same read: the
    /// response records the delivery too (see `store::batch`), so the ack needs no write of its
    /// own and is dropped. That is one row change instead of two for most of a fan-out's runs.
    /// Returns what to act on, in order (the second, rare, boxed: it is held while the first is
    /// taken, in every connection's future).
    fn read_on(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
    ) -> (Decoded, Option<Box<Decoded>>) {
        let first = self.decode(msg);
        if !matches!(first, Ok(Some(AgentFrame::Ack { .. }))) {
            return (first, None);
        }
        let Some(next) = futures_util::FutureExt::now_or_never(self.socket.recv()) else {
            return (first, None);
        };
        let next = self.decode(next);
        if let (Ok(Some(ack)), Ok(Some(answer))) = (&first, &next)
            && super::answers_ack(ack, answer)
        {
            outpost_store::metrics::ack_folded();
            return (next, None);
        }
        (first, Some(Box::new(next)))
    }

    /// Acts on one decoded message: hands its write to the writer (not waiting for the
    /// commit), sends what answers it, and queues the write in `in_flight`.
    async fn take(
        &mut self,
        agent_id: AgentId,
        decoded: Decoded,
        in_flight: &mut VecDeque<Pending>,
    ) -> Result<(), End> {
        let submitted = match decoded {
            Ok(Some(frame)) => self.link.submit(agent_id, frame, &mut self.out).await,
            Ok(None) => Ok(None),
            Err(end) => Err(end),
        };
        // Answers (and the error frame explaining a close) go out first.
        self.flush().await?;
        if let Some(pending) = submitted? {
            in_flight.push_back(pending);
        }
        Ok(())
    }

    /// Reads one message: `Ok(Some)` a frame, `Ok(None)` nothing to act on (a control message
    /// or a refused frame, whose `error` answer is queued), `Err` the end of the connection.
    fn decode(&mut self, msg: Option<Result<Message, axum::Error>>) -> Decoded {
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Err(err)) => return Err(read_error(err)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(None),
            Some(Ok(Message::Binary(bytes))) if bytes.len() > limits::MAX_FRAME_BYTES => {
                return Err(too_big());
            }
            Some(Ok(Message::Binary(_))) => {
                self.link.refuse(
                    codes::BAD_FRAME,
                    "binary frames are not part of protocol v1; send JSON text".into(),
                    &mut self.out,
                )?;
                return Ok(None);
            }
            Some(Ok(Message::Text(text))) => text,
        };
        outpost_store::metrics::frame(Direction::In, Transport::Websocket, text.len());
        match AgentFrame::decode(text.as_str()) {
            Ok(frame) => Ok(Some(frame)),
            Err(DecodeError::TooLarge(_)) => Err(too_big()),
            Err(err @ DecodeError::UnknownType(_)) => {
                self.link
                    .refuse(codes::UNKNOWN_TYPE, err.to_string(), &mut self.out)?;
                Ok(None)
            }
            Err(err @ DecodeError::Malformed(_)) => {
                self.link
                    .refuse(codes::BAD_FRAME, err.to_string(), &mut self.out)?;
                Ok(None)
            }
        }
    }

    /// Sends the frames queued in `out`, in one `write` when they fit the write buffer.
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.out);
        for frame in out.drain(..) {
            self.feed(&frame).await?;
        }
        // Keep the allocation for the next burst.
        self.out = out;
        self.write_out().await
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.feed(frame).await?;
        self.write_out().await
    }

    /// Adds a frame to the write buffer (written out when the buffer fills or on
    /// [`write_out`](Self::write_out)).
    async fn feed(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let text = frame.encode();
        outpost_store::metrics::frame(Direction::Out, Transport::Websocket, text.len());
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.feed(Message::Text(text.into()))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    /// Writes out whatever the write buffer holds.
    async fn write_out(&mut self) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(End::Gone),
        }
    }

    async fn finish(&mut self, end: End) {
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.socket.send(Message::Close(Some(frame))),
            )
            .await;
            let drain = async { while let Some(Ok(_)) = self.socket.recv().await {} };
            let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
        }
    }
}

/// Waits for the oldest in-flight write's commit (it stays in the queue; the caller pops it).
async fn oldest(
    in_flight: &mut VecDeque<Pending>,
) -> outpost_store::Result<outpost_store::writer::Written> {
    match in_flight.front_mut() {
        Some(pending) => pending.written().await,
        None => std::future::pending().await,
    }
}

/// A read error ends the connection; an oversized frame is told as such.
fn read_error(err: axum::Error) -> End {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => too_big(),
        _ => End::Gone,
    }
}
