//! The loop that fires schedules: a background worker, kept apart from the requests the
//! service answers (`mod.rs`). [`Schedules::run`] wakes at the earliest due schedule; each pass
//! ([`Schedules::fire_due`]) claims the due schedules by batches, works out each one's fires and
//! writes a batch's jobs together.
//!
//! When the loop gets to a schedule, each fire that passed is either *late* (less than the
//! grace, 60 s, ago: it runs now, as its own job) or *missed* (older: the server was down or
//! could not fire it). Missed fires follow the schedule's `missed` policy: `skip` records one
//! `schedule.missed` event saying how many; `run_once` records it too and runs one catch-up job
//! (`catch_up: true`, `scheduled_for` the first missed instant). The next fire is then the
//! first instant after now: whatever passed is never fired again, so a clock set back does not
//! repeat fires (the schedule waits for its stored next fire), and one set forward makes the
//! skipped span "missed".

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::audit::record_of;
use super::super::jobs::{JobWithRuns, Lookups};
use super::{EVENT_MISSED, EVENT_SKIPPED, Schedules};
use crate::cron::Recurrence;
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, ConcurrencyPolicy, DomainError, JobState,
    MissedPolicy, Principal, Role, Scopes,
};
use outpost_store::{Advance, Fire, FireJob, NewEvent, NewJob, job, schedule};

/// Schedules claimed at once: a minute when 10,000 fall due is one pass and one write, so no
/// fire waits behind the results of the fires before it (the writer takes them in turn).
const CLAIM_BATCH: u64 = 10_000;
/// Missed fires counted at most (a year of `@every 10s` is 3 million).
const MAX_COUNTED: usize = 100_000;

/// What one pass of the loop did (for tests and logs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FireReport {
    /// Schedules handled.
    pub schedules: usize,
    /// Jobs created (late fires, catch-ups).
    pub jobs: usize,
    /// Fires missed (counted).
    pub missed: usize,
    /// Fires skipped by `forbid`.
    pub skipped: usize,
}

