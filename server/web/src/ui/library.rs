//! The script library in the dashboard (CONTRACT.md §15, §20): the list with an upload form (a
//! bundle with its `.sig`), a script's page (its versions, its switch, its drafts), a
//! version's page (its files, each shown highlighted and read-only, and a Run form on agents
//! or tags), the editor that saves drafts, and a draft's page (its files, and the command that
//! signs it on the operator's machine).
//!
//! The browser never signs: the server holds no key, and a page the server sends must not be
//! able to read one. A draft becomes a version only through `outpost scripts sign --draft`.
//! Everything shown is escaped by askama (names, descriptions, paths and file contents come
//! from bundles); highlighted text goes through `highlight`, which only picks a class.
//! The upload and the editor post `multipart/form-data` (a bundle, files of up to 10 MiB),
//! whose form token `forms::checked_multipart` checks before the handler runs, as for any form.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use outpost_core::service::drafts::{Draft, DraftFile, ShownFile};
use outpost_protocol::bundle::{BundleManifest, MANIFEST_FILE, archive::FileInfo};
use outpost_protocol::release::Version;
use serde::Deserialize;

use super::forms::{Fields, Parts};
use super::highlight::{Line, highlight};
use super::pages::{Chrome, time};
use super::{Ui, UiError, see_other};
use crate::api::AppState;
use crate::api::{Path, Query};
use outpost_core::service::scripts::ScriptVersion;
use outpost_store::domain::DomainError;

/// A script in the list.
pub struct ScriptRow {
    name: String,
    latest: String,
    versions: usize,
    signer: String,
    uploaded: String,
    description: String,
    enabled: bool,
}

/// The library page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/scripts.html")]
pub struct ScriptsPage {
    chrome: Chrome,
    rows: Vec<ScriptRow>,
    drafts: usize,
}

/// One version in a script's list.
pub struct VersionRow {
    version: String,
    sha256: String,
    size: i64,
    signer: String,
    uploaded: String,
    uploaded_by: String,
    description: String,
}

/// A draft in a list.
pub struct DraftRow {
    name: String,
    version: String,
    base: String,
    sha256: String,
    size: i64,
    author: String,
    saved: String,
}

/// A script's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/script.html")]
pub struct ScriptPage {
    chrome: Chrome,
    name: String,
    enabled: bool,
    versions: Vec<VersionRow>,
    drafts: Vec<DraftRow>,
}

/// A file shown in a page, highlighted.
pub struct Viewer {
    path: String,
    size: u64,
    executable: bool,
    /// `None`: not UTF-8 text, not shown.
    lines: Option<Vec<Line>>,
    /// Only the first MiB is shown.
    cut: bool,
}

/// A parameter of the Run form.
pub struct ParamField {
    name: String,
    secret: bool,
}

/// A version's page (and a draft's, with `draft`).
#[derive(Template, WebTemplate)]
#[template(path = "ui/script_version.html")]
pub struct VersionPage {
    chrome: Chrome,
    name: String,
    version: String,
    draft: bool,
    enabled: bool,
    sha256: String,
    size: i64,
    signer: String,
    by: String,
    at: String,
    entrypoint: String,
    description: String,
    params: Option<Vec<ParamField>>,
    files: Vec<FileLink>,
    shown: Option<Viewer>,
}

/// A file of a bundle with the link that shows it.
pub struct FileLink {
    path: String,
    size: u64,
    executable: bool,
    href: String,
}

fn links(here: &str, files: &[FileInfo]) -> Vec<FileLink> {
    files
        .iter()
        .map(|f| FileLink {
            href: format!(
                "{here}?file={}",
                url::form_urlencoded::byte_serialize(f.path.as_bytes()).collect::<String>()
            ),
            path: f.path.clone(),
            size: f.size,
            executable: f.executable,
        })
        .collect()
}

/// Every draft of the tenant.
#[derive(Template, WebTemplate)]
#[template(path = "ui/script_drafts.html")]
pub struct DraftsPage {
    chrome: Chrome,
    drafts: Vec<DraftRow>,
}

/// A text file in the editor.
pub struct EditFile {
    path: String,
    text: String,
    executable: bool,
    rows: usize,
}

/// A file the editor cannot edit (not UTF-8): carried over as it is.
pub struct KeptFile {
    path: String,
    size: usize,
}

