//! One job's page (CONTRACT.md §16): a job over thousands of agents read as one answer.
//!
//! Nothing on it grows with the number of runs: the summary (counts by state and exit code,
//! durations) and the groups of runs with the same result are the database's few `GROUP BY`s
//! (`Jobs::summary`), the runs are a page of [`PAGE_SIZE`] under the filters the chips and the
//! host name box set (`Jobs::runs`, by cursor), and one run's output is shown only when asked
//! for (`?run=`, or the only run of a job of one). While the job runs, `live.rs` sends the
//! summary again when the job changes (at most once a second) and one run's output as it
//! comes; `ui.js` draws them, compares two runs' output and keeps the table's rows current.
//!
//! Re-running (failed or ticked runs) is `Jobs::rerun` behind a form; its buttons are shown
//! only to a caller who may run the job's command, and the service refuses the others anyway.

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::jobs::JobRow;
use super::{Chrome, run_duration};
use crate::api::AppState;
use crate::api::{Path, Query};
use crate::ui::forms::Fields;
use crate::ui::{PAGE_SIZE, Ui, UiError, see_other};
use outpost_core::service::commands::CommandSpec;
use outpost_core::service::jobs::{RerunWhich, RunsRequest};
use outpost_protocol::commands;
use outpost_store::domain::{CommandState, DomainError, Role};
use outpost_store::{RunRow, job};

/// The job page's query: the runs table's filters and cursor, the groups' masking, the run
/// whose output is open, and what a rerun left out (`skipped`, after its redirect).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct JobQuery {
    status: Option<String>,
    exit_code: Option<String>,
    group: Option<String>,
    mask: Option<String>,
    hostname: Option<String>,
    cursor: Option<String>,
    run: Option<String>,
    skipped: Option<String>,
}

impl JobQuery {
    fn text(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    fn masked(&self) -> bool {
        Self::text(&self.mask) == Some("numbers")
    }

    /// The service's request for the table's page.
    fn runs_request(&self) -> Result<RunsRequest, DomainError> {
        let exit_code = match Self::text(&self.exit_code) {
            None => None,
            Some(code) => Some(code.parse::<i32>().map_err(|_| {
                DomainError::BadRequest(format!("exit_code: {code:?} is not an exit code"))
            })?),
        };
        let own = |v: &Option<String>| Self::text(v).map(str::to_owned);
        Ok(RunsRequest {
            status: own(&self.status),
            exit_code,
            group: own(&self.group),
            masked: self.masked(),
            hostname: own(&self.hostname),
            cursor: own(&self.cursor),
            limit: Some(PAGE_SIZE as u64),
            ..RunsRequest::default()
        })
    }

    /// The filters as a query string, with `changes` applied (`None` removes one); never the
    /// cursor, the open run or a rerun's note.
    fn query(&self, changes: &[(&str, Option<&str>)]) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("status", &self.status),
            ("exit_code", &self.exit_code),
            ("group", &self.group),
            ("mask", &self.mask),
            ("hostname", &self.hostname),
        ] {
            let value = match changes.iter().find(|(n, _)| *n == name) {
                Some((_, changed)) => *changed,
                None => Self::text(value),
            };
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                q.append_pair(name, value);
            }
        }
        q.finish()
    }
}

/// A count the page shows as a filter chip: a state or an exit code, how many runs, the link
/// that filters the table to them, and whether the table is filtered so now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Chip {
    key: String,
    n: i64,
    href: String,
    active: bool,
}

/// A group of runs with the same result: its output shown once.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupLine {
    key: String,
    count: i64,
    state: String,
    exit_code: String,
    error: String,
    first_line: String,
    last_line: String,
    /// The host of the group's first run, and its agent.
    hostname: String,
    agent_id: String,
    /// The table filtered to this group.
    href: String,
}

/// What the summary bar and the groups show; the same JSON goes to `ui.js` when it changes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SummaryLine {
    /// The job's status.
    pub(crate) status: String,
    total: i64,
    finished: i64,
    by_status: Vec<Chip>,
    by_exit_code: Vec<Chip>,
    p50: String,
    p90: String,
    max: String,
    groups: Vec<GroupLine>,
    group_count: i64,
    /// Whether there are more groups than listed.
    more: bool,
    /// Finished runs not grouped yet.
    pub(crate) undigested: i64,
    masked: bool,
    /// The groups with the other masking.
    mask_href: String,
    /// Runs that failed (what "Re-run failed" repeats).
    failed: i64,
}

impl SummaryLine {
    /// Whether nothing more will change: the job is over and every run is grouped.
    pub(crate) fn settled(&self) -> bool {
        self.status != "running" && self.undigested == 0
    }
}

