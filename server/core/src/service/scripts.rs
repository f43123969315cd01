//! The script library (CONTRACT.md §15): uploads, listings, deletes, the agents' downloads, and what
//! a job of a library script becomes.
//!
//! The server is a courier, not the authority. It refuses at upload what no agent would run (a
//! signature that does not verify, a hash or size that does not match, an archive the walker
//! refuses) so that an operator hears of a mistake at once rather than from every agent, but
//! it holds no private key and signs nothing: each agent verifies the bundle's hash and
//! signature against the keys its own manifest pins. A server that is taken over can serve
//! only what an operator already signed.
//!
//! The early refusal (`script_not_allowed`, stored and never sent) reads the `library` policy
//! each agent sent in its last `register`, kept on its row so every node sees it; like the
//! manifest check it is an early answer, and the agent checks again when the run arrives.
//!
//! Downloads read a blob of up to 16 MiB from the database, so they are bounded: a few at once
//! per agent key and a few more for the whole server, a wait for a turn, and a rate per key
//! past which the answer is `429`. An agent caches bundles by hash, so a well-behaved fleet
//! downloads each version once per host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use outpost_protocol::ParamInfo;
use outpost_protocol::bundle::{
    self, BundleManifest, LibraryPolicy, LibraryRun, SignatureFile, archive, limits,
};
use outpost_protocol::release::Version;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use super::limits::Limiter;
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError};
use outpost_store::{LibraryRefused, NewLibraryScript, agent_key, library_script};

/// Downloads served at once by this node, whatever the key.
pub const MAX_DOWNLOADS: usize = 16;
/// Downloads served at once for one agent key.
pub const MAX_DOWNLOADS_PER_KEY: usize = 4;
/// How long a download waits for its turn before it is answered `429`.
pub const DOWNLOAD_WAIT: Duration = Duration::from_secs(30);
/// Downloads one agent key may start a minute (a fleet sharing a key fetches a new version
/// once per host; agents cache by hash).
pub const DOWNLOADS_PER_MINUTE: u32 = 600;
/// What one tenant's library may hold unless `--library-max-bytes` says otherwise (the
/// flag's default, `config::DEFAULT_LIBRARY_MAX_BYTES`, is the same).
pub const DEFAULT_LIBRARY_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Uploads checked at once (each may inflate up to 256 MiB through the walker).
const MAX_CHECKS: usize = 2;

/// A version of a library script, as stored.
pub type ScriptVersion = library_script::Model;

/// A script's name with its newest version, as `GET /api/scripts` lists them.
#[derive(Debug)]
pub struct ScriptSummary {
    /// The newest version.
    pub latest: ScriptVersion,
    /// How many versions are stored.
    pub versions: usize,
}

/// A library run decided for a job: the version and what goes into `data.library`.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The script's name (without `@version`).
    pub name: String,
    /// What the agent is told.
    pub run: LibraryRun,
    /// Parameters the bundle declares secret.
    pub secret_params: Vec<String>,
}

/// The script library.
#[derive(Clone)]
pub struct Scripts {
    pub(super) core: Arc<Core>,
    downloads: Arc<Semaphore>,
    per_key: Arc<DashMap<String, Arc<Semaphore>>>,
    rate: Arc<Limiter>,
    pub(super) checks: Arc<Semaphore>,
}

