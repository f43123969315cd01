//! History retention (CONTRACT.md §14): what is deleted once it is older than a tenant's window, in
//! steps of one short transaction each, and giving the freed space back (SQLite).
//!
//! A step deletes at most a given number of rows (the cleaner asks for 500) and commits, so
//! that nothing waits long behind it: on SQLite the cleaner runs its steps on the writer's
//! own connection (`Writer::store`), so agents' results and a step take turns on it, the
//! writer's next batch being handed the connection the moment a step commits.
//!
//! What is old, for a tenant whose window ends at `cutoff`:
//! - a **job** that is final (not `running`), finished before `cutoff`, with no run still
//!   open and no webhook still to deliver: its output chunks, its runs, its webhook attempts,
//!   then the job itself, and any schedule's `last_job_id` naming it is cleared. A job with
//!   many runs or much output takes several steps: its output first, then its runs, the job
//!   row last, so an interrupted cleaner resumes on the same job and leaves no orphans;
//! - a **command** sent outside a job, final and finished before `cutoff`, with its output;
//! - an **event** from before `cutoff` without a delivery still pending, with its deliveries
//!   and their attempts;
//! - a failure **streak** (`event_streaks`) not extended since `cutoff`.
//!
//! Rows are found by id, which is time-ordered (UUIDv7): only ids made before `cutoff` are
//! looked at, on the tenant's `(tenant_id, id)` indexes, so a pass costs what it deletes, not
//! the size of the history. What is never deleted (the audit log, agents, keys, users,
//! schedules, integrations…) is listed in docs/OPERATIONS.md, "Retention".

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionSession, TransactionTrait, Value};

use super::{Result, Store, state, tenant};
use sea_orm::{EntityTrait, QueryOrder};

/// Jobs looked at in one step (their runs and output count against the step's rows).
const JOBS_PER_STEP: u64 = 100;
/// Events deleted in one step (each with its deliveries and their attempts: a handful).
const EVENTS_PER_STEP: u64 = 100;

/// What was deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Jobs.
    pub jobs: u64,
    /// Commands: a job's runs and commands sent outside a job.
    pub commands: u64,
    /// Output chunks of those commands.
    pub output_chunks: u64,
    /// Digests of a job's runs (CONTRACT.md §16).
    pub run_digests: u64,
    /// Job webhook attempts.
    pub webhook_attempts: u64,
    /// Events.
    pub events: u64,
    /// Integration deliveries of those events.
    pub deliveries: u64,
    /// Their attempts.
    pub delivery_attempts: u64,
    /// Failure streaks.
    pub streaks: u64,
}

impl Deleted {
    /// Rows deleted in all.
    pub fn rows(&self) -> u64 {
        self.jobs
            + self.commands
            + self.output_chunks
            + self.run_digests
            + self.webhook_attempts
            + self.events
            + self.deliveries
            + self.delivery_attempts
            + self.streaks
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Self) {
        self.jobs += other.jobs;
        self.commands += other.commands;
        self.output_chunks += other.output_chunks;
        self.run_digests += other.run_digests;
        self.webhook_attempts += other.webhook_attempts;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.delivery_attempts += other.delivery_attempts;
        self.streaks += other.streaks;
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    /// Rows it deleted.
    pub deleted: Deleted,
    /// Whether there may be more to delete (call again); `false` once a step found nothing.
    pub more: bool,
}

/// The smallest id made at `at` or later: every UUIDv7 made before `at`'s millisecond sorts
/// below it, as text too (lowercase hex with hyphens, the timestamp first).
pub fn id_bound(at: DateTime<Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xFFFF
    )
}

/// A statement being written: its SQL and its bound values, with the backend's placeholders.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    /// Appends SQL text.
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    fn bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.text.push_str(&format!("${n}"));
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// Appends `(v1, v2, …)`, bound.
    fn list(&mut self, values: &[String]) -> &mut Self {
        self.text.push('(');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(value.clone());
        }
        self.text.push(')');
        self
    }

    fn statement(&self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text.clone(), self.values.clone())
    }
}

