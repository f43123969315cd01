//! `/api/commands/{id}`: a stored command and its result, for callers that queued a command or
//! whose wait timed out.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;

use super::Path;
use super::agents::CommandView;
use crate::api::AppState;

/// One command and its result.
#[utoipa::path(get, operation_id = "showCommand", path = "/api/commands/{id}", tag = "commands", security(("bearer" = [])),
    params(("id" = String, Path, description = "Command id")),
    responses((status = 200, body = CommandView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, command_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, HttpError> {
    let command = state.services.commands.get(&caller, &id).await?;
    Ok(Json(CommandView::from(command)))
}
