//! `/api/jobs`: run a command (usually a script) on one agent, a tag's agents or all of them,
//! and read back every run's status, exit code, duration and full output.
//!
//! The rules (one transaction per job, refused runs stored as failed and never sent, a job for
//! one agent id refused instead: 403, 422) live in [`outpost_core::service::jobs`]; these handlers
//! parse, call it and serialise.

use crate::api::Authorized;
use crate::http_error::HttpError;
use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use outpost_protocol::OutputStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, Path, Query};
use crate::api::AppState;
use crate::http_error::ErrorDetail;
use outpost_core::service::commands::CommandSpec;
use outpost_core::service::jobs::{self, JobEvent, JobWithRuns, ListRequest, NewJobRequest};
use outpost_store::domain::{DomainError, JobState};
use outpost_store::{command, job};

/// Who a job is for. Agents listed by id and agents with every listed tag are both included.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Agent ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Agents having all of these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Every agent of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// Body of `POST /api/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// `run` (a manifest script), or any other command.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// For `run`: `{"script": NAME, "params": {"NAME": "value"}, "secret_params"?: [NAME]}`,
    /// where NAME may be a library script's (`NAME@VERSION` pins a version; without one the
    /// newest runs and the job records it in `data.library`);
    /// parameters listed in `secret_params`, or marked `secret` by a targeted agent's
    /// manifest, are sealed at rest and shown as `********`. For `update`: `{"version"?,
    /// "force"?}`; `force` (owners only) allows a downgrade.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// The agents.
    pub target: Target,
    /// Seconds each run may take, 1 to 86400 (default 60).
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "super::whole_seconds")]
    pub timeout_s: Option<u32>,
    /// Seconds a run waits for an offline agent, at most 604800 (default 3600).
    #[schema(maximum = 604800)]
    #[serde(default, deserialize_with = "super::whole_seconds")]
    pub ttl_s: Option<u32>,
    /// Notified when the job finishes (a `POST` of the job, signed: see `/api/webhooks`).
    #[schema(value_type = Option<crate::api::doc::WebhookUrl>)]
    pub webhook_url: Option<String>,
    /// A retried request with the same key returns the first job instead of a new one; the
    /// same key with a different request is refused (409 `idempotency_key_reused`).
    #[schema(value_type = Option<crate::api::doc::IdempotencyKey>)]
    pub idempotency_key: Option<String>,
}

/// A run, wherever it appears.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    /// Run id (the command id on the wire).
    pub run_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's host name (null once the agent is forgotten, and in live `state` events).
    pub hostname: Option<String>,
    /// Where it stands.
    #[schema(value_type = outpost_store::domain::CommandState)]
    pub status: String,
    /// The script's exit code.
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: Option<i64>,
    /// When the agent started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When its result was stored.
    pub finished_at: Option<DateTime<Utc>>,
    /// Stdout bytes stored.
    pub stdout_bytes: i64,
    /// Stderr bytes stored.
    pub stderr_bytes: i64,
    /// Output past the cap was not kept.
    pub output_truncated: bool,
    /// Why it did not succeed.
    pub error: Option<ErrorDetail>,
    /// The agent's result data (for `run`: the exit record; for built-ins: their answer).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

impl From<command::Model> for RunView {
    fn from(run: command::Model) -> Self {
        let duration_ms = outpost_core::digest::run_duration_ms(&run);
        Self {
            error: run.error_code.map(|code| ErrorDetail {
                code,
                message: run.error_message.unwrap_or_default(),
            }),
            run_id: run.id,
            agent_id: run.agent_id,
            hostname: None,
            status: run.state,
            exit_code: run.exit_code,
            duration_ms,
            started_at: run.started_at,
            finished_at: run.finished_at,
            stdout_bytes: run.stdout_bytes,
            stderr_bytes: run.stderr_bytes,
            output_truncated: run.output_truncated,
            data: run.result,
        }
    }
}

