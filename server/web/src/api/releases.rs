//! `/api/releases` and `/downloads`: signed agent and supervisor builds.
//!
//! Releases are global, not tenant data (they are builds of Outpost itself, published by the
//! operator with `outpost-server release publish`), so any valid agent key or API key may read
//! their metadata, and the files themselves are public like `/deploy.sh`: a binary is no
//! secret, and what makes it trustworthy is the Ed25519 signature the supervisor checks
//! against the key it pinned, not the channel. The `.sha256` files come from the database, not
//! from hashing the file on disk, so a file changed after publishing is caught by every client.
//!
//! While no release is published at all, the same routes serve the builds the server ships
//! with (`outpost_core::builtin`): its own version and target, signed with its own key. A request
//! that finds neither gets a 404 saying which file is missing and what to do about it.
//!
//! `/downloads/packages/{file}` serves the Debian packages the server ships with
//! (`outpost_core::builtin::PackageFile`), public for the same reason; `deploy.sh` installs
//! the agent's with dpkg where it can. The agent's package follows the built-in builds' rule:
//! not served once a release is published, since a packaged agent is updated by apt, not by
//! the signed releases the operator publishes.

use crate::http_error::HttpError;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use outpost_protocol::release::{self, Version, valid_target};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Path, Query};
use crate::api::AppState;
use outpost_store::domain::DomainError;

/// A release for one target, as `GET /api/releases/…` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseView {
    /// `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// Target triple.
    pub target: String,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// Public half (base64) of the key it was signed with. Informational: verifiers check
    /// against their pinned key.
    pub public_key: String,
    /// The agent binary, if the release has one.
    pub agent: Option<ArtifactView>,
    /// The supervisor binary, if the release has one.
    pub supervisor: Option<ArtifactView>,
}

/// One downloadable, signed binary.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactView {
    /// Absolute download URL (under `--public-url` when set, else the request's host).
    pub url: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Ed25519 signature (base64) over
    /// `outpost-release-v1\n<name>\n<version>\n<target>\n<sha256>\n`.
    pub signature: String,
    /// Ed25519 signature (base64) over
    /// `outpost-release-v2\n<name>\n<version>\n<target>\n<sha256>\n<size>\n`, which also
    /// covers the size; absent for releases published before it existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_v2: Option<String>,
}

/// Query of the release endpoints.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TargetQuery {
    /// Rust target triple, e.g. `x86_64-unknown-linux-gnu` (required).
    #[param(value_type = crate::api::doc::TargetTriple, required = true)]
    pub target: Option<String>,
}

/// Any valid agent key (`opa_…`) or API key (`opk_…`): release metadata is the same for every
/// tenant.
pub struct Reader;

impl FromRequestParts<AppState> for Reader {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        match crate::http_error::bearer(&parts.headers) {
            Some(token) if token.starts_with("opa_") => {
                state
                    .services
                    .access
                    .authenticate_agent(Some(token))
                    .await?;
            }
            token => {
                let super::ClientAddr(client) = super::ClientAddr::of(parts, state);
                state.services.access.authenticate(token, client).await?;
            }
        }
        // The connection no longer counts against the caps on unauthenticated ones.
        crate::listen::mark_authenticated();
        Ok(Self)
    }
}

fn target_of(query: TargetQuery) -> Result<String, DomainError> {
    let target = query.target.ok_or_else(|| {
        DomainError::BadRequest(
            "target: missing query parameter (e.g. ?target=x86_64-unknown-linux-gnu)".into(),
        )
    })?;
    if !valid_target(&target) {
        return Err(DomainError::BadRequest(
            "target: must be a target triple of 1 to 64 characters [A-Za-z0-9_.-]".into(),
        ));
    }
    Ok(target)
}

/// The newest release for a target.
#[utoipa::path(get, operation_id = "latestRelease", path = "/api/releases/latest", tag = "releases", params(TargetQuery),
    security(("bearer" = [])),
    responses((status = 200, body = ReleaseView),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "Nothing published for this target, and the server has no built-in build for it")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn latest(
    State(state): State<AppState>,
    _reader: Reader,
    headers: HeaderMap,
    Query(query): Query<TargetQuery>,
) -> Result<Json<ReleaseView>, HttpError> {
    let target = target_of(query)?;
    match state.services.releases.latest_version(&target).await? {
        Some(version) => view(&state, &headers, &version, &target).await.map(Json),
        None => builtin_view(&state, &headers, None, &target)
            .await
            .map(Json),
    }
}

