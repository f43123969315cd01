//! API keys: the tenant's owner key the server makes itself (at first start, from
//! `OUTPOST_ADMIN_KEY`, or by `outpost-server admin-key rotate`), and the scoped keys made
//! through `/api/keys` (CONTRACT.md §9).
//!
//! A key is revoked, never deleted: the row stays so that the audit log's target still names
//! it and a revoked secret is recognised as revoked. Revocation is one conditional `UPDATE …
//! WHERE revoked_at IS NULL`, so two deletes at once revoke (and record) it once.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Set, TransactionSession, TransactionTrait,
};
use serde_json::json;

use super::{AuditRecord, Result, Store, StoreError, api_key, migrations, new_id, now};
use crate::credentials::{self, KeyKind};
use crate::domain::{Actor, AuditAction, AuditEvent, AuditTarget};

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
            scopes: Set(Some(new.scopes.into())),
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
        // Inside a caller's transaction, the caller tells again after its commit
        // (`Store::commit_credentials`).
        crate::credential_cache::changed();
        Ok(done.rows_affected == 1)
    }
}

/// The name of the owner keys the server itself makes (first start, `OUTPOST_ADMIN_KEY`,
/// `outpost-server admin-key rotate`): the ones a new owner key of that kind revokes.
pub const BOOTSTRAP_KEY_NAME: &str = "owner";

/// What [`Store::bootstrap`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrapped {
    /// A fresh database: the default tenant and its owner key, with the secret when it was
    /// generated (to save and show).
    Created(Option<String>),
    /// The given key is the owner key now; this many earlier owner keys were revoked.
    Replaced {
        /// Keys revoked.
        revoked: u64,
    },
    /// Nothing to do: no key given, or the given key is the owner key already.
    Unchanged,
    /// The given key was revoked before; it was not registered again.
    Revoked,
}

impl Store {
    /// See [`Store::bootstrap_now`]. In one write transaction, so that servers starting together
    /// on one database take turns (on PostgreSQL under an advisory lock too, since its `BEGIN`
    /// takes no lock): the second finds what the first made.
    pub async fn bootstrap(&self, admin_key: Option<&str>) -> Result<Bootstrapped> {
        let txn = self.begin_write().await?;
        if self.db.get_database_backend() == DbBackend::Postgres {
            txn.db
                .execute_unprepared(&format!(
                    "SELECT pg_advisory_xact_lock({})",
                    migrations::BOOTSTRAP_LOCK
                ))
                .await?;
        }
        let done = txn.bootstrap_now(admin_key).await?;
        txn.db.commit().await?;
        Ok(done)
    }
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// On an empty database, creates the default tenant and its owner key (`admin_key`, from
    /// `OUTPOST_ADMIN_KEY`, or a generated one, returned to be saved and shown once).
    ///
    /// On a database with a tenant, an `admin_key` not seen before becomes the default
    /// tenant's owner key and revokes the earlier ones the server made (see
    /// [`BOOTSTRAP_KEY_NAME`]): a changed `OUTPOST_ADMIN_KEY` replaces the old key rather than
    /// adding one. A key that was revoked is not registered again, so restarting with an old
    /// `OUTPOST_ADMIN_KEY` after a rotation does not bring it back.
    pub async fn bootstrap_now(&self, admin_key: Option<&str>) -> Result<Bootstrapped> {
        let Some(tenant) = self.default_tenant().await? else {
            let (_, secret) = self.create_tenant("default", admin_key).await?;
            return Ok(Bootstrapped::Created(admin_key.is_none().then_some(secret)));
        };
        let Some(key) = admin_key else {
            return Ok(Bootstrapped::Unchanged);
        };
        match self.api_key_by_hash(&credentials::hash_secret(key)).await? {
            Some(row) if row.revoked_at.is_some() => Ok(Bootstrapped::Revoked),
            Some(_) => Ok(Bootstrapped::Unchanged),
            None => {
                let revoked = self
                    .replace_owner_key(
                        &tenant.id,
                        key,
                        AuditAction::ApiKeyCreate,
                        Actor::system("OUTPOST_ADMIN_KEY", "a new OUTPOST_ADMIN_KEY at start"),
                    )
                    .await?;
                Ok(Bootstrapped::Replaced { revoked })
            }
        }
    }

    /// A new owner key for the default tenant, replacing (revoking) the earlier ones the
    /// server made: `outpost-server admin-key rotate`. Returns the secret and how many keys
    /// were revoked.
    pub async fn rotate_owner_key(&self) -> Result<(String, u64)> {
        let tenant = self.default_tenant().await?.ok_or_else(|| {
            StoreError::Config(
                "the database has no tenant yet: start the server once, it creates the owner key"
                    .into(),
            )
        })?;
        let secret = credentials::generate_secret(KeyKind::Api);
        let revoked = self
            .replace_owner_key(
                &tenant.id,
                &secret,
                AuditAction::ApiKeyRotate,
                Actor::system("admin-key rotate", "outpost-server admin-key rotate"),
            )
            .await?;
        Ok((secret, revoked))
    }

    /// Registers `secret` as the tenant's owner key and revokes the other keys the server
    /// made, in one transaction (never both valid or neither). Returns how many it revoked.
    async fn replace_owner_key(
        &self,
        tenant_id: &str,
        secret: &str,
        action: AuditAction,
        actor: Actor,
    ) -> Result<u64> {
        let txn = self.begin_write().await?;
        let id = txn.insert_owner_key(tenant_id, secret).await?;
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now()))
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .filter(api_key::Column::Name.eq(BOOTSTRAP_KEY_NAME))
            .filter(api_key::Column::Role.eq(crate::domain::Role::Owner.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key::Column::Id.ne(id.clone()))
            .exec(&txn.db)
            .await?
            .rows_affected;
        txn.append_audit_now(&AuditRecord {
            tenant_id: tenant_id.to_owned(),
            actor,
            address: None,
            event: AuditEvent::new(action, AuditTarget::ApiKey, id)
                .with(json!({"name": BOOTSTRAP_KEY_NAME, "role": "owner", "revoked": revoked})),
        })
        .await?;
        txn.db.commit().await?;
        crate::credential_cache::changed();
        Ok(revoked)
    }

    pub(super) async fn insert_owner_key(&self, tenant_id: &str, secret: &str) -> Result<String> {
        let id = new_id();
        api_key::ActiveModel {
            id: Set(id.clone()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(BOOTSTRAP_KEY_NAME.into()),
            key_hash: Set(credentials::hash_secret(secret)),
            role: Set(crate::domain::Role::Owner.as_str().into()),
            created_at: Set(now()),
            expires_at: Set(None),
            revoked_at: Set(None),
            owner_user_id: Set(None),
            scopes: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(id)
    }

    /// Creates an API key with `role` in a tenant and returns its secret (shown once). The
    /// accounts API will create keys of every role; until then this is how an admin or member
    /// key is made (by tools and tests on the server's host).
    pub async fn create_api_key(&self, tenant_id: &str, name: &str, role: &str) -> Result<String> {
        let secret = credentials::generate_secret(KeyKind::Api);
        api_key::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(name.to_owned()),
            key_hash: Set(credentials::hash_secret(&secret)),
            role: Set(role.to_owned()),
            created_at: Set(now()),
            expires_at: Set(None),
            revoked_at: Set(None),
            owner_user_id: Set(None),
            scopes: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(secret)
    }

    /// Finds the API key whose secret hashes to `hash` (revoked or not: the caller decides).
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<api_key::Model>> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hash))
            .one(&self.db)
            .await?)
    }
}
