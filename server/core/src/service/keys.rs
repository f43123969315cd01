//! Agent keys: the keys agents connect with, what they allow, and the tags they assign.
//!
//! A key's secret leaves the server in exactly two answers, create and regenerate, and is
//! stored only as a hash. Every change is recorded in the audit log in its own transaction. Disabling, deleting or regenerating a key closes the connections
//! made with it at once (through the bus, which signals each connection's task directly).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use outpost_protocol::commands;

use serde_json::json;

use super::Core;
use super::access::{Access, Action};
use super::agents::validate_tags;
use super::audit::record_of;
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError, KeyStatus};
use outpost_store::{AgentKeyPatch, agent_key};

/// A key with the number of agents connected with it now.
#[derive(Debug)]
pub struct KeyRecord {
    /// The stored key (its secret's hash is never shown).
    pub key: agent_key::Model,
    /// Agents connected with it now.
    pub connected_agents: usize,
}

/// A key to create.
#[derive(Debug)]
pub struct NewKey {
    /// Name for people, 1–128 characters.
    pub name: String,
    /// Commands allowed; `None` for the default set.
    pub permissions: Option<Vec<String>>,
    /// Tags for every agent using the key.
    pub tags: Option<Vec<String>>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Changes to a key.
#[derive(Debug, Default)]
pub struct KeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New permissions.
    pub permissions: Option<Vec<String>>,
    /// `active` or `disabled`.
    pub status: Option<String>,
}

/// Agent keys.
#[derive(Clone)]
pub struct Keys {
    core: Arc<Core>,
}

impl Keys {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Agents connected per key of the caller's tenant.
    fn connected_per_key(&self, tenant_id: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for connection in self.core.bus.connections(tenant_id) {
            *counts.entry(connection.key_id).or_default() += 1;
        }
        counts
    }

    fn record(&self, key: agent_key::Model) -> KeyRecord {
        let connected_agents = self
            .connected_per_key(&key.tenant_id)
            .get(&key.id)
            .copied()
            .unwrap_or(0);
        KeyRecord {
            key,
            connected_agents,
        }
    }

