//! The HTTP long-poll fallback: `POST /agent/v1/frames` and `POST /agent/v1/poll` (CONTRACT.md §2).
//!
//! An agent behind a proxy that refuses WebSocket upgrades gets the same connection model over
//! plain requests. A `register` sent to `/frames` opens an [`HttpSession`]: it goes into the hub
//! exactly like a WebSocket connection (same `Session`, same outbound queue, same close signal),
//! so dispatch, key revocation and replacement do not know which transport an agent uses. A
//! session task moves frames from that queue into the session's outbox, where a waiting poll
//! picks them up at once: a command's latency is one request, not a polling interval.
//!
//! The outbox keeps every frame until a later poll's `cursor` shows the agent received it, so an
//! answer lost between server and agent is sent again rather than lost. It is bounded like the
//! WebSocket queue; an agent that stops collecting is cut off and gets its commands again from
//! the store when it registers anew.
//!
//! Batches from the agent are handled in order, one batch per session at a time, by the same
//! [`Link`] the WebSocket task uses.

use crate::http_error::HttpError;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{DateTime, Utc};
use outpost_protocol::poll::{
    FramesRequest, FramesResponse, MAX_BATCH_BYTES, MAX_BATCH_FRAMES, MAX_POLL_WAIT_S, PollRequest,
    PollResponse,
};
use outpost_protocol::{AgentFrame, AgentId, DecodeError, ServerFrame, codes, limits};
use tokio::sync::{Notify, mpsc};

use super::Context;
use super::link::{End, Link};
use super::{CloseSignal, OUTBOUND_QUEUE, Resent, Session, Transport};
use outpost_core::access::AgentIdentity;
use outpost_store::domain::DomainError;
use outpost_store::metrics::Direction;

/// The two long-poll routes, with a body limit fitting a batch rather than one frame.
pub fn router() -> Router<Context> {
    Router::new()
        .route("/agent/v1/poll", post(poll))
        .route("/agent/v1/frames", post(frames))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

/// One agent's HTTP connection.
pub struct HttpSession {
    /// Names the session in the agent's requests.
    pub id: String,
    conn_id: u64,
    tenant_id: String,
    agent_id: AgentId,
    key_id: String,
    key_expires_at: Option<DateTime<Utc>>,
    /// The agent the client certificate that opened the session names, if one did.
    bound: Option<AgentId>,
    /// Serialises batches: frames are handled in the order the agent sent them.
    link: tokio::sync::Mutex<Link>,
    outbox: Mutex<Outbox>,
    /// Woken when the outbox gains a frame or the session closes.
    notify: Notify,
    /// Last request of any kind.
    seen: Mutex<Instant>,
    /// Polls waiting now: an agent parked in a long poll is present, however long it waits.
    polling: AtomicUsize,
    close: Arc<CloseSignal>,
}

impl std::fmt::Debug for HttpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSession")
            .field("agent_id", &self.agent_id)
            .field("conn_id", &self.conn_id)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Outbox {
    last_seq: u64,
    frames: VecDeque<(u64, ServerFrame)>,
    /// Why the session ended, once it has.
    closed: Option<String>,
}

/// What a poll finds.
enum Found {
    Frames(Vec<ServerFrame>, u64),
    Nothing,
    Closed(String),
}

impl HttpSession {
    fn touch(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Instant::now();
        }
    }

    fn silent_for(&self) -> Duration {
        if self.polling.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.seen
            .lock()
            .map(|seen| seen.elapsed())
            .unwrap_or_default()
    }

    /// Adds a frame for the agent; `false` when the outbox is full.
    fn enqueue(&self, frame: ServerFrame) -> bool {
        let Ok(mut outbox) = self.outbox.lock() else {
            return false;
        };
        if outbox.frames.len() >= OUTBOUND_QUEUE {
            return false;
        }
        outbox.last_seq += 1;
        let seq = outbox.last_seq;
        outbox.frames.push_back((seq, frame));
        drop(outbox);
        self.notify.notify_waiters();
        true
    }

    /// Forgets frames the agent has received, and returns those after its cursor.
    fn after(&self, cursor: u64) -> Found {
        let Ok(mut outbox) = self.outbox.lock() else {
            return Found::Closed("internal error".into());
        };
        if let Some(reason) = &outbox.closed {
            return Found::Closed(reason.clone());
        }
        while outbox.frames.front().is_some_and(|(seq, _)| *seq <= cursor) {
            outbox.frames.pop_front();
        }
        match outbox.frames.back() {
            Some((last, _)) => {
                let last = *last;
                Found::Frames(outbox.frames.iter().map(|(_, f)| f.clone()).collect(), last)
            }
            None => Found::Nothing,
        }
    }

    fn shut(&self, reason: &str) {
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.closed.get_or_insert_with(|| reason.to_owned());
            outbox.frames.clear();
        }
        self.notify.notify_waiters();
    }
}

