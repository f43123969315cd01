//! The bus seam: how the rest of the server reaches agents and hears about results, wherever
//! the agent and the listener are.
//!
//! Two things cross it. *Deliver*: a command is committed to the store, then handed to
//! [`Bus::deliver`], which sends its frame to the agent's connection (on this node in the
//! in-process implementation, the hub; on the node that holds the agent once several nodes
//! share PostgreSQL, woken with `NOTIFY`). *Finished*: results committed by any node reach
//! every caller waiting for them and every job event stream, through [`Bus::finished`] and
//! [`Bus::job_changed`]; only the finish path (`crate::finish`) calls those.
//!
//! Both are hints over the store, never the truth: a frame may be lost with its connection
//! (the agent gets the command again when it reconnects), and a waiter that missed a wake-up
//! reads the store at its deadline. So an implementation may drop, batch or repeat, but must
//! never report something the store does not hold. [`Waiters`] is the part every
//! implementation shares: the callers and streams waiting on this node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use outpost_protocol::{AgentId, CommandId};
use tokio::sync::{Notify, broadcast, oneshot};

use outpost_store::command;
use outpost_store::domain::Transport;

/// What became of a command handed to [`Bus::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued on the agent's connection.
    Queued,
    /// The agent is not connected; it gets the command from the store when it connects.
    Offline,
    /// The agent's queue was full; its connection is being closed and the command will be
    /// sent again from the store when it reconnects.
    Dropped,
}

/// An agent connected now.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The agent.
    pub agent_id: AgentId,
    /// The agent key it authenticated with.
    pub key_id: String,
    /// When it connected.
    pub connected_at: chrono::DateTime<chrono::Utc>,
    /// How.
    pub transport: Transport,
}

/// Reaching agents and telling listeners, wherever they are (see the module's docs).
pub trait Bus: Send + Sync + 'static {
    /// Sends a stored command's frame to its agent. The command must be committed first.
    fn deliver(&self, command: &command::Model) -> Delivery;
    /// Sends a new job's stored runs to their agents. One call for the whole job, so that a
    /// bus reaching agents elsewhere can tell the other nodes once about the job instead of
    /// once about each of its runs.
    fn deliver_job(&self, runs: &[&command::Model]) {
        for run in runs {
            self.deliver(run);
        }
    }
    /// Asks the agent running a stored command to stop it.
    fn cancel(&self, command: &command::Model) -> Delivery;
    /// Whether the agent is connected.
    fn is_online(&self, tenant_id: &str, agent_id: AgentId) -> bool;
    /// Whether the agent is connected to this process (not to another node).
    fn is_connected_here(&self, tenant_id: &str, agent_id: AgentId) -> bool {
        self.is_online(tenant_id, agent_id)
    }
    /// Whether the agent of a row just read from the store is connected: the row says which
    /// node holds it when several share the database, which is fresher than anything a node
    /// remembers about the others.
    fn is_agent_online(&self, agent: &outpost_store::agent::Model) -> bool {
        agent
            .id
            .parse()
            .is_ok_and(|id| self.is_online(&agent.tenant_id, id))
    }
    /// The tenant's connected agents.
    fn connections(&self, tenant_id: &str) -> Vec<Connection>;
    /// Connected agents per transport, every transport listed (for metrics).
    fn count_by_transport(&self) -> Vec<(Transport, usize)>;
    /// Connected agents, all transports (for readiness, which a load balancer asks often).
    fn connected_count(&self) -> usize;
    /// Closes every connection made with an agent key (disabled, deleted, regenerated).
    fn disconnect_key(&self, tenant_id: &str, key_id: &str, reason: &str) -> usize;
    /// Closes one agent's connection (forgotten, its key changed).
    fn disconnect_agent(&self, tenant_id: &str, agent_id: AgentId, reason: &str);
    /// Hands committed final results to their waiters and job streams. Only the finish path
    /// (`crate::finish::Finish`) calls this.
    fn finished(&self, runs: Vec<command::Model>);
    /// Tells job event streams that a job changed (a run started, output arrived).
    fn job_changed(&self, tenant_id: &str, job_id: &str);
    /// Callers and streams waiting on this node.
    fn waiters(&self) -> &Waiters;
}

