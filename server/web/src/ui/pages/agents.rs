//! The agents page (one page of them under a filter, kept live by `live.rs`) and one agent's
//! page: its facts, its heartbeat chart, its scripts' Run forms, its recent jobs, and the
//! admin forms for its tags and control commands.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::jobs::{JobRow, run_spec};
use super::{Chrome, list, percent, time};
use crate::api::AppState;
use crate::api::{Path, Query};
use crate::http_error::HttpError;
use crate::ui::forms::Fields;
use crate::ui::{PAGE_SIZE, Ui, UiError, see_other};
use outpost_core::service::agents::{AgentFilter, AgentRecord};
use outpost_core::service::commands::CommandSpec;
use outpost_core::service::jobs::{ListRequest, NewJobRequest, Target};
use outpost_store::domain::DomainError;

/// An agent as a row of the agents page (and of its live updates).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub(crate) struct AgentRow {
    /// Its id.
    id: String,
    /// As it reports it.
    hostname: String,
    /// Every tag, whatever its source.
    tags: Vec<String>,
    /// Its version.
    version: String,
    /// `online` or `offline`.
    status: &'static str,
    /// When its last heartbeat was sampled, or empty.
    heartbeat: String,
    /// CPU use, percent, one decimal, or empty.
    cpu: String,
    /// Memory use.
    memory: String,
    /// Disk use.
    disk: String,
}

impl AgentRow {
    /// The row of an agent.
    fn of(record: &AgentRecord) -> Self {
        let heartbeat = record.agent.last_heartbeat.as_ref();
        let sampled = heartbeat
            .and_then(|h| h.get("timestamp"))
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Self {
            id: record.agent.id.clone(),
            hostname: record.agent.hostname.clone(),
            tags: record.tags.clone(),
            version: record.agent.version.clone(),
            status: if record.online { "online" } else { "offline" },
            heartbeat: time(sampled),
            cpu: percent(heartbeat, "cpu_percent"),
            memory: percent(heartbeat, "memory_percent"),
            disk: percent(heartbeat, "disk_percent"),
        }
    }
}

/// The agents page's query.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct AgentsQuery {
    /// Agents with this tag.
    tag: Option<String>,
    /// `online` or `offline`.
    status: Option<String>,
    /// From 1.
    page: Option<usize>,
}

impl AgentsQuery {
    fn filter(&self) -> Result<AgentFilter, DomainError> {
        let online = match self.status.as_deref().unwrap_or("") {
            "" => None,
            "online" => Some(true),
            "offline" => Some(false),
            other => {
                return Err(DomainError::BadRequest(format!(
                    "status: must be online or offline, not {other:?}"
                )));
            }
        };
        Ok(AgentFilter {
            tag: self.tag.clone().filter(|t| !t.is_empty()),
            online,
        })
    }

    /// The query string of this filter at `page`.
    fn at(&self, page: usize) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(tag) = self.tag.as_deref().filter(|t| !t.is_empty()) {
            query.append_pair("tag", tag);
        }
        if let Some(status) = self.status.as_deref().filter(|s| !s.is_empty()) {
            query.append_pair("status", status);
        }
        query.append_pair("page", &page.to_string());
        query.finish()
    }
}

/// One page of agents under a filter: the rows, the page shown (from 1), the number of
/// pages and of agents. The store filters, counts and orders (`Agents::page`); only the
/// page's rows are read.
pub(crate) async fn agent_page(
    state: &AppState,
    ui: &Ui,
    query: &AgentsQuery,
) -> Result<(Vec<AgentRow>, usize, usize, usize), HttpError> {
    let page = state
        .services
        .agents
        .page(
            &ui.caller,
            &query.filter()?,
            query.page.unwrap_or(1).max(1) as u64,
            PAGE_SIZE as u64,
        )
        .await?;
    let rows = page.agents.iter().map(AgentRow::of).collect();
    Ok((
        rows,
        page.page as usize,
        page.pages as usize,
        page.total as usize,
    ))
}

/// The agents page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/agents.html")]
struct AgentsPage {
    chrome: Chrome,
    rows: Vec<AgentRow>,
    tag: String,
    status: String,
    page: usize,
    pages: usize,
    total: usize,
    stream: String,
    first: String,
    prev: Option<String>,
    next: Option<String>,
    last: String,
}

/// `GET /ui/agents`.
pub(crate) async fn agents(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<AgentsQuery>,
) -> Result<Response, UiError> {
    let (rows, page, pages, total) = agent_page(&state, &ui, &query).await?;
    let base = &ui.site.base;
    Ok(AgentsPage {
        stream: format!("{base}/agents/stream?{}", query.at(page)),
        prev: (page > 1).then(|| format!("{base}/agents?{}", query.at(page - 1))),
        next: (page < pages).then(|| format!("{base}/agents?{}", query.at(page + 1))),
        first: format!("{base}/agents?{}", query.at(1)),
        last: format!("{base}/agents?{}", query.at(pages)),
        chrome: Chrome::new(&ui, "agents"),
        rows,
        tag: query.tag.clone().unwrap_or_default(),
        status: query.status.clone().unwrap_or_default(),
        page,
        pages,
        total,
    }
    .into_response())
}

/// A parameter field of a Run form.
#[derive(Debug)]
struct ParamField {
    name: String,
    secret: bool,
}

/// A script an agent offers, with its Run form's fields.
#[derive(Debug)]
struct ScriptForm {
    name: String,
    description: String,
    /// `None`: the manifest lists no parameters (any name goes: a free-form field).
    params: Option<Vec<ParamField>>,
}

/// One metric's line in the chart.
#[derive(Debug)]
struct Series {
    class: &'static str,
    label: &'static str,
    /// `x,y` pairs of the polyline.
    points: String,
    /// The latest value, as text.
    last: String,
}