impl Schedules {
    /// Fires every schedule due at `now`, as this node; the loop calls it with the clock's
    /// time, tests with the time they choose.
    ///
    /// A pass claims due schedules by batches and fires each batch together: what the jobs
    /// read about their tenants is read once for the pass, and a batch's jobs, runs, audit
    /// rows, events and advances are one write (CONTRACT.md §8: 10,000 fires in one minute). The few
    /// schedules whose `concurrency` must look at a job made by this very pass (`forbid` or
    /// `replace` with a job still running, or several fires at once) are fired one by one
    /// after their batch, as before.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<FireReport, DomainError> {
        let mut report = FireReport::default();
        let mut lookups = Lookups::default();
        loop {
            self.core.writable()?;
            let claimed = self
                .core
                .store
                .claim_due_schedules(&self.core.node, now, CLAIM_BATCH)
                .await?;
            if claimed.is_empty() {
                return Ok(report);
            }
            let batch = claimed.len() as u64;
            report.schedules += claimed.len();
            match self
                .fire_batch(&claimed, now, &mut lookups, &mut report)
                .await
            {
                Ok(one_by_one) => {
                    for schedule in one_by_one {
                        let id = schedule.id.clone();
                        if let Err(err) = self.fire(schedule, now, &mut report).await {
                            tracing::warn!(schedule_id = %id, error = %err, "a schedule's fire failed; it is retried once its claim lapses");
                        }
                    }
                }
                // The batch's claims lapse and its fires are tried again then (by any node);
                // the jobs that were made, if any, are found rather than made twice.
                Err(err) => {
                    tracing::warn!(schedules = batch, error = %err, "a batch of fires failed; it is retried once its claims lapse");
                }
            }
            if batch < CLAIM_BATCH {
                return Ok(report);
            }
        }
    }

    /// Fires a claimed batch in one write; answers the schedules left to fire one by one.
    async fn fire_batch(
        &self,
        claimed: &[schedule::Model],
        now: DateTime<Utc>,
        lookups: &mut Lookups,
        report: &mut FireReport,
    ) -> Result<Vec<schedule::Model>, DomainError> {
        let core = &self.core;
        let running = self.running_jobs(claimed).await?;
        let mut one_by_one = Vec::new();
        let mut fires: Vec<FireJob> = Vec::new();
        let mut events = Vec::new();
        let mut advances = Vec::new();
        let mut missed_count = 0;
        'schedules: for schedule in claimed {
            let plan = match self.plan(schedule, now) {
                Ok(Some(plan)) => plan,
                Ok(None) => continue,
                Err(()) => {
                    advances.push(Advance {
                        fired: schedule,
                        next_fire_at: None,
                        last: None,
                    });
                    continue;
                }
            };
            let policy: ConcurrencyPolicy = schedule
                .concurrency
                .parse()
                .unwrap_or(ConcurrencyPolicy::Allow);
            if policy != ConcurrencyPolicy::Allow
                && (running.contains_key(&schedule.id) || plan.fires.len() > 1)
            {
                one_by_one.push(schedule.clone());
                continue;
            }
            let caller = fire_caller(schedule);
            let first = fires.len();
            for &(at, catch_up) in &plan.fires {
                match self
                    .prepare_fire(schedule, &caller, at, catch_up, lookups)
                    .await
                {
                    Ok(fire) => fires.push(fire),
                    Err(err) => {
                        // Passing: this schedule waits for its claim to lapse.
                        tracing::warn!(schedule_id = %schedule.id, error = %err, "a schedule's fire failed; it is retried once its claim lapses");
                        fires.truncate(first);
                        continue 'schedules;
                    }
                }
            }
            let last = (fires.len() > first).then(|| fires.len() - 1);
            if let Some(missed) = plan.missed {
                missed_count += missed.count;
                let mut detail = missed.detail;
                if missed.catch_up
                    && let Some(fire) = fires.get(first)
                {
                    detail["job_id"] = json!(fire.job_id);
                }
                tracing::warn!(schedule_id = %schedule.id, missed = missed.count, policy = %missed.policy, "schedule fires missed");
                events.push(missed_event(schedule, missed.summary, detail, missed.due));
            }
            advances.push(Advance {
                fired: schedule,
                next_fire_at: plan.next,
                last,
            });
        }
        if fires.is_empty() && events.is_empty() && advances.is_empty() {
            return Ok(one_by_one);
        }
        let (made, lost) = core
            .writer
            .store()
            .fire_batch(&core.node, fires, events, advances)
            .await?;
        if lost > 0 {
            tracing::warn!(
                schedules = lost,
                "lost the claim on schedules while firing them; another node goes on"
            );
        }
        report.missed += missed_count;
        report.jobs += made.len();
        let pending: Vec<&outpost_store::command::Model> = made
            .iter()
            .filter(|fired| fired.created)
            .flat_map(|fired| fired.runs.iter())
            .filter(|run| run.state == outpost_store::state::PENDING)
            .collect();
        core.bus.deliver_job(&pending);
        let created = made.iter().filter(|fired| fired.created).count();
        tracing::info!(jobs = created, runs = pending.len(), "schedules fired");
        Ok(one_by_one)
    }

    /// The running last jobs of a batch's schedules whose `concurrency` looks at them, by
    /// schedule: one query for the batch.
    async fn running_jobs(
        &self,
        claimed: &[schedule::Model],
    ) -> Result<HashMap<String, job::Model>, DomainError> {
        let mut wanted: HashMap<&str, Vec<String>> = HashMap::new();
        for schedule in claimed {
            if schedule.concurrency != ConcurrencyPolicy::Allow.as_str()
                && let Some(id) = &schedule.last_job_id
            {
                wanted
                    .entry(schedule.tenant_id.as_str())
                    .or_default()
                    .push(id.clone());
            }
        }
        let mut running = HashMap::new();
        for (tenant_id, ids) in wanted {
            for job in self.core.store.jobs_by_ids(tenant_id, &ids).await? {
                if job.status == JobState::Running.as_str()
                    && let Some(schedule_id) = job.schedule_id.clone()
                {
                    running.insert(schedule_id, job);
                }
            }
        }
        Ok(running)
    }

    /// What a claimed schedule's pass is to do at `now`: `None` when nothing is due,
    /// `Err` when its stored pattern no longer parses (it stops firing).
    fn plan(&self, schedule: &schedule::Model, now: DateTime<Utc>) -> Result<Option<Plan>, ()> {
        let Some(due) = schedule.next_fire_at else {
            return Ok(None);
        };
        let recurrence = match Recurrence::parse(&schedule.cron, &schedule.timezone) {
            Ok(r) => r,
            Err(err) => {
                // Stored patterns were valid when saved; one that no longer parses (a zone
                // dropped from the database) stops firing and says why.
                tracing::error!(schedule_id = %schedule.id, error = %err, "a stored schedule no longer parses; it stops firing");
                return Err(());
            }
        };
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::seconds(60));
        let cutoff = now - grace;
        let before_due = due - chrono::Duration::microseconds(1);
        let mut fires = Vec::new();
        let mut missed = None;
        if due <= cutoff {
            let count = recurrence
                .count_between(before_due, cutoff, MAX_COUNTED)
                .max(1);
            let policy: MissedPolicy = schedule.missed.parse().unwrap_or(MissedPolicy::Skip);
            let detail = json!({
                "missed": count,
                "at_least": count >= MAX_COUNTED,
                "first": due,
                "until": cutoff,
                "policy": policy.as_str(),
            });
            let summary = match policy {
                MissedPolicy::Skip => format!(
                    "schedule {} missed {count} fire(s) from {due} (missed: skip, none run)",
                    schedule.name
                ),
                MissedPolicy::RunOnce => format!(
                    "schedule {} missed {count} fire(s) from {due}; one catch-up job runs for them",
                    schedule.name
                ),
            };
            let catch_up = policy == MissedPolicy::RunOnce;
            if catch_up {
                fires.push((due, true));
            }
            missed = Some(Missed {
                count,
                policy,
                catch_up,
                due,
                summary,
                detail,
            });
        }
        // Fires within the grace run late, each as its own job (at most a few: `@every` is at
        // least 10 s and the grace a minute).
        let late_from = if due > cutoff { before_due } else { cutoff };
        fires.extend(
            recurrence
                .fires_between(late_from, now, 16)
                .into_iter()
                .map(|at| (at, false)),
        );
        Ok(Some(Plan {
            fires,
            missed,
            next: recurrence.next_after(now),
        }))
    }

    /// One claimed schedule's fires up to `now`, one by one (see [`Schedules::fire_due`]).
    async fn fire(
        &self,
        schedule: schedule::Model,
        now: DateTime<Utc>,
        report: &mut FireReport,
    ) -> Result<(), DomainError> {
        let core = &self.core;
        let plan = match self.plan(&schedule, now) {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(()),
            Err(()) => {
                core.store
                    .advance_schedule(&schedule, &core.node, None, None)
                    .await?;
                return Ok(());
            }
        };
        let caller = fire_caller(&schedule);
        let mut last: Option<(DateTime<Utc>, String)> = None;
        let mut running = self.running_job(&schedule).await?;
        let mut fires = plan.fires.into_iter().peekable();
        if let Some(missed) = plan.missed {
            report.missed += missed.count;
            let mut detail = missed.detail;
            if missed.catch_up
                && let Some((at, catch_up)) = fires.next_if(|(_, catch_up)| *catch_up)
                && let Some(job_id) = self
                    .fire_job(&schedule, &caller, at, catch_up, &mut running, report)
                    .await?
            {
                detail["job_id"] = json!(job_id);
                last = Some((at, job_id));
            }
            tracing::warn!(schedule_id = %schedule.id, missed = missed.count, policy = %missed.policy, "schedule fires missed");
            core.store
                .record_event(missed_event(&schedule, missed.summary, detail, missed.due))
                .await?;
        }
        for (at, catch_up) in fires {
            if let Some(job_id) = self
                .fire_job(&schedule, &caller, at, catch_up, &mut running, report)
                .await?
            {
                last = Some((at, job_id));
            }
        }
        if !core
            .store
            .advance_schedule(&schedule, &core.node, plan.next, last)
            .await?
        {
            tracing::warn!(schedule_id = %schedule.id, "lost the claim on a schedule while firing it; another node goes on");
        }
        Ok(())
    }

    /// The schedule's last job when it is still running (what `concurrency` looks at).
    async fn running_job(
        &self,
        schedule: &schedule::Model,
    ) -> Result<Option<job::Model>, DomainError> {
        let Some(id) = &schedule.last_job_id else {
            return Ok(None);
        };
        Ok(self
            .core
            .store
            .get_job(&schedule.tenant_id, id)
            .await?
            .filter(|job| job.status == JobState::Running))
    }

    /// One fire's job, as the schedule's `concurrency` says: `None` when skipped.
    async fn fire_job(
        &self,
        schedule: &schedule::Model,
        caller: &Caller,
        at: DateTime<Utc>,
        catch_up: bool,
        running: &mut Option<job::Model>,
        report: &mut FireReport,
    ) -> Result<Option<String>, DomainError> {
        let policy: ConcurrencyPolicy = schedule
            .concurrency
            .parse()
            .unwrap_or(ConcurrencyPolicy::Allow);
        if let Some(previous) = running.as_ref() {
            // A job of this very fire made by an earlier, interrupted attempt is not "the
            // previous job".
            let same_fire = previous.scheduled_for == Some(at);
            match policy {
                ConcurrencyPolicy::Forbid if !same_fire => {
                    report.skipped += 1;
                    self.core
                        .store
                        .record_event(NewEvent {
                            tenant_id: &schedule.tenant_id,
                            kind: EVENT_SKIPPED,
                            subject: ("schedule", &schedule.id, &schedule.name),
                            summary: format!(
                                "schedule {} skipped its fire at {at}: job {} still runs (concurrency: forbid)",
                                schedule.name, previous.id
                            ),
                            detail: json!({
                                "scheduled_for": at,
                                "running_job_id": previous.id,
                                "reason": "the previous job is still running (concurrency: forbid)",
                            }),
                            dedup_key: Some(format!(
                                "{EVENT_SKIPPED}:{}:{}",
                                schedule.id,
                                at.to_rfc3339()
                            )),
                        })
                        .await?;
                    tracing::info!(schedule_id = %schedule.id, running_job_id = %previous.id, "fire skipped: the previous job still runs");
                    return Ok(None);
                }
                ConcurrencyPolicy::Replace if !same_fire => {
                    tracing::info!(schedule_id = %schedule.id, job_id = %previous.id, "cancelling the previous job to replace it");
                    self.jobs.cancel(caller, &previous.id).await?;
                }
                _ => {}
            }
        }
        let made = match self.job_request(schedule, Some(at), catch_up) {
            Ok(request) => self.jobs.create(caller, request, None).await,
            Err(err) => Err(err),
        };
        let created = match made {
            Ok(created) => created,
            // A passing failure: the claim lapses and the fire is tried again.
            Err(err @ (DomainError::Unavailable(_) | DomainError::Internal(_))) => return Err(err),
            // One that would fail the same way every time (the command is no longer valid,
            // the role that saved the schedule may no longer send it): the fire records a
            // failed job that says why, rather than retrying for ever and then "missing".
            Err(err) => {
                let fire = failed_fire(schedule, caller, at, catch_up, &err);
                let (job, runs, _) = self
                    .core
                    .writer
                    .store()
                    .create_job_audited(fire.new, fire.runs, Some(fire.audit))
                    .await?;
                JobWithRuns { job, runs }
            }
        };
        report.jobs += 1;
        let id = created.job.id.clone();
        *running = (created.job.status == JobState::Running).then_some(created.job);
        Ok(Some(id))
    }

    /// One fire's job, decided but not written (a batch's fire): the job, or when it cannot
    /// be made for a reason that would not pass, a failed job that says why. `Err` only for a
    /// passing failure (the fire is tried again once its claim lapses).
    async fn prepare_fire(
        &self,
        schedule: &schedule::Model,
        caller: &Caller,
        at: DateTime<Utc>,
        catch_up: bool,
        lookups: &mut Lookups,
    ) -> Result<FireJob, DomainError> {
        let made = match self.job_request(schedule, Some(at), catch_up) {
            Ok(request) => self.jobs.prepare(caller, request, lookups).await,
            Err(err) => Err(err),
        };
        match made {
            Ok(prepared) => Ok(FireJob {
                job_id: outpost_store::new_id(),
                new: prepared.new,
                runs: prepared.runs,
                audit: prepared.audit,
            }),
            Err(err @ (DomainError::Unavailable(_) | DomainError::Internal(_))) => Err(err),
            Err(err) => Ok(failed_fire(schedule, caller, at, catch_up, &err)),
        }
    }

    /// Fires schedules until shutdown: wakes at the earliest `next_fire_at` (at least every
    /// second, to see schedules changed on other nodes; at once when one changes here).
    pub async fn run(self) {
        let shutdown = self.core.shutdown.clone();
        let max_sleep = self.clock.max_sleep();
        loop {
            let now = self.clock.now();
            if let Err(err) = self.fire_due(now).await {
                tracing::warn!(error = %err, "firing schedules failed; retrying shortly");
            }
            let sleep = match self.core.store.next_schedule_due().await {
                Ok(Some(next)) => (next - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(max_sleep),
                Ok(None) => max_sleep,
                Err(err) => {
                    tracing::warn!(error = %err, "reading the next schedule failed");
                    max_sleep
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep.max(Duration::from_millis(5))) => {}
            }
        }
    }
}

