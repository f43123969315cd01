//! `/api/jobs`: run a command (usually a script) on one agent, a tag's agents or all of them,
//! and read back every run's status, exit code, duration and full output.
//!
//! A job is created with all its runs in one transaction, then each run is pushed to its agent
//! if connected; offline agents get theirs when they reconnect (until `ttl_s`). Runs an
//! agent's key does not permit are stored as failed (`forbidden`) and never sent, and so are
//! runs of a script an agent's last `register` did not list (`script_not_allowed`, see
//! [`dispatch::script_refusal`]). A job for one agent id is refused instead (403, 422).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use outpost_protocol::{OutputStream, codes, commands};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, Path, Query};
use crate::AppState;
use crate::auth::Caller;
use crate::dispatch::{self, CommandSpec};
use crate::domain::DomainError;
use crate::http_error::ErrorDetail;
use crate::secrets;
use crate::store::{
    AgentTarget, JobFilter, NewJob, NewRun, agent_key, command, job, job_status, key_status, state,
    string_list,
};
use crate::tags::TagRule;

/// Longest `?wait=`.
const MAX_WAIT_S: u64 = 600;
/// Error code of a run not sent because it would downgrade its agent without `force`.
const DOWNGRADE_REFUSED: &str = "downgrade_needs_force";
/// Chunks fetched per page when streaming output.
const OUTPUT_PAGE: u64 = 64;

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
    #[schema(value_type = crate::domain::Command)]
    pub command: String,
    /// For `run`: `{"script": NAME, "params": {"NAME": "value"}, "secret_params"?: [NAME]}`;
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
    /// Where it stands.
    #[schema(value_type = crate::domain::CommandState)]
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
        let duration_ms = run.finished_at.and_then(|end| {
            run.result
                .as_ref()
                .and_then(|r| r.get("duration_ms"))
                .and_then(Value::as_i64)
                .or_else(|| {
                    let start = run
                        .started_at
                        .or(run.delivered_at)
                        .unwrap_or(run.created_at);
                    Some((end - start).num_milliseconds().max(0))
                })
        });
        Self {
            error: run.error_code.map(|code| ErrorDetail {
                code,
                message: run.error_message.unwrap_or_default(),
            }),
            run_id: run.id,
            agent_id: run.agent_id,
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
    #[schema(value_type = crate::domain::Command)]
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
    #[schema(value_type = crate::domain::JobState)]
    pub status: String,
    /// When its last run finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// One per targeted agent (omitted in listings; see `run_counts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunView>>,
    /// Runs by status.
    pub run_counts: HashMap<String, usize>,
}

