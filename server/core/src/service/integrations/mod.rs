//! Integrations (CONTRACT.md §11): where a tenant's events are sent. This file is the service's
//! requests (create, read, update, delete, the delivery log, a test send) and the checks a
//! config passes when saved; `outbox` is the background worker that sends the deliveries.
//!
//! An integration names a provider (`crate::providers` renders each one's payload), its
//! config (secret fields sealed at rest and shown as `…`), the event types it wants, a filter
//! and `notify_after`. Events reach it through the outbox (`store::integrations`): every
//! delivery row is committed with its event, claimed by one node at a time, and sent by
//! [`Integrations::run`], which records every attempt.

mod outbox;

use std::sync::Arc;

use serde_json::{Value, json};

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use crate::providers::{self, Kind};
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError};
use outpost_store::{
    DeliveryAttempt, NewIntegration, delivery, delivery_attempt, delivery_status, event,
    integration,
};

pub use outbox::{GIVE_UP_AFTER, MAX_ATTEMPTS, Outbox};

/// Integrations per tenant.
pub const MAX_INTEGRATIONS: usize = 100;
/// Longest name.
const MAX_NAME: usize = 100;
/// The event types an integration may ask for.
pub const EVENT_TYPES: &[&str] = &[
    "job.succeeded",
    "job.failed",
    "job.recovered",
    "agent.online",
    "agent.offline",
    "agent.updated",
    "agent.update_rolled_back",
    "schedule.missed",
    "schedule.skipped",
    "rollout.started",
    "rollout.halted",
    "rollout.completed",
    "rollout.rolled_back",
];

/// An integration as asked for (`POST`), or the fields to change (`PATCH`).
#[derive(Debug, Default)]
pub struct IntegrationFields {
    /// Unique in the tenant.
    pub name: Option<String>,
    /// Provider kind.
    pub kind: Option<String>,
    /// Provider config.
    pub config: Option<Value>,
    /// Event types (or kinds: `job`, or `*`).
    pub events: Option<Vec<String>>,
    /// `{tags?, script?, schedule_id?}`; `Some(None)` clears it.
    pub filter: Option<Option<Value>>,
    /// Sent to when true.
    pub enabled: Option<bool>,
    /// Failures in a row before one is sent.
    pub notify_after: Option<i32>,
}

/// What `test` got back.
#[derive(Debug)]
pub struct TestReport {
    /// The provider took it.
    pub ok: bool,
    /// The recorded delivery.
    pub delivery: delivery::Model,
    /// The provider's answer.
    pub attempt: DeliveryAttempt,
}

/// Integrations and their delivery.
#[derive(Clone)]
pub struct Integrations {
    core: Arc<Core>,
    outbox: Arc<Outbox>,
}

impl Integrations {
    pub(super) fn new(core: Arc<Core>, outbox: Arc<Outbox>) -> Self {
        Self { core, outbox }
    }

