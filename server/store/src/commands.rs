//! Commands: the states a command goes through, storing one before it is sent, refusing the
//! pending ones a key no longer allows, the ones an agent still owes an answer to, and expiry.
//! A command's result is written by the batching `writer`; a job's runs are commands made in
//! `jobs`.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use serde_json::Value;

use super::{Result, Store, command, new_id, now};

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
        let now = now();
        let model = command::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(new.tenant_id),
            agent_id: Set(new.agent_id),
            command: Set(new.command),
            data: Set(new.data),
            timeout_s: Set(new.timeout_s as i32),
            state: Set(state::PENDING.into()),
            created_at: Set(now),
            expires_at: Set(now + chrono::Duration::seconds(i64::from(new.ttl_s))),
            delivered_at: Set(None),
            finished_at: Set(None),
            success: Set(None),
            result: Set(None),
            error_code: Set(None),
            error_message: Set(None),
            job_id: Set(new.job_id),
            started_at: Set(None),
            exit_code: Set(None),
            stdout_bytes: Set(0),
            stderr_bytes: Set(0),
            output_truncated: Set(false),
            sealed_params: Set(new.sealed_params),
            key_id: Set(None),
        }
        .insert(&self.db)
        .await?;
        crate::metrics::commands_created(&model.command, 1);
        Ok(model)
    }

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
