//! `/api/scripts`: the script library (CONTRACT.md §15), and `/agent/v1/scripts/{sha256}`, where
//! agents download bundles.
//!
//! An upload is `multipart/form-data` with two parts, `bundle` (the `tar.gz`) and `signature`
//! (`BUNDLE.sig`), so that `curl -F bundle=@b.tar.gz -F signature=@b.tar.gz.sig` works as well
//! as the CLI. The body is bounded before it is read: a `Content-Length` past the limit is
//! answered 413 at once, and a body without one is cut at the limit while it streams.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use outpost_protocol::bundle::{BundleManifest, archive::FileInfo, limits};
use serde::Serialize;
use utoipa::ToSchema;

use super::Path;
use crate::api::AppState;
use outpost_core::service::scripts::{ScriptSummary, ScriptVersion};
use outpost_store::domain::DomainError;

/// Room for the multipart framing and the signature part beside the bundle.
pub const UPLOAD_OVERHEAD: u64 = 128 * 1024;
/// The most a signature part may hold.
const MAX_SIGNATURE_BYTES: usize = 16 * 1024;
/// Bundles are sent in pieces of this size.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The upload's form (documentation only: the handler reads the parts itself).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The bundle, a `tar.gz` holding `outpost-bundle.json` (at most 16 MiB).
    #[schema(value_type = String, format = Binary)]
    bundle: Vec<u8>,
    /// `BUNDLE.sig`, as `outpost scripts sign` writes it (JSON: format, sha256, size, key,
    /// signature).
    #[schema(value_type = String, format = Binary)]
    signature: Vec<u8>,
}

/// A parameter a library script takes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParamView {
    /// `[A-Z0-9_]` name.
    pub name: String,
    /// Masked wherever the job is shown, sealed at rest.
    pub secret: bool,
}

/// A file of a bundle.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    /// Path inside the bundle.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Carries an execute bit.
    pub executable: bool,
}

/// One version of a library script.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptVersionView {
    /// The script's name.
    pub name: String,
    /// `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// SHA-256 of the bundle, lowercase hex: its identity.
    pub sha256: String,
    /// Bytes of the bundle.
    pub size: u64,
    /// The signer's Ed25519 public key (standard base64). Agents run it only if their
    /// manifest's `library.keys` holds this key.
    pub signer_key: String,
    /// The Ed25519 signature (standard base64).
    pub signature: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The file that runs.
    pub entrypoint: String,
    /// Parameters it takes; absent: any valid name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<ParamView>>,
    /// Its timeout ceiling, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// The pip requirements file inside the bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<String>,
    /// Every file of the bundle.
    pub files: Vec<FileView>,
    /// Who uploaded it (`user:<id>`, `key:<id>`).
    pub uploaded_by: String,
    /// When.
    pub uploaded_at: DateTime<Utc>,
}

impl From<ScriptVersion> for ScriptVersionView {
    fn from(row: ScriptVersion) -> Self {
        let manifest: Option<BundleManifest> = serde_json::from_value(row.manifest).ok();
        let files: Vec<FileInfo> = serde_json::from_value(row.files).unwrap_or_default();
        Self {
            name: row.name,
            version: row.version,
            sha256: row.sha256,
            size: u64::try_from(row.size).unwrap_or(0),
            signer_key: row.signer_key,
            signature: row.signature,
            description: manifest.as_ref().and_then(|m| m.description.clone()),
            entrypoint: manifest
                .as_ref()
                .map(|m| m.entrypoint.clone())
                .unwrap_or_default(),
            params: manifest.as_ref().and_then(|m| {
                m.params.as_ref().map(|_| {
                    m.params()
                        .into_iter()
                        .map(|p| ParamView {
                            name: p.name,
                            secret: p.secret,
                        })
                        .collect()
                })
            }),
            timeout_s: manifest.as_ref().and_then(|m| m.timeout_s),
            requirements: manifest.as_ref().and_then(|m| m.requirements.clone()),
            files: files
                .into_iter()
                .map(|f| FileView {
                    path: f.path,
                    size: f.size,
                    executable: f.executable,
                })
                .collect(),
            uploaded_by: row.uploaded_by,
            uploaded_at: row.created_at,
        }
    }
}

