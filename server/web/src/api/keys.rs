//! `/api/agents/keys`: the keys agents connect with.
//!
//! A key's secret appears in exactly two responses, create and regenerate, and is stored only
//! as a hash. Disabling, deleting or regenerating a key closes the connections made with it at
//! once (well within the contract's 1 s), because the hub signals each connection's task directly.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use outpost_protocol::commands;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::agents::{CommandRequest, CommandView};
use super::{ApiJson, Path};
use crate::api::AppState;
use crate::http_error::ErrorDetail;
use outpost_core::service::commands::{CommandSpec, FanOutcome};
use outpost_core::service::keys::{KeyChanges, KeyRecord, NewKey};
use outpost_store::domain::Caller;

/// An agent key as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentKeyView {
    /// Key id.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// Commands agents using this key may be sent.
    #[schema(value_type = Vec<outpost_store::domain::Command>)]
    pub permissions: Vec<String>,
    /// Tags every agent using this key gets.
    #[schema(value_type = Vec<crate::api::doc::Tag>)]
    pub tags: Vec<String>,
    /// Whether the key authenticates.
    #[schema(value_type = outpost_store::domain::KeyStatus)]
    pub status: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When an agent last connected with it, to the minute (it moves at most once a
    /// minute: a fleet sharing one key would otherwise write its row on every connection).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Agents connected with it now.
    pub connected_agents: usize,
}

/// A key with its secret: only in the answers to create and regenerate.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentKeyWithSecret {
    /// The key.
    #[serde(flatten)]
    pub key: AgentKeyView,
    /// The secret (`opa_…`). Shown once; store it now.
    pub secret: String,
}

/// Body of `POST /api/agents/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentKey {
    /// Name for people, 1–128 characters.
    #[schema(value_type = crate::api::doc::KeyName)]
    pub name: String,
    /// Commands allowed; default `["ping","info","echo","run"]`.
    #[schema(value_type = Option<Vec<outpost_store::domain::Command>>)]
    pub permissions: Option<Vec<String>>,
    /// Tags for every agent using the key (at most 64).
    #[schema(value_type = Option<Vec<crate::api::doc::Tag>>, max_items = 64)]
    pub tags: Option<Vec<String>>,
    /// When the key stops working; must be in the future (else 400).
    pub expires_at: Option<DateTime<Utc>>,
}

/// Body of `PATCH /api/agents/keys/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentKey {
    /// New name.
    #[schema(value_type = Option<crate::api::doc::KeyName>)]
    pub name: Option<String>,
    /// New permissions.
    #[schema(value_type = Option<Vec<outpost_store::domain::Command>>)]
    pub permissions: Option<Vec<String>>,
    /// `disabled` refuses the key and closes its connections; `active` lets it in again.
    #[schema(value_type = Option<outpost_store::domain::KeyStatus>)]
    pub status: Option<String>,
}

/// One agent's answer in a fan-out.
#[derive(Debug, Serialize, ToSchema)]
pub struct FanoutResult {
    /// The agent.
    pub agent_id: String,
    /// Its command, when one was stored.
    pub command: Option<CommandView>,
    /// Why no result came back (refused, timed out).
    pub error: Option<ErrorDetail>,
}

/// Answer of the fan-out endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct FanoutResults {
    /// One entry per agent connected with the key.
    pub results: Vec<FanoutResult>,
}

impl From<KeyRecord> for AgentKeyView {
    fn from(record: KeyRecord) -> Self {
        let key = record.key;
        Self {
            connected_agents: record.connected_agents,
            permissions: key.permissions.to_vec(),
            tags: key.tags.to_vec(),
            id: key.id,
            name: key.name,
            status: key.status,
            created_at: key.created_at,
            expires_at: key.expires_at,
            last_used_at: key.last_used_at,
        }
    }
}

