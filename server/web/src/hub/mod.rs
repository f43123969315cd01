//! The agent hub: which agents are connected to this server process, and how to reach them.
//!
//! Each connection is one task that owns its socket (see [`ws`]). The hub holds only a small
//! handle per connection: a bounded sender for outgoing frames and a close signal. Nothing here
//! is held across an `.await`, so the maps never become a point of contention; DashMap shards
//! them so that thousands of connects and commands a second do not queue on one lock.
//!
//! The hub never decides what a command's state is; the store does. A frame pushed through the
//! hub may be lost with its connection; that is fine because every command is in the store
//! first and is sent again when its agent reconnects.

pub mod enroll;
pub mod http;
pub mod link;
pub mod ws;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use outpost_protocol::{AgentFrame, AgentId, CommandId, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use outpost_core::access::{AgentAuthMode, AgentIdentity};
use outpost_core::bus::{Bus, Connection, Delivery, Waiters};
use outpost_core::enroll::Enrollment;
use outpost_core::finish::Finish;
use outpost_core::frames::Frames;
use outpost_store::Store;
use outpost_store::command;
pub use outpost_store::domain::Transport;
use outpost_store::writer::Writer;

/// What a connection task needs, handed to it explicitly: the store to read open commands and
/// keys, the writer for what the agent reports, this hub, the finish path, and the server's
/// shutdown. Cheap to clone (handles only).
#[derive(Clone)]
pub struct Context {
    /// Reads (a reconnecting agent's open commands, its key).
    pub store: Store,
    /// Batches what agents report into few transactions.
    pub writer: Writer,
    /// Live connections.
    pub hub: Arc<Hub>,
    /// Where finished commands are announced.
    pub finish: Finish,
    /// Cancelled when the server shuts down; connection tasks close their sockets on it.
    pub shutdown: CancellationToken,
    /// How agents prove who they are (`--agent-auth`).
    pub agent_auth: AgentAuthMode,
    /// The agents' CA and its enrollment rules, when the server serves TLS itself (client
    /// certificates need it: CONTRACT.md §19).
    pub enrollment: Option<Enrollment>,
}

impl Context {
    /// Who an agent's request comes from: its client certificate (when the server has a CA
    /// and the mode looks at certificates) or its agent key.
    pub async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        peer_cert: Option<&crate::listen::PeerCert>,
    ) -> Result<AgentIdentity, outpost_store::domain::DomainError> {
        let cert = peer_cert
            .filter(|_| self.enrollment.is_some())
            .map(|c| &*c.0);
        outpost_core::access::authenticate_agent_connection(
            &self.store,
            self.agent_auth,
            crate::http_error::bearer(headers),
            cert,
        )
        .await
    }
}

/// The agents' routes: the WebSocket and the long-poll pair.
pub fn router() -> axum::Router<Context> {
    http::router()
        .merge(enroll::router())
        .route("/agent/v1/ws", axum::routing::get(ws::handler))
}

/// Frames queued for one connection before it counts as too slow. A command is small and an
/// agent reads continuously, so a full queue means the connection is dead or stuck.
pub const OUTBOUND_QUEUE: usize = 256;

/// A request to close a connection, with the WebSocket close code and reason to send. It
/// also fires when the server shuts down (with 1001, "server shutting down").
///
/// Each connection waits on its own signal, a child of the server's shutdown token, rather
/// than on that token itself: a token's state sits behind a mutex that every poll of its
/// `cancelled()` future takes, and with ten thousand connections polling the one shared token
/// on every wake-up that lock showed up in a fan-out's profile.
///
/// It also keeps the connection's last sign of life, which [`Hub::sweep`] reads to close
/// connections that fell silent.
#[derive(Debug)]
pub struct CloseSignal {
    token: CancellationToken,
    reason: Mutex<Option<(u16, String)>>,
    born: Instant,
    /// Milliseconds after `born` that the peer was last heard from.
    seen_ms: AtomicU64,
}

