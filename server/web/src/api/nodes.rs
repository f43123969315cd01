//! The server nodes sharing one PostgreSQL (CONTRACT.md §13), for operators.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;

/// A server node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    /// A new id on every start.
    pub id: String,
    /// `--node-name`, or the host name and port.
    pub name: String,
    /// The address it listens on.
    pub address: String,
    /// Its `outpost-server` version.
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// When it last renewed its lease (every 5 s).
    pub renewed_at: DateTime<Utc>,
    /// Seconds since then.
    pub lease_age_s: f64,
    /// Past this it counts as gone (15 s after a renewal) and a live node takes over its
    /// agents.
    pub lease_until: DateTime<Utc>,
    /// Whether its lease holds.
    pub alive: bool,
    /// Agents connected to it at its last renewal.
    pub agents: i64,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

/// The server nodes sharing the database, by name; empty on SQLite (one node, no cluster).
/// Owner only: nodes serve every tenant.
#[utoipa::path(get, operation_id = "listNodes", path = "/api/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, body = [Node]),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not an owner key")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<Vec<Node>>, HttpError> {
    let (nodes, this) = state.services.health.nodes(&caller).await?;
    let now = Utc::now();
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| Node {
                lease_age_s: (now - n.renewed_at).num_milliseconds().max(0) as f64 / 1000.0,
                alive: n.lease_until >= now,
                this_node: this.as_deref() == Some(n.id.as_str()),
                id: n.id,
                name: n.name,
                address: n.address,
                version: n.version,
                started_at: n.started_at,
                renewed_at: n.renewed_at,
                lease_until: n.lease_until,
                agents: n.agents,
            })
            .collect(),
    ))
}
