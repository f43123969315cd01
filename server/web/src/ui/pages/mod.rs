//! The dashboard's pages and forms, one file per resource as in `api/` and the templates:
//! each page reads or changes through one service, as the REST handler of the same thing
//! does, and renders an askama template (escaped by default; no template uses `|safe`).
//!
//! This file is the table of contents (the handlers the router in `ui/mod.rs` names, and
//! what `live.rs` shares with the agents page) and the pieces every page uses: the layout's
//! [`Chrome`], the error page, how times, percentages and a run's duration are written (one
//! way, so that a page and its live updates agree), and the form fields several resources
//! parse alike.

mod account;
mod agents;
mod api_keys;
mod audit;
mod integrations;
mod job;
mod jobs;
mod keys;
mod rollouts;
mod schedules;
mod users;

// The agents page and one agent's: tags, control commands, the Run form.
pub(super) use agents::{
    AgentsQuery, agent, agent_page, agents, control_agent, run, set_agent_tags,
};
// The API keys of users and programs.
pub(super) use api_keys::{api_keys, create_api_key, revoke_api_key};
// The audit log and the check of its chain.
pub(super) use audit::{audit, verify_audit};
// Integrations: their kinds' forms, test button and delivery log.
pub(super) use integrations::{change_integration, create_integration, integration, integrations};
// Jobs: the listing, running a script on many agents, cancelling; one job's page (its
// summary, groups, runs, one run's output, reruns and export).
pub(super) use job::{JobQuery, SummaryLine, export, job, rerun, runs as job_runs, summary_line};
pub(super) use jobs::{cancel, jobs, run_many};
// Agent keys, with their secret shown once.
pub(super) use keys::{change_key, create_key, keys};
// Rollouts: the listing with their progress and the start form; one rollout's stages, buttons
// and agents, with its progress for the page's polling.
pub(super) use rollouts::{change_rollout, rollout, rollout_live, rollouts, start_rollout};
// Schedules: the listing and the form, with the next fires of its pattern.
pub(super) use schedules::{
    change_schedule, create_schedule, new_schedule, preview_schedule, schedule, schedules,
    update_schedule,
};
// Users: the listing, invitations and roles.
pub(super) use account::{account, confirm_totp, remove_totp, setup_totp};
pub(super) use users::{change_user_role, invite_user, reset_user_totp, users};

use askama::Template;
use askama_web::WebTemplate;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::assets::{Names, names};
use super::{Ui, UiError};
use outpost_store::command;
use outpost_store::domain::DomainError;

/// What every signed-in page's layout shows: the navigation (by role), the user, the
/// sign-out form.
#[derive(Debug)]
pub(super) struct Chrome {
    /// `<prefix>/ui`.
    pub(super) base: String,
    /// The assets' names.
    pub(super) asset: &'static Names,
    /// The session's form token.
    pub(super) csrf: String,
    /// Whether admin actions are shown.
    pub(super) admin: bool,
    /// Who is signed in.
    pub(super) user: String,
    /// The page's section, for the navigation.
    pub(super) nav: &'static str,
    /// The OpenID Connect provider's name, for the "Link" action (CONTRACT.md §18).
    pub(super) sso: Option<String>,
}

impl Chrome {
    pub(super) fn new(ui: &Ui, nav: &'static str) -> Self {
        Self {
            base: ui.site.base.clone(),
            asset: names(),
            csrf: ui.csrf.clone(),
            admin: ui.is_admin(),
            user: ui.caller.label.clone(),
            nav,
            sso: ui.sso.clone(),
        }
    }
}

/// A failed page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/error.html")]
pub(super) struct ErrorPage {
    /// The HTTP status.
    pub(super) status: u16,
    /// Its reason phrase.
    pub(super) reason: &'static str,
    /// What went wrong.
    pub(super) message: String,
}

fn percent(heartbeat: Option<&Value>, field: &str) -> String {
    heartbeat
        .and_then(|h| h.get(field))
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
        .map(|v| format!("{v:.1}%"))
        .unwrap_or_default()
}

pub(super) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn date(field: &str, text: Option<&str>, end: bool) -> Result<Option<DateTime<Utc>>, DomainError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        DomainError::BadRequest(format!(
            "{field}: {text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
        ))
    })?;
    let day = if end {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
}

/// A comma-separated field as a list (tags may hold spaces, never commas).
fn list(text: Option<String>) -> Option<Vec<String>> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// A refusal to show on the form (bad input, a conflict), or an error page.
fn form_error(err: DomainError) -> Result<String, UiError> {
    match err {
        DomainError::BadRequest(why) | DomainError::TooLarge(why) => Ok(why),
        DomainError::Conflict { message, .. } => Ok(message),
        other => Err(other.into()),
    }
}

/// How long a run took, as its job's page and that page's live updates both write it: from its
/// start (else its delivery, else its creation) to its end; `None` until it has ended.
pub(super) fn run_duration(run: &command::Model) -> Option<String> {
    run.finished_at.map(|end| {
        let start = run
            .started_at
            .or(run.delivered_at)
            .unwrap_or(run.created_at);
        format!(
            "{:.1} s",
            (end - start).num_milliseconds().max(0) as f64 / 1000.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_duration_counts_from_its_start_else_delivery_else_creation() {
        let at = |ms: i64| DateTime::UNIX_EPOCH + chrono::Duration::milliseconds(ms);
        let mut run = outpost_store::pending_command("t", "r", "a");
        assert_eq!(run_duration(&run), None, "not ended: no duration");
        run.finished_at = Some(at(4_500));
        assert_eq!(run_duration(&run).as_deref(), Some("4.5 s"));
        run.delivered_at = Some(at(1_000));
        assert_eq!(run_duration(&run).as_deref(), Some("3.5 s"));
        run.started_at = Some(at(2_000));
        assert_eq!(run_duration(&run).as_deref(), Some("2.5 s"));
        // A clock that went back shows no time rather than a negative one.
        run.started_at = Some(at(9_000));
        assert_eq!(run_duration(&run).as_deref(), Some("0.0 s"));
    }
}
