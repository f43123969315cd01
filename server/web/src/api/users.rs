//! `/api/auth/*` and `/api/users`: sign-in, sessions, invites, and a tenant's users (CONTRACT.md §9).
//!
//! The sign-in routes take no bearer token (their body is the credential); `me` takes any
//! caller; the users routes need an owner to change and an admin to read, which the service
//! checks. A user's password hash never leaves the server; an invite token appears once, in
//! the answer that creates the user.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ClientAddr, Path};
use crate::api::AppState;
use outpost_core::service::users::{Login, Me, Session, UserPatch};
use outpost_store::domain::{Principal, Role};
use outpost_store::user;

/// A user as shown (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// User id.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// Email, as given.
    pub email: String,
    /// Role in the tenant.
    #[schema(value_type = outpost_store::domain::Role)]
    pub role: String,
    /// `active` or `disabled`.
    #[schema(value_type = outpost_store::domain::UserStatus)]
    pub status: String,
    /// Whether the user still has to accept an invite (no password yet).
    pub invite_pending: bool,
    /// Whether the user proved the email is theirs (a mailed code or reset link,
    /// CONTRACT.md §18).
    pub email_verified: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its role or status last changed.
    pub updated_at: DateTime<Utc>,
    /// Its last successful login.
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<user::Model> for UserView {
    fn from(user: user::Model) -> Self {
        Self {
            invite_pending: user.password_hash.is_none(),
            email_verified: user.email_verified_at.is_some(),
            id: user.id,
            tenant_id: user.tenant_id,
            email: user.email,
            role: user.role,
            status: user.status,
            created_at: user.created_at,
            updated_at: user.updated_at,
            last_login_at: user.last_login_at,
        }
    }
}

/// Body of `POST /api/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email (case-insensitive).
    pub email: String,
    /// Password.
    pub password: String,
}

/// Declares that a body type is read from a JSON object only. serde's derive also reads a
/// struct from an array of its fields in order (`[null, null]`), which the OpenAPI document
/// does not allow. Each field is read by name, and an error names the field (`role: unknown
/// variant …`); a field missing reads as `null` (so an `Option` is `None`), an unknown one is
/// refused.
macro_rules! object_only {
    ($name:ident { $($field:ident: $ty:ty),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let mut object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
                $(
                    let $field: $ty = match object.remove(stringify!($field)) {
                        Some(value) => serde_json::from_value(value).map_err(|e| {
                            D::Error::custom(format!("{}: {e}", stringify!($field)))
                        })?,
                        None => serde_json::from_value(serde_json::Value::Null).map_err(|_| {
                            D::Error::custom(format!("missing field `{}`", stringify!($field)))
                        })?,
                    };
                )+
                if let Some(unknown) = object.keys().next() {
                    return Err(D::Error::custom(format!(
                        "unknown field `{unknown}`, expected one of {}",
                        [$(concat!("`", stringify!($field), "`")),+].join(", ")
                    )));
                }
                Ok(Self { $($field),+ })
            }
        }
    };
}

/// Body of `POST /api/auth/refresh` and `POST /api/auth/logout`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token (`opr_…`).
    pub refresh_token: String,
}

/// Body of `POST /api/auth/accept-invite`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvite {
    /// The invite token (`opi_…`).
    pub token: String,
    /// The new password: 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
}

/// A session: answer of login and refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The access token (a JWT) for `Authorization: Bearer`, valid `expires_in` seconds.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires (900).
    pub expires_in: i64,
    /// The refresh token (`opr_…`, 7 days): exchange it at `/api/auth/refresh` for a new
    /// pair; it works once.
    pub refresh_token: String,
    /// Who signed in.
    pub user: UserView,
}

impl From<Session> for SessionView {
    fn from(session: Session) -> Self {
        Self {
            access_token: session.access_token,
            token_type: "Bearer",
            expires_in: session.expires_in,
            refresh_token: session.refresh_token,
            user: UserView::from(session.user),
        }
    }
}

/// Whether a caller is a user or an API key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// A user with an access token.
    User,
    /// An API key.
    ApiKey,
}

/// Answer of `GET /api/auth/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    /// User or API key.
    pub kind: CallerKind,
    /// The caller's tenant.
    pub tenant_id: String,
    /// The caller's current role.
    pub role: Role,
    /// What the caller's scopes allow: `["*"]` for a user, an API key's own otherwise (it
    /// acts with these and `role` together).
    pub scopes: Vec<outpost_store::domain::Scope>,
    /// The user, when a user asks.
    pub user: Option<UserView>,
    /// The API key's id, when a key asks.
    pub key_id: Option<String>,
}

impl From<Me> for MeView {
    fn from(me: Me) -> Self {
        let (kind, key_id) = match me.principal {
            Principal::User { .. } => (CallerKind::User, None),
            Principal::ApiKey { key_id, .. } => (CallerKind::ApiKey, Some(key_id)),
            // A schedule acts only inside the server, never over HTTP.
            Principal::Schedule { .. } => (CallerKind::ApiKey, None),
        };
        Self {
            kind,
            tenant_id: me.tenant_id,
            role: me.role,
            scopes: me.scopes.list(),
            user: me.user.map(UserView::from),
            key_id,
        }
    }
}

pub(crate) use object_only;

