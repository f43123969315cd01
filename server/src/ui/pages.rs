//! The dashboard's pages and forms: each reads or changes through one service, as the REST
//! handler of the same thing does, and renders an askama template (escaped by default; no
//! template uses `|safe`).

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::assets::{Names, names};
use super::forms::Fields;
use super::{PAGE_SIZE, Ui, UiError, see_other};
use crate::AppState;
use crate::api::{Path, Query};
use crate::domain::DomainError;
use crate::service::agents::{AgentFilter, AgentRecord};
use crate::service::commands::CommandSpec;
use crate::service::jobs::{JobSummary, JobWithRuns, ListRequest, NewJobRequest, Target};
use crate::service::keys::{KeyChanges, KeyRecord, NewKey};
use crate::store::{command, string_list};

/// What every signed-in page's layout shows: the navigation (by role), the user, the
/// sign-out form.
#[derive(Debug)]
pub struct Chrome {
    /// `<prefix>/ui`.
    pub base: String,
    /// The assets' names.
    pub asset: &'static Names,
    /// The session's form token.
    pub csrf: String,
    /// Whether admin actions are shown.
    pub admin: bool,
    /// Who is signed in.
    pub user: String,
    /// The page's section, for the navigation.
    pub nav: &'static str,
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
        }
    }
}

