//! Liveness and readiness probes for load balancers and orchestrators.

use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::api::AppState;

/// The process is up.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = crate::api::doc::Health)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: the database answers and it is not shutting down.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = crate::api::doc::Readiness),
        (status = 503, body = crate::http_error::ErrorEnvelope, description = "Not ready: shutting down, or the database cannot be read or written")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, HttpError> {
    let connected = state.services.health.ready().await?;
    Ok(Json(
        json!({"status": "ready", "agents_connected": connected}),
    ))
}
