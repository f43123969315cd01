//! The users page (owners and admins see it; owners get the forms): the users, an invitation
//! whose token is shown once, and a user's role.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{Chrome, form_error, time};
use crate::api::AppState;
use crate::api::Path;
use crate::ui::forms::Fields;
use crate::ui::{Ui, UiError, see_other};
use outpost_store::domain::DomainError;

/// A user as a row.
#[derive(Debug)]
struct UserRow {
    id: String,
    email: String,
    role: String,
    status: String,
    created: String,
    last_login: String,
    /// Whether the user has a confirmed second factor (CONTRACT.md §18).
    has_totp: bool,
}

/// The users page (owners and admins; owners get the invite and role forms).
#[derive(Template, WebTemplate)]
#[template(path = "ui/users.html")]
struct UsersPage {
    chrome: Chrome,
    rows: Vec<UserRow>,
    /// Whether the caller may invite and change users (owners).
    owner: bool,
    invited: Option<InviteShown>,
    error: Option<String>,
}

async fn users_page(
    state: &AppState,
    ui: &Ui,
    invited: Option<InviteShown>,
    error: Option<String>,
) -> Result<Response, UiError> {
    let users = state.services.users.list(&ui.caller).await?;
    let with_totp = state.services.totp.users_with_factor(&ui.caller).await?;
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        UsersPage {
            chrome: Chrome::new(ui, "users"),
            rows: users
                .iter()
                .map(|u| UserRow {
                    id: u.id.clone(),
                    email: u.email.clone(),
                    role: u.role.clone(),
                    status: u.status.clone(),
                    created: time(Some(u.created_at)),
                    last_login: time(u.last_login_at),
                    has_totp: with_totp.contains(&u.id),
                })
                .collect(),
            owner: ui.caller.role.at_least(outpost_store::domain::Role::Owner),
            invited,
            error,
        },
    )
        .into_response())
}

/// `GET /ui/users`: `Users::list`, which refuses members.
pub(crate) async fn users(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    users_page(&state, &ui, None, None).await
}

/// An invite just made: the token, shown once.
#[derive(Debug)]
struct InviteShown {
    email: String,
    token: String,
    expires: String,
}

/// `POST /ui/users`: `Users::create` (owners): the user and their invite, shown once.
pub(crate) async fn invite_user(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let email = fields.text("email").unwrap_or_default();
    let role = parse_role(fields.text("role"))?;
    match state.services.users.create(&ui.caller, &email, role).await {
        Ok(invited) => {
            let shown = InviteShown {
                email: invited.user.email,
                token: invited.invite_token,
                expires: time(Some(invited.invite_expires_at)),
            };
            users_page(&state, &ui, Some(shown), None).await
        }
        Err(err) => users_page(&state, &ui, None, Some(form_error(err)?)).await,
    }
}

fn parse_role(text: Option<String>) -> Result<outpost_store::domain::Role, DomainError> {
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|_| DomainError::BadRequest(format!("role: member, admin or owner, not {text:?}")))
}

/// `POST /ui/users/{id}/role`: `Users::update` with the new role (owners).
pub(crate) async fn change_user_role(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let role = parse_role(fields.text("role"))?;
    state
        .services
        .users
        .update(
            &ui.caller,
            &id,
            outpost_core::service::users::UserPatch {
                role: Some(role),
                disabled: None,
            },
        )
        .await?;
    Ok(see_other(&format!("{}/users", ui.site.base)))
}

/// `POST /ui/users/{id}/totp/reset`: `Totp::reset` (owners): the user's second factor is gone.
pub(crate) async fn reset_user_totp(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    state.services.totp.reset(&ui.caller, &id).await?;
    Ok(see_other(&format!("{}/users", ui.site.base)))
}