/// A run as a row of the table (and as the open run's heading).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunLine {
    id: String,
    agent_id: String,
    /// The agent's host name, or its id once the agent is forgotten.
    hostname: String,
    state: String,
    exit_code: String,
    duration: String,
    error: String,
    bytes: i64,
    /// Whether the run will change no more.
    done: bool,
}

impl RunLine {
    fn of(row: &RunRow) -> Self {
        let run = &row.run;
        Self {
            id: run.id.clone(),
            agent_id: run.agent_id.clone(),
            hostname: row.hostname.clone().unwrap_or_else(|| run.agent_id.clone()),
            state: run.state.clone(),
            exit_code: run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            duration: run_duration(run).unwrap_or_default(),
            error: run.error_message.clone().unwrap_or_default(),
            bytes: run.stdout_bytes + run.stderr_bytes,
            done: CommandState::is_final_text(&run.state),
        }
    }
}

/// Milliseconds as the page writes durations (as `run_duration` does).
fn seconds(ms: Option<i64>) -> String {
    ms.map(|ms| format!("{:.1} s", ms.max(0) as f64 / 1000.0))
        .unwrap_or_else(|| "–".to_owned())
}

/// The job's summary as the page shows it, under the page's query (its links keep the
/// table's other filters).
pub(crate) async fn summary_line(
    state: &AppState,
    ui: &Ui,
    id: &str,
    query: &JobQuery,
) -> Result<(SummaryLine, job::Model), UiError> {
    let masked = query.masked();
    let summary = state.services.jobs.summary(&ui.caller, id, masked).await?;
    let digest = &summary.digest;
    let page = format!("{}/jobs/{}", ui.site.base, summary.job.id);
    let link = |changes: &[(&str, Option<&str>)]| {
        let q = query.query(changes);
        if q.is_empty() {
            format!("{page}#runs")
        } else {
            format!("{page}?{q}#runs")
        }
    };
    let status = JobQuery::text(&query.status);
    let code = JobQuery::text(&query.exit_code);
    let mut by_status: Vec<Chip> = digest
        .by_status
        .iter()
        .map(|(state, n)| Chip {
            key: state.clone(),
            n: *n,
            href: link(&[("status", Some(state)), ("group", None)]),
            active: status == Some(state.as_str()),
        })
        .collect();
    // Most first, then by name: the chips keep their places while counts change little.
    by_status.sort_by(|a, b| b.n.cmp(&a.n).then_with(|| a.key.cmp(&b.key)));
    let by_exit_code = digest
        .by_exit_code
        .iter()
        .map(|(c, n)| {
            let key = c.to_string();
            Chip {
                href: link(&[("exit_code", Some(&key)), ("group", None)]),
                active: code == Some(key.as_str()),
                key,
                n: *n,
            }
        })
        .collect();
    let total = digest.by_status.iter().map(|(_, n)| n).sum();
    let finished = digest
        .by_status
        .iter()
        .filter(|(s, _)| CommandState::is_final_text(s))
        .map(|(_, n)| n)
        .sum();
    let failed = digest
        .by_status
        .iter()
        .filter(|(s, _)| s == "failed")
        .map(|(_, n)| n)
        .sum();
    let groups = digest
        .groups
        .iter()
        .map(|group| {
            let sample = &group.sample;
            let lines = sample.digest.as_ref();
            GroupLine {
                key: group.key.clone(),
                count: group.count,
                state: sample.run.state.clone(),
                exit_code: sample
                    .run
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                error: match (&sample.run.error_code, &sample.run.error_message) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(code), None) => code.clone(),
                    (None, Some(message)) => message.clone(),
                    (None, None) => String::new(),
                },
                first_line: lines.and_then(|d| d.first_line.clone()).unwrap_or_default(),
                last_line: lines.and_then(|d| d.last_line.clone()).unwrap_or_default(),
                hostname: sample
                    .hostname
                    .clone()
                    .unwrap_or_else(|| sample.run.agent_id.clone()),
                agent_id: sample.run.agent_id.clone(),
                href: link(&[
                    ("group", Some(&group.key)),
                    ("status", None),
                    ("exit_code", None),
                ]),
            }
        })
        .collect();
    let mask_href = {
        let q = query.query(&[("mask", (!masked).then_some("numbers")), ("group", None)]);
        if q.is_empty() {
            format!("{page}#groups")
        } else {
            format!("{page}?{q}#groups")
        }
    };
    let line = SummaryLine {
        status: summary.job.status.clone(),
        total,
        finished,
        by_status,
        by_exit_code,
        p50: seconds(digest.p50_ms),
        p90: seconds(digest.p90_ms),
        max: seconds(digest.max_ms),
        groups,
        group_count: digest.group_count,
        more: digest.group_count > digest.groups.len() as i64,
        undigested: digest.undigested,
        masked,
        mask_href,
        failed,
    };
    Ok((line, summary.job))
}

