//! Users and their sessions (CONTRACT.md §9): sign-in, refresh, logout, invites, and the owners'
//! management of a tenant's users.
//!
//! A session is a pair: an access token (a JWT, 15 minutes, `crate::jwt`) that every request
//! checks against the user's current row, and an opaque refresh token (`opr_…`, 7 days,
//! stored hashed) that is exchanged for a new pair on every use. Every exchange retires the
//! token presented; a retired token presented again more than [`REFRESH_GRACE`] after its
//! retirement is taken as stolen and revokes its whole family (every token descended from that
//! login). Within the grace it gets a new pair of the same family, so that two tabs (or two
//! CLI processes) refreshing with the same token at once both go on.
//!
//! A failed login answers one message whatever failed, after the same argon2 work
//! (`crate::passwords`).
//!
//! Where a future audit log appends: [`note`], called once for each login, failed login,
//! session event and change to a user, with the actor and the target.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::Core;
use super::access::{Access, Action};
use super::account_mail::AccountMail;
use outpost_store::credentials::{KeyKind, generate_secret, hash_secret};
use std::net::IpAddr;

use super::audit::Audit;
use super::limits::Limits;
use crate::jwt::{ACCESS_TTL_S, Claims};
use crate::passwords;
use outpost_store::domain::{
    Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, Caller, DomainError, Principal, Role,
    UserStatus, quota_exceeded,
};
use outpost_store::{NewUser, Refreshed, UserChange, UserChanged, UserRefused, new_id, user};

/// How long a refresh token lives after it is issued.
pub const REFRESH_TTL: Duration = Duration::days(7);
/// How long an invite may wait to be accepted.
pub const INVITE_TTL: Duration = Duration::hours(72);
/// How long after its retirement a refresh token is still exchanged (two tabs at once).
pub const REFRESH_GRACE: Duration = Duration::seconds(5);
/// The one answer to every failed login.
pub const LOGIN_FAILED: &str = "wrong email or password";
/// The longest email accepted (RFC 5321's path limit).
const MAX_EMAIL: usize = 254;

/// A signed-in user's tokens.
#[derive(Debug)]
pub struct Session {
    /// The JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// The opaque token that gets the next pair (`opr_…`).
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Who signed in.
    pub user: user::Model,
}

/// What a password sign-in answers: a session, or the second step it needs (CONTRACT.md §18).
#[derive(Debug)]
pub enum Login {
    /// Signed in.
    Session(Box<Session>),
    /// A second factor is needed first (`super::totp`).
    SecondFactor(super::totp::SecondFactor),
}

/// Who asks, as `GET /api/auth/me` shows it.
#[derive(Debug)]
pub struct Me {
    /// The caller's tenant.
    pub tenant_id: String,
    /// Its current role.
    pub role: Role,
    /// What its key's scopes allow (every scope for a user).
    pub scopes: outpost_store::domain::Scopes,
    /// User or API key.
    pub principal: Principal,
    /// The user's row, when a user asks.
    pub user: Option<user::Model>,
}

/// A created user with its one-time invite.
#[derive(Debug)]
pub struct Invited {
    /// The user (no password yet).
    pub user: user::Model,
    /// The invite token (`opi_…`), shown once.
    pub invite_token: String,
    /// When it stops working.
    pub invite_expires_at: DateTime<Utc>,
}

/// What a user may be changed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// `true` disables, `false` enables again.
    pub disabled: Option<bool>,
}

/// The audit rows this service writes (CONTRACT.md §9): sign-ins, refused sign-ins, and changes to
/// users. Refreshes, logouts and reused refresh tokens are logged (`tracing`), not audited: they
/// change no one's rights.
fn audit_event(action: AuditAction, user_id: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::new(action, AuditTarget::User, user_id).with(detail)
}

/// The user as an audit row's actor.
fn user_actor(user: &user::Model) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: user.id.clone(),
        label: user.email.clone(),
    }
}

/// The users service.
#[derive(Clone)]
pub struct Users {
    core: Arc<Core>,
    limits: Limits,
    audit: Audit,
    mail: AccountMail,
}

impl Users {
    pub(super) fn new(core: Arc<Core>, limits: Limits, audit: Audit, mail: AccountMail) -> Self {
        Self {
            core,
            limits,
            audit,
            mail,
        }
    }

