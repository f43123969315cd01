//! `GET /agent/v1/ws`: one task per agent connection, owning its socket.
//!
//! The task lives through two phases. Before `register` it only waits (10 s at most) for the
//! agent to say who it is; after it, the connection is in the hub and the task `select!`s over
//! incoming frames, outgoing frames from its queue, the heartbeat deadline, a close request
//! (key disabled, agent replaced) and server shutdown. When the socket ends, the task removes
//! its own entry from the hub, unless a newer connection already replaced it.
//!
//! Everything an agent sends is untrusted: frames are size-capped by the WebSocket layer,
//! decoded by the protocol crate, and a peer that keeps sending garbage is cut off. A response
//! can only finish a command addressed to the agent that sends it, in the agent's tenant.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response as HttpResponse};
use chrono::Utc;
use outpost_protocol::{
    AgentFrame, Connected, DecodeError, ErrorBody, PROTOCOL_VERSION, RegisterData, ServerFrame,
    codes, decode_output_data, limits,
};
use tokio::sync::mpsc;

use super::{CloseSignal, OUTBOUND_QUEUE, Session, Transport};
use crate::AppState;
use crate::auth;
use crate::metrics::Direction;
use crate::store::writer::{Write, Written};
use crate::store::{Stored, agent_key, string_list};

/// How long one frame may take to reach the agent's TCP buffer before the peer counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message read at all. Between the protocol's limit and this the peer gets a clean
/// 1009 close; beyond it the connection is simply dropped mid-frame.
const HARD_FRAME_CAP: usize = 2 * limits::MAX_FRAME_BYTES;
/// How long a closing connection waits for the peer's close reply. Dropping a socket with
/// unread data makes the kernel reset it, which can destroy the close frame in flight.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Bytes tungstenite reads at a time. Its default (128 KiB) preallocated per connection would
/// cost over a gigabyte at 10,000 idle agents; 4 KiB costs 40 MB.
const READ_BUFFER: usize = 4 * 1024;

