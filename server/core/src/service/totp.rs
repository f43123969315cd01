//! The TOTP second factor (CONTRACT.md §18): setting it up, confirming it, removing it, an
//! owner's reset, the tenant's policy that requires it, and the second step of a sign-in.
//!
//! Why the shape:
//! - A password alone no longer makes a session for a user with a confirmed factor: the login
//!   answers a **ticket** (random, stored hashed, 5 minutes) and the session comes from
//!   `POST /api/auth/login/totp {ticket, code}`. The ticket lives in the database, so either
//!   node finishes the sign-in, and its wrong codes are counted in its row: 5 and it is void.
//!   That limit is per ticket, not per address, as the contract says; a guesser has to get a
//!   new ticket with the password for every 5 guesses, and each ticket costs a sign-in attempt
//!   (`Limits::auth_attempt`, per address and per email). Removing a factor with a code counts
//!   as a sign-in attempt too (a stolen access token must not guess its way to turning the
//!   factor off).
//! - Where the tenant requires a factor and a password user has none, the login answers a
//!   ticket of kind `totp_setup`: it can set up and confirm a factor
//!   (`/api/auth/login/totp/setup`, `/confirm`) and nothing else; the confirmation answers the
//!   recovery codes and the session. A ticket's kind is not stored: it follows from whether
//!   its user has a confirmed factor, so a ticket never does what its kind does not.
//! - A code is used once: the step it matched is stored (`last_step`) and a step at or before
//!   it is refused, by a conditional update (`outpost_store::totp`). The code that confirms a
//!   factor counts as used.
//! - The secret is sealed under the master key, bound to the tenant; recovery codes and tickets
//!   are stored hashed and shown once.
//! - Removing one's own factor needs a current code (a stolen access token alone cannot turn the
//!   second factor off); a recovery code does not remove it: the owner's reset is the way back
//!   for a user who lost their device and used their codes.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use ring::rand::{SecureRandom, SystemRandom};

use super::Core;
use super::access::{Access, Action};
use super::audit::Audit;
use super::limits::Limits;
use super::users::{Session, Users};
use crate::totp as algorithm;
use outpost_store::credentials::hash_secret;
use outpost_store::domain::{
    Actor, ActorKind, AuditAction, AuditEvent, AuditTarget, Caller, DomainError, UserStatus,
};
use outpost_store::totp::{FactorPut, MAX_TICKET_TRIES};
use outpost_store::{login_ticket, user};

/// How long a login ticket waits for its code.
pub const TICKET_TTL: Duration = Duration::minutes(5);
/// Recovery codes issued on confirmation.
pub const RECOVERY_CODES: usize = 10;
/// The issuer authenticator apps show.
pub const ISSUER: &str = "Outpost";

/// What the second step of a sign-in asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactorKind {
    /// A code of the user's factor (or a recovery code).
    Totp,
    /// The tenant requires a factor the user does not have: set one up first.
    TotpSetup,
}

impl SecondFactorKind {
    /// As the API answers it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::TotpSetup => "totp_setup",
        }
    }
}

/// A sign-in waiting for its second step.
#[derive(Debug, Clone)]
pub struct SecondFactor {
    /// What it waits for.
    pub kind: SecondFactorKind,
    /// The ticket (`opt_…`), shown once.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: i64,
}

/// A new factor, for the user's authenticator app.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The secret in base32.
    pub secret: String,
    /// `otpauth://totp/Outpost:<email>?secret=…&issuer=Outpost…`.
    pub otpauth_url: String,
}

/// A confirmed factor: its recovery codes (shown once) and, when a setup ticket confirmed it,
/// the session that sign-in starts.
#[derive(Debug)]
pub struct Confirmed {
    /// 10 single-use codes.
    pub recovery_codes: Vec<String>,
    /// The session (setup during sign-in only).
    pub session: Option<Session>,
}

/// The clock, in Unix seconds (tests move it).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The TOTP service.
#[derive(Clone)]
pub struct Totp {
    core: Arc<Core>,
    limits: Limits,
    audit: Audit,
    users: Users,
    clock: Clock,
}

fn user_actor(user: &user::Model) -> Actor {
    Actor {
        kind: ActorKind::User,
        id: user.id.clone(),
        label: user.email.clone(),
    }
}