impl Scripts {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
            per_key: Arc::new(DashMap::new()),
            rate: Arc::new(Limiter::new(DOWNLOADS_PER_MINUTE, 65_536)),
            checks: Arc::new(Semaphore::new(MAX_CHECKS)),
        }
    }

    /// Checks and stores an uploaded bundle with its signature file (`BUNDLE.sig`). Answers
    /// the stored version and whether it is new (the same bytes again are not).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, size = bytes.len()))]
    pub async fn upload(
        &self,
        caller: &Caller,
        bytes: Vec<u8>,
        signature: &[u8],
    ) -> Result<(ScriptVersion, bool), DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        self.core.writable()?;
        let size = bytes.len() as u64;
        if size > limits::MAX_BUNDLE_BYTES {
            return Err(DomainError::TooLarge(format!(
                "bundle: {size} bytes; the limit is {} (16 MiB)",
                limits::MAX_BUNDLE_BYTES
            )));
        }
        if size == 0 {
            return Err(DomainError::BadRequest("bundle: the part is empty".into()));
        }
        let sig = check_signature(&bytes, signature)?;
        let _turn = self
            .checks
            .acquire()
            .await
            .map_err(|_| DomainError::Unavailable("the server is shutting down".into()))?;
        let (bytes, contents) = tokio::task::spawn_blocking(move || {
            let contents = archive::walk(bytes.as_slice(), |_, _, r| {
                std::io::copy(r, &mut std::io::sink()).map(drop)
            });
            (bytes, contents)
        })
        .await
        .map_err(|e| DomainError::Internal(e.into()))?;
        let contents =
            contents.map_err(|refused| DomainError::BadRequest(format!("bundle: {refused}")))?;
        let manifest = contents.manifest;
        if manifest.name == super::drafts::RESERVED_NAME {
            return Err(DomainError::BadRequest(format!(
                "bundle: {}: name {:?} is reserved (the list of drafts); choose another name",
                bundle::MANIFEST_FILE,
                manifest.name
            )));
        }
        let new = NewLibraryScript {
            tenant_id: caller.tenant_id.clone(),
            name: manifest.name.clone(),
            version: manifest.version,
            sha256: sig.sha256.clone(),
            signer_key: sig.key.trim().to_owned(),
            signature: sig.signature.trim().to_owned(),
            manifest: serde_json::to_value(&manifest).unwrap_or(Value::Null),
            files: serde_json::to_value(&contents.files).unwrap_or(Value::Null),
            uploaded_by: caller.principal.to_string(),
        };
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScriptUpload, AuditTarget::Script, "").with(json!({
                "name": manifest.name,
                "version": manifest.version.to_string(),
                "sha256": sig.sha256,
                "size": size,
                "signer_key": new.signer_key,
            })),
        );
        match self
            .core
            .store
            .insert_library_script(new, bytes, self.core.library_max_bytes, audit)
            .await?
        {
            Ok((model, created)) => {
                if created {
                    tracing::info!(name = %model.name, version = %model.version, sha256 = %model.sha256, "library script uploaded");
                }
                Ok((model, created))
            }
            Err(LibraryRefused::TooManyVersions(max)) => Err(DomainError::Conflict {
                code: "too_many_versions",
                message: format!(
                    "{} has {max} versions in the library, the most a script may have; delete \
                     old ones first (outpost scripts rm {} VERSION)",
                    manifest.name, manifest.name
                ),
            }),
            Err(LibraryRefused::Full { used, max }) => Err(DomainError::Conflict {
                code: "library_full",
                message: format!(
                    "the library holds {used} bytes of bundles and this one is {size}: more \
                     than the {max} bytes a tenant's library may hold (--library-max-bytes); \
                     delete versions no longer run first (outpost scripts rm NAME VERSION)"
                ),
            }),
            Err(LibraryRefused::VersionTaken(sha256)) => Err(DomainError::Conflict {
                code: "version_exists",
                message: format!(
                    "{}@{} is already in the library with other bytes (sha256 {sha256}); a version \
                     never changes: bump the version in {} and sign again",
                    manifest.name,
                    manifest.version,
                    bundle::MANIFEST_FILE
                ),
            }),
        }
    }

    /// Every script of the caller's tenant with its newest version, by name.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<ScriptSummary>, DomainError> {
        let rows = self.core.store.library_scripts(&caller.tenant_id).await?;
        let mut out: Vec<ScriptSummary> = Vec::new();
        for row in rows {
            match out.last_mut() {
                Some(last) if last.latest.name == row.name => last.versions += 1,
                _ => out.push(ScriptSummary {
                    latest: row,
                    versions: 1,
                }),
            }
        }
        Ok(out)
    }

    /// Every version of one script, newest first; 404 when it has none.
    pub async fn versions(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<ScriptVersion>, DomainError> {
        outpost_protocol::check::script_name(name)
            .map_err(|why| DomainError::BadRequest(format!("name: {why}")))?;
        let rows = self
            .core
            .store
            .library_versions(&caller.tenant_id, name)
            .await?;
        if rows.is_empty() {
            return Err(DomainError::NotFound(format!(
                "no script {name:?} in the library"
            )));
        }
        Ok(rows)
    }

    /// Deletes one version. Jobs that ran it keep their record; an agent that cached it keeps
    /// its copy, but no new job resolves to it.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, name = %name))]
    pub async fn delete(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<ScriptVersion, DomainError> {
        Access::require(caller, Action::ManageScripts)?;
        outpost_protocol::check::script_name(name)
            .map_err(|why| DomainError::BadRequest(format!("name: {why}")))?;
        let version: Version = version
            .parse()
            .map_err(|e| DomainError::BadRequest(format!("version: {e}")))?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::ScriptDelete, AuditTarget::Script, "")
                .with(json!({ "name": name, "version": version.to_string() })),
        );
        let deleted = self
            .core
            .store
            .delete_library_script(&caller.tenant_id, name, &version, audit)
            .await?
            .ok_or_else(|| {
                DomainError::NotFound(format!("no version {version} of script {name:?}"))
            })?;
        tracing::info!(version = %deleted.version, sha256 = %deleted.sha256, "library script deleted");
        Ok(deleted)
    }

    /// A bundle's bytes for an agent of `key`'s tenant, with the permit that bounds how many
    /// are being sent (hold it until the body is sent). 404 for a hash the tenant does not
    /// have, whoever else has it.
    #[tracing::instrument(skip_all, fields(tenant_id = %key.tenant_id, key_id = %key.id))]
    pub async fn download(
        &self,
        key: &agent_key::Model,
        sha256: &str,
    ) -> Result<(Vec<u8>, Download), DomainError> {
        bundle::sha256_hex(sha256)
            .map_err(|why| DomainError::BadRequest(format!("sha256: {why}")))?;
        if let Err(wait) = self.rate.check(key.id.as_str(), Instant::now()) {
            return Err(DomainError::RateLimited {
                message: format!(
                    "rate limit: at most {DOWNLOADS_PER_MINUTE} bundle downloads a minute per agent key"
                ),
                retry_after_s: wait.as_secs().max(1),
            });
        }
        let per_key = self
            .per_key
            .entry(key.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_DOWNLOADS_PER_KEY)))
            .clone();
        let busy = || DomainError::RateLimited {
            message: format!(
                "too many bundle downloads at once (at most {MAX_DOWNLOADS_PER_KEY} per agent key, \
                 {MAX_DOWNLOADS} per server node); try again"
            ),
            retry_after_s: 1,
        };
        let permits = tokio::time::timeout(DOWNLOAD_WAIT, async {
            let key_permit = per_key.acquire_owned().await.ok()?;
            let node_permit = self.downloads.clone().acquire_owned().await.ok()?;
            Some((key_permit, node_permit))
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(busy)?;
        // Forget keys nobody downloads with (the map would otherwise grow with every key).
        if self.per_key.len() > 4_096 {
            self.per_key
                .retain(|_, s| s.available_permits() < MAX_DOWNLOADS_PER_KEY);
        }
        let bytes = self
            .core
            .store
            .library_bundle(&key.tenant_id, sha256)
            .await?
            .ok_or_else(|| {
                DomainError::NotFound(format!("no bundle {sha256} in this tenant's library"))
            })?;
        outpost_store::metrics::library_download(bytes.len());
        Ok((bytes, Download { _permits: permits }))
    }
}

