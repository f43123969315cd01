//! `/api/auth/password-reset`, `/api/auth/verify` and `/api/mail`: mail to people
//! (CONTRACT.md §18).
//!
//! A reset request answers 202 whatever the email (the service mails in the background); its
//! confirmation takes the token from the mailed link. Verification takes the session of the
//! user who verifies, even before their email is verified (`permissions::Permission::SignedIn`).
//! The outbox listing never shows a mail's body: it carries codes and links.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::users::{UserView, object_only};
use super::{ApiJson, ClientAddr, Query};
use crate::api::AppState;
use outpost_store::domain::DomainError;
use outpost_store::{MailState, mail_outbox};

/// Body of `POST /api/auth/password-reset`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The account's email.
    #[schema(max_length = 254)]
    pub email: String,
}

/// Body of `POST /api/auth/password-reset/confirm`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    /// The token of the mailed link (`opw_…`, the link's `token`).
    pub token: String,
    /// The new password: 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
}

/// Body of `POST /api/auth/verify`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The 6 digits mailed to the user.
    #[schema(max_length = 32)]
    pub code: String,
}

object_only!(ResetRequest { email: String });
object_only!(ResetConfirm {
    token: String,
    password: String
});
object_only!(VerifyRequest { code: String });

/// The answer of a request that is taken and acted on later.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// What happens next.
    pub message: String,
}

/// The answer of `POST /api/auth/verify/resend`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeSent {
    /// Seconds the new code works.
    pub expires_in: i64,
}

/// Ask for a password reset link by mail. Answers 202 whether or not the email is a user's
/// (only a user with a password gets a mail); at most 5 a minute per client address and per
/// email, shared with the confirmation.
#[utoipa::path(post, operation_id = "requestPasswordReset", path = "/api/auth/password-reset", tag = "auth",
    request_body = ResetRequest,
    responses((status = 202, body = Accepted),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn request_reset(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<ResetRequest>,
) -> Result<(StatusCode, Json<Accepted>), HttpError> {
    if body.email.chars().count() > 254 {
        return Err(HttpError(DomainError::BadRequest(
            "email: at most 254 characters".into(),
        )));
    }
    state
        .services
        .account_mail
        .request_reset(&body.email, client)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            message: "if this email has an account with a password, a link to reset it is on \
                      its way (valid 1 hour)"
                .into(),
        }),
    ))
}

