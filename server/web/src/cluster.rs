//! Several server nodes on one PostgreSQL (CONTRACT.md §13): the [`Bus`] across nodes.
//!
//! Each node holds a row of `nodes` under a lease ([`LEASE_RENEW`], [`LEASE`]) and records
//! itself as the holder of each agent it has a connection to. Everything that must reach
//! another node is committed first, then that node is woken with `NOTIFY` on [`CHANNEL`]:
//! ids only, never a payload, in messages well under PostgreSQL's 8,000-byte limit. A
//! notification is a hint, not the data: the receiver reads what it is told about from the
//! store and acts only on what the store says (a command still pending, a result final).
//!
//! Hints are lost while a listening connection is down (PostgreSQL queues nothing for a
//! listener that is not there), and a connection can die without a word. So each node
//! notifies itself every [`LEASE_RENEW`]: a ping that does not come back within
//! [`PING_LOST_AFTER`] means its listener is dead, and it connects again. After every
//! (re)connect it re-reads what it may have missed: the pending commands of its agents, the
//! results its callers wait for, and every job its streams follow.
//!
//! A node that stops renewing (killed, cut off) is taken over by the first live node to see
//! its lease run out: that node deletes the row and releases the dead node's agents. Their
//! runs then become `lost` through the ordinary sweep if they never come back, which one
//! node at a time does (the `sweep` claim, `service::housekeeping`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use outpost_protocol::{AgentId, CommandId};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use outpost_core::bus::{Bus, Connection, Delivery, Waiters};
use outpost_store::domain::Transport;
use outpost_store::metrics;
use outpost_store::{RemoteAgent, Store, command, node, state};

/// The `LISTEN`/`NOTIFY` channel nodes talk on.
pub const CHANNEL: &str = "outpost_nodes";
/// How often a node renews its lease (and pings its own listener).
pub const LEASE_RENEW: Duration = Duration::from_secs(5);
/// How long a lease lasts: three renewals.
pub const LEASE: Duration = Duration::from_secs(15);
/// A listener whose own ping has not come back for this long is taken for dead.
const PING_LOST_AFTER: Duration = Duration::from_secs(12);
/// Bytes of one notification's payload at most (PostgreSQL refuses 8,000 and more).
const MAX_PAYLOAD: usize = 7_500;
/// Hints waiting to be sent, at most; past it new ones are dropped (counted and logged): the
/// store holds everything they point at, and receivers re-read it on their next resync.
const OUTBOX_LIMIT: usize = 1 << 18;
/// Notifications received and not yet handled, at most; past it, the node re-reads everything.
const INBOX: usize = 4096;
/// Commands read by id in one query at most (a fan-out's hints arrive by the thousand).
const READ_BY_ID: usize = 1000;
/// Notifications handled together at most: those already queued when one is read.
const HANDLE_TOGETHER: usize = 64;
/// How long a view of the other nodes' agents serves before it is read again.
const PRESENCE_FRESH: Duration = Duration::from_secs(2);

/// One hint. Tuples serialise as short JSON arrays (`{"D":["t","a","c"]}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Hint {
    /// A command for an agent was committed: tenant, agent, command.
    D(String, String, String),
    /// A job was committed with runs for agents on other nodes: tenant, job. Each node reads
    /// the job's pending runs of the agents it holds.
    G(String, String),
    /// A command is to be cancelled on its agent: tenant, agent, command.
    X(String, String, String),
    /// A command's result was committed: tenant, command, job.
    F(String, String, Option<String>),
    /// A job changed: tenant, job.
    J(String, String),
    /// Close the connections made with an agent key: tenant, key, reason.
    K(String, String, String),
    /// Close an agent's connection: tenant, agent, reason.
    A(String, String, String),
    /// A node's ping of its own listener.
    P(u64),
    /// API keys or users changed: forget the credentials kept
    /// (`outpost_store::credential_cache`).
    C,
    /// Agents' rows or agent keys changed: forget the agent rows kept (the same module).
    R,
}

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The sending node.
    n: String,
    /// Its hints.
    h: Vec<Hint>,
}

