//! Scripts in the dashboard (CONTRACT.md §20): a script name's switch, the bytes of a version
//! (for reading its files and for the CLI's diff), and drafts.
//!
//! A draft is an unsigned bundle the server builds from an editor's files: the newest
//! version's files, with the ones sent replacing theirs. It is packed here and then walked by
//! the same archive walker an upload and an agent use, so a draft holds nothing an upload
//! could not (no path out of the bundle, no link, no bomb), and it is bounded
//! ([`MAX_DRAFT_BYTES`]). The server never signs it: the operator downloads its exact bytes,
//! signs them on their own machine, and sends the signature back; the draft becomes a version
//! only if its bytes are still the ones the signature covers (else `draft_changed`), so a
//! server that swaps a draft after the operator looked at it gets a signature for the wrong
//! hash. Drafts sit in tables of their own that no run and no agent download reads.

use std::collections::BTreeMap;
use std::io::Read as _;

use outpost_protocol::bundle::{
    self, BundleManifest, MANIFEST_FILE, SignatureFile, archive, limits,
};
use outpost_protocol::release::Version;
use serde_json::{Value, json};

use super::access::{Access, Action};
use super::audit::record_of;
use super::scripts::{ScriptVersion, Scripts, check_signature};
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError};
use outpost_store::{DraftRefused, NewDraft, library_draft};

/// The most a draft's files may hold together, unpacked: 10 MiB. An editor in a browser is
/// for scripts, not for data; a bigger bundle is packed and signed on the operator's machine
/// (`outpost scripts pack`).
pub const MAX_DRAFT_BYTES: u64 = 10 * 1024 * 1024;

/// A script name the library refuses: `/api/script-drafts` and `/ui/scripts/drafts` list the
/// drafts, so no script may be called that.
pub const RESERVED_NAME: &str = "drafts";

/// A draft as stored.
pub type Draft = library_draft::Model;

/// One file of a draft as an editor sends it.
#[derive(Debug, Clone)]
pub struct DraftFile {
    /// The file's text.
    pub text: String,
    /// Its execute bit; absent: the newest version's for that path, else not executable.
    pub executable: Option<bool>,
}

/// A file of a bundle with its content, as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct FileContent {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Carries an execute bit.
    pub executable: bool,
}

/// Checks a script name for the routes of this module, refusing the reserved one.
pub fn script_name(name: &str) -> Result<(), DomainError> {
    outpost_protocol::check::script_name(name)
        .map_err(|why| DomainError::BadRequest(format!("name: {why}")))?;
    if name == RESERVED_NAME {
        return Err(DomainError::BadRequest(format!(
            "name: {RESERVED_NAME:?} is reserved (the list of drafts); choose another name"
        )));
    }
    Ok(())
}

fn parse_version(version: &str) -> Result<Version, DomainError> {
    version
        .parse()
        .map_err(|e| DomainError::BadRequest(format!("version: {e}")))
}

/// Every file of a bundle with its content, stopping with 413 past `max` bytes unpacked. The
/// bundle was walked at upload (or built here), so a refusal now means it was changed.
pub fn unpack(bytes: &[u8], max: u64) -> Result<BTreeMap<String, FileContent>, DomainError> {
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let mut over = false;
    let walked = archive::walk(bytes, |path, kind, reader| {
        let archive::EntryKind::File { executable } = kind else {
            return Ok(());
        };
        let mut content = Vec::new();
        reader
            .take(max + 1 - total.min(max))
            .read_to_end(&mut content)?;
        total += content.len() as u64;
        if total > max {
            over = true;
            return Err(std::io::Error::other("too large"));
        }
        files.insert(
            path.to_owned(),
            FileContent {
                bytes: content,
                executable,
            },
        );
        Ok(())
    });
    if over {
        return Err(DomainError::TooLarge(format!(
            "the bundle's files hold more than {max} bytes unpacked, the most shown or edited \
             here ({} MiB)",
            max / (1024 * 1024)
        )));
    }
    walked.map_err(|refused| {
        DomainError::Internal(anyhow::anyhow!("a stored bundle is refused: {refused}"))
    })?;
    Ok(files)
}

