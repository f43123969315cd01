//! The one path by which commands and runs finish.
//!
//! Whatever finished them (an agent's result committed by the writer, a cancel, an expiry,
//! an agent that never came back, a refusal when an agent reconnects), committed final rows
//! come here and only here: they are counted, handed to the [`Bus`] (which wakes callers
//! waiting on them and job event streams on every node), and the webhook and integration
//! workers are told to look for jobs and events to send (a job's end event is committed with
//! its last result: `store::integrations`), and the digester to fingerprint the runs' output
//! (it is handed the rows as committed, so that it does not read them again). Nothing else
//! calls those directly, so a new way of finishing cannot forget one of them, and a new
//! consumer (events, integrations) is added here once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::bus::Bus;
use outpost_store::command;

/// The finish path (cheap to clone).
#[derive(Clone)]
pub struct Finish {
    bus: Arc<dyn Bus>,
    webhooks_due: Arc<Notify>,
    events_due: Arc<Notify>,
    /// Finished runs of jobs, their rows as committed (without their parameters), with the
    /// batch's weight, for the digester (`service::digests`).
    digests: mpsc::UnboundedSender<(Vec<command::Model>, usize)>,
    /// The weight of what is in `digests` and not yet taken by the digester (the queue's
    /// bound).
    digests_queued: Arc<AtomicUsize>,
    digest_queue: Arc<Mutex<Option<DigestQueue>>>,
}

/// Most finished runs queued for the digester, in [`ROW_WEIGHT`]s: a row weighs that plus its
/// result's JSON, so the queue holds at most 32 MiB of rows, whatever agents answer (a result
/// may be up to a frame, 1 MiB). A batch that would go over is not queued: the digester's
/// sweep finds those runs a few seconds later.
const DIGEST_QUEUE_WEIGHT: usize = 32_768 * ROW_WEIGHT;
/// What a queued row weighs besides its result: its fixed fields and strings, roughly.
const ROW_WEIGHT: usize = 1024;

/// A queued row's weight: [`ROW_WEIGHT`] and its result's JSON length (counted, not built).
fn weight(run: &command::Model) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    if let Some(result) = &run.result {
        // Writing to a counter cannot fail.
        let _ = serde_json::to_writer(&mut count, result);
    }
    ROW_WEIGHT + count.0
}

/// Finished runs of jobs on their way to the digester: the rows as committed, batch by batch
/// (the digester reads only their output, not the rows again).
#[derive(Debug)]
pub struct DigestQueue {
    runs: mpsc::UnboundedReceiver<(Vec<command::Model>, usize)>,
    queued: Arc<AtomicUsize>,
}

impl DigestQueue {
    /// The next batch; `None` once the finish path is gone.
    pub async fn recv(&mut self) -> Option<Vec<command::Model>> {
        let (batch, weight) = self.runs.recv().await?;
        self.queued.fetch_sub(weight, Ordering::Relaxed);
        Some(batch)
    }

    /// The next batch if one is queued.
    pub fn try_recv(&mut self) -> Option<Vec<command::Model>> {
        let (batch, weight) = self.runs.try_recv().ok()?;
        self.queued.fetch_sub(weight, Ordering::Relaxed);
        Some(batch)
    }
}

impl Finish {
    /// Finishes through `bus`, waking the webhook worker with `webhooks_due` and the
    /// integrations' with `events_due`.
    pub fn new(bus: Arc<dyn Bus>, webhooks_due: Arc<Notify>, events_due: Arc<Notify>) -> Self {
        let (digests, runs) = mpsc::unbounded_channel();
        let digests_queued = Arc::new(AtomicUsize::new(0));
        let queue = DigestQueue {
            runs,
            queued: digests_queued.clone(),
        };
        Self {
            bus,
            webhooks_due,
            events_due,
            digests,
            digests_queued,
            digest_queue: Arc::new(Mutex::new(Some(queue))),
        }
    }

