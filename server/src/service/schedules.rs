//! Schedules (SPEC §10): a command on a target at the instants a cron pattern names, and the
//! loop that fires them.
//!
//! Fire times are computed here (`crate::cron`) and stored: a schedule's row says when it
//! fires next (`next_fire_at`), so a restarted server, or another node, goes on where it was,
//! and a fire that already made its job never makes a second (the unique
//! `(schedule_id, scheduled_for)` of jobs; see `store::schedules` for the claim). A fire's job
//! is decided by [`Jobs::prepare`], the step `POST /api/jobs` goes through too (target, keys,
//! refusals, sealed parameters, audit), acting for whoever last saved the schedule with the role
//! they had then; the fires of a claimed batch are then written together (see
//! [`Schedules::fire_due`]).
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
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use super::commands::{self, CommandSpec};
use super::jobs::{JobWithRuns, Jobs, Lookups, NewJobRequest, Target};
use crate::cron::Recurrence;
use crate::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, ConcurrencyPolicy, DomainError, JobState,
    MissedPolicy, Principal, Role, Scopes,
};
use crate::store::{
    Advance, Fire, FireJob, NewEvent, NewJob, NewSchedule, ScheduleFilter, ScheduleRefused, job,
    schedule,
};

/// Fires that passed less than this long ago run late; older ones are missed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// The longest the loop sleeps: how soon a change made on another node is seen.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Schedules claimed at once: a minute when 10,000 fall due is one pass and one write, so no
/// fire waits behind the results of the fires before it (the writer takes them in turn).
const CLAIM_BATCH: u64 = 10_000;
/// Missed fires counted at most (a year of `@every 10s` is 3 million).
const MAX_COUNTED: usize = 100_000;
/// A schedule's `data` is copied into every run of every fire: kept small.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// What a secret parameter's value shows as in a stored schedule's `data`.
pub const SECRET_MASK: &str = crate::secrets::MASK;
/// Fires `preview` lists at most.
pub const MAX_PREVIEW: usize = 100;
/// Longest schedule name.
const MAX_NAME: usize = 100;
/// Event type: fires passed while the schedule could not fire.
pub const EVENT_MISSED: &str = "schedule.missed";
/// Event type: a fire skipped because the previous job still ran (`concurrency: forbid`).
pub const EVENT_SKIPPED: &str = "schedule.skipped";

/// A schedule as asked for (`POST`), or the fields to change (`PATCH`: `None` leaves a
/// field as it is; `Some(None)` clears what may be cleared).
#[derive(Debug, Default)]
pub struct ScheduleFields {
    /// Unique in the tenant.
    pub name: Option<String>,
    /// The pattern.
    pub cron: Option<String>,
    /// IANA zone (default UTC).
    pub timezone: Option<String>,
    /// Command name.
    pub command: Option<String>,
    /// Arguments.
    pub data: Option<Value>,
    /// On which agents.
    pub target: Option<Target>,
    /// Run timeout.
    pub timeout_s: Option<Option<u32>>,
    /// Wait for offline agents.
    pub ttl_s: Option<Option<u32>>,
    /// Fires when true.
    pub enabled: Option<bool>,
    /// `skip` or `run_once`.
    pub missed: Option<String>,
    /// `allow`, `forbid` or `replace`.
    pub concurrency: Option<String>,
    /// Given to every job it creates.
    pub webhook_url: Option<Option<String>>,
}

/// A schedule with its last job.
#[derive(Debug)]
pub struct ScheduleWithJob {
    /// The schedule.
    pub schedule: schedule::Model,
    /// Its last fire's job (or run now), if it still exists.
    pub last_job: Option<job::Model>,
}

/// A page of schedules, by name.
#[derive(Debug)]
pub struct SchedulePage {
    /// The schedules.
    pub schedules: Vec<ScheduleWithJob>,
    /// The cursor of the next page.
    pub next_cursor: Option<String>,
}

/// One instant of a preview.
#[derive(Debug)]
pub struct PreviewFire {
    /// In UTC.
    pub at: DateTime<Utc>,
    /// In the schedule's zone.
    pub local: DateTime<FixedOffset>,
}

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

