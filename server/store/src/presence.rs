//! Agents' comings and goings as events (CONTRACT.md §11): `agent.offline` once per disconnect that
//! lasted, `agent.online` when an agent reported offline comes back, `agent.updated` and
//! `agent.update_rolled_back` once per supervisor report.
//!
//! An agent is offline when no node holds its connection (`node_id` NULL and its last
//! disconnect after its last connect) and has not been for the grace the caller gives
//! (`service::housekeeping`): a disconnect shorter than that (a network blip, a server
//! restart, a node's failover) is never announced. `offline_reported_at` marks an agent whose
//! offline was recorded, so each disconnect is announced once, and only an announced one is
//! followed by an `agent.online`. The mark and its event commit together, and the mark is set
//! by a conditional update that re-checks the agent is still gone: an agent that registers
//! meanwhile is not announced, and two sweeps at once announce it once.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Condition, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, TransactionSession,
};
use serde_json::{Value, json};

use super::schedules::NewEvent;
use super::{Result, Store, agent, event, now};

/// An agent's offline, announced.
pub const AGENT_OFFLINE: &str = "agent.offline";
/// An agent announced offline is back.
pub const AGENT_ONLINE: &str = "agent.online";
/// The supervisor installed a new version.
pub const AGENT_UPDATED: &str = "agent.updated";
/// The new version kept crashing; the supervisor restored the previous one.
pub const AGENT_UPDATE_ROLLED_BACK: &str = "agent.update_rolled_back";

/// Agents judged per transaction: a fleet cut off at once is announced over several sweeps'
/// small writes, never one long one.
const BATCH: u64 = 500;

/// Agents gone (no node holds them, their last disconnect after their last connect).
fn gone() -> Condition {
    Condition::all()
        .add(agent::Column::NodeId.is_null())
        .add(agent::Column::DisconnectedAt.is_not_null())
        .add(
            Condition::any()
                .add(agent::Column::ConnectedAt.is_null())
                .add(
                    Expr::col(agent::Column::ConnectedAt)
                        .lte(Expr::col(agent::Column::DisconnectedAt)),
                ),
        )
}

/// Agents some node holds (the complement of [`gone`] for agents that ever connected).
pub(super) fn online() -> Condition {
    Condition::all()
        .add(agent::Column::ConnectedAt.is_not_null())
        .add(
            Condition::any()
                .add(agent::Column::DisconnectedAt.is_null())
                .add(
                    Expr::col(agent::Column::DisconnectedAt)
                        .lt(Expr::col(agent::Column::ConnectedAt)),
                ),
        )
}

