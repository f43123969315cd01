//! The rollouts pages (CONTRACT.md §17): the tenant's rollouts with their progress and the
//! form that starts one; one rollout's page with each stage's progress, the buttons its state
//! allows, and its agents by stage and state.
//!
//! Everything goes through `Rollouts`, as `api/rollouts.rs` does: the list and one rollout are
//! `list` and `get` (a stage's counts are the store's `GROUP BY`, never its rows), the agents
//! table is a page of `agents` under the service's cursor, and each button is a form calling
//! `pause`, `resume`, `abort` or `rollback`, whose rights and state checks are the service's
//! (the page only hides what would be refused). After a button the browser is sent back to
//! the page with `?done=` naming what was done (a fixed sentence, never text from the URL).
//! While the rollout is active, `ui.js` reads `/live` every few seconds and redraws the
//! progress; when the state changes it reloads the page, so that the buttons and the reason
//! follow.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::{Chrome, list, time};
use crate::api::AppState;
use crate::api::{Path, Query};
use crate::ui::forms::Fields;
use crate::ui::{PAGE_SIZE, Ui, UiError, see_other};
use outpost_core::service::rollouts::{HealthRequest, NewRollout, RolloutTarget, RolloutView};
use outpost_store::RolloutAgentRow;
use outpost_store::domain::{DomainError, Role, RolloutAgentState, RolloutState};

/// Rollouts on a page of the list (each reads its stages' counts).
const ROLLOUTS_PAGE: u64 = 20;

// ---- progress -------------------------------------------------------------------------------

/// The parts a progress bar is cut into, in the order drawn: (class, legend, states).
const SEGMENTS: &[(&str, &str, &[RolloutAgentState])] = &[
    (
        "healthy",
        "healthy",
        &[RolloutAgentState::Healthy, RolloutAgentState::Reverted],
    ),
    (
        "failed",
        "failed",
        &[RolloutAgentState::Failed, RolloutAgentState::RevertFailed],
    ),
    (
        "skipped",
        "skipped or ahead",
        &[RolloutAgentState::Skipped, RolloutAgentState::Ahead],
    ),
    (
        "active",
        "in progress",
        &[
            RolloutAgentState::Updating,
            RolloutAgentState::Soaking,
            RolloutAgentState::Checking,
            RolloutAgentState::Reverting,
        ],
    ),
    (
        "pending",
        "pending",
        &[RolloutAgentState::Pending, RolloutAgentState::RevertPending],
    ),
];

/// States that count as done in a rollout's progress (CONTRACT.md §17: the agents the engine
/// is finished with and that did not fail).
const DONE: &[RolloutAgentState] = &[
    RolloutAgentState::Healthy,
    RolloutAgentState::Skipped,
    RolloutAgentState::Ahead,
    RolloutAgentState::Reverted,
];

/// One part of a bar: its class, its count, and where it is drawn (SVG units, 0–100: the
/// CSP allows no inline style, so widths are attributes of the SVG's rectangles).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Segment {
    class: &'static str,
    label: &'static str,
    n: i64,
    x: String,
    width: String,
}

/// A progress bar: its segments and the sentence screen readers get for it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Bar {
    segments: Vec<Segment>,
    label: String,
}

impl Bar {
    fn of(counts: &dyn Fn(RolloutAgentState) -> i64, total: i64) -> Self {
        let mut at = 0.0;
        let segments: Vec<Segment> = SEGMENTS
            .iter()
            .map(|(class, label, states)| {
                let n: i64 = states.iter().map(|s| counts(*s)).sum();
                let width = if total > 0 {
                    n as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                let segment = Segment {
                    class,
                    label,
                    n,
                    x: format!("{at:.2}"),
                    width: format!("{width:.2}"),
                };
                at += width;
                segment
            })
            .collect();
        let label = segments
            .iter()
            .map(|s| format!("{} {}", s.n, s.label))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            label: format!("{label} (of {total})"),
            segments,
        }
    }
}

/// A stage's count of agents in one state, as a chip that filters the agents table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Chip {
    key: String,
    n: i64,
    href: String,
}