/// Where schedules read the time: the system's clock, or (tests only, the hidden
/// `--test-clock-file`) an RFC 3339 instant read from a file at every look, which a test
/// moves to make fires due, jump the clock or set it back without waiting.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Utc::now()`.
    #[default]
    System,
    /// The instant the file holds (the system's clock while it holds none).
    File(std::path::PathBuf),
}

impl Clock {
    /// Now, as schedules see it.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::File(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
                .map_or_else(Utc::now, |at| at.with_timezone(&Utc)),
        }
    }

    /// How long the loop may sleep: a file clock jumps at any moment.
    fn max_sleep(&self) -> Duration {
        match self {
            Self::System => MAX_SLEEP,
            Self::File(_) => Duration::from_millis(50),
        }
    }
}

/// Schedules and their loop.
#[derive(Clone)]
pub struct Schedules {
    core: Arc<Core>,
    jobs: Jobs,
    grace: Duration,
    clock: Clock,
    wake: Arc<Notify>,
}

impl Schedules {
    pub(super) fn new(core: Arc<Core>, jobs: Jobs) -> Self {
        Self {
            core,
            jobs,
            grace: DEFAULT_GRACE,
            clock: Clock::System,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The same service with another grace between late and missed fires (tests use a
    /// short one so as not to wait a minute).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The same service reading the time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Creates a schedule.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        fields: ScheduleFields,
    ) -> Result<ScheduleWithJob, DomainError> {
        Access::require(caller, Action::ManageSchedules)?;
        let core = &self.core;
        core.writable()?;
        let name = fields
            .name
            .ok_or_else(|| DomainError::BadRequest("name: required".into()))?;
        let cron = fields
            .cron
            .ok_or_else(|| DomainError::BadRequest("cron: required".into()))?;
        let command = fields
            .command
            .ok_or_else(|| DomainError::BadRequest("command: required".into()))?;
        let target = fields
            .target
            .ok_or_else(|| DomainError::BadRequest("target: required".into()))?;
        let timezone = fields.timezone.unwrap_or_else(|| "UTC".to_owned());
        let enabled = fields.enabled.unwrap_or(true);
        let draft = Draft {
            name,
            cron,
            timezone,
            command,
            data: fields.data,
            target,
            timeout_s: fields.timeout_s.flatten(),
            ttl_s: fields.ttl_s.flatten(),
            missed: parse_policy::<MissedPolicy>("missed", fields.missed.as_deref())?
                .unwrap_or(MissedPolicy::Skip),
            concurrency: parse_policy::<ConcurrencyPolicy>(
                "concurrency",
                fields.concurrency.as_deref(),
            )?
            .unwrap_or(ConcurrencyPolicy::Allow),
            webhook_url: fields.webhook_url.flatten(),
        };
        let checked = self.check(caller, &draft).await?;
        let next_fire_at = if enabled {
            checked.recurrence.next_after(self.clock.now())
        } else {
            None
        };
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScheduleCreate, AuditTarget::Schedule, "")
                .with(draft.audit_detail(enabled)),
        );
        let new = NewSchedule {
            tenant_id: caller.tenant_id.clone(),
            name: draft.name.clone(),
            cron: draft.cron.clone(),
            timezone: draft.timezone.clone(),
            command: draft.command.clone(),
            data: checked.data,
            sealed_params: checked.sealed_params,
            target: checked.target,
            timeout_s: draft.timeout_s,
            ttl_s: draft.ttl_s,
            enabled,
            missed: draft.missed.as_str().to_owned(),
            concurrency: draft.concurrency.as_str().to_owned(),
            webhook_url: draft.webhook_url.clone(),
            role: caller.role.as_str().to_owned(),
            created_by: caller.principal.to_string(),
            next_fire_at,
        };
        let schedule = match core.store.create_schedule(new, audit).await? {
            Ok(schedule) => schedule,
            Err(refused) => return Err(refusal(refused, &draft.name)),
        };
        tracing::info!(schedule_id = %schedule.id, name = %schedule.name, "schedule created");
        self.wake.notify_one();
        Ok(ScheduleWithJob {
            schedule,
            last_job: None,
        })
    }

