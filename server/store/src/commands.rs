//! Commands: the states a command goes through, storing one before it is sent, refusing the
//! pending ones a key no longer allows, the ones an agent still owes an answer to, and expiry.
//! A command's result is written by the batching `writer`; a job's runs are commands made in
//! `jobs`.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Statement, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use super::audit::{AuditHeads, AuditRecord, chained_row};
use super::{Result, Store, audit_entry, audit_head, command, new_id, now};

/// Command states (CONTRACT.md §2 "Run states").
pub mod state {
    use crate::domain::CommandState;

    /// Stored, not yet acknowledged by the agent.
    pub const PENDING: &str = CommandState::Pending.as_str();
    /// Acknowledged by the agent, no result yet.
    pub const DELIVERED: &str = CommandState::Delivered.as_str();
    /// A script run the agent has started (it acknowledges a `run` as it starts it).
    pub const RUNNING: &str = CommandState::Running.as_str();
    /// Finished successfully.
    pub const SUCCEEDED: &str = CommandState::Succeeded.as_str();
    /// Finished unsuccessfully.
    pub const FAILED: &str = CommandState::Failed.as_str();
    /// Killed at its timeout.
    pub const TIMED_OUT: &str = CommandState::TimedOut.as_str();
    /// Cancelled on request.
    pub const CANCELLED: &str = CommandState::Cancelled.as_str();
    /// Its TTL passed before it was delivered.
    pub const EXPIRED: &str = CommandState::Expired.as_str();
    /// Its agent never came back.
    pub const LOST: &str = CommandState::Lost.as_str();

    /// States in which a command will not change any more.
    pub const FINAL: &[&str] = &[SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, EXPIRED, LOST];
    /// States in which the agent still owes an answer.
    pub const OPEN: &[&str] = &[PENDING, DELIVERED, RUNNING];
    /// `state IN (…OPEN)` as SQL text with literals, for the partial index on open commands:
    /// SQLite uses a partial index only when it can see at prepare time that the query
    /// implies the index's condition, which a bound value does not show.
    pub const OPEN_SQL: &str = "state IN ('pending', 'delivered', 'running')";
}

/// The row a new command is stored as: pending, made now.
fn new_command(new: NewCommand) -> command::Model {
    let now = now();
    command::Model {
        id: new_id(),
        tenant_id: new.tenant_id,
        agent_id: new.agent_id,
        command: new.command,
        data: new.data,
        timeout_s: new.timeout_s as i32,
        state: state::PENDING.into(),
        created_at: now,
        expires_at: now + chrono::Duration::seconds(i64::from(new.ttl_s)),
        delivered_at: None,
        finished_at: None,
        success: None,
        result: None,
        error_code: None,
        error_message: None,
        job_id: new.job_id,
        started_at: None,
        exit_code: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        output_truncated: false,
        sealed_params: new.sealed_params,
        key_id: None,
    }
}