/// Counts a poll as waiting while it lives.
struct Polling<'a>(&'a HttpSession);

impl<'a> Polling<'a> {
    fn start(session: &'a HttpSession) -> Self {
        session.touch();
        session.polling.fetch_add(1, Ordering::AcqRel);
        Self(session)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.polling.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body read whole, within the batch limit, with our error shape on rejection.
pub struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(body_rejection)
    }
}

/// `POST /agent/v1/poll`: the frames waiting for the agent, as soon as there are any.
pub async fn poll(
    State(state): State<Context>,
    headers: HeaderMap,
    peer_cert: Option<axum::Extension<crate::listen::PeerCert>>,
    Body(body): Body,
) -> Result<Json<PollResponse>, HttpError> {
    let key = state
        .authenticate(&headers, peer_cert.as_ref().map(|c| &c.0))
        .await?;
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    let req: PollRequest = parse(&body)?;
    let session = find(&state, &key, req.agent_id, &req.session)?;
    let wait = Duration::from_secs(u64::from(req.wait_s.min(MAX_POLL_WAIT_S)));
    let deadline = tokio::time::Instant::now() + wait;
    let _polling = Polling::start(&session);
    loop {
        let notified = session.notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so a frame queued right after the look still wakes us.
        notified.as_mut().enable();
        match session.after(req.cursor) {
            Found::Frames(frames, cursor) => {
                for frame in &frames {
                    // Long-poll is the fallback: encoding twice for the byte count is cheap
                    // next to its HTTP round trip.
                    outpost_store::metrics::frame(
                        Direction::Out,
                        Transport::Http,
                        frame.encode().len(),
                    );
                }
                return Ok(Json(PollResponse { frames, cursor }));
            }
            Found::Closed(reason) => return Err(HttpError(not_registered(&reason))),
            Found::Nothing => {}
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => break,
            () = state.shutdown.cancelled() => {
                return Err(HttpError(DomainError::Unavailable("server shutting down".into())));
            }
        }
    }
    Ok(Json(PollResponse {
        frames: Vec::new(),
        cursor: req.cursor,
    }))
}

