//! Releases: signed agent and supervisor builds. Global rows (not tenant data): see
//! [`super::entities::release`].

use outpost_protocol::release::Version;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, TransactionSession,
    TransactionTrait,
};

use serde_json::json;

use super::{AuditRecord, Result, Store, StoreError, release};
use crate::domain::{Actor, AuditAction, AuditEvent, AuditTarget};

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Records the artifacts of one release in one transaction. Releases are immutable: a
    /// (version, target) that already holds any artifact is refused, so a published version
    /// always means the same bytes.
    pub async fn insert_release(&self, rows: Vec<release::Model>) -> Result<()> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let txn = super::begin_write(&self.db).await?;
        let existing = release::Entity::find()
            .filter(release::Column::Version.eq(&first.version))
            .filter(release::Column::Target.eq(&first.target))
            .one(&txn)
            .await?;
        if existing.is_some() {
            return Err(StoreError::Config(format!(
                "release {} for {} is already published; releases are immutable, publish a new version",
                first.version, first.target
            )));
        }
        let audit = json!({
            "version": first.version,
            "target": first.target,
            "public_key": first.public_key,
            "artifacts": rows
                .iter()
                .map(|r| json!({"name": r.name, "sha256": r.sha256, "size": r.size}))
                .collect::<Vec<_>>(),
        });
        let target_id = format!("{}/{}", first.version, first.target);
        let models: Vec<release::ActiveModel> = rows.into_iter().map(Into::into).collect();
        release::Entity::insert_many(models).exec(&txn).await?;
        // Releases serve every tenant; the server's own tenant (the first, whose owner runs
        // the server) records them. A database without a tenant yet has no log to record in.
        let txn = Store { db: txn };
        if let Some(tenant) = txn.default_tenant().await? {
            txn.append_audit_now(&AuditRecord {
                tenant_id: tenant.id,
                actor: Actor::system("release publish", "outpost-server release publish"),
                address: None,
                event: AuditEvent::new(
                    AuditAction::ReleasePublish,
                    AuditTarget::Release,
                    target_id,
                )
                .with(audit),
            })
            .await?;
        }
        txn.db.commit().await?;
        Ok(())
    }

    /// The highest version published for `target` (any artifact).
    pub async fn latest_release_version(&self, target: &str) -> Result<Option<Version>> {
        self.latest_where(target, None).await
    }

    /// The highest version for `target` that holds artifact `name`.
    pub async fn latest_artifact_version(
        &self,
        target: &str,
        name: &str,
    ) -> Result<Option<Version>> {
        self.latest_where(target, Some(name)).await
    }

    async fn latest_where(&self, target: &str, name: Option<&str>) -> Result<Option<Version>> {
        let mut query = release::Entity::find().filter(release::Column::Target.eq(target));
        if let Some(name) = name {
            query = query.filter(release::Column::Name.eq(name));
        }
        let row = query
            .order_by_desc(release::Column::Major)
            .order_by_desc(release::Column::Minor)
            .order_by_desc(release::Column::Patch)
            .one(&self.db)
            .await?;
        Ok(row.and_then(|r| r.version.parse().ok()))
    }

    /// Whether `version` is published with artifact `name` for any target.
    pub async fn artifact_published(&self, version: &Version, name: &str) -> Result<bool> {
        Ok(release::Entity::find()
            .filter(release::Column::Version.eq(version.to_string()))
            .filter(release::Column::Name.eq(name))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Whether any release is published, for any target: from then on the server's built-in
    /// builds are not served (`outpost_core::builtin`).
    pub async fn any_release_published(&self) -> Result<bool> {
        Ok(release::Entity::find().one(&self.db).await?.is_some())
    }

    /// The public key of the most recently published release, any target (what `/deploy.sh`
    /// offers natively installed supervisors to pin).
    pub async fn latest_release_public_key(&self) -> Result<Option<String>> {
        Ok(release::Entity::find()
            .order_by_desc(release::Column::PublishedAt)
            .one(&self.db)
            .await?
            .map(|r| r.public_key))
    }

    /// Every artifact of one release, by name.
    pub async fn release_artifacts(
        &self,
        version: &Version,
        target: &str,
    ) -> Result<Vec<release::Model>> {
        Ok(release::Entity::find()
            .filter(release::Column::Version.eq(version.to_string()))
            .filter(release::Column::Target.eq(target))
            .order_by_asc(release::Column::Name)
            .all(&self.db)
            .await?)
    }
}
