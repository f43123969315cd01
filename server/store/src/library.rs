//! The script library (CONTRACT.md §15): versions of signed bundles per tenant, and their bytes.
//!
//! A version is immutable: `(tenant, name, version)` names one bundle for good, so a job that
//! recorded a version always means the same bytes. Uploading the same bytes again answers the
//! stored version (a retried upload is harmless); other bytes under a taken version are
//! refused, naming the hash already there. The bytes live in `library_bundles`, apart from the
//! rows that listings and job creation read, and are read only to be downloaded.
//!
//! Drafts (CONTRACT.md §20) live in tables of their own, which nothing that resolves a run or
//! serves an agent reads: a draft becomes a version only through [`Store::sign_library_draft`],
//! which moves its bytes over in one transaction and only if they are still the bytes the
//! signature covers. A name's switch (`library_names`) is read where a run resolves.

use std::collections::HashMap;

use outpost_protocol::release::Version;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Select, Set, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use super::{
    AuditRecord, Result, Store, agent, library_bundle, library_draft, library_draft_bundle,
    library_name, library_script, new_id, now, tenant,
};

/// A version to store, checked by the service (signature, hash, archive rules).
#[derive(Debug, Clone)]
pub struct NewLibraryScript {
    /// The tenant.
    pub tenant_id: String,
    /// The bundle's name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The signer's public key (standard base64).
    pub signer_key: String,
    /// The signature (standard base64).
    pub signature: String,
    /// `outpost-bundle.json`, as parsed.
    pub manifest: Value,
    /// Its files.
    pub files: Value,
    /// Who uploads it (`user:<id>`, `key:<id>`).
    pub uploaded_by: String,
}

/// Versions one script may have at once: what `GET /api/scripts/{name}` lists stays bounded
/// (each version lists its files). Deleting old versions makes room.
pub const MAX_VERSIONS: u64 = 50;

/// Why a version was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryRefused {
    /// The version holds other bytes (their SHA-256).
    VersionTaken(String),
    /// The script has [`MAX_VERSIONS`] versions already.
    TooManyVersions(u64),
    /// The tenant's library would hold more than its bound.
    Full {
        /// The bytes it holds.
        used: u64,
        /// The bound.
        max: u64,
    },
}

/// Drafts a tenant may hold at once, every script together: what `GET /api/script-drafts`
/// lists stays bounded. Signing or deleting a draft makes room.
pub const MAX_DRAFTS: u64 = 100;

/// A draft to store, built and checked by the service (the archive walker, the limits).
#[derive(Debug, Clone)]
pub struct NewDraft {
    /// The tenant.
    pub tenant_id: String,
    /// The script's name.
    pub name: String,
    /// The version it becomes once signed.
    pub version: Version,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// `outpost-bundle.json`, as parsed.
    pub manifest: Value,
    /// Its files.
    pub files: Value,
    /// The signed version it was edited from.
    pub base_version: Option<String>,
    /// Who saves it (`user:<id>`, `key:<id>`).
    pub author: String,
}

/// Why a draft was not stored, signed or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftRefused {
    /// A signed version has this number already (its SHA-256).
    VersionTaken(String),
    /// The tenant holds [`MAX_DRAFTS`] drafts.
    TooManyDrafts(u64),
    /// The script has [`MAX_VERSIONS`] versions already (at signing).
    TooManyVersions(u64),
    /// The tenant's library would hold more than its bound.
    Full {
        /// The bytes it holds.
        used: u64,
        /// The bound.
        max: u64,
    },
    /// No such draft.
    Missing,
    /// The draft's bytes are no longer the ones signed: its SHA-256 now.
    Changed(String),
}

/// `select` ordered newest version first (by number: 1.10.0 before 1.9.0).
fn newest_first(select: Select<library_script::Entity>) -> Select<library_script::Entity> {
    select
        .order_by_desc(library_script::Column::Major)
        .order_by_desc(library_script::Column::Minor)
        .order_by_desc(library_script::Column::Patch)
}

/// The versions of one script of a tenant, newest first.
fn versions_of(tenant_id: &str, name: &str) -> Select<library_script::Entity> {
    newest_first(
        library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .filter(library_script::Column::Name.eq(name)),
    )
}

