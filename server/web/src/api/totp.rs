//! `/api/auth/totp*`, `/api/auth/login/totp*` and `DELETE /api/users/{id}/totp`: the TOTP
//! second factor (CONTRACT.md §18), over `outpost_core::service::totp`.
//!
//! Two doors to setup: a signed-in user (bearer token of a user; API keys are refused) at
//! `/api/auth/totp/setup` and `/confirm`, and a sign-in held up by the tenant's policy, whose
//! ticket is the credential, at `/api/auth/login/totp/setup` and `/confirm` (public routes, as
//! the other sign-in routes are). The login answer itself is in `api::users::login`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::users::{SessionView, object_only};
use super::{ApiJson, Authorized, ClientAddr, Path};
use crate::api::AppState;
use crate::http_error::HttpError;
use outpost_core::service::totp::{Confirmed, SecondFactor, Setup};

/// What the second step of a sign-in asks for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorKind {
    /// A code of the user's authenticator, or a recovery code: `POST /api/auth/login/totp`.
    Totp,
    /// The tenant requires a second factor the user has not set up:
    /// `POST /api/auth/login/totp/setup`, then `/confirm`.
    TotpSetup,
}

/// Answer of `POST /api/auth/login` for a user who needs a second step.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecondFactorView {
    /// What the second step is.
    pub second_factor: SecondFactorKind,
    /// The sign-in ticket (`opt_…`): valid 5 minutes, for one sign-in, void after 5 wrong
    /// codes.
    pub ticket: String,
    /// Seconds the ticket stays valid.
    pub expires_in: i64,
}

impl From<SecondFactor> for SecondFactorView {
    fn from(second: SecondFactor) -> Self {
        use outpost_core::service::totp::SecondFactorKind as Kind;
        Self {
            second_factor: match second.kind {
                Kind::Totp => SecondFactorKind::Totp,
                Kind::TotpSetup => SecondFactorKind::TotpSetup,
            },
            ticket: second.ticket,
            expires_in: second.expires_in,
        }
    }
}

/// Answer of `POST /api/auth/login`: a session, or the second step it needs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginView {
    /// Signed in.
    Session(Box<SessionView>),
    /// A second step first.
    SecondFactor(SecondFactorView),
}

/// A new second factor for the user's authenticator app.
#[derive(Debug, Serialize, ToSchema)]
pub struct SetupView {
    /// The secret, base32 (20 bytes): type it into the app, or use `otpauth_url`.
    pub secret: String,
    /// `otpauth://totp/Outpost:<email>?secret=…&issuer=Outpost&algorithm=SHA1&digits=6&period=30`.
    pub otpauth_url: String,
}

impl From<Setup> for SetupView {
    fn from(setup: Setup) -> Self {
        Self {
            secret: setup.secret,
            otpauth_url: setup.otpauth_url,
        }
    }
}

/// Answer of a confirmation: the recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmedView {
    /// 10 single-use codes (`xxxxx-xxxxx`), each usable once instead of a TOTP code at
    /// `POST /api/auth/login/totp`. Shown only now; stored hashed.
    pub recovery_codes: Vec<String>,
    /// The session, when a setup ticket confirmed the factor (the sign-in is finished);
    /// null for a signed-in user.
    pub session: Option<SessionView>,
}

impl From<Confirmed> for ConfirmedView {
    fn from(confirmed: Confirmed) -> Self {
        Self {
            recovery_codes: confirmed.recovery_codes,
            session: confirmed.session.map(SessionView::from),
        }
    }
}

/// Body of `POST /api/auth/totp/confirm` and `DELETE /api/auth/totp`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// A current 6-digit code of the authenticator.
    #[schema(max_length = 64)]
    pub code: String,
}

object_only!(CodeRequest { code: String });

/// Body of `POST /api/auth/login/totp/setup`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// The ticket of a `totp_setup` login answer.
    #[schema(max_length = 100)]
    pub ticket: String,
}

object_only!(TicketRequest { ticket: String });

/// Body of `POST /api/auth/login/totp` and `POST /api/auth/login/totp/confirm`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketCodeRequest {
    /// The ticket of the login answer.
    #[schema(max_length = 100)]
    pub ticket: String,
    /// A current 6-digit code, or (for `login/totp`) an unused recovery code.
    #[schema(max_length = 64)]
    pub code: String,
}