/// One stage as a row: its bar, its counts, its agents.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StageLine {
    stage: u32,
    name: String,
    agents: i64,
    done: i64,
    /// The stage being worked.
    current: bool,
    bar: Bar,
    chips: Vec<Chip>,
    /// The agents table filtered to this stage.
    href: String,
}

/// What the progress shows, on the page and to `ui.js` (`/live`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Progress {
    /// The stored state (`running`, `halted`, …): the class of its badge.
    state: String,
    /// The state people read (`canary`, `wave 2`, `halted`, …).
    shown: String,
    reason: Option<String>,
    /// Whether the engine still works or watches it (the page polls only then).
    active: bool,
    agents: i64,
    done: i64,
    bar: Bar,
    stages: Vec<StageLine>,
}

/// How many agents of `counts` (a stage's, or the rollout's) are in `state`.
fn count_of(counts: &std::collections::BTreeMap<String, i64>, state: RolloutAgentState) -> i64 {
    counts.get(state.as_str()).copied().unwrap_or(0)
}

fn agents_href(base: &str, id: &str, stage: Option<u32>, state: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(stage) = stage {
        q.append_pair("stage", &stage.to_string());
    }
    if let Some(state) = state {
        q.append_pair("state", state);
    }
    let q = q.finish();
    if q.is_empty() {
        format!("{base}/rollouts/{id}#rollout-agents")
    } else {
        format!("{base}/rollouts/{id}?{q}#rollout-agents")
    }
}

impl Progress {
    fn of(ui: &Ui, view: &RolloutView) -> Self {
        let r = &view.rollout;
        let base = &ui.site.base;
        let mut totals = std::collections::BTreeMap::<String, i64>::new();
        let stages = view
            .stages
            .iter()
            .map(|s| {
                for (state, n) in &s.counts {
                    *totals.entry(state.clone()).or_default() += n;
                }
                let by = |state| count_of(&s.counts, state);
                // In the states' declared order, so that chips keep their places.
                let chips = RolloutAgentState::ALL
                    .iter()
                    .filter(|state| by(**state) > 0)
                    .map(|state| Chip {
                        key: state.as_str().to_owned(),
                        n: by(*state),
                        href: agents_href(base, &r.id, Some(s.stage), Some(state.as_str())),
                    })
                    .collect();
                StageLine {
                    stage: s.stage,
                    name: s.name.clone(),
                    agents: s.agents,
                    done: DONE.iter().map(|state| by(*state)).sum(),
                    current: i64::from(s.stage) == i64::from(r.stage)
                        && r.state == RolloutState::Running.as_str(),
                    bar: Bar::of(&by, s.agents),
                    chips,
                    href: agents_href(base, &r.id, Some(s.stage), None),
                }
            })
            .collect();
        let agents = i64::from(r.agents);
        let all = |state| count_of(&totals, state);
        Self {
            state: r.state.clone(),
            shown: view.shown_state.clone(),
            reason: r.reason.clone(),
            active: r
                .state
                .parse::<RolloutState>()
                .is_ok_and(RolloutState::is_active),
            agents,
            done: DONE.iter().map(|state| all(*state)).sum(),
            bar: Bar::of(&all, agents),
            stages,
        }
    }
}

/// A rollout's target as people read it.
fn target_text(target: &Value) -> String {
    if target.get("all").and_then(Value::as_bool) == Some(true) {
        return "every agent".into();
    }
    let tags: Vec<&str> = target
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!("agents tagged {}", tags.join(", "))
}

// ---- the list ---------------------------------------------------------------------------------

/// A rollout as a row of the list.
#[derive(Debug)]
struct RolloutRow {
    id: String,
    version: String,
    progress: Progress,
    target: String,
    created_by: String,
    created: String,
}

/// The start form, as typed (shown again with the service's refusal).
#[derive(Debug, Default)]
struct StartDraft {
    version: String,
    /// `all` or `tags`.
    target: String,
    tags: String,
    canary: String,
    waves: String,
    max_in_flight: String,
    online_within_s: String,
    soak_s: String,
    min_healthy_percent: String,
    script: String,
}