/// One release for a target.
#[utoipa::path(get, operation_id = "showRelease", path = "/api/releases/{version}", tag = "releases",
    params(("version" = crate::api::doc::ReleaseVersion, Path, description = "MAJOR.MINOR.PATCH"), TargetQuery),
    security(("bearer" = [])),
    responses((status = 200, body = ReleaseView),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "No such release for this target")))]
#[tracing::instrument(level = "debug", skip_all, fields(version = %version))]
pub async fn show(
    State(state): State<AppState>,
    _reader: Reader,
    headers: HeaderMap,
    Path(version): Path<String>,
    Query(query): Query<TargetQuery>,
) -> Result<Json<ReleaseView>, HttpError> {
    let version: Version = version
        .parse()
        .map_err(|e| DomainError::BadRequest(format!("version: {e}")))?;
    let target = target_of(query)?;
    match view(&state, &headers, &version, &target).await {
        Err(HttpError(DomainError::NotFound(_)))
            if !state.services.releases.any_published().await? =>
        {
            builtin_view(&state, &headers, Some(&version), &target)
                .await
                .map(Json)
        }
        other => other.map(Json),
    }
}

/// The built-in builds as a release (`outpost_core::builtin`): only while nothing is published, only
/// for the server's own target and version.
async fn builtin_view(
    state: &AppState,
    headers: &HeaderMap,
    version: Option<&Version>,
    target: &str,
) -> Result<ReleaseView, HttpError> {
    let builtin = builtin_for(state, version, target).await?;
    let base = base_url(state, headers);
    let mut artifacts = Vec::new();
    for name in release::ARTIFACTS {
        if let Some(signed) = builtin
            .artifact(name)
            .await
            .map_err(DomainError::Internal)?
        {
            artifacts.push(signed);
        }
    }
    let Some(first) = artifacts.first() else {
        return Err(HttpError(DomainError::NotFound(missing_builtin(
            state,
            target,
            "outpost-agent",
        ))));
    };
    let version = builtin.version;
    let artifact = |name: &str| {
        artifacts
            .iter()
            .find(|a| a.name == name)
            .map(|a| ArtifactView {
                url: format!("{base}/downloads/{version}/{target}/{name}"),
                sha256: a.sha256.clone(),
                size: a.size,
                signature: a.signature.clone(),
                signature_v2: Some(a.signature_v2.clone()),
            })
    };
    Ok(ReleaseView {
        version: version.to_string(),
        target: target.to_owned(),
        published_at: first.modified,
        public_key: builtin.public_key().to_owned(),
        agent: artifact(release::AGENT),
        supervisor: artifact(release::SUPERVISOR),
    })
}

/// The built-in builds when they may answer for `version` (`None`: the latest) and `target`:
/// nothing published, the server's own target and version. Else the 404 that says why.
async fn builtin_for<'a>(
    state: &'a AppState,
    version: Option<&Version>,
    target: &str,
) -> Result<&'a outpost_core::builtin::Builtin, HttpError> {
    let builtin = &state.services.releases.files().builtin;
    if state.services.releases.any_published().await? {
        return Err(HttpError(DomainError::NotFound(format!(
            "no release for {target}: releases are published on this server, but none for this target (publish one: outpost-server release publish --target {target} ...)"
        ))));
    }
    if target != builtin.target {
        return Err(HttpError(DomainError::NotFound(format!(
            "no release for {target}: none is published, and the builds this server ships with are for {} (publish builds for {target}: outpost-server release publish --target {target} ...)",
            builtin.target
        ))));
    }
    if let Some(version) = version
        && *version != builtin.version
    {
        return Err(HttpError(DomainError::NotFound(format!(
            "no release {version} for {target}: none is published, and the builds this server ships with are version {}",
            builtin.version
        ))));
    }
    Ok(builtin)
}