/// An agent's tags for filters and messages: its own and the ones set through the API.
fn tags_of(agent: &agent::Model) -> Value {
    let mut tags = agent.agent_tags.to_vec();
    for tag in agent.server_tags.iter() {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    json!(tags)
}

impl<C: ConnectionTrait + sea_orm::TransactionTrait> Store<C> {
    /// At the start of a server that is the only one (SQLite): nobody is connected, whatever
    /// the rows say after a crash. Marks every agent that looks connected as disconnected at
    /// the last time it was seen, so that one that never comes back is judged like any other.
    pub async fn release_agents_at_start(&self) -> Result<u64> {
        let released = agent::Entity::update_many()
            .col_expr(
                agent::Column::DisconnectedAt,
                Expr::col(agent::Column::LastSeen),
            )
            .filter(online())
            .exec(&self.db)
            .await?;
        Ok(released.rows_affected)
    }

    /// Records `agent.offline` for agents gone since before `cutoff` and not announced yet, at
    /// most a batch per call. Returns the events recorded (an empty batch: none left).
    /// With `not_before`, agents gone since before then are left for later.
    pub async fn record_agents_offline(
        &self,
        cutoff: DateTime<Utc>,
        not_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<event::Model>> {
        let mut candidates = agent::Entity::find()
            .filter(agent::Column::OfflineReportedAt.is_null())
            .filter(agent::Column::DisconnectedAt.lt(cutoff))
            .filter(gone());
        if let Some(start) = not_before {
            candidates = candidates.filter(agent::Column::DisconnectedAt.gte(start));
        }
        let candidates = candidates.limit(BATCH).all(&self.db).await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write().await?;
        let at = now();
        let mut events = Vec::new();
        for agent in candidates {
            let Some(since) = agent.disconnected_at else {
                continue;
            };
            let marked = agent::Entity::update_many()
                .col_expr(agent::Column::OfflineReportedAt, Expr::value(Some(at)))
                .filter(agent::Column::TenantId.eq(&agent.tenant_id))
                .filter(agent::Column::Id.eq(&agent.id))
                .filter(agent::Column::OfflineReportedAt.is_null())
                .filter(agent::Column::DisconnectedAt.eq(since))
                .filter(gone())
                .exec(&txn.db)
                .await?;
            if marked.rows_affected != 1 {
                continue;
            }
            let online = txn.count_online(&agent.tenant_id).await?;
            let detail = json!({
                "agent_id": agent.id,
                "hostname": agent.hostname,
                "tags": tags_of(&agent),
                "version": agent.version,
                "disconnected_at": since,
                "online": online,
            });
            let recorded = txn
                .insert_event_with_deliveries(NewEvent {
                    tenant_id: &agent.tenant_id,
                    kind: AGENT_OFFLINE,
                    subject: ("agent", &agent.id, &agent.hostname),
                    summary: format!(
                        "agent {} is offline since {}",
                        agent.hostname,
                        since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    detail,
                    dedup_key: Some(format!(
                        "{AGENT_OFFLINE}:{}:{}:{}",
                        agent.tenant_id,
                        agent.id,
                        since.timestamp_micros()
                    )),
                })
                .await?;
            events.extend(recorded);
        }
        txn.db.commit().await?;
        Ok(events)
    }

    /// Records `agent.online` for an agent that registered again after its offline was
    /// announced (`None` when it was not, or another registration announced it already).
    pub async fn record_agent_online(&self, agent: &agent::Model) -> Result<Option<event::Model>> {
        let txn = self.begin_write().await?;
        let cleared = agent::Entity::update_many()
            .col_expr(
                agent::Column::OfflineReportedAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(agent::Column::TenantId.eq(&agent.tenant_id))
            .filter(agent::Column::Id.eq(&agent.id))
            .filter(agent::Column::OfflineReportedAt.is_not_null())
            .exec(&txn.db)
            .await?;
        if cleared.rows_affected != 1 {
            return Ok(None);
        }
        let online = txn.count_online(&agent.tenant_id).await?;
        let connected_at = agent.connected_at.unwrap_or_else(now);
        let detail = json!({
            "agent_id": agent.id,
            "hostname": agent.hostname,
            "tags": tags_of(agent),
            "version": agent.version,
            "offline_since": agent.disconnected_at,
            "connected_at": connected_at,
            "online": online,
        });
        let recorded = txn
            .insert_event_with_deliveries(NewEvent {
                tenant_id: &agent.tenant_id,
                kind: AGENT_ONLINE,
                subject: ("agent", &agent.id, &agent.hostname),
                summary: format!("agent {} is back online", agent.hostname),
                detail,
                dedup_key: Some(format!(
                    "{AGENT_ONLINE}:{}:{}:{}",
                    agent.tenant_id,
                    agent.id,
                    connected_at.timestamp_micros()
                )),
            })
            .await?;
        txn.db.commit().await?;
        Ok(recorded)
    }

    /// Records the supervisor's report on an update (`agent.updated` or
    /// `agent.update_rolled_back`) once: the agent sends its last report with every
    /// `register`, and the report's time makes it one event. Other statuses record nothing.
    pub async fn record_update_report(
        &self,
        agent: &agent::Model,
        report: &outpost_protocol::release::UpdateStatus,
    ) -> Result<Option<event::Model>> {
        use outpost_protocol::release::update_status;
        let (kind, summary) = match report.status.as_str() {
            update_status::UPDATED => (
                AGENT_UPDATED,
                format!(
                    "agent {} updated to {}",
                    agent.hostname,
                    report.to.as_deref().unwrap_or(&agent.version)
                ),
            ),
            update_status::ROLLED_BACK => (
                AGENT_UPDATE_ROLLED_BACK,
                format!(
                    "agent {}: the update to {} was rolled back{}",
                    agent.hostname,
                    report.to.as_deref().unwrap_or("a new version"),
                    report
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
            ),
            _ => return Ok(None),
        };
        let detail = json!({
            "agent_id": agent.id,
            "hostname": agent.hostname,
            "tags": tags_of(agent),
            "version": agent.version,
            "from": report.from,
            "to": report.to,
            "reason": report.reason,
            "at": report.at,
        });
        self.record_event(NewEvent {
            tenant_id: &agent.tenant_id,
            kind,
            subject: ("agent", &agent.id, &agent.hostname),
            summary,
            detail,
            dedup_key: Some(format!(
                "{kind}:{}:{}:{}",
                agent.tenant_id,
                agent.id,
                report.at.timestamp_micros()
            )),
        })
        .await
    }

    /// How many of a tenant's agents some node holds now.
    async fn count_online(&self, tenant_id: &str) -> Result<u64> {
        use sea_orm::PaginatorTrait;
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(online())
            .count(&self.db)
            .await?)
    }
}