/// The most of one file the dashboard shows: 1 MiB (a longer file says how long it is).
pub const MAX_SHOWN_BYTES: u64 = 1024 * 1024;

/// One file of a bundle as the dashboard shows it: its first [`MAX_SHOWN_BYTES`].
#[derive(Debug, Clone)]
pub struct ShownFile {
    /// The start of its content.
    pub bytes: Vec<u8>,
    /// Its whole size.
    pub size: u64,
    /// Carries an execute bit.
    pub executable: bool,
}

/// The start of the file at `path` in a bundle, or `None` when it has none.
pub fn shown_file(bundle: &[u8], path: &str) -> Result<Option<ShownFile>, DomainError> {
    let mut found = None;
    archive::walk(bundle, |p, kind, reader| {
        if let archive::EntryKind::File { executable } = kind
            && p == path
        {
            let mut bytes = Vec::new();
            let size = std::io::copy(
                reader,
                &mut LimitedSink {
                    into: &mut bytes,
                    left: MAX_SHOWN_BYTES,
                },
            )?;
            found = Some(ShownFile {
                bytes,
                size,
                executable,
            });
        }
        Ok(())
    })
    .map_err(|refused| {
        DomainError::Internal(anyhow::anyhow!("a stored bundle is refused: {refused}"))
    })?;
    Ok(found)
}