impl CloseSignal {
    /// A signal for one connection of a server that stops on `shutdown`.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            token: shutdown.child_token(),
            reason: Mutex::default(),
            born: Instant::now(),
            seen_ms: AtomicU64::new(0),
        }
    }

    /// Records that the peer was just heard from.
    pub fn heard(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.seen_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the peer was last heard from (or since the signal was made).
    pub fn silent_for(&self) -> Duration {
        let seen = Duration::from_millis(self.seen_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(seen)
    }

    /// Asks the connection to close. The first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert_with(|| (code, reason.to_owned()));
        }
        self.token.cancel();
    }

    /// Resolves once [`close`](Self::close) was called.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// The code and reason given to [`close`](Self::close), or the shutdown's.
    pub fn reason(&self) -> (u16, String) {
        use outpost_protocol::limits::{CLOSE_GOING_AWAY, CLOSE_NORMAL};
        let given = self.reason.lock().ok().and_then(|slot| slot.clone());
        given.unwrap_or_else(|| {
            if self.token.is_cancelled() {
                (CLOSE_GOING_AWAY, "server shutting down".to_owned())
            } else {
                (CLOSE_NORMAL, String::new())
            }
        })
    }
}

/// What the hub keeps about one live connection.
#[derive(Debug, Clone)]
pub struct Session {
    /// Distinguishes this connection from an earlier or later one of the same agent.
    pub conn_id: u64,
    /// The agent key it authenticated with.
    pub key_id: String,
    /// Queue of frames for the connection's task to send.
    /// Frames are boxed: the channel allocates its first block of 32 slots up front, and 32
    /// pointers cost 256 bytes per idle connection where 32 frames would cost ~4 KiB.
    pub tx: mpsc::Sender<Box<ServerFrame>>,
    /// Asks the connection's task to close the socket.
    pub close: Arc<CloseSignal>,
    /// When it registered.
    pub connected_at: DateTime<Utc>,
    /// When its key stops being accepted: the connection is closed then.
    pub key_expires_at: Option<DateTime<Utc>>,
    /// Over what.
    pub transport: Transport,
}

/// How long after a (re)connect a pushed command may still be one its scan already sent. A push
/// follows its command's commit by the time it takes to queue the frame, milliseconds even under
/// load; past this the agent's journal is the guard (it runs a command id once).
const RESENT_WINDOW: Duration = Duration::from_secs(30);

/// The commands a (re)connect's scan of open commands sent, so that one of them also pushed
/// through the hub is not sent a second time. The connection enters the hub before the scan (so
/// that no command stored in between is missed), which lets a command stored in between be both
/// in the scan and in the connection's queue. Sending it twice is safe, the agent runs a command
/// id once, but it costs the agent a second `ack` and a resent answer.
///
/// Empty, the usual case, it is one null pointer in every connection.
#[derive(Debug, Default)]
pub struct Resent(Option<Box<(HashSet<CommandId>, Instant)>>);

impl Resent {
    /// Remembers the commands among `frames`, sent now.
    pub fn new(frames: &[ServerFrame]) -> Self {
        let ids: HashSet<CommandId> = frames
            .iter()
            .filter_map(|frame| match frame {
                ServerFrame::Command(command) => Some(command.command_id),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Self(None);
        }
        Self(Some(Box::new((ids, Instant::now() + RESENT_WINDOW))))
    }

    /// Whether `frame` is a command the scan already sent; the id is forgotten then, since a
    /// command is pushed once.
    pub fn already_sent(&mut self, frame: &ServerFrame) -> bool {
        self.expire();
        let (Some(sent), ServerFrame::Command(command)) = (&mut self.0, frame) else {
            return false;
        };
        let seen = sent.0.remove(&command.command_id);
        if sent.0.is_empty() {
            self.0 = None;
        }
        seen
    }

    /// Forgets everything once the window has passed, to free the memory of a connection that
    /// stays up.
    pub fn expire(&mut self) {
        if self.0.as_ref().is_some_and(|sent| sent.1 <= Instant::now()) {
            self.0 = None;
        }
    }
}

type SessionKey = (String, AgentId);

/// Registry of live connections, and the in-process [`Bus`]: every agent and every waiter is
/// in this process.
#[derive(Debug)]
pub struct Hub {
    sessions: DashMap<SessionKey, Session>,
    /// Long-poll sessions, which also have their entry in `sessions`.
    http: DashMap<SessionKey, Arc<http::HttpSession>>,
    waiters: Waiters,
    frames: Frames,
    next_conn: AtomicU64,
    heartbeat_interval: Duration,
    /// This node's id when several share PostgreSQL (`crate::cluster`), recorded with each
    /// agent it holds.
    node_id: Option<Arc<str>>,
}

impl Hub {
    /// An empty hub announcing the given heartbeat interval, sending commands as `frames`
    /// builds them.
    pub fn new(heartbeat_interval: Duration, frames: Frames) -> Self {
        Self {
            sessions: DashMap::new(),
            http: DashMap::new(),
            waiters: Waiters::new(),
            frames,
            next_conn: AtomicU64::new(1),
            heartbeat_interval,
            node_id: None,
        }
    }

