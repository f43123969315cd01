//! Fleet results (CONTRACT.md §16): a job over many agents read as one answer.
//! `GET /api/jobs/{id}/summary`, `/runs` (paged, filtered), `/export` (CSV or JSON lines,
//! streamed) and `POST /api/jobs/{id}/rerun`. The figures are the database's
//! (`outpost_store::digests`), the rules the service's (`outpost_core::service::jobs`); these
//! handlers parse and serialise.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::jobs::{JobView, RunView};
use super::{ApiJson, Path, Query};
use crate::api::{AppState, Authorized};
use crate::http_error::{ErrorDetail, HttpError};
use outpost_core::service::jobs::{Rerun, RerunWhich, RunsRequest, Summary};
use outpost_store::RunRow;
use outpost_store::domain::{DomainError, JobState};

/// A run as a summary names it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunBrief {
    /// Run id.
    pub run_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's host name (null once the agent is forgotten).
    pub hostname: Option<String>,
    /// Where it stands.
    #[schema(value_type = outpost_store::domain::CommandState)]
    pub status: String,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: Option<i64>,
}

impl From<&RunRow> for RunBrief {
    fn from(row: &RunRow) -> Self {
        Self {
            run_id: row.run.id.clone(),
            agent_id: row.run.agent_id.clone(),
            hostname: row.hostname.clone(),
            status: row.run.state.clone(),
            exit_code: row.run.exit_code,
            duration_ms: row
                .digest
                .as_ref()
                .and_then(|d| d.duration_ms)
                .or_else(|| outpost_core::digest::run_duration_ms(&row.run)),
        }
    }
}

/// Runs that ended the same way with the same output.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// The group's key: `GET /api/jobs/{id}/runs?group=KEY` lists its runs.
    pub key: String,
    /// Runs in it.
    pub count: i64,
    /// Their state.
    #[schema(value_type = outpost_store::domain::CommandState)]
    pub status: String,
    /// Their exit code.
    pub exit_code: Option<i32>,
    /// Why they did not succeed (the sample's error).
    pub error: Option<ErrorDetail>,
    /// The output's first non-empty line (stdout's, or stderr's when stdout is empty).
    pub first_line: Option<String>,
    /// Its last non-empty line.
    pub last_line: Option<String>,
    /// One of its runs (the first made).
    pub sample: RunBrief,
}

/// Percentiles of the runs' durations.
#[derive(Debug, Serialize, ToSchema)]
pub struct Durations {
    /// Median.
    pub p50: Option<i64>,
    /// 90th percentile.
    pub p90: Option<i64>,
    /// Longest.
    pub max: Option<i64>,
}

/// `GET /api/jobs/{id}/summary`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryView {
    /// The job.
    pub job_id: String,
    /// Where it stands.
    #[schema(value_type = outpost_store::domain::JobState)]
    pub status: String,
    /// The job this one re-runs.
    pub rerun_of: Option<String>,
    /// Runs in all.
    pub total: i64,
    /// Runs by state.
    pub by_status: BTreeMap<String, i64>,
    /// Runs that reported an exit code, by code.
    pub by_exit_code: BTreeMap<String, i64>,
    /// Durations in milliseconds of the finished runs.
    pub duration_ms: Durations,
    /// The longest runs, longest first (at most 5).
    pub slowest: Vec<RunBrief>,
    /// The groups, largest first (at most 100).
    pub groups: Vec<GroupView>,
    /// Groups in all (more than `groups` lists when over 100).
    pub group_count: i64,
    /// Groups are of output with digits masked (`?mask=numbers`).
    pub masked: bool,
    /// Finished runs not yet in a group: their output is being fingerprinted (a moment after
    /// they end).
    pub undigested: i64,
}

