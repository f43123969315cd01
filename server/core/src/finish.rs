//! The one path by which commands and runs finish.
//!
//! Whatever finished them (an agent's result committed by the writer, a cancel, an expiry,
//! an agent that never came back, a refusal when an agent reconnects), committed final rows
//! come here and only here: they are counted, handed to the [`Bus`] (which wakes callers
//! waiting on them and job event streams on every node), and the webhook and integration
//! workers are told to look for jobs and events to send (a job's end event is committed with
//! its last result: `store::integrations`), and the digester to fingerprint the runs' output. Nothing else calls those directly, so a new way of finishing
//! cannot forget one of them, and a new consumer (events, integrations) is added here once.

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
    /// Ids of finished runs of jobs, for the digester (`service::digests`).
    digests: mpsc::Sender<Vec<String>>,
    digest_queue: Arc<Mutex<Option<mpsc::Receiver<Vec<String>>>>>,
}

/// Batches of finished runs queued for the digester. A full queue drops a batch: the
/// digester's sweep finds those runs a few seconds later.
const DIGEST_QUEUE: usize = 64;

impl Finish {
    /// Finishes through `bus`, waking the webhook worker with `webhooks_due` and the
    /// integrations' with `events_due`.
    pub fn new(bus: Arc<dyn Bus>, webhooks_due: Arc<Notify>, events_due: Arc<Notify>) -> Self {
        let (digests, queue) = mpsc::channel(DIGEST_QUEUE);
        Self {
            bus,
            webhooks_due,
            events_due,
            digests,
            digest_queue: Arc::new(Mutex::new(Some(queue))),
        }
    }

    /// The ids of finished runs of jobs, batch by batch, for the digester
    /// (`service::digests`); handed out once.
    pub fn digest_queue(&self) -> Option<mpsc::Receiver<Vec<String>>> {
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
            let ids: Vec<String> = runs
                .iter()
                .filter(|r| r.job_id.is_some())
                .map(|r| r.id.clone())
                .collect();
            if self.digests.try_send(ids).is_err() {
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