    /// Validates what a schedule will run, where and when, as a job would be, plus what only
    /// schedules have; returns the stored forms.
    async fn check(&self, caller: &Caller, draft: &Draft) -> Result<Checked, DomainError> {
        let core = &self.core;
        validate_name(&draft.name)?;
        let recurrence = Recurrence::parse(&draft.cron, &draft.timezone)
            .map_err(|e| DomainError::BadRequest(e.to_string()))?;
        if recurrence.next_after(self.clock.now()).is_none() {
            return Err(DomainError::BadRequest(format!(
                "cron: {:?} never fires again",
                draft.cron
            )));
        }
        if let Some(data) = &draft.data {
            let size = data.to_string().len();
            if size > MAX_DATA_BYTES {
                return Err(DomainError::BadRequest(format!(
                    "data: {size} bytes; a schedule's data may hold at most {MAX_DATA_BYTES}"
                )));
            }
        }
        if let Some(url) = &draft.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(DomainError::BadRequest(
                "webhook_url: must be an http(s) URL".into(),
            ));
        }
        let spec = CommandSpec::new(
            draft.command.clone(),
            draft.data.clone(),
            draft.timeout_s,
            draft.ttl_s,
        )?;
        let target_json = serde_json::to_value(&draft.target).unwrap_or(Value::Null);
        commands::authorize(caller, &spec, &format!("schedule target {target_json}"))?;
        // The target as it stands now: its agent ids must exist, and the agents it matches
        // must be allowed the command (an agent added later whose key refuses it gets a
        // failed run, as in any job).
        let (agents, keys) = self.jobs.resolve(caller, &draft.target, false).await?;
        let refused: Vec<&str> = agents
            .iter()
            .filter(|a| {
                super::access::key_refusal(&a.id, keys.get(&a.key_id), &spec.command).is_some()
            })
            .map(|a| a.id.as_str())
            .collect();
        if !refused.is_empty() {
            let shown: Vec<&str> = refused.iter().take(5).copied().collect();
            return Err(DomainError::BadRequest(format!(
                "command: {} of the {} agents the target matches now may not run {:?} (their agent key does not permit it): {}{}",
                refused.len(),
                agents.len(),
                spec.command,
                shown.join(", "),
                if refused.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            )));
        }
        // A library script is resolved again at each fire (the newest version then, unless
        // the schedule pins `name@version`); here only to refuse a pinned version that does
        // not exist and to learn which parameters the bundle declares secret.
        let library_secrets = match commands::run_script(&spec) {
            Some(script) => super::scripts::resolve(core, &caller.tenant_id, script)
                .await?
                .map(|resolved| resolved.secret_params)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // Secret parameters are kept sealed, as a job keeps them: those the caller marks and
        // those any agent of the tenant (or the library's bundle) declares secret.
        let (data, sealed_params) =
            match crate::secrets::script_with_params(&spec.command, &spec.data) {
                Some(script) => {
                    let candidates = core
                        .store
                        .agents_with_secret_params(&caller.tenant_id)
                        .await?;
                    let declared = candidates
                        .iter()
                        .flat_map(|(_, scripts)| crate::secrets::declared(scripts, script))
                        .chain(library_secrets.iter().map(String::as_str));
                    spec.sealed_data(core, &caller.tenant_id, declared)
                }
                None => spec.sealed_data(core, &caller.tenant_id, []),
            };
        Ok(Checked {
            recurrence,
            data,
            sealed_params,
            target: target_json,
        })
    }

    async fn find(&self, caller: &Caller, id: &str) -> Result<schedule::Model, DomainError> {
        self.core
            .store
            .get_schedule(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no schedule {id}")))
    }

    async fn with_job(
        &self,
        tenant_id: &str,
        schedule: schedule::Model,
    ) -> Result<ScheduleWithJob, DomainError> {
        let last_job = match &schedule.last_job_id {
            Some(id) => self.core.store.get_job(tenant_id, id).await?,
            None => None,
        };
        Ok(ScheduleWithJob { schedule, last_job })
    }

    /// One schedule with its last job.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<ScheduleWithJob, DomainError> {
        let schedule = self.find(caller, id).await?;
        self.with_job(&caller.tenant_id, schedule).await
    }