/// A job and its runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub job_id: String,
    /// Command name.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// Arguments. Secret parameter values are shown as `********` and named in
    /// `data.secret_params`.
    #[schema(value_type = Object)]
    pub data: Value,
    /// The target as asked for.
    #[schema(value_type = Object)]
    pub target: Value,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Where it stands, from its runs.
    #[schema(value_type = outpost_store::domain::JobState)]
    pub status: String,
    /// When its last run finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// One per targeted agent (omitted in listings; see `run_counts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunView>>,
    /// Runs by status.
    pub run_counts: HashMap<String, usize>,
    /// The schedule whose fire (or "run now") created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The fire's instant (absent on a schedule's "run now").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The one job that stands for a schedule's missed fires (`missed: run_once`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<bool>,
    /// What the server says about it (a schedule's fire whose target matched no agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The job this one re-runs (`POST /api/jobs/{id}/rerun`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
}

impl From<Target> for jobs::Target {
    fn from(target: Target) -> Self {
        Self {
            agents: target.agents,
            tags: target.tags,
            all: target.all,
        }
    }
}

impl JobView {
    pub fn new(job: job::Model, runs: Vec<command::Model>, with_runs: bool) -> Self {
        let mut run_counts: HashMap<String, usize> = HashMap::new();
        for run in &runs {
            // A lookup by `&str` first: a job's thousands of runs share a few states.
            match run_counts.get_mut(run.state.as_str()) {
                Some(n) => *n += 1,
                None => {
                    run_counts.insert(run.state.clone(), 1);
                }
            }
        }
        let mut view = Self::counted(job, run_counts);
        view.runs = with_runs.then(|| runs.into_iter().map(RunView::from).collect());
        view
    }

    /// A job of a listing: its runs counted by state, not shown.
    pub fn counted(job: job::Model, run_counts: HashMap<String, usize>) -> Self {
        Self {
            job_id: job.id,
            command: job.command,
            data: job.data,
            target: job.target,
            created_at: job.created_at,
            status: job.status,
            finished_at: job.finished_at,
            runs: None,
            run_counts,
            schedule_id: job.schedule_id,
            scheduled_for: job.scheduled_for,
            catch_up: job.catch_up,
            note: job.note,
            rerun_of: job.rerun_of,
        }
    }

