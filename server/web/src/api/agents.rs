//! `/api/agents`: the fleet as the server knows it, and commands to one agent.
//!
//! An agent's `status` comes from the hub (is it connected to this server now?), everything
//! else from the store, so a server restart never shows a stale "online".

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, Path, Query};
use crate::api::AppState;
use crate::http_error::ErrorDetail;
use outpost_core::service::agents::{AgentFilter as Filter, AgentRecord};
use outpost_core::service::commands::{CommandSpec, Sent};
use outpost_store::command;
use outpost_store::domain::{DomainError, Transport};

/// An agent connected now.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectedAgent {
    /// The agent's id.
    pub agent_id: String,
    /// The key it connected with.
    pub key_id: String,
    /// Since when.
    pub connected_at: DateTime<Utc>,
    /// Over what.
    pub transport: Transport,
}

/// An agent as stored, with its live status.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    /// The agent's id.
    pub agent_id: String,
    /// Whether it is connected to this server now.
    #[schema(value_type = crate::api::doc::AgentStatus)]
    pub status: String,
    /// Host name.
    pub hostname: String,
    /// Address it reported.
    pub ip: String,
    /// Agent version.
    pub version: String,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// The agent key it is bound to (its first registration's; see CONTRACT.md §9, "Agent identity").
    pub key_id: String,
    /// Every tag: those it declares, its key's and the server's.
    pub tags: Vec<String>,
    /// Tags the agent declares itself. A tag that an agent key assigns is trusted only from
    /// the key or the server: declaring it does not make a target match.
    pub agent_tags: Vec<String>,
    /// Tags its agent key gives it.
    pub key_tags: Vec<String>,
    /// Tags set through the API.
    pub server_tags: Vec<String>,
    /// Commands it implements.
    pub capabilities: Vec<String>,
    /// Scripts its manifest whitelists.
    #[schema(value_type = Vec<Object>)]
    pub scripts: Value,
    /// Its manifest's consent to library scripts (CONTRACT.md §15): `{"allow": [patterns], "keys":
    /// [base64 Ed25519 public keys]}`; absent when it runs none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub library: Option<Value>,
    /// First registration.
    pub first_seen: DateTime<Utc>,
    /// Last frame received.
    pub last_seen: DateTime<Utc>,
    /// Start of the current or last connection.
    pub connected_at: Option<DateTime<Utc>>,
    /// Last heartbeat's metrics.
    #[schema(value_type = Option<Object>)]
    pub last_heartbeat: Option<Value>,
    /// The supervisor's report on its last update, as the agent last sent it:
    /// `{status: updated|failed|rolled_back, from?, to?, reason?, at}`.
    #[schema(value_type = Option<Object>)]
    pub update_status: Option<Value>,
}

impl From<AgentRecord> for AgentView {
    fn from(record: AgentRecord) -> Self {
        let AgentRecord {
            agent,
            online,
            tags,
            agent_tags,
            key_tags,
            server_tags,
        } = record;
        Self {
            agent_id: agent.id,
            status: if online { "online" } else { "offline" }.into(),
            hostname: agent.hostname,
            ip: agent.ip,
            version: agent.version,
            os: agent.os,
            arch: agent.arch,
            tags,
            agent_tags,
            key_tags,
            key_id: agent.key_id,
            server_tags,
            capabilities: agent.capabilities.to_vec(),
            scripts: agent.scripts,
            library: agent.library,
            first_seen: agent.first_seen,
            last_seen: agent.last_seen,
            connected_at: agent.connected_at,
            last_heartbeat: agent.last_heartbeat,
            update_status: agent.update_status,
        }
    }
}

/// Filters of `GET /api/agents`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AgentFilter {
    /// Only agents with this tag (a tag some agent key assigns counts only from the key or
    /// the server, as for a job's target).
    #[param(nullable = false)]
    pub tag: Option<String>,
    /// Only agents connected now, or only those not connected.
    #[param(value_type = Option<crate::api::doc::AgentStatus>, nullable = false)]
    pub status: Option<String>,
}

/// Body of `PATCH /api/agents/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// Replaces the server-side tags (at most 64).
    #[schema(value_type = Vec<crate::api::doc::Tag>, max_items = 64)]
    pub tags: Vec<String>,
}

/// A command for an agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The command; its key must allow it.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// Arguments, a JSON object (`{"message": …}` for echo; for run `{"script", "params",
    /// "secret_params"?}` as in jobs; for update `{"version"?, "force"?}`, `force` for owners
    /// only).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Seconds the command may run, 1 to 86400 (default 60); the call waits this long plus
    /// 2 s.
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "super::whole_seconds")]
    pub timeout_s: Option<u32>,
    /// With `queue`: seconds the command waits for an offline agent, at most 604800 (default
    /// 3600).
    #[schema(maximum = 604800)]
    #[serde(default, deserialize_with = "super::whole_seconds")]
    pub ttl_s: Option<u32>,
    /// Store the command for an offline agent instead of refusing with 409; answers 202.
    #[serde(default)]
    pub queue: bool,
}

impl CommandRequest {
    /// Validates the fields.
    pub fn into_spec(self) -> Result<CommandSpec, DomainError> {
        CommandSpec::new(self.command, self.data, self.timeout_s, self.ttl_s)
    }
}