impl JobView {
    pub(crate) fn new(job: job::Model, runs: Vec<command::Model>, with_runs: bool) -> Self {
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
        Self {
            job_id: job.id,
            command: job.command,
            data: job.data,
            target: job.target,
            created_at: job.created_at,
            status: job.status,
            finished_at: job.finished_at,
            runs: with_runs.then(|| runs.into_iter().map(RunView::from).collect()),
            run_counts,
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
    #[param(value_type = Option<crate::domain::JobState>, nullable = false)]
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
}

/// Shortest `id` filter: shorter ones match too much to be worth a scan.
const MIN_ID_PART: usize = 4;

/// Options of the output endpoint.
#[derive(Debug, Deserialize, IntoParams)]
pub struct OutputQuery {
    /// Which output (default `both`, in the order it arrived).
    #[param(value_type = Option<crate::api::doc::OutputSelection>, nullable = false)]
    pub stream: Option<String>,
    /// Skip this many bytes of the selected output.
    #[param(nullable = false)]
    pub offset: Option<u64>,
}

/// The fingerprint of a job request: what it asks for (command, data, target, timeouts,
/// webhook), with defaults filled in, as canonical JSON, hashed under the master key for the
/// caller's tenant. A retry of the same request has the same fingerprint; so does one that
/// spells a default out (`"timeout_s": 60`) or orders an object's keys otherwise.
fn request_fingerprint(
    state: &AppState,
    caller: &Caller,
    spec: &CommandSpec,
    target: &Value,
    webhook_url: Option<&str>,
) -> String {
    let request = serde_json::json!({
        "command": spec.command,
        "data": spec.data,
        "target": target,
        "timeout_s": spec.timeout_s,
        "ttl_s": spec.ttl_s,
        "webhook_url": webhook_url,
    });
    let mut text = String::new();
    canonical_json(&request, &mut text);
    state
        .webhooks
        .master
        .fingerprint(&caller.tenant_id, text.as_bytes())
}

/// `value` as JSON with every object's keys sorted, whatever order the map keeps them in.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Resolves a target to agents of the caller's tenant, with the tenant's agent keys (by id):
/// tags are matched as [`TagRule`] says, and each agent's key decides what it may run.
async fn resolve(
    state: &AppState,
    caller: &Caller,
    target: &Target,
) -> Result<(Vec<AgentTarget>, HashMap<String, agent_key::Model>), DomainError> {
    let ids = target.agents.as_deref().unwrap_or_default();
    let tags = target.tags.as_deref().unwrap_or_default();
    let all = target.all.unwrap_or(false);
    if ids.is_empty() && tags.is_empty() && !all {
        return Err(DomainError::BadRequest(
            "target: give agents, tags or all: true".into(),
        ));
    }
    let agents = state.store.agent_targets(&caller.tenant_id).await?;
    let keys = state.store.list_agent_keys(&caller.tenant_id).await?;
    let rule = TagRule::new(&keys);
    // A set, not a scan per id: a list of 10,000 agents would be 10^8 comparisons.
    let known: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    let mut chosen = BTreeSet::new();
    for id in ids {
        if !known.contains(id.as_str()) {
            return Err(DomainError::BadRequest(format!(
                "target.agents: no agent {id}"
            )));
        }
        chosen.insert(id.clone());
    }
    for agent in &agents {
        if all
            || (!tags.is_empty()
                && tags
                    .iter()
                    .all(|t| rule.has(&agent.key_id, &agent.declared, &agent.server, t)))
        {
            chosen.insert(agent.id.clone());
        }
    }
    let agents = agents
        .into_iter()
        .filter(|a| chosen.contains(&a.id))
        .collect();
    let keys = keys.into_iter().map(|key| (key.id.clone(), key)).collect();
    Ok((agents, keys))
}

/// The 422 message of a target that matches no agent, naming the tags it asked for (the
/// usual cause: a tag no agent has, or one that only agents declare for themselves while a
/// key assigns it, which a target does not trust: see `crate::tags`).
fn no_match(target: &Target) -> String {
    let tags = target.tags.as_deref().unwrap_or_default();
    let quoted = || {
        tags.iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match tags {
        [] if target.all == Some(true) => {
            "target: all: there are no agents yet; install one with the server's deploy.sh".into()
        }
        [] => "target: no agent matches".into(),
        [_] => format!("target: no agent has the tag {}", quoted()),
        _ => format!("target: no agent has all of the tags {}", quoted()),
    }
}

/// Why an agent's key refuses a command, if it does.
fn refusal(
    agent: &AgentTarget,
    command: &str,
    keys: &HashMap<String, agent_key::Model>,
) -> Option<String> {
    match keys.get(&agent.key_id) {
        None => Some(format!("agent {}'s key no longer exists", agent.id)),
        Some(key) if key.status != key_status::ACTIVE => {
            Some(format!("agent {}'s key is disabled", agent.id))
        }
        Some(key) if !string_list(&key.permissions).iter().any(|p| p == command) => Some(format!(
            "agent key {} does not allow the {command:?} command",
            key.id
        )),
        Some(_) => None,
    }
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
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<WaitQuery>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<Response, DomainError> {
    dispatch::writable(&state)?;
    let spec = CommandSpec::new(body.command, body.data, body.timeout_s, body.ttl_s)?;
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.len() > 200)
    {
        return Err(DomainError::BadRequest(
            "idempotency_key: must be 1 to 200 characters".into(),
        ));
    }
    if let Some(url) = &body.webhook_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return Err(DomainError::BadRequest(
            "webhook_url: must be an http(s) URL".into(),
        ));
    }
    let target = serde_json::to_value(&body.target).unwrap_or(Value::Null);
    dispatch::authorize(&caller, &spec, &format!("job target {target}"))?;
    let (agents, keys) = resolve(&state, &caller, &body.target).await?;
    if agents.is_empty() {
        return Err(DomainError::Unprocessable(no_match(&body.target)));
    }
    // An update to an older version is refused, run by run, on agents it would downgrade
    // (unless forced).
    let versions = match (&spec.command[..], spec.update_version, spec.update_force) {
        (commands::UPDATE, Some(_), false) => {
            Some(state.store.agent_versions(&caller.tenant_id).await?)
        }
        _ => None,
    };
    // A run of a script that an agent's last `register` did not list fails at once, unsent
    // (the agent would refuse it): one query for the agents that lack it, whatever the
    // target's size.
    let without_script: HashMap<String, Value> = match dispatch::run_script(&spec) {
        Some(script) => state
            .store
            .agents_without_script(&caller.tenant_id, script)
            .await?
            .into_iter()
            .collect(),
        None => HashMap::new(),
    };
    let one_agent =
        agents.len() == 1 && body.target.tags.is_none() && body.target.all != Some(true);
    let mut runs = Vec::with_capacity(agents.len());
    for agent in &agents {
        let mut refused = refusal(agent, &spec.command, &keys).map(|why| (codes::FORBIDDEN, why));
        if refused.is_none()
            && let (Some(script), Some(scripts)) =
                (dispatch::run_script(&spec), without_script.get(&agent.id))
            && let Some(why) = dispatch::script_refusal(&agent.id, scripts, script)
        {
            refused = Some((codes::SCRIPT_NOT_ALLOWED, why));
        }
        if refused.is_none()
            && let Some(version) = versions.as_ref().and_then(|v| v.get(&agent.id))
            && let Some(why) = dispatch::downgrade_refusal(&agent.id, version, &spec)
        {
            refused = Some((DOWNGRADE_REFUSED, why));
        }
        match refused {
            Some((codes::FORBIDDEN, why)) if one_agent => return Err(DomainError::Forbidden(why)),
            Some((codes::SCRIPT_NOT_ALLOWED, why)) if one_agent => {
                return Err(DomainError::Refused {
                    code: codes::SCRIPT_NOT_ALLOWED,
                    message: why,
                });
            }
            Some((_, why)) if one_agent => return Err(DomainError::BadRequest(why)),
            _ => {}
        }
        runs.push(NewRun {
            agent_id: agent.id.clone(),
            refused: refused.map(|(code, why)| (code.to_owned(), why)),
        });
    }
    let (data, sealed_params) = match secrets::script_with_params(&spec.command, &spec.data) {
        Some(script) => {
            let candidates = state
                .store
                .agents_with_secret_params(&caller.tenant_id)
                .await?;
            let targeted: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
            let declared = candidates
                .iter()
                .filter(|(id, _)| targeted.contains(id.as_str()))
                .flat_map(|(_, scripts)| secrets::declared(scripts, script));
            spec.sealed_data(&state, &caller.tenant_id, declared)
        }
        None => spec.sealed_data(&state, &caller.tenant_id, []),
    };
    let fingerprint = body
        .idempotency_key
        .as_ref()
        .map(|_| request_fingerprint(&state, &caller, &spec, &target, body.webhook_url.as_deref()));
    let new = NewJob {
        tenant_id: caller.tenant_id.clone(),
        command: spec.command.clone(),
        data,
        sealed_params,
        target,
        timeout_s: spec.timeout_s,
        ttl_s: spec.ttl_s,
        idempotency_key: body.idempotency_key,
        request_fingerprint: fingerprint.clone(),
        webhook_url: body.webhook_url,
    };
    let (job, runs, created) = state.writer.store().create_job(new, runs).await?;
    // A key used before answers its first job only for the same request (jobs created before
    // fingerprints were kept have none, and keep answering as they did).
    if !created
        && let (Some(theirs), Some(ours)) = (&job.request_fingerprint, &fingerprint)
        && theirs != ours
    {
        return Err(DomainError::Conflict {
            code: "idempotency_key_reused",
            message: format!(
                "idempotency_key: already used for job {} with a different request; a retry must repeat the request exactly, a new request needs a new key",
                job.id
            ),
        });
    }
    let wait = query.wait.map(|s| Duration::from_secs(s.min(MAX_WAIT_S)));
    // Watch before pushing, so that no result can slip by.
    let waiter = wait.map(|_| {
        state.hub.watch_all(
            runs.iter()
                .filter(|r| state::OPEN.contains(&r.state.as_str()))
                .filter_map(|r| r.id.parse().ok())
                .collect(),
        )
    });
    if created {
        for run in runs.iter().filter(|r| r.state == state::PENDING) {
            dispatch::push(&state, run);
        }
        tracing::info!(job_id = %job.id, runs = runs.len(), command = %job.command, "job created");
    }
    if let (Some(wait), Some(waiter)) = (wait, &waiter)
        && let Ok(finished) = tokio::time::timeout(wait, waiter.results()).await
    {
        return respond_finished(&state, &caller, &job.id, runs, finished).await;
    }
    respond(&state, &caller, &job.id).await
}

/// The answer once every run the caller waited for is final. The waiters were handed each
/// run's row as the writer stored it, so only the job's own row is read again: reading back a
/// 10,000-agent fan-out's runs would cost more than the rest of the answer.
async fn respond_finished(
    state: &AppState,
    caller: &Caller,
    job_id: &str,
    mut runs: Vec<command::Model>,
    finished: Vec<command::Model>,
) -> Result<Response, DomainError> {
    // `finished` holds the open runs' rows in the order they were given to the waiter
    // (`Hub::watch_all` keeps it), which is `runs`' order: one pass pairs them (a map keyed by
    // 10,000 cloned ids took 10-20 ms).
    let mut finished = finished.into_iter().peekable();
    for run in &mut runs {
        if let Some(stored) = finished.next_if(|stored| stored.id == run.id) {
            *run = stored;
        }
    }
    debug_assert!(finished.next().is_none(), "a finished run out of order");
    // The same order as a read from the store.
    runs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let job = find(state, caller, job_id).await?;
    Ok(answer(job, runs))
}

/// The job as it is now: 200 when finished, 202 while runs are under way.
async fn respond(state: &AppState, caller: &Caller, job_id: &str) -> Result<Response, DomainError> {
    let job = find(state, caller, job_id).await?;
    let runs = state.store.job_runs(&caller.tenant_id, job_id).await?;
    Ok(answer(job, runs))
}

/// Bytes of JSON a run takes in a job's answer, about (a `ping`'s is ~300).
const RUN_JSON_BYTES: usize = 320;

/// 200 when the job is finished, 202 while runs are under way.
///
/// Serialized into a buffer sized for the runs up front: axum's `Json` starts from 128 bytes
/// and doubles, so a 10,000-run answer (~3 MB) was reallocated and copied ~15 times, while
/// its caller waited.
fn answer(job: job::Model, runs: Vec<command::Model>) -> Response {
    let status = if job.status == job_status::RUNNING {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut body = Vec::with_capacity(1024 + runs.len() * RUN_JSON_BYTES);
    match serde_json::to_writer(&mut body, &JobView::new(job, runs, true)) {
        Ok(()) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => DomainError::Internal(err.into()).into_response(),
    }
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<job::Model, DomainError> {
    state
        .store
        .get_job(&caller.tenant_id, id)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("no job {id}")))
}

/// List jobs, newest first, with filters and cursor pagination.
#[utoipa::path(get, operation_id = "listJobs", path = "/api/jobs", tag = "jobs", security(("bearer" = [])),
    params(ListQuery), responses((status = 200, body = JobPage), (status = 400, response = crate::api::doc::BadRequest)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, DomainError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(DomainError::BadRequest(
            "limit: must be between 1 and 200".into(),
        ));
    }
    if let Some(status) = &query.status
        && ![
            job_status::RUNNING,
            job_status::SUCCEEDED,
            job_status::FAILED,
            job_status::CANCELLED,
        ]
        .contains(&status.as_str())
    {
        return Err(DomainError::BadRequest(format!(
            "status: must be running, succeeded, failed or cancelled, not {status:?}"
        )));
    }
    let id_part = match query.id {
        None => None,
        Some(part) => {
            let part = part.to_ascii_lowercase();
            if !(MIN_ID_PART..=36).contains(&part.len())
                || !part.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
            {
                return Err(DomainError::BadRequest(format!(
                    "id: must be {MIN_ID_PART} to 36 hex digits and dashes (the start or end of a job id), not {part:?}"
                )));
            }
            Some(part)
        }
    };
    let filter = JobFilter {
        id_part,
        agent_id: query.agent_id,
        script: query.script,
        command: query.command,
        status: query.status,
        since: query.since,
        until: query.until,
        before: query.cursor,
        limit: limit + 1,
    };
    let mut jobs = state.store.list_jobs(&caller.tenant_id, &filter).await?;
    let next_cursor = if jobs.len() as u64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id.clone())
    } else {
        None
    };
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        let runs = state.store.job_runs(&caller.tenant_id, &job.id).await?;
        views.push(JobView::new(job, runs, false));
    }
    Ok(Json(JobPage {
        jobs: views,
        next_cursor,
    }))
}