/// The sign-in page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/login.html")]
pub struct LoginPage {
    /// `<prefix>/ui`.
    pub base: String,
    /// The assets' names.
    pub asset: &'static Names,
    /// The sign-in form's token.
    pub csrf: String,
    /// Where to go afterwards (checked).
    pub next: String,
    /// The email typed, shown again after a failure.
    pub email: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// A failed page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/error.html")]
pub struct ErrorPage {
    /// The HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

/// An agent as a row of the agents page (and of its live updates).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct AgentRow {
    /// Its id.
    pub id: String,
    /// As it reports it.
    pub hostname: String,
    /// Every tag, whatever its source.
    pub tags: Vec<String>,
    /// Its version.
    pub version: String,
    /// `online` or `offline`.
    pub status: &'static str,
    /// When its last heartbeat was sampled, or empty.
    pub heartbeat: String,
    /// CPU use, percent, one decimal, or empty.
    pub cpu: String,
    /// Memory use.
    pub memory: String,
    /// Disk use.
    pub disk: String,
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

impl AgentRow {
    /// The row of an agent.
    pub fn of(record: &AgentRecord) -> Self {
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
pub struct AgentsQuery {
    /// Agents with this tag.
    pub tag: Option<String>,
    /// `online` or `offline`.
    pub status: Option<String>,
    /// From 1.
    pub page: Option<usize>,
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
    pub fn at(&self, page: usize) -> String {
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
pub async fn agent_page(
    state: &AppState,
    ui: &Ui,
    query: &AgentsQuery,
) -> Result<(Vec<AgentRow>, usize, usize, usize), DomainError> {
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
pub struct AgentsPage {
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
pub async fn agents(
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
pub struct ParamField {
    name: String,
    secret: bool,
}

/// A script an agent offers, with its Run form's fields.
#[derive(Debug)]
pub struct ScriptForm {
    name: String,
    description: String,
    /// `None`: the manifest lists no parameters (any name goes: a free-form field).
    params: Option<Vec<ParamField>>,
}

/// A job as a row of a listing.
#[derive(Debug)]
pub struct JobRow {
    id: String,
    what: String,
    status: String,
    created: String,
    runs: usize,
    failed: usize,
}

impl JobRow {
    fn of(job: &JobWithRuns) -> Self {
        Self::with(
            &job.job,
            job.runs.len(),
            job.runs.iter().filter(|r| r.success == Some(false)).count(),
        )
    }

    fn listed(job: &JobSummary) -> Self {
        Self::with(&job.job, job.runs(), job.failed)
    }

    fn with(job: &crate::store::job::Model, runs: usize, failed: usize) -> Self {
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

/// One metric's line in the chart.
#[derive(Debug)]
pub struct Series {
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
pub struct Chart {
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
pub struct AgentPage {
    chrome: Chrome,
    row: AgentRow,
    chart: Chart,
    server_tags: String,
    facts: Vec<(&'static str, String)>,
    scripts: Vec<ScriptForm>,
    jobs: Vec<JobRow>,
}

/// `GET /ui/agents/{id}`.
pub async fn agent(
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
pub async fn run(
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
            },
            None,
        )
        .await?;
    Ok(see_other(&format!("{}/jobs/{}", ui.site.base, job.job.id)))
}

/// `POST /ui/jobs`: a script on the agents and tags the form names (or every agent), through
/// `Jobs::create`; then the job's page.
pub async fn run_many(
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
            },
            None,
        )
        .await?;
    Ok(see_other(&format!("{}/jobs/{}", ui.site.base, job.job.id)))
}

/// A Run form's script, parameters (`param.NAME` fields, or `NAME=value` lines) and timeout.
fn run_spec(fields: &Fields) -> Result<CommandSpec, DomainError> {
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
pub struct JobsQuery {
    agent: Option<String>,
    script: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
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

/// The jobs page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/jobs.html")]
pub struct JobsPage {
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
pub async fn jobs(
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

/// A run as a row of its job's page.
#[derive(Debug)]
pub struct RunRow {
    id: String,
    agent_id: String,
    state: String,
    exit_code: String,
    duration: String,
    error: String,
    bytes: i64,
}

impl RunRow {
    fn of(run: &command::Model) -> Self {
        let duration = run.finished_at.map(|end| {
            let start = run
                .started_at
                .or(run.delivered_at)
                .unwrap_or(run.created_at);
            format!(
                "{:.1} s",
                (end - start).num_milliseconds().max(0) as f64 / 1000.0
            )
        });
        Self {
            id: run.id.clone(),
            agent_id: run.agent_id.clone(),
            state: run.state.clone(),
            exit_code: run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            duration: duration.unwrap_or_default(),
            error: run.error_message.clone().unwrap_or_default(),
            bytes: run.stdout_bytes + run.stderr_bytes,
        }
    }
}

/// One job's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/job.html")]
pub struct JobPage {
    chrome: Chrome,
    row: JobRow,
    target: String,
    params: String,
    runs: Vec<RunRow>,
    running: bool,
}

/// `GET /ui/jobs/{id}`.
pub async fn job(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let job = state.services.jobs.get(&ui.caller, &id).await?;
    let params = job
        .job
        .data
        .get("params")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok(JobPage {
        chrome: Chrome::new(&ui, "jobs"),
        target: job.job.target.to_string(),
        params,
        runs: job.runs.iter().map(RunRow::of).collect(),
        running: job.job.status == "running",
        row: JobRow::of(&job),
    }
    .into_response())
}

/// `POST /ui/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    state.services.jobs.cancel(&ui.caller, &id).await?;
    Ok(see_other(&format!("{}/jobs/{id}", ui.site.base)))
}

/// An agent key as a row.
#[derive(Debug)]
pub struct KeyRow {
    id: String,
    name: String,
    status: String,
    tags: String,
    permissions: String,
    created: String,
    last_used: String,
    expires: String,
    agents: usize,
}

impl KeyRow {
    fn of(record: &KeyRecord) -> Self {
        let k = &record.key;
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            status: k.status.clone(),
            tags: string_list(&k.tags).join(", "),
            permissions: string_list(&k.permissions).join(", "),
            created: time(Some(k.created_at)),
            last_used: time(k.last_used_at),
            expires: time(k.expires_at),
            agents: record.connected_agents,
        }
    }
}

/// A key just made or regenerated: its secret, shown once, and the install line.
#[derive(Debug)]
pub struct Created {
    name: String,
    secret: String,
    install: String,
}

/// The agent keys page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/keys.html")]
pub struct KeysPage {
    chrome: Chrome,
    keys: Vec<KeyRow>,
    created: Option<Created>,
}

/// The one-line install for `secret`: `--public-url`, else the URL the browser used.
fn install_line(ui: &Ui, headers: &axum::http::HeaderMap, secret: &str) -> String {
    let base = match &ui.site.public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("SERVER");
            let scheme = if ui.site.secure { "https" } else { "http" };
            format!("{scheme}://{host}")
        }
    };
    format!("curl -fsSL {base}/deploy.sh | bash -s -- --key {secret}")
}

async fn keys_page(
    state: &AppState,
    ui: &Ui,
    created: Option<Created>,
) -> Result<Response, UiError> {
    let keys = state.services.keys.list(&ui.caller).await?;
    Ok(KeysPage {
        chrome: Chrome::new(ui, "keys"),
        keys: keys.iter().map(KeyRow::of).collect(),
        created,
    }
    .into_response())
}

/// `GET /ui/keys`.
pub async fn keys(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    keys_page(&state, &ui, None).await
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

/// `POST /ui/keys`: creates a key through `Keys::create` and shows its secret once.
pub async fn create_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    headers: axum::http::HeaderMap,
) -> Result<Response, UiError> {
    let (record, secret) = state
        .services
        .keys
        .create(
            &ui.caller,
            NewKey {
                name: fields.text("name").unwrap_or_default(),
                permissions: list(fields.text("permissions")),
                tags: list(fields.text("tags")),
                expires_at: date("expires", fields.text("expires").as_deref(), true)?,
            },
        )
        .await?;
    let created = Created {
        name: record.key.name.clone(),
        install: install_line(&ui, &headers, &secret),
        secret,
    };
    keys_page(&state, &ui, Some(created)).await
}

/// `POST /ui/keys/{id}/{action}`: `disable`, `enable`, `regenerate` or `delete`.
pub async fn change_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, action)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response, UiError> {
    let keys = &state.services.keys;
    match action.as_str() {
        "disable" | "enable" => {
            let status = if action == "disable" {
                "disabled"
            } else {
                "active"
            };
            keys.update(
                &ui.caller,
                &id,
                KeyChanges {
                    status: Some(status.into()),
                    ..KeyChanges::default()
                },
            )
            .await?;
        }
        "delete" => keys.delete(&ui.caller, &id).await?,
        "regenerate" => {
            let (record, secret) = keys.regenerate(&ui.caller, &id).await?;
            let created = Created {
                name: record.key.name.clone(),
                install: install_line(&ui, &headers, &secret),
                secret,
            };
            return keys_page(&state, &ui, Some(created)).await;
        }
        other => {
            return Err(DomainError::NotFound(format!(
                "no action {other:?}: disable, enable, regenerate or delete"
            ))
            .into());
        }
    }
    Ok(see_other(&format!("{}/keys", ui.site.base)))
}

/// A schedule as a row, with its next fires in its own time zone.
#[derive(Debug)]
pub struct ScheduleRow {
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
pub struct SchedulesPage {
    chrome: Chrome,
    rows: Vec<ScheduleRow>,
    next: Option<String>,
}

/// The schedules page's query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CursorQuery {
    cursor: Option<String>,
}

/// How many of a schedule's next fires its row shows.
const NEXT_FIRES: usize = 5;

/// `GET /ui/schedules`: by name, with each one's next fires (`Schedules::preview`, as
/// `GET /api/schedules/preview` computes them) in the schedule's time zone.
pub async fn schedules(
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

/// A user as a row.
#[derive(Debug)]
pub struct UserRow {
    id: String,
    email: String,
    role: String,
    status: String,
    created: String,
    last_login: String,
}

/// The users page (owners and admins; owners get the invite and role forms).
#[derive(Template, WebTemplate)]
#[template(path = "ui/users.html")]
pub struct UsersPage {
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
                })
                .collect(),
            owner: ui.caller.role.at_least(crate::domain::Role::Owner),
            invited,
            error,
        },
    )
        .into_response())
}

/// `GET /ui/users`: `Users::list`, which refuses members.
pub async fn users(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    users_page(&state, &ui, None, None).await
}

/// An audit entry as a row.
#[derive(Debug)]
pub struct AuditRow {
    at: String,
    actor: String,
    address: String,
    action: String,
    target: String,
    detail: String,
}

/// The audit log page (owners and admins).
#[derive(Template, WebTemplate)]
#[template(path = "ui/audit.html")]
pub struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    actor: String,
    action: String,
    since: String,
    until: String,
    next: Option<String>,
    /// The verify button's answer: whether the chain holds, and what to say.
    verified: Option<(bool, String)>,
}

/// The audit page's query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC) or instant.
    since: Option<String>,
    /// To the end of this day, or before this instant.
    until: Option<String>,
    cursor: Option<String>,
}

async fn audit_page(
    state: &AppState,
    ui: &Ui,
    query: &AuditQuery,
    verified: Option<(bool, String)>,
) -> Result<Response, UiError> {
    let text = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let page = state
        .services
        .audit
        .list(
            &ui.caller,
            crate::service::audit::AuditQuery {
                actor: text(&query.actor),
                action: text(&query.action),
                since: date("since", query.since.as_deref(), false)?,
                until: date("until", query.until.as_deref(), true)?,
                cursor: text(&query.cursor),
                limit: Some(PAGE_SIZE as u64),
            },
        )
        .await?;
    let next = page.next_cursor.map(|cursor| {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("actor", &query.actor),
            ("action", &query.action),
            ("since", &query.since),
            ("until", &query.until),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(name, v);
            }
        }
        q.append_pair("cursor", &cursor);
        format!("{}/audit?{}", ui.site.base, q.finish())
    });
    Ok(AuditPage {
        chrome: Chrome::new(ui, "audit"),
        rows: page
            .entries
            .iter()
            .map(|e| AuditRow {
                at: time(Some(e.at)),
                actor: format!("{} {}", e.actor_kind, e.actor_label),
                address: e.address.clone().unwrap_or_default(),
                action: e.action.clone(),
                target: format!("{} {}", e.target_type, e.target_id),
                detail: e.detail.clone(),
            })
            .collect(),
        actor: query.actor.clone().unwrap_or_default(),
        action: query.action.clone().unwrap_or_default(),
        since: query.since.clone().unwrap_or_default(),
        until: query.until.clone().unwrap_or_default(),
        next,
        verified,
    }
    .into_response())
}

/// `GET /ui/audit`: `Audit::list`, newest first, which refuses members.
pub async fn audit(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, UiError> {
    audit_page(&state, &ui, &query, None).await
}

/// `POST /ui/audit/verify`: `Audit::verify` (the whole chain, as `GET /api/audit/verify`),
/// then the log with the answer. A POST: it reads every row, which no prefetch should start.
pub async fn verify_audit(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    use crate::store::ChainCheck;
    let verified = match state.services.audit.verify(&ui.caller).await? {
        ChainCheck::Intact {
            count,
            head_seq,
            head_hash,
        } => (
            true,
            format!(
                "The chain holds: {count} entries checked, head {head_seq} with hash {head_hash} (keep it elsewhere to compare later)."
            ),
        ),
        ChainCheck::Broken { count, seq, reason } => (
            false,
            format!("The chain is broken at entry {seq} ({count} sound before it): {reason}"),
        ),
    };
    audit_page(&state, &ui, &AuditQuery::default(), Some(verified)).await
}

/// `POST /ui/schedules/{id}/{action}`: `enable`, `disable` (`Schedules::update`), `run`
/// (`Schedules::run_now`, then the job's page) or `delete` (`Schedules::delete`).
pub async fn change_schedule(
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
                    crate::service::schedules::ScheduleFields {
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
pub struct ScheduleDraft {
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

    fn of(s: &crate::store::schedule::Model) -> Self {
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
    fn fields(&self) -> Result<crate::service::schedules::ScheduleFields, DomainError> {
        Ok(crate::service::schedules::ScheduleFields {
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
    ) -> Result<crate::service::schedules::ScheduleFields, DomainError> {
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
                    .is_some_and(|(_, v)| v == crate::service::schedules::SECRET_MASK)
            })
        {
            return Err(DomainError::BadRequest(format!(
                "params: a secret parameter shows as {}; type its value again to change what this schedule runs",
                crate::service::schedules::SECRET_MASK
            )));
        }
        let pick = |changed: bool| changed;
        Ok(crate::service::schedules::ScheduleFields {
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
pub struct SchedulePage {
    chrome: Chrome,
    id: Option<String>,
    draft: ScheduleDraft,
    fires: Vec<String>,
    error: Option<String>,
    timezones: &'static [&'static str],
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

fn schedule_page(
    state: &AppState,
    ui: &Ui,
    id: Option<String>,
    draft: ScheduleDraft,
    error: Option<String>,
) -> Response {
    let (fires, preview_error) = match next_fires(state, &draft.cron, &draft.timezone) {
        Ok(fires) => (fires, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    (
        status,
        SchedulePage {
            chrome: Chrome::new(ui, "schedules"),
            id,
            draft,
            fires,
            error: error.or(preview_error),
            timezones: TIMEZONES,
        },
    )
        .into_response()
}

/// `GET /ui/schedules/new`.
pub async fn new_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    Ok(schedule_page(&state, &ui, None, ScheduleDraft::new(), None))
}

/// `GET /ui/schedules/{id}`: its form, with its next fires in its time zone.
pub async fn schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let stored = state.services.schedules.get(&ui.caller, &id).await?;
    let draft = ScheduleDraft::of(&stored.schedule);
    Ok(schedule_page(&state, &ui, Some(id), draft, None))
}

/// A refusal to show on the form (bad input, a conflict), or an error page.
fn form_error(err: DomainError) -> Result<String, UiError> {
    match err {
        DomainError::BadRequest(why) | DomainError::TooLarge(why) => Ok(why),
        DomainError::Conflict { message, .. } => Ok(message),
        other => Err(other.into()),
    }
}

/// `POST /ui/schedules`: `Schedules::create`, or (the Preview button) the form again with
/// the pattern's next fires.
pub async fn create_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let draft = ScheduleDraft::from_form(&fields);
    if fields.get("preview").is_some() {
        return Ok(schedule_page(&state, &ui, None, draft, None));
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
        Err(err) => Ok(schedule_page(
            &state,
            &ui,
            None,
            draft,
            Some(form_error(err)?),
        )),
    }
}

/// `POST /ui/schedules/{id}`: `Schedules::update` with the fields that changed, or the
/// preview.
pub async fn update_schedule(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let draft = ScheduleDraft::from_form(&fields);
    if fields.get("preview").is_some() {
        return Ok(schedule_page(&state, &ui, Some(id), draft, None));
    }
    let service = &state.services.schedules;
    let stored = ScheduleDraft::of(&service.get(&ui.caller, &id).await?.schedule);
    let changed = match draft.changes(&stored) {
        Ok(changes) => service.update(&ui.caller, &id, changes).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match changed {
        Ok(()) => Ok(see_other(&format!("{}/schedules/{id}", ui.site.base))),
        Err(err) => Ok(schedule_page(
            &state,
            &ui,
            Some(id),
            draft,
            Some(form_error(err)?),
        )),
    }
}

/// The preview's query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PreviewQuery {
    cron: Option<String>,
    timezone: Option<String>,
}

/// `GET /ui/schedules/preview?cron=…&timezone=…`: the next fires as JSON, for the form's
/// script (`{"fires": [...]}` or `{"error": "..."}`; 200 either way, so the page shows why).
pub async fn preview_schedule(
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

/// A config field of an integration kind's form.
#[derive(Debug)]
pub struct KindField {
    name: &'static str,
    label: &'static str,
    /// Stored sealed and never shown back: a password field, left empty on a change.
    secret: bool,
    required: bool,
    placeholder: &'static str,
}

/// An integration kind and the fields its form asks (SPEC §11's table; the service checks
/// them, these only label them).
#[derive(Debug)]
pub struct KindForm {
    kind: &'static str,
    title: &'static str,
    fields: Vec<KindField>,
}

const fn field(
    name: &'static str,
    label: &'static str,
    secret: bool,
    required: bool,
    placeholder: &'static str,
) -> KindField {
    KindField {
        name,
        label,
        secret,
        required,
        placeholder,
    }
}

fn kind_forms() -> Vec<KindForm> {
    let url = |what: &'static str| field("url", what, true, true, "https://…");
    vec![
        KindForm {
            kind: "webhook",
            title: "Webhook (Standard Webhooks, signed)",
            fields: vec![
                field(
                    "url",
                    "URL",
                    false,
                    true,
                    "https://example.com/hooks/outpost",
                ),
                field(
                    "secret",
                    "Signing secret (whsec_…; empty: one is made)",
                    true,
                    false,
                    "whsec_…",
                ),
            ],
        },
        KindForm {
            kind: "slack",
            title: "Slack",
            fields: vec![url("Incoming webhook URL")],
        },
        KindForm {
            kind: "discord",
            title: "Discord",
            fields: vec![url("Webhook URL")],
        },
        KindForm {
            kind: "teams",
            title: "Microsoft Teams (Workflows)",
            fields: vec![url("Workflow URL")],
        },
        KindForm {
            kind: "pagerduty",
            title: "PagerDuty (Events v2)",
            fields: vec![
                field("routing_key", "Routing key", true, true, ""),
                field(
                    "url",
                    "Events URL (empty: PagerDuty's)",
                    false,
                    false,
                    "https://events.pagerduty.com/v2/enqueue",
                ),
            ],
        },
        KindForm {
            kind: "datadog",
            title: "Datadog",
            fields: vec![
                field("api_key", "API key", true, true, ""),
                field("site", "Site", false, false, "datadoghq.com"),
                field("url", "Or an API URL", false, false, ""),
            ],
        },
        KindForm {
            kind: "splunk",
            title: "Splunk (HTTP Event Collector)",
            fields: vec![
                field(
                    "url",
                    "HEC URL",
                    false,
                    true,
                    "https://splunk.example.com:8088",
                ),
                field("token", "HEC token", true, true, ""),
            ],
        },
        KindForm {
            kind: "email",
            title: "Email",
            fields: vec![field(
                "to",
                "Recipients (comma-separated)",
                false,
                true,
                "ops@example.com",
            )],
        },
    ]
}

/// An integration as a row, its config as shown (secret fields masked by the service).
#[derive(Debug)]
pub struct IntegrationRow {
    id: String,
    name: String,
    kind: String,
    events: String,
    enabled: bool,
    notify_after: i32,
    config: Vec<(String, String)>,
    created: String,
}

impl IntegrationRow {
    fn of(row: &crate::store::integration::Model) -> Self {
        let config = row
            .config
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            Value::Array(items) => items
                                .iter()
                                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                                .collect::<Vec<_>>()
                                .join(", "),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: row.kind.clone(),
            events: string_list(&row.events).join(", "),
            enabled: row.enabled,
            notify_after: row.notify_after,
            config,
            created: time(Some(row.created_at)),
        }
    }
}

/// The integrations page (owners and admins).
#[derive(Template, WebTemplate)]
#[template(path = "ui/integrations.html")]
pub struct IntegrationsPage {
    chrome: Chrome,
    rows: Vec<IntegrationRow>,
    kinds: Vec<KindForm>,
    error: Option<String>,
    /// The kind whose form failed, opened again.
    open: String,
}

async fn integrations_page(
    state: &AppState,
    ui: &Ui,
    error: Option<(String, String)>,
) -> Result<Response, UiError> {
    let rows = state.services.integrations.list(&ui.caller).await?;
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    let (open, error) = match error {
        Some((kind, why)) => (kind, Some(why)),
        None => (String::new(), None),
    };
    Ok((
        status,
        IntegrationsPage {
            chrome: Chrome::new(ui, "integrations"),
            rows: rows.iter().map(IntegrationRow::of).collect(),
            kinds: kind_forms(),
            error,
            open,
        },
    )
        .into_response())
}

/// `GET /ui/integrations`: `Integrations::list`, which refuses members.
pub async fn integrations(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    integrations_page(&state, &ui, None).await
}

/// `POST /ui/integrations`: `Integrations::create` with the kind's fields; a refusal is shown
/// on the page with that kind's form open.
pub async fn create_integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    let kind = fields.text("kind").unwrap_or_default();
    let Some(form) = kind_forms().into_iter().find(|k| k.kind == kind) else {
        return Err(DomainError::BadRequest(format!("kind: no integration kind {kind:?}")).into());
    };
    let mut config = serde_json::Map::new();
    for f in &form.fields {
        let Some(value) = fields.text(f.name) else {
            continue;
        };
        let value = if f.name == "to" {
            Value::from(list(Some(value)).unwrap_or_default())
        } else {
            Value::String(value)
        };
        config.insert(f.name.to_owned(), value);
    }
    let notify_after = match fields.text("notify_after") {
        None => None,
        Some(n) => Some(n.parse::<i32>().map_err(|_| {
            DomainError::BadRequest(format!("notify_after: {n:?} is not a number"))
        })?),
    };
    let made = state
        .services
        .integrations
        .create(
            &ui.caller,
            crate::service::integrations::IntegrationFields {
                name: fields.text("name"),
                kind: Some(kind.clone()),
                config: Some(Value::Object(config)),
                events: Some(list(fields.text("events")).unwrap_or_default()),
                filter: None,
                enabled: Some(true),
                notify_after,
            },
        )
        .await;
    match made {
        Ok(row) => Ok(see_other(&format!(
            "{}/integrations/{}",
            ui.site.base, row.id
        ))),
        Err(err) => integrations_page(&state, &ui, Some((kind, form_error(err)?))).await,
    }
}

/// A delivery as a row of an integration's log, with its attempts.
#[derive(Debug)]
pub struct DeliveryRow {
    created: String,
    event: String,
    status: String,
    attempts: Vec<AttemptRow>,
}

/// One attempt of a delivery: what the provider answered.
#[derive(Debug)]
pub struct AttemptRow {
    at: String,
    code: String,
    duration_ms: i64,
    answer: String,
    error: String,
}

/// The longest part of a provider's answer shown.
const ANSWER_CHARS: usize = 300;

fn clip(text: &str) -> String {
    match text.char_indices().nth(ANSWER_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The test button's result: the provider's real answer.
#[derive(Debug)]
pub struct TestResult {
    ok: bool,
    code: String,
    duration_ms: i64,
    /// What the provider's body said (clipped).
    answer: String,
    /// What the server made of it.
    error: String,
}

/// One integration's page: its config (secrets masked), test, delivery log.
#[derive(Template, WebTemplate)]
#[template(path = "ui/integration.html")]
pub struct IntegrationPage {
    chrome: Chrome,
    row: IntegrationRow,
    deliveries: Vec<DeliveryRow>,
    test: Option<TestResult>,
}

async fn integration_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    test: Option<TestResult>,
) -> Result<Response, UiError> {
    let service = &state.services.integrations;
    let row = service.get(&ui.caller, id).await?;
    let log = service.deliveries(&ui.caller, id, None, 50).await?;
    let deliveries = log
        .iter()
        .map(|(d, attempts)| DeliveryRow {
            created: time(Some(d.created_at)),
            event: d.event_id.clone(),
            status: d.status.clone(),
            attempts: attempts
                .iter()
                .map(|a| AttemptRow {
                    at: time(Some(a.at)),
                    code: a.status_code.map(|c| c.to_string()).unwrap_or_default(),
                    duration_ms: a.duration_ms,
                    answer: clip(a.response.as_deref().unwrap_or_default()),
                    error: a.error.clone().unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    Ok(IntegrationPage {
        chrome: Chrome::new(ui, "integrations"),
        row: IntegrationRow::of(&row),
        deliveries,
        test,
    }
    .into_response())
}

/// `GET /ui/integrations/{id}`.
pub async fn integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    integration_page(&state, &ui, &id, None).await
}

/// `POST /ui/integrations/{id}/{action}`: `test` (`Integrations::test`: the page again with
/// the provider's answer), `enable`, `disable` (`Integrations::update`) or `delete`.
pub async fn change_integration(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let service = &state.services.integrations;
    match action.as_str() {
        "test" => {
            let report = service.test(&ui.caller, &id).await?;
            let a = &report.attempt;
            let test = TestResult {
                ok: report.ok,
                code: a.status_code.map(|c| c.to_string()).unwrap_or_default(),
                duration_ms: a.duration_ms,
                answer: clip(a.response.as_deref().unwrap_or_default()),
                error: a.error.clone().unwrap_or_default(),
            };
            integration_page(&state, &ui, &id, Some(test)).await
        }
        "enable" | "disable" => {
            service
                .update(
                    &ui.caller,
                    &id,
                    crate::service::integrations::IntegrationFields {
                        enabled: Some(action == "enable"),
                        ..Default::default()
                    },
                )
                .await?;
            Ok(see_other(&format!("{}/integrations/{id}", ui.site.base)))
        }
        "delete" => {
            service.delete(&ui.caller, &id).await?;
            Ok(see_other(&format!("{}/integrations", ui.site.base)))
        }
        other => Err(DomainError::NotFound(format!(
            "no action {other:?}: test, enable, disable or delete"
        ))
        .into()),
    }
}

/// An API key as a row.
#[derive(Debug)]
pub struct ApiKeyRow {
    id: String,
    name: String,
    role: String,
    scopes: String,
    created: String,
    expires: String,
}

/// An API key just made: its secret, shown once.
#[derive(Debug)]
pub struct CreatedApiKey {
    name: String,
    secret: String,
}

/// The API keys page: the caller's keys (an owner's: every key of the tenant).
#[derive(Template, WebTemplate)]
#[template(path = "ui/api_keys.html")]
pub struct ApiKeysPage {
    chrome: Chrome,
    rows: Vec<ApiKeyRow>,
    created: Option<CreatedApiKey>,
    /// Roles the caller may give a key: theirs and below.
    roles: Vec<&'static str>,
    scopes: Vec<&'static str>,
    error: Option<String>,
}

async fn api_keys_page(
    state: &AppState,
    ui: &Ui,
    created: Option<CreatedApiKey>,
    error: Option<String>,
) -> Result<Response, UiError> {
    use crate::domain::{Role, Scope};
    let keys = state.services.api_keys.list(&ui.caller).await?;
    let rows = keys
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| ApiKeyRow {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            scopes: crate::service::api_keys::scopes_of(k).join(", "),
            created: time(Some(k.created_at)),
            expires: time(k.expires_at),
        })
        .collect();
    let status = if error.is_some() {
        axum::http::StatusCode::BAD_REQUEST
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        ApiKeysPage {
            chrome: Chrome::new(ui, "api-keys"),
            rows,
            created,
            roles: [Role::Member, Role::Admin, Role::Owner]
                .into_iter()
                .filter(|r| ui.caller.role.at_least(*r))
                .map(Role::as_str)
                .collect(),
            scopes: Scope::ALL.iter().map(|s| s.as_str()).collect(),
            error,
        },
    )
        .into_response())
}

/// `GET /ui/api-keys`.
pub async fn api_keys(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
) -> Result<Response, UiError> {
    api_keys_page(&state, &ui, None, None).await
}

/// `POST /ui/api-keys`: `ApiKeys::create` with a role (at most the caller's), scopes and an
/// expiry (a day; empty: `--max-key-days`); the secret is shown once.
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
) -> Result<Response, UiError> {
    use crate::domain::{Role, Scope};
    let parsed = (|| -> Result<crate::service::api_keys::NewKey, DomainError> {
        let role = match fields.text("role") {
            None => None,
            Some(r) => Some(r.parse::<Role>().map_err(|_| {
                DomainError::BadRequest(format!("role: member, admin or owner, not {r:?}"))
            })?),
        };
        let scopes = fields
            .0
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| {
                v.parse::<Scope>()
                    .map_err(|_| DomainError::BadRequest(format!("scopes: no scope {v:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::service::api_keys::NewKey {
            name: fields.text("name").unwrap_or_default(),
            scopes,
            expires_at: date("expires", fields.text("expires").as_deref(), true)?,
            role,
        })
    })();
    let made = match parsed {
        Ok(new) => state.services.api_keys.create(&ui.caller, new).await,
        Err(e) => Err(e),
    };
    match made {
        Ok((key, secret)) => {
            let created = CreatedApiKey {
                name: key.name,
                secret,
            };
            api_keys_page(&state, &ui, Some(created), None).await
        }
        Err(err) => api_keys_page(&state, &ui, None, Some(form_error(err)?)).await,
    }
}

/// `POST /ui/api-keys/{id}/revoke`: `ApiKeys::delete`.
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    state.services.api_keys.delete(&ui.caller, &id).await?;
    Ok(see_other(&format!("{}/api-keys", ui.site.base)))
}

/// An invite just made: the token, shown once.
#[derive(Debug)]
pub struct InviteShown {
    email: String,
    token: String,
    expires: String,
}

/// `POST /ui/users`: `Users::create` (owners): the user and their invite, shown once.
pub async fn invite_user(
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

fn parse_role(text: Option<String>) -> Result<crate::domain::Role, DomainError> {
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|_| DomainError::BadRequest(format!("role: member, admin or owner, not {text:?}")))
}

/// `POST /ui/users/{id}/role`: `Users::update` with the new role (owners).
pub async fn change_user_role(
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
            crate::service::users::UserPatch {
                role: Some(role),
                disabled: None,
            },
        )
        .await?;
    Ok(see_other(&format!("{}/users", ui.site.base)))
}

/// `POST /ui/agents/{id}/tags`: `Agents::set_tags` with the operator's tags (admins).
pub async fn set_agent_tags(
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
pub async fn control_agent(
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