/// A stored command and, once it has one, its result.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandView {
    /// Command id.
    pub command_id: String,
    /// Target agent.
    pub agent_id: String,
    /// Command name.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// Where it stands.
    #[schema(value_type = outpost_store::domain::CommandState)]
    pub status: String,
    /// Whether it succeeded, once finished.
    pub success: Option<bool>,
    /// The agent's result data.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// Why it failed.
    pub error: Option<ErrorDetail>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// When the agent acknowledged it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When its result was stored.
    pub finished_at: Option<DateTime<Utc>>,
    /// From stored to result stored.
    pub duration_ms: Option<i64>,
}

impl From<command::Model> for CommandView {
    fn from(m: command::Model) -> Self {
        let error = m.error_code.map(|code| ErrorDetail {
            code,
            message: m.error_message.unwrap_or_default(),
        });
        Self {
            duration_ms: m
                .finished_at
                .map(|f| (f - m.created_at).num_milliseconds().max(0)),
            command_id: m.id,
            agent_id: m.agent_id,
            command: m.command,
            status: m.state,
            success: m.success,
            data: m.result,
            error,
            created_at: m.created_at,
            delivered_at: m.delivered_at,
            finished_at: m.finished_at,
        }
    }
}

/// Agents connected to this server now.
#[utoipa::path(get, operation_id = "listConnectedAgents", path = "/api/agents/connected", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = [ConnectedAgent])))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn connected(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Json<Vec<ConnectedAgent>> {
    let mut agents: Vec<_> = state
        .services
        .agents
        .connected(&caller)
        .into_iter()
        .map(|c| ConnectedAgent {
            agent_id: c.agent_id.to_string(),
            key_id: c.key_id,
            connected_at: c.connected_at,
            transport: c.transport,
        })
        .collect();
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    Json(agents)
}

/// All agents, with status, last heartbeat and metrics, tags, version and scripts.
#[utoipa::path(get, operation_id = "listAgents", path = "/api/agents", tag = "agents", security(("bearer" = [])),
    params(AgentFilter), responses((status = 200, body = [AgentView])))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(filter): Query<AgentFilter>,
) -> Result<Json<Vec<AgentView>>, HttpError> {
    let online = match filter.status.as_deref() {
        None => None,
        Some("online") => Some(true),
        Some("offline") => Some(false),
        Some(status) => {
            return Err(HttpError(DomainError::BadRequest(format!(
                "status: must be \"online\" or \"offline\", not {status:?}"
            ))));
        }
    };
    let filter = Filter {
        tag: filter.tag,
        online,
    };
    let agents = state.services.agents.list(&caller, &filter).await?;
    Ok(Json(agents.into_iter().map(AgentView::from).collect()))
}

/// One agent.
#[utoipa::path(get, operation_id = "showAgent", path = "/api/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = AgentView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, HttpError> {
    let agent = state.services.agents.get(&caller, &id).await?;
    Ok(Json(AgentView::from(agent)))
}

/// Set an agent's server-side tags.
#[utoipa::path(patch, operation_id = "updateAgent", path = "/api/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agent id")), request_body = UpdateAgent,
    responses((status = 200, body = AgentView), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateAgent>,
) -> Result<Json<AgentView>, HttpError> {
    let agent = state
        .services
        .agents
        .set_tags(&caller, &id, &body.tags)
        .await?;
    Ok(Json(AgentView::from(agent)))
}

/// Forget an agent. Its open commands become `lost`; if it is connected, it is disconnected
/// (it registers again as new if it reconnects).
#[utoipa::path(delete, operation_id = "deleteAgent", path = "/api/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.agents.forget(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Let an agent deleted after it enrolled enroll again (CONTRACT.md §19). Until then its
/// enrollment is refused with 403 `agent_revoked`. An agent of the tenant that is not revoked
/// is left as it is (204).
#[utoipa::path(post, operation_id = "unrevokeAgent", path = "/api/agents/{id}/unrevoke", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
pub async fn unrevoke(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.agents.unrevoke(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a command to one agent and wait for its result (`timeout_s`, then 504). An offline
/// agent gets 409 unless `queue` is set, in which case the command is stored and 202 returned.
#[utoipa::path(post, operation_id = "commandAgent", path = "/api/agents/{id}/command", tag = "agents", security(("bearer" = [])),
    params(("id" = String, Path, description = "Agent id")), request_body = CommandRequest,
    responses(
        (status = 200, body = CommandView, description = "The stored result"),
        (status = 202, body = CommandView, description = "Queued for an offline agent"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "The agent's key does not allow the command, or a forced update by a caller who is not an owner"),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "Agent offline"),
        (status = 422, body = crate::http_error::ErrorEnvelope, description = "script_not_allowed: a run of a script the agent's manifest does not list"),
        (status = 504, body = crate::http_error::ErrorEnvelope, description = "No answer in time")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %id))]
pub async fn command(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<Response, HttpError> {
    let queue = body.queue;
    let spec = body.into_spec()?;
    Ok(
        match state
            .services
            .commands
            .send(&caller, &id, &spec, queue)
            .await?
        {
            Sent::Queued(model) => {
                (StatusCode::ACCEPTED, Json(CommandView::from(model))).into_response()
            }
            Sent::Answered(model) => Json(CommandView::from(model)).into_response(),
        },
    )
}