/// Held while a download's body is sent: the bound on blobs in flight.
pub struct Download {
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Parses the signature file and checks it against the bytes: shape, hash, size, and the
/// Ed25519 signature over [`bundle::signed_message`]. Each refusal names what was wrong.
pub(super) fn check_signature(
    bytes: &[u8],
    signature: &[u8],
) -> Result<SignatureFile, DomainError> {
    let bad = |why: String| DomainError::BadRequest(format!("signature: {why}"));
    if signature.is_empty() {
        return Err(bad(
            "the part is empty; sign the bundle with `outpost scripts sign BUNDLE --key FILE`"
                .into(),
        ));
    }
    let sig: SignatureFile = serde_json::from_slice(signature)
        .map_err(|e| bad(format!("not a signature file ({e})")))?;
    sig.check().map_err(bad)?;
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes));
    if sig.sha256 != sha256 {
        return Err(bad(format!(
            "it is for a bundle with sha256 {}, but this bundle's is {sha256}",
            sig.sha256
        )));
    }
    if sig.size != bytes.len() as u64 {
        return Err(bad(format!(
            "it is for a bundle of {} bytes, but this one has {}",
            sig.size,
            bytes.len()
        )));
    }
    let key = bundle::public_key(&sig.key).map_err(|why| bad(format!("key: {why}")))?;
    let signature = sig.signature_bytes().map_err(bad)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(
            bundle::signed_message(&sha256, sig.size).as_bytes(),
            &signature,
        )
        .map_err(|_| {
            bad(format!(
                "it does not verify with key {}: the bundle or the signature was changed, or \
                 they do not belong together",
                sig.key.trim()
            ))
        })?;
    Ok(sig)
}

