//! Integrations' rows, the events outbox, and the failure streaks behind `notify_after` and
//! `recovered` (CONTRACT.md §11).
//!
//! Every event is recorded through [`Store::record_event`], which inserts the event and, in the
//! same transaction, one delivery per enabled integration that wants it: an event is never
//! committed without its deliveries, nor a delivery without its event (the outbox). The worker
//! (`service::integrations`) claims due deliveries with the claim rule's form 2, so a delivery
//! is sent by one node at a time, and records every attempt. An integration's deliveries are
//! sent in the order they were recorded, one at a time: a later one is not due while an
//! earlier one is pending (a PagerDuty `resolve` must not overtake its `trigger`, nor a
//! Slack "recovered" its "failed"), which also keeps a destination that is down from being
//! sent more than one request at a time.
//!
//! A job's end is recorded from the one place where a job becomes final
//! ([`Store::refresh_job`], or the insert of a job that is over at once), in that write's
//! transaction: a job's event cannot be lost between its commit and a crash.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionSession, TransactionTrait,
    TryInsertResult,
};
use serde_json::{Value, json};

use super::schedules::NewEvent;
use super::{
    AuditRecord, ClaimSpec, Result, Store, delivery, delivery_attempt, event, integration, job,
    new_id, now, schedule, state,
};

/// Delivery states.
pub mod delivery_status {
    /// To be sent (again).
    pub const PENDING: &str = "pending";
    /// The provider took it.
    pub const DELIVERED: &str = "delivered";
    /// Refused, or out of attempts.
    pub const FAILED: &str = "failed";
}

/// Event types of a job's end.
pub const JOB_SUCCEEDED: &str = "job.succeeded";
/// A run ended failed, timed out, lost or expired.
pub const JOB_FAILED: &str = "job.failed";
/// The first success of a subject after failures.
pub const JOB_RECOVERED: &str = "job.recovered";

/// How long a node's claim on a delivery holds: longer than an attempt (10 s) by far.
pub const DELIVERY_CLAIM: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// An integration to create (validated by the service).
#[derive(Debug, Clone)]
pub struct NewIntegration {
    /// Owning tenant.
    pub tenant_id: String,
    /// Unique in the tenant.
    pub name: String,
    /// `webhook`, `slack`, …
    pub kind: String,
    /// As shown (secret fields masked).
    pub config: Value,
    /// The secret fields, sealed.
    pub sealed_config: Option<String>,
    /// Event types or kinds.
    pub events: Vec<String>,
    /// Narrowing by tags, script, schedule.
    pub filter: Option<Value>,
    /// Sent to when true.
    pub enabled: bool,
    /// Failures in a row before one is sent.
    pub notify_after: i32,
    /// Who made it.
    pub created_by: String,
}

/// An attempt at a delivery, and what follows it.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    /// HTTP status, when the provider answered.
    pub status_code: Option<i32>,
    /// How long it took.
    pub duration_ms: i64,
    /// The provider's answer (truncated by the caller).
    pub response: Option<String>,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// `None`: over (delivered or failed as `status` says); `Some(at)`: try again then.
    pub retry_at: Option<DateTime<Utc>>,
    /// `delivered` or `failed` when over.
    pub status: &'static str,
}

