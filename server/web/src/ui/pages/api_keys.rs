//! The API keys page: the caller's keys (an owner's: every key of the tenant), the form that
//! makes one with a role and scopes (its secret shown once), and revocation.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{Chrome, date, form_error, time};
use crate::api::AppState;
use crate::api::Path;
use crate::ui::forms::Fields;
use crate::ui::{Ui, UiError, see_other};
use outpost_store::domain::DomainError;

/// An API key as a row.
#[derive(Debug)]
struct ApiKeyRow {
    id: String,
    name: String,
    role: String,
    scopes: String,
    created: String,
    expires: String,
}

/// An API key just made: its secret, shown once.
#[derive(Debug)]
struct CreatedApiKey {
    name: String,
    secret: String,
}

/// The API keys page: the caller's keys (an owner's: every key of the tenant).
#[derive(Template, WebTemplate)]
#[template(path = "ui/api_keys.html")]
struct ApiKeysPage {
    chrome: Chrome,
    rows: Vec<ApiKeyRow>,
    created: Option<CreatedApiKey>,
    /// Roles the caller may give a key: theirs and below.
    roles: Vec<&'static str>,
    scopes: Vec<&'static str>,
    error: Option<String>,
}

async fn api_keys_page(
    state: &AppState,
    ui: &Ui,
    created: Option<CreatedApiKey>,
    error: Option<String>,
) -> Result<Response, UiError> {
    use outpost_store::domain::{Role, Scope};
    let keys = state.services.api_keys.list(&ui.caller).await?;
    let rows = keys
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| ApiKeyRow {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            scopes: outpost_core::service::api_keys::scopes_of(k).join(", "),
            created: time(Some(k.created_at)),
            expires: time(k.expires_at),
        })
        .collect();
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        ApiKeysPage {
            chrome: Chrome::new(ui, "api-keys"),
            rows,
            created,
            roles: [Role::Member, Role::Admin, Role::Owner]
                .into_iter()
                .filter(|r| ui.caller.role.at_least(*r))
                .map(Role::as_str)
                .collect(),
            scopes: Scope::ALL.iter().map(|s| s.as_str()).collect(),
            error,
        },
    )
        .into_response())
}

/// `GET /ui/api-keys`.
pub(crate) async fn api_keys(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    api_keys_page(&state, &ui, None, None).await
}

/// `POST /ui/api-keys`: `ApiKeys::create` with a role (at most the caller's), scopes and an
/// expiry (a day; empty: `--max-key-days`); the secret is shown once.
pub(crate) async fn create_api_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    use outpost_store::domain::{Role, Scope};
    let parsed = (|| -> Result<outpost_core::service::api_keys::NewKey, DomainError> {
        let role = match fields.text("role") {
            None => None,
            Some(r) => Some(r.parse::<Role>().map_err(|_| {
                DomainError::BadRequest(format!("role: member, admin or owner, not {r:?}"))
            })?),
        };
        let scopes = fields
            .0
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| {
                v.parse::<Scope>()
                    .map_err(|_| DomainError::BadRequest(format!("scopes: no scope {v:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(outpost_core::service::api_keys::NewKey {
            name: fields.text("name").unwrap_or_default(),
            scopes,
            expires_at: date("expires", fields.text("expires").as_deref(), true)?,
            role,
        })
    })();
    let made = match parsed {
        Ok(new) => state.services.api_keys.create(&ui.caller, new).await,
        Err(e) => Err(e),
    };
    match made {
        Ok((key, secret)) => {
            let created = CreatedApiKey {
                name: key.name,
                secret,
            };
            api_keys_page(&state, &ui, Some(created), None).await
        }
        Err(err) => api_keys_page(&state, &ui, None, Some(form_error(err)?)).await,
    }
}

/// `POST /ui/api-keys/{id}/revoke`: `ApiKeys::delete`.
pub(crate) async fn revoke_api_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    state.services.api_keys.delete(&ui.caller, &id).await?;
    Ok(see_other(&format!("{}/api-keys", ui.site.base)))
}