/// Something about a job changed (a run's state, new output). Carries no data: listeners read
/// what changed from the store, so a slow listener costs no memory here. Empty ids mean any
/// job may have changed ([`Waiters::everything_changed`]).
#[derive(Debug, Clone)]
pub struct JobChanged {
    /// The job's tenant.
    pub tenant_id: String,
    /// The job.
    pub job_id: String,
}

impl JobChanged {
    /// Whether this concerns `job_id` of `tenant_id`.
    pub fn concerns(&self, tenant_id: &str, job_id: &str) -> bool {
        (self.job_id.is_empty() && self.tenant_id.is_empty())
            || (self.job_id == job_id && self.tenant_id == tenant_id)
    }
}

/// Notifications kept for listeners that fall behind; past this they re-read the store.
const JOB_EVENTS: usize = 1024;

/// Callers waiting for command results, and job event streams, on this node.
#[derive(Debug)]
pub struct Waiters {
    map: DashMap<CommandId, Vec<Interest>>,
    job_events: broadcast::Sender<JobChanged>,
}

impl Default for Waiters {
    fn default() -> Self {
        Self::new()
    }
}

impl Waiters {
    /// Nobody waiting yet.
    pub fn new() -> Self {
        Self {
            map: DashMap::new(),
            job_events: broadcast::channel(JOB_EVENTS).0,
        }
    }

    /// Tells job listeners that a job changed.
    pub fn job_changed(&self, tenant_id: &str, job_id: &str) {
        // No listener is not an error.
        let _ = self.job_events.send(JobChanged {
            tenant_id: tenant_id.to_owned(),
            job_id: job_id.to_owned(),
        });
    }

    /// Tells every job listener to read its job again: this node may have missed changes (its
    /// notifications from other nodes were interrupted).
    pub fn everything_changed(&self) {
        let _ = self.job_events.send(JobChanged {
            tenant_id: String::new(),
            job_id: String::new(),
        });
    }

    /// Whether any job event stream listens here.
    pub fn has_job_listeners(&self) -> bool {
        self.job_events.receiver_count() > 0
    }

    /// Whether anyone here waits for this command's result.
    pub fn watching(&self, command_id: &CommandId) -> bool {
        self.map.contains_key(command_id)
    }

    /// Every command someone here waits for.
    pub fn watched(&self) -> Vec<CommandId> {
        self.map.iter().map(|e| *e.key()).collect()
    }

    /// Listens for job changes.
    pub fn job_events(&self) -> broadcast::Receiver<JobChanged> {
        self.job_events.subscribe()
    }

    /// Registers interest in a command's stored result. Register before the command can
    /// finish (that is, before it is pushed) so that the result cannot slip by.
    pub fn watch(&self, command_id: CommandId) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        self.map
            .entry(command_id)
            .or_default()
            .push(Interest::One(tx));
        Waiter {
            waiters: self,
            command_id,
            rx,
        }
    }

    /// Registers interest in many commands' results at once (a job's runs, for `?wait`),
    /// under the same rule as [`watch`](Self::watch). One collector takes every result and
    /// wakes its caller once, when the last arrives: a waiter per run would cost a channel,
    /// a future and a wake-up of the caller's task per result.
    pub fn watch_all(&self, command_ids: Vec<CommandId>) -> ManyWaiter<'_> {
        let collector = Arc::new(Collector {
            collected: Mutex::new(Collected {
                runs: vec![None; command_ids.len()],
                missing: command_ids.len(),
            }),
            done: Notify::new(),
            dropped: AtomicBool::new(false),
        });
        for (slot, id) in command_ids.iter().enumerate() {
            self.map
                .entry(*id)
                .or_default()
                .push(Interest::Many(collector.clone(), slot));
        }
        ManyWaiter {
            waiters: self,
            command_ids,
            collector,
        }
    }

    /// Hands stored results to everyone waiting for them here, and tells job listeners once
    /// per job of the batch.
    ///
    /// Results come in batches (a writer's transaction, an expiry sweep, a cancel), and a
    /// fan-out's batch holds hundreds of runs of one job: one event per run would fill the
    /// followers' buffer within a batch or two (they then skip to the job's latest state
    /// anyway) and cost the writer's thread two allocations and the channel's lock per run.
    /// Each result is moved to its last waiter, not copied.
    pub fn wake(&self, runs: Vec<command::Model>) {
        let mut jobs: Vec<(String, String)> = Vec::new();
        for run in &runs {
            if let Some(job_id) = &run.job_id
                && !jobs.iter().any(|(t, j)| j == job_id && *t == run.tenant_id)
            {
                jobs.push((run.tenant_id.clone(), job_id.clone()));
            }
        }
        for run in runs {
            let Ok(id) = run.id.parse::<CommandId>() else {
                continue;
            };
            let Some((_, mut interests)) = self.map.remove(&id) else {
                continue;
            };
            let last = interests.pop();
            for interest in interests {
                interest.give(run.clone());
            }
            if let Some(last) = last {
                last.give(run);
            }
        }
        for (tenant_id, job_id) in jobs {
            self.job_changed(&tenant_id, &job_id);
        }
    }

    /// Drops the closed interests in `command_id`'s entry, and the entry once none is left.
    fn withdraw(&self, command_id: &CommandId) {
        self.map.remove_if_mut(command_id, |_, interests| {
            interests.retain(|i| !i.is_closed());
            interests.is_empty()
        });
    }
}