/// Whether an integration wants an event: its type (or kind, or `*`) is listed, the filter
/// matches, and a failure is sent only from `notify_after` failures in a row (a recovery only
/// after a failure that was sent).
pub fn wants(integration: &integration::Model, event: &event::Model) -> bool {
    if !integration.enabled {
        return false;
    }
    let kind = event.kind.split('.').next().unwrap_or_default();
    let listed = integration
        .events
        .iter()
        .any(|e| e == "*" || e == &event.kind || e == kind);
    if !listed {
        return false;
    }
    let data = &event.detail;
    if let Some(filter) = integration.filter.as_ref().filter(|f| f.is_object()) {
        let tags = super::string_list(filter.get("tags").unwrap_or(&Value::Null));
        if !tags.is_empty() {
            let have = super::string_list(data.get("tags").unwrap_or(&Value::Null));
            if !tags.iter().all(|t| have.contains(t)) {
                return false;
            }
        }
        if let Some(script) = filter.get("script").and_then(Value::as_str)
            && data.get("script").and_then(Value::as_str) != Some(script)
        {
            return false;
        }
        if let Some(schedule) = filter.get("schedule_id").and_then(Value::as_str) {
            let of_event = data
                .get("schedule_id")
                .and_then(Value::as_str)
                .or((event.subject_type == "schedule").then_some(event.subject_id.as_str()));
            if of_event != Some(schedule) {
                return false;
            }
        }
    }
    let after = i64::from(integration.notify_after.max(1));
    match event.kind.as_str() {
        JOB_FAILED => data
            .get("consecutive_failures")
            .and_then(Value::as_i64)
            .is_none_or(|n| n >= after),
        JOB_RECOVERED => data
            .get("after_failures")
            .and_then(Value::as_i64)
            .is_none_or(|n| n >= after),
        _ => true,
    }
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Creates an integration; `None` when the tenant has one with that name.
    pub async fn create_integration(
        &self,
        new: NewIntegration,
        audit: AuditRecord,
    ) -> Result<Option<integration::Model>> {
        let at = now();
        let row = integration::Model {
            id: new_id(),
            tenant_id: new.tenant_id,
            name: new.name,
            kind: new.kind,
            config: new.config,
            sealed_config: new.sealed_config,
            events: new.events.into(),
            filter: new.filter,
            enabled: new.enabled,
            notify_after: new.notify_after,
            created_by: new.created_by,
            created_at: at,
            updated_at: at,
        };
        let txn = self.begin_write().await?;
        let inserted = integration::Entity::insert(row.clone().into_active_model())
            .on_conflict_do_nothing_on([integration::Column::TenantId, integration::Column::Name])
            .exec_without_returning(&txn.db)
            .await?;
        if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            return Ok(None);
        }
        let mut audit = audit;
        audit.event.target_id = row.id.clone();
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Some(row))
    }

    /// One integration of a tenant.
    pub async fn get_integration(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<integration::Model>> {
        Ok(integration::Entity::find_by_id(id.to_owned())
            .filter(integration::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// A tenant's integrations, by name.
    pub async fn list_integrations(&self, tenant_id: &str) -> Result<Vec<integration::Model>> {
        Ok(integration::Entity::find()
            .filter(integration::Column::TenantId.eq(tenant_id))
            .order_by_asc(integration::Column::Name)
            .all(&self.db)
            .await?)
    }

    /// Stores a changed integration (the whole row); `None` when its new name is taken.
    pub async fn update_integration(
        &self,
        changed: integration::Model,
        audit: AuditRecord,
    ) -> Result<Option<integration::Model>> {
        let taken = integration::Entity::find()
            .filter(integration::Column::TenantId.eq(&changed.tenant_id))
            .filter(integration::Column::Name.eq(&changed.name))
            .filter(integration::Column::Id.ne(&changed.id))
            .one(&self.db)
            .await?
            .is_some();
        if taken {
            return Ok(None);
        }
        let txn = self.begin_write().await?;
        let mut row = changed.clone();
        row.updated_at = now();
        let stored = row
            .clone()
            .into_active_model()
            .reset_all()
            .update(&txn.db)
            .await?;
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Some(stored))
    }

    /// Deletes an integration, its deliveries and their attempts; false when there was none.
    pub async fn delete_integration(
        &self,
        tenant_id: &str,
        id: &str,
        audit: AuditRecord,
    ) -> Result<bool> {
        let txn = self.begin_write().await?;
        let gone = integration::Entity::delete_many()
            .filter(integration::Column::TenantId.eq(tenant_id))
            .filter(integration::Column::Id.eq(id))
            .exec(&txn.db)
            .await?
            .rows_affected;
        if gone == 0 {
            return Ok(false);
        }
        let backend = txn.db.get_database_backend();
        let mark = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        txn.db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "DELETE FROM delivery_attempts WHERE delivery_id IN \
                     (SELECT id FROM deliveries WHERE tenant_id = {} AND integration_id = {})",
                    mark(1),
                    mark(2)
                ),
                [tenant_id.into(), id.into()],
            ))
            .await?;
        delivery::Entity::delete_many()
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .filter(delivery::Column::IntegrationId.eq(id))
            .exec(&txn.db)
            .await?;
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(true)
    }

    /// Records an event and, in the same transaction, a delivery to every integration of its
    /// tenant that wants it (the outbox). `None` when an event with its `dedup_key` is
    /// recorded already (nothing is sent twice). Inside a transaction it is a savepoint.
    pub async fn record_event(&self, new: NewEvent<'_>) -> Result<Option<event::Model>> {
        let txn = self.begin_write().await?;
        let event = txn.insert_event_with_deliveries(new).await?;
        txn.db.commit().await?;
        Ok(event)
    }

    /// [`Store::record_event`] in the caller's transaction.
    pub(super) async fn insert_event_with_deliveries(
        &self,
        new: NewEvent<'_>,
    ) -> Result<Option<event::Model>> {
        let Some(event) = self.insert_event(new).await? else {
            return Ok(None);
        };
        let integrations = integration::Entity::find()
            .filter(integration::Column::TenantId.eq(&event.tenant_id))
            .filter(integration::Column::Enabled.eq(true))
            .all(&self.db)
            .await?;
        let at = now();
        let rows: Vec<delivery::ActiveModel> = integrations
            .iter()
            .filter(|integration| wants(integration, &event))
            .map(|integration| {
                delivery::Model {
                    id: new_id(),
                    tenant_id: event.tenant_id.clone(),
                    integration_id: integration.id.clone(),
                    event_id: event.id.clone(),
                    status: delivery_status::PENDING.into(),
                    attempts: 0,
                    next_attempt_at: at,
                    claimed_by: None,
                    claimed_until: None,
                    created_at: at,
                    finished_at: None,
                    last_status: None,
                    last_error: None,
                }
                .into_active_model()
            })
            .collect();
        if !rows.is_empty() {
            delivery::Entity::insert_many(rows)
                .exec_without_returning(&self.db)
                .await?;
        }
        Ok(Some(event))
    }

    /// Records a final job's event (`job.succeeded` or `job.failed`, and `job.recovered` for
    /// the first success after failures of the same subject), in the caller's write. The
    /// subject is what recurs: the job's schedule, else its script (or command) on its target,
    /// so that a failure and its recovery name the same thing (PagerDuty's `dedup_key`).
    pub async fn record_job_end(
        &self,
        job: &job::Model,
        counts: Option<&[(String, i64)]>,
    ) -> Result<()> {
        let failed = job.status == super::job_status::FAILED;
        if !failed && job.status != super::job_status::SUCCEEDED {
            return Ok(());
        }
        let (subject_type, subject_id, subject_name) = self.job_subject(job).await?;
        let read;
        let counts = match counts {
            Some(counts) => counts,
            None => {
                read = self.run_counts(job).await?;
                &read
            }
        };
        let count = |states: &[&str]| -> i64 {
            counts
                .iter()
                .filter(|(s, _)| states.contains(&s.as_str()))
                .map(|(_, n)| n)
                .sum()
        };
        let runs: i64 = counts.iter().map(|(_, n)| n).sum();
        let succeeded = count(&[state::SUCCEEDED]);
        let unsuccessful = count(&[state::FAILED, state::TIMED_OUT, state::LOST, state::EXPIRED]);
        let streak = self
            .streak(&job.tenant_id, subject_type, &subject_id, failed)
            .await?;
        let duration_ms = job
            .finished_at
            .map(|end| (end - job.created_at).num_milliseconds());
        let what = job.script.clone().unwrap_or_else(|| job.command.clone());
        let tags = job.target.get("tags").cloned().unwrap_or(json!([]));
        let mut detail = json!({
            "job_id": job.id,
            "command": job.command,
            "script": job.script,
            "schedule_id": job.schedule_id,
            "status": job.status,
            "runs": runs,
            "succeeded": succeeded,
            "failed": unsuccessful,
            "duration_ms": duration_ms,
            "target": job.target,
            "tags": tags,
        });
        let short = &job.id[job.id.len().saturating_sub(8)..];
        let (kind, summary) = if failed {
            detail["consecutive_failures"] = json!(streak);
            let why = match &job.note {
                Some(note) if runs == 0 => note.clone(),
                _ => format!("{unsuccessful} of {runs} run(s) did not succeed"),
            };
            (
                JOB_FAILED,
                format!("{subject_name}: job {short} ({what}) failed: {why}"),
            )
        } else {
            (
                JOB_SUCCEEDED,
                format!("{subject_name}: job {short} ({what}) succeeded on {succeeded} agent(s)"),
            )
        };
        self.record_event(NewEvent {
            tenant_id: &job.tenant_id,
            kind,
            subject: (subject_type, &subject_id, &subject_name),
            summary,
            detail: detail.clone(),
            dedup_key: Some(format!("{kind}:{}", job.id)),
        })
        .await?;
        if !failed && streak > 0 {
            detail["after_failures"] = json!(streak);
            self.record_event(NewEvent {
                tenant_id: &job.tenant_id,
                kind: JOB_RECOVERED,
                subject: (subject_type, &subject_id, &subject_name),
                summary: format!(
                    "{subject_name}: recovered (job {short} succeeded after {streak} failure(s) in a row)"
                ),
                detail,
                dedup_key: Some(format!("{JOB_RECOVERED}:{}", job.id)),
            })
            .await?;
        }
        Ok(())
    }

    /// A job's runs counted by state.
    async fn run_counts(&self, job: &job::Model) -> Result<Vec<(String, i64)>> {
        Ok(super::command::Entity::find()
            .select_only()
            .column(super::command::Column::State)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .filter(super::command::Column::JobId.eq(&job.id))
            .filter(super::command::Column::TenantId.eq(&job.tenant_id))
            .group_by(super::command::Column::State)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The subject of a job's events: `(kind, id, name)`.
    async fn job_subject(&self, job: &job::Model) -> Result<(&'static str, String, String)> {
        if let Some(schedule_id) = &job.schedule_id {
            let name = schedule::Entity::find_by_id(schedule_id.clone())
                .select_only()
                .column(schedule::Column::Name)
                .into_tuple::<String>()
                .one(&self.db)
                .await?
                .unwrap_or_else(|| schedule_id.clone());
            return Ok(("schedule", schedule_id.clone(), name));
        }
        let target = super::canonical_target(&job.target);
        match &job.script {
            Some(script) => Ok((
                "script",
                format!("{script}@{target}"),
                format!("{script} on {target}"),
            )),
            None => Ok((
                "command",
                format!("{}@{target}", job.command),
                format!("{} on {target}", job.command),
            )),
        }
    }

    /// Counts a failure of a subject (answers the failures in a row, this one included), or
    /// ends its streak on a success (answers the failures it ended, 0 when none).
    async fn streak(
        &self,
        tenant_id: &str,
        subject_type: &str,
        subject_id: &str,
        failed: bool,
    ) -> Result<i64> {
        let backend = self.db.get_database_backend();
        let mark = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        };
        let (sql, values): (String, Vec<sea_orm::Value>) = if failed {
            (
                format!(
                    "INSERT INTO event_streaks (tenant_id, subject_type, subject_id, failures, updated_at) \
                     VALUES ({}, {}, {}, 1, {}) ON CONFLICT (tenant_id, subject_type, subject_id) \
                     DO UPDATE SET failures = event_streaks.failures + 1, updated_at = excluded.updated_at \
                     RETURNING failures",
                    mark(1),
                    mark(2),
                    mark(3),
                    mark(4)
                ),
                vec![
                    tenant_id.into(),
                    subject_type.into(),
                    subject_id.into(),
                    now().into(),
                ],
            )
        } else {
            (
                format!(
                    "DELETE FROM event_streaks WHERE tenant_id = {} AND subject_type = {} \
                     AND subject_id = {} RETURNING failures",
                    mark(1),
                    mark(2),
                    mark(3)
                ),
                vec![tenant_id.into(), subject_type.into(), subject_id.into()],
            )
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
        Ok(match row {
            Some(row) => row
                .try_get_by_index::<i32>(0)
                .map(i64::from)
                .or_else(|_| row.try_get_by_index::<i64>(0))?,
            None => 0,
        })
    }

    /// Claims up to `limit` due deliveries for `node_id` (the claim rule, form 2).
    pub async fn claim_deliveries(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<delivery::Model>> {
        let ids = self
            .claim_ids(
                &ClaimSpec {
                    table: "deliveries",
                    by: "claimed_by",
                    until: "claimed_until",
                    // In order per integration: a resolve never overtakes its trigger,
                    // even while the trigger waits for a retry.
                    due: "status = 'pending' AND next_attempt_at <= {at} AND NOT EXISTS \
                          (SELECT 1 FROM deliveries e WHERE e.integration_id = \
                          deliveries.integration_id AND e.status = 'pending' AND e.id < deliveries.id)",
                    reclaim_own: false,
                    order: "next_attempt_at, id",
                },
                node_id,
                at + DELIVERY_CLAIM,
                at,
                limit,
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(delivery::Entity::find()
            .filter(delivery::Column::Id.is_in(ids))
            .order_by_asc(delivery::Column::NextAttemptAt)
            .order_by_asc(delivery::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// The earliest pending delivery's next attempt (the worker sleeps until then).
    pub async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(delivery::Entity::find()
            .select_only()
            .column(delivery::Column::NextAttemptAt)
            // A literal, for the partial index `deliveries_due` (see `RUNNING_JOBS_SQL`).
            .filter(Expr::cust("deliveries.status = 'pending'"))
            .order_by_asc(delivery::Column::NextAttemptAt)
            .limit(1)
            .into_tuple::<DateTime<Utc>>()
            .one(&self.db)
            .await?)
    }

    /// One event of a tenant.
    pub async fn get_event(&self, tenant_id: &str, id: &str) -> Result<Option<event::Model>> {
        Ok(event::Entity::find_by_id(id.to_owned())
            .filter(event::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Records an attempt at a claimed delivery and what follows (delivered, failed, or the
    /// next attempt), and lets the claim go; only while `node_id` holds it. `attempt` is
    /// `None` for a delivery put off without being sent (its destination's rate).
    pub async fn finish_attempt(
        &self,
        delivery: &delivery::Model,
        node_id: &str,
        attempt: Option<&DeliveryAttempt>,
        put_off_to: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let txn = self.begin_write().await?;
        let mut update = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::ClaimedBy,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                delivery::Column::ClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(delivery::Column::Id.eq(&delivery.id))
            .filter(delivery::Column::ClaimedBy.eq(node_id));
        if let Some(attempt) = attempt {
            let number = delivery.attempts + 1;
            delivery_attempt::Entity::insert(
                delivery_attempt::Model {
                    delivery_id: delivery.id.clone(),
                    attempt: number,
                    tenant_id: delivery.tenant_id.clone(),
                    at: now(),
                    status_code: attempt.status_code,
                    duration_ms: attempt.duration_ms,
                    response: attempt.response.clone(),
                    error: attempt.error.clone(),
                }
                .into_active_model(),
            )
            .on_conflict(
                OnConflict::columns([
                    delivery_attempt::Column::DeliveryId,
                    delivery_attempt::Column::Attempt,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&txn.db)
            .await?;
            update = update
                .col_expr(delivery::Column::Attempts, Expr::value(number))
                .col_expr(
                    delivery::Column::LastStatus,
                    Expr::value(attempt.status_code),
                )
                .col_expr(
                    delivery::Column::LastError,
                    Expr::value(attempt.error.clone()),
                );
            match attempt.retry_at {
                Some(at) => {
                    update = update.col_expr(delivery::Column::NextAttemptAt, Expr::value(at));
                }
                None => {
                    update = update
                        .col_expr(delivery::Column::Status, Expr::value(attempt.status))
                        .col_expr(delivery::Column::FinishedAt, Expr::value(Some(now())));
                }
            }
        } else if let Some(at) = put_off_to {
            update = update.col_expr(delivery::Column::NextAttemptAt, Expr::value(at));
        }
        let held = update.exec(&txn.db).await?.rows_affected == 1;
        if !held {
            txn.db.rollback().await?;
            return Ok(false);
        }
        txn.db.commit().await?;
        Ok(true)
    }

    /// An integration's deliveries, newest first, each with its attempts (oldest first).
    pub async fn list_deliveries(
        &self,
        tenant_id: &str,
        integration_id: &str,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(delivery::Model, Vec<delivery_attempt::Model>)>> {
        let mut query = delivery::Entity::find()
            .filter(delivery::Column::TenantId.eq(tenant_id))
            .filter(delivery::Column::IntegrationId.eq(integration_id));
        if let Some(before) = before {
            query = query.filter(delivery::Column::Id.lt(before));
        }
        let deliveries = query
            .order_by_desc(delivery::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let attempts = delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::TenantId.eq(tenant_id))
            .filter(
                delivery_attempt::Column::DeliveryId.is_in(deliveries.iter().map(|d| d.id.clone())),
            )
            .order_by_asc(delivery_attempt::Column::Attempt)
            .all(&self.db)
            .await?;
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let of = attempts
                    .iter()
                    .filter(|a| a.delivery_id == d.id)
                    .cloned()
                    .collect();
                (d, of)
            })
            .collect())
    }

    /// Records a delivery made on the spot (an integration's `test`), already over.
    pub async fn record_test_delivery(
        &self,
        tenant_id: &str,
        integration_id: &str,
        event_id: &str,
        attempt: &DeliveryAttempt,
    ) -> Result<delivery::Model> {
        let at = now();
        let row = delivery::Model {
            id: new_id(),
            tenant_id: tenant_id.to_owned(),
            integration_id: integration_id.to_owned(),
            event_id: event_id.to_owned(),
            status: attempt.status.to_owned(),
            attempts: 1,
            next_attempt_at: at,
            claimed_by: None,
            claimed_until: None,
            created_at: at,
            finished_at: Some(at),
            last_status: attempt.status_code,
            last_error: attempt.error.clone(),
        };
        let txn = self.begin_write().await?;
        delivery::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&txn.db)
            .await?;
        delivery_attempt::Entity::insert(
            delivery_attempt::Model {
                delivery_id: row.id.clone(),
                attempt: 1,
                tenant_id: tenant_id.to_owned(),
                at,
                status_code: attempt.status_code,
                duration_ms: attempt.duration_ms,
                response: attempt.response.clone(),
                error: attempt.error.clone(),
            }
            .into_active_model(),
        )
        .exec_without_returning(&txn.db)
        .await?;
        txn.db.commit().await?;
        Ok(row)
    }
}