/// The last hour of an agent's heartbeat metrics as an inline SVG chart, drawn here (no
/// script): x is the minute within the hour, y the percentage.
#[derive(Debug, Default)]
struct Chart {
    series: Vec<Series>,
    samples: usize,
}

/// A heartbeat sample: `(minute, cpu, memory, disk)`, percent.
type Sample = (DateTime<Utc>, f64, f64, f64);

/// The chart's plot area in SVG units (the viewBox adds a margin for the labels).
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 150.0;
const CHART_TOP: f64 = 10.0;

impl Chart {
    fn of(samples: &[Sample], now: DateTime<Utc>) -> Self {
        let start = now - chrono::Duration::hours(1);
        let x = |t: DateTime<Utc>| {
            let s = (t - start).num_seconds().clamp(0, 3600) as f64;
            s / 3600.0 * CHART_W
        };
        let y = |v: f64| CHART_TOP + (1.0 - v.clamp(0.0, 100.0) / 100.0) * CHART_H;
        let line = |class, label, pick: fn(&Sample) -> f64| Series {
            class,
            label,
            points: samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.0), y(pick(s))))
                .collect::<Vec<_>>()
                .join(" "),
            last: samples
                .last()
                .map(|s| format!("{:.1}%", pick(s)))
                .unwrap_or_default(),
        };
        Self {
            series: vec![
                line("cpu", "CPU", |s| s.1),
                line("memory", "Memory", |s| s.2),
                line("disk", "Disk", |s| s.3),
            ],
            samples: samples.len(),
        }
    }
}

/// One agent's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/agent.html")]
struct AgentPage {
    chrome: Chrome,
    row: AgentRow,
    chart: Chart,
    server_tags: String,
    facts: Vec<(&'static str, String)>,
    scripts: Vec<ScriptForm>,
    jobs: Vec<JobRow>,
}

/// `GET /ui/agents/{id}`.
pub(crate) async fn agent(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let record = state.services.agents.get(&ui.caller, &id).await?;
    let a = &record.agent;
    let facts = vec![
        ("Agent id", a.id.clone()),
        ("Address", a.ip.clone()),
        ("OS", a.os.clone()),
        ("Architecture", a.arch.clone()),
        ("Protocol", a.protocol.to_string()),
        ("First seen", time(Some(a.first_seen))),
        ("Last seen", time(Some(a.last_seen))),
        ("Connected since", time(a.connected_at)),
        ("Agent tags", record.agent_tags.join(", ")),
        ("Key tags", record.key_tags.join(", ")),
        ("Server tags", record.server_tags.join(", ")),
    ];
    let scripts = a
        .scripts
        .as_array()
        .map(|list| list.iter().filter_map(script_form).collect())
        .unwrap_or_default();
    let jobs = state
        .services
        .jobs
        .list(
            &ui.caller,
            ListRequest {
                agent_id: Some(id.clone()),
                limit: Some(20),
                ..ListRequest::default()
            },
        )
        .await?;
    let samples = state.services.agents.metrics(&ui.caller, &id).await?;
    Ok(AgentPage {
        chrome: Chrome::new(&ui, "agents"),
        row: AgentRow::of(&record),
        chart: Chart::of(&samples, Utc::now()),
        server_tags: record.server_tags.join(", "),
        facts,
        scripts,
        jobs: jobs.jobs.iter().map(JobRow::listed).collect(),
    }
    .into_response())
}

/// A script of an agent's report, as a form (what the agent reported is not trusted to be
/// well formed: a malformed entry is left out).
fn script_form(entry: &Value) -> Option<ScriptForm> {
    let name = entry.get("name")?.as_str()?.to_owned();
    let params = entry.get("params").and_then(Value::as_array).map(|list| {
        list.iter()
            .filter_map(|p| {
                let name = p.get("name").and_then(Value::as_str)?;
                Some(ParamField {
                    name: name.to_owned(),
                    secret: p.get("secret").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect()
    });
    Some(ScriptForm {
        name,
        description: entry
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        params,
    })
}

/// `POST /ui/agents/{id}/run`: a job running one script on this agent, through
/// `Jobs::create` as `POST /api/jobs` does; then its page.
pub(crate) async fn run(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let spec = run_spec(&fields)?;
    job_on_agent(&state, &ui, spec, id).await
}

/// Starts `spec` as a job on agent `id` and sends the browser to the job's page.
async fn job_on_agent(
    state: &AppState,
    ui: &Ui,
    spec: CommandSpec,
    id: String,
) -> Result<Response, UiError> {
    let job = state
        .services
        .jobs
        .create(
            &ui.caller,
            NewJobRequest {
                spec,
                target: Target {
                    agents: Some(vec![id]),
                    tags: None,
                    all: None,
                },
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

/// `POST /ui/agents/{id}/tags`: `Agents::set_tags` with the operator's tags (admins).
pub(crate) async fn set_agent_tags(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let tags = list(fields.text("tags")).unwrap_or_default();
    state
        .services
        .agents
        .set_tags(&ui.caller, &id, &tags)
        .await?;
    Ok(see_other(&format!("{}/agents/{id}", ui.site.base)))
}

/// `POST /ui/agents/{id}/control/{command}`: `restart` or `update` (to the latest release) as
/// a job on this agent, through `Jobs::create`, which refuses members; then the job's page.
pub(crate) async fn control_agent(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, command)): Path<(String, String)>,
) -> Result<Response, UiError> {
    if !matches!(command.as_str(), "restart" | "update") {
        return Err(
            DomainError::NotFound(format!("no control {command:?}: restart or update")).into(),
        );
    }
    let spec = CommandSpec::new(command, None, None, None)?;
    job_on_agent(&state, &ui, spec, id).await
}
