//! The one path by which commands and runs finish.
//!
//! Whatever finished them (an agent's result committed by the writer, a cancel, an expiry,
//! an agent that never came back, a refusal when an agent reconnects), committed final rows
//! come here and only here: they are counted, handed to the [`Bus`] (which wakes callers
//! waiting on them and job event streams on every node), and the webhook and integration
//! workers are told to look for jobs and events to send (a job's end event is committed with
//! its last result: `store::integrations`). Nothing else calls those directly, so a new way of finishing
//! cannot forget one of them, and a new consumer (events, integrations) is added here once.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::bus::Bus;
use crate::store::command;

/// The finish path (cheap to clone).
#[derive(Clone)]
pub struct Finish {
    bus: Arc<dyn Bus>,
    webhooks_due: Arc<Notify>,
    events_due: Arc<Notify>,
}

impl Finish {
    /// Finishes through `bus`, waking the webhook worker with `webhooks_due` and the
    /// integrations' with `events_due`.
    pub fn new(bus: Arc<dyn Bus>, webhooks_due: Arc<Notify>, events_due: Arc<Notify>) -> Self {
        Self {
            bus,
            webhooks_due,
            events_due,
        }
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
            let state = crate::metrics::final_state(&run.state);
            match states.iter_mut().find(|(s, _)| *s == state) {
                Some((_, n)) => *n += 1,
                None => states.push((state, 1)),
            }
        }
        for (state, n) in states {
            crate::metrics::commands_finished(state, n);
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
