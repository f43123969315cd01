//! The jobs pages: the listing under the API's filters, running a script on many agents,
//! cancelling; and the Run form's fields, which an agent's page posts too. One job's page is
//! `job.rs`.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Chrome, date, list, time};
use crate::api::AppState;
use crate::api::{Path, Query};
use crate::ui::forms::Fields;
use crate::ui::{PAGE_SIZE, Ui, UiError, see_other};
use outpost_core::service::commands::CommandSpec;
use outpost_core::service::jobs::{JobSummary, ListRequest, NewJobRequest, Target};
use outpost_store::domain::DomainError;

/// A job as a row of a listing.
#[derive(Debug)]
pub(super) struct JobRow {
    pub(super) id: String,
    pub(super) what: String,
    pub(super) status: String,
    pub(super) created: String,
    pub(super) runs: usize,
    pub(super) failed: usize,
}

impl JobRow {
    pub(super) fn listed(job: &JobSummary) -> Self {
        Self::with(&job.job, job.runs(), job.failed)
    }

    pub(super) fn with(job: &outpost_store::job::Model, runs: usize, failed: usize) -> Self {
        let what = match &job.script {
            Some(script) => format!("run {script}"),
            None => job.command.clone(),
        };
        Self {
            id: job.id.clone(),
            what,
            status: job.status.clone(),
            created: time(Some(job.created_at)),
            runs,
            failed,
        }
    }
}

/// `POST /ui/jobs`: a script on the agents and tags the form names (or every agent), through
/// `Jobs::create`; then the job's page.
pub(crate) async fn run_many(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let spec = run_spec(&fields)?;
    let target = Target {
        agents: list(fields.text("agents")),
        tags: list(fields.text("tags")),
        all: (fields.get("all") == Some("1")).then_some(true),
    };
    if target.agents.is_none() && target.tags.is_none() && target.all.is_none() {
        return Err(DomainError::BadRequest(
            "target: name agents, tags, or choose every agent".into(),
        )
        .into());
    }
    let job = state
        .services
        .jobs
        .create(
            &ui.caller,
            NewJobRequest {
                spec,
                target,
                webhook_url: None,
                idempotency_key: None,
                fire: None,
                rerun: None,
            },
            None,
        )
        .await?;
    Ok(see_other(&format!("{}/jobs/{}", ui.site.base, job.job.id)))
}

/// A Run form's script, parameters (`param.NAME` fields, or `NAME=value` lines) and timeout.
pub(super) fn run_spec(fields: &Fields) -> Result<CommandSpec, DomainError> {
    let script = fields
        .text("script")
        .ok_or_else(|| DomainError::BadRequest("script: choose a script to run".into()))?;
    let mut params = serde_json::Map::new();
    for (name, value) in &fields.0 {
        if let Some(param) = name.strip_prefix("param.")
            && !value.is_empty()
        {
            params.insert(param.to_owned(), Value::String(value.clone()));
        }
    }
    // Free-form parameters (a script whose manifest lists none): `NAME=value` lines.
    if let Some(text) = fields.get("params") {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('=').ok_or_else(|| {
                DomainError::BadRequest(format!("params: {line:?} is not NAME=value"))
            })?;
            params.insert(name.trim().to_owned(), Value::String(value.to_owned()));
        }
    }
    let timeout_s = match fields.text("timeout_s") {
        None => None,
        Some(t) => Some(t.parse::<u32>().map_err(|_| {
            DomainError::BadRequest(format!("timeout_s: {t:?} is not a number of seconds"))
        })?),
    };
    CommandSpec::new(
        "run".into(),
        Some(json!({"script": script, "params": params})),
        timeout_s,
        None,
    )
}

/// The jobs page's query: the API's filters.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct JobsQuery {
    agent: Option<String>,
    script: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
}

/// The jobs page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/jobs.html")]
struct JobsPage {
    chrome: Chrome,
    rows: Vec<JobRow>,
    agent: String,
    script: String,
    status: String,
    since: String,
    until: String,
    first: Option<String>,
    next: Option<String>,
}

/// `GET /ui/jobs`.
pub(crate) async fn jobs(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<JobsQuery>,
) -> Result<Response, UiError> {
    let text = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let page = state
        .services
        .jobs
        .list(
            &ui.caller,
            ListRequest {
                agent_id: text(&query.agent),
                script: text(&query.script),
                status: text(&query.status),
                since: date("since", query.since.as_deref(), false)?,
                until: date("until", query.until.as_deref(), true)?,
                cursor: text(&query.cursor),
                limit: Some(PAGE_SIZE as u64),
                ..ListRequest::default()
            },
        )
        .await?;
    let filters = |cursor: Option<&str>| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("agent", &query.agent),
            ("script", &query.script),
            ("status", &query.status),
            ("since", &query.since),
            ("until", &query.until),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(name, v);
            }
        }
        if let Some(cursor) = cursor {
            q.append_pair("cursor", cursor);
        }
        format!("{}/jobs?{}", ui.site.base, q.finish())
    };
    Ok(JobsPage {
        first: query.cursor.is_some().then(|| filters(None)),
        next: page.next_cursor.as_deref().map(|c| filters(Some(c))),
        chrome: Chrome::new(&ui, "jobs"),
        rows: page.jobs.iter().map(JobRow::listed).collect(),
        agent: query.agent.clone().unwrap_or_default(),
        script: query.script.clone().unwrap_or_default(),
        status: query.status.clone().unwrap_or_default(),
        since: query.since.clone().unwrap_or_default(),
        until: query.until.clone().unwrap_or_default(),
    }
    .into_response())
}

/// `POST /ui/jobs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    state.services.jobs.cancel(&ui.caller, &id).await?;
    Ok(see_other(&format!("{}/jobs/{id}", ui.site.base)))
}
