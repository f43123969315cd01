//! Scoped API keys (CONTRACT.md §9): programs' keys, made by people for what a program needs.
//!
//! A key belongs to the user who made it (or, made by a key, to that key's user) and acts with
//! its scopes ∩ its owner's current role (`crate::access` reads the owner's row on every
//! request). Three rules keep a key from being a way up:
//! - a key is made with at most the scopes of whoever makes it (a `jobs:read` key cannot make
//!   a `*` key);
//! - it expires, at the latest `--max-key-days` after it is made (the default when no
//!   `expires_at` is given);
//! - everyone manages their own keys; only an owner sees and revokes other people's (anyone
//!   else gets 404 for them, as for anything not theirs).
//!
//! Keys made by the server (the bootstrap owner key) have no owner and act with their stored
//! role and every scope; a key they make has no owner either, and their role.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::Core;
use super::audit::record_of;
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, DomainError, Principal, Role, Scope, Scopes,
};
use outpost_store::{NewApiKey, api_key};

/// How long a key may live when the server is not told (`--max-key-days`'s default).
pub const DEFAULT_MAX_KEY_DAYS: u32 = 365;

/// A key to make, as the caller asked.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Its name, for people.
    pub name: String,
    /// What it may be used for.
    pub scopes: Vec<Scope>,
    /// When it stops working; default and cap: `--max-key-days` from now.
    pub expires_at: Option<DateTime<Utc>>,
    /// The role it acts with: at most its maker's (default: the maker's).
    pub role: Option<Role>,
}

/// Programs' API keys.
#[derive(Clone)]
pub struct ApiKeys {
    core: Arc<Core>,
}

impl ApiKeys {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Makes a key for the caller's user; returns it with its secret, shown only now.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewKey,
    ) -> Result<(api_key::Model, String), DomainError> {
        super::keys::validate_name(&new.name)?;
        let name = new.name.trim();
        if new.scopes.is_empty() {
            return Err(DomainError::BadRequest(format!(
                "scopes: give at least one of {}",
                scope_names()
            )));
        }
        let role = new.role.unwrap_or(caller.role);
        if !caller.role.at_least(role) {
            return Err(DomainError::Forbidden(format!(
                "role: a key cannot act with more than its maker's role ({}), not {role}",
                caller.role
            )));
        }
        let scopes = Scopes::of(&new.scopes);
        if !caller.scopes.covers(scopes) {
            let missing: Vec<&str> = scopes
                .list()
                .into_iter()
                .filter(|s| !caller.scopes.allows(*s))
                .map(Scope::as_str)
                .collect();
            return Err(DomainError::Forbidden(format!(
                "scopes: a key cannot give more than its maker holds; this caller lacks {}",
                missing.join(", ")
            )));
        }
        let now = Utc::now();
        let days = self.core.max_key_days;
        let cap = now + Duration::days(i64::from(days));
        let expires_at = match new.expires_at {
            None => cap,
            Some(t) if t <= now => {
                return Err(DomainError::BadRequest(
                    "expires_at: must be in the future".into(),
                ));
            }
            Some(t) if t > cap => {
                return Err(DomainError::BadRequest(format!(
                    "expires_at: at most {days} days from now (--max-key-days); latest allowed {}",
                    cap.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            Some(t) => t,
        };
        self.core.writable()?;
        let txn = self.core.store.begin().await?;
        let owner_user_id = owner_of(caller);
        let stored: Vec<String> = scopes.list().iter().map(|s| s.to_string()).collect();
        let (key, secret) = txn
            .insert_api_key(NewApiKey {
                tenant_id: caller.tenant_id.clone(),
                owner_user_id,
                name: name.to_owned(),
                role: role.to_string(),
                scopes: stored.clone(),
                expires_at,
            })
            .await?;
        let event =
            AuditEvent::new(AuditAction::ApiKeyCreate, AuditTarget::ApiKey, &key.id).with(json!({
                "name": key.name,
                "role": key.role,
                "scopes": stored,
                "expires_at": key.expires_at,
                "owner_user_id": key.owner_user_id,
            }));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit().await?;
        tracing::info!(key_id = %key.id, "API key created");
        Ok((key, secret))
    }

    /// The caller's own keys; an owner's answer holds every key of the tenant.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<api_key::Model>, DomainError> {
        match visible(caller) {
            Visible::All => Ok(self
                .core
                .store
                .list_api_keys(&caller.tenant_id, None)
                .await?),
            Visible::OwnedBy(user) => Ok(self
                .core
                .store
                .list_api_keys(&caller.tenant_id, Some(&user))
                .await?),
            Visible::None => Ok(Vec::new()),
        }
    }

    /// Revokes a key at once: the caller's own, or any of the tenant's for an owner.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        let visible = visible(caller);
        self.core.writable()?;
        let txn = self.core.store.begin().await?;
        let not_found = || DomainError::NotFound(format!("no API key {id}"));
        let key = txn
            .get_api_key(&caller.tenant_id, id)
            .await?
            .ok_or_else(not_found)?;
        let allowed = match &visible {
            Visible::All => true,
            Visible::OwnedBy(user) => key.owner_user_id.as_deref() == Some(user.as_str()),
            Visible::None => false,
        };
        if !allowed || !txn.revoke_api_key(&caller.tenant_id, id).await? {
            return Err(not_found());
        }
        let event = AuditEvent::new(AuditAction::ApiKeyDelete, AuditTarget::ApiKey, id)
            .with(json!({"name": key.name, "owner_user_id": key.owner_user_id}));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit_credentials().await?;
        tracing::info!(key_id = %id, "API key revoked");
        Ok(())
    }
}

/// The user a key made by `caller` belongs to: the caller's user, or its key's user.
fn owner_of(caller: &Caller) -> Option<String> {
    match &caller.principal {
        Principal::User { user_id } => Some(user_id.clone()),
        Principal::ApiKey { owner, .. } => owner.clone(),
        Principal::Schedule { .. } => None,
    }
}

/// Whose keys the caller sees: an owner every key, anyone else their user's (a server-made
/// key below owner owns none).
fn visible(caller: &Caller) -> Visible {
    if caller.role.at_least(Role::Owner) {
        return Visible::All;
    }
    match owner_of(caller) {
        Some(user) => Visible::OwnedBy(user),
        None => Visible::None,
    }
}

enum Visible {
    All,
    OwnedBy(String),
    None,
}

/// A stored key's scopes as names (every scope is `*`).
pub fn scopes_of(key: &api_key::Model) -> Vec<String> {
    match &key.scopes {
        None => vec![Scope::All.to_string()],
        Some(list) => list.to_vec(),
    }
}

fn scope_names() -> String {
    Scope::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
