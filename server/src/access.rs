//! Who is calling: a bearer token checked against the store, for people's API keys and for
//! agents' keys.
//!
//! Both transports (the REST API and the agents' WebSocket and long-poll routes) authenticate
//! here, so a key is refused by the same rules wherever it is used. What an authenticated
//! caller may then do is decided in `crate::service::access`, once; the one rule below it that
//! the hub applies too (which commands an agent key allows, [`key_allows`]) is here, so that
//! both ask the same function.

use chrono::Utc;

use crate::credentials::{hash_secret, verify_secret};
use crate::domain::{Caller, DomainError, KeyStatus};
use crate::store::{Store, agent_key};

/// The caller behind a REST request's bearer token (an API key, `opk_…`).
pub async fn authenticate_api(store: &Store, token: Option<&str>) -> Result<Caller, DomainError> {
    let token = token.ok_or_else(|| {
        DomainError::Unauthorized("missing `Authorization: Bearer <API key>` header".into())
    })?;
    if !token.starts_with("opk_") {
        return Err(DomainError::Unauthorized(
            "the bearer token is not an API key (opk_…)".into(),
        ));
    }
    let key = store
        .api_key_by_hash(&hash_secret(token))
        .await?
        .filter(|k| verify_secret(token, &k.key_hash))
        .filter(|k| k.expires_at.is_none_or(|t| t > Utc::now()))
        .filter(|k| k.revoked_at.is_none())
        .ok_or_else(|| DomainError::Unauthorized("unknown, expired or revoked API key".into()))?;
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    let role = key.role.parse().map_err(|why| {
        DomainError::Internal(anyhow::anyhow!("API key {}: stored role: {why}", key.id))
    })?;
    Ok(Caller {
        tenant_id: key.tenant_id,
        key_id: key.id,
        role,
        label: key.name,
        // Set by the HTTP layer, which knows the connection.
        address: None,
    })
}

/// Whether an agent key with `permissions` allows `command`. Every send asks this: a new
/// command (`service::access::key_refusal`) and a pending one resent when its agent
/// reconnects (the key's permissions may have changed since it was stored).
pub fn key_allows(permissions: &[String], command: &str) -> bool {
    permissions.iter().any(|p| p == command)
}

/// The agent key behind an agent's bearer token (`opa_…`). Why it was refused is told to the
/// agent in the 401 body, never more.
pub async fn authenticate_agent(
    store: &Store,
    token: Option<&str>,
) -> Result<agent_key::Model, DomainError> {
    let token = token.ok_or_else(|| {
        DomainError::Unauthorized("missing `Authorization: Bearer <agent key>` header".into())
    })?;
    if !token.starts_with("opa_") {
        return Err(DomainError::Unauthorized(
            "the bearer token is not an agent key (opa_…)".into(),
        ));
    }
    let key = store
        .agent_key_by_hash(&hash_secret(token))
        .await?
        .filter(|k| verify_secret(token, &k.key_hash))
        .ok_or_else(|| DomainError::Unauthorized("unknown agent key".into()))?;
    if key.status != KeyStatus::Active {
        // Its own code: the agent retries a disabled key within seconds (it may be enabled
        // again), an unknown one slowly.
        return Err(DomainError::Denied {
            code: outpost_protocol::codes::KEY_DISABLED,
            message: "agent key is disabled".into(),
        });
    }
    if key.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(DomainError::Unauthorized("agent key has expired".into()));
    }
    // The connection no longer counts against the caps on unauthenticated ones.
    crate::listen::mark_authenticated();
    Ok(key)
}
