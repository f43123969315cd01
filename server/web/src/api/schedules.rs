//! `/api/schedules` (CONTRACT.md §10): a command on a target at the instants a cron pattern names,
//! in a time zone.
//!
//! The server computes and stores every fire time (`service::schedules`); these handlers
//! only parse, call the service and show. A PATCH body tells a field set to `null` (clear
//! it) from a field left out (keep it).

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::jobs::{Target, answer_named};
use super::tenants::{field, object_fields, required};
use super::users::object_only;
use super::{ApiJson, Path, Query};
use crate::api::AppState;
use outpost_core::service::schedules::{ScheduleFields, ScheduleWithJob};
use outpost_store::domain::{ConcurrencyPolicy, MissedPolicy};
use outpost_store::schedule;

/// The last job a schedule made.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastJob {
    /// Its id.
    pub job_id: String,
    /// Where it stands.
    #[schema(value_type = outpost_store::domain::JobState)]
    pub status: String,
    /// The fire it was made for (absent for a run now).
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// A schedule as shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Schedule id.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// The pattern: 5 fields, an `@` shortcut or `@every`.
    pub cron: String,
    /// IANA time zone the pattern is read in.
    pub timezone: String,
    /// What each fire runs.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// Its arguments; secret parameter values are shown as `********`.
    #[schema(value_type = Object)]
    pub data: Value,
    /// On which agents (resolved at each fire).
    #[schema(value_type = Object)]
    pub target: Value,
    /// Run timeout, seconds (null: the default).
    pub timeout_s: Option<i32>,
    /// How long runs wait for offline agents, seconds (null: the default).
    pub ttl_s: Option<i32>,
    /// Fires only when true.
    pub enabled: bool,
    /// What is done about fires missed while the server could not fire.
    #[schema(value_type = MissedPolicy)]
    pub missed: String,
    /// What a fire does while the previous job still runs.
    #[schema(value_type = ConcurrencyPolicy)]
    pub concurrency: String,
    /// Given to every job it makes.
    pub webhook_url: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
    /// Its next fire (null when disabled).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Its last fire that made a job.
    pub last_fire_at: Option<DateTime<Utc>>,
    /// The job of its last fire or run now.
    pub last_job: Option<LastJob>,
}

impl From<ScheduleWithJob> for ScheduleView {
    fn from(s: ScheduleWithJob) -> Self {
        let ScheduleWithJob { schedule, last_job } = s;
        let schedule::Model {
            id,
            name,
            cron,
            timezone,
            command,
            data,
            target,
            timeout_s,
            ttl_s,
            enabled,
            missed,
            concurrency,
            webhook_url,
            created_at,
            updated_at,
            next_fire_at,
            last_fire_at,
            ..
        } = schedule;
        Self {
            id,
            name,
            cron,
            timezone,
            command,
            data,
            target,
            timeout_s,
            ttl_s,
            enabled,
            missed,
            concurrency,
            webhook_url,
            created_at,
            updated_at,
            next_fire_at,
            last_fire_at,
            last_job: last_job.map(|job| LastJob {
                job_id: job.id,
                status: job.status,
                scheduled_for: job.scheduled_for,
            }),
        }
    }
}

/// Body of `POST /api/schedules`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// 1 to 100 letters, digits, `.`, `_` or `-`; unique in the tenant.
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: String,
    /// 5 fields (minute hour day-of-month month day-of-week; lists, ranges, steps, `JAN`…`DEC`,
    /// `SUN`…`SAT`), `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, or
    /// `@every 30s|5m|2h|1d` (at least 10 s).
    #[schema(max_length = 200)]
    pub cron: String,
    /// An IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// What each fire runs, as in `POST /api/jobs`.
    #[schema(value_type = outpost_store::domain::Command)]
    pub command: String,
    /// Its arguments, as in `POST /api/jobs` (at most 64 KiB).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// On which agents, resolved at each fire.
    pub target: Target,
    /// Seconds each run may take, 1 to 86400 (default 60).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 86400)]
    pub timeout_s: Option<Seconds>,
    /// Seconds a run waits for an offline agent, at most 604800 (default 3600).
    #[schema(value_type = Option<u32>, maximum = 604800)]
    pub ttl_s: Option<Seconds>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Default `skip`.
    pub missed: Option<MissedPolicy>,
    /// Default `allow`.
    pub concurrency: Option<ConcurrencyPolicy>,
    /// Given to every job it makes.
    #[schema(value_type = Option<crate::api::doc::WebhookUrl>)]
    pub webhook_url: Option<String>,
}

