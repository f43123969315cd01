//! The dashboard's session: sign-in, the session cookie, sign-out.
//!
//! The cookie holds what `POST /api/auth/login` answers a program with, and nothing the
//! server keeps apart from it: the access token's expiry, the access token, the refresh token
//! and a nonce (`exp~access~refresh~nonce`). A request is authenticated by its access token,
//! through the same `Access::authenticate` as a bearer token (so the user's row is read
//! again and a disabled user is out at once); shortly before the access token expires, the
//! refresh token is exchanged through `Users::refresh`, exactly as a program would, and the
//! response carries the new cookie. The refresh token's family is therefore the session: a
//! stolen cookie replayed after the browser has rotated it is a reused refresh token, which
//! revokes the family (both copies are signed out), and signing out revokes it too.
//!
//! The nonce is made at sign-in and kept for the session; forms carry `Access::form_token`
//! of it (`forms`). The sign-in form itself has a short-lived cookie of its own with a nonce,
//! so that a sign-in cannot be forged from another site either.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::assets::Names;
use super::forms::{self, Fields, SESSION_PURPOSE};
use super::{Site, Ui, UiError, see_other};
use crate::api::AppState;
use crate::api::ClientAddr;
use outpost_core::service::users::Login;
use outpost_store::domain::DomainError;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "outpost_session";
/// The sign-in form's cookie.
pub(super) const LOGIN_COOKIE: &str = "outpost_login";
/// The purpose of the sign-in form's token.
pub(super) const LOGIN_PURPOSE: &str = "login";
/// How long before its expiry an access token is exchanged.
const REFRESH_BEFORE_S: i64 = 60;
/// How long the session cookie lives: the refresh token's life.
const SESSION_MAX_AGE_S: i64 = 7 * 24 * 3600;
/// How long a sign-in form stays usable.
pub(super) const LOGIN_MAX_AGE_S: i64 = 3600;

/// The sign-in page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/login.html")]
struct LoginPage {
    /// `<prefix>/ui`.
    base: String,
    /// The assets' names.
    asset: &'static Names,
    /// The sign-in form's token.
    csrf: String,
    /// Where to go afterwards (checked).
    next: String,
    /// The email typed, shown again after a failure.
    email: String,
    /// Why the last attempt failed.
    error: Option<String>,
    /// Whether the server mails reset links ("Forgot your password?").
    can_reset: bool,
    /// The OpenID Connect provider's name and where its sign-in starts, when it is on.
    sso: Option<(String, String)>,
}

/// The parts of a session cookie.
struct Cookie<'a> {
    expires: i64,
    access: &'a str,
    refresh: &'a str,
    nonce: &'a str,
}

impl<'a> Cookie<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let mut parts = value.split('~');
        let cookie = Self {
            expires: parts.next()?.parse().ok()?,
            access: parts.next()?,
            refresh: parts.next()?,
            nonce: parts.next()?,
        };
        (parts.next().is_none() && !cookie.nonce.is_empty()).then_some(cookie)
    }
}

/// The value of the cookie `name` in the request, if it has exactly one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    // Two cookies of one name (one set for another path): trust neither.
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// A `Set-Cookie` value for the dashboard's path. `SameSite=Lax`, not `Strict` (CONTRACT.md §18):
/// a sign-in through the OpenID Connect provider ends in a redirect chain that started on the
/// provider's site, on which a `Strict` cookie is not sent; forms carry their own token anyway.
pub(super) fn set_cookie(site: &Site, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if site.secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        site.base
    );
    // Every part is ours: ASCII without control characters.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// 32 random bytes, hex.
pub(super) fn new_nonce() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // The OS's random source failed: a nonce that can never be matched (empty nonces are
        // refused by `check_form_token`).
        return String::new();
    }
    hex::encode(bytes)
}

/// The session cookie of a sign-in finished by its second step (`super::totp`).
pub(super) fn session_cookie_for(
    site: &Site,
    session: &outpost_core::service::users::Session,
) -> HeaderValue {
    session_cookie(site, session, &new_nonce())
}

