//! The second-factor page (`/ui/account`, CONTRACT.md §18): a signed-in user sets up a TOTP
//! factor (the secret and `otpauth://` URL shown as text: no QR code, so no script or CDN),
//! confirms it with a first code (the recovery codes are shown once), or removes it with a
//! current code. Every step is `service::totp`'s, as the REST API's.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::Chrome;
use crate::api::AppState;
use crate::ui::forms::Fields;
use crate::ui::{Ui, UiError};
use outpost_store::domain::DomainError;

/// The page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/account.html")]
struct AccountPage {
    chrome: Chrome,
    /// Whether the user has a confirmed factor.
    enabled: bool,
    /// Unused recovery codes.
    left: usize,
    /// A setup in progress: `(secret, otpauth_url)`.
    setup: Option<(String, String)>,
    /// Recovery codes just issued, shown once.
    codes: Vec<String>,
    error: Option<String>,
    notice: Option<String>,
}

async fn page(
    state: &AppState,
    ui: &Ui,
    setup: Option<(String, String)>,
    codes: Vec<String>,
    error: Option<String>,
    notice: Option<String>,
) -> Result<Response, UiError> {
    let (enabled, left) = state
        .services
        .totp
        .status(&ui.caller)
        .await?
        .unwrap_or((false, 0));
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        AccountPage {
            chrome: Chrome::new(ui, "account"),
            enabled,
            left,
            setup,
            codes,
            error,
            notice,
        },
    )
        .into_response())
}

/// A refusal the page shows rather than an error page.
fn shown(err: DomainError) -> Result<String, UiError> {
    match err {
        DomainError::Invalid { message, .. }
        | DomainError::Conflict { message, .. }
        | DomainError::NotAllowed { message, .. } => Ok(message),
        DomainError::BadRequest(why) | DomainError::NotFound(why) => Ok(why),
        other => Err(other.into()),
    }
}

/// `GET /ui/account`.
pub(crate) async fn account(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    page(&state, &ui, None, Vec::new(), None, None).await
}

/// `POST /ui/account/totp/setup`.
pub(crate) async fn setup_totp(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    match state.services.totp.setup(&ui.caller).await {
        Ok(s) => {
            page(
                &state,
                &ui,
                Some((s.secret, s.otpauth_url)),
                Vec::new(),
                None,
                None,
            )
            .await
        }
        Err(err) => page(&state, &ui, None, Vec::new(), Some(shown(err)?), None).await,
    }
}

/// `POST /ui/account/totp/confirm`.
pub(crate) async fn confirm_totp(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let code = fields.text("code").unwrap_or_default();
    match state.services.totp.confirm(&ui.caller, &code).await {
        Ok(confirmed) => page(&state, &ui, None, confirmed.recovery_codes, None, None).await,
        Err(err) => {
            let again = match (fields.text("secret"), fields.text("otpauth_url")) {
                (Some(secret), Some(url)) => Some((secret, url)),
                _ => None,
            };
            page(&state, &ui, again, Vec::new(), Some(shown(err)?), None).await
        }
    }
}

/// `POST /ui/account/totp/remove`.
pub(crate) async fn remove_totp(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let code = fields.text("code").unwrap_or_default();
    match state.services.totp.remove(&ui.caller, &code).await {
        Ok(()) => {
            page(
                &state,
                &ui,
                None,
                Vec::new(),
                None,
                Some("Your second factor is removed.".into()),
            )
            .await
        }
        Err(err) => page(&state, &ui, None, Vec::new(), Some(shown(err)?), None).await,
    }
}
