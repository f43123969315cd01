//! Agents: a `register` stored and bound to its key, a connection's end, the fleet as lists
//! and as job targets, server-side tags, and forgetting an agent. The fleet's pages and tag
//! queries are in `fleet`, presence (online, offline) in `presence`.

use outpost_protocol::RegisterData;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, Set, Statement, TransactionTrait,
};
use serde_json::{Value, json};

use super::tenants;
use super::{
    Result, Store, StoreError, StringList, agent, agent_key, command, now, state, string_list,
};

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Stores an agent's `register`: a new agent id is bound to `key_id`, the key it first
    /// registered with; an agent bound to that key is refreshed; an agent bound to another key
    /// is left alone and [`Registered::Taken`] returned (CONTRACT.md §9, "Agent identity"). Without
    /// the binding, any agent key of a tenant could take over any of its agents: receive its
    /// queued commands and parameters, and answer for it.
    ///
    /// Each step is one conditional statement (an update of the row bound to this key, or an
    /// insert that does nothing if the id exists), so two registrations of one id with two
    /// keys racing each other bind it to exactly one. A new id in a tenant at its
    /// `max_agents` quota is refused ([`Registered::OverQuota`]); an agent already registered
    /// never is.
    ///
    /// `node_id` is the node that holds the agent's connection, when several share the
    /// database (`outpost_web::cluster`).
    pub async fn upsert_agent(
        &self,
        tenant_id: &str,
        key_id: &str,
        data: &RegisterData,
        node_id: Option<&str>,
        transport: crate::domain::Transport,
    ) -> Result<Registered> {
        let registered = self
            .upsert_agent_row(tenant_id, key_id, data, node_id, transport)
            .await;
        crate::credential_cache::agents_changed();
        registered
    }

    async fn upsert_agent_row(
        &self,
        tenant_id: &str,
        key_id: &str,
        data: &RegisterData,
        node_id: Option<&str>,
        transport: crate::domain::Transport,
    ) -> Result<Registered> {
        let id = data.agent_id.to_string();
        // Twice at most: an insert that lost a race with the same key's insert finds the row
        // on its second update.
        for _ in 0..2 {
            let now = now();
            let mut update = agent::Entity::update_many()
                .col_expr(agent::Column::Hostname, Expr::value(data.hostname.clone()))
                .col_expr(agent::Column::Ip, Expr::value(data.ip.clone()))
                .col_expr(agent::Column::Version, Expr::value(data.version.clone()))
                .col_expr(agent::Column::Os, Expr::value(data.os.clone()))
                .col_expr(agent::Column::Arch, Expr::value(data.arch.clone()))
                .col_expr(agent::Column::Protocol, Expr::value(data.protocol as i32))
                .col_expr(
                    agent::Column::Capabilities,
                    Expr::value(json!(data.capabilities)),
                )
                .col_expr(agent::Column::AgentTags, Expr::value(json!(data.tags)))
                .col_expr(agent::Column::Scripts, Expr::value(json!(data.scripts)))
                .col_expr(
                    agent::Column::Library,
                    Expr::value(data.library.as_ref().map(|l| json!(l))),
                )
                .col_expr(agent::Column::LastSeen, Expr::value(now))
                .col_expr(agent::Column::ConnectedAt, Expr::value(Some(now)))
                .col_expr(
                    agent::Column::NodeId,
                    Expr::value(node_id.map(str::to_owned)),
                )
                .col_expr(
                    agent::Column::Transport,
                    Expr::value(Some(transport.as_str().to_owned())),
                );
            // An agent without a report keeps the last one it sent: the report describes the
            // last update, which stays true until the next.
            if let Some(report) = &data.update_status {
                update = update.col_expr(
                    agent::Column::UpdateStatus,
                    Expr::value(Some(json!(report))),
                );
            }
            let updated = update
                .filter(agent::Column::TenantId.eq(tenant_id))
                .filter(agent::Column::Id.eq(&id))
                .filter(agent::Column::KeyId.eq(key_id))
                .exec_with_returning(&self.db)
                .await?;
            if let Some(model) = updated.into_iter().next() {
                return Ok(Registered::Stored(Box::new(model)));
            }
            let new = agent::ActiveModel {
                tenant_id: Set(tenant_id.to_owned()),
                id: Set(id.clone()),
                key_id: Set(key_id.to_owned()),
                hostname: Set(data.hostname.clone()),
                ip: Set(data.ip.clone()),
                version: Set(data.version.clone()),
                os: Set(data.os.clone()),
                arch: Set(data.arch.clone()),
                protocol: Set(data.protocol as i32),
                capabilities: Set(data.capabilities.iter().collect()),
                agent_tags: Set(data.tags.iter().collect()),
                server_tags: Set(crate::StringList::default()),
                scripts: Set(json!(data.scripts)),
                first_seen: Set(now),
                last_seen: Set(now),
                connected_at: Set(Some(now)),
                disconnected_at: Set(None),
                last_heartbeat: Set(None),
                update_status: Set(data.update_status.as_ref().map(|r| json!(r))),
                node_id: Set(node_id.map(str::to_owned)),
                transport: Set(Some(transport.as_str().to_owned())),
                offline_reported_at: Set(None),
                library: Set(data.library.as_ref().map(|l| json!(l))),
            };
            // Counted against the tenant's `max_agents` (`store::tenants`): only a new id
            // can be refused, never an agent already registered.
            match self.insert_new_agent(new).await? {
                tenants::NewAgent::Inserted => {
                    let model = self.get_agent(tenant_id, &id).await?.ok_or_else(|| {
                        StoreError::Db(DbErr::RecordNotFound(format!("agent {id}")))
                    })?;
                    return Ok(Registered::Stored(Box::new(model)));
                }
                tenants::NewAgent::OverQuota(max) => return Ok(Registered::OverQuota { max }),
                tenants::NewAgent::Exists => {}
            }
            // The id exists: bound to another key, or inserted by this key just now.
            match self.get_agent(tenant_id, &id).await? {
                Some(other) if other.key_id != key_id => {
                    return Ok(Registered::Taken {
                        key_id: other.key_id,
                    });
                }
                _ => continue,
            }
        }
        Err(StoreError::Db(DbErr::Custom(format!(
            "agent {id}: its row changed under two registrations in a row"
        ))))
    }

    /// Records that an agent's connection to `node_id` ended. When several nodes share the
    /// database, an agent that moved to another node meanwhile is left as that node recorded
    /// it: a node learns late that a connection it lost is gone, often after the agent has
    /// registered elsewhere.
    pub async fn record_disconnect(
        &self,
        tenant_id: &str,
        agent_id: &str,
        node_id: Option<&str>,
    ) -> Result<()> {
        let now = now();
        let mut update = agent::Entity::update_many()
            .col_expr(agent::Column::LastSeen, Expr::value(now))
            .col_expr(agent::Column::DisconnectedAt, Expr::value(now))
            .col_expr(agent::Column::NodeId, Expr::value(Option::<String>::None))
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(agent_id));
        if let Some(node_id) = node_id {
            update = update.filter(agent::Column::NodeId.eq(node_id));
        }
        update.exec(&self.db).await?;
        crate::credential_cache::agents_changed();
        Ok(())
    }

    /// Every agent of a tenant, by host name.
    pub async fn list_agents(&self, tenant_id: &str) -> Result<Vec<agent::Model>> {
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent::Column::Hostname)
            .order_by_asc(agent::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Every agent of a tenant as a job target: id, key and tags only, in hostname order.
    /// Resolving a target reads the whole fleet, and the other columns (scripts, metrics) are
    /// most of each row.
    ///
    /// On SQLite the rows come back as one text that SQLite concatenates: through the driver,
    /// decoding each row separately was a large part of a job's creation, before any run was
    /// stored. The fields are joined as they are stored, not rebuilt as JSON, and the rows are
    /// read in the order of the `agents_hostname` index: an aggregate's own `ORDER BY` sorted
    /// them again in a temporary B-tree, and `json_array(…, json(…))` parsed and re-serialised
    /// every agent's tags, which roughly doubled SQLite's own work (figures:
    /// docs/BENCHMARKS.md, "Design notes behind the figures"). Fields are separated by the
    /// ASCII unit separator, agents by the record separator, and neither can occur inside a
    /// field: ids are UUIDs, the host name comes as `hex()` and tags are stored JSON, whose
    /// text never holds a raw control character. An aggregate's input order is not SQLite's
    /// promise, so the list is checked and sorted if it is not in order; hex digits sort as
    /// the bytes they encode. Other backends read the rows.
    pub async fn agent_targets(&self, tenant_id: &str) -> Result<Vec<AgentTarget>> {
        let backend = self.db.get_database_backend();
        if backend == DbBackend::Sqlite {
            let row = self
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT group_concat(agent, char(30)) FROM (SELECT hex(hostname) \
                     || char(31) || id || char(31) || key_id || char(31) || agent_tags \
                     || char(31) || server_tags AS agent FROM agents WHERE tenant_id = ? \
                     ORDER BY hostname, id)",
                    [tenant_id.into()],
                ))
                .await?;
            // An aggregate always yields one row, NULL for a tenant without agents.
            let text: Option<String> = match row {
                Some(row) => row.try_get_by_index(0)?,
                None => None,
            };
            let text = text.unwrap_or_default();
            let mut agents = text
                .split(RECORD_SEPARATOR)
                .filter(|record| !record.is_empty())
                .map(|record| AgentTarget::from_record(record, tenant_id))
                .collect::<Result<Vec<_>>>()?;
            if !agents.is_sorted_by(|(a, x), (b, y)| (a, &x.id) <= (b, &y.id)) {
                agents.sort_unstable_by(|(a, x), (b, y)| (a, &x.id).cmp(&(b, &y.id)));
            }
            return Ok(agents.into_iter().map(|(_, agent)| agent).collect());
        }
        let rows: Vec<(String, String, StringList, StringList)> = agent::Entity::find()
            .select_only()
            .columns([
                agent::Column::Id,
                agent::Column::KeyId,
                agent::Column::AgentTags,
                agent::Column::ServerTags,
            ])
            .filter(agent::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent::Column::Hostname)
            .order_by_asc(agent::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(AgentTarget::from_row).collect())
    }

    /// One agent of a tenant.
    pub async fn get_agent(&self, tenant_id: &str, id: &str) -> Result<Option<agent::Model>> {
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .one(&self.db)
            .await?)
    }

    /// An agent and the key it connected with, in one query: a command's round trip needs
    /// both, and each query is a hop to SQLite's thread and back, a noticeable part of the
    /// round trip (figures: docs/BENCHMARKS.md, "Design notes behind the figures"). The key is
    /// `None` when it no longer exists (or, which the schema does not allow, belongs to
    /// another tenant).
    pub async fn get_agent_with_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(agent::Model, Option<agent_key::Model>)>> {
        let key_of_agent = agent::Entity::belongs_to(agent_key::Entity)
            .from(agent::Column::KeyId)
            .to(agent_key::Column::Id)
            .into();
        let found = agent::Entity::find()
            .join(JoinType::LeftJoin, key_of_agent)
            .select_also(agent_key::Entity)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .one(&self.db)
            .await?;
        Ok(found.map(|(agent, key)| {
            let key = key.filter(|key| key.tenant_id == agent.tenant_id);
            (agent, key)
        }))
    }

    /// Replaces an agent's server-side tags.
    pub async fn set_agent_tags(
        &self,
        tenant_id: &str,
        id: &str,
        tags: &[String],
    ) -> Result<Option<agent::Model>> {
        agent::Entity::update_many()
            .col_expr(agent::Column::ServerTags, Expr::value(json!(tags)))
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        crate::credential_cache::agents_changed();
        self.get_agent(tenant_id, id).await
    }

    /// Forgets an agent. The commands it still owed become `lost` and their jobs are
    /// recomputed; they are returned, so that whoever waits for them can be told (`None` when
    /// the agent was not the tenant's).
    pub async fn delete_agent(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<command::Model>>> {
        let lost = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::LOST))
            .col_expr(command::Column::FinishedAt, Expr::value(now()))
            .col_expr(command::Column::ErrorCode, Expr::value("agent_deleted"))
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value("the agent was deleted before it answered"),
            )
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(id))
            .filter(Expr::cust(state::OPEN_SQL))
            .exec_with_returning(&self.db)
            .await?;
        let jobs: std::collections::BTreeSet<&str> =
            lost.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        let res = agent::Entity::delete_many()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        crate::credential_cache::agents_changed();
        Ok((res.rows_affected > 0).then_some(lost))
    }
}

