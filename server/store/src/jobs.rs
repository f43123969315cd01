//! Jobs, their runs and the runs' output.
//!
//! A job is one request ("run `backup` on every `db` agent"); each targeted agent gets a run,
//! which is an ordinary command row with a `job_id`, so delivery, acknowledgement and results
//! work exactly as for single commands. Output is stored in the chunks the agent sent, keyed
//! by `(command, stream, seq)`: a chunk the agent sends again after a reconnect is stored
//! once, and no output is ever held whole in memory.

use super::now;
use chrono::{DateTime, Utc};
use outpost_protocol::{OutputStream, codes};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Set, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use super::{
    AuditRecord, Result, Store, agent, command, job, new_id, output_chunk, state, string_list,
};

/// Job statuses.
pub mod job_status {
    use crate::domain::JobState;

    /// Some run is not final yet.
    pub const RUNNING: &str = JobState::Running.as_str();
    /// Every run succeeded.
    pub const SUCCEEDED: &str = JobState::Succeeded.as_str();
    /// Some run did not succeed (failed, timed out, expired, lost).
    pub const FAILED: &str = JobState::Failed.as_str();
    /// Every run that did not succeed was cancelled.
    pub const CANCELLED: &str = JobState::Cancelled.as_str();
}

/// Webhook delivery states of a finished job.
pub mod webhook_status {
    use crate::domain::WebhookStatus;

    /// To be delivered.
    pub const PENDING: &str = WebhookStatus::Pending.as_str();
    /// The receiver answered 2xx.
    pub const DELIVERED: &str = WebhookStatus::Delivered.as_str();
    /// Every attempt failed, or the URL is not allowed.
    pub const FAILED: &str = WebhookStatus::Failed.as_str();
}

/// A job as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Owning tenant.
    pub tenant_id: String,
    /// Command name.
    pub command: String,
    /// Arguments, secret parameter values masked.
    pub data: Value,
    /// The secret parameter values, sealed (see `crate::secrets`), for every run.
    pub sealed_params: Option<String>,
    /// The target as given.
    pub target: Value,
    /// Run timeout.
    pub timeout_s: u32,
    /// Wait this long for offline agents.
    pub ttl_s: u32,
    /// Makes a retried request return the first job.
    pub idempotency_key: Option<String>,
    /// Keyed hash of the request, kept with an idempotency key (see the API's `create`).
    pub request_fingerprint: Option<String>,
    /// Notified when the job finishes.
    pub webhook_url: Option<String>,
    /// The schedule's fire that creates it: a second job for the same fire is never
    /// created (the first is returned instead).
    pub fire: Option<Fire>,
    /// What the server says about the job, shown with it.
    pub note: Option<String>,
    /// The job this one re-runs.
    pub rerun_of: Option<String>,
}

/// A schedule's fire, as its job records it.
#[derive(Debug, Clone)]
pub struct Fire {
    /// The schedule.
    pub schedule_id: String,
    /// The fire's instant; `None` for a schedule's "run now", which is not a fire and may
    /// be repeated.
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The job stands for every missed fire (`missed: run_once`).
    pub catch_up: bool,
}

/// One run to create: the agent, or why it is refused (then it is stored already failed and
/// never sent).
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Target agent.
    pub agent_id: String,
    /// `(code, message)` when the run must not be sent.
    pub refused: Option<(String, String)>,
    /// The key the agent is bound to.
    pub key_id: Option<String>,
}

/// Filters of `GET /api/jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Jobs with a run on this agent.
    pub agent_id: Option<String>,
    /// `run` jobs of this script.
    pub script: Option<String>,
    /// Jobs of this command.
    pub command: Option<String>,
    /// Jobs in this status.
    pub status: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Jobs created by this schedule's fires (and its runs now).
    pub schedule_id: Option<String>,
    /// Only jobs older than this job id (the cursor).
    pub before: Option<String>,
    /// Only jobs whose id starts or ends with this (lowercase hex digits and dashes only,
    /// checked by the caller: it goes into a `LIKE` pattern).
    pub id_part: Option<String>,
    /// Page size.
    pub limit: u64,
}

