//! The schedules pages: the listing with each schedule's next fires in its own time zone, and
//! the schedule form (new or one schedule's) with a preview of its pattern; a change sends
//! only the fields that changed, so that secret parameters need not be typed again.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Chrome, form_error, list, time};
use crate::api::AppState;
use crate::api::{Path, Query};
use crate::ui::forms::Fields;
use crate::ui::{PAGE_SIZE, Ui, UiError, see_other};
use outpost_core::service::jobs::Target;
use outpost_store::domain::DomainError;

/// A schedule as a row, with its next fires in its own time zone.
#[derive(Debug)]
struct ScheduleRow {
    id: String,
    name: String,
    cron: String,
    timezone: String,
    what: String,
    enabled: bool,
    next: Vec<String>,
    last_fire: String,
    last_job: Option<String>,
    last_status: String,
}

/// The schedules page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    rows: Vec<ScheduleRow>,
    next: Option<String>,
}

/// The schedules page's query.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct CursorQuery {
    cursor: Option<String>,
}

/// How many of a schedule's next fires its row shows.
const NEXT_FIRES: usize = 5;

/// `GET /ui/schedules`: by name, with each one's next fires (`Schedules::preview`, as
/// `GET /api/schedules/preview` computes them) in the schedule's time zone.
pub(crate) async fn schedules(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<CursorQuery>,
) -> Result<Response, UiError> {
    let service = &state.services.schedules;
    let page = service
        .list(
            &ui.caller,
            None,
            query.cursor.clone().filter(|c| !c.is_empty()),
            Some(PAGE_SIZE as u64),
        )
        .await?;
    let rows = page
        .schedules
        .iter()
        .map(|s| {
            let sched = &s.schedule;
            let next = if sched.enabled {
                service
                    .preview(&sched.cron, Some(&sched.timezone), None, Some(NEXT_FIRES))
                    .map(|fires| {
                        fires
                            .iter()
                            .map(|f| f.local.format("%a %Y-%m-%d %H:%M %:z").to_string())
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let what = match sched.data.get("script").and_then(Value::as_str) {
                Some(script) if sched.command == "run" => format!("run {script}"),
                _ => sched.command.clone(),
            };
            ScheduleRow {
                id: sched.id.clone(),
                name: sched.name.clone(),
                cron: sched.cron.clone(),
                timezone: sched.timezone.clone(),
                what,
                enabled: sched.enabled,
                next,
                last_fire: time(sched.last_fire_at),
                last_job: s.last_job.as_ref().map(|j| j.id.clone()),
                last_status: s
                    .last_job
                    .as_ref()
                    .map(|j| j.status.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(SchedulesPage {
        next: page.next_cursor.map(|c| {
            format!(
                "{}/schedules?cursor={}",
                ui.site.base,
                url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            )
        }),
        chrome: Chrome::new(&ui, "schedules"),
        rows,
    }
    .into_response())
}

/// `POST /ui/schedules/{id}/{action}`: `enable`, `disable` (`Schedules::update`), `run`
/// (`Schedules::run_now`, then the job's page) or `delete` (`Schedules::delete`).
pub(crate) async fn change_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let schedules = &state.services.schedules;
    match action.as_str() {
        "enable" | "disable" => {
            schedules
                .update(
                    &ui.caller,
                    &id,
                    outpost_core::service::schedules::ScheduleFields {
                        enabled: Some(action == "enable"),
                        ..Default::default()
                    },
                )
                .await?;
            Ok(see_other(&format!("{}/schedules", ui.site.base)))
        }
        "run" => {
            let job = schedules.run_now(&ui.caller, &id).await?;
            Ok(see_other(&format!("{}/jobs/{}", ui.site.base, job.job.id)))
        }
        "delete" => {
            schedules.delete(&ui.caller, &id).await?;
            Ok(see_other(&format!("{}/schedules", ui.site.base)))
        }
        other => Err(DomainError::NotFound(format!(
            "no action {other:?}: enable, disable, run or delete"
        ))
        .into()),
    }
}

/// A schedule's form, as typed (or as stored, to edit), with the next fires of its pattern.
#[derive(Debug, Default)]
struct ScheduleDraft {
    name: String,
    cron: String,
    timezone: String,
    command: String,
    script: String,
    /// `NAME=value` lines (secret values masked).
    params: String,
    agents: String,
    tags: String,
    all: bool,
    timeout_s: String,
    ttl_s: String,
    missed: String,
    concurrency: String,
    enabled: bool,
    webhook_url: String,
}

impl ScheduleDraft {
    fn new() -> Self {
        Self {
            timezone: "UTC".into(),
            command: "run".into(),
            missed: "skip".into(),
            concurrency: "allow".into(),
            enabled: true,
            ..Self::default()
        }
    }

    fn of(s: &outpost_store::schedule::Model) -> Self {
        let target: Target = serde_json::from_value(s.target.clone()).unwrap_or_default();
        let joined = |list: Option<Vec<String>>| list.unwrap_or_default().join(", ");
        let (script, params) = if s.command == "run" {
            let script = s.data.get("script").and_then(Value::as_str).unwrap_or("");
            (script.to_owned(), params_text(s.data.get("params")))
        } else {
            (String::new(), String::new())
        };
        Self {
            name: s.name.clone(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            command: s.command.clone(),
            script,
            params,
            agents: joined(target.agents),
            tags: joined(target.tags),
            all: target.all == Some(true),
            timeout_s: s.timeout_s.map(|t| t.to_string()).unwrap_or_default(),
            ttl_s: s.ttl_s.map(|t| t.to_string()).unwrap_or_default(),
            missed: s.missed.clone(),
            concurrency: s.concurrency.clone(),
            enabled: s.enabled,
            webhook_url: s.webhook_url.clone().unwrap_or_default(),
        }
    }

    fn from_form(fields: &Fields) -> Self {
        let text = |name: &str| fields.text(name).unwrap_or_default();
        Self {
            name: text("name"),
            cron: text("cron"),
            timezone: fields.text("timezone").unwrap_or_else(|| "UTC".into()),
            command: fields.text("command").unwrap_or_else(|| "run".into()),
            script: text("script"),
            params: fields.get("params").unwrap_or("").to_owned(),
            agents: text("agents"),
            tags: text("tags"),
            all: fields.get("all") == Some("1"),
            timeout_s: text("timeout_s"),
            ttl_s: text("ttl_s"),
            missed: fields.text("missed").unwrap_or_else(|| "skip".into()),
            concurrency: fields.text("concurrency").unwrap_or_else(|| "allow".into()),
            enabled: fields.get("enabled") == Some("1"),
            webhook_url: text("webhook_url"),
        }
    }

    /// What it runs: the command's data (`run`: the script and its parameters).
    fn data(&self) -> Result<Option<Value>, DomainError> {
        if self.command != "run" {
            return Ok(None);
        }
        if self.script.is_empty() {
            return Err(DomainError::BadRequest(
                "script: name the script a run schedule runs".into(),
            ));
        }
        let mut params = serde_json::Map::new();
        for line in self.params.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('=').ok_or_else(|| {
                DomainError::BadRequest(format!("params: {line:?} is not NAME=value"))
            })?;
            params.insert(name.trim().to_owned(), Value::String(value.to_owned()));
        }
        Ok(Some(json!({"script": self.script, "params": params})))
    }

    fn target(&self) -> Target {
        Target {
            agents: list(Some(self.agents.clone())).filter(|l| !l.is_empty()),
            tags: list(Some(self.tags.clone())).filter(|l| !l.is_empty()),
            all: self.all.then_some(true),
        }
    }

    fn seconds(field: &str, text: &str) -> Result<Option<u32>, DomainError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<u32>().map(Some).map_err(|_| {
            DomainError::BadRequest(format!("{field}: {text:?} is not a number of seconds"))
        })
    }

    /// Every field, as `POST /api/schedules` takes them.
    fn fields(&self) -> Result<outpost_core::service::schedules::ScheduleFields, DomainError> {
        Ok(outpost_core::service::schedules::ScheduleFields {
            name: Some(self.name.clone()),
            cron: Some(self.cron.clone()),
            timezone: Some(self.timezone.clone()),
            command: Some(self.command.clone()),
            data: self.data()?,
            target: Some(self.target()),
            timeout_s: Some(Self::seconds("timeout_s", &self.timeout_s)?),
            ttl_s: Some(Self::seconds("ttl_s", &self.ttl_s)?),
            enabled: Some(self.enabled),
            missed: Some(self.missed.clone()),
            concurrency: Some(self.concurrency.clone()),
            webhook_url: Some(Some(self.webhook_url.clone()).filter(|u| !u.is_empty())),
        })
    }

    /// The fields that differ from `stored` (`PATCH`): what the schedule runs is given again
    /// only when some of it changed, so that one with secret parameters can be renamed,
    /// rescheduled or paused without typing them again.
    fn changes(
        &self,
        stored: &ScheduleDraft,
    ) -> Result<outpost_core::service::schedules::ScheduleFields, DomainError> {
        let all = self.fields()?;
        let runs_changed = self.command != stored.command
            || self.script != stored.script
            || self.params != stored.params
            || self.agents != stored.agents
            || self.tags != stored.tags
            || self.all != stored.all
            || self.timeout_s != stored.timeout_s
            || self.ttl_s != stored.ttl_s;
        if runs_changed
            && self.params.lines().any(|l| {
                l.split_once('=')
                    .is_some_and(|(_, v)| v == outpost_core::service::schedules::SECRET_MASK)
            })
        {
            return Err(DomainError::BadRequest(format!(
                "params: a secret parameter shows as {}; type its value again to change what this schedule runs",
                outpost_core::service::schedules::SECRET_MASK
            )));
        }
        let pick = |changed: bool| changed;
        Ok(outpost_core::service::schedules::ScheduleFields {
            name: all.name.filter(|_| pick(self.name != stored.name)),
            cron: all.cron.filter(|_| pick(self.cron != stored.cron)),
            timezone: all
                .timezone
                .filter(|_| pick(self.timezone != stored.timezone)),
            command: all.command.filter(|_| runs_changed),
            data: all.data.filter(|_| runs_changed),
            target: all.target.filter(|_| runs_changed),
            timeout_s: all.timeout_s.filter(|_| runs_changed),
            ttl_s: all.ttl_s.filter(|_| runs_changed),
            enabled: all.enabled.filter(|_| pick(self.enabled != stored.enabled)),
            missed: all.missed.filter(|_| pick(self.missed != stored.missed)),
            concurrency: all
                .concurrency
                .filter(|_| pick(self.concurrency != stored.concurrency)),
            webhook_url: all
                .webhook_url
                .filter(|_| pick(self.webhook_url != stored.webhook_url)),
        })
    }
}

/// A stored `params` object as `NAME=value` lines.
fn params_text(params: Option<&Value>) -> String {
    params
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The schedule form page: new (`id` none) or one schedule's.
#[derive(Template, WebTemplate)]
#[template(path = "ui/schedule.html")]
struct SchedulePage {
    chrome: Chrome,
    id: Option<String>,
    draft: ScheduleDraft,
    fires: Vec<String>,
    error: Option<String>,
    timezones: &'static [&'static str],
    /// The jobs of its latest fires, each summed up in a line.
    recent: Vec<FireLine>,
}

/// A recent fire's job in one line: "✓ 58 ✗ 2 of 60 · 4.1 s".
#[derive(Debug)]
struct FireLine {
    id: String,
    created: String,
    status: String,
    succeeded: usize,
    failed: usize,
    open: usize,
    total: usize,
    took: String,
}

/// Fires a schedule's page lists.
const RECENT_FIRES: u64 = 10;

/// The jobs of a schedule's latest fires, with the counts the jobs listing reads for them
/// (`run_counts_of_jobs`: one `GROUP BY` for the page, never its runs).
async fn recent_fires(state: &AppState, ui: &Ui, id: &str) -> Result<Vec<FireLine>, UiError> {
    let page = state
        .services
        .jobs
        .list(
            &ui.caller,
            outpost_core::service::jobs::ListRequest {
                schedule_id: Some(id.to_owned()),
                limit: Some(RECENT_FIRES),
                ..Default::default()
            },
        )
        .await?;
    Ok(page
        .jobs
        .iter()
        .map(|summary| {
            let job = &summary.job;
            let count = |state: &str| summary.run_counts.get(state).copied().unwrap_or(0);
            let open = ["pending", "delivered", "running"]
                .iter()
                .map(|s| count(s))
                .sum();
            let total = summary.runs();
            FireLine {
                id: job.id.clone(),
                created: time(Some(job.created_at)),
                status: job.status.clone(),
                succeeded: count("succeeded"),
                failed: total - count("succeeded") - open,
                open,
                total,
                took: job
                    .finished_at
                    .map(|end| {
                        format!(
                            "{:.1} s",
                            (end - job.created_at).num_milliseconds().max(0) as f64 / 1000.0
                        )
                    })
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Zones offered in the form's list (any IANA name may be typed).
const TIMEZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
];

/// The next fires of `cron` in `timezone`, as the page shows them, or why there are none.
fn next_fires(state: &AppState, cron: &str, timezone: &str) -> Result<Vec<String>, String> {
    if cron.trim().is_empty() {
        return Ok(Vec::new());
    }
    state
        .services
        .schedules
        .preview(cron, Some(timezone), None, Some(NEXT_FIRES))
        .map(|fires| {
            fires
                .iter()
                .map(|f| f.local.format("%a %Y-%m-%d %H:%M %:z").to_string())
                .collect()
        })
        .map_err(|e| match e {
            DomainError::BadRequest(why) => why,
            other => other.to_string(),
        })
}

async fn schedule_page(
    state: &AppState,
    ui: &Ui,
    id: Option<String>,
    draft: ScheduleDraft,
    error: Option<String>,
) -> Result<Response, UiError> {
    let recent = match &id {
        Some(id) => recent_fires(state, ui, id).await?,
        None => Vec::new(),
    };
    let (fires, preview_error) = match next_fires(state, &draft.cron, &draft.timezone) {
        Ok(fires) => (fires, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        SchedulePage {
            chrome: Chrome::new(ui, "schedules"),
            id,
            draft,
            fires,
            error: error.or(preview_error),
            timezones: TIMEZONES,
            recent,
        },
    )
        .into_response())
}

/// `GET /ui/schedules/new`.
pub(crate) async fn new_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    schedule_page(&state, &ui, None, ScheduleDraft::new(), None).await
}

/// `GET /ui/schedules/{id}`: its form, with its next fires in its time zone.
pub(crate) async fn schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let stored = state.services.schedules.get(&ui.caller, &id).await?;
    let draft = ScheduleDraft::of(&stored.schedule);
    schedule_page(&state, &ui, Some(id), draft, None).await
}

/// `POST /ui/schedules`: `Schedules::create`, or (the Preview button) the form again with
/// the pattern's next fires.
pub(crate) async fn create_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let draft = ScheduleDraft::from_form(&fields);
    if fields.get("preview").is_some() {
        return schedule_page(&state, &ui, None, draft, None).await;
    }
    let made = match draft.fields() {
        Ok(f) => state.services.schedules.create(&ui.caller, f).await,
        Err(e) => Err(e),
    };
    match made {
        Ok(made) => Ok(see_other(&format!(
            "{}/schedules/{}",
            ui.site.base, made.schedule.id
        ))),
        Err(err) => schedule_page(&state, &ui, None, draft, Some(form_error(err)?)).await,
    }
}

/// `POST /ui/schedules/{id}`: `Schedules::update` with the fields that changed, or the
/// preview.
pub(crate) async fn update_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let draft = ScheduleDraft::from_form(&fields);
    if fields.get("preview").is_some() {
        return schedule_page(&state, &ui, Some(id), draft, None).await;
    }
    let service = &state.services.schedules;
    let stored = ScheduleDraft::of(&service.get(&ui.caller, &id).await?.schedule);
    let changed = match draft.changes(&stored) {
        Ok(changes) => service.update(&ui.caller, &id, changes).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match changed {
        Ok(()) => Ok(see_other(&format!("{}/schedules/{id}", ui.site.base))),
        Err(err) => schedule_page(&state, &ui, Some(id), draft, Some(form_error(err)?)).await,
    }
}

/// The preview's query.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct PreviewQuery {
    cron: Option<String>,
    timezone: Option<String>,
}

/// `GET /ui/schedules/preview?cron=…&timezone=…`: the next fires as JSON, for the form's
/// script (`{"fires": [...]}` or `{"error": "..."}`; 200 either way, so the page shows why).
pub(crate) async fn preview_schedule(
    State(state): State<AppState>,
    Query(query): Query<PreviewQuery>,
) -> Response {
    let cron = query.cron.unwrap_or_default();
    let timezone = query
        .timezone
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "UTC".into());
    let body = match next_fires(&state, &cron, timezone.trim()) {
        Ok(fires) => json!({"fires": fires}),
        Err(why) => json!({"error": why}),
    };
    axum::Json(body).into_response()
}