/// What to do when the server has neither a published release nor its own build of `name`.
fn missing_builtin(state: &AppState, target: &str, name: &str) -> String {
    // Debug only: anyone may ask, and the start-up log already warns about it.
    tracing::debug!(
        dir = %state.services.releases.files().builtin.dir().display(),
        name,
        "asked for a build this server does not have: put outpost-agent and outpost-supervisor in this directory (or --builds-dir), or publish a release"
    );
    format!(
        "no {name} for {target} on this server: no release is published and the server has no built-in {name} (it serves the outpost-agent and outpost-supervisor found beside its executable or in --builds-dir; the server log names the directory). Put both files there (cargo build -p outpost-agent -p outpost-supervisor), or publish a release: outpost-server release publish --help"
    )
}

async fn view(
    state: &AppState,
    headers: &HeaderMap,
    version: &Version,
    target: &str,
) -> Result<ReleaseView, HttpError> {
    let rows = state.services.releases.artifacts(version, target).await?;
    let first = rows
        .first()
        .ok_or_else(|| DomainError::NotFound(format!("no release {version} for {target}")))?;
    let base = base_url(state, headers);
    let artifact = |name: &str| {
        rows.iter().find(|r| r.name == name).map(|r| ArtifactView {
            url: format!("{base}/downloads/{version}/{target}/{name}"),
            sha256: r.sha256.clone(),
            size: r.size.max(0) as u64,
            signature: r.signature.clone(),
            signature_v2: r.signature_v2.clone(),
        })
    };
    Ok(ReleaseView {
        version: version.to_string(),
        target: target.to_owned(),
        published_at: first.published_at,
        public_key: first.public_key.clone(),
        agent: artifact(release::AGENT),
        supervisor: artifact(release::SUPERVISOR),
    })
}

/// `--public-url`, else the scheme this server serves and the request's `Host`.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.services.releases.files().public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let scheme = if state.services.releases.files().tls {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// A release binary (`…/outpost-agent`) or its checksum (`…/outpost-agent.sha256`, in
/// `sha256sum` format). `version` may be `latest`.
#[utoipa::path(get, operation_id = "downloadRelease", path = "/downloads/{version}/{target}/{file}", tag = "releases",
    params(
        ("version" = String, Path, description = "MAJOR.MINOR.PATCH or `latest`"),
        ("target" = String, Path, description = "Target triple"),
        ("file" = String, Path, description = "`outpost-agent`, `outpost-supervisor`, or either with `.sha256`"),
    ),
    responses(
        (status = 200, description = "The file, or its checksum in `sha256sum` format (`….sha256`)",
            content(("application/octet-stream"), ("text/plain"))),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "No such release, target or file")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn download(
    State(state): State<AppState>,
    Path((version, target, file)): Path<(String, String, String)>,
) -> Result<Response, HttpError> {
    let (name, checksum) = match file.strip_suffix(".sha256") {
        Some(name) => (name, true),
        None => (file.as_str(), false),
    };
    let Some(name) = release::ARTIFACTS.iter().copied().find(|a| *a == name) else {
        return Err(HttpError(DomainError::NotFound(format!(
            "no file {file:.80}: releases hold {}",
            release::ARTIFACTS.join(" and ")
        ))));
    };
    if !valid_target(&target) {
        return Err(HttpError(DomainError::NotFound(format!(
            "no target {target:.80}"
        ))));
    }
    let wanted = if version == "latest" {
        None
    } else {
        Some(
            version
                .parse::<Version>()
                .map_err(|e| DomainError::NotFound(e.to_string()))?,
        )
    };
    let version = match wanted {
        Some(version) => Some(version),
        None => {
            state
                .services
                .releases
                .latest_artifact_version(&target, name)
                .await?
        }
    };
    let artifact = match version {
        Some(version) => state
            .services
            .releases
            .artifacts(&version, &target)
            .await?
            .into_iter()
            .find(|r| r.name == name),
        None => None,
    };
    let Some(artifact) = artifact else {
        if state.services.releases.any_published().await? {
            return Err(HttpError(DomainError::NotFound(match version {
                Some(version) => format!("no {name} {version} for {target}"),
                None => format!("no {name} published for {target}"),
            })));
        }
        return builtin_download(&state, wanted.as_ref(), &target, name, checksum).await;
    };
    let version: Version = artifact
        .version
        .parse()
        .map_err(|e: release::BadVersion| DomainError::Internal(e.into()))?;
    if checksum {
        let body = format!("{}  {name}\n", artifact.sha256);
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let path = outpost_core::release::artifact_path(
        &state.services.releases.files().dir,
        &version,
        &target,
        name,
    );
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(err) => {
            tracing::error!(path = %path.display(), error = %err, "a published release file is missing");
            return Err(HttpError(DomainError::NotFound(format!(
                "{name} {version} for {target} is published but its file is missing on this server"
            ))));
        }
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| DomainError::Internal(e.into()))?
        .len();
    Ok(file_response(file, len, name, "application/octet-stream"))
}