impl StartDraft {
    fn from_form(fields: &Fields) -> Self {
        let text = |name: &str| fields.text(name).unwrap_or_default();
        Self {
            version: text("version"),
            target: fields.text("target").unwrap_or_else(|| "all".into()),
            tags: text("tags"),
            canary: text("canary"),
            waves: text("waves"),
            max_in_flight: text("max_in_flight"),
            online_within_s: text("online_within_s"),
            soak_s: text("soak_s"),
            min_healthy_percent: text("min_healthy_percent"),
            script: text("script"),
        }
    }

    fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, DomainError> {
        if text.is_empty() {
            return Ok(None);
        }
        let digits = text.trim_end_matches('%').trim();
        digits.parse().map(Some).map_err(|_| {
            DomainError::BadRequest(format!("{field}: {text:?} is not a whole number"))
        })
    }

    /// What `Rollouts::start` takes; what is left empty takes the service's default.
    fn request(&self) -> Result<NewRollout, DomainError> {
        let target = if self.target == "tags" {
            RolloutTarget {
                tags: Some(list(Some(self.tags.clone())).unwrap_or_default()),
                all: None,
            }
        } else {
            RolloutTarget {
                tags: None,
                all: Some(true),
            }
        };
        let waves = match list(Some(self.waves.clone())).filter(|w| !w.is_empty()) {
            None => None,
            Some(waves) => Some(
                waves
                    .iter()
                    .map(|w| {
                        Self::number::<u8>("waves", w)
                            .map(Option::unwrap_or_default)
                            .map_err(|_| {
                                DomainError::BadRequest(format!(
                                    "waves: {w:?} is not a percentage (comma-separated, e.g. 25, 75)"
                                ))
                            })
                    })
                    .collect::<Result<Vec<u8>, _>>()?,
            ),
        };
        let health = HealthRequest {
            online_within_s: Self::number("online_within_s", &self.online_within_s)?,
            soak_s: Self::number("soak_s", &self.soak_s)?,
            min_healthy_percent: Self::number("min_healthy_percent", &self.min_healthy_percent)?,
            script: Some(self.script.clone()).filter(|s| !s.is_empty()),
        };
        Ok(NewRollout {
            version: self.version.clone(),
            target,
            canary: Self::number("canary", &self.canary)?,
            waves,
            max_in_flight: Self::number("max_in_flight", &self.max_in_flight)?,
            health: Some(health),
        })
    }
}

/// The rollouts page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/rollouts.html")]
struct RolloutsPage {
    chrome: Chrome,
    rows: Vec<RolloutRow>,
    first: Option<String>,
    next: Option<String>,
    draft: StartDraft,
    /// The version the server would serve now (a hint in the form).
    suggested: String,
    error: Option<String>,
}

/// The list's query.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RolloutsQuery {
    before: Option<String>,
}

/// `GET /ui/rollouts`: newest first, `ROLLOUTS_PAGE` a page.
pub(crate) async fn rollouts(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<RolloutsQuery>,
) -> Result<Response, UiError> {
    let before = query.before.filter(|b| !b.trim().is_empty());
    rollouts_page(&state, &ui, before, StartDraft::default(), None).await
}

/// The version the server serves agents now: the newest published agent for its own
/// target, else (nothing published) its own build.
async fn suggested_version(state: &AppState) -> Result<String, UiError> {
    let releases = &state.services.releases;
    let builtin = &releases.files().builtin;
    if !releases.any_published().await? {
        return Ok(builtin.version.to_string());
    }
    Ok(releases
        .latest_artifact_version(builtin.target, outpost_protocol::release::AGENT)
        .await?
        .map(|v| v.to_string())
        .unwrap_or_default())
}