/// What a claimed schedule's pass is to do (see [`Schedules::plan`]).
struct Plan {
    /// The fires that make a job: instant, and whether it is the catch-up of missed fires.
    fires: Vec<(DateTime<Utc>, bool)>,
    /// Fires missed, when some were.
    missed: Option<Missed>,
    /// The next fire after this pass.
    next: Option<DateTime<Utc>>,
}

/// Fires a schedule missed, and what its `schedule.missed` event says.
struct Missed {
    count: usize,
    policy: MissedPolicy,
    /// A catch-up job runs for them (`run_once`): the plan's first fire.
    catch_up: bool,
    /// The first missed instant.
    due: DateTime<Utc>,
    summary: String,
    detail: Value,
}

/// The `schedule.missed` event of fires missed from `due` (once per schedule and instant,
/// whichever node records it).
fn missed_event(
    schedule: &schedule::Model,
    summary: String,
    detail: Value,
    due: DateTime<Utc>,
) -> NewEvent<'_> {
    NewEvent {
        tenant_id: &schedule.tenant_id,
        kind: EVENT_MISSED,
        subject: ("schedule", &schedule.id, &schedule.name),
        summary,
        detail,
        dedup_key: Some(format!(
            "{EVENT_MISSED}:{}:{}",
            schedule.id,
            due.to_rfc3339()
        )),
    }
}

