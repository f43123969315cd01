//! Schedules (CONTRACT.md §10): a command on a target at the instants a cron pattern names. This file
//! is the service's requests (create, read, update, delete, run now, preview) and the checks a
//! schedule passes when saved; `fire` is the background worker that fires them.
//!
//! Fire times are computed here (`crate::cron`) and stored: a schedule's row says when it
//! fires next (`next_fire_at`), so a restarted server, or another node, goes on where it was,
//! and a fire that already made its job never makes a second (the unique
//! `(schedule_id, scheduled_for)` of jobs; see `store::schedules` for the claim). A fire's job
//! is decided by [`Jobs::prepare`], the step `POST /api/jobs` goes through too (target, keys,
//! refusals, sealed parameters, audit), acting for whoever last saved the schedule with the role
//! they had then; the fires of a claimed batch are then written together (see
//! [`Schedules::fire_due`]).

mod fire;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use super::commands::{self, CommandSpec};
use super::jobs::{JobWithRuns, Jobs, NewJobRequest, Target};
use crate::cron::Recurrence;
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, ConcurrencyPolicy, DomainError, MissedPolicy,
};
use outpost_store::{Fire, NewSchedule, ScheduleFilter, ScheduleRefused, job, schedule};

pub use fire::FireReport;

/// Fires that passed less than this long ago run late; older ones are missed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// The longest the loop sleeps: how soon a change made on another node is seen.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A schedule's `data` is copied into every run of every fire: kept small.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// What a secret parameter's value shows as in a stored schedule's `data`.
pub const SECRET_MASK: &str = outpost_store::secrets::MASK;
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
            match outpost_store::secrets::script_with_params(&spec.command, &spec.data) {
                Some(script) => {
                    let candidates = core
                        .store
                        .agents_with_secret_params(&caller.tenant_id)
                        .await?;
                    let declared = candidates
                        .iter()
                        .flat_map(|(_, scripts)| outpost_store::secrets::declared(scripts, script))
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
            outpost_store::secrets::unseal(
                &self.core.master,
                &schedule.tenant_id,
                &mut data,
                sealed,
            )
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
            rerun: None,
        })
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