/// The editor.
#[derive(Template, WebTemplate)]
#[template(path = "ui/script_edit.html")]
pub struct EditPage {
    chrome: Chrome,
    name: String,
    from: String,
    version: String,
    files: Vec<EditFile>,
    kept: Vec<KeptFile>,
}

fn manifest(value: &serde_json::Value) -> Option<BundleManifest> {
    serde_json::from_value(value.clone()).ok()
}

fn draft_row(d: Draft) -> DraftRow {
    DraftRow {
        name: d.name,
        version: d.version,
        base: d.base_version.unwrap_or_default(),
        sha256: d.sha256,
        size: d.size,
        author: d.author,
        saved: time(Some(d.updated_at)),
    }
}

/// `GET /ui/scripts`: `Scripts::list`, with an upload form for admins.
pub async fn scripts(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let list = scripts.list(&ui.caller).await?;
    let disabled: BTreeSet<String> = scripts.disabled(&ui.caller).await?.into_iter().collect();
    let drafts = scripts.drafts(&ui.caller, None).await?.len();
    let rows = list
        .into_iter()
        .map(|s| ScriptRow {
            description: manifest(&s.latest.manifest)
                .and_then(|m| m.description)
                .unwrap_or_default(),
            enabled: !disabled.contains(&s.latest.name),
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
        drafts,
    }
    .into_response())
}

/// `POST /ui/scripts`: `Scripts::upload` with the form's `bundle` and `signature` files.
pub async fn upload(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(parts): Extension<Parts>,
) -> Result<Response, UiError> {
    let missing = |part: &str, how: &str| {
        UiError(DomainError::BadRequest(format!(
            "{part}: no file chosen; {how}"
        )))
    };
    let bundle = parts
        .get("bundle")
        .filter(|b| !b.is_empty())
        .ok_or_else(|| missing("bundle", "choose the bundle (tar.gz)"))?;
    let signature = parts.get("signature").filter(|b| !b.is_empty()).ok_or_else(|| {
        missing(
            "signature",
            "the library takes only signed bundles: choose BUNDLE.sig, made by `outpost scripts sign BUNDLE --key FILE`",
        )
    })?;
    let (version, _) = state
        .services
        .scripts
        .upload(&ui.caller, bundle.to_vec(), signature)
        .await?;
    Ok(see_other(&format!(
        "{}/scripts/{}/versions/{}",
        ui.site.base, version.name, version.version
    )))
}

/// `GET /ui/scripts/drafts`: every draft of the tenant.
pub async fn drafts(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    let drafts = state.services.scripts.drafts(&ui.caller, None).await?;
    Ok(DraftsPage {
        chrome: Chrome::new(&ui, "scripts"),
        drafts: drafts.into_iter().map(draft_row).collect(),
    }
    .into_response())
}

/// `GET /ui/scripts/{name}`: `Scripts::versions`, the name's switch and its drafts.
pub async fn script(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let versions = scripts.versions(&ui.caller, &name).await?;
    let enabled = scripts.enabled(&ui.caller, &name).await?;
    let drafts = scripts.drafts(&ui.caller, Some(&name)).await?;
    let versions = versions
        .into_iter()
        .map(|row| VersionRow {
            description: manifest(&row.manifest)
                .and_then(|m| m.description)
                .unwrap_or_default(),
            version: row.version,
            sha256: row.sha256,
            size: row.size,
            signer: row.signer_key,
            uploaded: time(Some(row.created_at)),
            uploaded_by: row.uploaded_by,
        })
        .collect();
    Ok(ScriptPage {
        chrome: Chrome::new(&ui, "scripts"),
        name,
        enabled,
        versions,
        drafts: drafts.into_iter().map(draft_row).collect(),
    }
    .into_response())
}

/// `POST /ui/scripts/{name}/enabled`: `Scripts::set_enabled` (`enabled` is `true` or `false`).
pub async fn switch(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let enabled = match fields.get("enabled") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(DomainError::BadRequest("enabled: \"true\" or \"false\"".into()).into());
        }
    };
    state
        .services
        .scripts
        .set_enabled(&ui.caller, &name, enabled)
        .await?;
    Ok(see_other(&format!("{}/scripts/{name}", ui.site.base)))
}

/// `?file=PATH`: the file to show.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    file: Option<String>,
}