/// What [`Store::upsert_agent`] did with a `register`.
#[derive(Debug)]
pub enum Registered {
    /// Stored: a new agent, now bound to the key, or one already bound to it.
    Stored(Box<agent::Model>),
    /// The agent id is bound to another key of the tenant, named here; nothing was stored.
    Taken {
        /// The key the agent is bound to.
        key_id: String,
    },
    /// The agent id is new and the tenant has its `max_agents` already; nothing was stored.
    OverQuota {
        /// The tenant's `max_agents`.
        max: i64,
    },
}

impl Registered {
    /// The stored agent, unless the id was taken.
    pub fn into_stored(self) -> Option<agent::Model> {
        match self {
            Self::Stored(model) => Some(*model),
            Self::Taken { .. } | Self::OverQuota { .. } => None,
        }
    }
}

/// An agent as a job target sees it.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// Agent id.
    pub id: String,
    /// The key it is bound to.
    pub key_id: String,
    /// The tags it declares itself.
    pub declared: Vec<String>,
    /// The tags an operator set on it.
    pub server: Vec<String>,
}

/// Separates agents in [`Store::agent_targets`]' text (ASCII RS).
const RECORD_SEPARATOR: char = '\u{1e}';
/// Separates an agent's fields there (ASCII US).
const UNIT_SEPARATOR: char = '\u{1f}';