impl From<Summary> for SummaryView {
    fn from(
        Summary {
            job,
            digest,
            masked,
        }: Summary,
    ) -> Self {
        let by_status: BTreeMap<String, i64> = digest.by_status.iter().cloned().collect();
        Self {
            job_id: job.id,
            status: job.status,
            rerun_of: job.rerun_of,
            total: by_status.values().sum(),
            by_status,
            by_exit_code: digest
                .by_exit_code
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            duration_ms: Durations {
                p50: digest.p50_ms,
                p90: digest.p90_ms,
                max: digest.max_ms,
            },
            slowest: digest.slowest.iter().map(RunBrief::from).collect(),
            groups: digest
                .groups
                .into_iter()
                .map(|group| {
                    let sample = &group.sample;
                    let digest = sample.digest.as_ref();
                    GroupView {
                        key: group.key,
                        count: group.count,
                        status: sample.run.state.clone(),
                        exit_code: sample.run.exit_code,
                        error: error_of(&sample.run),
                        first_line: digest.and_then(|d| d.first_line.clone()),
                        last_line: digest.and_then(|d| d.last_line.clone()),
                        sample: RunBrief::from(sample),
                    }
                })
                .collect(),
            group_count: digest.group_count,
            masked,
            undigested: digest.undigested,
        }
    }
}

fn error_of(run: &outpost_store::command::Model) -> Option<ErrorDetail> {
    run.error_code.as_ref().map(|code| ErrorDetail {
        code: code.clone(),
        message: run.error_message.clone().unwrap_or_default(),
    })
}

/// A run of `/runs`: as in `GET /api/jobs/{id}`, with its group and the first and last line
/// of its output.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunRowView {
    /// The run.
    #[serde(flatten)]
    pub run: RunView,
    /// Its group's key (null until its output is fingerprinted).
    pub group: Option<String>,
    /// Its group's key with digits masked.
    pub masked_group: Option<String>,
    /// The output's first non-empty line.
    pub first_line: Option<String>,
    /// Its last non-empty line.
    pub last_line: Option<String>,
}

impl From<RunRow> for RunRowView {
    fn from(row: RunRow) -> Self {
        let digest = row.digest;
        let mut run = RunView::from(row.run);
        run.hostname = row.hostname;
        if let Some(d) = &digest
            && d.duration_ms.is_some()
        {
            run.duration_ms = d.duration_ms;
        }
        Self {
            run,
            group: digest.as_ref().map(|d| d.group_key.clone()),
            masked_group: digest.as_ref().map(|d| d.masked_key.clone()),
            first_line: digest.as_ref().and_then(|d| d.first_line.clone()),
            last_line: digest.and_then(|d| d.last_line),
        }
    }
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    /// In the order they were made.
    pub items: Vec<RunRowView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `?mask=numbers`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SummaryQuery {
    /// `numbers`: group outputs that differ only in digits.
    #[param(value_type = Option<crate::api::doc::Mask>, nullable = false)]
    pub mask: Option<String>,
}

/// Filters of `GET /api/jobs/{id}/runs`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RunsQuery {
    /// Runs in this state, or `not_succeeded` (every finished run that did not succeed).
    #[param(value_type = Option<crate::api::doc::RunStatusFilter>, nullable = false)]
    pub status: Option<String>,
    /// Runs that ended with this exit code.
    #[param(nullable = false)]
    pub exit_code: Option<i32>,
    /// Runs of this group (a `key` from the summary; with `mask=numbers`, of the masked
    /// summary).
    #[param(value_type = Option<crate::api::doc::GroupKey>, nullable = false)]
    pub group: Option<String>,
    /// `numbers`: `group` is a key of the masked summary.
    #[param(value_type = Option<crate::api::doc::Mask>, nullable = false)]
    pub mask: Option<String>,
    /// The run of this agent.
    #[param(value_type = Option<crate::api::doc::IdText>, nullable = false)]
    pub agent_id: Option<String>,
    /// Runs of agents with this tag (at most 128 bytes).
    #[param(nullable = false)]
    pub tag: Option<String>,
    /// Runs of agents whose host name contains this, case-insensitively (at most 128 bytes).
    #[param(nullable = false)]
    pub hostname: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(value_type = Option<crate::api::doc::IdText>, nullable = false)]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    pub limit: Option<u64>,
}

/// `?format=csv|jsonl`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl`.
    #[param(value_type = Option<crate::api::doc::ExportFormat>, nullable = false)]
    pub format: Option<String>,
}

/// Which runs to re-run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerunRuns {
    /// `failed`, `not_succeeded` or `all`.
    Which(String),
    /// These runs of the job.
    Runs(Vec<String>),
}

/// Body of `POST /api/jobs/{id}/rerun`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunBody {
    /// `failed`, `not_succeeded`, `all`, or a list of the job's run ids.
    pub runs: RerunRuns,
}