/// The shown file: `wanted`, or the entrypoint.
async fn viewer(
    state: &AppState,
    bytes: Vec<u8>,
    files: &[FileInfo],
    wanted: Option<String>,
    entrypoint: &str,
) -> Result<Option<Viewer>, UiError> {
    let path = match wanted {
        Some(path) => {
            if !files.iter().any(|f| f.path == path) {
                return Err(DomainError::NotFound(format!(
                    "file: the bundle has no file {:?}",
                    path.chars().take(200).collect::<String>()
                ))
                .into());
            }
            path
        }
        None if files.iter().any(|f| f.path == entrypoint) => entrypoint.to_owned(),
        None => return Ok(None),
    };
    let Some(ShownFile {
        bytes,
        size,
        executable,
    }) = state
        .services
        .scripts
        .shown_file(bytes, path.clone())
        .await?
    else {
        return Ok(None);
    };
    let cut = (bytes.len() as u64) < size;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => Some(text),
        // Cut in the middle of a character: show up to it.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    Ok(Some(Viewer {
        lines: text.map(|t| highlight(&path, t)),
        path,
        size,
        executable,
        cut,
    }))
}

fn params_of(manifest: Option<&BundleManifest>) -> Option<Vec<ParamField>> {
    let m = manifest?;
    m.params.as_ref()?;
    Some(
        m.params()
            .into_iter()
            .map(|p| ParamField {
                name: p.name,
                secret: p.secret,
            })
            .collect(),
    )
}

/// `GET /ui/scripts/{name}/versions/{version}`: a version's files (one shown), and its Run form.
pub async fn version(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<FileQuery>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let (row, bytes): (ScriptVersion, Vec<u8>) =
        scripts.version_bundle(&ui.caller, &name, &version).await?;
    let enabled = scripts.enabled(&ui.caller, &name).await?;
    let m = manifest(&row.manifest);
    let files: Vec<FileInfo> = serde_json::from_value(row.files.clone()).unwrap_or_default();
    let entrypoint = m.as_ref().map(|m| m.entrypoint.clone()).unwrap_or_default();
    let shown = viewer(&state, bytes, &files, query.file, &entrypoint).await?;
    let here = format!(
        "{}/scripts/{}/versions/{}",
        ui.site.base, row.name, row.version
    );
    Ok(VersionPage {
        chrome: Chrome::new(&ui, "scripts"),
        files: links(&here, &files),
        params: params_of(m.as_ref()),
        description: m.and_then(|m| m.description).unwrap_or_default(),
        name: row.name,
        version: row.version,
        draft: false,
        enabled,
        sha256: row.sha256,
        size: row.size,
        signer: row.signer_key,
        by: row.uploaded_by,
        at: time(Some(row.created_at)),
        entrypoint,
        shown,
    }
    .into_response())
}

/// `GET /ui/scripts/{name}/drafts/{version}`: a draft's files (one shown), and how to sign it.
pub async fn draft(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<FileQuery>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let (row, bytes) = scripts.draft_bundle(&ui.caller, &name, &version).await?;
    let enabled = scripts.enabled(&ui.caller, &name).await?;
    let m = manifest(&row.manifest);
    let files: Vec<FileInfo> = serde_json::from_value(row.files.clone()).unwrap_or_default();
    let entrypoint = m.as_ref().map(|m| m.entrypoint.clone()).unwrap_or_default();
    let shown = viewer(&state, bytes, &files, query.file, &entrypoint).await?;
    let here = format!(
        "{}/scripts/{}/drafts/{}",
        ui.site.base, row.name, row.version
    );
    Ok(VersionPage {
        chrome: Chrome::new(&ui, "scripts"),
        files: links(&here, &files),
        params: None,
        description: m.and_then(|m| m.description).unwrap_or_default(),
        name: row.name,
        version: row.version,
        draft: true,
        enabled,
        sha256: row.sha256,
        size: row.size,
        signer: String::new(),
        by: row.author,
        at: time(Some(row.updated_at)),
        entrypoint,
        shown,
    }
    .into_response())
}

/// `?draft=VERSION`: edit that draft rather than the newest version.
#[derive(Debug, Deserialize)]
pub struct EditQuery {
    draft: Option<String>,
}