async fn rollouts_page(
    state: &AppState,
    ui: &Ui,
    before: Option<String>,
    draft: StartDraft,
    error: Option<(StatusCode, String)>,
) -> Result<Response, UiError> {
    let (views, next) = state
        .services
        .rollouts
        .list(&ui.caller, before.as_deref(), ROLLOUTS_PAGE)
        .await?;
    let base = &ui.site.base;
    let rows = views
        .iter()
        .map(|view| RolloutRow {
            id: view.rollout.id.clone(),
            version: view.rollout.version.clone(),
            progress: Progress::of(ui, view),
            target: target_text(&view.rollout.target),
            created_by: view.rollout.created_by.clone(),
            created: time(Some(view.rollout.created_at)),
        })
        .collect();
    let suggested = if ui.is_admin() {
        suggested_version(state).await?
    } else {
        String::new()
    };
    let (status, error) = match error {
        Some((status, why)) => (status, Some(why)),
        None => (StatusCode::OK, None),
    };
    let page = RolloutsPage {
        chrome: Chrome::new(ui, "rollouts"),
        rows,
        first: before.is_some().then(|| format!("{base}/rollouts")),
        next: next.map(|c| {
            format!(
                "{base}/rollouts?before={}",
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            )
        }),
        draft,
        suggested,
        error,
    };
    Ok((status, page).into_response())
}

/// A refusal the page can explain (bad input, a conflict), with its status; `None` for one
/// that is an error page (not allowed, not found, the database).
fn explained(err: &DomainError) -> Option<(StatusCode, String)> {
    match err {
        DomainError::BadRequest(why)
        | DomainError::TooLarge(why)
        | DomainError::Unprocessable(why) => Some((crate::http_error::status(err), why.clone())),
        DomainError::Conflict { message, .. } => {
            Some((crate::http_error::status(err), message.clone()))
        }
        _ => None,
    }
}

/// `POST /ui/rollouts`: `Rollouts::start` with the form's fields, then the rollout's page; a
/// refusal (400, 409) shows the form again with the service's message.
pub(crate) async fn start_rollout(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let draft = StartDraft::from_form(&fields);
    let started = match draft.request() {
        Ok(request) => state.services.rollouts.start(&ui.caller, request).await,
        Err(err) => Err(err),
    };
    match started {
        Ok(view) => Ok(see_other(&format!(
            "{}/rollouts/{}?done=started",
            ui.site.base, view.rollout.id
        ))),
        Err(err) => match explained(&err) {
            Some(why) => rollouts_page(&state, &ui, None, draft, Some(why)).await,
            None => Err(err.into()),
        },
    }
}

// ---- one rollout ----------------------------------------------------------------------------

/// One agent of the rollout as a row.
#[derive(Debug)]
struct AgentLine {
    agent_id: String,
    /// `None` once the agent is forgotten (the id is then only in the title).
    hostname: Option<String>,
    stage: String,
    state: String,
    from_version: String,
    version: String,
    reason: String,
}

impl AgentLine {
    fn of(row: &RolloutAgentRow) -> Self {
        Self {
            agent_id: row.row.agent_id.clone(),
            hostname: row.hostname.clone(),
            stage: outpost_core::rollout::stage_name(row.row.stage.max(0) as u32),
            state: row.row.state.clone(),
            from_version: row.row.from_version.clone(),
            version: row.version.clone().unwrap_or_default(),
            reason: row.row.reason.clone().unwrap_or_default(),
        }
    }
}

/// The rollout page's query: the agents table's filters and cursor, and what a button did.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct RolloutQuery {
    stage: Option<String>,
    state: Option<String>,
    after: Option<String>,
    done: Option<String>,
}

impl RolloutQuery {
    fn text(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    fn stage(&self) -> Result<Option<u32>, DomainError> {
        Self::text(&self.stage)
            .map(|s| {
                s.parse::<u32>().map_err(|_| {
                    DomainError::BadRequest(format!("stage: {s:?} is not a stage number"))
                })
            })
            .transpose()
    }

    fn state(&self) -> Result<Option<RolloutAgentState>, DomainError> {
        Self::text(&self.state)
            .map(|s| {
                s.parse::<RolloutAgentState>()
                    .map_err(|why| DomainError::BadRequest(format!("state: {why}")))
            })
            .transpose()
    }
}

/// What a button did, as the page says it after the redirect (a fixed sentence per action).
fn done_note(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "started" => "Started: the canary is on its way.",
        "paused" => "Paused: nothing new is sent; agents already on their way are still watched.",
        "resumed" => {
            "Resumed: the stage goes on (after a halt, its failed agents are tried again)."
        }
        "aborted" => "Aborted: nothing more is sent; its agents keep the version they have.",
        "rolling_back" => {
            "Rolling back: every agent this rollout updated is sent back to the version it had."
        }
        _ => return None,
    })
}

