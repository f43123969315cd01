//! `/api/keys`: programs' API keys, scoped and expiring (CONTRACT.md §9).
//!
//! Anyone signed in manages their own keys; an owner sees and revokes everyone's. A key is
//! shown once, in the answer that makes it. What a key may then do is its scopes ∩ its
//! owner's role at the time of each request (`service::api_keys`).

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::users::object_only;
use super::{ApiJson, Path};
use crate::api::AppState;
use outpost_core::service::api_keys::{NewKey, scopes_of};
use outpost_store::api_key;
use outpost_store::domain::Scope;

/// An API key as shown (never its secret or hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Key id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may be used for (with its owner's role).
    #[schema(value_type = Vec<outpost_store::domain::Scope>)]
    pub scopes: Vec<String>,
    /// The user it belongs to; `null` for keys the server made (the owner key).
    pub owner_user_id: Option<String>,
    /// The role it acts with when it has no owner (an owned key acts with its owner's
    /// current role).
    #[schema(value_type = outpost_store::domain::Role)]
    pub role: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<api_key::Model> for ApiKeyView {
    fn from(key: api_key::Model) -> Self {
        Self {
            scopes: scopes_of(&key),
            id: key.id,
            name: key.name,
            owner_user_id: key.owner_user_id,
            role: key.role,
            created_at: key.created_at,
            expires_at: key.expires_at,
        }
    }
}

/// Body of `POST /api/keys`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A name for people: 1 to 128 characters, no control characters.
    #[schema(value_type = crate::api::doc::KeyName)]
    pub name: String,
    /// What it may be used for: at least one scope, each held by the caller.
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// When it stops working (RFC 3339); default and latest: `--max-key-days` from now.
    pub expires_at: Option<DateTime<Utc>>,
}

object_only!(CreateApiKey {
    name: String,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>
});

/// A new key with its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The secret (`opk_…`) for `Authorization: Bearer`: shown only in this answer.
    pub secret: String,
}

/// Make an API key for the caller: scopes at most the caller's own, expiry at most
/// `--max-key-days` away. The secret is shown once.
#[utoipa::path(post, operation_id = "createApiKey", path = "/api/keys", tag = "API keys", security(("bearer" = [])),
    request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A scope the caller does not hold")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), HttpError> {
    let (key, secret) = state
        .services
        .api_keys
        .create(
            &caller,
            NewKey {
                name: body.name,
                scopes: body.scopes,
                expires_at: body.expires_at,
                role: None,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: ApiKeyView::from(key),
            secret,
        }),
    ))
}

/// The caller's API keys (an owner: every key of the tenant); revoked keys are not listed.
#[utoipa::path(get, operation_id = "listApiKeys", path = "/api/keys", tag = "API keys", security(("bearer" = [])),
    responses((status = 200, body = [ApiKeyView])))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<Vec<ApiKeyView>>, HttpError> {
    let keys = state.services.api_keys.list(&caller).await?;
    Ok(Json(keys.into_iter().map(ApiKeyView::from).collect()))
}

/// Revoke an API key at once: the caller's own, or any for an owner.
#[utoipa::path(delete, operation_id = "deleteApiKey", path = "/api/keys/{id}", tag = "API keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "API key id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.api_keys.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
