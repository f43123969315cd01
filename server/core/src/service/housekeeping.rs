//! What the server does by itself: expiring commands nobody could deliver, giving up on runs
//! whose agent never came back, forgetting expired sessions and invites, and telling a load
//! balancer whether it can serve.

use std::sync::Arc;
use std::time::Duration;

use super::Core;
use outpost_store::domain::DomainError;

/// Liveness and readiness, and the periodic sweep.
#[derive(Clone)]
pub struct Health {
    core: Arc<Core>,
}

impl Health {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Whether the server can serve: not shutting down, the database answers and takes
    /// writes. Returns the number of agents connected.
    pub async fn ready(&self) -> Result<usize, DomainError> {
        let core = &self.core;
        if core.shutdown.is_cancelled() {
            return Err(DomainError::Unavailable("shutting down".into()));
        }
        core.store
            .ping()
            .await
            .map_err(|e| DomainError::Unavailable(format!("database unavailable: {e}")))?;
        // Reads may work while writes fail (a full disk): agents' reports are then held, not
        // acknowledged, and new jobs refused.
        core.writer.health().status().map_err(|why| {
            DomainError::Unavailable(format!(
                "database writes fail ({why}); agents' reports are held and retried, new jobs are refused"
            ))
        })?;
        Ok(core.bus.connected_count())
    }

    /// The server nodes sharing the database, and which of them answers (`None` on SQLite,
    /// where there is one node and no row).
    pub async fn nodes(
        &self,
        caller: &outpost_store::domain::Caller,
    ) -> Result<(Vec<outpost_store::node::Model>, Option<String>), DomainError> {
        super::access::Access::require(caller, super::access::Action::Nodes)?;
        let core = &self.core;
        let nodes = core.store.list_nodes().await?;
        let this = (core.node != super::LOCAL_NODE).then(|| core.node.clone());
        Ok((nodes, this))
    }

    /// Expires commands whose TTL passed undelivered, marks runs lost whose agent went away
    /// for longer than `lost_after`, and announces agents gone for longer than `offline_after`
    /// (`agent.offline`), every `every` until shutdown.
    pub async fn run_sweeps(self, every: Duration, lost_after: Duration, offline_after: Duration) {
        let mut tick = tokio::time::interval(every);
        let offline = Offline {
            started: chrono::Utc::now(),
            grace: offline_after,
        };
        loop {
            tokio::select! {
                () = self.core.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(err) = self.sweep(every, lost_after, &offline).await {
                        tracing::warn!(error = %err, "housekeeping failed; retrying at the next tick");
                    }
                }
            }
        }
    }

    /// One node at a time sweeps, under the `sweep` claim, which it holds while it keeps
    /// sweeping (two periods at a time) and another node takes over once it stops (see
    /// docs/ARCHITECTURE.md, "Several nodes"). The steps are conditional updates besides, so
    /// that even two sweeps at once would finish each command once.
    async fn sweep(
        &self,
        every: Duration,
        lost_after: Duration,
        offline: &Offline,
    ) -> Result<(), outpost_store::StoreError> {
        let core = &self.core;
        let until = outpost_store::now()
            + chrono::Duration::from_std(every * 2).unwrap_or(chrono::Duration::seconds(60));
        if !core.store.try_claim("sweep", &core.node, until).await? {
            return Ok(());
        }
        // The dashboard's heartbeat chart keeps an hour (`agent_metrics`).
        core.store
            .delete_old_metrics(outpost_store::now() - METRICS_KEPT)
            .await?;
        let expired = core.store.expire_commands().await?;
        if !expired.is_empty() {
            tracing::info!(expired = expired.len(), "commands expired undelivered");
            for (tenant_id, job_id) in core.store.refresh_running_jobs().await? {
                core.finish.job_changed(&tenant_id, &job_id);
            }
            // Callers waiting on them (`?wait`, a queued command) learn the outcome now.
            core.finish.finished(expired);
        }
        // A node that stopped between storing a job's last results and settling it (or
        // whose settling failed) left it `running` with every run final.
        for (tenant_id, job_id) in core.store.unsettled_jobs().await? {
            tracing::info!(job_id, "settling a job whose runs are all final");
            core.store.settle_job(&tenant_id, &job_id).await?;
            core.finish.job_changed(&tenant_id, &job_id);
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(lost_after).unwrap_or(chrono::Duration::hours(1));
        let lost = core.store.mark_lost(cutoff).await?;
        for run in &lost {
            tracing::warn!(run_id = %run.id, agent_id = %run.agent_id, "run lost: its agent did not come back");
        }
        core.finish.finished(lost);
        self.announce_offline(offline).await?;
        // Refresh tokens and invites past their expiry answer nothing any more; a retired
        // token is kept until then, for reuse detection.
        let (sessions, invites) = core.store.delete_expired_sessions().await?;
        if sessions + invites > 0 {
            tracing::debug!(
                sessions,
                invites,
                "deleted expired refresh tokens and invites"
            );
        }
        // Sign-in tickets of a second factor (CONTRACT.md §18) past their 5 minutes.
        core.store.delete_expired_login_tickets().await?;
        // Single sign-ons that were never finished (CONTRACT.md §18).
        let sign_ins = core.store.delete_expired_oidc_logins().await?;
        if sign_ins > 0 {
            tracing::debug!(sign_ins, "deleted expired single sign-ons");
        }
        Ok(())
    }

    /// Records `agent.offline` for agents gone longer than the grace (`store::presence`).
    async fn announce_offline(&self, offline: &Offline) -> Result<(), outpost_store::StoreError> {
        let now = chrono::Utc::now();
        let grace =
            chrono::Duration::from_std(offline.grace).unwrap_or(chrono::Duration::minutes(1));
        // After this node's start, agents that were gone before it get the agents' longest
        // reconnect backoff and the grace to come back: a server restart (or a whole cluster's)
        // is not announced as a fleet going offline and online again.
        let not_before =
            (now < offline.started + RECONNECT_BACKOFF_CAP + grace).then_some(offline.started);
        for _ in 0..OFFLINE_BATCHES_PER_SWEEP {
            let events = self
                .core
                .store
                .record_agents_offline(now - grace, not_before)
                .await?;
            if events.is_empty() {
                break;
            }
            for event in &events {
                tracing::info!(agent_id = %event.subject_id, hostname = %event.subject_name, "agent offline");
            }
            self.core.finish.events_recorded();
        }
        Ok(())
    }
}

/// The agents' longest wait between two connection attempts (`agent::session`, network
/// backoff): every agent that was connected when a server stopped tries again within this.
const RECONNECT_BACKOFF_CAP: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Batches of agents announced offline per sweep at most (`store::presence` batch size): a
/// fleet cut off at once is announced over a few sweeps.
const OFFLINE_BATCHES_PER_SWEEP: usize = 10;
/// How much of agents' heartbeat metrics is kept for the dashboard's chart.
pub const METRICS_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// When agents are judged offline.
struct Offline {
    /// This node's start.
    started: chrono::DateTime<chrono::Utc>,
    /// How long an agent may be gone before it is announced.
    grace: Duration,
}