/// A filter's option: its value, its text, whether it is chosen.
#[derive(Debug)]
struct Choice {
    value: String,
    text: String,
    selected: bool,
}

/// One rollout's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/rollout.html")]
struct RolloutPage {
    chrome: Chrome,
    id: String,
    version: String,
    target: String,
    waves: String,
    canary: i32,
    max_in_flight: i32,
    health: String,
    created_by: String,
    created: String,
    updated: String,
    finished: String,
    progress: Progress,
    /// The buttons the state allows and the caller may use.
    may_pause: bool,
    may_resume: bool,
    may_abort: bool,
    may_rollback: bool,
    /// The agents table, its filters and its pages.
    agents: Vec<AgentLine>,
    stages: Vec<Choice>,
    states: Vec<Choice>,
    filtered: bool,
    first: Option<String>,
    next: Option<String>,
    done: Option<&'static str>,
    error: Option<String>,
}

/// `GET /ui/rollouts/{id}`.
pub(crate) async fn rollout(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<RolloutQuery>,
) -> Result<Response, UiError> {
    rollout_page(&state, &ui, &id, &query, None).await
}

/// The rollout's health gate as one line.
fn health_text(health: &Value) -> String {
    let num = |field: &str| health.get(field).and_then(Value::as_u64);
    let mut parts = Vec::new();
    if let Some(s) = num("online_within_s") {
        parts.push(format!("back online within {s} s"));
    }
    if let Some(s) = num("soak_s") {
        parts.push(format!("soak {s} s"));
    }
    if let Some(p) = num("min_healthy_percent") {
        parts.push(format!("at least {p} % healthy"));
    }
    if let Some(script) = health.get("script").and_then(Value::as_str) {
        parts.push(format!("check script {script}"));
    }
    parts.join(" · ")
}

