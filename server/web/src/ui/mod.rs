//! The web dashboard (CONTRACT.md §12): server-rendered pages under `/ui`, a little JavaScript for
//! live updates, and CSS, all compiled into the binary.
//!
//! Like the REST handlers, these call the services and nothing below them: a page shows what
//! a service returns to the signed-in user's [`Caller`], and a form calls the same service
//! method the API route does, so the service's rights checks apply whether or not the page
//! showed the button.
//!
//! Security (see "The dashboard's session" in docs/ARCHITECTURE.md):
//! - the session is a cookie ([`session`]) holding a user's access token, its refresh token
//!   (the refresh family of `service::users`, with its reuse detection) and a nonce; it is
//!   `HttpOnly`, `SameSite=Strict`, scoped to the dashboard's path, and `Secure` under TLS or
//!   behind an `https` `--public-url`;
//! - every form carries a token bound to that nonce (HMAC under a key derived from the master
//!   key, compared in constant time, [`forms`]), and a POST without the right one is refused
//!   before its handler runs;
//! - every response carries a Content-Security-Policy with `default-src 'self'` and no inline
//!   script or style, and refuses framing;
//! - every string is escaped by askama (no template uses `|safe`), and output reaches the page
//!   through `textContent` in `ui.js`, never `innerHTML`.

mod assets;
mod forms;
mod highlight;
mod library;
mod live;
mod pages;
mod session;
mod signin;
mod totp;

use crate::http_error::HttpError;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::AppState;
use outpost_store::domain::{Caller, DomainError, Role};

pub use session::SESSION_COOKIE;

/// The Content-Security-Policy of every dashboard response: nothing but this origin, no
/// inline script or style, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// Rows on a page of agents or jobs.
pub const PAGE_SIZE: usize = 50;

/// Where the dashboard lives as the browser sees it: `--public-url`'s path (a reverse proxy's
/// prefix, `/outpost`) followed by `/ui`, and whether cookies must be `Secure`.
#[derive(Debug, Clone)]
pub struct Site {
    /// `<prefix>/ui`, with no trailing slash.
    pub base: String,
    /// The server's URL as agents reach it (`--public-url`), when set.
    pub public_url: Option<String>,
    /// Served over TLS, or behind an `https` public URL.
    pub secure: bool,
    /// Under `--tls-auto`: what the install line pins (CONTRACT.md §19).
    pub pins: Option<outpost_core::service::releases::InstallPins>,
}

impl Site {
    /// The site of `state`'s configuration.
    pub fn of(state: &AppState) -> Self {
        let files = state.services.releases.files();
        let public_url = files
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned());
        let prefix = public_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let secure = files.tls
            || public_url
                .as_deref()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
        Self {
            base: format!("{prefix}/ui"),
            public_url,
            secure,
            pins: files.pins.clone(),
        }
    }
}

/// What a signed-in page knows: the caller, the form token of its session, the site.
#[derive(Debug, Clone)]
pub struct Ui {
    /// The signed-in user, as `outpost_core::access` authenticated them on this request.
    pub caller: Caller,
    /// The token every form of this session carries (`_csrf`).
    pub csrf: String,
    /// The session's nonce, which the token is bound to.
    pub nonce: String,
    /// Where the dashboard is.
    pub site: Site,
    /// The OpenID Connect provider's name, when single sign-on is on (its "Link" action).
    pub sso: Option<String>,
}

impl Ui {
    /// Whether the caller may see admin actions (agent keys, tags, control commands). The
    /// services refuse them anyway: this only hides what would be refused.
    pub fn is_admin(&self) -> bool {
        self.caller.role.at_least(Role::Admin)
    }
}

