//! `/api/auth/oidc/*`: sign-in through the OpenID Connect provider (CONTRACT.md §18).
//!
//! The browser is bound to its sign-in by a cookie holding the `state` (`SameSite=Lax`: a
//! `Strict` cookie is not sent on the provider's redirect back, a cross-site navigation), so a
//! callback that another site makes a browser follow carries no matching cookie and gets 400.
//! The routes take no bearer token, except a link started by a program (`link=1` with
//! `Authorization: Bearer`); the dashboard links through `POST /ui/sso/link`.
//!
//! A browser's sign-in ends with the dashboard's session cookie and a redirect to the
//! dashboard; a CLI's ends with a redirect to its loopback address carrying a one-time code
//! that `POST /api/auth/oidc/exchange` turns into a session.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::users::SessionView;
use super::{ApiJson, ClientAddr, Query};
use crate::api::AppState;
use crate::http_error::HttpError;
use outpost_core::service::sso::Finished;
use outpost_store::domain::DomainError;

/// The cookie binding a browser to its sign-in.
pub const STATE_COOKIE: &str = "outpost_oidc";
/// Where the state cookie is sent.
const STATE_PATH: &str = "/api/auth/oidc";
/// The cookie handing a browser's one-time code to the dashboard (`/ui/sso/finish`).
pub const HANDOFF_COOKIE: &str = "outpost_sso";
/// Where the handoff cookie is sent.
pub const HANDOFF_PATH: &str = "/ui/sso";

/// Where the server is mounted (the path of `--public-url`) and whether its cookies are
/// `Secure` (TLS, or an https public URL), as the dashboard's `Site` reads them.
pub fn mount(state: &AppState) -> (String, bool) {
    let files = state.services.releases.files();
    let public_url = files.public_url.as_deref().map(|u| u.trim_end_matches('/'));
    let prefix = public_url
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let secure =
        files.tls || public_url.is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
    (prefix, secure)
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Lax` (CONTRACT.md §18).
pub fn lax_cookie(
    state: &AppState,
    name: &str,
    path: &str,
    value: &str,
    max_age: i64,
) -> HeaderValue {
    let (prefix, secure) = mount(state);
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={prefix}{path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of the cookie `name` in the request, if it has exactly one.
pub fn request_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// Query of `GET /api/auth/oidc/start`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartQuery {
    /// `1`: link the identity to the signed-in user (`Authorization: Bearer`) instead of
    /// signing in.
    #[param(value_type = Option<u8>, minimum = 0, maximum = 1)]
    pub link: Option<u8>,
    /// The CLI's loopback address (`http://127.0.0.1:PORT/…`) to hand the sign-in to
    /// (`outpost login --sso`).
    pub cli: Option<String>,
}

/// Query of `GET /api/auth/oidc/callback`, as the provider sends it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    /// The authorization code.
    pub code: Option<String>,
    /// The state sent at the start.
    pub state: Option<String>,
    /// The provider's error, when it did not sign the person in.
    pub error: Option<String>,
    /// The provider's words for its error.
    pub error_description: Option<String>,
}

/// Body of `POST /api/auth/oidc/exchange`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The one-time code (`oph_…`) the callback handed to the CLI's loopback address.
    pub code: String,
}

super::users::object_only!(ExchangeRequest { code: String });

fn state_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    lax_cookie(state, STATE_COOKIE, STATE_PATH, value, max_age)
}

fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// Starts a sign-in: 302 to the provider, with a cookie binding this browser to it.
pub(crate) async fn redirect_to_provider(
    state: &AppState,
    link: Option<&outpost_store::user::Model>,
    cli: Option<&str>,
    client: std::net::IpAddr,
) -> Result<Response, DomainError> {
    let started = state.services.sso.start(link, cli, client).await?;
    let mut response = found(&started.url);
    response.headers_mut().append(
        header::SET_COOKIE,
        state_cookie(
            state,
            &started.state,
            outpost_core::service::sso::LOGIN_TTL.num_seconds(),
        ),
    );
    Ok(response)
}