object_only!(RefreshRequest {
    refresh_token: String
});

/// Body of `POST /api/users`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Email, unique on the server (case-insensitive).
    #[schema(value_type = crate::api::doc::Email)]
    pub email: String,
    /// Role in the tenant.
    pub role: Role,
}

/// Answer of `POST /api/users`: the user and the one-time invite.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    /// The new user (no password until the invite is accepted).
    pub user: UserView,
    /// The invite (`opi_…`): shown once; the user sets a password with it at
    /// `POST /api/auth/accept-invite` within 72 hours.
    pub invite_token: String,
    /// When the invite stops working.
    pub invite_expires_at: DateTime<Utc>,
}

object_only!(CreateUser {
    email: String,
    role: Role
});

/// Body of `PATCH /api/users/{id}`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New role.
    pub role: Option<Role>,
    /// `true` disables the user (their sessions end), `false` enables them again.
    pub disabled: Option<bool>,
}

object_only!(UpdateUser { role: Option<Role>, disabled: Option<bool> });

/// Sign in with email and password. Every failure answers the same 401. A user with a second
/// factor (or whom the tenant's policy requires to set one up) gets
/// `{second_factor, ticket, expires_in}` instead of a session (CONTRACT.md §18).
#[utoipa::path(post, operation_id = "login", path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, body = crate::api::totp::LoginView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<crate::api::totp::LoginView>, HttpError> {
    let login = state
        .services
        .users
        .login(&body.email, &body.password, client)
        .await?;
    Ok(Json(match login {
        Login::Session(session) => {
            crate::api::totp::LoginView::Session(Box::new(SessionView::from(*session)))
        }
        Login::SecondFactor(second) => crate::api::totp::LoginView::SecondFactor(second.into()),
    }))
}

/// Exchange a refresh token for a new pair; the token presented is retired. A retired token
/// presented again (after a grace of 5 s) revokes every session of its sign-in.
#[utoipa::path(post, operation_id = "refresh", path = "/api/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, body = SessionView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn refresh(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<SessionView>, HttpError> {
    let session = state
        .services
        .users
        .refresh(&body.refresh_token, client)
        .await?;
    Ok(Json(SessionView::from(session)))
}

/// Sign out: revokes the refresh token and every other of its sign-in. Access tokens already
/// issued work until they expire (at most 15 minutes).
#[utoipa::path(post, operation_id = "logout", path = "/api/auth/logout", tag = "auth",
    request_body = RefreshRequest, responses((status = 204)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, HttpError> {
    state.services.users.logout(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who is calling: the user or API key, its tenant and its current role.
#[utoipa::path(get, operation_id = "me", path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeView)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn me(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<MeView>, HttpError> {
    let me = state.services.users.me(&caller).await?;
    Ok(Json(MeView::from(me)))
}

/// Set an invited user's password with their invite token (used once, 72 hours).
#[utoipa::path(post, operation_id = "acceptInvite", path = "/api/auth/accept-invite", tag = "auth",
    request_body = AcceptInvite,
    responses((status = 200, body = UserView),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn accept_invite(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<AcceptInvite>,
) -> Result<Json<UserView>, HttpError> {
    let user = state
        .services
        .users
        .accept_invite(&body.token, &body.password, client)
        .await?;
    Ok(Json(UserView::from(user)))
}

/// The tenant's users (owners and admins).
#[utoipa::path(get, operation_id = "listUsers", path = "/api/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = [UserView]),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A member")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<Vec<UserView>>, HttpError> {
    let users = state.services.users.list(&caller).await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// Create a user (owners): answers the one-time invite token, shown once.
#[utoipa::path(post, operation_id = "createUser", path = "/api/users", tag = "users", security(("bearer" = [])),
    request_body = CreateUser,
    responses((status = 201, body = CreatedUser),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not an owner (`forbidden`), or the tenant has its `max_users` already (`quota_exceeded`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "The email is taken (`email_taken`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<CreatedUser>), HttpError> {
    let invited = state
        .services
        .users
        .create(&caller, &body.email, body.role)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user: UserView::from(invited.user),
            invite_token: invited.invite_token,
            invite_expires_at: invited.invite_expires_at,
        }),
    ))
}

/// One user (owners and admins).
#[utoipa::path(get, operation_id = "showUser", path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = UserView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "A member"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<UserView>, HttpError> {
    let user = state.services.users.get(&caller, &id).await?;
    Ok(Json(UserView::from(user)))
}

/// Change a user's role or disable them (owners). Takes effect on the user's next request; an
/// empty body changes nothing.
/// The tenant's last active owner cannot be demoted or disabled (`last_owner`).
#[utoipa::path(patch, operation_id = "updateUser", path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")), request_body = UpdateUser,
    responses((status = 200, body = UserView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not an owner"),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "The last active owner (`last_owner`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<Json<UserView>, HttpError> {
    let patch = UserPatch {
        role: body.role,
        disabled: body.disabled,
    };
    let user = state.services.users.update(&caller, &id, patch).await?;
    Ok(Json(UserView::from(user)))
}

/// Delete a user (owners); their sessions end. The last active owner cannot be deleted.
#[utoipa::path(delete, operation_id = "deleteUser", path = "/api/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 204),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not an owner"),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "The last active owner (`last_owner`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, user_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.users.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
