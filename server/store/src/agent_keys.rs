//! Agent keys: the secrets agents connect with, each with its permissions (which commands its
//! agents may be sent), its tags and a status. An agent is bound to the key it first registered
//! with (see `agents`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};

use super::{Result, Store, agent_key, new_id, now};
use crate::credentials::{self, KeyKind};

/// How fresh an agent key's `last_used_at` is kept: it moves only when it is older than this.
pub const KEY_USE_GRANULARITY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Agent key statuses.
pub mod key_status {
    use crate::domain::KeyStatus;

    /// The key authenticates.
    pub const ACTIVE: &str = KeyStatus::Active.as_str();
    /// The key is refused until re-enabled.
    pub const DISABLED: &str = KeyStatus::Disabled.as_str();
}

/// Changes to an agent key.
#[derive(Debug, Clone, Default)]
pub struct AgentKeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New permission list.
    pub permissions: Option<Vec<String>>,
    /// New status (`active` or `disabled`).
    pub status: Option<String>,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Finds the agent key whose secret hashes to `hash`.
    pub async fn agent_key_by_hash(&self, hash: &str) -> Result<Option<agent_key::Model>> {
        Ok(agent_key::Entity::find()
            .filter(agent_key::Column::KeyHash.eq(hash))
            .one(&self.db)
            .await?)
    }

    /// Creates an agent key and returns it with its secret.
    pub async fn create_agent_key(
        &self,
        tenant_id: &str,
        name: &str,
        permissions: &[String],
        tags: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(agent_key::Model, String)> {
        let secret = credentials::generate_secret(KeyKind::Agent);
        let model = agent_key::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(name.to_owned()),
            key_hash: Set(credentials::hash_secret(&secret)),
            permissions: Set(permissions.iter().collect()),
            tags: Set(tags.iter().collect()),
            status: Set(key_status::ACTIVE.into()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            last_used_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok((model, secret))
    }

    /// Every agent key of a tenant, oldest first.
    pub async fn list_agent_keys(&self, tenant_id: &str) -> Result<Vec<agent_key::Model>> {
        Ok(agent_key::Entity::find()
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent_key::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// One agent key of a tenant.
    pub async fn get_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<agent_key::Model>> {
        Ok(agent_key::Entity::find_by_id(id.to_owned())
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Applies a patch; `None` when the key is not the tenant's.
    pub async fn update_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
        patch: AgentKeyPatch,
    ) -> Result<Option<agent_key::Model>> {
        let Some(existing) = self.get_agent_key(tenant_id, id).await? else {
            return Ok(None);
        };
        let mut model: agent_key::ActiveModel = existing.into();
        if let Some(name) = patch.name {
            model.name = Set(name);
        }
        if let Some(permissions) = patch.permissions {
            model.permissions = Set(permissions.into());
        }
        if let Some(status) = patch.status {
            model.status = Set(status);
        }
        let updated = model.update(&self.db).await;
        crate::credential_cache::agents_changed();
        Ok(Some(updated?))
    }

    /// Replaces a key's secret; the old one stops working with this commit.
    pub async fn regenerate_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(agent_key::Model, String)>> {
        let Some(existing) = self.get_agent_key(tenant_id, id).await? else {
            return Ok(None);
        };
        let secret = credentials::generate_secret(KeyKind::Agent);
        let mut model: agent_key::ActiveModel = existing.into();
        model.key_hash = Set(credentials::hash_secret(&secret));
        let updated = model.update(&self.db).await;
        crate::credential_cache::agents_changed();
        Ok(Some((updated?, secret)))
    }

    /// Deletes a key; `false` when it was not the tenant's.
    pub async fn delete_agent_key(&self, tenant_id: &str, id: &str) -> Result<bool> {
        let res = agent_key::Entity::delete_many()
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .filter(agent_key::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        // In a transaction (the key's service deletes it with its audit row), its commit
        // calls this again.
        crate::credential_cache::agents_changed();
        Ok(res.rows_affected > 0)
    }

    /// Records that a key was just used to connect, to the minute ([`KEY_USE_GRANULARITY`]):
    /// a fleet installed with one key connects through it thousands of times a minute, and
    /// each of those writes took the same row's lock. With 30,000 agents reconnecting to
    /// three nodes on PostgreSQL they queued on it for 23-37 s of the database's time, and the
    /// nodes' pools ran dry. Within the minute the statement matches no row, and PostgreSQL
    /// takes no lock for a row it does not change.
    pub async fn touch_agent_key(&self, tenant_id: &str, id: &str) -> Result<()> {
        let now = now();
        let stale = now - KEY_USE_GRANULARITY;
        agent_key::Entity::update_many()
            .col_expr(agent_key::Column::LastUsedAt, Expr::value(now))
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .filter(agent_key::Column::Id.eq(id))
            .filter(
                Condition::any()
                    .add(agent_key::Column::LastUsedAt.is_null())
                    .add(agent_key::Column::LastUsedAt.lt(stale)),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