/// Clears the sign-in form's cookie (its second step needs none).
pub(super) fn login_cookie_cleared(site: &Site) -> HeaderValue {
    set_cookie(site, LOGIN_COOKIE, "", 0)
}

/// The session cookie for a fresh pair of tokens.
fn session_cookie(
    site: &Site,
    session: &outpost_core::service::users::Session,
    nonce: &str,
) -> HeaderValue {
    let expires = Utc::now().timestamp() + session.expires_in;
    let value = format!(
        "{expires}~{}~{}~{nonce}",
        session.access_token, session.refresh_token
    );
    set_cookie(site, SESSION_COOKIE, &value, SESSION_MAX_AGE_S)
}

/// What a request without a usable session gets: pages send the browser to the sign-in page
/// (coming back afterwards), anything else is refused.
fn signed_out(site: &Site, method: &Method, path_and_query: &str) -> Response {
    let mut response = if method == Method::GET && !path_and_query.contains("/stream") {
        let next = format!("{}{}", site.base.trim_end_matches("/ui"), path_and_query);
        see_other(&format!(
            "{}/login?next={}",
            site.base,
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        ))
    } else {
        UiError(DomainError::Unauthorized(
            "not signed in, or the session has ended: sign in again".into(),
        ))
        .into_response()
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(site, SESSION_COOKIE, "", 0));
    response
}

