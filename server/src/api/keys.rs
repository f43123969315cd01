//! `/api/agents/keys`: the keys agents connect with.
//!
//! A key's secret appears in exactly two responses, create and regenerate, and is stored only
//! as a hash. Disabling, deleting or regenerating a key closes the connections made with it at
//! once (well within the SPEC's 1 s), because the hub signals each connection's task directly.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use outpost_protocol::commands;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::agents::{CommandRequest, CommandView};
use super::{ApiJson, Path, validate_tags};
use crate::AppState;
use crate::auth::Caller;
use crate::dispatch::{self, CommandSpec};
use crate::domain::DomainError;
use crate::http_error::ErrorDetail;
use crate::store::{AgentKeyPatch, agent_key, key_status, string_list};

/// An agent key as listed (never with its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentKeyView {
    /// Key id.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// Commands agents using this key may be sent.
    #[schema(value_type = Vec<crate::domain::Command>)]
    pub permissions: Vec<String>,
    /// Tags every agent using this key gets.
    #[schema(value_type = Vec<crate::api::doc::Tag>)]
    pub tags: Vec<String>,
    /// Whether the key authenticates.
    #[schema(value_type = crate::domain::KeyStatus)]
    pub status: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When an agent last connected with it.
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
    #[schema(value_type = Option<Vec<crate::domain::Command>>)]
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
    #[schema(value_type = Option<Vec<crate::domain::Command>>)]
    pub permissions: Option<Vec<String>>,
    /// `disabled` refuses the key and closes its connections; `active` lets it in again.
    #[schema(value_type = Option<crate::domain::KeyStatus>)]
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

fn view(state: &AppState, key: agent_key::Model) -> AgentKeyView {
    AgentKeyView {
        connected_agents: state.hub.connected_with_key(&key.tenant_id, &key.id).len(),
        permissions: string_list(&key.permissions),
        tags: string_list(&key.tags),
        id: key.id,
        name: key.name,
        status: key.status,
        created_at: key.created_at,
        expires_at: key.expires_at,
        last_used_at: key.last_used_at,
    }
}

fn validate_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(DomainError::BadRequest(
            "name: must be 1 to 128 characters without control characters".into(),
        ));
    }
    Ok(())
}

fn validate_permissions(permissions: &[String]) -> Result<(), DomainError> {
    for p in permissions {
        if !commands::ALL.contains(&p.as_str()) {
            return Err(DomainError::BadRequest(format!(
                "permissions: unknown command {p:?}; expected any of {}",
                commands::ALL.join(", ")
            )));
        }
    }
    Ok(())
}

async fn find(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<agent_key::Model, DomainError> {
    state
        .store
        .get_agent_key(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))
}