object_only!(CreateSchedule {
    name: String,
    cron: String,
    timezone: Option<String>,
    command: String,
    data: Option<Value>,
    target: Target,
    timeout_s: Option<Seconds>,
    ttl_s: Option<Seconds>,
    enabled: Option<bool>,
    missed: Option<MissedPolicy>,
    concurrency: Option<ConcurrencyPolicy>,
    webhook_url: Option<String>,
});

/// Whole seconds, however JSON spells them (`super::whole_seconds`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Seconds(#[serde(deserialize_with = "super::whole_seconds")] Option<u32>);

/// Body of `PATCH /api/schedules/{id}`: any of the fields of `POST`; a field left out is
/// unchanged, and `null` clears `timeout_s`, `ttl_s` and `webhook_url`.
#[derive(Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// A new name.
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: Option<String>,
    /// A new pattern (the next fire is computed from now).
    #[schema(max_length = 200)]
    pub cron: Option<String>,
    /// A new time zone (the next fire is computed from now).
    pub timezone: Option<String>,
    /// A new command.
    #[schema(value_type = Option<outpost_store::domain::Command>)]
    pub command: Option<String>,
    /// New arguments (needed again with any change of what it runs when it has secret
    /// parameters).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// A new target.
    pub target: Option<Target>,
    /// Run timeout (null: the default).
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 86400)]
    pub timeout_s: Option<Option<u32>>,
    /// Offline wait (null: the default).
    #[schema(value_type = Option<u32>, nullable, maximum = 604800)]
    pub ttl_s: Option<Option<u32>>,
    /// Pause (false) or resume (true; fires missed while paused are not counted).
    pub enabled: Option<bool>,
    /// A new missed-fire policy.
    pub missed: Option<MissedPolicy>,
    /// A new concurrency policy.
    pub concurrency: Option<ConcurrencyPolicy>,
    /// A new webhook URL (null: none).
    #[schema(value_type = Option<crate::api::doc::WebhookUrl>, nullable)]
    pub webhook_url: Option<Option<String>>,
}

const UPDATE_FIELDS: &[&str] = &[
    "name",
    "cron",
    "timezone",
    "command",
    "data",
    "target",
    "timeout_s",
    "ttl_s",
    "enabled",
    "missed",
    "concurrency",
    "webhook_url",
];