/// SQLite statements as one text with their values in order, run in one call (one hand-off
/// to the connection's thread): sqlx binds each statement's `?` from where the previous
/// statement's stopped, and adds up the rows they changed.
fn one_batch(statements: impl IntoIterator<Item = Statement>) -> Statement {
    let mut sql = String::new();
    let mut values = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str(&statement.sql);
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// A new command, as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Owning tenant.
    pub tenant_id: String,
    /// Target agent.
    pub agent_id: String,
    /// Command name.
    pub command: String,
    /// Command arguments.
    pub data: Value,
    /// Run timeout on the agent.
    pub timeout_s: u32,
    /// How long it may wait for an offline agent.
    pub ttl_s: u32,
    /// The job it is a run of.
    pub job_id: Option<String>,
    /// Secret parameter values, sealed (see `crate::secrets`); `data` holds them masked.
    pub sealed_params: Option<String>,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Stores a command before it is sent (delivery guarantee 1).
    pub async fn insert_command(&self, new: NewCommand) -> Result<command::Model> {
        let model = new_command(new);
        command::Entity::insert(command::ActiveModel::from(model.clone()))
            .exec_without_returning(&self.db)
            .await?;
        crate::metrics::commands_created(&model.command, 1);
        Ok(model)
    }

    /// Stores a command and, when given, its audit record in one transaction; the record's
    /// detail gains `command_id`. The transaction's statements are what a round trip waits
    /// on: on SQLite each is a hand-off to the connection's thread and back, so with the
    /// tenant's chain head known from `heads` the command's insert, the audit row's and the
    /// head's move go in one batch (`BEGIN IMMEDIATE`, the batch, `COMMIT`: three hand-offs
    /// instead of six). The head moves only from the head guessed (`WHERE seq = ? AND hash =
    /// ?`, under the write lock); when the batch does not change exactly its three rows, it
    /// is rolled back and made again the ordinary way, reading the head.
    pub async fn insert_command_audited(
        &self,
        new: NewCommand,
        audit: Option<&AuditRecord>,
        heads: &AuditHeads,
    ) -> Result<command::Model> {
        let Some(audit) = audit else {
            // One statement: a transaction around it would only add two hand-offs.
            return self.insert_command(new).await;
        };
        let model = new_command(new);
        let mut record = audit.clone();
        if let Some(detail) = record.event.detail.as_object_mut() {
            detail.insert("command_id".into(), model.id.clone().into());
        }
        let record = &record;
        let txn = self.begin_write().await?;
        if txn.db.get_database_backend() == DbBackend::Sqlite
            && let Some((seq, hash)) = heads.get(&record.tenant_id)
        {
            let row = chained_row(record, seq, hash.clone(), now())?;
            let batch = [
                command::Entity::insert(command::ActiveModel::from(model.clone()))
                    .build(DbBackend::Sqlite),
                audit_entry::Entity::insert(audit_entry::ActiveModel::from(row.clone()))
                    .build(DbBackend::Sqlite),
                audit_head::Entity::update_many()
                    .col_expr(audit_head::Column::Seq, Expr::value(row.seq))
                    .col_expr(audit_head::Column::Hash, Expr::value(row.hash.clone()))
                    .filter(audit_head::Column::TenantId.eq(&record.tenant_id))
                    .filter(audit_head::Column::Seq.eq(seq))
                    .filter(audit_head::Column::Hash.eq(hash))
                    .build(DbBackend::Sqlite),
            ];
            match txn.db.execute_raw(one_batch(batch)).await {
                Ok(done) if done.rows_affected() == 3 => {
                    heads.set(&row);
                    txn.db.commit().await?;
                    crate::metrics::commands_created(&model.command, 1);
                    return Ok(model);
                }
                // The guess was wrong (the head moved: no row updated, or the row's `seq`
                // taken, which the append-only trigger refuses), or the batch failed: undo
                // it whole and make it the ordinary way, which reports an error that stays.
                _ => {
                    heads.forget(&record.tenant_id);
                    // SQLite may have ended the transaction itself (a full disk): then this
                    // fails, the connection is not handed out again (`connect`), and the
                    // ordinary way says what is wrong.
                    if let Err(err) = txn.db.rollback().await {
                        tracing::debug!(error = %err, "rolling back a command's batch");
                    }
                    let txn = self.begin_write().await?;
                    return txn.insert_command_audited_in(model, record, heads).await;
                }
            }
        }
        txn.insert_command_audited_in(model, record, heads).await
    }
}

