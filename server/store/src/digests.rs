//! Fleet results (CONTRACT.md §16): a job over thousands of agents read as one answer.
//!
//! Every figure here is computed by the database on indexes of one job: counts by state and
//! exit code are `GROUP BY`s on `commands_job_state`; durations, groups and their samples
//! read `run_digests`, where each finished run's output fingerprints were written once when
//! it ended (`outpost_core::service::digests`). Nothing here reads output, and nothing loads
//! every run of a job: a page of runs is at most [`MAX_RUNS_PAGE`] rows, found by cursor.

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr, Query};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, IsolationLevel, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement,
    TransactionTrait,
};
use std::collections::HashMap;

use super::fleet::TagMatch;
use super::{Result, Store, agent, command, job, output_chunk, run_digest};
use crate::domain::CommandState;

/// Most groups a summary lists.
pub const MAX_GROUPS: u64 = 100;
/// Most runs in a page of `/runs`.
pub const MAX_RUNS_PAGE: u64 = 200;
/// Slowest runs a summary names.
pub const SLOWEST: u64 = 5;

/// Filters of a job's runs, as checked by the service.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Runs in one of these states.
    pub states: Vec<String>,
    /// Runs that ended with this exit code.
    pub exit_code: Option<i32>,
    /// Runs of this group (its exact key, or its masked key with `masked`).
    pub group: Option<String>,
    /// `group` is a masked key.
    pub masked: bool,
    /// The run of this agent.
    pub agent_id: Option<String>,
    /// Runs of agents with this tag.
    pub tag: Option<TagMatch>,
    /// Runs of agents whose host name holds this text (case-insensitive).
    pub hostname: Option<String>,
    /// Runs after this run id.
    pub after: Option<String>,
    /// Page size.
    pub limit: u64,
}

/// A run as a person reads it: the run, its agent's host name (`None` once the agent is
/// forgotten) and its digest once it has one.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// The run.
    pub run: command::Model,
    /// Its agent's host name.
    pub hostname: Option<String>,
    /// Its output's fingerprints, once written.
    pub digest: Option<run_digest::Model>,
}

/// A group of a job's runs: the same state, exit code, error and output.
#[derive(Debug, Clone)]
pub struct GroupRow {
    /// The group's key (`?group=`).
    pub key: String,
    /// Runs in it.
    pub count: i64,
    /// One of them (the first made), with its lines.
    pub sample: RunRow,
}

/// What `GET /api/jobs/{id}/summary` reports, as the database counted it.
#[derive(Debug, Clone, Default)]
pub struct JobDigest {
    /// Runs by state.
    pub by_status: Vec<(String, i64)>,
    /// Runs that reported an exit code, by code.
    pub by_exit_code: Vec<(i32, i64)>,
    /// Durations (ms) of the runs that have one: median, 90th percentile, longest.
    pub p50_ms: Option<i64>,
    /// See `p50_ms`.
    pub p90_ms: Option<i64>,
    /// See `p50_ms`.
    pub max_ms: Option<i64>,
    /// The longest runs, longest first.
    pub slowest: Vec<RunRow>,
    /// The largest groups, largest first (at most [`MAX_GROUPS`]).
    pub groups: Vec<GroupRow>,
    /// How many groups there are in all.
    pub group_count: i64,
    /// Finished runs whose digest is not written yet (a moment after they end).
    pub undigested: i64,
}