/// A run a rerun did not repeat.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedView {
    /// The original run.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// The agent's host name, while known.
    pub hostname: Option<String>,
    /// Why it was not repeated.
    pub reason: String,
}

/// What a rerun made.
#[derive(Debug, Serialize, ToSchema)]
pub struct RerunView {
    /// The new job (`rerun_of` names the original).
    pub job: JobView,
    /// Runs not repeated: their agent is gone or bound to another key.
    pub skipped: Vec<SkippedView>,
}

fn masked(mask: Option<&str>) -> Result<bool, HttpError> {
    match mask {
        None | Some("") => Ok(false),
        Some("numbers") => Ok(true),
        Some(other) => Err(HttpError(DomainError::BadRequest(format!(
            "mask: must be numbers, not {other:?}"
        )))),
    }
}

/// A job's summary: counts by state and exit code, durations, the slowest runs and the groups
/// of runs with the same result and output.
#[utoipa::path(get, operation_id = "jobSummary", path = "/api/jobs/{id}/summary", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), SummaryQuery),
    responses((status = 200, body = SummaryView), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn summary(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    Query(query): Query<SummaryQuery>,
) -> Result<Json<SummaryView>, HttpError> {
    let mask = masked(query.mask.as_deref())?;
    let summary = state.services.jobs.summary(&caller, &id, mask).await?;
    Ok(Json(summary.into()))
}

/// A page of a job's runs, filtered, with host names.
#[utoipa::path(get, operation_id = "jobRuns", path = "/api/jobs/{id}/runs", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), RunsQuery),
    responses((status = 200, body = RunPage), (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn runs(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<RunPage>, HttpError> {
    let request = RunsRequest {
        status: query.status,
        exit_code: query.exit_code,
        group: query.group,
        masked: masked(query.mask.as_deref())?,
        agent_id: query.agent_id,
        tag: query.tag,
        hostname: query.hostname,
        cursor: query.cursor,
        limit: query.limit,
    };
    let (rows, next_cursor) = state.services.jobs.runs(&caller, &id, request).await?;
    Ok(Json(RunPage {
        items: rows.into_iter().map(RunRowView::from).collect(),
        next_cursor,
    }))
}

/// The columns of an export, in order.
pub const EXPORT_COLUMNS: [&str; 11] = [
    "run_id",
    "agent_id",
    "hostname",
    "status",
    "exit_code",
    "duration_ms",
    "stdout_bytes",
    "stderr_bytes",
    "error_code",
    "first_line",
    "last_line",
];

/// One line of an export.
#[derive(Debug, Serialize)]
struct ExportLine<'a> {
    run_id: &'a str,
    agent_id: &'a str,
    hostname: Option<&'a str>,
    status: &'a str,
    exit_code: Option<i32>,
    duration_ms: Option<i64>,
    stdout_bytes: i64,
    stderr_bytes: i64,
    error_code: Option<&'a str>,
    first_line: Option<&'a str>,
    last_line: Option<&'a str>,
}

impl<'a> ExportLine<'a> {
    fn of(row: &'a RunRow) -> Self {
        let digest = row.digest.as_ref();
        Self {
            run_id: &row.run.id,
            agent_id: &row.run.agent_id,
            hostname: row.hostname.as_deref(),
            status: &row.run.state,
            exit_code: row.run.exit_code,
            duration_ms: digest
                .and_then(|d| d.duration_ms)
                .or_else(|| outpost_core::digest::run_duration_ms(&row.run)),
            stdout_bytes: row.run.stdout_bytes,
            stderr_bytes: row.run.stderr_bytes,
            error_code: row.run.error_code.as_deref(),
            first_line: digest.and_then(|d| d.first_line.as_deref()),
            last_line: digest.and_then(|d| d.last_line.as_deref()),
        }
    }
}

/// Export format.
#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Jsonl,
}

/// One page of an export as bytes (the CSV header goes before the first page).
fn export_page(format: Format, rows: &[RunRow], header: bool) -> Result<Bytes, std::io::Error> {
    match format {
        Format::Csv => {
            let mut out = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(Vec::with_capacity(rows.len() * 160));
            if header {
                out.write_record(EXPORT_COLUMNS)?;
            }
            for row in rows {
                out.serialize(ExportLine::of(row))?;
            }
            out.into_inner()
                .map(Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
        Format::Jsonl => {
            let mut out = Vec::with_capacity(rows.len() * 240);
            for row in rows {
                serde_json::to_writer(&mut out, &ExportLine::of(row))?;
                out.push(b'\n');
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Every run of a job, one line each (agent, host name, state, exit code, duration, output
/// bytes, first and last line), streamed: `csv` with a header line, or `jsonl`. The runs are
/// read as they stand when the export starts, even while the job runs on.
#[utoipa::path(get, operation_id = "exportJob", path = "/api/jobs/{id}/export", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), ExportQuery),
    responses((status = 200, description = "One line per run", content_type = "text/csv"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn export(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, HttpError> {
    export_of(&state, &caller, &id, query.format.as_deref()).await
}

/// The export of a job in `format` (`csv` when `None`), as `GET /api/jobs/{id}/export` and
/// the dashboard's export links stream it.
pub(crate) async fn export_of(
    state: &AppState,
    caller: &outpost_store::domain::Caller,
    id: &str,
    format: Option<&str>,
) -> Result<Response, HttpError> {
    let (format, content_type, extension) = match format {
        None | Some("") | Some("csv") => (Format::Csv, "text/csv; charset=utf-8", "csv"),
        Some("jsonl") => (Format::Jsonl, "application/x-ndjson", "jsonl"),
        Some(other) => {
            return Err(HttpError(DomainError::BadRequest(format!(
                "format: must be csv or jsonl, not {other:?}"
            ))));
        }
    };
    let (job, pages) = state.services.jobs.export(caller, id).await?;
    let job_id = job.id.clone();
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let header = match format {
        Format::Csv => vec![export_page(format, &[], true).map_err(|e| Box::new(e) as BoxError)],
        Format::Jsonl => Vec::new(),
    };
    let pages = pages.map(move |page| match page {
        Ok(rows) => export_page(format, &rows, false).map_err(|e| Box::new(e) as BoxError),
        Err(err) => {
            // The status line is sent: ending the body with an error cuts the connection, so
            // the client sees a broken transfer, never a short export.
            tracing::warn!(error = %err, job_id = %job_id, "export cut short");
            Err(Box::new(std::io::Error::other(err.to_string())) as BoxError)
        }
    });
    let body = Body::from_stream(futures_util::stream::iter(header).chain(pages));
    let disposition = format!("attachment; filename=\"job-{}.{extension}\"", job.id);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// Re-run some of a job's runs as a new job on the same agents: the failed ones, those that
/// did not succeed, all, or a list. Secret parameters are carried over sealed; a library run
/// runs the version the original resolved. Every rule of a job's creation applies again,
/// with the caller's role. A run whose agent is gone, or bound to another key now, is not
/// repeated and is listed in `skipped`.
#[utoipa::path(post, operation_id = "rerunJob", path = "/api/jobs/{id}/rerun", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")), request_body = RerunBody,
    responses((status = 202, body = RerunView, description = "The new job; runs under way"),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "`nothing_to_rerun`: no run of that kind, or every one skipped; or a malformed request"),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "The caller could not have made the original (a forced update by a caller who is not an owner), or the only agent's key does not allow the command"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn rerun(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RerunBody>,
) -> Result<Response, HttpError> {
    let which = match body.runs {
        RerunRuns::Which(which) => match which.as_str() {
            "failed" => RerunWhich::Failed,
            "not_succeeded" => RerunWhich::NotSucceeded,
            "all" => RerunWhich::All,
            other => {
                return Err(HttpError(DomainError::BadRequest(format!(
                    "runs: must be failed, not_succeeded, all or a list of run ids, not {other:?}"
                ))));
            }
        },
        RerunRuns::Runs(ids) => RerunWhich::Runs(ids),
    };
    let Rerun { job, skipped } = state.services.jobs.rerun(&caller, &id, which).await?;
    let hosts = state.services.jobs.hostnames(&caller, &job.job.id).await?;
    let status = if job.job.status == JobState::Running {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut view = JobView::new(job.job, job.runs, true);
    view.name_hosts(&hosts);
    Ok((
        status,
        Json(RerunView {
            job: view,
            skipped: skipped
                .into_iter()
                .map(|s| SkippedView {
                    run_id: s.run_id,
                    agent_id: s.agent_id,
                    hostname: s.hostname,
                    reason: s.reason,
                })
                .collect(),
        }),
    )
        .into_response())
}