/// `state IN (…)` of the final states, as literals.
fn final_states_sql() -> String {
    let states: Vec<String> = state::FINAL.iter().map(|s| format!("'{s}'")).collect();
    format!("({})", states.join(", "))
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Every tenant's id and its own window in days (`None`: the server's), oldest first.
    pub async fn retention_windows(&self) -> Result<Vec<(String, Option<i64>)>> {
        Ok(tenant::Entity::find()
            .order_by_asc(tenant::Column::CreatedAt)
            .order_by_asc(tenant::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|t| (t.id, t.retention_days))
            .collect())
    }

    async fn ids(&self, sql: &Sql) -> Result<Vec<String>> {
        let rows = self.db.query_all_raw(sql.statement()).await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get_by_index::<String>(0).ok())
            .collect())
    }

    async fn run(&self, sql: &Sql) -> Result<u64> {
        Ok(self.db.execute_raw(sql.statement()).await?.rows_affected())
    }

    /// Deletes, in one transaction, at most about `rows` rows of the tenant's history older
    /// than `cutoff` (see the module doc for what and in which order). Call again while
    /// [`Step::more`] says so.
    pub async fn retention_step(
        &self,
        tenant_id: &str,
        cutoff: DateTime<Utc>,
        rows: u64,
    ) -> Result<Step> {
        let rows = rows.max(1);
        let txn = self.begin_write().await?;
        let step = txn.retention_step_in(tenant_id, cutoff, rows).await?;
        txn.db.commit().await?;
        Ok(step)
    }

    async fn retention_step_in(
        &self,
        tenant_id: &str,
        cutoff: DateTime<Utc>,
        rows: u64,
    ) -> Result<Step> {
        let backend = self.db.get_database_backend();
        let bound = id_bound(cutoff);
        let mut deleted = Deleted::default();
        let more = Step {
            deleted: Deleted::default(),
            more: true,
        };

        // Jobs: final, finished before the cutoff, nothing open, no webhook to deliver.
        let mut q = Sql::new(backend);
        q.push("SELECT id FROM jobs WHERE tenant_id = ")
            .bind(tenant_id)
            .push(" AND id < ")
            .bind(bound.clone())
            .push(" AND status <> 'running' AND finished_at IS NOT NULL AND finished_at < ")
            .bind(cutoff)
            .push(" AND (webhook_status IS NULL OR webhook_status <> 'pending')")
            .push(&format!(
                " AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.tenant_id = jobs.tenant_id \
                 AND c.job_id = jobs.id AND c.{})",
                state::OPEN_SQL
            ))
            .push(&format!(" ORDER BY id LIMIT {JOBS_PER_STEP}"));
        let jobs = self.ids(&q).await?;
        if !jobs.is_empty() {
            let mut budget = rows;
            // Their runs' output, then their runs, then the jobs.
            let mut q = Sql::new(backend);
            q.push("DELETE FROM output_chunks WHERE id IN (SELECT o.id FROM output_chunks o WHERE o.command_id IN (SELECT c.id FROM commands c WHERE c.tenant_id = ")
                .bind(tenant_id)
                .push(" AND c.job_id IN ")
                .list(&jobs)
                .push(&format!(") LIMIT {budget})"));
            deleted.output_chunks = self.run(&q).await?;
            budget -= deleted.output_chunks.min(budget);
            if budget == 0 {
                return Ok(Step { deleted, ..more });
            }
            let mut q = Sql::new(backend);
            q.push("DELETE FROM run_digests WHERE command_id IN (SELECT d.command_id FROM run_digests d WHERE d.tenant_id = ")
                .bind(tenant_id)
                .push(" AND d.job_id IN ")
                .list(&jobs)
                .push(&format!(" LIMIT {budget})"));
            deleted.run_digests = self.run(&q).await?;
            budget -= deleted.run_digests.min(budget);
            if budget == 0 {
                return Ok(Step { deleted, ..more });
            }
            let mut q = Sql::new(backend);
            q.push("DELETE FROM commands WHERE id IN (SELECT c.id FROM commands c WHERE c.tenant_id = ")
                .bind(tenant_id)
                .push(" AND c.job_id IN ")
                .list(&jobs)
                .push(&format!(" LIMIT {budget})"));
            deleted.commands = self.run(&q).await?;
            budget -= deleted.commands.min(budget);
            if budget == 0 {
                return Ok(Step { deleted, ..more });
            }
            let mut q = Sql::new(backend);
            q.push("DELETE FROM webhook_attempts WHERE tenant_id = ")
                .bind(tenant_id)
                .push(" AND job_id IN ")
                .list(&jobs);
            deleted.webhook_attempts = self.run(&q).await?;
            let mut q = Sql::new(backend);
            q.push("UPDATE schedules SET last_job_id = NULL WHERE tenant_id = ")
                .bind(tenant_id)
                .push(" AND last_job_id IN ")
                .list(&jobs);
            self.run(&q).await?;
            let mut q = Sql::new(backend);
            q.push("DELETE FROM jobs WHERE tenant_id = ")
                .bind(tenant_id)
                .push(" AND id IN ")
                .list(&jobs);
            deleted.jobs = self.run(&q).await?;
            return Ok(Step { deleted, ..more });
        }

        // Commands sent outside a job (on `commands_standalone`: `job_id IS NULL` is written
        // out so that SQLite sees the partial index applies).
        let mut q = Sql::new(backend);
        q.push("SELECT id FROM commands WHERE tenant_id = ")
            .bind(tenant_id)
            .push(" AND job_id IS NULL AND id < ")
            .bind(bound.clone())
            .push(&format!(" AND state IN {}", final_states_sql()))
            .push(" AND finished_at < ")
            .bind(cutoff)
            .push(&format!(" ORDER BY id LIMIT {rows}"));
        let commands = self.ids(&q).await?;
        if !commands.is_empty() {
            let mut q = Sql::new(backend);
            q.push("DELETE FROM output_chunks WHERE id IN (SELECT o.id FROM output_chunks o WHERE o.command_id IN ")
                .list(&commands)
                .push(&format!(" LIMIT {rows})"));
            deleted.output_chunks = self.run(&q).await?;
            if deleted.output_chunks >= rows {
                return Ok(Step { deleted, ..more });
            }
            let mut q = Sql::new(backend);
            q.push("DELETE FROM commands WHERE tenant_id = ")
                .bind(tenant_id)
                .push(" AND id IN ")
                .list(&commands);
            deleted.commands = self.run(&q).await?;
            return Ok(Step { deleted, ..more });
        }

        // Events without a delivery still pending, with their deliveries and attempts.
        let mut q = Sql::new(backend);
        q.push("SELECT id FROM events WHERE tenant_id = ")
            .bind(tenant_id)
            .push(" AND id < ")
            .bind(bound)
            .push(" AND at < ")
            .bind(cutoff)
            .push(
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id \
                 AND d.status = 'pending')",
            )
            .push(&format!(" ORDER BY id LIMIT {EVENTS_PER_STEP}"));
        let events = self.ids(&q).await?;
        if !events.is_empty() {
            let mut q = Sql::new(backend);
            q.push("DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT d.id FROM deliveries d WHERE d.event_id IN ")
                .list(&events)
                .push(")");
            deleted.delivery_attempts = self.run(&q).await?;
            let mut q = Sql::new(backend);
            q.push("DELETE FROM deliveries WHERE event_id IN ")
                .list(&events);
            deleted.deliveries = self.run(&q).await?;
            let mut q = Sql::new(backend);
            q.push("DELETE FROM events WHERE tenant_id = ")
                .bind(tenant_id)
                .push(" AND id IN ")
                .list(&events);
            deleted.events = self.run(&q).await?;
            return Ok(Step { deleted, ..more });
        }

        // Failure streaks not extended within the window (one row per failing subject).
        let mut q = Sql::new(backend);
        q.push("DELETE FROM event_streaks WHERE tenant_id = ")
            .bind(tenant_id)
            .push(" AND updated_at < ")
            .bind(cutoff);
        deleted.streaks = self.run(&q).await?;
        Ok(Step {
            deleted,
            more: false,
        })
    }

    /// SQLite: gives free pages back to the file system, at most `pages` of them, beyond a
    /// quarter of the file kept free for reuse (new rows fill free pages before the file
    /// grows, so giving back what the next hour's rows would take again only costs). Only
    /// with `auto_vacuum = INCREMENTAL` (new databases; see `ensure_incremental_vacuum`).
    /// Returns the pages given back; 0 on PostgreSQL, whose autovacuum does this.
    pub async fn reclaim_space(&self, pages: i64) -> Result<i64> {
        if self.db.get_database_backend() != DbBackend::Sqlite {
            return Ok(0);
        }
        // The counts first: they read the database's header, from which the connection's
        // idea of `auto_vacuum` is refreshed (a connection opened before a conversion still
        // says NONE until it reads it).
        let free = self.pragma_i64("freelist_count").await?;
        let total = self.pragma_i64("page_count").await?;
        if self.pragma_i64("auto_vacuum").await? != 2 {
            return Ok(0);
        }
        let excess = free - total / 4;
        if excess <= 0 {
            return Ok(0);
        }
        let n = excess.min(pages.max(1));
        self.db
            .execute_unprepared(&format!("PRAGMA incremental_vacuum({n})"))
            .await?;
        let after = self.pragma_i64("freelist_count").await?;
        Ok((free - after).max(0))
    }

    /// An SQLite pragma's integer value.
    pub(super) async fn pragma_i64(&self, name: &str) -> Result<i64> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA {name}"),
            ))
            .await?;
        Ok(row
            .and_then(|row| row.try_get_by_index::<i64>(0).ok())
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_bound_sorts_between_ids_made_before_and_after() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00.500Z")
            .expect("time")
            .with_timezone(&Utc);
        let ms = u64::try_from(at.timestamp_millis()).expect("after 1970");
        let id_at = |ms: u64| {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                ms / 1000,
                u32::try_from((ms % 1000) * 1_000_000).expect("nanos"),
            ))
            .to_string()
        };
        let bound = id_bound(at);
        assert!(id_at(ms - 1) < bound, "{} !< {bound}", id_at(ms - 1));
        assert!(id_at(ms) >= bound, "{} !>= {bound}", id_at(ms));
        assert!(id_at(ms + 1) > bound);
        assert!(id_at(ms - 86_400_000) < bound);
    }
}