    /// Records a sign-in that failed for `email` from `client`: in the audit log of the
    /// user's tenant when the email is a user's, in the server's log otherwise (an unknown
    /// email has no tenant to record it in).
    async fn login_failed(
        &self,
        email: &str,
        user: Option<&user::Model>,
        client: IpAddr,
    ) -> Result<(), DomainError> {
        match user {
            Some(user) => {
                self.audit
                    .record(
                        &user.tenant_id,
                        &user_actor(user),
                        Some(client),
                        audit_event(
                            AuditAction::AuthLoginFailed,
                            &user.id,
                            serde_json::json!({}),
                        ),
                    )
                    .await?;
            }
            None => {
                tracing::info!(client = %client, email_len = email.len(), "sign-in refused for an unknown email");
            }
        }
        Ok(())
    }

    pub(super) fn internal(why: String) -> DomainError {
        DomainError::Internal(anyhow::anyhow!(why))
    }

    /// A new pair for `user`, in refresh-token family `family_id` (the first of a login's
    /// family: a new id).
    async fn issue(&self, user: user::Model, family_id: &str) -> Result<Session, DomainError> {
        let refresh_token = generate_secret(KeyKind::Refresh);
        self.core
            .store
            .insert_refresh(
                &user,
                family_id,
                &hash_secret(&refresh_token),
                Utc::now() + REFRESH_TTL,
            )
            .await?;
        Ok(self.pair(user, refresh_token))
    }

    /// A first session for `user`, as a login starts one (signup answers with it).
    /// A user who must verify their email and has no code that works is mailed one
    /// (`AccountMail::after_sign_in`), whichever way they signed in.
    pub(super) async fn start_session(&self, user: user::Model) -> Result<Session, DomainError> {
        self.mail.after_sign_in(&user).await?;
        self.issue(user, &new_id()).await
    }

    fn pair(&self, user: user::Model, refresh_token: String) -> Session {
        let now = Utc::now().timestamp();
        let access_token = self.core.signer.sign(&Claims {
            sub: user.id.clone(),
            tid: user.tenant_id.clone(),
            role: user.role.clone(),
            iat: now,
            exp: now + ACCESS_TTL_S,
            jti: new_id(),
        });
        Session {
            access_token,
            refresh_token,
            expires_in: ACCESS_TTL_S,
            user,
        }
    }