/// Create an agent key. The secret is in this answer only.
#[utoipa::path(post, operation_id = "createAgentKey", path = "/api/agents/keys", tag = "agent keys", security(("bearer" = [])),
    request_body = CreateAgentKey,
    responses((status = 201, body = AgentKeyWithSecret), (status = 400, response = crate::api::doc::BadRequest)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CreateAgentKey>,
) -> Result<(StatusCode, Json<AgentKeyWithSecret>), HttpError> {
    let new = NewKey {
        name: body.name,
        permissions: body.permissions,
        tags: body.tags,
        expires_at: body.expires_at,
    };
    let (key, secret) = state.services.keys.create(&caller, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(AgentKeyWithSecret {
            key: AgentKeyView::from(key),
            secret,
        }),
    ))
}

/// List agent keys (never their secrets).
#[utoipa::path(get, operation_id = "listAgentKeys", path = "/api/agents/keys", tag = "agent keys", security(("bearer" = [])),
    responses((status = 200, body = [AgentKeyView])))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<Vec<AgentKeyView>>, HttpError> {
    let keys = state.services.keys.list(&caller).await?;
    Ok(Json(keys.into_iter().map(AgentKeyView::from).collect()))
}

/// One agent key.
#[utoipa::path(get, operation_id = "showAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = AgentKeyView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<AgentKeyView>, HttpError> {
    let key = state.services.keys.get(&caller, &id).await?;
    Ok(Json(AgentKeyView::from(key)))
}

/// Rename, change permissions, or disable/enable a key. Disabling closes its connections.
#[utoipa::path(patch, operation_id = "updateAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")), request_body = UpdateAgentKey,
    responses((status = 200, body = AgentKeyView), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateAgentKey>,
) -> Result<Json<AgentKeyView>, HttpError> {
    let changes = KeyChanges {
        name: body.name,
        permissions: body.permissions,
        status: body.status,
    };
    let key = state.services.keys.update(&caller, &id, changes).await?;
    Ok(Json(AgentKeyView::from(key)))
}

/// Delete a key; its connections close.
#[utoipa::path(delete, operation_id = "deleteAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.keys.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a key's secret. The old secret stops working at once and its connections close.
#[utoipa::path(post, operation_id = "regenerateAgentKey", path = "/api/agents/keys/{id}/regenerate", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = AgentKeyWithSecret), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn regenerate(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<AgentKeyWithSecret>, HttpError> {
    let (key, secret) = state.services.keys.regenerate(&caller, &id).await?;
    Ok(Json(AgentKeyWithSecret {
        key: AgentKeyView::from(key),
        secret,
    }))
}

/// Ping every agent connected with this key.
#[utoipa::path(post, operation_id = "pingAgentKey", path = "/api/agents/keys/{id}/ping", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = FanoutResults), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn ping(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<FanoutResults>, HttpError> {
    let spec = CommandSpec::new(commands::PING.into(), None, Some(10), None)?;
    fan_out(&state, &caller, &id, &spec).await.map(Json)
}

/// Send a command to every agent connected with this key and wait for the results. An agent
/// that would refuse it before running anything (a `run` of a script its manifest does not
/// list) gets its `error` at once (`script_not_allowed`), and nothing is sent to it.
#[utoipa::path(post, operation_id = "commandAgentKey", path = "/api/agents/keys/{id}/command", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")), request_body = CommandRequest,
    responses((status = 200, body = FanoutResults), (status = 400, response = crate::api::doc::BadRequest),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A forced update by a caller who is not an owner"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn command(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<Json<FanoutResults>, HttpError> {
    let spec = body.into_spec()?;
    fan_out(&state, &caller, &id, &spec).await.map(Json)
}

async fn fan_out(
    state: &AppState,
    caller: &Caller,
    key_id: &str,
    spec: &CommandSpec,
) -> Result<FanoutResults, HttpError> {
    let outcomes = state
        .services
        .commands
        .fan_out(caller, key_id, spec)
        .await?;
    let results = outcomes
        .into_iter()
        .map(|FanOutcome { agent_id, result }| match result {
            Ok(model) => FanoutResult {
                agent_id,
                command: Some(CommandView::from(model)),
                error: None,
            },
            Err(err) => FanoutResult {
                agent_id,
                command: None,
                error: Some(crate::http_error::envelope_of(&err).error),
            },
        })
        .collect();
    Ok(FanoutResults { results })
}
