//! The dashboard's second step of a sign-in (CONTRACT.md §18): after the password, a user with
//! a second factor types a code (or a recovery code); a user whom the tenant's policy requires
//! to have one sets it up here (the secret and `otpauth://` URL shown as text), confirms it
//! with a first code, and sees the recovery codes once before going on.
//!
//! The form carries the sign-in ticket of `Users::login`, which is the credential of this
//! step (random, 5 minutes, void after 5 wrong codes): a page on another site cannot forge a
//! post without it, so this form needs no token of its own.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::forms::Fields;
use super::session::{login_cookie_cleared, safe_next, session_cookie_for};
use super::{Site, UiError, see_other};
use crate::api::{AppState, ClientAddr};
use outpost_core::service::totp::{SecondFactor, SecondFactorKind};
use outpost_store::domain::DomainError;

/// The second step's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/login_totp.html")]
struct TotpPage {
    base: String,
    asset: &'static super::assets::Names,
    next: String,
    ticket: String,
    /// Setting a factor up (the policy), rather than giving a code.
    setup: bool,
    /// The new factor's secret (base32) and URL, when setting up.
    secret: String,
    otpauth_url: String,
    error: Option<String>,
}

/// The recovery codes, shown once after a setup during sign-in.
#[derive(Template, WebTemplate)]
#[template(path = "ui/login_recovery.html")]
struct RecoveryPage {
    base: String,
    asset: &'static super::assets::Names,
    next: String,
    codes: Vec<String>,
}

/// What `POST /ui/login` answers when the password needs a second step.
pub async fn second_step(
    state: &AppState,
    site: &Site,
    next: Option<&str>,
    second: SecondFactor,
    client: std::net::IpAddr,
) -> Response {
    let setup = second.kind == SecondFactorKind::TotpSetup;
    let (secret, otpauth_url) = if setup {
        match state
            .services
            .totp
            .setup_with_ticket(&second.ticket, client)
            .await
        {
            Ok(s) => (s.secret, s.otpauth_url),
            Err(err) => return UiError(err).into_response(),
        }
    } else {
        (String::new(), String::new())
    };
    let page = TotpPage {
        base: site.base.clone(),
        asset: super::assets::names(),
        next: next.unwrap_or("").to_owned(),
        ticket: second.ticket,
        setup,
        secret,
        otpauth_url,
        error: None,
    };
    let mut response = page.into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, login_cookie_cleared(site));
    response
}

/// `POST /ui/login/totp`: the code of the second step.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    body: axum::body::Bytes,
) -> Response {
    let site = Site::of(&state);
    let fields = Fields::parse(&body);
    let next = fields.get("next").filter(|n| safe_next(&site, n));
    let ticket = fields.get("ticket").unwrap_or("");
    let code = fields.get("code").unwrap_or("");
    let setup = fields.get("setup") == Some("1");
    let home = format!("{}/agents", site.base);
    let result = if setup {
        state
            .services
            .totp
            .confirm_with_ticket(ticket, code, client)
            .await
            .map(|confirmed| (confirmed.session, confirmed.recovery_codes))
    } else {
        state
            .services
            .totp
            .login(ticket, code, client)
            .await
            .map(|session| (Some(session), Vec::new()))
    };
    match result {
        Ok((Some(session), codes)) => {
            let mut response = if codes.is_empty() {
                see_other(next.unwrap_or(&home))
            } else {
                RecoveryPage {
                    base: site.base.clone(),
                    asset: super::assets::names(),
                    next: next.unwrap_or(&home).to_owned(),
                    codes,
                }
                .into_response()
            };
            response
                .headers_mut()
                .append(header::SET_COOKIE, session_cookie_for(&site, &session));
            response
        }
        Ok((None, _)) => UiError(DomainError::Internal(anyhow::anyhow!(
            "a confirmation with a ticket answered no session"
        )))
        .into_response(),
        Err(
            err @ (DomainError::Unauthorized(_)
            | DomainError::Invalid { .. }
            | DomainError::RateLimited { .. }),
        ) => {
            let status = crate::http_error::status(&err);
            let page = TotpPage {
                base: site.base.clone(),
                asset: super::assets::names(),
                next: next.unwrap_or("").to_owned(),
                ticket: ticket.to_owned(),
                setup,
                secret: fields.get("secret").unwrap_or("").to_owned(),
                otpauth_url: fields.get("otpauth_url").unwrap_or("").to_owned(),
                error: Some(err.to_string()),
            };
            (status, page).into_response()
        }
        Err(err) => UiError(err).into_response(),
    }
}