    /// The same hub, recording `node_id` as the node holding its agents.
    #[must_use]
    pub fn on_node(mut self, node_id: &str) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// This node's id, when several nodes share the database.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Every connected agent: `(tenant, agent)`.
    pub fn agents(&self) -> Vec<(String, AgentId)> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
    }

    /// How stored commands become frames.
    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    /// The heartbeat interval agents are told to use.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How often [`sweep`](Self::sweep) should run: often enough to close a silent connection
    /// soon after its third missed heartbeat.
    pub fn sweep_interval(&self) -> Duration {
        self.heartbeat_interval.min(Duration::from_secs(5))
    }

    /// Closes the WebSocket connections whose agent missed
    /// [`MISSED_HEARTBEATS`](outpost_protocol::limits::MISSED_HEARTBEATS) intervals or whose
    /// key expired; returns how many it closed. Long-poll sessions watch themselves (their
    /// task wakes for each request anyway).
    ///
    /// One pass over the hub every few seconds, instead of a timer in every connection: with
    /// 15,000 agents those timers woke 3,000 tasks a second to find nothing to do, and each
    /// cost its connection a boxed timer entry.
    pub fn sweep(&self) -> usize {
        use outpost_protocol::limits::{CLOSE_GOING_AWAY, CLOSE_NORMAL, MISSED_HEARTBEATS};
        let silence_limit = self.heartbeat_interval * MISSED_HEARTBEATS;
        let now = Utc::now();
        let mut closed = 0;
        for entry in &self.sessions {
            let session = entry.value();
            if session.transport != Transport::Websocket {
                continue;
            }
            let agent_id = entry.key().1;
            if session.close.silent_for() > silence_limit {
                tracing::info!(%agent_id, "no heartbeat for {MISSED_HEARTBEATS} intervals");
                session.close.close(CLOSE_GOING_AWAY, "heartbeat missed");
                closed += 1;
            } else if session.key_expires_at.is_some_and(|t| t <= now) {
                tracing::info!(%agent_id, "agent key expired");
                session.close.close(CLOSE_NORMAL, "agent key expired");
                closed += 1;
            }
        }
        closed
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a registered connection. An earlier connection of the same agent is closed with
    /// reason `replaced` (CONTRACT.md §2).
    pub fn insert(&self, tenant_id: &str, agent_id: AgentId, session: Session) {
        let old = self
            .sessions
            .insert((tenant_id.to_owned(), agent_id), session);
        if let Some(old) = old {
            old.close
                .close(outpost_protocol::limits::CLOSE_NORMAL, "replaced");
        }
    }

    /// Removes a connection, unless it was already replaced by a newer one. Returns whether
    /// it was removed (and so whether the agent just went offline).
    pub fn remove(&self, tenant_id: &str, agent_id: AgentId, conn_id: u64) -> bool {
        self.sessions
            .remove_if(&(tenant_id.to_owned(), agent_id), |_, s| {
                s.conn_id == conn_id
            })
            .is_some()
    }

    /// Records an agent's long-poll session (its hub entry is added with [`insert`](Self::insert)).
    pub fn insert_http(&self, tenant_id: &str, agent_id: AgentId, session: Arc<http::HttpSession>) {
        self.http.insert((tenant_id.to_owned(), agent_id), session);
    }

    /// An agent's long-poll session, if it has one.
    pub fn http_session(
        &self,
        tenant_id: &str,
        agent_id: AgentId,
    ) -> Option<Arc<http::HttpSession>> {
        self.http
            .get(&(tenant_id.to_owned(), agent_id))
            .map(|s| s.clone())
    }

    /// Forgets a long-poll session, unless a newer one replaced it.
    pub fn remove_http(&self, tenant_id: &str, agent_id: AgentId, id: &str) {
        self.http
            .remove_if(&(tenant_id.to_owned(), agent_id), |_, s| s.id == id);
    }

    /// The live connection of an agent, if any.
    pub fn get(&self, tenant_id: &str, agent_id: AgentId) -> Option<Session> {
        self.sessions
            .get(&(tenant_id.to_owned(), agent_id))
            .map(|s| s.clone())
    }

    /// Whether an agent is connected here.
    pub fn is_online(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        self.sessions
            .contains_key(&(tenant_id.to_owned(), agent_id))
    }

    /// Queues a frame for an agent without waiting.
    pub fn push(&self, tenant_id: &str, agent_id: AgentId, frame: ServerFrame) -> Delivery {
        let Some(session) = self.get(tenant_id, agent_id) else {
            return Delivery::Offline;
        };
        match session.tx.try_send(Box::new(frame)) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Offline,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%agent_id, "outbound queue full; closing the connection");
                session
                    .close
                    .close(outpost_protocol::limits::CLOSE_GOING_AWAY, "too slow");
                Delivery::Dropped
            }
        }
    }

    /// Live connections per transport, every transport listed.
    pub fn count_by_transport(&self) -> Vec<(Transport, usize)> {
        let mut counts: Vec<(Transport, usize)> = Transport::ALL.iter().map(|t| (*t, 0)).collect();
        for entry in self.sessions.iter() {
            if let Some(slot) = counts
                .iter_mut()
                .find(|(t, _)| *t == entry.value().transport)
            {
                slot.1 += 1;
            }
        }
        counts
    }
}