/// Keeps the first `left` bytes written to it and counts the rest.
struct LimitedSink<'a> {
    into: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.into.extend_from_slice(&buf[..keep]);
        self.left -= keep as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Scripts {
    /// The start of one file of a bundle, off the async threads (see [`shown_file`]).
    pub async fn shown_file(
        &self,
        bundle: Vec<u8>,
        path: String,
    ) -> Result<Option<ShownFile>, DomainError> {
        let _turn = self
            .checks
            .acquire()
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?;
        tokio::task::spawn_blocking(move || shown_file(&bundle, &path))
            .await
            .map_err(|e| DomainError::Internal(e.into()))?
    }

    /// Disables or enables a script name: a disabled name's runs are refused
    /// (`script_disabled`), its versions kept. 404 for a name with no version.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, name = %name, enabled))]
    pub async fn set_enabled(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        self.core.writable()?;
        script_name(name)?;
        self.versions(caller, name).await?;
        let action = if enabled {
            AuditAction::ScriptEnable
        } else {
            AuditAction::ScriptDisable
        };
        let audit = record_of(
            caller,
            AuditEvent::new(action, AuditTarget::Script, "").with(json!({ "name": name })),
        );
        self.core
            .store
            .set_library_enabled(
                &caller.tenant_id,
                name,
                enabled,
                caller.principal.to_string(),
                audit,
            )
            .await?;
        tracing::info!(
            "library script {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(())
    }

    /// Whether a script name is enabled (a name never switched is).
    pub async fn enabled(&self, caller: &Caller, name: &str) -> Result<bool, DomainError> {
        Ok(self
            .core
            .store
            .library_name(&caller.tenant_id, name)
            .await?
            .is_none_or(|n| n.enabled))
    }

    /// The names of the tenant's disabled scripts.
    pub async fn disabled(&self, caller: &Caller) -> Result<Vec<String>, DomainError> {
        Ok(self.core.store.library_disabled(&caller.tenant_id).await?)
    }

    /// One signed version with its bytes (404 when there is none).
    pub async fn version_bundle(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<(ScriptVersion, Vec<u8>), DomainError> {
        outpost_protocol::check::script_name(name)
            .map_err(|why| DomainError::BadRequest(format!("name: {why}")))?;
        let version = parse_version(version)?;
        let missing = || DomainError::NotFound(format!("no version {version} of script {name:?}"));
        let row = self
            .core
            .store
            .library_version(&caller.tenant_id, name, &version)
            .await?
            .ok_or_else(missing)?;
        let bytes = self
            .core
            .store
            .library_bundle(&caller.tenant_id, &row.sha256)
            .await?
            .ok_or_else(missing)?;
        Ok((row, bytes))
    }

    /// Every file of a bundle with its content (at most [`MAX_DRAFT_BYTES`] together), off the
    /// async threads and one of a few at once.
    pub async fn files(
        &self,
        bytes: Vec<u8>,
    ) -> Result<BTreeMap<String, FileContent>, DomainError> {
        let _turn = self
            .checks
            .acquire()
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?;
        tokio::task::spawn_blocking(move || unpack(&bytes, MAX_DRAFT_BYTES))
            .await
            .map_err(|e| DomainError::Internal(e.into()))?
    }

    /// Saves a draft of `name`: the newest version's files, with `files` replacing theirs
    /// (`None` removes one), `outpost-bundle.json`'s `version` set to `version`, the
    /// entrypoint executable. A draft of the same version is replaced. Built, then walked by
    /// the archive walker; at most [`MAX_DRAFT_BYTES`] of files.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
    pub async fn save_draft(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
        edits: BTreeMap<String, Option<DraftFile>>,
    ) -> Result<Draft, DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        self.core.writable()?;
        script_name(name)?;
        let version = parse_version(version)?;
        if edits.len() > limits::MAX_BUNDLE_ENTRIES {
            return Err(DomainError::BadRequest(format!(
                "files: {} files; a bundle holds at most {}",
                edits.len(),
                limits::MAX_BUNDLE_ENTRIES
            )));
        }
        for path in edits.keys() {
            bundle::bundle_path(path)
                .map_err(|why| DomainError::BadRequest(format!("files: {why}")))?;
            if path.ends_with('/') {
                return Err(DomainError::BadRequest(format!(
                    "files: {path:?} names a folder; folders follow from the files' paths"
                )));
            }
        }
        let sent: u64 = edits.values().flatten().map(|f| f.text.len() as u64).sum();
        if sent > MAX_DRAFT_BYTES {
            return Err(too_large(sent));
        }
        // A draft is a new version of a script of the library: the first is uploaded signed.
        let base = self
            .versions(caller, name)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::NotFound(format!("no script {name:?} in the library")))?;
        let bytes = self
            .core
            .store
            .library_bundle(&caller.tenant_id, &base.sha256)
            .await?
            .ok_or_else(|| DomainError::Internal(anyhow::anyhow!("a version without its bytes")))?;
        let mut files = self.files(bytes).await?;
        for (path, edit) in edits {
            match edit {
                None => {
                    if files.remove(&path).is_none() {
                        return Err(DomainError::BadRequest(format!(
                            "files: {path:?} is null, which removes a file, but the newest \
                             version has no such file"
                        )));
                    }
                }
                Some(edit) => {
                    let executable = edit
                        .executable
                        .or_else(|| files.get(&path).map(|f| f.executable))
                        .unwrap_or(false);
                    files.insert(
                        path,
                        FileContent {
                            bytes: edit.text.into_bytes(),
                            executable,
                        },
                    );
                }
            }
        }
        let manifest = manifest_for(name, &version, files.get(MANIFEST_FILE))?;
        files.insert(
            MANIFEST_FILE.to_owned(),
            FileContent {
                bytes: manifest.1,
                executable: false,
            },
        );
        let manifest = manifest.0;
        if let Some(entry) = files.get_mut(&manifest.entrypoint) {
            entry.executable = true;
        }
        let total: u64 = files.values().map(|f| f.bytes.len() as u64).sum();
        if total > MAX_DRAFT_BYTES {
            return Err(too_large(total));
        }
        let _turn = self
            .checks
            .acquire()
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?;
        let (bytes, contents) = tokio::task::spawn_blocking(move || {
            // The manifest first, as `tar` lists a bundle made by hand; then by path.
            let mut list: Vec<(&str, &[u8], bool)> =
                vec![(MANIFEST_FILE, files[MANIFEST_FILE].bytes.as_slice(), false)];
            list.extend(
                files
                    .iter()
                    .filter(|(path, _)| path.as_str() != MANIFEST_FILE)
                    .map(|(path, f)| (path.as_str(), f.bytes.as_slice(), f.executable)),
            );
            let bytes = archive::pack(&list)?;
            let contents = archive::walk(bytes.as_slice(), |_, _, r| {
                std::io::copy(r, &mut std::io::sink()).map(drop)
            });
            Ok::<_, std::io::Error>((bytes, contents))
        })
        .await
        .map_err(|e| DomainError::Internal(e.into()))?
        .map_err(|e| DomainError::BadRequest(format!("files: cannot be packed: {e}")))?;
        let contents =
            contents.map_err(|refused| DomainError::BadRequest(format!("draft: {refused}")))?;
        let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        let size = bytes.len() as u64;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScriptDraftSave, AuditTarget::Script, "").with(json!({
                "name": name,
                "version": version.to_string(),
                "sha256": sha256,
                "size": size,
                "base_version": base.version,
            })),
        );
        let new = NewDraft {
            tenant_id: caller.tenant_id.clone(),
            name: name.to_owned(),
            version,
            sha256,
            manifest: serde_json::to_value(&contents.manifest).unwrap_or(Value::Null),
            files: serde_json::to_value(&contents.files).unwrap_or(Value::Null),
            base_version: Some(base.version),
            author: caller.principal.to_string(),
        };
        match self
            .core
            .store
            .save_library_draft(new, bytes, self.core.library_max_bytes, audit)
            .await?
        {
            Ok(draft) => {
                tracing::info!(version = %draft.version, sha256 = %draft.sha256, "draft saved");
                Ok(draft)
            }
            Err(refused) => Err(draft_refusal(name, &version, refused)),
        }
    }

    /// The tenant's drafts, of one script or of all (at most `outpost_store::MAX_DRAFTS`).
    pub async fn drafts(
        &self,
        caller: &Caller,
        name: Option<&str>,
    ) -> Result<Vec<Draft>, DomainError> {
        if let Some(name) = name {
            script_name(name)?;
            self.versions(caller, name).await?;
        }
        Ok(self
            .core
            .store
            .library_drafts(&caller.tenant_id, name)
            .await?)
    }

    /// One draft with its bytes: exactly what a signature must cover.
    pub async fn draft_bundle(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<(Draft, Vec<u8>), DomainError> {
        script_name(name)?;
        let version = parse_version(version)?;
        let missing = || DomainError::NotFound(format!("no draft {version} of script {name:?}"));
        let draft = self
            .core
            .store
            .library_draft(&caller.tenant_id, name, &version)
            .await?
            .ok_or_else(missing)?;
        let bytes = self
            .core
            .store
            .library_draft_bundle(&caller.tenant_id, &draft.id)
            .await?
            .ok_or_else(missing)?;
        Ok((draft, bytes))
    }

    /// Turns a draft into a version with the signature file the operator made over its bytes
    /// (`outpost scripts sign --draft`). A signature for other bytes than the draft's current
    /// ones: 409 `draft_changed`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
    pub async fn sign_draft(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
        signature: &[u8],
    ) -> Result<ScriptVersion, DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        self.core.writable()?;
        let (draft, bytes) = self.draft_bundle(caller, name, version).await?;
        let version = parse_version(version)?;
        let sig: SignatureFile = serde_json::from_slice(signature).map_err(|e| {
            DomainError::BadRequest(format!("signature: not a signature file ({e})"))
        })?;
        if sig.sha256.to_ascii_lowercase() != draft.sha256 || sig.size != bytes.len() as u64 {
            return Err(changed(name, &version, &sig.sha256, &draft.sha256));
        }
        let sig = check_signature(&bytes, signature)?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScriptDraftSign, AuditTarget::Script, "").with(json!({
                "name": name,
                "version": version.to_string(),
                "sha256": draft.sha256,
                "size": bytes.len(),
                "signer_key": sig.key.trim(),
                "author": draft.author,
            })),
        );
        match self
            .core
            .store
            .sign_library_draft(
                &caller.tenant_id,
                name,
                &version,
                &sig.sha256,
                sig.key.trim().to_owned(),
                sig.signature.trim().to_owned(),
                caller.principal.to_string(),
                audit,
            )
            .await?
        {
            Ok(model) => {
                tracing::info!(version = %model.version, sha256 = %model.sha256, signer = %model.signer_key, "draft signed");
                Ok(model)
            }
            Err(DraftRefused::Changed(now)) => Err(changed(name, &version, &sig.sha256, &now)),
            Err(refused) => Err(draft_refusal(name, &version, refused)),
        }
    }

    /// Deletes a draft.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
    pub async fn delete_draft(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<Draft, DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        script_name(name)?;
        let version = parse_version(version)?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScriptDraftDelete, AuditTarget::Script, "")
                .with(json!({ "name": name, "version": version.to_string() })),
        );
        self.core
            .store
            .delete_library_draft(&caller.tenant_id, name, &version, audit)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no draft {version} of script {name:?}")))
    }
}

