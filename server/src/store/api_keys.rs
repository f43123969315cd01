//! Scoped API keys made through `/api/keys` (SPEC §9).
//!
//! A key is revoked, never deleted: the row stays so that the audit log's target still names
//! it and a revoked secret is recognised as revoked. Revocation is one conditional `UPDATE …
//! WHERE revoked_at IS NULL`, so two deletes at once revoke (and record) it once.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use serde_json::Value;

use super::{Result, Store, api_key, new_id, now};
use crate::credentials::{self, KeyKind};

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Owning tenant.
    pub tenant_id: String,
    /// The user it belongs to; `None` when a key made by the server makes it.
    pub owner_user_id: Option<String>,
    /// Its name, for people.
    pub name: String,
    /// The role it acts with when it has no owner (an owned key acts with its owner's
    /// current role; this is the role it was made under, kept for the record).
    pub role: String,
    /// Its scopes, as stored (`["jobs:read", …]`).
    pub scopes: Vec<String>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

impl<C: ConnectionTrait> Store<C> {
    /// Creates a key and returns its row and its secret (shown once).
    pub async fn insert_api_key(&self, new: NewApiKey) -> Result<(api_key::Model, String)> {
        let secret = credentials::generate_secret(KeyKind::Api);
        let row = api_key::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(new.tenant_id),
            name: Set(new.name),
            key_hash: Set(credentials::hash_secret(&secret)),
            role: Set(new.role),
            created_at: Set(now()),
            expires_at: Set(Some(new.expires_at)),
            revoked_at: Set(None),
            owner_user_id: Set(new.owner_user_id),
            scopes: Set(Some(Value::from(new.scopes))),
        }
        .insert(&self.db)
        .await?;
        Ok((row, secret))
    }

    /// The tenant's keys that are not revoked (of one owner when `owner` is given), oldest
    /// first.
    pub async fn list_api_keys(
        &self,
        tenant_id: &str,
        owner: Option<&str>,
    ) -> Result<Vec<api_key::Model>> {
        let mut query = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .filter(api_key::Column::RevokedAt.is_null());
        if let Some(owner) = owner {
            query = query.filter(api_key::Column::OwnerUserId.eq(owner));
        }
        Ok(query
            .order_by_asc(api_key::Column::CreatedAt)
            .order_by_asc(api_key::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// One key of the tenant that is not revoked.
    pub async fn get_api_key(&self, tenant_id: &str, id: &str) -> Result<Option<api_key::Model>> {
        Ok(api_key::Entity::find_by_id(id.to_owned())
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?)
    }

    /// Revokes a key; `false` when it was not there or already revoked.
    pub async fn revoke_api_key(&self, tenant_id: &str, id: &str) -> Result<bool> {
        let done = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now()))
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected == 1)
    }
}
