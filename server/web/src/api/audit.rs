//! `/api/audit`: the tenant's audit log (CONTRACT.md §9), newest first, and a check of its hash
//! chain. Owners and admins only; what is recorded, and when, is in `outpost_core::service::audit`.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::Query;
use crate::api::AppState;
use outpost_core::service::audit::{AuditPage, AuditQuery};
use outpost_store::{ChainCheck, audit_entry};

/// Who did it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorView {
    /// What kind of actor.
    #[schema(value_type = outpost_store::domain::ActorKind)]
    pub kind: String,
    /// Its id: an API key's id, a user's id, an agent's id, or for `system` the command that
    /// acted (`admin-key rotate`, `release publish`).
    pub id: String,
    /// How people know it: an API key's name, a user's email.
    pub label: String,
}

/// What it was done to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    /// What kind of thing.
    #[serde(rename = "type")]
    #[schema(value_type = outpost_store::domain::AuditTarget)]
    pub kind: String,
    /// Its id (a release's is `VERSION/TARGET`).
    pub id: String,
}

/// One row of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// The row's number in the tenant's log, from 1 (also the cursor's unit).
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: ActorView,
    /// The client's address, when the action came over the network.
    pub address: Option<String>,
    /// What was done.
    #[schema(value_type = outpost_store::domain::AuditAction)]
    pub action: String,
    /// What it was done to.
    pub target: TargetView,
    /// A few facts about it (never a secret: no key, parameter value or command data).
    #[schema(value_type = Object)]
    pub detail: Value,
    /// The previous row's hash (64 zeros for the first row).
    pub prev_hash: String,
    /// SHA-256 over this row's fields and `prev_hash`, hex.
    pub hash: String,
}

impl From<audit_entry::Model> for AuditEntryView {
    fn from(row: audit_entry::Model) -> Self {
        // Written by the server as a JSON object; anything else is shown as text.
        let detail = serde_json::from_str(&row.detail).unwrap_or(Value::String(row.detail));
        Self {
            id: row.seq,
            at: row.at,
            actor: ActorView {
                kind: row.actor_kind,
                id: row.actor_id,
                label: row.actor_label,
            },
            address: row.address,
            action: row.action,
            target: TargetView {
                kind: row.target_type,
                id: row.target_id,
            },
            detail,
            prev_hash: row.prev_hash,
            hash: row.hash,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPageView {
    /// Newest first.
    pub entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditListQuery {
    /// Rows of this actor: its id or its label (an API key's id or name).
    #[param(nullable = false, min_length = 1, max_length = 200)]
    pub actor: Option<String>,
    /// Rows of this action (`job.trigger`), or of every action on a kind of target
    /// (`agent_key` for `agent_key.create`, `agent_key.disable`, …).
    #[param(nullable = false, min_length = 1, max_length = 200)]
    pub action: Option<String>,
    /// Recorded at or after (RFC 3339).
    #[param(nullable = false)]
    pub since: Option<DateTime<Utc>>,
    /// Recorded before (RFC 3339).
    #[param(nullable = false)]
    pub until: Option<DateTime<Utc>>,
    /// From a previous page's `next_cursor` (a row id).
    #[param(nullable = false, pattern = "^[1-9][0-9]{0,17}$")]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    pub limit: Option<u64>,
}

/// The first row that breaks the chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokenRow {
    /// Its id (for a missing row, the id that is missing).
    pub id: i64,
    /// Why: missing, changed after it was written, or not chained to the row before.
    pub reason: String,
}

/// What a check of the chain found.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyView {
    /// Whether every row chains to the one before it and matches its hash.
    pub ok: bool,
    /// Rows checked and found sound (up to the first broken one).
    pub count: u64,
    /// The last row's id, when the chain is intact.
    pub head_id: Option<i64>,
    /// The last row's hash, when the chain is intact: keep it elsewhere, a later check must
    /// still pass through it.
    pub head_hash: Option<String>,
    /// The first broken row, when the chain is not intact.
    pub first_broken: Option<BrokenRow>,
}

/// The tenant's audit log, newest first, with filters and cursor pagination. Owners and
/// admins only.
#[utoipa::path(get, operation_id = "listAudit", path = "/api/audit", tag = "audit", security(("bearer" = [])),
    params(AuditListQuery),
    responses((status = 200, body = AuditPageView), (status = 400, response = crate::api::doc::BadRequest),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A member's key")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<AuditListQuery>,
) -> Result<Json<AuditPageView>, HttpError> {
    let AuditPage {
        entries,
        next_cursor,
    } = state
        .services
        .audit
        .list(
            &caller,
            AuditQuery {
                actor: query.actor,
                action: query.action,
                since: query.since,
                until: query.until,
                cursor: query.cursor,
                limit: query.limit,
            },
        )
        .await?;
    Ok(Json(AuditPageView {
        entries: entries.into_iter().map(AuditEntryView::from).collect(),
        next_cursor,
    }))
}

/// Check the tenant's audit log: every row must follow the one before it, match its hash and
/// chain to it, up to the last row recorded. Answers 200 either way; `ok` says which.
/// Owners and admins only.
#[utoipa::path(get, operation_id = "verifyAudit", path = "/api/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = AuditVerifyView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A member's key")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn verify(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<AuditVerifyView>, HttpError> {
    let view = match state.services.audit.verify(&caller).await? {
        ChainCheck::Intact {
            count,
            head_seq,
            head_hash,
        } => AuditVerifyView {
            ok: true,
            count,
            head_id: Some(head_seq),
            head_hash: Some(head_hash),
            first_broken: None,
        },
        ChainCheck::Broken { count, seq, reason } => AuditVerifyView {
            ok: false,
            count,
            head_id: None,
            head_hash: None,
            first_broken: Some(BrokenRow { id: seq, reason }),
        },
    };
    Ok(Json(view))
}