fn event(action: AuditAction, user_id: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::new(action, AuditTarget::User, user_id).with(detail)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    bytes
}

/// A recovery code as stored: lower case, without separators.
fn recovery_key(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Ten new recovery codes (`xxxxx-xxxxx`, 50 bits each).
fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let text = algorithm::base32(&random_bytes::<7>()).to_ascii_lowercase();
            format!("{}-{}", &text[..5], &text[5..10])
        })
        .collect()
}

fn ticket_refused() -> DomainError {
    DomainError::Unauthorized(
        "the sign-in ticket is unknown, expired, used, or void after 5 wrong codes: sign in \
         again with your password"
            .into(),
    )
}

fn wrong_code(field: &str) -> DomainError {
    DomainError::Invalid {
        code: "wrong_code",
        message: format!(
            "{field}: not a current code of your authenticator (6 digits, each used once); \
             check the device's clock"
        ),
    }
}

impl Totp {
    pub(super) fn new(core: Arc<Core>, limits: Limits, users: Users) -> Self {
        Self {
            audit: Audit::new(core.clone()),
            core,
            limits,
            users,
            clock: Arc::new(|| Utc::now().timestamp()),
        }
    }

    /// The same service reading the time from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The hook of `Users::login`, once the password matched: the second step this sign-in
    /// needs, if any (a ticket is stored for it).
    pub(super) async fn second_step(
        core: &Core,
        user: &user::Model,
    ) -> Result<Option<SecondFactor>, DomainError> {
        let factor = core.store.totp_factor(&user.id).await?;
        let kind = if factor.is_some_and(|f| f.confirmed_at.is_some()) {
            SecondFactorKind::Totp
        } else if user.password_hash.is_some()
            && core
                .store
                .get_tenant(&user.tenant_id)
                .await?
                .is_some_and(|t| t.require_totp)
        {
            SecondFactorKind::TotpSetup
        } else {
            return Ok(None);
        };
        let ticket = format!("opt_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
        core.store
            .insert_login_ticket(
                &user.tenant_id,
                &user.id,
                &hash_secret(&ticket),
                Utc::now() + TICKET_TTL,
            )
            .await?;
        Ok(Some(SecondFactor {
            kind,
            ticket,
            expires_in: TICKET_TTL.num_seconds(),
        }))
    }

    /// The signed-in user behind `caller`: API keys are refused (a key must not be able to
    /// change its user's second factor).
    async fn signed_in(&self, caller: &Caller) -> Result<user::Model, DomainError> {
        let Some(id) = caller.principal.user_id() else {
            return Err(DomainError::Forbidden(
                "a second factor is set up and removed by its user, signed in with a password; \
                 not with an API key"
                    .into(),
            ));
        };
        self.core
            .store
            .get_user(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::Unauthorized("the user is gone".into()))
    }

    /// The user of a live ticket, who must be active.
    async fn ticket_user(
        &self,
        ticket: &str,
    ) -> Result<(login_ticket::Model, user::Model), DomainError> {
        if !ticket.starts_with("opt_") || ticket.len() > 100 {
            return Err(ticket_refused());
        }
        let hash = hash_secret(ticket);
        let Some(row) = self.core.store.live_login_ticket(&hash).await? else {
            return Err(ticket_refused());
        };
        match self
            .core
            .store
            .get_user(&row.tenant_id, &row.user_id)
            .await?
        {
            Some(user) if user.status == UserStatus::Active => Ok((row, user)),
            _ => Err(ticket_refused()),
        }
    }

    /// `POST /api/auth/totp/setup`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn setup(&self, caller: &Caller) -> Result<Setup, DomainError> {
        let user = self.signed_in(caller).await?;
        self.core.writable()?;
        self.begin(&user, caller.address).await
    }

    /// `POST /api/auth/login/totp/setup {ticket}`: setup during a sign-in the tenant's policy
    /// holds up.
    #[tracing::instrument(skip_all)]
    pub async fn setup_with_ticket(
        &self,
        ticket: &str,
        client: IpAddr,
    ) -> Result<Setup, DomainError> {
        let (_, user) = self.ticket_user(ticket).await?;
        self.begin(&user, Some(client)).await
    }

