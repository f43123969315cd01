//! Mail to people and what it carries (CONTRACT.md §18): the outbox, email verification codes
//! and password reset tokens.
//!
//! What must hold across nodes is held by the database:
//! - a queued mail is sent by one node at a time (a claim, as integrations' deliveries are) and
//!   its sealed body is dropped in the same update that records it sent or given up;
//! - a reset token is used once (`UPDATE … WHERE used_at IS NULL`), and the password it sets,
//!   the end of every session and the verified email are one transaction;
//! - a verification code's wrong tries are counted in its row, so five tries are five whatever
//!   node answers them.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::connect::ClaimSpec;
use super::{
    Result, Store, email_code, mail_outbox, new_id, now, password_reset, refresh_token, user,
};
use crate::domain::UserStatus;

/// How long a node holds a mail it is sending.
const MAIL_CLAIM: Duration = Duration::seconds(60);

/// A mail to queue.
#[derive(Debug, Clone)]
pub struct NewMail {
    /// The tenant of the user it is for.
    pub tenant_id: Option<String>,
    /// `verify`, `reset`, `invite`.
    pub kind: &'static str,
    /// The one recipient.
    pub recipient: String,
    /// The subject line.
    pub subject: String,
    /// The body, already sealed.
    pub sealed_body: String,
}

/// What became of an attempt at a claimed mail.
#[derive(Debug, Clone)]
pub enum MailOutcome {
    /// The relay took it.
    Sent,
    /// Not now: try again at `next_at`.
    Retry {
        /// Why, for the outbox's listing.
        error: String,
        /// When.
        next_at: DateTime<Utc>,
    },
    /// Given up (a permanent refusal, or its content expired).
    Failed {
        /// Why.
        error: String,
    },
}

/// Which mails a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailState {
    /// Not sent yet, still tried.
    Pending,
    /// Taken by the relay.
    Sent,
    /// Given up.
    Failed,
}

/// What checking a verification code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right: the email is verified now.
    Verified,
    /// Wrong: this many tries are left.
    Wrong {
        /// Tries left before the code is void.
        left: i32,
    },
    /// No live code (none asked for, expired, or tried too often).
    NoCode,
}

impl Store {
    // ---- the outbox -----------------------------------------------------------------------

