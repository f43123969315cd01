//! Schedules' rows, their claims, and the events table.
//!
//! A schedule's next fire is a stored instant (`next_fire_at`), so that whichever node looks
//! next, after a restart or a failover, continues exactly where the schedule was. Firing
//! follows the claim rule (docs/ARCHITECTURE.md, form 2): a node claims due schedules with one
//! conditional `UPDATE … RETURNING` (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so nodes asking
//! at once take different rows), fires them, and advances each with a statement conditional on
//! still holding the claim. A node that dies with a claim leaves it to lapse; the next node
//! repeats the fire, and the unique `(schedule_id, scheduled_for)` of jobs makes the repeat
//! find the first job instead of making a second.
//!
//! A change to a schedule (`PATCH`) bumps `updated_at`; an advance by a fire that started
//! before the change does not overwrite the `next_fire_at` the change computed.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, TransactionSession, TransactionTrait,
    TryInsertResult,
};
use serde_json::Value;

use super::{
    AuditRecord, ClaimSpec, NewJob, NewRun, Result, Store, StoreError, command, event, job, new_id,
    now, schedule,
};

/// A schedule to create (validated by the service).
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Owning tenant.
    pub tenant_id: String,
    /// Unique in the tenant.
    pub name: String,
    /// The pattern as given.
    pub cron: String,
    /// IANA zone.
    pub timezone: String,
    /// Command name.
    pub command: String,
    /// Arguments, secret values masked.
    pub data: Value,
    /// Secret values, sealed.
    pub sealed_params: Option<String>,
    /// The target as given.
    pub target: Value,
    /// Run timeout, when given.
    pub timeout_s: Option<u32>,
    /// Wait for offline agents, when given.
    pub ttl_s: Option<u32>,
    /// Fires when true.
    pub enabled: bool,
    /// `skip` or `run_once`.
    pub missed: String,
    /// `allow`, `forbid` or `replace`.
    pub concurrency: String,
    /// Given to every job it creates.
    pub webhook_url: Option<String>,
    /// The role its fires act with.
    pub role: String,
    /// Who made it (`Principal`'s text).
    pub created_by: String,
    /// The first fire (`None` when disabled).
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Filters of a schedule listing.
#[derive(Debug, Clone, Default)]
pub struct ScheduleFilter {
    /// Only enabled (or only disabled) schedules.
    pub enabled: Option<bool>,
    /// Only schedules whose name sorts after this (the cursor).
    pub after_name: Option<String>,
    /// Page size.
    pub limit: u64,
}

/// What stops a schedule from being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleRefused {
    /// Another schedule of the tenant has the name.
    NameTaken,
    /// The tenant has `max_schedules` schedules already.
    OverQuota(i64),
}

/// A changed schedule: the whole row as it becomes (the service computes it).
pub type SchedulePatch = schedule::Model;

/// One fire of a claimed schedule, decided (`service::schedules`): its job, runs and audit
/// record, written by [`Store::fire_batch`].
#[derive(Debug)]
pub struct FireJob {
    /// The job's id, chosen beforehand (an event about the fire names it).
    pub job_id: String,
    /// The job (its `fire` says which schedule and instant).
    pub new: NewJob,
    /// Its runs.
    pub runs: Vec<NewRun>,
    /// Its audit record.
    pub audit: AuditRecord,
}

/// A claimed schedule after its fires: its next fire, and which fire of the batch was its
/// last (an index into the batch's fires).
#[derive(Debug)]
pub struct Advance<'a> {
    /// The schedule as claimed.
    pub fired: &'a schedule::Model,
    /// Its next fire (`None`: it never fires again).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Its last fire's index in the batch, when one made a job.
    pub last: Option<usize>,
}

/// A fire's job as [`Store::fire_batch`] left it.
#[derive(Debug)]
pub struct FiredJob {
    /// The job.
    pub job: job::Model,
    /// Its runs.
    pub runs: Vec<command::Model>,
    /// False when the job existed already (made by an earlier attempt at the fire).
    pub created: bool,
}

/// Jobs inserted per statement (about 20 values each).
const JOBS_PER_INSERT: usize = 1000;

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// Its tenant.
    pub tenant_id: &'a str,
    /// `schedule.missed`, …
    pub kind: &'a str,
    /// What it is about: kind, id, name.
    pub subject: (&'a str, &'a str, &'a str),
    /// One line for people.
    pub summary: String,
    /// What happened, by type.
    pub detail: Value,
    /// Stored once per key (a step retried by another node emits it again).
    pub dedup_key: Option<String>,
}

