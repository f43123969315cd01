//! `/api/webhooks`: the secret job webhooks are signed with. Only owners and admins may read
//! or rotate it: whoever holds it can forge webhooks to the tenant's receivers.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Caller;
use crate::domain::DomainError;

/// The signing secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct SigningSecret {
    /// HMAC-SHA256 key: `X-Outpost-Signature` is `sha256=` + hex(HMAC(secret, body)).
    pub secret: String,
}

fn require_admin(caller: &Caller) -> Result<(), DomainError> {
    if caller.role.at_least(crate::domain::Role::Admin) {
        Ok(())
    } else {
        Err(DomainError::Forbidden(
            "only owners and admins may see the webhook signing secret".into(),
        ))
    }
}

/// The tenant's webhook signing secret (created on first use).
#[utoipa::path(get, operation_id = "showWebhookSigningSecret", path = "/api/webhooks/signing-secret", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = SigningSecret), (status = 403, body = crate::http_error::ErrorEnvelope)))]
pub async fn signing_secret(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SigningSecret>, DomainError> {
    require_admin(&caller)?;
    let secret = state
        .store
        .webhook_secret(&caller.tenant_id, &state.webhooks.master)
        .await?;
    Ok(Json(SigningSecret { secret }))
}

/// Replace the signing secret; webhooks sent from now on use the new one.
#[utoipa::path(post, operation_id = "rotateWebhookSigningSecret", path = "/api/webhooks/signing-secret/rotate", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = SigningSecret), (status = 403, body = crate::http_error::ErrorEnvelope)))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SigningSecret>, DomainError> {
    require_admin(&caller)?;
    let secret = state
        .store
        .rotate_webhook_secret(&caller.tenant_id, &state.webhooks.master)
        .await?;
    tracing::info!(tenant_id = %caller.tenant_id, "webhook signing secret rotated");
    Ok(Json(SigningSecret { secret }))
}