/// `/downloads/…` from the built-in builds: the same checksum line and file response as a
/// published release's.
async fn builtin_download(
    state: &AppState,
    version: Option<&Version>,
    target: &str,
    name: &str,
    checksum: bool,
) -> Result<Response, HttpError> {
    let builtin = builtin_for(state, version, target).await?;
    let missing = || DomainError::NotFound(missing_builtin(state, target, name));
    if checksum {
        let signed = builtin
            .artifact(name)
            .await
            .map_err(DomainError::Internal)?
            .ok_or_else(missing)?;
        let body = format!("{}  {name}\n", signed.sha256);
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let (file, signed) = builtin
        .open_file(name)
        .await
        .map_err(DomainError::Internal)?
        .ok_or_else(missing)?;
    Ok(file_response(
        file,
        signed.size,
        name,
        "application/octet-stream",
    ))
}

/// A Debian package the server ships with (`outpost-agent_amd64.deb`, …), or its checksum
/// (`….deb.sha256`, in `sha256sum` format).
#[utoipa::path(get, operation_id = "downloadPackage", path = "/downloads/packages/{file}", tag = "releases",
    params(
        ("file" = String, Path, description = "`<package>_<arch>.deb` (package `outpost-agent`, `outpost` or `outpost-server`; arch `amd64` or `arm64`), or that name with `.sha256`"),
    ),
    responses(
        (status = 200, description = "The package, or its checksum in `sha256sum` format (`….sha256`)",
            content(("application/vnd.debian.binary-package"), ("text/plain"))),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "No such package on this server, or the agent's while releases are published")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn package(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, HttpError> {
    use outpost_core::builtin::{PACKAGE_ARCHES, PACKAGES, PackageFile, debian_arch};
    let (name, checksum) = match file.strip_suffix(".sha256") {
        Some(name) => (name, true),
        None => (file.as_str(), false),
    };
    let Some(package) = PackageFile::parse(name) else {
        return Err(HttpError(DomainError::NotFound(format!(
            "no package {file:.80}: this server serves <package>_<arch>.deb and <package>_<arch>.deb.sha256, package {}, arch {}",
            PACKAGES.join(", "),
            PACKAGE_ARCHES.join(" or ")
        ))));
    };
    if package.name == "outpost-agent" && state.services.releases.any_published().await? {
        return Err(HttpError(DomainError::NotFound(
            "the agent package is not served while releases are published on this server: agents install the published, signed builds (deploy.sh does so), which the `update` command then keeps up to date".into(),
        )));
    }
    let builtin = &state.services.releases.files().builtin;
    let missing = || {
        DomainError::NotFound(format!(
            "no {} on this server: a server installed from its Debian package serves the agent's and the CLI's packages for its own architecture{} (scripts/packages.sh builds them into <builds-dir>/packages)",
            package.file_name(),
            debian_arch().map(|a| format!(", {a}")).unwrap_or_default()
        ))
    };
    if checksum {
        let sha256 = builtin
            .package_sha256(package)
            .await
            .map_err(DomainError::Internal)?
            .ok_or_else(missing)?;
        let body = format!("{sha256}  {}\n", package.file_name());
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response());
    }
    let (file, len, _) = builtin
        .open_package(package)
        .await
        .map_err(DomainError::Internal)?
        .ok_or_else(missing)?;
    Ok(file_response(
        file,
        len,
        &package.file_name(),
        "application/vnd.debian.binary-package",
    ))
}

/// A file as an attachment of exactly `len` bytes.
fn file_response(
    file: tokio::fs::File,
    len: u64,
    name: &str,
    content_type: &'static str,
) -> Response {
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