    /// Creates an integration.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn create(
        &self,
        caller: &Caller,
        fields: IntegrationFields,
    ) -> Result<integration::Model, DomainError> {
        Access::require(caller, Action::ManageIntegrations)?;
        self.core.writable()?;
        let name = fields
            .name
            .ok_or_else(|| DomainError::BadRequest("name: required".into()))?;
        validate_name(&name)?;
        let kind_text = fields
            .kind
            .ok_or_else(|| DomainError::BadRequest("kind: required".into()))?;
        let kind: Kind = kind_text.parse().map_err(DomainError::BadRequest)?;
        let mut config = fields
            .config
            .ok_or_else(|| DomainError::BadRequest("config: required".into()))?;
        if kind == Kind::Webhook
            && let Some(object) = config.as_object_mut()
            && !object.contains_key("secret")
        {
            object.insert("secret".into(), json!(providers::new_webhook_secret()));
        }
        let events = check_events(fields.events)?;
        let filter = check_filter(fields.filter.flatten())?;
        let notify_after = check_notify_after(fields.notify_after.unwrap_or(1))?;
        self.check_config(kind, &config)?;
        if self
            .core
            .store
            .list_integrations(&caller.tenant_id)
            .await?
            .len()
            >= MAX_INTEGRATIONS
        {
            return Err(DomainError::Refused {
                code: "too_many_integrations",
                message: format!("a tenant has at most {MAX_INTEGRATIONS} integrations"),
            });
        }
        let (shown, sealed) = self.seal(&caller.tenant_id, kind, &config)?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::IntegrationCreate, AuditTarget::Integration, "")
                .with(json!({"name": name, "kind": kind.as_str(), "events": events})),
        );
        let made = self
            .core
            .store
            .create_integration(
                NewIntegration {
                    tenant_id: caller.tenant_id.clone(),
                    name: name.clone(),
                    kind: kind.as_str().into(),
                    config: shown,
                    sealed_config: sealed,
                    events,
                    filter,
                    enabled: fields.enabled.unwrap_or(true),
                    notify_after,
                    created_by: caller.principal.to_string(),
                },
                audit,
            )
            .await?;
        made.ok_or_else(|| DomainError::Conflict {
            code: "name_taken",
            message: format!("name: the tenant has an integration named {name} already"),
        })
    }

    /// One integration.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<integration::Model, DomainError> {
        Access::require(caller, Action::ManageIntegrations)?;
        self.core
            .store
            .get_integration(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no integration {id}")))
    }

    /// The tenant's integrations, by name.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<integration::Model>, DomainError> {
        Access::require(caller, Action::ManageIntegrations)?;
        Ok(self.core.store.list_integrations(&caller.tenant_id).await?)
    }

    /// Changes an integration: the fields given. A config replaces the stored one, except that
    /// a secret field given as `…` (as answers show it) keeps its stored value.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        fields: IntegrationFields,
    ) -> Result<integration::Model, DomainError> {
        self.core.writable()?;
        let mut row = self.get(caller, id).await?;
        if fields.kind.as_deref().is_some_and(|k| k != row.kind) {
            return Err(DomainError::BadRequest(
                "kind: cannot be changed; make a new integration".into(),
            ));
        }
        let kind: Kind = row.kind.parse().map_err(DomainError::BadRequest)?;
        if let Some(name) = fields.name {
            validate_name(&name)?;
            row.name = name;
        }
        if let Some(mut config) = fields.config {
            let stored = self.open_config(&row)?;
            if let (Some(object), Some(stored)) = (config.as_object_mut(), stored.as_object()) {
                for field in providers::secret_fields(kind) {
                    let keep = object.get(*field).is_some_and(|v| v.as_str() == Some(MASK));
                    if keep && let Some(value) = stored.get(*field) {
                        object.insert((*field).to_owned(), value.clone());
                    }
                }
            }
            self.check_config(kind, &config)?;
            let (shown, sealed) = self.seal(&caller.tenant_id, kind, &config)?;
            row.config = shown;
            row.sealed_config = sealed;
        }
        if let Some(events) = fields.events {
            row.events = check_events(Some(events))?.into();
        }
        if let Some(filter) = fields.filter {
            row.filter = check_filter(filter)?;
        }
        if let Some(enabled) = fields.enabled {
            row.enabled = enabled;
        }
        if let Some(n) = fields.notify_after {
            row.notify_after = check_notify_after(n)?;
        }
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::IntegrationUpdate, AuditTarget::Integration, id)
                .with(json!({"name": row.name, "enabled": row.enabled, "events": row.events})),
        );
        let name = row.name.clone();
        self.core
            .store
            .update_integration(row, audit)
            .await?
            .ok_or_else(|| DomainError::Conflict {
                code: "name_taken",
                message: format!("name: the tenant has an integration named {name} already"),
            })
    }

    /// Deletes an integration and its delivery log.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), DomainError> {
        Access::require(caller, Action::ManageIntegrations)?;
        self.core.writable()?;
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::IntegrationDelete, AuditTarget::Integration, id),
        );
        if self
            .core
            .store
            .delete_integration(&caller.tenant_id, id, audit)
            .await?
        {
            Ok(())
        } else {
            Err(DomainError::NotFound(format!("no integration {id}")))
        }
    }

    /// An integration's deliveries, newest first, with their attempts.
    pub async fn deliveries(
        &self,
        caller: &Caller,
        id: &str,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(delivery::Model, Vec<delivery_attempt::Model>)>, DomainError> {
        self.get(caller, id).await?;
        Ok(self
            .core
            .store
            .list_deliveries(&caller.tenant_id, id, before, limit.clamp(1, 200))
            .await?)
    }

    /// Sends a test event to the integration now and reports the provider's answer; the
    /// attempt is recorded in its delivery log. The test event is not one of the tenant's
    /// events (no other integration gets it).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
    pub async fn test(&self, caller: &Caller, id: &str) -> Result<TestReport, DomainError> {
        let row = self.get(caller, id).await?;
        let at = outpost_store::now();
        let event = event::Model {
            id: outpost_store::new_id(),
            tenant_id: caller.tenant_id.clone(),
            kind: "job.failed".into(),
            subject_type: "test".into(),
            subject_id: row.id.clone(),
            subject_name: row.name.clone(),
            summary: format!(
                "Outpost test event for integration {}: if you read this, it works",
                row.name
            ),
            at,
            detail: json!({"test": true, "job_id": null, "runs": 1, "succeeded": 0, "failed": 1,
                           "status": "failed", "consecutive_failures": 1}),
            dedup_key: None,
        };
        let delivery_id = outpost_store::new_id();
        let attempt = self.attempt(&row, &event, &delivery_id, true).await;
        let delivery = self
            .core
            .store
            .record_test_delivery(&caller.tenant_id, &row.id, &event.id, &attempt)
            .await?;
        Ok(TestReport {
            ok: attempt.status == delivery_status::DELIVERED,
            delivery,
            attempt,
        })
    }

    /// Checks a config for its kind, and every URL it calls against what the SSRF rule can
    /// tell without resolving names (each attempt resolves and checks again).
    fn check_config(&self, kind: Kind, config: &Value) -> Result<(), DomainError> {
        let parsed = providers::parse_config(kind, config).map_err(DomainError::BadRequest)?;
        for url in parsed.urls() {
            if let Some(why) =
                super::webhooks::literal_host_refusal(&url, self.outbox.allow_private)
            {
                return Err(DomainError::BadRequest(format!("config.url: {why}")));
            }
        }
        Ok(())
    }

    /// The config as shown (secret fields `…`) and its secret fields sealed.
    fn seal(
        &self,
        tenant_id: &str,
        kind: Kind,
        config: &Value,
    ) -> Result<(Value, Option<String>), DomainError> {
        let mut secrets = serde_json::Map::new();
        if let Some(object) = config.as_object() {
            for field in providers::secret_fields(kind) {
                if let Some(value) = object.get(*field) {
                    secrets.insert((*field).to_owned(), value.clone());
                }
            }
        }
        let shown = providers::masked(kind, config);
        if secrets.is_empty() {
            return Ok((shown, None));
        }
        let plain = serde_json::to_vec(&Value::Object(secrets))
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("sealing a config: {e}")))?;
        Ok((
            shown,
            Some(self.core.master.seal(&seal_context(tenant_id), &plain)),
        ))
    }

    /// The config with its secret fields opened.
    fn open_config(&self, row: &integration::Model) -> Result<Value, DomainError> {
        let mut config = row.config.clone();
        let Some(sealed) = &row.sealed_config else {
            return Ok(config);
        };
        let plain = self
            .core
            .master
            .open(&seal_context(&row.tenant_id), sealed)
            .map_err(|why| {
                DomainError::Internal(anyhow::anyhow!(
                    "integration {}: its sealed config does not open: {why}",
                    row.id
                ))
            })?;
        let secrets: serde_json::Map<String, Value> = serde_json::from_slice(&plain)
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("integration {}: {e}", row.id)))?;
        if let Some(object) = config.as_object_mut() {
            object.extend(secrets);
        }
        Ok(config)
    }
}

