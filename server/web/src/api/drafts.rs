//! Scripts in the dashboard, over REST (CONTRACT.md §20): switching a script name off and on,
//! a signed version's bytes, and drafts: saved from files, listed, downloaded as the exact
//! bytes to sign, and turned into a version by the operator's signature file.
//!
//! Bodies are bounded before they are read: a draft's JSON at [`MAX_DRAFT_BODY`] (the 10 MiB of
//! files, escaped), a signature file at 16 KiB.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use outpost_protocol::bundle::archive::FileInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::scripts::{FileView, ScriptVersionView};
use super::users::object_only;
use super::{ApiJson, AppState, Authorized, Path};
use crate::http_error::HttpError;
use outpost_core::service::drafts::{Draft, DraftFile};
use outpost_store::domain::DomainError;

/// The most a draft's JSON body may hold: room for 10 MiB of files escaped in JSON.
pub const MAX_DRAFT_BODY: usize = 32 * 1024 * 1024;
/// The most a signature file may hold (one is a few hundred bytes).
pub const MAX_SIGNATURE_BODY: usize = 16 * 1024;

/// A signature file (`BUNDLE.sig`), as `outpost scripts sign` writes it (documentation only:
/// the handler reads the bytes and the service parses them).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SignatureFileDoc {
    /// `outpost-bundle-signature-v1`.
    format: String,
    /// The draft's SHA-256, lowercase hex.
    sha256: String,
    /// The draft's size in bytes.
    size: u64,
    /// The signer's Ed25519 public key, standard base64.
    key: String,
    /// The Ed25519 signature, standard base64.
    signature: String,
}

/// Body of `PATCH /api/scripts/{name}`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptPatch {
    /// `false`: runs of this script are refused (`script_disabled`), its versions kept.
    pub enabled: bool,
}

object_only!(ScriptPatch { enabled: bool });

/// A script name's switch.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptSwitch {
    /// The script's name.
    pub name: String,
    /// Whether its runs are accepted.
    pub enabled: bool,
}

/// One file of a draft as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftFileBody {
    /// The file's text (UTF-8).
    pub text: String,
    /// Its execute bit; absent: the newest version's for that path, else not executable. The
    /// entrypoint is always executable.
    pub executable: Option<bool>,
}

/// Body of `POST /api/scripts/{name}/drafts`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDraftBody {
    /// The version the draft becomes once signed (`MAJOR.MINOR.PATCH`), not a signed
    /// version's; a draft of the same version is replaced.
    #[schema(value_type = crate::api::doc::ReleaseVersion)]
    pub version: String,
    /// Files by path (relative, `/`-separated, no `..`): each replaces the newest version's
    /// file of that path or adds one; `null` removes one. Files left out carry over from the
    /// newest version with their modes. At most 10 MiB of files together.
    #[schema(value_type = BTreeMap<crate::api::doc::DraftPath, DraftFileBody>)]
    pub files: BTreeMap<String, Option<DraftFileBody>>,
}

object_only!(NewDraftBody {
    version: String,
    files: BTreeMap<String, Option<DraftFileBody>>,
});

/// A draft: an unsigned bundle that never runs, until its signature makes it a version.
#[derive(Debug, Serialize, ToSchema)]
pub struct DraftView {
    /// The script's name.
    pub name: String,
    /// The version it becomes once signed.
    pub version: String,
    /// SHA-256 of its bytes, lowercase hex: what a signature must cover.
    pub sha256: String,
    /// Bytes of the bundle.
    pub size: u64,
    /// The signed version it was edited from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_version: Option<String>,
    /// Every file.
    pub files: Vec<FileView>,
    /// Who saved it last (`user:<id>`, `key:<id>`).
    pub author: String,
    /// When it was first saved.
    pub created_at: DateTime<Utc>,
    /// When it was saved last.
    pub updated_at: DateTime<Utc>,
}

