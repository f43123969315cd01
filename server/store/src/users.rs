//! Users, their refresh tokens and invites (CONTRACT.md §9).
//!
//! What must hold across nodes is held by the database, not by a check before a write:
//! - an email is unique (case-insensitive) by the unique `email_key` column (users are
//!   created in `store::tenants`, under the tenant's `max_users` quota);
//! - an invite is used once by a conditional `UPDATE … WHERE used_at IS NULL`;
//! - a refresh token is exchanged once by a conditional `UPDATE … WHERE retired_at IS NULL`
//!   (a second exchange is either the grace case or a reuse, see [`Store::rotate_refresh`]);
//! - the last active owner of a tenant cannot be demoted, disabled or deleted: a change to a
//!   user runs in a write transaction that first locks the tenant's row (PostgreSQL; SQLite's
//!   `BEGIN IMMEDIATE` serialises every writer anyway), so two owners demoting each other at
//!   once cannot both succeed.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Set, Statement, TransactionSession, TransactionTrait,
};

use super::{Result, Store, email_code, invite, new_id, now, password_reset, refresh_token, user};
use crate::domain::{Role, UserStatus};

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Owning tenant.
    pub tenant_id: String,
    /// Email as given (trimmed); unique across tenants, case-insensitively.
    pub email: String,
    /// Role in the tenant.
    pub role: Role,
    /// argon2id hash, or `None` for a user who is to accept an invite.
    pub password_hash: Option<String>,
}

/// A change to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// New role and/or status.
    Update {
        /// New role.
        role: Option<Role>,
        /// New status.
        status: Option<UserStatus>,
    },
    /// Delete the user, their sessions, invites, verification codes and reset links.
    Delete,
}

/// What [`Store::change_user`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum UserChanged {
    /// No such user in the tenant.
    NotFound,
    /// Refused: the user is the tenant's last active owner.
    LastOwner,
    /// Updated (the new row), or deleted (`None`).
    Done(Option<Box<user::Model>>),
}

/// What [`Store::rotate_refresh`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Refreshed {
    /// Exchanged: the user the new token (already stored) is for.
    Rotated(Box<user::Model>),
    /// Unknown, expired, revoked, or the user is gone or disabled.
    Refused,
    /// A retired token presented after the grace: its family is revoked now.
    Reused,
}