fn too_large(bytes: u64) -> DomainError {
    DomainError::TooLarge(format!(
        "files: the draft's files hold {bytes} bytes; a draft holds at most {MAX_DRAFT_BYTES} \
         (10 MiB): pack and sign a bigger bundle on your machine (outpost scripts pack)"
    ))
}

fn changed(name: &str, version: &Version, signed: &str, now: &str) -> DomainError {
    DomainError::Conflict {
        code: "draft_changed",
        message: format!(
            "the signature is for sha256 {signed}, but draft {name}@{version} now holds sha256 \
             {now}: it changed after it was downloaded; nothing was stored. Download it again, \
             read its diff and sign that (outpost scripts sign --draft {name}@{version})"
        ),
    }
}

fn draft_refusal(name: &str, version: &Version, refused: DraftRefused) -> DomainError {
    match refused {
        DraftRefused::VersionTaken(sha256) => DomainError::Conflict {
            code: "version_exists",
            message: format!(
                "{name}@{version} is already a signed version (sha256 {sha256}); a version never \
                 changes: choose another version for the draft"
            ),
        },
        DraftRefused::TooManyDrafts(max) => DomainError::Conflict {
            code: "too_many_drafts",
            message: format!(
                "the library holds {max} drafts, the most a tenant may; sign or delete some first"
            ),
        },
        DraftRefused::TooManyVersions(max) => DomainError::Conflict {
            code: "too_many_versions",
            message: format!(
                "{name} has {max} versions in the library, the most a script may have; delete \
                 old ones first (outpost scripts rm {name} VERSION)"
            ),
        },
        DraftRefused::Full { used, max } => DomainError::Conflict {
            code: "library_full",
            message: format!(
                "the library holds {used} bytes of bundles and drafts: this draft would take it \
                 past the {max} bytes a tenant's library may hold (--library-max-bytes)"
            ),
        },
        DraftRefused::Missing => {
            DomainError::NotFound(format!("no draft {version} of script {name:?}"))
        }
        DraftRefused::Changed(now) => DomainError::Conflict {
            code: "draft_changed",
            message: format!("draft {name}@{version} changed (now sha256 {now})"),
        },
    }
}

