//! The dashboard's pages for mail to people (CONTRACT.md §18): asking for a password reset,
//! the reset link's page, the invite link's page, and entering a verification code.
//!
//! The first three are for people who are not signed in: their forms carry a token bound to a
//! nonce in a short-lived cookie of their own, as the sign-in form does, so none can be posted
//! from another site. The tokens of the links (`opw_…`, `opi_…`) travel as hidden fields and
//! are checked by the same service methods as the API's. The verification page is a signed-in
//! page that a user who has not verified yet may open (`session::require` sends such a user
//! there from every other page).

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::assets::Names;
use super::forms::{self, Fields};
use super::session::{LOGIN_COOKIE, LOGIN_MAX_AGE_S, LOGIN_PURPOSE, cookie, new_nonce, set_cookie};
use super::{Site, Ui, UiError, see_other};
use crate::api::{AppState, ClientAddr};
use outpost_store::domain::DomainError;

/// One input of a form.
struct Field {
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
}

const NEW_PASSWORD: Field = Field {
    name: "password",
    label: "New password (at least 12 characters)",
    kind: "password",
    autocomplete: "new-password",
};

/// A small page with one form (or none), for the flows around signing in.
#[derive(Template, WebTemplate)]
#[template(path = "ui/signin_form.html")]
struct AccountPage {
    base: String,
    asset: &'static Names,
    title: &'static str,
    error: Option<String>,
    notice: Option<String>,
    action: String,
    csrf: String,
    hidden: Vec<(&'static str, String)>,
    fields: Vec<Field>,
    submit: &'static str,
    links: Vec<(&'static str, String, &'static str)>,
    resend: Option<String>,
}

impl AccountPage {
    fn new(site: &Site, title: &'static str) -> Self {
        Self {
            base: site.base.clone(),
            asset: super::assets::names(),
            title,
            error: None,
            notice: None,
            action: String::new(),
            csrf: String::new(),
            hidden: Vec::new(),
            fields: Vec::new(),
            submit: "",
            links: vec![(
                "Back to sign-in",
                format!("{}/login", site.base),
                "to-login",
            )],
            resend: None,
        }
    }
}

/// An anonymous page with its form's token, and the cookie holding the nonce it is bound to.
fn anonymous(state: &AppState, site: &Site, mut page: AccountPage, status: StatusCode) -> Response {
    let nonce = new_nonce();
    page.csrf = state.services.access.form_token(LOGIN_PURPOSE, &nonce);
    let mut response = (status, page).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(site, LOGIN_COOKIE, &nonce, LOGIN_MAX_AGE_S),
    );
    response
}

/// Whether an anonymous form's token is the one its cookie's nonce makes.
fn form_ok(state: &AppState, headers: &HeaderMap, fields: &Fields) -> bool {
    let nonce = cookie(headers, LOGIN_COOKIE).unwrap_or("");
    let token = fields.get(forms::CSRF_FIELD).unwrap_or("");
    state
        .services
        .access
        .check_form_token(LOGIN_PURPOSE, nonce, token)
}

const EXPIRED_FORM: &str = "The form had expired: try again.";

/// The status and message a refused form shows; a failure that is not the person's is the
/// error page.
fn refusal(err: DomainError) -> Result<(StatusCode, String), UiError> {
    match err {
        err @ (DomainError::Unauthorized(_)
        | DomainError::BadRequest(_)
        | DomainError::Invalid { .. }
        | DomainError::RateLimited { .. }
        | DomainError::Conflict { .. }
        | DomainError::NotAllowed { .. }) => Ok((crate::http_error::status(&err), err.to_string())),
        err => Err(UiError(err)),
    }
}

fn forgot_form(site: &Site) -> AccountPage {
    let mut page = AccountPage::new(site, "Reset your password");
    page.action = format!("{}/forgot", site.base);
    page.fields = vec![Field {
        name: "email",
        label: "Email",
        kind: "email",
        autocomplete: "username",
    }];
    page.submit = "Mail me a link";
    page
}

/// `GET /ui/forgot`.
pub async fn forgot_page(State(state): State<AppState>) -> Response {
    let site = Site::of(&state);
    anonymous(&state, &site, forgot_form(&site), StatusCode::OK)
}

/// `POST /ui/forgot`: `POST /api/auth/password-reset`'s answer, whatever the email.
pub async fn forgot(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let site = Site::of(&state);
    let fields = Fields::parse(&body);
    let mut page = forgot_form(&site);
    if !form_ok(&state, &headers, &fields) {
        page.error = Some(EXPIRED_FORM.into());
        return anonymous(&state, &site, page, StatusCode::FORBIDDEN);
    }
    let email = fields.get("email").unwrap_or("");
    match state
        .services
        .account_mail
        .request_reset(email, client)
        .await
    {
        Ok(()) => {
            let mut done = AccountPage::new(&site, "Check your mail");
            done.notice = Some(
                "If this email has an account with a password, a link to choose a new one is on \
                 its way. It works once, for an hour."
                    .into(),
            );
            (StatusCode::OK, done).into_response()
        }
        Err(err) => match refusal(err) {
            Ok((status, message)) => {
                page.error = Some(message);
                anonymous(&state, &site, page, status)
            }
            Err(error) => error.into_response(),
        },
    }
}