impl<C: ConnectionTrait + TransactionTrait + TransactionSession> Store<C> {
    /// [`Store::insert_command_audited`] statement by statement, reading the head (on
    /// PostgreSQL, without a guess, or after a wrong one), in this transaction, which it
    /// commits.
    async fn insert_command_audited_in(
        self,
        model: command::Model,
        record: &AuditRecord,
        heads: &AuditHeads,
    ) -> Result<command::Model> {
        command::Entity::insert(command::ActiveModel::from(model.clone()))
            .exec_without_returning(&self.db)
            .await?;
        let row = self.append_audit_now(record).await?;
        heads.set(&row);
        self.db.commit().await?;
        crate::metrics::commands_created(&model.command, 1);
        Ok(model)
    }
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Fails an agent's pending commands `ids` with `forbidden` instead of sending them: its
    /// key no longer allows them (permissions are checked on every send, not only when a
    /// command is stored). Commands the agent already received are left alone: it runs them
    /// and answers. Returns the commands failed, their jobs recomputed.
    pub async fn refuse_pending(
        &self,
        tenant_id: &str,
        agent_id: &str,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<command::Model>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let refused = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::FAILED))
            .col_expr(command::Column::FinishedAt, Expr::value(now()))
            .col_expr(command::Column::Success, Expr::value(false))
            .col_expr(
                command::Column::ErrorCode,
                Expr::value(outpost_protocol::codes::FORBIDDEN),
            )
            .col_expr(command::Column::ErrorMessage, Expr::value(message))
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .filter(command::Column::Id.is_in(ids.iter().map(String::as_str)))
            .filter(Expr::cust(format!("state = '{}'", state::PENDING)))
            .exec_with_returning(&self.db)
            .await?;
        let jobs: std::collections::BTreeSet<&str> =
            refused.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        Ok(refused)
    }

    /// Whether command `id` is one of this agent's.
    pub async fn is_agents_command(
        &self,
        tenant_id: &str,
        agent_id: &str,
        id: &str,
    ) -> Result<bool> {
        let found = command::Entity::find_by_id(id.to_owned())
            .select_only()
            .column(command::Column::Id)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    /// One command of a tenant.
    pub async fn get_command(&self, tenant_id: &str, id: &str) -> Result<Option<command::Model>> {
        Ok(command::Entity::find_by_id(id.to_owned())
            .filter(command::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Commands an agent still owes an answer to, oldest first, after expiring those whose TTL
    /// passed undelivered. Sent again on every (re)connect (delivery guarantees 1 and 2).
    /// Returns the commands it expired too, so that whoever waits for them can be told.
    pub async fn open_commands_for(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<(Vec<command::Model>, Vec<command::Model>)> {
        let expired = self.expire_commands_for(tenant_id, agent_id).await?;
        let jobs: std::collections::BTreeSet<&str> =
            expired.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        let open = command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .filter(Expr::cust(state::OPEN_SQL))
            .order_by_asc(command::Column::Id)
            .all(&self.db)
            .await?;
        Ok((expired, open))
    }

    /// Marks every pending command whose TTL has passed as expired. Returns them.
    pub async fn expire_commands(&self) -> Result<Vec<command::Model>> {
        self.expire_where(None).await
    }

    /// Expires one agent's overdue commands (cheap: done on every registration).
    async fn expire_commands_for(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<Vec<command::Model>> {
        self.expire_where(Some((tenant_id, agent_id))).await
    }

    async fn expire_where(&self, agent: Option<(&str, &str)>) -> Result<Vec<command::Model>> {
        let now = now();
        let mut update = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::EXPIRED))
            .col_expr(command::Column::FinishedAt, Expr::value(now))
            .col_expr(
                command::Column::ErrorCode,
                Expr::value(outpost_protocol::codes::EXPIRED),
            )
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value("the agent did not connect before the command's ttl passed"),
            )
            // A literal, not a bound value: SQLite uses the partial index on pending
            // commands only when it can see at prepare time that the query implies it.
            .filter(Expr::cust(format!("state = '{}'", state::PENDING)))
            .filter(command::Column::ExpiresAt.lt(now));
        if let Some((tenant_id, agent_id)) = agent {
            update = update
                .filter(command::Column::TenantId.eq(tenant_id))
                .filter(command::Column::AgentId.eq(agent_id));
        }
        Ok(update.exec_with_returning(&self.db).await?)
    }
}

/// A pending command row, for tests here and in the crates above (a `#[cfg(test)]` item is not
/// visible to another crate's tests): `ping`, no job, every time the epoch.
pub fn pending_command(tenant_id: &str, id: &str, agent_id: &str) -> command::Model {
    let now = chrono::DateTime::UNIX_EPOCH;
    command::Model {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        command: "ping".into(),
        data: serde_json::json!({}),
        timeout_s: 60,
        state: state::PENDING.into(),
        created_at: now,
        expires_at: now,
        delivered_at: None,
        finished_at: None,
        success: None,
        result: None,
        error_code: None,
        error_message: None,
        job_id: None,
        started_at: None,
        exit_code: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        output_truncated: false,
        sealed_params: None,
        key_id: None,
    }
}