object_only!(TicketCodeRequest {
    ticket: String,
    code: String
});

/// Finish a sign-in with a second factor: a current TOTP code (each used once) or an unused
/// recovery code. A wrong code counts against the ticket; the 5th makes it void.
#[utoipa::path(post, operation_id = "loginTotp", path = "/api/auth/login/totp", tag = "auth",
    request_body = TicketCodeRequest,
    responses((status = 200, body = SessionView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<TicketCodeRequest>,
) -> Result<Json<SessionView>, HttpError> {
    let session = state
        .services
        .totp
        .login(&body.ticket, &body.code, client)
        .await?;
    Ok(Json(SessionView::from(session)))
}

/// Set up a second factor during a sign-in the tenant's policy holds up (a `totp_setup`
/// ticket). A new setup replaces one not yet confirmed.
#[utoipa::path(post, operation_id = "loginTotpSetup", path = "/api/auth/login/totp/setup", tag = "auth",
    request_body = TicketRequest,
    responses((status = 200, body = SetupView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not a password account (`no_password`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "The user's factor is confirmed already (`totp_confirmed`)"),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn login_setup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<TicketRequest>,
) -> Result<Json<SetupView>, HttpError> {
    let setup = state
        .services
        .totp
        .setup_with_ticket(&body.ticket, client)
        .await?;
    Ok(Json(SetupView::from(setup)))
}

/// Confirm the factor set up with a `totp_setup` ticket: answers the recovery codes and the
/// session (the sign-in is finished). A wrong code counts against the ticket.
#[utoipa::path(post, operation_id = "loginTotpConfirm", path = "/api/auth/login/totp/confirm", tag = "auth",
    request_body = TicketCodeRequest,
    responses((status = 200, body = ConfirmedView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "Nothing to confirm (`totp_not_set_up`) or confirmed already (`totp_confirmed`)"),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn login_confirm(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<TicketCodeRequest>,
) -> Result<Json<ConfirmedView>, HttpError> {
    let confirmed = state
        .services
        .totp
        .confirm_with_ticket(&body.ticket, &body.code, client)
        .await?;
    Ok(Json(ConfirmedView::from(confirmed)))
}

/// Set up a second factor (a signed-in user with a password; not an API key). Answers the
/// secret once; the factor counts from its confirmation. A new setup replaces one not yet
/// confirmed; a confirmed one must be removed first.
#[utoipa::path(post, operation_id = "totpSetup", path = "/api/auth/totp/setup", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = SetupView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "An API key (`forbidden`), or not a password account (`no_password`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "A confirmed factor exists (`totp_confirmed`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn setup(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<SetupView>, HttpError> {
    let setup = state.services.totp.setup(&caller).await?;
    Ok(Json(SetupView::from(setup)))
}

/// Confirm the factor with a first code (which counts as used): answers 10 recovery codes,
/// shown once.
#[utoipa::path(post, operation_id = "totpConfirm", path = "/api/auth/totp/confirm", tag = "auth", security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 200, body = ConfirmedView),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "A wrong code (`wrong_code`), or a malformed body"),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "An API key (`forbidden`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "Nothing to confirm (`totp_not_set_up`) or confirmed already (`totp_confirmed`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn confirm(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<Json<ConfirmedView>, HttpError> {
    let confirmed = state.services.totp.confirm(&caller, &body.code).await?;
    Ok(Json(ConfirmedView::from(confirmed)))
}

/// Remove one's own second factor with a current code (a recovery code does not remove it;
/// an owner can reset a lost one). Its recovery codes go with it.
#[utoipa::path(delete, operation_id = "totpRemove", path = "/api/auth/totp", tag = "auth", security(("bearer" = [])),
    request_body = CodeRequest,
    responses((status = 204),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "A wrong code (`wrong_code`), or a malformed body"),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "An API key (`forbidden`)"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn remove(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CodeRequest>,
) -> Result<StatusCode, HttpError> {
    state.services.totp.remove(&caller, &body.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reset another user's second factor (owners, same tenant; audited): that user signs in
/// with the password alone again, or is led to set up a new factor where the tenant requires
/// one. Answers 204 whether or not the user had a factor.
#[utoipa::path(delete, operation_id = "resetUserTotp", path = "/api/users/{id}/totp", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 204),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not an owner"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
pub async fn reset(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.totp.reset(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
