//! `/api/webhooks`: the secret job webhooks are signed with. Only owners and admins may read
//! or rotate it: whoever holds it can forge webhooks to the tenant's receivers.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;

/// The signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningSecret {
    /// HMAC-SHA256 key: `X-Outpost-Signature` is `sha256=` + hex(HMAC(secret, body)).
    pub secret: String,
}

/// The tenant's webhook signing secret (created on first use).
#[utoipa::path(get, operation_id = "showWebhookSigningSecret", path = "/api/webhooks/signing-secret", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = SigningSecret), (status = 403, body = crate::http_error::ErrorEnvelope)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn signing_secret(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<SigningSecret>, HttpError> {
    let secret = state.services.webhooks.signing_secret(&caller).await?;
    Ok(Json(SigningSecret { secret }))
}

/// Replace the signing secret; webhooks sent from now on use the new one.
#[utoipa::path(post, operation_id = "rotateWebhookSigningSecret", path = "/api/webhooks/signing-secret/rotate", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = SigningSecret), (status = 403, body = crate::http_error::ErrorEnvelope)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn rotate(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<SigningSecret>, HttpError> {
    let secret = state
        .services
        .webhooks
        .rotate_signing_secret(&caller)
        .await?;
    Ok(Json(SigningSecret { secret }))
}
