//! The single writer: what agents report (acknowledgements, output, results, heartbeats) is
//! committed in batches.
//!
//! Connection tasks hand their writes to one task and wait for the commit before they
//! acknowledge anything to the agent, so durability is unchanged. The writer takes whatever is
//! queued (up to [`MAX_BATCH`]) and commits it in one transaction: when thousands of agents
//! finish at once, that is a few transactions instead of thousands, and SQLite's single
//! writer lock is taken once per batch instead of once per frame.
//!
//! A batch that fails for a reason that passes (the disk is full, the database busy or
//! unreachable: [`StoreError::is_transient`]) is tried again, whole and in order, with a
//! backoff up to [`RETRY_CAP`], until it commits: nobody is answered meanwhile, so nothing is
//! acknowledged that is not stored, nothing is lost, and everything resumes by itself when the
//! cause goes away. [`Health`] says meanwhile that writes fail (`/readyz`, `/metrics`). A batch
//! that lost a lock conflict on PostgreSQL (a deadlock, a serialization failure:
//! [`StoreError::is_conflict`]) is tried again at once, up to [`CONFLICT_RETRIES`] times in a
//! row, without saying so: the database is writable, another transaction only won. A batch
//! that fails for any other reason is applied one write at a time, so one bad write cannot sink
//! the others; but a connection's writes stay in order: once one of them fails, its later
//! writes are refused unapplied (its [`Fence`]), in this batch and in later ones, so that no
//! result can be committed after a chunk of its output failed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use outpost_protocol::{HeartbeatStatus, Response};
use tokio::sync::{mpsc, oneshot};

use super::{OutputChunk, Result, Store, StoreError, Stored, command};

/// Most writes committed in one transaction.
pub const MAX_BATCH: usize = 2048;
/// Longest wait between two tries of a batch that failed for a passing reason.
pub const RETRY_CAP: Duration = Duration::from_secs(5);
/// Conflicts (deadlocks, serialization failures) in a row that a batch is tried again at once
/// for, before it is treated as failing like any passing error (with a backoff, and writes
/// reported as failing).
const CONFLICT_RETRIES: u32 = 3;
/// First wait before a failed batch is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Writes waiting for the writer before senders wait too.
const QUEUE: usize = 8192;

/// A write an agent's frame asks for.
#[derive(Debug)]
pub enum Write {
    /// `ack`: the command was received (or, for `run`, started).
    Delivered {
        /// Tenant.
        tenant_id: String,
        /// Agent.
        agent_id: String,
        /// Command.
        command_id: String,
    },
    /// `output`: one chunk.
    Output {
        /// Tenant.
        tenant_id: String,
        /// Agent.
        agent_id: String,
        /// Run.
        command_id: String,
        /// Stream.
        stream: outpost_protocol::OutputStream,
        /// Chunk number.
        seq: u64,
        /// Bytes.
        bytes: Vec<u8>,
        /// Per-stream cap.
        cap: u64,
    },
    /// `response`: the result.
    Finish {
        /// Tenant.
        tenant_id: String,
        /// Agent.
        agent_id: String,
        /// The answer.
        response: Response,
    },
    /// `heartbeat`: metrics.
    Heartbeat {
        /// Tenant.
        tenant_id: String,
        /// Agent.
        agent_id: String,
        /// Metrics.
        status: HeartbeatStatus,
    },
}

/// What a committed write did.
#[derive(Debug)]
pub enum Written {
    /// For `Delivered`: whether the command's state changed (not a repeat, and the agent's
    /// own), and the job it is a run of.
    Delivered {
        /// The state changed.
        changed: bool,
        /// The command's job, when it changed and is a job's run.
        job_id: Option<String>,
    },
    /// For `Output`.
    Output(Stored),
    /// For `Finish`: what the result did. The finished row goes to the listener (see
    /// [`Writer::on_finished`]), not here: the connection only acknowledges the result.
    Finished(Finish),
    /// For `Heartbeat`.
    Heartbeat,
}

/// What a `response` did to its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It finished the command.
    Stored,
    /// The command is the agent's and was final already: a resent answer.
    Repeat,
    /// No command of this agent has that id: it was never sent to this agent (another
    /// agent's, or unknown). Nothing changed (CONTRACT.md §9, "Agent identity").
    Foreign,
}