    /// Creates a key; returns it with its secret, which is never shown again.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewKey,
    ) -> Result<(KeyRecord, String), DomainError> {
        Access::require(caller, Action::ManageAgentKeys)?;
        validate_name(&new.name)?;
        let permissions = new.permissions.unwrap_or_else(|| {
            commands::DEFAULT_PERMISSIONS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        validate_permissions(&permissions)?;
        let tags = new.tags.unwrap_or_default();
        validate_tags("tags", &tags)?;
        if new.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(DomainError::BadRequest(
                "expires_at: must be in the future".into(),
            ));
        }
        let txn = self.core.store.begin().await?;
        let (key, secret) = txn
            .create_agent_key(
                &caller.tenant_id,
                new.name.trim(),
                &permissions,
                &tags,
                new.expires_at,
            )
            .await?;
        let event = AuditEvent::new(AuditAction::AgentKeyCreate, AuditTarget::AgentKey, &key.id)
            .with(json!({
                "name": key.name,
                "permissions": permissions,
                "tags": tags,
                "expires_at": key.expires_at,
            }));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit().await?;
        tracing::info!(key_id = %key.id, "agent key created");
        Ok((self.record(key), secret))
    }

    /// Every key of the caller's tenant.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<KeyRecord>, DomainError> {
        let keys = self.core.store.list_agent_keys(&caller.tenant_id).await?;
        let counts = self.connected_per_key(&caller.tenant_id);
        Ok(keys
            .into_iter()
            .map(|key| KeyRecord {
                connected_agents: counts.get(&key.id).copied().unwrap_or(0),
                key,
            })
            .collect())
    }

    /// One key.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<KeyRecord, DomainError> {
        let key = self
            .core
            .store
            .get_agent_key(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
        Ok(self.record(key))
    }

    /// Renames a key, changes its permissions, or disables or enables it. Disabling closes
    /// its connections.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        changes: KeyChanges,
    ) -> Result<KeyRecord, DomainError> {
        Access::require(caller, Action::ManageAgentKeys)?;
        if let Some(name) = &changes.name {
            validate_name(name)?;
        }
        if let Some(permissions) = &changes.permissions {
            validate_permissions(permissions)?;
        }
        if let Some(status) = &changes.status
            && status.parse::<KeyStatus>().is_err()
        {
            return Err(DomainError::BadRequest(format!(
                "status: must be \"active\" or \"disabled\", not {status:?}"
            )));
        }
        let patch = AgentKeyPatch {
            name: changes.name.map(|n| n.trim().to_owned()),
            permissions: changes.permissions,
            status: changes.status,
        };
        let action = match patch.status.as_deref() {
            Some("disabled") => AuditAction::AgentKeyDisable,
            Some(_) => AuditAction::AgentKeyEnable,
            None => AuditAction::AgentKeyUpdate,
        };
        let detail = json!({
            "name": patch.name,
            "permissions": patch.permissions,
            "status": patch.status,
        });
        let txn = self.core.store.begin().await?;
        let key = txn
            .update_agent_key(&caller.tenant_id, id, patch)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
        let event = AuditEvent::new(action, AuditTarget::AgentKey, &key.id).with(detail);
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit_agents().await?;
        if key.status == KeyStatus::Disabled {
            let closed = self.core.bus.disconnect_key(
                &caller.tenant_id,
                &key.id,
                outpost_protocol::codes::CLOSE_KEY_DISABLED,
            );
            tracing::info!(key_id = %key.id, closed, "agent key disabled");
        }
        Ok(self.record(key))
    }

    /// Deletes a key; its connections close.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageAgentKeys)?;
        let txn = self.core.store.begin().await?;
        let Some(key) = txn.get_agent_key(&caller.tenant_id, id).await? else {
            return Err(DomainError::NotFound(format!("no agent key {id}")));
        };
        if !txn.delete_agent_key(&caller.tenant_id, id).await? {
            return Err(DomainError::NotFound(format!("no agent key {id}")));
        }
        let event = AuditEvent::new(AuditAction::AgentKeyDelete, AuditTarget::AgentKey, id)
            .with(json!({"name": key.name}));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit_agents().await?;
        let closed = self
            .core
            .bus
            .disconnect_key(&caller.tenant_id, id, "agent key deleted");
        tracing::info!(key_id = %id, closed, "agent key deleted");
        Ok(())
    }

    /// Replaces a key's secret. The old secret stops working at once and its connections
    /// close. Returns the new secret, which is never shown again.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, key_id = %id))]
    pub async fn regenerate(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(KeyRecord, String), DomainError> {
        Access::require(caller, Action::ManageAgentKeys)?;
        let txn = self.core.store.begin().await?;
        let (key, secret) = txn
            .regenerate_agent_key(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
        // The detail never holds the secret, nor its hash.
        let event = AuditEvent::new(AuditAction::AgentKeyRegenerate, AuditTarget::AgentKey, id)
            .with(json!({"name": key.name}));
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit_agents().await?;
        let closed =
            self.core
                .bus
                .disconnect_key(&caller.tenant_id, &key.id, "agent key regenerated");
        tracing::info!(key_id = %key.id, closed, "agent key regenerated");
        Ok((self.record(key), secret))
    }
}

pub(super) fn validate_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(DomainError::BadRequest(
            "name: must be 1 to 128 characters without control characters".into(),
        ));
    }
    Ok(())
}

fn validate_permissions(permissions: &[String]) -> Result<(), DomainError> {
    for p in permissions {
        if !commands::ALL.contains(&p.as_str()) {
            return Err(DomainError::BadRequest(format!(
                "permissions: unknown command {p:?}; expected any of {}",
                commands::ALL.join(", ")
            )));
        }
    }
    Ok(())
}
