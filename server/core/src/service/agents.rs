//! The fleet: agents of a tenant, the tags that target them, and whether they are connected.

use std::sync::Arc;

use serde_json::json;

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use crate::bus::Connection;
use crate::tags::TagRule;
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError, Transport};
use outpost_store::{AgentPageQuery, TagMatch, agent};

/// An agent as the service shows it: its row, whether it is connected, and its tags by
/// source (see `crate::tags` for which a target trusts).
#[derive(Debug)]
pub struct AgentRecord {
    /// The stored agent.
    pub agent: agent::Model,
    /// Connected now.
    pub online: bool,
    /// Every tag, as a target matches them.
    pub tags: Vec<String>,
    /// Tags the agent declares for itself.
    pub agent_tags: Vec<String>,
    /// Tags its key assigns.
    pub key_tags: Vec<String>,
    /// Tags set through the API.
    pub server_tags: Vec<String>,
}

/// Filters of a listing.
#[derive(Debug, Default)]
pub struct AgentFilter {
    /// Only agents with this tag (as a job's target matches it).
    pub tag: Option<String>,
    /// Only online (`Some(true)`) or offline (`Some(false)`) agents.
    pub online: Option<bool>,
}

/// One page of agents under a filter ([`Agents::page`]).
#[derive(Debug)]
pub struct AgentPage {
    /// The page's agents: online first, then by host name.
    pub agents: Vec<AgentRecord>,
    /// The page shown, from 1 (a page past the last shows the last).
    pub page: u64,
    /// How many pages the filter has (at least 1).
    pub pages: u64,
    /// How many agents pass the filter.
    pub total: u64,
}

/// The most agents on one page.
pub const MAX_PAGE_SIZE: u64 = 200;

/// The longest tag a filter may name (the protocol's limit on a tag).
const MAX_TAG_BYTES: usize = 128;

/// Agents.
#[derive(Clone)]
pub struct Agents {
    core: Arc<Core>,
}

impl Agents {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The caller's tenant's tag rule (its agent keys' tags).
    async fn tag_rule(&self, caller: &Caller) -> Result<TagRule, DomainError> {
        Ok(TagRule::new(
            &self.core.store.list_agent_keys(&caller.tenant_id).await?,
        ))
    }

    fn record(&self, rule: &TagRule, agent: agent::Model) -> AgentRecord {
        let online = self.core.bus.is_agent_online(&agent);
        let server_tags = agent.server_tags.to_vec();
        let agent_tags = agent.agent_tags.to_vec();
        AgentRecord {
            tags: rule.all(&agent.key_id, &agent_tags, &server_tags),
            key_tags: rule.key_tags(&agent.key_id).to_vec(),
            online,
            agent_tags,
            server_tags,
            agent,
        }
    }

    /// Every agent of the caller's tenant that passes `filter`.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &AgentFilter,
    ) -> Result<Vec<AgentRecord>, DomainError> {
        let agents = self.core.store.list_agents(&caller.tenant_id).await?;
        let rule = self.tag_rule(caller).await?;
        Ok(agents
            .into_iter()
            .map(|a| self.record(&rule, a))
            .filter(|a| filter.online.is_none_or(|online| a.online == online))
            .filter(|a| {
                filter
                    .tag
                    .as_ref()
                    .is_none_or(|t| rule.has(&a.agent.key_id, &a.agent_tags, &a.server_tags, t))
            })
            .collect())
    }

