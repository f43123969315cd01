//! Tenants (CONTRACT.md §9): their plan quotas, signup, and the server's admin who sets them.
//!
//! **The server's admin** is an owner (a user, or an owner API key such as the bootstrap
//! one) of the server's first tenant: the one the first start made, which holds the bootstrap
//! owner key (`Store::default_tenant`). CONTRACT.md §9 gives quotas to "the owner of the server", not
//! to a tenant's owners: a tenant's owner reads their tenant's quotas and usage but does not
//! change them. On a server with one tenant, its owners are the server's admin.
//!
//! A tenant's things are hidden from every other tenant: a caller asking for another tenant
//! gets 404, as for any resource outside its tenant; the server's admin sees every tenant.
//!
//! Quotas are checked where things are created, inside the store's transaction (see
//! `store::tenants`); past one the answer is 403 `quota_exceeded` naming the quota and its
//! value (`domain::quota_exceeded`).
//!
//! Signup (`POST /api/auth/register`, `--allow-signup`) makes a tenant and its owner user
//! and answers with a session, as a login does; it is rate-limited as sign-ins are.

use std::net::IpAddr;
use std::sync::Arc;

use super::Core;
use super::access::Access;
use super::audit::record_of;
use super::limits::Limits;
use super::users::{Session, Users, check_email, email_taken, user_refused};
use crate::passwords;
use outpost_store::domain::{Caller, DomainError};
use outpost_store::{TenantPatch, TenantUsage};

/// The largest quota accepted (a quota is a plan's limit, not a count of rows to expect).
pub const MAX_QUOTA: i64 = 1_000_000;
/// The longest tenant name, in characters.
pub const MAX_NAME: usize = 200;

/// Checks a tenant's name: not blank, at most [`MAX_NAME`] characters, no control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() {
        return Err(DomainError::BadRequest(format!(
            "{field}: must not be empty"
        )));
    }
    if name.chars().count() > MAX_NAME {
        return Err(DomainError::BadRequest(format!(
            "{field}: at most {MAX_NAME} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(DomainError::BadRequest(format!(
            "{field}: must not hold control characters"
        )));
    }
    Ok(())
}

/// Checks a quota's value: `None` (unlimited) or 0 to [`MAX_QUOTA`].
pub fn check_quota(field: &str, value: Option<i64>) -> Result<(), DomainError> {
    match value {
        Some(n) if !(0..=MAX_QUOTA).contains(&n) => Err(DomainError::BadRequest(format!(
            "{field}: must be null (unlimited) or a whole number from 0 to {MAX_QUOTA}, not {n}"
        ))),
        _ => Ok(()),
    }
}

/// Checks every field a patch sets.
pub fn check_patch(patch: &TenantPatch) -> Result<(), DomainError> {
    if let Some(name) = &patch.name {
        check_name("name", name)?;
    }
    for (field, value) in [
        ("max_agents", patch.max_agents),
        ("max_schedules", patch.max_schedules),
        ("max_users", patch.max_users),
    ] {
        if let Some(value) = value {
            check_quota(field, value)?;
        }
    }
    if let Some(Some(days)) = patch.retention_days
        && !(0..=super::retention::MAX_DAYS).contains(&days)
    {
        return Err(DomainError::BadRequest(format!(
            "retention_days: must be null (the server's window), 0 (keep everything) or a \
             whole number of days up to {}, not {days}",
            super::retention::MAX_DAYS
        )));
    }
    Ok(())
}

/// The tenants service.
#[derive(Clone)]
pub struct Tenants {
    core: Arc<Core>,
    limits: Limits,
    users: Users,
    signup: bool,
}

impl Tenants {
    pub(super) fn new(core: Arc<Core>, limits: Limits, users: Users) -> Self {
        Self {
            core,
            limits,
            users,
            signup: false,
        }
    }

    /// The same service with signup on or off (`--allow-signup`).
    #[must_use]
    pub fn with_signup(mut self, allow: bool) -> Self {
        self.signup = allow;
        self
    }

    /// The id of the server's first tenant (see the module doc).
    async fn first_tenant(&self) -> Result<String, DomainError> {
        Ok(self
            .core
            .store
            .default_tenant()
            .await?
            .ok_or_else(|| Users::internal("the database has no tenant".into()))?
            .id)
    }

    /// `GET /api/tenants`: every tenant with its quotas and usage (the server's admin).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn list(&self, caller: &Caller) -> Result<Vec<TenantUsage>, DomainError> {
        Access::require_server_admin(caller, &self.first_tenant().await?)?;
        Ok(self.core.store.list_tenants().await?)
    }

    /// `GET /api/tenants/{id}`: the caller's own tenant (any role), or any tenant for the
    /// server's admin; 404 for another tenant.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, target = %id))]
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<TenantUsage, DomainError> {
        if id != caller.tenant_id {
            Access::require_server_admin(caller, &self.first_tenant().await?)
                .map_err(|_| not_found(id))?;
        }
        self.core
            .store
            .tenant_with_usage(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// `PATCH /api/tenants/{id}`: a new name and/or quotas (the server's admin only: 404 for
    /// another tenant, 403 for the caller's own). An empty patch changes nothing.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, target = %id))]
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        patch: TenantPatch,
    ) -> Result<TenantUsage, DomainError> {
        let first = self.first_tenant().await?;
        if id != caller.tenant_id && Access::require_server_admin(caller, &first).is_err() {
            return Err(not_found(id));
        }
        Access::require_server_admin(caller, &first)?;
        check_patch(&patch)?;
        self.core.writable()?;
        let record = record_of(
            caller,
            outpost_store::domain::AuditEvent::new(
                outpost_store::domain::AuditAction::TenantUpdate,
                outpost_store::domain::AuditTarget::Tenant,
                id,
            ),
        );
        self.core
            .store
            .update_tenant(id, &patch, &record.actor, record.address)
            .await?
            .ok_or_else(|| not_found(id))?;
        self.core
            .store
            .tenant_with_usage(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// `POST /api/auth/register`: a new tenant named `tenant_name` with `email` as its owner,
    /// signed in. Only with `--allow-signup`; rate-limited as sign-ins are (per address and
    /// per email), first thing.
    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        tenant_name: &str,
        client: IpAddr,
    ) -> Result<Session, DomainError> {
        if !self.signup {
            return Err(DomainError::NotAllowed {
                code: "signup_disabled",
                message: "signup is off on this server (it runs without --allow-signup): ask \
                          its admin for an invite"
                    .into(),
            });
        }
        self.limits.auth_attempt(client, Some(email))?;
        check_email(email)?;
        passwords::check_new(password).map_err(DomainError::BadRequest)?;
        check_name("tenant_name", tenant_name)?;
        self.core.writable()?;
        // A taken email is found before the argon2 work, and again by the insert's unique
        // index (two signups with one email at once).
        if self.core.store.user_by_email(email).await?.is_some() {
            return Err(email_taken(email));
        }
        let hash = self
            .core
            .passwords
            .hash(password)
            .await
            .map_err(Users::internal)?;
        let address = (!client.is_unspecified()).then(|| client.to_string());
        let (tenant, owner) = self
            .core
            .store
            .create_tenant_with_owner(tenant_name.trim(), email, &hash, address)
            .await?
            .map_err(|refused| user_refused(email, refused))?;
        tracing::info!(tenant_id = %tenant.id, user_id = %owner.id, "a tenant signed up");
        self.users.start_session(owner).await
    }
}

fn not_found(id: &str) -> DomainError {
    DomainError::NotFound(format!("no tenant {id}"))
}
