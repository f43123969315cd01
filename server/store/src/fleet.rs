//! A page of a tenant's agents, for the dashboard (CONTRACT.md §12: a fleet of 10,000 agents is
//! paginated and rendered in under 200 ms).
//!
//! Listing the whole fleet and cutting a page out of it costs every agent's row (scripts and
//! heartbeat metrics are most of it) on every page view and every live update. Here the
//! filter, the count and the order run in the database, over the small columns, and only the
//! page's rows are read whole: one `COUNT`, one ordered read of ids (`LIMIT`/`OFFSET`; a
//! fleet's pages are few and the ids' sort is in memory, so an offset is cheap next to a
//! keyset the page links would have to carry), then the rows of those ids.
//!
//! Online first, then by host name: the order people scan a fleet in. "Online" here is the
//! row's word (`presence::online`: a node registered it and no disconnect came after), which
//! the hub writes at register and disconnect; the service still shows each row's status from
//! the bus, which is what a job would find.

use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::presence::online;
use super::{Result, Store, agent, agent_metric};

/// How a tag filter matches, as `outpost_core::tags::TagRule::has` decides (the caller works it out
/// from the tenant's agent keys, which are few).
#[derive(Debug, Clone, Default)]
pub struct TagMatch {
    /// The tag.
    pub tag: String,
    /// The agent keys that give it.
    pub key_ids: Vec<String>,
    /// Whether an agent's own declaration counts (no key assigns the tag).
    pub declared_counts: bool,
}

/// Which agents, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct AgentPageQuery {
    /// Only agents with this tag.
    pub tag: Option<TagMatch>,
    /// Only online (`Some(true)`) or offline agents.
    pub online: Option<bool>,
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return.
    pub limit: u64,
}

/// Whether a JSON list column holds `tag`.
///
/// The exact test reads the list (`json_each`, `jsonb_array_elements_text`) for every agent,
/// which was most of a filtered page's time over 10,000 agents; a `LIKE` on the column's text
/// for `"tag"` first leaves out nearly every row for the price of a substring search. It
/// never leaves out a match: the JSON text of a list holding the tag contains the tag's JSON
/// text, and `_`, `%` and SQLite's case-insensitive `LIKE` only let more rows through to the
/// exact test. A tag whose JSON text has escapes (quotes, backslashes, control characters)
/// skips it, since the two databases need not escape alike.
fn json_list_holds(backend: DbBackend, column: &str, tag: &str) -> Expr {
    let plain = !tag.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    let like = format!("%\"{tag}\"%");
    // A column that is not a list (never written so, but rows are not trusted to be well
    // formed) holds nothing instead of failing the page.
    match (backend, plain) {
        (DbBackend::Postgres, true) => Expr::cust_with_values(
            format!(
                "(CAST({column} AS TEXT) LIKE $1 AND EXISTS (SELECT 1 FROM \
                 jsonb_array_elements_text(CASE WHEN jsonb_typeof({column}) = 'array' \
                 THEN {column} ELSE '[]'::jsonb END) AS t WHERE t = $2))"
            ),
            [like, tag.to_owned()],
        ),
        (DbBackend::Postgres, false) => Expr::cust_with_values(
            format!(
                "EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN \
                 jsonb_typeof({column}) = 'array' THEN {column} ELSE '[]'::jsonb END) AS t \
                 WHERE t = $1)"
            ),
            [tag],
        ),
        (_, true) => Expr::cust_with_values(
            format!(
                "({column} LIKE ? AND EXISTS (SELECT 1 FROM json_each(CASE WHEN \
                 json_valid({column}) THEN {column} ELSE '[]' END) AS t WHERE t.value = ?))"
            ),
            [like, tag.to_owned()],
        ),
        (_, false) => Expr::cust_with_values(
            format!(
                "EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({column}) THEN \
                 {column} ELSE '[]' END) AS t WHERE t.value = ?)"
            ),
            [tag],
        ),
    }
}

impl<C: ConnectionTrait> Store<C> {
    pub(crate) fn agent_filter(&self, tenant_id: &str, query: &AgentPageQuery) -> Condition {
        let backend = self.db.get_database_backend();
        let mut condition = Condition::all().add(agent::Column::TenantId.eq(tenant_id));
        match query.online {
            Some(true) => condition = condition.add(online()),
            Some(false) => condition = condition.add(online().not()),
            None => {}
        }
        if let Some(tag) = &query.tag {
            let mut any = Condition::any().add(json_list_holds(backend, "server_tags", &tag.tag));
            if !tag.key_ids.is_empty() {
                any = any.add(agent::Column::KeyId.is_in(tag.key_ids.clone()));
            }
            if tag.declared_counts {
                any = any.add(json_list_holds(backend, "agent_tags", &tag.tag));
            }
            condition = condition.add(any);
        }
        condition
    }

    /// How many of a tenant's agents pass `query`'s filters.
    pub async fn count_agents(&self, tenant_id: &str, query: &AgentPageQuery) -> Result<u64> {
        Ok(agent::Entity::find()
            .filter(self.agent_filter(tenant_id, query))
            .count(&self.db)
            .await?)
    }

    /// One page of a tenant's agents that pass `query`'s filters: online first, then by host
    /// name and id.
    pub async fn page_agents(
        &self,
        tenant_id: &str,
        query: &AgentPageQuery,
    ) -> Result<Vec<agent::Model>> {
        let ids: Vec<String> = agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .filter(self.agent_filter(tenant_id, query))
            .order_by(
                Into::<sea_orm::sea_query::SimpleExpr>::into(
                    Expr::case(online(), Expr::val(0)).finally(Expr::val(1)),
                ),
                Order::Asc,
            )
            .order_by_asc(agent::Column::Hostname)
            .order_by_asc(agent::Column::Id)
            .offset(query.offset)
            .limit(query.limit)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.is_in(ids.clone()))
            .all(&self.db)
            .await?;
        // Back in the page's order (an agent forgotten between the two reads is left out).
        rows.sort_by_key(|row| ids.iter().position(|id| *id == row.id));
        Ok(rows)
    }

    /// An agent's heartbeat samples since `since`, oldest first (`agent_metrics`).
    pub async fn agent_metrics(
        &self,
        tenant_id: &str,
        agent_id: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<agent_metric::Model>> {
        Ok(agent_metric::Entity::find()
            .filter(agent_metric::Column::TenantId.eq(tenant_id))
            .filter(agent_metric::Column::AgentId.eq(agent_id))
            .filter(agent_metric::Column::Minute.gte(since))
            .order_by_asc(agent_metric::Column::Minute)
            .all(&self.db)
            .await?)
    }

    /// Deletes samples older than `before`. The sweep calls it every few seconds with an hour
    /// ago, so each call deletes about one minute's samples (one per agent).
    pub async fn delete_old_metrics(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        Ok(agent_metric::Entity::delete_many()
            .filter(agent_metric::Column::Minute.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