/// `?token=` of a mailed link.
#[derive(Debug, serde::Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The form that sets a password with a mailed link's token (`reset` or `invite`).
fn password_form(site: &Site, which: &'static str, token: &str) -> AccountPage {
    let (title, submit) = if which == "reset" {
        ("Choose a new password", "Set the new password")
    } else {
        (
            "Welcome to Outpost: choose your password",
            "Set my password",
        )
    };
    let mut page = AccountPage::new(site, title);
    page.action = format!("{}/{which}", site.base);
    page.hidden = vec![("token", token.to_owned())];
    page.fields = vec![NEW_PASSWORD];
    page.submit = submit;
    page
}

/// `GET /ui/reset?token=`: the reset link's page.
pub async fn reset_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
) -> Response {
    password_page(&state, "reset", query.token.as_deref())
}

/// `GET /ui/invite?token=`: the invite link's page.
pub async fn invite_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<TokenQuery>,
) -> Response {
    password_page(&state, "invite", query.token.as_deref())
}

fn password_page(state: &AppState, which: &'static str, token: Option<&str>) -> Response {
    let site = Site::of(state);
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 128) else {
        let mut page = AccountPage::new(&site, "This link is incomplete");
        page.error = Some("The link has no token: open the whole link from the mail.".into());
        return (StatusCode::BAD_REQUEST, page).into_response();
    };
    anonymous(
        state,
        &site,
        password_form(&site, which, token),
        StatusCode::OK,
    )
}

/// `POST /ui/reset`.
pub async fn reset(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    set_password(state, client, headers, body, "reset").await
}

/// `POST /ui/invite`.
pub async fn invite(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    set_password(state, client, headers, body, "invite").await
}

async fn set_password(
    state: AppState,
    client: std::net::IpAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
    which: &'static str,
) -> Response {
    let site = Site::of(&state);
    let fields = Fields::parse(&body);
    let token = fields.get("token").unwrap_or("");
    let mut page = password_form(&site, which, token);
    if !form_ok(&state, &headers, &fields) {
        page.error = Some(EXPIRED_FORM.into());
        return anonymous(&state, &site, page, StatusCode::FORBIDDEN);
    }
    let password = fields.get("password").unwrap_or("");
    let done = if which == "reset" {
        state
            .services
            .account_mail
            .confirm_reset(token, password, client)
            .await
    } else {
        state
            .services
            .users
            .accept_invite(token, password, client)
            .await
    };
    match done {
        Ok(user) => {
            let mut page = AccountPage::new(&site, "Your password is set");
            page.notice = Some(format!(
                "Sign in as {} with your new password.{}",
                user.email,
                if which == "reset" {
                    " Every earlier session of yours has ended."
                } else {
                    ""
                }
            ));
            page.links = vec![("Sign in", format!("{}/login", site.base), "to-login")];
            (StatusCode::OK, page).into_response()
        }
        Err(err) => match refusal(err) {
            Ok((status, message)) => {
                page.error = Some(message);
                anonymous(&state, &site, page, status)
            }
            Err(error) => error.into_response(),
        },
    }
}

fn verify_form(ui: &Ui, mail_on: bool) -> AccountPage {
    let mut page = AccountPage::new(&ui.site, "Verify your email");
    page.notice = Some(format!(
        "This server asks everyone to prove their email is theirs. Enter the 6-digit code mailed \
         to {} (it works for 10 minutes).",
        ui.caller.label
    ));
    page.action = format!("{}/verify", ui.site.base);
    page.csrf = ui.csrf.clone();
    page.fields = vec![Field {
        name: "code",
        label: "Code",
        kind: "text",
        autocomplete: "one-time-code",
    }];
    page.submit = "Verify";
    page.links = Vec::new();
    page.resend = mail_on.then(|| format!("{}/verify/resend", ui.site.base));
    page
}

/// `GET /ui/verify`.
pub async fn verify_page(State(state): State<AppState>, Extension(ui): Extension<Ui>) -> Response {
    let page = verify_form(&ui, state.services.account_mail.enabled());
    (StatusCode::OK, page).into_response()
}

/// `POST /ui/verify`: the code; verified, to the dashboard.
pub async fn verify(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Response {
    let code = fields.get("code").unwrap_or("");
    match state.services.account_mail.verify(&ui.caller, code).await {
        Ok(_) => see_other(&format!("{}/agents", ui.site.base)),
        Err(err) => match refusal(err) {
            Ok((status, message)) => {
                let mut page = verify_form(&ui, state.services.account_mail.enabled());
                page.error = Some(message);
                (status, page).into_response()
            }
            Err(error) => error.into_response(),
        },
    }
}

/// `POST /ui/verify/resend`.
pub async fn resend(State(state): State<AppState>, Extension(ui): Extension<Ui>) -> Response {
    let mut page = verify_form(&ui, state.services.account_mail.enabled());
    let status = match state.services.account_mail.resend(&ui.caller).await {
        Ok(_) => {
            page.notice = Some(format!("A new code is on its way to {}.", ui.caller.label));
            StatusCode::OK
        }
        Err(DomainError::Conflict { .. }) => return see_other(&format!("{}/agents", ui.site.base)),
        Err(err) => match refusal(err) {
            Ok((status, message)) => {
                page.error = Some(message);
                status
            }
            Err(error) => return error.into_response(),
        },
    };
    (status, page).into_response()
}
