//! Tenants: creating one (with its owner key and the first row of its audit log), the default
//! one, their plan quotas and their usage (CONTRACT.md §9).
//!
//! A quota (`max_agents`, `max_schedules`, `max_users`; `None` is unlimited) is checked in the
//! transaction that creates the thing it counts: the tenant's row is locked first
//! (`SELECT … FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises every writer),
//! then its things are counted and the new one inserted. Two creations at once in a tenant
//! one short of its quota cannot both pass, on one node or several.
//!
//! A first registration of an agent only takes that lock when the tenant has a `max_agents`:
//! the quota is read first, without a lock, and a tenant without one (the usual self-hosted
//! server) registers new agents as before, in parallel. The cost is one narrow window: a
//! registration that read "unlimited" just before a quota was set may still complete after it.
//! Lowering a quota below the current count removes nothing; it only refuses new creations.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set, SqlErr, Statement, TransactionSession, TransactionTrait,
};
use serde_json::json;

use super::users::email_key;
use super::{AuditRecord, Result, Store, StoreError, agent, new_id, now, tenant, user};
use crate::credentials::{self, KeyKind};
use crate::domain::{Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, Role, UserStatus};

/// The quotas a tenant has; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// The most agents.
    pub max_agents: Option<i64>,
    /// The most schedules (enforced where schedules are created).
    pub max_schedules: Option<i64>,
    /// The most users (invited ones count).
    pub max_users: Option<i64>,
}

impl Quotas {
    /// A tenant's quotas.
    pub fn of(tenant: &tenant::Model) -> Self {
        Self {
            max_agents: tenant.max_agents,
            max_schedules: tenant.max_schedules,
            max_users: tenant.max_users,
        }
    }
}

/// What a tenant holds of what its quotas count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Agents registered (connected or not), until forgotten.
    pub agents: u64,
    /// Users, invited ones included.
    pub users: u64,
    /// Schedules, paused ones included.
    pub schedules: u64,
}

/// A tenant with its usage.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantUsage {
    /// The row (name, quotas).
    pub tenant: tenant::Model,
    /// What it holds.
    pub usage: Usage,
}

/// A change to a tenant: `None` leaves a field as it is; `Some(None)` makes a quota
/// unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new `max_agents`.
    pub max_agents: Option<Option<i64>>,
    /// A new `max_schedules`.
    pub max_schedules: Option<Option<i64>>,
    /// A new `max_users`.
    pub max_users: Option<Option<i64>>,
    /// A new `retention_days` (`Some(None)`: the server's window again).
    pub retention_days: Option<Option<i64>>,
}

impl TenantPatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.max_agents.is_none()
            && self.max_schedules.is_none()
            && self.max_users.is_none()
            && self.retention_days.is_none()
    }
}

/// Why a user was not created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRefused {
    /// The email is a user's already (in any tenant).
    EmailTaken,
    /// The tenant has `max_users` users already.
    OverQuota {
        /// Its `max_users`.
        max: i64,
    },
}