/// Someone waiting for a command's result.
#[derive(Debug)]
enum Interest {
    /// A [`Waiter`].
    One(oneshot::Sender<command::Model>),
    /// A [`ManyWaiter`], at this slot of its collector.
    Many(Arc<Collector>, usize),
}

impl Interest {
    /// Hands `run`'s result to its waiter.
    fn give(self, run: command::Model) {
        match self {
            Self::One(tx) => {
                let _ = tx.send(run);
            }
            Self::Many(collector, slot) => collector.put(slot, run),
        }
    }

    /// Whether its waiter is gone.
    fn is_closed(&self) -> bool {
        match self {
            Self::One(tx) => tx.is_closed(),
            Self::Many(collector, _) => collector.dropped.load(Ordering::Acquire),
        }
    }
}

/// Where a [`ManyWaiter`]'s results are gathered.
#[derive(Debug)]
struct Collector {
    collected: Mutex<Collected>,
    /// Notified once, when nothing is missing any more.
    done: Notify,
    /// Set when the waiter is dropped.
    dropped: AtomicBool,
}

#[derive(Debug)]
struct Collected {
    /// One slot per command, in the order the waiter was given them.
    runs: Vec<Option<command::Model>>,
    missing: usize,
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put(&self, slot: usize, model: command::Model) {
        let mut collected = self.lock();
        let Some(place) = collected.runs.get_mut(slot) else {
            return;
        };
        if place.is_none() {
            *place = Some(model);
            collected.missing -= 1;
            if collected.missing == 0 {
                // A permit is kept if the waiter is not waiting yet.
                self.done.notify_one();
            }
        }
    }
}

/// A caller waiting for many commands' results (see [`Waiters::watch_all`]). Dropping it
/// withdraws the interest.
pub struct ManyWaiter<'a> {
    waiters: &'a Waiters,
    command_ids: Vec<CommandId>,
    collector: Arc<Collector>,
}

impl ManyWaiter<'_> {
    /// Waits for every result, with no deadline of its own; returns them in the order the
    /// commands were given.
    pub async fn results(&self) -> Vec<command::Model> {
        loop {
            {
                let mut collected = self.collector.lock();
                if collected.missing == 0 {
                    let runs = std::mem::take(&mut collected.runs);
                    // Sized up front: `flatten`'s size hint is no help, and a big job's rows
                    // would be reallocated and copied many times.
                    let mut results = Vec::with_capacity(runs.len());
                    results.extend(runs.into_iter().flatten());
                    return results;
                }
            }
            self.collector.done.notified().await;
        }
    }
}

impl Drop for ManyWaiter<'_> {
    fn drop(&mut self) {
        if self.collector.lock().missing == 0 {
            // Every entry was taken out as its result arrived.
            return;
        }
        self.collector.dropped.store(true, Ordering::Release);
        for id in &self.command_ids {
            self.waiters.withdraw(id);
        }
    }
}

/// A caller waiting for one command's result. Dropping it withdraws the interest.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    command_id: CommandId,
    rx: oneshot::Receiver<command::Model>,
}