/// A fire that could not make its job: a failed job without runs whose note says why.
fn failed_fire(
    schedule: &schedule::Model,
    caller: &Caller,
    at: DateTime<Utc>,
    catch_up: bool,
    why: &DomainError,
) -> FireJob {
    tracing::warn!(schedule_id = %schedule.id, error = %why, "a schedule's fire could not make its job");
    let audit = record_of(
        caller,
        AuditEvent::new(AuditAction::JobTrigger, AuditTarget::Job, "").with(json!({
            "command": schedule.command,
            "target": schedule.target,
            "runs": 0,
            "refused": why.to_string(),
        })),
    );
    FireJob {
        job_id: outpost_store::new_id(),
        new: NewJob {
            tenant_id: schedule.tenant_id.clone(),
            command: schedule.command.clone(),
            data: schedule.data.clone(),
            sealed_params: None,
            target: schedule.target.clone(),
            timeout_s: schedule.timeout_s.map_or(0, |v| v as u32),
            ttl_s: schedule.ttl_s.map_or(0, |v| v as u32),
            idempotency_key: None,
            request_fingerprint: None,
            webhook_url: schedule.webhook_url.clone(),
            fire: Some(Fire {
                schedule_id: schedule.id.clone(),
                scheduled_for: Some(at),
                catch_up,
            }),
            note: Some(format!("no run: the fire could not make its job: {why}")),
            rerun_of: None,
        },
        runs: Vec::new(),
        audit,
    }
}

/// Who a fire acts as: the schedule, with the role of whoever last saved it.
fn fire_caller(schedule: &schedule::Model) -> Caller {
    Caller {
        tenant_id: schedule.tenant_id.clone(),
        role: schedule.role.parse().unwrap_or(Role::Member),
        scopes: Scopes::ALL,
        principal: Principal::Schedule {
            schedule_id: schedule.id.clone(),
        },
        label: schedule.name.clone(),
        address: None,
    }
}