type Reply = oneshot::Sender<Result<Written>>;

/// A write queued with its reply and its connection's fence.
type Queued = (Write, Reply, Option<Arc<Fence>>);

/// One connection's place in the writer's order. The writer commits a connection's writes in
/// the order they were queued; once one of them fails, the fence is broken and the
/// connection's later writes are refused without being applied (the connection closes on the
/// failure, and its agent sends everything again on its next connection). Without it, a result
/// queued behind a failed output chunk could be committed, and its run shown complete with a
/// hole in its output.
#[derive(Debug, Default)]
pub struct Fence(AtomicBool);

impl Fence {
    /// A fence for a new connection.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn is_broken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn breach(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Whether the writer's writes commit: what `/readyz` and `outpost_store_writable` report.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the last transaction failed, while the writer is retrying it.
    failing: std::sync::Mutex<Option<String>>,
    /// Transactions that failed so far.
    failures: AtomicU64,
}

impl Health {
    /// `Err(why)` while the writer's writes fail.
    pub fn status(&self) -> std::result::Result<(), String> {
        match self.lock().as_ref() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// How many of the writer's transactions failed so far (each was tried again).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, err: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut failing = self.lock();
        if failing.is_none() {
            tracing::error!(error = %err, "database writes fail; what agents report is held (not acknowledged) and retried until they commit");
            crate::metrics::store_writable(false);
        }
        *failing = Some(err.to_string());
    }

    /// A transaction lost a conflict and is tried again at once: counted, but writes do not
    /// fail for it.
    fn conflicted(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn committed(&self) {
        let mut failing = self.lock();
        if failing.take().is_some() {
            tracing::info!("database writes commit again");
            crate::metrics::store_writable(true);
        }
    }
}

/// Given the commands a committed batch finished (see [`Writer::on_finished`]).
type Listener = Box<dyn Fn(Vec<command::Model>) + Send + Sync>;

/// Resolves to a queued write's outcome once it is committed (see [`Writer::submit`]).
#[derive(Debug)]
pub struct Committed(oneshot::Receiver<Result<Written>>);

impl std::future::Future for Committed {
    type Output = Result<Written>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|reply| {
            reply.unwrap_or_else(|_| Err(StoreError::Config("the writer has stopped".into())))
        })
    }
}

/// Hands writes to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
    stats: Arc<Stats>,
    store: Store,
    finished: Arc<OnceLock<Listener>>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Counters of what the writer did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Writes committed.
    pub writes: AtomicU64,
}

impl Writer {
    /// Starts the writer on `store`, on a thread of its own, and the WAL's background
    /// checkpoints on `background`, a handle on the same database that does not share the
    /// writer's connection (see [`Checkpoints`]).
    ///
    /// The writer's every step is a hand-off to SQLite's thread and back (begin, each
    /// statement, each chunk of returned rows, commit). On the server's runtime each of those
    /// wake-ups queued behind the connection tasks that the previous batch's replies had just
    /// woken: thousands of them after a fan-out's batch, so a batch spent much of its time
    /// merely waiting to be polled, most of it before its `BEGIN` had even run. On a
    /// runtime of its own the writer is polled as soon as SQLite answers (figures:
    /// docs/BENCHMARKS.md, "Design notes behind the figures").
    pub fn start(store: Store, background: Store) -> std::io::Result<Self> {
        Self::start_with(store, background, Checkpointing::default())
    }

