//! `GET /metrics`: the process's figures for Prometheus (see `outpost_store::metrics`).

use crate::http_error::HttpError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ClientAddr;
use crate::api::AppState;

/// `GET /metrics` on the main listener: an owner API key is required. A scrape is not counted
/// against the key's rate limit (`--rate-limit` is for `/api`); a bad key still counts
/// against the client's address.
pub async fn route(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let token = crate::http_error::bearer(&headers);
    let caller = state
        .services
        .access
        .authenticate_uncounted(token, client)
        .await?;
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    state.services.access.read_metrics(&caller)?;
    Ok(render(&state))
}

/// `GET /metrics` on `--metrics-listen`: no authentication; bind it to an internal address.
pub async fn open_route(State(state): State<AppState>) -> Response {
    render(&state)
}

fn render(state: &AppState) -> Response {
    let text = outpost_store::metrics::render(&state.services.agents.connected_by_transport());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