/// Set a new password with the token of a mailed reset link (used once, 1 hour). Every
/// session of the user ends; sign in again with the new password.
#[utoipa::path(post, operation_id = "confirmPasswordReset", path = "/api/auth/password-reset/confirm", tag = "auth",
    request_body = ResetConfirm,
    responses((status = 200, body = UserView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 429, response = crate::api::doc::TooManyRequests),
        (status = 503, response = crate::api::doc::Unavailable)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn confirm_reset(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<ResetConfirm>,
) -> Result<Json<UserView>, HttpError> {
    let user = state
        .services
        .account_mail
        .confirm_reset(&body.token, &body.password, client)
        .await?;
    Ok(Json(UserView::from(user)))
}

/// Verify the caller's email with the code mailed to it (10 minutes, 5 tries). A user's
/// session only; works before the email is verified.
#[utoipa::path(post, operation_id = "verifyEmail", path = "/api/auth/verify", tag = "auth", security(("bearer" = [])),
    request_body = VerifyRequest,
    responses((status = 200, body = UserView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "An API key"),
        (status = 503, response = crate::api::doc::Unavailable)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn verify(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Result<Json<UserView>, HttpError> {
    let user = state
        .services
        .account_mail
        .verify(&caller, &body.code)
        .await?;
    Ok(Json(UserView::from(user)))
}

/// Mail the caller a new verification code (the earlier one stops working); at most 3 a
/// minute. A user's session only.
#[utoipa::path(post, operation_id = "resendVerification", path = "/api/auth/verify/resend", tag = "auth", security(("bearer" = [])),
    responses((status = 202, body = CodeSent),
        (status = 403, body = crate::http_error::ErrorEnvelope,
            description = "An API key, or a server that sends no mail (`mail_disabled`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "Verified already"),
        (status = 429, response = crate::api::doc::TooManyRequests),
        (status = 503, response = crate::api::doc::Unavailable)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn resend(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<(StatusCode, Json<CodeSent>), HttpError> {
    let ttl = state.services.account_mail.resend(&caller).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CodeSent {
            expires_in: ttl.num_seconds(),
        }),
    ))
}

/// Which mails `GET /api/mail` lists.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MailStateParam {
    /// Not sent yet, still tried.
    Pending,
    /// Taken by the relay.
    Sent,
    /// Given up.
    Failed,
}

/// Filters of `GET /api/mail`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct MailListQuery {
    /// Only mails in this state.
    #[param(nullable = false)]
    pub state: Option<MailStateParam>,
    /// From a previous page's `next_cursor`.
    #[param(nullable = false, min_length = 1, max_length = 64)]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    pub limit: Option<u64>,
}

/// A mail of the outbox, without its body.
#[derive(Debug, Serialize, ToSchema)]
pub struct MailView {
    /// Its id.
    pub id: String,
    /// `verify`, `reset` or `invite`.
    pub kind: String,
    /// The recipient.
    pub recipient: String,
    /// The subject (never a code or a link: those are in the body, which is not shown).
    pub subject: String,
    /// `pending`, `sent` or `failed`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// What the relay or the connection said at the last failed attempt.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while pending.
    pub next_at: Option<DateTime<Utc>>,
    /// When the relay took it.
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was given up.
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<mail_outbox::Model> for MailView {
    fn from(mail: mail_outbox::Model) -> Self {
        let state = if mail.sent_at.is_some() {
            "sent"
        } else if mail.failed_at.is_some() {
            "failed"
        } else {
            "pending"
        };
        let subject = mail.subject;
        Self {
            next_at: (state == "pending").then_some(mail.next_at),
            state: state.to_owned(),
            id: mail.id,
            kind: mail.kind,
            recipient: mail.recipient,
            subject,
            attempts: mail.attempts,
            last_error: mail.last_error,
            created_at: mail.created_at,
            sent_at: mail.sent_at,
            failed_at: mail.failed_at,
        }
    }
}

/// A page of the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct MailPageView {
    /// Newest first.
    pub mail: Vec<MailView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The tenant's mail to people (verification codes, reset links, invites), newest first:
/// what was sent, what waits for a retry and why, what was given up. Never a mail's body.
/// Owners and admins.
#[utoipa::path(get, operation_id = "listMail", path = "/api/mail", tag = "auth", security(("bearer" = [])),
    params(MailListQuery),
    responses((status = 200, body = MailPageView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A member")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list_mail(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<MailListQuery>,
) -> Result<Json<MailPageView>, HttpError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(HttpError(DomainError::BadRequest(format!(
            "limit: {limit} is not 1 to 200"
        ))));
    }
    if query
        .cursor
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.len() > 64)
    {
        return Err(HttpError(DomainError::BadRequest(
            "cursor: a previous page's next_cursor (1 to 64 characters)".into(),
        )));
    }
    let state_filter = query.state.map(|s| match s {
        MailStateParam::Pending => MailState::Pending,
        MailStateParam::Sent => MailState::Sent,
        MailStateParam::Failed => MailState::Failed,
    });
    let rows = state
        .services
        .account_mail
        .list(&caller, state_filter, query.cursor.as_deref(), limit + 1)
        .await?;
    let limit = usize::try_from(limit.clamp(1, 200)).unwrap_or(200);
    let more = rows.len() > limit;
    let mail: Vec<MailView> = rows.into_iter().take(limit).map(MailView::from).collect();
    let next_cursor = if more {
        mail.last().map(|m| m.id.clone())
    } else {
        None
    };
    Ok(Json(MailPageView { mail, next_cursor }))
}