/// A script of the library with its newest version.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptSummaryView {
    /// The script's name.
    pub name: String,
    /// Its newest version (what a job naming no version runs).
    pub latest_version: String,
    /// How many versions are stored.
    pub versions: usize,
    /// The newest version's description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The newest version's signer key.
    pub signer_key: String,
    /// The newest version's SHA-256.
    pub sha256: String,
    /// When the newest version was uploaded.
    pub uploaded_at: DateTime<Utc>,
    /// `false`: its runs are refused (`script_disabled`, CONTRACT.md §20).
    pub enabled: bool,
}

impl From<ScriptSummary> for ScriptSummaryView {
    fn from(summary: ScriptSummary) -> Self {
        let latest = summary.latest;
        let description = serde_json::from_value::<BundleManifest>(latest.manifest)
            .ok()
            .and_then(|m| m.description);
        Self {
            name: latest.name,
            latest_version: latest.version,
            versions: summary.versions,
            description,
            signer_key: latest.signer_key,
            sha256: latest.sha256,
            uploaded_at: latest.created_at,
            enabled: true,
        }
    }
}

/// The library.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptList {
    /// Scripts by name.
    pub scripts: Vec<ScriptSummaryView>,
}

/// A script with every version.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScriptView {
    /// The script's name.
    pub name: String,
    /// `false`: its runs are refused (`script_disabled`, CONTRACT.md §20).
    pub enabled: bool,
    /// Newest first.
    pub versions: Vec<ScriptVersionView>,
}

/// Upload a signed bundle. The server checks the signature file's shape, that its hash and
/// size are the bundle's, that the Ed25519 signature verifies, and every archive rule (no
/// links, devices or paths out of the bundle; size and entry limits; a manifest whose
/// entrypoint is a file of the bundle). It keeps no key: agents verify again against the keys
/// their manifests pin.
#[utoipa::path(post, operation_id = "uploadScript", path = "/api/scripts", tag = "scripts", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = ScriptVersionView, description = "Stored"),
        (status = 200, body = ScriptVersionView, description = "The same bytes were already stored under this version: nothing changed"),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "A part is missing, or the signature, the hash, the size or an archive rule refuses the bundle; the message says which"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`version_exists`: the version holds other bytes; `too_many_versions`: the script has 50 versions; `library_full`: the tenant's library would hold more than --library-max-bytes"),
        (status = 413, response = crate::api::doc::PayloadTooLarge)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn upload(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    request: Request,
) -> Result<(StatusCode, Json<ScriptVersionView>), HttpError> {
    let too_large = || {
        DomainError::TooLarge(format!(
            "bundle: larger than {} bytes (16 MiB), the limit of a library bundle",
            limits::MAX_BUNDLE_BYTES
        ))
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits::MAX_BUNDLE_BYTES + UPLOAD_OVERHEAD) {
        return Err(HttpError(too_large()));
    }
    let mut form = Multipart::from_request(request, &state)
        .await
        .map_err(|e| DomainError::BadRequest(format!("body: {}", e.body_text())))?;
    let (mut bundle, mut signature): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(HttpError(too_large()));
            }
            Err(e) => {
                return Err(HttpError(DomainError::BadRequest(format!(
                    "body: {}",
                    e.body_text()
                ))));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let (slot, max) = match name.as_str() {
            "bundle" => (&mut bundle, limits::MAX_BUNDLE_BYTES as usize),
            "signature" => (&mut signature, MAX_SIGNATURE_BYTES),
            other => {
                return Err(HttpError(DomainError::BadRequest(format!(
                    "body: unknown part {:?}; an upload has the parts \"bundle\" and \"signature\"",
                    other.chars().take(64).collect::<String>()
                ))));
            }
        };
        if slot.is_some() {
            return Err(HttpError(DomainError::BadRequest(format!(
                "{name}: the part is given twice"
            ))));
        }
        let mut bytes = Vec::new();
        let mut field = field;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > max {
                        return Err(if name == "bundle" {
                            HttpError(too_large())
                        } else {
                            HttpError(DomainError::TooLarge(format!(
                                "signature: larger than {MAX_SIGNATURE_BYTES} bytes; a signature file is a few hundred"
                            )))
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    return Err(HttpError(too_large()));
                }
                Err(e) => {
                    return Err(HttpError(DomainError::BadRequest(format!(
                        "{name}: {}",
                        e.body_text()
                    ))));
                }
            }
        }
        *slot = Some(bytes);
    }
    let bundle = bundle.ok_or_else(|| {
        DomainError::BadRequest(
            "bundle: missing part; send the tar.gz as the form part \"bundle\"".into(),
        )
    })?;
    let signature = signature.ok_or_else(|| {
        DomainError::BadRequest(
            "signature: missing part; the library takes only signed bundles: sign with \
             `outpost scripts sign BUNDLE --key FILE` and send BUNDLE.sig as the part \"signature\""
                .into(),
        )
    })?;
    let (version, created) = state
        .services
        .scripts
        .upload(&caller, bundle, &signature)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(version.into())))
}