/// `GET /ui/scripts/{name}/edit`: the editor on the newest version's files (or a draft's),
/// with the next patch version proposed.
pub async fn edit(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(name): Path<String>,
    Query(query): Query<EditQuery>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let (from, version, bytes) = match query.draft {
        Some(draft) => {
            let (row, bytes) = scripts.draft_bundle(&ui.caller, &name, &draft).await?;
            (format!("draft {}", row.version), row.version, bytes)
        }
        None => {
            let newest = scripts
                .versions(&ui.caller, &name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| DomainError::NotFound(format!("no script {name:?}")))?;
            let next = newest
                .version
                .parse::<Version>()
                .map(|v| format!("{}.{}.{}", v.major, v.minor, v.patch + 1))
                .unwrap_or_default();
            let (_, bytes) = scripts
                .version_bundle(&ui.caller, &name, &newest.version)
                .await?;
            (newest.version, next, bytes)
        }
    };
    let mut files = Vec::new();
    let mut kept = Vec::new();
    for (path, file) in scripts.files(bytes).await? {
        match String::from_utf8(file.bytes) {
            Ok(text) => files.push(EditFile {
                rows: text.lines().count().clamp(4, 30) + 1,
                path,
                text,
                executable: file.executable,
            }),
            Err(e) => kept.push(KeptFile {
                path,
                size: e.as_bytes().len(),
            }),
        }
    }
    // The manifest last: the script first.
    files.sort_by_key(|f| (f.path == MANIFEST_FILE, f.path.clone()));
    Ok(EditPage {
        chrome: Chrome::new(&ui, "scripts"),
        name,
        from,
        version,
        files,
        kept,
    }
    .into_response())
}

/// `POST /ui/scripts/{name}/drafts`: the editor's files to `Scripts::save_draft`. The form
/// names every file it keeps (`file:PATH` with its text, `keep:PATH` for a file it cannot
/// edit); a file of the newest version it does not name is removed, as is one whose
/// `remove:PATH` box is ticked. A browser sends a text area's lines ending in CRLF: they are
/// saved ending in LF.
pub async fn save_draft(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(parts): Extension<Parts>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let scripts = &state.services.scripts;
    let version = parts
        .text("version")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| DomainError::BadRequest("version: give the draft a version".into()))?;
    let text = |bytes: &[u8], path: &str| -> Result<String, UiError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| DomainError::BadRequest(format!("files: {path:?} is not UTF-8 text")))?;
        Ok(text.replace("\r\n", "\n"))
    };
    let removed: BTreeSet<&str> = parts.prefixed("remove:").map(|(p, _)| p).collect();
    let executable: BTreeSet<&str> = parts.prefixed("exec:").map(|(p, _)| p).collect();
    let mut named: BTreeSet<String> = parts.prefixed("keep:").map(|(p, _)| p.to_owned()).collect();
    let mut edits: BTreeMap<String, Option<DraftFile>> = BTreeMap::new();
    for (path, bytes) in parts.prefixed("file:") {
        if removed.contains(path) {
            continue;
        }
        named.insert(path.to_owned());
        edits.insert(
            path.to_owned(),
            Some(DraftFile {
                text: text(bytes, path)?,
                executable: Some(executable.contains(path)),
            }),
        );
    }
    if let Some(path) = parts
        .text("new_path")
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
    {
        let content = text(parts.get("new_text").unwrap_or_default(), &path)?;
        named.insert(path.clone());
        edits.insert(
            path,
            Some(DraftFile {
                text: content,
                executable: Some(parts.get("new_exec").is_some()),
            }),
        );
    }
    // What the newest version holds and the form no longer names is removed.
    if let Some(newest) = scripts
        .versions(&ui.caller, &name)
        .await
        .ok()
        .and_then(|v| v.into_iter().next())
    {
        let files: Vec<FileInfo> = serde_json::from_value(newest.files).unwrap_or_default();
        for file in files {
            if !named.contains(&file.path) {
                edits.insert(file.path, None);
            }
        }
    }
    let draft = scripts
        .save_draft(&ui.caller, &name, &version, edits)
        .await?;
    Ok(see_other(&format!(
        "{}/scripts/{}/drafts/{}",
        ui.site.base, draft.name, draft.version
    )))
}

/// `POST /ui/scripts/{name}/drafts/{version}/delete`: `Scripts::delete_draft`.
pub async fn delete_draft(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, UiError> {
    state
        .services
        .scripts
        .delete_draft(&ui.caller, &name, &version)
        .await?;
    Ok(see_other(&format!("{}/scripts/{name}", ui.site.base)))
}