/// One chunk of a run's output, as received.
#[derive(Debug, Clone, Copy)]
pub struct OutputChunk<'a> {
    /// The run.
    pub command_id: &'a str,
    /// Its stream.
    pub stream: OutputStream,
    /// Its number within the stream.
    pub seq: u64,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// What storing an output chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, as chunk `id`, for the run of `job_id`.
    New {
        /// The chunk's row id (orders output across streams).
        id: i64,
        /// The run's job, if it has one.
        job_id: Option<String>,
    },
    /// Already stored (a resend), or over the cap: nothing changed.
    Nothing,
    /// Not a run of this agent that is still open.
    Foreign,
    /// A chunk not stored before, for a run that is final (or answered earlier in the same
    /// batch): refused, nothing changed. The agent sends all of a run's output before its
    /// answer, so this is never a late part of the run's output.
    Final {
        /// The run.
        command_id: String,
        /// The chunk's stream.
        stream: OutputStream,
        /// The chunk's number.
        seq: u64,
    },
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Creates a job and its runs in one transaction. With an idempotency key already used
    /// by the tenant, returns the existing job instead (and `false`): the caller compares its
    /// `request_fingerprint` with the request's.
    pub async fn create_job(
        &self,
        new: NewJob,
        runs: Vec<NewRun>,
    ) -> Result<(job::Model, Vec<command::Model>, bool)> {
        self.create_job_audited(new, runs, None).await
    }

    /// [`Store::create_job`], appending `audit` (its event's target id set to the new job's
    /// id) to the tenant's audit log in the job's transaction. A job answered from its
    /// idempotency key is not new and records nothing.
    pub async fn create_job_audited(
        &self,
        new: NewJob,
        runs: Vec<NewRun>,
        audit: Option<AuditRecord>,
    ) -> Result<(job::Model, Vec<command::Model>, bool)> {
        if let Some(existing) = self.existing_job(&new).await? {
            let runs = self.job_runs(&new.tenant_id, &existing.id).await?;
            return Ok((existing, runs, false));
        }
        let now = now();
        let job_id = new_id();
        let script = job_script(&new);
        let txn = super::begin_write(&self.db).await?;
        let inserted = job_row(&new, &job_id, script, now, !runs.is_empty())
            .insert(&txn)
            .await;
        let job = match inserted {
            Ok(job) => job,
            // Two requests with one idempotency key, or two nodes with one schedule's fire,
            // raced: the other one won.
            Err(err)
                if new.idempotency_key.is_some()
                    || new.fire.as_ref().is_some_and(|f| f.scheduled_for.is_some()) =>
            {
                txn.rollback().await?;
                return match self.existing_job(&new).await? {
                    Some(existing) => {
                        let runs = self.job_runs(&new.tenant_id, &existing.id).await?;
                        Ok((existing, runs, false))
                    }
                    None => Err(err.into()),
                };
            }
            Err(err) => return Err(err.into()),
        };
        let models = run_rows(&new, &job_id, runs, now);
        let txn = Store { db: txn };
        txn.insert_runs(&models).await?;
        if models.is_empty() {
            txn.record_job_end(&job, Some(&[])).await?;
        }
        if let Some(mut audit) = audit {
            audit.event.target_id = job_id.clone();
            txn.append_audit_now(&audit).await?;
        }
        txn.db.commit().await?;
        crate::metrics::commands_created(&new.command, models.len());
        // A job with a pending run is running, as inserted; one whose every run was refused
        // is over already.
        if models.is_empty() || models.iter().any(|run| run.state == state::PENDING) {
            return Ok((job, models, true));
        }
        let job = match self.refresh_job(&new.tenant_id, &job.id).await? {
            Some(refreshed) => refreshed,
            None => job,
        };
        Ok((job, models, true))
    }

    /// The agents of a tenant whose announced scripts may mark a parameter secret, with their
    /// scripts: `(agent id, scripts)`. Only these can make a job's parameter secret, and a
    /// fleet without secret parameters answers with nothing, from a scan of the scripts' text
    /// (no row is decoded; a job needs this only when it has parameters).
    pub async fn agents_with_secret_params(&self, tenant_id: &str) -> Result<Vec<(String, Value)>> {
        Ok(agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .column(agent::Column::Scripts)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(Expr::cust(r#"CAST(scripts AS TEXT) LIKE '%"secret"%'"#))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The agents of a tenant whose last `register` did not list a script named `script`,
    /// with their scripts: `(agent id, scripts)`. A `run` job asks this once, whatever its
    /// size: the agents that list the script (usually all of them) are not returned, and
    /// `outpost_core::service::commands::script_refusal` decides about the others.
    pub async fn agents_without_script(
        &self,
        tenant_id: &str,
        script: &str,
    ) -> Result<Vec<(String, Value)>> {
        let listed = match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => Expr::cust_with_values(
                "NOT EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN \
                 jsonb_typeof(scripts) = 'array' THEN scripts ELSE '[]'::jsonb END) AS s \
                 WHERE s.value->>'name' = $1)",
                [script],
            ),
            _ => Expr::cust_with_values(
                "NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(scripts) THEN \
                 scripts ELSE '[]' END) AS s WHERE s.value ->> 'name' = ?)",
                [script],
            ),
        };
        Ok(agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .column(agent::Column::Scripts)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(listed)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The version each agent of a tenant last registered with, by agent id (for `update`
    /// jobs, which refuse downgrades that were not forced).
    pub async fn agent_versions(
        &self,
        tenant_id: &str,
    ) -> Result<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> = agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .column(agent::Column::Version)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// The job `new` would repeat: the one of its idempotency key, or of its fire.
    async fn existing_job(&self, new: &NewJob) -> Result<Option<job::Model>> {
        if let Some(key) = &new.idempotency_key
            && let Some(existing) = self.job_by_idempotency_key(&new.tenant_id, key).await?
        {
            return Ok(Some(existing));
        }
        match &new.fire {
            Some(fire) => self.job_of_fire(&new.tenant_id, fire).await,
            None => Ok(None),
        }
    }

    /// The job a schedule's fire created, if any.
    pub async fn job_of_fire(&self, tenant_id: &str, fire: &Fire) -> Result<Option<job::Model>> {
        let Some(scheduled_for) = fire.scheduled_for else {
            return Ok(None);
        };
        Ok(job::Entity::find()
            .filter(job::Column::TenantId.eq(tenant_id))
            .filter(job::Column::ScheduleId.eq(&fire.schedule_id))
            .filter(job::Column::ScheduledFor.eq(scheduled_for))
            .one(&self.db)
            .await?)
    }

    async fn job_by_idempotency_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<job::Model>> {
        Ok(job::Entity::find()
            .filter(job::Column::TenantId.eq(tenant_id))
            .filter(job::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?)
    }

    /// Jobs of a tenant by id (those that exist).
    pub async fn jobs_by_ids(&self, tenant_id: &str, ids: &[String]) -> Result<Vec<job::Model>> {
        Ok(job::Entity::find()
            .filter(job::Column::TenantId.eq(tenant_id))
            .filter(job::Column::Id.is_in(ids.iter().cloned()))
            .all(&self.db)
            .await?)
    }

    /// One job of a tenant.
    pub async fn get_job(&self, tenant_id: &str, id: &str) -> Result<Option<job::Model>> {
        Ok(job::Entity::find_by_id(id.to_owned())
            .filter(job::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// A job's runs, in creation order.
    pub async fn job_runs(&self, tenant_id: &str, job_id: &str) -> Result<Vec<command::Model>> {
        Ok(command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .order_by_asc(command::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// How many runs of each of `job_ids` are in each state: `(job id, state, success,
    /// count)`. A listing shows counts, and a job fanned out to 10,000 agents would otherwise
    /// cost its 10,000 rows on every page that lists it.
    pub async fn run_counts_of_jobs(
        &self,
        tenant_id: &str,
        job_ids: &[String],
    ) -> Result<Vec<(String, String, Option<bool>, i64)>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(command::Entity::find()
            .select_only()
            .column(command::Column::JobId)
            .column(command::Column::State)
            .column(command::Column::Success)
            .column_as(Expr::col(command::Column::Id).count(), "n")
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.is_in(job_ids.to_vec()))
            .group_by(command::Column::JobId)
            .group_by(command::Column::State)
            .group_by(command::Column::Success)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Jobs matching a filter, newest first, at most `limit`.
    pub async fn list_jobs(&self, tenant_id: &str, filter: &JobFilter) -> Result<Vec<job::Model>> {
        let mut query = job::Entity::find().filter(job::Column::TenantId.eq(tenant_id));
        if let Some(agent_id) = &filter.agent_id {
            let with_agent = command::Entity::find()
                .select_only()
                .column(command::Column::JobId)
                .filter(command::Column::TenantId.eq(tenant_id))
                .filter(command::Column::AgentId.eq(agent_id))
                .filter(command::Column::JobId.is_not_null())
                .into_query();
            query = query.filter(job::Column::Id.in_subquery(with_agent));
        }
        if let Some(script) = &filter.script {
            query = query.filter(job::Column::Script.eq(script));
        }
        if let Some(command) = &filter.command {
            query = query.filter(job::Column::Command.eq(command));
        }
        if let Some(status) = &filter.status {
            query = query.filter(job::Column::Status.eq(status));
        }
        if let Some(schedule_id) = &filter.schedule_id {
            query = query.filter(job::Column::ScheduleId.eq(schedule_id));
        }
        if let Some(since) = filter.since {
            query = query.filter(job::Column::CreatedAt.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(job::Column::CreatedAt.lt(until));
        }
        if let Some(before) = &filter.before {
            query = query.filter(job::Column::Id.lt(before));
        }
        if let Some(part) = &filter.id_part {
            query = query.filter(
                Condition::any()
                    .add(job::Column::Id.like(format!("{part}%")))
                    .add(job::Column::Id.like(format!("%{part}"))),
            );
        }
        Ok(query
            .order_by_desc(job::Column::Id)
            .limit(filter.limit)
            .all(&self.db)
            .await?)
    }

    /// Recomputes a job's status from its runs; returns the job. The writer calls this once
    /// per job and batch, so a running job costs one index seek (is any run still open?); the
    /// runs are counted by state, on the index, only once none is open.
    pub async fn refresh_job(&self, tenant_id: &str, job_id: &str) -> Result<Option<job::Model>> {
        self.lock_job(tenant_id, job_id).await?;
        let Some(job) = self.get_job(tenant_id, job_id).await? else {
            return Ok(None);
        };
        let open_run = open_runs_of(tenant_id, job_id)
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        if open_run.is_some() && job.status == job_status::RUNNING {
            return Ok(Some(job));
        }
        let counts: Vec<(String, i64)> = command::Entity::find()
            .select_only()
            .column(command::Column::State)
            .column_as(Expr::cust("COUNT(*)"), "n")
            .filter(command::Column::JobId.eq(job_id))
            .filter(command::Column::TenantId.eq(tenant_id))
            .group_by(command::Column::State)
            .into_tuple()
            .all(&self.db)
            .await?;
        let only = |allowed: &[&str]| counts.iter().all(|(s, _)| allowed.contains(&s.as_str()));
        let open = counts
            .iter()
            .any(|(s, n)| *n > 0 && state::OPEN.contains(&s.as_str()));
        let status = if open {
            job_status::RUNNING
        } else if only(&[state::SUCCEEDED]) {
            job_status::SUCCEEDED
        } else if only(&[state::SUCCEEDED, state::CANCELLED]) {
            job_status::CANCELLED
        } else {
            job_status::FAILED
        };
        if job.status == status {
            return Ok(Some(job));
        }
        let has_webhook = job.webhook_url.is_some() && job.webhook_status.is_none();
        let mut model: job::ActiveModel = job.into();
        model.status = Set(status.into());
        model.finished_at = Set((!open).then(Utc::now));
        if !open && has_webhook {
            // Delivered by the webhook worker; pending survives a restart.
            model.webhook_status = Set(Some(webhook_status::PENDING.into()));
        }
        // The job's end and its event commit together (a savepoint inside the caller's
        // transaction): this is the one place where a job becomes final.
        let txn = self.begin_write().await?;
        let job = model.update(&txn.db).await?;
        if !open {
            txn.record_job_end(&job, Some(&counts)).await?;
        }
        txn.db.commit().await?;
        Ok(Some(job))
    }

    /// On PostgreSQL, locks the job's row until the transaction ends, before its runs are
    /// counted. Several nodes' writers store results of one job at once, each in its own
    /// transaction; under READ COMMITTED each counted the other's runs as still open before
    /// either committed, and the job stayed `running` with every run final. With the lock the
    /// second to count waits for the first to commit and, in its next statement, sees its runs.
    /// SQLite has one writer at a time and needs none.
    async fn lock_job(&self, tenant_id: &str, job_id: &str) -> Result<()> {
        if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            job::Entity::find()
                .select_only()
                .column(job::Column::Id)
                .filter(job::Column::Id.eq(job_id))
                .filter(job::Column::TenantId.eq(tenant_id))
                .lock_exclusive()
                .into_tuple::<String>()
                .one(&self.db)
                .await?;
        }
        Ok(())
    }

    /// [`refresh_job`](Self::refresh_job) for the writer, after a batch stored results of the
    /// job, inside the batch's transaction (SQLite: one writer at a time, so nothing else
    /// stores results between its count and its commit). While the job is running and a run
    /// is still open, which is every batch of a fan-out but its last, there is nothing to
    /// recompute, and one statement says so: the writer's batches are the serial path a
    /// fan-out's results wait on, and each statement is a hand-off to SQLite's thread and back
    /// (two of them, reading the job and then looking for an open run, took a noticeable part
    /// of a batch when the cores were busy; figures: docs/BENCHMARKS.md, "Design notes behind
    /// the figures").
    pub async fn refresh_job_after_results(&self, tenant_id: &str, job_id: &str) -> Result<()> {
        if !self.running_with_open_run(tenant_id, job_id).await? {
            self.refresh_job(tenant_id, job_id).await?;
        }
        Ok(())
    }

    /// Whether the job is `running` and one of its runs is still open: then storing a result
    /// leaves it as it is.
    async fn running_with_open_run(&self, tenant_id: &str, job_id: &str) -> Result<bool> {
        let open_run = open_runs_of(tenant_id, job_id).limit(1).into_query();
        Ok(job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .filter(job::Column::Id.eq(job_id))
            .filter(job::Column::TenantId.eq(tenant_id))
            .filter(job::Column::Status.eq(job_status::RUNNING))
            .filter(Expr::exists(open_run))
            .into_tuple::<String>()
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Jobs still `running` whose every run is final: left so when a node stopped between
    /// committing a job's last results and settling the job (see
    /// [`Store::settle_job`]), or the settling failed. The sweep settles them.
    pub async fn unsettled_jobs(&self) -> Result<Vec<(String, String)>> {
        let open_run = command::Entity::find()
            .select_only()
            .column(command::Column::Id)
            .filter(Expr::cust(
                "commands.job_id = jobs.id AND commands.tenant_id = jobs.tenant_id",
            ))
            .filter(command::Column::State.is_in(state::OPEN.iter().copied()))
            .limit(1)
            .into_query();
        Ok(job::Entity::find()
            .select_only()
            .column(job::Column::TenantId)
            .column(job::Column::Id)
            .filter(Expr::cust(RUNNING_JOBS_SQL))
            .filter(Expr::exists(open_run).not())
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Recomputes every unfinished job (after expiries and other bulk changes); returns
    /// `(tenant, job)` of each.
    pub async fn refresh_running_jobs(&self) -> Result<Vec<(String, String)>> {
        let running = job::Entity::find()
            .filter(Expr::cust(RUNNING_JOBS_SQL))
            .all(&self.db)
            .await?;
        let mut refreshed = Vec::with_capacity(running.len());
        for job in running {
            self.refresh_job(&job.tenant_id, &job.id).await?;
            refreshed.push((job.tenant_id, job.id));
        }
        Ok(refreshed)
    }

    /// Up to `limit` output chunks of any run of a job after chunk id `after`, in arrival
    /// order.
    pub async fn job_output_page(
        &self,
        tenant_id: &str,
        job_id: &str,
        after: i64,
        limit: u64,
    ) -> Result<Vec<output_chunk::Model>> {
        let runs = command::Entity::find()
            .select_only()
            .column(command::Column::Id)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .into_query();
        Ok(output_chunk::Entity::find()
            .filter(output_chunk::Column::TenantId.eq(tenant_id))
            .filter(output_chunk::Column::CommandId.in_subquery(runs))
            .filter(output_chunk::Column::Id.gt(after))
            .order_by_asc(output_chunk::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Up to `limit` output chunks of a run after chunk id `after`, in arrival order, from the
    /// given streams.
    pub async fn output_page(
        &self,
        tenant_id: &str,
        command_id: &str,
        streams: &[OutputStream],
        after: i64,
        limit: u64,
    ) -> Result<Vec<output_chunk::Model>> {
        Ok(output_chunk::Entity::find()
            .filter(output_chunk::Column::TenantId.eq(tenant_id))
            .filter(output_chunk::Column::CommandId.eq(command_id))
            .filter(output_chunk::Column::Stream.is_in(streams.iter().map(|s| stream_code(*s))))
            .filter(output_chunk::Column::Id.gt(after))
            .order_by_asc(output_chunk::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Cancels a job's runs that have not finished. Runs never delivered are cancelled here and
    /// now; the ones on agents are returned so that the agents can be told to stop (their
    /// answer then records the cancellation).
    pub async fn cancel_job(
        &self,
        tenant_id: &str,
        job_id: &str,
    ) -> Result<(Vec<command::Model>, Vec<command::Model>)> {
        let now = now();
        let res = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::CANCELLED))
            .col_expr(command::Column::FinishedAt, Expr::value(now))
            .col_expr(command::Column::Success, Expr::value(false))
            .col_expr(command::Column::ErrorCode, Expr::value(codes::CANCELLED))
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value("cancelled before the agent received it"),
            )
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .filter(command::Column::State.eq(state::PENDING))
            .exec(&self.db)
            .await?;
        let runs = self.job_runs(tenant_id, job_id).await?;
        let cancelled_now: Vec<_> = if res.rows_affected > 0 {
            runs.iter()
                .filter(|r| r.state == state::CANCELLED && r.delivered_at.is_none())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let on_agents = runs
            .into_iter()
            .filter(|r| r.state == state::DELIVERED || r.state == state::RUNNING)
            .collect();
        self.refresh_job(tenant_id, job_id).await?;
        Ok((cancelled_now, on_agents))
    }

    /// Marks as lost the runs on agents that have been gone since before `cutoff`: delivered
    /// or running, their agent silent ever since. Returns them.
    pub async fn mark_lost(&self, cutoff: DateTime<Utc>) -> Result<Vec<command::Model>> {
        let lost = lost_candidates(cutoff).all(&self.db).await?;
        let mut marked = Vec::with_capacity(lost.len());
        for run in lost {
            let res = command::Entity::update_many()
                .col_expr(command::Column::State, Expr::value(state::LOST))
                .col_expr(command::Column::FinishedAt, Expr::value(now()))
                .col_expr(command::Column::Success, Expr::value(false))
                .col_expr(command::Column::ErrorCode, Expr::value("lost"))
                .col_expr(
                    command::Column::ErrorMessage,
                    Expr::value("the agent went away during the run and did not come back in time"),
                )
                .filter(command::Column::Id.eq(&run.id))
                .filter(command::Column::State.is_in([state::DELIVERED, state::RUNNING]))
                .exec(&self.db)
                .await?;
            if res.rows_affected == 1
                && let Some(updated) = self.get_command(&run.tenant_id, &run.id).await?
            {
                if let Some(job_id) = &updated.job_id {
                    self.refresh_job(&updated.tenant_id, job_id).await?;
                }
                marked.push(updated);
            }
        }
        Ok(marked)
    }
}

/// Running jobs, as a literal: a sweep's scan of them is answered by the partial index
/// `jobs_running`, which SQLite uses only when it sees at prepare time that the query implies
/// the index's condition (a bound value never does: plans never depend on bound values, see
/// `.cargo/config.toml`).
const RUNNING_JOBS_SQL: &str = "jobs.status = 'running'";

/// The states of a job's open runs (on the `commands_job_state` index).
fn open_runs_of(tenant_id: &str, job_id: &str) -> sea_orm::Select<command::Entity> {
    command::Entity::find()
        .select_only()
        .column(command::Column::State)
        .filter(command::Column::JobId.eq(job_id))
        .filter(command::Column::State.is_in(state::OPEN.iter().copied()))
        .filter(command::Column::TenantId.eq(tenant_id))
}

/// The delivered or running runs of agents silent since before `cutoff`, found on the partial
/// index of open commands: the sweep asks every 30 s, and the agents it matches include every
/// agent ever retired. With the states as bound values SQLite could not see that the index
/// applies and walked each such agent's whole history instead, reading every row of it.
fn lost_candidates(cutoff: DateTime<Utc>) -> sea_orm::Select<command::Entity> {
    let gone = super::agent::Entity::find()
        .select_only()
        .column(super::agent::Column::TenantId)
        .column(super::agent::Column::Id)
        .filter(super::agent::Column::LastSeen.lt(cutoff))
        .into_query();
    command::Entity::find()
        .filter(Expr::cust(state::OPEN_SQL))
        .filter(command::Column::State.is_in([state::DELIVERED, state::RUNNING]))
        .filter(
            Expr::tuple([
                Expr::col(command::Column::TenantId),
                Expr::col(command::Column::AgentId),
            ])
            .in_subquery(gone),
        )
}

fn stream_code(stream: OutputStream) -> i16 {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

impl Store {
    /// Settles a job after a batch of its results committed, on PostgreSQL, where several
    /// nodes' writers store one job's results at once. Counting inside each batch's
    /// transaction, under READ COMMITTED, let two nodes each count the other's last runs as
    /// open, and the job stayed `running`; locking the job's row for that count made the
    /// nodes' writers take turns on every batch of a fan-out, each holding the lock through
    /// its commit. Here the look runs after the commit, unlocked: of the transactions that
    /// stored a job's last results, the last to commit sees every run final (each statement
    /// reads everything committed before it) and recomputes the job under its row's lock;
    /// the others find an open run and leave it. A node that dies in between leaves the job
    /// to the sweep ([`Store::unsettled_jobs`]).
    pub async fn settle_job(&self, tenant_id: &str, job_id: &str) -> Result<()> {
        if self.running_with_open_run(tenant_id, job_id).await? {
            return Ok(());
        }
        let txn = self.begin().await?;
        txn.refresh_job(tenant_id, job_id).await?;
        txn.commit().await
    }
}

impl Store<sea_orm::DatabaseTransaction> {
    /// Stores one output chunk of an agent's run, once, within the per-stream cap. Only on a
    /// transaction (the writer's), so the chunk and the run's byte count change together.
    ///
    /// Nothing is appended to a run that is final, or whose answer came before this chunk
    /// (`answered`: the writer applies a batch's output before its results). The agent sends
    /// all of a run's output before its answer, so a chunk after it is a forgery or a bug; a
    /// chunk sent again after a reconnect (stored already, or dropped past the cap) is no
    /// error.
    pub async fn append_output(
        &self,
        tenant_id: &str,
        agent_id: &str,
        chunk: OutputChunk<'_>,
        cap: u64,
        answered: bool,
    ) -> Result<Stored> {
        let OutputChunk {
            command_id,
            stream,
            seq,
            bytes,
        } = chunk;
        let txn = &self.db;
        let Some(run) = command::Entity::find_by_id(command_id.to_owned())
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .one(txn)
            .await?
        else {
            return Ok(Stored::Foreign);
        };
        let (column, stored_bytes) = match stream {
            OutputStream::Stdout => (command::Column::StdoutBytes, run.stdout_bytes),
            OutputStream::Stderr => (command::Column::StderrBytes, run.stderr_bytes),
        };
        if answered || state::FINAL.contains(&run.state.as_str()) {
            let resent = stored_bytes as u64 + bytes.len() as u64 > cap
                || output_chunk::Entity::find()
                    .filter(output_chunk::Column::CommandId.eq(command_id))
                    .filter(output_chunk::Column::Stream.eq(stream_code(stream)))
                    .filter(output_chunk::Column::Seq.eq(seq as i64))
                    .select_only()
                    .column(output_chunk::Column::Id)
                    .into_tuple::<i64>()
                    .one(txn)
                    .await?
                    .is_some();
            return Ok(if resent {
                Stored::Nothing
            } else {
                Stored::Final {
                    command_id: command_id.to_owned(),
                    stream,
                    seq,
                }
            });
        }
        if stored_bytes as u64 + bytes.len() as u64 > cap {
            command::Entity::update_many()
                .col_expr(command::Column::OutputTruncated, Expr::value(true))
                .filter(command::Column::Id.eq(command_id))
                .exec(txn)
                .await?;
            return Ok(Stored::Nothing);
        }
        let chunk = output_chunk::ActiveModel {
            tenant_id: Set(tenant_id.to_owned()),
            command_id: Set(command_id.to_owned()),
            stream: Set(stream_code(stream)),
            seq: Set(seq as i64),
            data: Set(bytes.to_vec()),
            ..Default::default()
        };
        let inserted = output_chunk::Entity::insert(chunk)
            .on_conflict(
                OnConflict::columns([
                    output_chunk::Column::CommandId,
                    output_chunk::Column::Stream,
                    output_chunk::Column::Seq,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec(txn)
            .await;
        let chunk_id = match inserted {
            Ok(res) => res.last_insert_id,
            // Already stored: a resend after a reconnect.
            Err(sea_orm::DbErr::RecordNotInserted) => {
                return Ok(Stored::Nothing);
            }
            Err(err) => return Err(err.into()),
        };
        let mut update = command::Entity::update_many()
            .col_expr(column, Expr::col(column).add(bytes.len() as i64))
            .filter(command::Column::Id.eq(command_id));
        if run.state == state::PENDING || run.state == state::DELIVERED {
            update = update
                .col_expr(command::Column::State, Expr::value(state::RUNNING))
                .col_expr(command::Column::StartedAt, Expr::value(now()));
        }
        update.exec(txn).await?;
        Ok(Stored::New {
            id: chunk_id,
            job_id: run.job_id,
        })
    }
}

/// A new job's row. A job without a run (a schedule's target that matched nothing) is over
/// at once, and failed: nothing it was meant to do was done; its webhook is due at once.
pub(super) fn job_row(
    new: &NewJob,
    job_id: &str,
    script: Option<String>,
    now: DateTime<Utc>,
    has_runs: bool,
) -> job::ActiveModel {
    job::ActiveModel {
        id: Set(job_id.to_owned()),
        tenant_id: Set(new.tenant_id.clone()),
        command: Set(new.command.clone()),
        script: Set(script),
        data: Set(new.data.clone()),
        target: Set(new.target.clone()),
        timeout_s: Set(new.timeout_s as i32),
        ttl_s: Set(new.ttl_s as i32),
        status: Set(if has_runs {
            job_status::RUNNING.into()
        } else {
            job_status::FAILED.into()
        }),
        created_at: Set(now),
        finished_at: Set((!has_runs).then_some(now)),
        idempotency_key: Set(new.idempotency_key.clone()),
        webhook_url: Set(new.webhook_url.clone()),
        webhook_status: Set(
            (!has_runs && new.webhook_url.is_some()).then(|| webhook_status::PENDING.into())
        ),
        request_fingerprint: Set(new
            .idempotency_key
            .as_ref()
            .and(new.request_fingerprint.clone())),
        webhook_claimed_by: Set(None),
        webhook_claimed_until: Set(None),
        schedule_id: Set(new.fire.as_ref().map(|f| f.schedule_id.clone())),
        scheduled_for: Set(new.fire.as_ref().and_then(|f| f.scheduled_for)),
        catch_up: Set(new.fire.as_ref().and_then(|f| f.catch_up.then_some(true))),
        note: Set(new.note.clone()),
        digested: Set(Some(!has_runs)),
        rerun_of: Set(new.rerun_of.clone()),
    }
}

/// A new job's runs: pending, or failed at once with the reason they were refused.
pub(super) fn run_rows(
    new: &NewJob,
    job_id: &str,
    runs: Vec<NewRun>,
    now: DateTime<Utc>,
) -> Vec<command::Model> {
    runs.into_iter()
        .map(|run| {
            let (state, finished_at, success, code, message) = match run.refused {
                Some((code, message)) => (
                    state::FAILED,
                    Some(now),
                    Some(false),
                    Some(code),
                    Some(message),
                ),
                None => (state::PENDING, None, None, None, None),
            };
            command::Model {
                id: new_id(),
                tenant_id: new.tenant_id.clone(),
                agent_id: run.agent_id,
                command: new.command.clone(),
                data: new.data.clone(),
                timeout_s: new.timeout_s as i32,
                state: state.into(),
                created_at: now,
                expires_at: now + chrono::Duration::seconds(i64::from(new.ttl_s)),
                delivered_at: None,
                finished_at,
                success,
                result: None,
                error_code: code,
                error_message: message,
                job_id: Some(job_id.to_owned()),
                started_at: None,
                exit_code: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                output_truncated: false,
                sealed_params: new.sealed_params.clone(),
                key_id: run.key_id,
            }
        })
        .collect()
}

/// The script a `run` job runs (kept in its own column, for listing by script).
pub(super) fn job_script(new: &NewJob) -> Option<String> {
    (new.command == outpost_protocol::commands::RUN)
        .then(|| {
            new.data
                .get("script")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten()
}

/// A job's target as a short stable text, for the subject of its events: `all`,
/// `tags:db+eu`, `agents:a,b`, or for a long list of agents `agents:<hash>` (the same list
/// always gives the same text).
pub fn canonical_target(target: &Value) -> String {
    if target.get("all").and_then(Value::as_bool) == Some(true) {
        return "all".into();
    }
    let mut parts = Vec::new();
    let mut tags = string_list(target.get("tags").unwrap_or(&Value::Null));
    if !tags.is_empty() {
        tags.sort();
        parts.push(format!("tags:{}", tags.join("+")));
    }
    let mut agents = string_list(target.get("agents").unwrap_or(&Value::Null));
    if !agents.is_empty() {
        agents.sort();
        let list = agents.join(",");
        if agents.len() <= 3 && list.len() <= 120 {
            parts.push(format!("agents:{list}"));
        } else {
            let digest = ring::digest::digest(&ring::digest::SHA256, list.as_bytes());
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            parts.push(format!("agents:{}x{hex}", agents.len()));
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(";")
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};

    use super::*;
    use crate::DatabaseLocation;

    /// The sweep's search for lost runs reads the open commands of gone agents, not their
    /// history.
    #[tokio::test]
    async fn lost_runs_are_looked_for_among_open_commands_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("outpost.db")))
            .await
            .expect("open");
        let query = lost_candidates(now()).build(DbBackend::Sqlite);
        // A real statement first, on the connection that explains: `EXPLAIN` reads nothing,
        // so it would not notice that a pooled connection's copy of the schema predates the
        // last migrations, and would plan with indexes that are gone.
        let txn = store.db.begin().await.expect("txn");
        txn.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master",
        ))
        .await
        .expect("schema");
        let plan = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {}", query.sql),
                query.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await
            .expect("plan");
        let plan: Vec<String> = plan
            .iter()
            .map(|r| r.try_get::<String>("", "detail").expect("detail"))
            .collect();
        assert!(
            plan.iter().any(|p| p.contains("commands_agent_open")),
            "{plan:?}"
        );
    }
}
