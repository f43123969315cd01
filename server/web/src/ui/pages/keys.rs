//! The agent keys page: the keys, and the forms that make, disable, enable, regenerate and
//! delete them; a key's secret and its one-line install are shown once, on the answer to the
//! form that made it.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{Chrome, date, list, time};
use crate::api::AppState;
use crate::api::Path;
use crate::ui::forms::Fields;
use crate::ui::{Ui, UiError, see_other};
use outpost_core::service::keys::{KeyChanges, KeyRecord, NewKey};
use outpost_store::domain::DomainError;

/// An agent key as a row.
#[derive(Debug)]
struct KeyRow {
    id: String,
    name: String,
    status: String,
    tags: String,
    permissions: String,
    created: String,
    last_used: String,
    expires: String,
    agents: usize,
}

impl KeyRow {
    fn of(record: &KeyRecord) -> Self {
        let k = &record.key;
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            status: k.status.clone(),
            tags: k.tags.join(", "),
            permissions: k.permissions.join(", "),
            created: time(Some(k.created_at)),
            last_used: time(k.last_used_at),
            expires: time(k.expires_at),
            agents: record.connected_agents,
        }
    }
}

/// A key just made or regenerated: its secret, shown once, and the install line.
#[derive(Debug)]
struct Created {
    name: String,
    secret: String,
    install: String,
}

/// The agent keys page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/keys.html")]
struct KeysPage {
    chrome: Chrome,
    keys: Vec<KeyRow>,
    created: Option<Created>,
}

/// The one-line install for `secret`: `--public-url`, else the URL the browser used.
fn install_line(ui: &Ui, headers: &axum::http::HeaderMap, secret: &str) -> String {
    let base = match &ui.site.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("SERVER");
            let scheme = if ui.site.secure { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    match &ui.site.pins {
        // The server's certificate is from its own CA, which no system trusts: curl checks
        // the key it was shown instead (`--pinnedpubkey` is checked even with `-k`), and the
        // agent trusts exactly the CA with that fingerprint (CONTRACT.md §19).
        Some(pins) => format!(
            "curl -fsSL -k --pinnedpubkey '{}' {base}/deploy.sh | bash -s -- --key {secret} --ca-fingerprint {}",
            pins.server_key, pins.ca_fingerprint
        ),
        None => format!("curl -fsSL {base}/deploy.sh | bash -s -- --key {secret}"),
    }
}

async fn keys_page(
    state: &AppState,
    ui: &Ui,
    created: Option<Created>,
) -> Result<Response, UiError> {
    let keys = state.services.keys.list(&ui.caller).await?;
    Ok(KeysPage {
        chrome: Chrome::new(ui, "keys"),
        keys: keys.iter().map(KeyRow::of).collect(),
        created,
    }
    .into_response())
}

/// `GET /ui/keys`.
pub(crate) async fn keys(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    keys_page(&state, &ui, None).await
}

/// `POST /ui/keys`: creates a key through `Keys::create` and shows its secret once.
pub(crate) async fn create_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    headers: axum::http::HeaderMap,
) -> Result<Response, UiError> {
    let (record, secret) = state
        .services
        .keys
        .create(
            &ui.caller,
            NewKey {
                name: fields.text("name").unwrap_or_default(),
                permissions: list(fields.text("permissions")),
                tags: list(fields.text("tags")),
                expires_at: date("expires", fields.text("expires").as_deref(), true)?,
            },
        )
        .await?;
    let created = Created {
        name: record.key.name.clone(),
        install: install_line(&ui, &headers, &secret),
        secret,
    };
    keys_page(&state, &ui, Some(created)).await
}

/// `POST /ui/keys/{id}/{action}`: `disable`, `enable`, `regenerate` or `delete`.
pub(crate) async fn change_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, action)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, UiError> {
    let keys = &state.services.keys;
    match action.as_str() {
        "disable" | "enable" => {
            let status = if action == "disable" {
                "disabled"
            } else {
                "active"
            };
            keys.update(
                &ui.caller,
                &id,
                KeyChanges {
                    status: Some(status.into()),
                    ..KeyChanges::default()
                },
            )
            .await?;
        }
        "delete" => keys.delete(&ui.caller, &id).await?,
        "regenerate" => {
            let (record, secret) = keys.regenerate(&ui.caller, &id).await?;
            let created = Created {
                name: record.key.name.clone(),
                install: install_line(&ui, &headers, &secret),
                secret,
            };
            return keys_page(&state, &ui, Some(created)).await;
        }
        other => {
            return Err(DomainError::NotFound(format!(
                "no action {other:?}: disable, enable, regenerate or delete"
            ))
            .into());
        }
    }
    Ok(see_other(&format!("{}/keys", ui.site.base)))
}