    /// Schedules by name, a page at a time.
    pub async fn list(
        &self,
        caller: &Caller,
        enabled: Option<bool>,
        cursor: Option<String>,
        limit: Option<u64>,
    ) -> Result<SchedulePage, DomainError> {
        let limit = limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(DomainError::BadRequest(
                "limit: must be between 1 and 200".into(),
            ));
        }
        let filter = ScheduleFilter {
            enabled,
            after_name: cursor,
            limit: limit + 1,
        };
        let mut rows = self
            .core
            .store
            .list_schedules(&caller.tenant_id, &filter)
            .await?;
        let next_cursor = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|s| s.name.clone())
        } else {
            None
        };
        let mut schedules = Vec::with_capacity(rows.len());
        for row in rows {
            schedules.push(self.with_job(&caller.tenant_id, row).await?);
        }
        Ok(SchedulePage {
            schedules,
            next_cursor,
        })
    }

    /// Changes a schedule. A change of `cron` or `timezone`, or enabling it, computes the next
    /// fire from now: nothing is counted missed while it was paused.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        fields: ScheduleFields,
    ) -> Result<ScheduleWithJob, DomainError> {
        Access::require(caller, Action::ManageSchedules)?;
        let core = &self.core;
        core.writable()?;
        let current = self.find(caller, id).await?;
        let mut changed: Vec<&str> = Vec::new();
        macro_rules! note {
            ($field:ident) => {
                if fields.$field.is_some() {
                    changed.push(stringify!($field));
                }
            };
        }
        note!(name);
        note!(cron);
        note!(timezone);
        note!(command);
        note!(data);
        note!(target);
        note!(timeout_s);
        note!(ttl_s);
        note!(enabled);
        note!(missed);
        note!(concurrency);
        note!(webhook_url);
        if changed.is_empty() {
            return Err(DomainError::BadRequest(
                "body: give at least one field to change".into(),
            ));
        }
        // What the schedule runs is checked again as a whole (and its data re-sealed) when
        // any of it changes; the stored data is masked, so a change of the command or target
        // alone needs the data given again when it has secret parameters.
        let runs_changed = fields.command.is_some()
            || fields.data.is_some()
            || fields.target.is_some()
            || fields.timeout_s.is_some()
            || fields.ttl_s.is_some();
        if runs_changed && fields.data.is_none() && current.sealed_params.is_some() {
            return Err(DomainError::BadRequest(
                "data: this schedule has secret parameters; give data again (with their values) to change what it runs".into(),
            ));
        }
        let stored_target: Target =
            serde_json::from_value(current.target.clone()).unwrap_or_default();
        let draft = Draft {
            name: fields.name.clone().unwrap_or_else(|| current.name.clone()),
            cron: fields.cron.clone().unwrap_or_else(|| current.cron.clone()),
            timezone: fields
                .timezone
                .clone()
                .unwrap_or_else(|| current.timezone.clone()),
            command: fields
                .command
                .clone()
                .unwrap_or_else(|| current.command.clone()),
            data: Some(fields.data.clone().unwrap_or_else(|| current.data.clone())),
            target: fields.target.clone().unwrap_or(stored_target),
            timeout_s: match fields.timeout_s {
                Some(v) => v,
                None => current.timeout_s.map(|v| v as u32),
            },
            ttl_s: match fields.ttl_s {
                Some(v) => v,
                None => current.ttl_s.map(|v| v as u32),
            },
            missed: match parse_policy::<MissedPolicy>("missed", fields.missed.as_deref())? {
                Some(p) => p,
                None => current.missed.parse().unwrap_or(MissedPolicy::Skip),
            },
            concurrency: match parse_policy::<ConcurrencyPolicy>(
                "concurrency",
                fields.concurrency.as_deref(),
            )? {
                Some(p) => p,
                None => current
                    .concurrency
                    .parse()
                    .unwrap_or(ConcurrencyPolicy::Allow),
            },
            webhook_url: match &fields.webhook_url {
                Some(v) => v.clone(),
                None => current.webhook_url.clone(),
            },
        };
        let checked = self.check(caller, &draft).await?;
        let enabled = fields.enabled.unwrap_or(current.enabled);
        let when_changed = fields.cron.is_some() || fields.timezone.is_some();
        let next_fire_at = if !enabled {
            None
        } else if when_changed || !current.enabled || current.next_fire_at.is_none() {
            checked.recurrence.next_after(self.clock.now())
        } else {
            current.next_fire_at
        };
        let (data, sealed_params) = if runs_changed {
            (checked.data, checked.sealed_params)
        } else {
            (current.data.clone(), current.sealed_params.clone())
        };
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScheduleUpdate, AuditTarget::Schedule, id)
                .with(json!({ "changed": changed, "enabled": enabled, "name": draft.name })),
        );
        let row = schedule::Model {
            name: draft.name.clone(),
            cron: draft.cron,
            timezone: draft.timezone,
            command: draft.command,
            data,
            sealed_params,
            target: checked.target,
            timeout_s: draft.timeout_s.map(|v| v as i32),
            ttl_s: draft.ttl_s.map(|v| v as i32),
            enabled,
            missed: draft.missed.as_str().to_owned(),
            concurrency: draft.concurrency.as_str().to_owned(),
            webhook_url: draft.webhook_url,
            role: caller.role.as_str().to_owned(),
            next_fire_at,
            ..current
        };
        let updated = match core.store.update_schedule(row, audit).await? {
            None => return Err(DomainError::NotFound(format!("no schedule {id}"))),
            Some(Err(refused)) => return Err(refusal(refused, &draft.name)),
            Some(Ok(updated)) => updated,
        };
        self.wake.notify_one();
        self.with_job(&caller.tenant_id, updated).await
    }

    /// Deletes a schedule; its jobs stay.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageSchedules)?;
        let current = self.find(caller, id).await?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScheduleDelete, AuditTarget::Schedule, id)
                .with(json!({ "name": current.name })),
        );
        if !self
            .core
            .store
            .delete_schedule(&caller.tenant_id, id, audit)
            .await?
        {
            return Err(DomainError::NotFound(format!("no schedule {id}")));
        }
        tracing::info!(name = %current.name, "schedule deleted");
        Ok(())
    }

    /// Runs the schedule's command now, outside its times, as the caller: a job with the
    /// schedule's id and no `scheduled_for`. It does not move the next fire.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
    pub async fn run_now(&self, caller: &Caller, id: &str) -> Result<JobWithRuns, DomainError> {
        let schedule = self.find(caller, id).await?;
        self.core
            .store
            .append_audit(&record_of(
                caller,
                AuditEvent::new(AuditAction::ScheduleRun, AuditTarget::Schedule, id)
                    .with(json!({ "name": schedule.name })),
            ))
            .await?;
        let request = self.job_request(&schedule, None, false)?;
        self.jobs.create(caller, request, None).await
    }

    /// The next `count` fires of a pattern after `from` (default now), creating nothing.
    pub fn preview(
        &self,
        cron: &str,
        timezone: Option<&str>,
        from: Option<DateTime<Utc>>,
        count: Option<usize>,
    ) -> Result<Vec<PreviewFire>, DomainError> {
        let count = count.unwrap_or(10);
        if !(1..=MAX_PREVIEW).contains(&count) {
            return Err(DomainError::BadRequest(format!(
                "count: must be between 1 and {MAX_PREVIEW}"
            )));
        }
        let recurrence = Recurrence::parse(cron, timezone.unwrap_or("UTC"))
            .map_err(|e| DomainError::BadRequest(e.to_string()))?;
        let mut at = from.unwrap_or_else(|| self.clock.now());
        let mut fires = Vec::with_capacity(count);
        while fires.len() < count {
            let Some(next) = recurrence.next_after(at) else {
                break;
            };
            fires.push(PreviewFire {
                at: next,
                local: recurrence.local(next),
            });
            at = next;
        }
        Ok(fires)
    }

    /// The job a fire (or a run now) creates: the stored command with its secret values
    /// unsealed (the job seals them again), the stored target.
    fn job_request(
        &self,
        schedule: &schedule::Model,
        scheduled_for: Option<DateTime<Utc>>,
        catch_up: bool,
    ) -> Result<NewJobRequest, DomainError> {
        let mut data = schedule.data.clone();
        if let Some(sealed) = &schedule.sealed_params {
            let names = data.get("secret_params").cloned();
            crate::secrets::unseal(&self.core.master, &schedule.tenant_id, &mut data, sealed)
                .map_err(|why| {
                    DomainError::Internal(anyhow::anyhow!(
                        "schedule {}: its sealed parameters do not open: {why}",
                        schedule.id
                    ))
                })?;
            if let (Some(names), Some(object)) = (names, data.as_object_mut()) {
                object.insert("secret_params".into(), names);
            }
        }
        let spec = CommandSpec::new(
            schedule.command.clone(),
            Some(data),
            schedule.timeout_s.map(|v| v as u32),
            schedule.ttl_s.map(|v| v as u32),
        )?;
        let target: Target = serde_json::from_value(schedule.target.clone()).unwrap_or_default();
        Ok(NewJobRequest {
            spec,
            target,
            webhook_url: schedule.webhook_url.clone(),
            idempotency_key: None,
            fire: Some(Fire {
                schedule_id: schedule.id.clone(),
                scheduled_for,
                catch_up,
            }),
        })
    }

    /// Fires every schedule due at `now`, as this node; the loop calls it with the clock's
    /// time, tests with the time they choose.
    ///
    /// A pass claims due schedules by batches and fires each batch together: what the jobs
    /// read about their tenants is read once for the pass, and a batch's jobs, runs, audit
    /// rows, events and advances are one write (SPEC §8: 10,000 fires in one minute). The few
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
        let pending: Vec<&crate::store::command::Model> = made
            .iter()
            .filter(|fired| fired.created)
            .flat_map(|fired| fired.runs.iter())
            .filter(|run| run.state == crate::store::state::PENDING)
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
                job_id: crate::store::new_id(),
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
        job_id: crate::store::new_id(),
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

