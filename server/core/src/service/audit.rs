//! The audit log (CONTRACT.md §9): who changed or triggered what, from where and when, in a
//! hash-chained, append-only log per tenant (`outpost_store::audit` keeps the chain).
//!
//! Two ways in, both here:
//! - **In the change's own transaction** ([`record_of`] builds the row; the service appends it
//!   on its transaction's handle with `append_audit_now`, last, before the commit). The change
//!   and its record commit together or not at all. Agent keys, agents, jobs, cancels, a single
//!   command, tags, the webhook secret, owner-key changes, release publishing and a new
//!   tenant are recorded so.
//! - **[`Audit::record`]**, in a transaction of its own: for what has no transaction to join.
//!   The accounts work records sign-ins (also refused ones) and user changes through it:
//!   `services.audit.record(tenant, &actor, address, event)`. Services of this crate do the
//!   same with `record_of` and `Store::append_audit` (what `record` wraps): a key's fan-out,
//!   once before its commands are stored (one row per request, listing the agents), and a
//!   job's cancel and an agent's deletion right after they commit (their statements take job
//!   rows' locks as the result writer does; holding the log's lock too could deadlock).
//!
//! A failed append fails the request. Where it comes after the change's commit (cancel,
//! delete), the change stands and the caller, told it failed, may repeat it: both change
//! nothing the second time, and are recorded then.
//!
//! Reading the log and checking its chain is for owners and admins ([`Action::ReadAudit`]).

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Core;
use super::access::{Access, Action};
use outpost_store::domain::{Actor, AuditEvent, Caller, DomainError};
use outpost_store::{AuditFilter, AuditRecord, ChainCheck, audit_entry};

/// The row recording that `caller` did `event`, for its tenant's log.
pub fn record_of(caller: &Caller, event: AuditEvent) -> AuditRecord {
    AuditRecord {
        tenant_id: caller.tenant_id.clone(),
        actor: caller.actor(),
        address: caller.address.map(|a| a.to_string()),
        event,
    }
}

/// A listing's filters, as asked.
#[derive(Debug, Default)]
pub struct AuditQuery {
    /// An actor's id or label.
    pub actor: Option<String>,
    /// An action (`job.trigger`) or a kind of them (`agent_key`).
    pub action: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// A previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<u64>,
}

/// A page of rows, newest first.
#[derive(Debug)]
pub struct AuditPage {
    /// The rows.
    pub entries: Vec<audit_entry::Model>,
    /// The cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// The audit log.
#[derive(Clone)]
pub struct Audit {
    core: Arc<Core>,
}

impl Audit {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// **The entry point for recording** what is not recorded in its own transaction: appends
    /// `event`, done by `actor` from `address`, to `tenant_id`'s log, in a transaction of its
    /// own, and returns the row's id (`seq`). For sign-ins, refused sign-ins and user changes
    /// (the accounts work), and a key's fan-out. `actor` is whoever acted (for a refused
    /// sign-in: `ActorKind::User` with the email asked for as id and label, and no secret in
    /// `event.detail`).
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, action = %event.action))]
    pub async fn record(
        &self,
        tenant_id: &str,
        actor: &Actor,
        address: Option<IpAddr>,
        event: AuditEvent,
    ) -> Result<i64, DomainError> {
        let row = self
            .core
            .store
            .append_audit(&AuditRecord {
                tenant_id: tenant_id.to_owned(),
                actor: actor.clone(),
                address: address.map(|a| a.to_string()),
                event,
            })
            .await?;
        Ok(row.seq)
    }

    /// Rows of the caller's tenant, newest first, filtered, a page at a time.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn list(&self, caller: &Caller, query: AuditQuery) -> Result<AuditPage, DomainError> {
        Access::require(caller, Action::ReadAudit)?;
        let limit = query.limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(DomainError::BadRequest(
                "limit: must be between 1 and 200".into(),
            ));
        }
        let before = match query.cursor.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                DomainError::BadRequest(format!(
                    "cursor: {text:?} is not a cursor this listing gave (a row id)"
                ))
            })?),
        };
        for (field, value) in [("actor", &query.actor), ("action", &query.action)] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.chars().count() > 200)
            {
                return Err(DomainError::BadRequest(format!(
                    "{field}: must be 1 to 200 characters"
                )));
            }
        }
        let filter = AuditFilter {
            actor: query.actor,
            action: query.action,
            since: query.since,
            until: query.until,
            before,
            limit: limit + 1,
        };
        let mut entries = self
            .core
            .store
            .list_audit(&caller.tenant_id, &filter)
            .await?;
        let next_cursor = if entries.len() as u64 > limit {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }

    /// Walks the caller's tenant's chain: intact (how many rows, the head's hash), or the
    /// first row that breaks it and why.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn verify(&self, caller: &Caller) -> Result<ChainCheck, DomainError> {
        Access::require(caller, Action::ReadAudit)?;
        let check = self.core.store.verify_audit(&caller.tenant_id).await?;
        if let ChainCheck::Broken { seq, reason, .. } = &check {
            tracing::warn!(seq, reason, "the audit log's chain is broken");
        }
        Ok(check)
    }
}