    /// Names each run's agent by host name (`hosts`: agent id to host name).
    pub fn name_hosts(&mut self, hosts: &HashMap<String, String>) {
        for run in self.runs.iter_mut().flatten() {
            run.hostname = hosts.get(&run.agent_id).cloned();
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `?wait=S` on create.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WaitQuery {
    /// Answer when every run is final, or after this many seconds (more than 600 counts as
    /// 600).
    #[param(nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub wait: Option<u64>,
}

/// Filters of `GET /api/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Jobs with a run on this agent.
    #[param(nullable = false)]
    pub agent_id: Option<String>,
    /// `run` jobs of this script.
    #[param(nullable = false)]
    pub script: Option<String>,
    /// Jobs of this command (a name that is no command matches no job).
    #[param(nullable = false)]
    pub command: Option<String>,
    /// Jobs where they stand.
    #[param(value_type = Option<outpost_store::domain::JobState>, nullable = false)]
    pub status: Option<String>,
    /// Created at or after (RFC 3339).
    #[param(nullable = false)]
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    #[param(nullable = false)]
    pub until: Option<DateTime<Utc>>,
    /// From a previous page's `next_cursor`.
    #[param(nullable = false)]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    pub limit: Option<u64>,
    /// Jobs whose id starts or ends with this: 4 to 36 hex digits and dashes, as in the id
    /// (how the CLI finds the job meant by a shortened id).
    #[param(value_type = Option<crate::api::doc::JobIdPart>, nullable = false)]
    pub id: Option<String>,
    /// Jobs created by this schedule (its fires and its runs now).
    #[param(nullable = false)]
    pub schedule_id: Option<String>,
}

/// Options of the output endpoint.
#[derive(Debug, Deserialize, IntoParams)]
pub struct OutputQuery {
    /// Which output (default `both`, in the order it arrived).
    #[param(value_type = Option<crate::api::doc::OutputSelection>, nullable = false)]
    pub stream: Option<String>,
    /// Skip this many bytes of the selected output.
    #[param(nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub offset: Option<u64>,
}

/// Create a job: one run per targeted agent. Answers 202 with the runs; with `?wait=S`,
/// answers when every run is final (200) or after S seconds (202).
#[utoipa::path(post, operation_id = "createJob", path = "/api/jobs", tag = "jobs", security(("bearer" = [])),
    params(WaitQuery), request_body = CreateJob,
    responses(
        (status = 202, body = JobView, description = "Created; runs under way"),
        (status = 200, body = JobView, description = "With ?wait: every run is final"),
        (status = 400, response = crate::api::doc::BadRequest),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "The only targeted agent's key does not allow the command, or a forced update by a caller who is not an owner"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "idempotency_key_reused: the key was used for a different request"),
        (status = 422, body = crate::http_error::ErrorEnvelope, description = "The target matches no agent (`unprocessable`, naming the tags), or its only agent does not list the script (`script_not_allowed`)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<WaitQuery>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<Response, HttpError> {
    let spec = CommandSpec::new(body.command, body.data, body.timeout_s, body.ttl_s)?;
    let request = NewJobRequest {
        spec,
        target: body.target.into(),
        webhook_url: body.webhook_url,
        idempotency_key: body.idempotency_key,
        fire: None,
        rerun: None,
    };
    let wait = query.wait.map(Duration::from_secs);
    let job = state.services.jobs.create(&caller, request, wait).await?;
    let hosts = state.services.jobs.hostnames(&caller, &job.job.id).await?;
    Ok(answer_named(job, &hosts))
}

/// Bytes of JSON a run takes in a job's answer, about (a `ping`'s is ~300).
const RUN_JSON_BYTES: usize = 320;

/// 200 when the job is finished, 202 while runs are under way.
///
/// Serialized into a buffer sized for the runs up front: axum's `Json` starts from 128 bytes
/// and doubles, so a 10,000-run answer (~3 MB) was reallocated and copied ~15 times, while
/// its caller waited.
/// Each run's agent is named by host name (`hosts`: agent id to host name).
pub(super) fn answer_named(
    JobWithRuns { job, runs }: JobWithRuns,
    hosts: &HashMap<String, String>,
) -> Response {
    let status = if job.status == JobState::Running {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut body = Vec::with_capacity(1024 + runs.len() * RUN_JSON_BYTES);
    let mut view = JobView::new(job, runs, true);
    view.name_hosts(hosts);
    match serde_json::to_writer(&mut body, &view) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => HttpError(DomainError::Internal(err.into())).into_response(),
    }
}

/// List jobs, newest first, with filters and cursor pagination.
#[utoipa::path(get, operation_id = "listJobs", path = "/api/jobs", tag = "jobs", security(("bearer" = [])),
    params(ListQuery), responses((status = 200, body = JobPage), (status = 400, response = crate::api::doc::BadRequest)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, HttpError> {
    let request = ListRequest {
        agent_id: query.agent_id,
        script: query.script,
        command: query.command,
        status: query.status,
        since: query.since,
        until: query.until,
        cursor: query.cursor,
        limit: query.limit,
        id: query.id,
        schedule_id: query.schedule_id,
    };
    let page = state.services.jobs.list(&caller, request).await?;
    let views = page
        .jobs
        .into_iter()
        .map(|summary| JobView::counted(summary.job, summary.run_counts))
        .collect();
    let next_cursor = page.next_cursor;
    Ok(Json(JobPage {
        jobs: views,
        next_cursor,
    }))
}

/// A job and all its runs.
#[utoipa::path(get, operation_id = "showJob", path = "/api/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<JobView>, HttpError> {
    let JobWithRuns { job, runs } = state.services.jobs.get(&caller, &id).await?;
    let hosts = state.services.jobs.hostnames(&caller, &job.id).await?;
    let mut view = JobView::new(job, runs, true);
    view.name_hosts(&hosts);
    Ok(Json(view))
}

/// Cancel the runs of a job that have not finished. Runs not yet delivered are cancelled at
/// once; running ones are stopped by their agent (SIGTERM, SIGKILL 5 s later) and report
/// `cancelled`.
#[utoipa::path(post, operation_id = "cancelJob", path = "/api/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 200, body = JobView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = state.services.jobs.cancel(&caller, &id).await?;
    let hosts = state.services.jobs.hostnames(&caller, &job.job.id).await?;
    Ok(answer_named(job, &hosts))
}

/// A run's full output as raw bytes.
#[utoipa::path(get, operation_id = "jobRunOutput", path = "/api/jobs/{id}/runs/{run_id}/output", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), ("run_id" = String, Path, description = "Run id"), OutputQuery),
    responses((status = 200, description = "The output bytes", content_type = "application/octet-stream"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id, run_id = %run_id))]