/// Authenticates the agent key, then upgrades. A bad key never gets a WebSocket.
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> HttpResponse {
    let key = match auth::authenticate_agent(&state, auth::bearer(&headers)).await {
        Ok(key) => key,
        Err(err) => return err.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // The 1 MiB limit is enforced on each message after it is read, so the socket can
        // still be closed cleanly with 1009; this cap only stops a peer from making us buffer
        // more than twice that.
        .max_message_size(HARD_FRAME_CAP)
        .max_frame_size(HARD_FRAME_CAP)
        .on_upgrade(move |socket| async move {
            let mut conn = Connection {
                socket,
                state,
                key,
                bad: BadFrames::default(),
            };
            conn.serve().await;
        })
}

/// Why the connection loop ended.
enum End {
    /// Close the socket with this code and reason.
    Close(u16, String),
    /// The socket is already gone.
    Gone,
}

struct Connection {
    socket: WebSocket,
    state: AppState,
    key: agent_key::Model,
    bad: BadFrames,
}

impl Connection {
    async fn serve(&mut self) {
        let hello = ServerFrame::Connected(Connected {
            message: "Agent connection established".into(),
            agent_key_id: self.key.id.clone(),
            permissions: string_list(&self.key.permissions),
            heartbeat_interval_s: self.state.hub.heartbeat_interval().as_secs().max(1) as u32,
            protocol: PROTOCOL_VERSION,
            timestamp: Utc::now(),
        });
        if self.send(&hello).await.is_err() {
            return;
        }
        let register = match self.await_register().await {
            Ok(data) => data,
            Err(end) => return self.finish(end).await,
        };
        let agent_id = register.agent_id;
        let tenant_id = self.key.tenant_id.clone();

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let close = Arc::new(CloseSignal::default());
        let conn_id = self.state.hub.next_conn_id();
        if let Err(end) = self.on_register(&register).await {
            return self.finish(end).await;
        }
        // Into the hub first, then resend what is open: a command stored in between is then
        // either in the scan or pushed through the hub, never missed.
        self.state.hub.insert(
            &tenant_id,
            agent_id,
            Session {
                conn_id,
                key_id: self.key.id.clone(),
                tx,
                close: close.clone(),
                connected_at: Utc::now(),
                transport: Transport::Websocket,
            },
        );
        tracing::info!(%agent_id, hostname = %register.hostname, version = %register.version, "agent connected");

        let end = match self.resend_open(agent_id).await {
            Ok(()) => self.run(agent_id, rx, &close).await,
            Err(end) => end,
        };
        if self.state.hub.remove(&tenant_id, agent_id, conn_id)
            && let Err(err) = self
                .state
                .store
                .record_disconnect(&tenant_id, &agent_id.to_string())
                .await
        {
            tracing::warn!(error = %err, "could not record disconnect");
        }
        tracing::info!(%agent_id, "agent disconnected");
        self.finish(end).await;
    }

    /// Phase 1: nothing but `register` is accepted, within the deadline.
    async fn await_register(&mut self) -> Result<RegisterData, End> {
        let deadline = tokio::time::sleep(limits::REGISTER_DEADLINE);
        tokio::pin!(deadline);
        loop {
            let msg = tokio::select! {
                () = &mut deadline => {
                    return Err(End::Close(limits::CLOSE_POLICY, "no register frame within 10 s".into()));
                }
                () = self.state.shutdown.cancelled() => {
                    return Err(End::Close(limits::CLOSE_GOING_AWAY, "server shutting down".into()));
                }
                msg = self.socket.recv() => msg,
            };
            match self.decode(msg).await? {
                Some(AgentFrame::Register { data }) => {
                    if data.protocol != PROTOCOL_VERSION {
                        let message = format!(
                            "agent speaks protocol {}, this server speaks {PROTOCOL_VERSION}: install an agent release matching the server",
                            data.protocol
                        );
                        let _ = self
                            .send(&ServerFrame::Error(ErrorBody::new(
                                codes::PROTOCOL_MISMATCH,
                                message,
                            )))
                            .await;
                        return Err(End::Close(limits::CLOSE_POLICY, "protocol mismatch".into()));
                    }
                    return Ok(data);
                }
                Some(other) => {
                    let message = format!("`{}` before `register`", other.kind());
                    self.refuse(codes::NOT_REGISTERED, message).await?;
                }
                None => {}
            }
        }
    }

    /// Stores what the agent said about itself, with its key's tags added (tags given to a
    /// key apply to every agent connecting with it).
    async fn store_register(
        &mut self,
        data: &RegisterData,
    ) -> Result<(), crate::store::StoreError> {
        let mut data = data.clone();
        for tag in string_list(&self.key.tags) {
            if !data.tags.contains(&tag) {
                data.tags.push(tag);
            }
        }
        let store = &self.state.store;
        store
            .upsert_agent(&self.key.tenant_id, &self.key.id, &data)
            .await?;
        Ok(())
    }

    /// Stores the first `register` of a connection.
    async fn on_register(&mut self, data: &RegisterData) -> Result<(), End> {
        if let Err(err) = self.store_register(data).await {
            tracing::error!(error = %err, "could not store register");
            return Err(End::Close(1011, "internal error".into()));
        }
        let touched = self
            .state
            .store
            .touch_agent_key(&self.key.tenant_id, &self.key.id)
            .await;
        if let Err(err) = touched {
            tracing::warn!(error = %err, "could not record key use");
        }
        Ok(())
    }

    /// Sends every command the agent still owes an answer to (delivery guarantees 1 and 2).
    async fn resend_open(&mut self, agent_id: outpost_protocol::AgentId) -> Result<(), End> {
        let open = self
            .state
            .store
            .open_commands_for(&self.key.tenant_id, &agent_id.to_string())
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "could not load open commands");
                End::Close(1011, "internal error".into())
            })?;
        for command in open {
            match crate::dispatch::frame_for(&command, self.state.max_output_bytes) {
                Some(frame) => self.send(&frame).await?,
                None => tracing::error!(command_id = %command.id, "stored command has a bad id"),
            }
        }
        Ok(())
    }

    /// Phase 2: the registered connection.
    async fn run(
        &mut self,
        agent_id: outpost_protocol::AgentId,
        mut rx: mpsc::Receiver<ServerFrame>,
        close: &CloseSignal,
    ) -> End {
        let interval = self.state.hub.heartbeat_interval();
        let silence_limit = interval * limits::MISSED_HEARTBEATS;
        let mut last_seen = Instant::now();
        let mut ticker = tokio::time::interval(interval.min(Duration::from_secs(5)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = self.socket.recv() => {
                    last_seen = Instant::now();
                    match self.decode(msg).await {
                        Ok(Some(frame)) => {
                            if let Err(end) = self.handle(agent_id, frame).await {
                                return end;
                            }
                        }
                        Ok(None) => {}
                        Err(end) => return end,
                    }
                }
                frame = rx.recv() => match frame {
                    Some(frame) => {
                        if let Err(end) = self.send(&frame).await {
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
                () = close.closed() => {
                    let (code, reason) = close.reason();
                    return End::Close(code, reason);
                }
                () = self.state.shutdown.cancelled() => {
                    return End::Close(limits::CLOSE_GOING_AWAY, "server shutting down".into());
                }
                _ = ticker.tick() => {
                    if last_seen.elapsed() > silence_limit {
                        tracing::info!(%agent_id, "no heartbeat for {} intervals", limits::MISSED_HEARTBEATS);
                        return End::Close(limits::CLOSE_GOING_AWAY, "heartbeat missed".into());
                    }
                    if self.key.expires_at.is_some_and(|t| t <= Utc::now()) {
                        return End::Close(limits::CLOSE_NORMAL, "agent key expired".into());
                    }
                }
            }
        }
    }

    /// Acts on one frame from a registered agent. Writes go through the batching writer and
    /// are committed before anything is acknowledged.
    async fn handle(
        &mut self,
        agent_id: outpost_protocol::AgentId,
        frame: AgentFrame,
    ) -> Result<(), End> {
        let tenant_id = self.key.tenant_id.clone();
        let agent = agent_id.to_string();
        let mut answered = None;
        let write = match frame {
            AgentFrame::Register { data } => {
                if data.agent_id != agent_id {
                    return self
                        .refuse(
                            codes::BAD_FRAME,
                            "agent_id cannot change on a connection".into(),
                        )
                        .await;
                }
                return self.store_register(&data).await.map_err(internal);
            }
            AgentFrame::Heartbeat { status } => Write::Heartbeat {
                tenant_id,
                agent_id: agent,
                status,
            },
            AgentFrame::Ack { command_id } => Write::Delivered {
                tenant_id,
                agent_id: agent,
                command_id: command_id.to_string(),
            },
            AgentFrame::Output(output) => {
                let bytes =
                    match decode_output_data(output.data.as_deref(), output.data_b64.as_deref()) {
                        Ok(bytes) if bytes.len() <= limits::MAX_OUTPUT_CHUNK => bytes,
                        Ok(bytes) => {
                            let message = format!(
                                "output chunk of {} bytes; the limit is {}",
                                bytes.len(),
                                limits::MAX_OUTPUT_CHUNK
                            );
                            return self.refuse(codes::BAD_FRAME, message).await;
                        }
                        Err(why) => return self.refuse(codes::BAD_FRAME, why).await,
                    };
                Write::Output {
                    tenant_id,
                    agent_id: agent,
                    command_id: output.command_id.to_string(),
                    stream: output.stream,
                    seq: output.seq,
                    bytes,
                    cap: self.state.max_output_bytes,
                }
            }
            AgentFrame::Response(response) => {
                answered = Some(response.command_id);
                Write::Finish {
                    tenant_id,
                    agent_id: agent,
                    response,
                }
            }
        };
        let written = self.state.writer.write(write).await.map_err(internal)?;
        let hub = &self.state.hub;
        match written {
            Written::Heartbeat => {}
            Written::Delivered(changed) => {
                if let Some(run) = changed {
                    hub.run_changed(&run);
                }
            }
            Written::Output(Stored::New {
                job_id: Some(job_id),
                ..
            }) => {
                hub.job_changed(&self.key.tenant_id, &job_id);
            }
            Written::Output(Stored::Foreign) => {
                tracing::debug!(%agent_id, "output for a command that is not this agent's");
            }
            Written::Output(_) => {}
            Written::Finished(finished) => {
                if let Some(model) = &finished {
                    hub.finished(model);
                    if model.job_id.is_some() {
                        self.state.webhooks.wake();
                    }
                }
                // Stored now or before (or not this agent's to store): either way the agent
                // may forget it.
                if let Some(command_id) = answered {
                    return self.send(&ServerFrame::Ack { command_id }).await;
                }
            }
        }
        Ok(())
    }

    /// Reads one message: `Ok(Some)` a frame, `Ok(None)` nothing to act on (a control message
    /// or a refused frame), `Err` the end of the connection.
    async fn decode(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Result<Option<AgentFrame>, End> {
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Err(err)) => return Err(read_error(err)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(None),
            Some(Ok(Message::Binary(bytes))) if bytes.len() > limits::MAX_FRAME_BYTES => {
                return Err(too_big());
            }
            Some(Ok(Message::Binary(_))) => {
                self.refuse(
                    codes::BAD_FRAME,
                    "binary frames are not part of protocol v1; send JSON text".into(),
                )
                .await?;
                return Ok(None);
            }
            Some(Ok(Message::Text(text))) => text,
        };
        crate::metrics::frame(Direction::In, Transport::Websocket, text.len());
        match AgentFrame::decode(text.as_str()) {
            Ok(frame) => Ok(Some(frame)),
            Err(DecodeError::TooLarge(_)) => Err(too_big()),
            Err(err @ DecodeError::UnknownType(_)) => {
                self.refuse(codes::UNKNOWN_TYPE, err.to_string()).await?;
                Ok(None)
            }
            Err(err @ DecodeError::Malformed(_)) => {
                self.refuse(codes::BAD_FRAME, err.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// Answers a bad frame with an `error` frame; too many in a minute end the connection.
    async fn refuse(&mut self, code: &str, message: String) -> Result<(), End> {
        tracing::debug!(code, %message, "refused a frame");
        self.send(&ServerFrame::Error(ErrorBody::new(code, message)))
            .await?;
        if self.bad.record() > limits::MAX_BAD_FRAMES_PER_MINUTE {
            return Err(End::Close(
                limits::CLOSE_POLICY,
                "too many bad frames".into(),
            ));
        }
        Ok(())
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let text = frame.encode();
        crate::metrics::frame(Direction::Out, Transport::Websocket, text.len());
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text.into()))).await
        {
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

/// A failed store write ends the connection without acknowledging anything: the agent keeps
/// what it sent and sends it again after reconnecting.
fn internal(err: crate::store::StoreError) -> End {
    tracing::error!(error = %err, "could not store an agent frame");
    End::Close(1011, "internal error".into())
}

fn too_big() -> End {
    End::Close(
        limits::CLOSE_TOO_BIG,
        format!("frame larger than {} bytes", limits::MAX_FRAME_BYTES),
    )
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

/// Bad frames seen in the last minute.
#[derive(Default)]
struct BadFrames(VecDeque<Instant>);

impl BadFrames {
    /// Records one and returns how many fell in the last minute.
    fn record(&mut self) -> usize {
        let now = Instant::now();
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.0.pop_front();
        }
        if self.0.len() <= limits::MAX_BAD_FRAMES_PER_MINUTE {
            self.0.push_back(now);
        }
        self.0.len()
    }
}