/// What a masked secret field shows.
pub const MASK: &str = "…";

fn seal_context(tenant_id: &str) -> String {
    format!("integration config {tenant_id}")
}

fn check_events(events: Option<Vec<String>>) -> Result<Vec<String>, DomainError> {
    let events = events.ok_or_else(|| {
        DomainError::BadRequest(format!(
            "events: required, a list of event types ({}), kinds (job, agent, schedule) or \"*\"",
            EVENT_TYPES.join(", ")
        ))
    })?;
    if events.is_empty() || events.len() > 32 {
        return Err(DomainError::BadRequest(
            "events: give 1 to 32 event types".into(),
        ));
    }
    for e in &events {
        let known = e == "*"
            || EVENT_TYPES.contains(&e.as_str())
            || ["job", "agent", "schedule"].contains(&e.as_str());
        if !known {
            return Err(DomainError::BadRequest(format!(
                "events: unknown event type `{e}`; one of {}, a kind (job, agent, schedule) or \"*\"",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    Ok(events)
}

fn check_filter(filter: Option<Value>) -> Result<Option<Value>, DomainError> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let Some(object) = filter.as_object() else {
        return Err(DomainError::BadRequest(
            "filter: must be an object {tags?, script?, schedule_id?}".into(),
        ));
    };
    for (key, value) in object {
        match key.as_str() {
            "tags" => {
                let ok = value.as_array().is_some_and(|a| {
                    a.len() <= 32
                        && a.iter()
                            .all(|t| t.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 100))
                });
                if !ok {
                    return Err(DomainError::BadRequest(
                        "filter.tags: must be a list of at most 32 tags".into(),
                    ));
                }
            }
            "script" | "schedule_id" => {
                if !value
                    .as_str()
                    .is_some_and(|s| !s.is_empty() && s.len() <= 200)
                {
                    return Err(DomainError::BadRequest(format!(
                        "filter.{key}: must be a non-empty string"
                    )));
                }
            }
            other => {
                return Err(DomainError::BadRequest(format!(
                    "filter.{other}: unknown; a filter has tags, script and schedule_id"
                )));
            }
        }
    }
    Ok(Some(filter))
}

fn check_notify_after(n: i32) -> Result<i32, DomainError> {
    if (1..=100).contains(&n) {
        Ok(n)
    } else {
        Err(DomainError::BadRequest(
            "notify_after: must be 1 to 100".into(),
        ))
    }
}

fn validate_name(name: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(DomainError::BadRequest(format!(
            "name: must be 1 to {MAX_NAME} characters without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filters_and_events_name_the_field() {
        for (filter, field) in [
            (json!([]), "filter:"),
            (json!({"tags": "db"}), "filter.tags"),
            (json!({"script": ""}), "filter.script"),
            (json!({"colour": "red"}), "filter.colour"),
        ] {
            let err = check_filter(Some(filter)).expect_err("refused").to_string();
            assert!(err.contains(field), "{err}");
        }
        let err = check_events(Some(vec!["job.exploded".into()]))
            .expect_err("refused")
            .to_string();
        assert!(err.contains("job.exploded"), "{err}");
        assert!(check_events(Some(vec![])).is_err());
        assert!(check_events(None).is_err());
        assert!(
            check_events(Some(vec![
                "job".into(),
                "schedule.missed".into(),
                "*".into()
            ]))
            .is_ok()
        );
        assert!(check_notify_after(0).is_err());
        assert!(check_notify_after(101).is_err());
    }
}