/// `POST /agent/v1/frames`: agent -> server frames, in order; a leading `register` opens a
/// session.
pub async fn frames(
    State(state): State<Context>,
    headers: HeaderMap,
    peer_cert: Option<axum::Extension<crate::listen::PeerCert>>,
    Body(body): Body,
) -> Result<Json<FramesResponse>, HttpError> {
    let key = state
        .authenticate(&headers, peer_cert.as_ref().map(|c| &c.0))
        .await?;
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    let req: FramesRequest = parse(&body)?;
    if req.frames.len() > MAX_BATCH_FRAMES {
        return Err(HttpError(DomainError::BadRequest(format!(
            "frames: {} frames in one batch; the limit is {MAX_BATCH_FRAMES}",
            req.frames.len()
        ))));
    }
    let mut decoded = Vec::with_capacity(req.frames.len());
    for (i, raw) in req.frames.iter().enumerate() {
        outpost_store::metrics::frame(Direction::In, Transport::Http, raw.get().len());
        match AgentFrame::decode(raw.get()) {
            Err(DecodeError::TooLarge(_)) => {
                return Err(HttpError(DomainError::TooLarge(format!(
                    "frames[{i}]: larger than {} bytes",
                    limits::MAX_FRAME_BYTES
                ))));
            }
            other => decoded.push(other),
        }
    }
    let mut decoded = decoded.into_iter().peekable();
    let mut out = Vec::new();

    let current = req
        .session
        .as_deref()
        .zip(req.agent_id)
        .and_then(|(id, agent_id)| find(&state, &key, agent_id, id).ok());
    let session = match current {
        Some(session) => session,
        None => match decoded.next_if(|f| matches!(f, Ok(AgentFrame::Register { .. }))) {
            Some(Ok(AgentFrame::Register { data })) => {
                if let Err(err) = Link::check_register(&data) {
                    return Err(if err.code == codes::PROTOCOL_MISMATCH {
                        HttpError(DomainError::Conflict {
                            code: codes::PROTOCOL_MISMATCH,
                            message: err.message,
                        })
                    } else {
                        HttpError(DomainError::Invalid {
                            code: codes::BAD_FRAME,
                            message: format!("register refused: {}", err.message),
                        })
                    });
                }
                let (session, connected) = open(&state, key, &data).await?;
                out.push(connected);
                session
            }
            _ => {
                return Err(HttpError(not_registered(
                    "no open HTTP session: start the batch with `register`",
                )));
            }
        },
    };

    let mut link = session.link.lock().await;
    session.touch();
    while let Some(frame) = decoded.next() {
        // An ack followed in the same batch by its command's response (as on a WebSocket,
        // see `ws::read_on`).
        if let Ok(ack) = &frame
            && matches!(decoded.peek(), Some(Ok(next)) if super::answers_ack(ack, next))
        {
            outpost_store::metrics::ack_folded();
            continue;
        }
        let handled = match frame {
            Ok(frame) => link.handle(session.agent_id, frame, &mut out).await,
            Err(err @ DecodeError::UnknownType(_)) => {
                link.refuse(codes::UNKNOWN_TYPE, err.to_string(), &mut out)
            }
            Err(err) => link.refuse(codes::BAD_FRAME, err.to_string(), &mut out),
        };
        match handled {
            Ok(()) => {}
            // Nothing of this batch after the failure is acknowledged; the agent sends it
            // again and every frame is idempotent.
            Err(End::Close(1011, _)) => {
                return Err(HttpError(DomainError::Unavailable(
                    "could not store the frames; send them again".into(),
                )));
            }
            Err(End::Close(code, reason)) => {
                session.close.close(code, &reason);
                // The `error` frame that explains the close goes in the answer's message (a
                // WebSocket would have sent it before its close frame).
                let why = out.iter().rev().find_map(|frame| match frame {
                    ServerFrame::Error(err) => Some(err.message.as_str()),
                    _ => None,
                });
                return Err(HttpError(DomainError::BadRequest(match why {
                    Some(why) => format!("session closed: {reason}: {why}"),
                    None => format!("session closed: {reason}"),
                })));
            }
            Err(End::Gone) => return Err(HttpError(not_registered("session closed"))),
        }
    }
    Ok(Json(FramesResponse {
        session: session.id.clone(),
        frames: out,
    }))
}

/// Opens a session for a registering agent and puts it in the hub, replacing any earlier
/// connection of the same agent.
async fn open(
    state: &Context,
    key: AgentIdentity,
    data: &outpost_protocol::RegisterData,
) -> Result<(Arc<HttpSession>, ServerFrame), HttpError> {
    let (link, connected) = Link::new(state.clone(), key, Transport::Http);
    let mut refused = Vec::new();
    if link.on_register(data, &mut refused).await.is_err() {
        return Err(match refused.pop() {
            Some(ServerFrame::Error(err)) if err.code == codes::AGENT_ID_TAKEN => {
                HttpError(DomainError::Conflict {
                    code: codes::AGENT_ID_TAKEN,
                    message: err.message,
                })
            }
            Some(ServerFrame::Error(err))
                if err.code == codes::CERTIFICATE_MISMATCH
                    || err.code == codes::CERTIFICATE_REQUIRED =>
            {
                let code = if err.code == codes::CERTIFICATE_MISMATCH {
                    codes::CERTIFICATE_MISMATCH
                } else {
                    codes::CERTIFICATE_REQUIRED
                };
                HttpError(DomainError::NotAllowed {
                    code,
                    message: err.message,
                })
            }
            Some(ServerFrame::Error(err)) if err.code == codes::QUOTA_EXCEEDED => {
                HttpError(DomainError::NotAllowed {
                    code: codes::QUOTA_EXCEEDED,
                    message: err.message,
                })
            }
            _ => HttpError(DomainError::Unavailable(
                "could not store the registration".into(),
            )),
        });
    }
    let agent_id = data.agent_id;
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let close = Arc::new(CloseSignal::new(&state.shutdown));
    let conn_id = state.hub.next_conn_id();
    let session = Arc::new(HttpSession {
        id: uuid::Uuid::new_v4().simple().to_string(),
        conn_id,
        tenant_id: link.key.tenant_id.clone(),
        agent_id,
        key_id: link.key.id.clone(),
        key_expires_at: link.key.expires_at,
        bound: link.key.bound,
        link: tokio::sync::Mutex::new(link),
        outbox: Mutex::default(),
        notify: Notify::new(),
        seen: Mutex::new(Instant::now()),
        polling: AtomicUsize::new(0),
        close: close.clone(),
    });
    // As for a WebSocket: into the hub first, then the open commands, so a command stored in
    // between is in one or the other; one in both is sent once (see `Resent`).
    state
        .hub
        .insert_http(&session.tenant_id, agent_id, session.clone());
    state.hub.insert(
        &session.tenant_id,
        agent_id,
        Session {
            conn_id,
            key_id: session.key_id.clone(),
            tx,
            close,
            connected_at: Utc::now(),
            key_expires_at: session.key_expires_at,
            transport: Transport::Http,
        },
    );
    tracing::info!(%agent_id, hostname = %data.hostname, version = %data.version, transport = "http", "agent connected");
    let open = session
        .link
        .lock()
        .await
        .open_frames(agent_id)
        .await
        .map_err(|_| DomainError::Unavailable("could not load open commands".into()))?;
    let resent = Resent::new(&open);
    for frame in open {
        if !session.enqueue(frame) {
            session
                .close
                .close(limits::CLOSE_GOING_AWAY, "too many open commands");
            break;
        }
    }
    tokio::spawn(run(state.clone(), session.clone(), rx, resent));
    Ok((session, connected))
}

