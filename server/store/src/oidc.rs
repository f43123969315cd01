//! OpenID Connect sign-in rows (CONTRACT.md §18): identities and sign-ins in flight.
//!
//! An identity is `(issuer, subject)`, never an email: the provider's `sub` is what it
//! promises stays the same for a person, an email can be reassigned. A user is created with
//! their identity in one transaction (under the tenant's `max_users` quota, as
//! `store::tenants` creates users), so there is never an SSO user without the identity that
//! signs them in.
//!
//! A sign-in in flight (`oidc_logins`) is keyed by the hash of its `state`; the callback
//! takes it once by a conditional `UPDATE … WHERE used_at IS NULL`, so a replayed callback
//! finds nothing. A CLI's sign-in then holds a one-time handoff code (hashed) that its
//! exchange takes once the same way.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set,
    SqlErr, TransactionSession, TransactionTrait,
};
use serde_json::json;

use super::entities::{oidc_identity, oidc_login};
use super::{AuditRecord, Result, Store, UserRefused, now, tenant, user};
use crate::domain::{Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, Role};

/// A sign-in to remember between the redirect and the callback.
#[derive(Debug, Clone)]
pub struct NewOidcLogin {
    /// SHA-256 (hex) of the `state` sent to the provider.
    pub state_hash: String,
    /// The `nonce` sent (compared with the ID token's).
    pub nonce: String,
    /// The PKCE code verifier, sealed with the master key.
    pub verifier_sealed: String,
    /// The signed-in user who links the identity, for a link.
    pub link_user_id: Option<String>,
    /// The CLI's loopback URL, for `outpost login --sso`.
    pub cli_redirect: Option<String>,
    /// When the sign-in stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Who an identity signs in as, found or made.
#[derive(Debug, Clone)]
pub struct SsoIdentity {
    /// The provider (`iss`).
    pub issuer: String,
    /// The person at the provider (`sub`).
    pub subject: String,
    /// The verified email the provider gave.
    pub email: String,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// Stores a sign-in in flight.
    pub async fn insert_oidc_login(&self, new: NewOidcLogin) -> Result<()> {
        oidc_login::ActiveModel {
            state_hash: Set(new.state_hash),
            nonce: Set(new.nonce),
            verifier: Set(new.verifier_sealed),
            link_user_id: Set(new.link_user_id),
            cli_redirect: Set(new.cli_redirect),
            handoff_hash: Set(None),
            handoff_user_id: Set(None),
            created_at: Set(now()),
            expires_at: Set(new.expires_at),
            used_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Takes the live, unused sign-in whose state hashes to `state_hash`: marks it used
    /// (once, whoever asks at the same time) and answers it; `None` when there is none.
    pub async fn take_oidc_login(&self, state_hash: &str) -> Result<Option<oidc_login::Model>> {
        let at = now();
        let taken = oidc_login::Entity::update_many()
            .col_expr(oidc_login::Column::UsedAt, Expr::value(at))
            .filter(oidc_login::Column::StateHash.eq(state_hash))
            .filter(oidc_login::Column::UsedAt.is_null())
            .filter(oidc_login::Column::ExpiresAt.gt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        if taken != 1 {
            return Ok(None);
        }
        Ok(oidc_login::Entity::find_by_id(state_hash.to_owned())
            .one(&self.db)
            .await?)
    }

    /// Gives a taken CLI sign-in its one-time handoff code (hashed) for `user_id`, valid
    /// until `expires_at`.
    pub async fn set_oidc_handoff(
        &self,
        state_hash: &str,
        handoff_hash: &str,
        user_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        oidc_login::Entity::update_many()
            .col_expr(oidc_login::Column::HandoffHash, Expr::value(handoff_hash))
            .col_expr(oidc_login::Column::HandoffUserId, Expr::value(user_id))
            .col_expr(oidc_login::Column::ExpiresAt, Expr::value(expires_at))
            .filter(oidc_login::Column::StateHash.eq(state_hash))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Takes the handoff code hashing to `handoff_hash` once, unexpired: the user it is for.
    pub async fn take_oidc_handoff(&self, handoff_hash: &str) -> Result<Option<String>> {
        let at = now();
        let Some(row) = oidc_login::Entity::find()
            .filter(oidc_login::Column::HandoffHash.eq(handoff_hash))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let Some(user_id) = row.handoff_user_id.clone() else {
            return Ok(None);
        };
        let taken = oidc_login::Entity::update_many()
            .col_expr(
                oidc_login::Column::HandoffUserId,
                Expr::value(Option::<String>::None),
            )
            .filter(oidc_login::Column::StateHash.eq(row.state_hash.as_str()))
            .filter(oidc_login::Column::HandoffUserId.eq(user_id.as_str()))
            .filter(oidc_login::Column::ExpiresAt.gt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok((taken == 1).then_some(user_id))
    }

    /// Deletes sign-ins past their expiry (the sweep); how many.
    pub async fn delete_expired_oidc_logins(&self) -> Result<u64> {
        Ok(oidc_login::Entity::delete_many()
            .filter(oidc_login::Column::ExpiresAt.lt(now()))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// The identity `(issuer, subject)`, if some user has it.
    pub async fn oidc_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<oidc_identity::Model>> {
        Ok(
            oidc_identity::Entity::find_by_id((issuer.to_owned(), subject.to_owned()))
                .one(&self.db)
                .await?,
        )
    }

    /// Whether the user signs in through a provider (then they count as able to run their
    /// tenant without a password).
    pub async fn has_oidc_identity(&self, user_id: &str) -> Result<bool> {
        Ok(oidc_identity::Entity::find()
            .filter(oidc_identity::Column::UserId.eq(user_id))
            .count(&self.db)
            .await?
            > 0)
    }

    /// Records a sign-in through the identity: when, and the email the provider gave now.
    pub async fn touch_oidc_identity(
        &self,
        issuer: &str,
        subject: &str,
        email: &str,
    ) -> Result<()> {
        oidc_identity::Entity::update_many()
            .col_expr(oidc_identity::Column::LastLoginAt, Expr::value(now()))
            .col_expr(oidc_identity::Column::Email, Expr::value(email))
            .filter(oidc_identity::Column::Issuer.eq(issuer))
            .filter(oidc_identity::Column::Subject.eq(subject))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Links the identity to `user`; `false` (nothing changed) when it is some user's already.
    pub async fn link_oidc_identity(&self, user: &user::Model, id: &SsoIdentity) -> Result<bool> {
        let inserted = identity_row(user, id).insert(&self.db).await;
        match inserted {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// A new member (`role`) of `tenant_id` who signs in with the identity, unless the email
    /// is a user's already or the tenant has its `max_users`: the count, the user and the
    /// identity in one transaction under the tenant's lock.
    pub async fn create_sso_user(
        &self,
        tenant_id: &str,
        role: Role,
        id: &SsoIdentity,
    ) -> Result<std::result::Result<user::Model, UserRefused>> {
        let txn = self.begin_write().await?;
        let Some(tenant) = txn.lock_tenant(tenant_id).await? else {
            return Err(super::StoreError::Config(format!(
                "there is no tenant {tenant_id}"
            )));
        };
        if let Some(max) = tenant.max_users {
            let users = user::Entity::find()
                .filter(user::Column::TenantId.eq(tenant_id))
                .count(&txn.db)
                .await?;
            if users >= u64::try_from(max).unwrap_or(0) {
                return Ok(Err(UserRefused::OverQuota { max }));
            }
        }
        let created = match txn.insert_user(sso_user(tenant_id, role, id)).await? {
            Ok(user) => txn.verified(user).await?,
            Err(refused) => return Ok(Err(refused)),
        };
        identity_row(&created, id).insert(&txn.db).await?;
        txn.db.commit().await?;
        Ok(Ok(created))
    }

    /// Signup through a provider (`--allow-signup`): a new tenant named `name` and its owner
    /// who signs in with the identity, with the tenant's `tenant.create` audit row, in one
    /// transaction.
    pub async fn create_tenant_with_sso_owner(
        &self,
        name: &str,
        id: &SsoIdentity,
        address: Option<String>,
    ) -> Result<std::result::Result<(tenant::Model, user::Model), UserRefused>> {
        let txn = self.begin_write().await?;
        let tenant = txn.insert_tenant(name).await?;
        let owner = match txn
            .insert_user(sso_user(&tenant.id, Role::Owner, id))
            .await?
        {
            Ok(user) => txn.verified(user).await?,
            Err(refused) => return Ok(Err(refused)),
        };
        identity_row(&owner, id).insert(&txn.db).await?;
        txn.append_audit_now(&AuditRecord {
            tenant_id: tenant.id.clone(),
            actor: Actor {
                kind: ActorKind::User,
                id: owner.id.clone(),
                label: owner.email.clone(),
            },
            address,
            event: AuditEvent::new(AuditAction::TenantCreate, AuditTarget::Tenant, &tenant.id)
                .with(
                    json!({"name": name, "owner_user_id": owner.id, "signup": true, "sso": true}),
                ),
        })
        .await?;
        txn.db.commit().await?;
        Ok(Ok((tenant, owner)))
    }

    /// The user, their email marked verified (the provider verified it).
    async fn verified(&self, user: user::Model) -> Result<user::Model> {
        let mut model: user::ActiveModel = user.into();
        model.email_verified_at = Set(Some(now()));
        Ok(model.update(&self.db).await?)
    }

    /// A user of any tenant, by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<user::Model>> {
        Ok(user::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?)
    }

    /// The tenant named by `name_or_id`: its id, else its name when exactly one tenant has it.
    pub async fn tenant_by_name_or_id(&self, name_or_id: &str) -> Result<Option<tenant::Model>> {
        if let Some(found) = tenant::Entity::find_by_id(name_or_id.to_owned())
            .one(&self.db)
            .await?
        {
            return Ok(Some(found));
        }
        let mut named = tenant::Entity::find()
            .filter(tenant::Column::Name.eq(name_or_id))
            .all(&self.db)
            .await?;
        Ok(if named.len() == 1 { named.pop() } else { None })
    }
}

fn sso_user(tenant_id: &str, role: Role, id: &SsoIdentity) -> super::NewUser {
    super::NewUser {
        tenant_id: tenant_id.to_owned(),
        email: id.email.clone(),
        role,
        password_hash: None,
    }
}

fn identity_row(user: &user::Model, id: &SsoIdentity) -> oidc_identity::ActiveModel {
    oidc_identity::ActiveModel {
        issuer: Set(id.issuer.clone()),
        subject: Set(id.subject.clone()),
        user_id: Set(user.id.clone()),
        tenant_id: Set(user.tenant_id.clone()),
        email: Set(id.email.clone()),
        created_at: Set(now()),
        last_login_at: Set(None),
    }
}