/// Resolves a `run`'s `data.script` against the tenant's library: `name@version` must name a
/// stored version; a plain name that the library holds runs its newest version; any other
/// name is a manifest script (`None`).
pub(super) async fn resolve(
    core: &Core,
    tenant_id: &str,
    reference: &str,
) -> Result<Option<Resolved>, DomainError> {
    let (name, version) = bundle::split_reference(reference)
        .map_err(|why| DomainError::BadRequest(format!("data.script: {why}")))?;
    let Some(row) = core
        .store
        .library_resolve(tenant_id, name, version.as_ref())
        .await?
    else {
        return match version {
            Some(version) => Err(DomainError::Unprocessable(format!(
                "data.script: the library has no version {version} of {name:?}"
            ))),
            None => Ok(None),
        };
    };
    if core
        .store
        .library_name(tenant_id, name)
        .await?
        .is_some_and(|n| !n.enabled)
    {
        return Err(DomainError::Conflict {
            code: "script_disabled",
            message: format!(
                "library script {name:?} is disabled: its runs are refused until an admin \
                 enables it again (PATCH /api/scripts/{name} {{\"enabled\": true}}, or its page)"
            ),
        });
    }
    let manifest: Option<BundleManifest> = serde_json::from_value(row.manifest.clone()).ok();
    let version: Version = row
        .version
        .parse()
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("stored version: {e}")))?;
    Ok(Some(Resolved {
        name: row.name.clone(),
        run: LibraryRun {
            version,
            sha256: row.sha256.clone(),
            size: u64::try_from(row.size).unwrap_or(0),
            key: row.signer_key.clone(),
            signature: row.signature.clone(),
        },
        secret_params: manifest
            .map(|m| {
                m.params()
                    .into_iter()
                    .filter(|p: &ParamInfo| p.secret)
                    .map(|p| p.name)
                    .collect()
            })
            .unwrap_or_default(),
    }))
}

/// Why an agent will refuse a library run: it registered no `library` policy, its `allow`
/// patterns do not match the name, or its `keys` do not hold the signer. `None`: it may run.
/// Like the manifest check, an early answer: the agent decides again on arrival.
pub fn library_refusal(
    agent_id: &str,
    policy: Option<&Value>,
    resolved: &Resolved,
) -> Option<String> {
    let name = &resolved.name;
    let Some(policy) = policy.and_then(|p| serde_json::from_value::<LibraryPolicy>(p.clone()).ok())
    else {
        return Some(format!(
            "agent {agent_id} runs no library scripts: its manifest has no \"library\" section \
             (add \"library\": {{\"allow\": [\"{name}\"], \"keys\": [\"<signer's public key>\"]}})"
        ));
    };
    if !policy.allows(name) {
        let shown: Vec<&str> = policy.allow.iter().take(10).map(String::as_str).collect();
        return Some(format!(
            "agent {agent_id} does not allow library script {name:?}: its manifest's \
             library.allow is [{}]",
            shown.join(", ")
        ));
    }
    if !policy.trusts(&resolved.run.key) {
        return Some(format!(
            "agent {agent_id} does not trust the key that signed {name}@{}: {} is not in its \
             manifest's library.keys",
            resolved.run.version, resolved.run.key
        ));
    }
    None
}