impl Bus for Hub {
    fn deliver(&self, command: &command::Model) -> Delivery {
        let (Ok(agent_id), Some(frame)) = (command.agent_id.parse(), self.frames.command(command))
        else {
            return Delivery::Offline;
        };
        self.push(&command.tenant_id, agent_id, frame)
    }

    fn cancel(&self, command: &command::Model) -> Delivery {
        let (Ok(agent_id), Ok(command_id)) = (command.agent_id.parse(), command.id.parse()) else {
            return Delivery::Offline;
        };
        self.push(
            &command.tenant_id,
            agent_id,
            ServerFrame::Cancel { command_id },
        )
    }

    fn is_online(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        Hub::is_online(self, tenant_id, agent_id)
    }

    fn connections(&self, tenant_id: &str) -> Vec<Connection> {
        self.sessions
            .iter()
            .filter(|e| e.key().0 == tenant_id)
            .map(|e| Connection {
                agent_id: e.key().1,
                key_id: e.value().key_id.clone(),
                connected_at: e.value().connected_at,
                transport: e.value().transport,
            })
            .collect()
    }

    fn count_by_transport(&self) -> Vec<(Transport, usize)> {
        Hub::count_by_transport(self)
    }

    fn connected_count(&self) -> usize {
        self.sessions.len()
    }

    fn disconnect_key(&self, tenant_id: &str, key_id: &str, reason: &str) -> usize {
        let mut closed = 0;
        for entry in self.sessions.iter() {
            if entry.key().0 == tenant_id && entry.value().key_id == key_id {
                entry
                    .value()
                    .close
                    .close(outpost_protocol::limits::CLOSE_NORMAL, reason);
                closed += 1;
            }
        }
        closed
    }

    fn disconnect_agent(&self, tenant_id: &str, agent_id: AgentId, reason: &str) {
        if let Some(session) = self.get(tenant_id, agent_id) {
            session
                .close
                .close(outpost_protocol::limits::CLOSE_NORMAL, reason);
        }
    }

    fn finished(&self, runs: Vec<command::Model>) {
        self.waiters.wake(runs);
    }

    fn job_changed(&self, tenant_id: &str, job_id: &str) {
        self.waiters.job_changed(tenant_id, job_id);
    }

    fn waiters(&self) -> &Waiters {
        &self.waiters
    }
}

/// Whether `next` is the response to the command that `ack` acknowledges. Such an ack needs no
/// write of its own, on either transport: the response records the delivery too (see
/// `store::batch`), and the agent then waits for one commit instead of two.
fn answers_ack(ack: &AgentFrame, next: &AgentFrame) -> bool {
    matches!((ack, next), (AgentFrame::Ack { command_id }, AgentFrame::Response(response))
        if response.command_id == *command_id)
}

#[cfg(test)]
mod tests {
    use outpost_protocol::ServerCommand;

    use super::*;

    fn test_hub(heartbeat: Duration) -> Hub {
        let master =
            outpost_store::seal::MasterKey::parse(&outpost_store::seal::MasterKey::generate())
                .expect("a generated key parses");
        Hub::new(heartbeat, Frames::new(Arc::new(master), 1 << 20))
    }