/// The other nodes' agents, as last read from the store.
#[derive(Default)]
struct Presence {
    agents: HashMap<(String, AgentId), RemoteAgent>,
    read_at: Option<Instant>,
}

/// The cross-node [`Bus`]: this node's [`Hub`] for its own agents and waiters, `NOTIFY` for
/// the others (see the module's docs).
pub struct Cluster {
    node_id: String,
    name: String,
    address: String,
    store: Store,
    hub: Arc<Hub>,
    /// Live nodes other than this one, at the last renewal; no hint is sent while it is 0.
    others: AtomicUsize,
    outbox: Mutex<Vec<Hint>>,
    outbox_ready: Notify,
    dropped_hints: AtomicU64,
    presence: RwLock<Presence>,
    refreshing: AtomicBool,
    /// When this node last sent a ping, and the last ping it heard back.
    ping_sent: AtomicU64,
    ping_heard: AtomicU64,
    shutdown: CancellationToken,
    /// Itself, for the background refresh of `presence` started from `&self`.
    this: std::sync::Weak<Cluster>,
}

impl Cluster {
    /// Registers this node (a new id for every start) and starts its lease, its listener and
    /// its sender. `hub` must record agents as held by the returned node's id
    /// ([`Hub::on_node`] with [`Cluster::new_node_id`]).
    pub async fn start(
        node_id: String,
        name: String,
        address: String,
        store: Store,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> outpost_store::Result<Arc<Self>> {
        // Leases are measured by the database's clock, the one clock every node shares.
        let now = store.database_now().await?;
        store
            .register_node(node::Model {
                id: node_id.clone(),
                name: name.clone(),
                address: address.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: now,
                renewed_at: now,
                lease_until: now + chrono::Duration::from_std(LEASE).unwrap_or_default(),
                agents: 0,
            })
            .await?;
        let cluster = Arc::new_cyclic(|this| Self {
            node_id,
            name,
            address,
            store,
            hub,
            others: AtomicUsize::new(0),
            outbox: Mutex::new(Vec::new()),
            outbox_ready: Notify::new(),
            dropped_hints: AtomicU64::new(0),
            presence: RwLock::default(),
            refreshing: AtomicBool::new(false),
            ping_sent: AtomicU64::new(0),
            ping_heard: AtomicU64::new(0),
            shutdown,
            this: this.clone(),
        });
        metrics::node_info(&cluster.node_id, &cluster.name);
        cluster.renew().await;
        tracing::info!(node_id = %cluster.node_id, name = %cluster.name, others = cluster.others.load(Ordering::Relaxed), "joined the cluster");
        tokio::spawn(cluster.clone().lease_loop());
        tokio::spawn(cluster.clone().send_loop());
        let credentials = outpost_store::credential_cache::local_changes();
        tokio::spawn(cluster.clone().tell_changes_loop(credentials, Hint::C));
        let agent_rows = outpost_store::credential_cache::local_agent_changes();
        tokio::spawn(cluster.clone().tell_changes_loop(agent_rows, Hint::R));
        tokio::spawn(cluster.clone().listen_loop());
        // Says hello: a node that does not know this one yet starts sending it hints now.
        cluster.ping().await;
        Ok(cluster)
    }

    /// A fresh node id.
    pub fn new_node_id() -> String {
        outpost_store::new_id()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Removes this node's row and releases its agents (a clean shutdown).
    pub async fn leave(&self) {
        if let Err(err) = self.store.remove_node(&self.node_id).await {
            tracing::warn!(error = %err, "could not remove this node's row; its lease runs out instead");
        }
    }

    // ---- sending -----------------------------------------------------------------------

    fn send(&self, hints: impl IntoIterator<Item = Hint>) {
        if self.others.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for hint in hints {
            if outbox.len() >= OUTBOX_LIMIT {
                metrics::cluster_hint_dropped();
                let dropped = self.dropped_hints.fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = dropped + 1,
                        "too many notifications for other nodes waiting; dropping them (the store has what they point at: agents get their commands on reconnect, waiters read at their deadline)"
                    );
                }
                continue;
            }
            outbox.push(hint);
        }
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// Sends what is queued, packed into as few notifications as fit, as soon as it is there.
    async fn send_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.outbox_ready.notified() => {}
            }
            let hints = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
            metrics::cluster_hints("sent", hints.len());
            for payload in pack(&self.node_id, dedup(hints)) {
                if let Err(err) = self.store.notify(CHANNEL, &payload).await {
                    // The store is out of reach: the hint is lost, what it points at is not
                    // (committed before), and the receiver re-reads once its listener is back.
                    tracing::warn!(error = %err, "could not notify the other nodes");
                }
            }
        }
    }

    /// Tells the other nodes with `hint` each time this one changed the rows `changes`
    /// watches (credentials: [`Hint::C`]; agents' rows and agent keys: [`Hint::R`]), so that
    /// they stop using their kept copies now rather than when the copies age out. A fleet
    /// reconnecting changes agents' rows by the thousand a second; the watch keeps only the
    /// latest change, so this sends one hint per turn, not one per row.
    async fn tell_changes_loop(self: Arc<Self>, mut changes: watch::Receiver<u64>, hint: Hint) {
        changes.mark_unchanged();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            self.send([hint.clone()]);
        }
    }

    // ---- the lease ---------------------------------------------------------------------

    async fn lease_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(LEASE_RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            ticks += 1;
            self.renew().await;
            self.ping().await;
            if self.others.load(Ordering::Relaxed) > 0 {
                self.refresh_presence().await;
            }
            // A node that joined since this one last looked may hold agents that commands
            // were made for before this node knew to tell it: its agents got them when they
            // registered, unless they registered in between. One re-read closes that window.
            if ticks == 2 {
                self.resync().await;
            }
        }
    }

    async fn renew(&self) {
        let agents = self.hub.connected_count() as i64;
        // The database's clock, not this host's: a node whose clock runs ahead would take the
        // others for dead, one running behind would be taken for dead.
        let now = match self.store.database_now().await {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "could not renew this node's lease");
                return;
            }
        };
        let until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        match self
            .store
            .renew_node(&self.node_id, agents, now, until)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(node_id = %self.node_id, "this node's lease had run out and another node released its agents; registering again");
                let row = node::Model {
                    id: self.node_id.clone(),
                    name: self.name.clone(),
                    address: self.address.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    started_at: now,
                    renewed_at: now,
                    lease_until: until,
                    agents,
                };
                let held: Vec<(String, String)> = self
                    .hub
                    .agents()
                    .into_iter()
                    .map(|(t, a)| (t, a.to_string()))
                    .collect();
                if let Err(err) = self.store.register_node(row).await {
                    tracing::warn!(error = %err, "could not register this node again");
                } else if let Err(err) = self.store.hold_agents(&self.node_id, &held).await {
                    tracing::warn!(error = %err, "could not record this node's agents again");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not renew this node's lease");
                return;
            }
        }
        match self.store.take_over_dead_nodes(now).await {
            Ok(taken) => {
                for id in taken {
                    tracing::warn!(node_id = %id, "a node's lease ran out: its agents were released (they reconnect to a live node; their runs become lost if they never do), and the sends it had claimed go out again");
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not take over dead nodes"),
        }
        match self.store.list_nodes().await {
            Ok(nodes) => {
                let others = nodes
                    .iter()
                    .filter(|n| n.id != self.node_id && n.lease_until >= now)
                    .count();
                self.others.store(others, Ordering::Relaxed);
                metrics::cluster_nodes(others + 1);
            }
            Err(err) => tracing::warn!(error = %err, "could not list the nodes"),
        }
    }

    async fn ping(&self) {
        let nonce = self.ping_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = serde_json::to_string(&Message {
            n: self.node_id.clone(),
            h: vec![Hint::P(nonce)],
        })
        .unwrap_or_default();
        if let Err(err) = self.store.notify(CHANNEL, &payload).await {
            tracing::warn!(error = %err, "could not ping this node's listener");
        }
    }

    // ---- listening ---------------------------------------------------------------------

    async fn listen_loop(self: Arc<Self>) {
        use sea_orm::sqlx::postgres::PgListener;
        let Some(pool) = self.store.postgres_pool() else {
            return;
        };
        let (tx, rx) = mpsc::channel::<String>(INBOX);
        tokio::spawn(self.clone().handle_loop(rx));
        let mut first = true;
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "cannot open the listening connection");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(LEASE_RENEW);
                    continue;
                }
            };
            if let Err(err) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %err, "cannot LISTEN");
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = Duration::from_millis(200);
            metrics::cluster_listening(true);
            if !first {
                tracing::info!(
                    "listening for the other nodes again; re-reading what may have been missed"
                );
                self.resync().await;
            }
            first = false;
            let mut heard_at = Instant::now();
            let mut last_heard = self.ping_heard.load(Ordering::Relaxed);
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            if tx.try_send(notification.payload().to_owned()).is_err() {
                                tracing::warn!("notifications arrive faster than they are handled; re-reading everything");
                                break;
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("the listening connection closed");
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "the listening connection failed");
                            break;
                        }
                    },
                    _ = check.tick() => {
                        let heard = self.ping_heard.load(Ordering::Relaxed);
                        if heard != last_heard {
                            last_heard = heard;
                            heard_at = Instant::now();
                        } else if heard_at.elapsed() > PING_LOST_AFTER
                            && self.ping_sent.load(Ordering::Relaxed) > heard
                        {
                            tracing::warn!("this node's own pings stopped coming back: the listening connection is dead; reconnecting");
                            break;
                        }
                    }
                }
            }
            metrics::cluster_listening(false);
        }
    }

    /// Acts on the other nodes' notifications. Those queued together are handled together:
    /// a fan-out's hints come in hundreds of notifications, and each handling reads the
    /// store, so reading for many at once saves most of the queries.
    async fn handle_loop(self: Arc<Self>, mut rx: mpsc::Receiver<String>) {
        let mut payloads = Vec::with_capacity(HANDLE_TOGETHER);
        while rx.recv_many(&mut payloads, HANDLE_TOGETHER).await > 0 {
            let mut hints = Vec::new();
            let mut unreadable = false;
            for payload in payloads.drain(..) {
                let message: Message = match serde_json::from_str(&payload) {
                    Ok(message) => message,
                    Err(err) => {
                        // A node of another version (a rolling upgrade) or a foreign sender
                        // on the channel: what it pointed at is in the store.
                        tracing::warn!(error = %err, "a notification this node cannot read; re-reading what its agents and waiters need");
                        unreadable = true;
                        continue;
                    }
                };
                // A node this one did not count yet (it joined since the last renewal):
                // hints go out from now on, not from the next renewal.
                if message.n != self.node_id && self.others.load(Ordering::Relaxed) == 0 {
                    self.others.store(1, Ordering::Relaxed);
                }
                if message.n == self.node_id {
                    for hint in &message.h {
                        if let Hint::P(nonce) = hint {
                            self.ping_heard.fetch_max(*nonce, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                metrics::cluster_hints("received", message.h.len());
                hints.extend(message.h);
            }
            if unreadable {
                self.resync().await;
            }
            if hints.is_empty() {
                continue;
            }
            if let Err(err) = self.handle(hints).await {
                tracing::warn!(error = %err, "could not act on another node's notification; re-reading at the next resync");
            }
        }
    }

    async fn handle(&self, hints: Vec<Hint>) -> outpost_store::Result<()> {
        let mut deliver = Vec::new();
        let mut cancel = Vec::new();
        let mut finished = Vec::new();
        let mut jobs = HashSet::new();
        let mut new_jobs = HashSet::new();
        for hint in hints {
            match hint {
                Hint::D(t, a, c) if self.holds(&t, &a) => deliver.push(c),
                Hint::X(t, a, c) if self.holds(&t, &a) => cancel.push(c),
                Hint::F(t, c, j) => {
                    if c.parse::<CommandId>()
                        .is_ok_and(|id| self.hub.waiters().watching(&id))
                    {
                        finished.push(c);
                    }
                    if let Some(j) = j {
                        jobs.insert((t, j));
                    }
                }
                Hint::J(t, j) => {
                    jobs.insert((t, j));
                }
                Hint::G(t, j) => {
                    new_jobs.insert((t, j));
                }
                Hint::K(t, k, reason) => {
                    self.hub.disconnect_key(&t, &k, &reason);
                }
                Hint::A(t, a, reason) => {
                    if let Ok(agent) = a.parse() {
                        self.hub.disconnect_agent(&t, agent, &reason);
                    }
                }
                Hint::C => outpost_store::credential_cache::forget("other_node"),
                Hint::R => outpost_store::credential_cache::forget_agents("other_node"),
                Hint::D(..) | Hint::X(..) | Hint::P(_) => {}
            }
        }
        for (t, j) in new_jobs {
            let held: Vec<String> = self
                .store
                .pending_runs_of_job(&t, &j)
                .await?
                .into_iter()
                .filter(|(_, agent)| self.holds(&t, agent))
                .map(|(id, _)| id)
                .collect();
            deliver.extend(held);
        }
        for deliver in deliver.chunks(READ_BY_ID) {
            for run in self.store.commands_by_ids(deliver).await? {
                if run.state == state::PENDING {
                    self.hub.deliver(&run);
                }
            }
        }
        for cancel in cancel.chunks(READ_BY_ID) {
            for run in self.store.commands_by_ids(cancel).await? {
                if run.state == state::DELIVERED || run.state == state::RUNNING {
                    self.hub.cancel(&run);
                }
            }
        }
        for finished in finished.chunks(READ_BY_ID) {
            let runs: Vec<command::Model> = self
                .store
                .commands_by_ids(finished)
                .await?
                .into_iter()
                .filter(|run| state::FINAL.contains(&run.state.as_str()))
                .collect();
            self.hub.finished(runs);
        }
        if self.hub.waiters().has_job_listeners() {
            for (t, j) in jobs {
                self.hub.job_changed(&t, &j);
            }
        }
        Ok(())
    }

    fn holds(&self, tenant_id: &str, agent_id: &str) -> bool {
        agent_id
            .parse()
            .is_ok_and(|agent| self.hub.is_online(tenant_id, agent))
    }

    /// Re-reads what this node may have missed: its agents' pending commands, the results
    /// its callers wait for, and every job its streams follow.
    async fn resync(&self) {
        // A change to credentials may have been among the missed notifications.
        outpost_store::credential_cache::forget("resync");
        outpost_store::credential_cache::forget_agents("resync");
        match self.store.pending_for_node(&self.node_id).await {
            Ok(runs) => {
                for run in runs {
                    self.hub.deliver(&run);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not re-read this node's agents' pending commands")
            }
        }
        let watched: Vec<String> = self
            .hub
            .waiters()
            .watched()
            .iter()
            .map(ToString::to_string)
            .collect();
        for ids in watched.chunks(1024) {
            match self.store.commands_by_ids(ids).await {
                Ok(runs) => self.hub.finished(
                    runs.into_iter()
                        .filter(|run| state::FINAL.contains(&run.state.as_str()))
                        .collect(),
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "could not re-read the results callers wait for");
                    break;
                }
            }
        }
        self.hub.waiters().everything_changed();
    }

    // ---- the other nodes' agents ---------------------------------------------------------

    fn presence(&self) -> std::sync::RwLockReadGuard<'_, Presence> {
        let stale = {
            let presence = self.presence.read().unwrap_or_else(|p| p.into_inner());
            presence
                .read_at
                .is_none_or(|at| at.elapsed() > PRESENCE_FRESH)
        };
        if stale
            && self.others.load(Ordering::Relaxed) > 0
            && !self.refreshing.swap(true, Ordering::AcqRel)
            && let Some(this) = self.this.upgrade()
        {
            tokio::spawn(async move { this.refresh_presence().await });
        }
        self.presence.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn refresh_presence(&self) {
        match self.store.remote_agents(&self.node_id).await {
            Ok(agents) => {
                let map = agents
                    .into_iter()
                    .filter_map(|a| Some(((a.tenant_id.clone(), a.agent_id.parse().ok()?), a)))
                    .collect();
                let mut presence = self.presence.write().unwrap_or_else(|p| p.into_inner());
                presence.agents = map;
                presence.read_at = Some(Instant::now());
            }
            Err(err) => tracing::warn!(error = %err, "could not read the other nodes' agents"),
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

impl Bus for Cluster {
    fn deliver(&self, command: &command::Model) -> Delivery {
        self.to_agent(command, |hub, c| hub.deliver(c), Hint::D)
    }

    fn cancel(&self, command: &command::Model) -> Delivery {
        self.to_agent(command, |hub, c| hub.cancel(c), Hint::X)
    }

    fn deliver_job(&self, runs: &[&command::Model]) {
        let mut elsewhere = HashSet::new();
        for run in runs {
            match (&run.job_id, run.agent_id.parse()) {
                (_, Ok(agent)) if self.hub.is_online(&run.tenant_id, agent) => {
                    self.hub.deliver(run);
                }
                (Some(job_id), Ok(_)) => {
                    elsewhere.insert((&run.tenant_id, job_id));
                }
                _ => {
                    self.deliver(run);
                }
            }
        }
        self.send(
            elsewhere
                .into_iter()
                .map(|(t, j)| Hint::G(t.clone(), j.clone())),
        );
    }

    fn is_online(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        self.hub.is_online(tenant_id, agent_id) || self.remote(tenant_id, agent_id)
    }

    fn is_connected_here(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        self.hub.is_online(tenant_id, agent_id)
    }

    fn is_agent_online(&self, agent: &outpost_store::agent::Model) -> bool {
        let Ok(agent_id) = agent.id.parse() else {
            return false;
        };
        // Another node's name in the row: it registered there and has not disconnected (a
        // node that died keeps its name there until its lease runs out and it is taken over).
        self.hub.is_online(&agent.tenant_id, agent_id)
            || agent
                .node_id
                .as_deref()
                .is_some_and(|node| node != self.node_id)
    }

    fn connections(&self, tenant_id: &str) -> Vec<Connection> {
        let mut connections = self.hub.connections(tenant_id);
        let local: HashSet<AgentId> = connections.iter().map(|c| c.agent_id).collect();
        let presence = self.presence();
        for ((tenant, agent_id), remote) in &presence.agents {
            if tenant != tenant_id || local.contains(agent_id) {
                continue;
            }
            connections.push(Connection {
                agent_id: *agent_id,
                key_id: remote.key_id.clone(),
                connected_at: remote.connected_at.unwrap_or_else(Utc::now),
                transport: remote
                    .transport
                    .as_deref()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(Transport::Websocket),
            });
        }
        connections
    }

    fn count_by_transport(&self) -> Vec<(Transport, usize)> {
        self.hub.count_by_transport()
    }

    fn connected_count(&self) -> usize {
        self.hub.connected_count()
    }

    fn disconnect_key(&self, tenant_id: &str, key_id: &str, reason: &str) -> usize {
        self.send([Hint::K(
            tenant_id.to_owned(),
            key_id.to_owned(),
            reason.to_owned(),
        )]);
        self.hub.disconnect_key(tenant_id, key_id, reason)
    }

    fn disconnect_agent(&self, tenant_id: &str, agent_id: AgentId, reason: &str) {
        self.send([Hint::A(
            tenant_id.to_owned(),
            agent_id.to_string(),
            reason.to_owned(),
        )]);
        self.hub.disconnect_agent(tenant_id, agent_id, reason);
    }

    fn finished(&self, runs: Vec<command::Model>) {
        if self.others.load(Ordering::Relaxed) > 0 {
            self.send(
                runs.iter()
                    .map(|r| Hint::F(r.tenant_id.clone(), r.id.clone(), r.job_id.clone())),
            );
        }
        self.hub.finished(runs);
    }

    fn job_changed(&self, tenant_id: &str, job_id: &str) {
        self.send([Hint::J(tenant_id.to_owned(), job_id.to_owned())]);
        self.hub.job_changed(tenant_id, job_id);
    }

    fn waiters(&self) -> &Waiters {
        self.hub.waiters()
    }
}

impl Cluster {
    /// Sends a stored command's frame through this node's hub when it holds the agent;
    /// otherwise hints the other nodes (`hint(tenant, agent, command)`), and says whether
    /// another node holds the agent.
    fn to_agent(
        &self,
        command: &command::Model,
        local: fn(&Hub, &command::Model) -> Delivery,
        hint: fn(String, String, String) -> Hint,
    ) -> Delivery {
        let Ok(agent_id) = command.agent_id.parse() else {
            return Delivery::Offline;
        };
        if self.hub.is_online(&command.tenant_id, agent_id) {
            return local(&self.hub, command);
        }
        self.send([hint(
            command.tenant_id.clone(),
            command.agent_id.clone(),
            command.id.clone(),
        )]);
        if self.remote(&command.tenant_id, agent_id) {
            Delivery::Queued
        } else {
            Delivery::Offline
        }
    }

    fn remote(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        self.presence()
            .agents
            .contains_key(&(tenant_id.to_owned(), agent_id))
    }
}

/// Tells every node listening on `store`'s database that credentials changed there, from a
/// process that is not a node (`outpost-server admin-key rotate`): they forget their kept
/// copies (`outpost_store::credential_cache`). PostgreSQL only.
pub async fn announce_credentials_changed(store: &Store) -> outpost_store::Result<()> {
    for payload in pack("host", vec![Hint::C]) {
        store.notify(CHANNEL, &payload).await?;
    }
    Ok(())
}

/// Drops repeated job and credential hints (a job changes many times in a batch), keeping the
/// first's place.
fn dedup(hints: Vec<Hint>) -> Vec<Hint> {
    let mut seen = HashSet::with_capacity(hints.len());
    hints
        .into_iter()
        .filter(|hint| {
            !matches!(hint, Hint::J(..) | Hint::G(..) | Hint::C | Hint::R)
                || seen.insert(hint.clone())
        })
        .collect()
}

/// Packs hints into notification payloads of at most [`MAX_PAYLOAD`] bytes each.
fn pack(node_id: &str, hints: Vec<Hint>) -> Vec<String> {
    let head = format!("{{\"n\":{},\"h\":[", serde_json::Value::from(node_id));
    let mut payloads = Vec::new();
    let mut current = head.clone();
    let mut count = 0;
    for hint in hints {
        let Ok(text) = serde_json::to_string(&hint) else {
            continue;
        };
        if count > 0 && current.len() + text.len() + 3 > MAX_PAYLOAD {
            current.push_str("]}");
            payloads.push(std::mem::replace(&mut current, head.clone()));
            count = 0;
        }
        if count > 0 {
            current.push(',');
        }
        current.push_str(&text);
        count += 1;
    }
    if count > 0 {
        current.push_str("]}");
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many hints, each payload stays under PostgreSQL's limit, reads back as a
    /// message from this node, and together they carry every hint once, in order.
    #[test]
    fn hints_pack_into_payloads_under_the_limit() {
        let hints: Vec<Hint> = (0..2_000)
            .map(|i| {
                Hint::D(
                    outpost_store::new_id(),
                    outpost_store::new_id(),
                    format!("{i:036}"),
                )
            })
            .collect();
        let payloads = pack("node-1", hints.clone());
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            let message: Message = serde_json::from_str(payload).expect("a message");
            assert_eq!(message.n, "node-1");
            back.extend(message.h);
        }
        assert_eq!(back, hints);
        assert!(pack("n", Vec::new()).is_empty());
    }

    /// A job's repeated changes go out once; deliveries are never merged.
    #[test]
    fn repeated_job_changes_go_out_once() {
        let j = Hint::J("t".into(), "j".into());
        let g = Hint::G("t".into(), "j".into());
        let d = Hint::D("t".into(), "a".into(), "c".into());
        assert_eq!(
            dedup(vec![
                g.clone(),
                j.clone(),
                d.clone(),
                j.clone(),
                d.clone(),
                g.clone()
            ]),
            vec![g, j, d.clone(), d]
        );
    }
}