    /// [`Writer::start`] with other checkpoint timings (tests use small ones).
    pub fn start_with(
        store: Store,
        background: Store,
        checkpointing: Checkpointing,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let finished = Arc::new(OnceLock::new());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let health = Arc::new(Health::default());
        crate::metrics::store_writable(true);
        let own = Own {
            store: store.clone(),
            stats: stats.clone(),
            listener: finished.clone(),
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("outpost-writer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let checkpoints = Checkpoints::start(background, checkpointing);
                    run(own, checkpoints, rx).await;
                });
            })?;
        Ok(Self {
            tx,
            stats,
            store,
            finished,
            health,
        })
    }

    /// Sets what is handed the commands each batch finished (their rows as stored), on the
    /// writer's thread, as soon as the batch is committed and before any write's submitter
    /// hears of it; set once (`false` if it was set already).
    ///
    /// The server hands results to whoever waits for them (`?wait`, job listeners) here. Done
    /// by each connection after its commit, as before, a fan-out's last result reached its
    /// waiting job only once the connection tasks of the last batch (hundreds, all woken at
    /// once with their acks to send) had been polled, well after the commit (figures:
    /// docs/BENCHMARKS.md, "Design notes behind the figures").
    pub fn on_finished(
        &self,
        listener: impl Fn(Vec<command::Model>) + Send + Sync + 'static,
    ) -> bool {
        self.finished.set(Box::new(listener)).is_ok()
    }

    /// The writer's own connection, for the other writes on the paths that matter: a job's
    /// runs, and on SQLite a single command with its audit row (`Core::store_command`).
    ///
    /// A 10,000-run job inserted through any other connection held SQLite's write lock while
    /// the writer's next batch waited in SQLite's busy handler, which sleeps in steps of up
    /// to 100 ms and so oversleeps the lock's release; and its commit emptied the writer's
    /// page cache. Taken here, the one connection is handed from the job to the writer (and
    /// back) the moment it is free, and the cache stays the writer's. A single command is
    /// smaller, but it is on the round trip: committed elsewhere, its commit emptied the
    /// cache that its result is then stored with.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `(transactions, writes)` committed so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.batches.load(Ordering::Relaxed),
            self.stats.writes.load(Ordering::Relaxed),
        )
    }

    /// Queues a write and waits until it is committed.
    pub async fn write(&self, write: Write) -> Result<Written> {
        self.submit(write).await?.await
    }

    /// Queues a write (waiting only while the queue is full) and returns what resolves once it
    /// is committed. Writes are committed in the order they are queued.
    pub async fn submit(&self, write: Write) -> Result<Committed> {
        self.queue(write, None).await
    }

    /// [`submit`](Self::submit) for a connection's write: refused unapplied once an earlier
    /// write behind the same `fence` failed.
    pub async fn submit_in_order(&self, write: Write, fence: &Arc<Fence>) -> Result<Committed> {
        self.queue(write, Some(fence.clone())).await
    }

    async fn queue(&self, write: Write, fence: Option<Arc<Fence>>) -> Result<Committed> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((write, reply, fence))
            .await
            .map_err(|_| StoreError::Config("the writer has stopped".into()))?;
        Ok(Committed(done))
    }

    /// Whether writes commit now.
    pub fn health(&self) -> &Health {
        &self.health
    }
}

/// What the writer's task owns besides its queue.
struct Own {
    store: Store,
    stats: Arc<Stats>,
    listener: Arc<OnceLock<Listener>>,
    health: Arc<Health>,
}

impl Own {
    /// Counts a committed transaction of `size` writes and hands its finished runs on.
    fn committed(&self, size: usize, started: Instant, finished: Vec<command::Model>) {
        crate::metrics::store_batch(size, started.elapsed());
        self.health.committed();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.writes.fetch_add(size as u64, Ordering::Relaxed);
        for run in &finished {
            crate::metrics::command_answered(run.created_at, run.delivered_at, run.finished_at);
        }
        if let (false, Some(listener)) = (finished.is_empty(), self.listener.get()) {
            listener(finished);
        }
    }

    /// Commits `writes` in one transaction, trying again while it fails for a passing reason
    /// (see the module's docs); returns what each write did, or the error that will not pass.
    async fn commit_retrying(&self, writes: &[&Write]) -> Result<Vec<Written>> {
        let mut delay = RETRY_FIRST;
        let mut conflicts = 0;
        loop {
            let started = Instant::now();
            match commit(&self.store, writes).await {
                Ok((results, finished)) => {
                    self.committed(writes.len(), started, finished);
                    return Ok(results);
                }
                // A deadlock or serialization failure says that another transaction won a
                // lock, not that the database cannot be written: tried again at once, it
                // commits. Reported as a failure, it would refuse every API write and fail
                // `/readyz` for the length of a backoff (seen when a lapsed node's agents
                // were released and held again while heartbeats were being written).
                Err(err) if err.is_conflict() && conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    crate::metrics::store_batch_failed();
                    self.health.conflicted();
                    tracing::info!(size = writes.len(), error = %err, "a batch of writes lost a lock conflict; trying it again at once");
                }
                Err(err) if err.is_transient() => {
                    crate::metrics::store_batch_failed();
                    self.health.failed(&err);
                    tracing::warn!(size = writes.len(), error = %err, retry_in = ?delay, "a batch of writes failed; trying it again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_CAP);
                }
                Err(err) => {
                    crate::metrics::store_batch_failed();
                    return Err(err);
                }
            }
        }
    }
}