impl<C: ConnectionTrait> Store<C> {
    /// Jobs that still have runs to digest, oldest first: `(tenant, job)`. On the partial
    /// index `jobs_undigested`, which holds only such jobs.
    pub async fn undigested_jobs(&self, limit: u64) -> Result<Vec<(String, String)>> {
        Ok(job::Entity::find()
            .select_only()
            .column(job::Column::TenantId)
            .column(job::Column::Id)
            .filter(Expr::cust("digested = FALSE"))
            .order_by_asc(job::Column::CreatedAt)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Runs of a job that finished before `finished_before` and have no digest yet, at most
    /// `limit`. (The digester's sweep leaves runs that just finished to the node whose finish
    /// path hands them over, so that nodes do not read the same output twice.)
    pub async fn undigested_runs(
        &self,
        tenant_id: &str,
        job_id: &str,
        finished_before: chrono::DateTime<chrono::Utc>,
        limit: u64,
    ) -> Result<Vec<command::Model>> {
        let digested = Query::select()
            .column(run_digest::Column::CommandId)
            .from(run_digest::Entity)
            .and_where(run_digest::Column::TenantId.eq(tenant_id))
            .and_where(run_digest::Column::JobId.eq(job_id))
            .to_owned();
        Ok(command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .filter(command::Column::State.is_in(final_states()))
            .filter(command::Column::FinishedAt.lt(finished_before))
            .filter(command::Column::Id.not_in_subquery(digested))
            .order_by_asc(command::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Writes digests; one already written (by another node) is kept as it is.
    pub async fn insert_digests(&self, digests: Vec<run_digest::Model>) -> Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let rows: Vec<run_digest::ActiveModel> = digests.into_iter().map(Into::into).collect();
        let inserted = run_digest::Entity::insert_many(rows)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(run_digest::Column::CommandId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec(&self.db)
            .await;
        match inserted {
            Ok(_) | Err(sea_orm::DbErr::RecordNotInserted) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Marks a job digested once it is over and every run has its digest; whether it is now.
    pub async fn mark_digested(&self, tenant_id: &str, job_id: &str) -> Result<bool> {
        let backend = self.db.get_database_backend();
        let (p1, p2) = placeholders(backend);
        let sql = format!(
            "UPDATE jobs SET digested = TRUE WHERE tenant_id = {p1} AND id = {p2} \
             AND digested = FALSE AND status <> 'running' AND NOT EXISTS (SELECT 1 FROM \
             commands c WHERE c.tenant_id = jobs.tenant_id AND c.job_id = jobs.id AND NOT \
             EXISTS (SELECT 1 FROM run_digests d WHERE d.command_id = c.id))"
        );
        let done = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [tenant_id.into(), job_id.into()],
            ))
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A job's summary: counts, durations, the slowest runs and the largest groups (by exact
    /// fingerprints, or by masked ones with `masked`). Three statements, each one pass over
    /// the job's rows on an index: the counts by state and exit code together; the
    /// durations sorted once, for the two percentiles and the slowest runs (window
    /// functions); the groups with their number and the runs digested (a window over the
    /// `GROUP BY`). Then the few sample runs by key.
    pub async fn job_digest(
        &self,
        tenant_id: &str,
        job_id: &str,
        masked: bool,
    ) -> Result<JobDigest> {
        let backend = self.db.get_database_backend();
        let (p1, p2) = placeholders(backend);
        let args = || -> [sea_orm::Value; 2] { [tenant_id.into(), job_id.into()] };
        let counts = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT state, exit_code, COUNT(*) AS n FROM commands \
                     WHERE tenant_id = {p1} AND job_id = {p2} GROUP BY state, exit_code"
                ),
                args(),
            ))
            .await?;
        let mut by_status: Vec<(String, i64)> = Vec::new();
        let mut by_exit_code: Vec<(i32, i64)> = Vec::new();
        for row in &counts {
            let state: String = row.try_get_by_index(0)?;
            let code: Option<i32> = row.try_get_by_index(1)?;
            let n: i64 = row.try_get_by_index(2)?;
            match by_status.iter_mut().find(|(s, _)| *s == state) {
                Some((_, total)) => *total += n,
                None => by_status.push((state, n)),
            }
            if let Some(code) = code {
                match by_exit_code.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, total)) => *total += n,
                    None => by_exit_code.push((code, n)),
                }
            }
        }
        by_status.sort_unstable();
        by_exit_code.sort_unstable();
        let finished: i64 = by_status
            .iter()
            .filter(|(s, _)| CommandState::is_final_text(s))
            .map(|(_, n)| n)
            .sum();

        // Nearest rank: the row ceil(n * p / 100), and the last SLOWEST rows.
        let timed = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT command_id, duration_ms, rn, n FROM (SELECT command_id, duration_ms, \
                     ROW_NUMBER() OVER (ORDER BY duration_ms, command_id) AS rn, \
                     COUNT(*) OVER () AS n FROM run_digests WHERE tenant_id = {p1} \
                     AND job_id = {p2} AND duration_ms IS NOT NULL) t \
                     WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 90 + 99) / 100 \
                     OR rn > n - {SLOWEST} ORDER BY rn"
                ),
                args(),
            ))
            .await?;
        let mut p50_ms = None;
        let mut p90_ms = None;
        let mut slow: Vec<(String, i64)> = Vec::new();
        for row in &timed {
            let id: String = row.try_get_by_index(0)?;
            let ms: i64 = row.try_get_by_index(1)?;
            let rn: i64 = row.try_get_by_index(2)?;
            let n: i64 = row.try_get_by_index(3)?;
            if rn == (n * 50 + 99) / 100 {
                p50_ms = Some(ms);
            }
            if rn == (n * 90 + 99) / 100 {
                p90_ms = Some(ms);
            }
            if rn > n - SLOWEST as i64 {
                slow.push((id, ms));
            }
        }
        slow.reverse();
        let max_ms = slow.first().map(|(_, ms)| *ms);
        let slow: Vec<String> = slow.into_iter().map(|(id, _)| id).collect();

        let key = if masked { "masked_key" } else { "group_key" };
        let grouped = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT k, n, sample, groups, digested FROM (SELECT {key} AS k, \
                     COUNT(*) AS n, MIN(command_id) AS sample, COUNT(*) OVER () AS groups, \
                     CAST(SUM(COUNT(*)) OVER () AS BIGINT) AS digested FROM run_digests \
                     WHERE tenant_id = {p1} AND job_id = {p2} GROUP BY {key}) g \
                     ORDER BY n DESC, sample LIMIT {MAX_GROUPS}"
                ),
                args(),
            ))
            .await?;
        let mut groups: Vec<(String, i64, String)> = Vec::with_capacity(grouped.len());
        let mut group_count = 0;
        let mut digested = 0;
        for row in &grouped {
            groups.push((
                row.try_get_by_index(0)?,
                row.try_get_by_index(1)?,
                row.try_get_by_index(2)?,
            ));
            group_count = row.try_get_by_index(3)?;
            digested = row.try_get_by_index(4)?;
        }

        let mut wanted: Vec<String> = slow.clone();
        wanted.extend(groups.iter().map(|(_, _, sample)| sample.clone()));
        let mut rows: HashMap<String, RunRow> = self
            .run_rows(
                tenant_id,
                command::Entity::find()
                    .filter(command::Column::TenantId.eq(tenant_id))
                    .filter(command::Column::Id.is_in(wanted)),
            )
            .await?
            .into_iter()
            .map(|row| (row.run.id.clone(), row))
            .collect();
        let slowest = slow.iter().filter_map(|id| rows.get(id).cloned()).collect();
        let groups = groups
            .into_iter()
            .filter_map(|(key, count, sample)| {
                Some(GroupRow {
                    key,
                    count,
                    sample: rows.remove(&sample)?,
                })
            })
            .collect();
        Ok(JobDigest {
            by_status,
            by_exit_code,
            p50_ms,
            p90_ms,
            max_ms,
            slowest,
            groups,
            group_count,
            undigested: Ord::max(finished - digested, 0),
        })
    }

    /// One page of a job's runs under `filter`, in creation order, with host names and
    /// digests.
    pub async fn job_runs_page(
        &self,
        tenant_id: &str,
        job_id: &str,
        filter: &RunFilter,
    ) -> Result<Vec<RunRow>> {
        let mut query = command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id));
        if !filter.states.is_empty() {
            query = query.filter(command::Column::State.is_in(filter.states.clone()));
        }
        if let Some(code) = filter.exit_code {
            query = query.filter(command::Column::ExitCode.eq(code));
        }
        if let Some(agent_id) = &filter.agent_id {
            query = query.filter(command::Column::AgentId.eq(agent_id.as_str()));
        }
        if let Some(group) = &filter.group {
            let column = if filter.masked {
                run_digest::Column::MaskedKey
            } else {
                run_digest::Column::GroupKey
            };
            let members = Query::select()
                .column(run_digest::Column::CommandId)
                .from(run_digest::Entity)
                .and_where(run_digest::Column::TenantId.eq(tenant_id))
                .and_where(run_digest::Column::JobId.eq(job_id))
                .and_where(column.eq(group.as_str()))
                .to_owned();
            query = query.filter(command::Column::Id.in_subquery(members));
        }
        if filter.tag.is_some() || filter.hostname.is_some() {
            let mut agents = self.agent_filter(
                tenant_id,
                &super::AgentPageQuery {
                    tag: filter.tag.clone(),
                    ..Default::default()
                },
            );
            if let Some(part) = &filter.hostname {
                agents = agents.add(
                    Expr::expr(Func::lower(Expr::col(agent::Column::Hostname))).like(
                        LikeExpr::new(format!("%{}%", escape_like(&part.to_lowercase())))
                            .escape('\\'),
                    ),
                );
            }
            let ids = agent::Entity::find()
                .select_only()
                .column(agent::Column::Id)
                .filter(agents)
                .into_query();
            query = query.filter(command::Column::AgentId.in_subquery(ids));
        }
        if let Some(after) = &filter.after {
            query = query.filter(command::Column::Id.gt(after.as_str()));
        }
        self.run_rows(
            tenant_id,
            query.order_by_asc(command::Column::Id).limit(filter.limit),
        )
        .await
    }

    /// The runs `query` selects, with their agents' host names and their digests: two more
    /// reads on primary keys, whatever the number of rows.
    async fn run_rows(
        &self,
        tenant_id: &str,
        query: sea_orm::Select<command::Entity>,
    ) -> Result<Vec<RunRow>> {
        let runs = query.all(&self.db).await?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut agent_ids: Vec<&str> = runs.iter().map(|r| r.agent_id.as_str()).collect();
        agent_ids.sort_unstable();
        agent_ids.dedup();
        let hosts: HashMap<String, String> = agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .column(agent::Column::Hostname)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.is_in(agent_ids))
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let mut digests: HashMap<String, run_digest::Model> = run_digest::Entity::find()
            .filter(run_digest::Column::TenantId.eq(tenant_id))
            .filter(run_digest::Column::CommandId.is_in(runs.iter().map(|r| r.id.as_str())))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|d| (d.command_id.clone(), d))
            .collect();
        Ok(runs
            .into_iter()
            .map(|run| RunRow {
                hostname: hosts.get(&run.agent_id).cloned(),
                digest: digests.remove(&run.id),
                run,
            })
            .collect())
    }

    /// Host names of a job's agents, by agent id (one read: the job page and `GET
    /// /api/jobs/{id}` name every run's agent).
    pub async fn job_hostnames(
        &self,
        tenant_id: &str,
        job_id: &str,
    ) -> Result<HashMap<String, String>> {
        let agents = command::Entity::find()
            .select_only()
            .column(command::Column::AgentId)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .into_query();
        Ok(agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .column(agent::Column::Hostname)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.in_subquery(agents))
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }

    /// The runs a rerun picks: `(run id, agent id, key id, state)` of the job's runs in
    /// `states` (every run when empty), or of the listed runs.
    pub async fn rerun_candidates(
        &self,
        tenant_id: &str,
        job_id: &str,
        states: &[&str],
        ids: Option<&[String]>,
    ) -> Result<Vec<(String, String, Option<String>, String)>> {
        let mut query = command::Entity::find()
            .select_only()
            .column(command::Column::Id)
            .column(command::Column::AgentId)
            .column(command::Column::KeyId)
            .column(command::Column::State)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id));
        if !states.is_empty() {
            query = query.filter(command::Column::State.is_in(states.iter().copied()));
        }
        if let Some(ids) = ids {
            query = query.filter(command::Column::Id.is_in(ids.iter().map(String::as_str)));
        }
        Ok(query
            .order_by_asc(command::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Every output chunk of `runs` (both streams), by run and then in the order stored: one
    /// read for many small outputs (the digester bounds how many bytes it asks for at once).
    pub async fn output_of_runs(
        &self,
        tenant_id: &str,
        runs: &[&str],
    ) -> Result<Vec<output_chunk::Model>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(output_chunk::Entity::find()
            .filter(output_chunk::Column::TenantId.eq(tenant_id))
            .filter(output_chunk::Column::CommandId.is_in(runs.iter().copied()))
            .order_by_asc(output_chunk::Column::CommandId)
            .order_by_asc(output_chunk::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// The sealed secret parameters a job's runs were sent with (the same for every run).
    pub async fn job_sealed_params(&self, tenant_id: &str, job_id: &str) -> Result<Option<String>> {
        let sealed: Option<Option<String>> = command::Entity::find()
            .select_only()
            .column(command::Column::SealedParams)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::JobId.eq(job_id))
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(sealed.flatten())
    }
}

impl Store<DatabaseConnection> {
    /// A read-only transaction that sees the database as it is when it starts, for a summary's
    /// statements and for an export that must be consistent however long it streams: PostgreSQL's `REPEATABLE READ`, and on
    /// SQLite a deferred transaction (WAL keeps its snapshot from its first read).
    pub async fn begin_snapshot(&self) -> Result<Store<DatabaseTransaction>> {
        let postgres = self.db.get_database_backend() == DbBackend::Postgres;
        let db = self
            .db
            .begin_with_options(sea_orm::TransactionOptions {
                isolation_level: postgres.then_some(IsolationLevel::RepeatableRead),
                access_mode: postgres.then_some(AccessMode::ReadOnly),
                sqlite_transaction_mode: (!postgres)
                    .then_some(sea_orm::SqliteTransactionMode::Deferred),
            })
            .await?;
        Ok(Store { db })
    }
}

/// The final states, as stored.
fn final_states() -> Vec<&'static str> {
    CommandState::FINAL.iter().map(|s| s.as_str()).collect()
}

/// `text` with `LIKE`'s wildcards taken literally (escaped with `\`, named by `ESCAPE`).
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn placeholders(backend: DbBackend) -> (&'static str, &'static str) {
    match backend {
        DbBackend::Postgres => ("$1", "$2"),
        _ => ("?", "?"),
    }
}