impl Waiter<'_> {
    /// Waits up to `timeout` for the stored result.
    pub async fn wait(self, timeout: Duration) -> Option<command::Model> {
        tokio::time::timeout(timeout, self.result()).await.ok()?
    }

    /// Waits for the stored result with no deadline of its own, for a caller that waits on
    /// many commands under one deadline (one timer instead of one per command).
    pub async fn result(mut self) -> Option<command::Model> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // Close our receiver so that its sender counts as closed, then drop closed senders and
        // the entry itself once nobody else waits.
        self.rx.close();
        self.waiters.withdraw(&self.command_id);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn finished_run(id: CommandId) -> command::Model {
        let now = Utc::now();
        command::Model {
            state: outpost_store::state::SUCCEEDED.into(),
            delivered_at: Some(now),
            finished_at: Some(now),
            success: Some(true),
            result: Some(serde_json::json!({"pong": true})),
            ..outpost_store::pending_command("t", &id.to_string(), "a")
        }
    }

    /// A waiter on many commands gets every result once, in the order it gave the commands
    /// (whatever order they finish in, and whether it was waiting yet or not), beside a
    /// single-command waiter on one of them; a repeat changes nothing.
    #[tokio::test]
    async fn a_waiter_on_many_commands_gets_every_result_in_its_order() {
        let hub = Waiters::new();
        let ids: Vec<CommandId> = (0..5).map(|_| CommandId::new_v4()).collect();
        let many = hub.watch_all(ids.clone());
        let one = hub.watch(ids[2]);
        for i in [3, 0, 2, 2] {
            hub.wake(vec![finished_run(ids[i])]);
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), many.results()).await;
        assert!(waiting.is_err(), "two results are still missing");
        assert_eq!(
            one.wait(Duration::from_secs(5)).await.map(|r| r.id),
            Some(ids[2].to_string())
        );
        for i in [4, 1] {
            hub.wake(vec![finished_run(ids[i])]);
        }
        let results = tokio::time::timeout(Duration::from_secs(5), many.results())
            .await
            .expect("every result arrived");
        let got: Vec<String> = results.into_iter().map(|r| r.id).collect();
        let want: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(got, want);
        drop(many);
        assert!(hub.map.is_empty(), "nothing is left behind");
    }

    /// Dropping a waiter on many commands (a `?wait` that timed out, a caller that hung up)
    /// withdraws its interest in the commands still open, and leaves other waiters' alone.
    #[tokio::test]
    async fn a_dropped_waiter_on_many_commands_withdraws() {
        let hub = Waiters::new();
        let ids: Vec<CommandId> = (0..3).map(|_| CommandId::new_v4()).collect();
        let many = hub.watch_all(ids.clone());
        let one = hub.watch(ids[1]);
        hub.wake(vec![finished_run(ids[0])]);
        drop(many);
        assert_eq!(hub.map.len(), 1, "only the single waiter's entry is left");
        hub.wake(vec![finished_run(ids[1])]);
        assert!(one.wait(Duration::from_secs(5)).await.is_some());
        assert!(hub.map.is_empty());
    }

    /// A batch of results tells job listeners once per job, however many of its runs it
    /// holds, and every result still reaches its waiter (two waiters on one run: both).
    #[tokio::test]
    async fn a_batch_of_results_is_one_event_per_job() {
        let hub = Waiters::new();
        let mut events = hub.job_events();
        let ids: Vec<CommandId> = (0..5).map(|_| CommandId::new_v4()).collect();
        let first = hub.watch(ids[0]);
        let again = hub.watch(ids[0]);
        let many = hub.watch_all(ids.clone());
        let runs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| command::Model {
                job_id: match i {
                    0..=2 => Some("job-a".into()),
                    3 => Some("job-b".into()),
                    _ => None,
                },
                ..finished_run(*id)
            })
            .collect();
        hub.wake(runs);
        let mut told = Vec::new();
        while let Ok(event) = events.try_recv() {
            told.push(event.job_id);
        }
        assert_eq!(told, ["job-a", "job-b"]);
        for waiter in [first, again] {
            let run = waiter.wait(Duration::from_secs(5)).await.expect("a result");
            assert_eq!(run.id, ids[0].to_string());
        }
        let results = tokio::time::timeout(Duration::from_secs(5), many.results())
            .await
            .expect("every result arrived");
        assert_eq!(results.len(), ids.len());
        drop(many);
        assert!(hub.map.is_empty(), "nothing is left behind");
    }
}