/// The error of a write refused because an earlier write of its connection failed.
fn fenced() -> StoreError {
    StoreError::Config("not written: an earlier write of this connection failed".into())
}

async fn run(own: Own, checkpoints: Checkpoints, mut rx: mpsc::Receiver<Queued>) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    loop {
        if checkpoints.is_due() {
            checkpoints.run(&own.store).await;
        }
        let Some(first) = rx.recv().await else {
            break;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Writes behind a failed write of their connection are refused, not applied.
        let broken = |(_, _, fence): &mut Queued| fence.as_ref().is_some_and(|f| f.is_broken());
        for (_, reply, _) in batch.extract_if(.., broken) {
            let _ = reply.send(Err(fenced()));
        }
        if batch.is_empty() {
            continue;
        }
        let size = batch.len();
        let writes: Vec<&Write> = batch.iter().map(|(write, _, _)| write).collect();
        let committed = own.commit_retrying(&writes).await;
        drop(writes);
        match committed {
            Ok(results) => {
                for ((_, reply, _), result) in batch.drain(..).zip(results) {
                    count(&result);
                    let _ = reply.send(Ok(result));
                }
            }
            Err(err) => {
                tracing::warn!(size, error = %err, "a batch of writes failed; applying them one by one");
                one_by_one(&own, &mut batch).await;
            }
        }
        tracing::trace!(size, "committed a batch");
    }
}

/// Applies a failed batch's writes one transaction each, so that one bad write does not sink
/// the others, in order: a write whose connection's earlier write failed is refused.
async fn one_by_one(own: &Own, batch: &mut Vec<Queued>) {
    for (write, reply, fence) in batch.drain(..) {
        if fence.as_ref().is_some_and(|f| f.is_broken()) {
            let _ = reply.send(Err(fenced()));
            continue;
        }
        let result = own.commit_retrying(&[&write]).await.map(|mut one| {
            let written = one.remove(0);
            count(&written);
            written
        });
        if let Err(err) = &result {
            tracing::warn!(error = %err, "a write failed; its connection's later writes are refused");
            if let Some(fence) = &fence {
                fence.breach();
            }
        }
        let _ = reply.send(result);
    }
}

/// When the WAL is checkpointed (see [`Checkpoints`]).
#[derive(Debug, Clone, Copy)]
pub struct Checkpointing {
    /// How often a checkpoint runs in the background.
    pub every: Duration,
    /// WAL pages (4 KiB each) past which the writer checkpoints between its own batches, so
    /// that the WAL starts over.
    pub restart_pages: i64,
}

impl Default for Checkpointing {
    /// Every second; the WAL starts over past 64 MiB.
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            restart_pages: super::WAL_LIMIT_BYTES / 4096,
        }
    }
}

/// SQLite's WAL checkpoints: copying committed pages into the database file, so that the WAL
/// can start over (no commit checkpoints by itself, see `store::connect`: the commit that
/// crossed SQLite's threshold paid for the copy and its `fsync`s, which was most of a round
/// trip's p99).
///
/// The copying is done in the background, every second, on a connection of its own,
/// concurrently with the writer: a checkpoint syncs the WAL, copies the pages and syncs the
/// database file, which for a second of a fan-out's writes takes a sizeable part of a second,
/// and when the writer did it between its batches every second, its batches (and the job
/// inserts that share its connection) waited that long behind it. But the WAL only starts
/// over when a write transaction begins with every frame copied, which a checkpoint running
/// beside a busy writer never sees (a long burst grew it to several times 64 MiB, and every
/// page read searches the WAL's index). So once the WAL holds more than 64 MiB, the writer
/// runs a checkpoint itself between two of its batches, when nothing else writes: it
/// completes, and the next batch starts the WAL over. The background has copied all but the
/// last pages by then, so this one costs the writer little more than its two `fsync`s, once
/// per 64 MiB of writes (every few seconds of back-to-back fan-outs) rather than every second
/// (figures: docs/BENCHMARKS.md, "Design notes behind the figures").
struct Checkpoints {
    /// The WAL's size in pages as the last checkpoint saw it.
    wal_pages: Arc<AtomicI64>,
    /// Past this, the writer checkpoints. (On PostgreSQL, which checkpoints by itself, the
    /// background stops at once and the WAL never looks large.)
    restart_pages: i64,
}