/// The library: each script's name with its newest version.
#[utoipa::path(get, operation_id = "listScripts", path = "/api/scripts", tag = "scripts", security(("bearer" = [])),
    responses((status = 200, body = ScriptList)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<ScriptList>, HttpError> {
    let scripts = state.services.scripts.list(&caller).await?;
    let disabled = state.services.scripts.disabled(&caller).await?;
    Ok(Json(ScriptList {
        scripts: scripts
            .into_iter()
            .map(|s| {
                let mut view = ScriptSummaryView::from(s);
                view.enabled = !disabled.contains(&view.name);
                view
            })
            .collect(),
    }))
}

/// Every version of one script: hashes, signers, files, parameters.
#[utoipa::path(get, operation_id = "showScript", path = "/api/scripts/{name}", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name")),
    responses((status = 200, body = ScriptView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(name): Path<String>,
) -> Result<Json<ScriptView>, HttpError> {
    let versions = state.services.scripts.versions(&caller, &name).await?;
    let enabled = state.services.scripts.enabled(&caller, &name).await?;
    Ok(Json(ScriptView {
        enabled,
        name,
        versions: versions.into_iter().map(Into::into).collect(),
    }))
}

/// Delete one version. Jobs that ran it keep their record; new jobs no longer resolve to it.
#[utoipa::path(delete, operation_id = "deleteScriptVersion", path = "/api/scripts/{name}/versions/{version}", tag = "scripts", security(("bearer" = [])),
    params(("name" = crate::api::doc::ScriptName, Path, description = "The script's name"),
        ("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, name = %name, version = %version))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    state
        .services
        .scripts
        .delete(&caller, &name, &version)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bundle's bytes, for an agent of the tenant (its agent key as the bearer token): exactly
/// what was uploaded, which the agent checks against the hash, size and signature its run
/// names. 404 for a hash the key's tenant does not hold.
#[utoipa::path(get, operation_id = "downloadScript", path = "/agent/v1/scripts/{sha256}", tag = "scripts",
    security(("agent" = [])),
    params(("sha256" = crate::api::doc::Sha256Hex, Path, description = "The bundle's SHA-256, lowercase hex")),
    responses(
        (status = 200, description = "The bundle", content(("application/gzip"))),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all, fields(sha256 = %sha256))]
pub async fn download(
    State(state): State<AppState>,
    super::ClientAddr(client): super::ClientAddr,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Response, HttpError> {
    // Failed keys count against the address, as on the API: guessing costs the guesser.
    let limits = &state.services.limits;
    limits.before_authentication(client)?;
    let key = match state
        .services
        .access
        .authenticate_agent(crate::http_error::bearer(&headers))
        .await
    {
        Ok(key) => {
            // The connection no longer counts against the caps on unauthenticated ones.
            crate::listen::mark_authenticated();
            key
        }
        Err(err @ DomainError::Unauthorized(_)) => {
            return Err(HttpError(limits.failed_authentication(client, err)));
        }
        Err(err) => return Err(HttpError(err)),
    };
    let (bytes, permits) = state.services.scripts.download(&key, &sha256).await?;
    let length = bytes.len();
    // The permits are held until the last piece is handed to the connection.
    let bytes = axum::body::Bytes::from(bytes);
    let pieces: Vec<Result<axum::body::Bytes, std::io::Error>> = (0..length)
        .step_by(DOWNLOAD_CHUNK)
        .map(|at| Ok(bytes.slice(at..(at + DOWNLOAD_CHUNK).min(length))))
        .collect();
    let stream = futures_util::stream::iter(pieces).chain(futures_util::stream::once(async move {
        drop(permits);
        Ok(axum::body::Bytes::new())
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