/// Start a sign-in through the OpenID Connect provider: 302 to it (authorization code with
/// PKCE S256, `state`, `nonce`), setting the cookie that binds this browser to the sign-in.
#[utoipa::path(get, operation_id = "oidcStart", path = "/api/auth/oidc/start", tag = "auth",
    params(StartQuery),
    responses((status = 302, description = "To the provider's sign-in page"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "`link=1` by an API key (only a user links an identity)"),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "Single sign-on is not configured"),
        (status = 429, response = crate::api::doc::TooManyRequests),
        (status = 503, body = crate::http_error::ErrorEnvelope, description = "The provider cannot be reached")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Query(query): Query<StartQuery>,
) -> Result<Response, HttpError> {
    let link = match query.link {
        None | Some(0) => None,
        Some(_) => {
            let token = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let caller = state.services.access.authenticate(token, client).await?;
            let me = state.services.users.me(&caller).await?;
            let Some(user) = me.user else {
                return Err(HttpError(DomainError::Forbidden(
                    "link: only a user (not an API key) links an identity".into(),
                )));
            };
            Some(user)
        }
    };
    Ok(redirect_to_provider(&state, link.as_ref(), query.cli.as_deref(), client).await?)
}

/// Where the provider sends the browser back. The state must match this browser's cookie
/// and a live, unused sign-in (else 400, never a redirect); the code is exchanged and the ID
/// token verified. A browser then goes on to the dashboard (`/ui/sso/finish`, a one-time code in
/// a cookie), which signs it in; a CLI's sign-in goes on to its loopback address with the code.
#[utoipa::path(get, operation_id = "oidcCallback", path = "/api/auth/oidc/callback", tag = "auth",
    params(CallbackQuery),
    responses((status = 302, description = "Signed in (to the dashboard), linked, or on to the CLI"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "`sso_no_tenant`: no tenant takes the email's domain and signup is off; `quota_exceeded`"),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "Single sign-on is not configured"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`sso_not_linked`: the email is an existing user's, who must link the identity first; `sso_identity_taken`"),
        (status = 429, response = crate::api::doc::TooManyRequests),
        (status = 503, body = crate::http_error::ErrorEnvelope, description = "The provider cannot be reached")))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn callback(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, HttpError> {
    let (prefix, _) = mount(&state);
    let provider_error = query
        .error
        .as_deref()
        .map(|e| match &query.error_description {
            Some(d) => format!("{e}: {d}"),
            None => e.to_owned(),
        });
    let finished = state
        .services
        .sso
        .callback(
            query.code.as_deref(),
            query.state.as_deref().unwrap_or(""),
            request_cookie(&headers, STATE_COOKIE),
            provider_error.as_deref(),
            client,
        )
        .await?;
    let mut response = match finished {
        Finished::SignedIn(handoff) => {
            let mut response = found(&format!("{prefix}{HANDOFF_PATH}/finish"));
            response.headers_mut().append(
                header::SET_COOKIE,
                lax_cookie(
                    &state,
                    HANDOFF_COOKIE,
                    HANDOFF_PATH,
                    &handoff,
                    outpost_core::service::sso::HANDOFF_TTL.num_seconds(),
                ),
            );
            response
        }
        Finished::Linked(_) => found(&format!("{prefix}/ui/agents?linked=1")),
        Finished::Cli(url) => found(&url),
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, state_cookie(&state, "", 0));
    Ok(response)
}

/// Exchange the one-time code a CLI received on its loopback address for a session (once,
/// within two minutes).
#[utoipa::path(post, operation_id = "oidcExchange", path = "/api/auth/oidc/exchange", tag = "auth",
    request_body = ExchangeRequest,
    responses((status = 200, body = SessionView),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 401, response = crate::api::doc::Unauthorized),
        (status = 404, body = crate::http_error::ErrorEnvelope, description = "Single sign-on is not configured"),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn exchange(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<ExchangeRequest>,
) -> Result<Json<SessionView>, HttpError> {
    let session = state.services.sso.exchange(&body.code, client).await?;
    Ok(Json(SessionView::from(session)))
}
