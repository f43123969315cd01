//! Agent keys: the keys agents connect with, what they allow, and the tags they assign.
//!
//! A key's secret leaves the server in exactly two answers, create and regenerate, and is
//! stored only as a hash. Disabling, deleting or regenerating a key closes the connections
//! made with it at once (through the bus, which signals each connection's task directly).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use outpost_protocol::commands;

use super::Core;
use super::agents::validate_tags;
use crate::domain::{Caller, DomainError, KeyStatus};
use crate::store::{AgentKeyPatch, agent_key};

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
        let (key, secret) = self
            .core
            .store
            .create_agent_key(
                &caller.tenant_id,
                new.name.trim(),
                &permissions,
                &tags,
                new.expires_at,
            )
            .await?;
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
        let key = self
            .core
            .store
            .update_agent_key(&caller.tenant_id, id, patch)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
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
        if !self
            .core
            .store
            .delete_agent_key(&caller.tenant_id, id)
            .await?
        {
            return Err(DomainError::NotFound(format!("no agent key {id}")));
        }
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
        let (key, secret) = self
            .core
            .store
            .regenerate_agent_key(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {id}")))?;
        let closed =
            self.core
                .bus
                .disconnect_key(&caller.tenant_id, &key.id, "agent key regenerated");
        tracing::info!(key_id = %key.id, closed, "agent key regenerated");
        Ok((self.record(key), secret))
    }
}

fn validate_name(name: &str) -> Result<(), DomainError> {
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
