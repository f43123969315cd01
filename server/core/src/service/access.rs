//! What a caller may do, decided in one place.
//!
//! Two kinds of rights meet in this server, and each is checked by one function here:
//! - a caller's **role** ([`Access::require`]) for what needs more than reading and running
//!   (the webhook signing secret, the process-wide metrics, a forced `update`);
//! - the **rate limits** of `/api` ([`Access::authenticate`]): every authenticated request is
//!   counted against its caller, every failed one against its client address
//!   (`super::limits`), so a route cannot take a [`Caller`] without being limited;
//! - an **agent key's permissions** ([`key_refusal`]) for which commands reach the agents
//!   that connected with it, whichever route sends them (one agent, a key's agents, each run
//!   of a job).
//!
//! Accounts and roles (CONTRACT.md §9) extend [`Action`] and [`Access::require`]; no handler or
//! service compares roles itself. A user's role here is the one their row has now (read on
//! every request by `crate::access`), never the one their access token was issued with.

use std::net::IpAddr;
use std::sync::Arc;

use super::Core;
use super::limits::Limits;
use crate::access::{Unverified, key_allows};
use outpost_store::agent_key;
use outpost_store::domain::{Caller, DomainError, KeyStatus, Role};

/// Something that needs more than the member role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read or rotate the tenant's webhook signing secret.
    WebhookSecret,
    /// Read the process-wide metrics (they cover every tenant).
    Metrics,
    /// Send an `update` with `force`, which may downgrade agents.
    ForceUpdate,
    /// List the server nodes (they serve every tenant).
    Nodes,
    /// Read the tenant's audit log and check its chain (CONTRACT.md §9: owners and admins).
    ReadAudit,
    /// Create, change, disable, delete or regenerate the tenant's agent keys.
    ManageAgentKeys,
    /// Change an agent's tags or forget it.
    ManageAgents,
    /// Send an agent a control command (`restart`, `update`, `redeploy`): members trigger
    /// runs, they do not manage the fleet (CONTRACT.md §9).
    ControlAgents,
    /// Create, change or delete the tenant's schedules (CONTRACT.md §9: members read them and run
    /// one now).
    ManageSchedules,
    /// Read, create, change, test or delete the tenant's integrations and their delivery log.
    ManageIntegrations,
    /// List and read the tenant's users.
    ReadUsers,
    /// Create, change, disable or delete the tenant's users.
    ManageUsers,
    /// List every tenant and change any tenant's name and quotas: the server's admin only,
    /// an owner of the server's first tenant ([`Access::require_server_admin`]).
    ManageTenants,
    /// Upload or delete library scripts (CONTRACT.md §15), switch them off and on, save and
    /// sign drafts (§20): what agents that opted in may be sent.
    ManageScripts,
}

impl Action {
    /// The least role that may do it.
    fn needs(self) -> Role {
        match self {
            Self::WebhookSecret
            | Self::ReadAudit
            | Self::ReadUsers
            | Self::ManageAgentKeys
            | Self::ManageAgents
            | Self::ManageSchedules
            | Self::ManageIntegrations
            | Self::ManageScripts
            | Self::ControlAgents => Role::Admin,
            Self::Metrics
            | Self::ForceUpdate
            | Self::Nodes
            | Self::ManageUsers
            | Self::ManageTenants => Role::Owner,
        }
    }