impl AgentTarget {
    /// From `hex(hostname) US id US key_id US agent_tags US server_tags`, the tags as stored
    /// JSON; with the hex host name, which sorts as the host name does.
    fn from_record<'a>(record: &'a str, tenant_id: &str) -> Result<(&'a str, Self)> {
        let bad = |what: &str| {
            StoreError::Db(DbErr::Custom(format!(
                "agents of tenant {tenant_id}: {what} in {record:?}"
            )))
        };
        let fields: Vec<&str> = record.split(UNIT_SEPARATOR).collect();
        let [hostname, id, key_id, agent_tags, server_tags] = fields[..] else {
            return Err(bad("not 5 fields"));
        };
        // Tags are stored as a list of strings; anything else is read as `string_list` does.
        let tags = |text: &str| -> Result<Vec<String>> {
            serde_json::from_str(text).or_else(|_| {
                serde_json::from_str(text)
                    .map(|value: Value| string_list(&value))
                    .map_err(|err| bad(&err.to_string()))
            })
        };
        Ok((
            hostname,
            Self {
                id: id.to_owned(),
                key_id: key_id.to_owned(),
                declared: tags(agent_tags)?,
                server: tags(server_tags)?,
            },
        ))
    }

    /// From `(id, key_id, agent_tags, server_tags)`.
    fn from_row(
        (id, key_id, agent_tags, server_tags): (String, String, StringList, StringList),
    ) -> Self {
        Self {
            id,
            key_id,
            declared: agent_tags.into(),
            server: server_tags.into(),
        }
    }
}
