//! History retention (CONTRACT.md §14): the cleaner that deletes finished history older than each
//! tenant's window, a little at a time, and gives SQLite's freed space back.
//!
//! The window is the server's `--retention-days` (default 90; 0 keeps everything), or the
//! tenant's own `retention_days` when set (0: the tenant keeps everything). A pass runs every
//! minute on one node at a time, under the `retention` claim (the claim rule's form 3,
//! docs/ARCHITECTURE.md); what it deletes, table by table, is `store::retention`'s.
//!
//! **Result writes never wait long.** Each step deletes at most [`STEP_ROWS`] rows in one
//! transaction, and the cleaner then rests at least as long as the step took, so it holds the
//! database's write lock (SQLite) at most half the time and for a few milliseconds at once. On
//! SQLite the steps run on the writer's own connection (`Writer::store`): a step and the
//! writer's batches of agents' results take turns on it, the batch waiting at most one step,
//! instead of sleeping in SQLite's busy handler. On PostgreSQL the steps run on the pool:
//! deleting old rows locks nothing the writers touch.
//!
//! Time comes from the same [`Clock`] as schedules (`--test-clock-file`), so a test can move
//! the server days ahead; `--retention-seconds` (hidden) shortens the server's window for the
//! benchmark's soak.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Core;
use super::schedules::Clock;
use outpost_store::StoreError;
use outpost_store::retention::Deleted;

/// Rows one step deletes at most, in one transaction.
pub const STEP_ROWS: u64 = 500;
/// Free pages given back per statement (4 MiB of 4 KiB pages).
const RECLAIM_PAGES: i64 = 1024;
/// How often a pass runs, at most.
const EVERY: Duration = Duration::from_secs(60);
/// Steps between two renewals of the claim.
const RENEW_EVERY_STEPS: u32 = 20;
/// The longest window a tenant or the server may set, in days (100 years).
pub const MAX_DAYS: i64 = 36_500;

/// The server's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Days (`--retention-days`); 0 keeps everything.
    Days(u32),
    /// Seconds (`--retention-seconds`, for tests and the benchmark's soak).
    Seconds(u64),
}

impl Window {
    /// How far back history is kept; `None`: forever.
    pub fn duration(self) -> Option<chrono::Duration> {
        match self {
            Self::Days(0) | Self::Seconds(0) => None,
            Self::Days(days) => Some(chrono::Duration::days(i64::from(days))),
            Self::Seconds(s) => Some(chrono::Duration::seconds(
                i64::try_from(s).unwrap_or(i64::MAX / 1000),
            )),
        }
    }
}

/// Where a tenant's history ends as of `now`: its own `retention_days` when set (0: never),
/// else the server's window; `None` when everything is kept.
pub fn cutoff(
    tenant_days: Option<i64>,
    server: Window,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let window = match tenant_days {
        Some(days) if days <= 0 => return None,
        Some(days) => chrono::Duration::days(days.min(MAX_DAYS)),
        None => server.duration()?,
    };
    Some(now - window)
}

/// The cleaner.
#[derive(Clone)]
pub struct Retention {
    core: Arc<Core>,
    window: Window,
    clock: Clock,
}