    /// Why it is refused, for the caller.
    fn refusal(self, role: Role) -> String {
        match self {
            Self::WebhookSecret => {
                "only owners and admins may see the webhook signing secret".into()
            }
            Self::Metrics => {
                "metrics cover every tenant of this server: an owner API key is required".into()
            }
            Self::ReadAudit => format!(
                "only owners and admins may read the audit log; this caller's role is {role}"
            ),
            Self::Nodes => {
                "the server nodes serve every tenant: an owner API key is required".into()
            }
            Self::ReadUsers => "only owners and admins may list users".into(),
            Self::ManageSchedules => format!(
                "only owners and admins may create, change or delete schedules; this caller's role is {role}"
            ),
            Self::ManageIntegrations => format!(
                "only owners and admins may see or change integrations; this caller's role is {role}"
            ),
            Self::ManageAgentKeys => format!(
                "only owners and admins may change agent keys; this caller's role is {role}"
            ),
            Self::ManageAgents => format!(
                "only owners and admins may change or forget agents; this caller's role is {role}"
            ),
            Self::ControlAgents => format!(
                "only owners and admins may send restart, update or redeploy; this caller's role is {role}"
            ),
            Self::ManageScripts => format!(
                "only owners and admins may upload, delete, disable or enable library scripts and save or sign drafts; this caller's role is {role}"
            ),
            Self::ManageUsers => format!(
                "only owners may create, change or delete users; this caller's role is {role}"
            ),
            Self::ManageTenants => format!(
                "only the server's admin (an owner of the server's first tenant, the one holding \
                 the bootstrap owner key) may list tenants or change their names and quotas; \
                 this caller's role is {role}"
            ),
            Self::ForceUpdate => format!(
                "data.force: only an owner may force an update (it can downgrade agents); \
                 this caller's role is {role}"
            ),
        }
    }
}

/// Authentication, the rate limits of `/api` and the role check.
#[derive(Clone)]
pub struct Access {
    core: Arc<Core>,
    limits: Limits,
}

impl Access {
    pub(super) fn new(core: Arc<Core>, limits: Limits) -> Self {
        Self { core, limits }
    }