impl<'de> Deserialize<'de> for UpdateSchedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = object_fields(d, UPDATE_FIELDS)?;
        let mut out = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "name" => out.name = required("name", value)?,
                "cron" => out.cron = required("cron", value)?,
                "timezone" => out.timezone = required("timezone", value)?,
                "command" => out.command = required("command", value)?,
                "data" => out.data = required("data", value)?,
                "target" => out.target = required("target", value)?,
                "enabled" => out.enabled = required("enabled", value)?,
                "missed" => out.missed = required("missed", value)?,
                "concurrency" => out.concurrency = required("concurrency", value)?,
                "timeout_s" => {
                    out.timeout_s = Some(field::<Seconds, D::Error>("timeout_s", value)?.0)
                }
                "ttl_s" => out.ttl_s = Some(field::<Seconds, D::Error>("ttl_s", value)?.0),
                "webhook_url" => {
                    out.webhook_url = Some(field::<Option<String>, D::Error>("webhook_url", value)?)
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A page of schedules.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulePage {
    /// By name.
    pub schedules: Vec<ScheduleView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/schedules`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only enabled (true) or paused (false) schedules.
    #[param(nullable = false)]
    pub enabled: Option<bool>,
    /// From a previous page's `next_cursor`.
    #[param(nullable = false)]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub limit: Option<u64>,
}

/// What `preview` is asked.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PreviewQuery {
    /// The pattern, as in a schedule.
    #[param(max_length = 200)]
    pub cron: String,
    /// IANA time zone (default UTC).
    #[param(nullable = false)]
    pub timezone: Option<String>,
    /// Fires after this instant (RFC 3339; default now).
    #[param(nullable = false)]
    pub from: Option<DateTime<Utc>>,
    /// How many, 1–100 (default 10).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub count: Option<u64>,
}

/// One fire of a preview.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewFire {
    /// The instant, in UTC.
    pub at: DateTime<Utc>,
    /// The same instant in the schedule's zone, with its offset.
    #[schema(value_type = String)]
    pub local: DateTime<FixedOffset>,
}

/// The next fires of a pattern.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// The pattern.
    pub cron: String,
    /// Its zone.
    pub timezone: String,
    /// The fires, oldest first.
    pub fires: Vec<PreviewFire>,
}

/// Make a schedule. Its first fire is the first instant after now.
#[utoipa::path(post, operation_id = "createSchedule", path = "/api/schedules", tag = "schedules", security(("bearer" = [])),
    request_body = CreateSchedule,
    responses((status = 201, body = ScheduleView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "`quota_exceeded`: the tenant has `max_schedules` schedules; or a command the caller's role may not send"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`name_taken`: another schedule has the name")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CreateSchedule>,
) -> Result<(StatusCode, Json<ScheduleView>), HttpError> {
    let fields = ScheduleFields {
        name: Some(body.name),
        cron: Some(body.cron),
        timezone: body.timezone,
        command: Some(body.command),
        data: body.data,
        target: Some(body.target.into()),
        timeout_s: Some(body.timeout_s.and_then(|s| s.0)),
        ttl_s: Some(body.ttl_s.and_then(|s| s.0)),
        enabled: body.enabled,
        missed: body.missed.map(|p| p.as_str().to_owned()),
        concurrency: body.concurrency.map(|p| p.as_str().to_owned()),
        webhook_url: Some(body.webhook_url),
    };
    let schedule = state.services.schedules.create(&caller, fields).await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::from(schedule))))
}

/// The tenant's schedules, by name.
#[utoipa::path(get, operation_id = "listSchedules", path = "/api/schedules", tag = "schedules", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = SchedulePage)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<ListQuery>,
) -> Result<Json<SchedulePage>, HttpError> {
    let page = state
        .services
        .schedules
        .list(&caller, query.enabled, query.cursor, query.limit)
        .await?;
    Ok(Json(SchedulePage {
        schedules: page.schedules.into_iter().map(ScheduleView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The next fires of a pattern in a zone, computed as a schedule's are, creating nothing.
#[utoipa::path(get, operation_id = "previewSchedule", path = "/api/schedules/preview", tag = "schedules", security(("bearer" = [])),
    params(PreviewQuery),
    responses((status = 200, body = Preview)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn preview(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<PreviewQuery>,
) -> Result<Json<Preview>, HttpError> {
    let _ = &caller;
    let count = query
        .count
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX));
    let fires = state.services.schedules.preview(
        &query.cron,
        query.timezone.as_deref(),
        query.from,
        count,
    )?;
    Ok(Json(Preview {
        cron: query.cron,
        timezone: query.timezone.unwrap_or_else(|| "UTC".into()),
        fires: fires
            .into_iter()
            .map(|f| PreviewFire {
                at: f.at,
                local: f.local,
            })
            .collect(),
    }))
}

/// One schedule, with its next fire and its last job.
#[utoipa::path(get, operation_id = "showSchedule", path = "/api/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, HttpError> {
    let schedule = state.services.schedules.get(&caller, &id).await?;
    Ok(Json(ScheduleView::from(schedule)))
}

/// Change a schedule, pause it (`enabled: false`) or resume it.
#[utoipa::path(patch, operation_id = "updateSchedule", path = "/api/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")), request_body = UpdateSchedule,
    responses((status = 200, body = ScheduleView),
        (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`name_taken`: another schedule has the name")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateSchedule>,
) -> Result<Json<ScheduleView>, HttpError> {
    let fields = ScheduleFields {
        name: body.name,
        cron: body.cron,
        timezone: body.timezone,
        command: body.command,
        data: body.data,
        target: body.target.map(Into::into),
        timeout_s: body.timeout_s,
        ttl_s: body.ttl_s,
        enabled: body.enabled,
        missed: body.missed.map(|p| p.as_str().to_owned()),
        concurrency: body.concurrency.map(|p| p.as_str().to_owned()),
        webhook_url: body.webhook_url,
    };
    let schedule = state
        .services
        .schedules
        .update(&caller, &id, fields)
        .await?;
    Ok(Json(ScheduleView::from(schedule)))
}

/// Delete a schedule. Its jobs stay.
#[utoipa::path(delete, operation_id = "deleteSchedule", path = "/api/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.schedules.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run the schedule's command now, outside its times, as the caller: a job with the
/// schedule's id. The next fire does not move.
#[utoipa::path(post, operation_id = "runSchedule", path = "/api/schedules/{id}/run", tag = "schedules", security(("bearer" = [])),
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 202, body = super::jobs::JobView, description = "Created; runs under way (as `POST /api/jobs`)"),
        (status = 200, body = super::jobs::JobView, description = "Created and already finished (no agent matched)"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, schedule_id = %id))]
pub async fn run(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = state.services.schedules.run_now(&caller, &id).await?;
    let hosts = state.services.jobs.hostnames(&caller, &job.job.id).await?;
    Ok(answer_named(job, &hosts))
}