async fn rollout_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    query: &RolloutQuery,
    error: Option<(StatusCode, String)>,
) -> Result<Response, UiError> {
    let service = &state.services.rollouts;
    let view = service.get(&ui.caller, id).await?;
    let (mut status, mut error) = match error {
        Some((status, why)) => (status, Some(why)),
        None => (StatusCode::OK, None),
    };
    // A bad filter or cursor shows the page with what was wrong, not an error page.
    let filters = query.stage().and_then(|stage| Ok((stage, query.state()?)));
    let (rows, next) = match filters {
        Ok((stage, wanted)) => {
            match service
                .agents(
                    &ui.caller,
                    id,
                    stage,
                    wanted,
                    RolloutQuery::text(&query.after),
                    PAGE_SIZE as u64,
                )
                .await
            {
                Ok(page) => page,
                Err(DomainError::BadRequest(why)) => {
                    error.get_or_insert(why);
                    status = StatusCode::BAD_REQUEST;
                    (Vec::new(), None)
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(DomainError::BadRequest(why)) => {
            error.get_or_insert(why);
            status = StatusCode::BAD_REQUEST;
            (Vec::new(), None)
        }
        Err(err) => return Err(err.into()),
    };
    let r = &view.rollout;
    let base = &ui.site.base;
    let stage = RolloutQuery::text(&query.stage);
    let wanted = RolloutQuery::text(&query.state);
    let page_with = |after: Option<&str>| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(stage) = stage {
            q.append_pair("stage", stage);
        }
        if let Some(wanted) = wanted {
            q.append_pair("state", wanted);
        }
        if let Some(after) = after {
            q.append_pair("after", after);
        }
        let q = q.finish();
        if q.is_empty() {
            format!("{base}/rollouts/{}#rollout-agents", r.id)
        } else {
            format!("{base}/rollouts/{}?{q}#rollout-agents", r.id)
        }
    };
    let state_now = r.state.parse::<RolloutState>().ok();
    let admin = ui.is_admin();
    let owner = ui.caller.role.at_least(Role::Owner);
    let progress = Progress::of(ui, &view);
    let page = RolloutPage {
        chrome: Chrome::new(ui, "rollouts"),
        id: r.id.clone(),
        version: r.version.clone(),
        target: target_text(&r.target),
        waves: r
            .waves
            .as_array()
            .map(|w| {
                let shares = w
                    .iter()
                    .map(|p| format!("{p} %"))
                    .collect::<Vec<_>>()
                    .join(", ");
                match w.len() {
                    1 => format!("1 wave ({shares})"),
                    n => format!("{n} waves ({shares})"),
                }
            })
            .unwrap_or_default(),
        canary: r.canary,
        max_in_flight: r.max_in_flight,
        health: health_text(&r.health),
        created_by: r.created_by.clone(),
        created: time(Some(r.created_at)),
        updated: time(Some(r.updated_at)),
        finished: time(r.finished_at),
        may_pause: admin && state_now == Some(RolloutState::Running),
        may_resume: admin && matches!(state_now, Some(RolloutState::Paused | RolloutState::Halted)),
        may_abort: admin
            && matches!(
                state_now,
                Some(RolloutState::Running | RolloutState::Paused | RolloutState::Halted)
            ),
        may_rollback: owner
            && !matches!(
                state_now,
                Some(RolloutState::RollingBack | RolloutState::RolledBack) | None
            ),
        agents: rows.iter().map(AgentLine::of).collect(),
        stages: progress
            .stages
            .iter()
            .map(|s| Choice {
                value: s.stage.to_string(),
                text: s.name.clone(),
                selected: stage == Some(s.stage.to_string().as_str()),
            })
            .collect(),
        states: RolloutAgentState::ALL
            .iter()
            .map(|s| Choice {
                value: s.as_str().to_owned(),
                text: s.as_str().replace('_', " "),
                selected: wanted == Some(s.as_str()),
            })
            .collect(),
        filtered: stage.is_some() || wanted.is_some(),
        first: RolloutQuery::text(&query.after).map(|_| page_with(None)),
        next: next.as_deref().map(|c| page_with(Some(c))),
        done: done_note(RolloutQuery::text(&query.done)),
        progress,
        error,
    };
    Ok((status, page).into_response())
}

/// `GET /ui/rollouts/{id}/live`: the page's progress as JSON, for `ui.js` to redraw while the
/// rollout is active.
pub(crate) async fn rollout_live(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let view = state.services.rollouts.get(&ui.caller, &id).await?;
    Ok(axum::Json(Progress::of(&ui, &view)).into_response())
}

/// `POST /ui/rollouts/{id}/{action}`: `pause`, `resume`, `abort` or `rollback` (which needs
/// its `confirm` box ticked) through the service; then the page again, saying what was done.
/// A refusal the page can explain (the state does not allow it, a version to go back to is
/// not published) shows the page with the service's message.
pub(crate) async fn change_rollout(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let service = &state.services.rollouts;
    let done = match action.as_str() {
        "pause" => service.pause(&ui.caller, &id).await.map(|_| "paused"),
        "resume" => service.resume(&ui.caller, &id).await.map(|_| "resumed"),
        "abort" => service.abort(&ui.caller, &id).await.map(|_| "aborted"),
        "rollback" if fields.get("confirm") != Some("1") => Err(DomainError::BadRequest(
            "rollback: tick the box to confirm that every agent this rollout updated goes back \
             to the version it had"
                .into(),
        )),
        "rollback" => service
            .rollback(&ui.caller, &id)
            .await
            .map(|_| "rolling_back"),
        other => {
            return Err(DomainError::NotFound(format!(
                "no action {other:?}: pause, resume, abort or rollback"
            ))
            .into());
        }
    };
    match done {
        Ok(done) => Ok(see_other(&format!(
            "{}/rollouts/{id}?done={done}",
            ui.site.base
        ))),
        Err(err) => match explained(&err) {
            Some(why) => rollout_page(&state, &ui, &id, &RolloutQuery::default(), Some(why)).await,
            None => Err(err.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_is_cut_in_proportion_and_says_its_counts() {
        let counts = |state: RolloutAgentState| match state {
            RolloutAgentState::Healthy => 2,
            RolloutAgentState::Reverted => 1,
            RolloutAgentState::Failed => 1,
            RolloutAgentState::Ahead => 1,
            RolloutAgentState::Updating => 2,
            RolloutAgentState::Pending => 1,
            _ => 0,
        };
        let bar = Bar::of(&counts, 8);
        let drawn: Vec<(&str, i64, &str, &str)> = bar
            .segments
            .iter()
            .map(|s| (s.class, s.n, s.x.as_str(), s.width.as_str()))
            .collect();
        assert_eq!(
            drawn,
            [
                ("healthy", 3, "0.00", "37.50"),
                ("failed", 1, "37.50", "12.50"),
                ("skipped", 1, "50.00", "12.50"),
                ("active", 2, "62.50", "25.00"),
                ("pending", 1, "87.50", "12.50"),
            ]
        );
        assert_eq!(
            bar.label,
            "3 healthy, 1 failed, 1 skipped or ahead, 2 in progress, 1 pending (of 8)"
        );
        // A stage with no agent draws nothing rather than dividing by zero.
        let empty = Bar::of(&|_| 0, 0);
        assert!(empty.segments.iter().all(|s| s.width == "0.00"));
    }

    #[test]
    fn every_agent_state_is_in_exactly_one_segment() {
        for state in RolloutAgentState::ALL {
            let holders = SEGMENTS
                .iter()
                .filter(|(_, _, states)| states.contains(state))
                .count();
            assert_eq!(holders, 1, "{state}");
        }
    }

    #[test]
    fn the_start_form_leaves_defaults_to_the_service_and_names_a_bad_field() {
        let fields = |pairs: &[(&str, &str)]| {
            Fields(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let plain = StartDraft::from_form(&fields(&[("version", "1.2.3"), ("target", "all")]))
            .request()
            .expect("a request");
        assert_eq!(plain.version, "1.2.3");
        assert_eq!(plain.target.all, Some(true));
        assert!(plain.target.tags.is_none());
        assert!(plain.canary.is_none() && plain.waves.is_none() && plain.max_in_flight.is_none());
        let health = plain.health.expect("health");
        assert!(health.online_within_s.is_none() && health.script.is_none());

        let full = StartDraft::from_form(&fields(&[
            ("version", "1.2.3"),
            ("target", "tags"),
            ("tags", "env:prod, web"),
            ("canary", "2"),
            ("waves", "25%, 75"),
            ("max_in_flight", "20"),
            ("online_within_s", "60"),
            ("soak_s", "0"),
            ("min_healthy_percent", "90"),
            ("script", "healthcheck"),
        ]))
        .request()
        .expect("a request");
        assert_eq!(
            full.target.tags,
            Some(vec!["env:prod".to_owned(), "web".to_owned()])
        );
        assert_eq!(full.target.all, None);
        assert_eq!(full.canary, Some(2));
        assert_eq!(full.waves, Some(vec![25, 75]));
        assert_eq!(full.max_in_flight, Some(20));
        let health = full.health.expect("health");
        assert_eq!(health.online_within_s, Some(60));
        assert_eq!(health.soak_s, Some(0));
        assert_eq!(health.min_healthy_percent, Some(90));
        assert_eq!(health.script.as_deref(), Some("healthcheck"));

        for (field, value) in [
            ("canary", "one"),
            ("waves", "50, half"),
            ("max_in_flight", "300"),
            ("soak_s", "-1"),
        ] {
            let err = StartDraft::from_form(&fields(&[("version", "1.2.3"), (field, value)]))
                .request()
                .expect_err(field);
            assert!(
                matches!(&err, DomainError::BadRequest(why) if why.starts_with(field)),
                "{field}: {err:?}"
            );
        }
    }

    #[test]
    fn only_known_actions_leave_a_note() {
        for done in ["started", "paused", "resumed", "aborted", "rolling_back"] {
            assert!(done_note(Some(done)).is_some(), "{done}");
        }
        assert_eq!(done_note(Some("<script>")), None);
        assert_eq!(done_note(None), None);
    }
}