/// The dashboard's routes: `/` and `/ui` redirect to the agents page; everything else under
/// `/ui`.
pub fn router(state: AppState) -> Router<AppState> {
    let site = Site::of(&state);
    let signed_in = Router::new()
        .route("/ui/agents", get(pages::agents))
        .route("/ui/agents/stream", get(live::agents))
        .route("/ui/agents/{id}", get(pages::agent))
        .route("/ui/agents/{id}/run", post(pages::run))
        .route("/ui/agents/{id}/tags", post(pages::set_agent_tags))
        .route(
            "/ui/agents/{id}/control/{command}",
            post(pages::control_agent),
        )
        .route("/ui/jobs", get(pages::jobs).post(pages::run_many))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/stream", get(live::job))
        .route("/ui/jobs/{id}/live", get(live::summary))
        .route("/ui/jobs/{id}/runs", get(pages::job_runs))
        .route("/ui/jobs/{id}/export", get(pages::export))
        .route("/ui/jobs/{id}/rerun", post(pages::rerun))
        .route("/ui/jobs/{id}/cancel", post(pages::cancel))
        .route("/ui/jobs/{id}/runs/{run_id}/output", get(live::output))
        .route("/ui/keys", get(pages::keys).post(pages::create_key))
        .route("/ui/keys/{id}/{action}", post(pages::change_key))
        .route(
            "/ui/schedules",
            get(pages::schedules).post(pages::create_schedule),
        )
        .route("/ui/schedules/new", get(pages::new_schedule))
        .route("/ui/schedules/preview", get(pages::preview_schedule))
        .route(
            "/ui/schedules/{id}",
            get(pages::schedule).post(pages::update_schedule),
        )
        .route(
            "/ui/rollouts",
            get(pages::rollouts).post(pages::start_rollout),
        )
        .route("/ui/rollouts/{id}", get(pages::rollout))
        .route("/ui/rollouts/{id}/live", get(pages::rollout_live))
        .route("/ui/rollouts/{id}/{action}", post(pages::change_rollout))
        .route("/ui/scripts", get(library::scripts).post(library::upload))
        .route("/ui/scripts/drafts", get(library::drafts))
        .route("/ui/scripts/{name}", get(library::script))
        .route("/ui/scripts/{name}/enabled", post(library::switch))
        .route("/ui/scripts/{name}/edit", get(library::edit))
        .route("/ui/scripts/{name}/drafts", post(library::save_draft))
        .route(
            "/ui/scripts/{name}/versions/{version}",
            get(library::version),
        )
        .route("/ui/scripts/{name}/drafts/{version}", get(library::draft))
        .route(
            "/ui/scripts/{name}/drafts/{version}/delete",
            post(library::delete_draft),
        )
        .route("/ui/schedules/{id}/{action}", post(pages::change_schedule))
        .route(
            "/ui/integrations",
            get(pages::integrations).post(pages::create_integration),
        )
        .route("/ui/integrations/{id}", get(pages::integration))
        .route(
            "/ui/integrations/{id}/{action}",
            post(pages::change_integration),
        )
        .route("/ui/users", get(pages::users).post(pages::invite_user))
        .route("/ui/users/{id}/role", post(pages::change_user_role))
        .route("/ui/users/{id}/totp/reset", post(pages::reset_user_totp))
        .route("/ui/account", get(pages::account))
        .route("/ui/account/totp/setup", post(pages::setup_totp))
        .route("/ui/account/totp/confirm", post(pages::confirm_totp))
        .route("/ui/account/totp/remove", post(pages::remove_totp))
        .route(
            "/ui/api-keys",
            get(pages::api_keys).post(pages::create_api_key),
        )
        .route("/ui/api-keys/{id}/revoke", post(pages::revoke_api_key))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/audit/verify", post(pages::verify_audit))
        .route("/ui/logout", post(session::logout))
        .route("/ui/verify", get(signin::verify_page).post(signin::verify))
        .route("/ui/verify/resend", post(signin::resend))
        .route("/ui/sso/link", post(session::link_sso))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ))
        // Outside the session's middleware, which reads the forms: a urlencoded form stops at
        // `forms::MAX_FORM_BYTES` whatever this says; this is the bound of the forms with files.
        .layer(axum::extract::DefaultBodyLimit::max(
            forms::MAX_MULTIPART_BYTES,
        ));
    let home = format!("{}/agents", site.base);
    let root = home.clone();
    Router::new()
        .route("/", get(move || async move { Redirect::to(&root) }))
        .route("/ui", get(move || async move { Redirect::to(&home) }))
        .route(
            "/ui/",
            get(|State(state): State<AppState>| async move {
                Redirect::to(&format!("{}/agents", Site::of(&state).base))
            }),
        )
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/forgot", get(signin::forgot_page).post(signin::forgot))
        .route("/ui/reset", get(signin::reset_page).post(signin::reset))
        .route("/ui/invite", get(signin::invite_page).post(signin::invite))
        .route("/ui/login/totp", post(totp::login))
        .route("/ui/sso/finish", get(session::finish_sso))
        .route("/ui/static/{file}", get(assets::serve))
        .merge(signed_in)
        .layer(axum::middleware::from_fn(headers))
}

/// The security headers of every dashboard response (and `no-store` for pages, which show
/// what only the signed-in user may see).
async fn headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A failed page or form: an HTML page saying what went wrong, with the status the REST API
/// would answer (the message is escaped like everything else).
#[derive(Debug)]
pub struct UiError(pub DomainError);

impl From<DomainError> for UiError {
    fn from(err: DomainError) -> Self {
        Self(err)
    }
}

impl From<HttpError> for UiError {
    fn from(HttpError(err): HttpError) -> Self {
        Self(err)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = crate::http_error::status(&self.0);
        // The envelope logs an internal error's cause and gives the message to show.
        let message = crate::http_error::envelope_of(&self.0).error.message;
        let page = pages::ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        (status, page).into_response()
    }
}

/// 303 See Other to `path` (after a form, so that reloading does not post it again).
pub fn see_other(path: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, path.to_owned())]).into_response()
}