/// A schedule's fields after defaults, before checks.
struct Draft {
    name: String,
    cron: String,
    timezone: String,
    command: String,
    data: Option<Value>,
    target: Target,
    timeout_s: Option<u32>,
    ttl_s: Option<u32>,
    missed: MissedPolicy,
    concurrency: ConcurrencyPolicy,
    webhook_url: Option<String>,
}

impl Draft {
    /// What the audit log keeps: never `data` (secret parameters) nor the webhook URL.
    fn audit_detail(&self, enabled: bool) -> Value {
        json!({
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "command": self.command,
            "script": self.data.as_ref().and_then(|d| d.get("script")).cloned(),
            "target": serde_json::to_value(&self.target).unwrap_or(Value::Null),
            "enabled": enabled,
            "missed": self.missed.as_str(),
            "concurrency": self.concurrency.as_str(),
            "webhook": self.webhook_url.is_some(),
        })
    }
}

/// What [`Schedules::check`] returns.
struct Checked {
    recurrence: Recurrence,
    data: Value,
    sealed_params: Option<String>,
    target: Value,
}

fn parse_policy<T: std::str::FromStr<Err = String>>(
    field: &str,
    value: Option<&str>,
) -> Result<Option<T>, DomainError> {
    value
        .map(|v| {
            v.parse::<T>()
                .map_err(|why| DomainError::BadRequest(format!("{field}: {why}")))
        })
        .transpose()
}

fn validate_name(name: &str) -> Result<(), DomainError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(DomainError::BadRequest(format!(
            "name: must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

fn refusal(refused: ScheduleRefused, name: &str) -> DomainError {
    match refused {
        ScheduleRefused::NameTaken => DomainError::Conflict {
            code: "name_taken",
            message: format!("name: a schedule named {name:?} exists already"),
        },
        ScheduleRefused::OverQuota(max) => DomainError::NotAllowed {
            code: "quota_exceeded",
            message: format!(
                "max_schedules: this tenant may have at most {max} schedules; delete one or ask the server's owner to raise the quota"
            ),
        },
    }
}