impl Retention {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            window: Window::Days(90),
            clock: Clock::System,
        }
    }

    /// The same cleaner with the server's window.
    #[must_use]
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// The same cleaner reading the time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The server's window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// How often a pass runs: every minute, or a quarter of a window given in seconds.
    pub fn every(&self) -> Duration {
        match self.window {
            Window::Seconds(s) if s > 0 => Duration::from_secs((s / 4).max(1)).min(EVERY),
            _ => EVERY,
        }
    }

    /// Runs a pass every [`Retention::every`] until shutdown.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.core.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(err) = self.claimed_pass().await {
                        tracing::warn!(error = %err, "retention pass failed; trying again at the next");
                    }
                }
            }
        }
    }

    /// Until when a claim taken now holds.
    fn claim_until(&self) -> DateTime<Utc> {
        outpost_store::now()
            + chrono::Duration::from_std(self.every() * 2).unwrap_or(chrono::Duration::minutes(2))
    }

    /// One pass, if this node holds (or takes) the `retention` claim.
    async fn claimed_pass(&self) -> Result<(), StoreError> {
        let core = &self.core;
        if !core
            .store
            .try_claim("retention", &core.node, self.claim_until())
            .await?
        {
            return Ok(());
        }
        let started = Instant::now();
        let (deleted, pages) = self.pass(self.clock.now()).await?;
        outpost_store::metrics::retention_pass(
            started.elapsed(),
            u64::try_from(pages).unwrap_or(0),
        );
        if deleted.rows() > 0 {
            tracing::info!(
                jobs = deleted.jobs,
                commands = deleted.commands,
                output_chunks = deleted.output_chunks,
                run_digests = deleted.run_digests,
                events = deleted.events,
                deliveries = deleted.deliveries,
                pages_given_back = pages,
                took_ms = started.elapsed().as_millis() as u64,
                "retention deleted history older than its window"
            );
        }
        Ok(())
    }

    /// Deletes every tenant's history older than its window as of `now`, step by step; then,
    /// on SQLite, gives free pages back. Returns what it deleted and the pages given back.
    /// Stops early (without error) at shutdown or when another node took the claim.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<(Deleted, i64), StoreError> {
        let core = &self.core;
        // SQLite: the writer's own connection (see the module doc).
        let store = core.beside_writer();
        let mut total = Deleted::default();
        let mut steps = 0u32;
        for (tenant_id, days) in core.store.retention_windows().await? {
            let Some(cutoff) = cutoff(days, self.window, now) else {
                continue;
            };
            loop {
                if core.shutdown.is_cancelled() {
                    return Ok((total, 0));
                }
                steps += 1;
                if steps.is_multiple_of(RENEW_EVERY_STEPS)
                    && !core
                        .store
                        .try_claim("retention", &core.node, self.claim_until())
                        .await?
                {
                    tracing::info!("another node took the retention claim; stopping this pass");
                    return Ok((total, 0));
                }
                let started = Instant::now();
                let step = store.retention_step(&tenant_id, cutoff, STEP_ROWS).await?;
                record(&step.deleted);
                total.add(&step.deleted);
                if !step.more {
                    break;
                }
                self.rest(started.elapsed()).await;
            }
        }
        let mut pages = 0;
        if total.rows() > 0 {
            loop {
                let started = Instant::now();
                let given = store.reclaim_space(RECLAIM_PAGES).await?;
                pages += given;
                if given == 0 || core.shutdown.is_cancelled() {
                    break;
                }
                self.rest(started.elapsed()).await;
            }
        }
        Ok((total, pages))
    }

    /// Rests as long as the last step took (at least 2 ms), so that the cleaner holds the
    /// database at most half the time.
    async fn rest(&self, took: Duration) {
        let pause = took.max(Duration::from_millis(2));
        tokio::select! {
            () = self.core.shutdown.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Counts what a step deleted, by table.
fn record(deleted: &Deleted) {
    use outpost_store::metrics::retention_deleted;
    retention_deleted("jobs", deleted.jobs);
    retention_deleted("commands", deleted.commands);
    retention_deleted("output_chunks", deleted.output_chunks);
    retention_deleted("run_digests", deleted.run_digests);
    retention_deleted("webhook_attempts", deleted.webhook_attempts);
    retention_deleted("events", deleted.events);
    retention_deleted("deliveries", deleted.deliveries);
    retention_deleted("delivery_attempts", deleted.delivery_attempts);
    retention_deleted("event_streaks", deleted.streaks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_s_own_window_wins_and_zero_keeps_everything() {
        let now = Utc::now();
        let days = |n: i64| Some(now - chrono::Duration::days(n));
        assert_eq!(cutoff(None, Window::Days(90), now), days(90));
        assert_eq!(cutoff(Some(7), Window::Days(90), now), days(7));
        assert_eq!(cutoff(Some(0), Window::Days(90), now), None);
        assert_eq!(cutoff(None, Window::Days(0), now), None);
        assert_eq!(cutoff(Some(30), Window::Days(0), now), days(30));
        assert_eq!(
            cutoff(None, Window::Seconds(60), now),
            Some(now - chrono::Duration::seconds(60))
        );
        assert_eq!(cutoff(Some(1), Window::Seconds(60), now), days(1));
    }
}