/// Create an agent key. The secret is in this answer only.
#[utoipa::path(post, operation_id = "createAgentKey", path = "/api/agents/keys", tag = "agent keys", security(("bearer" = [])),
    request_body = CreateAgentKey,
    responses((status = 201, body = AgentKeyWithSecret), (status = 400, response = crate::api::doc::BadRequest)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateAgentKey>,
) -> Result<(StatusCode, Json<AgentKeyWithSecret>), DomainError> {
    validate_name(&body.name)?;
    let permissions = body.permissions.unwrap_or_else(|| {
        commands::DEFAULT_PERMISSIONS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    validate_permissions(&permissions)?;
    let tags = body.tags.unwrap_or_default();
    validate_tags("tags", &tags)?;
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(DomainError::BadRequest(
            "expires_at: must be in the future".into(),
        ));
    }
    let (key, secret) = state
        .store
        .create_agent_key(
            &caller.tenant_id,
            body.name.trim(),
            &permissions,
            &tags,
            body.expires_at,
        )
        .await?;
    tracing::info!(key_id = %key.id, "agent key created");
    Ok((
        StatusCode::CREATED,
        Json(AgentKeyWithSecret {
            key: view(&state, key),
            secret,
        }),
    ))
}

/// List agent keys (never their secrets).
#[utoipa::path(get, operation_id = "listAgentKeys", path = "/api/agents/keys", tag = "agent keys", security(("bearer" = [])),
    responses((status = 200, body = [AgentKeyView])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<AgentKeyView>>, DomainError> {
    let keys = state.store.list_agent_keys(&caller.tenant_id).await?;
    Ok(Json(keys.into_iter().map(|k| view(&state, k)).collect()))
}

/// One agent key.
#[utoipa::path(get, operation_id = "showAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = AgentKeyView), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AgentKeyView>, DomainError> {
    let key = find(&state, &caller, &id).await?;
    Ok(Json(view(&state, key)))
}

/// Rename, change permissions, or disable/enable a key. Disabling closes its connections.
#[utoipa::path(patch, operation_id = "updateAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")), request_body = UpdateAgentKey,
    responses((status = 200, body = AgentKeyView), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateAgentKey>,
) -> Result<Json<AgentKeyView>, DomainError> {
    if let Some(name) = &body.name {
        validate_name(name)?;
    }
    if let Some(permissions) = &body.permissions {
        validate_permissions(permissions)?;
    }
    if let Some(status) = &body.status
        && status != key_status::ACTIVE
        && status != key_status::DISABLED
    {
        return Err(DomainError::BadRequest(format!(
            "status: must be \"active\" or \"disabled\", not {status:?}"
        )));
    }
    let patch = AgentKeyPatch {
        name: body.name.map(|n| n.trim().to_owned()),
        permissions: body.permissions,
        status: body.status,
    };
    let key = state
        .store
        .update_agent_key(&caller.tenant_id, &id, patch)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
    if key.status == key_status::DISABLED {
        let closed = state
            .hub
            .close_key(&key.id, outpost_protocol::codes::CLOSE_KEY_DISABLED);
        tracing::info!(key_id = %key.id, closed, "agent key disabled");
    }
    Ok(Json(view(&state, key)))
}

/// Delete a key; its connections close.
#[utoipa::path(delete, operation_id = "deleteAgentKey", path = "/api/agents/keys/{id}", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, DomainError> {
    if !state.store.delete_agent_key(&caller.tenant_id, &id).await? {
        return Err(DomainError::NotFound(format!("no agent key {id}")));
    }
    let closed = state.hub.close_key(&id, "agent key deleted");
    tracing::info!(key_id = %id, closed, "agent key deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a key's secret. The old secret stops working at once and its connections close.
#[utoipa::path(post, operation_id = "regenerateAgentKey", path = "/api/agents/keys/{id}/regenerate", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = AgentKeyWithSecret), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn regenerate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AgentKeyWithSecret>, DomainError> {
    let (key, secret) = state
        .store
        .regenerate_agent_key(&caller.tenant_id, &id)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
    let closed = state.hub.close_key(&key.id, "agent key regenerated");
    tracing::info!(key_id = %key.id, closed, "agent key regenerated");
    Ok(Json(AgentKeyWithSecret {
        key: view(&state, key),
        secret,
    }))
}

/// Ping every agent connected with this key.
#[utoipa::path(post, operation_id = "pingAgentKey", path = "/api/agents/keys/{id}/ping", tag = "agent keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, body = FanoutResults), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn ping(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FanoutResults>, DomainError> {
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
pub async fn command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<Json<FanoutResults>, DomainError> {
    let spec = body.into_spec()?;
    dispatch::authorize(&caller, &spec, &format!("agents of key {id}"))?;
    fan_out(&state, &caller, &id, &spec).await.map(Json)
}

async fn fan_out(
    state: &AppState,
    caller: &Caller,
    key_id: &str,
    spec: &CommandSpec,
) -> Result<FanoutResults, DomainError> {
    let key = find(state, caller, key_id).await?;
    let agent_ids = state.hub.connected_with_key(&caller.tenant_id, &key.id);
    let runs = agent_ids.into_iter().map(|agent_id| async move {
        let agent_id = agent_id.to_string();
        let outcome = async {
            let (agent, key) = state
                .store
                .get_agent_with_key(&caller.tenant_id, &agent_id)
                .await?
                .ok_or_else(|| DomainError::NotFound(format!("no agent {agent_id}")))?;
            dispatch::run(state, &agent, key.as_ref(), spec, false).await
        }
        .await;
        match outcome {
            Ok(model) => FanoutResult {
                agent_id,
                command: Some(CommandView::from(model)),
                error: None,
            },
            Err(err) => {
                let envelope = crate::http_error::envelope_of(&err);
                FanoutResult {
                    agent_id,
                    command: None,
                    error: Some(envelope.error),
                }
            }
        }
    });
    let results = futures_util::future::join_all(runs).await;
    Ok(FanoutResults { results })
}