impl From<Draft> for DraftView {
    fn from(row: Draft) -> Self {
        let files: Vec<FileInfo> = serde_json::from_value(row.files).unwrap_or_default();
        Self {
            name: row.name,
            version: row.version,
            sha256: row.sha256,
            size: u64::try_from(row.size).unwrap_or(0),
            base_version: row.base_version,
            files: files
                .into_iter()
                .map(|f| FileView {
                    path: f.path,
                    size: f.size,
                    executable: f.executable,
                })
                .collect(),
            author: row.author,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Drafts, by name, newest version first (at most 100 exist per tenant).
#[derive(Debug, Serialize, ToSchema)]
pub struct DraftList {
    /// The drafts.
    pub drafts: Vec<DraftView>,
}

/// Disable or enable a script name. Runs of a disabled script are refused with 409
/// `script_disabled`; its versions stay.
#[utoipa::path(patch, operation_id = "switchScript", path = "/api/scripts/{name}", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name")),
    request_body = ScriptPatch,
    responses((status = 200, body = ScriptSwitch), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
pub async fn switch(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ScriptPatch>,
) -> Result<Json<ScriptSwitch>, HttpError> {
    state
        .services
        .scripts
        .set_enabled(&caller, &name, body.enabled)
        .await?;
    Ok(Json(ScriptSwitch {
        name,
        enabled: body.enabled,
    }))
}

/// Save a draft: the newest version's files with the ones sent replacing theirs, packed on the
/// server and checked by the archive walker (no path out of the bundle, no link, at most
/// 10 MiB of files). It never runs and never reaches an agent; `outpost scripts sign --draft`
/// turns it into a version.
#[utoipa::path(post, operation_id = "saveScriptDraft", path = "/api/scripts/{name}/drafts", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name")),
    request_body = NewDraftBody,
    responses(
        (status = 201, body = DraftView, description = "Saved (a draft of the same version is replaced)"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`version_exists`: a signed version has this number; `too_many_drafts`: the tenant holds 100 drafts; `library_full`: past --library-max-bytes"),
        (status = 413, response = crate::api::doc::PayloadTooLarge)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
pub async fn save(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<NewDraftBody>,
) -> Result<(StatusCode, Json<DraftView>), HttpError> {
    let files = body
        .files
        .into_iter()
        .map(|(path, file)| {
            (
                path,
                file.map(|f| DraftFile {
                    text: f.text,
                    executable: f.executable,
                }),
            )
        })
        .collect();
    let draft = state
        .services
        .scripts
        .save_draft(&caller, &name, &body.version, files)
        .await?;
    Ok((StatusCode::CREATED, Json(draft.into())))
}

/// The drafts of one script.
#[utoipa::path(get, operation_id = "listScriptDrafts", path = "/api/scripts/{name}/drafts", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name")),
    responses((status = 200, body = DraftList), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(name): Path<String>,
) -> Result<Json<DraftList>, HttpError> {
    let drafts = state.services.scripts.drafts(&caller, Some(&name)).await?;
    Ok(Json(DraftList {
        drafts: drafts.into_iter().map(Into::into).collect(),
    }))
}

/// Every draft of the tenant (`outpost scripts drafts`).
#[utoipa::path(get, operation_id = "listAllScriptDrafts", path = "/api/script-drafts", tag = "scripts", security(("bearer" = [])),
    responses((status = 200, body = DraftList)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list_all(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<DraftList>, HttpError> {
    let drafts = state.services.scripts.drafts(&caller, None).await?;
    Ok(Json(DraftList {
        drafts: drafts.into_iter().map(Into::into).collect(),
    }))
}

fn gzip(bytes: Vec<u8>, sha256: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (
                header::HeaderName::from_static("x-outpost-sha256"),
                sha256.to_owned(),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// A signed version's bytes, exactly as uploaded (for `outpost scripts sign --draft`, which
/// checks them against the operator's key before it shows a diff against them).
#[utoipa::path(get, operation_id = "downloadScriptVersion", path = "/api/scripts/{name}/versions/{version}/bundle", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name"),
        ("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH")),
    responses((status = 200, description = "The bundle", content(("application/gzip"))),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn version_bundle(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let (row, bytes) = state
        .services
        .scripts
        .version_bundle(&caller, &name, &version)
        .await?;
    Ok(gzip(bytes, &row.sha256))
}

/// A draft's bytes: exactly what a signature must cover.
#[utoipa::path(get, operation_id = "downloadScriptDraft", path = "/api/scripts/{name}/drafts/{version}/bundle", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name"),
        ("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH")),
    responses((status = 200, description = "The draft's bundle", content(("application/gzip"))),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn draft_bundle(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    let (draft, bytes) = state
        .services
        .scripts
        .draft_bundle(&caller, &name, &version)
        .await?;
    Ok(gzip(bytes, &draft.sha256))
}

/// Sign a draft: the body is the signature file `outpost scripts sign` made over the draft's
/// bytes. The draft becomes that version if the signature covers its current bytes and
/// verifies; a signature for other bytes is 409 `draft_changed` and nothing is stored.
#[utoipa::path(post, operation_id = "signScriptDraft", path = "/api/scripts/{name}/drafts/{version}/signature", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name"),
        ("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH")),
    request_body(content = SignatureFileDoc, content_type = "application/json", description = "The signature file (BUNDLE.sig)"),
    responses(
        (status = 201, body = ScriptVersionView, description = "The draft is now this version"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`draft_changed`: the signature is for other bytes than the draft's now; `version_exists`; `too_many_versions`"),
        (status = 413, response = crate::api::doc::PayloadTooLarge)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
pub async fn sign(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<ScriptVersionView>), HttpError> {
    if body.len() > MAX_SIGNATURE_BODY {
        return Err(HttpError(DomainError::TooLarge(format!(
            "signature: larger than {MAX_SIGNATURE_BODY} bytes; a signature file is a few hundred"
        ))));
    }
    let version = state
        .services
        .scripts
        .sign_draft(&caller, &name, &version, &body)
        .await?;
    Ok((StatusCode::CREATED, Json(version.into())))
}

/// Delete a draft.
#[utoipa::path(delete, operation_id = "deleteScriptDraft", path = "/api/scripts/{name}/drafts/{version}", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name"),
        ("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH")),
    responses((status = 204), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    state
        .services
        .scripts
        .delete_draft(&caller, &name, &version)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