/// A job and all its runs.
#[utoipa::path(get, operation_id = "showJob", path = "/api/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, DomainError> {
    let job = find(&state, &caller, &id).await?;
    let runs = state.store.job_runs(&caller.tenant_id, &id).await?;
    Ok(Json(JobView::new(job, runs, true)))
}

/// Cancel the runs of a job that have not finished. Runs not yet delivered are cancelled at
/// once; running ones are stopped by their agent (SIGTERM, SIGKILL 5 s later) and report
/// `cancelled`.
#[utoipa::path(post, operation_id = "cancelJob", path = "/api/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses((status = 202, body = JobView), (status = 200, body = JobView), (status = 404, response = crate::api::doc::NotFound)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, DomainError> {
    find(&state, &caller, &id).await?;
    let (cancelled_now, on_agents) = state.store.cancel_job(&caller.tenant_id, &id).await?;
    let cancelled = cancelled_now.len();
    state.hub.finished(cancelled_now);
    state.webhooks.wake();
    for run in &on_agents {
        if let (Ok(agent_id), Ok(command_id)) = (run.agent_id.parse(), run.id.parse()) {
            state.hub.push(
                &run.tenant_id,
                agent_id,
                outpost_protocol::ServerFrame::Cancel { command_id },
            );
        }
    }
    tracing::info!(job_id = %id, now = cancelled, signalled = on_agents.len(), "job cancelled");
    respond(&state, &caller, &id).await
}

