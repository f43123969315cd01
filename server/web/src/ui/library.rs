//! The dashboard's read-only view of the script library (CONTRACT.md §15): each script's newest
//! version, and a script's versions with their signer, hash and files. Uploads and deletes are
//! the CLI's and the API's: signing happens on the operator's machine, not in a browser.
//! Everything shown is escaped by askama (names, descriptions and paths come from bundles).

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use outpost_protocol::bundle::{BundleManifest, archive::FileInfo};

use super::pages::{Chrome, time};
use super::{Ui, UiError};
use crate::api::AppState;
use crate::api::Path;
use outpost_core::service::scripts::ScriptVersion;

/// A script in the list.
pub struct ScriptRow {
    name: String,
    latest: String,
    versions: usize,
    signer: String,
    uploaded: String,
    description: String,
}

/// The library page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/scripts.html")]
pub struct ScriptsPage {
    chrome: Chrome,
    rows: Vec<ScriptRow>,
}

/// One version on a script's page.
pub struct VersionRow {
    version: String,
    sha256: String,
    size: i64,
    signer: String,
    uploaded: String,
    uploaded_by: String,
    entrypoint: String,
    params: String,
    description: String,
    files: Vec<FileInfo>,
}

/// A script's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/script.html")]
pub struct ScriptPage {
    chrome: Chrome,
    name: String,
    versions: Vec<VersionRow>,
}

fn manifest(row: &ScriptVersion) -> Option<BundleManifest> {
    serde_json::from_value(row.manifest.clone()).ok()
}

/// `GET /ui/scripts`: `Scripts::list`.
pub async fn scripts(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    let list = state.services.scripts.list(&ui.caller).await?;
    let rows = list
        .into_iter()
        .map(|s| ScriptRow {
            description: manifest(&s.latest)
                .and_then(|m| m.description)
                .unwrap_or_default(),
            name: s.latest.name,
            latest: s.latest.version,
            versions: s.versions,
            signer: s.latest.signer_key,
            uploaded: time(Some(s.latest.created_at)),
        })
        .collect();
    Ok(ScriptsPage {
        chrome: Chrome::new(&ui, "scripts"),
        rows,
    }
    .into_response())
}

/// `GET /ui/scripts/{name}`: `Scripts::versions`.
pub async fn script(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let versions = state.services.scripts.versions(&ui.caller, &name).await?;
    let versions = versions
        .into_iter()
        .map(|row| {
            let manifest = manifest(&row);
            let params = match &manifest {
                Some(m) if m.params.is_some() => m
                    .params()
                    .iter()
                    .map(|p| {
                        if p.secret {
                            format!("{} (secret)", p.name)
                        } else {
                            p.name.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "any".into(),
            };
            VersionRow {
                version: row.version,
                sha256: row.sha256,
                size: row.size,
                signer: row.signer_key,
                uploaded: time(Some(row.created_at)),
                uploaded_by: row.uploaded_by,
                entrypoint: manifest
                    .as_ref()
                    .map(|m| m.entrypoint.clone())
                    .unwrap_or_default(),
                description: manifest.and_then(|m| m.description).unwrap_or_default(),
                params,
                files: serde_json::from_value(row.files).unwrap_or_default(),
            }
        })
        .collect();
    Ok(ScriptPage {
        chrome: Chrome::new(&ui, "scripts"),
        name,
        versions,
    }
    .into_response())
}