/// The email form that is unique and looked up.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Whether a user counts as an owner who can run the tenant: active, with a password or an
/// identity at an OpenID Connect provider (`sso`: CONTRACT.md §18, SSO users have no password).
fn active_owner(user: &user::Model, sso: bool) -> bool {
    user.role == Role::Owner
        && user.status == UserStatus::Active
        && (user.password_hash.is_some() || sso)
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// The user with this email (any tenant), case-insensitively.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<user::Model>> {
        Ok(user::Entity::find()
            .filter(user::Column::EmailKey.eq(email_key(email)))
            .one(&self.db)
            .await?)
    }

    /// One user of a tenant.
    pub async fn get_user(&self, tenant_id: &str, id: &str) -> Result<Option<user::Model>> {
        Ok(user::Entity::find_by_id(id.to_owned())
            .filter(user::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Every user of a tenant, oldest first.
    pub async fn list_users(&self, tenant_id: &str) -> Result<Vec<user::Model>> {
        Ok(user::Entity::find()
            .filter(user::Column::TenantId.eq(tenant_id))
            .order_by_asc(user::Column::CreatedAt)
            .order_by_asc(user::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Records a successful login.
    pub async fn touch_login(&self, user_id: &str) -> Result<()> {
        user::Entity::update_many()
            .col_expr(user::Column::LastLoginAt, Expr::value(now()))
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Changes or deletes a user, unless that leaves the tenant without an active owner.
    /// Disabling or deleting revokes the user's refresh tokens (and deleting removes their
    /// invites), in the same transaction.
    pub async fn change_user(
        &self,
        tenant_id: &str,
        id: &str,
        change: UserChange,
    ) -> Result<UserChanged> {
        let txn = self.begin_write().await?;
        if txn.db.get_database_backend() == DbBackend::Postgres {
            // Serialises changes to one tenant's users across nodes (see the module doc).
            txn.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT id FROM tenants WHERE id = $1 FOR UPDATE",
                    [tenant_id.into()],
                ))
                .await?;
        }
        let Some(existing) = txn.get_user(tenant_id, id).await? else {
            return Ok(UserChanged::NotFound);
        };
        let after = match change {
            UserChange::Delete => None,
            UserChange::Update { role, status } => {
                let mut after = existing.clone();
                if let Some(role) = role {
                    after.role = role.as_str().to_owned();
                }
                if let Some(status) = status {
                    after.status = status.as_str().to_owned();
                }
                Some(after)
            }
        };
        let sso = txn.has_oidc_identity(id).await?;
        if active_owner(&existing, sso) && !after.as_ref().is_some_and(|a| active_owner(a, sso)) {
            let others = user::Entity::find()
                .filter(user::Column::TenantId.eq(tenant_id))
                .filter(user::Column::Id.ne(id))
                .filter(user::Column::Role.eq(Role::Owner.as_str()))
                .filter(user::Column::Status.eq(UserStatus::Active.as_str()))
                .filter(
                    sea_orm::Condition::any()
                        .add(user::Column::PasswordHash.is_not_null())
                        .add(
                            user::Column::Id.in_subquery(
                                sea_orm::sea_query::Query::select()
                                    .column(crate::oidc_identity::Column::UserId)
                                    .from(crate::oidc_identity::Entity)
                                    .to_owned(),
                            ),
                        ),
                )
                .count(&txn.db)
                .await?;
            if others == 0 {
                return Ok(UserChanged::LastOwner);
            }
        }
        let result = match after {
            None => {
                user::Entity::delete_by_id(id.to_owned())
                    .exec(&txn.db)
                    .await?;
                refresh_token::Entity::delete_many()
                    .filter(refresh_token::Column::UserId.eq(id))
                    .exec(&txn.db)
                    .await?;
                invite::Entity::delete_many()
                    .filter(invite::Column::UserId.eq(id))
                    .exec(&txn.db)
                    .await?;
                email_code::Entity::delete_many()
                    .filter(email_code::Column::UserId.eq(id))
                    .exec(&txn.db)
                    .await?;
                password_reset::Entity::delete_many()
                    .filter(password_reset::Column::UserId.eq(id))
                    .exec(&txn.db)
                    .await?;
                // The user's second factor (CONTRACT.md §18) goes with them.
                txn.delete_totp_rows(id).await?;
                crate::oidc_identity::Entity::delete_many()
                    .filter(crate::oidc_identity::Column::UserId.eq(id))
                    .exec(&txn.db)
                    .await?;
                UserChanged::Done(None)
            }
            Some(after) => {
                let disabled = after.status == UserStatus::Disabled;
                let mut model: user::ActiveModel = existing.into();
                model.role = Set(after.role);
                model.status = Set(after.status);
                model.updated_at = Set(now());
                let updated = model.update(&txn.db).await?;
                if disabled {
                    txn.revoke_user_sessions(id).await?;
                }
                UserChanged::Done(Some(Box::new(updated)))
            }
        };
        txn.db.commit().await?;
        crate::credential_cache::changed();
        Ok(result)
    }

    async fn revoke_user_sessions(&self, user_id: &str) -> Result<u64> {
        Ok(refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now()))
            .filter(refresh_token::Column::UserId.eq(user_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    // ---- invites --------------------------------------------------------------------------

    /// Stores an invite for `user_id` (its token's hash), replacing earlier unused ones.
    pub async fn create_invite(
        &self,
        tenant_id: &str,
        user_id: &str,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<invite::Model> {
        invite::Entity::delete_many()
            .filter(invite::Column::UserId.eq(user_id))
            .filter(invite::Column::UsedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(invite::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            user_id: Set(user_id.to_owned()),
            token_hash: Set(token_hash.to_owned()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        }
        .insert(&self.db)
        .await?)
    }

    /// Uses the invite whose token hashes to `token_hash` (once, unexpired) and sets its
    /// user's password; `None` when there is no such usable invite or its user is gone or
    /// disabled.
    pub async fn accept_invite(
        &self,
        token_hash: &str,
        password_hash: &str,
    ) -> Result<Option<user::Model>> {
        let txn = self.begin_write().await?;
        let at = now();
        let used = invite::Entity::update_many()
            .col_expr(invite::Column::UsedAt, Expr::value(at))
            .filter(invite::Column::TokenHash.eq(token_hash))
            .filter(invite::Column::UsedAt.is_null())
            .filter(invite::Column::ExpiresAt.gt(at))
            .exec(&txn.db)
            .await?
            .rows_affected;
        if used != 1 {
            return Ok(None);
        }
        let Some(invite) = invite::Entity::find()
            .filter(invite::Column::TokenHash.eq(token_hash))
            .one(&txn.db)
            .await?
        else {
            return Ok(None);
        };
        let Some(existing) = txn.get_user(&invite.tenant_id, &invite.user_id).await? else {
            return Ok(None);
        };
        if existing.status != UserStatus::Active {
            return Ok(None);
        }
        let mut model: user::ActiveModel = existing.into();
        model.password_hash = Set(Some(password_hash.to_owned()));
        model.updated_at = Set(at);
        let updated = model.update(&txn.db).await?;
        txn.db.commit().await?;
        Ok(Some(updated))
    }

    // ---- refresh tokens -------------------------------------------------------------------

    /// Stores a refresh token (its hash) of `family_id` for `user`.
    pub async fn insert_refresh(
        &self,
        user: &user::Model,
        family_id: &str,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        refresh_token::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(user.tenant_id.clone()),
            user_id: Set(user.id.clone()),
            family_id: Set(family_id.to_owned()),
            token_hash: Set(token_hash.to_owned()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            retired_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Exchanges the refresh token hashing to `old_hash` for the one hashing to `new_hash`
    /// (same family, expiring at `expires_at`), in one write transaction.
    ///
    /// The old token is retired by a conditional update, so of two exchanges at once one
    /// retires it. A token already retired is accepted again for `grace` after its retirement
    /// (two tabs refreshing at once: each gets a pair of the same family); after that it is
    /// a reuse, and the whole family is revoked.
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: DateTime<Utc>,
        grace: Duration,
    ) -> Result<Refreshed> {
        let txn = self.begin_write().await?;
        let at = now();
        let Some(old) = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(old_hash))
            .one(&txn.db)
            .await?
        else {
            return Ok(Refreshed::Refused);
        };
        if old.revoked_at.is_some() || old.expires_at <= at {
            return Ok(Refreshed::Refused);
        }
        let retired_now = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RetiredAt, Expr::value(at))
            .filter(refresh_token::Column::Id.eq(old.id.as_str()))
            .filter(refresh_token::Column::RetiredAt.is_null())
            .exec(&txn.db)
            .await?
            .rows_affected
            == 1;
        if !retired_now {
            let retired_at = refresh_token::Entity::find_by_id(old.id.clone())
                .one(&txn.db)
                .await?
                .and_then(|t| t.retired_at)
                .unwrap_or(at);
            // Measured from now, not from `at`: on PostgreSQL this transaction's update waited
            // for the one that retired the token, whose `retired_at` may be later than `at`.
            // Within the grace means strictly less than it, so a grace of 0 honours nothing.
            if now().max(at) - retired_at >= grace {
                txn.revoke_family(&old.family_id).await?;
                txn.db.commit().await?;
                return Ok(Refreshed::Reused);
            }
        }
        let Some(owner) = txn.get_user(&old.tenant_id, &old.user_id).await? else {
            return Ok(Refreshed::Refused);
        };
        if owner.status != UserStatus::Active {
            return Ok(Refreshed::Refused);
        }
        txn.insert_refresh(&owner, &old.family_id, new_hash, expires_at)
            .await?;
        txn.db.commit().await?;
        Ok(Refreshed::Rotated(Box::new(owner)))
    }

    /// Revokes the family of the refresh token hashing to `token_hash` (logout); whether
    /// there was such a token.
    pub async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool> {
        let Some(token) = refresh_token::Entity::find()
            .filter(refresh_token::Column::TokenHash.eq(token_hash))
            .one(&self.db)
            .await?
        else {
            return Ok(false);
        };
        self.revoke_family(&token.family_id).await?;
        Ok(true)
    }

    /// Deletes refresh tokens and invites past their expiry (the sweep); how many of each.
    pub async fn delete_expired_sessions(&self) -> Result<(u64, u64)> {
        let at = now();
        let sessions = refresh_token::Entity::delete_many()
            .filter(refresh_token::Column::ExpiresAt.lt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        let invites = invite::Entity::delete_many()
            .filter(invite::Column::ExpiresAt.lt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok((sessions, invites))
    }

    async fn revoke_family(&self, family_id: &str) -> Result<u64> {
        Ok(refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(now()))
            .filter(refresh_token::Column::FamilyId.eq(family_id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