    /// `POST /api/auth/login`. A user with a second factor, or whom the tenant requires to
    /// set one up, gets a ticket for the second step instead of a session (`super::totp`).
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<Login, DomainError> {
        self.limits.auth_attempt(client, Some(email))?;
        if email.chars().count() > MAX_EMAIL || password.chars().count() > passwords::MAX_LENGTH {
            self.login_failed(email, None, client).await?;
            return Err(DomainError::Unauthorized(LOGIN_FAILED.into()));
        }
        let found = self.core.store.user_by_email(email).await?;
        let stored = found.as_ref().and_then(|u| u.password_hash.as_deref());
        // The same argon2 work whether or not the email is known (a dummy hash otherwise).
        let matched = self
            .core
            .passwords
            .verify_or_dummy(password, stored)
            .await
            .map_err(Self::internal)?;
        let user = match found {
            Some(user) if matched && user.status == UserStatus::Active => user,
            other => {
                self.login_failed(email, other.as_ref(), client).await?;
                return Err(DomainError::Unauthorized(LOGIN_FAILED.into()));
            }
        };
        if let Some(second) = super::totp::Totp::second_step(&self.core, &user).await? {
            return Ok(Login::SecondFactor(second));
        }
        self.core.store.touch_login(&user.id).await?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(&user),
                Some(client),
                audit_event(AuditAction::AuthLogin, &user.id, serde_json::json!({})),
            )
            .await?;
        Ok(Login::Session(Box::new(self.start_session(user).await?)))
    }

    /// `POST /api/auth/refresh`: a new pair for a refresh token, which is retired.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: IpAddr,
    ) -> Result<Session, DomainError> {
        self.limits.auth_attempt(client, None)?;
        let refused = || {
            DomainError::Unauthorized(
                "the refresh token is unknown, expired or revoked: sign in again".into(),
            )
        };
        if !refresh_token.starts_with("opr_") {
            return Err(refused());
        }
        let next = generate_secret(KeyKind::Refresh);
        let outcome = self
            .core
            .store
            .rotate_refresh(
                &hash_secret(refresh_token),
                &hash_secret(&next),
                Utc::now() + REFRESH_TTL,
                REFRESH_GRACE,
            )
            .await?;
        match outcome {
            Refreshed::Rotated(user) => {
                tracing::debug!(user_id = %user.id, "session refreshed");
                Ok(self.pair(*user, next))
            }
            Refreshed::Reused => {
                tracing::warn!(client = %client, "a retired refresh token was presented again: its sign-in's sessions are revoked");
                Err(DomainError::Unauthorized(
                    "this refresh token was already used: every session of that sign-in is revoked; sign in again"
                        .into(),
                ))
            }
            Refreshed::Refused => Err(refused()),
        }
    }

    /// `POST /api/auth/logout`: revokes the refresh token's family. Idempotent: an unknown or
    /// revoked token changes nothing.
    #[tracing::instrument(skip_all)]
    pub async fn logout(&self, refresh_token: &str) -> Result<(), DomainError> {
        if self
            .core
            .store
            .revoke_refresh_family(&hash_secret(refresh_token))
            .await?
        {
            tracing::debug!("signed out");
        }
        Ok(())
    }

    /// `GET /api/auth/me`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn me(&self, caller: &Caller) -> Result<Me, DomainError> {
        let user = match caller.principal.user_id() {
            Some(id) => self.core.store.get_user(&caller.tenant_id, id).await?,
            None => None,
        };
        Ok(Me {
            tenant_id: caller.tenant_id.clone(),
            role: caller.role,
            scopes: caller.scopes,
            principal: caller.principal.clone(),
            user,
        })
    }

    /// `POST /api/auth/accept-invite`: sets the invited user's password; the invite is used.
    #[tracing::instrument(skip_all)]
    pub async fn accept_invite(
        &self,
        token: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<user::Model, DomainError> {
        self.limits.auth_attempt(client, None)?;
        passwords::check_new(password).map_err(DomainError::BadRequest)?;
        let refused = || {
            DomainError::Unauthorized(
                "the invite is unknown, expired or already used: ask an owner for a new one".into(),
            )
        };
        if !token.starts_with("opi_") {
            return Err(refused());
        }
        let hash = self
            .core
            .passwords
            .hash(password)
            .await
            .map_err(Self::internal)?;
        let user = self
            .core
            .store
            .accept_invite(&hash_secret(token), &hash)
            .await?
            .ok_or_else(refused)?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(&user),
                Some(client),
                audit_event(
                    AuditAction::UserInviteAccept,
                    &user.id,
                    serde_json::json!({}),
                ),
            )
            .await?;
        Ok(user)
    }

    /// `GET /api/users`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn list(&self, caller: &Caller) -> Result<Vec<user::Model>, DomainError> {
        Access::require(caller, Action::ReadUsers)?;
        Ok(self.core.store.list_users(&caller.tenant_id).await?)
    }

    /// `GET /api/users/{id}`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<user::Model, DomainError> {
        Access::require(caller, Action::ReadUsers)?;
        self.core
            .store
            .get_user(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// `POST /api/users`: a user without a password and their one-time invite.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        email: &str,
        role: Role,
    ) -> Result<Invited, DomainError> {
        Access::require(caller, Action::ManageUsers)?;
        check_email(email)?;
        self.core.writable()?;
        let user = self
            .core
            .store
            .create_user(NewUser {
                tenant_id: caller.tenant_id.clone(),
                email: email.to_owned(),
                role,
                password_hash: None,
            })
            .await?
            .map_err(|refused| user_refused(email, refused))?;
        let invite_token = generate_secret(KeyKind::Invite);
        let invite_expires_at = Utc::now() + INVITE_TTL;
        self.core
            .store
            .create_invite(
                &caller.tenant_id,
                &user.id,
                &hash_secret(&invite_token),
                invite_expires_at,
            )
            .await?;
        self.audit
            .record(
                &caller.tenant_id,
                &caller.actor(),
                caller.address,
                audit_event(
                    AuditAction::UserCreate,
                    &user.id,
                    serde_json::json!({"email": user.email, "role": user.role}),
                ),
            )
            .await?;
        if self.mail.enabled() {
            // The answer still carries the token (CONTRACT.md §18): the owner may hand it over
            // another way if the mail is slow or lost.
            self.mail
                .mail_invite(&user, &caller.label, &invite_token, invite_expires_at)
                .await?;
        }
        Ok(Invited {
            user,
            invite_token,
            invite_expires_at,
        })
    }

    /// `PATCH /api/users/{id}`: role and/or disabled; an empty patch changes nothing and
    /// answers the user.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        patch: UserPatch,
    ) -> Result<user::Model, DomainError> {
        Access::require(caller, Action::ManageUsers)?;
        if patch.role.is_none() && patch.disabled.is_none() {
            return self
                .core
                .store
                .get_user(&caller.tenant_id, id)
                .await?
                .ok_or_else(|| not_found(id));
        }
        let change = UserChange::Update {
            role: patch.role,
            status: patch.disabled.map(|d| {
                if d {
                    UserStatus::Disabled
                } else {
                    UserStatus::Active
                }
            }),
        };
        match self.change(caller, id, change).await? {
            Some(user) => Ok(*user),
            None => Err(Self::internal(format!("user {id} vanished while changed"))),
        }
    }

    /// `DELETE /api/users/{id}`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageUsers)?;
        self.change(caller, id, UserChange::Delete).await?;
        Ok(())
    }

    async fn change(
        &self,
        caller: &Caller,
        id: &str,
        change: UserChange,
    ) -> Result<Option<Box<user::Model>>, DomainError> {
        self.core.writable()?;
        let asked = change;
        match self
            .core
            .store
            .change_user(&caller.tenant_id, id, change)
            .await?
        {
            UserChanged::NotFound => Err(not_found(id)),
            UserChanged::LastOwner => Err(DomainError::Conflict {
                code: "last_owner",
                message: format!(
                    "user {id} is the tenant's last active owner: make another user owner first \
                     (a tenant is never left without an owner)"
                ),
            }),
            UserChanged::Done(user) => {
                let event = match (&asked, &user) {
                    (_, None) => audit_event(AuditAction::UserDelete, id, serde_json::json!({})),
                    (UserChange::Update { role, status }, Some(_)) => {
                        let action = match (role, status) {
                            (Some(_), _) => AuditAction::UserRoleChange,
                            (None, Some(UserStatus::Disabled)) => AuditAction::UserDisable,
                            (None, _) => AuditAction::UserEnable,
                        };
                        audit_event(
                            action,
                            id,
                            serde_json::json!({
                                "role": role.map(|r| r.to_string()),
                                "status": status.map(|s| s.to_string()),
                            }),
                        )
                    }
                    (UserChange::Delete, Some(_)) => {
                        audit_event(AuditAction::UserDelete, id, serde_json::json!({}))
                    }
                };
                self.audit
                    .record(&caller.tenant_id, &caller.actor(), caller.address, event)
                    .await?;
                Ok(user)
            }
        }
    }
}

fn not_found(id: &str) -> DomainError {
    DomainError::NotFound(format!("no user {id}"))
}

/// Why a user could not be created, as the caller is told.
pub fn user_refused(email: &str, refused: UserRefused) -> DomainError {
    match refused {
        UserRefused::EmailTaken => email_taken(email),
        UserRefused::OverQuota { max } => quota_exceeded("max_users", max, "users"),
    }
}

/// The refusal of an email that is a user's already.
pub(super) fn email_taken(email: &str) -> DomainError {
    DomainError::Conflict {
        code: "email_taken",
        message: format!("email: {email:?} is already a user's (emails are unique on this server)"),
    }
}

/// A plausible email: one `@` with something on each side, no white space or control
/// characters, at most 254 characters (what `api::doc::Email` declares).
pub fn check_email(email: &str) -> Result<(), DomainError> {
    let ok = email.chars().count() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(DomainError::BadRequest(format!(
            "email: {email:?} is not an email address (name@domain, at most {MAX_EMAIL} characters)"
        )))
    }
}