/// A run's full output as raw bytes.
#[utoipa::path(get, operation_id = "jobRunOutput", path = "/api/jobs/{id}/runs/{run_id}/output", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id"), ("run_id" = String, Path, description = "Run id"), OutputQuery),
    responses((status = 200, description = "The output bytes", content_type = "application/octet-stream"),
        (status = 404, response = crate::api::doc::NotFound)))]
pub async fn output(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
    Query(query): Query<OutputQuery>,
) -> Result<Response, DomainError> {
    let streams: Vec<OutputStream> = match query.stream.as_deref().unwrap_or("both") {
        "stdout" => vec![OutputStream::Stdout],
        "stderr" => vec![OutputStream::Stderr],
        "both" => vec![OutputStream::Stdout, OutputStream::Stderr],
        other => {
            return Err(DomainError::BadRequest(format!(
                "stream: must be stdout, stderr or both, not {other:?}"
            )));
        }
    };
    find(&state, &caller, &id).await?;
    let run = state
        .store
        .get_command(&caller.tenant_id, &run_id)
        .await?
        .filter(|r| r.job_id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| DomainError::NotFound(format!("no run {run_id} in job {id}")))?;
    let total: u64 = streams
        .iter()
        .map(|s| match s {
            OutputStream::Stdout => run.stdout_bytes,
            OutputStream::Stderr => run.stderr_bytes,
        })
        .sum::<i64>() as u64;
    let offset = query.offset.unwrap_or(0);
    // Pages of chunks are fetched as the client reads, so memory stays at one page whatever
    // the output's size.
    let store = state.store.clone();
    let tenant = caller.tenant_id.clone();
    let body =
        futures_util::stream::unfold((0i64, offset, false), move |(after, mut skip, done)| {
            let (store, tenant, run_id, streams) = (
                store.clone(),
                tenant.clone(),
                run_id.clone(),
                streams.clone(),
            );
            async move {
                if done {
                    return None;
                }
                let page = match store
                    .output_page(&tenant, &run_id, &streams, after, OUTPUT_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(err) => {
                        return Some((
                            Err(std::io::Error::other(err.to_string())),
                            (after, skip, true),
                        ));
                    }
                };
                let last = page.last().map(|c| c.id)?;
                let finished = (page.len() as u64) < OUTPUT_PAGE;
                let mut bytes = Vec::new();
                for chunk in page {
                    let len = chunk.data.len() as u64;
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    bytes.extend_from_slice(&chunk.data[skip as usize..]);
                    skip = 0;
                }
                Some((Ok::<_, std::io::Error>(bytes), (last, skip, finished)))
            }
        });
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response();
    // A finished run's output is complete, so its length is known; a running one streams.
    if state::FINAL.contains(&run.state.as_str())
        && let Ok(length) = total.saturating_sub(offset).to_string().parse()
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
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, DomainError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    find(&state, &caller, &id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    // Subscribe before the first read, so that nothing between the two is missed.
    let changes = state.hub.job_events();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(follow(state, caller.tenant_id, id, after, changes, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Feeds one event stream until the job ends or the client goes away (`tx` closes).
async fn follow(
    state: AppState,
    tenant_id: String,
    job_id: String,
    mut after: i64,
    mut changes: tokio::sync::broadcast::Receiver<crate::hub::JobChanged>,
    tx: tokio::sync::mpsc::Sender<axum::response::sse::Event>,
) {
    use axum::response::sse::Event;
    use tokio::sync::broadcast::error::RecvError;
    let mut sent: HashMap<String, String> = HashMap::new();
    loop {
        // New output, in pages, from where this client is.
        loop {
            let page = match state
                .store
                .job_output_page(&tenant_id, &job_id, after, OUTPUT_PAGE)
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "job event stream: reading output failed");
                    return;
                }
            };
            let full = page.len() as u64 == OUTPUT_PAGE;
            for chunk in page {
                after = chunk.id;
                let (data, data_b64) = outpost_protocol::encode_output_data(&chunk.data);
                let body = serde_json::json!({
                    "run_id": chunk.command_id,
                    "stream": if chunk.stream == 0 { "stdout" } else { "stderr" },
                    "seq": chunk.seq,
                    "data": data,
                    "data_b64": data_b64,
                });
                let event = Event::default()
                    .event("output")
                    .id(chunk.id.to_string())
                    .data(body.to_string());
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        // Runs whose state this client has not seen.
        let (job, runs) = match (
            state.store.get_job(&tenant_id, &job_id).await,
            state.store.job_runs(&tenant_id, &job_id).await,
        ) {
            (Ok(Some(job)), Ok(runs)) => (job, runs),
            _ => return,
        };
        for run in runs {
            if sent.get(&run.id) == Some(&run.state) {
                continue;
            }
            sent.insert(run.id.clone(), run.state.clone());
            let body = serde_json::to_string(&RunView::from(run)).unwrap_or_default();
            if tx
                .send(Event::default().event("state").data(body))
                .await
                .is_err()
            {
                return;
            }
        }
        if job.status != job_status::RUNNING {
            let body = serde_json::json!({"job_id": job.id, "status": job.status});
            let _ = tx
                .send(Event::default().event("end").data(body.to_string()))
                .await;
            return;
        }
        // Wait for this job to change (or for the client to leave).
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = state.shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(c) if c.job_id == job_id && c.tenant_id == tenant_id => break,
                    Ok(_) => continue,
                    // Fell behind: re-read everything from the store.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

/// A job's webhook: its state and every delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The URL, if the job has one.
    pub url: Option<String>,
    /// Where its delivery stands; null while the job runs (and for a job without one).
    #[schema(value_type = Option<crate::domain::WebhookStatus>)]
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
pub async fn webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, DomainError> {
    let job = find(&state, &caller, &id).await?;
    let attempts = state.store.webhook_attempts(&caller.tenant_id, &id).await?;
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
