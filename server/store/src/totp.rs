//! Second factors (CONTRACT.md §18): users' TOTP factors, their recovery codes, and the login
//! tickets that hold a sign-in between its password step and its code.
//!
//! What must hold across nodes is held by conditional updates, not by a check before a write:
//! - a TOTP step is used once: `UPDATE … SET last_step = s WHERE last_step IS NULL OR
//!   last_step < s` (two nodes given the same code at once: one wins);
//! - a recovery code is used once (`… WHERE used_at IS NULL`);
//! - a ticket finishes one sign-in (`… WHERE used_at IS NULL AND tries < MAX`), and its wrong
//!   codes are counted by `tries = tries + 1` in the row, so every node sees the same count;
//! - a factor is confirmed once (`… WHERE confirmed_at IS NULL`), and only a factor not yet
//!   confirmed is replaced by a new setup.
//!
//! The secret arrives sealed (`seal`), the codes and tickets hashed: this module never sees
//! a usable secret.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, Set,
    TransactionSession, TransactionTrait,
};

use super::{Result, Store, now};
use crate::entities::{login_ticket, recovery_code, tenant, totp_factor};

/// Wrong codes a login ticket takes; the next makes it void.
pub const MAX_TICKET_TRIES: i32 = 5;

/// What [`Store::put_totp_factor`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorPut {
    /// Stored (replacing a factor not yet confirmed).
    Stored,
    /// Refused: the user has a confirmed factor (delete it first).
    Confirmed,
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    /// The user's factor, confirmed or not.
    pub async fn totp_factor(&self, user_id: &str) -> Result<Option<totp_factor::Model>> {
        Ok(totp_factor::Entity::find_by_id(user_id.to_owned())
            .one(&self.db)
            .await?)
    }

    /// The ids of a tenant's users who have a confirmed factor.
    pub async fn users_with_totp(&self, tenant_id: &str) -> Result<Vec<String>> {
        Ok(totp_factor::Entity::find()
            .filter(totp_factor::Column::TenantId.eq(tenant_id))
            .filter(totp_factor::Column::ConfirmedAt.is_not_null())
            .all(&self.db)
            .await?
            .into_iter()
            .map(|f| f.user_id)
            .collect())
    }

    /// Stores a new, unconfirmed factor with its sealed secret, replacing one not yet
    /// confirmed; refused when the user's factor is confirmed.
    pub async fn put_totp_factor(
        &self,
        tenant_id: &str,
        user_id: &str,
        sealed_secret: &str,
    ) -> Result<FactorPut> {
        let txn = self.begin_write().await?;
        if let Some(existing) = txn.totp_factor(user_id).await? {
            if existing.confirmed_at.is_some() {
                return Ok(FactorPut::Confirmed);
            }
            totp_factor::Entity::delete_by_id(user_id.to_owned())
                .exec(&txn.db)
                .await?;
        }
        totp_factor::ActiveModel {
            user_id: Set(user_id.to_owned()),
            tenant_id: Set(tenant_id.to_owned()),
            secret: Set(sealed_secret.to_owned()),
            confirmed_at: Set(None),
            last_step: Set(None),
            created_at: Set(now()),
        }
        .insert(&txn.db)
        .await?;
        txn.db.commit().await?;
        Ok(FactorPut::Stored)
    }

    /// Confirms the user's factor (not yet confirmed) with the code of `step`, which counts as
    /// used, and replaces their recovery codes by `recovery_hashes`, in one transaction;
    /// `false` when there was no unconfirmed factor.
    pub async fn confirm_totp(
        &self,
        user_id: &str,
        step: i64,
        recovery_hashes: &[String],
    ) -> Result<bool> {
        let txn = self.begin_write().await?;
        let confirmed = totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::ConfirmedAt, Expr::value(now()))
            .col_expr(totp_factor::Column::LastStep, Expr::value(step))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_null())
            .exec(&txn.db)
            .await?
            .rows_affected;
        if confirmed != 1 {
            return Ok(false);
        }
        recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .exec(&txn.db)
            .await?;
        for hash in recovery_hashes {
            recovery_code::ActiveModel {
                user_id: Set(user_id.to_owned()),
                code_hash: Set(hash.clone()),
                used_at: Set(None),
            }
            .insert(&txn.db)
            .await?;
        }
        txn.db.commit().await?;
        Ok(true)
    }

    /// Uses the code of `step` of the user's confirmed factor: `false` when that step or a
    /// later one was used already (a replay), or the factor is gone.
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool> {
        Ok(totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::LastStep, Expr::value(step))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_not_null())
            .filter(
                Condition::any()
                    .add(totp_factor::Column::LastStep.is_null())
                    .add(totp_factor::Column::LastStep.lt(step)),
            )
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// Uses the recovery code hashing to `code_hash` once; whether it was the user's and unused.
    pub async fn use_recovery_code(&self, user_id: &str, code_hash: &str) -> Result<bool> {
        Ok(recovery_code::Entity::update_many()
            .col_expr(recovery_code::Column::UsedAt, Expr::value(now()))
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::CodeHash.eq(code_hash))
            .filter(recovery_code::Column::UsedAt.is_null())
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// How many of the user's recovery codes are unused.
    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<usize> {
        Ok(recovery_code::Entity::find()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::UsedAt.is_null())
            .all(&self.db)
            .await?
            .len())
    }

    /// Deletes the user's factor, its recovery codes and the user's open login tickets;
    /// whether there was a factor.
    pub async fn delete_totp(&self, user_id: &str) -> Result<bool> {
        let txn = self.begin_write().await?;
        let deleted = txn.delete_totp_rows(user_id).await?;
        txn.db.commit().await?;
        Ok(deleted)
    }

    /// [`Store::delete_totp`]'s deletes, in the caller's transaction.
    pub(crate) async fn delete_totp_rows(&self, user_id: &str) -> Result<bool> {
        let deleted = totp_factor::Entity::delete_by_id(user_id.to_owned())
            .exec(&self.db)
            .await?
            .rows_affected;
        recovery_code::Entity::delete_many()
            .filter(recovery_code::Column::UserId.eq(user_id))
            .exec(&self.db)
            .await?;
        login_ticket::Entity::delete_many()
            .filter(login_ticket::Column::UserId.eq(user_id))
            .exec(&self.db)
            .await?;
        Ok(deleted == 1)
    }

    // ---- login tickets ------------------------------------------------------------------

    /// Stores a login ticket (its hash) for a user, valid until `expires_at`.
    pub async fn insert_login_ticket(
        &self,
        tenant_id: &str,
        user_id: &str,
        ticket_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        login_ticket::ActiveModel {
            ticket_hash: Set(ticket_hash.to_owned()),
            user_id: Set(user_id.to_owned()),
            tenant_id: Set(tenant_id.to_owned()),
            tries: Set(0),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// The ticket hashing to `ticket_hash` while it can still finish a sign-in: unused,
    /// unexpired, fewer than [`MAX_TICKET_TRIES`] wrong codes.
    pub async fn live_login_ticket(
        &self,
        ticket_hash: &str,
    ) -> Result<Option<login_ticket::Model>> {
        Ok(login_ticket::Entity::find_by_id(ticket_hash.to_owned())
            .filter(login_ticket::Column::UsedAt.is_null())
            .filter(login_ticket::Column::ExpiresAt.gt(now()))
            .filter(login_ticket::Column::Tries.lt(MAX_TICKET_TRIES))
            .one(&self.db)
            .await?)
    }

    /// Counts a wrong code against a ticket; the wrong codes it has now.
    pub async fn login_ticket_wrong_code(&self, ticket_hash: &str) -> Result<i32> {
        login_ticket::Entity::update_many()
            .col_expr(
                login_ticket::Column::Tries,
                Expr::col(login_ticket::Column::Tries).add(1),
            )
            .filter(login_ticket::Column::TicketHash.eq(ticket_hash))
            .exec(&self.db)
            .await?;
        Ok(login_ticket::Entity::find_by_id(ticket_hash.to_owned())
            .one(&self.db)
            .await?
            .map_or(MAX_TICKET_TRIES, |t| t.tries))
    }

    /// Uses a live ticket once; whether this call did (of two at once, one does).
    pub async fn use_login_ticket(&self, ticket_hash: &str) -> Result<bool> {
        let at = now();
        Ok(login_ticket::Entity::update_many()
            .col_expr(login_ticket::Column::UsedAt, Expr::value(at))
            .filter(login_ticket::Column::TicketHash.eq(ticket_hash))
            .filter(login_ticket::Column::UsedAt.is_null())
            .filter(login_ticket::Column::ExpiresAt.gt(at))
            .filter(login_ticket::Column::Tries.lt(MAX_TICKET_TRIES))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// Deletes login tickets past their expiry (the sweep); how many.
    pub async fn delete_expired_login_tickets(&self) -> Result<u64> {
        Ok(login_ticket::Entity::delete_many()
            .filter(login_ticket::Column::ExpiresAt.lt(now()))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// Sets whether the tenant's password users must have a second factor; `None` when
    /// there is no such tenant.
    pub async fn set_require_totp(
        &self,
        tenant_id: &str,
        required: bool,
    ) -> Result<Option<tenant::Model>> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::RequireTotp, Expr::value(required))
            .filter(tenant::Column::Id.eq(tenant_id))
            .exec(&self.db)
            .await?;
        Ok(tenant::Entity::find_by_id(tenant_id.to_owned())
            .one(&self.db)
            .await?)
    }
}
