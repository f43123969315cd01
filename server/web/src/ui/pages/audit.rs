//! The audit log page (owners and admins): the entries under a filter, newest first, and the
//! button that checks the whole hash chain.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{Chrome, date, time};
use crate::api::AppState;
use crate::api::Query;
use crate::ui::{PAGE_SIZE, Ui, UiError};

/// An audit entry as a row.
#[derive(Debug)]
struct AuditRow {
    at: String,
    actor: String,
    address: String,
    action: String,
    target: String,
    detail: String,
}

/// The audit log page (owners and admins).
#[derive(Template, WebTemplate)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    actor: String,
    action: String,
    since: String,
    until: String,
    next: Option<String>,
    /// The verify button's answer: whether the chain holds, and what to say.
    verified: Option<(bool, String)>,
}

/// The audit page's query.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC) or instant.
    since: Option<String>,
    /// To the end of this day, or before this instant.
    until: Option<String>,
    cursor: Option<String>,
}

async fn audit_page(
    state: &AppState,
    ui: &Ui,
    query: &AuditQuery,
    verified: Option<(bool, String)>,
) -> Result<Response, UiError> {
    let text = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let page = state
        .services
        .audit
        .list(
            &ui.caller,
            outpost_core::service::audit::AuditQuery {
                actor: text(&query.actor),
                action: text(&query.action),
                since: date("since", query.since.as_deref(), false)?,
                until: date("until", query.until.as_deref(), true)?,
                cursor: text(&query.cursor),
                limit: Some(PAGE_SIZE as u64),
            },
        )
        .await?;
    let next = page.next_cursor.map(|cursor| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("actor", &query.actor),
            ("action", &query.action),
            ("since", &query.since),
            ("until", &query.until),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(name, v);
            }
        }
        q.append_pair("cursor", &cursor);
        format!("{}/audit?{}", ui.site.base, q.finish())
    });
    Ok(AuditPage {
        chrome: Chrome::new(ui, "audit"),
        rows: page
            .entries
            .iter()
            .map(|e| AuditRow {
                at: time(Some(e.at)),
                actor: format!("{} {}", e.actor_kind, e.actor_label),
                address: e.address.clone().unwrap_or_default(),
                action: e.action.clone(),
                target: format!("{} {}", e.target_type, e.target_id),
                detail: e.detail.clone(),
            })
            .collect(),
        actor: query.actor.clone().unwrap_or_default(),
        action: query.action.clone().unwrap_or_default(),
        since: query.since.clone().unwrap_or_default(),
        until: query.until.clone().unwrap_or_default(),
        next,
        verified,
    }
    .into_response())
}

/// `GET /ui/audit`: `Audit::list`, newest first, which refuses members.
pub(crate) async fn audit(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, UiError> {
    audit_page(&state, &ui, &query, None).await
}

/// `POST /ui/audit/verify`: `Audit::verify` (the whole chain, as `GET /api/audit/verify`),
/// then the log with the answer. A POST: it reads every row, which no prefetch should start.
pub(crate) async fn verify_audit(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    use outpost_store::ChainCheck;
    let verified = match state.services.audit.verify(&ui.caller).await? {
        ChainCheck::Intact {
            count,
            head_seq,
            head_hash,
        } => (
            true,
            format!(
                "The chain holds: {count} entries checked, head {head_seq} with hash {head_hash} (keep it elsewhere to compare later)."
            ),
        ),
        ChainCheck::Broken { count, seq, reason } => (
            false,
            format!("The chain is broken at entry {seq} ({count} sound before it): {reason}"),
        ),
    };
    audit_page(&state, &ui, &AuditQuery::default(), Some(verified)).await
}