/// Whether the caller may run `job`'s command again (as `commands::authorize` decides for a
/// new job: control commands need an admin, a forced update an owner). The service checks
/// again on the rerun itself.
fn may_rerun(ui: &Ui, job: &job::Model) -> bool {
    let Ok(spec) = CommandSpec::new(job.command.clone(), Some(job.data.clone()), None, None) else {
        return false;
    };
    if spec.command == commands::UPDATE && spec.update_force {
        return ui.caller.role.at_least(Role::Owner);
    }
    if matches!(
        spec.command.as_str(),
        commands::RESTART | commands::UPDATE | commands::REDEPLOY
    ) {
        return ui.caller.role.at_least(Role::Admin);
    }
    true
}

/// One job's page.
#[derive(Template, WebTemplate)]
#[template(path = "ui/job.html")]
struct JobPage {
    chrome: Chrome,
    row: JobRow,
    target: String,
    params: String,
    rerun_of: Option<String>,
    summary: SummaryLine,
    running: bool,
    may_rerun: bool,
    /// The table's rows and the link to its next page.
    runs: Vec<RunLine>,
    next: Option<String>,
    /// The table's first page, when this is not it.
    first: Option<String>,
    /// The filters, as typed.
    hostname: String,
    group: String,
    filtered: bool,
    clear_href: String,
    /// `?<filters>` for the live updates and the table's refresh.
    live_query: String,
    /// The run whose output is open.
    open: Option<RunLine>,
    error: Option<String>,
    skipped: Option<u64>,
}

/// `GET /ui/jobs/{id}`.
pub(crate) async fn job(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, UiError> {
    job_page(&state, &ui, &id, &query, None).await
}

async fn job_page(
    state: &AppState,
    ui: &Ui,
    id: &str,
    query: &JobQuery,
    error: Option<String>,
) -> Result<Response, UiError> {
    let jobs = &state.services.jobs;
    let (summary, job) = summary_line(state, ui, id, query).await?;
    let mut error = error;
    // A bad filter shows the page with what was wrong, not an error page.
    let (rows, next) = match query.runs_request() {
        Ok(request) => match jobs.runs(&ui.caller, id, request).await {
            Ok(page) => page,
            Err(DomainError::BadRequest(why)) => {
                error.get_or_insert(why);
                (Vec::new(), None)
            }
            Err(err) => return Err(err.into()),
        },
        Err(DomainError::BadRequest(why)) => {
            error.get_or_insert(why);
            (Vec::new(), None)
        }
        Err(err) => return Err(err.into()),
    };
    let runs: Vec<RunLine> = rows.iter().map(RunLine::of).collect();
    let open = match JobQuery::text(&query.run) {
        Some(run_id) => match runs.iter().find(|r| r.id == run_id) {
            Some(line) => Some(line.clone()),
            None => Some(open_run(state, ui, id, run_id).await?),
        },
        // A job of one run shows its output at once, as before there were fleets.
        None if summary.total == 1 => match runs.first() {
            Some(line) => Some(line.clone()),
            None => {
                let (rows, _) = jobs
                    .runs(
                        &ui.caller,
                        id,
                        RunsRequest {
                            limit: Some(1),
                            ..RunsRequest::default()
                        },
                    )
                    .await?;
                rows.first().map(RunLine::of)
            }
        },
        None => None,
    };
    let page = format!("{}/jobs/{}", ui.site.base, job.id);
    let filters = query.query(&[]);
    let with = |extra: Option<(&str, &str)>| {
        let mut q = filters.clone();
        if let Some((name, value)) = extra {
            let pair = url::form_urlencoded::Serializer::new(String::new())
                .append_pair(name, value)
                .finish();
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&pair);
        }
        if q.is_empty() {
            format!("{page}#runs")
        } else {
            format!("{page}?{q}#runs")
        }
    };
    let params = job
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
    let running = job.status == "running";
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let failed = usize::try_from(summary.failed).unwrap_or(0);
    let page = JobPage {
        chrome: Chrome::new(ui, "jobs"),
        row: JobRow::with(&job, usize::try_from(summary.total).unwrap_or(0), failed),
        target: job.target.to_string(),
        params,
        rerun_of: job.rerun_of.clone(),
        may_rerun: may_rerun(ui, &job),
        running,
        next: next.as_deref().map(|c| with(Some(("cursor", c)))),
        first: JobQuery::text(&query.cursor).map(|_| with(None)),
        hostname: JobQuery::text(&query.hostname)
            .unwrap_or_default()
            .to_owned(),
        group: JobQuery::text(&query.group).unwrap_or_default().to_owned(),
        filtered: !query.query(&[("mask", None)]).is_empty(),
        clear_href: {
            let q = query.query(&[
                ("status", None),
                ("exit_code", None),
                ("group", None),
                ("hostname", None),
            ]);
            if q.is_empty() {
                format!(
                    "{page}#runs",
                    page = format_args!("{}/jobs/{}", ui.site.base, job.id)
                )
            } else {
                format!("{}/jobs/{}?{q}#runs", ui.site.base, job.id)
            }
        },
        live_query: {
            let mut q = filters.clone();
            if let Some(cursor) = JobQuery::text(&query.cursor) {
                let pair = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("cursor", cursor)
                    .finish();
                if !q.is_empty() {
                    q.push('&');
                }
                q.push_str(&pair);
            }
            if q.is_empty() { q } else { format!("?{q}") }
        },
        summary,
        runs,
        open,
        error,
        skipped: JobQuery::text(&query.skipped).and_then(|s| s.parse().ok()),
    };
    Ok((status, page).into_response())
}