impl Checkpoints {
    /// Starts the background checkpoints on `background` (a connection other than the
    /// writer's) on the current runtime.
    fn start(background: Store, policy: Checkpointing) -> Self {
        let wal_pages = Arc::new(AtomicI64::new(0));
        tokio::spawn(copy_in_background(background, policy, wal_pages.clone()));
        Self {
            wal_pages,
            restart_pages: policy.restart_pages,
        }
    }

    /// Whether the writer should checkpoint before its next batch.
    fn is_due(&self) -> bool {
        self.wal_pages.load(Ordering::Relaxed) >= self.restart_pages
    }

    /// The writer's own checkpoint, on its connection between two of its batches. Whatever
    /// comes of it, the writer tries again only once the background has looked at the WAL
    /// again, so at most once per background checkpoint.
    async fn run(&self, store: &Store) {
        self.wal_pages.store(0, Ordering::Relaxed);
        match store.checkpoint().await {
            // Everything copied: the writer's next transaction starts the WAL over.
            Ok(Some((log, done))) if log >= 0 && log == done => {
                tracing::debug!(log, "WAL checkpointed; it starts over");
            }
            // The background checkpoint was running (-1), or a reader still needed old pages.
            Ok(Some((log, done))) => tracing::debug!(log, done, "WAL checkpoint incomplete"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed"),
        }
    }
}

/// Checkpoints `policy.every` so often on `store`, recording the WAL's size for the writer.
///
/// A WAL past `policy.restart_pages` that is all copied and was not written to since the last
/// look is started over and cut to nothing here, while it idles. Left alone, the next write
/// transaction would start it over and its commit would cut the file back to the limit: after
/// 10,000 agents registered (a WAL several times the limit), that made the first fan-out's
/// insert commit several times slower, on the job's path (figures: docs/BENCHMARKS.md,
/// "Design notes behind the figures").
async fn copy_in_background(store: Store, policy: Checkpointing, wal_pages: Arc<AtomicI64>) {
    let mut tick = tokio::time::interval(policy.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = None;
    loop {
        tick.tick().await;
        match store.checkpoint().await {
            Ok(Some((log, done))) if log >= 0 => {
                tracing::trace!(log, done, "WAL checkpoint");
                wal_pages.store(log, Ordering::Relaxed);
                let idle = last_seen.replace(log) == Some(log);
                if idle && log == done && log >= policy.restart_pages {
                    match store.checkpoint_truncate().await {
                        Ok(Some((0, _))) => {
                            tracing::debug!(log, "idle WAL started over and truncated");
                            wal_pages.store(0, Ordering::Relaxed);
                            last_seen = Some(0);
                        }
                        // A write or a reader came first; the next look tries again.
                        Ok(other) => {
                            tracing::debug!(log, ?other, "idle WAL not truncated this time");
                        }
                        Err(err) => tracing::warn!(error = %err, "WAL truncation failed"),
                    }
                }
            }
            // The writer's own checkpoint is running.
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed; retrying in a second");
            }
        }
    }
}

/// Commits writes in one transaction. Acknowledgements and results are applied with one
/// statement per kind ([`Store::mark_delivered_many`], [`Store::store_results_many`]): that is
/// what lets a fan-out's thousands of answers cost a few statements instead of thousands of
/// driver round trips. Jobs whose runs finished are recomputed once each, at the end.
///
/// The writes are applied by kind: every ack, then output in the order it came, the
/// heartbeats (one statement; they touch only agents' rows), then every result. An agent
/// sends a command's frames in that order (ack, output…, response), and each write touches
/// only its own command (or the agent's row), so this keeps each command's own order however
/// many of an agent's writes share the batch: output is stored before the result that closes
/// its run.
/// Commits `writes` in one transaction: what each did, in order, and the rows of the commands
/// they finished.
async fn commit(store: &Store, writes: &[&Write]) -> Result<(Vec<Written>, Vec<command::Model>)> {
    let mut acks = Vec::new();
    let mut finishes = Vec::new();
    let mut outputs = Vec::new();
    let mut heartbeats = Vec::new();
    // An agent's latest heartbeat in the batch is the one that counts: one row each, as the
    // statement may apply only one of several rows that match the same agent.
    let mut latest: HashMap<(&str, &str), &HeartbeatStatus> = HashMap::new();
    for (i, write) in writes.iter().enumerate() {
        match write {
            Write::Delivered { .. } => acks.push(i),
            Write::Finish { .. } => finishes.push(i),
            Write::Output {
                tenant_id,
                agent_id,
                command_id,
                stream,
                seq,
                bytes,
                cap,
            } => {
                let chunk = OutputChunk {
                    command_id,
                    stream: *stream,
                    seq: *seq,
                    bytes,
                };
                outputs.push((i, tenant_id.as_str(), agent_id.as_str(), chunk, *cap));
            }
            Write::Heartbeat {
                tenant_id,
                agent_id,
                status,
            } => {
                latest.insert((tenant_id.as_str(), agent_id.as_str()), status);
                heartbeats.push(i);
            }
        }
    }

    let txn = store.begin().await?;
    let mut results: Vec<Option<Written>> = writes.iter().map(|_| None).collect();
    // An ack whose command's result is in the same batch needs no statement of its own: the
    // result sets the delivery time too. A connection reads on while its writes wait, so a
    // quick command's ack and result usually arrive together, and this halves the rows a
    // fan-out changes.
    let answers: Vec<_> = finishes
        .iter()
        .filter_map(|&i| match writes[i] {
            Write::Finish {
                tenant_id,
                agent_id,
                response,
            } => Some((tenant_id.as_str(), agent_id.as_str(), response)),
            _ => None,
        })
        .collect();
    let answered: HashSet<(&str, &str, String)> = answers
        .iter()
        .map(|(tenant_id, agent_id, response)| {
            (*tenant_id, *agent_id, response.command_id.to_string())
        })
        .collect();
    let keys: Vec<_> = acks
        .iter()
        .filter_map(|&i| match writes[i] {
            Write::Delivered {
                tenant_id,
                agent_id,
                command_id,
            } if !answered.contains(&(
                tenant_id.as_str(),
                agent_id.as_str(),
                command_id.clone(),
            )) =>
            {
                Some((tenant_id.as_str(), agent_id.as_str(), command_id.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut changed = by_id(if keys.is_empty() {
        Vec::new()
    } else {
        txn.mark_delivered_many(&keys).await?
    });
    for &i in &acks {
        let changed = changed.take(writes[i]);
        results[i] = Some(Written::Delivered {
            changed: changed.is_some(),
            job_id: changed.and_then(|run| run.job_id),
        });
    }
    let answered_first = answered_before(writes, &finishes, &outputs);
    for (i, tenant_id, agent_id, chunk, cap) in outputs {
        let answered = answered_first.contains(&i);
        let stored = txn
            .append_output(tenant_id, agent_id, chunk, cap, answered)
            .await?;
        results[i] = Some(Written::Output(stored));
    }
    if !heartbeats.is_empty() {
        for &i in &heartbeats {
            results[i] = Some(Written::Heartbeat);
        }
        let mut beats: Vec<_> = latest
            .into_iter()
            .map(|((tenant_id, agent_id), status)| (tenant_id, agent_id, status))
            .collect();
        // In key order, as `Store::hold_agents` takes the same rows: the update walks its
        // values in turn (one key lookup each), so both lock agents' rows in one order and
        // do not deadlock on them (they did when a lapsed node held its agents again).
        beats.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        txn.record_heartbeats_many(&beats).await?;
    }
    let mut finished = Vec::with_capacity(answers.len());
    if !answers.is_empty() {
        let mut stored = by_id(txn.store_results_many(&answers).await?);
        let mut unchanged = Vec::new();
        for &i in &finishes {
            let model = stored.take(writes[i]);
            results[i] = Some(Written::Finished(if model.is_some() {
                Finish::Stored
            } else {
                unchanged.push(i);
                Finish::Repeat
            }));
            finished.extend(model);
        }
        // Rare: a result that changed nothing is a repeat when the command is the agent's,
        // and foreign otherwise; one read tells which.
        for i in unchanged {
            if let Write::Finish {
                tenant_id,
                agent_id,
                response,
            } = writes[i]
                && !txn
                    .is_agents_command(tenant_id, agent_id, &response.command_id.to_string())
                    .await?
            {
                results[i] = Some(Written::Finished(Finish::Foreign));
            }
        }
    }

    let mut jobs = BTreeSet::new();
    for model in &finished {
        if let Some(job_id) = &model.job_id {
            jobs.insert((model.tenant_id.as_str(), job_id.as_str()));
        }
    }
    // SQLite: the job is recomputed in the batch's transaction. PostgreSQL: after it
    // commits, unlocked, so that several nodes' writers storing one fan-out's results do not
    // take turns on the job's row (`Store::settle_job` says why that is enough). A failure
    // there fails nothing committed: the sweep settles what is left (`Store::unsettled_jobs`).
    let settle_after = store.is_postgres();
    if !settle_after {
        for &(tenant_id, job_id) in &jobs {
            txn.refresh_job_after_results(tenant_id, job_id).await?;
        }
    }
    txn.commit().await?;
    if settle_after {
        for (tenant_id, job_id) in jobs {
            if let Err(err) = store.settle_job(tenant_id, job_id).await {
                tracing::warn!(error = %err, job_id, "could not settle a job after storing its results; the sweep will");
            }
        }
    }
    Ok((results.into_iter().flatten().collect(), finished))
}

/// The output writes (by index) that came after their run's answer in this batch. Output is
/// applied before results, so the store would otherwise take such a chunk as part of a run
/// still open. Only the (few) runs with output in the batch are looked for among its answers.
fn answered_before(
    writes: &[&Write],
    finishes: &[usize],
    outputs: &[(usize, &str, &str, OutputChunk<'_>, u64)],
) -> HashSet<usize> {
    if outputs.is_empty() || finishes.is_empty() {
        return HashSet::new();
    }
    let runs: HashSet<uuid::Uuid> = outputs
        .iter()
        .filter_map(|(_, _, _, chunk, _)| chunk.command_id.parse().ok())
        .collect();
    let mut answered_at: HashMap<uuid::Uuid, (usize, &str, &str)> = HashMap::new();
    for &j in finishes {
        if let Write::Finish {
            tenant_id,
            agent_id,
            response,
        } = writes[j]
            && runs.contains(&response.command_id)
        {
            answered_at
                .entry(response.command_id)
                .or_insert((j, tenant_id, agent_id));
        }
    }
    outputs
        .iter()
        .filter(|(i, tenant_id, agent_id, chunk, _)| {
            chunk
                .command_id
                .parse::<uuid::Uuid>()
                .ok()
                .and_then(|id| answered_at.get(&id))
                .is_some_and(|(j, t, a)| j < i && t == tenant_id && a == agent_id)
        })
        .map(|(i, ..)| *i)
        .collect()
}

/// Changed rows by command id, handed back to the writes that asked for them.
struct ById(HashMap<String, command::Model>);

fn by_id(models: Vec<command::Model>) -> ById {
    ById(models.into_iter().map(|m| (m.id.clone(), m)).collect())
}

impl ById {
    /// The row `write` changed, if it changed one: same command, tenant and agent.
    fn take(&mut self, write: &Write) -> Option<command::Model> {
        let (tenant_id, agent_id, id) = match write {
            Write::Delivered {
                tenant_id,
                agent_id,
                command_id,
            } => (tenant_id, agent_id, command_id.clone()),
            Write::Finish {
                tenant_id,
                agent_id,
                response,
            } => (tenant_id, agent_id, response.command_id.to_string()),
            _ => return None,
        };
        let model = self.0.get(&id)?;
        if &model.tenant_id != tenant_id || &model.agent_id != agent_id {
            return None;
        }
        self.0.remove(&id)
    }
}

/// Counts a committed ack that changed its command (results are counted with their rows, see
/// `run`).
fn count(written: &Written) {
    if let Written::Delivered { changed: true, .. } = written {
        crate::metrics::command_delivered();
    }
}
