//! Staged rollouts (CONTRACT.md §17): the rows the engine (`outpost_core::service::rollouts`)
//! works, the claims that let one node at a time work a rollout, and the reads the API and
//! the dashboard page show.
//!
//! Every change the engine makes is conditional on what it read (the claim rule's form 1): an
//! agent's row moves only from the state it was seen in, and a rollout only from the state and
//! stage it was seen at, while the node still holds its claim. Two nodes that both think they
//! work a rollout (a lapsed claim) therefore never send one agent two `update`s: the second
//! node's `pending → updating` matches no row, and it sends nothing.
//!
//! An agent is held by one active rollout at a time: `held` is TRUE while its rollout is
//! active, under a partial unique index, so a second rollout that would take it fails as a
//! whole (409) even when two nodes insert at once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionSession, TransactionTrait,
};

use super::{
    AuditRecord, ClaimSpec, NewEvent, Result, Store, agent, command, desired_version, fleet_policy,
    rollout, rollout_agent,
};
use crate::domain::{RolloutAgentState, RolloutState};

/// How long a node's claim on a rollout holds: it renews it at every look (each second).
const CLAIM: chrono::Duration = chrono::Duration::seconds(30);
/// Rows inserted per statement (14 values each).
const AGENTS_PER_INSERT: usize = 500;
/// Most agents of a rollout listed in one page.
pub const MAX_AGENTS_PAGE: u64 = 500;

/// An agent of a rollout with what the engine reads of its agent row and health script.
#[derive(Debug, Clone)]
pub struct StageAgent {
    /// The rollout's row for it.
    pub row: rollout_agent::Model,
    /// Its agent row's fields, unless it was deleted.
    pub agent: Option<AgentFields>,
    /// Its health script's command.
    pub check: Option<CheckRun>,
}

/// How a health script's command stands: its state, success, exit code and error message.
pub type CheckRun = (String, Option<bool>, Option<i32>, Option<String>);

/// The fields of an agent row a rollout reads.
#[derive(Debug, Clone)]
pub struct AgentFields {
    /// Its version.
    pub version: String,
    /// Its key.
    pub key_id: String,
    /// Its capabilities.
    pub capabilities: crate::StringList,
    /// When its connection began.
    pub connected_at: Option<DateTime<Utc>>,
    /// When it last went away.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// Its supervisor's last update report.
    pub update_status: Option<serde_json::Value>,
}

impl AgentFields {
    /// Connected to some node now (as `presence::online` says).
    pub fn online(&self) -> bool {
        match (self.connected_at, self.disconnected_at) {
            (Some(_), None) => true,
            (Some(on), Some(off)) => off < on,
            _ => false,
        }
    }
}

/// One agent's move, made only if its row is still in `from`.
#[derive(Debug, Clone)]
pub struct AgentMove {
    /// The agent.
    pub agent_id: String,
    /// The state it was seen in.
    pub from: RolloutAgentState,
    /// The state it goes to.
    pub to: RolloutAgentState,
    /// Its reason (kept when `None`).
    pub reason: Option<String>,
    /// When something was sent to it (`update`, or the way back).
    pub sent_at: Option<DateTime<Utc>>,
    /// Its soak's start.
    pub soak_from: Option<DateTime<Utc>>,
    /// The `update` command sent.
    pub command_id: Option<String>,
    /// The health script's command sent.
    pub check_id: Option<String>,
}

impl AgentMove {
    /// A move with nothing but the state (and reason).
    pub fn new(
        agent_id: &str,
        from: RolloutAgentState,
        to: RolloutAgentState,
        reason: Option<String>,
    ) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            from,
            to,
            reason,
            sent_at: None,
            soak_from: None,
            command_id: None,
            check_id: None,
        }
    }
}

/// How a rollout moves, made only if it is still in `from` at `from_stage`.
#[derive(Debug, Clone)]
pub struct RolloutMove {
    /// The state it was seen in.
    pub from: RolloutState,
    /// The stage it was seen at.
    pub from_stage: i32,
    /// The state it goes to.
    pub to: RolloutState,
    /// The stage it goes to.
    pub to_stage: i32,
    /// Why (a halt's reason); cleared when `None`.
    pub reason: Option<String>,
}