    /// The finished runs of jobs, batch by batch, for the digester (`service::digests`);
    /// handed out once.
    pub fn digest_queue(&self) -> Option<DigestQueue> {
        self.digest_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Announces runs whose final state is committed. Called once per committed batch
    /// (a writer transaction, a sweep, a cancel), never before the commit.
    pub fn finished(&self, runs: Vec<command::Model>) {
        if runs.is_empty() {
            return;
        }
        let mut states: Vec<(&'static str, u64)> = Vec::new();
        let mut of_jobs = false;
        for run in &runs {
            of_jobs |= run.job_id.is_some();
            let state = outpost_store::metrics::final_state(&run.state);
            match states.iter_mut().find(|(s, _)| *s == state) {
                Some((_, n)) => *n += 1,
                None => states.push((state, 1)),
            }
        }
        for (state, n) in states {
            outpost_store::metrics::commands_finished(state, n);
        }
        if of_jobs {
            // The rows as committed, so that the digester does not read them back by id (a
            // fan-out's 40,000: docs/BENCHMARKS.md, "The server in crates").
            // Their parameters are not digested: not kept while queued.
            let mut n = 0;
            let of_jobs: Vec<command::Model> = runs
                .iter()
                .filter(|r| r.job_id.is_some())
                .map(|r| {
                    n += weight(r);
                    command::Model {
                        data: serde_json::Value::Null,
                        ..r.clone()
                    }
                })
                .collect();
            let queued = self.digests_queued.fetch_add(n, Ordering::Relaxed) + n;
            if queued > DIGEST_QUEUE_WEIGHT || self.digests.send((of_jobs, n)).is_err() {
                self.digests_queued.fetch_sub(n, Ordering::Relaxed);
                tracing::debug!("digest queue full: the digester's sweep will find these runs");
            }
        }
        self.bus.finished(runs);
        if of_jobs {
            self.webhooks_due.notify_one();
            self.events_due.notify_one();
        }
    }

    /// Announces events committed outside a batch of results (a job over at its creation, an
    /// agent gone or back): the integrations' worker sends them now rather than at its next
    /// poll.
    pub fn events_recorded(&self) {
        self.events_due.notify_one();
    }

    /// Announces a change to a job that is not a final result (a run started, output
    /// stored, a job's state recomputed): its event streams re-read it.
    pub fn job_changed(&self, tenant_id: &str, job_id: &str) {
        self.bus.job_changed(tenant_id, job_id);
    }
}

#[cfg(test)]
mod tests {
    use outpost_protocol::AgentId;
    use outpost_store::domain::Transport;

    use super::*;
    use crate::bus::{Connection, Delivery, Waiters};

    /// A bus that keeps the ids of the runs it was told finished.
    #[derive(Default)]
    struct Told {
        finished: Mutex<Vec<String>>,
        waiters: Waiters,
    }

    impl Bus for Told {
        fn deliver(&self, _: &command::Model) -> Delivery {
            Delivery::Offline
        }
        fn cancel(&self, _: &command::Model) -> Delivery {
            Delivery::Offline
        }
        fn is_online(&self, _: &str, _: AgentId) -> bool {
            false
        }
        fn connections(&self, _: &str) -> Vec<Connection> {
            Vec::new()
        }
        fn count_by_transport(&self) -> Vec<(Transport, usize)> {
            Vec::new()
        }
        fn connected_count(&self) -> usize {
            0
        }
        fn disconnect_key(&self, _: &str, _: &str, _: &str) -> usize {
            0
        }
        fn disconnect_agent(&self, _: &str, _: AgentId, _: &str) {}
        fn finished(&self, runs: Vec<command::Model>) {
            let mut told = self.finished.lock().expect("not poisoned");
            told.extend(runs.into_iter().map(|r| r.id));
        }
        fn job_changed(&self, _: &str, _: &str) {}
        fn waiters(&self) -> &Waiters {
            &self.waiters
        }
    }

    fn run(id: &str, job: Option<&str>) -> command::Model {
        command::Model {
            state: outpost_store::state::SUCCEEDED.into(),
            result: Some(serde_json::json!({"pong": id})),
            job_id: job.map(str::to_owned),
            ..outpost_store::pending_command("t", id, "a")
        }
    }

    fn finish() -> (Finish, Arc<Told>) {
        let told = Arc::new(Told::default());
        let finish = Finish::new(
            told.clone(),
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
        );
        (finish, told)
    }

    #[test]
    fn the_digester_is_handed_the_rows_of_jobs_runs_as_committed() {
        let (finish, told) = finish();
        let mut queue = finish.digest_queue().expect("handed out once");
        assert!(finish.digest_queue().is_none());
        let committed = vec![run("r1", Some("j")), run("c1", None), run("r2", Some("j"))];
        finish.finished(committed.clone());
        let handed = queue.try_recv().expect("a batch");
        // Without their parameters, which the digester does not read.
        let without_data = |r: &command::Model| command::Model {
            data: serde_json::Value::Null,
            ..r.clone()
        };
        assert_eq!(
            handed,
            vec![without_data(&committed[0]), without_data(&committed[2])]
        );
        assert!(queue.try_recv().is_none());
        // Everything finished is still announced to the bus, the standalone command too.
        assert_eq!(
            *told.finished.lock().expect("not poisoned"),
            ["r1", "c1", "r2"]
        );
    }

    #[test]
    fn a_batch_over_the_bound_is_left_to_the_sweep_and_the_bus_still_hears_of_it() {
        let (finish, told) = finish();
        let mut queue = finish.digest_queue().expect("handed out once");
        // Runs whose results are 1 MiB, as large as a frame lets an agent send: the queue
        // holds 31 of them, not 32,768.
        let big = |i: usize| command::Model {
            result: Some(serde_json::json!({"x": "y".repeat(1 << 20)})),
            ..run(&format!("big{i}"), Some("j"))
        };
        let each = weight(&big(0));
        let fits = DIGEST_QUEUE_WEIGHT / each;
        assert_eq!(fits, 31);
        finish.finished((0..fits).map(big).collect());
        // One more would go over: not queued.
        finish.finished(vec![big(fits)]);
        let lens: Vec<usize> = std::iter::from_fn(|| queue.try_recv())
            .map(|b| b.len())
            .collect();
        assert_eq!(lens, [fits]);
        // Taken batches free their room.
        finish.finished(vec![big(fits + 1)]);
        assert_eq!(queue.try_recv().map(|b| b.len()), Some(1));
        // Small runs weigh a row each.
        let small = (0..100).map(|i| run(&format!("r{i}"), Some("j"))).collect();
        finish.finished(small);
        assert_eq!(queue.try_recv().map(|b| b.len()), Some(100));
        assert_eq!(
            told.finished.lock().expect("not poisoned").len(),
            fits + 2 + 100
        );
    }
}