/// Filters of an event listing.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events of this type (`schedule.missed`), or of every type of a kind (`schedule`).
    pub kind: Option<String>,
    /// Events about this thing.
    pub subject_id: Option<String>,
    /// Only events older than this id (the cursor).
    pub before: Option<String>,
    /// Page size.
    pub limit: u64,
}

/// How long a node's claim on a schedule holds while it fires it: a fire takes a job's
/// creation, far less; a node that dies holding one leaves the fire to another after this.
pub const CLAIM: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

fn is_unique_violation(err: &sea_orm::DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Creates a schedule with its audit row, unless the name is taken or the tenant has its
    /// `max_schedules` already (counted under the tenant's lock, like users and agents).
    pub async fn create_schedule(
        &self,
        new: NewSchedule,
        mut audit: AuditRecord,
    ) -> Result<std::result::Result<schedule::Model, ScheduleRefused>> {
        let txn = self.begin_write().await?;
        let Some(tenant) = txn.lock_tenant(&new.tenant_id).await? else {
            return Err(StoreError::Config(format!(
                "there is no tenant {}",
                new.tenant_id
            )));
        };
        if let Some(max) = tenant.max_schedules {
            let count = schedule::Entity::find()
                .filter(schedule::Column::TenantId.eq(new.tenant_id.as_str()))
                .count(&txn.db)
                .await?;
            if count >= u64::try_from(max).unwrap_or(0) {
                return Ok(Err(ScheduleRefused::OverQuota(max)));
            }
        }
        let at = now();
        let inserted = schedule::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(new.tenant_id),
            name: Set(new.name),
            cron: Set(new.cron),
            timezone: Set(new.timezone),
            command: Set(new.command),
            data: Set(new.data),
            sealed_params: Set(new.sealed_params),
            target: Set(new.target),
            timeout_s: Set(new.timeout_s.map(|v| v as i32)),
            ttl_s: Set(new.ttl_s.map(|v| v as i32)),
            enabled: Set(new.enabled),
            missed: Set(new.missed),
            concurrency: Set(new.concurrency),
            webhook_url: Set(new.webhook_url),
            role: Set(new.role),
            created_by: Set(new.created_by),
            created_at: Set(at),
            updated_at: Set(at),
            next_fire_at: Set(new.next_fire_at),
            last_fire_at: Set(None),
            last_job_id: Set(None),
            claimed_by: Set(None),
            claimed_until: Set(None),
        }
        .insert(&txn.db)
        .await;
        let model = match inserted {
            Ok(model) => model,
            Err(err) if is_unique_violation(&err) => return Ok(Err(ScheduleRefused::NameTaken)),
            Err(err) => return Err(err.into()),
        };
        audit.event.target_id = model.id.clone();
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Ok(model))
    }

    /// One schedule of a tenant.
    pub async fn get_schedule(&self, tenant_id: &str, id: &str) -> Result<Option<schedule::Model>> {
        Ok(schedule::Entity::find_by_id(id.to_owned())
            .filter(schedule::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// A tenant's schedules by name.
    pub async fn list_schedules(
        &self,
        tenant_id: &str,
        filter: &ScheduleFilter,
    ) -> Result<Vec<schedule::Model>> {
        let mut query = schedule::Entity::find().filter(schedule::Column::TenantId.eq(tenant_id));
        if let Some(enabled) = filter.enabled {
            query = query.filter(schedule::Column::Enabled.eq(enabled));
        }
        if let Some(after) = &filter.after_name {
            query = query.filter(schedule::Column::Name.gt(after.as_str()));
        }
        Ok(query
            .order_by_asc(schedule::Column::Name)
            .limit(filter.limit)
            .all(&self.db)
            .await?)
    }

    /// Stores a changed schedule (every field as `changed` has it, `updated_at` now) with its
    /// audit row. `NameTaken` when the new name is another schedule's; `None` when it is gone.
    pub async fn update_schedule(
        &self,
        changed: SchedulePatch,
        audit: AuditRecord,
    ) -> Result<Option<std::result::Result<schedule::Model, ScheduleRefused>>> {
        let txn = self.begin_write().await?;
        let Some(current) = txn.get_schedule(&changed.tenant_id, &changed.id).await? else {
            return Ok(None);
        };
        let mut model = current.into_active_model();
        model.name = Set(changed.name);
        model.cron = Set(changed.cron);
        model.timezone = Set(changed.timezone);
        model.command = Set(changed.command);
        model.data = Set(changed.data);
        model.sealed_params = Set(changed.sealed_params);
        model.target = Set(changed.target);
        model.timeout_s = Set(changed.timeout_s);
        model.ttl_s = Set(changed.ttl_s);
        model.enabled = Set(changed.enabled);
        model.missed = Set(changed.missed);
        model.concurrency = Set(changed.concurrency);
        model.webhook_url = Set(changed.webhook_url);
        model.role = Set(changed.role);
        model.next_fire_at = Set(changed.next_fire_at);
        // Strictly later than before, even within one clock tick: an advance by a fire that
        // began before this change compares it.
        let at = now().max(changed.updated_at + chrono::TimeDelta::microseconds(1));
        model.updated_at = Set(at);
        let updated = match model.update(&txn.db).await {
            Ok(updated) => updated,
            Err(err) if is_unique_violation(&err) => {
                return Ok(Some(Err(ScheduleRefused::NameTaken)));
            }
            Err(err) => return Err(err.into()),
        };
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Some(Ok(updated)))
    }

    /// Deletes a schedule with its audit row; false when there was none. Its jobs stay.
    pub async fn delete_schedule(
        &self,
        tenant_id: &str,
        id: &str,
        audit: AuditRecord,
    ) -> Result<bool> {
        let txn = self.begin_write().await?;
        let deleted = schedule::Entity::delete_many()
            .filter(schedule::Column::TenantId.eq(tenant_id))
            .filter(schedule::Column::Id.eq(id))
            .exec(&txn.db)
            .await?
            .rows_affected;
        if deleted == 0 {
            return Ok(false);
        }
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(true)
    }

    /// How many schedules a tenant has (its usage of `max_schedules`).
    pub async fn count_schedules(&self, tenant_id: &str) -> Result<u64> {
        Ok(schedule::Entity::find()
            .filter(schedule::Column::TenantId.eq(tenant_id))
            .count(&self.db)
            .await?)
    }

    /// The earliest `next_fire_at` of any enabled schedule of any tenant: when the scheduler
    /// must look next.
    pub async fn next_schedule_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(schedule::Entity::find()
            .select_only()
            .column(schedule::Column::NextFireAt)
            // A literal, for the partial index `schedules_due` (see `RUNNING_JOBS_SQL`).
            .filter(sea_orm::sea_query::Expr::cust("schedules.enabled"))
            .filter(schedule::Column::NextFireAt.is_not_null())
            .order_by_asc(schedule::Column::NextFireAt)
            .limit(1)
            .into_tuple::<Option<DateTime<Utc>>>()
            .one(&self.db)
            .await?
            .flatten())
    }

    /// Claims up to `limit` enabled schedules due at `at` for `node_id` (see the module doc),
    /// the most overdue first: those nobody holds, or whose holder's claim ran out.
    pub async fn claim_due_schedules(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<schedule::Model>> {
        let ids = self
            .claim_ids(
                &ClaimSpec {
                    table: "schedules",
                    by: "claimed_by",
                    until: "claimed_until",
                    due: "enabled AND next_fire_at <= {at}",
                    reclaim_own: false,
                    order: "next_fire_at",
                },
                node_id,
                at + CLAIM,
                at,
                limit,
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(schedule::Entity::find()
            .filter(schedule::Column::Id.is_in(ids))
            // A total order: two nodes writing overlapping fires (a lapsed claim) insert
            // them in the same order, so neither waits on a row the other holds in turn.
            .order_by_asc(schedule::Column::NextFireAt)
            .order_by_asc(schedule::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// After a fire: the schedule's next fire, its last fire and job, and the claim let go,
    /// only while `node_id` still holds it. A change made meanwhile (`updated_at` moved)
    /// keeps the `next_fire_at` it computed. False when the claim was lost (it lapsed and
    /// another node took it, or the schedule is gone).
    pub async fn advance_schedule(
        &self,
        fired: &schedule::Model,
        node_id: &str,
        next_fire_at: Option<DateTime<Utc>>,
        last: Option<(DateTime<Utc>, String)>,
    ) -> Result<bool> {
        let mut update = schedule::Entity::update_many()
            .col_expr(
                schedule::Column::ClaimedBy,
                sea_orm::sea_query::Expr::value(Option::<String>::None),
            )
            .col_expr(
                schedule::Column::ClaimedUntil,
                sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
            );
        if let Some((at, job_id)) = &last {
            update = update
                .col_expr(
                    schedule::Column::LastFireAt,
                    sea_orm::sea_query::Expr::value(*at),
                )
                .col_expr(
                    schedule::Column::LastJobId,
                    sea_orm::sea_query::Expr::value(job_id.clone()),
                );
        }
        let unchanged = update
            .clone()
            .col_expr(
                schedule::Column::NextFireAt,
                sea_orm::sea_query::Expr::value(next_fire_at),
            )
            .filter(schedule::Column::Id.eq(&fired.id))
            .filter(schedule::Column::ClaimedBy.eq(node_id))
            .filter(schedule::Column::UpdatedAt.eq(fired.updated_at))
            .exec(&self.db)
            .await?
            .rows_affected;
        if unchanged == 1 {
            return Ok(true);
        }
        let changed = update
            .filter(schedule::Column::Id.eq(&fired.id))
            .filter(schedule::Column::ClaimedBy.eq(node_id))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(changed == 1)
    }

    /// Records an event; `None` when an event with the same `dedup_key` is stored already.
    pub(super) async fn insert_event(&self, new: NewEvent<'_>) -> Result<Option<event::Model>> {
        let NewEvent {
            tenant_id,
            kind,
            subject,
            summary,
            detail,
            dedup_key,
        } = new;
        let row = event::Model {
            id: new_id(),
            tenant_id: tenant_id.to_owned(),
            kind: kind.to_owned(),
            subject_type: subject.0.to_owned(),
            subject_id: subject.1.to_owned(),
            subject_name: subject.2.to_owned(),
            summary,
            at: now(),
            detail,
            dedup_key,
        };
        // `DO NOTHING` rather than a caught unique violation: inside a PostgreSQL
        // transaction (a batch of fires) a violation would abort the whole transaction.
        let inserted = event::Entity::insert(row.clone().into_active_model())
            .on_conflict_do_nothing_on([event::Column::DedupKey])
            .exec_without_returning(&self.db)
            .await?;
        Ok(match inserted {
            TryInsertResult::Inserted(n) if n > 0 => Some(row),
            _ => None,
        })
    }

    /// The jobs of a batch of claimed schedules' fires, their events, and each schedule's
    /// advance, in one write: the fire loop's pass costs one transaction per batch instead of
    /// several per fire (CONTRACT.md §8: 10,000 fires in a minute). A fire whose job exists already (a
    /// lapsed claim repeated by another node, which the unique `(schedule_id, scheduled_for)`
    /// catches) answers that job, `created: false`, and records nothing again. Schedules whose
    /// claim was lost meanwhile are not advanced (counted in the answer's second half).
    pub async fn fire_batch(
        &self,
        node_id: &str,
        fires: Vec<FireJob>,
        events: Vec<NewEvent<'_>>,
        advances: Vec<Advance<'_>>,
    ) -> Result<(Vec<FiredJob>, usize)> {
        let now = now();
        let txn = self.begin_write().await?;
        // The jobs in a few statements; a fire whose job exists already (a lapsed claim
        // repeated) is left out by `DO NOTHING` and found below.
        let rows: Vec<job::ActiveModel> = fires
            .iter()
            .map(|fire| {
                super::jobs::job_row(
                    &fire.new,
                    &fire.job_id,
                    super::jobs::job_script(&fire.new),
                    now,
                    !fire.runs.is_empty(),
                )
            })
            .collect();
        let ids: Vec<String> = fires.iter().map(|f| f.job_id.clone()).collect();
        let mut pending = rows.into_iter().peekable();
        while pending.peek().is_some() {
            let chunk: Vec<_> = pending.by_ref().take(JOBS_PER_INSERT).collect();
            job::Entity::insert_many(chunk)
                .on_conflict_do_nothing_on([job::Column::ScheduleId, job::Column::ScheduledFor])
                .exec_without_returning(&txn.db)
                .await?;
        }
        let mut inserted: std::collections::HashMap<String, job::Model> = Default::default();
        for chunk in ids.chunks(JOBS_PER_INSERT) {
            for job in job::Entity::find()
                .filter(job::Column::Id.is_in(chunk.iter().cloned()))
                .all(&txn.db)
                .await?
            {
                inserted.insert(job.id.clone(), job);
            }
        }
        let mut made = Vec::with_capacity(fires.len());
        let mut audits = Vec::with_capacity(fires.len());
        for FireJob {
            job_id,
            new,
            runs,
            audit,
        } in fires
        {
            let Some(job) = inserted.remove(&job_id) else {
                let fire = new.fire.as_ref().ok_or_else(|| {
                    StoreError::Config("a batch of fires holds a job without its fire".into())
                })?;
                let job = txn
                    .job_of_fire(&new.tenant_id, fire)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Config(format!(
                            "schedule {}: its fire's job conflicted and is not there",
                            fire.schedule_id
                        ))
                    })?;
                let runs = txn.job_runs(&new.tenant_id, &job.id).await?;
                made.push(FiredJob {
                    job,
                    runs,
                    created: false,
                });
                continue;
            };
            let models = super::jobs::run_rows(&new, &job_id, runs, now);
            txn.insert_runs(&models).await?;
            let mut audit = audit;
            audit.event.target_id = job_id.clone();
            audits.push(audit);
            crate::metrics::commands_created(&new.command, models.len());
            let job = if models.is_empty() {
                txn.record_job_end(&job, Some(&[])).await?;
                job
            } else if models.iter().all(|run| run.state != super::state::PENDING) {
                // Every run refused: the job is over already, and so recorded, in this write.
                txn.refresh_job(&job.tenant_id, &job.id)
                    .await?
                    .unwrap_or(job)
            } else {
                job
            };
            made.push(FiredJob {
                job,
                runs: models,
                created: true,
            });
        }
        txn.append_audits_now(&audits).await?;
        for event in events {
            txn.record_event(event).await?;
        }
        let mut lost = 0;
        for advance in advances {
            let last = advance.last.and_then(|i| {
                let fired = made.get(i)?;
                Some((fired.job.scheduled_for?, fired.job.id.clone()))
            });
            if !txn
                .advance_schedule(advance.fired, node_id, advance.next_fire_at, last)
                .await?
            {
                lost += 1;
            }
        }
        txn.db.commit().await?;
        Ok((made, lost))
    }

    /// A tenant's events, newest first.
    pub async fn list_events(
        &self,
        tenant_id: &str,
        filter: &EventFilter,
    ) -> Result<Vec<event::Model>> {
        let mut query = events_of(
            tenant_id,
            filter.kind.as_deref(),
            filter.subject_id.as_deref(),
        );
        if let Some(before) = &filter.before {
            query = query.filter(event::Column::Id.lt(before.as_str()));
        }
        Ok(query
            .order_by_desc(event::Column::Id)
            .limit(filter.limit)
            .all(&self.db)
            .await?)
    }

    /// A tenant's events with an id greater than `after`, oldest first, at most `limit`: what
    /// an event stream reads, from a little before the newest event it has sent (see
    /// `service::events`). `kind` and `subject_id` filter as in [`Self::list_events`].
    pub async fn events_after(
        &self,
        tenant_id: &str,
        kind: Option<&str>,
        subject_id: Option<&str>,
        after: &str,
        limit: u64,
    ) -> Result<Vec<event::Model>> {
        Ok(events_of(tenant_id, kind, subject_id)
            .filter(event::Column::Id.gt(after))
            .order_by_asc(event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// A tenant's events of a type (`schedule.missed`) or of every type of a kind (`schedule`),
/// about one subject: the filters the listing and the stream share.
fn events_of(
    tenant_id: &str,
    kind: Option<&str>,
    subject_id: Option<&str>,
) -> sea_orm::Select<event::Entity> {
    let mut query = event::Entity::find().filter(event::Column::TenantId.eq(tenant_id));
    if let Some(kind) = kind {
        if kind.contains('.') {
            query = query.filter(event::Column::Kind.eq(kind));
        } else {
            query = query.filter(event::Column::Kind.starts_with(format!("{kind}.")));
        }
    }
    if let Some(subject) = subject_id {
        query = query.filter(event::Column::SubjectId.eq(subject));
    }
    query
}