/// A page of a rollout's agents, with host names.
#[derive(Debug, Clone)]
pub struct RolloutAgentRow {
    /// The row.
    pub row: rollout_agent::Model,
    /// Its agent's host name (`None` once forgotten).
    pub hostname: Option<String>,
    /// Its agent's version now.
    pub version: Option<String>,
}

/// A desired version's id: its tenant and target.
pub fn desired_id(tenant_id: &str, target_key: &str) -> String {
    format!("{tenant_id}/{target_key}")
}

/// Why a rollout could not be inserted.
#[derive(Debug)]
pub enum RolloutRefused {
    /// Agents already in an active rollout: (agent, rollout), a few of them.
    Held(Vec<(String, String)>),
}

/// Which of `agents` another active rollout (not `except`) holds: (agent, rollout), sorted, at
/// most ten (what a refusal names).
async fn held_among<'a>(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    except: Option<&str>,
    agents: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String)>> {
    let mut query = rollout_agent::Entity::find()
        .select_only()
        .columns([
            rollout_agent::Column::AgentId,
            rollout_agent::Column::RolloutId,
        ])
        .filter(rollout_agent::Column::TenantId.eq(tenant_id))
        // A literal, for the partial index `rollout_agents_held` (see `RUNNING_JOBS_SQL`).
        .filter(Expr::cust("rollout_agents.held"));
    if let Some(except) = except {
        query = query.filter(rollout_agent::Column::RolloutId.ne(except));
    }
    let held: HashMap<String, String> = query
        .into_tuple::<(String, String)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let mut taken: Vec<(String, String)> = agents
        .filter_map(|a| held.get(a).map(|r| (a.to_owned(), r.clone())))
        .collect();
    taken.sort();
    taken.truncate(10);
    Ok(taken)
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Inserts a rollout, its agents (held) and its audit row in one transaction; refused when
    /// any of its agents is held by another active rollout.
    pub async fn insert_rollout(
        &self,
        rollout: rollout::Model,
        agents: Vec<rollout_agent::Model>,
        audit: &AuditRecord,
        event: NewEvent<'_>,
    ) -> Result<std::result::Result<(), RolloutRefused>> {
        let txn = self.begin_write().await?;
        let taken = held_among(
            &txn.db,
            &rollout.tenant_id,
            None,
            agents.iter().map(|a| a.agent_id.as_str()),
        )
        .await?;
        if !taken.is_empty() {
            txn.db.rollback().await?;
            return Ok(Err(RolloutRefused::Held(taken)));
        }
        rollout::Entity::insert(rollout::ActiveModel::from(rollout))
            .exec(&txn.db)
            .await?;
        for chunk in agents.chunks(AGENTS_PER_INSERT) {
            let models: Vec<rollout_agent::ActiveModel> =
                chunk.iter().cloned().map(Into::into).collect();
            match rollout_agent::Entity::insert_many(models)
                .exec(&txn.db)
                .await
            {
                Ok(_) => {}
                // Another node's rollout took one of them between the check and here
                // (PostgreSQL; SQLite's write lock orders the two).
                Err(err) if err.to_string().contains("rollout_agents_held") => {
                    txn.db.rollback().await?;
                    return Ok(Err(RolloutRefused::Held(Vec::new())));
                }
                Err(err) => return Err(err.into()),
            }
        }
        txn.append_audit_now(audit).await?;
        txn.insert_event_with_deliveries(event).await?;
        txn.db.commit().await?;
        Ok(Ok(()))
    }

    /// Turns a rollout to `rolling_back` (from `from`, as seen), in one transaction: every
    /// agent it sent the version to goes to `revert_pending` and is held again (refused when
    /// another active rollout holds one of them now), and the desired version it set, if it
    /// is still its target's, is taken back. `Ok(false)` when it had changed meanwhile.
    pub async fn start_rollback(
        &self,
        rollout: &rollout::Model,
        from: RolloutState,
        audit: &AuditRecord,
        at: DateTime<Utc>,
    ) -> Result<std::result::Result<bool, RolloutRefused>> {
        let txn = self.begin_write().await?;
        let back = [
            RolloutAgentState::Updating,
            RolloutAgentState::Soaking,
            RolloutAgentState::Checking,
            RolloutAgentState::Healthy,
            RolloutAgentState::Failed,
        ];
        let ours: Vec<String> = rollout_agent::Entity::find()
            .select_only()
            .column(rollout_agent::Column::AgentId)
            .filter(rollout_agent::Column::RolloutId.eq(&rollout.id))
            .filter(rollout_agent::Column::State.is_in(back.iter().map(|s| s.as_str())))
            .filter(rollout_agent::Column::SentAt.is_not_null())
            .into_tuple()
            .all(&txn.db)
            .await?;
        let taken = held_among(
            &txn.db,
            &rollout.tenant_id,
            Some(&rollout.id),
            ours.iter().map(String::as_str),
        )
        .await?;
        if !taken.is_empty() {
            txn.db.rollback().await?;
            return Ok(Err(RolloutRefused::Held(taken)));
        }
        let moved = rollout::Entity::update_many()
            .col_expr(
                rollout::Column::State,
                Expr::value(RolloutState::RollingBack.as_str()),
            )
            .col_expr(rollout::Column::Reason, Expr::value("rolling back"))
            .col_expr(rollout::Column::UpdatedAt, Expr::value(at))
            .col_expr(
                rollout::Column::FinishedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(rollout::Column::Id.eq(&rollout.id))
            .filter(rollout::Column::State.eq(from.as_str()))
            .filter(rollout::Column::Stage.eq(rollout.stage))
            .exec(&txn.db)
            .await?
            .rows_affected;
        if moved != 1 {
            txn.db.rollback().await?;
            return Ok(Ok(false));
        }
        rollout_agent::Entity::update_many()
            .col_expr(
                rollout_agent::Column::State,
                Expr::value(RolloutAgentState::RevertPending.as_str()),
            )
            .col_expr(
                rollout_agent::Column::SentAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                rollout_agent::Column::Reason,
                Expr::value(Option::<String>::None),
            )
            .col_expr(rollout_agent::Column::Held, Expr::value(true))
            // Cleared so that the way back's command, once recorded, says it was sent.
            .col_expr(
                rollout_agent::Column::CommandId,
                Expr::value(Option::<String>::None),
            )
            .col_expr(rollout_agent::Column::UpdatedAt, Expr::value(at))
            .filter(rollout_agent::Column::RolloutId.eq(&rollout.id))
            .filter(rollout_agent::Column::State.is_in(back.iter().map(|s| s.as_str())))
            .filter(rollout_agent::Column::SentAt.is_not_null())
            .exec(&txn.db)
            .await?;
        desired_version::Entity::delete_many()
            .filter(desired_version::Column::RolloutId.eq(&rollout.id))
            .exec(&txn.db)
            .await?;
        txn.append_audit_now(audit).await?;
        txn.db.commit().await?;
        Ok(Ok(true))
    }

    /// The versions a rollout's agents ran when it took them, of the agents it sent the
    /// version to (what a rollback needs). "Sent" is the mark made before the send
    /// (`sent_at`): the command's id is recorded after it, and a node that died in between
    /// (a restart) leaves an agent that was updated without one.
    pub async fn rollout_from_versions(&self, rollout_id: &str) -> Result<Vec<String>> {
        Ok(rollout_agent::Entity::find()
            .select_only()
            .column(rollout_agent::Column::FromVersion)
            .distinct()
            .filter(rollout_agent::Column::RolloutId.eq(rollout_id))
            .filter(rollout_agent::Column::SentAt.is_not_null())
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Claims up to `limit` active rollouts for `node_id` (its own again, each look renews
    /// them), the oldest first.
    pub async fn claim_rollouts(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<rollout::Model>> {
        let ids = self
            .claim_ids(
                &ClaimSpec {
                    table: "rollouts",
                    by: "claimed_by",
                    until: "claimed_until",
                    due: "state IN ('running', 'paused', 'halted', 'rolling_back')",
                    reclaim_own: true,
                    order: "created_at",
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
        Ok(rollout::Entity::find()
            .filter(rollout::Column::Id.is_in(ids))
            .order_by_asc(rollout::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Counts of a rollout's agents by stage and state.
    pub async fn rollout_counts(&self, rollout_id: &str) -> Result<Vec<(i32, String, i64)>> {
        let counts = self.rollouts_counts(&[rollout_id.to_owned()]).await?;
        Ok(counts.into_iter().map(|(_, s, st, n)| (s, st, n)).collect())
    }

    /// Counts of the agents of several rollouts (a page of them) by rollout, stage and state,
    /// in one query.
    pub async fn rollouts_counts(
        &self,
        rollout_ids: &[String],
    ) -> Result<Vec<(String, i32, String, i64)>> {
        if rollout_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(rollout_agent::Entity::find()
            .select_only()
            .column(rollout_agent::Column::RolloutId)
            .column(rollout_agent::Column::Stage)
            .column(rollout_agent::Column::State)
            .column_as(Expr::col(rollout_agent::Column::AgentId).count(), "n")
            .filter(rollout_agent::Column::RolloutId.is_in(rollout_ids.iter().cloned()))
            .group_by(rollout_agent::Column::RolloutId)
            .group_by(rollout_agent::Column::Stage)
            .group_by(rollout_agent::Column::State)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The agents of a rollout in `states` (of one stage, or all), in the rollout's order, at
    /// most `limit`, with their agent rows' fields and health script commands.
    pub async fn rollout_stage_agents(
        &self,
        rollout: &rollout::Model,
        stage: Option<i32>,
        states: &[RolloutAgentState],
        limit: u64,
    ) -> Result<Vec<StageAgent>> {
        let mut query = rollout_agent::Entity::find()
            .filter(rollout_agent::Column::RolloutId.eq(&rollout.id))
            .filter(rollout_agent::Column::State.is_in(states.iter().map(|s| s.as_str())));
        if let Some(stage) = stage {
            query = query.filter(rollout_agent::Column::Stage.eq(stage));
        }
        let rows = query
            .order_by_asc(rollout_agent::Column::Stage)
            .order_by_asc(rollout_agent::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut agents = self
            .agent_fields(&rollout.tenant_id, rows.iter().map(|r| r.agent_id.clone()))
            .await?;
        let check_ids: Vec<String> = rows.iter().filter_map(|r| r.check_id.clone()).collect();
        let mut checks: HashMap<String, CheckRun> = HashMap::new();
        for ids in check_ids.chunks(AGENTS_PER_INSERT) {
            type Row = (String, String, Option<bool>, Option<i32>, Option<String>);
            let found: Vec<Row> = command::Entity::find()
                .select_only()
                .columns([
                    command::Column::Id,
                    command::Column::State,
                    command::Column::Success,
                    command::Column::ExitCode,
                    command::Column::ErrorMessage,
                ])
                .filter(command::Column::TenantId.eq(&rollout.tenant_id))
                .filter(command::Column::Id.is_in(ids.iter().cloned()))
                .into_tuple()
                .all(&self.db)
                .await?;
            for (id, state, success, exit, message) in found {
                checks.insert(id, (state, success, exit, message));
            }
        }
        Ok(rows
            .into_iter()
            .map(|row| StageAgent {
                agent: agents.remove(&row.agent_id),
                check: row.check_id.as_ref().and_then(|id| checks.remove(id)),
                row,
            })
            .collect())
    }

    /// What a rollout reads of each of `ids` (agents of `tenant_id`), by id; a deleted agent
    /// is missing.
    pub async fn agent_fields(
        &self,
        tenant_id: &str,
        ids: impl IntoIterator<Item = String>,
    ) -> Result<HashMap<String, AgentFields>> {
        let ids: Vec<String> = ids.into_iter().collect();
        let mut agents = HashMap::with_capacity(ids.len());
        for ids in ids.chunks(AGENTS_PER_INSERT) {
            type Fields = (
                String,
                String,
                String,
                crate::StringList,
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
                Option<serde_json::Value>,
            );
            let found: Vec<Fields> = agent::Entity::find()
                .select_only()
                .columns([
                    agent::Column::Id,
                    agent::Column::Version,
                    agent::Column::KeyId,
                    agent::Column::Capabilities,
                    agent::Column::ConnectedAt,
                    agent::Column::DisconnectedAt,
                    agent::Column::UpdateStatus,
                ])
                .filter(agent::Column::TenantId.eq(tenant_id))
                .filter(agent::Column::Id.is_in(ids.iter().cloned()))
                .into_tuple()
                .all(&self.db)
                .await?;
            for (id, version, key_id, capabilities, connected_at, disconnected_at, update_status) in
                found
            {
                agents.insert(
                    id,
                    AgentFields {
                        version,
                        key_id,
                        capabilities,
                        connected_at,
                        disconnected_at,
                        update_status,
                    },
                );
            }
        }
        Ok(agents)
    }

    /// Of `ids`, the agents sent an `update` since `since` (whatever became of it): the
    /// ones a convergence pass leaves alone for now.
    pub async fn agents_updated_since(
        &self,
        tenant_id: &str,
        ids: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for ids in ids.chunks(AGENTS_PER_INSERT) {
            let found: Vec<String> = command::Entity::find()
                .select_only()
                .column(command::Column::AgentId)
                .distinct()
                .filter(command::Column::TenantId.eq(tenant_id))
                .filter(command::Column::AgentId.is_in(ids.iter().cloned()))
                .filter(command::Column::Command.eq("update"))
                .filter(command::Column::CreatedAt.gt(since))
                .into_tuple()
                .all(&self.db)
                .await?;
            out.extend(found);
        }
        Ok(out)
    }

    /// Applies the engine's moves for one rollout in one transaction, each only from the
    /// state it was seen in, and only while `node_id` holds the rollout. Returns the moves
    /// made (a move whose row had changed is left out).
    pub async fn move_rollout_agents(
        &self,
        rollout_id: &str,
        node_id: &str,
        moves: Vec<AgentMove>,
        at: DateTime<Utc>,
    ) -> Result<Vec<AgentMove>> {
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write().await?;
        let held = rollout::Entity::find_by_id(rollout_id)
            .filter(rollout::Column::ClaimedBy.eq(node_id))
            .one(&txn.db)
            .await?;
        if held.is_none() {
            txn.db.rollback().await?;
            return Ok(Vec::new());
        }
        let mut made = Vec::with_capacity(moves.len());
        for m in moves {
            let mut update = rollout_agent::Entity::update_many()
                .col_expr(rollout_agent::Column::State, Expr::value(m.to.as_str()))
                .col_expr(rollout_agent::Column::UpdatedAt, Expr::value(at));
            if let Some(reason) = &m.reason {
                update = update.col_expr(rollout_agent::Column::Reason, Expr::value(reason));
            }
            if let Some(sent) = m.sent_at {
                update = update.col_expr(rollout_agent::Column::SentAt, Expr::value(sent));
            }
            if let Some(soak) = m.soak_from {
                update = update.col_expr(rollout_agent::Column::SoakFrom, Expr::value(soak));
            }
            if let Some(id) = &m.command_id {
                update = update.col_expr(rollout_agent::Column::CommandId, Expr::value(id));
            }
            if let Some(id) = &m.check_id {
                update = update.col_expr(rollout_agent::Column::CheckId, Expr::value(id));
            }
            let n = update
                .filter(rollout_agent::Column::RolloutId.eq(rollout_id))
                .filter(rollout_agent::Column::AgentId.eq(&m.agent_id))
                .filter(rollout_agent::Column::State.eq(m.from.as_str()))
                .exec(&txn.db)
                .await?
                .rows_affected;
            if n == 1 {
                made.push(m);
            }
        }
        txn.db.commit().await?;
        Ok(made)
    }

    /// Moves a rollout (the engine, holding its claim, or a person: `node_id` `None`), only
    /// from the state and stage it was seen at. A rollout that ends lets go of its agents;
    /// one that completes sets its target's desired version; `event` is recorded with it.
    /// False when it had moved meanwhile.
    pub async fn move_rollout(
        &self,
        rollout: &rollout::Model,
        node_id: Option<&str>,
        change: &RolloutMove,
        event: Option<NewEvent<'_>>,
        audit: Option<&AuditRecord>,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let txn = self.begin_write().await?;
        let ends = !change.to.is_active();
        let mut update = rollout::Entity::update_many()
            .col_expr(rollout::Column::State, Expr::value(change.to.as_str()))
            .col_expr(rollout::Column::Stage, Expr::value(change.to_stage))
            .col_expr(rollout::Column::Reason, Expr::value(change.reason.clone()))
            .col_expr(rollout::Column::UpdatedAt, Expr::value(at));
        if ends {
            update = update
                .col_expr(rollout::Column::FinishedAt, Expr::value(at))
                .col_expr(
                    rollout::Column::ClaimedBy,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    rollout::Column::ClaimedUntil,
                    Expr::value(Option::<DateTime<Utc>>::None),
                );
        }
        let mut update = update
            .filter(rollout::Column::Id.eq(&rollout.id))
            .filter(rollout::Column::TenantId.eq(&rollout.tenant_id))
            .filter(rollout::Column::State.eq(change.from.as_str()))
            .filter(rollout::Column::Stage.eq(change.from_stage));
        if let Some(node) = node_id {
            update = update.filter(rollout::Column::ClaimedBy.eq(node));
        }
        if update.exec(&txn.db).await?.rows_affected != 1 {
            txn.db.rollback().await?;
            return Ok(false);
        }
        if ends {
            rollout_agent::Entity::update_many()
                .col_expr(rollout_agent::Column::Held, Expr::value(false))
                .filter(rollout_agent::Column::RolloutId.eq(&rollout.id))
                .exec(&txn.db)
                .await?;
        }
        if change.to == RolloutState::Completed {
            let row = desired_version::ActiveModel::from(desired_version::Model {
                id: desired_id(&rollout.tenant_id, &rollout.target_key),
                tenant_id: rollout.tenant_id.clone(),
                target_key: rollout.target_key.clone(),
                target: rollout.target.clone(),
                version: rollout.version.clone(),
                rollout_id: rollout.id.clone(),
                max_in_flight: rollout.max_in_flight,
                set_at: at,
                claimed_by: None,
                claimed_until: None,
            });
            desired_version::Entity::insert(row)
                .on_conflict(
                    OnConflict::column(desired_version::Column::Id)
                        .update_columns([
                            desired_version::Column::Target,
                            desired_version::Column::Version,
                            desired_version::Column::RolloutId,
                            desired_version::Column::MaxInFlight,
                            desired_version::Column::SetAt,
                        ])
                        .to_owned(),
                )
                .exec(&txn.db)
                .await?;
        }
        if let Some(event) = event {
            txn.insert_event_with_deliveries(event).await?;
        }
        if let Some(audit) = audit {
            txn.append_audit_now(audit).await?;
        }
        txn.db.commit().await?;
        Ok(true)
    }

    /// Moves every agent of a rollout's `stage` (all stages: `None`) in one of `from` to
    /// `to`, clearing its soak and reason; used by resume (failed agents of the halted stage
    /// try again). When it was sent the version stays: an agent this rollout updated is one a
    /// rollback sends back, and one at the version already must pass the gate again rather
    /// than count as having been there. Returns how many.
    pub async fn reset_rollout_agents(
        &self,
        rollout_id: &str,
        stage: Option<i32>,
        from: &[RolloutAgentState],
        to: RolloutAgentState,
        at: DateTime<Utc>,
    ) -> Result<u64> {
        let mut update = rollout_agent::Entity::update_many()
            .col_expr(rollout_agent::Column::State, Expr::value(to.as_str()))
            .col_expr(
                rollout_agent::Column::SoakFrom,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                rollout_agent::Column::Reason,
                Expr::value(Option::<String>::None),
            )
            .col_expr(rollout_agent::Column::UpdatedAt, Expr::value(at))
            .filter(rollout_agent::Column::RolloutId.eq(rollout_id))
            .filter(rollout_agent::Column::State.is_in(from.iter().map(|s| s.as_str())));
        if let Some(stage) = stage {
            update = update.filter(rollout_agent::Column::Stage.eq(stage));
        }
        Ok(update.exec(&self.db).await?.rows_affected)
    }

    /// One rollout of a tenant.
    pub async fn get_rollout(&self, tenant_id: &str, id: &str) -> Result<Option<rollout::Model>> {
        Ok(rollout::Entity::find_by_id(id)
            .filter(rollout::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// A page of a tenant's rollouts, newest first, before the id `before`.
    pub async fn list_rollouts(
        &self,
        tenant_id: &str,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<rollout::Model>> {
        let mut query = rollout::Entity::find().filter(rollout::Column::TenantId.eq(tenant_id));
        if let Some(before) = before {
            query = query.filter(rollout::Column::Id.lt(before));
        }
        Ok(query
            .order_by_desc(rollout::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// A page of a rollout's agents in its order (stage, then place), optionally of one stage
    /// and state, after the place `after`, with host names and versions.
    pub async fn rollout_agents_page(
        &self,
        rollout: &rollout::Model,
        stage: Option<i32>,
        state: Option<RolloutAgentState>,
        after: Option<(i32, i32)>,
        limit: u64,
    ) -> Result<Vec<RolloutAgentRow>> {
        let mut query =
            rollout_agent::Entity::find().filter(rollout_agent::Column::RolloutId.eq(&rollout.id));
        if let Some(stage) = stage {
            query = query.filter(rollout_agent::Column::Stage.eq(stage));
        }
        if let Some(state) = state {
            query = query.filter(rollout_agent::Column::State.eq(state.as_str()));
        }
        if let Some((stage, seq)) = after {
            query = query.filter(
                sea_orm::Condition::any()
                    .add(rollout_agent::Column::Stage.gt(stage))
                    .add(
                        sea_orm::Condition::all()
                            .add(rollout_agent::Column::Stage.eq(stage))
                            .add(rollout_agent::Column::Seq.gt(seq)),
                    ),
            );
        }
        let rows = query
            .order_by_asc(rollout_agent::Column::Stage)
            .order_by_asc(rollout_agent::Column::Seq)
            // One more than a page: the service asks for it to tell whether a next page follows.
            .limit(Ord::min(limit, MAX_AGENTS_PAGE + 1))
            .all(&self.db)
            .await?;
        let names: HashMap<String, (String, String)> = if rows.is_empty() {
            HashMap::new()
        } else {
            agent::Entity::find()
                .select_only()
                .columns([
                    agent::Column::Id,
                    agent::Column::Hostname,
                    agent::Column::Version,
                ])
                .filter(agent::Column::TenantId.eq(&rollout.tenant_id))
                .filter(agent::Column::Id.is_in(rows.iter().map(|r| r.agent_id.clone())))
                .into_tuple::<(String, String, String)>()
                .all(&self.db)
                .await?
                .into_iter()
                .map(|(id, host, version)| (id, (host, version)))
                .collect()
        };
        Ok(rows
            .into_iter()
            .map(|row| {
                let found = names.get(&row.agent_id);
                RolloutAgentRow {
                    hostname: found.map(|(h, _)| h.clone()),
                    version: found.map(|(_, v)| v.clone()),
                    row,
                }
            })
            .collect())
    }

    /// Lets go of `node_id`'s claim on a rollout (the node stops).
    pub async fn release_rollout_claim(&self, id: &str, node_id: &str) -> Result<()> {
        rollout::Entity::update_many()
            .col_expr(
                rollout::Column::ClaimedBy,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                rollout::Column::ClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(rollout::Column::Id.eq(id))
            .filter(rollout::Column::ClaimedBy.eq(node_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A tenant's desired versions, by target.
    pub async fn desired_versions(&self, tenant_id: &str) -> Result<Vec<desired_version::Model>> {
        Ok(desired_version::Entity::find()
            .filter(desired_version::Column::TenantId.eq(tenant_id))
            .order_by_asc(desired_version::Column::TargetKey)
            .all(&self.db)
            .await?)
    }

    /// Claims up to `limit` desired versions (every tenant's) for `node_id`, to converge
    /// agents to them: those nobody holds or whose holder's claim ran out, and its own.
    pub async fn claim_desired_versions(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<desired_version::Model>> {
        let ids = self
            .claim_ids(
                &ClaimSpec {
                    table: "desired_versions",
                    by: "claimed_by",
                    until: "claimed_until",
                    due: "TRUE",
                    reclaim_own: true,
                    order: "set_at",
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
        Ok(desired_version::Entity::find()
            .filter(desired_version::Column::Id.is_in(ids))
            .all(&self.db)
            .await?)
    }

    /// Agents held by an active rollout, among `agent_ids`.
    pub async fn held_agents(&self, tenant_id: &str) -> Result<Vec<String>> {
        Ok(rollout_agent::Entity::find()
            .select_only()
            .column(rollout_agent::Column::AgentId)
            .filter(rollout_agent::Column::TenantId.eq(tenant_id))
            // A literal, for the partial index `rollout_agents_held`.
            .filter(Expr::cust("rollout_agents.held"))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// A tenant's fleet policy.
    pub async fn fleet_policy(&self, tenant_id: &str) -> Result<Option<fleet_policy::Model>> {
        Ok(fleet_policy::Entity::find_by_id(tenant_id)
            .one(&self.db)
            .await?)
    }

    /// Sets a tenant's `min_agent_version` (`None` clears it), with its audit row.
    pub async fn set_fleet_policy(
        &self,
        tenant_id: &str,
        min_agent_version: Option<String>,
        audit: &AuditRecord,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let txn = self.begin_write().await?;
        let row = fleet_policy::ActiveModel::from(fleet_policy::Model {
            tenant_id: tenant_id.to_owned(),
            min_agent_version,
            updated_at: at,
        });
        fleet_policy::Entity::insert(row)
            .on_conflict(
                OnConflict::column(fleet_policy::Column::TenantId)
                    .update_columns([
                        fleet_policy::Column::MinAgentVersion,
                        fleet_policy::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&txn.db)
            .await?;
        txn.append_audit_now(audit).await?;
        txn.db.commit().await?;
        Ok(())
    }

    /// How many of a tenant's agents run each version (a fleet has few versions).
    pub async fn version_counts(&self, tenant_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(agent::Entity::find()
            .select_only()
            .column(agent::Column::Version)
            .column_as(Expr::col(agent::Column::Id).count(), "n")
            .filter(agent::Column::TenantId.eq(tenant_id))
            .group_by(agent::Column::Version)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// A page of a tenant's agents running one of `versions`, by host name: (id, host name,
    /// version).
    pub async fn agents_at_versions(
        &self,
        tenant_id: &str,
        versions: &[String],
        limit: u64,
    ) -> Result<Vec<(String, String, String)>> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        Ok(agent::Entity::find()
            .select_only()
            .columns([
                agent::Column::Id,
                agent::Column::Hostname,
                agent::Column::Version,
            ])
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Version.is_in(versions.iter().cloned()))
            .order_by_asc(agent::Column::Hostname)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }
}