/// The run `run_id` of the job as a row, with its host name.
async fn open_run(state: &AppState, ui: &Ui, id: &str, run_id: &str) -> Result<RunLine, UiError> {
    let jobs = &state.services.jobs;
    let run = jobs.run_of(&ui.caller, id, run_id).await?;
    let (rows, _) = jobs
        .runs(
            &ui.caller,
            id,
            RunsRequest {
                agent_id: Some(run.agent_id.clone()),
                limit: Some(10),
                ..RunsRequest::default()
            },
        )
        .await?;
    Ok(match rows.iter().find(|r| r.run.id == run.id) {
        Some(row) => RunLine::of(row),
        None => RunLine::of(&RunRow {
            run,
            hostname: None,
            digest: None,
        }),
    })
}

/// `GET /ui/jobs/{id}/runs`: the table's page under the page's filters, as JSON
/// (`{rows, next}`), for `ui.js` to redraw the rows while the job runs.
pub(crate) async fn runs(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, UiError> {
    let (rows, next) = state
        .services
        .jobs
        .runs(&ui.caller, &id, query.runs_request()?)
        .await?;
    let rows: Vec<RunLine> = rows.iter().map(RunLine::of).collect();
    Ok(axum::Json(serde_json::json!({"rows": rows, "next": next})).into_response())
}

/// `GET /ui/jobs/{id}/export?format=csv|jsonl`: the API's export, with the session.
pub(crate) async fn export(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, UiError> {
    Ok(crate::api::results::export_of(&state, &ui.caller, &id, query.format.as_deref()).await?)
}

/// The export's format.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ExportQuery {
    format: Option<String>,
}

/// `POST /ui/jobs/{id}/rerun`: `runs=failed` (or `not_succeeded`, `all`), or the ticked
/// `run` fields; then the new job's page, saying how many runs were left out. A refusal the
/// form can explain (nothing to re-run, a bad list) shows the job's page with it.
pub(crate) async fn rerun(
    State(state): State<AppState>,
    Extension(ui): Extension<Ui>,
    Extension(fields): Extension<Fields>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let which = match fields.get("runs") {
        Some("failed") => RerunWhich::Failed,
        Some("not_succeeded") => RerunWhich::NotSucceeded,
        Some("all") => RerunWhich::All,
        _ => {
            let ids: Vec<String> = fields
                .0
                .iter()
                .filter(|(name, _)| name == "run")
                .map(|(_, value)| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .collect();
            if ids.is_empty() {
                let why = "runs: tick the runs to re-run in the table first".to_owned();
                return job_page(&state, &ui, &id, &JobQuery::default(), Some(why)).await;
            }
            RerunWhich::Runs(ids)
        }
    };
    match state.services.jobs.rerun(&ui.caller, &id, which).await {
        Ok(rerun) => {
            let mut to = format!("{}/jobs/{}", ui.site.base, rerun.job.job.id);
            if !rerun.skipped.is_empty() {
                to.push_str(&format!("?skipped={}", rerun.skipped.len()));
            }
            Ok(see_other(&to))
        }
        Err(
            DomainError::BadRequest(why)
            | DomainError::TooLarge(why)
            | DomainError::Unprocessable(why),
        ) => job_page(&state, &ui, &id, &JobQuery::default(), Some(why)).await,
        Err(
            DomainError::Invalid { code, message }
            | DomainError::Conflict { code, message }
            | DomainError::Refused { code, message },
        ) => {
            let why = format!("{code}: {message}");
            job_page(&state, &ui, &id, &JobQuery::default(), Some(why)).await
        }
        Err(other) => Err(other.into()),
    }
}