    /// Queues a mail, due now.
    pub async fn queue_mail(&self, mail: NewMail) -> Result<mail_outbox::Model> {
        let at = now();
        Ok(mail_outbox::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(mail.tenant_id),
            kind: Set(mail.kind.to_owned()),
            recipient: Set(mail.recipient),
            subject: Set(mail.subject),
            body: Set(Some(mail.sealed_body)),
            created_at: Set(at),
            next_at: Set(at),
            attempts: Set(0),
            last_error: Set(None),
            sent_at: Set(None),
            failed_at: Set(None),
            claimed_by: Set(None),
            claimed_until: Set(None),
        }
        .insert(&self.db)
        .await?)
    }

    /// Claims up to `limit` mails due at `at` for `node_id`.
    pub async fn claim_mail(
        &self,
        node_id: &str,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<mail_outbox::Model>> {
        let ids = self
            .claim_ids(
                &ClaimSpec {
                    table: "mail_outbox",
                    by: "claimed_by",
                    until: "claimed_until",
                    due: "sent_at IS NULL AND failed_at IS NULL AND next_at <= {at}",
                    reclaim_own: false,
                    order: "next_at, id",
                },
                node_id,
                at + MAIL_CLAIM,
                at,
                limit,
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(mail_outbox::Entity::find()
            .filter(mail_outbox::Column::Id.is_in(ids))
            .order_by_asc(mail_outbox::Column::NextAt)
            .all(&self.db)
            .await?)
    }

    /// When the earliest unsent mail is due (the worker sleeps until then).
    pub async fn next_mail_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(mail_outbox::Entity::find()
            .select_only()
            .column(mail_outbox::Column::NextAt)
            .filter(mail_outbox::Column::SentAt.is_null())
            .filter(mail_outbox::Column::FailedAt.is_null())
            .order_by_asc(mail_outbox::Column::NextAt)
            .limit(1)
            .into_tuple::<DateTime<Utc>>()
            .one(&self.db)
            .await?)
    }

    /// Records what became of a claimed mail and lets the claim go, only while `node_id`
    /// holds it; a mail sent or given up loses its body. `false` when the claim was lost.
    pub async fn finish_mail(&self, id: &str, node_id: &str, outcome: MailOutcome) -> Result<bool> {
        let at = now();
        let mut update = mail_outbox::Entity::update_many()
            .col_expr(
                mail_outbox::Column::Attempts,
                Expr::col(mail_outbox::Column::Attempts).add(1),
            )
            .col_expr(mail_outbox::Column::ClaimedBy, Expr::value(None::<String>))
            .col_expr(
                mail_outbox::Column::ClaimedUntil,
                Expr::value(None::<DateTime<Utc>>),
            );
        update = match outcome {
            MailOutcome::Sent => update
                .col_expr(mail_outbox::Column::SentAt, Expr::value(at))
                .col_expr(mail_outbox::Column::Body, Expr::value(None::<String>)),
            MailOutcome::Retry { error, next_at } => update
                .col_expr(mail_outbox::Column::LastError, Expr::value(error))
                .col_expr(mail_outbox::Column::NextAt, Expr::value(next_at)),
            MailOutcome::Failed { error } => update
                .col_expr(mail_outbox::Column::LastError, Expr::value(error))
                .col_expr(mail_outbox::Column::FailedAt, Expr::value(at))
                .col_expr(mail_outbox::Column::Body, Expr::value(None::<String>)),
        };
        Ok(update
            .filter(mail_outbox::Column::Id.eq(id))
            .filter(mail_outbox::Column::ClaimedBy.eq(node_id))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// A tenant's mails, newest first, after the cursor `before` (an id), at most `limit`.
    pub async fn list_mail(
        &self,
        tenant_id: &str,
        state: Option<MailState>,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<mail_outbox::Model>> {
        let mut query =
            mail_outbox::Entity::find().filter(mail_outbox::Column::TenantId.eq(tenant_id));
        query = match state {
            None => query,
            Some(MailState::Sent) => query.filter(mail_outbox::Column::SentAt.is_not_null()),
            Some(MailState::Failed) => query.filter(mail_outbox::Column::FailedAt.is_not_null()),
            Some(MailState::Pending) => query
                .filter(mail_outbox::Column::SentAt.is_null())
                .filter(mail_outbox::Column::FailedAt.is_null()),
        };
        if let Some(before) = before {
            query = query.filter(mail_outbox::Column::Id.lt(before));
        }
        Ok(query
            .order_by_desc(mail_outbox::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Deletes sent and failed mails finished before `before` (the sweep); how many.
    pub async fn delete_old_mail(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(mail_outbox::Entity::delete_many()
            .filter(
                sea_orm::Condition::any()
                    .add(mail_outbox::Column::SentAt.lt(before))
                    .add(mail_outbox::Column::FailedAt.lt(before)),
            )
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    // ---- email verification codes --------------------------------------------------------

    /// Stores `code_hash` as `user`'s verification code until `expires_at`, replacing any
    /// earlier one (its tries start again: a new code is a new secret).
    pub async fn put_email_code(
        &self,
        user: &user::Model,
        code_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let txn = self.begin_write().await?;
        email_code::Entity::delete_by_id(user.id.clone())
            .exec(&txn.db)
            .await?;
        email_code::ActiveModel {
            user_id: Set(user.id.clone()),
            tenant_id: Set(user.tenant_id.clone()),
            code_hash: Set(code_hash.to_owned()),
            tries: Set(0),
            created_at: Set(now()),
            expires_at: Set(expires_at),
        }
        .insert(&txn.db)
        .await?;
        txn.db.commit().await?;
        Ok(())
    }

    /// Whether `user_id` has a code that can still be entered.
    pub async fn has_live_email_code(&self, user_id: &str, max_tries: i32) -> Result<bool> {
        Ok(email_code::Entity::find_by_id(user_id.to_owned())
            .filter(email_code::Column::ExpiresAt.gt(now()))
            .filter(email_code::Column::Tries.lt(max_tries))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Checks a code for `user_id` with `matches` (a constant-time comparison of its hash):
    /// right marks the email verified and deletes the code; wrong counts a try. In one write
    /// transaction, so that tries on two nodes at once are both counted.
    pub async fn check_email_code(
        &self,
        tenant_id: &str,
        user_id: &str,
        max_tries: i32,
        matches: impl FnOnce(&str) -> bool,
    ) -> Result<CodeCheck> {
        let txn = self.begin_write().await?;
        let at = now();
        let Some(code) = email_code::Entity::find_by_id(user_id.to_owned())
            .filter(email_code::Column::TenantId.eq(tenant_id))
            .one(&txn.db)
            .await?
        else {
            return Ok(CodeCheck::NoCode);
        };
        if code.expires_at <= at || code.tries >= max_tries {
            return Ok(CodeCheck::NoCode);
        }
        if matches(&code.code_hash) {
            email_code::Entity::delete_by_id(user_id.to_owned())
                .exec(&txn.db)
                .await?;
            user::Entity::update_many()
                .col_expr(user::Column::EmailVerifiedAt, Expr::value(at))
                .filter(user::Column::Id.eq(user_id))
                .filter(user::Column::EmailVerifiedAt.is_null())
                .exec(&txn.db)
                .await?;
            txn.db.commit().await?;
            crate::credential_cache::changed();
            return Ok(CodeCheck::Verified);
        }
        let tries = code.tries + 1;
        let mut model: email_code::ActiveModel = code.into();
        model.tries = Set(tries);
        model.update(&txn.db).await?;
        txn.db.commit().await?;
        Ok(CodeCheck::Wrong {
            left: max_tries - tries,
        })
    }

    // ---- password resets ------------------------------------------------------------------

    /// Stores a reset token's hash for `user` until `expires_at`. Earlier unused links of the
    /// user stay valid until they expire or one of them is used.
    pub async fn create_password_reset(
        &self,
        user: &user::Model,
        token_hash: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        password_reset::ActiveModel {
            token_hash: Set(token_hash.to_owned()),
            user_id: Set(user.id.clone()),
            tenant_id: Set(user.tenant_id.clone()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// The active user a live (unused, unexpired) reset token is for, without using it.
    pub async fn password_reset_user(&self, token_hash: &str) -> Result<Option<user::Model>> {
        let Some(reset) = password_reset::Entity::find_by_id(token_hash.to_owned())
            .filter(password_reset::Column::UsedAt.is_null())
            .filter(password_reset::Column::ExpiresAt.gt(now()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .get_user(&reset.tenant_id, &reset.user_id)
            .await?
            .filter(|u| u.status == UserStatus::Active))
    }

    /// Uses a reset token (once, unexpired): sets its user's password, marks the email
    /// verified (the link came to it), voids the user's other reset links and revokes every
    /// refresh token of theirs; access tokens issued before now stop working
    /// (`password_changed_at`). `None` when the token is not usable or its user is gone or
    /// disabled.
    pub async fn use_password_reset(
        &self,
        token_hash: &str,
        password_hash: &str,
    ) -> Result<Option<user::Model>> {
        let txn = self.begin_write().await?;
        let at = now();
        let used = password_reset::Entity::update_many()
            .col_expr(password_reset::Column::UsedAt, Expr::value(at))
            .filter(password_reset::Column::TokenHash.eq(token_hash))
            .filter(password_reset::Column::UsedAt.is_null())
            .filter(password_reset::Column::ExpiresAt.gt(at))
            .exec(&txn.db)
            .await?
            .rows_affected;
        if used != 1 {
            return Ok(None);
        }
        let Some(reset) = password_reset::Entity::find_by_id(token_hash.to_owned())
            .one(&txn.db)
            .await?
        else {
            return Ok(None);
        };
        let Some(existing) = txn.get_user(&reset.tenant_id, &reset.user_id).await? else {
            return Ok(None);
        };
        if existing.status != UserStatus::Active {
            return Ok(None);
        }
        let verified = existing.email_verified_at.or(Some(at));
        let mut model: user::ActiveModel = existing.into();
        model.password_hash = Set(Some(password_hash.to_owned()));
        model.password_changed_at = Set(Some(at));
        model.email_verified_at = Set(verified);
        model.updated_at = Set(at);
        let updated = model.update(&txn.db).await?;
        password_reset::Entity::update_many()
            .col_expr(password_reset::Column::UsedAt, Expr::value(at))
            .filter(password_reset::Column::UserId.eq(&updated.id))
            .filter(password_reset::Column::UsedAt.is_null())
            .exec(&txn.db)
            .await?;
        refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::RevokedAt, Expr::value(at))
            .filter(refresh_token::Column::UserId.eq(&updated.id))
            .filter(refresh_token::Column::RevokedAt.is_null())
            .exec(&txn.db)
            .await?;
        txn.db.commit().await?;
        crate::credential_cache::changed();
        Ok(Some(updated))
    }

    /// Deletes verification codes and reset tokens past their expiry (the sweep); how many.
    pub async fn delete_expired_signin(&self) -> Result<u64> {
        let at = now();
        let codes = email_code::Entity::delete_many()
            .filter(email_code::Column::ExpiresAt.lt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        let resets = password_reset::Entity::delete_many()
            .filter(password_reset::Column::ExpiresAt.lt(at))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(codes + resets)
    }
}