    async fn begin(
        &self,
        user: &user::Model,
        address: Option<IpAddr>,
    ) -> Result<Setup, DomainError> {
        if user.password_hash.is_none() {
            return Err(DomainError::NotAllowed {
                code: "no_password",
                message: "a second factor is for password accounts; this user signs in \
                          through single sign-on (or has not accepted the invite)"
                    .into(),
            });
        }
        let secret = random_bytes::<{ algorithm::SECRET_BYTES }>();
        let sealed = self.core.master.seal(&user.tenant_id, &secret);
        match self
            .core
            .store
            .put_totp_factor(&user.tenant_id, &user.id, &sealed)
            .await?
        {
            FactorPut::Confirmed => {
                return Err(DomainError::Conflict {
                    code: "totp_confirmed",
                    message: "a second factor is set up already: remove it first \
                              (DELETE /api/auth/totp with a current code)"
                        .into(),
                });
            }
            FactorPut::Stored => {}
        }
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(user),
                address,
                event(AuditAction::UserTotpSetup, &user.id, serde_json::json!({})),
            )
            .await?;
        Ok(Setup {
            secret: algorithm::base32(&secret),
            otpauth_url: algorithm::otpauth_url(ISSUER, &user.email, &secret),
        })
    }

    /// The user's factor's secret, opened.
    async fn secret_of(
        &self,
        user: &user::Model,
    ) -> Result<Option<(outpost_store::totp_factor::Model, Vec<u8>)>, DomainError> {
        let Some(factor) = self.core.store.totp_factor(&user.id).await? else {
            return Ok(None);
        };
        let secret = self
            .core
            .master
            .open(&user.tenant_id, &factor.secret)
            .map_err(|why| Users::internal(format!("a TOTP secret does not open: {why}")))?;
        Ok(Some((factor, secret)))
    }

    /// `POST /api/auth/totp/confirm {code}`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn confirm(&self, caller: &Caller, code: &str) -> Result<Confirmed, DomainError> {
        let user = self.signed_in(caller).await?;
        self.core.writable()?;
        match self.finish_setup(&user, code, caller.address).await? {
            Some(recovery_codes) => Ok(Confirmed {
                recovery_codes,
                session: None,
            }),
            None => Err(wrong_code("code")),
        }
    }

    /// `POST /api/auth/login/totp/confirm {ticket, code}`: confirms the factor set up with a
    /// setup ticket and finishes that sign-in. A wrong code counts against the ticket.
    #[tracing::instrument(skip_all)]
    pub async fn confirm_with_ticket(
        &self,
        ticket: &str,
        code: &str,
        client: IpAddr,
    ) -> Result<Confirmed, DomainError> {
        let (row, user) = self.ticket_user(ticket).await?;
        match self.finish_setup(&user, code, Some(client)).await? {
            Some(recovery_codes) => {
                let session = self.complete(&row, user, client, "totp_setup").await?;
                Ok(Confirmed {
                    recovery_codes,
                    session: Some(session),
                })
            }
            None => Err(self.wrong_ticket_code(&row, &user, client).await?),
        }
    }

    /// Confirms the user's unconfirmed factor with `code`: the recovery codes, or `None` for
    /// a wrong code (audited).
    async fn finish_setup(
        &self,
        user: &user::Model,
        code: &str,
        address: Option<IpAddr>,
    ) -> Result<Option<Vec<String>>, DomainError> {
        let Some((factor, secret)) = self.secret_of(user).await? else {
            return Err(DomainError::Conflict {
                code: "totp_not_set_up",
                message: "there is no second factor to confirm: POST /api/auth/totp/setup first"
                    .into(),
            });
        };
        if factor.confirmed_at.is_some() {
            return Err(DomainError::Conflict {
                code: "totp_confirmed",
                message: "the second factor is confirmed already".into(),
            });
        }
        let Some(step) = algorithm::matching_step(&secret, code, (self.clock)()) else {
            self.failed(user, address, "confirm").await?;
            return Ok(None);
        };
        let codes = new_recovery_codes();
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| hash_secret(&recovery_key(c)))
            .collect();
        if !self
            .core
            .store
            .confirm_totp(&user.id, step, &hashes)
            .await?
        {
            return Err(DomainError::Conflict {
                code: "totp_confirmed",
                message: "the second factor was confirmed or removed meanwhile".into(),
            });
        }
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(user),
                address,
                event(
                    AuditAction::UserTotpConfirm,
                    &user.id,
                    serde_json::json!({"recovery_codes": RECOVERY_CODES}),
                ),
            )
            .await?;
        Ok(Some(codes))
    }

    async fn failed(
        &self,
        user: &user::Model,
        address: Option<IpAddr>,
        during: &str,
    ) -> Result<(), DomainError> {
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(user),
                address,
                event(
                    AuditAction::AuthTotpFailed,
                    &user.id,
                    serde_json::json!({"during": during}),
                ),
            )
            .await?;
        Ok(())
    }

    /// Counts a wrong code against a ticket (audited); the refusal to answer.
    async fn wrong_ticket_code(
        &self,
        row: &login_ticket::Model,
        user: &user::Model,
        client: IpAddr,
    ) -> Result<DomainError, DomainError> {
        let tries = self
            .core
            .store
            .login_ticket_wrong_code(&row.ticket_hash)
            .await?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(user),
                Some(client),
                event(
                    AuditAction::AuthTotpFailed,
                    &user.id,
                    serde_json::json!({"during": "login", "tries": tries}),
                ),
            )
            .await?;
        let left = MAX_TICKET_TRIES - tries;
        Ok(if left <= 0 {
            DomainError::Unauthorized(
                "wrong code; that was the 5th: this sign-in ticket is void, sign in again with \
                 your password"
                    .into(),
            )
        } else {
            DomainError::Unauthorized(format!(
                "wrong code (a code is used once; {left} more tries with this ticket)"
            ))
        })
    }

    /// Ends a sign-in whose second step passed: the ticket is used, the session started.
    async fn complete(
        &self,
        row: &login_ticket::Model,
        user: user::Model,
        client: IpAddr,
        how: &str,
    ) -> Result<Session, DomainError> {
        if !self.core.store.use_login_ticket(&row.ticket_hash).await? {
            return Err(ticket_refused());
        }
        self.core.store.touch_login(&user.id).await?;
        self.audit
            .record(
                &user.tenant_id,
                &user_actor(&user),
                Some(client),
                event(
                    AuditAction::AuthLogin,
                    &user.id,
                    serde_json::json!({"second_factor": how}),
                ),
            )
            .await?;
        self.users.start_session(user).await
    }

    /// `POST /api/auth/login/totp {ticket, code}`: a current TOTP code or an unused recovery
    /// code finishes the sign-in.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        ticket: &str,
        code: &str,
        client: IpAddr,
    ) -> Result<Session, DomainError> {
        let (row, user) = self.ticket_user(ticket).await?;
        let Some((factor, secret)) = self.secret_of(&user).await? else {
            return Err(ticket_refused());
        };
        if factor.confirmed_at.is_none() {
            // A setup ticket: it finishes through `confirm_with_ticket`.
            return Err(ticket_refused());
        }
        if code.chars().count() > 64 {
            return Err(self.wrong_ticket_code(&row, &user, client).await?);
        }
        if algorithm::normalize(code).is_some() {
            let used = match algorithm::matching_step(&secret, code, (self.clock)()) {
                Some(step) => self.core.store.use_totp_step(&user.id, step).await?,
                None => false,
            };
            if used {
                return self.complete(&row, user, client, "totp").await;
            }
        } else if self
            .core
            .store
            .use_recovery_code(&user.id, &hash_secret(&recovery_key(code)))
            .await?
        {
            let left = self.core.store.recovery_codes_left(&user.id).await?;
            self.audit
                .record(
                    &user.tenant_id,
                    &user_actor(&user),
                    Some(client),
                    event(
                        AuditAction::AuthRecoveryCodeUsed,
                        &user.id,
                        serde_json::json!({"left": left}),
                    ),
                )
                .await?;
            return self.complete(&row, user, client, "recovery_code").await;
        }
        Err(self.wrong_ticket_code(&row, &user, client).await?)
    }

    /// `DELETE /api/auth/totp {code}`: the signed-in user removes their factor with a current
    /// code (not a recovery code).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn remove(&self, caller: &Caller, code: &str) -> Result<(), DomainError> {
        let user = self.signed_in(caller).await?;
        if let Some(address) = caller.address {
            self.limits.auth_attempt(address, Some(&user.email))?;
        }
        self.core.writable()?;
        let Some((factor, secret)) = self.secret_of(&user).await? else {
            return Err(DomainError::NotFound("you have no second factor".into()));
        };
        // An unconfirmed factor is removed with any code: it never protected anything.
        if factor.confirmed_at.is_some() {
            let used = match algorithm::matching_step(&secret, code, (self.clock)()) {
                Some(step) => self.core.store.use_totp_step(&user.id, step).await?,
                None => false,
            };
            if !used {
                self.failed(&user, caller.address, "remove").await?;
                return Err(wrong_code("code"));
            }
        }
        self.core.store.delete_totp(&user.id).await?;
        self.audit
            .record(
                &user.tenant_id,
                &caller.actor(),
                caller.address,
                event(AuditAction::UserTotpRemove, &user.id, serde_json::json!({})),
            )
            .await?;
        Ok(())
    }

    /// `DELETE /api/users/{id}/totp`: an owner resets another user's factor (and recovery
    /// codes); that user signs in with the password alone again, or is led to set up a new
    /// factor where the tenant requires one.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
    pub async fn reset(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageUsers)?;
        self.core.writable()?;
        let Some(user) = self.core.store.get_user(&caller.tenant_id, id).await? else {
            return Err(DomainError::NotFound(format!("no user {id}")));
        };
        let had = self.core.store.delete_totp(&user.id).await?;
        self.audit
            .record(
                &caller.tenant_id,
                &caller.actor(),
                caller.address,
                event(
                    AuditAction::UserTotpReset,
                    &user.id,
                    serde_json::json!({"email": user.email, "had_factor": had}),
                ),
            )
            .await?;
        Ok(())
    }

    /// Whether the caller (a user) has a confirmed factor, and how many recovery codes are
    /// left; `None` for an API key.
    pub async fn status(&self, caller: &Caller) -> Result<Option<(bool, usize)>, DomainError> {
        let Some(id) = caller.principal.user_id() else {
            return Ok(None);
        };
        let confirmed = self
            .core
            .store
            .totp_factor(id)
            .await?
            .is_some_and(|f| f.confirmed_at.is_some());
        let left = if confirmed {
            self.core.store.recovery_codes_left(id).await?
        } else {
            0
        };
        Ok(Some((confirmed, left)))
    }

    /// The ids of the caller's tenant's users with a confirmed factor (owners' user list).
    pub async fn users_with_factor(&self, caller: &Caller) -> Result<Vec<String>, DomainError> {
        Access::require(caller, Action::ReadUsers)?;
        Ok(self.core.store.users_with_totp(&caller.tenant_id).await?)
    }

    /// Sets the tenant's policy (`PATCH /api/tenants/{id} {require_totp}`): owners of that
    /// tenant only; audited as a `tenant.update`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn set_policy(
        &self,
        caller: &Caller,
        tenant_id: &str,
        required: bool,
    ) -> Result<(), DomainError> {
        if tenant_id != caller.tenant_id {
            return Err(DomainError::NotAllowed {
                code: "own_tenant_only",
                message: "require_totp: only the tenant's own owners set it".into(),
            });
        }
        Access::require(caller, Action::ManageUsers)?;
        self.core.writable()?;
        self.core
            .store
            .set_require_totp(tenant_id, required)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no tenant {tenant_id}")))?;
        self.audit
            .record(
                tenant_id,
                &caller.actor(),
                caller.address,
                AuditEvent::new(AuditAction::TenantUpdate, AuditTarget::Tenant, tenant_id)
                    .with(serde_json::json!({"require_totp": required})),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_distinct_and_read_back_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 11, "{code}");
            assert_eq!(
                recovery_key(&code.to_uppercase().replace('-', " ")),
                recovery_key(code)
            );
            assert!(
                algorithm::normalize(code).is_none(),
                "{code} reads as a TOTP code"
            );
        }
    }
}