    /// The caller behind a REST request's bearer token (an API key or a user's access token),
    /// from `client` (its address as
    /// [`Limits::client_address`] tells it), counted against the per-caller limit
    /// (`--rate-limit`). A token that fails is counted against `client`; once that address is
    /// over its allowance its requests are refused (`rate_limited`) before any lookup.
    ///
    /// With `--require-verified-email`, a user whose email is not verified yet (or their API
    /// key) is refused (`email_unverified`): see [`Access::authenticate_unverified`].
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        client: IpAddr,
    ) -> Result<Caller, DomainError> {
        let caller = self
            .authenticate_with(token, client, self.unverified())
            .await?;
        self.limits.call(&caller)?;
        Ok(caller)
    }

    /// The same, letting a user whose email is not verified through: for the routes that
    /// verify it (CONTRACT.md §18), and who-am-I.
    pub async fn authenticate_unverified(
        &self,
        token: Option<&str>,
        client: IpAddr,
    ) -> Result<Caller, DomainError> {
        let caller = self
            .authenticate_with(token, client, Unverified::Allowed)
            .await?;
        self.limits.call(&caller)?;
        Ok(caller)
    }

    /// The same without counting the caller's request: for `GET /metrics` only, which a
    /// scraper calls on a schedule and which is not an `/api` route. Failures still count
    /// against the address.
    pub async fn authenticate_uncounted(
        &self,
        token: Option<&str>,
        client: IpAddr,
    ) -> Result<Caller, DomainError> {
        self.authenticate_with(token, client, self.unverified())
            .await
    }

    /// What becomes of an unverified user on the routes that do not verify.
    fn unverified(&self) -> Unverified {
        if self.core.require_verified_email {
            Unverified::Refused
        } else {
            Unverified::Allowed
        }
    }

    async fn authenticate_with(
        &self,
        token: Option<&str>,
        client: IpAddr,
        unverified: Unverified,
    ) -> Result<Caller, DomainError> {
        self.limits.before_authentication(client)?;
        match crate::access::authenticate_api(
            &self.core.store,
            &self.core.kept,
            &self.core.signer,
            token,
            unverified,
        )
        .await
        {
            Ok(mut caller) => {
                // For the audit log; unspecified when the request came from no connection.
                caller.address = (!client.is_unspecified()).then_some(client);
                Ok(caller)
            }
            Err(err @ (DomainError::Unauthorized(_) | DomainError::Denied { .. })) => {
                Err(self.limits.failed_authentication(client, err))
            }
            Err(err) => Err(err),
        }
    }

    /// The agent key behind an agent's bearer token (release downloads take either kind).
    pub async fn authenticate_agent(
        &self,
        token: Option<&str>,
    ) -> Result<agent_key::Model, DomainError> {
        crate::access::authenticate_agent(&self.core.store, token).await
    }

    /// Refuses `action` (`Forbidden`) unless the caller's role allows it.
    pub fn require(caller: &Caller, action: Action) -> Result<(), DomainError> {
        if caller.role.at_least(action.needs()) {
            Ok(())
        } else {
            Err(DomainError::Forbidden(action.refusal(caller.role)))
        }
    }

    /// Refuses (`Forbidden`) unless the caller is the server's admin: an owner (user or API
    /// key) of `first_tenant`, the tenant the server made on its first start. Quotas are the
    /// server owner's to set (CONTRACT.md §9), not a tenant owner's.
    pub fn require_server_admin(caller: &Caller, first_tenant: &str) -> Result<(), DomainError> {
        Self::require(caller, Action::ManageTenants)?;
        if caller.tenant_id == first_tenant {
            Ok(())
        } else {
            Err(DomainError::Forbidden(
                Action::ManageTenants.refusal(caller.role),
            ))
        }
    }

    /// The dashboard's form token for a session's nonce (`outpost_web::ui`): HMAC-SHA-256 under a
    /// key derived from the master key, so every node computes the same token and a token
    /// never reveals the nonce it was made from. `purpose` keeps the sign-in form's tokens
    /// apart from a session's.
    pub fn form_token(&self, purpose: &str, nonce: &str) -> String {
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &self.core.master.derive(FORM_TOKEN_KEY_LABEL),
        );
        hex::encode(ring::hmac::sign(&key, &form_message(purpose, nonce)).as_ref())
    }

    /// Whether `token` is the form token of `nonce` for `purpose`, compared in constant time.
    pub fn check_form_token(&self, purpose: &str, nonce: &str, token: &str) -> bool {
        let Ok(tag) = hex::decode(token) else {
            return false;
        };
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &self.core.master.derive(FORM_TOKEN_KEY_LABEL),
        );
        !nonce.is_empty() && ring::hmac::verify(&key, &form_message(purpose, nonce), &tag).is_ok()
    }

    /// `GET /metrics` on the main listener.
    pub fn read_metrics(&self, caller: &Caller) -> Result<(), DomainError> {
        Self::require(caller, Action::Metrics)
    }
}

/// The HKDF label of the dashboard's form-token key.
const FORM_TOKEN_KEY_LABEL: &[u8] = b"outpost dashboard form tokens v1";

/// What a form token signs: its purpose and the nonce, length-prefixed so that no two pairs
/// give the same bytes.
fn form_message(purpose: &str, nonce: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(8 + purpose.len() + nonce.len());
    message.extend_from_slice(&(purpose.len() as u64).to_be_bytes());
    message.extend_from_slice(purpose.as_bytes());
    message.extend_from_slice(nonce.as_bytes());
    message
}

/// Why the key an agent connected with refuses `command`, if it does: the key is gone, is
/// disabled, or does not list the command. A refused command is never stored as pending or
/// sent.
pub fn key_refusal(
    agent_id: &str,
    key: Option<&agent_key::Model>,
    command: &str,
) -> Option<String> {
    match key {
        None => Some(format!(
            "agent {agent_id} connected with a key that no longer exists"
        )),
        Some(key) if key.status != KeyStatus::Active => {
            Some(format!("agent {agent_id}'s key {} is disabled", key.id))
        }
        Some(key) if !key_allows(&key.permissions, command) => Some(format!(
            "agent key {} does not allow the {command:?} command",
            key.id
        )),
        Some(_) => None,
    }
}