/// The middleware of every signed-in route: authenticates the session cookie (refreshing it
/// when its access token is about to expire), hands the handler a [`Ui`], and refuses a POST
/// whose form token is not this session's.
pub async fn require(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    mut request: Request,
    next: Next,
) -> Response {
    let site = Site::of(&state);
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let method = request.method().clone();
    let Some(cookie) = cookie(request.headers(), SESSION_COOKIE).and_then(Cookie::parse) else {
        return signed_out(&site, &method, &path);
    };
    let access = &state.services.access;
    // The pages that verify an email take a user who has not yet (CONTRACT.md §18).
    let verifying = request
        .uri()
        .path()
        .strip_prefix(site.base.as_str())
        .is_some_and(|rest| rest == "/verify" || rest == "/verify/resend");
    let authenticate = |token: String| async move {
        if verifying {
            access.authenticate_unverified(Some(&token), client).await
        } else {
            access.authenticate(Some(&token), client).await
        }
    };
    let mut renewed = None;
    let caller = if cookie.expires - REFRESH_BEFORE_S > Utc::now().timestamp() {
        authenticate(cookie.access.to_owned()).await
    } else {
        match state.services.users.refresh(cookie.refresh, client).await {
            Ok(session) => {
                let caller = authenticate(session.access_token.clone()).await;
                renewed = Some(session_cookie(&site, &session, cookie.nonce));
                caller
            }
            Err(err) => Err(err),
        }
    };
    let caller = match caller {
        Ok(caller) => {
            // The connection no longer counts against the caps on unauthenticated ones.
            crate::listen::mark_authenticated();
            caller
        }
        Err(DomainError::Unauthorized(_)) => return signed_out(&site, &method, &path),
        Err(DomainError::NotAllowed {
            code: "email_unverified",
            ..
        }) if method == Method::GET => {
            let mut response = see_other(&format!("{}/verify", site.base));
            if let Some(cookie) = renewed {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            return response;
        }
        Err(err) => return UiError(err).into_response(),
    };
    let ui = Ui {
        csrf: access.form_token(SESSION_PURPOSE, cookie.nonce),
        nonce: cookie.nonce.to_owned(),
        caller,
        site,
        sso: state.services.sso.name().map(str::to_owned),
    };
    if method != Method::GET && method != Method::HEAD {
        // Every form is checked here, before its handler: none can forget it. Only the
        // forms that send files (the library's upload and editor) may be multipart.
        let multipart = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        let takes_files = request
            .uri()
            .path()
            .strip_prefix(ui.site.base.as_str())
            .is_some_and(|rest| {
                rest == "/scripts" || (rest.starts_with("/scripts/") && rest.ends_with("/drafts"))
            });
        let checked = if multipart && takes_files {
            forms::checked_multipart(request, &ui, access).await
        } else {
            forms::checked(request, &ui, access).await
        };
        request = match checked {
            Ok(request) => request,
            Err(err) => return err.into_response(),
        };
    }
    request.extensions_mut().insert(ui);
    let mut response = next.run(request).await;
    if let Some(cookie) = renewed {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /ui/login`.
#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`: the sign-in form, with a fresh nonce in its own cookie.
pub async fn login_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let site = Site::of(&state);
    login_form(
        &state,
        &site,
        query.next.as_deref(),
        "",
        None,
        StatusCode::OK,
    )
}

fn login_form(
    state: &AppState,
    site: &Site,
    next: Option<&str>,
    email: &str,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let nonce = new_nonce();
    let page = LoginPage {
        base: site.base.clone(),
        asset: super::assets::names(),
        csrf: state.services.access.form_token(LOGIN_PURPOSE, &nonce),
        next: next.filter(|n| safe_next(site, n)).unwrap_or("").to_owned(),
        email: email.to_owned(),
        error,
        can_reset: state.services.account_mail.enabled(),
        sso: state.services.sso.name().map(|name| {
            (
                name.to_owned(),
                format!("{}/api/auth/oidc/start", site.base.trim_end_matches("/ui")),
            )
        }),
    };
    let mut response = (status, page).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(site, LOGIN_COOKIE, &nonce, LOGIN_MAX_AGE_S),
    );
    response
}

/// Whether `next` is a page of this dashboard, to be sent back to after signing in: a plain
/// absolute path under the dashboard's base, in printable ASCII (no control character, so no
/// header can be split and the `Location` can always be built; no space), without `//`
/// (which would name another host), a backslash (which browsers read as `/`) or a `.` or `..`
/// segment. Anything else falls back to the dashboard's home.
pub(super) fn safe_next(site: &Site, next: &str) -> bool {
    let prefix = site.base.trim_end_matches("/ui");
    let path = next.split(['?', '#']).next().unwrap_or_default();
    next.bytes().all(|b| b.is_ascii_graphic())
        && !next.contains("//")
        && !next.contains('\\')
        && !path.split('/').any(|segment| {
            let segment = segment.to_ascii_lowercase().replace("%2e", ".");
            segment == "." || segment == ".."
        })
        && next
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with("/ui/"))
}