fn part(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Stores a version and its bytes with its audit row, in one transaction. The same bytes
    /// again answer the stored row and `false` (nothing written, nothing audited).
    pub async fn insert_library_script(
        &self,
        new: NewLibraryScript,
        bytes: Vec<u8>,
        max_bytes: u64,
        mut audit: AuditRecord,
    ) -> Result<std::result::Result<(library_script::Model, bool), LibraryRefused>> {
        let txn = self.begin_write().await?;
        // Uploads of one tenant take turns from here, so that two at once cannot both fit
        // under the bound with room for one (SQLite: one writer at a time already).
        if txn.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            tenant::Entity::find_by_id(new.tenant_id.as_str())
                .select_only()
                .column(tenant::Column::Id)
                .lock_exclusive()
                .into_tuple::<String>()
                .one(&txn.db)
                .await?;
        }
        if let Some(existing) = txn
            .library_version(&new.tenant_id, &new.name, &new.version)
            .await?
        {
            return Ok(if existing.sha256 == new.sha256 {
                Ok((existing, false))
            } else {
                Err(LibraryRefused::VersionTaken(existing.sha256))
            });
        }
        // The same bytes under another name or version cannot happen (the manifest inside
        // names them), but the hash is unique per tenant all the same: it is the download key.
        if let Some(existing) = txn.library_by_sha256(&new.tenant_id, &new.sha256).await? {
            return Ok(Err(LibraryRefused::VersionTaken(existing.sha256)));
        }
        let versions = library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(new.tenant_id.as_str()))
            .filter(library_script::Column::Name.eq(new.name.as_str()))
            .count(&txn.db)
            .await?;
        if versions >= MAX_VERSIONS {
            return Ok(Err(LibraryRefused::TooManyVersions(MAX_VERSIONS)));
        }
        let used = txn.library_bytes(&new.tenant_id).await?;
        if used.saturating_add(bytes.len() as u64) > max_bytes {
            return Ok(Err(LibraryRefused::Full {
                used,
                max: max_bytes,
            }));
        }
        let model = txn.insert_version_rows(new, bytes).await?;
        audit.event.target_id = format!("{}@{}", model.name, model.version);
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Ok((model, true)))
    }

    /// Inserts a version's row and its bytes (inside the caller's transaction).
    async fn insert_version_rows(
        &self,
        new: NewLibraryScript,
        bytes: Vec<u8>,
    ) -> Result<library_script::Model> {
        let id = new_id();
        let size = part(bytes.len() as u64);
        let model = library_script::ActiveModel {
            id: Set(id.clone()),
            tenant_id: Set(new.tenant_id.clone()),
            name: Set(new.name),
            version: Set(new.version.to_string()),
            major: Set(part(new.version.major)),
            minor: Set(part(new.version.minor)),
            patch: Set(part(new.version.patch)),
            sha256: Set(new.sha256),
            size: Set(size),
            signer_key: Set(new.signer_key),
            signature: Set(new.signature),
            manifest: Set(new.manifest),
            files: Set(new.files),
            uploaded_by: Set(new.uploaded_by),
            created_at: Set(now()),
        }
        .insert(&self.db)
        .await?;
        library_bundle::ActiveModel {
            script_id: Set(id.clone()),
            tenant_id: Set(new.tenant_id),
            data: Set(bytes),
        }
        .insert(&self.db)
        .await?;
        Ok(model)
    }

    /// The bundle bytes a tenant's library holds, every version of every script and every
    /// draft.
    pub async fn library_bytes(&self, tenant_id: &str) -> Result<u64> {
        // PostgreSQL sums a BIGINT as NUMERIC: cast back.
        let sum = || sea_orm::sea_query::Expr::cust("CAST(COALESCE(SUM(size), 0) AS BIGINT)");
        let versions: Option<i64> = library_script::Entity::find()
            .select_only()
            .column_as(sum(), "total")
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .into_tuple()
            .one(&self.db)
            .await?;
        let drafts: Option<i64> = library_draft::Entity::find()
            .select_only()
            .column_as(sum(), "total")
            .filter(library_draft::Column::TenantId.eq(tenant_id))
            .into_tuple()
            .one(&self.db)
            .await?;
        let count = |t: Option<i64>| t.map_or(0, |t| u64::try_from(t).unwrap_or(0));
        Ok(count(versions).saturating_add(count(drafts)))
    }

    /// One version of a script.
    pub async fn library_version(
        &self,
        tenant_id: &str,
        name: &str,
        version: &Version,
    ) -> Result<Option<library_script::Model>> {
        Ok(library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .filter(library_script::Column::Name.eq(name))
            .filter(library_script::Column::Major.eq(part(version.major)))
            .filter(library_script::Column::Minor.eq(part(version.minor)))
            .filter(library_script::Column::Patch.eq(part(version.patch)))
            .one(&self.db)
            .await?)
    }

    /// The version a job runs: `version`, or the newest when `None`.
    pub async fn library_resolve(
        &self,
        tenant_id: &str,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Option<library_script::Model>> {
        if let Some(version) = version {
            return self.library_version(tenant_id, name, version).await;
        }
        Ok(versions_of(tenant_id, name).one(&self.db).await?)
    }

    /// Every version of every script of a tenant, by name, newest version first.
    pub async fn library_scripts(&self, tenant_id: &str) -> Result<Vec<library_script::Model>> {
        let by_name = library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .order_by_asc(library_script::Column::Name);
        Ok(newest_first(by_name).all(&self.db).await?)
    }

    /// Every version of one script, newest first.
    pub async fn library_versions(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Vec<library_script::Model>> {
        Ok(versions_of(tenant_id, name).all(&self.db).await?)
    }

    /// The version whose bundle has this hash.
    pub async fn library_by_sha256(
        &self,
        tenant_id: &str,
        sha256: &str,
    ) -> Result<Option<library_script::Model>> {
        Ok(library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .filter(library_script::Column::Sha256.eq(sha256))
            .one(&self.db)
            .await?)
    }

    /// A bundle's bytes, by hash, within a tenant.
    pub async fn library_bundle(&self, tenant_id: &str, sha256: &str) -> Result<Option<Vec<u8>>> {
        let Some(script) = self.library_by_sha256(tenant_id, sha256).await? else {
            return Ok(None);
        };
        Ok(library_bundle::Entity::find_by_id(script.id)
            .filter(library_bundle::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?
            .map(|bundle| bundle.data))
    }

    /// Deletes one version and its bytes, with its audit row; `None` if there is none.
    pub async fn delete_library_script(
        &self,
        tenant_id: &str,
        name: &str,
        version: &Version,
        mut audit: AuditRecord,
    ) -> Result<Option<library_script::Model>> {
        let txn = self.begin_write().await?;
        let Some(model) = txn.library_version(tenant_id, name, version).await? else {
            return Ok(None);
        };
        library_bundle::Entity::delete_many()
            .filter(library_bundle::Column::ScriptId.eq(model.id.as_str()))
            .filter(library_bundle::Column::TenantId.eq(tenant_id))
            .exec(&txn.db)
            .await?;
        library_script::Entity::delete_many()
            .filter(library_script::Column::Id.eq(model.id.as_str()))
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .exec(&txn.db)
            .await?;
        audit.event.target_id = format!("{}@{}", model.name, model.version);
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Some(model))
    }

    /// Stores a draft and its bytes with its audit row, in one transaction; a draft of the
    /// same name and version is replaced (its bytes, files and author), which is what makes a
    /// signature made over the old bytes stale.
    pub async fn save_library_draft(
        &self,
        new: NewDraft,
        bytes: Vec<u8>,
        max_bytes: u64,
        mut audit: AuditRecord,
    ) -> Result<std::result::Result<library_draft::Model, DraftRefused>> {
        let txn = self.begin_write().await?;
        if txn.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            tenant::Entity::find_by_id(new.tenant_id.as_str())
                .select_only()
                .column(tenant::Column::Id)
                .lock_exclusive()
                .into_tuple::<String>()
                .one(&txn.db)
                .await?;
        }
        if let Some(existing) = txn
            .library_version(&new.tenant_id, &new.name, &new.version)
            .await?
        {
            return Ok(Err(DraftRefused::VersionTaken(existing.sha256)));
        }
        let existing = txn
            .library_draft(&new.tenant_id, &new.name, &new.version)
            .await?;
        if existing.is_none() {
            let drafts = library_draft::Entity::find()
                .filter(library_draft::Column::TenantId.eq(new.tenant_id.as_str()))
                .count(&txn.db)
                .await?;
            if drafts >= MAX_DRAFTS {
                return Ok(Err(DraftRefused::TooManyDrafts(MAX_DRAFTS)));
            }
        }
        let replaced = existing
            .as_ref()
            .map_or(0, |d| u64::try_from(d.size).unwrap_or(0));
        let used = txn
            .library_bytes(&new.tenant_id)
            .await?
            .saturating_sub(replaced);
        if used.saturating_add(bytes.len() as u64) > max_bytes {
            return Ok(Err(DraftRefused::Full {
                used,
                max: max_bytes,
            }));
        }
        let at = now();
        let size = part(bytes.len() as u64);
        let model = match existing {
            Some(existing) => {
                let mut row: library_draft::ActiveModel = existing.into();
                row.sha256 = Set(new.sha256);
                row.size = Set(size);
                row.manifest = Set(new.manifest);
                row.files = Set(new.files);
                row.base_version = Set(new.base_version);
                row.author = Set(new.author);
                row.updated_at = Set(at);
                let model = row.update(&txn.db).await?;
                library_draft_bundle::Entity::update_many()
                    .col_expr(
                        library_draft_bundle::Column::Data,
                        sea_orm::sea_query::Expr::value(bytes),
                    )
                    .filter(library_draft_bundle::Column::DraftId.eq(model.id.as_str()))
                    .exec(&txn.db)
                    .await?;
                model
            }
            None => {
                let id = new_id();
                let model = library_draft::ActiveModel {
                    id: Set(id.clone()),
                    tenant_id: Set(new.tenant_id.clone()),
                    name: Set(new.name),
                    version: Set(new.version.to_string()),
                    major: Set(part(new.version.major)),
                    minor: Set(part(new.version.minor)),
                    patch: Set(part(new.version.patch)),
                    sha256: Set(new.sha256),
                    size: Set(size),
                    manifest: Set(new.manifest),
                    files: Set(new.files),
                    base_version: Set(new.base_version),
                    author: Set(new.author),
                    created_at: Set(at),
                    updated_at: Set(at),
                }
                .insert(&txn.db)
                .await?;
                library_draft_bundle::ActiveModel {
                    draft_id: Set(id),
                    tenant_id: Set(new.tenant_id),
                    data: Set(bytes),
                }
                .insert(&txn.db)
                .await?;
                model
            }
        };
        audit.event.target_id = format!("{}@{}", model.name, model.version);
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Ok(model))
    }

    /// One draft.
    pub async fn library_draft(
        &self,
        tenant_id: &str,
        name: &str,
        version: &Version,
    ) -> Result<Option<library_draft::Model>> {
        Ok(library_draft::Entity::find()
            .filter(library_draft::Column::TenantId.eq(tenant_id))
            .filter(library_draft::Column::Name.eq(name))
            .filter(library_draft::Column::Major.eq(part(version.major)))
            .filter(library_draft::Column::Minor.eq(part(version.minor)))
            .filter(library_draft::Column::Patch.eq(part(version.patch)))
            .one(&self.db)
            .await?)
    }

    /// A tenant's drafts (of one script, or all), by name, newest version first; at most
    /// [`MAX_DRAFTS`] exist.
    pub async fn library_drafts(
        &self,
        tenant_id: &str,
        name: Option<&str>,
    ) -> Result<Vec<library_draft::Model>> {
        let mut select = library_draft::Entity::find()
            .filter(library_draft::Column::TenantId.eq(tenant_id))
            .order_by_asc(library_draft::Column::Name)
            .order_by_desc(library_draft::Column::Major)
            .order_by_desc(library_draft::Column::Minor)
            .order_by_desc(library_draft::Column::Patch);
        if let Some(name) = name {
            select = select.filter(library_draft::Column::Name.eq(name));
        }
        Ok(select.limit(MAX_DRAFTS).all(&self.db).await?)
    }

    /// A draft's bytes.
    pub async fn library_draft_bundle(
        &self,
        tenant_id: &str,
        draft_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(library_draft_bundle::Entity::find_by_id(draft_id)
            .filter(library_draft_bundle::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?
            .map(|b| b.data))
    }

    /// Turns a draft into a signed version, in one transaction, if its bytes are still the
    /// ones whose SHA-256 is `signed_sha256`: the version's row and bytes are written, the
    /// draft's deleted, and the audit row appended. The service has checked the signature
    /// over these bytes; the hash is compared again here so that a draft saved in between
    /// cannot slip under a signature made for other bytes.
    #[allow(clippy::too_many_arguments)]
    pub async fn sign_library_draft(
        &self,
        tenant_id: &str,
        name: &str,
        version: &Version,
        signed_sha256: &str,
        signer_key: String,
        signature: String,
        uploaded_by: String,
        mut audit: AuditRecord,
    ) -> Result<std::result::Result<library_script::Model, DraftRefused>> {
        let txn = self.begin_write().await?;
        let Some(draft) = txn.library_draft(tenant_id, name, version).await? else {
            return Ok(Err(DraftRefused::Missing));
        };
        if draft.sha256 != signed_sha256 {
            return Ok(Err(DraftRefused::Changed(draft.sha256)));
        }
        if let Some(existing) = txn.library_version(tenant_id, name, version).await? {
            return Ok(Err(DraftRefused::VersionTaken(existing.sha256)));
        }
        let versions = library_script::Entity::find()
            .filter(library_script::Column::TenantId.eq(tenant_id))
            .filter(library_script::Column::Name.eq(name))
            .count(&txn.db)
            .await?;
        if versions >= MAX_VERSIONS {
            return Ok(Err(DraftRefused::TooManyVersions(MAX_VERSIONS)));
        }
        let Some(bytes) = txn.library_draft_bundle(tenant_id, &draft.id).await? else {
            return Ok(Err(DraftRefused::Missing));
        };
        let new = NewLibraryScript {
            tenant_id: tenant_id.to_owned(),
            name: draft.name.clone(),
            version: *version,
            sha256: draft.sha256.clone(),
            signer_key,
            signature,
            manifest: draft.manifest.clone(),
            files: draft.files.clone(),
            uploaded_by,
        };
        library_draft_bundle::Entity::delete_many()
            .filter(library_draft_bundle::Column::DraftId.eq(draft.id.as_str()))
            .exec(&txn.db)
            .await?;
        library_draft::Entity::delete_many()
            .filter(library_draft::Column::Id.eq(draft.id.as_str()))
            .exec(&txn.db)
            .await?;
        let model = txn.insert_version_rows(new, bytes).await?;
        audit.event.target_id = format!("{}@{}", model.name, model.version);
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Ok(model))
    }

    /// Deletes a draft and its bytes, with its audit row; `None` if there is none.
    pub async fn delete_library_draft(
        &self,
        tenant_id: &str,
        name: &str,
        version: &Version,
        mut audit: AuditRecord,
    ) -> Result<Option<library_draft::Model>> {
        let txn = self.begin_write().await?;
        let Some(draft) = txn.library_draft(tenant_id, name, version).await? else {
            return Ok(None);
        };
        library_draft_bundle::Entity::delete_many()
            .filter(library_draft_bundle::Column::DraftId.eq(draft.id.as_str()))
            .exec(&txn.db)
            .await?;
        library_draft::Entity::delete_many()
            .filter(library_draft::Column::Id.eq(draft.id.as_str()))
            .exec(&txn.db)
            .await?;
        audit.event.target_id = format!("{}@{}", draft.name, draft.version);
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(Some(draft))
    }

    /// Switches a script name on or off, with its audit row.
    pub async fn set_library_enabled(
        &self,
        tenant_id: &str,
        name: &str,
        enabled: bool,
        changed_by: String,
        mut audit: AuditRecord,
    ) -> Result<()> {
        let txn = self.begin_write().await?;
        let existing = library_name::Entity::find_by_id((tenant_id.to_owned(), name.to_owned()))
            .one(&txn.db)
            .await?;
        match existing {
            Some(row) => {
                let mut row: library_name::ActiveModel = row.into();
                row.enabled = Set(enabled);
                row.changed_by = Set(changed_by);
                row.changed_at = Set(now());
                row.update(&txn.db).await?;
            }
            None => {
                library_name::ActiveModel {
                    tenant_id: Set(tenant_id.to_owned()),
                    name: Set(name.to_owned()),
                    enabled: Set(enabled),
                    changed_by: Set(changed_by),
                    changed_at: Set(now()),
                }
                .insert(&txn.db)
                .await?;
            }
        }
        audit.event.target_id = name.to_owned();
        txn.append_audit_now(&audit).await?;
        txn.db.commit().await?;
        Ok(())
    }

    /// A script name's switch, when it was ever switched (no row: enabled).
    pub async fn library_name(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<library_name::Model>> {
        Ok(
            library_name::Entity::find_by_id((tenant_id.to_owned(), name.to_owned()))
                .one(&self.db)
                .await?,
        )
    }

    /// The names of a tenant's disabled scripts.
    pub async fn library_disabled(&self, tenant_id: &str) -> Result<Vec<String>> {
        Ok(library_name::Entity::find()
            .select_only()
            .column(library_name::Column::Name)
            .filter(library_name::Column::TenantId.eq(tenant_id))
            .filter(library_name::Column::Enabled.eq(false))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Each agent's `library` policy as last registered (agents without one are absent).
    pub async fn agent_libraries(&self, tenant_id: &str) -> Result<HashMap<String, Value>> {
        let rows: Vec<(String, Option<Value>)> = agent::Entity::find()
            .select_only()
            .columns([agent::Column::Id, agent::Column::Library])
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Library.is_not_null())
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, library)| Some((id, library?)))
            .collect())
    }
}