/// What inserting a first-registered agent did.
pub(super) enum NewAgent {
    /// Inserted.
    Inserted,
    /// The id exists already (bound to some key): nothing inserted.
    Exists,
    /// The tenant has `max_agents` agents already: nothing inserted.
    OverQuota(i64),
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Locks the tenant's row until the transaction ends (PostgreSQL; on SQLite the write
    /// transaction holds the database's one write lock already) and reads it.
    pub(super) async fn lock_tenant(&self, tenant_id: &str) -> Result<Option<tenant::Model>> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT id FROM tenants WHERE id = $1 FOR UPDATE",
                    [tenant_id.into()],
                ))
                .await?;
        }
        Ok(tenant::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?)
    }

    /// One tenant.
    pub async fn get_tenant(&self, id: &str) -> Result<Option<tenant::Model>> {
        Ok(tenant::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?)
    }

    /// What a tenant holds.
    pub async fn tenant_usage(&self, id: &str) -> Result<Usage> {
        let agents = agent::Entity::find()
            .filter(agent::Column::TenantId.eq(id))
            .count(&self.db)
            .await?;
        let users = user::Entity::find()
            .filter(user::Column::TenantId.eq(id))
            .count(&self.db)
            .await?;
        let schedules = self.count_schedules(id).await?;
        Ok(Usage {
            agents,
            users,
            schedules,
        })
    }

    /// One tenant with its usage.
    pub async fn tenant_with_usage(&self, id: &str) -> Result<Option<TenantUsage>> {
        let Some(tenant) = self.get_tenant(id).await? else {
            return Ok(None);
        };
        let usage = self.tenant_usage(id).await?;
        Ok(Some(TenantUsage { tenant, usage }))
    }

    /// Every tenant, oldest first (the first is the server's own: see
    /// [`Store::default_tenant`]), with its usage.
    pub async fn list_tenants(&self) -> Result<Vec<TenantUsage>> {
        let tenants = tenant::Entity::find()
            .order_by_asc(tenant::Column::CreatedAt)
            .order_by_asc(tenant::Column::Id)
            .all(&self.db)
            .await?;
        let mut out = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let usage = self.tenant_usage(&tenant.id).await?;
            out.push(TenantUsage { tenant, usage });
        }
        Ok(out)
    }

    /// Renames a tenant and/or changes its quotas, in one transaction with its
    /// `tenant.update` audit row (in the tenant's own log, whoever `actor` is); `None` when
    /// there is no such tenant. A patch that changes nothing changes nothing and records
    /// nothing.
    pub async fn update_tenant(
        &self,
        id: &str,
        patch: &TenantPatch,
        actor: &Actor,
        address: Option<String>,
    ) -> Result<Option<tenant::Model>> {
        let txn = self.begin_write().await?;
        let Some(existing) = txn.lock_tenant(id).await? else {
            return Ok(None);
        };
        if patch.is_empty() {
            return Ok(Some(existing));
        }
        let mut model: tenant::ActiveModel = existing.into();
        let mut detail = serde_json::Map::new();
        if let Some(name) = &patch.name {
            model.name = Set(name.clone());
            detail.insert("name".into(), json!(name));
        }
        for (field, value, column) in [
            ("max_agents", patch.max_agents, &mut model.max_agents),
            (
                "max_schedules",
                patch.max_schedules,
                &mut model.max_schedules,
            ),
            ("max_users", patch.max_users, &mut model.max_users),
            (
                "retention_days",
                patch.retention_days,
                &mut model.retention_days,
            ),
        ] {
            if let Some(value) = value {
                *column = Set(value);
                detail.insert(field.into(), json!(value));
            }
        }
        let updated = model.update(&txn.db).await?;
        txn.append_audit_now(&AuditRecord {
            tenant_id: id.to_owned(),
            actor: actor.clone(),
            address,
            event: AuditEvent::new(AuditAction::TenantUpdate, AuditTarget::Tenant, id)
                .with(serde_json::Value::Object(detail)),
        })
        .await?;
        txn.db.commit().await?;
        Ok(Some(updated))
    }

    /// Creates a user unless the email is taken (in any tenant) or the tenant has its
    /// `max_users` already: the count and the insert in one transaction under the tenant's
    /// lock (see the module doc).
    pub async fn create_user(
        &self,
        new: super::NewUser,
    ) -> Result<std::result::Result<user::Model, UserRefused>> {
        let txn = self.begin_write().await?;
        let Some(tenant) = txn.lock_tenant(&new.tenant_id).await? else {
            return Err(StoreError::Config(format!(
                "there is no tenant {}",
                new.tenant_id
            )));
        };
        if let Some(max) = tenant.max_users {
            let users = user::Entity::find()
                .filter(user::Column::TenantId.eq(new.tenant_id.as_str()))
                .count(&txn.db)
                .await?;
            if users >= u64::try_from(max).unwrap_or(0) {
                return Ok(Err(UserRefused::OverQuota { max }));
            }
        }
        let created = match txn.insert_user(new).await? {
            Ok(user) => user,
            Err(refused) => return Ok(Err(refused)),
        };
        txn.db.commit().await?;
        Ok(Ok(created))
    }

    /// Inserts a user; `EmailTaken` when the email is a user's already.
    pub(super) async fn insert_user(
        &self,
        new: super::NewUser,
    ) -> Result<std::result::Result<user::Model, UserRefused>> {
        let at = now();
        let inserted = user::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(new.tenant_id),
            email_key: Set(email_key(&new.email)),
            email: Set(new.email.trim().to_owned()),
            password_hash: Set(new.password_hash),
            role: Set(new.role.as_str().to_owned()),
            status: Set(UserStatus::Active.as_str().to_owned()),
            created_at: Set(at),
            updated_at: Set(at),
            last_login_at: Set(None),
            email_verified_at: Set(None),
            password_changed_at: Set(None),
        }
        .insert(&self.db)
        .await;
        match inserted {
            Ok(model) => Ok(Ok(model)),
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(Err(UserRefused::EmailTaken))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Signup (`POST /api/auth/register`): a new tenant named `name` and its owner user
    /// (`email`, `password_hash`), with the tenant's `tenant.create` audit row, in one
    /// transaction; `EmailTaken` (and nothing stored) when the email is a user's already.
    /// The tenant has no API key: its owner makes them.
    pub async fn create_tenant_with_owner(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
        address: Option<String>,
    ) -> Result<std::result::Result<(tenant::Model, user::Model), UserRefused>> {
        let txn = self.begin_write().await?;
        let tenant = txn.insert_tenant(name).await?;
        let owner = match txn
            .insert_user(super::NewUser {
                tenant_id: tenant.id.clone(),
                email: email.to_owned(),
                role: Role::Owner,
                password_hash: Some(password_hash.to_owned()),
            })
            .await?
        {
            Ok(user) => user,
            Err(refused) => return Ok(Err(refused)),
        };
        txn.append_audit_now(&AuditRecord {
            tenant_id: tenant.id.clone(),
            actor: Actor {
                kind: ActorKind::User,
                id: owner.id.clone(),
                label: owner.email.clone(),
            },
            address,
            event: AuditEvent::new(AuditAction::TenantCreate, AuditTarget::Tenant, &tenant.id)
                .with(json!({"name": name, "owner_user_id": owner.id, "signup": true})),
        })
        .await?;
        txn.db.commit().await?;
        Ok(Ok((tenant, owner)))
    }

    /// Inserts a tenant row without quotas.
    pub(super) async fn insert_tenant(&self, name: &str) -> Result<tenant::Model> {
        Ok(tenant::ActiveModel {
            id: Set(new_id()),
            name: Set(name.to_owned()),
            created_at: Set(now()),
            webhook_secret: Set(None),
            max_agents: Set(None),
            max_schedules: Set(None),
            max_users: Set(None),
            retention_days: Set(None),
            require_totp: Set(false),
        }
        .insert(&self.db)
        .await?)
    }

    /// Inserts an agent registering for the first time, unless its id exists or the tenant
    /// has its `max_agents` already (see the module doc for when the tenant is locked).
    pub(super) async fn insert_new_agent(&self, new: agent::ActiveModel) -> Result<NewAgent> {
        let tenant_id = match &new.tenant_id {
            sea_orm::ActiveValue::Set(id) | sea_orm::ActiveValue::Unchanged(id) => id.clone(),
            sea_orm::ActiveValue::NotSet => {
                return Err(StoreError::Config("an agent without a tenant".into()));
            }
        };
        let unlimited = tenant::Entity::find_by_id(tenant_id.clone())
            .one(&self.db)
            .await?
            .is_none_or(|t| t.max_agents.is_none());
        if unlimited {
            return self.insert_agent_row(new).await;
        }
        let txn = self.begin_write().await?;
        let max = txn
            .lock_tenant(&tenant_id)
            .await?
            .and_then(|t| t.max_agents);
        if let Some(max) = max {
            let agents = agent::Entity::find()
                .filter(agent::Column::TenantId.eq(tenant_id.as_str()))
                .count(&txn.db)
                .await?;
            if agents >= u64::try_from(max).unwrap_or(0) {
                // The id may have been registered meanwhile (the same key's other
                // connection): then it is not new, and the caller goes on with it.
                let id = match &new.id {
                    sea_orm::ActiveValue::Set(id) | sea_orm::ActiveValue::Unchanged(id) => {
                        id.clone()
                    }
                    sea_orm::ActiveValue::NotSet => String::new(),
                };
                if txn.get_agent(&tenant_id, &id).await?.is_some() {
                    return Ok(NewAgent::Exists);
                }
                return Ok(NewAgent::OverQuota(max));
            }
        }
        let outcome = txn.insert_agent_row(new).await?;
        txn.db.commit().await?;
        Ok(outcome)
    }

    async fn insert_agent_row(&self, new: agent::ActiveModel) -> Result<NewAgent> {
        let inserted = agent::Entity::insert(new)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    agent::Column::TenantId,
                    agent::Column::Id,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec(&self.db)
            .await;
        match inserted {
            Ok(_) => Ok(NewAgent::Inserted),
            Err(sea_orm::DbErr::RecordNotInserted) => Ok(NewAgent::Exists),
            Err(err) => Err(err.into()),
        }
    }

    /// The tenant the server made on its first start: the oldest.
    pub async fn default_tenant(&self) -> Result<Option<tenant::Model>> {
        Ok(tenant::Entity::find()
            .order_by_asc(tenant::Column::CreatedAt)
            .one(&self.db)
            .await?)
    }

    /// Creates a tenant with an owner API key (`secret`, or a generated one), in one
    /// transaction with the first row of its audit log; returns the tenant id and the key.
    pub async fn create_tenant(
        &self,
        name: &str,
        secret: Option<&str>,
    ) -> Result<(String, String)> {
        self.create_tenant_by(name, secret, Actor::system("outpost-server", "the server"))
            .await
    }

    /// [`Store::create_tenant`], recorded as done by `actor` (`outpost-server tenant create`).
    pub async fn create_tenant_by(
        &self,
        name: &str,
        secret: Option<&str>,
        actor: Actor,
    ) -> Result<(String, String)> {
        let txn = self.begin_write().await?;
        let id = txn.insert_tenant(name).await?.id;
        let secret = secret
            .map(str::to_owned)
            .unwrap_or_else(|| credentials::generate_secret(KeyKind::Api));
        let key_id = txn.insert_owner_key(&id, &secret).await?;
        txn.append_audit_now(&AuditRecord {
            tenant_id: id.clone(),
            actor,
            address: None,
            event: AuditEvent::new(AuditAction::TenantCreate, AuditTarget::Tenant, &id)
                .with(json!({"name": name, "owner_key_id": key_id})),
        })
        .await?;
        txn.db.commit().await?;
        Ok((id, secret))
    }
}