/// `POST /ui/login`: signs in through `Users::login`, as `POST /api/auth/login` does.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let site = Site::of(&state);
    let fields = Fields::parse(&body);
    let next = fields.get("next").filter(|n| safe_next(&site, n));
    let email = fields.get("email").unwrap_or("");
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let token = fields.get(forms::CSRF_FIELD).unwrap_or("");
    if !state
        .services
        .access
        .check_form_token(LOGIN_PURPOSE, nonce, token)
    {
        return login_form(
            &state,
            &site,
            next,
            email,
            Some("The sign-in form had expired: try again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let password = fields.get("password").unwrap_or("");
    match state.services.users.login(email, password, client).await {
        Ok(Login::SecondFactor(second)) => {
            super::totp::second_step(&state, &site, next, second, client).await
        }
        Ok(Login::Session(session)) => {
            let mut response = see_other(next.unwrap_or(&format!("{}/agents", site.base)));
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                session_cookie(&site, &session, &new_nonce()),
            );
            headers.append(header::SET_COOKIE, set_cookie(&site, LOGIN_COOKIE, "", 0));
            response
        }
        Err(err @ (DomainError::Unauthorized(_) | DomainError::RateLimited { .. })) => {
            let status = crate::http_error::status(&err);
            login_form(&state, &site, next, email, Some(err.to_string()), status)
        }
        Err(err) => UiError(err).into_response(),
    }
}

/// `GET /ui/sso/finish`: the end of a browser's single sign-on. The callback left a one-time
/// code in a cookie (never in the URL); it is exchanged for a session as the CLI's is, and the
/// session cookie is set.
pub async fn finish_sso(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Response {
    use crate::api::sso::{HANDOFF_COOKIE, HANDOFF_PATH, lax_cookie};
    let site = Site::of(&state);
    let code = cookie(&headers, HANDOFF_COOKIE).unwrap_or("");
    let clear = lax_cookie(&state, HANDOFF_COOKIE, HANDOFF_PATH, "", 0);
    let mut response = match state.services.sso.exchange(code, client).await {
        Ok(session) => {
            let mut response = see_other(&format!("{}/agents", site.base));
            response.headers_mut().append(
                header::SET_COOKIE,
                session_cookie(&site, &session, &new_nonce()),
            );
            response
        }
        Err(err) => UiError(err).into_response(),
    };
    response.headers_mut().append(header::SET_COOKIE, clear);
    response
}

/// `POST /ui/sso/link`: the signed-in user links an identity at the OpenID Connect provider
/// (CONTRACT.md §18): off to the provider, back through its callback.
pub async fn link_sso(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    axum::Extension(ui): axum::Extension<Ui>,
) -> Response {
    let user = match state.services.users.me(&ui.caller).await {
        Ok(me) => me.user,
        Err(err) => return UiError(err).into_response(),
    };
    let Some(user) = user else {
        return UiError(DomainError::BadRequest(
            "only a user links an identity".into(),
        ))
        .into_response();
    };
    match crate::api::sso_redirect(&state, Some(&user), None, client).await {
        Ok(response) => response,
        Err(err) => UiError(err).into_response(),
    }
}

/// `POST /ui/logout`: revokes the session's refresh family and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let site = Site::of(&state);
    if let Some(cookie) = cookie(&headers, SESSION_COOKIE).and_then(Cookie::parse)
        && let Err(err) = state.services.users.logout(cookie.refresh).await
    {
        return UiError(err).into_response();
    }
    let mut response = see_other(&format!("{}/login", site.base));
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&site, SESSION_COOKIE, "", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(base: &str) -> Site {
        Site {
            base: base.into(),
            public_url: None,
            secure: false,
            pins: None,
        }
    }

    #[test]
    fn next_stays_on_the_dashboard() {
        let s = site("/ui");
        for good in [
            "/ui/jobs/1",
            "/ui/jobs?status=failed",
            "/ui/x%0D%0A",
            "/ui/agents#a",
        ] {
            assert!(safe_next(&s, good), "{good}");
        }
        for bad in [
            "//evil.example/ui/",
            "https://evil.example/",
            "/ui",
            "/api/x",
            "/ui//x",
            "/ui/\\x",
            "/ui/x\r\nSet-Cookie:a=b",
            "/ui/x\nLocation:/evil",
            "/ui/x\u{0}",
            "/ui/x\t",
            "/ui/x\u{7f}",
            "/ui/a b",
            "/ui/caf\u{e9}",
            "/ui/../api/x",
            "/ui/%2e%2E/api/x",
            "/ui/./x",
            "/ui/jobs?next=//evil.example",
            "",
        ] {
            assert!(!safe_next(&s, bad), "{bad}");
        }
        let p = site("/outpost/ui");
        assert!(safe_next(&p, "/outpost/ui/agents"));
        assert!(!safe_next(&p, "/ui/agents"));
    }

    #[test]
    fn cookies_parse_strictly() {
        assert!(Cookie::parse("1~a.b.c~opr_x~n").is_some());
        assert!(Cookie::parse("1~a~b").is_none());
        assert!(Cookie::parse("1~a~b~").is_none());
        assert!(Cookie::parse("x~a~b~c").is_none());
        assert!(Cookie::parse("1~a~b~c~d").is_none());
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; outpost_session=v"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("v"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("outpost_session=w"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), None);
    }
}