    /// A connection's close signal fires on its own close (the first reason wins) and on the
    /// server's shutdown (1001), and closing one connection stops nothing else.
    #[tokio::test]
    async fn close_signals_fire_on_their_own_close_and_on_shutdown() {
        use outpost_protocol::limits::{CLOSE_GOING_AWAY, CLOSE_POLICY};
        let shutdown = CancellationToken::new();
        let (one, two) = (CloseSignal::new(&shutdown), CloseSignal::new(&shutdown));
        one.close(CLOSE_POLICY, "replaced");
        one.close(CLOSE_GOING_AWAY, "later");
        one.closed().await;
        assert_eq!(one.reason(), (CLOSE_POLICY, "replaced".to_owned()));
        assert!(!shutdown.is_cancelled() && !two.token.is_cancelled());

        shutdown.cancel();
        two.closed().await;
        assert_eq!(
            two.reason(),
            (CLOSE_GOING_AWAY, "server shutting down".to_owned())
        );
        assert_eq!(one.reason().1, "replaced", "its own reason stays");
    }

    fn session(hub: &Hub, shutdown: &CancellationToken, transport: Transport) -> Session {
        Session {
            conn_id: hub.next_conn_id(),
            key_id: "key".into(),
            tx: mpsc::channel(1).0,
            close: Arc::new(CloseSignal::new(shutdown)),
            connected_at: Utc::now(),
            key_expires_at: None,
            transport,
        }
    }

    /// The sweep closes a WebSocket connection whose key expired, or whose agent fell silent
    /// for three intervals, and leaves the others (and long-poll sessions, which watch
    /// themselves) alone.
    #[test]
    fn the_sweep_closes_silent_and_expired_connections_only() {
        use outpost_protocol::limits::{CLOSE_GOING_AWAY, CLOSE_NORMAL};
        let shutdown = CancellationToken::new();
        let hub = test_hub(Duration::from_secs(60));
        let expired = Session {
            key_expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..session(&hub, &shutdown, Transport::Websocket)
        };
        let valid = Session {
            key_expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
            ..session(&hub, &shutdown, Transport::Websocket)
        };
        let polling = Session {
            key_expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..session(&hub, &shutdown, Transport::Http)
        };
        let signals = [&expired, &valid, &polling].map(|s| s.close.clone());
        for s in [expired, valid, polling] {
            hub.insert("t", AgentId::new_v4(), s);
        }
        assert_eq!(hub.sweep(), 1);
        assert_eq!(
            signals[0].reason(),
            (CLOSE_NORMAL, "agent key expired".to_owned())
        );
        assert!(!signals[1].token.is_cancelled() && !signals[2].token.is_cancelled());

        // Three intervals of 1 ms: silence soon exceeds them, unless the agent is heard.
        let quick = test_hub(Duration::from_millis(1));
        let silent = session(&quick, &shutdown, Transport::Websocket);
        let signal = silent.close.clone();
        quick.insert("t", AgentId::new_v4(), silent);
        while signal.silent_for() <= Duration::from_millis(3) {
            std::thread::yield_now();
        }
        assert_eq!(quick.sweep(), 1);
        assert_eq!(
            signal.reason(),
            (CLOSE_GOING_AWAY, "heartbeat missed".to_owned())
        );
        signals[1].heard();
        assert!(signals[1].silent_for() < Duration::from_secs(1));
    }

    fn command(id: CommandId) -> ServerFrame {
        ServerFrame::Command(ServerCommand {
            command_id: id,
            command: "ping".into(),
            data: serde_json::json!({}),
            timeout_s: 10,
            timestamp: Utc::now(),
        })
    }

    #[test]
    fn a_command_the_scan_sent_is_not_pushed_again() {
        let (a, b, c) = (
            CommandId::now_v7(),
            CommandId::now_v7(),
            CommandId::now_v7(),
        );
        let mut resent = Resent::new(&[command(a), ServerFrame::Cancel { command_id: b }]);
        // A cancel is not a command: the scan's cancel does not hide a pushed command.
        assert!(!resent.already_sent(&command(b)));
        assert!(!resent.already_sent(&command(c)));
        assert!(!resent.already_sent(&ServerFrame::Cancel { command_id: a }));
        assert!(resent.already_sent(&command(a)));
        // A command is pushed once: a second frame with its id is not the scan's.
        assert!(!resent.already_sent(&command(a)));
        assert!(resent.0.is_none(), "memory is freed once every id was seen");
    }

    #[test]
    fn nothing_is_remembered_past_the_window_or_without_commands() {
        assert!(Resent::new(&[]).0.is_none());
        let a = CommandId::now_v7();
        let mut resent = Resent::new(&[command(a)]);
        if let Some(sent) = resent.0.as_mut() {
            sent.1 = Instant::now();
        }
        resent.expire();
        assert!(resent.0.is_none());
        assert!(!resent.already_sent(&command(a)));
    }
}