    /// Page `page` (from 1) of `size` agents of the caller's tenant that pass `filter`:
    /// filtered, counted and ordered by the store, so that a fleet of 10,000 costs the rows
    /// of one page (CONTRACT.md §12). The order is online first, then by host name.
    pub async fn page(
        &self,
        caller: &Caller,
        filter: &AgentFilter,
        page: u64,
        size: u64,
    ) -> Result<AgentPage, DomainError> {
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(DomainError::BadRequest(format!(
                "page size: must be between 1 and {MAX_PAGE_SIZE}, not {size}"
            )));
        }
        let rule = self.tag_rule(caller).await?;
        let tag = match &filter.tag {
            None => None,
            Some(tag) if tag.len() > MAX_TAG_BYTES => {
                return Err(DomainError::BadRequest(format!(
                    "tag: at most {MAX_TAG_BYTES} bytes, not {}",
                    tag.len()
                )));
            }
            Some(tag) => {
                let (key_ids, declared_counts) = rule.matching(tag);
                Some(TagMatch {
                    tag: tag.clone(),
                    key_ids,
                    declared_counts,
                })
            }
        };
        let mut query = AgentPageQuery {
            tag,
            online: filter.online,
            offset: 0,
            limit: size,
        };
        let store = &self.core.store;
        let total = store.count_agents(&caller.tenant_id, &query).await?;
        let pages = total.div_ceil(size).max(1);
        let page = page.clamp(1, pages);
        query.offset = (page - 1) * size;
        let agents = store
            .page_agents(&caller.tenant_id, &query)
            .await?
            .into_iter()
            .map(|a| self.record(&rule, a))
            .collect();
        Ok(AgentPage {
            agents,
            page,
            pages,
            total,
        })
    }

    /// One agent.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<AgentRecord, DomainError> {
        let agent = self
            .core
            .store
            .get_agent(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent {id}")))?;
        let rule = self.tag_rule(caller).await?;
        Ok(self.record(&rule, agent))
    }

    /// An agent's heartbeat metrics of the last hour, one sample a minute, oldest first:
    /// `(minute, cpu, memory, disk)` in percent.
    pub async fn metrics(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Vec<(chrono::DateTime<chrono::Utc>, f64, f64, f64)>, DomainError> {
        let since = outpost_store::now() - super::housekeeping::METRICS_KEPT;
        Ok(self
            .core
            .store
            .agent_metrics(&caller.tenant_id, id, since)
            .await?
            .into_iter()
            .map(|m| (m.minute, m.cpu, m.memory, m.disk))
            .collect())
    }

    /// Replaces an agent's server-side tags.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
    pub async fn set_tags(
        &self,
        caller: &Caller,
        id: &str,
        tags: &[String],
    ) -> Result<AgentRecord, DomainError> {
        Access::require(caller, Action::ManageAgents)?;
        validate_tags("tags", tags)?;
        let txn = self.core.store.begin().await?;
        let agent = txn
            .set_agent_tags(&caller.tenant_id, id, tags)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent {id}")))?;
        let event = AuditEvent::new(AuditAction::AgentUpdate, AuditTarget::Agent, id)
            .with(json!({"tags": tags, "hostname": agent.hostname}));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit_agents().await?;
        let rule = self.tag_rule(caller).await?;
        Ok(self.record(&rule, agent))
    }

    /// Forgets an agent: its open commands become `lost`, and if it is connected it is
    /// disconnected (it registers again as new if it reconnects, with any key).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
    pub async fn forget(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageAgents)?;
        let hostname = self
            .core
            .store
            .get_agent(&caller.tenant_id, id)
            .await?
            .map(|a| a.hostname);
        // Its certificates first (CONTRACT.md §19): from here on no handshake with them is
        // accepted, on any node; an agent that enrolled but never registered has no row but
        // is deleted all the same.
        let revoked = self
            .core
            .store
            .revoke_agent_certs(&caller.tenant_id, id)
            .await?;
        let lost = match self.core.store.delete_agent(&caller.tenant_id, id).await? {
            Some(lost) => lost,
            None if revoked => Vec::new(),
            None => return Err(DomainError::NotFound(format!("no agent {id}"))),
        };
        // Recorded right after, not in one transaction: `delete_agent` recomputes the jobs of
        // the runs it loses, taking job rows' locks as the writer does (see `Jobs::cancel`).
        let event = AuditEvent::new(AuditAction::AgentDelete, AuditTarget::Agent, id).with(
            json!({"hostname": hostname, "runs_lost": lost.len(), "certificates_revoked": revoked}),
        );
        let recorded = self
            .core
            .store
            .append_audit(&record_of(caller, event))
            .await;
        // Whoever waits for those runs (`?wait`, a command's caller, a job's event stream)
        // learns now that they are lost, and the webhooks of jobs they finished go out.
        self.core.finish.finished(lost);
        if let Ok(agent_id) = id.parse() {
            self.core
                .bus
                .disconnect_agent(&caller.tenant_id, agent_id, "agent deleted");
        }
        recorded?;
        Ok(())
    }

    /// Lets an agent deleted after it enrolled enroll again (CONTRACT.md §19): admins only.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
    pub async fn unrevoke(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageAgents)?;
        if !self
            .core
            .store
            .unrevoke_agent(&caller.tenant_id, id)
            .await?
        {
            // An agent of the tenant that is not revoked is left as it is, and nothing
            // recorded; an id the tenant does not know is 404, as on every agent route.
            if self
                .core
                .store
                .get_agent(&caller.tenant_id, id)
                .await?
                .is_some()
            {
                return Ok(());
            }
            return Err(DomainError::NotFound(format!(
                "no agent {id} (neither revoked nor registered)"
            )));
        }
        let event = AuditEvent::new(AuditAction::AgentUnrevoke, AuditTarget::Agent, id);
        self.core
            .store
            .append_audit(&record_of(caller, event))
            .await?;
        Ok(())
    }

    /// The caller's tenant's connected agents, by id.
    pub fn connected(&self, caller: &Caller) -> Vec<Connection> {
        let mut connections = self.core.bus.connections(&caller.tenant_id);
        connections.sort_by_key(|c| c.agent_id);
        connections
    }

    /// Connected agents per transport, all tenants (for metrics).
    pub fn connected_by_transport(&self) -> Vec<(Transport, usize)> {
        self.core.bus.count_by_transport()
    }
}

/// Validates a list of tags by the protocol's rule, the one agents' own tags follow: at most
/// 64, each 1 to 128 bytes without commas or control characters.
pub fn validate_tags(field: &str, tags: &[String]) -> Result<(), DomainError> {
    outpost_protocol::check::tags(field, tags).map_err(DomainError::BadRequest)
}
