//! Liveness and readiness probes for load balancers and orchestrators.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::domain::DomainError;

/// The process is up.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = crate::api::doc::Health)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: the database answers and it is not shutting down.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = crate::api::doc::Readiness),
        (status = 503, body = crate::http_error::ErrorEnvelope, description = "Not ready: shutting down, or the database cannot be read or written")))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, DomainError> {
    if state.shutdown.is_cancelled() {
        return Err(DomainError::Unavailable("shutting down".into()));
    }
    state
        .store
        .ping()
        .await
        .map_err(|e| DomainError::Unavailable(format!("database unavailable: {e}")))?;
    // Reads may work while writes fail (a full disk): agents' reports are then held, not
    // acknowledged, and new jobs refused.
    state.writer.health().status().map_err(|why| {
        DomainError::Unavailable(format!(
            "database writes fail ({why}); agents' reports are held and retried, new jobs are refused"
        ))
    })?;
    Ok(Json(
        json!({"status": "ready", "agents_connected": state.hub.len()}),
    ))
}