pub async fn output(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path((id, run_id)): Path<(String, String)>,
    Query(query): Query<OutputQuery>,
) -> Result<Response, HttpError> {
    let streams: Vec<OutputStream> = match query.stream.as_deref().unwrap_or("both") {
        "stdout" => vec![OutputStream::Stdout],
        "stderr" => vec![OutputStream::Stderr],
        "both" => vec![OutputStream::Stdout, OutputStream::Stderr],
        other => {
            return Err(HttpError(DomainError::BadRequest(format!(
                "stream: must be stdout, stderr or both, not {other:?}"
            ))));
        }
    };
    let output = state
        .services
        .jobs
        .output(&caller, &id, &run_id, streams, query.offset.unwrap_or(0))
        .await?;
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(output.bytes),
    )
        .into_response();
    // A finished run's output is complete, so its length is known; a running one streams.
    if let Some(length) = output.length
        && let Ok(length) = length.to_string().parse()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length);
    }
    Ok(response)
}

/// Follow a job live as Server-Sent Events: `state` events (a run as in `GET /api/jobs/{id}`)
/// whenever a run changes, `output` events (`{run_id, stream, seq, data | data_b64}`, with the
/// chunk's id as the event id) as output is stored, and a final `end` event (`{job_id,
/// status}`) once every run is final, after which the stream closes. Reconnecting with
/// `Last-Event-ID` resumes the output after that chunk; states are always sent in full first.
#[utoipa::path(get, operation_id = "jobEvents", path = "/api/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume the output after this event id")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn events(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, HttpError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let rx = state.services.jobs.follow(&caller, &id, after).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await? {
            JobEvent::Output {
                id,
                run_id,
                stream,
                seq,
                data,
            } => {
                let (data, data_b64) = outpost_protocol::encode_output_data(&data);
                let body = serde_json::json!({
                    "run_id": run_id,
                    "stream": if stream == 0 { "stdout" } else { "stderr" },
                    "seq": seq,
                    "data": data,
                    "data_b64": data_b64,
                });
                Event::default()
                    .event("output")
                    .id(id.to_string())
                    .data(body.to_string())
            }
            JobEvent::State(run) => {
                let body = serde_json::to_string(&RunView::from(*run)).unwrap_or_default();
                Event::default().event("state").data(body)
            }
            JobEvent::End { job_id, status } => {
                let body = serde_json::json!({"job_id": job_id, "status": status});
                Event::default().event("end").data(body.to_string())
            }
        };
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A job's webhook: its state and every delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The URL, if the job has one.
    pub url: Option<String>,
    /// Where its delivery stands; null while the job runs (and for a job without one).
    #[schema(value_type = Option<outpost_store::domain::WebhookStatus>)]
    pub status: Option<String>,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// From 1.
    pub attempt: i32,
    /// When.
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status.
    pub status_code: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// A job's webhook deliveries.
#[utoipa::path(get, operation_id = "jobWebhook", path = "/api/jobs/{id}/webhook", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = WebhookView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
pub async fn webhook(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, HttpError> {
    let (job, attempts) = state.services.jobs.webhook(&caller, &id).await?;
    Ok(Json(WebhookView {
        url: job.webhook_url,
        status: job.webhook_status,
        attempts: attempts
            .into_iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                at: a.at,
                status_code: a.status_code,
                error: a.error,
                duration_ms: a.duration_ms,
            })
            .collect(),
    }))
}