/// The session's life: moves pushed frames into the outbox, and ends the session when asked,
/// when the agent goes silent, or when its key expires.
async fn run(
    state: Context,
    session: Arc<HttpSession>,
    mut rx: mpsc::Receiver<Box<ServerFrame>>,
    mut resent: Resent,
) {
    let interval = state.hub.heartbeat_interval();
    let silence_limit = interval * limits::MISSED_HEARTBEATS;
    let mut ticker = tokio::time::interval(interval.min(Duration::from_secs(5)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let agent_id = session.agent_id;
    let reason = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) if resent.already_sent(&frame) => {}
                Some(frame) => {
                    if !session.enqueue(*frame) {
                        tracing::warn!(%agent_id, "HTTP agent is not collecting its frames; closing the session");
                        break "too slow".to_owned();
                    }
                }
                None => break session.close.reason().1,
            },
            // Also on shutdown (see `CloseSignal`).
            () = session.close.closed() => break session.close.reason().1,
            _ = ticker.tick() => {
                resent.expire();
                if session.silent_for() > silence_limit {
                    tracing::info!(%agent_id, "no request for {} heartbeat intervals", limits::MISSED_HEARTBEATS);
                    break "heartbeat missed".to_owned();
                }
                if session.key_expires_at.is_some_and(|t| t <= Utc::now()) {
                    break "agent key expired".to_owned();
                }
            }
        }
    };
    session.shut(&reason);
    let hub = &state.hub;
    hub.remove_http(&session.tenant_id, agent_id, &session.id);
    if hub.remove(&session.tenant_id, agent_id, session.conn_id)
        && let Err(err) = state
            .store
            .record_disconnect(&session.tenant_id, &agent_id.to_string(), hub.node_id())
            .await
    {
        tracing::warn!(error = %err, "could not record disconnect");
    }
    tracing::info!(%agent_id, %reason, "HTTP agent session ended");
}

/// The agent's open session, if the request names it and was made with the same key.
fn find(
    state: &Context,
    identity: &AgentIdentity,
    agent_id: AgentId,
    id: &str,
) -> Result<Arc<HttpSession>, DomainError> {
    let key = &identity.key;
    state
        .hub
        .http_session(&key.tenant_id, agent_id)
        // A session opened with a certificate is continued only with that agent's
        // certificate, and a certificate only continues its own agent's session.
        .filter(|s| s.id == id && s.key_id == key.id && s.bound == identity.agent_id)
        .ok_or_else(|| {
            not_registered(
                "no such HTTP session (server restarted, or the agent reconnected elsewhere)",
            )
        })
}

fn not_registered(why: &str) -> DomainError {
    DomainError::Conflict {
        code: codes::NOT_REGISTERED,
        message: format!("{why}: send `register` to /agent/v1/frames to open a session"),
    }
}

fn body_rejection(rejection: BytesRejection) -> HttpError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        HttpError(DomainError::TooLarge(format!(
            "body: larger than {MAX_BATCH_BYTES} bytes; send fewer frames per batch"
        )))
    } else {
        HttpError(DomainError::BadRequest(format!(
            "body: {}",
            rejection.body_text()
        )))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DomainError> {
    serde_json::from_slice(body).map_err(|err| DomainError::BadRequest(format!("body: {err}")))
}