/// The draft's `outpost-bundle.json`: the one sent or carried over, naming `name`, with its
/// `version` set to the draft's (rewritten only when it differs, so an unchanged manifest
/// keeps its bytes). Answers it parsed and its bytes.
fn manifest_for(
    name: &str,
    version: &Version,
    file: Option<&FileContent>,
) -> Result<(BundleManifest, Vec<u8>), DomainError> {
    let bad = |why: String| DomainError::BadRequest(format!("files: {MANIFEST_FILE}: {why}"));
    let Some(file) = file else {
        return Err(bad("removed; every bundle needs one".into()));
    };
    if file.bytes.len() as u64 > limits::MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "{} bytes; the limit is {}",
            file.bytes.len(),
            limits::MAX_MANIFEST_BYTES
        )));
    }
    let mut value: Value =
        serde_json::from_slice(&file.bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(bad("not a JSON object".into()));
    };
    if object.get("name").and_then(Value::as_str) != Some(name) {
        return Err(bad(format!(
            "its name must be {name:?}, the script's (a draft never renames a script)"
        )));
    }
    let bytes = if object.get("version").and_then(Value::as_str) == Some(&version.to_string()) {
        file.bytes.clone()
    } else {
        object.insert("version".into(), Value::String(version.to_string()));
        let mut text = serde_json::to_string_pretty(&value)
            .map_err(|e| bad(format!("cannot be written ({e})")))?;
        text.push('\n');
        text.into_bytes()
    };
    let manifest = BundleManifest::parse(&bytes)
        .map_err(|why| DomainError::BadRequest(format!("files: {why}")))?;
    Ok((manifest, bytes))
}
